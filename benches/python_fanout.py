# Run with: crates/python/scripts/test.sh (creates target/py-venv), then a
# release wheel (the test command installs a debug one, ~1.5x slower here):
#   target/py-venv/bin/maturin build --release -m crates/python/Cargo.toml -o target/wheels-release
#   target/py-venv/bin/pip install --force-reinstall --no-deps target/wheels-release/*.whl
# then, as root:
#   target/py-venv/bin/pip install fabric pyinfra && target/py-venv/bin/python benches/python_fanout.py
# Settings: OPSC_BENCH_TARGETS (default 50), OPSC_BENCH_ROUNDS (default 5).
"""The same ad-hoc command on N SSH targets from Python: the ``opsconductor``
module (``Conductor.exec``, end to end: submit, connect, verify host keys,
authenticate, run, store results and output, read them back) side by side
with Fabric's ``ThreadingGroup`` (paramiko, one thread per host) and
pyinfra's ad-hoc ``exec`` (its CLI, ``--parallel N``; left out if pyinfra is
not installed).

Both use the same servers, the same Ed25519 key, and check host keys (ours:
pinned fingerprints; Fabric: a known_hosts file with ``RejectPolicy``).
Connections are cold in every round. Each target is its own real ``sshd``
process on its own 127.0.0.N address with its own host key (Python twin of
the Rust fixture; Fabric keys results by host, so hosts must be distinct).
Prints the median wall time of each and the ratio.
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "crates" / "python" / "tests"))

import sshd as sshd_lab  # noqa: E402

from opsconductor import FEATURES, Conductor, Ssh  # noqa: E402

COMMAND = "uname -a"


def ours(oc: Conductor, n: int) -> float:
    started = time.perf_counter()
    run = oc.exec(COMMAND, targets="tag:bench", wait=True)
    lines = [line for line in run.logs() if line.stream == "stdout"]
    elapsed = time.perf_counter() - started
    if run.status != "succeeded" or len(lines) != n:
        raise SystemExit(f"opsconductor: run {run.status}, {len(lines)} lines of {n}: {run.error}")
    return elapsed


def fabric_round(hosts: List[Tuple[str, int]], key: Path, known_hosts: Path) -> float:
    import paramiko
    from fabric import ThreadingGroup

    started = time.perf_counter()
    group = ThreadingGroup(
        *[f"{sshd_lab.USER}@{h}:{p}" for h, p in hosts],
        connect_kwargs={"key_filename": str(key), "look_for_keys": False, "allow_agent": False},
    )
    for c in group:
        c.client.load_host_keys(str(known_hosts))
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    results = group.run(COMMAND, hide=True)
    group.close()
    elapsed = time.perf_counter() - started
    bad = [r for r in results.values() if r.exited != 0 or not r.stdout.strip()]
    if len(results) != len(hosts) or bad:
        raise SystemExit(f"fabric: {len(results)} results, {len(bad)} failed")
    return elapsed


def pyinfra_round(hosts: List[Tuple[str, int]], key: Path, known_hosts: Path, work: Path) -> float:
    """pyinfra's ad-hoc ``exec`` over the same hosts, as its users run it (the
    CLI, so its start-up counts like ours does inside ``Conductor.exec``'s
    caller: both include everything between "go" and "all results back")."""
    import subprocess

    inventory = work / "inventory.py"
    data = {
        "ssh_user": sshd_lab.USER,
        "ssh_key": str(key),
        "ssh_known_hosts_file": str(known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_look_for_keys": False,
        "ssh_allow_agent": False,
    }
    inventory.write_text(
        "hosts = "
        + repr([(h, dict(data, ssh_port=p)) for h, p in hosts])
        + "\n"
    )
    pyinfra = Path(sys.executable).with_name("pyinfra")
    started = time.perf_counter()
    out = subprocess.run(
        [str(pyinfra), "-y", "--parallel", str(len(hosts)), str(inventory), "exec", "--", COMMAND],
        capture_output=True, text=True, cwd=work,
    )
    elapsed = time.perf_counter() - started
    answered = sum(1 for line in (out.stdout + out.stderr).splitlines() if "Linux" in line)
    if out.returncode != 0 or answered < len(hosts):
        raise SystemExit(
            f"pyinfra: exit {out.returncode}, {answered}/{len(hosts)} answered\n"
            + (out.stdout + out.stderr)[-2000:]
        )
    return elapsed


def median_of(rounds: int, f: Callable[[], float]) -> float:
    f()  # warm-up (imports, first-use setup), not counted
    return statistics.median(f() for _ in range(rounds))


def main() -> int:
    n = int(os.environ.get("OPSC_BENCH_TARGETS", "50"))
    servers = n
    rounds = int(os.environ.get("OPSC_BENCH_ROUNDS", "5"))
    if "ssh" not in FEATURES:
        print(f"this build of opsconductor has no SSH executor (features: {FEATURES})")
        return 1
    try:
        import fabric  # noqa: F401
    except ImportError:
        print("Fabric is not installed: target/py-venv/bin/pip install fabric")
        return 1

    lab = sshd_lab.new_lab()
    try:
        started = [lab.start() for _ in range(servers)]
        known_hosts = lab.dir / "known_hosts"
        known_hosts.write_text("".join(f"[{s.host}]:{s.port} {s.host_key_line}\n" for s in started))
        hosts = [(started[i % servers].host, started[i % servers].port) for i in range(n)]

        with tempfile.TemporaryDirectory() as tmp:
            key = base64.b64encode(os.urandom(32)).decode()
            with Conductor(f"sqlite://{tmp}/bench.db", master_key=key, workers=1) as oc:
                oc.set_secret("bench-key", lab.private_key, kind="ssh_key")
                for i in range(n):
                    s = started[i % servers]
                    oc.add_target(
                        Ssh(f"t{i:03}", host=s.host, port=s.port, user=sshd_lab.USER,
                            credential="bench-key", host_key=s.fingerprint, tags=["bench"])
                    )
                t_ours = median_of(rounds, lambda: ours(oc, n))
        t_fabric = median_of(rounds, lambda: fabric_round(hosts, lab.key, known_hosts))
        t_pyinfra = None
        try:
            import pyinfra  # noqa: F401

            t_pyinfra = median_of(
                rounds, lambda: pyinfra_round(hosts, lab.key, known_hosts, lab.dir)
            )
        except ImportError:
            print("pyinfra is not installed (target/py-venv/bin/pip install pyinfra): left out")
    finally:
        lab.close()

    print(f"`{COMMAND}` on {n} SSH targets (one sshd each), cold connections, median of {rounds}:")
    print(f"  opsconductor (Python module) : {t_ours * 1000:8.1f} ms")
    print(f"  Fabric ThreadingGroup        : {t_fabric * 1000:8.1f} ms")
    print(f"  ratio Fabric / opsconductor  : {t_fabric / t_ours:8.2f}x")
    if t_pyinfra is not None:
        print(f"  pyinfra exec (CLI)           : {t_pyinfra * 1000:8.1f} ms")
        print(f"  ratio pyinfra / opsconductor : {t_pyinfra / t_ours:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
