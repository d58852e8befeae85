//! Schedules from the command line: `apply -f examples/schedules/` and
//! `schedules next` on the embedded default, the `schedules` commands,
//! `runs list --schedule`, and EXACTLY ONCE across scheduler processes —
//! 3 on one SQLite file and 4 on one PostgreSQL database, over more than
//! 500 fire times, one of them killed with SIGKILL in the middle of a tick.
//!
//! The processes share a fast TEST clock (`OPSC_TEST_CLOCK`, test only:
//! ten times real time from a common origin), so 60 fire seconds pass in 6.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use opsconductor::Actor;
use opsconductor::store::RunFilter;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn apply_examples_and_next_on_the_embedded_default() {
    let env = Env::new();
    let dir = examples().join("../schedules");
    // No --database-url: the embedded default in the working directory.
    let bare = |args: &[&str]| {
        let mut c = assert_cmd::Command::cargo_bin("opsconductor").unwrap();
        c.current_dir(env.path())
            .env_remove("OPSC_DATABASE_URL")
            .env_remove("OPSC_MASTER_KEY")
            .env_remove("OPSC_MASTER_KEY_FILE")
            .env_remove("OPSC_MASTER_PASSPHRASE")
            .args(args);
        c
    };
    let a = bare(&["apply", "-f"]).arg(&dir).assert().success();
    let out = stdout_of(&a);
    assert!(out.contains("nightly-backup"), "{out}");
    let a = bare(&["schedules", "next", "nightly-backup", "--count", "3"])
        .assert()
        .success();
    let out = stdout_of(&a);
    let lines = lines(&out);
    assert_eq!(lines.len(), 3, "{out}");
    for l in lines {
        // UTC, then Berlin local time 02:30.
        assert!(l.contains("T02:30:00+0"), "{l}");
    }
    let a = bare(&["--json", "schedules", "list"]).assert().success();
    let list: serde_json::Value = serde_json::from_str(&stdout_of(&a)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(env.path().join("opsconductor.db").exists());
}

#[test]
fn schedules_commands_and_runs_list_by_schedule() {
    let env = Env::new();
    env.apply_yaml(
        "s.yaml",
        "kind: Job\nname: j\nsteps: [{exec: \"true\"}]\n---\nkind: Schedule\nname: hourly\njob: j\ncron: \"@hourly\"\n",
    );
    env.cmd(["schedules", "pause", "hourly"]).assert().success();
    let show = env.json(["schedules", "show", "hourly"]);
    assert_eq!(show["state"], "paused", "{show}");
    env.cmd(["schedules", "resume", "hourly"])
        .assert()
        .success();
    let a = env
        .cmd(["schedules", "run-now", "hourly"])
        .assert()
        .success();
    let id = stdout_of(&a).trim().to_string();
    let runs = env.json(["runs", "list", "--schedule", "hourly"]);
    assert_eq!(runs[0]["id"], id.as_str(), "{runs}");
    assert_eq!(runs[0]["schedule"]["name"], "hourly");
    let none = env.json(["runs", "list", "--schedule", "other"]);
    assert!(none.as_array().unwrap().is_empty());
    // Bad input: exit 2, file:line:col, nothing stored.
    let f = env.write(
        "bad.yaml",
        "kind: Schedule\nname: bad\njob: j\ncron: \"0 3 * * *\"\ntimezone: Nowhere/City\n",
    );
    let a = env.cmd(["apply", "-f"]).arg(&f).assert().code(2);
    let err = stderr_of(&a);
    assert!(err.contains("bad.yaml:5:11"), "{err}");
    env.cmd(["schedules", "show", "bad"]).assert().code(2);
    env.cmd(["schedules", "next", "hourly", "--count", "0"])
        .assert()
        .code(2);
    env.cmd(["schedules", "delete", "hourly"])
        .assert()
        .success();
    env.cmd(["schedules", "show", "hourly"]).assert().code(2);
}

const SCHEDULES: usize = 3;
const KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// A scheduler-only worker on `url` with the shared test clock.
fn scheduler(env: &Env, url: &str, clock: &str, hold_ms: Option<u64>) -> Child {
    let mut c = std::process::Command::new(bin());
    c.current_dir(env.path())
        .args(["--database-url", url, "worker", "--scheduler-only"])
        .env("OPSC_MASTER_KEY", KEY)
        .env("OPSC_TEST_CLOCK", clock)
        .env("OPSC_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(ms) = hold_ms {
        c.env("OPSC_TEST_SCHEDULER_HOLD_MS", ms.to_string());
    }
    c.spawn().unwrap()
}

/// Every run of every schedule, with its nominal fire time.
async fn fire_times(oc: &opsconductor::Conductor) -> BTreeMap<String, Vec<DateTime<Utc>>> {
    let mut out: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut before = None;
    loop {
        let page = oc
            .runs(
                &RunFilter {
                    limit: 1000,
                    before,
                    ..Default::default()
                },
                &Actor::new("t"),
            )
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        for r in &page {
            let s = r.schedule.as_ref().expect("only scheduled runs here");
            out.entry(s.name.clone())
                .or_default()
                .push(s.fire_time.expect("a nominal fire time"));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// `n` scheduler processes on `url` for about `secs` real seconds; one of
/// them (with a held transaction) is killed with SIGKILL in a tick. Then:
/// every fire time from each schedule's first to its cursor has exactly one
/// run, and there are at least 500 of them.
fn exactly_once(env: &Env, url: &str, n: usize, secs: u64) {
    let rt = rt();
    let oc = rt.block_on(async {
        let store = opsconductor::open_store(url).await.unwrap();
        let key = opsconductor::secrets::KeyBytes::from_base64(KEY, "k").unwrap();
        let ring = opsconductor::secrets::Keyring::from_keys(
            [(1, key)],
            opsconductor::secrets::KeySource::Env,
        )
        .unwrap();
        opsconductor::Conductor::builder()
            .store_arc(store)
            .keyring(ring)
            .build()
            .await
            .unwrap()
    });
    let mut yaml = String::from("kind: Job\nname: tick\nsteps: [{exec: \"true\"}]\n");
    for i in 0..SCHEDULES {
        yaml.push_str(&format!(
            "---\nkind: Schedule\nname: s{i}\njob: tick\ncron: \"* * * * * *\"\noverlap: allow\nmisfire: run_all\n"
        ));
    }
    let batch = opsconductor::spec::parse_str(&yaml, "x.yaml", None).unwrap();
    rt.block_on(oc.apply(&batch, &Actor::new("t"))).unwrap();
    let first: BTreeMap<String, DateTime<Utc>> = rt.block_on(async {
        oc.schedules(&Actor::new("t"))
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.schedule.spec.name.clone(), d.schedule.next_fire.unwrap()))
            .collect()
    });
    let clock = format!("{}:10", Utc::now().timestamp());
    let mut victim = scheduler(env, url, &clock, Some(300));
    let mut others: Vec<Child> = (1..n).map(|_| scheduler(env, url, &clock, None)).collect();
    // Kill the victim while a tick of it holds its decision open.
    let stderr = victim.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("fire transaction open") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let seen = rx.recv_timeout(PATIENCE).is_ok();
    assert!(seen, "the victim never reached a tick");
    std::thread::sleep(Duration::from_millis(100));
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
        for o in &mut others {
            assert!(o.try_wait().unwrap().is_none(), "a scheduler died");
        }
    }
    for mut o in others {
        o.kill().unwrap();
        o.wait().unwrap();
    }
    let got = rt.block_on(fire_times(&oc));
    let cursors: BTreeMap<String, DateTime<Utc>> = rt.block_on(async {
        oc.schedules(&Actor::new("t"))
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.schedule.spec.name.clone(), d.schedule.next_fire.unwrap()))
            .collect()
    });
    let mut total = 0;
    for (name, times) in &got {
        let from = first[name];
        let to = cursors[name];
        let expected: Vec<DateTime<Utc>> = (0..)
            .map(|s| from + chrono::Duration::seconds(s))
            .take_while(|t| *t < to)
            .collect();
        let dup = times.windows(2).filter(|w| w[0] == w[1]).count();
        assert_eq!(dup, 0, "{name}: {dup} fire times ran twice");
        assert_eq!(
            times.len(),
            expected.len(),
            "{name}: fire times lost (first {from}, cursor {to})"
        );
        assert_eq!(times, &expected, "{name}: every fire time once");
        total += times.len();
    }
    assert_eq!(got.len(), SCHEDULES);
    println!("{n} schedulers: {total} fire times, each exactly once");
    assert!(total >= 500, "only {total} fire times");
}

#[test]
fn exactly_once_with_three_schedulers_on_one_sqlite_file() {
    let env = Env::new();
    let url = env.url.clone();
    exactly_once(&env, &url, 3, 20);
}

#[test]
fn exactly_once_with_four_schedulers_on_one_postgresql() {
    let env = Env::new();
    let url = rt().block_on(opsconductor_store::testing::pg::fresh_database());
    exactly_once(&env, &url, 4, 20);
}
