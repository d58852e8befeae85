//! `opsconductor secrets …`: write-only values (read from stdin or a file,
//! never from the command line), metadata, history and master keys.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::Subcommand;
use opsconductor::{Actor, Conductor, Error, SetSecret};

use crate::exit;
use crate::output::{Out, local_time};

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

/// Dispatches one `secrets` subcommand.
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
            let req = SetSecret {
                name,
                kind,
                description,
                value,
            };
            set(oc, out, req, &me).await
        }
        SecretsCmd::List => list(oc, out).await,
        SecretsCmd::Show { name } => show(oc, out, &name).await,
        SecretsCmd::Delete { name, force } => {
            oc.delete_secret(&name, force, &me).await?;
            println!("secret '{name}' deleted");
            Ok(exit::OK)
        }
        SecretsCmd::RotateKey => rotate_key(oc, out, &me).await,
        SecretsCmd::RetireKey { version } => {
            oc.retire_key(version, &me).await?;
            println!("key version {version} retired");
            Ok(exit::OK)
        }
        SecretsCmd::Keys => keys(oc, out).await,
    }
}

async fn set(oc: &Conductor, out: &Out, req: SetSecret, me: &Actor) -> Result<u8, Error> {
    let r = oc.set_secret(req, me).await?;
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
    Ok(exit::OK)
}

async fn list(oc: &Conductor, out: &Out) -> Result<u8, Error> {
    let list = oc.secrets(&Actor::local_user()).await?;
    if out.json {
        out.json(&list);
        return Ok(exit::OK);
    }
    if list.is_empty() {
        out.note("no secrets yet — add one with `opsconductor secrets set NAME` (value on stdin)");
        return Ok(exit::OK);
    }
    let rows = list
        .iter()
        .map(|s| {
            let mut used: Vec<String> = s.used_by_jobs.iter().map(|j| format!("job:{j}")).collect();
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
    Ok(exit::OK)
}

async fn show(oc: &Conductor, out: &Out, name: &str) -> Result<u8, Error> {
    let s = oc.secret(name, &Actor::local_user()).await?;
    let history = oc.secret_history(name, &Actor::local_user()).await?;
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
    Ok(exit::OK)
}

async fn rotate_key(oc: &Conductor, out: &Out, me: &Actor) -> Result<u8, Error> {
    let r = oc.rotate_key(me).await?;
    if out.json {
        out.json(&r);
        return Ok(exit::OK);
    }
    let how = if r.new_version {
        "new key version"
    } else {
        "resumed rotation to key version"
    };
    println!(
        "{how} {}: {} of {} secret(s) re-encrypted",
        r.key_version, r.rewrapped, r.total
    );
    println!("old key versions can be retired with `opsconductor secrets retire-key VERSION`");
    Ok(exit::OK)
}

async fn keys(oc: &Conductor, out: &Out) -> Result<u8, Error> {
    let keys = oc.key_versions(&Actor::local_user()).await?;
    if out.json {
        let v: Vec<_> = keys
            .iter()
            .map(|k| serde_json::json!({"version": k.version, "created_at": k.created_at, "retired_at": k.retired_at, "passphrase": k.salt.is_some()}))
            .collect();
        out.json(&v);
        return Ok(exit::OK);
    }
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
    Ok(exit::OK)
}
