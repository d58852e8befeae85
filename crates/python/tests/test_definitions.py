"""Jobs and targets: the CLI's file format from dicts, YAML and paths,
versions, targets of every kind, and database URLs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import opsconductor
from opsconductor import (
    ApplyItem,
    Conductor,
    Docker,
    Job,
    Local,
    NotFound,
    Ssh,
    ValidationError,
    WinRm,
    copy,
    exec_,
    script,
)


def test_builders_make_job_file_steps() -> None:
    assert exec_("uptime") == {"exec": "uptime"}
    assert exec_("ls", name="list", timeout=1.5, env={"A": 1}, workdir=Path("/tmp"),
                 continue_on_error=True, idempotent=True, raw=True) == {
        "name": "list", "exec": "ls", "timeout": "1500ms", "env": {"A": 1},
        "workdir": "/tmp", "continue_on_error": True, "idempotent": True, "raw": True,
    }
    assert script("echo hi") == {"script": "echo hi", "interpreter": "sh"}
    assert copy("/etc/motd", content="hi\n", mode=0o600) == {
        "copy": {"dest": "/etc/motd", "content": "hi\n", "mode": "0600"}
    }
    assert exec_("x", timeout=30)["timeout"] == 30


def test_define_job_from_dict_yaml_and_path(oc: Conductor, tmp_path: Path) -> None:
    v1 = oc.define_job({"name": "deploy", "steps": [exec_("echo v1")]})
    assert v1.version == 1 and v1.created_by == "pytest"
    same = oc.define_job({"name": "deploy", "steps": [exec_("echo v1")]})
    assert same.version == 1, "an unchanged definition stores nothing"
    v2 = oc.define_job(
        """
kind: Job
name: deploy
description: Roll out.
steps:
  - name: say
    exec: echo v2
"""
    )
    assert v2.version == 2 and v2.description == "Roll out."
    f = tmp_path / "deploy.yaml"
    f.write_text("kind: Job\nname: deploy\nsteps:\n  - exec: echo v3\n")
    v3 = oc.define_job(f)
    assert v3.version == 3
    with pytest.raises(ValidationError, match="pathlib.Path"):
        oc.define_job(str(f))
    assert [j.version for j in oc.job_versions("deploy")] == [1, 2, 3]
    assert oc.job("deploy", 2).steps == [{"name": "say", "exec": "echo v2"}]
    assert oc.job("deploy") == v3
    assert [j.name for j in oc.jobs()] == ["deploy"]
    assert all(isinstance(j, Job) for j in oc.jobs())
    assert oc.run("deploy", version=2, wait=True).status == "succeeded"


def test_job_to_dict_round_trips(oc: Conductor, tmp_path: Path) -> None:
    job = oc.define_job(
        {
            "name": "full",
            "description": "all the fields",
            "tags": ["x"],
            "status": "draft",
            "targets": ["local"],
            "concurrency": 3,
            "timeout": "15m",
            "params": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "steps": [
                exec_("echo {{ params.n }}", timeout="30s", env={"K": "v"}, workdir="/tmp"),
                script("print(1)", interpreter="python3", continue_on_error=True),
                copy(str(tmp_path / "f"), content="x", mode="0640", idempotent=True),
                exec_("docker ps --format '{{.Names}}'", raw=True),
            ],
        }
    )
    assert job.status == "draft" and job.concurrency == 3 and job.timeout == "15m"
    again = oc.define_job(job.to_dict())
    assert again.version == job.version, "to_dict() gives back the same definition"


def test_apply_many_and_validate(oc: Conductor, tmp_path: Path) -> None:
    items = oc.apply(
        [
            Local("box", tags=["t"]),
            {"kind": "Job", "name": "a", "targets": "tag:t", "steps": [exec_("true")]},
            {"name": "b", "steps": [exec_("true")]},
        ]
    )
    assert all(isinstance(i, ApplyItem) for i in items)
    assert sorted((i.kind, i.name, i.action) for i in items) == [
        ("job", "a", "created"), ("job", "b", "created"), ("target", "box", "created")
    ]
    d = tmp_path / "defs"
    d.mkdir()
    (d / "one.yaml").write_text("kind: Job\nname: c\nsteps: [{exec: 'true'}]\n")
    (d / "two.json").write_text('{"kind": "Job", "name": "d", "steps": [{"exec": "true"}]}')
    assert [i.name for i in oc.apply(d)] == ["c", "d"]
    with pytest.raises(ValidationError):
        oc.validate({"name": "bad", "steps": []})
    oc.validate({"name": "good", "steps": [exec_("true")]})
    with pytest.raises(NotFound):
        oc.job("good")
    with pytest.raises(ValidationError, match="exactly one job"):
        oc.define_job([{"name": "x", "steps": [exec_("true")]}, {"name": "y", "steps": [exec_("true")]}])


def test_apply_is_all_or_nothing(oc: Conductor) -> None:
    with pytest.raises(ValidationError) as e:
        oc.apply(
            [
                {"name": "fine", "steps": [exec_("true")]},
                {"name": "broken", "steps": [exec_("echo {{ params.nope")]},
            ]
        )
    assert "broken" in str(e.value)
    with pytest.raises(NotFound):
        oc.job("fine")


def test_targets_of_every_kind(oc: Conductor) -> None:
    ssh = Ssh("web-1", host="10.0.0.5", user="deploy", port=2222, credential="web-key",
              host_key="SHA256:abc", tags=["web"], vars={"role": "primary"})
    docker = Docker("box", image="busybox:1", limits={"memory": "64m"})
    winrm = WinRm("win-1", host="10.0.0.9", auth="basic", credential="win-pw")
    local = Local("here", tags=["l"], description="this host")
    oc.set_secret("web-key", "not a real key, but a secret", kind="ssh_key")
    oc.set_secret("win-pw", "hunter2-but-longer")
    for t in (ssh, docker, winrm, local):
        assert oc.add_target(t) == t
    names = {t.name: t for t in oc.targets()}
    assert names["web-1"] == ssh and names["box"] == docker and names["win-1"] == winrm
    assert names["local"] == Local("local", description="The host the worker runs on")
    assert oc.target("here") == local
    changed = dataclasses.replace(local, tags=["l", "m"])
    assert oc.add_target(changed).tags == ["l", "m"]
    oc.remove_target("here")
    with pytest.raises(NotFound) as e:
        oc.target("here")
    assert e.value.what == "target" and e.value.name == "here"
    with pytest.raises(NotFound):
        oc.remove_target("here")
    with pytest.raises(ValidationError):
        oc.add_target(Local("bad name!"))
    with pytest.raises(TypeError):
        oc.add_target({"kind": "Target", "name": "x"})  # type: ignore[arg-type]


def test_remove_target_is_audited(oc: Conductor, db_url: str) -> None:
    """Removing a target goes through the engine, which records who did it
    (read straight from the database: the audit log is the engine's)."""
    import sqlite3

    oc.add_target(Local("doomed"))
    oc.remove_target("doomed")
    db = sqlite3.connect(db_url.removeprefix("sqlite://"))
    try:
        rows = db.execute(
            "SELECT actor, action FROM audit_events WHERE object = 'target:doomed' ORDER BY seq"
        ).fetchall()
    finally:
        db.close()
    assert [a for _, a in rows] == ["target.create", "target.delete"]
    # Both by the engine's actor (the one that created it also deleted it).
    assert rows[0][0] == rows[1][0] != ""


def test_database_urls(tmp_path: Path, master_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # sqlite://PATH is relative to the working directory …
    with Conductor("sqlite://rel.db", master_key=master_key, workers=0) as oc:
        oc.define_job({"name": "kept", "steps": [exec_("echo kept")]})
        run = oc.run("kept", wait=True)
    assert (tmp_path / "rel.db").exists()
    # … sqlite:///ABS is absolute; a pathlib.Path works too; data persists.
    with Conductor(f"sqlite://{tmp_path}/rel.db", master_key=master_key, workers=0) as oc:
        assert oc.job("kept").version == 1
        assert oc.get_run(run.id).status == "succeeded"
    with Conductor(tmp_path / "rel.db", master_key=master_key, workers=0) as oc:
        assert [line.text for line in oc.get_run(run.id).logs()] == ["kept"]
    assert opsconductor.DEFAULT_DATABASE_URL == "sqlite://opsconductor.db"


def test_default_key_file_and_notice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("OPSC_MASTER_KEY", "OPSC_MASTER_KEY_FILE", "OPSC_MASTER_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.warns(UserWarning, match="generated a master key"):
        with Conductor(workers=0) as oc:
            assert oc.database_url == "sqlite://opsconductor.db"
            oc.set_secret("token", "a-long-enough-value")
    assert (tmp_path / "opsconductor.key").stat().st_mode & 0o777 == 0o600
    # The next start finds the key; the secret is still usable.
    with Conductor(workers=0) as oc:
        assert [s.name for s in oc.secrets()] == ["token"]


def test_closed_conductor(db_url: str, master_key: str) -> None:
    oc = Conductor(db_url, master_key=master_key, workers=1)
    run = oc.exec("echo hi", wait=True)
    assert not oc.closed
    oc.close()
    oc.close()
    assert oc.closed and "closed" in repr(oc)
    with pytest.raises(opsconductor.OpsConductorError, match="closed"):
        oc.jobs()
    with pytest.raises(opsconductor.OpsConductorError, match="closed"):
        _ = run.status
    with pytest.raises(opsconductor.OpsConductorError, match="closed"):
        run.logs()


def test_environment_key_is_used(db_url: str, monkeypatch: pytest.MonkeyPatch, master_key: str) -> None:
    monkeypatch.setenv("OPSC_MASTER_KEY", master_key)
    with Conductor(db_url, workers=0) as oc:
        oc.set_secret("s", "value-1234")
    with Conductor(db_url, master_key=master_key, workers=0) as oc:
        assert oc.secrets()[0].name == "s"
    assert not os.path.exists(db_url.replace("sqlite://", "").replace(".db", ".key"))
