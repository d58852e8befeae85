//! `opsconductor targets …`: list, show, check and trust.

use std::io::IsTerminal;

use opsconductor::{Actor, Conductor, Connection, Error};

use crate::exit;
use crate::output::Out;

fn address(c: &Connection) -> String {
    match c {
        Connection::Local => "this host".into(),
        Connection::Ssh {
            host, port, user, ..
        } => format!("{user}@{host}:{port}"),
        Connection::Winrm {
            host, port, tls, ..
        } => format!("{}://{host}:{port}", if *tls { "https" } else { "http" }),
        Connection::Docker { image, .. } => image.clone(),
        _ => String::new(),
    }
}

pub async fn targets_list(oc: &Conductor, out: &Out) -> Result<u8, Error> {
    let targets = oc.targets(&Actor::local_user()).await?;
    if out.json {
        out.json(&targets);
        return Ok(exit::OK);
    }
    let rows = targets
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.connection.kind().to_string(),
                address(&t.connection),
                t.tags.join(","),
                t.description.clone(),
            ]
        })
        .collect();
    out.table(&["NAME", "KIND", "ADDRESS", "TAGS", "DESCRIPTION"], rows);
    Ok(exit::OK)
}

pub async fn targets_show(oc: &Conductor, out: &Out, name: &str) -> Result<u8, Error> {
    let t = oc.target(name, &Actor::local_user()).await?;
    if out.json {
        out.json(&t);
        return Ok(exit::OK);
    }
    let kv = |k: &str, v: String| println!("{} {v}", out.bold(&format!("{k:<12}")));
    kv("Target:", t.name.clone());
    kv("Kind:", t.connection.kind().to_string());
    kv("Address:", address(&t.connection));
    if !t.tags.is_empty() {
        kv("Tags:", t.tags.join(", "));
    }
    if !t.description.is_empty() {
        kv("Description:", t.description.clone());
    }
    for (k, v) in &t.vars {
        // A string as it is; anything else as JSON.
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        kv(&format!("var {k}:"), v);
    }
    if let Some(c) = &t.credential {
        kv("Credential:", format!("secret '{c}'"));
    }
    Ok(exit::OK)
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
    let (offered, pinned) = oc.offered_host_key(name, &Actor::local_user()).await?;
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
