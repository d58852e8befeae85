//! Tidy test (in the rust-analyzer sense: it reads the source tree): the
//! engine is the only door. A front end (CLI, server, Python module) that
//! names the store traits or reaches for a store goes around the actor
//! checks and the audit events the engine applies, so none may.

use std::path::{Path, PathBuf};

/// The front ends' sources.
const FRONT_ENDS: [&str; 3] = ["cli/src", "http/src", "python/src"];

/// Store traits, as whole words.
const TRAITS: [&str; 9] = [
    "Store",
    "TargetStore",
    "JobStore",
    "RunStore",
    "LogStore",
    "RetentionStore",
    "UserStore",
    "SecretStore",
    "AuditStore",
];

/// Paths and calls that reach a store.
const CALLS: [&str; 5] = [
    "opsconductor_core::store",
    "opsconductor::store",
    ".store()",
    "open_store",
    "store_arc",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whole-word occurrences of `word` in `line`, except the unrelated
/// `Error::Store` / `ErrorKind::Store` (an error, not the trait).
fn names_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        before.is_none_or(|c| !is_ident(c))
            && after.is_none_or(|c| !is_ident(c))
            && !line[..i].ends_with("Error::")
            && !line[..i].ends_with("ErrorKind::")
    })
}

/// What in `text` goes around the engine, as `line: problem`.
fn findings(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // Code only: comments may say "store" in plain English.
        let line = line.split("//").next().unwrap_or("");
        for w in TRAITS {
            if names_word(line, w) {
                found.push(format!("{}: names the store trait `{w}`", n + 1));
            }
        }
        for c in CALLS {
            if line.contains(c) {
                found.push(format!("{}: uses `{c}`", n + 1));
            }
        }
    }
    found
}

#[test]
fn front_ends_reach_data_only_through_the_engine() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in FRONT_ENDS {
        let dir = crates.join(dir);
        assert!(dir.is_dir(), "{} is missing", dir.display());
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 10, "found only {files:?}");
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for p in findings(&text) {
            problems.push(format!("{}:{p}", f.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "front ends must go through the Conductor (which checks the actor and \
         audits), not the store:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_must_refuse() {
    assert_eq!(
        findings("let s = oc.store().read_logs(id, 0, 10);").len(),
        1
    );
    assert_eq!(findings("use opsconductor::store::RunFilter;").len(), 1);
    assert_eq!(findings("fn f(s: &dyn LogStore) {}").len(), 1);
    assert_eq!(findings("let x: Arc<dyn Store>;").len(), 1);
    assert!(findings("ErrorKind::Store => 503, Error::Store(m) => m").is_empty());
    assert!(findings("/// Store it now; StoreCapabilities").is_empty());
    assert!(findings("self.closed.store(true, Ordering::SeqCst);").is_empty());
}
