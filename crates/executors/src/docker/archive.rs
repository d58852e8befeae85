//! Tar archives for the engine's archive API (`PUT /containers/{id}/archive`),
//! the only way to put a file into a container that has not started.

use std::time::{SystemTime, UNIX_EPOCH};

use opsconductor_core::executor::ExecError;

/// One regular file of an archive.
#[derive(Debug, Clone)]
pub(super) struct Entry<'a> {
    /// Path inside the archive, relative (`name`, `etc/app.conf`).
    pub path: &'a str,
    /// Content.
    pub content: &'a [u8],
    /// Permission bits.
    pub mode: u32,
    /// Numeric owner written into the header; `None` for root (the caller
    /// then asks the engine to use the container's user, or keeps root).
    pub owner: Option<(u64, u64)>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn tar_error(e: std::io::Error) -> ExecError {
    ExecError::Io(format!("cannot build the archive for the engine: {e}"))
}

/// An archive of regular files.
pub(super) fn files(entries: &[Entry<'_>]) -> Result<Vec<u8>, ExecError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mtime = now();
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(e.content.len() as u64);
        header.set_mode(e.mode & 0o7777);
        let (uid, gid) = e.owner.unwrap_or((0, 0));
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        builder
            .append_data(&mut header, e.path, e.content)
            .map_err(tar_error)?;
    }
    builder.into_inner().map_err(tar_error)
}

/// An archive holding only the directory `name` with `mode` (owned by
/// root): extracting it where `name` exists sets that directory's
/// permission bits. (The engine ignores a `./` entry, so the directory is
/// named from its parent.)
pub(super) fn directory(name: &str, mode: u32) -> Result<Vec<u8>, ExecError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(mode & 0o7777);
    header.set_mtime(now());
    builder
        .append_data(&mut header, format!("{name}/"), std::io::empty())
        .map_err(tar_error)?;
    builder.into_inner().map_err(tar_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_with_mode_and_owner() {
        let long = format!("{}/file", "d".repeat(150));
        let tar = files(&[
            Entry {
                path: "a.conf",
                content: b"hello",
                mode: 0o640,
                owner: Some((65534, 65534)),
            },
            Entry {
                path: &long,
                content: b"",
                mode: 0o755,
                owner: None,
            },
        ])
        .unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            seen.push((
                entry.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.size().unwrap(),
            ));
        }
        assert_eq!(
            seen,
            [("a.conf".to_owned(), 0o640, 65534, 5), (long, 0o755, 0, 0)]
        );
    }

    #[test]
    fn directory_is_one_directory_entry() {
        let tar = directory("tmp", 0o1777).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.entry_type(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [("tmp/".to_owned(), 0o1777, tar::EntryType::Directory)]
        );
    }
}
