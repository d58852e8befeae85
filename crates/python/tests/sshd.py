"""Throwaway OpenSSH servers on loopback for the SSH tests and the fan-out
benchmark: a test user, an Ed25519 client key, and ``/usr/sbin/sshd -D -e``
processes with their own host keys on 127.0.0.N addresses.

Python twin of ``crates/executors/tests/it/support/sshd.rs``. Needs root
(``useradd``, sshd's privilege separation). A missing sshd is a failure
with a message saying what to install — never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

SSHD = "/usr/sbin/sshd"
USER = "opsc-test-pyssh"
"""The test account (not the Rust suite's, so the two never fight over it)."""


def _run(*args: str) -> str:
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out.stdout


def require_sshd() -> None:
    """Raises with what to do when this machine cannot run an sshd for tests."""
    if not os.path.exists(SSHD):
        raise RuntimeError(
            f"{SSHD} is missing: the SSH tests need a real OpenSSH server "
            "(as root: apt-get install -y openssh-server, after writing "
            "/usr/sbin/policy-rc.d with `exit 101` so it starts no daemon)"
        )
    if shutil.which("ssh-keygen") is None:
        raise RuntimeError("ssh-keygen is missing: apt-get install -y openssh-client")
    if os.geteuid() != 0:
        raise RuntimeError("the SSH tests need root (useradd, sshd privilege separation)")


def fingerprint(pub: Path) -> str:
    """The ``SHA256:…`` fingerprint ``ssh-keygen -lf`` prints for a public key file."""
    return _run("ssh-keygen", "-lf", str(pub)).split()[1]


def free_port(host: str) -> int:
    """A port that was free a moment ago on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    """One running sshd."""

    host: str
    port: int
    fingerprint: str
    host_key_line: str
    """The host key as in known_hosts (``ssh-ed25519 AAAA…``)."""
    proc: subprocess.Popen  # type: ignore[type-arg]
    log: Path

    def stop(self) -> None:
        """Stops the server."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Lab:
    """The account, the client key and a private directory shared by every server."""

    dir: Path
    key: Path
    servers: List[Sshd] = field(default_factory=list)
    next_addr: int = 200

    @property
    def private_key(self) -> str:
        """The client's private key (OpenSSH format), for an ``ssh_key`` secret."""
        return self.key.read_text()

    def start(self, host: Optional[str] = None) -> Sshd:
        """Starts an sshd with a fresh host key on the next 127.0.0.N."""
        if host is None:
            host = f"127.0.0.{self.next_addr}"
            self.next_addr += 1
        tag = host.replace(".", "_") + f"_{len(self.servers)}"
        host_key = self.dir / f"host_{tag}"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        fp = fingerprint(Path(f"{host_key}.pub"))
        key_line = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
        log = self.dir / f"sshd_{tag}.log"
        last = ""
        for _ in range(5):
            port = free_port(host)
            conf = self.dir / f"sshd_{tag}.conf"
            conf.write_text(
                f"ListenAddress {host}:{port}\n"
                f"HostKey {host_key}\n"
                f"PidFile {self.dir / f'sshd_{tag}.pid'}\n"
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
                "StrictModes no\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "PermitRootLogin no\n"
                f"AllowUsers {USER}\n"
                "Subsystem sftp internal-sftp\n"
                "MaxStartups 1000\n"
                "MaxSessions 200\n"
                "LogLevel ERROR\n"
            )
            with open(log, "ab") as err:
                proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            if _wait_for_banner(host, port, proc):
                server = Sshd(
                    host=host, port=port, fingerprint=fp, host_key_line=key_line, proc=proc, log=log
                )
                self.servers.append(server)
                return server
            proc.kill()
            proc.wait()
            last = log.read_text(errors="replace")
        raise RuntimeError(f"sshd on {host} did not start:\n{last}")

    def close(self) -> None:
        """Stops every server and removes the directory."""
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_for_banner(host: str, port: int, proc: "subprocess.Popen[bytes]") -> bool:
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.settimeout(2)
                if s.recv(8).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _ensure_user() -> None:
    if subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
        made = subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], capture_output=True)
        if made.returncode != 0 and subprocess.run(["id", USER], capture_output=True).returncode != 0:
            raise RuntimeError(f"useradd {USER} failed: {made.stderr!r}")
    # A locked account ('!' in /etc/shadow) refuses even key logins.
    _run("usermod", "-p", "*", USER)


def new_lab() -> Lab:
    """Sets up the account, a client key and a private directory."""
    require_sshd()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    _ensure_user()
    d = Path(tempfile.mkdtemp(prefix="opsc-pysshd-"))
    # sshd reads authorized_keys as the user: the directory must be traversable.
    d.chmod(0o755)
    key = d / "id_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opsc-pytest", "-f", str(key))
    auth = d / "authorized_keys"
    auth.write_text(Path(f"{key}.pub").read_text())
    auth.chmod(0o644)
    return Lab(dir=d, key=key)
