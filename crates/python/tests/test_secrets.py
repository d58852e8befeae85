"""Secrets are write-only: nothing returns a value, and output masks them."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from pathlib import Path

import pytest

from opsconductor import Conductor, Conflict, NotFound, SecretInfo, ValidationError, exec_


def everything_about(obj: object) -> str:
    """repr, str and every public attribute of an object, as text."""
    parts = [repr(obj), str(obj)]
    if dataclasses.is_dataclass(obj):
        parts += [repr(getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception as e:  # noqa: BLE001 - anything it says counts
            value = e
        if not callable(value):
            parts.append(repr(value))
    return "\n".join(parts)


def test_secrets_are_never_returned(oc: Conductor, db_url: str, tmp_path: Path) -> None:
    value = f"s3cr3t-{uuid.uuid4().hex}"
    info = oc.set_secret("api-token", value, kind="token", description="for the API")
    assert isinstance(info, SecretInfo)
    assert (info.name, info.kind, info.description, info.version) == (
        "api-token", "token", "for the API", 1
    )
    assert not hasattr(info, "value")
    again = oc.set_secret("api-token", value.encode() + b"-2")
    assert again.version == 2 and again.kind == "token", "kind=None keeps the kind"
    listed = oc.secrets()
    assert [s.name for s in listed] == ["api-token"]
    for obj in [info, again, *listed, oc]:
        assert value not in everything_about(obj)
    # The whole surface: only these three methods are about secrets, none reads one.
    assert sorted(n for n in dir(oc) if "secret" in n) == ["delete_secret", "secrets", "set_secret"]
    # Encrypted at rest.
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ops.db*"))
    assert value.encode() not in raw
    oc.delete_secret("api-token")
    assert oc.secrets() == []
    with pytest.raises(NotFound):
        oc.delete_secret("api-token")


def test_secrets_are_masked_in_output(oc: Conductor) -> None:
    value = f"pw-{uuid.uuid4().hex}"
    oc.set_secret("db-password", value, kind="password")
    oc.define_job(
        {
            "name": "uses-secret",
            "secrets": ["db-password"],
            "steps": [
                exec_('echo "pw=$DB_PASSWORD"'),
                exec_('printf "%s" "$DB_PASSWORD" | base64'),
                exec_('printf "%s" "$DB_PASSWORD" | fold -w 7; echo'),
                exec_('echo "$DB_PASSWORD" >&2'),
            ],
        }
    )
    run = oc.run("uses-secret", wait=True)
    assert run.status == "succeeded"
    lines = list(run.logs())
    texts = [line.text for line in lines]
    assert "pw=***" in texts
    everything = "\n".join(texts)
    assert value not in everything
    assert base64.b64encode(value.encode()).decode() not in everything
    assert [line.text for line in lines if line.stream == "stderr"] == ["***"]
    info = oc.secrets()[0]
    assert info.used_by_jobs == ["uses-secret"]
    with pytest.raises(Conflict):
        oc.delete_secret("db-password")
    oc.delete_secret("db-password", force=True)


def test_secret_input_checks(oc: Conductor) -> None:
    with pytest.raises(ValidationError) as e:
        oc.set_secret("x", "value-long", kind="nonsense")
    assert e.value.field == "kind"
    with pytest.raises(ValidationError):
        oc.set_secret("bad name", "value-long")
    with pytest.raises(ValidationError):
        oc.set_secret("empty", "")
    with pytest.raises(TypeError):
        oc.set_secret("num", 12345)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="NOT be masked"):
        oc.set_secret("short", "abc")
    assert oc.set_secret("binary", b"\x00\x01\x02\xff-bytes").kind == "generic"
