//! Secrets at rest: AES-256-GCM with a fresh random 96-bit nonce per
//! encryption, associated data binding each ciphertext to its record, field
//! and key version, and a small header on every stored value. The master
//! keys form a versioned [`Keyring`] so they can be rotated.
//!
//! Stored value layout: `"OC" | alg (1 = AES-256-GCM) | key version (u32 BE) | nonce (12) | ciphertext+tag`.
//! Associated data: `opsconductor/v1/<record id>/<field>/<key version>`, so a
//! ciphertext copied to another row, another field, or relabelled with
//! another key version fails to decrypt.
//!
//! Master keys come from (first match wins):
//! 1. `OPSC_MASTER_KEY`: one base64 32-byte key (version 1), or a list
//!    `1:BASE64,2:BASE64` of versioned keys;
//! 2. a key file (`OPSC_MASTER_KEY_FILE`, default `<database>.key` for the
//!    embedded SQLite default): lines `VERSION BASE64`, `#` comments; refused
//!    if group or others can read it;
//! 3. a passphrase (`OPSC_MASTER_PASSPHRASE`), stretched with Argon2id (OWASP
//!    parameters: 19 MiB, 2 passes, 1 lane) with a random salt per key version
//!    stored in the database.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};

const MAGIC: &[u8; 2] = b"OC";
const ALG_AES256GCM: u8 = 1;
const HEADER_LEN: usize = 2 + 1 + 4;
const NONCE_LEN: usize = 12;
const CHECK_PLAINTEXT: &[u8] = b"opsconductor master key check";

/// A 256-bit key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes([u8; 32]);

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(***)")
    }
}

impl KeyBytes {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        Ok(Self(k))
    }

    /// From base64 (standard, padded or not).
    pub fn from_base64(text: &str, what: &str) -> Result<Self> {
        let t = text.trim();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
            .map_err(|_| Error::validation(what, "is not valid base64 (expected 32 random bytes, base64-encoded: `openssl rand -base64 32`)"))?;
        let arr: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| {
            Error::validation(what, format!("must decode to 32 bytes, not {}", v.len()))
        })?;
        Ok(Self(arr))
    }

    /// Base64 form, for writing key files.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Derives a key from a passphrase with Argon2id (OWASP parameters).
    pub fn from_passphrase(passphrase: &[u8], salt: &[u8]) -> Result<Self> {
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::DEFAULT,
        );
        let mut k = [0u8; 32];
        argon
            .hash_password_into(passphrase, salt, &mut k)
            .map_err(|e| {
                Error::validation("master passphrase", format!("cannot derive a key: {e}"))
            })?;
        Ok(Self(k))
    }
}

/// Where the keyring came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `OPSC_MASTER_KEY`.
    Env,
    /// A key file.
    File(PathBuf),
    /// `OPSC_MASTER_PASSPHRASE` (salts in the database).
    Passphrase,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => f.write_str("OPSC_MASTER_KEY"),
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Passphrase => f.write_str("OPSC_MASTER_PASSPHRASE"),
        }
    }
}

/// The versioned master keys. The highest version encrypts; every version
/// present can decrypt.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<u32, KeyBytes>,
    /// Where it came from.
    pub source: KeySource,
    passphrase: Option<Vec<u8>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("source", &self.source)
            .finish()
    }
}

impl Keyring {
    /// A keyring from explicit keys (tests, embedders).
    pub fn from_keys(
        keys: impl IntoIterator<Item = (u32, KeyBytes)>,
        source: KeySource,
    ) -> Result<Self> {
        let keys: BTreeMap<u32, KeyBytes> = keys.into_iter().collect();
        if keys.is_empty() || keys.contains_key(&0) {
            return Err(Error::invalid(
                "a keyring needs at least one key, with versions from 1",
            ));
        }
        Ok(Self {
            keys,
            source,
            passphrase: None,
        })
    }

    /// A passphrase keyring; keys are derived once salts are known ([`Keyring::derive`]).
    pub fn from_passphrase(passphrase: &[u8]) -> Result<Self> {
        if passphrase.len() < 12 {
            return Err(Error::validation(
                "OPSC_MASTER_PASSPHRASE",
                "use at least 12 characters",
            ));
        }
        Ok(Self {
            keys: BTreeMap::new(),
            source: KeySource::Passphrase,
            passphrase: Some(passphrase.to_vec()),
        })
    }

    /// Parses `OPSC_MASTER_KEY`: a single key or `1:KEY,2:KEY`.
    pub fn from_env_value(value: &str) -> Result<Self> {
        let mut keys = Vec::new();
        if value.contains(':') {
            for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (v, k) = part.split_once(':').ok_or_else(|| {
                    Error::validation(
                        "OPSC_MASTER_KEY",
                        "expected VERSION:BASE64 entries separated by commas",
                    )
                })?;
                let v: u32 = v.trim().parse().map_err(|_| {
                    Error::validation("OPSC_MASTER_KEY", format!("'{v}' is not a key version"))
                })?;
                keys.push((v, KeyBytes::from_base64(k, "OPSC_MASTER_KEY")?));
            }
        } else {
            keys.push((1, KeyBytes::from_base64(value, "OPSC_MASTER_KEY")?));
        }
        Self::from_keys(keys, KeySource::Env)
    }

    /// Reads a key file; refuses one that group or others can read.
    pub fn from_file(path: &Path) -> Result<Self> {
        let place = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::validation(
                place.clone(),
                format!("cannot read the master key file: {e}"),
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::validation(
                    place,
                    format!(
                        "the master key file is readable by group or others (mode {mode:04o}); run `chmod 600 {}`",
                        path.display()
                    ),
                ));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::validation(
                place.clone(),
                format!("cannot read the master key file: {e}"),
            )
        })?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{place}:{}", n + 1);
            let (v, k) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| Error::validation(at.clone(), "expected `VERSION BASE64KEY`"))?;
            let v: u32 = v.parse().map_err(|_| {
                Error::validation(at.clone(), format!("'{v}' is not a key version"))
            })?;
            keys.push((v, KeyBytes::from_base64(k, &at)?));
        }
        Self::from_keys(keys, KeySource::File(path.to_path_buf()))
    }

    /// Writes a new key file with mode 0600 holding one fresh key (version 1).
    /// Refuses to overwrite an existing file.
    pub fn create_file(path: &Path) -> Result<Self> {
        let key = KeyBytes::generate()?;
        write_key_file(path, &[(1, key.clone())], true)?;
        Self::from_keys([(1, key)], KeySource::File(path.to_path_buf()))
    }

    /// Adds a fresh version to a file keyring and rewrites the file (0600).
    pub fn add_version_to_file(&mut self) -> Result<u32> {
        let KeySource::File(path) = self.source.clone() else {
            return Err(Error::invalid("only a key file keyring can generate keys"));
        };
        let v = self.current() + 1;
        self.keys.insert(v, KeyBytes::generate()?);
        let all: Vec<(u32, KeyBytes)> = self.keys.iter().map(|(v, k)| (*v, k.clone())).collect();
        write_key_file(&path, &all, false)?;
        Ok(v)
    }

    /// Removes a version from a file keyring (after no secret uses it).
    pub fn remove_version_from_file(&mut self, version: u32) -> Result<()> {
        let KeySource::File(path) = self.source.clone() else {
            return Err(Error::invalid(
                "remove the key from OPSC_MASTER_KEY yourself",
            ));
        };
        if self.keys.len() == 1 {
            return Err(Error::invalid("cannot remove the only key"));
        }
        self.keys.remove(&version);
        let all: Vec<(u32, KeyBytes)> = self.keys.iter().map(|(v, k)| (*v, k.clone())).collect();
        write_key_file(&path, &all, false)
    }

    /// Derives the key of `version` from the passphrase and the stored salt.
    pub fn derive(&mut self, version: u32, salt: &[u8]) -> Result<()> {
        if let Some(p) = &self.passphrase {
            let k = KeyBytes::from_passphrase(p, salt)?;
            self.keys.insert(version, k);
        }
        Ok(())
    }

    /// True for a passphrase keyring.
    pub fn is_passphrase(&self) -> bool {
        self.passphrase.is_some()
    }

    /// The version new encryptions use.
    pub fn current(&self) -> u32 {
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    /// Key versions present.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// True if `version` can be used.
    pub fn has(&self, version: u32) -> bool {
        self.keys.contains_key(&version)
    }

    fn cipher(&self, version: u32) -> Result<Aes256Gcm> {
        let key = self.keys.get(&version).ok_or_else(|| {
            Error::invalid(format!(
                "master key version {version} is not configured ({} has versions {:?})",
                self.source,
                self.versions()
            ))
        })?;
        Aes256Gcm::new_from_slice(&key.0)
            .map_err(|e| Error::Internal(format!("bad key length: {e}")))
    }

    /// Encrypts with the current key for `record`/`field`.
    pub fn encrypt(&self, record: &str, field: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.encrypt_with(self.current(), record, field, plaintext)
    }

    /// Encrypts with a given key version.
    pub fn encrypt_with(
        &self,
        version: u32,
        record: &str,
        field: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let cipher = self.cipher(version)?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let aad = aad(record, field, version);
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("encryption failed".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.push(ALG_AES256GCM);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// The key version in a stored value's header.
    pub fn version_of(stored: &[u8]) -> Result<u32> {
        if stored.len() < HEADER_LEN + NONCE_LEN + 16 || &stored[..2] != MAGIC {
            return Err(Error::Store(
                "a stored secret is not in OpsConductor's format (corrupt or foreign data)".into(),
            ));
        }
        if stored[2] != ALG_AES256GCM {
            return Err(Error::Store(format!(
                "a stored secret uses unknown algorithm {}",
                stored[2]
            )));
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&stored[3..7]);
        Ok(u32::from_be_bytes(v))
    }

    /// Decrypts a value stored for `record`/`field`.
    pub fn decrypt(&self, record: &str, field: &str, stored: &[u8]) -> Result<Vec<u8>> {
        let version = Self::version_of(stored)?;
        let cipher = self.cipher(version)?;
        let nonce: [u8; NONCE_LEN] = stored[HEADER_LEN..HEADER_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| Error::Internal("nonce length".into()))?;
        let aad = aad(record, field, version);
        cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: &stored[HEADER_LEN + NONCE_LEN..], aad: aad.as_bytes() })
            .map_err(|_| {
                Error::Store(format!(
                    "cannot decrypt {field} of {record} with key version {version}: wrong master key, or the stored value was altered or moved"
                ))
            })
    }

    /// A value proving a key version is the right one (stored in the database).
    pub fn key_check(&self, version: u32) -> Result<Vec<u8>> {
        self.encrypt_with(
            version,
            "keyring",
            &format!("check-{version}"),
            CHECK_PLAINTEXT,
        )
    }

    /// Verifies a stored key check; a clear error if the key is wrong.
    pub fn verify_check(&self, version: u32, check: &[u8]) -> Result<()> {
        match self.decrypt("keyring", &format!("check-{version}"), check) {
            Ok(p) if p == CHECK_PLAINTEXT => Ok(()),
            _ => Err(Error::invalid(format!(
                "wrong master key: {} does not hold the key version {version} this database was encrypted with",
                self.source
            ))),
        }
    }
}

fn aad(record: &str, field: &str, version: u32) -> String {
    format!("opsconductor/v1/{record}/{field}/{version}")
}

fn write_key_file(path: &Path, keys: &[(u32, KeyBytes)], create_new: bool) -> Result<()> {
    use std::io::Write;
    let place = path.display().to_string();
    let mut text = String::from(
        "# OpsConductor master keys: VERSION BASE64. Keep this file secret and backed up;\n# without it the secrets in the database cannot be read.\n",
    );
    for (v, k) in keys {
        text.push_str(&format!("{v} {}\n", k.to_base64()));
    }
    let tmp = path.with_extension("key.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    if create_new && path.exists() {
        return Err(Error::validation(
            place,
            "a master key file already exists; refusing to overwrite it",
        ));
    }
    let _ = std::fs::remove_file(&tmp);
    let mut f = opts.open(&tmp).map_err(|e| {
        Error::validation(
            place.clone(),
            format!("cannot write the master key file: {e}"),
        )
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| {
            Error::validation(
                place.clone(),
                format!("cannot write the master key file: {e}"),
            )
        })?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::validation(place, format!("cannot write the master key file: {e}")))
}

/// Kinds of secret.
pub const SECRET_KINDS: [&str; 5] = ["generic", "password", "ssh_key", "token", "certificate"];

/// What front ends may show about a secret: never the value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretMeta {
    /// Unique name.
    pub name: String,
    /// Kind (see [`SECRET_KINDS`]).
    pub kind: String,
    /// Free text.
    pub description: String,
    /// Value version: 1 at creation, +1 per update.
    pub version: u32,
    /// Master key version encrypting it now.
    pub key_version: u32,
    /// When created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
    /// Who last changed it.
    pub updated_by: String,
}

/// A stored secret: metadata, its record id (bound into the ciphertext) and the ciphertext.
#[derive(Clone, PartialEq)]
pub struct SecretRecord {
    /// Random id fixed at creation; part of the associated data.
    pub id: String,
    /// Metadata.
    pub meta: SecretMeta,
    /// Encrypted value (see the module docs for the layout).
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretRecord")
            .field("id", &self.id)
            .field("meta", &self.meta)
            .field("ciphertext", &"<encrypted>")
            .finish()
    }
}

/// One change in a secret's history (never the values).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretChange {
    /// Secret name.
    pub name: String,
    /// Value version after the change.
    pub version: u32,
    /// `created`, `updated`, `rewrapped`, `deleted`.
    pub action: String,
    /// Who.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A master key version as the database knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Version number.
    pub version: u32,
    /// Argon2 salt (passphrase keyrings only).
    pub salt: Option<Vec<u8>>,
    /// [`Keyring::key_check`] output.
    pub check: Vec<u8>,
    /// When registered.
    pub created_at: DateTime<Utc>,
    /// When retired (no longer accepted).
    pub retired_at: Option<DateTime<Utc>>,
}

/// The environment variable a declared secret reaches a command as:
/// `db-password` → `DB_PASSWORD`.
pub fn env_name(secret: &str) -> String {
    secret
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_keys(
            [
                (1, KeyBytes::generate().unwrap()),
                (2, KeyBytes::generate().unwrap()),
            ],
            KeySource::Env,
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_binding() {
        let k = ring();
        let a = k.encrypt("rec-a", "value", b"hunter22").unwrap();
        assert_eq!(Keyring::version_of(&a).unwrap(), 2);
        assert_eq!(k.decrypt("rec-a", "value", &a).unwrap(), b"hunter22");
        // Another record, another field: refused.
        assert!(k.decrypt("rec-b", "value", &a).is_err());
        assert!(k.decrypt("rec-a", "other", &a).is_err());
        // A fresh nonce each time.
        assert_ne!(a, k.encrypt("rec-a", "value", b"hunter22").unwrap());
        // Every single bit flip is detected.
        for i in 0..a.len() * 8 {
            let mut b = a.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(k.decrypt("rec-a", "value", &b).is_err(), "bit {i}");
        }
        // Relabelling the key version in the header fails too.
        let old = k.encrypt_with(1, "rec-a", "value", b"x").unwrap();
        let mut relabelled = old.clone();
        relabelled[6] = 2;
        assert!(k.decrypt("rec-a", "value", &relabelled).is_err());
        assert_eq!(k.decrypt("rec-a", "value", &old).unwrap(), b"x");
    }

    #[test]
    fn wrong_key_is_named() {
        let k = ring();
        let check = k.key_check(2).unwrap();
        k.verify_check(2, &check).unwrap();
        let other = ring();
        let e = other.verify_check(2, &check).unwrap_err().to_string();
        assert!(
            e.contains("wrong master key") && e.contains("OPSC_MASTER_KEY"),
            "{e}"
        );
    }

    #[test]
    fn env_and_file_forms() {
        let k = KeyBytes::generate().unwrap();
        let r = Keyring::from_env_value(&k.to_base64()).unwrap();
        assert_eq!(r.versions(), vec![1]);
        let r =
            Keyring::from_env_value(&format!("1:{},3:{}", k.to_base64(), k.to_base64())).unwrap();
        assert_eq!(r.current(), 3);
        assert!(Keyring::from_env_value("short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        let mut made = Keyring::create_file(&p).unwrap();
        assert!(Keyring::create_file(&p).is_err(), "never overwrites");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(made.add_version_to_file().unwrap(), 2);
        let loaded = Keyring::from_file(&p).unwrap();
        assert_eq!(loaded.versions(), vec![1, 2]);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn passphrase_derivation() {
        let mut r = Keyring::from_passphrase(b"correct horse battery").unwrap();
        r.derive(1, b"0123456789abcdef").unwrap();
        let c = r.key_check(1).unwrap();
        let mut again = Keyring::from_passphrase(b"correct horse battery").unwrap();
        again.derive(1, b"0123456789abcdef").unwrap();
        again.verify_check(1, &c).unwrap();
        let mut wrong = Keyring::from_passphrase(b"incorrect horse battery").unwrap();
        wrong.derive(1, b"0123456789abcdef").unwrap();
        assert!(wrong.verify_check(1, &c).is_err());
        assert_eq!(env_name("db-password"), "DB_PASSWORD");
    }
}
