//! Writing a file on the local host atomically: a temporary file in the
//! destination's directory, fsync, mode, then rename over the destination.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use opsconductor_core::executor::{ExecError, FileSpec, StepContext};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Permission bits a [`FileSpec::mode`] may carry (rwx for all, setuid,
/// setgid, sticky); anything above is ignored.
const MODE_MASK: u32 = 0o7777;

/// Writes `file` as described in the module docs.
pub(super) async fn copy(ctx: &StepContext, file: &FileSpec) -> Result<(), ExecError> {
    let stop = Stop {
        cancel: ctx.cancel.clone(),
        deadline: ctx.deadline,
    };
    stop.check()?;
    let dest = PathBuf::from(&file.dest);
    if !dest.is_absolute() {
        return Err(ExecError::Io(format!(
            "copy destination '{}' is not an absolute path",
            file.dest
        )));
    }
    let content = file.content.clone();
    let mode = file.mode & MODE_MASK;
    tokio::task::spawn_blocking(move || write_atomically(&dest, &content, mode, &stop))
        .await
        .map_err(|e| ExecError::Io(format!("copy to '{}' failed: {e}", file.dest)))?
}

/// Deadline and cancellation, checked between the steps of a copy: local I/O
/// is short, so it is honoured loosely but never after the rename.
struct Stop {
    cancel: CancellationToken,
    deadline: Option<Instant>,
}

impl Stop {
    fn check(&self) -> Result<(), ExecError> {
        if self.cancel.is_cancelled() {
            Err(ExecError::Cancelled)
        } else if self.deadline.is_some_and(|d| d <= Instant::now()) {
            Err(ExecError::TimedOut)
        } else {
            Ok(())
        }
    }
}

fn write_atomically(dest: &Path, content: &[u8], mode: u32, stop: &Stop) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;

    let shown = dest.display();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => {
            return Err(ExecError::Io(format!(
                "copy destination '{shown}' names no file"
            )));
        }
    };
    let dir = parent.display();
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(ExecError::Io(format!(
                "cannot copy to '{shown}': '{dir}' is not a directory"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExecError::Io(format!(
                "cannot copy to '{shown}': directory '{dir}' does not exist; create it first"
            )));
        }
        Err(e) => {
            return Err(ExecError::Io(format!(
                "cannot copy to '{shown}': directory '{dir}': {e}"
            )));
        }
    }
    let fail =
        |what: &str, e: io::Error| ExecError::Io(format!("cannot copy to '{shown}': {what}: {e}"));

    // Same directory, so same file system: the rename below is atomic. The
    // temporary file is removed if anything fails before the rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(".opsc-copy-")
        .tempfile_in(parent)
        .map_err(|e| fail(&format!("cannot create a temporary file in '{dir}'"), e))?;
    tmp.write_all(content)
        .map_err(|e| fail("writing the temporary file", e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(&format!("setting mode {mode:o}"), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| fail("flushing the temporary file", e))?;
    stop.check()?;
    tmp.persist(dest)
        .map_err(|e| fail("renaming the temporary file into place", e.error))?;
    // Make the rename itself durable; failing here loses no data already seen.
    if let Err(e) = std::fs::File::open(parent).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir, error = %e, "cannot fsync the directory after a copy");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn no_stop() -> Stop {
        Stop {
            cancel: CancellationToken::new(),
            deadline: None,
        }
    }

    #[test]
    fn writes_content_and_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        write_atomically(&dest, b"new\0bytes", 0o640, &no_stop()).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new\0bytes");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn cancelled_copy_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        let stop = no_stop();
        stop.cancel.cancel();
        let err = write_atomically(&dest, b"new", 0o600, &stop).unwrap_err();
        assert!(matches!(err, ExecError::Cancelled));
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_destination_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomically(dir.path(), b"x", 0o600, &no_stop()).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
