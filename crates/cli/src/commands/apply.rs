//! `opsconductor apply`: load job and target files and store them (all or nothing).

use std::io::Read;
use std::path::{Path, PathBuf};

use opsconductor::{Actor, ApplyBatch, Conductor, Error};

use crate::exit;
use crate::output::Out;

pub async fn apply(
    oc: &Conductor,
    out: &Out,
    files: &[PathBuf],
    dry_run: bool,
) -> Result<u8, Error> {
    let mut sources = Vec::new();
    for f in files {
        sources.extend(load_files(f)?);
    }
    // The engine checks each file on its own (errors name the file), names
    // both files of a duplicate and refuses an empty batch.
    let batch = oc.merge_sources(sources)?;
    if dry_run {
        oc.validate(&batch)?;
        if out.json {
            out.json(&serde_json::json!({"valid": true, "targets": batch.targets.len(), "jobs": batch.jobs.len()}));
        } else {
            println!(
                "valid: {} target(s), {} job(s) — dry run, nothing stored",
                batch.targets.len(),
                batch.jobs.len()
            );
        }
        return Ok(exit::OK);
    }
    let items = oc.apply(&batch, &Actor::local_user()).await?;
    if out.json {
        out.json(&items);
    } else {
        let rows = items
            .iter()
            .map(|i| {
                vec![
                    i.kind.to_string(),
                    i.name.clone(),
                    format!("{:?}", i.action).to_lowercase(),
                    i.version.map(|v| v.to_string()).unwrap_or_default(),
                ]
            })
            .collect();
        out.table(&["KIND", "NAME", "ACTION", "VERSION"], rows);
    }
    Ok(exit::OK)
}

/// Loads what one `-f` argument names, one batch per file: `-` (stdin), a
/// file, or every job file under a directory (the files `spec::load_path`
/// reads, in the same order).
fn load_files(arg: &Path) -> Result<Vec<(String, ApplyBatch)>, Error> {
    if arg.as_os_str() == "-" {
        let limit = opsconductor::spec::MAX_FILE_BYTES;
        let mut text = String::new();
        std::io::stdin()
            .take(limit + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::validation("<stdin>", format!("cannot read: {e}")))?;
        if text.len() as u64 > limit {
            return Err(Error::validation(
                "<stdin>",
                format!("more than {limit} bytes; the limit is {limit}"),
            ));
        }
        let b = opsconductor::spec::parse_str(
            &text,
            "<stdin>",
            std::env::current_dir().ok().as_deref(),
        )?;
        return Ok(vec![("<stdin>".into(), b)]);
    }
    let files = opsconductor::spec::files(arg)?;
    if files.len() <= 1 {
        // A plain file, or a directory with one or no job files: the core's
        // loader reads it or says what is wrong.
        return Ok(vec![(
            arg.display().to_string(),
            opsconductor::spec::load_path(arg)?,
        )]);
    }
    files
        .into_iter()
        .map(|f| Ok((f.display().to_string(), opsconductor::spec::load_path(&f)?)))
        .collect()
}
