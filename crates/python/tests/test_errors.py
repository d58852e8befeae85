"""Each kind of engine error maps to one exception class, message intact."""

from __future__ import annotations

from pathlib import Path

import pytest

import opsconductor
from opsconductor import (
    Conductor,
    Conflict,
    ExecutionError,
    NotFound,
    OpsConductorError,
    StoreError,
    ValidationError,
    exec_,
)

DEPLOY = {
    "name": "deploy",
    "params": {
        "type": "object",
        "properties": {"version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"}},
        "required": ["version"],
        "additionalProperties": False,
    },
    "steps": [exec_("echo deploying {{ params.version }}")],
}


def test_parameter_schema_violation_names_the_field(oc: Conductor) -> None:
    oc.define_job(DEPLOY)
    with pytest.raises(ValidationError) as e:
        oc.run("deploy", {"version": "latest"})
    assert e.value.field == "params.version"
    assert "latest" in e.value.message and "does not match" in e.value.message
    assert str(e.value) == f"params.version: {e.value.message}"
    assert isinstance(e.value, ValueError) and isinstance(e.value, OpsConductorError)
    with pytest.raises(ValidationError) as missing:
        oc.run("deploy", {})
    assert missing.value.field is not None and missing.value.field.startswith("params")
    assert oc.runs() == [], "nothing was queued"
    ok = oc.run("deploy", {"version": "1.4.2"}, wait=True)
    assert [line.text for line in ok.logs()] == ["deploying 1.4.2"]


def test_bad_definitions_are_validation_errors(oc: Conductor) -> None:
    with pytest.raises(ValidationError) as e:
        oc.define_job({"name": "typo", "steps": [{"exce": "ls"}]})
    assert "exce" in str(e.value)
    with pytest.raises(ValidationError) as syntax:
        oc.define_job({"name": "t", "steps": [exec_("echo {{ params.x")]})
    assert syntax.value.field is not None and "steps[0]" in syntax.value.field
    # Undefined names are caught when a run is submitted, before anything is queued.
    oc.define_job({"name": "u", "steps": [exec_("echo {{ nope.x }}")]})
    with pytest.raises(ValidationError) as e2:
        oc.run("u")
    assert e2.value.field is not None and "steps[0]" in e2.value.field
    assert oc.runs() == []
    with pytest.raises(ValidationError) as e3:
        oc.define_job("kind: Job\nname: y\nsteps: [\n")
    assert e3.value.field is not None and e3.value.field.startswith("<string>:")
    with pytest.raises(ValidationError):
        oc.define_job({"name": "m", "steps": [{"copy": {"dest": "/x", "content": "", "mode": 644}}]})
    with pytest.raises(ValidationError):
        oc.exec("")
    with pytest.raises(ValidationError) as sel:
        oc.exec("true", targets="tag:nothing-has-this")
    assert "nothing-has-this" in str(sel.value)
    with pytest.raises(ValidationError):
        oc.exec("true", timeout="soon")
    with pytest.raises(ValidationError):
        oc.runs(status="sleeping")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Conductor("mysql://x", workers=0)
    with pytest.raises(ValidationError) as key:
        Conductor("sqlite::memory:", master_key="not base64!", workers=0)
    assert key.value.field == "master_key"


def test_not_found(oc: Conductor) -> None:
    with pytest.raises(NotFound) as e:
        oc.job("missing")
    assert e.value.what == "job" and e.value.name == "missing"
    assert isinstance(e.value, LookupError)
    oc.define_job({"name": "there", "steps": [exec_("true")]})
    with pytest.raises(NotFound) as v:
        oc.job("there", 9)
    assert v.value.what == "job version"
    with pytest.raises(NotFound) as r:
        oc.run("missing")
    assert "there" in str(r.value), "the message lists the known jobs"
    with pytest.raises(NotFound):
        oc.get_run("01234567-89ab-cdef-0123-456789abcdef")
    with pytest.raises(NotFound):
        oc.job_versions("missing")
    with pytest.raises(NotFound):
        oc.check_target("missing")


def test_conflict(oc: Conductor) -> None:
    oc.define_job({"name": "old", "status": "deprecated", "steps": [exec_("true")]})
    with pytest.raises(Conflict) as e:
        oc.run("old")
    assert "deprecated" in str(e.value)


def test_execution_error(oc: Conductor) -> None:
    with pytest.raises(ExecutionError) as e:
        oc.exec("echo bad; exit 9", check=True)
    assert e.value.status == "failed" and e.value.run_id
    assert e.value.run_id in str(e.value)
    assert oc.get_run(e.value.run_id).results[0].exit_code == 9


def test_store_error(tmp_path: Path, master_key: str) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not an SQLite database, just some text " * 200)
    with pytest.raises(StoreError) as e:
        Conductor(f"sqlite://{bad}", master_key=master_key, workers=0)
    assert str(e.value)


def test_check_targets(oc: Conductor) -> None:
    local = oc.check_target("local")
    assert local.ok and local.kind == "local" and local.os and local.error is None
    oc.add_target(opsconductor.Local("other", tags=["x"]))
    assert [(c.target, c.ok) for c in oc.check_targets("tag:x")] == [("other", True)]
    assert sorted(c.target for c in oc.check_targets()) == ["local", "other"]
    with pytest.raises(ValidationError):
        oc.offered_host_key("local")


def test_type_errors_for_wrong_arguments(oc: Conductor) -> None:
    with pytest.raises(TypeError):
        oc.define_job(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        oc.run("x", {"when": object()})
    with pytest.raises(TypeError):
        oc.exec("true", targets=[1, 2])  # type: ignore[list-item]


def test_every_class_is_exported() -> None:
    for name in (
        "OpsConductorError", "ValidationError", "NotFound", "Conflict", "ExecutionError",
        "StoreError", "PermissionDenied", "Unauthenticated",
    ):
        cls = getattr(opsconductor, name)
        assert issubclass(cls, OpsConductorError)


def test_impossible_time_limits_are_value_errors_not_panics(oc: Conductor) -> None:
    # Each of these panicked (PyO3 PanicException) or was accepted before.
    for bad in (
        float("nan"),
        float("inf"),
        -1.0,
        1e300,
        18446744073709551615,
        10**400,
        8 * 86400,
        "1000000000000000d",
        "213503982334602d",
        "18446744073709551615",
        "8d",
    ):
        with pytest.raises(ValidationError) as e:
            oc.exec("true", timeout=bad)  # type: ignore[arg-type]
        assert isinstance(e.value, ValueError)
        assert e.value.field == "timeout", (bad, e.value.field)
    with pytest.raises(ValidationError):
        oc.exec("true", timeout="0s")
    with pytest.raises(ValidationError):
        oc.define_job({"name": "huge", "steps": [{"exec": "true", "timeout": "8d"}]})
