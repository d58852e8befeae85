//! Job and target files: YAML (or JSON) documents, several per file, each with
//! a `kind`. Errors name the file, the line and the field. The format is
//! documented in `docs/job-format.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{
    Action, Batches, Connection, DEFAULT_CONCURRENCY, JobSpec, JobStatus, RetryPolicy, Step,
    Strategy, Target, Threshold,
};
use crate::store::ApplyBatch;
use crate::template::{Quoting, Templates};

/// Largest job file accepted, so a mistaken `-f /dev/zero` fails fast.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Deepest nesting of collections in a YAML (or JSON) definition, counted on
/// the parser's structure (an alias counts as deep as what it refers to).
pub const MAX_YAML_DEPTH: usize = 64;

/// Most values (scalars and collections, every alias expanded) in one
/// definition text: bounds "billion laughs" alias bombs and the memory and
/// time of building the values.
pub const MAX_YAML_NODES: u64 = 100_000;

/// Checks the real structure of YAML text before it is turned into values:
/// size, nesting depth and the number of values with every alias expanded.
///
/// Why a separate pass: the parser behind `serde_yaml_ng` (libyaml) keeps a
/// list of possible simple keys per flow level and walks it for every
/// token, so deeply nested flow collections (`[[[[…` or `{a: {a: …`) cost
/// time quadratic in the input (200 KB took 38 s), and the deserializer
/// reads all events of a document before its own depth limit applies. This
/// pass streams events from a safe port of the same libyaml
/// (`libyaml-safer`) and stops at the first event over a limit, so it does
/// at most ~`MAX_YAML_DEPTH` work per token: linear in the input. A syntax
/// error is left to the real parser, which stops at the same place and
/// words it the way the rest of the errors are worded.
pub fn check_yaml(text: &str, source: &str) -> Result<()> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::validation(
            source,
            format!(
                "the text is {} bytes; the limit is {MAX_FILE_BYTES}",
                text.len()
            ),
        ));
    }
    use libyaml_safer::EventData as E;
    struct Open {
        anchor: Option<String>,
        nodes_before: u64,
        depth: usize,
        max_depth: usize,
    }
    let mut input = text.as_bytes();
    let mut parser = libyaml_safer::Parser::new();
    parser.set_input_string(&mut input);
    // Per anchor: (values it expands to, how deep it nests below itself).
    let mut anchors: std::collections::HashMap<String, (u64, usize)> = Default::default();
    let mut open: Vec<Open> = Vec::new();
    let mut nodes: u64 = 0;
    loop {
        let Ok(event) = parser.parse() else {
            return Ok(());
        };
        let at = |what: String| {
            Error::validation(
                format!(
                    "{source}:{}:{}",
                    event.start_mark.line + 1,
                    event.start_mark.column + 1
                ),
                what,
            )
        };
        let depth = open.len();
        // A value of `size` values nesting `below` levels under this point.
        let add = |size: u64, below: usize, open: &mut Vec<Open>, nodes: &mut u64| {
            *nodes = nodes.saturating_add(size);
            if let Some(o) = open.last_mut() {
                o.max_depth = o.max_depth.max(depth + below);
            }
        };
        match event.data {
            E::StreamEnd => return Ok(()),
            E::DocumentStart { .. } => anchors.clear(),
            E::Scalar { anchor, .. } => {
                add(1, 0, &mut open, &mut nodes);
                if let Some(a) = anchor {
                    anchors.insert(a, (1, 0));
                }
            }
            E::Alias { anchor } => {
                let (size, below) = anchors.get(&anchor).copied().unwrap_or((1, 0));
                if depth + below > MAX_YAML_DEPTH {
                    return Err(at(format!(
                        "the alias *{anchor} nests deeper than {MAX_YAML_DEPTH} levels"
                    )));
                }
                add(size, below, &mut open, &mut nodes);
            }
            E::SequenceStart { anchor, .. } | E::MappingStart { anchor, .. } => {
                if depth + 1 > MAX_YAML_DEPTH {
                    return Err(at(format!(
                        "nests deeper than {MAX_YAML_DEPTH} levels (the limit for definitions)"
                    )));
                }
                let before = nodes;
                add(1, 1, &mut open, &mut nodes);
                open.push(Open {
                    anchor,
                    nodes_before: before,
                    depth: depth + 1,
                    max_depth: depth + 1,
                });
            }
            E::SequenceEnd | E::MappingEnd => {
                if let Some(o) = open.pop() {
                    if let Some(parent) = open.last_mut() {
                        parent.max_depth = parent.max_depth.max(o.max_depth);
                    }
                    if let Some(a) = o.anchor {
                        anchors.insert(a, (nodes - o.nodes_before, o.max_depth + 1 - o.depth));
                    }
                }
            }
            _ => {}
        }
        if nodes > MAX_YAML_NODES {
            return Err(at(format!(
                "more than {MAX_YAML_NODES} values (aliases expanded); split the definitions into several files"
            )));
        }
    }
}

/// Parses every document of `text`; `source` names it in errors (a path or `<stdin>`).
/// `base` resolves relative `copy.src` paths. The text is checked by
/// [`check_yaml`] first.
pub fn parse_str(text: &str, source: &str, base: Option<&Path>) -> Result<ApplyBatch> {
    check_yaml(text, source)?;
    // Pass 1: syntax and the `kind` of each document.
    let mut kinds = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value =
            serde_yaml_ng::Value::deserialize(doc).map_err(|e| yaml_error(source, i, &e))?;
        let kind = match &value {
            serde_yaml_ng::Value::Null => None,
            serde_yaml_ng::Value::Mapping(m) => match m.get("kind") {
                Some(serde_yaml_ng::Value::String(k)) => Some(k.clone()),
                Some(_) => return Err(at(source, i, "kind", "must be a string: Job or Target")),
                None => {
                    return Err(at(
                        source,
                        i,
                        "kind",
                        "missing (add `kind: Job` or `kind: Target`)",
                    ));
                }
            },
            _ => {
                return Err(at(
                    source,
                    i,
                    "",
                    "a document must be a mapping with `kind: Job` or `kind: Target`",
                ));
            }
        };
        kinds.push(kind);
    }
    // Pass 2: typed parsing, so errors keep their line numbers.
    let mut batch = ApplyBatch::default();
    let mut positions = None;
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match kinds.get(i).cloned().flatten().as_deref() {
            None => continue,
            Some("Job") => {
                let d = JobDoc::deserialize(doc).map_err(|e| yaml_error(source, i, &e))?;
                let name = d.name.clone();
                let mut job = d
                    .into_spec(base)
                    .map_err(|e| e.within(&format!("{source}: job '{name}'")))?;
                crate::flow::locate_steps(&mut job, text, source, i)?;
                batch.jobs.push(job);
            }
            Some("Target") => {
                let d = TargetDoc::deserialize(doc).map_err(|e| yaml_error(source, i, &e))?;
                batch.targets.push(d.into_target());
            }
            Some("Schedule") => {
                let d = crate::schedule_doc::ScheduleDoc::deserialize(doc)
                    .map_err(|e| yaml_error(source, i, &e))?;
                let (document, fields) = positions
                    .get_or_insert_with(|| crate::schedule_doc::positions(text))
                    .get(i)
                    .cloned()
                    .unwrap_or_default();
                let place = crate::schedule::Source {
                    file: source.to_string(),
                    document,
                    fields,
                };
                batch.schedules.push(d.into_def(place)?);
            }
            Some(other) => {
                return Err(at(
                    source,
                    i,
                    "kind",
                    &format!("unknown kind '{other}' (expected Job, Target or Schedule)"),
                ));
            }
        }
    }
    crate::flow::check_cycles(&batch.jobs, &[])?;
    Ok(batch)
}

/// Parses one YAML (or JSON) document into JSON, e.g. a parameters file.
pub fn parse_value(text: &str) -> std::result::Result<serde_json::Value, String> {
    check_yaml(text, "parameters").map_err(|e| e.to_string())?;
    serde_yaml_ng::from_str::<serde_json::Value>(text).map_err(|e| e.to_string())
}

/// The files [`load_path`] reads for `path`: the file itself, or every
/// `*.yaml` / `*.yml` / `*.json` under a directory, recursively, sorted,
/// hidden names skipped. Front ends use it to check and report per file.
pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    collect(path, &mut out)?;
    Ok(out)
}

/// Loads a file, or every `*.yaml` / `*.yml` / `*.json` file under a directory (sorted).
pub fn load_path(path: &Path) -> Result<ApplyBatch> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    if files.is_empty() {
        return Err(Error::validation(
            path.display().to_string(),
            "no .yaml, .yml or .json files here",
        ));
    }
    let mut batch = ApplyBatch::default();
    for f in files {
        let text = read_file(&f)?;
        let b = parse_str(&text, &f.display().to_string(), f.parent())?;
        batch.targets.extend(b.targets);
        batch.jobs.extend(b.jobs);
        batch.schedules.extend(b.schedules);
    }
    Ok(batch)
}

/// Reads a definition file: a regular file of at most [`MAX_FILE_BYTES`].
/// Devices, FIFOs and sockets are refused before they are opened (reading
/// `/dev/zero` never ends, opening a FIFO blocks until a writer comes).
pub fn read_file(f: &Path) -> Result<String> {
    use std::io::Read as _;
    let name = || f.display().to_string();
    let meta =
        std::fs::metadata(f).map_err(|e| Error::validation(name(), format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(Error::validation(
            name(),
            "not a regular file (devices, FIFOs and sockets are refused; use `-f -` to read standard input)",
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::validation(
            name(),
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
    }
    let mut text = String::new();
    std::fs::File::open(f)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| Error::validation(name(), format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::validation(
            name(),
            format!("file grew past the limit of {MAX_FILE_BYTES} bytes while being read"),
        ));
    }
    Ok(text)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::validation(path.display().to_string(), format!("cannot read: {e}")))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| {
                Error::validation(path.display().to_string(), format!("cannot list: {e}"))
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if e.is_dir() {
                collect(&e, out)?;
            } else if matches!(
                e.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(e);
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn yaml_error(source: &str, doc: usize, e: &serde_yaml_ng::Error) -> Error {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            // The library appends " at line L column C"; we lead with it instead.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            Error::Validation {
                field: Some(format!("{source}:{}:{}", loc.line(), loc.column())),
                message: msg,
            }
        }
        None => Error::Validation {
            field: Some(format!("{source}: document {}", doc + 1)),
            message: msg,
        },
    }
}

fn at(source: &str, doc: usize, field: &str, msg: &str) -> Error {
    let place = if field.is_empty() {
        format!("{source}: document {}", doc + 1)
    } else {
        format!("{source}: document {}: {field}", doc + 1)
    };
    Error::validation(place, msg)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobDoc {
    #[allow(dead_code)]
    kind: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    status: JobStatus,
    #[serde(default)]
    params: Option<serde_json::Value>,
    #[serde(default)]
    targets: Option<OneOrMany>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default, with = "crate::model::opt_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    secrets: Vec<String>,
    steps: Vec<StepDoc>,
    #[serde(default)]
    notify: Vec<crate::engine::notify::NotifyRule>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    batch: Option<Batches>,
    #[serde(default, with = "crate::rollout::opt_pause")]
    pause: Option<Duration>,
    #[serde(default)]
    max_failures: Option<Threshold>,
    #[serde(default)]
    retry: Option<RetryPolicy>,
    #[serde(default)]
    on_failure: Vec<StepDoc>,
    #[serde(default)]
    finally: Vec<StepDoc>,
    approval: Option<crate::approval::ApprovalSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDoc {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    exec: Option<String>,
    #[serde(default)]
    script: Option<String>,
    #[serde(default)]
    interpreter: Option<String>,
    #[serde(default)]
    copy: Option<CopyDoc>,
    #[serde(default, with = "crate::model::opt_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    continue_on_error: bool,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    env: BTreeMap<String, Scalar>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    limits: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    retry: Option<RetryPolicy>,
    when: Option<String>,
    #[serde(default)]
    outputs: Option<crate::model::OutputsMode>,
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    params: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    targets: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyDoc {
    dest: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    mode: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDoc {
    #[allow(dead_code)]
    kind: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    connection: Connection,
    #[serde(default)]
    credential: Option<String>,
}

impl TargetDoc {
    fn into_target(self) -> Target {
        Target {
            name: self.name,
            description: self.description,
            tags: self.tags,
            vars: self.vars,
            connection: self.connection,
            credential: self.credential,
        }
    }
}

impl JobDoc {
    fn into_spec(self, base: Option<&Path>) -> Result<JobSpec> {
        // Default names count through all three lists (`step-4` is the
        // fourth step overall), like step indices do.
        let mut index = 0;
        let mut list = |docs: Vec<StepDoc>, field: &str| {
            docs.into_iter()
                .enumerate()
                .map(|(i, s)| {
                    index += 1;
                    s.into_step(index - 1, base)
                        .map_err(|e| e.within(&format!("{field}[{i}]")))
                })
                .collect::<Result<Vec<_>>>()
        };
        let steps = list(self.steps, "steps")?;
        let on_failure = list(self.on_failure, "on_failure")?;
        let finally = list(self.finally, "finally")?;
        Ok(JobSpec {
            name: self.name,
            description: self.description,
            tags: self.tags,
            status: self.status,
            params: self.params.unwrap_or(serde_json::Value::Null),
            targets: match self.targets {
                None => vec!["local".into()],
                Some(OneOrMany::One(s)) => vec![s],
                Some(OneOrMany::Many(v)) => v,
            },
            concurrency: self.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            timeout: self.timeout,
            secrets: self.secrets,
            steps,
            notify: check_notify(self.notify)?,
            strategy: self.strategy,
            batch: self.batch,
            pause: self.pause,
            max_failures: self.max_failures,
            retry: self.retry,
            on_failure,
            finally,
            approval: self.approval,
        })
    }
}

impl StepDoc {
    fn into_step(self, i: usize, base: Option<&Path>) -> Result<Step> {
        let set = [
            self.exec.is_some(),
            self.script.is_some(),
            self.copy.is_some(),
            self.job.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(Error::invalid(
                "a step needs exactly one of exec, script, copy or job",
            ));
        }
        if self.job.is_none() && (self.params.is_some() || self.targets.is_some()) {
            return Err(Error::validation(
                if self.params.is_some() {
                    "params"
                } else {
                    "targets"
                },
                "only applies to job steps (`job: NAME`)",
            ));
        }
        if self.interpreter.is_some() && self.script.is_none() {
            return Err(Error::validation(
                "interpreter",
                "only applies to script steps",
            ));
        }
        let action = if let Some(command) = self.exec {
            Action::Exec { command }
        } else if let Some(body) = self.script {
            Action::Script {
                interpreter: self.interpreter.unwrap_or_else(|| "sh".into()),
                body,
            }
        } else if let Some(c) = self.copy {
            let mode = match c.mode {
                None => 0o644,
                Some(Scalar::S(s)) => parse_mode(&s)?,
                Some(_) => {
                    return Err(Error::validation(
                        "copy.mode",
                        "write the mode as a quoted octal string, e.g. \"0644\" (a bare number is ambiguous)",
                    ));
                }
            };
            let src = c.src.map(|s| match base {
                Some(b) if Path::new(&s).is_relative() => b.join(&s).display().to_string(),
                _ => s,
            });
            Action::Copy {
                dest: c.dest,
                content: c.content,
                src,
                mode,
            }
        } else if let Some(job) = self.job {
            Action::Job {
                job,
                params: self.params.unwrap_or_default(),
                targets: match self.targets {
                    None => vec![],
                    Some(OneOrMany::One(s)) => vec![s],
                    Some(OneOrMany::Many(v)) => v,
                },
            }
        } else {
            return Err(Error::invalid(
                "a step needs exactly one of exec, script, copy or job",
            ));
        };
        Ok(Step {
            name: self.name.unwrap_or_else(|| format!("step-{}", i + 1)),
            action,
            timeout: self.timeout,
            continue_on_error: self.continue_on_error,
            idempotent: self.idempotent,
            env: self
                .env
                .into_iter()
                .map(|(k, v)| (k, v.into_string()))
                .collect(),
            workdir: self.workdir,
            raw: self.raw,
            limits: self.limits,
            retry: self.retry,
            when: self.when,
            outputs: self.outputs,
            origin: Default::default(),
        })
    }
}

/// A job's `notify:` rules, bounded and checked (`notify[i].field: …`).
fn check_notify(
    rules: Vec<crate::engine::notify::NotifyRule>,
) -> Result<Vec<crate::engine::notify::NotifyRule>> {
    use crate::engine::notify::MAX_RULES;
    if rules.len() > MAX_RULES {
        return Err(Error::validation(
            "notify",
            format!("at most {MAX_RULES} rules, got {}", rules.len()),
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        if !r.jobs.is_empty() {
            return Err(Error::validation(
                format!("notify[{i}].jobs"),
                "a job's own rules apply to that job only; filter by job in global rules",
            ));
        }
        r.check().map_err(|e| e.within(&format!("notify[{i}]")))?;
    }
    Ok(rules)
}

fn parse_mode(s: &str) -> Result<u32> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(Error::validation(
            "copy.mode",
            format!("'{s}' is not an octal mode like \"0644\""),
        )),
    }
}

/// Names of jobs and targets: letters, digits, `_ . -`, starting with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(
            "name",
            format!(
                "invalid {what} name '{name}' (use letters, digits, '_', '.', '-'; at most 128; start with a letter or digit)"
            ),
        ))
    }
}

/// Checks a job spec completely: names, schema, selector, templates, limits.
pub fn validate_job(spec: &JobSpec, templates: &Templates) -> Result<()> {
    check_name("job", &spec.name)?;
    crate::params::check_schema(&spec.params)?;
    crate::selector::check_syntax(&spec.targets)?;
    if spec.steps.is_empty() {
        return Err(Error::validation("steps", "a job needs at least one step"));
    }
    if spec.concurrency == 0 {
        return Err(Error::validation("concurrency", "must be at least 1"));
    }
    if let Some(t) = spec.timeout {
        crate::duration::check_timeout(t).map_err(|m| Error::validation("timeout", m))?;
    }
    check_rollout(spec)?;
    if let Some(a) = &spec.approval {
        a.check("approval")?;
    }
    let mut names = BTreeSet::new();
    let (n, f) = (spec.steps.len(), spec.on_failure.len());
    for (g, phase, step) in spec.all_steps() {
        let i = match phase {
            crate::model::StepPhase::Main => g,
            crate::model::StepPhase::OnFailure => g - n,
            crate::model::StepPhase::Finally => g - n - f,
        };
        let list = phase.as_str();
        let here = |f: &str| format!("{list}[{i}].{f}");
        if let Some(r) = &step.retry {
            r.check().map_err(|m| Error::validation(here("retry"), m))?;
        }
        if !names.insert(step.name.as_str()) {
            return Err(Error::validation(
                here("name"),
                format!("duplicate step name '{}'", step.name),
            ));
        }
        if let Some(t) = step.timeout {
            crate::duration::check_timeout(t).map_err(|m| Error::validation(here("timeout"), m))?;
        }
        let tpl_in = |f: String, src: &str, q: &[Quoting]| {
            if step.raw {
                return Ok(());
            }
            // Any of the quotings this text may be rendered with will do;
            // submit re-checks with the target's own.
            let mut res = templates.check(src);
            if let (Ok(()), Some((&first, others))) = (&res, q.split_first()) {
                res = templates.check_for(src, first);
                if others.iter().any(|&o| templates.check_for(src, o).is_ok()) {
                    res = Ok(());
                }
            }
            res.map_err(|m| Error::validation(f, format!("template error: {m}")))
        };
        let tpl = |f: String, src: &str| tpl_in(f, src, &[]);
        match &step.action {
            Action::Exec { command } => {
                if command.trim().is_empty() {
                    return Err(Error::validation(here("exec"), "empty command"));
                }
                tpl_in(
                    here("exec"),
                    command,
                    &[Quoting::Shell, Quoting::PowerShell],
                )?;
            }
            Action::Script { interpreter, body } => {
                if interpreter.trim().is_empty() {
                    return Err(Error::validation(here("interpreter"), "empty interpreter"));
                }
                tpl_in(
                    here("script"),
                    body,
                    &[Quoting::for_interpreter(interpreter)],
                )?;
            }
            Action::Copy {
                dest,
                content,
                src,
                mode,
            } => {
                tpl(here("copy.dest"), dest)?;
                match (content, src) {
                    (Some(c), None) => tpl(here("copy.content"), c)?,
                    (None, Some(_)) => {}
                    _ => {
                        return Err(Error::validation(
                            here("copy"),
                            "give exactly one of content or src",
                        ));
                    }
                }
                if *mode > 0o7777 {
                    return Err(Error::validation(
                        here("copy.mode"),
                        "must be at most 07777",
                    ));
                }
            }
            // Checked with the other flow rules (crate::flow::validate_job).
            Action::Job { .. } => {}
        }
        for (k, v) in &step.env {
            if k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || k.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(Error::validation(
                    here("env"),
                    format!("invalid variable name '{k}'"),
                ));
            }
            tpl(here(&format!("env.{k}")), v)?;
        }
        if let Some(w) = &step.workdir {
            tpl(here("workdir"), w)?;
        }
    }
    crate::flow::validate_job(spec, templates)
}

/// Checks what single rollout values cannot: settings that only apply to
/// the rolling strategy, and the job's retry policy.
fn check_rollout(spec: &JobSpec) -> Result<()> {
    if spec.strategy == Strategy::Parallel {
        for (set, field) in [
            (spec.batch.is_some(), "batch"),
            (spec.pause.is_some(), "pause"),
        ] {
            if set {
                return Err(Error::validation(
                    field,
                    "applies to `strategy: rolling` only (add it, or remove this setting)",
                ));
            }
        }
    }
    if let Some(r) = &spec.retry {
        r.check().map_err(|m| Error::validation("retry", m))?;
    }
    Ok(())
}

/// Checks a target definition.
pub fn validate_target(t: &Target) -> Result<()> {
    check_name("target", &t.name)?;
    match &t.connection {
        Connection::Local => Ok(()),
        Connection::Ssh {
            host,
            user,
            known_hosts,
            ..
        } => {
            if host.is_empty() || user.is_empty() {
                return Err(Error::validation("connection", "ssh needs host and user"));
            }
            // Workers read the file when they connect, from wherever they
            // run: a relative path would depend on their working directory.
            if let Some(path) = known_hosts
                && !Path::new(path).is_absolute()
            {
                return Err(Error::validation(
                    "connection.known_hosts",
                    format!(
                        "'{path}' is not an absolute path; workers read the file when they \
                         connect, so give its full path (e.g. /etc/opsconductor/known_hosts)"
                    ),
                ));
            }
            Ok(())
        }
        Connection::Winrm { host, .. } if host.is_empty() => {
            Err(Error::validation("connection", "winrm needs host"))
        }
        Connection::Docker { image, .. } if image.is_empty() => {
            Err(Error::validation("connection", "docker needs image"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
kind: Target
name: web-1
tags: [web]
---
kind: Job
name: deploy
params:
  type: object
  properties:
    version: {type: string}
  required: [version]
targets: tag:web
timeout: 10m
steps:
  - name: say
    exec: echo {{ params.version }}
    timeout: 30s
    env: {N: 3}
  - script: |
      echo hi
    interpreter: bash
  - copy: {dest: /tmp/x, content: "v={{ params.version }}", mode: "0600"}
"#;

    #[test]
    fn parses_documents() {
        let b = parse_str(GOOD, "good.yaml", None).unwrap();
        assert_eq!(b.targets.len(), 1);
        assert_eq!(b.jobs.len(), 1);
        let j = &b.jobs[0];
        assert_eq!(j.targets, vec!["tag:web"]);
        assert_eq!(j.timeout, Some(Duration::from_secs(600)));
        assert_eq!(j.steps[1].name, "step-2");
        assert_eq!(j.steps[0].env["N"], "3");
        assert!(matches!(
            j.steps[2].action,
            Action::Copy { mode: 0o600, .. }
        ));
        validate_job(j, &Templates::new()).unwrap();
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse_str(
            "kind: Job\nname: x\nsteps:\n  - exce: true\n",
            "f.yaml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("f.yaml:4:") && e.contains("unknown field `exce`"),
            "{e}"
        );
        let e = parse_str(
            "kind: Job\nname: x\nsteps:\n  - exec: a\n    script: b\n",
            "f.yaml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("f.yaml: job 'x'.steps[0]") && e.contains("exactly one"),
            "{e}"
        );
        let e = parse_str("name: x\n", "f.yaml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind"), "{e}");
        let e = parse_str("kind: Job\nname: [\n", "f.yaml", None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.yaml:"), "{e}");
        let e = parse_str("kind: Widget\nname: x\n", "f.yaml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown kind 'Widget'"), "{e}");
        let e = parse_str(
            "kind: Job\nname: x\nsteps:\n  - copy: {dest: /x, content: a, mode: 644}\n",
            "f.yaml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("copy.mode"), "{e}");
    }

    #[test]
    fn semantic_validation() {
        let t = Templates::new();
        let mut j = parse_str(GOOD, "g", None).unwrap().jobs.remove(0);
        j.steps[0].action = Action::Exec {
            command: "echo {{ oops".into(),
        };
        let e = validate_job(&j, &t).unwrap_err().to_string();
        assert!(e.starts_with("steps[0].exec: template error"), "{e}");
        j.name = "bad name".into();
        assert!(validate_job(&j, &t).is_err());
    }

    const SSH_TARGET: &str = "kind: Target\nname: db-1\nconnection:\n  type: ssh\n  host: db1.example.net\n  user: ops\n";

    #[test]
    fn ssh_targets_may_name_a_known_hosts_file() {
        let yaml = format!("{SSH_TARGET}  known_hosts: /etc/opsconductor/known_hosts\n");
        let t = parse_str(&yaml, "t.yaml", None).unwrap().targets.remove(0);
        match &t.connection {
            Connection::Ssh {
                known_hosts,
                host_key,
                port,
                ..
            } => {
                assert_eq!(
                    known_hosts.as_deref(),
                    Some("/etc/opsconductor/known_hosts")
                );
                assert_eq!(*host_key, None);
                assert_eq!(*port, 22);
            }
            other => panic!("expected ssh, got {other:?}"),
        }
        validate_target(&t).unwrap();
        // Omitted, it stays absent (and is not written back out).
        let t = parse_str(SSH_TARGET, "t.yaml", None)
            .unwrap()
            .targets
            .remove(0);
        assert!(matches!(
            &t.connection,
            Connection::Ssh {
                known_hosts: None,
                ..
            }
        ));
        let json = serde_json::to_value(&t.connection).unwrap();
        assert!(json.get("known_hosts").is_none(), "{json}");
    }

    #[test]
    fn known_hosts_must_be_absolute_and_typos_are_errors() {
        let yaml = format!("{SSH_TARGET}  known_hosts: keys/known_hosts\n");
        let t = parse_str(&yaml, "t.yaml", None).unwrap().targets.remove(0);
        let e = validate_target(&t).unwrap_err().to_string();
        assert!(
            e.contains("connection.known_hosts") && e.contains("absolute"),
            "{e}"
        );
        let yaml = format!("{SSH_TARGET}  known_host: /etc/known_hosts\n");
        let e = parse_str(&yaml, "t.yaml", None).unwrap_err().to_string();
        assert!(
            e.starts_with("t.yaml:") && e.contains("unknown field `known_host`"),
            "{e}"
        );
        assert!(e.contains("known_hosts"), "lists the allowed keys: {e}");
    }

    /// 1 MB documents of the shapes that were slow, deep or explosive.
    pub(crate) fn adversarial_documents() -> Vec<(&'static str, String)> {
        const MB: usize = 1024 * 1024;
        let laughs = {
            let mut t = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..12 {
                let p = i - 1;
                t.push_str(&format!(
                    "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
                ));
            }
            t
        };
        let wide_alias = {
            let mut t = format!("big: &b [{}x]\nuse: [", "x, ".repeat(50_000));
            while t.len() < MB {
                t.push_str("*b, ");
            }
            t.push_str("]\n");
            t
        };
        vec![
            (
                "nested flow [",
                format!("kind: Job\nname: {}", "[".repeat(MB)),
            ),
            (
                "nested flow {",
                format!("kind: Job\nname: {}", "{a: ".repeat(MB / 4)),
            ),
            ("nested flow [ on lines", "[\n".repeat(MB / 2)),
            (
                "nested block mappings",
                (0..1400)
                    .map(|i| format!("{}k:\n", " ".repeat(i)))
                    .collect(),
            ),
            (
                "single-quoted string with quotes and brackets",
                format!(
                    "kind: Job\nname: x\ndescription: '{}'\nsteps: {}",
                    "\"[{''".repeat(MB / 6),
                    "[".repeat(10_000)
                ),
            ),
            ("billion laughs", laughs),
            ("wide alias expansion", wide_alias),
            ("huge plain key", format!("{}: 1\n", "k".repeat(MB))),
            ("huge quoted key", format!("\"{}\": 1\n", "k".repeat(MB))),
            ("a million values", "- 1\n".repeat(MB / 4)),
        ]
    }

    #[test]
    fn adversarial_yaml_is_refused_fast_on_its_real_structure() {
        for (shape, text) in adversarial_documents() {
            let t = std::time::Instant::now();
            let r = parse_str(&text, "bomb.yaml", None);
            let took = t.elapsed();
            println!("{shape}: {} bytes refused in {took:?}", text.len());
            let e = r.err().unwrap_or_else(|| panic!("{shape}: accepted"));
            assert!(e.to_string().starts_with("bomb.yaml"), "{shape}: {e}");
            assert!(
                took < std::time::Duration::from_secs(5),
                "{shape}: {took:?}"
            );
        }
        // The old text scan was fooled by a `"` inside a single-quoted
        // string; the structure is what counts, in both directions.
        let deep = format!("a: 'x\"y'\nb: {}1{}\n", "[".repeat(65), "]".repeat(65));
        let e = check_yaml(&deep, "q.yaml").unwrap_err().to_string();
        assert!(e.contains("deeper than 64"), "{e}");
        let fine = format!("a: '{}'\nb: [[1]]\n", "[[[[\"".repeat(100));
        check_yaml(&fine, "q.yaml").unwrap();
        // An alias is as deep as what it refers to.
        let nested = format!(
            "a: &a {}1{}\nb: [[[[*a]]]]\n",
            "[".repeat(62),
            "]".repeat(62)
        );
        let e = check_yaml(&nested, "q.yaml").unwrap_err().to_string();
        assert!(e.contains("*a") && e.contains("deeper"), "{e}");
        // Ordinary anchors and aliases still work.
        let ok = "kind: Job\nname: x\nsteps:\n  - exec: a\n    env: &e {A: 1}\n  - exec: b\n    env: *e\n";
        assert_eq!(
            parse_str(ok, "ok.yaml", None).unwrap().jobs[0].steps[1].env["A"],
            "1"
        );
    }

    #[test]
    fn only_regular_files_are_read() {
        let e = load_path(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = load_path(&big).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn bad_rollout_values_are_refused_at_their_line_and_column() {
        let t = Templates::new();
        for (yaml, at, what) in [
            (
                "strategy: rolling\nbatch: 0\n",
                "t.yaml:5:8",
                "out of range",
            ),
            ("strategy: rolling\nbatch: -3\n", "t.yaml:5:8", "negative"),
            (
                "strategy: rolling\nbatch: 150%\n",
                "t.yaml:5:8",
                "out of range",
            ),
            (
                "strategy: rolling\nbatch: 99999999999\n",
                "t.yaml:5:8",
                "out of range",
            ),
            (
                "strategy: rolling\nbatch: [1, 0%]\n",
                "t.yaml:5:12",
                "out of range",
            ),
            (
                "strategy: rolling\nbatch: 2.5\n",
                "t.yaml:5:8",
                "whole number",
            ),
            ("strategy: sideways\n", "t.yaml:4:11", "unknown variant"),
            ("strategy: rolling\npause: 2h\n", "t.yaml:5:8", "maximum"),
            ("max_failures: -1\n", "t.yaml:4:15", "negative"),
            ("max_failures: 101%\n", "t.yaml:4:15", "out of range"),
            ("retry: {attempts: 0}\n", "t.yaml:4:", "attempts 0"),
            ("retry: {attempts: 1000}\n", "t.yaml:4:", "attempts 1000"),
            ("retry: {attempts: 3, delay: 5h}\n", "t.yaml:4:", "maximum"),
            (
                "retry: {attempts: 3, on: [sometimes]}\n",
                "t.yaml:4:",
                "sometimes",
            ),
            (
                "retry: {attempts: 3, tries: 2}\n",
                "t.yaml:4:",
                "unknown field `tries`",
            ),
            ("rollout: fast\n", "t.yaml:4:", "unknown field `rollout`"),
        ] {
            let text = format!("kind: Job\nname: x\nsteps: [{{exec: a}}]\n{yaml}");
            let e = parse_str(&text, "t.yaml", None).unwrap_err().to_string();
            assert!(e.starts_with(at) && e.contains(what), "{yaml}: {e}");
        }
        // Step-level retries and cleanup steps are checked the same way.
        let e = parse_str(
            "kind: Job\nname: x\nsteps:\n  - exec: a\n    retry: {attempts: 101}\n",
            "t.yaml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("t.yaml:5:") && e.contains("attempts 101"),
            "{e}"
        );
        let e = parse_str(
            "kind: Job\nname: x\nsteps: [{exec: a}]\nfinally:\n  - exce: b\n",
            "t.yaml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.yaml:5:") && e.contains("exce"), "{e}");
        // What only the whole job shows: a field path.
        for (yaml, field) in [
            ("batch: 2\n", "batch"),
            ("pause: 5s\n", "pause"),
            ("retry: {attempts: 3, delay: 10s, max_delay: 1s}\n", "retry"),
            ("finally:\n  - name: a\n    exec: b\n", "finally[0].name"),
        ] {
            let text = format!("kind: Job\nname: x\nsteps: [{{name: a, exec: a}}]\n{yaml}");
            let j = parse_str(&text, "t.yaml", None).unwrap().jobs.remove(0);
            let e = validate_job(&j, &t).unwrap_err().to_string();
            assert!(e.starts_with(field), "{yaml}: {e}");
        }
    }

    #[test]
    fn impossible_timeouts_are_refused_naming_the_field() {
        let t = Templates::new();
        for (yaml, field) in [
            (
                "timeout: 18446744073709551615\nsteps: [{exec: a}]",
                "timeout",
            ),
            ("timeout: 8d\nsteps: [{exec: a}]", "timeout"),
            (
                "steps: [{exec: a, timeout: 1000000000000000d}]",
                "steps[0].timeout",
            ),
            ("steps: [{exec: a, timeout: 0s}]", "steps[0].timeout"),
        ] {
            let text = format!("kind: Job\nname: x\n{yaml}\n");
            let e = match parse_str(&text, "t.yaml", None) {
                Ok(mut b) => validate_job(&b.jobs.remove(0), &t).unwrap_err(),
                Err(e) => e,
            }
            .to_string();
            assert!(e.contains(field), "{yaml}: {e}");
        }
        let e = parse_str(
            "kind: Job\nname: x\ntimeout: 213503982334602d\nsteps: [{exec: a}]\n",
            "t.yaml",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("too large"), "{e}");
    }
}
