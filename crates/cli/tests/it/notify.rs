//! Notifications through the real binary: channels from files, a test
//! delivery, the history, and kill -9 of the delivering worker mid-delivery
//! (the receiver holds the first request open): the next worker delivers
//! the same event again — at least once, exactly once after de-duplication
//! by event id.

use std::collections::HashSet;
use std::time::Duration;

use opsconductor_store::testing::receivers::{HttpReceiver, Reply};

use crate::common::{self, Env};

fn setup(env: &Env, url: &str) {
    env.std_cmd(["secrets", "set", "hook-key"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"whsec-cli-test-key-123")?;
            c.wait()
        })
        .unwrap();
    let f = env.write(
        "hook.yaml",
        &format!("kind: webhook\nurl: {url}/hook\nsigning_secret: hook-key\n"),
    );
    env.cmd(["notifications", "channels", "set", "hook", "-f"])
        .arg(&f)
        .assert()
        .success();
    env.apply_yaml(
        "j.yaml",
        "kind: Job\nname: j\nsteps:\n  - exec: 'echo bye; exit 4'\nnotify:\n  - on: [run.failed]\n    channels: [hook]\n",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_test_delivery_and_bad_files() {
    let env = Env::new();
    let r = HttpReceiver::start().await;
    setup(&env, &r.url);
    let list = env.json(["notifications", "channels", "list"]);
    assert_eq!(list[0]["name"], "hook");
    assert_eq!(list[0]["kind"], "webhook");
    assert_eq!(list[0]["signing_secret"], "hook-key");
    let t = env.json(["notifications", "test", "hook"]);
    assert_eq!(t["delivered"], true, "{t}");
    assert_eq!(
        r.wait_for(1, Duration::from_secs(10)).await[0].json()["type"],
        "notification.test"
    );
    // A channel that cannot deliver: non-zero exit, the reason on stderr.
    let f = env.write("dead.yaml", "kind: webhook\nurl: http://127.0.0.1:9/\n");
    env.cmd(["notifications", "channels", "set", "dead", "-f"])
        .arg(&f)
        .assert()
        .success();
    env.cmd(["notifications", "test", "dead"]).assert().code(1);
    // Bad files: the place is named, nothing stored.
    let bad = env.write("bad.yaml", "kind: webhook\nurl: ftp://x.example/\n");
    let out = env
        .cmd(["notifications", "channels", "set", "bad", "-f"])
        .arg(&bad)
        .assert()
        .failure();
    assert!(
        common::stderr_of(&out).contains("url"),
        "{}",
        common::stderr_of(&out)
    );
    let typo = env.write(
        "typo.yaml",
        "kind: webhook\nurl: https://x.example/\nsigning_secret: k\nbogus: 1\n",
    );
    let out = env
        .cmd(["notifications", "channels", "set", "bad", "-f"])
        .arg(&typo)
        .assert()
        .failure();
    assert!(
        common::stderr_of(&out).contains("typo.yaml"),
        "{}",
        common::stderr_of(&out)
    );
    let names: Vec<String> = env
        .json(["notifications", "channels", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["dead", "hook"]);
    env.cmd(["notifications", "history", "--limit", "0"])
        .assert()
        .failure();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_then_restart_delivers_the_same_event() {
    let env = Env::new();
    let r = HttpReceiver::start().await;
    setup(&env, &r.url);
    // The first request is held open far longer than the test waits.
    r.plan([Reply::Hang(Duration::from_secs(120))]);
    env.cmd(["run", "j"]).assert().code(4);
    let run_id = env.runs()[0]["id"].as_str().unwrap().to_string();
    let pending = env.json(["notifications", "history", "--run", &run_id]);
    assert_eq!(pending[0]["status"], "pending", "{pending}");

    // Worker A claims and sends; the receiver holds the request; kill -9.
    let mut a = env.spawn(["worker", "--lease", "3s"]);
    let first = r.wait_for(1, Duration::from_secs(30)).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &a.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = a.wait();
    let mid = env.json(["notifications", "history", "--run", &run_id]);
    assert_eq!(
        mid[0]["status"], "delivering",
        "held by the dead worker: {mid}"
    );

    // Worker B takes it over once A's lease ends and delivers it.
    let started = std::time::Instant::now();
    let b = env.spawn(["worker", "--lease", "3s"]);
    let all = r.wait_for(2, Duration::from_secs(60)).await;
    let takeover = started.elapsed();
    let ids: HashSet<&str> = all
        .iter()
        .map(|x| x.header("x-opsconductor-event-id").unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "the same event id every time: exactly once after de-dup"
    );
    assert_eq!(all[0].body, first[0].body, "the same event");
    assert!(
        all[1]
            .header("x-opsconductor-signature")
            .unwrap()
            .starts_with("v1=")
    );
    assert!(common::wait_until(Duration::from_secs(20), || {
        env.json(["notifications", "history", "--run", &run_id])[0]["status"] == "delivered"
    }));
    let h = env.json(["notifications", "history", "--run", &run_id]);
    let attempts = h[0]["attempts"].as_array().unwrap();
    assert_eq!(
        h[0]["attempts"].as_array().unwrap().len(),
        1,
        "A's attempt died with it: {h}"
    );
    assert_eq!(attempts[0]["n"], 2, "B's is the second claim");
    assert_eq!(attempts[0]["code"], 200);
    eprintln!("kill -9 mid-delivery: re-delivered {takeover:?} after the restart");
    std::process::Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    let (code, _, _) = common::finish(b);
    assert_eq!(code, Some(0), "worker B stops cleanly");
}
