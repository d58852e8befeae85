"""Fixtures: engines on fresh SQLite files, a throwaway PostgreSQL server and
throwaway sshd servers. Everything is real; nothing is skipped — a missing
component fails its tests with a message saying what to install."""

from __future__ import annotations

import base64
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import sshd as sshd_lab  # noqa: E402
from opsconductor import Conductor  # noqa: E402

# The Ctrl-C tests send SIGINT to this process. Python installs its
# KeyboardInterrupt handler only when SIGINT is at its default at start-up; a
# shell that starts the suite in the background without job control (as CI
# runners and `cmd &` in scripts do) leaves SIGINT ignored, and those tests
# would wait forever. Install the handler whatever was inherited.
import signal  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)


def proc_cmdlines() -> List[str]:
    """Every process's command line (NULs as spaces), read from /proc."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


def processes_with(marker: str) -> List[str]:
    """Command lines containing ``marker`` (the test process's own excluded)."""
    me = open(f"/proc/{os.getpid()}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    return [c for c in proc_cmdlines() if marker in c and c != me]


@pytest.fixture
def master_key() -> str:
    """A fresh random master key (base64), so no key file is written."""
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database (absolute path: ``sqlite:///tmp/…``)."""
    return f"sqlite://{tmp_path / 'ops.db'}"


def _engine(db_url: str, master_key: str, workers: int) -> Iterator[Conductor]:
    with Conductor(db_url, master_key=master_key, workers=workers, actor="pytest") as c:
        try:
            yield c
        finally:
            # A failed test may leave a long command running; closing waits
            # for runs in progress, so stop them first.
            if not c.closed:
                for r in c.runs(status=["queued", "running"]):
                    r.cancel()


@pytest.fixture
def oc(db_url: str, master_key: str) -> Iterator[Conductor]:
    """An engine with two background workers."""
    yield from _engine(db_url, master_key, 2)


@pytest.fixture
def oc0(db_url: str, master_key: str) -> Iterator[Conductor]:
    """An engine without background workers: runs execute in the caller."""
    yield from _engine(db_url, master_key, 0)


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): "
            "install them (apt-get install -y postgresql) — the PostgreSQL test needs a real server"
        )
    return os.path.dirname(found[-1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port (as user postgres)."""
    bindir = _pg_bin()
    if os.geteuid() != 0:
        pytest.fail("the PostgreSQL test starts a server as user postgres and needs root")
    d = tempfile.mkdtemp(prefix="opsc-pypg-")
    shutil.chown(d, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_pg(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    as_pg(f"{bindir}/initdb", "-D", f"{d}/data", "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
    as_pg(
        f"{bindir}/pg_ctl", "-D", f"{d}/data", "-l", f"{d}/log", "-w",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {d} -c fsync=off",
        "start",
    )
    try:
        yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", f"{d}/data", "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# SSH
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ssh_lab() -> Iterator[sshd_lab.Lab]:
    """The SSH test account, a client key, and servers started on demand."""
    try:
        lab = sshd_lab.new_lab()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield lab
    finally:
        lab.close()


def wait_until(cond: "object", timeout: float = 10.0, every: float = 0.02) -> bool:
    """Polls ``cond()`` until true or ``timeout`` seconds pass."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(every)
    return False
