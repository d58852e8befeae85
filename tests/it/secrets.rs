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

/// The database under the engine, opened on its own: tests look at (and
/// tamper with) stored rows, which the engine never hands out.
async fn store_at(url: &str) -> std::sync::Arc<dyn opsconductor::store::Store> {
    opsconductor::open_store(url).await.unwrap()
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

/// The database file and its WAL, read as they are now.
struct DbFiles {
    main: Vec<u8>,
    wal: Vec<u8>,
}

/// Reads `t.db` and `t.db-wal`. Call it while an engine has the database
/// open: the WAL exists then (SQLite deletes it when the last connection
/// closes, after checkpointing it into the main file), and it is where the
/// newest writes are until a checkpoint copies them over.
fn db_files(dir: &std::path::Path) -> DbFiles {
    let main = std::fs::read(dir.join("t.db")).unwrap();
    let wal = std::fs::read(dir.join("t.db-wal"))
        .expect("the WAL exists while the engine has the database open");
    assert!(
        !wal.is_empty(),
        "the WAL holds bytes at the moment of scanning"
    );
    DbFiles { main, wal }
}

/// Standard base64 (RFC 4648, padded), independent of the masker's.
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            out.push(if k <= c.len() {
                char::from(A[((n >> (18 - 6 * k)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// The base64 forms of `v` a stored blob could hold: the whole value
/// (standard and URL-safe alphabets, unpadded) and the three inner forms of
/// the value at offset 0, 1 or 2 (mod 3) inside a longer encoded blob (the
/// characters that depend only on the value's bytes).
fn base64_forms(v: &[u8]) -> Vec<String> {
    let std = b64(v).trim_end_matches('=').to_string();
    let url = std.replace('+', "-").replace('/', "_");
    let mut forms = vec![std, url];
    for shift in 0..3usize {
        let mut blob = vec![0u8; shift];
        blob.extend_from_slice(v);
        let enc = b64(&blob);
        let first = (8 * shift).div_ceil(6);
        let end = 8 * blob.len() / 6;
        forms.push(enc[first..end].to_string());
    }
    forms
}

/// Asserts that neither the database file nor its WAL holds any value
/// ever set, in clear or in any base64 form; and, so that this cannot pass
/// by reading the wrong bytes, that every current ciphertext is in what was
/// read and the newest write (`newest`'s ciphertext) is in the WAL.
async fn assert_no_value_at_rest(
    oc: &Conductor,
    dir: &std::path::Path,
    ever: &[String],
    newest: &str,
    when: &str,
) {
    let files = db_files(dir);
    let _ = oc;
    let store = store_at(&format!("sqlite://{}", dir.join("t.db").display())).await;
    let ss = store.secret_store();
    let last = ss.get_secret(newest).await.unwrap().unwrap();
    assert!(
        found(&files.wal, &[&last.ciphertext])[0],
        "{when}: the newest write is in the WAL that was scanned"
    );
    let records = ss.list_secrets().await.unwrap();
    let cts: Vec<&[u8]> = records.iter().map(|r| r.ciphertext.as_slice()).collect();
    let in_main = found(&files.main, &cts);
    let in_wal = found(&files.wal, &cts);
    for (i, rec) in records.iter().enumerate() {
        assert!(
            in_main[i] || in_wal[i],
            "{when}: the ciphertext of {} is in the scanned bytes",
            rec.meta.name
        );
    }
    let mut needles: Vec<String> = Vec::new();
    for v in ever {
        needles.push(v.clone());
        needles.extend(base64_forms(v.as_bytes()));
    }
    let bytes: Vec<&[u8]> = needles.iter().map(|n| n.as_bytes()).collect();
    for (file, data) in [("database file", &files.main), ("WAL", &files.wal)] {
        for (needle, hit) in needles.iter().zip(found(data, &bytes)) {
            assert!(
                !hit,
                "{when}: the {file} holds a secret value (or its base64 form {needle:?})"
            );
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Which of `needles` (each at least 8 bytes) occur in `hay`, in one pass
/// over it: the scans below look for hundreds of strings in megabytes.
fn found(hay: &[u8], needles: &[&[u8]]) -> Vec<bool> {
    const K: usize = 8;
    let mut by_prefix: std::collections::HashMap<&[u8], Vec<usize>> = Default::default();
    for (i, n) in needles.iter().enumerate() {
        assert!(n.len() >= K, "needle too short to look for: {n:?}");
        by_prefix.entry(&n[..K]).or_default().push(i);
    }
    let mut hit = vec![false; needles.len()];
    for i in 0..hay.len().saturating_sub(K - 1) {
        if let Some(ids) = by_prefix.get(&hay[i..i + K]) {
            for &id in ids {
                hit[id] |= hay[i..].starts_with(needles[id]);
            }
        }
    }
    hit
}

async fn run_job(oc: &Conductor, yaml: &str, job: &str) -> (opsconductor::RunDetail, String) {
    let batch = opsconductor::spec::parse_str(yaml, "t.yaml", None).unwrap();
    oc.apply(&batch, &me()).await.unwrap();
    let run = oc.submit(SubmitRequest::new(job), &me()).await.unwrap();
    let done = oc.execute(run.id).await.unwrap();
    let mut logs = oc.follow(done.id, 0, &me()).await.unwrap();
    let mut text = String::new();
    while let Some(c) = logs.next().await {
        let c = c.unwrap();
        if c.stream != Stream::System {
            text.push_str(&String::from_utf8_lossy(&c.data));
        }
    }
    (oc.run(done.id, &me()).await.unwrap(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_never_reach_the_database_file_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let k1 = KeyBytes::generate().unwrap();
    let k2 = KeyBytes::generate().unwrap();
    // The test's own encoder agrees with GNU base64.
    let gnu = std::process::Command::new("sh")
        .args(["-c", "printf %s 'S3cr3t-value?>' | base64"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&gnu.stdout).trim(),
        b64(b"S3cr3t-value?>")
    );

    let oc = engine(&url, ring(&[(1, &k1)])).await.unwrap();
    // Every value ever set: the scans look for all of them, not only the current ones.
    let mut ever = Vec::new();
    let mut current = Vec::new();
    for i in 0..50 {
        let v = random_value(i);
        set(&oc, &format!("s{i}"), &v).await;
        ever.push(v.clone());
        current.push(v);
    }
    assert_no_value_at_rest(&oc, dir.path(), &ever, "s49", "after create").await;
    // Update half of them.
    for (i, v) in current.iter_mut().enumerate().step_by(2) {
        *v = random_value(1000 + i);
        set(&oc, &format!("s{i}"), v).await;
        ever.push(v.clone());
    }
    assert_no_value_at_rest(&oc, dir.path(), &ever, "s48", "after update").await;
    drop(oc);
    // Rotate to a second key.
    let oc = engine(&url, ring(&[(1, &k1), (2, &k2)])).await.unwrap();
    let r = oc.rotate_key(&me()).await.unwrap();
    assert_eq!((r.key_version, r.rewrapped, r.total), (2, 50, 50));
    // The rotation re-encrypts in listing order (by name): the last one listed is the newest write.
    let store = store_at(&url).await;
    let last = store
        .secret_store()
        .list_secrets()
        .await
        .unwrap()
        .last()
        .unwrap()
        .meta
        .name
        .clone();
    assert_no_value_at_rest(&oc, dir.path(), &ever, &last, "after rotate").await;
    // Listing shows metadata only; nothing in the API returns a value.
    let list = serde_json::to_string(&oc.secrets(&opsconductor::Actor::new("test")).await.unwrap())
        .unwrap();
    for v in &ever {
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
    let store = store_at(&url).await;
    let ss = store.secret_store();
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
    assert_eq!(
        oc.secrets(&opsconductor::Actor::new("test"))
            .await
            .unwrap()
            .len(),
        1
    );
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
    let store = store_at(&url).await;
    let ss = store.secret_store();
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
    let audit = oc
        .audit_log(Some("secret:api-token"), 100, &me())
        .await
        .unwrap();
    let uses: Vec<_> = audit.iter().filter(|e| e.action == "secret.use").collect();
    assert_eq!(uses.len(), 4, "one use per step on the one target");
    for (i, u) in uses.iter().rev().enumerate() {
        assert_eq!(u.detail["run"], json!(d.run.id));
        assert_eq!(u.detail["step"], json!(i), "{u:?}");
        assert_eq!(u.detail["target"], json!("local"));
    }
    assert!(
        audit
            .iter()
            .any(|e| e.action == "secret.create" && e.actor == "tester")
    );
}

/// A run masks every stored secret, also one set, changed or deleted by
/// another engine on the same database since this engine's last run: the
/// decrypted values an engine keeps between run starts are checked against
/// the stored versions at each start, never trusted for a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_set_by_another_engine_is_masked_in_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let k = KeyBytes::generate().unwrap();
    let a = engine(&url, ring(&[(1, &k)])).await.unwrap();
    let b = engine(&url, ring(&[(1, &k)])).await.unwrap();
    let first = random_value(1);
    set(&a, "first", &first).await;
    // The job prints a file the test writes: values a job was never given.
    let file = dir.path().join("leak.txt");
    let yaml = format!(
        "kind: Job\nname: leak\nsteps:\n  - exec: cat {}\n",
        file.display()
    );
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let (d, out) = run_job(&a, &yaml, "leak").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(
        out, "***\n",
        "a run on `a` masks (and caches) the first value"
    );

    // Another engine adds a secret and changes the first one.
    let second = random_value(2);
    let changed = random_value(3);
    set(&b, "second", &second).await;
    set(&b, "first", &changed).await;
    std::fs::write(&file, format!("{second}\n{changed}\n{first}\n")).unwrap();
    let (d, out) = run_job(&a, &yaml, "leak").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(
        out,
        format!("***\n***\n{first}\n"),
        "the next run on `a` masks what `b` set (and no longer the replaced value)"
    );

    // Another engine deletes one: it is no longer a secret anywhere.
    b.delete_secret("second", false, &me()).await.unwrap();
    let (_, out) = run_job(&a, &yaml, "leak").await;
    assert_eq!(out, format!("{second}\n***\n{first}\n"));
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
    assert!(
        oc.runs(&Default::default(), &me())
            .await
            .unwrap()
            .is_empty()
    );
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
    let h = oc
        .secret_history("nope", &opsconductor::Actor::new("test"))
        .await
        .unwrap();
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
    let mut ever = Vec::new();
    for i in 0..30 {
        let v = random_value(i);
        set(&oc, &format!("p{i}"), &v).await;
        values.push(v.clone());
        ever.push(v);
    }
    for (i, v) in values.iter_mut().enumerate().step_by(3) {
        *v = random_value(500 + i);
        set(&oc, &format!("p{i}"), v).await;
        ever.push(v.clone());
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
    for v in &ever {
        assert!(
            !contains(&dump.stdout, v.as_bytes()),
            "a secret value is in the PostgreSQL dump"
        );
        for form in base64_forms(v.as_bytes()) {
            assert!(
                !contains(&dump.stdout, form.as_bytes()),
                "a base64 form of a secret value ({form}) is in the PostgreSQL dump"
            );
        }
        // `bytea` columns are dumped as hex (`\\x…`).
        let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(
            !contains(&dump.stdout, hex.as_bytes()),
            "a secret value is in the PostgreSQL dump as hex"
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
    let keys = oc
        .key_versions(&opsconductor::Actor::new("test"))
        .await
        .unwrap();
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

/// A secret longer than 57 bytes comes out of GNU `base64` on several lines
/// (76 columns); it is masked there, cut after its first line, and inside a
/// larger encoded blob, in the logs as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_secrets_piped_through_base64_are_masked_in_stored_logs() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let oc = engine(&url, ring(&[(1, &KeyBytes::generate().unwrap())]))
        .await
        .unwrap();
    let value = format!("{}/{}", random_value(1), random_value(2));
    assert!(value.len() >= 58, "long enough to wrap");
    set(&oc, "long", &value).await;
    // (command, bytes before the value in what it encodes)
    let commands = [
        ("printf %s \"$LONG\" | base64", 0usize),
        ("printf %s \"$LONG\" | base64 | head -n 1", 0),
        ("printf 'user:%s' \"$LONG\" | base64", 5),
        ("printf 'ab%s@host' \"$LONG\" | base64 -w 64", 2),
        ("printf 'x%s\\n' \"$LONG\" | base64 -w 0; echo", 1),
    ];
    let steps: String = commands
        .iter()
        .map(|(c, _)| format!("  - exec: {}\n", serde_json::to_string(c).unwrap()))
        .collect();
    let yaml = format!("kind: Job\nname: b64\nsecrets: [long]\nsteps:\n{steps}");
    let (d, logs) = run_job(&oc, &yaml, "b64").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert!(!logs.contains(&value), "{logs}");
    let joined = logs.replace(['\r', '\n'], "");
    let files = db_files(dir.path());
    for (cmd, prefix) in commands {
        let real = std::process::Command::new("sh")
            .args(["-c", cmd])
            .env("LONG", &value)
            .output()
            .unwrap();
        let real = String::from_utf8(real.stdout).unwrap();
        // No line of what the command really prints is in the log or the database…
        for line in real.lines().filter(|l| l.len() >= 16) {
            assert!(!logs.contains(line), "{cmd}: {line} leaked: {logs}");
            assert!(
                !contains(&files.main, line.as_bytes()) && !contains(&files.wal, line.as_bytes()),
                "{cmd}: {line} is in the database"
            );
        }
        // …nor any 8 characters of the part of its encoding only the value determines.
        let enc = real.replace('\n', "");
        let first = (8 * prefix).div_ceil(6);
        let end = if cmd.contains("head") {
            76
        } else {
            8 * (prefix + value.len()) / 6
        };
        let inner = &enc[first..end];
        for w in inner.as_bytes().windows(8) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!joined.contains(w), "{cmd}: {w} of {inner} leaked: {logs}");
        }
    }
    assert!(logs.matches("***").count() >= commands.len(), "{logs}");
}

/// A step's error can quote what it was given; stored in the step result
/// and the run, it is masked like output.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_errors_are_stored_masked() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let oc = engine(&url, ring(&[(1, &KeyBytes::generate().unwrap())]))
        .await
        .unwrap();
    let value = random_value(3);
    set(&oc, "tok", &value).await;
    let yaml = "kind: Job\nname: cp\nsecrets: [tok]\nparams:\n  type: object\n  properties:\n    name: {type: string}\n\
        steps:\n  - copy:\n      dest: \"/nonexistent-opsc-dir/{{ params.name }}\"\n      content: x\n";
    let batch = opsconductor::spec::parse_str(yaml, "t.yaml", None).unwrap();
    oc.apply(&batch, &me()).await.unwrap();
    // A submitter who passes the secret's value where it ends up in an error message.
    let run = oc
        .submit(
            SubmitRequest::new("cp").params(json!({ "name": value })),
            &me(),
        )
        .await
        .unwrap();
    let d = oc.execute(run.id).await.unwrap();
    assert_eq!(d.status, RunStatus::Failed);
    let d = oc.run(d.id, &me()).await.unwrap();
    let step_error = d.results[0].error.clone().unwrap();
    assert!(step_error.contains("does not exist"), "{step_error}");
    assert!(
        !step_error.contains(&value) && step_error.contains("***"),
        "{step_error}"
    );
    let run_error = d.run.error.unwrap();
    assert!(
        !run_error.contains(&value) && run_error.contains("***"),
        "{run_error}"
    );
}

/// Update, delete, key rotation and retirement each write an audit event
/// with the right action and object; every use by a run names the run, the
/// step and the target, for declared secrets and target credentials alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_and_use_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let k1 = KeyBytes::generate().unwrap();
    let k2 = KeyBytes::generate().unwrap();
    let oc = engine(&url, ring(&[(1, &k1)])).await.unwrap();
    set(&oc, "tok", "first-value-1234").await;
    set(&oc, "tok", "second-value-5678").await;
    set(&oc, "box-cred", "credential-value-9").await;
    let yaml = "kind: Target\nname: box\ncredential: box-cred\nconnection: {type: local}\n---\n\
        kind: Job\nname: two\ntargets: box\nsecrets: [tok]\nsteps:\n  - name: one\n    exec: 'true'\n  - name: two\n    exec: 'true'\n";
    let (d, _) = run_job(&oc, yaml, "two").await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);

    let events = |object: &'static str| {
        let oc = oc.clone();
        async move { oc.audit_log(Some(object), 100, &me()).await.unwrap() }
    };
    let tok = events("secret:tok").await;
    let update = tok.iter().find(|e| e.action == "secret.update").unwrap();
    assert_eq!(
        (update.actor.as_str(), &update.detail["version"]),
        ("tester", &json!(2))
    );
    let uses: Vec<_> = tok
        .iter()
        .rev()
        .filter(|e| e.action == "secret.use")
        .collect();
    assert_eq!(uses.len(), 2, "one use per step on the one target");
    for (i, u) in uses.iter().enumerate() {
        assert_eq!(u.object, "secret:tok");
        assert_eq!(u.detail["run"], json!(d.run.id));
        assert_eq!(u.detail["step"], json!(i));
        assert_eq!(u.detail["step_name"], json!(["one", "two"][i]));
        assert_eq!(u.detail["target"], json!("box"));
    }
    let cred = events("secret:box-cred").await;
    let cred_uses: Vec<_> = cred.iter().filter(|e| e.action == "secret.use").collect();
    assert_eq!(cred_uses.len(), 1, "one session per target per run");
    let c = cred_uses[0];
    assert_eq!(c.detail["run"], json!(d.run.id));
    assert_eq!(
        c.detail["step"],
        json!(0),
        "the step that opened the session"
    );
    assert_eq!(c.detail["step_name"], json!("one"));
    assert_eq!(c.detail["target"], json!("box"));
    assert_eq!(c.detail["as"], json!("credential"));

    oc.delete_secret("tok", true, &me()).await.unwrap();
    let del = events("secret:tok").await;
    assert_eq!(del[0].action, "secret.delete", "{:?}", del[0]);
    assert_eq!(del[0].actor, "tester");
    drop(oc);

    let oc = engine(&url, ring(&[(1, &k1), (2, &k2)])).await.unwrap();
    oc.rotate_key(&me()).await.unwrap();
    let rot = oc.audit_log(Some("key:2"), 10, &me()).await.unwrap();
    assert_eq!(rot.len(), 1, "{rot:?}");
    assert_eq!(
        (rot[0].action.as_str(), rot[0].actor.as_str()),
        ("key.rotate", "tester")
    );
    assert_eq!(rot[0].detail["rewrapped"], json!(1));
    oc.retire_key(1, &me()).await.unwrap();
    let ret = oc.audit_log(Some("key:1"), 10, &me()).await.unwrap();
    assert_eq!(ret.len(), 1, "{ret:?}");
    assert_eq!(
        (ret[0].action.as_str(), ret[0].actor.as_str()),
        ("key.retire", "tester")
    );
}
