//! Context-aware quoting. Rendering leaves a marker (`OPEN index CLOSE`) where
//! each substituted value goes; this module lexes the rendered text the way
//! the interpreter will (shell, Python, PowerShell), and replaces each marker
//! with the value escaped for the quoting state at that exact spot — or
//! refuses, with the line and column, where no escape is sound (backticks,
//! `${...}`, raw strings, f-string expressions, …).
//!
//! The lexers are deliberately conservative: wherever they could disagree
//! with the interpreter about where a quote or here-document ends, any later
//! value is refused rather than guessed at.

/// Starts a value marker (a private-use character no job text needs).
pub(crate) const OPEN: char = '\u{F8F0}';
/// Ends a value marker.
pub(crate) const CLOSE: char = '\u{F8F1}';

/// The interpreter whose quoting rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Shell,
    Python,
    PowerShell,
}

/// Why a value cannot be placed where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Which value (the marker's index).
    pub slot: usize,
    /// 1-based line of the marker in the rendered text.
    pub line: usize,
    /// 1-based column (characters) of the marker.
    pub col: usize,
    pub reason: String,
}

/// Replaces every marker in `text` with its value, escaped for where it lands.
pub(crate) fn apply(lang: Lang, text: &str, values: &[String]) -> Result<String, Refusal> {
    let mut sc = Scan {
        s: text.chars().collect(),
        i: 0,
        out: String::with_capacity(text.len() + values.iter().map(String::len).sum::<usize>()),
        values,
        checks: Vec::new(),
        uncertain: None,
    };
    match lang {
        Lang::Shell => shell(&mut sc)?,
        Lang::Python => python(&mut sc)?,
        Lang::PowerShell => powershell(&mut sc)?,
    }
    sc.run_checks()?;
    Ok(sc.out)
}

/// A line of the output that contains value text and must not end a
/// here-document / here-string.
struct LineCheck {
    start: usize,
    slot: usize,
    at: usize,
    end: End,
}

enum End {
    /// A shell here-document delimiter (`<<-`: leading tabs stripped first).
    Heredoc { delim: String, strip: bool },
    /// PowerShell `'@` (any single-quote character).
    PsHereSq,
}

struct Scan<'a> {
    s: Vec<char>,
    i: usize,
    out: String,
    values: &'a [String],
    checks: Vec<LineCheck>,
    /// Set once the lexer may disagree with the interpreter: every later value is refused.
    uncertain: Option<&'static str>,
}

impl Scan<'_> {
    fn peek(&self, k: usize) -> Option<char> {
        self.s.get(self.i + k).copied()
    }

    fn prev(&self) -> Option<char> {
        self.i.checked_sub(1).and_then(|j| self.s.get(j).copied())
    }

    fn push(&mut self, n: usize) {
        for _ in 0..n {
            if let Some(c) = self.peek(0) {
                self.out.push(c);
                self.i += 1;
            }
        }
    }

    fn refusal_at(&self, at: usize, slot: usize, reason: impl Into<String>) -> Refusal {
        let before = &self.s[..at.min(self.s.len())];
        let line = before.iter().filter(|&&c| c == '\n').count() + 1;
        let col = before.iter().rev().take_while(|&&c| c != '\n').count() + 1;
        Refusal {
            slot,
            line,
            col,
            reason: reason.into(),
        }
    }

    /// Reads the marker at `i`: its index and value; moves past it.
    fn marker(&mut self) -> Result<(usize, usize, String), Refusal> {
        let at = self.i;
        let mut j = self.i + 1;
        let mut n: usize = 0;
        let mut digits = 0;
        while let Some(c) = self.s.get(j).copied() {
            if let Some(d) = c.to_digit(10) {
                n = n.saturating_mul(10).saturating_add(d as usize);
                digits += 1;
                j += 1;
            } else {
                break;
            }
        }
        match (self.s.get(j), self.values.get(n)) {
            (Some(&CLOSE), Some(v)) if digits > 0 => {
                self.i = j + 1;
                Ok((at, n, v.clone()))
            }
            _ => Err(self.refusal_at(
                at,
                n,
                "a damaged value marker (the template text contains U+F8F0)",
            )),
        }
    }

    /// Refuses a marker at `i` (consumes nothing).
    fn refuse_here(&mut self, reason: &str) -> Refusal {
        let at = self.i;
        match self.marker() {
            Ok((_, slot, _)) => self.refusal_at(at, slot, reason),
            Err(e) => e,
        }
    }

    fn is_marker(&self, k: usize) -> bool {
        self.peek(k) == Some(OPEN)
    }

    /// Refuses the marker right after the character at `i` (`$`, a
    /// backslash, a backtick): no escape makes a value sound there.
    fn refuse_next(&mut self, reason: &str) -> Refusal {
        self.i += 1;
        self.refuse_here(reason)
    }

    /// Copies an escape (the escape character and the one it escapes),
    /// refusing a value right after the escape character (`after` names it).
    fn escape(&mut self, after: &str) -> Result<(), Refusal> {
        if self.is_marker(1) {
            return Err(self.refuse_next(&format!("right after {after}")));
        }
        self.push(2);
        Ok(())
    }

    /// Once the lexer may disagree with the interpreter, a value is refused
    /// wherever it is.
    fn refuse_if_uncertain(&mut self) -> Result<(), Refusal> {
        match self.uncertain {
            Some(why) => Err(self.refuse_here(why)),
            None => Ok(()),
        }
    }

    /// Enters `state` (a quote, a substitution, a comment) with the `n`
    /// characters that open it.
    fn enter<T>(&mut self, st: &mut Vec<T>, state: T, n: usize) {
        st.push(state);
        self.push(n);
    }

    /// Leaves the current state with the `n` characters that close it.
    fn leave<T>(&mut self, st: &mut Vec<T>, n: usize) {
        st.pop();
        self.push(n);
    }

    /// Replaces the current state (a changed nesting depth) and moves past
    /// the one character that changed it.
    fn replace_top<T>(&mut self, st: &mut Vec<T>, state: T) {
        st.pop();
        self.enter(st, state, 1);
    }

    fn line_start_of_out(&self) -> usize {
        self.out.rfind('\n').map_or(0, |p| p + 1)
    }

    /// Emits `value` verbatim and records each output line it touches for `end`.
    fn verbatim_checked(&mut self, slot: usize, at: usize, value: &str, end: impl Fn() -> End) {
        self.checks.push(LineCheck {
            start: self.line_start_of_out(),
            slot,
            at,
            end: end(),
        });
        for c in value.chars() {
            self.out.push(c);
            if c == '\n' || c == '\r' {
                self.checks.push(LineCheck {
                    start: self.out.len(),
                    slot,
                    at,
                    end: end(),
                });
            }
        }
    }

    fn run_checks(&self) -> Result<(), Refusal> {
        for c in &self.checks {
            let rest = &self.out[c.start.min(self.out.len())..];
            let line = rest.split(['\n']).next().unwrap_or("");
            let bad = match &c.end {
                End::Heredoc { delim, strip } => {
                    let l = if *strip {
                        line.trim_start_matches('\t')
                    } else {
                        line
                    };
                    l == delim
                }
                End::PsHereSq => {
                    let line = rest.split(['\n', '\r']).next().unwrap_or("");
                    let mut cs = line.chars();
                    matches!((cs.next(), cs.next()), (Some(q), Some('@')) if is_ps_single(q))
                }
            };
            if bad {
                return Err(self.refusal_at(
                    c.at,
                    c.slot,
                    "this value would end the quoted here-document/here-string early \
                     (a line of it equals the terminator); such a value cannot be placed here",
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- shell --

/// Where a shell lexer starts, and what it falls back to.
const SH_TOP: Sh = Sh::Cmd {
    sub: false,
    paren: 0,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sh {
    /// Commands; `sub` for `$(`, `<(`, `>(`, with the `(` depth inside.
    Cmd {
        sub: bool,
        paren: u32,
    },
    Dq,
    Sq,
    Ansi,
    Tick,
    Param {
        depth: u32,
    },
    Arith {
        depth: u32,
        bracket: bool,
    },
    Comment,
}

struct Heredoc {
    delim: String,
    quoted: bool,
    strip: bool,
}

fn shell_word_break(c: char) -> bool {
    c.is_whitespace() || ";&|()<>".contains(c)
}

/// Characters a shell word can carry bare without any quoting.
fn shell_bare(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+-".contains(c))
}

/// A POSIX single-quoted word (a `'` becomes `'\''`).
pub(crate) fn sh_single(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

fn sh_unquoted(v: &str) -> String {
    if shell_bare(v) {
        v.to_string()
    } else {
        sh_single(v)
    }
}

/// Inside `"..."`: only `\`, `$`, `` ` `` and `"` are special, and a
/// backslash before each makes it literal (POSIX 2.2.3).
pub(crate) fn sh_double_body(v: &str) -> String {
    let mut o = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        if matches!(c, '\\' | '$' | '`' | '"') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Inside an unquoted here-document: `\`, `$`, `` ` `` escaped; every line
/// of the value starts with the empty expansion `${OC+}`, so no line of it
/// can equal the delimiter and `<<-` cannot strip its tabs.
pub(crate) fn sh_heredoc_body(v: &str) -> String {
    let mut o = String::from("${OC+}");
    for c in v.chars() {
        if matches!(c, '\\' | '$' | '`') {
            o.push('\\');
        }
        o.push(c);
        if c == '\n' {
            o.push_str("${OC+}");
        }
    }
    o
}

/// In a comment: one line, single-quoted (also safe if it were code).
fn sh_comment(v: &str) -> String {
    sh_single(&v.replace(['\n', '\r'], " "))
}

fn shell(sc: &mut Scan<'_>) -> Result<(), Refusal> {
    let mut st = vec![SH_TOP];
    let mut pending: Vec<Heredoc> = Vec::new();
    while let Some(c) = sc.peek(0) {
        let top = *st.last().unwrap_or(&SH_TOP);
        if c == OPEN {
            sc.refuse_if_uncertain()?;
            let blocker = st.iter().rev().find_map(|x| match x {
                Sh::Tick => Some("inside `...` (write $(...) instead)"),
                Sh::Param { .. } => Some("inside a ${...} parameter expansion"),
                Sh::Arith { .. } => {
                    Some("inside arithmetic ($((...)), ((...)), $[...]): only numbers may go here")
                }
                Sh::Ansi => Some("inside $'...' (sh and bash read it differently)"),
                _ => None,
            });
            if let Some(why) = blocker {
                return Err(sc.refuse_here(why));
            }
            let (_, _, v) = sc.marker()?;
            let text = match top {
                Sh::Dq => sh_double_body(&v),
                Sh::Sq => v.replace('\'', r"'\''"),
                Sh::Comment => sh_comment(&v),
                _ => sh_unquoted(&v),
            };
            sc.out.push_str(&text);
            continue;
        }
        match top {
            Sh::Cmd { sub, paren } => match c {
                '\\' => sc.escape("a backslash")?,
                '\'' | '"' | '`' => sc.enter(&mut st, sh_quote(c), 1),
                '$' => dollar(sc, &mut st, true)?,
                '<' | '>' if sc.peek(1) == Some('(') => sc.enter(
                    &mut st,
                    Sh::Cmd {
                        sub: true,
                        paren: 0,
                    },
                    2,
                ),
                '(' if sc.peek(1) == Some('(') => sc.enter(
                    &mut st,
                    Sh::Arith {
                        depth: 0,
                        bracket: false,
                    },
                    2,
                ),
                '(' => {
                    if let Some(Sh::Cmd { paren, .. }) = st.last_mut() {
                        *paren += 1;
                    }
                    sc.push(1);
                }
                ')' => {
                    if paren > 0 {
                        if let Some(Sh::Cmd { paren, .. }) = st.last_mut() {
                            *paren -= 1;
                        }
                    } else if sub {
                        st.pop();
                    }
                    sc.push(1);
                }
                '#' if sc.prev().is_none_or(shell_word_break) => sc.enter(&mut st, Sh::Comment, 1),
                '<' if sc.peek(1) == Some('<') => {
                    if sc.peek(2) == Some('<') {
                        sc.push(3);
                    } else {
                        heredoc_op(sc, &mut pending)?;
                    }
                }
                '\n' => {
                    sc.push(1);
                    for h in std::mem::take(&mut pending) {
                        heredoc_body(sc, &h)?;
                    }
                }
                c if c.is_ascii_alphabetic() && sc.prev().is_none_or(shell_word_break) => {
                    let mut j = sc.i;
                    while sc.s.get(j).is_some_and(|c| c.is_ascii_alphanumeric()) {
                        j += 1;
                    }
                    let word: String = sc.s[sc.i..j].iter().collect();
                    if word == "case" && st.iter().any(|x| matches!(x, Sh::Cmd { sub: true, .. })) {
                        sc.uncertain = Some(
                            "after a `case` inside $(...), whose `)` patterns this check cannot follow",
                        );
                    }
                    sc.push(j - sc.i);
                }
                _ => sc.push(1),
            },
            Sh::Dq => match c {
                '"' => sc.leave(&mut st, 1),
                '\\' => sc.escape("a backslash")?,
                '`' => sc.enter(&mut st, Sh::Tick, 1),
                '$' => dollar(sc, &mut st, false)?,
                _ => sc.push(1),
            },
            Sh::Sq => {
                if c == '\'' {
                    st.pop();
                }
                sc.push(1);
            }
            Sh::Ansi | Sh::Tick => match c {
                '\\' => sc.push(2),
                '\'' if top == Sh::Ansi => sc.leave(&mut st, 1),
                '`' if top == Sh::Tick => sc.leave(&mut st, 1),
                _ => sc.push(1),
            },
            Sh::Param { depth } => match c {
                '{' => sc.replace_top(&mut st, Sh::Param { depth: depth + 1 }),
                '}' if depth > 0 => sc.replace_top(&mut st, Sh::Param { depth: depth - 1 }),
                '}' => sc.leave(&mut st, 1),
                '\\' => sc.push(2),
                '\'' | '"' | '`' => sc.enter(&mut st, sh_quote(c), 1),
                '$' => dollar(sc, &mut st, false)?,
                _ => sc.push(1),
            },
            Sh::Arith { depth, bracket } => match c {
                '(' => sc.replace_top(
                    &mut st,
                    Sh::Arith {
                        depth: depth + 1,
                        bracket,
                    },
                ),
                ')' if !bracket && depth == 0 && sc.peek(1) == Some(')') => sc.leave(&mut st, 2),
                ')' => sc.replace_top(
                    &mut st,
                    Sh::Arith {
                        depth: depth.saturating_sub(1),
                        bracket,
                    },
                ),
                ']' if bracket && depth == 0 => sc.leave(&mut st, 1),
                '$' => dollar(sc, &mut st, false)?,
                '`' | '"' | '\'' => sc.enter(&mut st, sh_quote(c), 1),
                _ => sc.push(1),
            },
            Sh::Comment => {
                if c == '\n' {
                    st.pop();
                } else {
                    sc.push(1);
                }
            }
        }
    }
    Ok(())
}

/// The state a quote character opens in commands, `${...}` and arithmetic
/// (`'`, `"` or a backtick).
fn sh_quote(q: char) -> Sh {
    match q {
        '\'' => Sh::Sq,
        '"' => Sh::Dq,
        _ => Sh::Tick,
    }
}

/// `$` in commands, double quotes, `${}` or arithmetic.
fn dollar(sc: &mut Scan<'_>, st: &mut Vec<Sh>, unquoted: bool) -> Result<(), Refusal> {
    let (state, n) = match sc.peek(1) {
        Some(OPEN) => return Err(sc.refuse_next("right after $")),
        Some('\'') if unquoted => (Sh::Ansi, 2),
        Some('"') if unquoted => (Sh::Dq, 2),
        Some('(') if sc.peek(2) == Some('(') => (
            Sh::Arith {
                depth: 0,
                bracket: false,
            },
            3,
        ),
        Some('(') => (
            Sh::Cmd {
                sub: true,
                paren: 0,
            },
            2,
        ),
        Some('{') => (Sh::Param { depth: 0 }, 2),
        Some('[') => (
            Sh::Arith {
                depth: 0,
                bracket: true,
            },
            2,
        ),
        _ => {
            sc.push(1);
            return Ok(());
        }
    };
    sc.enter(st, state, n);
    Ok(())
}

/// `<<` / `<<-` and its delimiter word.
fn heredoc_op(sc: &mut Scan<'_>, pending: &mut Vec<Heredoc>) -> Result<(), Refusal> {
    sc.push(2);
    let strip = sc.peek(0) == Some('-');
    if strip {
        sc.push(1);
    }
    while matches!(sc.peek(0), Some(' ' | '\t')) {
        sc.push(1);
    }
    let mut delim = String::new();
    let mut quoted = false;
    while let Some(c) = sc.peek(0) {
        if shell_word_break(c) {
            break;
        }
        match c {
            OPEN => return Err(sc.refuse_here("in a here-document delimiter")),
            '\'' | '"' => {
                quoted = true;
                sc.push(1);
                while let Some(d) = sc.peek(0) {
                    if d == OPEN {
                        return Err(sc.refuse_here("in a here-document delimiter"));
                    }
                    if d == '\\' && c == '"' {
                        sc.push(1);
                        if let Some(e) = sc.peek(0) {
                            delim.push(e);
                        }
                        sc.push(1);
                        continue;
                    }
                    sc.push(1);
                    if d == c {
                        break;
                    }
                    delim.push(d);
                }
            }
            '\\' => {
                quoted = true;
                sc.push(1);
                if let Some(e) = sc.peek(0) {
                    if e == OPEN {
                        return Err(sc.refuse_here("in a here-document delimiter"));
                    }
                    delim.push(e);
                }
                sc.push(1);
            }
            _ => {
                delim.push(c);
                sc.push(1);
            }
        }
    }
    if delim.is_empty() {
        sc.uncertain = Some("after a here-document operator without a delimiter");
    }
    pending.push(Heredoc {
        delim,
        quoted,
        strip,
    });
    Ok(())
}

/// One here-document body, up to and including its delimiter line.
fn heredoc_body(sc: &mut Scan<'_>, h: &Heredoc) -> Result<(), Refusal> {
    let mut nested = false;
    loop {
        if sc.i >= sc.s.len() {
            return Ok(());
        }
        // The raw line: a terminator only if no value is on it (lines with
        // values are checked after substitution).
        let end = sc.s[sc.i..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(sc.s.len(), |p| sc.i + p);
        let line: String = sc.s[sc.i..end].iter().collect();
        let cmp = if h.strip {
            line.trim_start_matches('\t')
        } else {
            &line
        };
        if !line.contains(OPEN) && cmp == h.delim {
            sc.push(end - sc.i + 1);
            return Ok(());
        }
        while sc.i < end {
            let c = sc.s[sc.i];
            if c == OPEN {
                sc.refuse_if_uncertain()?;
                if h.quoted {
                    let (at, slot, v) = sc.marker()?;
                    let delim = h.delim.clone();
                    let strip = h.strip;
                    sc.verbatim_checked(slot, at, &v, || End::Heredoc {
                        delim: delim.clone(),
                        strip,
                    });
                } else if nested {
                    return Err(sc.refuse_here(
                        "inside or after a $(...), ${...} or `...` in this here-document",
                    ));
                } else if h.delim.contains('$') {
                    return Err(sc.refuse_here("in a here-document whose delimiter contains '$'"));
                } else {
                    let (_, _, v) = sc.marker()?;
                    sc.out.push_str(&sh_heredoc_body(&v));
                }
                continue;
            }
            if !h.quoted {
                match c {
                    '\\' => {
                        match sc.peek(1) {
                            Some(OPEN) => return Err(sc.refuse_next("right after a backslash")),
                            Some('\n') => {
                                sc.uncertain =
                                    Some("after a line continuation inside a here-document");
                            }
                            _ => {}
                        }
                        sc.push(2);
                        continue;
                    }
                    '$' => match sc.peek(1) {
                        Some(OPEN) => return Err(sc.refuse_next("right after $")),
                        Some('(' | '{' | '[') => nested = true,
                        _ => {}
                    },
                    '`' => nested = true,
                    _ => {}
                }
            }
            sc.push(1);
        }
        // the newline (may be absent at the end of the text)
        sc.push(1);
    }
}

// --------------------------------------------------------------- python --

/// Where the Python lexer starts, and what it falls back to.
const PY_TOP: Py = Py::Code {
    fexpr: false,
    depth: 0,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Py {
    /// Code; `fexpr` inside an f-string replacement field, with bracket depth.
    Code {
        fexpr: bool,
        depth: u32,
    },
    Str {
        q: char,
        triple: bool,
        raw: bool,
        bytes: bool,
        fmt: bool,
    },
    Comment,
}

/// A Python string literal (JSON string syntax is Python string syntax;
/// every control character is escaped, so it is one line).
pub(crate) fn py_literal(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "''".into())
}

/// The inside of a non-raw Python string: escapes that mean the same in
/// `'`, `"`, triple-quoted, f- (braces doubled) and b- (UTF-8 bytes) strings.
pub(crate) fn py_body(v: &str, fmt: bool, bytes: bool) -> String {
    use std::fmt::Write;
    let mut o = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\'' => o.push_str("\\'"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '{' if fmt => o.push_str("{{"),
            '}' if fmt => o.push_str("}}"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(o, "\\x{:02x}", c as u32);
            }
            c if bytes && !c.is_ascii() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(o, "\\x{b:02x}");
                }
            }
            c => o.push(c),
        }
    }
    o
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn python(sc: &mut Scan<'_>) -> Result<(), Refusal> {
    let mut st = vec![PY_TOP];
    while let Some(c) = sc.peek(0) {
        let top = *st.last().unwrap_or(&PY_TOP);
        if c == OPEN {
            sc.refuse_if_uncertain()?;
            if st.iter().any(|x| matches!(x, Py::Code { fexpr: true, .. })) {
                return Err(sc.refuse_here("inside an f-string {...} expression"));
            }
            match top {
                Py::Code { .. } if sc.prev().is_some_and(is_ident) => {
                    return Err(sc.refuse_here(
                        "right after a name or number (it would change a string prefix); add a space or operator",
                    ));
                }
                Py::Str { raw: true, .. } => {
                    return Err(
                        sc.refuse_here("inside a raw string (r'...'), which has no escapes")
                    );
                }
                _ => {}
            }
            let (_, _, v) = sc.marker()?;
            let text = match top {
                Py::Str { fmt, bytes, .. } => py_body(&v, fmt, bytes),
                _ => py_literal(&v),
            };
            sc.out.push_str(&text);
            continue;
        }
        match top {
            Py::Code { fexpr, depth } => match c {
                '#' => sc.enter(&mut st, Py::Comment, 1),
                '\\' => sc.push(2),
                '\'' | '"' => {
                    // The prefix: letters right before the quote, starting a token.
                    let mut k = sc.i;
                    while k > 0 && sc.s[k - 1].is_ascii_alphabetic() && sc.i - k < 3 {
                        k -= 1;
                    }
                    let starts_token = k == 0 || !is_ident(sc.s[k - 1]);
                    let prefix: String = if starts_token {
                        sc.s[k..sc.i]
                            .iter()
                            .collect::<String>()
                            .to_ascii_lowercase()
                    } else {
                        String::new()
                    };
                    let valid = matches!(
                        prefix.as_str(),
                        "" | "r" | "u" | "b" | "f" | "t" | "br" | "rb" | "fr" | "rf" | "tr" | "rt"
                    );
                    let prefix = if valid { prefix } else { String::new() };
                    let triple = sc.peek(1) == Some(c) && sc.peek(2) == Some(c);
                    let string = Py::Str {
                        q: c,
                        triple,
                        raw: prefix.contains('r'),
                        bytes: prefix.contains('b'),
                        fmt: prefix.contains('f') || prefix.contains('t'),
                    };
                    sc.enter(&mut st, string, if triple { 3 } else { 1 });
                }
                '(' | '[' | '{' if fexpr => sc.replace_top(
                    &mut st,
                    Py::Code {
                        fexpr,
                        depth: depth + 1,
                    },
                ),
                '}' if fexpr && depth == 0 => sc.leave(&mut st, 1),
                ')' | ']' | '}' if fexpr => sc.replace_top(
                    &mut st,
                    Py::Code {
                        fexpr,
                        depth: depth.saturating_sub(1),
                    },
                ),
                _ => sc.push(1),
            },
            Py::Str { q, triple, fmt, .. } => match c {
                '\\' => sc.escape("a backslash")?,
                c if c == q => {
                    if !triple {
                        sc.leave(&mut st, 1);
                    } else if sc.peek(1) == Some(q) && sc.peek(2) == Some(q) {
                        sc.leave(&mut st, 3);
                    } else {
                        sc.push(1);
                    }
                }
                '{' | '}' if fmt && sc.peek(1) == Some(c) => sc.push(2),
                '{' if fmt => sc.enter(
                    &mut st,
                    Py::Code {
                        fexpr: true,
                        depth: 0,
                    },
                    1,
                ),
                // An unterminated string: Python refuses the file.
                '\n' | '\r' if !triple => sc.leave(&mut st, 1),
                _ => sc.push(1),
            },
            Py::Comment => {
                if c == '\n' || c == '\r' {
                    st.pop();
                } else {
                    sc.push(1);
                }
            }
        }
    }
    Ok(())
}

// ----------------------------------------------------------- powershell --

/// Where the PowerShell lexer starts, and what it falls back to.
const PS_TOP: Ps = Ps::Code {
    sub: false,
    depth: 0,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ps {
    Code { sub: bool, depth: u32 },
    Sq,
    Dq,
    HereSq,
    HereDq,
    Line,
    Block,
    Brace,
}

/// PowerShell treats all of these as single quotes.
pub(crate) fn is_ps_single(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}')
}

/// PowerShell treats all of these as double quotes.
pub(crate) fn is_ps_double(c: char) -> bool {
    matches!(c, '"' | '\u{201C}' | '\u{201D}' | '\u{201E}')
}

/// Inside `'...'`: every single-quote character doubled.
pub(crate) fn ps_single_body(v: &str) -> String {
    let mut o = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        if is_ps_single(c) {
            o.push(c);
        }
        o.push(c);
    }
    o
}

/// Inside `"..."` or `@"..."@`: `` ` ``, `$` and every double-quote
/// character escaped with a backtick; `one_line` also turns CR/LF into
/// `` `r``/`` `n`` and escapes `#` (for comments).
pub(crate) fn ps_double_body(v: &str, one_line: bool) -> String {
    let mut o = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\n' if one_line => o.push_str("`n"),
            '\r' if one_line => o.push_str("`r"),
            '#' if one_line => o.push_str("`#"),
            c if c == '`' || c == '$' || is_ps_double(c) => {
                o.push('`');
                o.push(c);
            }
            c => o.push(c),
        }
    }
    o
}

/// A PowerShell string literal: single quotes, nothing inside is special
/// but the single-quote characters, which are doubled. (Comments, where a
/// newline would end the comment, get the one-line form instead.)
pub(crate) fn ps_literal(v: &str) -> String {
    format!("'{}'", ps_single_body(v))
}

fn powershell(sc: &mut Scan<'_>) -> Result<(), Refusal> {
    let mut st = vec![PS_TOP];
    let mut line_start = true;
    while let Some(c) = sc.peek(0) {
        let top = *st.last().unwrap_or(&PS_TOP);
        let at_line_start = line_start;
        line_start = false;
        if c == OPEN {
            sc.refuse_if_uncertain()?;
            if st.contains(&Ps::Brace) {
                return Err(sc.refuse_here("inside ${...}"));
            }
            let (at, slot, v) = sc.marker()?;
            match top {
                Ps::Sq => sc.out.push_str(&ps_single_body(&v)),
                Ps::Dq | Ps::HereDq => sc.out.push_str(&ps_double_body(&v, false)),
                Ps::HereSq => sc.verbatim_checked(slot, at, &v, || End::PsHereSq),
                Ps::Line | Ps::Block => {
                    sc.out.push('"');
                    sc.out.push_str(&ps_double_body(&v, true));
                    sc.out.push('"');
                }
                _ => sc.out.push_str(&ps_literal(&v)),
            }
            continue;
        }
        if c == '\n' {
            line_start = true;
        }
        match top {
            Ps::Code { sub, depth } => match c {
                '`' => sc.escape("a backtick")?,
                c if is_ps_single(c) => sc.enter(&mut st, Ps::Sq, 1),
                c if is_ps_double(c) => sc.enter(&mut st, Ps::Dq, 1),
                '@' if sc
                    .peek(1)
                    .is_some_and(|q| is_ps_single(q) || is_ps_double(q)) =>
                {
                    let mut k = 2;
                    while matches!(sc.peek(k), Some(' ' | '\t')) {
                        k += 1;
                    }
                    let nl = match sc.peek(k) {
                        Some('\n') => Some(k + 1),
                        Some('\r') if sc.peek(k + 1) == Some('\n') => Some(k + 2),
                        _ => None,
                    };
                    match nl {
                        Some(n) => {
                            let single = sc.peek(1).is_some_and(is_ps_single);
                            sc.enter(&mut st, if single { Ps::HereSq } else { Ps::HereDq }, n);
                            line_start = true;
                        }
                        None => sc.push(1),
                    }
                }
                '$' => ps_dollar(sc, &mut st)?,
                '(' => sc.replace_top(
                    &mut st,
                    Ps::Code {
                        sub,
                        depth: depth + 1,
                    },
                ),
                ')' => {
                    st.pop();
                    if depth > 0 {
                        st.push(Ps::Code {
                            sub,
                            depth: depth - 1,
                        });
                    } else if !sub {
                        st.push(Ps::Code { sub, depth });
                    }
                    sc.push(1);
                }
                '<' if sc.peek(1) == Some('#') => sc.enter(&mut st, Ps::Block, 2),
                '#' if sc
                    .prev()
                    .is_none_or(|p| p.is_whitespace() || ";|&(){}".contains(p)) =>
                {
                    sc.enter(&mut st, Ps::Line, 1);
                }
                '#' => {
                    sc.uncertain = Some(
                        "after a # inside a word (PowerShell may or may not read a comment there)",
                    );
                    sc.push(1);
                }
                _ => sc.push(1),
            },
            Ps::Sq => {
                if is_ps_single(c) {
                    if sc.peek(1).is_some_and(is_ps_single) {
                        sc.push(2);
                    } else {
                        sc.leave(&mut st, 1);
                    }
                } else {
                    sc.push(1);
                }
            }
            Ps::Dq | Ps::HereDq => match c {
                '`' => sc.escape("a backtick")?,
                c if top == Ps::HereDq
                    && at_line_start
                    && is_ps_double(c)
                    && sc.peek(1) == Some('@') =>
                {
                    sc.leave(&mut st, 2);
                }
                c if top == Ps::Dq && is_ps_double(c) => {
                    if sc.peek(1).is_some_and(is_ps_double) {
                        sc.push(2);
                    } else {
                        sc.leave(&mut st, 1);
                    }
                }
                '$' => ps_dollar(sc, &mut st)?,
                _ => sc.push(1),
            },
            Ps::HereSq => {
                if at_line_start && is_ps_single(c) && sc.peek(1) == Some('@') {
                    sc.leave(&mut st, 2);
                } else {
                    sc.push(1);
                }
            }
            Ps::Line => {
                if c == '\n' || c == '\r' {
                    line_start = c == '\n';
                    sc.leave(&mut st, 1);
                } else {
                    sc.push(1);
                }
            }
            Ps::Block => {
                if c == '#' && sc.peek(1) == Some('>') {
                    sc.leave(&mut st, 2);
                } else {
                    sc.push(1);
                }
            }
            Ps::Brace => {
                if c == '}' {
                    st.pop();
                }
                sc.push(1);
            }
        }
    }
    Ok(())
}

/// `$` in PowerShell code and double-quoted strings: `$(` opens a
/// subexpression, `${` a braced variable name.
fn ps_dollar(sc: &mut Scan<'_>, st: &mut Vec<Ps>) -> Result<(), Refusal> {
    match sc.peek(1) {
        Some(OPEN) => return Err(sc.refuse_next("right after $")),
        Some('(') => sc.enter(
            st,
            Ps::Code {
                sub: true,
                depth: 0,
            },
            2,
        ),
        Some('{') => sc.enter(st, Ps::Brace, 2),
        _ => sc.push(1),
    }
    Ok(())
}
