//! Commands that manage rather than run: secrets (write-only), the audit
//! log, and `worker`, which only executes runs queued by others.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use opsconductor::{Actor, Conductor, Error, SetSecret};

use crate::exit;
use crate::output::{Out, local_time};
use crate::signals::wait_for_signal;

/// `opsconductor secrets …`.
#[derive(Subcommand, Debug)]
pub enum SecretsCmd {
    /// Create or update a secret. The value is read from stdin or a file —
    /// never from the command line, where `ps` and shell history would see it.
    #[command(
        after_help = "Examples:\n  printf %s \"$DB_PASSWORD\" | opsconductor secrets set db-password --kind password\n  opsconductor secrets set deploy-key --kind ssh_key --from-file ~/.ssh/deploy_ed25519\n  opsconductor secrets set api-token        # prompts, input hidden"
    )]
    Set {
        /// Secret name (letters, digits, `_ . -`). Jobs list it under `secrets:`;
        /// it reaches commands as the variable NAME upper-cased (`db-password` → DB_PASSWORD).
        name: String,
        /// generic, password, ssh_key, token or certificate.
        #[arg(long)]
        kind: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// Read the value from this file (byte for byte).
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
        /// Keep a trailing newline read from stdin (it is dropped by default).
        #[arg(long)]
        keep_newline: bool,
    },
    /// List secrets: metadata and usage, never values.
    List,
    /// Show one secret's metadata, usage and change history (never the value).
    Show {
        /// Secret name.
        name: String,
    },
    /// Delete a secret (refused while jobs or targets use it, unless --force).
    Delete {
        /// Secret name.
        name: String,
        /// Delete even if jobs or targets use it.
        #[arg(long)]
        force: bool,
    },
    /// Re-encrypt every secret with a new master key version (resumable: run again if interrupted).
    RotateKey,
    /// Retire an old master key version once no secret uses it.
    RetireKey {
        /// The key version.
        version: u32,
    },
    /// List the master key versions this database knows.
    Keys,
}

/// `opsconductor worker`.
#[derive(Args, Debug)]
#[command(
    after_help = "Point every worker at the same database (PostgreSQL for several hosts):\n  OPSC_DATABASE_URL=postgres://ops@db/ops opsconductor worker --concurrency 8\n\nSIGTERM or Ctrl-C: stop claiming, let the runs in progress finish (up to --drain-timeout);\na second signal quits at once (unfinished runs are rescued by another worker when their lease expires)."
)]
pub struct WorkerArgs {
    /// Runs executed at the same time by this process.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Lease length: a run whose worker stops heartbeating is rescued after this.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "30s")]
    pub lease: Duration,
    /// Safety-net poll for queued runs. On PostgreSQL a submission wakes the
    /// workers at once (LISTEN/NOTIFY); this only bounds how late a missed
    /// wake-up is noticed. SQLite has no cross-process wake-ups and polls
    /// every 250 ms at most.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "1s")]
    pub poll: Duration,
    /// How long to wait for runs in progress on shutdown.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "5m")]
    pub drain_timeout: Duration,
    /// Prune finished runs older than this, periodically (default: keep forever).
    #[arg(long, env = "OPSC_RETENTION_RUNS", value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    pub retention_runs: Option<Duration>,
    /// Prune logs of finished runs older than this, periodically (may be shorter than runs).
    #[arg(long, env = "OPSC_RETENTION_LOGS", value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    pub retention_logs: Option<Duration>,
    /// How often the pruner runs when a retention is set.
    #[arg(long, value_parser = crate::commands::parse_duration, default_value = "1h")]
    pub retention_interval: Duration,
}

impl WorkerArgs {
    /// The engine's retention from the flags.
    pub fn retention(&self) -> opsconductor::Retention {
        opsconductor::Retention {
            runs: self.retention_runs,
            logs: self.retention_logs,
            interval: self.retention_interval,
            ..opsconductor::Retention::default()
        }
    }
}

fn read_value(
    from_file: Option<&PathBuf>,
    keep_newline: bool,
    name: &str,
) -> Result<Vec<u8>, Error> {
    if let Some(p) = from_file {
        return std::fs::read(p)
            .map_err(|e| Error::validation(p.display().to_string(), format!("cannot read: {e}")));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Value for secret '{name}' (input hidden, Enter to finish): ");
        let hide = std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status();
        let mut line = String::new();
        let read = stdin.read_line(&mut line);
        if hide.is_ok() {
            let _ = std::process::Command::new("stty")
                .arg("echo")
                .stdin(std::process::Stdio::inherit())
                .status();
        }
        eprintln!();
        read.map_err(|e| Error::validation("stdin", format!("cannot read: {e}")))?;
        return Ok(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
    }
    let mut v = Vec::new();
    stdin
        .lock()
        .take(opsconductor::MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| Error::validation("stdin", format!("cannot read: {e}")))?;
    if !keep_newline {
        if v.ends_with(b"\r\n") {
            v.truncate(v.len() - 2);
        } else if v.ends_with(b"\n") {
            v.truncate(v.len() - 1);
        }
    }
    Ok(v)
}

pub async fn secrets(oc: &Conductor, out: &Out, cmd: SecretsCmd) -> Result<u8, Error> {
    let me = Actor::local_user();
    match cmd {
        SecretsCmd::Set {
            name,
            kind,
            description,
            from_file,
            keep_newline,
        } => {
            let value = read_value(from_file.as_ref(), keep_newline, &name)?;
            let r = oc
                .set_secret(
                    SetSecret {
                        name,
                        kind,
                        description,
                        value,
                    },
                    &me,
                )
                .await?;
            for w in &r.warnings {
                out.warn(w);
            }
            if out.json {
                out.json(&r);
            } else {
                let verb = if r.created { "created" } else { "updated" };
                println!(
                    "secret '{}' {verb} (version {}, key version {})",
                    r.meta.name, r.meta.version, r.meta.key_version
                );
            }
        }
        SecretsCmd::List => {
            let list = oc.secrets().await?;
            if out.json {
                out.json(&list);
            } else if list.is_empty() {
                out.note("no secrets yet — add one with `opsconductor secrets set NAME` (value on stdin)");
            } else {
                let rows = list
                    .iter()
                    .map(|s| {
                        let mut used: Vec<String> =
                            s.used_by_jobs.iter().map(|j| format!("job:{j}")).collect();
                        used.extend(s.used_by_targets.iter().map(|t| format!("target:{t}")));
                        vec![
                            s.meta.name.clone(),
                            s.meta.kind.clone(),
                            s.meta.version.to_string(),
                            format!("{} by {}", local_time(s.meta.updated_at), s.meta.updated_by),
                            used.join(", "),
                            s.meta.description.clone(),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "NAME",
                        "KIND",
                        "VERSION",
                        "UPDATED",
                        "USED BY",
                        "DESCRIPTION",
                    ],
                    rows,
                );
            }
        }
        SecretsCmd::Show { name } => {
            let s = oc.secret(&name).await?;
            let history = oc.secret_history(&name).await?;
            if out.json {
                out.json(&serde_json::json!({"secret": s, "history": history}));
                return Ok(exit::OK);
            }
            let kv = |k: &str, v: String| println!("{} {v}", out.bold(&format!("{k:<13}")));
            kv("Secret:", s.meta.name.clone());
            kv("Kind:", s.meta.kind.clone());
            if !s.meta.description.is_empty() {
                kv("Description:", s.meta.description.clone());
            }
            kv("Value:", "(write-only: never shown)".into());
            kv(
                "Version:",
                format!(
                    "{} (master key version {})",
                    s.meta.version, s.meta.key_version
                ),
            );
            kv(
                "Created:",
                format!("{} by {}", local_time(s.meta.created_at), s.meta.created_by),
            );
            kv(
                "Updated:",
                format!("{} by {}", local_time(s.meta.updated_at), s.meta.updated_by),
            );
            kv("Jobs:", s.used_by_jobs.join(", "));
            kv("Targets:", s.used_by_targets.join(", "));
            println!();
            let rows = history
                .iter()
                .map(|h| {
                    vec![
                        local_time(h.at),
                        h.action.clone(),
                        h.version.to_string(),
                        h.by.clone(),
                    ]
                })
                .collect();
            out.table(&["WHEN", "CHANGE", "VERSION", "BY"], rows);
        }
        SecretsCmd::Delete { name, force } => {
            oc.delete_secret(&name, force, &me).await?;
            println!("secret '{name}' deleted");
        }
        SecretsCmd::RotateKey => {
            let r = oc.rotate_key(&me).await?;
            if out.json {
                out.json(&r);
            } else {
                let how = if r.new_version {
                    "new key version"
                } else {
                    "resumed rotation to key version"
                };
                println!(
                    "{how} {}: {} of {} secret(s) re-encrypted",
                    r.key_version, r.rewrapped, r.total
                );
                println!(
                    "old key versions can be retired with `opsconductor secrets retire-key VERSION`"
                );
            }
        }
        SecretsCmd::RetireKey { version } => {
            oc.retire_key(version, &me).await?;
            println!("key version {version} retired");
        }
        SecretsCmd::Keys => {
            let keys = oc.key_versions().await?;
            if out.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| serde_json::json!({"version": k.version, "created_at": k.created_at, "retired_at": k.retired_at, "passphrase": k.salt.is_some()}))
                    .collect();
                out.json(&v);
            } else {
                let rows = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.version.to_string(),
                            local_time(k.created_at),
                            k.retired_at
                                .map(local_time)
                                .unwrap_or_else(|| "active".into()),
                        ]
                    })
                    .collect();
                out.table(&["VERSION", "CREATED", "STATE"], rows);
            }
        }
    }
    Ok(exit::OK)
}

/// `opsconductor audit verify`.
#[derive(Subcommand, Debug, Clone)]
pub enum AuditCmd {
    /// Recompute the audit hash chain; exits 1 and names the first bad event if it was tampered with.
    #[command(
        after_help = "The chain alone cannot show that the newest events were deleted. Keep the head this\ncommand prints (SEQ:HASH) outside the database and pass it back:\n  opsconductor audit verify --anchor 1842:9f2c…"
    )]
    Verify {
        /// The head (`SEQ:HASH`) of an earlier verification, kept elsewhere: that event
        /// must still be there with that hash, so deleting the newest events is detected.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Option<String>,
    },
    /// Write the audit events (after the pruning checkpoint) as JSON lines, and record
    /// that they were exported: audit pruning never goes past the last export.
    Export {
        /// Only events up to this seq.
        #[arg(long, value_name = "SEQ")]
        until: Option<u64>,
        /// Write to this file (default: stdout).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Checks the audit chain; exit code 0 if intact, 1 if not.
pub async fn audit_verify(oc: &Conductor, out: &Out, anchor: Option<&str>) -> Result<u8, Error> {
    let anchor = match anchor {
        None => None,
        Some(a) => {
            let (seq, hash) = a
                .split_once(':')
                .and_then(|(s, h)| Some((s.trim().parse::<u64>().ok()?, h.trim())))
                .filter(|(_, h)| !h.is_empty())
                .ok_or_else(|| {
                    Error::validation(
                        "--anchor",
                        format!("{a:?} is not SEQ:HASH (as printed by an earlier `audit verify`)"),
                    )
                })?;
            Some((seq, hash))
        }
    };
    let v = oc.verify_audit_against(anchor).await?;
    if out.json {
        out.json(&v);
    } else if v.ok {
        println!("audit log intact: {} event(s) verified", v.events);
        if let (Some(seq), Some(hash)) = (v.head_seq, v.head_hash.as_deref()) {
            println!(
                "head: {seq}:{hash}\n  keep it outside the database; `audit verify --anchor {seq}:{hash}` later also detects deleted newest events"
            );
        }
    } else {
        println!(
            "audit log TAMPERED: event {} — {}",
            v.first_bad_seq.map(|s| s.to_string()).unwrap_or_default(),
            v.problem.as_deref().unwrap_or("")
        );
    }
    Ok(if v.ok { exit::OK } else { exit::FAILED })
}

pub async fn audit(
    oc: &Conductor,
    out: &Out,
    object: Option<String>,
    limit: usize,
) -> Result<u8, Error> {
    let events = oc.audit_log(object.as_deref(), limit).await?;
    if out.json {
        out.json(&events);
        return Ok(exit::OK);
    }
    let rows = events
        .iter()
        .map(|e| {
            vec![
                local_time(e.time),
                e.actor.clone(),
                e.action.clone(),
                e.object.clone(),
                if e.detail.is_null() {
                    String::new()
                } else {
                    e.detail.to_string()
                },
            ]
        })
        .collect();
    out.table(&["TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"], rows);
    Ok(exit::OK)
}

/// Runs workers until SIGTERM/SIGINT, then drains.
pub async fn worker(oc: &Conductor, out: &Out, args: &WorkerArgs) -> Result<u8, Error> {
    if args.concurrency == 0 {
        return Err(Error::validation("--concurrency", "must be at least 1"));
    }
    oc.start_workers(args.concurrency);
    out.note(&format!(
        "worker {} started: {} at a time on {} (lease {}) — SIGTERM or Ctrl-C to stop",
        oc.config().worker_name,
        args.concurrency,
        oc.store().backend(),
        opsconductor::duration::format(args.lease)
    ));
    wait_for_signal().await;
    out.note(&format!(
        "stopping: no new runs; waiting up to {} for runs in progress (signal again to quit now)",
        opsconductor::duration::format(args.drain_timeout)
    ));
    // Late in the drain period, runs still going are stopped (processes
    // killed) and recorded as interrupted before the process exits.
    let drain = oc.shutdown_within(args.drain_timeout);
    tokio::select! {
        ended = drain => {
            if ended {
                out.note("all runs in progress ended (finished or interrupted); bye");
                Ok(exit::OK)
            } else {
                out.note("drain timeout: quitting; unfinished runs will be rescued by another worker after their lease");
                Ok(exit::FAILED)
            }
        }
        _ = wait_for_signal() => {
            let n = oc.stop_active_runs();
            out.note(&format!("quitting now: stopping {n} run(s) in progress"));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), oc.shutdown()).await;
            Ok(exit::FAILED)
        }
    }
}

pub async fn targets_check(
    oc: &Conductor,
    out: &Out,
    selector: &str,
    concurrency: usize,
) -> Result<u8, Error> {
    let checks = oc
        .check_targets(&[selector.to_string()], concurrency, &Actor::local_user())
        .await?;
    let failed = checks.iter().filter(|c| !c.ok).count();
    if out.json {
        out.json(&checks);
    } else {
        let rows = checks
            .iter()
            .map(|c| {
                vec![
                    c.target.clone(),
                    c.kind.clone(),
                    if c.ok {
                        out.paint("\x1b[32m", "ok")
                    } else {
                        out.paint("\x1b[31m", "error")
                    },
                    format!("{} ms", c.latency_ms),
                    c.probe.as_ref().map(|p| p.os.clone()).unwrap_or_default(),
                    c.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.table(
            &["TARGET", "KIND", "STATUS", "LATENCY", "OS", "ERROR"],
            rows,
        );
        out.note(&format!("{} ok, {failed} failed", checks.len() - failed));
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILED })
}

pub async fn targets_trust(oc: &Conductor, out: &Out, name: &str, yes: bool) -> Result<u8, Error> {
    let (offered, pinned) = oc.offered_host_key(name).await?;
    if pinned.as_deref() == Some(offered.as_str()) {
        println!("target '{name}' already pins {offered}");
        return Ok(exit::OK);
    }
    eprintln!("target '{name}' offers the host key {offered}");
    if let Some(p) = &pinned {
        out.warn(&format!("it CHANGED: the target pins {p}. Make sure the host was really re-installed before you accept."));
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::validation(
                "--yes",
                "not a terminal: compare the key with `ssh-keygen -lf` on the host, then pass --yes",
            ));
        }
        eprint!(
            "Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the host. Trust it? [y/N] "
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| Error::validation("stdin", e.to_string()))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("not trusted; nothing changed");
            return Ok(exit::FAILED);
        }
    }
    oc.trust_host_key(name, &offered, &Actor::local_user())
        .await?;
    println!("target '{name}' now pins {offered}");
    Ok(exit::OK)
}
