//! Writing a file on the target atomically over SFTP: a temporary file in the
//! destination's directory (created exclusively, mode 0600), its content,
//! its mode (`fsetstat`, so no umask applies), `fsync` where the server
//! offers it, then a rename over the destination — `posix-rename@openssh.com`
//! where offered (atomic replace), else remove-then-rename (a short window
//! without the file, on servers without the extension). The temporary file
//! is removed on every failure.

use std::sync::Arc;
use std::time::Duration;

use opsconductor_core::executor::{ExecError, FileSpec, StepContext};
use opsconductor_core::model::RunId;
use russh::ChannelMsg;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Inner;

/// Permission bits a [`FileSpec::mode`] may carry; anything above is ignored.
const MODE_MASK: u32 = 0o7777;

/// Size of one SFTP write.
const WRITE_CHUNK: usize = 32 * 1024;

/// Writes in flight at once.
const WRITES_IN_FLIGHT: usize = 16;

/// Bound on opening the SFTP subsystem.
const SFTP_OPEN_LIMIT: Duration = Duration::from_secs(15);

/// Per-request timeout of the SFTP session, in seconds.
const SFTP_REQUEST_TIMEOUT_SECS: u64 = 60;

/// The session's SFTP channel and what its server supports.
pub(crate) struct Sftp {
    raw: Arc<RawSftpSession>,
    posix_rename: bool,
    fsync: bool,
}

impl Sftp {
    /// Closes the SFTP channel.
    pub(crate) fn close(&self) {
        if let Err(e) = self.raw.close_session() {
            tracing::debug!(error = %e, "cannot close the SFTP session");
        }
    }
}

async fn open_sftp(inner: &Inner) -> Result<Sftp, ExecError> {
    let label = inner.dest.label();
    let fail = |what: &str| ExecError::Io(format!("{label}: cannot start SFTP: {what}"));
    let work = async {
        let mut channel = inner
            .handle
            .channel_open_session()
            .await
            .map_err(|e| fail(&e.to_string()))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| fail(&e.to_string()))?;
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    return Err(fail(
                        "the server has no sftp subsystem (add `Subsystem sftp internal-sftp` \
                         to its sshd_config)",
                    ));
                }
                Some(ChannelMsg::Close) | None => {
                    return Err(fail("the server closed the channel"));
                }
                Some(_) => {}
            }
        }
        let raw = RawSftpSession::new(channel.into_stream());
        raw.set_timeout(SFTP_REQUEST_TIMEOUT_SECS);
        let version = raw.init().await.map_err(|e| fail(&e.to_string()))?;
        let has = |name: &str| version.extensions.get(name).is_some_and(|v| v == "1");
        Ok(Sftp {
            posix_rename: has("posix-rename@openssh.com"),
            fsync: has("fsync@openssh.com"),
            raw: Arc::new(raw),
        })
    };
    match tokio::time::timeout(SFTP_OPEN_LIMIT, work).await {
        Ok(result) => result,
        Err(_) => Err(fail(&format!("no answer within {SFTP_OPEN_LIMIT:?}"))),
    }
}

/// Splits an absolute destination into its directory and file name, or says
/// why it is not acceptable.
pub(crate) fn split_dest(dest: &str) -> Result<(&str, &str), String> {
    if !dest.starts_with('/') {
        return Err(format!("copy destination '{dest}' is not an absolute path"));
    }
    if dest.contains('\0') {
        return Err(format!("copy destination '{dest}' contains a NUL byte"));
    }
    if dest.split('/').any(|seg| seg == "..") {
        return Err(format!(
            "copy destination '{dest}' contains a '..' segment; give the path without it"
        ));
    }
    let (dir, name) = match dest.rfind('/') {
        Some(i) => (&dest[..i], &dest[i + 1..]),
        None => ("", dest),
    };
    if name.is_empty() || name == "." {
        return Err(format!("copy destination '{dest}' names no file"));
    }
    Ok((if dir.is_empty() { "/" } else { dir }, name))
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn is_status(e: &SftpError, code: StatusCode) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == code)
}

/// Writes `file` as described in the module docs.
pub(super) async fn copy(
    inner: &Inner,
    ctx: &StepContext,
    file: &FileSpec,
) -> Result<(), ExecError> {
    check_stop(ctx)?;
    let label = inner.dest.label();
    let dest = file.dest.as_str();
    let (dir, _) = split_dest(dest).map_err(|why| ExecError::Io(format!("{label}: {why}")))?;
    let sftp = inner.sftp.get_or_try_init(|| open_sftp(inner)).await?;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ExecError::Io(format!("{label}: cannot copy to '{dest}': {what}: {e}"))
    };

    match sftp.raw.stat(dir).await {
        Ok(attrs) if attrs.attrs.is_dir() => {}
        Ok(_) => {
            return Err(ExecError::Io(format!(
                "{label}: cannot copy to '{dest}': '{dir}' is not a directory"
            )));
        }
        Err(e) if is_status(&e, StatusCode::NoSuchFile) => {
            return Err(ExecError::Io(format!(
                "{label}: cannot copy to '{dest}': directory '{dir}' does not exist; create it first"
            )));
        }
        Err(e) => return Err(fail(&format!("directory '{dir}'"), &e)),
    }

    let tmp = join(dir, &format!(".opsc-copy-{}", RunId::new().0.simple()));
    let write = write_temp(sftp, &tmp, &file.content, file.mode & MODE_MASK);
    let stop = async {
        let deadline = async {
            match ctx.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = deadline => ExecError::TimedOut,
            () = ctx.cancel.cancelled() => ExecError::Cancelled,
        }
    };
    let written = tokio::select! {
        r = write => r.map_err(|(what, e)| fail(&what, &e)),
        e = stop => Err(e),
    };
    let renamed = match written.and_then(|()| check_stop(ctx)) {
        // From here on the copy completes: the rename is not interrupted.
        Ok(()) => rename(sftp, &tmp, dest)
            .await
            .map_err(|e| fail("renaming the temporary file into place", &e)),
        Err(e) => Err(e),
    };
    if renamed.is_err()
        && let Err(e) = sftp.raw.remove(tmp.as_str()).await
        && !is_status(&e, StatusCode::NoSuchFile)
    {
        tracing::warn!(%label, %tmp, error = %e, "cannot remove the temporary file of a failed copy");
    }
    renamed
}

fn check_stop(ctx: &StepContext) -> Result<(), ExecError> {
    if ctx.cancel.is_cancelled() {
        Err(ExecError::Cancelled)
    } else if ctx.deadline.is_some_and(|d| d <= Instant::now()) {
        Err(ExecError::TimedOut)
    } else {
        Ok(())
    }
}

/// Creates `tmp` exclusively and writes `content` with `mode`.
async fn write_temp(
    sftp: &Sftp,
    tmp: &str,
    content: &[u8],
    mode: u32,
) -> Result<(), (String, SftpError)> {
    let attrs = FileAttributes {
        permissions: Some(0o600),
        ..FileAttributes::empty()
    };
    let handle = sftp
        .raw
        .open(
            tmp,
            OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE,
            attrs,
        )
        .await
        .map_err(|e| (format!("creating the temporary file '{tmp}'"), e))?
        .handle;
    let result = async {
        let mut writes = JoinSet::new();
        let mut offset = 0usize;
        for chunk in content.chunks(WRITE_CHUNK) {
            if writes.len() >= WRITES_IN_FLIGHT
                && let Some(done) = writes.join_next().await
            {
                joined(done)?;
            }
            let raw = sftp.raw.clone();
            let handle = handle.clone();
            let data = chunk.to_vec();
            let at = offset as u64;
            writes.spawn(async move { raw.write(handle, at, data).await.map(|_| ()) });
            offset += chunk.len();
        }
        while let Some(done) = writes.join_next().await {
            joined(done)?;
        }
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        sftp.raw
            .fsetstat(handle.as_str(), attrs)
            .await
            .map_err(|e| (format!("setting mode {mode:o}"), e))?;
        if sftp.fsync {
            sftp.raw
                .fsync(handle.as_str())
                .await
                .map_err(|e| ("flushing the temporary file".to_owned(), e))?;
        }
        Ok(())
    }
    .await;
    let closed = sftp.raw.close(handle.as_str()).await;
    result?;
    closed
        .map(|_| ())
        .map_err(|e| ("closing the temporary file".to_owned(), e))
}

fn joined(
    done: Result<Result<(), SftpError>, tokio::task::JoinError>,
) -> Result<(), (String, SftpError)> {
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(("writing the temporary file".to_owned(), e)),
        Err(e) => Err((
            "writing the temporary file".to_owned(),
            SftpError::UnexpectedBehavior(e.to_string()),
        )),
    }
}

/// Renames `tmp` over `dest`, atomically where the server allows.
async fn rename(sftp: &Sftp, tmp: &str, dest: &str) -> Result<(), SftpError> {
    if sftp.posix_rename {
        let mut data = Vec::with_capacity(8 + tmp.len() + dest.len());
        for s in [tmp, dest] {
            let len = u32::try_from(s.len())
                .map_err(|_| SftpError::UnexpectedBehavior("path too long".into()))?;
            data.extend_from_slice(&len.to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        return match sftp.raw.extended("posix-rename@openssh.com", data).await? {
            russh_sftp::protocol::Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
            russh_sftp::protocol::Packet::Status(s) => Err(SftpError::Status(s)),
            _ => Err(SftpError::UnexpectedPacket),
        };
    }
    match sftp.raw.rename(tmp, dest).await {
        Ok(_) => Ok(()),
        Err(first) => {
            // SFTPv3 rename does not replace; remove the old file first.
            match sftp.raw.remove(dest).await {
                Ok(_) => {}
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Err(first),
                Err(e) => return Err(e),
            }
            sftp.raw.rename(tmp, dest).await.map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_checked() {
        assert_eq!(split_dest("/etc/app.conf"), Ok(("/etc", "app.conf")));
        assert_eq!(split_dest("/file"), Ok(("/", "file")));
        assert!(split_dest("relative/file").is_err());
        assert!(split_dest("/etc/../root/.ssh/authorized_keys").is_err());
        assert!(split_dest("/tmp/..").is_err());
        assert!(split_dest("/tmp/dir/").is_err());
        assert!(split_dest("/tmp/.").is_err());
        assert!(split_dest("/tmp/a\0b").is_err());
        assert_eq!(split_dest("/tmp/..x"), Ok(("/tmp", "..x")));
    }
}
