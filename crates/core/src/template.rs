//! MiniJinja templates with quoting by default: in `exec` and `script` steps
//! every substituted value is quoted for the language it lands in, so a
//! parameter can never become code by accident. `{{ x | raw }}` opts out.

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// How substituted values are quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// POSIX shell single quotes (`exec`, `sh`/`bash` scripts).
    Shell,
    /// PowerShell single quotes.
    PowerShell,
    /// Python string literals.
    Python,
    /// Inserted verbatim (file content, paths, environment values).
    None,
    /// No safe quoting exists (Windows `cmd.exe`): any substitution is an
    /// error unless marked `| raw` after validation.
    Refuse,
}

impl Quoting {
    /// The quoting for a script interpreter (`bash`, `python3 -u`, `pwsh`, …).
    pub fn for_interpreter(interpreter: &str) -> Self {
        let prog = interpreter.split_whitespace().next().unwrap_or("");
        let base = prog.rsplit('/').next().unwrap_or(prog);
        if base == "cmd" || base == "cmd.exe" {
            Quoting::Refuse
        } else if base.starts_with("python") {
            Quoting::Python
        } else if base.starts_with("pwsh") || base.starts_with("powershell") {
            Quoting::PowerShell
        } else {
            Quoting::Shell
        }
    }

    fn name(self) -> &'static str {
        match self {
            Quoting::Shell => "t.sh",
            Quoting::PowerShell => "t.ps1",
            Quoting::Python => "t.py",
            Quoting::None => "t.txt",
            Quoting::Refuse => "t.cmd",
        }
    }
}

/// The template engine. Cheap to share; create once.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// An engine with strict undefined values (a typo is an error, not an empty string).
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Scripts and file contents end with a newline: keep it. Block tags
        // (`{% if %}`) should not leave blank lines in scripts.
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env.set_auto_escape_callback(|name| match name.rsplit('.').next() {
            Some("sh") => AutoEscape::Custom("sh".into()),
            Some("ps1") => AutoEscape::Custom("ps1".into()),
            Some("py") => AutoEscape::Custom("py".into()),
            Some("cmd") => AutoEscape::Custom("cmd".into()),
            _ => AutoEscape::None,
        });
        env.set_formatter(|out, state, value| {
            if matches!(state.auto_escape(), AutoEscape::Custom(q) if q == "cmd")
                && !value.is_safe()
                && !matches!(value.kind(), minijinja::value::ValueKind::Number)
            {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "cmd.exe has no safe quoting, so values cannot be substituted into cmd commands: \
                     give the target `vars: {shell: powershell}`, or validate the value with a schema \
                     pattern and write `{{ value | raw }}`",
                ));
            }
            let text = match state.auto_escape() {
                _ if value.is_safe() => value.to_string(),
                AutoEscape::Custom(q) if q == "sh" => scalar_or(value, shell_quote),
                AutoEscape::Custom(q) if q == "ps1" => match value.kind() {
                    minijinja::value::ValueKind::Bool => {
                        if value.is_true() { "$true" } else { "$false" }.into()
                    }
                    _ => scalar_or(value, powershell_quote),
                },
                AutoEscape::Custom(q) if q == "py" => python_literal(value),
                _ => plain(value),
            };
            out.write_str(&text).map_err(minijinja::Error::from)
        });
        env.add_filter("raw", |v: Value| Value::from_safe_string(v.to_string()));
        env.add_filter("shell_quote", |v: Value| {
            Value::from_safe_string(shell_quote(&v.to_string()))
        });
        Self { env }
    }

    /// Checks syntax without rendering.
    pub fn check(&self, source: &str) -> Result<(), String> {
        self.env
            .template_from_str(source)
            .map(|_| ())
            .map_err(describe)
    }

    /// Renders `source` with `ctx`, quoting substitutions as `quoting` says.
    pub fn render(
        &self,
        source: &str,
        quoting: Quoting,
        ctx: &serde_json::Value,
    ) -> Result<String, String> {
        if !source.contains("{{") && !source.contains("{%") {
            return Ok(source.to_string());
        }
        let tmpl = self
            .env
            .template_from_named_str(quoting.name(), source)
            .map_err(describe)?;
        tmpl.render(Value::from(minijinja::value::Serde(ctx)))
            .map_err(describe)
    }
}

fn describe(e: minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    msg
}

/// Numbers and booleans cannot inject anything: insert them bare.
fn scalar_or(value: &Value, quote: fn(&str) -> String) -> String {
    match value.kind() {
        minijinja::value::ValueKind::Number | minijinja::value::ValueKind::Bool => plain(value),
        _ => quote(&plain(value)),
    }
}

/// The text of a value as a shell or a file expects it: booleans as
/// `true`/`false` (MiniJinja prints Python's `True`), `none` as empty.
fn plain(value: &Value) -> String {
    match value.kind() {
        minijinja::value::ValueKind::Bool => if value.is_true() { "true" } else { "false" }.into(),
        minijinja::value::ValueKind::None => String::new(),
        _ => value.to_string(),
    }
}

/// Quotes for a POSIX shell; leaves plainly safe words bare for readability.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Quotes for PowerShell: single quotes, with every kind of single quote doubled.
pub fn powershell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn python_literal(value: &Value) -> String {
    match value.kind() {
        minijinja::value::ValueKind::Number => value.to_string(),
        minijinja::value::ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        minijinja::value::ValueKind::None => "None".into(),
        // JSON string syntax is valid Python string syntax.
        _ => serde_json::to_string(&value.to_string()).unwrap_or_else(|_| "''".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quotes_by_default_and_raw_opts_out() {
        let t = Templates::new();
        let ctx = json!({"params": {"v": "1.0; rm -rf /", "n": 3, "q": "it's"}});
        assert_eq!(
            t.render("echo {{ params.v }}", Quoting::Shell, &ctx)
                .unwrap(),
            "echo '1.0; rm -rf /'"
        );
        assert_eq!(
            t.render("echo {{ params.q }}", Quoting::Shell, &ctx)
                .unwrap(),
            r"echo 'it'\''s'"
        );
        assert_eq!(
            t.render("sleep {{ params.n }}", Quoting::Shell, &ctx)
                .unwrap(),
            "sleep 3"
        );
        assert_eq!(
            t.render("{{ params.v | raw }}", Quoting::Shell, &ctx)
                .unwrap(),
            "1.0; rm -rf /"
        );
        assert_eq!(
            t.render("x={{ params.q }}", Quoting::Python, &ctx).unwrap(),
            "x=\"it's\""
        );
        assert_eq!(
            t.render("{{ params.q }}", Quoting::PowerShell, &ctx)
                .unwrap(),
            "'it''s'"
        );
        assert_eq!(
            t.render("{{ params.v }}", Quoting::None, &ctx).unwrap(),
            "1.0; rm -rf /"
        );
        assert_eq!(
            t.render("{{ 'plain' }}", Quoting::Shell, &ctx).unwrap(),
            "plain"
        );
        let b = json!({"on": true, "off": false});
        assert_eq!(
            t.render("{{ on }} {{ off }}", Quoting::Shell, &b).unwrap(),
            "true false"
        );
        assert_eq!(
            t.render("{{ on }}", Quoting::PowerShell, &b).unwrap(),
            "$true"
        );
        assert_eq!(t.render("{{ on }}", Quoting::Python, &b).unwrap(), "True");
        assert_eq!(t.render("{{ on }}", Quoting::None, &b).unwrap(), "true");
    }

    #[test]
    fn undefined_is_an_error() {
        let t = Templates::new();
        let err = t
            .render(
                "echo {{ params.missing }}",
                Quoting::Shell,
                &json!({"params": {}}),
            )
            .unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert!(t.check("echo {{ oops").is_err());
    }

    #[test]
    fn cmd_refuses_substitution() {
        let t = Templates::new();
        let ctx = json!({"v": "a & b", "n": 3});
        assert!(
            t.render("echo {{ v }}", Quoting::Refuse, &ctx)
                .unwrap_err()
                .contains("cmd.exe")
        );
        assert_eq!(
            t.render("echo {{ n }} {{ v | raw }}", Quoting::Refuse, &ctx)
                .unwrap(),
            "echo 3 a & b"
        );
    }

    #[test]
    fn interpreter_quoting() {
        assert_eq!(
            Quoting::for_interpreter("/usr/bin/python3 -u"),
            Quoting::Python
        );
        assert_eq!(Quoting::for_interpreter("bash"), Quoting::Shell);
        assert_eq!(
            Quoting::for_interpreter("pwsh -NoProfile"),
            Quoting::PowerShell
        );
    }
}
