"""Type stub of ``opsconductor._native``, the Rust half of the module."""

import os
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Optional, Union

from ._builders import Duration
from ._types import (
    ApplyItem,
    Job,
    LogLine,
    RunStatus,
    SecretInfo,
    StepResult,
    Target,
    TargetCheck,
)

from typing_extensions import Self, final

__all__ = [
    "AsyncLogIterator",
    "Conductor",
    "LogIterator",
    "Run",
    "DEFAULT_DATABASE_URL",
    "FEATURES",
    "__version__",
]

__version__: str
DEFAULT_DATABASE_URL: str
FEATURES: list[str]
"""Optional parts compiled into this build: ``sqlite``, ``postgres``, ``local``, ``ssh``, ``docker``."""

_Definition = Union[Mapping[str, Any], Target]
"""One definition: a dict in the job-file format, or a target."""
_Source = Union[str, "os.PathLike[str]", _Definition, Iterable[_Definition]]
"""Definitions: a YAML/JSON string, a path, a dict or target, or a list of those."""

@final
class Conductor:
    """The OpsConductor engine, in this process."""

    def __new__(
        cls,
        database_url: Union[str, "os.PathLike[str]", None] = None,
        *,
        master_key: Optional[str] = None,
        workers: int = 2,
        actor: Optional[str] = None,
    ) -> Self: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
        /,
    ) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def database_url(self) -> str: ...
    @property
    def workers(self) -> int: ...
    # definitions
    def apply(self, source: _Source) -> list[ApplyItem]: ...
    def validate(self, source: _Source) -> None: ...
    def define_job(self, job: Union[Mapping[str, Any], str, "os.PathLike[str]"]) -> Job: ...
    def jobs(self) -> list[Job]: ...
    def job(self, name: str, version: Optional[int] = None) -> Job: ...
    def job_versions(self, name: str) -> list[Job]: ...
    # targets
    def add_target(self, target: Target) -> Target: ...
    def targets(self) -> list[Target]: ...
    def target(self, name: str) -> Target: ...
    def remove_target(self, name: str) -> None: ...
    def check_target(self, name: str) -> TargetCheck: ...
    def check_targets(
        self, targets: Union[str, Sequence[str], None] = None, concurrency: int = 10
    ) -> list[TargetCheck]: ...
    def offered_host_key(self, name: str) -> tuple[str, Optional[str]]: ...
    def trust_host_key(self, name: str, fingerprint: str) -> Target: ...
    # secrets
    def set_secret(
        self,
        name: str,
        value: Union[str, bytes, bytearray],
        kind: Optional[str] = None,
        description: Optional[str] = None,
    ) -> SecretInfo: ...
    def secrets(self) -> list[SecretInfo]: ...
    def delete_secret(self, name: str, force: bool = False) -> None: ...
    # runs
    def run(
        self,
        job: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        targets: Union[str, Sequence[str], None] = None,
        version: Optional[int] = None,
        wait: bool = False,
        check: bool = False,
    ) -> Run: ...
    def plan(
        self,
        job: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        targets: Union[str, Sequence[str], None] = None,
        version: Optional[int] = None,
    ) -> dict[str, Any]: ...
    def exec(
        self,
        command: str,
        targets: Union[str, Sequence[str], None] = None,
        *,
        timeout: Optional[Duration] = None,
        concurrency: Optional[int] = None,
        wait: bool = False,
        check: bool = False,
    ) -> Run: ...
    def get_run(self, run_id: str) -> Run: ...
    def runs(
        self,
        job: Optional[str] = None,
        status: Union[RunStatus, Sequence[RunStatus], None] = None,
        limit: int = 50,
    ) -> list[Run]: ...

@final
class Run:
    """One run: fixed facts as attributes, changing state read fresh from the store."""

    @property
    def id(self) -> str: ...
    @property
    def job(self) -> str: ...
    @property
    def job_version(self) -> Optional[int]: ...
    @property
    def targets(self) -> list[str]: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def requested_by(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def status(self) -> RunStatus: ...
    @property
    def done(self) -> bool: ...
    @property
    def error(self) -> Optional[str]: ...
    @property
    def started_at(self) -> Optional[datetime]: ...
    @property
    def finished_at(self) -> Optional[datetime]: ...
    @property
    def results(self) -> list[StepResult]: ...
    def wait(self, timeout: Optional[Duration] = None, *, check: bool = False) -> RunStatus: ...
    def wait_async(
        self, timeout: Optional[Duration] = None, *, check: bool = False
    ) -> Awaitable[RunStatus]: ...
    def cancel(self) -> None: ...
    def logs(self, after: int = 0) -> LogIterator: ...
    def logs_async(self, after: int = 0) -> AsyncLogIterator: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class LogIterator:
    """A run's output, line by line, live (``for line in run.logs()``)."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> LogLine: ...
    def close(self) -> None: ...

@final
class AsyncLogIterator:
    """A run's output, line by line, live, for asyncio (``async for line in run.logs_async()``)."""

    def __aiter__(self) -> Self: ...
    def __anext__(self) -> Awaitable[LogLine]: ...
    def close(self) -> None: ...
