//! Per-target isolation settings of the Docker executor: the defaults every
//! step container gets, and the `limits` keys of a `docker` target that
//! override them, parsed and validated with errors that name the key.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Every key a `docker` target's `limits` may hold.
pub const LIMIT_KEYS: &[&str] = &[
    "cpus",
    "init",
    "memory",
    "network",
    "pids",
    "read_only",
    "tmp",
    "tmpfs_size",
    "user",
];

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// The smallest memory limit the engine accepts (6 MiB).
pub const MIN_MEMORY: u64 = 6 * MIB;

/// What `/tmp` is in a step container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TmpMode {
    /// A fresh tmpfs per step, `tmpfs_size` large (the default): a step
    /// cannot fill the engine's disk through `/tmp`, and nothing survives a
    /// step. `copy` cannot write under `/tmp` (the engine's archive API
    /// cannot reach into a tmpfs), so steps that copy a file and use it in
    /// a later step ask for `tmp: session`.
    #[default]
    Tmpfs,
    /// The session's workspace: a Docker volume created on first use,
    /// mounted at `/tmp` in every container of the session and removed when
    /// the session closes. What one step writes there, the next step sees;
    /// `copy` to a path under `/tmp` lands there. Not size-limited (the local
    /// volume driver has no quota), which is why it is opt-in.
    Session,
}

impl TmpMode {
    /// The value as written in `limits.tmp`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TmpMode::Session => "session",
            TmpMode::Tmpfs => "tmpfs",
        }
    }
}

/// The isolation of one target's step containers. [`Limits::default`] is
/// the executor's default; [`Limits::with_overrides`] applies a target's
/// `limits` map on top.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (swap is not allowed on top). Key `memory`:
    /// `"256m"`, `"1g"`, `"512MiB"` or a number of bytes. Default 512 MiB.
    pub memory: u64,
    /// CPU quota in CPUs (`nano_cpus`). Key `cpus`: `0.5`, `2`. Default 1.
    pub cpus: f64,
    /// Maximum number of processes and threads. Key `pids`. Default 256.
    pub pids: i64,
    /// Docker network mode. Key `network`: `"none"` (default: no network at
    /// all), `"bridge"`, `"host"` (no network isolation) or the name of a
    /// user-defined network.
    pub network: String,
    /// Read-only root filesystem. Key `read_only`. Default `true`.
    pub read_only: bool,
    /// What `/tmp` is. Key `tmp`: `"tmpfs"` (default: a size-limited tmpfs
    /// per step) or `"session"` (the session's unlimited workspace volume).
    pub tmp: TmpMode,
    /// Size of the `/tmp` tmpfs in bytes when `tmp` is `"tmpfs"` (the
    /// default). Key `tmpfs_size`, same syntax as `memory`. Default 64 MiB.
    pub tmpfs_size: u64,
    /// The user the step runs as, `uid[:gid]` or `name[:group]`; empty for
    /// the image's own `USER`. Key `user`. Default `65534:65534` (nobody),
    /// which works in any image, also one without `/etc/passwd`.
    pub user: String,
    /// Run a minimal init (`docker-init`) as PID 1 that reaps zombies and
    /// forwards signals, so the command is not PID 1. Key `init`. Default
    /// `true`.
    pub init: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 512 * MIB,
            cpus: 1.0,
            pids: 256,
            network: "none".into(),
            read_only: true,
            tmp: TmpMode::Tmpfs,
            tmpfs_size: 64 * MIB,
            user: "65534:65534".into(),
            init: true,
        }
    }
}

/// A `limits` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{key}: {message}")]
pub struct InvalidLimit {
    /// The offending key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> InvalidLimit {
    InvalidLimit {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl Limits {
    /// These limits with a target's `limits` map applied on top. Unknown
    /// keys and bad values are errors naming the key.
    pub fn with_overrides(&self, map: &BTreeMap<String, Value>) -> Result<Limits, InvalidLimit> {
        let mut out = self.clone();
        for (key, value) in map {
            match key.as_str() {
                "memory" => {
                    let bytes = size(key, value)?;
                    if bytes < MIN_MEMORY {
                        return Err(invalid(
                            key,
                            format!(
                                "{} is below the engine's minimum of {}",
                                human_bytes(bytes),
                                human_bytes(MIN_MEMORY)
                            ),
                        ));
                    }
                    out.memory = bytes;
                }
                "cpus" => {
                    let cpus = number(key, value)?;
                    if !(0.01..=1024.0).contains(&cpus) {
                        return Err(invalid(
                            key,
                            format!(
                                "{cpus} is out of range; give a number of CPUs from 0.01 to 1024"
                            ),
                        ));
                    }
                    out.cpus = cpus;
                }
                "pids" => {
                    let pids = value
                        .as_i64()
                        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                        .ok_or_else(|| {
                            invalid(key, format!("expected a whole number, got {value}"))
                        })?;
                    if pids < 1 {
                        return Err(invalid(key, format!("must be at least 1, got {pids}")));
                    }
                    out.pids = pids;
                }
                "network" => {
                    let net = string(key, value)?;
                    let ok = !net.is_empty()
                        && net
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                    if !ok {
                        return Err(invalid(
                            key,
                            format!(
                                "{net:?} is not a network name; use \"none\", \"bridge\", \"host\" \
                                 or the name of a user-defined network"
                            ),
                        ));
                    }
                    out.network = net.to_owned();
                }
                "read_only" => out.read_only = boolean(key, value)?,
                "init" => out.init = boolean(key, value)?,
                "tmp" => {
                    out.tmp = match string(key, value)? {
                        "session" => TmpMode::Session,
                        "tmpfs" => TmpMode::Tmpfs,
                        other => {
                            return Err(invalid(
                                key,
                                format!(
                                    "{other:?} is not a /tmp mode; use \"session\" or \"tmpfs\""
                                ),
                            ));
                        }
                    }
                }
                "tmpfs_size" => {
                    let bytes = size(key, value)?;
                    if bytes < MIB {
                        return Err(invalid(
                            key,
                            format!("{} is too small; give at least 1m", human_bytes(bytes)),
                        ));
                    }
                    out.tmpfs_size = bytes;
                }
                "user" => {
                    let user = string(key, value)?;
                    if !valid_user(user) {
                        return Err(invalid(
                            key,
                            format!(
                                "{user:?} is not a user; give uid[:gid] or name[:group] \
                                 (letters, digits, '_', '-', '.'), or \"\" for the image's user"
                            ),
                        ));
                    }
                    out.user = user.to_owned();
                }
                other => {
                    return Err(invalid(
                        other,
                        format!("unknown key; the known keys are {}", LIMIT_KEYS.join(", ")),
                    ));
                }
            }
        }
        if map.contains_key("tmpfs_size") && out.tmp != TmpMode::Tmpfs {
            return Err(invalid(
                "tmpfs_size",
                "applies only with tmp: \"tmpfs\" (the default; with tmp: \"session\", /tmp is \
                 the session's workspace volume, which has no size limit)",
            ));
        }
        Ok(out)
    }

    /// The numeric owner of files written for the step's user, when the user
    /// is numeric (`uid` → `(uid, 0)`, `uid:gid`); `None` for a name or the
    /// image's user, which the engine resolves through the image's
    /// `/etc/passwd` instead.
    pub fn numeric_owner(&self) -> Option<(u64, u64)> {
        if self.user.is_empty() {
            return None;
        }
        let (u, g) = match self.user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (self.user.as_str(), None),
        };
        let uid = u.parse().ok()?;
        let gid = match g {
            Some(g) => g.parse().ok()?,
            None => 0,
        };
        Some((uid, gid))
    }
}

fn valid_user(user: &str) -> bool {
    if user.is_empty() {
        return true;
    }
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match user.split_once(':') {
        Some((u, g)) => part(u) && part(g),
        None => part(user),
    }
}

fn string<'a>(key: &str, value: &'a Value) -> Result<&'a str, InvalidLimit> {
    value
        .as_str()
        .map(str::trim)
        .ok_or_else(|| invalid(key, format!("expected a string, got {value}")))
}

fn boolean(key: &str, value: &Value) -> Result<bool, InvalidLimit> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.trim() == "true" => Ok(true),
        Value::String(s) if s.trim() == "false" => Ok(false),
        other => Err(invalid(key, format!("expected true or false, got {other}"))),
    }
}

fn number(key: &str, value: &Value) -> Result<f64, InvalidLimit> {
    value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
        .filter(|n| n.is_finite())
        .ok_or_else(|| invalid(key, format!("expected a number, got {value}")))
}

/// A size: a number of bytes, or a string with a binary unit (`k`, `m`,
/// `g`, `t`, optionally followed by `b` or `ib`; `b` alone for bytes).
fn size(key: &str, value: &Value) -> Result<u64, InvalidLimit> {
    if let Some(n) = value.as_u64() {
        return Ok(n);
    }
    let bad = || {
        invalid(
            key,
            format!("expected a size such as \"256m\", \"1g\" or a number of bytes, got {value}"),
        )
    };
    let text = value.as_str().ok_or_else(bad)?.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => return Err(bad()),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `268435456` → `256 MiB`; `1610612736` → `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    struct H(u64);
    impl fmt::Display for H {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let b = self.0;
            for (unit, size) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
                if b >= size {
                    let v = b as f64 / size as f64;
                    return if b.is_multiple_of(size) {
                        write!(f, "{} {unit}", b / size)
                    } else {
                        write!(f, "{v:.1} {unit}")
                    };
                }
            }
            write!(f, "{b} bytes")
        }
    }
    H(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(pairs: &[(&str, Value)]) -> Result<Limits, InvalidLimit> {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        Limits::default().with_overrides(&map)
    }

    #[test]
    fn defaults_are_isolating() {
        let l = Limits::default();
        assert_eq!(l.memory, 512 * MIB);
        assert_eq!(l.network, "none");
        assert!(l.read_only && l.init);
        assert_eq!(
            l.tmp,
            TmpMode::Tmpfs,
            "a size-limited tmpfs at /tmp by default"
        );
        assert_eq!(l.tmpfs_size, 64 * MIB);
        assert_eq!(
            with(&[("tmp", json!("session"))]).unwrap().tmp,
            TmpMode::Session
        );
        assert_eq!(l.user, "65534:65534");
        assert_eq!(l.numeric_owner(), Some((65534, 65534)));
    }

    #[test]
    fn every_key_parses() {
        let l = with(&[
            ("memory", json!("256m")),
            ("cpus", json!(0.5)),
            ("pids", json!(100)),
            ("network", json!("bridge")),
            ("read_only", json!(false)),
            ("tmp", json!("tmpfs")),
            ("tmpfs_size", json!("16MiB")),
            ("user", json!("app:app")),
            ("init", json!(false)),
        ])
        .unwrap();
        assert_eq!(l.memory, 256 * MIB);
        assert_eq!(l.cpus, 0.5);
        assert_eq!(l.pids, 100);
        assert_eq!(l.network, "bridge");
        assert!(!l.read_only && !l.init);
        assert_eq!(l.tmp, TmpMode::Tmpfs);
        assert_eq!(l.tmpfs_size, 16 * MIB);
        assert_eq!(l.numeric_owner(), None);
        assert_eq!(
            with(&[("memory", json!(16 * MIB))]).unwrap().memory,
            16 * MIB
        );
        assert_eq!(
            with(&[("memory", json!("1.5g"))]).unwrap().memory,
            3 * GIB / 2
        );
        assert_eq!(with(&[("cpus", json!("2"))]).unwrap().cpus, 2.0);
        assert_eq!(
            with(&[("user", json!("1000"))]).unwrap().numeric_owner(),
            Some((1000, 0))
        );
        assert_eq!(with(&[("user", json!(""))]).unwrap().numeric_owner(), None);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let err = with(&[("memroy", json!("1g"))]).unwrap_err();
        assert_eq!(err.key, "memroy");
        assert!(err.to_string().contains("unknown key"), "{err}");
        assert!(err.to_string().contains("memory"), "{err}");
        for (key, value) in [
            ("memory", json!("lots")),
            ("memory", json!("1m")),
            ("memory", json!(true)),
            ("cpus", json!(0)),
            ("cpus", json!("many")),
            ("pids", json!(0)),
            ("pids", json!(1.5)),
            ("network", json!("container:other")),
            ("network", json!("")),
            ("read_only", json!("yes")),
            ("tmp", json!("ram")),
            ("user", json!("a b")),
            ("user", json!(":")),
        ] {
            let err = with(&[(key, value.clone())]).unwrap_err();
            assert_eq!(err.key, key, "{key} = {value}: {err}");
            assert!(
                err.to_string().starts_with(&format!("limits.{key}: ")),
                "{err}"
            );
        }
        let err = with(&[("tmp", json!("session")), ("tmpfs_size", json!("8m"))]).unwrap_err();
        assert!(err.to_string().contains("tmp: \"tmpfs\""), "{err}");
        assert_eq!(
            with(&[("tmpfs_size", json!("8m"))]).unwrap().tmpfs_size,
            8 * MIB,
            "tmpfs_size alone sizes the default tmpfs"
        );
    }

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(human_bytes(256 * MIB), "256 MiB");
        assert_eq!(human_bytes(3 * GIB / 2), "1.5 GiB");
        assert_eq!(human_bytes(512), "512 bytes");
    }
}
