"""Step builders: ``exec_``, ``script`` and ``copy`` return steps in the
job-file format (``docs/job-format.md``), ready for ``Conductor.define_job``::

    oc.define_job({
        "name": "hello",
        "steps": [exec_("uptime"), script("echo $OPSC_TARGET", interpreter="bash")],
    })

They only build dictionaries; the engine checks them when the job is defined.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Dict, Mapping, Optional, Union

__all__ = ["exec_", "script", "copy", "Duration"]

Duration = Union[str, int, float, timedelta]
"""A time limit: ``"30s"``, ``"1h30m"``, ``"500ms"``, a number of seconds or a ``timedelta``."""


def _duration(value: Duration) -> Union[str, int]:
    """A time limit as the job-file format writes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("a time limit cannot be a bool")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"a time limit cannot be negative ({seconds}s)")
    if seconds == int(seconds):
        return int(seconds)
    return f"{round(seconds * 1000)}ms"


def _common(
    step: Dict[str, Any],
    name: Optional[str],
    timeout: Optional[Duration],
    env: Optional[Mapping[str, Any]],
    workdir: Optional[Union[str, "os.PathLike[str]"]],
    continue_on_error: bool,
    idempotent: bool,
    raw: bool,
) -> Dict[str, Any]:
    if name is not None:
        step = {"name": name, **step}
    if timeout is not None:
        step["timeout"] = _duration(timeout)
    if env:
        step["env"] = {str(k): v for k, v in env.items()}
    if workdir is not None:
        step["workdir"] = os.fspath(workdir)
    if continue_on_error:
        step["continue_on_error"] = True
    if idempotent:
        step["idempotent"] = True
    if raw:
        step["raw"] = True
    return step


def exec_(
    command: str,
    *,
    name: Optional[str] = None,
    timeout: Optional[Duration] = None,
    env: Optional[Mapping[str, Any]] = None,
    workdir: Optional[Union[str, "os.PathLike[str]"]] = None,
    continue_on_error: bool = False,
    idempotent: bool = False,
    raw: bool = False,
) -> Dict[str, Any]:
    """A step that runs a command line with the target's shell (``sh -c``).

    The command is a template: ``{{ params.version }}`` is replaced by the
    parameter, shell-quoted. ``raw=True`` turns templating off (for text full
    of ``{{``). ``timeout`` limits the step on each target; the whole process
    group is killed when it is reached. ``continue_on_error`` keeps the
    target going after a failure; ``idempotent`` allows a rescued run to
    repeat the step.
    """
    return _common(
        {"exec": command}, name, timeout, env, workdir, continue_on_error, idempotent, raw
    )


def script(
    body: str,
    interpreter: str = "sh",
    *,
    name: Optional[str] = None,
    timeout: Optional[Duration] = None,
    env: Optional[Mapping[str, Any]] = None,
    workdir: Optional[Union[str, "os.PathLike[str]"]] = None,
    continue_on_error: bool = False,
    idempotent: bool = False,
    raw: bool = False,
) -> Dict[str, Any]:
    """A step that writes ``body`` to a private temporary file and runs ``INTERPRETER FILE``.

    The body is a template whose values are quoted for the interpreter
    (shell quoting for ``sh``/``bash``, string literals for ``python``,
    PowerShell strings for ``pwsh``). Other arguments as for :func:`exec_`.
    """
    return _common(
        {"script": body, "interpreter": interpreter},
        name,
        timeout,
        env,
        workdir,
        continue_on_error,
        idempotent,
        raw,
    )


def copy(
    dest: str,
    content: Optional[str] = None,
    *,
    src: Optional[Union[str, "os.PathLike[str]"]] = None,
    mode: Union[str, int] = "0644",
    name: Optional[str] = None,
    timeout: Optional[Duration] = None,
    continue_on_error: bool = False,
    idempotent: bool = False,
    raw: bool = False,
) -> Dict[str, Any]:
    """A step that writes a file on each target, atomically (a temporary name, then rename).

    Give either ``content`` (inline text, a template inserted verbatim) or
    ``src`` (a file on the host the engine runs on). ``dest`` is an absolute
    path (a template). ``mode`` is an octal string (``"0600"``) or an int
    (``0o600``).
    """
    spec: Dict[str, Any] = {"dest": dest}
    if content is not None:
        spec["content"] = content
    if src is not None:
        spec["src"] = os.fspath(src)
    if isinstance(mode, bool):
        raise TypeError("mode must be an octal string like '0644' or an int like 0o644")
    spec["mode"] = format(mode, "04o") if isinstance(mode, int) else mode
    return _common(
        {"copy": spec}, name, timeout, None, None, continue_on_error, idempotent, raw
    )
