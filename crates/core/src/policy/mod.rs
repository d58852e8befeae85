//! The command policy: rules that screen what a job would run — the
//! rendered command of each `exec` step and the body of each `script` step,
//! for each target — before it is queued, and the job text when it is
//! applied.
//!
//! A rule has a pattern (a regular expression, a small shell-token pattern,
//! or one of the built-in matchers), a scope (step kinds, target tags, job
//! names) and an action: `deny` refuses the job or run, `require_approval`
//! makes the run wait for approval even if the job does not ask for it, and
//! `warn` is recorded on the run and shown to approvers.
//!
//! **This is a safety net against mistakes, not a sandbox.** A shell is a
//! programming language; anyone who means harm can spell a command so no
//! screen recognises it (`base64 -d | sh`, a script fetched at run time, a
//! binary copied first). Isolation against a malicious operator is the
//! Docker executor's job and the permission matrix's; the policy catches the
//! slip of a tired operator and the template whose parameter turned
//! `rm -rf {{ dir }}/` into `rm -rf /`.
//!
//! The default rules ([`default_rules`]) ship enabled; an admin's
//! [`PolicyConfig`] can disable them by name, change their action, or add
//! rules of their own.

mod builtin;
mod shell;

use std::collections::{BTreeMap, HashMap};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Action, JobSpec, Target};

pub use builtin::Builtin;

/// Longest regular expression a rule may have, in bytes.
pub const MAX_REGEX_LEN: usize = 2000;
/// Most rules a policy may have (defaults included).
pub const MAX_RULES: usize = 500;
/// Longest matched text kept in a hit, in characters.
const MAX_MATCHED: usize = 200;
/// Compiled size limit of one regular expression (the `regex` crate runs
/// in linear time; this bounds memory).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Recorded on the run and shown to approvers.
    Warn,
    /// The run waits for approval (as if the job asked for it).
    RequireApproval,
    /// Refused at apply and at submit.
    Deny,
}

impl PolicyAction {
    /// The name used in files and messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyAction::Warn => "warn",
            PolicyAction::RequireApproval => "require_approval",
            PolicyAction::Deny => "deny",
        }
    }
}

/// Where a rule applies. An empty list means "any".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Step kinds (`exec`, `script`, `copy`); empty: `exec` and `script`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// The target must carry one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_tags: Vec<String>,
    /// Only these jobs (`exec` for ad-hoc commands).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
}

/// A shell-token pattern: matches a simple command (after quotes,
/// variables and wrappers such as `sudo` are taken off) whose program is one
/// of `command`, that carries every flag of `flags` and every word of
/// `args`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellPattern {
    /// Program names (base names), any of.
    pub command: Vec<String>,
    /// Flags, all required; each is `a|b|long` (any spelling: `-a`, a
    /// cluster holding `a`, `--long`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Words that must appear among the arguments, all required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// An operand must be the root directory or a glob of all of it (`/`,
    /// `//`, `/.`, `/*`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub root_operand: bool,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name, shown in refusals (`[a-z0-9-]`, at most 64).
    pub name: String,
    /// What to do on a match.
    pub action: PolicyAction,
    /// Why the rule exists, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A regular expression over the whole command or body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// A shell-token pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<ShellPattern>,
    /// A built-in matcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
    /// Where it applies.
    #[serde(default)]
    pub scope: Scope,
}

/// An admin's policy: the defaults (or not), changes to them, own rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Start from the default rules.
    #[serde(default = "yes")]
    pub defaults: bool,
    /// Default rules to leave out, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// New actions for default rules, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, PolicyAction>,
    /// More rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
}

fn yes() -> bool {
    true
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            defaults: true,
            disable: vec![],
            actions: BTreeMap::new(),
            rules: vec![],
        }
    }
}

/// A rule matched: which, how, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    /// The rule's name.
    pub rule: String,
    /// Its action.
    pub action: PolicyAction,
    /// Its description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The text that matched (a simple command, or the regex match).
    pub matched: String,
    /// The step's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The target's name (`None` when the job text was screened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Hit {
    /// The refusal of a `deny` hit, naming the step, target, rule and text.
    pub fn refusal(&self, spec: &JobSpec) -> Error {
        let step = self
            .step
            .and_then(|i| spec.steps.get(i).map(|s| (i, s.name.as_str())));
        let field = match (step, &self.target) {
            (Some((i, n)), Some(t)) => format!("steps[{i}] ({n}) on target '{t}'"),
            (Some((i, n)), None) => format!("steps[{i}] ({n})"),
            _ => "job".into(),
        };
        Error::validation(
            field,
            format!(
                "refused by policy rule '{}'{}: `{}`",
                self.rule,
                if self.description.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.description)
                },
                self.matched
            ),
        )
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Regex(Regex),
    Shell(ShellPattern),
    Builtin(Builtin),
}

#[derive(Debug, Clone)]
struct Rule {
    spec: RuleSpec,
    matcher: Matcher,
}

/// A compiled policy, ready to screen.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Default for Policy {
    /// The default rules.
    fn default() -> Self {
        Policy::from_config(&PolicyConfig::default()).unwrap_or(Policy { rules: vec![] })
    }
}

/// What is being screened: one step's text on one target.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The job's name.
    pub job: &'a str,
    /// The step's index.
    pub step: usize,
    /// `exec`, `script` or `copy`.
    pub kind: &'a str,
    /// The script's interpreter (shell rules read only shell text).
    pub interpreter: Option<&'a str>,
    /// The target, or `None` at apply (rules scoped to tags are skipped).
    pub target: Option<&'a Target>,
    /// The step's environment, which the text's variables may refer to.
    pub env: &'a [(String, String)],
}

impl Policy {
    /// No rules at all.
    pub fn empty() -> Self {
        Policy { rules: vec![] }
    }

    /// Compiles a configuration: checks names, patterns and sizes.
    pub fn from_config(cfg: &PolicyConfig) -> Result<Self> {
        let defaults = default_rules();
        for n in cfg.disable.iter().chain(cfg.actions.keys()) {
            if !defaults.iter().any(|d| &d.name == n) {
                return Err(Error::validation(
                    "policy",
                    format!(
                        "'{n}' is not a default rule (default rules: {})",
                        defaults
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut specs: Vec<RuleSpec> = if cfg.defaults {
            defaults
                .into_iter()
                .filter(|d| !cfg.disable.contains(&d.name))
                .map(|mut d| {
                    if let Some(a) = cfg.actions.get(&d.name) {
                        d.action = *a;
                    }
                    d
                })
                .collect()
        } else {
            vec![]
        };
        specs.extend(cfg.rules.iter().cloned());
        if specs.len() > MAX_RULES {
            return Err(Error::validation(
                "rules",
                format!("{} rules; at most {MAX_RULES}", specs.len()),
            ));
        }
        let mut rules = Vec::with_capacity(specs.len());
        let mut names = std::collections::BTreeSet::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            check_rule_name(&spec.name).map_err(|m| Error::validation(format!("{at}.name"), m))?;
            if !names.insert(spec.name.clone()) {
                return Err(Error::validation(
                    format!("{at}.name"),
                    format!("rule '{}' is defined twice", spec.name),
                ));
            }
            for k in &spec.scope.kinds {
                if !matches!(k.as_str(), "exec" | "script" | "copy") {
                    return Err(Error::validation(
                        format!("{at}.scope.kinds"),
                        format!("unknown step kind '{k}' (expected exec, script or copy)"),
                    ));
                }
            }
            let matcher = match (&spec.regex, &spec.shell, spec.builtin) {
                (Some(r), None, None) => {
                    if r.len() > MAX_REGEX_LEN {
                        return Err(Error::validation(
                            format!("{at}.regex"),
                            format!("{} bytes; at most {MAX_REGEX_LEN}", r.len()),
                        ));
                    }
                    Matcher::Regex(
                        regex::RegexBuilder::new(r)
                            .size_limit(REGEX_SIZE_LIMIT)
                            .build()
                            .map_err(|e| Error::validation(format!("{at}.regex"), e.to_string()))?,
                    )
                }
                (None, Some(s), None) => {
                    if s.command.is_empty() {
                        return Err(Error::validation(
                            format!("{at}.shell.command"),
                            "name at least one program",
                        ));
                    }
                    let words = s.command.len() + s.flags.len() + s.args.len();
                    if words > 100
                        || s.command
                            .iter()
                            .chain(&s.flags)
                            .chain(&s.args)
                            .any(|w| w.len() > 200)
                    {
                        return Err(Error::validation(
                            format!("{at}.shell"),
                            "too large (at most 100 words of 200 bytes)",
                        ));
                    }
                    Matcher::Shell(s.clone())
                }
                (None, None, Some(b)) => Matcher::Builtin(b),
                _ => {
                    return Err(Error::validation(
                        at,
                        "a rule needs exactly one of regex, shell or builtin",
                    ));
                }
            };
            rules.push(Rule { spec, matcher });
        }
        Ok(Policy { rules })
    }

    /// Reads a policy file (YAML or JSON) and compiles it.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self> {
        if text.len() > 1 << 20 {
            return Err(Error::validation(source, "a policy file is at most 1 MiB"));
        }
        crate::spec::check_yaml(text, source)?;
        let cfg: PolicyConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("{source}:{}:{}", l.line(), l.column()))
                .unwrap_or_else(|| source.to_string());
            Error::validation(at, e.to_string())
        })?;
        Policy::from_config(&cfg).map_err(|e| match e {
            Error::Validation { field, message } => Error::Validation {
                field: Some(match field {
                    Some(f) => format!("{source}: {f}"),
                    None => source.to_string(),
                }),
                message,
            },
            other => other,
        })
    }

    /// The rules, as written (for `policy show` and the docs).
    pub fn rules(&self) -> Vec<RuleSpec> {
        self.rules.iter().map(|r| r.spec.clone()).collect()
    }

    /// Screens one text (a rendered command or body). Hits are ordered by
    /// rule; at most one per rule.
    pub fn screen(&self, subject: &Subject<'_>, text: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        let shell_text = match subject.kind {
            "exec" => true,
            "script" => subject
                .interpreter
                .and_then(|i| i.split_whitespace().next())
                .is_some_and(|i| shell::is_shell(shell::basename(i))),
            _ => false,
        };
        let mut commands: Option<Vec<builtin::Read>> = None;
        for rule in &self.rules {
            if !in_scope(&rule.spec.scope, subject) {
                continue;
            }
            let matched = match &rule.matcher {
                Matcher::Regex(re) => re.find(text).map(|m| m.as_str().to_string()),
                Matcher::Shell(p) if shell_text => {
                    let cmds = commands.get_or_insert_with(|| read_all(text, subject.env));
                    builtin::find_shell(p, cmds)
                }
                Matcher::Builtin(b) if shell_text => {
                    let cmds = commands.get_or_insert_with(|| read_all(text, subject.env));
                    b.find(cmds)
                }
                _ => None,
            };
            if let Some(m) = matched {
                hits.push(Hit {
                    rule: rule.spec.name.clone(),
                    action: rule.spec.action,
                    description: rule.spec.description.clone(),
                    matched: shorten(&m),
                    step: Some(subject.step),
                    target: subject.target.map(|t| t.name.clone()),
                });
            }
        }
        hits
    }

    /// Screens a job's own text (templates unrendered), as at apply: rules
    /// scoped to target tags are skipped, the rest see each step's text.
    pub fn screen_job(&self, spec: &JobSpec) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (i, _, step) in spec.all_steps() {
            let env: Vec<(String, String)> = step
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let (kind, interpreter, text) = match &step.action {
                Action::Exec { command } => ("exec", None, command.as_str()),
                Action::Script { interpreter, body } => {
                    ("script", Some(interpreter.as_str()), body.as_str())
                }
                Action::Copy { content, .. } => ("copy", None, content.as_deref().unwrap_or("")),
                // The called job's own steps are screened when it is applied.
                Action::Job { .. } => ("job", None, ""),
            };
            let subject = Subject {
                job: &spec.name,
                step: i,
                kind,
                interpreter,
                target: None,
                env: &env,
            };
            hits.extend(self.screen(&subject, text));
        }
        hits
    }
}

fn check_rule_name(n: &str) -> std::result::Result<(), String> {
    if n.is_empty() || n.len() > 64 {
        return Err("a rule name has 1 to 64 characters".into());
    }
    if !n
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "'{n}': a rule name has only lower-case letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

fn in_scope(scope: &Scope, s: &Subject<'_>) -> bool {
    let kind_ok = if scope.kinds.is_empty() {
        matches!(s.kind, "exec" | "script")
    } else {
        scope.kinds.iter().any(|k| k == s.kind)
    };
    let job_ok = scope.jobs.is_empty() || scope.jobs.iter().any(|j| j == s.job);
    let tag_ok = scope.target_tags.is_empty()
        || s.target
            .is_some_and(|t| t.tags.iter().any(|tag| scope.target_tags.contains(tag)));
    kind_ok && job_ok && tag_ok
}

/// Reads a text and, recursively, the texts it runs (`$(…)`, `sh -c …`,
/// `eval …`), each as its own list of simple commands.
fn read_all(text: &str, env: &[(String, String)]) -> Vec<builtin::Read> {
    let mut vars: HashMap<String, String> = env.iter().cloned().collect();
    let mut out = Vec::new();
    let mut todo = vec![(text.to_string(), 0usize)];
    // Bounded: every level is at most the text's length, and the depth
    // and the number of texts read are capped.
    while let Some((t, depth)) = todo.pop() {
        if out.len() >= 256 {
            break;
        }
        let cmds = shell::parse(&t, &mut vars);
        if depth < shell::MAX_DEPTH {
            for c in &cmds {
                for s in &c.subs {
                    todo.push((s.clone(), depth + 1));
                }
                if let Some(inner) = shell::inner_script(&shell::normalize(&c.words)) {
                    todo.push((inner, depth + 1));
                }
            }
        }
        out.push(builtin::Read { text: t, cmds });
    }
    out
}

fn shorten(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c == shell::OPAQUE { '…' } else { c })
        .collect();
    if clean.chars().count() <= MAX_MATCHED {
        clean
    } else {
        let mut t: String = clean.chars().take(MAX_MATCHED).collect();
        t.push('…');
        t
    }
}

/// The rules that ship, enabled unless an admin disables them.
pub fn default_rules() -> Vec<RuleSpec> {
    use PolicyAction::*;
    let rule = |name: &str, action, b: Builtin, description: &str, tags: &[&str]| RuleSpec {
        name: name.into(),
        action,
        description: description.into(),
        regex: None,
        shell: None,
        builtin: Some(b),
        scope: Scope {
            target_tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Scope::default()
        },
    };
    vec![
        rule(
            "recursive-delete-root",
            Deny,
            Builtin::RecursiveDeleteRoot,
            "recursive delete of / or /*",
            &[],
        ),
        rule(
            "mkfs",
            Deny,
            Builtin::Mkfs,
            "creates a file system, erasing what was there",
            &[],
        ),
        rule(
            "block-device-write",
            Deny,
            Builtin::BlockDeviceWrite,
            "writes over a block device",
            &[],
        ),
        rule("fork-bomb", Deny, Builtin::ForkBomb, "a fork bomb", &[]),
        rule(
            "recursive-chmod-root",
            Deny,
            Builtin::RecursiveChmodRoot,
            "recursive change of mode or owner of /",
            &[],
        ),
        rule(
            "pipe-to-shell",
            RequireApproval,
            Builtin::PipeToShell,
            "runs a script downloaded at run time",
            &[],
        ),
        rule(
            "shutdown-production",
            RequireApproval,
            Builtin::Shutdown,
            "shuts down or reboots a production target",
            &["production"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_rule() {
        let e = Policy::from_yaml(
            "rules:\n  - name: Bad Name\n    action: deny\n    regex: x\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rules[7].name"), "{e}");
        let e = Policy::from_yaml(
            "rules:\n  - name: x\n    action: deny\n    regex: '('\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("regex"), "{e}");
        let e = Policy::from_yaml("disable: [nope]\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a default rule"), "{e}");
        let e = Policy::from_yaml("bogus: 1\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.yaml:1:1"), "{e}");
    }
}
