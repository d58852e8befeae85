//! A small POSIX-shell reader for the command policy: enough of the
//! language (quotes, escapes, variables, command and process substitution,
//! pipelines, lists, redirections, simple assignments) to see which
//! programs a command line runs with which words. It never runs anything
//! and never fails: text it does not understand becomes literal words.
//!
//! Variables are expanded with the values the screener knows (the step's
//! environment and assignments earlier in the same text); an unknown
//! variable expands to the empty string, the worst case for
//! `rm -rf "$DIR"/*`. `${VAR:?}` (which aborts when empty) and a few
//! variables every login shell sets (`HOME`, `TMPDIR`, …) expand to an
//! opaque non-empty value instead.

use std::collections::HashMap;

/// A placeholder for a value that is not empty but unknown (a command
/// substitution, `${VAR:?}`, `$HOME`). It is never a path separator, a
/// glob or a flag, so it never makes a word look like `/` or `-r`.
pub(crate) const OPAQUE: char = '\u{1}';

/// Most nested substitutions (`$(…)`, `sh -c '…'`) read; deeper text is
/// still matched by regex rules, just not taken apart.
pub(crate) const MAX_DEPTH: usize = 8;

/// Variables a shell on a target has set to a non-empty value.
const SET_BY_SHELL: &[&str] = &[
    "HOME", "TMPDIR", "PWD", "OLDPWD", "USER", "LOGNAME", "SHELL", "PATH", "HOSTNAME",
];

/// One part of a word before expansion.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    /// Literal text.
    Lit(String),
    /// `$NAME` or `${NAME…}`: the name and the operator text after it.
    Var { name: String, op: VarOp },
    /// `$(…)`, `` `…` ``, `<(…)`, `$((…))`: opaque, with its text for screening.
    Sub(String),
}

#[derive(Debug, Clone, PartialEq)]
enum VarOp {
    /// `$NAME`, `${NAME}`.
    Plain,
    /// `${NAME:-word}` / `${NAME-word}`.
    Default(String),
    /// `${NAME:?…}`: aborts when empty.
    Required,
    /// Any other form (`${NAME#…}`, `${#NAME}`, …): unknown.
    Other,
}

/// A raw word: its segments, in order.
type RawWord = Vec<Seg>;

/// A simple command as read: words, redirection targets and the control
/// operator that ended it.
#[derive(Debug, Clone, Default)]
struct RawCommand {
    words: Vec<RawWord>,
    redirects: Vec<(String, RawWord)>,
    /// Piped into the next command.
    pipe: bool,
}

/// A simple command after expansion.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SimpleCommand {
    /// The expanded words, program first (wrappers such as `sudo` removed
    /// later by [`normalize`]).
    pub words: Vec<String>,
    /// Output redirection targets (`>`, `>>`, `>|`, `&>`).
    pub writes: Vec<String>,
    /// The texts of substitutions in its words, screened on their own.
    pub subs: Vec<String>,
    /// Piped into the next command of the list.
    pub pipe: bool,
}

/// Reads `text` into simple commands, expanding variables from `vars`
/// (which assignments in the text update as they are met).
pub(crate) fn parse(text: &str, vars: &mut HashMap<String, String>) -> Vec<SimpleCommand> {
    let raw = Lexer::new(text).commands();
    let mut out = Vec::with_capacity(raw.len());
    for rc in raw {
        let mut subs = Vec::new();
        let mut words: Vec<String> = rc
            .words
            .iter()
            .map(|w| expand(w, vars, &mut subs))
            .collect();
        let writes = rc
            .redirects
            .iter()
            .filter(|(op, _)| op.contains('>'))
            .map(|(_, w)| expand(w, vars, &mut subs))
            .collect();
        for (_, w) in &rc.redirects {
            collect_subs(w, &mut subs);
        }
        // `NAME=value` alone (or after `export`/`local`/`readonly`/
        // `declare`) sets a variable for the rest of the text.
        let assigning = words
            .first()
            .is_some_and(|w| matches!(w.as_str(), "export" | "local" | "readonly" | "declare"));
        let first = usize::from(assigning);
        if words.len() > first && words[first..].iter().all(|w| assignment(w).is_some()) {
            for w in &words[first..] {
                if let Some((k, v)) = assignment(w) {
                    vars.insert(k.to_string(), v.to_string());
                }
            }
            words.clear();
        }
        out.push(SimpleCommand {
            words,
            writes,
            subs,
            pipe: rc.pipe,
        });
    }
    out
}

/// `NAME=value` → `(NAME, value)`.
pub(crate) fn assignment(w: &str) -> Option<(&str, &str)> {
    let (k, v) = w.split_once('=')?;
    let ok = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    ok.then_some((k, v))
}

fn collect_subs(w: &RawWord, subs: &mut Vec<String>) {
    for s in w {
        if let Seg::Sub(t) = s {
            subs.push(t.clone());
        }
    }
}

fn expand(w: &RawWord, vars: &HashMap<String, String>, subs: &mut Vec<String>) -> String {
    let mut out = String::new();
    for s in w {
        match s {
            Seg::Lit(t) => out.push_str(t),
            Seg::Sub(t) => {
                subs.push(t.clone());
                out.push(OPAQUE);
            }
            Seg::Var { name, op } => match (vars.get(name), op) {
                (Some(v), _) if !v.is_empty() => out.push_str(v),
                (_, VarOp::Required) => out.push(OPAQUE),
                (_, VarOp::Default(d)) => out.push_str(d),
                (_, VarOp::Other) => out.push(OPAQUE),
                (Some(v), VarOp::Plain) => out.push_str(v),
                (None, VarOp::Plain) if SET_BY_SHELL.contains(&name.as_str()) => out.push(OPAQUE),
                // Positional parameters, `$@`, `$*`, `$?`…: unknown, not empty.
                (None, VarOp::Plain)
                    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') =>
                {
                    out.push(OPAQUE)
                }
                (None, VarOp::Plain) => {}
            },
        }
    }
    out
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    _text: &'a str,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            chars: text.chars().collect(),
            pos: 0,
            _text: text,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn commands(mut self) -> Vec<RawCommand> {
        let mut out = Vec::new();
        let mut cur = RawCommand::default();
        let mut word: Option<RawWord> = None;
        let mut pending_redirect: Option<String> = None;
        let finish_word =
            |word: &mut Option<RawWord>, cur: &mut RawCommand, pending: &mut Option<String>| {
                if let Some(w) = word.take() {
                    match pending.take() {
                        Some(op) => cur.redirects.push((op, w)),
                        None => cur.words.push(w),
                    }
                }
            };
        let end_command = |cur: &mut RawCommand, out: &mut Vec<RawCommand>, pipe: bool| {
            let mut c = std::mem::take(cur);
            c.pipe = pipe;
            if !c.words.is_empty() || !c.redirects.is_empty() {
                out.push(c);
            }
        };
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' => {
                    self.pos += 1;
                    finish_word(&mut word, &mut cur, &mut pending_redirect);
                }
                '#' if word.is_none() => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                '\n' | ';' | '&' | '|' | '(' | ')' => {
                    // `&>` is a redirection, `>&`/`2>&1` handled below.
                    if c == '&' && self.peek_at(1) == Some('>') {
                        finish_word(&mut word, &mut cur, &mut pending_redirect);
                        self.pos += 2;
                        if self.peek() == Some('>') {
                            self.pos += 1;
                        }
                        pending_redirect = Some("&>".into());
                        continue;
                    }
                    finish_word(&mut word, &mut cur, &mut pending_redirect);
                    self.pos += 1;
                    let pipe = c == '|' && !matches!(self.peek(), Some('|'));
                    if matches!((c, self.peek()), ('|', Some('|' | '&')) | ('&', Some('&'))) {
                        self.pos += 1;
                    }
                    end_command(&mut cur, &mut out, pipe);
                }
                '>' | '<' => {
                    // A word of digits right before is a file descriptor.
                    if let Some(w) = &word
                        && let [Seg::Lit(t)] = w.as_slice()
                        && t.chars().all(|c| c.is_ascii_digit())
                    {
                        word = None;
                    }
                    finish_word(&mut word, &mut cur, &mut pending_redirect);
                    if self.peek_at(1) == Some('(') {
                        // Process substitution `<(…)` / `>(…)`: a word.
                        self.pos += 2;
                        let inner = self.until_close_paren();
                        word = Some(vec![Seg::Sub(inner)]);
                        continue;
                    }
                    let mut op = c.to_string();
                    self.pos += 1;
                    while let Some(n @ ('>' | '<' | '|' | '&')) = self.peek() {
                        op.push(n);
                        self.pos += 1;
                    }
                    if op.ends_with('&') {
                        // `>&2`, `2>&1`: a descriptor, not a file.
                        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '-') {
                            self.pos += 1;
                        }
                        continue;
                    }
                    pending_redirect = Some(op);
                }
                _ => {
                    let w = word.get_or_insert_with(Vec::new);
                    self.word_part(w);
                }
            }
        }
        finish_word(&mut word, &mut cur, &mut pending_redirect);
        end_command(&mut cur, &mut out, false);
        out
    }

    /// Reads one piece of a word (a run of plain characters, a quoted
    /// string, an escape or an expansion) into `w`.
    fn word_part(&mut self, w: &mut RawWord) {
        let Some(c) = self.peek() else { return };
        match c {
            '\'' => {
                self.pos += 1;
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    self.pos += 1;
                    if c == '\'' {
                        break;
                    }
                    s.push(c);
                }
                push_lit(w, &s);
            }
            '"' => {
                self.pos += 1;
                while let Some(c) = self.peek() {
                    match c {
                        '"' => {
                            self.pos += 1;
                            break;
                        }
                        '\\' => {
                            self.pos += 1;
                            match self.peek() {
                                Some(n @ ('$' | '`' | '"' | '\\')) => {
                                    self.pos += 1;
                                    push_lit(w, &n.to_string());
                                }
                                Some('\n') => self.pos += 1,
                                _ => push_lit(w, "\\"),
                            }
                        }
                        '$' | '`' => self.expansion(w),
                        _ => {
                            self.pos += 1;
                            push_lit(w, &c.to_string());
                        }
                    }
                }
            }
            '\\' => {
                self.pos += 1;
                match self.peek() {
                    Some('\n') => self.pos += 1,
                    Some(n) => {
                        self.pos += 1;
                        push_lit(w, &n.to_string());
                    }
                    None => {}
                }
            }
            '$' | '`' => self.expansion(w),
            _ => {
                self.pos += 1;
                push_lit(w, &c.to_string());
            }
        }
    }

    /// Reads `$…` or `` `…` `` at the current position.
    fn expansion(&mut self, w: &mut RawWord) {
        if self.peek() == Some('`') {
            self.pos += 1;
            let mut s = String::new();
            while let Some(c) = self.peek() {
                self.pos += 1;
                match c {
                    '`' => break,
                    '\\' => {
                        if let Some(n) = self.peek() {
                            self.pos += 1;
                            s.push(n);
                        }
                    }
                    _ => s.push(c),
                }
            }
            w.push(Seg::Sub(s));
            return;
        }
        // At '$'.
        self.pos += 1;
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                let inner = self.until_close_paren();
                w.push(Seg::Sub(inner));
            }
            Some('{') => {
                self.pos += 1;
                let mut s = String::new();
                let mut depth = 1;
                while let Some(c) = self.peek() {
                    self.pos += 1;
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    s.push(c);
                }
                w.push(braced(&s));
            }
            Some('\'') => {
                // ANSI-C quoting `$'…'`: the common escapes.
                self.pos += 1;
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    self.pos += 1;
                    match c {
                        '\'' => break,
                        '\\' => {
                            let n = self.peek();
                            self.pos += 1;
                            match n {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some(n) => s.push(n),
                                None => {}
                            }
                        }
                        _ => s.push(c),
                    }
                }
                push_lit(w, &s);
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        name.push(c);
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                w.push(Seg::Var {
                    name,
                    op: VarOp::Plain,
                });
            }
            Some(c) if c.is_ascii_digit() || "@*#?$!-".contains(c) => {
                self.pos += 1;
                w.push(Seg::Var {
                    name: c.to_string(),
                    op: VarOp::Plain,
                });
            }
            _ => push_lit(w, "$"),
        }
    }

    /// Reads up to the `)` that closes an already-consumed `(`, respecting
    /// nesting and quotes; returns the text inside.
    fn until_close_paren(&mut self) -> String {
        let mut s = String::new();
        let mut depth = 1usize;
        let mut quote: Option<char> = None;
        while let Some(c) = self.peek() {
            self.pos += 1;
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some('"'), '\\') => {
                    s.push(c);
                    if let Some(n) = self.peek() {
                        self.pos += 1;
                        s.push(n);
                    }
                    continue;
                }
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '\\') => {
                    s.push(c);
                    if let Some(n) = self.peek() {
                        self.pos += 1;
                        s.push(n);
                    }
                    continue;
                }
                (None, '(') => depth += 1,
                (None, ')') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            s.push(c);
        }
        // `$((…))` arithmetic reads as a substitution of `(…)`; harmless.
        s
    }
}

fn push_lit(w: &mut RawWord, s: &str) {
    if let Some(Seg::Lit(t)) = w.last_mut() {
        t.push_str(s);
    } else {
        w.push(Seg::Lit(s.to_string()));
    }
}

/// `${…}` contents → a segment.
fn braced(s: &str) -> Seg {
    let name: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() {
        return Seg::Var {
            name: s.to_string(),
            op: VarOp::Other,
        };
    }
    let rest = &s[name.len()..];
    let op = if rest.is_empty() {
        VarOp::Plain
    } else if let Some(d) = rest.strip_prefix(":-").or_else(|| rest.strip_prefix('-')) {
        VarOp::Default(d.trim_matches(|c| c == '"' || c == '\'').to_string())
    } else if rest.starts_with(":?") || rest.starts_with('?') {
        VarOp::Required
    } else {
        VarOp::Other
    };
    Seg::Var { name, op }
}

/// The program a simple command really runs, with its arguments: leading
/// assignments, keywords (`then`, `do`, `!`, `{` …) and wrappers (`sudo`,
/// `doas`, `env`, `nice`, `nohup`, `timeout`, `xargs`, `command`, `exec`,
/// `busybox` …) with their options are taken off, and the program is named
/// by its base name (`/bin/rm` → `rm`).
pub(crate) fn normalize(words: &[String]) -> Vec<String> {
    let mut w: Vec<String> = words.to_vec();
    let mut guard = 0;
    loop {
        guard += 1;
        if guard > 64 || w.is_empty() {
            break;
        }
        if assignment(&w[0]).is_some() {
            w.remove(0);
            continue;
        }
        let base = basename(&w[0]);
        // Options that take a value, per wrapper.
        let with_value: &[&str] = match base {
            "then" | "do" | "else" | "elif" | "if" | "while" | "until" | "!" | "{" | "}"
            | "time" | "nohup" | "builtin" | "busybox" | "unbuffer" | "setsid" => {
                w.remove(0);
                continue;
            }
            "sudo" => &[
                "-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "-R",
            ],
            "doas" => &["-u", "-C"],
            "env" => &["-u", "-C", "-S", "--unset", "--chdir"],
            "nice" => &["-n", "--adjustment"],
            "ionice" => &["-c", "-n", "-p", "-t"],
            "timeout" => &["-s", "-k", "--signal", "--kill-after"],
            "stdbuf" => &["-i", "-o", "-e"],
            "xargs" => &[
                "-I",
                "-n",
                "-P",
                "-d",
                "-a",
                "-E",
                "-L",
                "-s",
                "--max-args",
                "--max-procs",
                "--delimiter",
                "--arg-file",
            ],
            "command" | "exec" | "chrt" | "taskset" | "flock" => &[],
            _ => break,
        };
        let wrapper = base.to_string();
        w.remove(0);
        while let Some(first) = w.first() {
            if first == "--" {
                w.remove(0);
                break;
            }
            if first.starts_with('-') && first.len() > 1 {
                let takes = with_value.contains(&first.as_str());
                w.remove(0);
                if takes && !w.is_empty() {
                    w.remove(0);
                }
                continue;
            }
            if wrapper == "env" && assignment(first).is_some() {
                w.remove(0);
                continue;
            }
            break;
        }
        // Wrappers with positional arguments before the program.
        let positional = match wrapper.as_str() {
            "timeout" => 1,
            "flock" | "chrt" | "taskset" => 1,
            "nice" if w.first().is_some_and(|f| f.parse::<i32>().is_ok()) => 1,
            _ => 0,
        };
        for _ in 0..positional.min(w.len()) {
            w.remove(0);
        }
    }
    if let Some(first) = w.first_mut() {
        *first = basename(first).to_string();
    }
    w
}

/// The last path component of a program name.
pub(crate) fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// The script a shell runs with `-c` (`sh -c '…'`, `bash -lc '…'`,
/// `su -c '…'`), or the words `eval` joins, if `cmd` is such a command.
pub(crate) fn inner_script(cmd: &[String]) -> Option<String> {
    let (first, rest) = cmd.split_first()?;
    match first.as_str() {
        "eval" => Some(rest.join(" ")),
        "su" | "runuser" => {
            let i = rest.iter().position(|a| a == "-c" || a == "--command")?;
            rest.get(i + 1).cloned()
        }
        s if is_shell(s) => {
            let i = rest
                .iter()
                .position(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))?;
            rest.get(i + 1).cloned()
        }
        _ => None,
    }
}

/// True for the names of POSIX-like shells.
pub(crate) fn is_shell(name: &str) -> bool {
    matches!(
        name,
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh" | "yash" | "fish"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Vec<String>> {
        parse(text, &mut HashMap::new())
            .into_iter()
            .map(|c| normalize(&c.words))
            .collect()
    }

    #[test]
    fn quotes_escapes_and_wrappers() {
        assert_eq!(
            words("sudo -u root \"r\"'m' -\\rf /")[0],
            ["rm", "-rf", "/"]
        );
        assert_eq!(words("a && /bin/rm x | b")[1], ["rm", "x"]);
        assert_eq!(words("X=/ ; rm -rf $X")[1], ["rm", "-rf", "/"]);
        assert_eq!(words("rm -rf \"${D:?}/\"*")[0][2], format!("{OPAQUE}/*"));
        assert_eq!(words("echo $(rm -rf /)")[0][1], OPAQUE.to_string());
    }

    #[test]
    fn inner_scripts() {
        let c = ["bash".to_string(), "-lc".into(), "rm -rf /".into()];
        assert_eq!(inner_script(&c).as_deref(), Some("rm -rf /"));
    }
}
