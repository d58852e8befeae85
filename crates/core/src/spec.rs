//! Job and target files: YAML (or JSON) documents, several per file, each with
//! a `kind`. Errors name the file, the line and the field. The format is
//! documented in `docs/job-format.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{Action, Connection, DEFAULT_CONCURRENCY, JobSpec, JobStatus, Step, Target};
use crate::store::ApplyBatch;
use crate::template::{Quoting, Templates};

/// Largest job file accepted, so a mistaken `-f /dev/zero` fails fast.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Parses every document of `text`; `source` names it in errors (a path or `<stdin>`).
/// `base` resolves relative `copy.src` paths.
pub fn parse_str(text: &str, source: &str, base: Option<&Path>) -> Result<ApplyBatch> {
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
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match kinds.get(i).cloned().flatten().as_deref() {
            None => continue,
            Some("Job") => {
                let d = JobDoc::deserialize(doc).map_err(|e| yaml_error(source, i, &e))?;
                let name = d.name.clone();
                let job = d
                    .into_spec(base)
                    .map_err(|e| e.within(&format!("{source}: job '{name}'")))?;
                batch.jobs.push(job);
            }
            Some("Target") => {
                let d = TargetDoc::deserialize(doc).map_err(|e| yaml_error(source, i, &e))?;
                batch.targets.push(d.into_target());
            }
            Some(other) => {
                return Err(at(
                    source,
                    i,
                    "kind",
                    &format!("unknown kind '{other}' (expected Job or Target)"),
                ));
            }
        }
    }
    Ok(batch)
}

/// Parses one YAML (or JSON) document into JSON, e.g. a parameters file.
pub fn parse_value(text: &str) -> std::result::Result<serde_json::Value, String> {
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
        let meta = std::fs::metadata(&f)
            .map_err(|e| Error::validation(f.display().to_string(), format!("cannot read: {e}")))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(Error::validation(
                f.display().to_string(),
                format!(
                    "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                    meta.len()
                ),
            ));
        }
        let text = std::fs::read_to_string(&f)
            .map_err(|e| Error::validation(f.display().to_string(), format!("cannot read: {e}")))?;
        let b = parse_str(&text, &f.display().to_string(), f.parent())?;
        batch.targets.extend(b.targets);
        batch.jobs.extend(b.jobs);
    }
    Ok(batch)
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
        let steps = self
            .steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.into_step(i, base)
                    .map_err(|e| e.within(&format!("steps[{i}]")))
            })
            .collect::<Result<Vec<_>>>()?;
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
        })
    }
}

impl StepDoc {
    fn into_step(self, i: usize, base: Option<&Path>) -> Result<Step> {
        let set = [
            self.exec.is_some(),
            self.script.is_some(),
            self.copy.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(Error::invalid(
                "a step needs exactly one of exec, script or copy",
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
        } else {
            return Err(Error::invalid(
                "a step needs exactly one of exec, script or copy",
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
        })
    }
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
    if spec.timeout == Some(Duration::ZERO) {
        return Err(Error::validation("timeout", "must be more than 0"));
    }
    let mut names = BTreeSet::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let here = |f: &str| format!("steps[{i}].{f}");
        if !names.insert(step.name.as_str()) {
            return Err(Error::validation(
                here("name"),
                format!("duplicate step name '{}'", step.name),
            ));
        }
        if step.timeout == Some(Duration::ZERO) {
            return Err(Error::validation(here("timeout"), "must be more than 0"));
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
}
