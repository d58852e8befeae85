//! Secrets end to end on the real SQLite store and the local executor:
//! encryption at rest (raw file bytes), binding, wrong keys, rotation,
//! injection, masking and the audit trail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::time::Duration;

use futures::StreamExt;
use opsconductor::secrets::{KeyBytes, KeySource, Keyring};
use opsconductor::{Actor, Conductor, Error, RunStatus, SetSecret, Stream, SubmitRequest};
use serde_json::json;

fn me() -> Actor {
    Actor::new("tester")
}

fn ring(keys: &[(u32, &KeyBytes)]) -> Keyring {
    Keyring::from_keys(keys.iter().map(|(v, k)| (*v, (*k).clone())), KeySource::Env).unwrap()
}

async fn engine(url: &str, keyring: Keyring) -> opsconductor::Result<Conductor> {
    let store = opsconductor::open_store(url).await?;
    Conductor::builder()
        .store_arc(store)
        .executor(opsconductor::LocalExecutor::default())
        .keyring(keyring)
        .build()
        .await
}

fn random_value(i: usize) -> String {
    format!("S3cr3t-{i}-{}", opsconductor::RunId::new().0.simple())
}

async fn set(oc: &Conductor, name: &str, value: &str) {
    oc.set_secret(
        SetSecret {
            name: name.into(),
            kind: None,
            description: None,
            value: value.as_bytes().to_vec(),
        },
        &me(),
    )
    .await
    .unwrap();
}

/// All bytes of the database file and its WAL.
fn raw_db(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("t.db") {
            all.extend(std::fs::read(e.path()).unwrap());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn run_job(oc: &Conductor, yaml: &str, job: &str) -> (opsconductor::RunDetail, String) {
    let batch = opsconductor::spec::parse_str(yaml, "t.yaml", None).unwrap();
    oc.apply(&batch, &me()).await.unwrap();
    let run = oc.submit(SubmitRequest::new(job), &me()).await.unwrap();
    let done = oc.execute(run.id).await.unwrap();
    let mut logs = oc.follow(done.id, 0).await.unwrap();
    let mut text = String::new();
    while let Some(c) = logs.next().await {
        let c = c.unwrap();
        if c.stream != Stream::System {
            text.push_str(&String::from_utf8_lossy(&c.data));
        }
    }
    (oc.get(done.id).await.unwrap(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_never_reach_the_database_file_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let k1 = KeyBytes::generate().unwrap();
    let k2 = KeyBytes::generate().unwrap();
    let oc = engine(&url, ring(&[(1, &k1)])).await.unwrap();
    let mut values = Vec::new();
    for i in 0..50 {
        let v = random_value(i);
        set(&oc, &format!("s{i}"), &v).await;
        values.push(v);
    }
    // Update half of them.
    for (i, v) in values.iter_mut().enumerate().step_by(2) {
        *v = random_value(1000 + i);
        set(&oc, &format!("s{i}"), v).await;
    }
    drop(oc);
    // Rotate to a second key.
    let oc = engine(&url, ring(&[(1, &k1), (2, &k2)])).await.unwrap();
    let r = oc.rotate_key(&me()).await.unwrap();
    assert_eq!((r.key_version, r.rewrapped, r.total), (2, 50, 50));
    let raw = raw_db(dir.path());
    assert!(raw.len() > 10_000, "read the database");
    for v in &values {
        assert!(
            !contains(&raw, v.as_bytes()),
            "a secret value is in the database file in clear"
        );
        let b64 = opsconductor::mask::Masker::new([v.as_bytes()]);
        assert!(!b64.is_empty());
    }
    // Listing shows metadata only; nothing in the API returns a value.
    let list = serde_json::to_string(&oc.secrets().await.unwrap()).unwrap();
    for v in &values {
        assert!(!list.contains(v.as_str()));
    }
    assert!(list.contains("\"key_version\":2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swapped_or_altered_ciphertexts_fail() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let k = KeyBytes::generate().unwrap();
    let oc = engine(&url, ring(&[(1, &k)])).await.unwrap();
    set(&oc, "a", "value-of-a-1234").await;
    set(&oc, "b", "value-of-b-5678").await;
    let ss = oc.store().secret_store().unwrap();
    let a = ss.get_secret("a").await.unwrap().unwrap();
    let mut b = ss.get_secret("b").await.unwrap().unwrap();
    // Move a's ciphertext into b's row (as an attacker with database access could).
    b.ciphertext = a.ciphertext.clone();
    b.meta.version += 1;
    assert!(ss.update_secret(&b).await.unwrap());
    let yaml = "kind: Job\nname: use-b\nsecrets: [b]\nsteps:\n  - exec: echo $B\n";
    let (d, _) = run_job(&oc, yaml, "use-b").await;
    assert_eq!(d.run.status, RunStatus::Failed);
    assert!(
        d.run.error.unwrap().contains("cannot decrypt"),
        "refused to decrypt a moved ciphertext"
    );
    // One flipped bit in a's own row fails too.
    let mut a2 = a.clone();
    let last = a2.ciphertext.len() - 1;
    a2.ciphertext[last] ^= 0x01;
    a2.meta.version += 1;
    assert!(ss.update_secret(&a2).await.unwrap());
    let (d, _) = run_job(
        &oc,
        "kind: Job\nname: use-a\nsecrets: [a]\nsteps:\n  - exec: echo $A\n",
        "use-a",
    )
    .await;
    assert_eq!(d.run.status, RunStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_or_missing_master_key_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let good = KeyBytes::generate().unwrap();
    let oc = engine(&url, ring(&[(1, &good)])).await.unwrap();
    set(&oc, "x", "some-value-xyz").await;
    drop(oc);
    let wrong = KeyBytes::generate().unwrap();
    let err = engine(&url, ring(&[(1, &wrong)]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong master key"), "{err}");
    // No key at all, on a database that holds secrets.
    let store = opsconductor::open_store(&url).await.unwrap();
    let err = Conductor::builder()
        .store_arc(store)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no key is configured") && err.contains("OPSC_MASTER_KEY"),
        "{err}"
    );
    // The right key still works: nothing was overwritten.
    let oc = engine(&url, ring(&[(1, &good)])).await.unwrap();
    assert_eq!(oc.secrets().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_rotation_resumes_and_every_secret_still_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let k1 = KeyBytes::generate().unwrap();
    let k2 = KeyBytes::generate().unwrap();
    let oc = engine(&url, ring(&[(1, &k1)])).await.unwrap();
    let mut values = Vec::new();
    for i in 0..20 {
        let v = random_value(i);
        set(&oc, &format!("r{i}"), &v).await;
        values.push(v);
    }
    drop(oc);
    // A rotation that died after re-encrypting only some secrets: do by hand
    // what `rotate_key` does, stopping half-way.
    let both = ring(&[(1, &k1), (2, &k2)]);
    let oc = engine(&url, both.clone()).await.unwrap();
    let ss = oc.store().secret_store().unwrap();
    for s in ss.list_secrets().await.unwrap().into_iter().take(7) {
        let plain = both.decrypt(&s.id, "value", &s.ciphertext).unwrap();
        let ct = both.encrypt_with(2, &s.id, "value", &plain).unwrap();
        assert!(ss.rewrap_secret(&s.meta.name, 1, 2, &ct).await.unwrap());
    }
    let r = oc.rotate_key(&me()).await.unwrap();
    assert!(!r.new_version, "resumed the same rotation");
    assert_eq!((r.key_version, r.rewrapped, r.total), (2, 13, 20));
    // Key 1 can now be retired; then a keyring without it still reads everything.
    oc.retire_key(1, &me()).await.unwrap();
    drop(oc);
    let oc = engine(&url, ring(&[(2, &k2)])).await.unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    let script: String = (0..20)
        .map(|i| format!("printf %s \"$R{i}\" | md5sum\n"))
        .collect();
    let yaml = format!(
        "kind: Job\nname: all\nsecrets: [{}]\nsteps:\n  - script: |\n{}",
        names.join(", "),
        script
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    let (d, out) = run_job(&oc, &yaml, "all").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    for v in &values {
        let sum = std::process::Command::new("sh")
            .args(["-c", &format!("printf %s '{v}' | md5sum")])
            .output()
            .unwrap();
        assert!(
            out.contains(String::from_utf8_lossy(&sum.stdout).trim()),
            "a secret did not decrypt to its value"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_reach_commands_as_env_and_are_masked_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let k = KeyBytes::generate().unwrap();
    let oc = engine(&url, ring(&[(1, &k)])).await.unwrap();
    let value = random_value(7);
    set(&oc, "api-token", &value).await;
    let marker = dir.path().join("cmdline-check");
    let yaml = format!(
        r#"
kind: Job
name: leaky
secrets: [api-token]
steps:
  - name: plain
    exec: echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2
  - name: byte at a time
    script: |
      v="$API_TOKEN"
      while [ -n "$v" ]; do rest="${{v#?}}"; printf %s "${{v%"$rest"}}"; v="$rest"; sleep 0.01; done
      echo
  - name: base64 and multi-line
    exec: printf %s "$API_TOKEN" | base64; printf '%s\n' "$API_TOKEN" "$API_TOKEN"
  - name: not on the command line
    exec: grep -c "$API_TOKEN" /proc/$$/cmdline > {m} || true
"#,
        m = marker.display()
    );
    let (d, out) = run_job(&oc, &yaml, "leaky").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert!(
        !out.contains(&value),
        "the secret leaked into the log: {out}"
    );
    let b64 = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{value}' | base64")])
        .output()
        .unwrap();
    assert!(
        !out.contains(String::from_utf8_lossy(&b64.stdout).trim()),
        "base64 form leaked"
    );
    assert!(out.contains("token=***"), "{out}");
    assert_eq!(out.matches("***").count(), 6, "{out}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "0",
        "the value was on the command line"
    );
    // Every use is audited with run, step and target.
    let audit = oc.audit_log(Some("secret:api-token"), 100).await.unwrap();
    let uses: Vec<_> = audit.iter().filter(|e| e.action == "secret.use").collect();
    assert_eq!(uses.len(), 4, "one use per step on the one target");
    assert_eq!(uses[0].detail["run"], json!(d.run.id));
    assert_eq!(uses[0].detail["target"], json!("local"));
    assert!(
        audit
            .iter()
            .any(|e| e.action == "secret.create" && e.actor == "tester")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_secrets_refuse_the_submission_and_short_values_warn() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let oc = engine(&url, ring(&[(1, &KeyBytes::generate().unwrap())]))
        .await
        .unwrap();
    let batch = opsconductor::spec::parse_str(
        "kind: Job\nname: j\nsecrets: [nope]\nsteps:\n  - exec: 'true'\n",
        "t",
        None,
    )
    .unwrap();
    oc.apply(&batch, &me()).await.unwrap();
    let err = oc.submit(SubmitRequest::new("j"), &me()).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }) && err.to_string().contains("secrets set nope"),
        "{err}"
    );
    assert!(oc.list(&Default::default()).await.unwrap().is_empty());
    let r = oc
        .set_secret(
            SetSecret {
                name: "pin".into(),
                kind: Some("password".into()),
                description: None,
                value: b"123".to_vec(),
            },
            &me(),
        )
        .await
        .unwrap();
    assert!(r.warnings[0].contains("NOT be masked"));
    let err = oc
        .set_secret(
            SetSecret {
                name: "x".into(),
                kind: Some("bogus".into()),
                description: None,
                value: b"1234".to_vec(),
            },
            &me(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown secret kind"));
    // Deleting a secret a job uses is refused without force.
    set(&oc, "nope", "now-it-exists").await;
    assert!(matches!(
        oc.delete_secret("nope", false, &me()).await.unwrap_err(),
        Error::Conflict(_)
    ));
    oc.delete_secret("nope", true, &me()).await.unwrap();
    let h = oc.secret_history("nope").await.unwrap();
    assert_eq!(
        h.iter().map(|c| c.action.as_str()).collect::<Vec<_>>(),
        ["created", "deleted"]
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_dump_holds_no_secret_value() {
    let url = opsconductor_store::testing::pg::fresh_database().await;
    let k1 = KeyBytes::generate().unwrap();
    let k2 = KeyBytes::generate().unwrap();
    let oc = engine(&url, ring(&[(1, &k1)])).await.unwrap();
    let mut values = Vec::new();
    for i in 0..30 {
        let v = random_value(i);
        set(&oc, &format!("p{i}"), &v).await;
        values.push(v);
    }
    for (i, v) in values.iter_mut().enumerate().step_by(3) {
        *v = random_value(500 + i);
        set(&oc, &format!("p{i}"), v).await;
    }
    drop(oc);
    let oc = engine(&url, ring(&[(1, &k1), (2, &k2)])).await.unwrap();
    assert_eq!(oc.rotate_key(&me()).await.unwrap().rewrapped, 30);
    let pg = opsconductor_store::testing::pg::TestPg::shared();
    let db = url.rsplit('/').next().unwrap().to_string();
    let dump = tokio::task::spawn_blocking(move || {
        let bin = std::path::Path::new("/usr/lib/postgresql/15/bin/pg_dump");
        std::process::Command::new(bin)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port().to_string(),
                "-U",
                "postgres",
                "--data-only",
                &db,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dump.stdout.len() > 5_000, "dumped the data");
    for v in &values {
        assert!(
            !contains(&dump.stdout, v.as_bytes()),
            "a secret value is in the PostgreSQL dump"
        );
    }
    // And they still decrypt after the rotation.
    let (d, out) = run_job(
        &oc,
        "kind: Job\nname: one\nsecrets: [p3]\nsteps:\n  - exec: printf %s \"$P3\" | md5sum\n",
        "one",
    )
    .await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    let sum = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{}' | md5sum", values[3])])
        .output()
        .unwrap();
    assert!(out.contains(String::from_utf8_lossy(&sum.stdout).trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passphrase_derives_the_key_with_a_stored_salt() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let oc = engine(
        &url,
        Keyring::from_passphrase(b"a long enough passphrase").unwrap(),
    )
    .await
    .unwrap();
    set(&oc, "x", "value-behind-a-passphrase").await;
    let keys = oc.key_versions().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0].salt.as_ref().map(Vec::len),
        Some(16),
        "a random salt is stored"
    );
    drop(oc);
    // The same passphrase opens it again; another one is refused at start.
    let oc = engine(
        &url,
        Keyring::from_passphrase(b"a long enough passphrase").unwrap(),
    )
    .await
    .unwrap();
    let (d, out) = run_job(
        &oc,
        "kind: Job\nname: p\nsecrets: [x]\nsteps:\n  - exec: printf %s \"$X\" | wc -c\n",
        "p",
    )
    .await;
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert!(out.contains("25"), "{out}");
    drop(oc);
    let err = engine(
        &url,
        Keyring::from_passphrase(b"another long passphrase").unwrap(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("wrong master key") && err.contains("OPSC_MASTER_PASSPHRASE"),
        "{err}"
    );
    assert!(Keyring::from_passphrase(b"short").is_err());
}
