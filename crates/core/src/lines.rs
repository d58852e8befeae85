//! Output chunks into lines, one rule for every front end: per target and
//! stream, split at `\n` (a trailing `\r` dropped); a line a step left
//! unterminated ends when that target's stream moves to another step, or
//! when the output ends; a line longer than [`MAX_LINE`] is cut there, so
//! memory stays bounded whatever a step prints.

use std::collections::HashMap;

use crate::model::{LogChunk, Stream};

/// Longest line held back waiting for its end.
pub const MAX_LINE: usize = 64 * 1024;

/// One line of output (without its line end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The target that printed it (`None`: the run's own messages).
    pub target: Option<String>,
    /// Which stream.
    pub stream: Stream,
    /// The step it belongs to.
    pub step: Option<u32>,
    /// The `seq` of the chunk that ended it.
    pub seq: u64,
    /// The bytes, as printed (not necessarily UTF-8).
    pub bytes: Vec<u8>,
}

impl Line {
    /// The text, with invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

#[derive(Default)]
struct Pending {
    step: Option<u32>,
    bytes: Vec<u8>,
    seq: u64,
}

/// Splits chunks into [`Line`]s (see the module doc for the rules).
#[derive(Default)]
pub struct LineSplitter {
    pending: HashMap<(Option<String>, Stream), Pending>,
}

impl LineSplitter {
    /// A splitter with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lines `chunk` completes, in order.
    pub fn push(&mut self, chunk: &LogChunk) -> Vec<Line> {
        let key = (chunk.target.clone(), chunk.stream);
        let p = self.pending.entry(key).or_default();
        let mut out = Vec::new();
        if p.step != chunk.step && !p.bytes.is_empty() {
            out.push(take_line(&chunk.target, chunk.stream, p));
        }
        p.step = chunk.step;
        let mut rest = chunk.data.as_slice();
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            p.bytes.extend_from_slice(&rest[..nl]);
            p.seq = chunk.seq;
            out.push(take_line(&chunk.target, chunk.stream, p));
            rest = &rest[nl + 1..];
        }
        while !rest.is_empty() {
            let room = MAX_LINE.saturating_sub(p.bytes.len()).max(1);
            let (now, later) = rest.split_at(room.min(rest.len()));
            p.bytes.extend_from_slice(now);
            p.seq = chunk.seq;
            if p.bytes.len() >= MAX_LINE {
                out.push(take_line(&chunk.target, chunk.stream, p));
            }
            rest = later;
        }
        out
    }

    /// The unterminated lines left at the end, in output order.
    pub fn finish(self) -> Vec<Line> {
        let mut out: Vec<Line> = self
            .pending
            .into_iter()
            .filter(|(_, p)| !p.bytes.is_empty())
            .map(|((target, stream), mut p)| take_line(&target, stream, &mut p))
            .collect();
        out.sort_by_key(|l| l.seq);
        out
    }
}

fn take_line(target: &Option<String>, stream: Stream, p: &mut Pending) -> Line {
    let mut bytes = std::mem::take(&mut p.bytes);
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    Line {
        target: target.clone(),
        stream,
        step: p.step,
        seq: p.seq,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chunk(seq: u64, target: &str, step: u32, data: &[u8]) -> LogChunk {
        LogChunk {
            run_id: crate::model::RunId::new(),
            seq,
            step: Some(step),
            target: Some(target.into()),
            stream: Stream::Stdout,
            data: data.to_vec(),
            time: chrono::Utc::now(),
            try_no: 1,
        }
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines.iter().map(Line::text).collect()
    }

    #[test]
    fn lines_span_chunks_per_target_and_drop_cr() {
        let mut s = LineSplitter::new();
        assert!(s.push(&chunk(1, "a", 0, b"hel")).is_empty());
        assert_eq!(texts(&s.push(&chunk(2, "b", 0, b"x\r\n"))), ["x"]);
        let l = s.push(&chunk(3, "a", 0, b"lo\nwor"));
        assert_eq!(texts(&l), ["hello"]);
        assert_eq!(l[0].seq, 3);
        assert_eq!(texts(&s.finish()), ["wor"]);
    }

    #[test]
    fn a_new_step_ends_the_unterminated_line() {
        let mut s = LineSplitter::new();
        s.push(&chunk(1, "a", 0, b"no newline"));
        let l = s.push(&chunk(2, "a", 1, b"next\n"));
        assert_eq!(texts(&l), ["no newline", "next"]);
        assert_eq!(l[0].step, Some(0));
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_limit() {
        let mut s = LineSplitter::new();
        let big = vec![b'x'; MAX_LINE + 10];
        let l = s.push(&chunk(1, "a", 0, &big));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].bytes.len(), MAX_LINE);
        assert_eq!(s.finish()[0].bytes.len(), 10);
    }
}
