//! Masking secret values in output streams before anything is stored or sent.
//!
//! A [`Masker`] holds the patterns and a [`MaskStream`] applies them to one
//! stream of bytes that arrives in arbitrary pieces: a value split across
//! chunks, or written one byte at a time, is still replaced. To do that the
//! stream holds back a tail that could be the start of a secret until the next
//! piece (or the end of the stream) decides it. The result never depends on
//! where the stream was cut.
//!
//! The patterns of each value:
//! - the value itself and, for multi-line values, each line;
//! - its base64 forms (standard and URL-safe alphabets, without padding);
//! - each [`BASE64_WRAP`]-column line of those forms, because GNU `base64`
//!   wraps its output there and a wrapped form cut between lines (`| head -1`)
//!   must not show whole lines of it;
//! - the three *inner* base64 forms: the characters that encode only the
//!   value's own bytes when the value sits at offset 0, 1 or 2 (mod 3) inside
//!   a larger encoded blob (`printf 'user:%s' "$PW" | base64`, an HTTP Basic
//!   header, a JSON document). The one to three characters at each edge that
//!   also depend on the neighbouring bytes are left out, since they cannot be
//!   known in advance.
//!
//! Base64 patterns match across line breaks: one `\n` or `\r\n` may sit
//! between any two of their characters. So the wrapped output of `base64`
//! (76 columns), `openssl base64` (64) or PEM, and a value inside a wrapped
//! blob, are masked whatever the wrap width and wherever the break falls.
//! The whole broken span becomes one `***`.
//!
//! Values shorter than [`MIN_MASK_LEN`] bytes are not masked: replacing every
//! `1` or `on` in all output would make logs unreadable while protecting
//! nothing (a 3-character secret can be guessed faster than read). Setting
//! such a secret warns. Fragments (inner base64 forms and wrapped lines) are
//! masked only from [`MIN_FRAGMENT_LEN`] characters on, for the reason given
//! there.

use std::sync::Arc;

/// What replaces a secret value.
pub const MASK: &[u8] = b"***";

/// Shorter values are not masked (see the module docs).
pub const MIN_MASK_LEN: usize = 4;

/// The column GNU `base64` (and `basenc`) wrap their output at by default.
pub const BASE64_WRAP: usize = 76;

/// Shortest fragment of a base64 form that is masked on its own (an inner
/// form, or one wrapped line).
///
/// Base64 is letters, digits and `+/` (`-_`), so a short fragment like
/// `dGVz` can just as well be part of a word, a hex id or a path in
/// ordinary output: masking 4–7 character fragments would garble innocent
/// logs. Eight characters carry 48 bits of the value, enough that a chance
/// match in real output is negligible, and every value of 7 bytes or more
/// gets all three inner forms. What stays visible of a shorter value's
/// embedded encoding is at most a few bytes' worth, which is no more than a
/// value that short already gives away.
pub const MIN_FRAGMENT_LEN: usize = 8;

/// One thing to hide.
#[derive(Debug, PartialEq, Eq)]
struct Pattern {
    bytes: Vec<u8>,
    /// A base64 form: a line break may sit between any two characters.
    breaks: bool,
}

/// The patterns, longest first, with an index by first byte.
#[derive(Default)]
struct Patterns {
    list: Vec<Pattern>,
    /// For each first byte, the indices into `list` (still longest first),
    /// so a byte that starts no pattern costs one lookup.
    by_first: Vec<Vec<usize>>,
}

/// The set of values to hide. Cheap to clone.
#[derive(Clone, Default)]
pub struct Masker {
    patterns: Arc<Patterns>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} patterns)", self.patterns.list.len())
    }
}

impl Masker {
    /// Masks nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Masks each value and its forms (see the module docs).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut list: Vec<Pattern> = Vec::new();
        // Index of each pattern in `list`: every stored secret may be here
        // (see engine::secrets), so deduplication must not be quadratic.
        let mut index: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
        let mut add = |bytes: &[u8], breaks: bool, min: usize| {
            if bytes.len() < min.max(MIN_MASK_LEN) {
                return;
            }
            match index.get(bytes) {
                // Also a base64 form of some value: let it match across breaks too.
                Some(&i) => list[i].breaks |= breaks,
                None => {
                    index.insert(bytes.to_vec(), list.len());
                    list.push(Pattern {
                        bytes: bytes.to_vec(),
                        breaks,
                    });
                }
            }
        };
        for v in values {
            add(v, false, MIN_MASK_LEN);
            if v.contains(&b'\n') {
                for line in v.split(|b| *b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    add(line, false, MIN_MASK_LEN);
                }
            }
            for alphabet in [STANDARD, URL_SAFE] {
                let full = base64(v, alphabet);
                let full = full.trim_end_matches('=').as_bytes();
                add(full, true, MIN_MASK_LEN);
                if full.len() > BASE64_WRAP {
                    for line in full.chunks(BASE64_WRAP) {
                        add(line, true, MIN_FRAGMENT_LEN);
                    }
                }
                for shift in 0..3 {
                    add(&inner_base64(v, shift, alphabet), true, MIN_FRAGMENT_LEN);
                }
            }
        }
        // Longest first, so a value wins over its own lines and fragments.
        list.sort_by_key(|p| std::cmp::Reverse(p.bytes.len()));
        let mut by_first = vec![Vec::new(); 256];
        for (i, p) in list.iter().enumerate() {
            if let Some(&b) = p.bytes.first() {
                by_first[usize::from(b)].push(i);
            }
        }
        Self {
            patterns: Arc::new(Patterns { list, by_first }),
        }
    }

    /// True if nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.patterns.list.is_empty()
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

    /// [`Masker::mask_all`] for text: an error message, a reason.
    pub fn mask_str(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.mask_all(text.as_bytes())).into_owned()
    }
}

/// The masking state of one stream (one step × target × stdout/stderr).
#[derive(Debug)]
pub struct MaskStream {
    masker: Masker,
    held: Vec<u8>,
}

/// How a pattern compares with the bytes at one position.
enum Match {
    /// It does not start here.
    No,
    /// The bytes so far agree but ran out: more input decides.
    Partial,
    /// It is here, taking this many bytes (more than its length if it
    /// matched across line breaks).
    Full(usize),
}

impl Pattern {
    fn match_at(&self, rest: &[u8]) -> Match {
        let mut i = 0;
        for (j, &c) in self.bytes.iter().enumerate() {
            if self.breaks && j > 0 {
                // One line break may precede any character but the first.
                // Base64 characters are never `\r` or `\n`, so this is unambiguous.
                match (rest.get(i), rest.get(i + 1)) {
                    (Some(b'\n'), _) => i += 1,
                    (Some(b'\r'), Some(b'\n')) => i += 2,
                    (Some(b'\r'), None) => return Match::Partial,
                    _ => {}
                }
            }
            match rest.get(i) {
                None => return Match::Partial,
                Some(&b) if b == c => i += 1,
                Some(_) => return Match::No,
            }
        }
        Match::Full(i)
    }
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

    /// Masks `buf` from the left. At each position the first pattern (longest
    /// first) that is there wins; if a pattern before it in that order might
    /// still be there but the bytes ran out, everything from this position is
    /// held back. So each decision is the one the whole stream would give,
    /// and the result does not depend on where the stream was cut.
    fn scan(&self, buf: &[u8], at_end: bool) -> (Vec<u8>, Vec<u8>) {
        let patterns = &self.masker.patterns;
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'outer: while i < buf.len() {
            let rest = &buf[i..];
            for &k in &patterns.by_first[usize::from(buf[i])] {
                match patterns.list[k].match_at(rest) {
                    Match::No => {}
                    Match::Partial if at_end => {}
                    // Could be the start of a secret: decide when more arrives.
                    Match::Partial => return (out, rest.to_vec()),
                    Match::Full(n) => {
                        out.extend_from_slice(MASK);
                        i += n;
                        continue 'outer;
                    }
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

/// The base64 characters that encode only `v`'s bits when `v` follows
/// `shift` (0–2) other bytes in a larger encoded blob.
///
/// Character `c` of an encoding covers bits `6c..6c+6`; `v` covers bits
/// `8·shift..8·(shift+len)`. The characters wholly inside that range are the
/// same whatever the neighbouring bytes are; the ones at the edges are not.
fn inner_base64(v: &[u8], shift: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let mut padded = vec![0u8; shift];
    padded.extend_from_slice(v);
    let encoded = base64(&padded, alphabet);
    let first = (8 * shift).div_ceil(6);
    let end = 8 * padded.len() / 6;
    encoded
        .as_bytes()
        .get(first..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};

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

    /// `text` wrapped every `width` characters with `eol`, as `base64 -w`.
    fn wrap(text: &str, width: usize, eol: &str) -> String {
        text.as_bytes()
            .chunks(width)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(eol)
    }

    /// The test's own idea of a leak, written independently of the masker:
    /// `needle` is in `hay`, allowing one `\n` or `\r\n` between any two of
    /// its characters when `breaks` (how wrapped base64 shows it).
    fn leaks(hay: &[u8], needle: &[u8], breaks: bool) -> bool {
        if needle.is_empty() {
            return false;
        }
        (0..hay.len()).any(|start| {
            let mut i = start;
            for (j, &c) in needle.iter().enumerate() {
                if breaks && j > 0 {
                    if hay.get(i) == Some(&b'\n') {
                        i += 1;
                    } else if hay.get(i..i + 2) == Some(b"\r\n") {
                        i += 2;
                    }
                }
                if hay.get(i) != Some(&c) {
                    return false;
                }
                i += 1;
            }
            true
        })
    }

    /// The characters of `blob`'s encoding that depend only on the `len`
    /// bytes at `offset` (computed on the real blob with the `base64` crate).
    fn inner_of_blob(encoded: &str, offset: usize, len: usize) -> Vec<u8> {
        let first = (8 * offset).div_ceil(6);
        let end = 8 * (offset + len) / 6;
        encoded
            .trim_end_matches('=')
            .as_bytes()
            .get(first..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
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
        assert_eq!(m.mask_str("error: hunter22"), "error: ***");
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

    /// GNU `base64` wraps at 76 columns, so a value of 58 bytes or more comes
    /// out on several lines; each wrapped form is masked, also when cut
    /// between lines, and at other widths (`openssl base64`: 64).
    #[test]
    fn masks_wrapped_base64() {
        let v = b"a-58-byte-or-longer-secret-value-0123456789-abcdefghijklmnopqrstuvwxyz";
        assert!(v.len() >= 58);
        let m = Masker::new([&v[..]]);
        let enc = B64.encode(v);
        for (width, eol) in [(76, "\n"), (76, "\r\n"), (64, "\n"), (1, "\n")] {
            let wrapped = format!("{}\n", wrap(&enc, width, eol));
            let out = String::from_utf8(m.mask_all(wrapped.as_bytes())).unwrap();
            // Only the padding and line breaks are left.
            assert_eq!(
                out.replace(['=', '\r', '\n'], ""),
                "***",
                "width {width}: {out}"
            );
        }
        // Only the first line of the wrapped output (`| head -1`).
        let first = format!("{}\n", &enc[..BASE64_WRAP]);
        assert_eq!(m.mask_all(first.as_bytes()), b"***\n");
    }

    /// The base64 of a value inside a larger blob, at each alignment: only
    /// the characters that depend on the neighbours stay.
    #[test]
    fn masks_base64_of_a_value_inside_a_larger_blob() {
        let pw = b"correct-horse-battery";
        let m = Masker::new([&pw[..]]);
        for prefix in [
            "user:",
            "u:",
            "ab:",
            "",
            "a longer prefix that wraps the output",
        ] {
            for suffix in ["", "\n", "@host"] {
                let blob = [prefix.as_bytes(), pw, suffix.as_bytes()].concat();
                let enc = wrap(&B64.encode(&blob), BASE64_WRAP, "\n");
                let out = m.mask_all(enc.as_bytes());
                let out_text = String::from_utf8_lossy(&out);
                assert!(out_text.contains("***"), "{prefix:?}{suffix:?}: {out_text}");
                let visible = out_text.replace(['\n', '*'], "");
                assert!(
                    visible.len() <= (prefix.len() + suffix.len() + 2).div_ceil(3) * 4 + 4,
                    "{prefix:?}{suffix:?}: too much left: {out_text}"
                );
            }
        }
        // The threshold: a 5-byte value gets no inner forms (too short to
        // tell from ordinary text), a 7-byte one gets all three.
        assert!(inner_base64(b"abcde", 1, STANDARD).len() < MIN_FRAGMENT_LEN);
        for shift in 0..3 {
            assert!(inner_base64(b"abcdefg", shift, STANDARD).len() >= MIN_FRAGMENT_LEN);
        }
    }

    #[test]
    fn ordinary_output_is_left_alone() {
        let m = Masker::new([
            &b"correct-horse-battery"[..],
            b"-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----",
        ]);
        let text = b"Reading package lists... Done\nBuilding dependency tree\n\
            abcdef0123456789 /usr/lib/x86_64-linux-gnu/libssl.so.3\n\
            user:admin Y29ycmVjdA== dGVzdA==\r\n   12345 ok\n";
        assert_eq!(m.mask_all(text), text.to_vec());
    }

    /// A small deterministic PRNG (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len())]
        }
        fn text(&mut self, alphabet: &[u8], len: usize) -> Vec<u8> {
            (0..len).map(|_| *self.pick(alphabet)).collect()
        }
    }

    /// Property: for random secrets, written raw, as base64, wrapped base64,
    /// inside an encoded blob or line by line, among random text and cut at
    /// random points or byte by byte, no value, line of a value or base64
    /// form of a value (whole, wrapped, or the part of a blob's encoding that
    /// only the value determines) appears in the output, and the output is
    /// the same however the stream was cut.
    #[test]
    fn never_leaks_whatever_the_split() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Secrets never contain `*`, so the mask itself cannot complete one.
        let secret_alphabets: [&[u8]; 4] = [
            b"ab\n=x",
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
            b"0123456789abcdef",
            &[0, 1, 0xff, 0xfe, b'\n', b'\r', b'a', b'/', b'+', b'='],
        ];
        let text_alphabet: &[u8] = b"ab =\n\r:xyzAB01+/";
        for case in 0..3000 {
            let n_secrets = 1 + rng.below(3);
            let secrets: Vec<Vec<u8>> = (0..n_secrets)
                .map(|_| {
                    let alphabet = *rng.pick(&secret_alphabets);
                    let len = if rng.below(4) == 0 {
                        50 + rng.below(100)
                    } else {
                        MIN_MASK_LEN + rng.below(20)
                    };
                    rng.text(alphabet, len)
                })
                .collect();
            let m = Masker::new(secrets.iter().map(Vec::as_slice));
            let mut data = Vec::new();
            // (needle, may be broken by line breaks) that must not show.
            let mut needles: Vec<(Vec<u8>, bool)> = Vec::new();
            for s in &secrets {
                needles.push((s.clone(), false));
                if s.contains(&b'\n') {
                    for line in s.split(|b| *b == b'\n') {
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        if line.len() >= MIN_MASK_LEN {
                            needles.push((line.to_vec(), false));
                        }
                    }
                }
                let enc = B64.encode(s);
                needles.push((enc.trim_end_matches('=').as_bytes().to_vec(), true));
                needles.push((B64URL.encode(s).into_bytes(), true));
            }
            for _ in 0..1 + rng.below(5) {
                let len = rng.below(12);
                data.extend(rng.text(text_alphabet, len));
                let s = rng.pick(&secrets).clone();
                match rng.below(8) {
                    0 => data.extend_from_slice(&s),
                    1 => {
                        data.extend(B64.encode(&s).into_bytes());
                        data.push(b'\n');
                    }
                    2 => data.extend(B64URL.encode(&s).into_bytes()),
                    3 => {
                        let any = 1 + rng.below(80);
                        let width = *rng.pick(&[BASE64_WRAP, BASE64_WRAP, 64, any]);
                        let eol = *rng.pick(&["\n", "\r\n"]);
                        data.extend(wrap(&B64.encode(&s), width, eol).into_bytes());
                        data.extend_from_slice(eol.as_bytes());
                    }
                    4 => {
                        // Line by line, with CRLF endings.
                        for line in s.split(|b| *b == b'\n') {
                            data.extend_from_slice(line);
                            data.extend_from_slice(b"\r\n");
                        }
                    }
                    5 | 6 => {
                        // Inside a larger blob, encoded (and wrapped like GNU `base64`).
                        let plen = rng.below(10);
                        let prefix = rng.text(b"user:pass@ \n\x00", plen);
                        let slen = rng.below(10);
                        let suffix = rng.text(b"user:pass@ \n\x00", slen);
                        let blob = [prefix.as_slice(), &s, &suffix].concat();
                        let (enc, inner) = if rng.below(2) == 0 {
                            let e = B64.encode(&blob);
                            let inner = inner_of_blob(&e, prefix.len(), s.len());
                            (wrap(&e, BASE64_WRAP, "\n"), inner)
                        } else {
                            let e = B64URL.encode(&blob);
                            let inner = inner_of_blob(&e, prefix.len(), s.len());
                            (e, inner)
                        };
                        if inner.len() >= MIN_FRAGMENT_LEN {
                            needles.push((inner, true));
                        }
                        data.extend(enc.into_bytes());
                        data.push(b'\n');
                    }
                    _ => {
                        // The first line only of the wrapped form.
                        let enc = B64.encode(&s);
                        let line = &enc.as_bytes()[..enc.len().min(BASE64_WRAP)];
                        if enc.len() > BASE64_WRAP {
                            needles.push((line.to_vec(), false));
                        }
                        data.extend_from_slice(line);
                        data.push(b'\n');
                    }
                }
            }
            let len = rng.below(12);
            data.extend(rng.text(text_alphabet, len));

            let whole = m.mask_all(&data);
            let mut random_cuts: Vec<usize> = (0..rng.below(24))
                .map(|_| rng.below(data.len() + 1))
                .collect();
            random_cuts.sort_unstable();
            let step = 1 + rng.below(7);
            let mut splits = vec![random_cuts, (0..data.len()).step_by(step).collect()];
            if case % 3 == 0 {
                splits.push((1..data.len()).collect());
            }
            for cuts in &splits {
                let out = masked_in_pieces(&m, &data, cuts);
                assert_eq!(
                    out,
                    whole,
                    "case {case}: cutting changed the result of {:?} at {cuts:?}",
                    String::from_utf8_lossy(&data)
                );
            }
            for (needle, breaks) in &needles {
                assert!(
                    !leaks(&whole, needle, *breaks),
                    "case {case}: {:?} leaked from {:?}: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&data),
                    String::from_utf8_lossy(&whole)
                );
            }
        }
    }
}
