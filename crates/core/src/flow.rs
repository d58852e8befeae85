//! Conditions, step outputs and jobs that call jobs: the rules written once
//! (what a step may publish and how it is bounded, which step names a
//! template may refer to, which `job:` calls form a cycle), used by the
//! parser at apply and by the worker at run time.
//!
//! - **Conditions**: a step's `when: "{{ expression }}"` is evaluated per
//!   target just before the step runs there, with the same variables as its
//!   templates plus `steps` (this target's earlier steps) and `run.outputs`;
//!   false records the step `skipped` with the condition as the reason.
//! - **Outputs**: a line `::output name=value` on stdout publishes `name`;
//!   with `outputs: json` the last non-empty stdout line must be a JSON
//!   object, whose members are published too (they win over lines of the
//!   same name). Values are masked like the output; names, counts and sizes
//!   are bounded ([`MAX_OUTPUTS`], [`MAX_OUTPUT_NAME`], [`MAX_OUTPUT_VALUE`],
//!   [`MAX_OUTPUTS_TOTAL`]): a step that exceeds them fails, saying which.
//! - **`steps.NAME`**: `status`, `exit_code` and `outputs` of an earlier
//!   step on the same target. References are found by reading the
//!   template's variables (`steps.NAME…` in dotted form); a name that is not
//!   an earlier step is refused at apply.
//! - **`run.outputs`**: per target, the outputs of its steps merged in step
//!   order (a later step's key replaces an earlier one's):
//!   `run.outputs[target][key]`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{Action, JobSpec, Origin, Step, StepStatus};
use crate::template::Templates;

/// Most outputs one step may publish.
pub const MAX_OUTPUTS: usize = 64;
/// Longest output name, in bytes.
pub const MAX_OUTPUT_NAME: usize = 64;
/// Largest single output value (as JSON text for non-strings), in bytes.
pub const MAX_OUTPUT_VALUE: usize = 16 * 1024;
/// Largest sum of one step's output values, in bytes.
pub const MAX_OUTPUTS_TOTAL: usize = 64 * 1024;
/// Longest stdout line kept for `outputs: json` (longer lines are not an
/// object the step may publish: the step fails).
pub const MAX_JSON_LINE: usize = MAX_OUTPUTS_TOTAL + 4096;
/// Longest `when` condition, in bytes.
pub const MAX_CONDITION: usize = 4096;

/// The line prefix that publishes an output.
pub const OUTPUT_PREFIX: &str = "::output ";

/// Watches a step's stdout as it streams and keeps what outputs need: the
/// `::output` lines (bounded) and the last non-empty line (bounded). Never
/// holds more than about [`MAX_JSON_LINE`] + [`MAX_OUTPUTS_TOTAL`] bytes.
#[derive(Debug, Default)]
pub struct OutputCapture {
    /// The line being read (up to [`MAX_JSON_LINE`] bytes).
    line: Vec<u8>,
    /// The line being read is longer than kept.
    overlong: bool,
    /// The last complete non-empty line, `None` if it was too long.
    last: Option<Vec<u8>>,
    last_overlong: bool,
    /// `::output` lines in order: name, value (bounded by the checks later).
    pairs: Vec<(String, String)>,
    /// Why the outputs are refused, if a bound was passed while reading.
    refused: Option<String>,
}

impl OutputCapture {
    /// Takes in a piece of stdout.
    pub fn push(&mut self, data: &[u8]) {
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (chunk, false),
            };
            if !self.overlong {
                if self.line.len() + body.len() > MAX_JSON_LINE {
                    self.overlong = true;
                    // Keep the start: enough to recognise an `::output` line.
                    let room = MAX_JSON_LINE.saturating_sub(self.line.len());
                    self.line.extend_from_slice(&body[..room.min(body.len())]);
                } else {
                    self.line.extend_from_slice(body);
                }
            }
            if ends {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        let overlong = std::mem::replace(&mut self.overlong, false);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if line.starts_with(OUTPUT_PREFIX.as_bytes()) && self.refused.is_none() {
            let text = String::from_utf8_lossy(&line[OUTPUT_PREFIX.len()..]).into_owned();
            match text.split_once('=') {
                _ if overlong => {
                    self.refused = Some(format!(
                        "an `::output` line is longer than {MAX_JSON_LINE} bytes"
                    ))
                }
                Some((name, value)) if self.pairs.len() <= MAX_OUTPUTS => self
                    .pairs
                    .push((name.trim().to_string(), value.to_string())),
                Some(_) => {
                    self.refused = Some(format!("more than {MAX_OUTPUTS} outputs were published"))
                }
                None => {
                    self.refused =
                        Some(format!("`{}` is not `::output name=value`", shorten(&text)))
                }
            }
        }
        self.last_overlong = overlong;
        self.last = Some(line);
    }

    /// The outputs, checked against the bounds. `json`: the last non-empty
    /// line is a JSON object of outputs too. Values are not masked yet.
    pub fn finish(mut self, json: bool) -> Result<BTreeMap<String, Value>, String> {
        if !self.line.is_empty() || self.overlong {
            self.end_line();
        }
        if let Some(why) = self.refused {
            return Err(why);
        }
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        for (name, value) in self.pairs {
            out.insert(name, Value::String(value));
        }
        if json {
            let last = match (self.last, self.last_overlong) {
                (_, true) => {
                    return Err(format!(
                        "`outputs: json`: the last stdout line is longer than {MAX_JSON_LINE} bytes"
                    ));
                }
                (None, _) => {
                    return Err(
                        "`outputs: json`: the step printed nothing (expected a JSON object as its last line)".into(),
                    );
                }
                (Some(l), _) => l,
            };
            match serde_json::from_slice::<Value>(&last) {
                Ok(Value::Object(m)) => out.extend(m),
                _ => {
                    return Err(format!(
                        "`outputs: json`: the last stdout line is not a JSON object: `{}`",
                        shorten(&String::from_utf8_lossy(&last))
                    ));
                }
            }
        }
        check_outputs(&out)?;
        Ok(out)
    }
}

/// The first 60 characters of `s`, for messages.
fn shorten(s: &str) -> String {
    let mut t: String = s.chars().take(60).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// Whether `name` may name an output: letters, digits, `_` and `-`,
/// starting with a letter or `_`, at most [`MAX_OUTPUT_NAME`] bytes.
pub fn valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_OUTPUT_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks a step's outputs against every bound, naming the first it passes.
pub fn check_outputs(out: &BTreeMap<String, Value>) -> Result<(), String> {
    if out.len() > MAX_OUTPUTS {
        return Err(format!(
            "{} outputs were published; at most {MAX_OUTPUTS}",
            out.len()
        ));
    }
    let mut total = 0usize;
    for (name, value) in out {
        if !valid_output_name(name) {
            return Err(format!(
                "invalid output name `{}` (letters, digits, '_', '-'; start with a letter or '_'; at most {MAX_OUTPUT_NAME} bytes)",
                shorten(name)
            ));
        }
        let size = match value {
            Value::String(s) => s.len(),
            other => other.to_string().len(),
        };
        if size > MAX_OUTPUT_VALUE {
            return Err(format!(
                "output `{name}` is {size} bytes; at most {MAX_OUTPUT_VALUE}"
            ));
        }
        total += size;
    }
    if total > MAX_OUTPUTS_TOTAL {
        return Err(format!(
            "the outputs are {total} bytes together; at most {MAX_OUTPUTS_TOTAL}"
        ));
    }
    Ok(())
}

/// What templates see of one earlier step on a target (`steps.NAME`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepFacts {
    /// How it ended.
    pub status: StepStatus,
    /// Its exit code, if a process exited.
    pub exit_code: Option<i32>,
    /// What it published (masked).
    pub outputs: BTreeMap<String, Value>,
}

impl StepFacts {
    /// The template value: `{status, exit_code, outputs}`.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "status": self.status.as_str(),
            "exit_code": self.exit_code,
            "outputs": self.outputs,
        })
    }
}

/// The condition's expression: the text inside `{{ }}`, or the whole text
/// when it has no braces.
pub fn condition_expression(when: &str) -> &str {
    let t = when.trim();
    match t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        Some(inner) => inner.trim(),
        None => t,
    }
}

/// The step names a template text refers to as `steps.NAME`, from its
/// variables in dotted form (`variables` is what the template engine reads,
/// e.g. `steps.check.exit_code`). `steps` itself, or `steps[...]`, is
/// reported as `None`: a name that cannot be checked.
pub fn referenced_steps(variables: &BTreeSet<String>) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for v in variables {
        if v == "steps" {
            out.push(None);
        } else if let Some(rest) = v.strip_prefix("steps.") {
            let name = rest.split('.').next().unwrap_or(rest);
            out.push(Some(name.to_string()));
        }
    }
    out
}

/// The job names `spec` calls with `job:` steps, with the step index.
pub fn called_jobs(spec: &JobSpec) -> Vec<(usize, &str)> {
    spec.steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.action {
            crate::model::Action::Job { job, .. } => Some((i, job.as_str())),
            _ => None,
        })
        .collect()
}

/// A cycle of `job:` calls through `start`, if any: the job names in call
/// order, starting and ending with `start`. `calls` gives each job's callees.
pub fn find_cycle(start: &str, calls: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    // Depth-first with an explicit stack; a job already explored without
    // reaching `start` is not explored again (linear in the graph).
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut path: Vec<(&str, usize)> = vec![(start, 0)];
    while let Some((job, next)) = path.last().copied() {
        let callees = calls.get(job).map(Vec::as_slice).unwrap_or(&[]);
        if next >= callees.len() {
            done.insert(job);
            path.pop();
            continue;
        }
        if let Some(top) = path.last_mut() {
            top.1 += 1;
        }
        let callee = callees[next].as_str();
        if callee == start {
            let mut cycle: Vec<String> = path.iter().map(|(j, _)| j.to_string()).collect();
            cycle.push(start.to_string());
            return Some(cycle);
        }
        if !done.contains(callee) && !path.iter().any(|(j, _)| *j == callee) {
            path.push((callee, 0));
        }
    }
    None
}

/// One step's template texts with the field each is written under.
fn step_templates(step: &Step) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    match &step.action {
        Action::Exec { command } => out.push(("exec", command.clone())),
        Action::Script { body, .. } => out.push(("script", body.clone())),
        Action::Copy { dest, content, .. } => {
            out.push(("copy", dest.clone()));
            if let Some(c) = content {
                out.push(("copy", c.clone()));
            }
        }
        Action::Job {
            params, targets, ..
        } => {
            for v in params.values() {
                strings_in(v, &mut |s| out.push(("params", s.to_string())));
            }
            for t in targets {
                out.push(("targets", t.clone()));
            }
        }
    }
    for v in step.env.values() {
        out.push(("env", v.clone()));
    }
    if let Some(w) = &step.workdir {
        out.push(("workdir", w.clone()));
    }
    if step.raw {
        // Raw texts are not templates: nothing in them refers to anything.
        out.retain(|(f, _)| !matches!(*f, "exec" | "script" | "copy"));
    }
    out
}

/// Whether a step's templates read what only exists while the run runs
/// (`steps.…`, `run.outputs`): such a step is rendered when it runs, not
/// at submit (its syntax was checked at apply).
pub fn reads_run_facts(step: &Step, templates: &Templates) -> bool {
    step_templates(step).iter().any(|(_, text)| {
        templates.variables(text).is_ok_and(|vars| {
            vars.iter().any(|v| {
                v == "steps"
                    || v.starts_with("steps.")
                    || v == "run"
                    || v.starts_with("run.outputs")
            })
        })
    })
}

/// Calls `f` with every string inside a JSON value.
fn strings_in(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| strings_in(x, f)),
        Value::Object(m) => m.values().for_each(|x| strings_in(x, f)),
        _ => {}
    }
}

/// Largest `params` of a `job:` step, as JSON text.
pub const MAX_CHILD_PARAMS: usize = 64 * 1024;

/// An error about `steps[i].field`, placed at the field's `file:line:col`
/// when the step was just read from a file.
fn step_error(job: &str, step: &Step, i: usize, field: &str, message: String) -> Error {
    let here = format!("steps[{i}].{field}");
    match step.origin.of(field) {
        Some(at) => Error::validation(format!("{at}: job '{job}': {here}"), message),
        None => Error::validation(format!("job '{job}': {here}"), message),
    }
}

/// The rules of conditions, outputs and `job:` steps for one job: conditions
/// compile, `steps.NAME` names an earlier step, `outputs` and `job` are used
/// where they mean something, child parameters are bounded.
pub fn validate_job(spec: &JobSpec, templates: &Templates) -> Result<()> {
    let names: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
    for (i, step) in spec.steps.iter().enumerate() {
        let earlier = &names[..i];
        let check_refs = |field: &str, vars: BTreeSet<String>| -> Result<()> {
            for r in referenced_steps(&vars) {
                match r {
                    None => {
                        return Err(step_error(
                            &spec.name,
                            step,
                            i,
                            field,
                            "refer to an earlier step by name, as `steps.NAME` (e.g. `steps.check.exit_code`)".into(),
                        ));
                    }
                    Some(n) if earlier.contains(&n.as_str()) => {}
                    Some(n) => {
                        let why = if names.contains(&n.as_str()) {
                            format!(
                                "`steps.{n}` refers to a step that runs later; only earlier steps have results"
                            )
                        } else if earlier.is_empty() {
                            format!("`steps.{n}`: there is no step '{n}' (this is the first step)")
                        } else {
                            format!(
                                "`steps.{n}`: there is no earlier step '{n}' (earlier steps: {})",
                                earlier.join(", ")
                            )
                        };
                        return Err(step_error(&spec.name, step, i, field, why));
                    }
                }
            }
            Ok(())
        };
        if let Some(when) = &step.when {
            let vars = templates.condition_variables(when).map_err(|m| {
                step_error(&spec.name, step, i, "when", format!("condition error: {m}"))
            })?;
            check_refs("when", vars)?;
        }
        for (field, text) in step_templates(step) {
            // Syntax errors are reported by the template checks.
            if let Ok(vars) = templates.variables(&text) {
                check_refs(field, vars)?;
            }
        }
        let is_job = matches!(step.action, Action::Job { .. });
        if step.outputs.is_some()
            && !matches!(step.action, Action::Exec { .. } | Action::Script { .. })
        {
            return Err(step_error(
                &spec.name,
                step,
                i,
                "outputs",
                "only exec and script steps print outputs".into(),
            ));
        }
        if let Action::Job {
            job,
            params,
            targets,
        } = &step.action
        {
            crate::spec::check_name("job", job)
                .map_err(|e| step_error(&spec.name, step, i, "job", e.to_string()))?;
            let size = serde_json::to_string(params).map(|s| s.len()).unwrap_or(0);
            if size > MAX_CHILD_PARAMS {
                return Err(step_error(
                    &spec.name,
                    step,
                    i,
                    "params",
                    format!("the parameters are {size} bytes as JSON; at most {MAX_CHILD_PARAMS}"),
                ));
            }
            for (k, v) in params {
                let mut bad = None;
                strings_in(v, &mut |s| {
                    if bad.is_none()
                        && let Err(m) = templates.check(s)
                    {
                        bad = Some(m);
                    }
                });
                if let Some(m) = bad {
                    return Err(step_error(
                        &spec.name,
                        step,
                        i,
                        "params",
                        format!("params.{k}: template error: {m}"),
                    ));
                }
            }
            for t in targets {
                templates.check(t).map_err(|m| {
                    step_error(
                        &spec.name,
                        step,
                        i,
                        "targets",
                        format!("template error: {m}"),
                    )
                })?;
            }
        }
        if is_job
            && (!step.env.is_empty()
                || step.workdir.is_some()
                || !step.limits.is_empty()
                || step.raw)
        {
            return Err(step_error(
                &spec.name,
                step,
                i,
                "job",
                "a job step takes only name, job, params, targets, when, timeout, continue_on_error and idempotent (env, workdir, limits and raw belong to the called job's steps)".into(),
            ));
        }
    }
    Ok(())
}

/// Refuses `job:` calls that form a cycle among `jobs` (being applied) and
/// `stored` (the latest stored version of each other job), naming the step
/// that closes it (with its `file:line:col` when known).
pub fn check_cycles(jobs: &[JobSpec], stored: &[JobSpec]) -> Result<()> {
    let mut calls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for j in stored {
        calls.insert(
            j.name.clone(),
            called_jobs(j)
                .into_iter()
                .map(|(_, c)| c.to_string())
                .collect(),
        );
    }
    // What is applied replaces what is stored.
    for j in jobs {
        calls.insert(
            j.name.clone(),
            called_jobs(j)
                .into_iter()
                .map(|(_, c)| c.to_string())
                .collect(),
        );
    }
    for j in jobs {
        if let Some(cycle) = find_cycle(&j.name, &calls) {
            let callee = cycle.get(1).cloned().unwrap_or_default();
            let (i, step) = called_jobs(j)
                .into_iter()
                .find(|(_, c)| *c == callee)
                .map(|(i, _)| (i, &j.steps[i]))
                .unwrap_or((0, &j.steps[0]));
            return Err(step_error(
                &j.name,
                step,
                i,
                "job",
                format!(
                    "job '{}' calls itself through job steps: {}; a job may not call itself, directly or indirectly",
                    j.name,
                    cycle.join(" → ")
                ),
            ));
        }
    }
    Ok(())
}

/// Records where each field of each step of `job` was written
/// (`file:line:col`), from the YAML text of document `doc`.
pub fn locate_steps(job: &mut JobSpec, text: &str, source: &str, doc: usize) -> Result<()> {
    let spots = step_field_marks(text, doc);
    for (i, step) in job.steps.iter_mut().enumerate() {
        if let Some(fields) = spots.get(i) {
            step.origin = Origin(
                fields
                    .iter()
                    .map(|(k, (l, c))| (k.clone(), format!("{source}:{}:{}", l + 1, c + 1)))
                    .collect(),
            );
        }
    }
    Ok(())
}

/// For document `doc` of `text`: per item of its top-level `steps` list,
/// each key's value position (0-based line, column). Best effort: anything
/// unexpected (aliases, flow styles the walk does not follow) gives fewer
/// positions, never an error.
fn step_field_marks(text: &str, doc: usize) -> Vec<BTreeMap<String, (u64, u64)>> {
    use libyaml_safer::EventData as E;
    let mut input = text.as_bytes();
    let mut parser = libyaml_safer::Parser::new();
    parser.set_input_string(&mut input);
    let mut next = move || parser.parse().ok();
    // Find the document.
    let mut seen = 0usize;
    loop {
        match next() {
            None => return vec![],
            Some(ev) => match ev.data {
                E::StreamEnd => return vec![],
                E::DocumentStart { .. } => {
                    if seen == doc {
                        break;
                    }
                    seen += 1;
                }
                _ => {}
            },
        }
    }
    // Skips the rest of a node whose first event was `first`.
    fn skip(first: &E, next: &mut dyn FnMut() -> Option<libyaml_safer::Event>) -> Option<()> {
        if !matches!(first, E::SequenceStart { .. } | E::MappingStart { .. }) {
            return Some(());
        }
        let mut depth = 1usize;
        while depth > 0 {
            match next()?.data {
                E::SequenceStart { .. } | E::MappingStart { .. } => depth += 1,
                E::SequenceEnd | E::MappingEnd => depth -= 1,
                E::StreamEnd => return None,
                _ => {}
            }
        }
        Some(())
    }
    let mut out = Vec::new();
    let mut walk = || -> Option<()> {
        if !matches!(next()?.data, E::MappingStart { .. }) {
            return None;
        }
        loop {
            let key = next()?;
            let E::Scalar { value: k, .. } = key.data else {
                return None;
            };
            let v = next()?;
            if k != "steps" {
                skip(&v.data, &mut next)?;
                continue;
            }
            if !matches!(v.data, E::SequenceStart { .. }) {
                return None;
            }
            loop {
                let item = next()?;
                match item.data {
                    E::SequenceEnd => return Some(()),
                    E::MappingStart { .. } => {
                        let mut fields = BTreeMap::new();
                        loop {
                            let key = next()?;
                            let k = match key.data {
                                E::MappingEnd => break,
                                E::Scalar { value, .. } => value,
                                _ => return None,
                            };
                            let v = next()?;
                            fields.insert(k, (v.start_mark.line, v.start_mark.column));
                            skip(&v.data, &mut next)?;
                        }
                        out.push(fields);
                    }
                    other => {
                        out.push(BTreeMap::new());
                        skip(&other, &mut next)?;
                    }
                }
            }
        }
    };
    let _ = walk();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(text: &str, json: bool) -> Result<BTreeMap<String, Value>, String> {
        let mut c = OutputCapture::default();
        // In awkward pieces, as a stream arrives.
        for piece in text.as_bytes().chunks(3) {
            c.push(piece);
        }
        c.finish(json)
    }

    #[test]
    fn output_lines_and_json() {
        let out = capture("hello\n::output version=1.2.3\n::output ok=yes=no\n", false).unwrap();
        assert_eq!(out["version"], "1.2.3");
        assert_eq!(out["ok"], "yes=no");
        let out = capture("::output a=1\nlog\n{\"b\": 2, \"a\": \"x\"}\n\n", true).unwrap();
        assert_eq!(out["a"], "x");
        assert_eq!(out["b"], 2);
        assert!(
            capture("[1,2]\n", true)
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(capture("", true).unwrap_err().contains("printed nothing"));
    }

    #[test]
    fn hostile_outputs_are_refused_naming_the_bound() {
        let big = format!("::output v={}\n", "x".repeat(MAX_OUTPUT_VALUE + 1));
        assert!(capture(&big, false).unwrap_err().contains("output `v`"));
        let many: String = (0..=MAX_OUTPUTS)
            .map(|i| format!("::output k{i}=v\n"))
            .collect();
        assert!(capture(&many, false).unwrap_err().contains("outputs"));
        let name = format!("::output {}=v\n", "n".repeat(MAX_OUTPUT_NAME + 1));
        assert!(
            capture(&name, false)
                .unwrap_err()
                .contains("invalid output name")
        );
        assert!(capture("::output bad name=v\n", false).is_err());
        assert!(
            capture("::output nothing\n", false)
                .unwrap_err()
                .contains("name=value")
        );
        let total: String = (0..5)
            .map(|i| format!("::output k{i}={}\n", "y".repeat(MAX_OUTPUT_VALUE)))
            .collect();
        assert!(capture(&total, false).unwrap_err().contains("together"));
        // A line far beyond every bound is never held whole.
        let mut c = OutputCapture::default();
        for _ in 0..100 {
            c.push(&[b'z'; 64 * 1024]);
        }
        assert!(c.line.len() <= MAX_JSON_LINE);
        assert!(c.finish(true).unwrap_err().contains("longer than"));
    }

    #[test]
    fn cycles() {
        let mut calls = BTreeMap::new();
        calls.insert("a".to_string(), vec!["b".to_string()]);
        calls.insert("b".to_string(), vec!["c".to_string(), "d".to_string()]);
        calls.insert("d".to_string(), vec!["a".to_string()]);
        assert_eq!(find_cycle("a", &calls).unwrap(), ["a", "b", "d", "a"]);
        assert_eq!(find_cycle("c", &calls), None);
        calls.insert("e".to_string(), vec!["e".to_string()]);
        assert_eq!(find_cycle("e", &calls).unwrap(), ["e", "e"]);
    }

    #[test]
    fn conditions_and_references() {
        assert_eq!(condition_expression("{{ a == 1 }}"), "a == 1");
        assert_eq!(condition_expression("a"), "a");
        let vars: BTreeSet<String> = ["steps.check.exit_code", "target.vars.role", "steps"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            referenced_steps(&vars),
            vec![None, Some("check".to_string())]
        );
    }
}
