//! Reading OpenSSH `known_hosts` files: the keys recorded for one host.
//!
//! Supported as OpenSSH does: comments and blank lines, comma-separated host
//! patterns with `*` and `?` wildcards and `!` negation, `[host]:port` for
//! ports other than 22, hashed names (`|1|salt|hash`, HMAC-SHA1), and the
//! `@revoked` marker. `@cert-authority` lines are skipped (host
//! certificates are not supported), as are key types this client does not
//! know.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKey;

/// One key recorded for the host.
#[derive(Debug, Clone)]
pub(crate) struct KnownKey {
    /// 1-based line number in the file.
    pub line: usize,
    /// The key.
    pub key: PublicKey,
    /// Marked `@revoked`: never to be accepted.
    pub revoked: bool,
}

/// The keys `path` records for `host` on `port`. A missing file records none.
pub(crate) fn keys_for(path: &Path, host: &str, port: u16) -> Result<Vec<KnownKey>, String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    Ok(parse(&text, host, port))
}

/// The keys `text` records for `host` on `port`.
pub(crate) fn parse(text: &str, host: &str, port: u16) -> Vec<KnownKey> {
    let name = if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                // Host certificates are not supported; other markers are unknown.
                _ => continue,
            }
            match fields.next() {
                Some(f) => first = f,
                None => continue,
            }
        }
        let (Some(kind), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !host_matches(first, &name) {
            continue;
        }
        match PublicKey::from_openssh(&format!("{kind} {b64}")) {
            Ok(key) => keys.push(KnownKey {
                line: i + 1,
                key,
                revoked,
            }),
            Err(e) => {
                // Not fatal (OpenSSH also passes over key types it does not
                // know), but said loudly: it is a line for this very host, and
                // without it the host may be refused as unknown.
                tracing::warn!(host = %name, line = i + 1, error = %e, "ignoring a known_hosts key for this host that this client cannot read");
            }
        }
    }
    keys
}

/// Whether a comma-separated pattern list names `name` (`host` or
/// `[host]:port`): some pattern matches and no negated one does.
fn host_matches(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let hit = if let Some(hashed) = pattern.strip_prefix("|1|") {
            hashed_matches(hashed, name)
        } else {
            glob(&pattern.to_ascii_lowercase(), name)
        };
        if hit {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

fn hashed_matches(salt_and_hash: &str, name: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let b64 = data_encoding::BASE64;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt.as_bytes()), b64.decode(hash.as_bytes())) else {
        return false;
    };
    let Ok(mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// `*` (any run) and `?` (one character) wildcards.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmaDLDa6bzGXLaYMrbp3GLWZ5WjbBpGq8TK1c6xwvWb";

    #[test]
    fn patterns_ports_markers_and_comments() {
        let text = format!(
            "# comment\n\n\
             web1,10.0.0.1 {KEY}\n\
             [db.example.net]:2222 {KEY}\n\
             *.example.com,!bad.example.com {KEY}\n\
             @revoked old.example.org {KEY}\n\
             @cert-authority *.example.org {KEY}\n\
             web9 ssh-unknown-type AAAA\n"
        );
        let lines = |host: &str, port: u16| -> Vec<(usize, bool)> {
            parse(&text, host, port)
                .iter()
                .map(|k| (k.line, k.revoked))
                .collect()
        };
        assert_eq!(lines("web1", 22), [(3, false)]);
        assert_eq!(lines("WEB1", 22), [(3, false)]);
        assert_eq!(lines("10.0.0.1", 22), [(3, false)]);
        assert!(lines("web1", 2222).is_empty());
        assert_eq!(lines("db.example.net", 2222), [(4, false)]);
        assert!(lines("db.example.net", 22).is_empty());
        assert_eq!(lines("a.example.com", 22), [(5, false)]);
        assert!(lines("bad.example.com", 22).is_empty());
        assert_eq!(lines("old.example.org", 22), [(6, true)]);
        assert!(lines("x.example.org", 22).is_empty());
        assert!(lines("web9", 22).is_empty());
    }

    #[test]
    fn hashed_names_match() {
        // `ssh-keygen -H` of "web1": salt and HMAC-SHA1("web1") in base64.
        let salt = [7u8; 20];
        let mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt)
            .unwrap()
            .chain_update(b"[web1]:2200")
            .finalize()
            .into_bytes();
        let b64 = data_encoding::BASE64;
        let line = format!("|1|{}|{} {KEY}\n", b64.encode(&salt), b64.encode(&mac));
        assert_eq!(parse(&line, "web1", 2200).len(), 1);
        assert!(parse(&line, "web1", 22).is_empty());
        assert!(parse(&line, "web2", 2200).is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("web?", "web1"));
        assert!(!glob("web?", "web12"));
        assert!(glob("*.example.com", "a.b.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("[10.0.0.*]:22*", "[10.0.0.5]:2222"));
    }
}
