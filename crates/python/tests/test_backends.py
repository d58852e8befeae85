"""Other backends through the module: a real PostgreSQL server, and real
OpenSSH servers as targets. A component that is missing fails its test with
what to do — these tests never skip."""

from __future__ import annotations

from pathlib import Path

import pytest

import opsconductor
from conftest import sshd_lab
from opsconductor import Conductor, Ssh, exec_


def test_postgres_store(postgres_url: str, master_key: str) -> None:
    assert "postgres" in opsconductor.FEATURES, (
        "this build of opsconductor has no PostgreSQL store: build the wheel with the "
        "crate's `postgres` feature (pyproject.toml [tool.maturin] features)"
    )
    with Conductor(postgres_url, master_key=master_key, workers=2, actor="pytest") as oc:
        oc.define_job({"name": "pg-job", "steps": [exec_("echo on postgres; exit 0")]})
        run = oc.run("pg-job", wait=True)
        assert run.status == "succeeded"
        assert [line.text for line in run.logs()] == ["on postgres"]
        oc.set_secret("pg-secret", "a-secret-value-on-pg")
        assert [s.name for s in oc.secrets()] == ["pg-secret"]
        run_id = run.id
    # A second engine on the same database sees the same state.
    with Conductor(postgres_url, master_key=master_key, workers=0) as oc:
        assert oc.get_run(run_id).status == "succeeded"
        assert oc.job("pg-job").version == 1


def test_exec_on_ssh_targets(request: pytest.FixtureRequest, oc: Conductor) -> None:
    assert "ssh" in opsconductor.FEATURES, (
        "this build of opsconductor has no SSH executor: the facade crate needs an `ssh` "
        "feature whose SshExecutor is registered in opsconductor::builder, and "
        "crates/python must enable it (Cargo.toml feature `ssh`, pyproject.toml "
        "[tool.maturin] features)"
    )
    lab: sshd_lab.Lab = request.getfixturevalue("ssh_lab")
    servers = [lab.start() for _ in range(3)]
    oc.set_secret("pytest-ssh-key", lab.private_key, kind="ssh_key")
    for i, s in enumerate(servers):
        oc.add_target(
            Ssh(f"ssh-{i}", host=s.host, port=s.port, user=sshd_lab.USER,
                credential="pytest-ssh-key", host_key=s.fingerprint, tags=["ssh"])
        )
    run = oc.exec('echo "$(id -un) on $OPSC_TARGET"; echo err >&2; exit 3', targets="tag:ssh", wait=True)
    assert run.status == "failed"
    assert sorted((r.target, r.exit_code) for r in run.results) == [
        ("ssh-0", 3), ("ssh-1", 3), ("ssh-2", 3)
    ]
    out = sorted((line.target, line.stream, line.text) for line in run.logs() if line.stream != "system")
    assert out == sorted(
        [(f"ssh-{i}", "stdout", f"{sshd_lab.USER} on ssh-{i}") for i in range(3)]
        + [(f"ssh-{i}", "stderr", "err") for i in range(3)]
    )
    ok = oc.exec("true", targets="ssh-*", check=True)
    assert ok.status == "succeeded"
    # A pinned host key that does not match fails the target, never silently.
    oc.add_target(
        Ssh("ssh-wrong", host=servers[0].host, port=servers[0].port, user=sshd_lab.USER,
            credential="pytest-ssh-key", host_key="SHA256:" + "A" * 43)
    )
    bad = oc.exec("true", targets="ssh-wrong", wait=True)
    assert bad.status == "failed"
    checks = {c.target: c for c in oc.check_targets("ssh-*")}
    assert all(checks[f"ssh-{i}"].ok for i in range(3)), checks
    assert not checks["ssh-wrong"].ok and checks["ssh-wrong"].error
    # Trust on first use, explicitly: see the offered key, then pin it.
    offered, pinned = oc.offered_host_key("ssh-wrong")
    assert offered == servers[0].fingerprint and pinned == "SHA256:" + "A" * 43
    assert oc.trust_host_key("ssh-wrong", offered).host_key == offered  # type: ignore[union-attr]
    assert oc.exec("true", targets="ssh-wrong", wait=True).status == "succeeded"


def _cli_binary() -> str:
    import os

    root = Path(__file__).resolve().parents[3]
    candidates = [os.environ.get("OPSC_BIN", "")] + [
        str(root / os.environ.get("CARGO_TARGET_DIR", "target") / p / "opsconductor")
        for p in ("debug", "release")
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    pytest.fail(
        "the opsconductor CLI binary is needed (the server's own binary): build it with "
        "`cargo build -p opsconductor-cli --all-features` or set OPSC_BIN"
    )


def test_opens_a_database_the_server_binary_made(
    postgres_url: str, master_key: str, tmp_path: Path
) -> None:
    """A team's database, set up by `opsconductor` (the binary that serves the
    API), used from Python: its jobs, its runs, its secrets' names."""
    import subprocess

    from conftest import _pg_bin

    base, _, _ = postgres_url.rpartition("/")
    url = f"{base}/server_made"
    psql = f"{_pg_bin()}/psql"
    subprocess.run([psql, postgres_url, "-qc", "DROP DATABASE IF EXISTS server_made"], check=True)
    subprocess.run([psql, postgres_url, "-qc", "CREATE DATABASE server_made"], check=True)
    cli = _cli_binary()
    env = {"OPSC_MASTER_KEY": master_key, "PATH": "/usr/bin:/bin"}
    job = tmp_path / "team.yaml"
    job.write_text("kind: Job\nname: team-job\nsteps:\n  - exec: echo from the team\n")
    subprocess.run([cli, "--database-url", url, "apply", "-f", str(job)], check=True, env=env)
    subprocess.run(
        [cli, "--database-url", url, "secrets", "set", "team-token"],
        input=b"a-team-token-value", check=True, env=env,
    )
    made = subprocess.run(
        [cli, "--database-url", url, "--json", "run", "team-job"],
        check=True, env=env, capture_output=True,
    )
    assert made.returncode == 0, made.stderr
    with Conductor(url, master_key=master_key, workers=1, actor="pytest") as oc:
        assert oc.job("team-job").version == 1
        assert [s.name for s in oc.secrets()] == ["team-token"]
        earlier = oc.runs(job="team-job")
        assert [r.status for r in earlier] == ["succeeded"]
        run = oc.run("team-job", wait=True)
        assert run.status == "succeeded"
        assert [line.text for line in run.logs()] == ["from the team"]
