//! Masking secret values in output streams before anything is stored or sent.
//!
//! A [`Masker`] holds the patterns (each secret value, its base64 forms and,
//! for multi-line values, each line) and a [`MaskStream`] applies them to one
//! stream of bytes that arrives in arbitrary pieces: a value split across
//! chunks, or written one byte at a time, is still replaced. To do that the
//! stream holds back a tail that could be the start of a secret until the next
//! piece (or the end of the stream) decides it.
//!
//! Values shorter than [`MIN_MASK_LEN`] bytes are not masked: replacing every
//! `1` or `on` in all output would make logs unreadable while protecting
//! nothing (a 3-character secret can be guessed faster than read). Setting
//! such a secret warns.

use std::sync::Arc;

/// What replaces a secret value.
pub const MASK: &[u8] = b"***";

/// Shorter values are not masked (see the module docs).
pub const MIN_MASK_LEN: usize = 4;

/// The set of values to hide. Cheap to clone.
#[derive(Clone, Default)]
pub struct Masker {
    patterns: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} patterns)", self.patterns.len())
    }
}

impl Masker {
    /// Masks nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Masks each value, its base64 forms and, for multi-line values, each line.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut add = |p: Vec<u8>| {
            if p.len() >= MIN_MASK_LEN && !patterns.contains(&p) {
                patterns.push(p);
            }
        };
        for v in values {
            add(v.to_vec());
            add(base64(v, STANDARD)
                .trim_end_matches('=')
                .as_bytes()
                .to_vec());
            add(base64(v, URL_SAFE)
                .trim_end_matches('=')
                .as_bytes()
                .to_vec());
            if v.contains(&b'\n') {
                for line in v.split(|b| *b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    add(line.to_vec());
                }
            }
        }
        // Longest first, so a value wins over its own lines.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self {
            patterns: Arc::new(patterns),
        }
    }

    /// True if nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// A fresh stream state for one output stream.
    pub fn stream(&self) -> MaskStream {
        MaskStream {
            masker: self.clone(),
            held: Vec::new(),
        }
    }

    /// Masks a complete text (not streamed), e.g. an error message.
    pub fn mask_all(&self, data: &[u8]) -> Vec<u8> {
        let mut s = self.stream();
        let mut out = s.push(data);
        out.extend(s.finish());
        out
    }
}

/// The masking state of one stream (one step × target × stdout/stderr).
#[derive(Debug)]
pub struct MaskStream {
    masker: Masker,
    held: Vec<u8>,
}

impl MaskStream {
    /// Takes the next piece; returns what can be released now, masked.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.masker.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let (out, rest) = self.scan(&buf, false);
        self.held = rest;
        out
    }

    /// The stream ended: releases what was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.held);
        self.scan(&buf, true).0
    }

    fn scan(&self, buf: &[u8], at_end: bool) -> (Vec<u8>, Vec<u8>) {
        let patterns = &self.masker.patterns;
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'outer: while i < buf.len() {
            let rest = &buf[i..];
            if !at_end
                && patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            {
                // Could be the start of a (longer) secret: decide when more arrives.
                return (out, rest.to_vec());
            }
            for p in patterns.iter() {
                if rest.starts_with(p) {
                    out.extend_from_slice(MASK);
                    i += p.len();
                    continue 'outer;
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, Vec::new())
    }
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64(data: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_in_pieces(m: &Masker, data: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = m.stream();
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            let c = c.min(data.len()).max(last);
            out.extend(s.push(&data[last..c]));
            last = c;
        }
        out.extend(s.push(&data[last..]));
        out.extend(s.finish());
        out
    }

    #[test]
    fn masks_values_base64_and_lines() {
        let m = Masker::new([&b"hunter22"[..], b"line-one\nline-two"]);
        assert_eq!(m.mask_all(b"pw=hunter22!"), b"pw=***!");
        assert_eq!(m.mask_all(b"aHVudGVyMjI="), b"***=");
        assert_eq!(m.mask_all(b"x line-two y"), b"x *** y");
        assert_eq!(m.mask_all(b"line-one\nline-two"), b"***");
        assert_eq!(
            Masker::new([&b"abc"[..]]).mask_all(b"abc"),
            b"abc",
            "short values are not masked"
        );
        assert_eq!(base64(b"hunter22", STANDARD), "aHVudGVyMjI=");
    }

    #[test]
    fn byte_at_a_time_and_partial_prefixes() {
        let m = Masker::new([&b"s3cr3t-value"[..]]);
        let data = b"a s3cr3t-valu s3cr3t-value s3cr3t-value";
        let cuts: Vec<usize> = (1..data.len()).collect();
        assert_eq!(masked_in_pieces(&m, data, &cuts), b"a s3cr3t-valu *** ***");
        // A held prefix that never completes is released at the end.
        assert_eq!(masked_in_pieces(&m, b"xs3cr3t", &[2, 4]), b"xs3cr3t");
    }

    /// Property: for random secrets, random surrounding output and random
    /// split points, no secret value ever appears in the masked output.
    #[test]
    fn never_leaks_whatever_the_split() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        for _ in 0..2000 {
            let alphabet = b"ab\n=x";
            let secret: Vec<u8> = (0..4 + rnd(12))
                .map(|_| alphabet[rnd(5) as usize])
                .collect();
            let m = Masker::new([secret.as_slice()]);
            let mut data = Vec::new();
            for _ in 0..1 + rnd(4) {
                data.extend((0..rnd(10)).map(|_| alphabet[rnd(5) as usize]));
                data.extend_from_slice(&secret);
            }
            let mut cuts: Vec<usize> = (0..rnd(8))
                .map(|_| rnd(data.len() as u64 + 1) as usize)
                .collect();
            cuts.sort_unstable();
            let out = masked_in_pieces(&m, &data, &cuts);
            assert!(
                !out.windows(secret.len()).any(|w| w == secret.as_slice()),
                "secret {secret:?} leaked from {data:?} cut at {cuts:?}: {out:?}"
            );
            // Splitting never changes the result.
            assert_eq!(out, m.mask_all(&data));
        }
    }
}
