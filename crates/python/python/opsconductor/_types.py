"""Plain data the engine takes and returns: targets, jobs, secrets' metadata,
step results and log lines.

These are frozen dataclasses. The native module builds them from the
engine's JSON form with the ``_from_json`` helpers below, and turns targets
back into the job-file format (``docs/job-format.md``) with ``_document``;
no rule of the engine lives here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

if TYPE_CHECKING:
    from typing_extensions import TypeAlias

__all__ = [
    "RunStatus",
    "StepStatus",
    "StreamName",
    "Local",
    "Ssh",
    "Docker",
    "WinRm",
    "Target",
    "TargetCheck",
    "Job",
    "SecretInfo",
    "ApplyItem",
    "StepResult",
    "LogLine",
]

RunStatus: TypeAlias = Literal[
    "queued", "running", "succeeded", "failed", "cancelled", "timed_out",
    "waiting_approval", "rejected", "expired",
]
"""A run's state: ``queued`` → ``running`` → one of the final four."""

StepStatus: TypeAlias = Literal[
    "running", "succeeded", "failed", "timed_out", "cancelled", "skipped", "interrupted"
]
"""The state of one step on one target."""

StreamName: TypeAlias = Literal["stdout", "stderr", "system"]
"""Where a line of output came from (``system``: OpsConductor's own messages)."""


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------


def _common(
    kind_doc: Dict[str, Any],
    name: str,
    description: str,
    tags: List[str],
    vars: Dict[str, Any],
    credential: Optional[str],
) -> Dict[str, Any]:
    doc: Dict[str, Any] = {"kind": "Target", "name": name}
    if description:
        doc["description"] = description
    if tags:
        doc["tags"] = list(tags)
    if vars:
        doc["vars"] = dict(vars)
    doc["connection"] = kind_doc
    if credential is not None:
        doc["credential"] = credential
    return doc


@dataclass(frozen=True)
class Local:
    """The host the engine's workers run on.

    A target named ``local`` exists implicitly; add one to give it tags or vars.
    """

    name: str
    """Unique name (letters, digits, ``_ . -``)."""
    tags: List[str] = field(default_factory=list)
    """Tags, selected with ``tag:NAME``."""
    vars: Dict[str, Any] = field(default_factory=dict)
    """Variables available to templates as ``target.vars``."""
    description: str = ""
    """Free text for people."""

    def _document(self) -> Dict[str, Any]:
        return _common(
            {"type": "local"}, self.name, self.description, self.tags, self.vars, None
        )


@dataclass(frozen=True)
class Ssh:
    """An SSH host. ``credential`` names a secret (kind ``ssh_key`` or ``password``);
    ``host_key`` pins the server's key fingerprint (``SHA256:…``)."""

    name: str
    """Unique name (letters, digits, ``_ . -``)."""
    host: str
    """Host name or address."""
    user: str
    """Remote user."""
    port: int = 22
    """TCP port."""
    credential: Optional[str] = None
    """Name of the secret holding the key or password."""
    host_key: Optional[str] = None
    """Pinned host key fingerprint, ``SHA256:…``."""
    tags: List[str] = field(default_factory=list)
    """Tags, selected with ``tag:NAME``."""
    vars: Dict[str, Any] = field(default_factory=dict)
    """Variables available to templates as ``target.vars``."""
    description: str = ""
    """Free text for people."""
    known_hosts: Optional[str] = None
    """Absolute path of a known_hosts file to check the host key against
    (on the worker's machine), when ``host_key`` is not pinned."""

    def _document(self) -> Dict[str, Any]:
        conn: Dict[str, Any] = {
            "type": "ssh",
            "host": self.host,
            "port": self.port,
            "user": self.user,
        }
        if self.host_key is not None:
            conn["host_key"] = self.host_key
        if self.known_hosts is not None:
            conn["known_hosts"] = self.known_hosts
        return _common(
            conn, self.name, self.description, self.tags, self.vars, self.credential
        )


@dataclass(frozen=True)
class Docker:
    """A fresh container per step on the local Docker engine.

    ``limits`` are resource limits (``memory``, ``cpus``, ``pids``, ``network``).
    """

    name: str
    """Unique name (letters, digits, ``_ . -``)."""
    image: str
    """Image reference."""
    limits: Dict[str, Any] = field(default_factory=dict)
    """Resource limits."""
    tags: List[str] = field(default_factory=list)
    """Tags, selected with ``tag:NAME``."""
    vars: Dict[str, Any] = field(default_factory=dict)
    """Variables available to templates as ``target.vars``."""
    description: str = ""
    """Free text for people."""

    def _document(self) -> Dict[str, Any]:
        conn: Dict[str, Any] = {"type": "docker", "image": self.image}
        if self.limits:
            conn["limits"] = dict(self.limits)
        return _common(conn, self.name, self.description, self.tags, self.vars, None)


@dataclass(frozen=True)
class WinRm:
    """A Windows host over WinRM (HTTPS by default; ``auth`` is ``ntlm`` or ``basic``)."""

    name: str
    """Unique name (letters, digits, ``_ . -``)."""
    host: str
    """Host name or address."""
    port: int = 5986
    """TCP port."""
    tls: bool = True
    """Use HTTPS."""
    auth: str = "ntlm"
    """``ntlm`` or ``basic``."""
    credential: Optional[str] = None
    """Name of the secret holding the password."""
    tags: List[str] = field(default_factory=list)
    """Tags, selected with ``tag:NAME``."""
    vars: Dict[str, Any] = field(default_factory=dict)
    """Variables available to templates as ``target.vars``."""
    description: str = ""
    """Free text for people."""

    def _document(self) -> Dict[str, Any]:
        conn: Dict[str, Any] = {
            "type": "winrm",
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "auth": self.auth,
        }
        return _common(
            conn, self.name, self.description, self.tags, self.vars, self.credential
        )


Target: TypeAlias = Union[Local, Ssh, Docker, WinRm]
"""Any kind of target."""


def _target_from_json(t: Mapping[str, Any]) -> Target:
    conn = t.get("connection") or {"type": "local"}
    common: Dict[str, Any] = {
        "name": t["name"],
        "description": t.get("description", ""),
        "tags": list(t.get("tags", [])),
        "vars": dict(t.get("vars", {})),
    }
    kind = conn.get("type")
    if kind == "local":
        return Local(**common)
    if kind == "ssh":
        return Ssh(
            host=conn["host"],
            user=conn["user"],
            port=conn.get("port", 22),
            credential=t.get("credential"),
            host_key=conn.get("host_key"),
            known_hosts=conn.get("known_hosts"),
            **common,
        )
    if kind == "docker":
        return Docker(image=conn["image"], limits=dict(conn.get("limits", {})), **common)
    if kind == "winrm":
        return WinRm(
            host=conn["host"],
            port=conn.get("port", 5986),
            tls=conn.get("tls", True),
            auth=conn.get("auth", "ntlm"),
            credential=t.get("credential"),
            **common,
        )
    raise ValueError(f"target {t['name']!r} has an unknown connection type {kind!r}")


@dataclass(frozen=True)
class TargetCheck:
    """The outcome of checking a target: connect, authenticate, run a probe."""

    target: str
    """Target name."""
    kind: str
    """Connection kind (``local``, ``ssh``, ``docker``, ``winrm``)."""
    ok: bool
    """True if it connected, authenticated and ran the probe."""
    os: Optional[str]
    """What the probe reported (operating system / kernel), when ``ok``."""
    details: Dict[str, str]
    """Extra probe details (engine version, shell, …)."""
    error: Optional[str]
    """Why it failed, when not ``ok``."""
    latency_ms: int
    """How long the check took."""


def _target_check_from_json(c: Mapping[str, Any]) -> TargetCheck:
    probe = c.get("probe") or {}
    return TargetCheck(
        target=c["target"],
        kind=c["kind"],
        ok=c["ok"],
        os=probe.get("os") if c.get("probe") is not None else None,
        details=dict(probe.get("details", {})),
        error=c.get("error"),
        latency_ms=c["latency_ms"],
    )


# --------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------

_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _time(s: Optional[str]) -> Optional[datetime]:
    """Parses the engine's RFC 3339 times (nanoseconds, ``Z``) on Python 3.9 too."""
    if s is None:
        return None
    m = _TIME.match(s)
    if m is None:
        return datetime.fromisoformat(s)
    base, frac, zone = m.groups()
    micros = (frac or "").ljust(6, "0")[:6]
    dt = datetime.fromisoformat(f"{base}.{micros}")
    if zone == "Z":
        return dt.replace(tzinfo=timezone.utc)
    sign = 1 if zone[0] == "+" else -1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    return dt.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))


def _req_time(s: str) -> datetime:
    t = _time(s)
    assert t is not None
    return t


# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------


def _step_document(step: Mapping[str, Any]) -> Dict[str, Any]:
    """A stored step (the engine's model) in the job-file format."""
    doc: Dict[str, Any] = {"name": step["name"]}
    action = step["action"]
    if "exec" in action:
        doc["exec"] = action["exec"]["command"]
    elif "script" in action:
        doc["script"] = action["script"]["body"]
        doc["interpreter"] = action["script"]["interpreter"]
    elif "copy" in action:
        c = action["copy"]
        copy: Dict[str, Any] = {"dest": c["dest"]}
        if c.get("content") is not None:
            copy["content"] = c["content"]
        if c.get("src") is not None:
            copy["src"] = c["src"]
        copy["mode"] = format(int(c.get("mode", 0o644)), "04o")
        doc["copy"] = copy
    else:  # A step kind newer than this module: keep it as the engine said.
        doc.update(action)
    for key in ("timeout", "env", "workdir"):
        if step.get(key) is not None:
            doc[key] = step[key]
    for key in ("continue_on_error", "idempotent", "raw"):
        if step.get(key):
            doc[key] = True
    return doc


@dataclass(frozen=True)
class Job:
    """A stored version of a job definition."""

    name: str
    """Unique name."""
    version: int
    """Version number, from 1; each change of the definition adds one."""
    description: str
    """Free text for people."""
    status: Literal["draft", "active", "deprecated"]
    """Lifecycle status; deprecated jobs refuse new runs."""
    tags: List[str]
    """Tags for finding jobs."""
    params: Optional[Dict[str, Any]]
    """JSON Schema of the parameters, or ``None``."""
    targets: List[str]
    """Default target selector."""
    concurrency: int
    """How many targets run a step at the same time."""
    timeout: Optional[str]
    """Time limit of a whole run (``"15m"``), or ``None``."""
    secrets: List[str]
    """Secrets the job may use (as environment variables)."""
    steps: List[Dict[str, Any]]
    """The steps, in the job-file format (as built by ``exec_``, ``script``, ``copy``)."""
    created_at: datetime
    """When this version was stored."""
    created_by: str
    """Who stored it."""

    def to_dict(self) -> Dict[str, Any]:
        """This version in the job-file format, e.g. to change it and ``define_job`` it again."""
        doc: Dict[str, Any] = {"kind": "Job", "name": self.name}
        if self.description:
            doc["description"] = self.description
        if self.tags:
            doc["tags"] = list(self.tags)
        doc["status"] = self.status
        if self.params is not None:
            doc["params"] = self.params
        doc["targets"] = list(self.targets)
        doc["concurrency"] = self.concurrency
        if self.timeout is not None:
            doc["timeout"] = self.timeout
        if self.secrets:
            doc["secrets"] = list(self.secrets)
        doc["steps"] = [dict(s) for s in self.steps]
        return doc


def _job_from_json(j: Mapping[str, Any]) -> Job:
    spec = j["spec"]
    return Job(
        name=spec["name"],
        version=j["version"],
        description=spec.get("description", ""),
        status=spec.get("status", "active"),
        tags=list(spec.get("tags", [])),
        params=spec.get("params"),
        targets=list(spec.get("targets", ["local"])),
        concurrency=spec.get("concurrency", 50),
        timeout=spec.get("timeout"),
        secrets=list(spec.get("secrets", [])),
        steps=[_step_document(s) for s in spec.get("steps", [])],
        created_at=_req_time(j["created_at"]),
        created_by=j["created_by"],
    )


@dataclass(frozen=True)
class ApplyItem:
    """What storing a definition did to one object."""

    kind: Literal["job", "target"]
    """``job`` or ``target``."""
    name: str
    """The object's name."""
    action: Literal["created", "updated", "unchanged"]
    """``created``, ``updated`` (jobs: a new version) or ``unchanged``."""
    version: Optional[int] = None
    """The job version now current (jobs only)."""


def _apply_item_from_json(a: Mapping[str, Any]) -> ApplyItem:
    return ApplyItem(
        kind=a["kind"], name=a["name"], action=a["action"], version=a.get("version")
    )


# --------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: metadata and where it is used — never the value."""

    name: str
    """Unique name."""
    kind: str
    """``generic``, ``password``, ``ssh_key``, ``token`` or ``certificate``."""
    description: str
    """Free text."""
    version: int
    """Value version: 1 at creation, +1 per update."""
    key_version: int
    """The master key version encrypting it."""
    created_at: datetime
    """When created."""
    created_by: str
    """Who created it."""
    updated_at: datetime
    """When last changed."""
    updated_by: str
    """Who last changed it."""
    used_by_jobs: List[str]
    """Jobs (latest versions) that declare it."""
    used_by_targets: List[str]
    """Targets that use it as their credential."""


def _secret_from_json(s: Mapping[str, Any]) -> SecretInfo:
    return SecretInfo(
        name=s["name"],
        kind=s["kind"],
        description=s.get("description", ""),
        version=s["version"],
        key_version=s["key_version"],
        created_at=_req_time(s["created_at"]),
        created_by=s["created_by"],
        updated_at=_req_time(s["updated_at"]),
        updated_by=s["updated_by"],
        used_by_jobs=list(s.get("used_by_jobs", [])),
        used_by_targets=list(s.get("used_by_targets", [])),
    )


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step on one target."""

    step: int
    """Index of the step in the job (from 0)."""
    step_name: str
    """The step's name."""
    target: str
    """Target name."""
    status: StepStatus
    """State of the step on this target."""
    exit_code: Optional[int]
    """Exit code, when the process exited."""
    signal: Optional[int]
    """Signal number, when the process was killed by one."""
    error: Optional[str]
    """Why it failed, for people."""
    attempt: int
    """The run attempt that produced this result (1 unless the run was rescued)."""
    started_at: datetime
    """When it started."""
    finished_at: Optional[datetime]
    """When it ended (``None`` while running)."""
    try_no: int = 1
    """Which try of the step this is (1 unless the step was retried)."""
    tries: Tuple[Mapping[str, Any], ...] = ()
    """The earlier tries, oldest first: ``try_no``, ``status``,
    ``exit_code``, ``error``, ``started_at``, ``finished_at``."""
    outputs: Dict[str, Any] = field(default_factory=dict)
    """Values the step published (``::output name=value`` lines or
    ``outputs: json``), secrets masked."""
    children: List[str] = field(default_factory=list)
    """Ids of the child runs a ``job:`` step started on this target."""

    @property
    def ok(self) -> bool:
        """True if the step succeeded on this target."""
        return self.status == "succeeded"

    @property
    def duration(self) -> Optional[timedelta]:
        """How long it took, once it ended."""
        if self.finished_at is None:
            return None
        return self.finished_at - self.started_at


def _step_result_from_json(r: Mapping[str, Any], step_name: str) -> StepResult:
    return StepResult(
        step=r["step"],
        step_name=step_name,
        target=r["target"],
        status=r["status"],
        exit_code=r.get("exit_code"),
        signal=r.get("signal"),
        error=r.get("error"),
        attempt=r["attempt"],
        started_at=_req_time(r["started_at"]),
        finished_at=_time(r.get("finished_at")),
        try_no=r.get("try_no", 1),
        tries=tuple(r.get("tries", ())),
        outputs=dict(r.get("outputs", {})),
        children=list(r.get("children", [])),
    )


@dataclass(frozen=True)
class LogLine:
    """One line of a run's output (without its line ending).

    Lines are split per target and stream, so output of concurrent targets
    never mixes within a line; a last line without a newline is still
    delivered when its step ends. Secret values are already masked.
    """

    target: Optional[str]
    """Target name; ``None`` for messages about the whole run."""
    stream: StreamName
    """``stdout``, ``stderr`` or ``system`` (OpsConductor's own messages)."""
    text: str
    """The line, decoded as UTF-8 (invalid bytes replaced)."""
    seq: int
    """Position in the run's log of the chunk that ended this line (chunks are
    numbered from 1 without gaps; ``Run.logs(after=seq)`` continues after it)."""
    step: Optional[int] = None
    """Index of the step that wrote it; ``None`` for run-level messages."""
