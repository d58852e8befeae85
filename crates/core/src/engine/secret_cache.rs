//! The decrypted secret values an engine keeps between run starts, so that a
//! run start decrypts only what changed since the last one.
//!
//! Every run masks the value of every stored secret (see
//! `Inner::run_secrets`), so each run start needs every value. Decrypting
//! them all at each start made the cost of starting a run grow with the
//! number of stored secrets. Instead the values stay here, each with the
//! record's id, value version, key version and ciphertext. A run start still
//! reads the records (one query, so changes made by other processes on the
//! same database are seen) and decrypts only those whose version or
//! ciphertext differ from what is kept; a secret no longer stored is
//! dropped. Nothing depends on time: a secret set, rotated or deleted by any
//! process is in the masker of the next run started by every process. The
//! masker built from the values is kept as well and rebuilt only when a
//! value changed or a secret went.
//!
//! Trade-off: the engine holds the value of every stored secret in memory
//! while it lives. Before, a worker held them all for the length of each run
//! it executed — on a busy worker nearly all the time — so the exposure
//! barely changes; the engine clears the cache when its keyring rotates.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::mask::Masker;
use crate::secrets::SecretRecord;

/// One secret as last decrypted.
struct Entry {
    name: String,
    version: u32,
    key_version: u32,
    /// The exact stored bytes the value came from: a value is reused only
    /// for the same ciphertext, whatever the version numbers say.
    ciphertext: Vec<u8>,
    value: Vec<u8>,
}

/// Decrypted values by record id, and the masker over all of them.
#[derive(Default)]
pub(crate) struct SecretCache {
    /// By record id (fixed at creation: a secret deleted and set again gets
    /// a new one).
    entries: HashMap<String, Entry>,
    /// Masks every value in `entries`; `None` after any change.
    masker: Option<Masker>,
    /// Values decrypted so far.
    decrypted: u64,
    /// Maskers built so far.
    maskers_built: u64,
}

impl SecretCache {
    /// Brings the cache in line with `records`, every stored secret as just
    /// read: drops what is no longer stored and decrypts, with `decrypt`,
    /// only what is new or changed. On an error the value in question is
    /// not kept (nothing stale stays under its id).
    pub(crate) fn sync(
        &mut self,
        records: &[SecretRecord],
        mut decrypt: impl FnMut(&SecretRecord) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let stored: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let before = self.entries.len();
        self.entries.retain(|id, _| stored.contains(id.as_str()));
        if self.entries.len() != before {
            self.masker = None;
        }
        for rec in records {
            let current = self.entries.get(&rec.id).is_some_and(|e| {
                e.version == rec.meta.version
                    && e.key_version == rec.meta.key_version
                    && e.ciphertext == rec.ciphertext
            });
            if current {
                continue;
            }
            self.entries.remove(&rec.id);
            self.masker = None;
            let value = decrypt(rec)?;
            self.decrypted += 1;
            self.entries.insert(
                rec.id.clone(),
                Entry {
                    name: rec.meta.name.clone(),
                    version: rec.meta.version,
                    key_version: rec.meta.key_version,
                    ciphertext: rec.ciphertext.clone(),
                    value,
                },
            );
        }
        Ok(())
    }

    /// The value of the record `id`, if [`Self::sync`] has it.
    pub(crate) fn value(&self, id: &str) -> Option<&[u8]> {
        self.entries.get(id).map(|e| e.value.as_slice())
    }

    /// A masker over every value (built once per change; cheap to clone).
    pub(crate) fn masker(&mut self) -> Masker {
        if let Some(m) = &self.masker {
            return m.clone();
        }
        let m = Masker::new(self.entries.values().map(|e| e.value.as_slice()));
        self.maskers_built += 1;
        self.masker = Some(m.clone());
        m
    }

    /// Drops the value of the secret `name` (it was just set or deleted
    /// here; the next run start reads it again).
    pub(crate) fn forget(&mut self, name: &str) {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.name != name);
        if self.entries.len() != before {
            self.masker = None;
        }
    }

    /// Drops every value (the keyring changed).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.masker = None;
    }

    /// Values decrypted so far.
    #[cfg(test)]
    fn decrypted(&self) -> u64 {
        self.decrypted
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::secrets::SecretMeta;

    fn record(id: &str, name: &str, version: u32, key_version: u32, value: &str) -> SecretRecord {
        let now = chrono::Utc::now();
        SecretRecord {
            id: id.into(),
            meta: SecretMeta {
                name: name.into(),
                kind: "generic".into(),
                description: String::new(),
                version,
                key_version,
                created_at: now,
                created_by: "t".into(),
                updated_at: now,
                updated_by: "t".into(),
            },
            // A stand-in "ciphertext": the value itself, tagged by key version.
            ciphertext: format!("{key_version}:{value}").into_bytes(),
        }
    }

    /// The stand-in decryption: the value after the key tag.
    fn open(rec: &SecretRecord) -> Result<Vec<u8>> {
        let text = String::from_utf8(rec.ciphertext.clone()).unwrap();
        Ok(text.split_once(':').unwrap().1.as_bytes().to_vec())
    }

    fn masked(cache: &mut SecretCache, text: &str) -> String {
        cache.masker().mask_str(text)
    }

    #[test]
    fn only_new_or_changed_values_are_decrypted() {
        let mut cache = SecretCache::default();
        let mut records: Vec<SecretRecord> = (0..200)
            .map(|i| {
                record(
                    &format!("id{i}"),
                    &format!("s{i}"),
                    1,
                    1,
                    &format!("value-{i:04}"),
                )
            })
            .collect();
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.decrypted(), 200);
        assert_eq!(masked(&mut cache, "x value-0007 y"), "x *** y");
        assert_eq!(cache.maskers_built, 1);

        // Nothing changed: no decryption, the same masker.
        for _ in 0..10 {
            cache.sync(&records, open).unwrap();
            cache.masker();
        }
        assert_eq!(cache.decrypted(), 200);
        assert_eq!(cache.maskers_built, 1);

        // A new value (version 2, as another process would write it): one
        // decryption; the old value is no longer masked, the new one is.
        records[7] = record("id7", "s7", 2, 1, "changed-7");
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.decrypted(), 201);
        assert_eq!(masked(&mut cache, "changed-7 value-0007"), "*** value-0007");

        // A rotation rewraps (same version, new key version): decrypted again.
        records[8] = record("id8", "s8", 1, 2, "value-0008");
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.decrypted(), 202);

        // The same version numbers over other bytes are not trusted.
        records[9].ciphertext = b"1:tampered-9".to_vec();
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.decrypted(), 203);
        assert_eq!(cache.value("id9"), Some(&b"tampered-9"[..]));

        // Deleted: the value goes, with no decryption.
        let gone = records.remove(10);
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.decrypted(), 203);
        assert_eq!(cache.value(&gone.id), None);
        assert_eq!(masked(&mut cache, "value-0010"), "value-0010");

        // Set again under the same name: a new record id, decrypted.
        records.push(record("id10b", "s10", 1, 1, "again-10"));
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.decrypted(), 204);
        assert_eq!(masked(&mut cache, "again-10"), "***");
    }

    #[test]
    fn a_failed_decryption_keeps_no_stale_value() {
        let mut cache = SecretCache::default();
        let mut records = vec![record("a", "a", 1, 1, "first-value")];
        cache.sync(&records, open).unwrap();
        records[0] = record("a", "a", 2, 1, "second-value");
        let err = cache.sync(&records, |_| {
            Err(crate::error::Error::Store("bad key".into()))
        });
        assert!(err.is_err());
        assert_eq!(cache.value("a"), None);
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.value("a"), Some(&b"second-value"[..]));
    }

    #[test]
    fn forget_and_clear_drop_values() {
        let mut cache = SecretCache::default();
        let records = vec![
            record("a", "a", 1, 1, "value-a"),
            record("b", "b", 1, 1, "value-b"),
        ];
        cache.sync(&records, open).unwrap();
        cache.forget("a");
        assert_eq!(cache.value("a"), None);
        assert_eq!(masked(&mut cache, "value-a value-b"), "value-a ***");
        cache.clear();
        assert_eq!(cache.value("b"), None);
        cache.sync(&records, open).unwrap();
        assert_eq!(cache.decrypted(), 4);
    }
}
