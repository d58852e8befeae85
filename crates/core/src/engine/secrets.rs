//! Secrets through the engine: write-only values, the keyring check at
//! start-up, rotation, and decrypting what a run needs (and nothing else).

use std::collections::HashMap;

use serde::Serialize;

use super::{Conductor, Inner};
use crate::error::{Error, Result};
use crate::executor::Credential;
use crate::mask::{MIN_MASK_LEN, Masker};
use crate::model::{Actor, Run, Target};
use crate::secrets::{
    KeyRecord, Keyring, SECRET_KINDS, SecretChange, SecretMeta, SecretRecord, env_name,
};
use crate::store::Store;

/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A request to create or update a secret.
#[derive(Clone)]
pub struct SetSecret {
    /// Name (letters, digits, `_ . -`).
    pub name: String,
    /// Kind (`generic`, `password`, `ssh_key`, `token`, `certificate`); `None`
    /// keeps the current kind (or `generic` for a new secret).
    pub kind: Option<String>,
    /// Description; `None` keeps the current one.
    pub description: Option<String>,
    /// The value.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecret")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("value", &"***")
            .finish()
    }
}

/// What `set_secret` did.
#[derive(Debug, Clone, Serialize)]
pub struct SetSecretOutcome {
    /// The secret now.
    pub meta: SecretMeta,
    /// True if it did not exist before.
    pub created: bool,
    /// Things the user should know (e.g. too short to be masked).
    pub warnings: Vec<String>,
}

/// A secret as front ends show it: metadata and where it is used, never the value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    /// Metadata.
    #[serde(flatten)]
    pub meta: SecretMeta,
    /// Jobs (latest versions) that declare it.
    pub used_by_jobs: Vec<String>,
    /// Targets that use it as their credential.
    pub used_by_targets: Vec<String>,
}

/// What a key rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    /// The key version every secret is encrypted with now.
    pub key_version: u32,
    /// Whether this call created that version (false: resumed an earlier rotation).
    pub new_version: bool,
    /// Secrets re-encrypted by this call.
    pub rewrapped: usize,
    /// Secrets in total.
    pub total: usize,
}

/// What a run needs, decrypted at its start.
pub(crate) struct RunSecrets {
    /// Declared secrets as environment variables.
    pub env: Vec<(String, String)>,
    /// Names of the declared secrets (for the audit log).
    pub names: Vec<String>,
    /// Target credentials by target name.
    pub creds: HashMap<String, Credential>,
    /// Masks every value above.
    pub masker: Masker,
}

/// Checks the keyring against the database at start-up and registers new
/// key versions. A wrong or missing key is a clear error, never silent.
pub(crate) async fn verify_keyring(store: &dyn Store, keyring: Option<&mut Keyring>) -> Result<()> {
    let ss = store.secret_store();
    let records = ss.key_records().await?;
    let live: Vec<&KeyRecord> = records.iter().filter(|r| r.retired_at.is_none()).collect();
    let Some(ring) = keyring else {
        if !live.is_empty() {
            return Err(Error::invalid(
                "this database holds secrets encrypted with a master key, but no key is configured: \
                 set OPSC_MASTER_KEY, OPSC_MASTER_KEY_FILE or OPSC_MASTER_PASSPHRASE",
            ));
        }
        return Ok(());
    };
    if ring.is_passphrase() {
        for r in &records {
            if let Some(salt) = &r.salt {
                ring.derive(r.version, salt)?;
            }
        }
        if records.is_empty() {
            let salt = random_salt()?;
            ring.derive(1, &salt)?;
            ss.put_key_record(&KeyRecord {
                version: 1,
                salt: Some(salt),
                check: ring.key_check(1)?,
                created_at: chrono::Utc::now(),
                retired_at: None,
            })
            .await?;
            return Ok(());
        }
    }
    let in_use: Vec<u32> = ss
        .list_secrets()
        .await?
        .iter()
        .map(|s| s.meta.key_version)
        .collect();
    for r in &live {
        if ring.has(r.version) {
            ring.verify_check(r.version, &r.check)?;
        } else if in_use.contains(&r.version) {
            return Err(Error::invalid(format!(
                "the master key is missing version {} which secrets in this database are encrypted with ({} has versions {:?})",
                r.version,
                ring.source,
                ring.versions()
            )));
        }
    }
    for v in ring.versions() {
        if let Some(r) = records.iter().find(|r| r.version == v) {
            if r.retired_at.is_some() && v == ring.current() {
                return Err(Error::invalid(format!(
                    "master key version {v} was retired; configure a newer key"
                )));
            }
            continue;
        }
        ss.put_key_record(&KeyRecord {
            version: v,
            salt: None,
            check: ring.key_check(v)?,
            created_at: chrono::Utc::now(),
            retired_at: None,
        })
        .await?;
    }
    Ok(())
}

fn random_salt() -> Result<Vec<u8>> {
    let mut s = vec![0u8; 16];
    getrandom::fill(&mut s).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(s)
}

impl Inner {
    async fn ring(&self) -> Result<Keyring> {
        self.keyring.read().await.clone().ok_or_else(no_master_key)
    }

    async fn decrypt(&self, rec: &SecretRecord) -> Result<Vec<u8>> {
        self.ring()
            .await?
            .decrypt(&rec.id, "value", &rec.ciphertext)
    }

    /// What a run needs: the job's declared secrets and the credentials of
    /// its targets; its masker hides those and every other stored secret (a
    /// value must never show in any run's output, declared or not: a job may
    /// have written it to a file that a later run prints).
    ///
    /// One read of the stored records per run start, so a secret set,
    /// rotated or deleted by any process is seen by the next run; values are
    /// decrypted only when new or changed since the last start (the
    /// [`secret_cache`](super::secret_cache)). Without a master key nothing
    /// can be decrypted: a run that needs a secret fails, any other gets a
    /// warning and a masker with nothing in it.
    pub(crate) async fn run_secrets(
        &self,
        run: &Run,
        targets: &[Option<Target>],
    ) -> Result<RunSecrets> {
        let creds_needed: Vec<(&str, &str)> = targets
            .iter()
            .flatten()
            .filter_map(|t| t.credential.as_deref().map(|c| (t.name.as_str(), c)))
            .collect();
        let needs_any = !run.spec.secrets.is_empty() || !creds_needed.is_empty();
        let nothing = || RunSecrets {
            env: vec![],
            names: vec![],
            creds: HashMap::new(),
            masker: Masker::none(),
        };
        let ss = self.store.secret_store();
        let records = ss.list_secrets().await?;
        let by_name: HashMap<&str, &SecretRecord> =
            records.iter().map(|r| (r.meta.name.as_str(), r)).collect();
        let needed = run
            .spec
            .secrets
            .iter()
            .map(String::as_str)
            .chain(creds_needed.iter().map(|(_, name)| *name));
        for name in needed {
            if !by_name.contains_key(name) {
                return Err(missing_secret(name));
            }
        }
        let ring_guard = self.keyring.read().await;
        let Some(ring) = ring_guard.as_ref() else {
            if needs_any {
                return Err(no_master_key());
            }
            if !records.is_empty() {
                tracing::warn!(
                    secrets = records.len(),
                    "no master key: stored secrets cannot be masked in run output"
                );
            }
            return Ok(nothing());
        };
        let mut cache = self
            .secret_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.sync(&records, |rec| {
            ring.decrypt(&rec.id, "value", &rec.ciphertext)
        })?;
        let value_of = |name: &str| -> Result<(&SecretRecord, Vec<u8>)> {
            let rec = by_name.get(name).ok_or_else(|| missing_secret(name))?;
            let value = cache.value(&rec.id).ok_or_else(|| {
                Error::Internal(format!("secret '{name}' was read but not decrypted"))
            })?;
            Ok((rec, value.to_vec()))
        };
        let mut env = Vec::new();
        for name in &run.spec.secrets {
            let (_, v) = value_of(name)?;
            let text = String::from_utf8(v).map_err(|_| {
                Error::invalid(format!(
                    "secret '{name}' is not UTF-8 text, so it cannot be an environment variable"
                ))
            })?;
            env.push((env_name(name), text));
        }
        let mut creds = HashMap::new();
        for (target, name) in creds_needed {
            let (rec, value) = value_of(name)?;
            creds.insert(
                target.to_string(),
                Credential {
                    kind: rec.meta.kind.clone(),
                    value,
                },
            );
        }
        let masker = cache.masker();
        Ok(RunSecrets {
            env,
            names: run.spec.secrets.clone(),
            creds,
            masker,
        })
    }

    /// Drops what the secret cache holds of `name` (set or deleted here).
    fn forget_secret(&self, name: &str) {
        self.secret_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .forget(name);
    }
}

fn no_master_key() -> Error {
    Error::invalid(
        "no master key is configured: set OPSC_MASTER_KEY, OPSC_MASTER_KEY_FILE or OPSC_MASTER_PASSPHRASE",
    )
}

impl Inner {
    /// `text` with the values of the secrets `run` will hold masked, for the
    /// audit log. If they cannot be loaded, the text is not recorded at all.
    pub(crate) async fn mask_for_audit(&self, run: &Run, targets: &[Target], text: &str) -> String {
        let targets: Vec<Option<Target>> = targets.iter().cloned().map(Some).collect();
        match self.run_secrets(run, &targets).await {
            Ok(s) => s.masker.mask_str(text),
            Err(e) => {
                format!("[not recorded: the secrets to mask it with could not be loaded: {e}]")
            }
        }
    }

    /// Decrypts the credentials of `targets` (for checks).
    pub(crate) async fn run_secrets_for_targets(
        &self,
        targets: &[Target],
    ) -> Result<HashMap<String, Credential>> {
        let mut creds = HashMap::new();
        for t in targets {
            if let Some(name) = &t.credential {
                let ss = self.store.secret_store();
                let rec = ss
                    .get_secret(name)
                    .await?
                    .ok_or_else(|| missing_secret(name))?;
                let v = self.decrypt(&rec).await?;
                creds.insert(
                    t.name.clone(),
                    Credential {
                        kind: rec.meta.kind.clone(),
                        value: v,
                    },
                );
            }
        }
        Ok(creds)
    }

    /// Refuses a submission whose job or targets need a secret that is not set.
    pub(crate) async fn check_secrets_exist(
        &self,
        secrets: &[String],
        targets: &[Target],
    ) -> Result<()> {
        let mut names: Vec<&str> = secrets.iter().map(String::as_str).collect();
        names.extend(targets.iter().filter_map(|t| t.credential.as_deref()));
        if names.is_empty() {
            return Ok(());
        }
        let ss = self.store.secret_store();
        for n in names {
            if ss.get_secret(n).await?.is_none() {
                return Err(missing_secret(n));
            }
        }
        Ok(())
    }
}

fn missing_secret(name: &str) -> Error {
    Error::NotFound {
        what: "secret",
        name: name.into(),
        hint: Some(format!("set it with `opsconductor secrets set {name}`")),
    }
}

impl Conductor {
    /// Creates or updates a secret. The value is encrypted before it leaves
    /// this call and is never returned by anything.
    pub async fn set_secret(&self, req: SetSecret, actor: &Actor) -> Result<SetSecretOutcome> {
        actor.require(crate::auth::Permission::ManageSecrets)?;
        crate::spec::check_name("secret", &req.name)?;
        if let Some(k) = &req.kind
            && !SECRET_KINDS.contains(&k.as_str())
        {
            return Err(Error::validation(
                "kind",
                format!(
                    "unknown secret kind '{k}' (expected one of: {})",
                    SECRET_KINDS.join(", ")
                ),
            ));
        }
        if req.value.is_empty() {
            return Err(Error::validation("value", "a secret cannot be empty"));
        }
        if req.value.len() > MAX_SECRET_BYTES {
            return Err(Error::validation(
                "value",
                format!("{} bytes; the limit is {MAX_SECRET_BYTES}", req.value.len()),
            ));
        }
        let mut warnings = Vec::new();
        if req.value.len() < MIN_MASK_LEN {
            warnings.push(format!(
                "the value is shorter than {MIN_MASK_LEN} characters, so it will NOT be masked in output \
                 (masking every occurrence of so short a string would garble logs while protecting little)"
            ));
        }
        let ss = self.inner.store.secret_store();
        let ring = self.inner.ring().await?;
        let now = chrono::Utc::now();
        match ss.get_secret(&req.name).await? {
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                let meta = SecretMeta {
                    name: req.name.clone(),
                    kind: req.kind.unwrap_or_else(|| "generic".into()),
                    description: req.description.unwrap_or_default(),
                    version: 1,
                    key_version: ring.current(),
                    created_at: now,
                    created_by: actor.name.clone(),
                    updated_at: now,
                    updated_by: actor.name.clone(),
                };
                let rec = SecretRecord {
                    ciphertext: ring.encrypt(&id, "value", &req.value)?,
                    id,
                    meta: meta.clone(),
                };
                ss.create_secret(&rec).await?;
                self.inner.forget_secret(&meta.name);
                self.inner
                    .audit_as(
                        actor,
                        "secret.create",
                        format!("secret:{}", meta.name),
                        serde_json::json!({"kind": meta.kind}),
                    )
                    .await;
                Ok(SetSecretOutcome {
                    meta,
                    created: true,
                    warnings,
                })
            }
            Some(old) => {
                let mut meta = old.meta.clone();
                if let Some(k) = req.kind {
                    meta.kind = k;
                }
                if let Some(d) = req.description {
                    meta.description = d;
                }
                meta.version += 1;
                meta.key_version = ring.current();
                meta.updated_at = now;
                meta.updated_by = actor.name.clone();
                let rec = SecretRecord {
                    ciphertext: ring.encrypt(&old.id, "value", &req.value)?,
                    id: old.id,
                    meta: meta.clone(),
                };
                if !ss.update_secret(&rec).await? {
                    return Err(Error::Conflict(format!(
                        "secret '{}' was changed by someone else meanwhile; try again",
                        meta.name
                    )));
                }
                self.inner.forget_secret(&meta.name);
                self.inner
                    .audit_as(
                        actor,
                        "secret.update",
                        format!("secret:{}", meta.name),
                        serde_json::json!({"version": meta.version}),
                    )
                    .await;
                Ok(SetSecretOutcome {
                    meta,
                    created: false,
                    warnings,
                })
            }
        }
    }

    /// Every secret with where it is used; never values.
    pub async fn secrets(&self, actor: &Actor) -> Result<Vec<SecretInfo>> {
        actor.require(crate::auth::Permission::Read)?;
        self.secret_infos().await
    }

    async fn secret_infos(&self) -> Result<Vec<SecretInfo>> {
        let ss = self.inner.store.secret_store();
        let records = ss.list_secrets().await?;
        let jobs = self.inner.store.list_jobs().await?;
        let targets = self.inner.store.list_targets().await?;
        Ok(records
            .into_iter()
            .map(|r| {
                let name = r.meta.name.clone();
                SecretInfo {
                    used_by_jobs: jobs
                        .iter()
                        .filter(|j| j.spec.secrets.contains(&name))
                        .map(|j| j.spec.name.clone())
                        .collect(),
                    used_by_targets: targets
                        .iter()
                        .filter(|t| t.credential.as_deref() == Some(name.as_str()))
                        .map(|t| t.name.clone())
                        .collect(),
                    meta: r.meta,
                }
            })
            .collect())
    }

    /// One secret's metadata and usage.
    pub async fn secret(&self, name: &str, actor: &Actor) -> Result<SecretInfo> {
        actor.require(crate::auth::Permission::Read)?;
        self.secret_infos()
            .await?
            .into_iter()
            .find(|s| s.meta.name == name)
            .ok_or_else(|| Error::not_found("secret", name))
    }

    /// Who changed a secret when (never the values).
    pub async fn secret_history(&self, name: &str, actor: &Actor) -> Result<Vec<SecretChange>> {
        actor.require(crate::auth::Permission::Read)?;
        let h = self.inner.store.secret_store().secret_history(name).await?;
        if h.is_empty() {
            return Err(Error::not_found("secret", name));
        }
        Ok(h)
    }

    /// Deletes a secret. Refused while jobs or targets use it, unless `force`.
    pub async fn delete_secret(&self, name: &str, force: bool, actor: &Actor) -> Result<()> {
        actor.require(crate::auth::Permission::ManageSecrets)?;
        let info = self.secret(name, actor).await?;
        if !force && (!info.used_by_jobs.is_empty() || !info.used_by_targets.is_empty()) {
            return Err(Error::Conflict(format!(
                "secret '{name}' is in use (jobs: [{}], targets: [{}]); change those first or force the deletion",
                info.used_by_jobs.join(", "),
                info.used_by_targets.join(", ")
            )));
        }
        if !self
            .inner
            .store
            .secret_store()
            .delete_secret(name, &actor.name)
            .await?
        {
            return Err(Error::not_found("secret", name));
        }
        self.inner.forget_secret(name);
        self.inner
            .audit_as(
                actor,
                "secret.delete",
                format!("secret:{name}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// Re-encrypts every secret with a new master key version. Resumable: if
    /// interrupted, run it again and it finishes the same rotation.
    pub async fn rotate_key(&self, actor: &Actor) -> Result<RotationReport> {
        actor.require(crate::auth::Permission::ManageKeys)?;
        let ss = self.inner.store.secret_store();
        let mut guard = self.inner.keyring.write().await;
        let ring = guard
            .as_mut()
            .ok_or_else(|| Error::invalid("no master key is configured"))?;
        let secrets = ss.list_secrets().await?;
        let records = ss.key_records().await?;
        let current = ring.current();
        let registered = records.iter().any(|r| r.version == current);
        let done_with_current = secrets.iter().all(|s| s.meta.key_version == current);
        let mut new_version = false;
        if registered && done_with_current {
            // Nothing to resume: make a new version.
            let next = records
                .iter()
                .map(|r| r.version)
                .max()
                .unwrap_or(0)
                .max(current)
                + 1;
            let salt = if ring.is_passphrase() {
                let salt = random_salt()?;
                ring.derive(next, &salt)?;
                Some(salt)
            } else if matches!(ring.source, crate::secrets::KeySource::File(_)) {
                let v = ring.add_version_to_file()?;
                debug_assert_eq!(v, next.max(v));
                None
            } else {
                return Err(Error::invalid(format!(
                    "to rotate with OPSC_MASTER_KEY, add a new key as `{next}:BASE64` to it (keep the old ones until the rotation is done) and run again"
                )));
            };
            let v = ring.current();
            ss.put_key_record(&KeyRecord {
                version: v,
                salt,
                check: ring.key_check(v)?,
                created_at: chrono::Utc::now(),
                retired_at: None,
            })
            .await?;
            new_version = true;
        } else if !registered {
            ss.put_key_record(&KeyRecord {
                version: current,
                salt: None,
                check: ring.key_check(current)?,
                created_at: chrono::Utc::now(),
                retired_at: None,
            })
            .await?;
        }
        let to = ring.current();
        let mut rewrapped = 0;
        for s in &secrets {
            if s.meta.key_version == to {
                continue;
            }
            let plain = ring.decrypt(&s.id, "value", &s.ciphertext)?;
            let ct = ring.encrypt_with(to, &s.id, "value", &plain)?;
            if ss
                .rewrap_secret(&s.meta.name, s.meta.key_version, to, &ct)
                .await?
            {
                rewrapped += 1;
            }
        }
        let total = secrets.len();
        // Every value is now under another key: the next run start decrypts
        // them again (and checks the new ciphertexts with it).
        self.inner
            .secret_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        drop(guard);
        self.inner
            .audit_as(actor, "key.rotate", format!("key:{to}"), serde_json::json!({"rewrapped": rewrapped, "total": total, "new_version": new_version}))
            .await;
        Ok(RotationReport {
            key_version: to,
            new_version,
            rewrapped,
            total,
        })
    }

    /// Retires an old master key version once no secret uses it.
    pub async fn retire_key(&self, version: u32, actor: &Actor) -> Result<()> {
        actor.require(crate::auth::Permission::ManageKeys)?;
        let ss = self.inner.store.secret_store();
        let mut guard = self.inner.keyring.write().await;
        let ring = guard
            .as_mut()
            .ok_or_else(|| Error::invalid("no master key is configured"))?;
        if version == ring.current() {
            return Err(Error::Conflict(format!(
                "key version {version} is the current one; rotate first"
            )));
        }
        let users = ss
            .list_secrets()
            .await?
            .into_iter()
            .filter(|s| s.meta.key_version == version)
            .count();
        if users > 0 {
            return Err(Error::Conflict(format!(
                "{users} secret(s) still use key version {version}; run `secrets rotate-key` first"
            )));
        }
        if !ss.retire_key(version).await? {
            return Err(Error::not_found("active key version", version.to_string()));
        }
        if matches!(ring.source, crate::secrets::KeySource::File(_)) && ring.has(version) {
            ring.remove_version_from_file(version)?;
        }
        drop(guard);
        self.inner
            .audit_as(
                actor,
                "key.retire",
                format!("key:{version}"),
                serde_json::Value::Null,
            )
            .await;
        Ok(())
    }

    /// The key versions the keyring holds (for `secrets keys`).
    pub async fn key_versions(&self, actor: &Actor) -> Result<Vec<KeyRecord>> {
        actor.require(crate::auth::Permission::ManageKeys)?;
        self.inner.store.secret_store().key_records().await
    }
}
