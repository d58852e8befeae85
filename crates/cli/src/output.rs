//! Printing for people (aligned tables, colours on a terminal, target-prefixed
//! live output) and for scripts (`--json`).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use comfy_table::{Cell, Table, presets};
use opsconductor::{Error, Line, LineSplitter, LogChunk, RunStatus, StepStatus, Stream};

use crate::ColorChoice;

/// Where and how to print.
pub struct Out {
    /// Colours on stdout.
    pub color: bool,
    /// Colours on stderr.
    pub color_err: bool,
    /// JSON mode.
    pub json: bool,
    /// stdout is a terminal (progress lines may redraw).
    pub tty: bool,
}

const RESET: &str = "\x1b[0m";
const PALETTE: [&str; 6] = [
    "\x1b[36m", "\x1b[35m", "\x1b[34m", "\x1b[33m", "\x1b[32m", "\x1b[96m",
];

impl Out {
    /// Decides colours from the flag, the terminal and `NO_COLOR`.
    pub fn new(choice: ColorChoice, json: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let decide = |tty: bool| match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        let tty = std::io::stdout().is_terminal();
        Self {
            color: decide(tty) && !json,
            color_err: decide(std::io::stderr().is_terminal()),
            json,
            tty,
        }
    }

    /// Paints `s` with an ANSI style when colours are on.
    pub fn paint(&self, style: &str, s: &str) -> String {
        if self.color {
            format!("{style}{s}{RESET}")
        } else {
            s.to_string()
        }
    }

    /// Bold.
    pub fn bold(&self, s: &str) -> String {
        self.paint("\x1b[1m", s)
    }

    /// Dim.
    pub fn dim(&self, s: &str) -> String {
        self.paint("\x1b[2m", s)
    }

    /// A run status, coloured by outcome.
    pub fn run_status(&self, s: RunStatus) -> String {
        let style = match s {
            RunStatus::Succeeded => "\x1b[32m",
            RunStatus::Failed | RunStatus::TimedOut => "\x1b[31m",
            RunStatus::Cancelled | RunStatus::Rejected | RunStatus::Expired => "\x1b[33m",
            RunStatus::Queued | RunStatus::Running => "\x1b[36m",
            RunStatus::WaitingApproval => "\x1b[35m",
        };
        self.paint(style, s.as_str())
    }

    /// A step status, coloured by outcome.
    pub fn step_status(&self, s: StepStatus) -> String {
        let style = match s {
            StepStatus::Succeeded => "\x1b[32m",
            StepStatus::Failed | StepStatus::TimedOut | StepStatus::Interrupted => "\x1b[31m",
            StepStatus::Cancelled => "\x1b[33m",
            StepStatus::Skipped => "\x1b[2m",
            StepStatus::Running => "\x1b[36m",
        };
        self.paint(style, s.as_str())
    }

    /// Prints an error to stderr: `error: FIELD: MESSAGE` (JSON on stdout in JSON mode).
    pub fn error(&self, e: &Error) {
        if self.json {
            let (field, message) = match e {
                Error::Validation { field, message } => (field.clone(), message.clone()),
                other => (None, other.to_string()),
            };
            let v = serde_json::json!({"error": {"kind": format!("{:?}", e.kind()).to_lowercase(), "field": field, "message": message}});
            println!("{v}");
            return;
        }
        let label = if self.color_err {
            "\x1b[1;31merror\x1b[0m"
        } else {
            "error"
        };
        eprintln!("{label}: {e}");
    }

    /// A warning on stderr.
    pub fn warn(&self, msg: &str) {
        let label = if self.color_err {
            "\x1b[1;33mwarning\x1b[0m"
        } else {
            "warning"
        };
        eprintln!("{label}: {msg}");
    }

    /// A note on stderr (never mixed into data on stdout).
    pub fn note(&self, msg: &str) {
        if self.color_err {
            eprintln!("\x1b[2m{msg}\x1b[0m");
        } else {
            eprintln!("{msg}");
        }
    }

    /// Prints JSON.
    pub fn json<T: serde::Serialize>(&self, v: &T) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode JSON: {e}"),
        }
    }

    /// The same settings for text written to stderr (its own colour choice).
    pub fn for_stderr(&self) -> Out {
        Out {
            color: self.color_err && !self.json,
            color_err: self.color_err,
            json: self.json,
            tty: false,
        }
    }

    /// Prints an aligned table with a header.
    pub fn table(&self, header: &[&str], rows: Vec<Vec<String>>) {
        for line in self.table_lines(header, rows) {
            println!("{line}");
        }
    }

    /// Prints an aligned table to stderr: a summary, not data. Cells should
    /// be painted by [`Out::for_stderr`].
    pub fn table_err(&self, header: &[&str], rows: Vec<Vec<String>>) {
        for line in self.for_stderr().table_lines(header, rows) {
            eprintln!("{line}");
        }
    }

    fn table_lines(&self, header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
        let mut t = Table::new();
        t.load_preset(presets::NOTHING);
        t.set_header(header.iter().map(|h| Cell::new(self.bold(h))));
        for r in rows {
            t.add_row(r);
        }
        // comfy-table pads with a leading space; trim it for a kubectl-like look.
        t.to_string()
            .lines()
            .map(|line| {
                line.strip_prefix(' ')
                    .unwrap_or(line)
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    /// A per-target colour, stable within one process.
    pub fn target_color(&self, idx: usize) -> &'static str {
        PALETTE[idx % PALETTE.len()]
    }
}

/// Prints live output, one complete line at a time, each prefixed by its
/// target. Lines are cut by the core's [`LineSplitter`] (the same rules as
/// every front end).
pub struct LogPrinter<'a> {
    out: &'a Out,
    width: usize,
    prefix: bool,
    colors: HashMap<String, &'static str>,
    lines: LineSplitter,
}

impl<'a> LogPrinter<'a> {
    /// `targets` sets the prefix width and colours; `prefix` turns prefixes on.
    pub fn new(out: &'a Out, targets: &[String], prefix: bool) -> Self {
        let width = targets.iter().map(|t| t.len()).max().unwrap_or(0);
        let colors = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), out.target_color(i)))
            .collect();
        Self {
            out,
            width,
            prefix,
            colors,
            lines: LineSplitter::new(),
        }
    }

    /// Takes a chunk; prints the lines it completes.
    pub fn chunk(&mut self, c: &LogChunk) {
        if self.out.json {
            let v = serde_json::json!({
                "seq": c.seq, "step": c.step, "target": c.target, "stream": c.stream,
                "data": String::from_utf8_lossy(&c.data), "time": c.time,
            });
            println!("{v}");
            return;
        }
        for line in self.lines.push(c) {
            self.emit(&line);
        }
    }

    /// Prints what is left of unfinished lines.
    pub fn flush(&mut self) {
        for line in std::mem::take(&mut self.lines).finish() {
            self.emit(&line);
        }
    }

    fn emit(&self, line: &Line) {
        let name = line.target.as_deref().unwrap_or("");
        let mut s = String::new();
        if self.prefix {
            let padded = format!("{name:<w$}", w = self.width);
            let style = self.colors.get(name).copied().unwrap_or("\x1b[36m");
            s.push_str(&self.out.paint(style, &padded));
            s.push_str(&self.out.dim(" | "));
        }
        let text = line.text();
        match line.stream {
            Stream::System => s.push_str(&self.out.paint("\x1b[33m", &text)),
            _ => s.push_str(&text),
        }
        s.push('\n');
        match line.stream {
            Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(s.as_bytes());
                let _ = o.flush();
            }
            Stream::Stderr | Stream::System => {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(s.as_bytes());
                let _ = e.flush();
            }
        }
    }
}

/// `1.23s`, `850ms`, `2m03s`.
pub fn human_duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Local time, to the second.
pub fn local_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}
