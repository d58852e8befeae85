//! MiniJinja templates with quoting by default: in `exec` and `script` steps
//! every substituted value stays literal data for the language it lands in,
//! wherever the author put it (bare, inside `"..."`, `'...'`, a here-document,
//! an f-string, …). Rendering leaves a marker per value; [`contexts`] lexes the
//! result the way the interpreter will and escapes each value for its exact
//! spot, or refuses the job naming the line and column. `{{ x | raw }}` (as
//! the last filter) opts out; `| safe` is refused.
//!
//! Rendering is bounded: a work budget ([`FUEL`] MiniJinja instructions) and
//! an output limit ([`MAX_OUTPUT`] bytes, values included), so a template
//! bomb is a clear error, not minutes of CPU.

mod contexts;
mod when;

use std::cell::RefCell;
use std::sync::Arc;

use minijinja::value::{Object, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

use contexts::{CLOSE, Lang, OPEN};

/// MiniJinja instructions one render may execute (a loop iteration costs a
/// few). Real job templates use a few thousand at most.
pub const FUEL: u64 = 500_000;

/// Largest rendered text (template text and values), in bytes.
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// How substituted values are quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// POSIX shell (`exec`, `sh`/`bash` scripts), by quoting context.
    Shell,
    /// PowerShell, by quoting context.
    PowerShell,
    /// Python, by quoting context.
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

    fn from_name(name: &str) -> Self {
        match name {
            "t.sh" => Quoting::Shell,
            "t.ps1" => Quoting::PowerShell,
            "t.py" => Quoting::Python,
            "t.cmd" => Quoting::Refuse,
            _ => Quoting::None,
        }
    }

    fn lang(self) -> Option<Lang> {
        match self {
            Quoting::Shell => Some(Lang::Shell),
            Quoting::PowerShell => Some(Lang::PowerShell),
            Quoting::Python => Some(Lang::Python),
            _ => None,
        }
    }
}

/// The output of `| raw`: the only value the formatter writes verbatim.
#[derive(Debug)]
struct RawText(String);

impl Object for RawText {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The values of the render in progress on this thread (a render runs on
/// one thread, start to end); markers in the output index into it.
struct Slots {
    values: Vec<String>,
    bytes: usize,
}

thread_local! {
    static SLOTS: RefCell<Option<Slots>> = const { RefCell::new(None) };
}

/// Clears this thread's slots however the render ends.
struct SlotGuard;

impl Drop for SlotGuard {
    fn drop(&mut self) {
        SLOTS.with(|s| s.borrow_mut().take());
    }
}

fn too_large() -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("the rendered template would be larger than {MAX_OUTPUT} bytes"),
    )
}

/// Replaces markers inside `s` (a captured block that is now a value) by their values.
fn expand_markers(s: &str, values: &[String]) -> String {
    if !s.contains(OPEN) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find(OPEN) {
        out.push_str(&rest[..p]);
        let after = &rest[p + OPEN.len_utf8()..];
        match after.find(CLOSE) {
            Some(q) => match after[..q].parse::<usize>().ok().and_then(|n| values.get(n)) {
                Some(v) => {
                    out.push_str(v);
                    rest = &after[q + CLOSE.len_utf8()..];
                }
                None => {
                    out.push(OPEN);
                    rest = after;
                }
            },
            None => {
                out.push(OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Stores a value for the render in progress; returns its marker.
fn store_value(text: String) -> Result<String, minijinja::Error> {
    SLOTS.with(|s| {
        let mut s = s.borrow_mut();
        let Some(slots) = s.as_mut() else {
            return Ok(text);
        };
        let text = expand_markers(&text, &slots.values);
        slots.bytes = slots.bytes.saturating_add(text.len());
        if slots.bytes > MAX_OUTPUT {
            return Err(too_large());
        }
        slots.values.push(text);
        Ok(format!("{OPEN}{}{CLOSE}", slots.values.len() - 1))
    })
}

/// Counts what is written and stops past [`MAX_OUTPUT`].
struct Limited(Vec<u8>);

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other("output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        env.set_fuel(Some(FUEL));
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
        // `| e` and friends route through the formatter below; the mode
        // itself comes from the template's name, so `{% autoescape false %}`
        // cannot turn quoting off.
        env.set_auto_escape_callback(|name| match name.rsplit('.').next() {
            Some("sh" | "ps1" | "py" | "cmd") => AutoEscape::Custom("quote".into()),
            _ => AutoEscape::None,
        });
        env.set_formatter(|out, state, value| {
            if let Some(raw) = value.downcast_object_ref::<RawText>() {
                return out.write_str(&raw.0).map_err(minijinja::Error::from);
            }
            let quoting = Quoting::from_name(state.name());
            let kind = value.kind();
            let text = match quoting {
                Quoting::None => plain(value),
                Quoting::Refuse if kind == ValueKind::Number => plain(value),
                Quoting::Refuse => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "cmd.exe has no safe quoting, so values cannot be substituted into cmd commands: \
                         give the target `vars: {shell: powershell}`, or validate the value with a schema \
                         pattern and write `{{ value | raw }}`",
                    ));
                }
                // Numbers and booleans cannot inject anything: bare.
                Quoting::Shell if matches!(kind, ValueKind::Number | ValueKind::Bool) => {
                    plain(value)
                }
                Quoting::PowerShell if kind == ValueKind::Bool => {
                    if value.is_true() { "$true" } else { "$false" }.into()
                }
                Quoting::PowerShell if kind == ValueKind::Number => plain(value),
                Quoting::Python if kind == ValueKind::Bool => {
                    if value.is_true() { "True" } else { "False" }.into()
                }
                Quoting::Python if kind == ValueKind::None => "None".into(),
                Quoting::Python if kind == ValueKind::Number => value.to_string(),
                _ => store_value(plain(value))?,
            };
            out.write_str(&text).map_err(minijinja::Error::from)
        });
        env.add_filter("raw", |v: Value| {
            if let Some(r) = v.downcast_object_ref::<RawText>() {
                return Value::from_object(RawText(r.0.clone()));
            }
            Value::from_object(RawText(v.to_string()))
        });
        env.add_filter("safe", |_v: Value| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                SAFE_REFUSED,
            ))
        });
        // In verbatim text (e.g. a script written by `copy.content`) this
        // single-quotes for a shell; in quoted steps the value is quoted for
        // its context anyway, so the filter steps aside (a pre-quoted value
        // inside "..." would not be safe).
        env.add_filter("shell_quote", |state: &minijinja::State, v: Value| {
            if Quoting::from_name(state.name()) == Quoting::None {
                Value::from_object(RawText(contexts::sh_single(&v.to_string())))
            } else {
                Value::from(v.to_string())
            }
        });
        Self { env }
    }

    /// Checks syntax without rendering.
    pub fn check(&self, source: &str) -> Result<(), String> {
        self.env
            .template_from_str(source)
            .map(|_| ())
            .map_err(describe)?;
        check_no_safe(source)
    }

    /// Checks syntax and, as far as can be known before values exist, that
    /// every `{{ }}` lands where `quoting` can keep it literal. The check
    /// reads the template as straight-line text (tags removed); rendering
    /// re-checks the real text. Errors say `line L, column C`.
    pub fn check_for(&self, source: &str, quoting: Quoting) -> Result<(), String> {
        self.check(source)?;
        let Some(lang) = quoting.lang() else {
            return Ok(());
        };
        let (text, positions) = straight_line(source);
        let values = vec!["x".to_string(); positions.len()];
        contexts::apply(lang, &text, &values)
            .map(|_| ())
            .map_err(|r| {
                let (line, col) = positions.get(r.slot).copied().unwrap_or((r.line, r.col));
                format!(
                    "line {line}, column {col}: a value cannot go here: {}",
                    r.reason
                )
            })
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
        let _guard = SlotGuard;
        SLOTS.with(|s| {
            *s.borrow_mut() = Some(Slots {
                values: Vec::new(),
                bytes: 0,
            })
        });
        let mut buf = Limited(Vec::new());
        let rendered = tmpl.render_captured_to(Value::from(minijinja::value::Serde(ctx)), &mut buf);
        let values = SLOTS
            .with(|s| s.borrow_mut().take())
            .map(|s| s.values)
            .unwrap_or_default();
        if let Err(e) = rendered {
            return Err(describe(e));
        }
        let text =
            String::from_utf8(buf.0).map_err(|_| "template output is not UTF-8".to_string())?;
        let out = match quoting.lang() {
            Some(lang) => contexts::apply(lang, &text, &values).map_err(|r| {
                format!(
                    "line {}, column {} of the rendered text: a value cannot go here: {}",
                    r.line, r.col, r.reason
                )
            })?,
            None => text,
        };
        if out.len() > MAX_OUTPUT {
            return Err(describe(too_large()));
        }
        Ok(out)
    }
}

const SAFE_REFUSED: &str = "`| safe` is not supported: values are quoted for the place they land in; \
     write `| raw` (as the last filter) to insert a value verbatim, only for values you validated";

/// Refuses `| safe` and `{% filter safe %}` before anything runs.
fn check_no_safe(source: &str) -> Result<(), String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for (i, _) in source
        .match_indices('|')
        .chain(source.match_indices("filter"))
    {
        let piped = source[i..].starts_with('|');
        let start = i + if piped { 1 } else { 6 };
        if !piped
            && (source[..i].ends_with(ident) || !source[start..].starts_with(char::is_whitespace))
        {
            continue;
        }
        let rest = source[start..].trim_start();
        if rest.starts_with("safe") && !rest[4..].starts_with(ident) && inside_tag(source, i) {
            let before = &source[..i];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(format!("line {line}, column {col}: {SAFE_REFUSED}"));
        }
    }
    Ok(())
}

/// Whether byte `i` is inside a `{{ }}` or `{% %}`.
fn inside_tag(source: &str, i: usize) -> bool {
    let before = &source[..i];
    let open = before.rfind("{{").max(before.rfind("{%"));
    let close = before.rfind("}}").max(before.rfind("%}"));
    match (open, close) {
        (Some(o), Some(c)) => o > c,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The template as straight-line text: each `{{ }}` a marker, tags and
/// comments removed; with the source line and column of each marker.
fn straight_line(source: &str) -> (String, Vec<(usize, usize)>) {
    let mut out = String::with_capacity(source.len());
    let mut pos = Vec::new();
    let mut rest = source;
    let mut consumed = 0;
    let at = |off: usize| {
        let before = &source[..off];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    };
    loop {
        let next = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|t| rest.find(t).map(|p| (p, *t)))
            .min();
        let Some((p, tag)) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..p]);
        let close = match tag {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        let after = &rest[p + 2..];
        let len = after.find(close).map_or(after.len(), |q| q + 2);
        if tag == "{{" {
            out.push_str(&format!("{OPEN}{}{CLOSE}", pos.len()));
            pos.push(at(consumed + p));
        }
        let skip = p + 2 + len;
        consumed += skip.min(rest.len());
        rest = &rest[skip.min(rest.len())..];
    }
    (out, pos)
}

fn describe(e: minijinja::Error) -> String {
    let mut msg = match e.kind() {
        ErrorKind::OutOfFuel => format!(
            "the template needs more than {FUEL} steps of work to render (a loop too long?); \
             simplify it"
        ),
        ErrorKind::WriteFailure => {
            format!("the rendered template would be larger than {MAX_OUTPUT} bytes")
        }
        _ => match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    msg
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

    /// PowerShell cannot run here (pwsh is not installed on the build
    /// machines), so its rules are checked as rules: what each context emits
    /// for hostile values, and that the lexer refuses what it cannot escape.
    #[test]
    fn powershell_contexts() {
        let t = Templates::new();
        let r = |src: &str, v: &str| t.render(src, Quoting::PowerShell, &json!({"v": v}));
        // Bare: single quotes, every single-quote character doubled.
        assert_eq!(
            r("echo {{ v }}", "a'b\u{2019}c").unwrap(),
            "echo 'a''b\u{2019}\u{2019}c'"
        );
        // Bare with a newline: still one single-quoted string.
        assert_eq!(
            r("echo {{ v }}", "a\n$(x)`\"").unwrap(),
            "echo 'a\n$(x)`\"'"
        );
        // Inside '...': doubled single quotes only.
        assert_eq!(
            r("echo 'x{{ v }}y'", "'$(x)\n").unwrap(),
            "echo 'x''$(x)\ny'"
        );
        // Inside "...": backtick before $, ` and every double-quote character.
        assert_eq!(
            r("echo \"x{{ v }}y\"", "$(x)`\"\u{201C}\u{201D}\u{201E}'\n").unwrap(),
            "echo \"x`$(x)```\"`\u{201C}`\u{201D}`\u{201E}'\ny\""
        );
        // Smart double quotes open and close strings too.
        assert_eq!(
            r("echo \u{201C}x{{ v }}\u{201D}", "$a").unwrap(),
            "echo \u{201C}x`$a\u{201D}"
        );
        // $(...) inside "..." is code again.
        assert_eq!(
            r("echo \"$(Get-X {{ v }})\"", "a b").unwrap(),
            "echo \"$(Get-X 'a b')\""
        );
        // Expandable here-string: escaped like "...", so no line can start with "@.
        assert_eq!(
            r("$s = @\"\n{{ v }}\n\"@\n", "\"@\n$(x)").unwrap(),
            "$s = @\"\n`\"@\n`$(x)\n\"@\n"
        );
        // Literal here-string: verbatim, unless a line of the value would end it.
        assert_eq!(
            r("$s = @'\n{{ v }}\n'@\n", "$(x) \"@ '").unwrap(),
            "$s = @'\n$(x) \"@ '\n'@\n"
        );
        for bad in ["'@", "a\n'@ x", "a\n\u{2019}@"] {
            assert!(
                r("$s = @'\n{{ v }}\n'@\n", bad)
                    .unwrap_err()
                    .contains("would end"),
                "{bad:?}"
            );
        }
        // Comments: one line, # escaped, so neither a newline nor #> escapes.
        assert_eq!(r("# {{ v }}\nx", "a\n#>b").unwrap(), "# \"a`n`#>b\"\nx");
        assert_eq!(r("<# {{ v }} #>", "#>x").unwrap(), "<# \"`#>x\" #>");
        // Refused: ${...}, after a backtick, after $, after # inside a word.
        for src in [
            "echo ${ {{ v }} }",
            "echo `{{ v }}",
            "echo ${{ v }}",
            "echo a#b {{ v }}",
        ] {
            assert!(r(src, "x").unwrap_err().contains("cannot go here"), "{src}");
        }
        // Booleans and numbers stay bare.
        let ctx = json!({"b": true, "n": 3});
        assert_eq!(
            t.render("f {{ b }} {{ n }}", Quoting::PowerShell, &ctx)
                .unwrap(),
            "f $true 3"
        );
    }

    #[test]
    fn rendered_context_follows_control_flow() {
        let t = Templates::new();
        let ctx = json!({"q": true, "v": "$(x)"});
        // The quoting state is that of the rendered text, not of the source.
        assert_eq!(
            t.render(
                "echo {% if q %}\"{% endif %}{{ v }}{% if q %}\"{% endif %}",
                Quoting::Shell,
                &ctx
            )
            .unwrap(),
            "echo \"\\$(x)\""
        );
        // `| shell_quote` quotes verbatim text; in a quoted step it steps aside.
        let c = json!({"v": "a'b $(x)"});
        assert_eq!(
            t.render("echo {{ v | shell_quote }}", Quoting::None, &c)
                .unwrap(),
            "echo 'a'\\''b $(x)'"
        );
        assert_eq!(
            t.render("echo \"{{ v | shell_quote }}\"", Quoting::Shell, &c)
                .unwrap(),
            "echo \"a'b \\$(x)\""
        );
        // A marker character in the template text cannot forge a value.
        let forged = format!("echo {OPEN}0{CLOSE} {{{{ v }}}}");
        let out = t.render(&forged, Quoting::Shell, &ctx).unwrap();
        assert_eq!(out, "echo '$(x)' '$(x)'");
    }
}
