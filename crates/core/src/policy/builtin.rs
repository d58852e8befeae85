//! The built-in matchers of the default rules, and the matcher of
//! [`super::ShellPattern`]. Each reads the simple commands of the text (see
//! `shell.rs`) and returns the first command that matches, as text.

use serde::{Deserialize, Serialize};

use super::ShellPattern;
use super::shell::{self, OPAQUE, SimpleCommand};

/// A matcher written in Rust, for what a regular expression cannot say
/// well (any flag spelling, quoting, variables, wrappers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Builtin {
    /// `rm` with a recursive flag and `/` or `/*` as an operand (any flag
    /// spelling, `--no-preserve-root`, `..` and `//` in the path), and
    /// `find / … -delete`.
    RecursiveDeleteRoot,
    /// `mkfs`, `mkfs.*`, `mke2fs`, `mkdosfs`, `mkntfs`.
    Mkfs,
    /// `dd of=` a block device; `>` redirection, `cp`, `tee`, `shred`,
    /// `wipefs` onto one (`/dev/sd*`, `nvme*`, `vd*`, `xvd*`, `hd*`,
    /// `mmcblk*`, `md*`, `dm-*`, `mapper/`, `disk/`, `loop*`, `nbd*`, …).
    BlockDeviceWrite,
    /// A function that pipes itself into itself in the background
    /// (`:(){ :|:& };:` under any name), `fork while fork`.
    ForkBomb,
    /// `chmod`, `chown` or `chgrp` with a recursive flag on `/` or `/*`.
    RecursiveChmodRoot,
    /// A download piped into a shell or interpreter (`curl … | sh`,
    /// `wget -O- … | sudo bash`), or run through `sh -c "$(curl …)"`,
    /// `bash <(curl …)`.
    PipeToShell,
    /// `shutdown`, `reboot`, `halt`, `poweroff`, `init 0|6`,
    /// `systemctl reboot|poweroff|halt|kexec`.
    Shutdown,
}

/// One text read: the step's own, or one it runs (`$(…)`, `sh -c '…'`).
#[derive(Debug)]
pub(crate) struct Read {
    /// The text.
    pub text: String,
    /// Its simple commands.
    pub cmds: Vec<SimpleCommand>,
}

impl Builtin {
    /// The first match in the texts read, as text.
    pub(crate) fn find(&self, texts: &[Read]) -> Option<String> {
        if *self == Builtin::ForkBomb {
            return texts.iter().find_map(|t| fork_bomb(&t.text));
        }
        for read in texts {
            let list = &read.cmds;
            for (i, c) in list.iter().enumerate() {
                let words = shell::normalize(&c.words);
                let hit = match self {
                    Builtin::RecursiveDeleteRoot => delete_root(&words),
                    Builtin::Mkfs => words.first().is_some_and(|p| {
                        p.starts_with("mkfs")
                            || matches!(p.as_str(), "mke2fs" | "mkdosfs" | "mkntfs")
                    }),
                    Builtin::BlockDeviceWrite => block_write(&words, c),
                    Builtin::RecursiveChmodRoot => chmod_root(&words),
                    Builtin::PipeToShell => pipe_to_shell(list, i, &words, c),
                    Builtin::Shutdown => shutdown(&words),
                    Builtin::ForkBomb => false,
                };
                if hit {
                    return Some(display(c));
                }
            }
        }
        None
    }
}

/// The first simple command matching a shell pattern.
pub(crate) fn find_shell(p: &ShellPattern, texts: &[Read]) -> Option<String> {
    for read in texts {
        for c in &read.cmds {
            let words = shell::normalize(&c.words);
            let Some((prog, args)) = words.split_first() else {
                continue;
            };
            if !p.command.iter().any(|n| n == prog) {
                continue;
            }
            let a = Args::read(args);
            let flags_ok = p
                .flags
                .iter()
                .all(|f| a.has(&f.split('|').collect::<Vec<_>>()));
            let args_ok = p.args.iter().all(|w| args.iter().any(|x| x == w));
            let root_ok = !p.root_operand || a.operands.iter().any(|o| is_root(o));
            if flags_ok && args_ok && root_ok {
                return Some(display(c));
            }
        }
    }
    None
}

fn display(c: &SimpleCommand) -> String {
    let mut s = c.words.join(" ");
    for w in &c.writes {
        s.push_str(" > ");
        s.push_str(w);
    }
    s
}

/// A command's arguments split into flags and operands (GNU style: options
/// anywhere until `--`).
struct Args<'a> {
    short: Vec<char>,
    long: Vec<&'a str>,
    operands: Vec<&'a str>,
}

impl<'a> Args<'a> {
    fn read(args: &'a [String]) -> Self {
        let mut a = Args {
            short: vec![],
            long: vec![],
            operands: vec![],
        };
        let mut ended = false;
        for w in args {
            if ended {
                a.operands.push(w);
            } else if w == "--" {
                ended = true;
            } else if let Some(l) = w.strip_prefix("--") {
                a.long.push(l.split('=').next().unwrap_or(l));
            } else if let Some(s) = w.strip_prefix('-').filter(|s| !s.is_empty()) {
                a.short.extend(s.chars());
            } else {
                a.operands.push(w);
            }
        }
        a
    }

    /// True if any spelling of a flag is present: a one-character name in a
    /// cluster, or a long name or any unambiguous-looking prefix of it of
    /// at least three characters (GNU getopt accepts `--recur`).
    fn has(&self, names: &[&str]) -> bool {
        names.iter().any(|n| {
            let mut ch = n.chars();
            match (ch.next(), ch.next()) {
                (Some(c), None) => self.short.contains(&c),
                _ => self
                    .long
                    .iter()
                    .any(|l| l.len() >= 3 && n.starts_with(l) || l == n),
            }
        })
    }
}

/// True for `/`, `//`, `/.`, `/./`, `/..`, `/usr/..`, and the globs of all
/// of `/` (`/*`, `/**`, `/?*`, `/*/`).
pub(crate) fn is_root(path: &str) -> bool {
    if !path.starts_with('/') || path.contains(OPAQUE) {
        return false;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut stack: Vec<&str> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if *p == ".." {
            stack.pop();
            continue;
        }
        // A glob of every name, as the last component right under `/`.
        let glob = p.chars().all(|c| matches!(c, '*' | '?'));
        if glob && stack.is_empty() && i + 1 == parts.len() {
            continue;
        }
        stack.push(p);
    }
    stack.is_empty()
}

fn delete_root(words: &[String]) -> bool {
    let Some((prog, args)) = words.split_first() else {
        return false;
    };
    match prog.as_str() {
        "rm" => {
            let a = Args::read(args);
            a.has(&["r", "R", "recursive"]) && a.operands.iter().any(|o| is_root(o))
        }
        "find" => {
            let starts_at_root = args
                .iter()
                .take_while(|w| !w.starts_with('-') || *w == "-L" || *w == "-H" || *w == "-P")
                .any(|w| is_root(w));
            let deletes = args.iter().any(|w| w == "-delete")
                || args.windows(2).any(|p| {
                    matches!(p[0].as_str(), "-exec" | "-execdir") && shell::basename(&p[1]) == "rm"
                });
            starts_at_root && deletes
        }
        _ => false,
    }
}

fn chmod_root(words: &[String]) -> bool {
    let Some((prog, args)) = words.split_first() else {
        return false;
    };
    if !matches!(prog.as_str(), "chmod" | "chown" | "chgrp") {
        return false;
    }
    let a = Args::read(args);
    // The mode itself may look like a flag (`chmod -R -x /`); it is
    // still the recursive flag and the root operand that matter.
    a.has(&["R", "recursive"]) && a.operands.iter().any(|o| is_root(o))
}

/// True for paths of block devices (disks, partitions, volumes).
pub(crate) fn is_block_device(path: &str) -> bool {
    let Some(dev) = path.strip_prefix("/dev/") else {
        return false;
    };
    const PREFIXES: &[&str] = &[
        "sd", "hd", "vd", "xvd", "nvme", "mmcblk", "md", "dm-", "mapper/", "disk/", "loop", "nbd",
        "rbd", "sr", "zd", "bcache", "drbd", "root", "block/",
    ];
    PREFIXES.iter().any(|p| dev.starts_with(p))
}

fn block_write(words: &[String], c: &SimpleCommand) -> bool {
    if c.writes.iter().any(|w| is_block_device(w)) {
        return true;
    }
    let Some((prog, args)) = words.split_first() else {
        return false;
    };
    match prog.as_str() {
        "dd" => args
            .iter()
            .any(|a| a.strip_prefix("of=").is_some_and(is_block_device)),
        "wipefs" => {
            let a = Args::read(args);
            a.has(&["a", "all", "o", "offset"]) && a.operands.iter().any(|o| is_block_device(o))
        }
        "shred" | "tee" | "blkdiscard" => {
            Args::read(args).operands.iter().any(|o| is_block_device(o))
        }
        "cp" | "cat" | "pv" => Args::read(args)
            .operands
            .last()
            .is_some_and(|o| is_block_device(o) && prog != "cat" && prog != "pv"),
        _ => false,
    }
}

fn fork_bomb(text: &str) -> Option<String> {
    let all: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if all.contains("forkwhilefork") || all.contains("fork()while") {
        return Some("fork while fork".into());
    }
    // Code only: quoted text is data here (a `sh -c '…'` body is read as a
    // text of its own).
    let text = &unquoted(text);
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    // `NAME(){ NAME|NAME& }` and `function NAME { NAME|NAME& }`, any name.
    let bytes: Vec<char> = squeezed.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let is_def = bytes[i] == '(' && bytes.get(i + 1) == Some(&')');
        if is_def {
            let mut j = i;
            while j > 0 && !matches!(bytes[j - 1], ';' | '&' | '|' | '{' | '}' | '(' | ')' | '\n') {
                j -= 1;
            }
            let name: String = bytes[j..i].iter().collect();
            let name = name.strip_prefix("function").unwrap_or(&name).to_string();
            if !name.is_empty() {
                let body = format!("{{{name}|{name}&");
                let rest: String = bytes[i + 2..].iter().collect();
                if rest.starts_with(&body) {
                    return Some(format!("{name}(){{ {name}|{name}& }}"));
                }
            }
        }
        i += 1;
    }
    // `function NAME { NAME | NAME & }` without parentheses.
    for w in text.split("function").skip(1) {
        let name: String = w
            .trim_start()
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '{' && *c != '(')
            .collect();
        let rest: String = w.chars().filter(|c| !c.is_whitespace()).collect();
        if !name.is_empty() && rest.starts_with(&format!("{name}{{{name}|{name}&")) {
            return Some(format!("function {name} {{ {name}|{name}& }}"));
        }
    }
    None
}

/// `text` without its single- and double-quoted parts.
fn unquoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            _ if escaped => {
                escaped = false;
                if quote.is_none() {
                    out.push(c);
                }
            }
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => escaped = true,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '\\' => escaped = true,
            None => out.push(c),
        }
    }
    out
}

fn downloads(words: &[String]) -> bool {
    words.first().is_some_and(|p| {
        matches!(
            p.as_str(),
            "curl" | "wget" | "fetch" | "aria2c" | "http" | "lwp-request"
        )
    })
}

fn interprets(words: &[String]) -> bool {
    words.first().is_some_and(|p| {
        shell::is_shell(p)
            || matches!(
                p.as_str(),
                "python"
                    | "python2"
                    | "python3"
                    | "perl"
                    | "ruby"
                    | "node"
                    | "php"
                    | "source"
                    | "."
                    | "eval"
            )
    })
}

fn pipe_to_shell(list: &[SimpleCommand], i: usize, words: &[String], c: &SimpleCommand) -> bool {
    // A download earlier in the same pipeline, feeding an interpreter.
    if interprets(words) && i > 0 {
        let mut j = i;
        while j > 0 && list[j - 1].pipe {
            j -= 1;
            if downloads(&shell::normalize(&list[j].words)) {
                return true;
            }
        }
    }
    // `sh -c "$(curl …)"`, `bash <(curl …)`, `eval "$(wget -O- …)"`.
    if interprets(words) {
        for s in &c.subs {
            let mut vars = Default::default();
            if shell::parse(s, &mut vars)
                .iter()
                .any(|inner| downloads(&shell::normalize(&inner.words)))
            {
                return true;
            }
        }
    }
    false
}

fn shutdown(words: &[String]) -> bool {
    let Some((prog, args)) = words.split_first() else {
        return false;
    };
    match prog.as_str() {
        "shutdown" | "reboot" | "halt" | "poweroff" => true,
        "init" | "telinit" => args.first().is_some_and(|a| a == "0" || a == "6"),
        "systemctl" => args.iter().any(|a| {
            matches!(
                a.as_str(),
                "reboot"
                    | "poweroff"
                    | "halt"
                    | "kexec"
                    | "soft-reboot"
                    | "reboot.target"
                    | "poweroff.target"
            )
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots() {
        for r in [
            "/", "//", "/.", "/./", "/*", "/usr/..", "/../", "/*/", "/**",
        ] {
            assert!(is_root(r), "{r}");
        }
        for r in ["/tmp", "/tmp/*", "./", "*", "/home/x/..x", "/.git"] {
            assert!(!is_root(r), "{r}");
        }
    }
}
