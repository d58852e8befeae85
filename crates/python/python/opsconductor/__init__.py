"""OpsConductor from Python: commands, scripts and file copies on a fleet of
hosts, with typed parameters, live output, time limits, cancellation,
encrypted secrets and a durable record of every run — the same engine as the
``opsconductor`` CLI, running in this process. No server needed.

    from opsconductor import Conductor, exec_

    with Conductor("sqlite://ops.db") as oc:
        oc.define_job({"name": "hello", "steps": [exec_("echo hello from $(uname -n)")]})
        run = oc.run("hello", wait=True)
        for line in run.logs():
            print(line.target, line.text)
        print(run.status, [r.exit_code for r in run.results])

Definitions use the CLI's job-file format (``docs/job-format.md``), as a dict,
a YAML string or a path. Errors are subclasses of ``OpsConductorError``.
"""

from ._builders import Duration, copy, exec_, script
from ._errors import (
    Conflict,
    ExecutionError,
    NotFound,
    OpsConductorError,
    PermissionDenied,
    StoreError,
    Unauthenticated,
    ValidationError,
)
from ._native import (
    DEFAULT_DATABASE_URL,
    FEATURES,
    AsyncLogIterator,
    Conductor,
    LogIterator,
    Run,
    __version__,
)
from ._types import (
    ApplyItem,
    Docker,
    Job,
    Local,
    LogLine,
    RunStatus,
    SecretInfo,
    Ssh,
    StepResult,
    StepStatus,
    StreamName,
    Target,
    TargetCheck,
    WinRm,
)

__all__ = [
    "Conductor",
    "Run",
    "LogIterator",
    "AsyncLogIterator",
    "LogLine",
    "StepResult",
    "Job",
    "ApplyItem",
    "SecretInfo",
    "Local",
    "Ssh",
    "Docker",
    "WinRm",
    "Target",
    "TargetCheck",
    "RunStatus",
    "StepStatus",
    "StreamName",
    "Duration",
    "exec_",
    "script",
    "copy",
    "OpsConductorError",
    "ValidationError",
    "NotFound",
    "Conflict",
    "ExecutionError",
    "StoreError",
    "PermissionDenied",
    "Unauthenticated",
    "DEFAULT_DATABASE_URL",
    "FEATURES",
    "__version__",
]
