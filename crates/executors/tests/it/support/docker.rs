//! The Docker test image `opsc-test/busybox:1`, built on this machine when
//! the engine lacks it (no registry can be assumed): Debian's
//! `busybox-static` package (`apt-get download`, so no network but the
//! Debian mirror), a root file system with `/bin/busybox` and the applets
//! the tests use, imported with `docker import`. The `.deb` and the archive
//! are cached under `target/opsc-docker-fixture/`, so a rebuild after
//! `docker rmi` takes a second.
//!
//! Needs: a running Docker engine and its CLI (`docker`), `apt-get` and
//! `dpkg-deb` (Debian or Ubuntu), `tar`. Anything missing is an error with
//! what to install; nothing is skipped.
//!
//! Plain `std` on purpose: the executor tests and the benchmark of the
//! facade crate (`benches/docker_step.rs`) both include this file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The test image.
pub const TEST_IMAGE: &str = "opsc-test/busybox:1";

/// The busybox applets linked into `/bin` (what the executor behaviour
/// suite, the Docker tests and the benchmark run).
pub const APPLETS: &[&str] = &[
    "sh", "echo", "printf", "cat", "sleep", "ls", "head", "dd", "id", "env", "tr", "mkdir", "rm",
    "kill", "stat", "wc", "grep", "uname", "true", "false", "test", "[", "pwd", "tail", "touch",
    "mv", "cp", "chmod", "nc", "wget", "seq", "sort", "df", "cut", "du",
];

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cargo target directory (the one holding the running binary), for
/// the cache.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().ok();
    let target = exe.as_deref().and_then(|exe| {
        exe.ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "target"))
    });
    if let Some(t) = target {
        return t.to_path_buf();
    }
    std::env::temp_dir()
}

/// Fails with a clear message unless the engine answers; returns its version.
pub fn engine_version() -> Result<String, String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| {
            format!(
                "the Docker CLI cannot be run ({e}); these tests need a Docker engine and its CLI: \
                 apt-get install -y docker.io and start the engine (dockerd)"
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "the Docker engine is unreachable: {} — these tests need a running Docker engine \
             at /var/run/docker.sock (apt-get install -y docker.io; start dockerd)",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure [`TEST_IMAGE`] exists on the engine, building it if needed;
/// returns its name.
pub fn ensure_test_image() -> Result<String, String> {
    engine_version()?;
    if image_present(TEST_IMAGE) {
        return Ok(TEST_IMAGE.to_owned());
    }
    let cache = target_dir().join("opsc-docker-fixture");
    fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    // One builder at a time (test binaries and the benchmark may race).
    let lock = fs::File::create(cache.join(".lock"))
        .map_err(|e| format!("cannot create the lock file in {}: {e}", cache.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", cache.display()))?;
    if image_present(TEST_IMAGE) {
        return Ok(TEST_IMAGE.to_owned());
    }
    let tar = cache.join("rootfs.tar");
    if !tar.exists() {
        let busybox = busybox_binary(&cache)?;
        build_rootfs_tar(&cache, &busybox, &tar)
            .map_err(|e| format!("cannot build the test image's root file system: {e}"))?;
    }
    run(
        Command::new("docker")
            .args([
                "import",
                "-c",
                "CMD [\"/bin/sh\"]",
                "-m",
                "OpsConductor test image: Debian busybox-static",
            ])
            .arg(&tar)
            .arg(TEST_IMAGE),
        "importing the test image",
    )?;
    if !image_present(TEST_IMAGE) {
        return Err(format!("{TEST_IMAGE} is still missing after docker import"));
    }
    Ok(TEST_IMAGE.to_owned())
}

/// `busybox` from Debian's `busybox-static`, downloaded and unpacked once.
fn busybox_binary(cache: &Path) -> Result<PathBuf, String> {
    let bin = cache.join("x/bin/busybox");
    if bin.exists() {
        return Ok(bin);
    }
    let find_deb = || -> Option<PathBuf> {
        fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("busybox-static_") && n.ends_with(".deb"))
            })
    };
    if find_deb().is_none() {
        let download = || {
            run(
                Command::new("apt-get")
                    .args(["download", "busybox-static"])
                    .current_dir(cache),
                "downloading busybox-static",
            )
        };
        if let Err(first) = download() {
            // A fresh machine may have no package lists yet.
            run(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update (to download busybox-static)",
            )
            .map_err(|e| format!("{first}\n{e}"))?;
            download()?;
        }
    }
    let deb = find_deb().ok_or("apt-get download busybox-static left no .deb")?;
    run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(cache.join("x")),
        "unpacking busybox-static",
    )?;
    if !bin.exists() {
        return Err(format!("{} has no bin/busybox", deb.display()));
    }
    Ok(bin)
}

fn build_rootfs_tar(cache: &Path, busybox: &Path, tar: &Path) -> io::Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let root = cache.join("rootfs");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let partial = tar.with_extension("tar.partial");
    let out = Command::new("tar")
        .arg("--numeric-owner")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    fs::rename(&partial, tar)
}
