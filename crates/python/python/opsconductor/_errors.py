"""The exceptions OpsConductor raises.

Each kind of engine error (``Error::kind()`` in the Rust core) maps to exactly
one class here; the message is the engine's own, unchanged. Every class
derives from :class:`OpsConductorError`, so ``except OpsConductorError``
catches everything the engine raises. Where a standard exception says the
same thing, the class derives from it too (``ValidationError`` is a
``ValueError``, ``NotFound`` a ``LookupError``), so generic handlers work.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "OpsConductorError",
    "ValidationError",
    "NotFound",
    "Conflict",
    "ExecutionError",
    "StoreError",
    "PermissionDenied",
    "Unauthenticated",
]


class OpsConductorError(Exception):
    """Base class of every error the engine raises.

    ``str(err)`` is the engine's full message: what went wrong, where, and
    (when it can tell) what to do about it.
    """

    message: str
    """The engine's message (for :class:`ValidationError`, without the field)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(OpsConductorError, ValueError):
    """Bad input: a job or target definition, a parameter, a selector, a name.

    Nothing was stored or queued. ``field`` says where the problem is — a
    parameter (``params.version``), a place in a definition
    (``job 'deploy'.steps[2].copy.mode``) or ``file.yaml:12:3`` — and
    ``message`` what is wrong with it.
    """

    field: Optional[str]
    """Where the problem is, or ``None`` when it is not about one field."""

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        OpsConductorError.__init__(self, f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


class NotFound(OpsConductorError, LookupError):
    """A named object (job, job version, target, run, secret) does not exist."""

    what: Optional[str]
    """The kind of object: ``"job"``, ``"target"``, ``"run"``, ``"secret"``, …"""
    name: Optional[str]
    """The name or id that was asked for."""

    def __init__(
        self, message: str, what: Optional[str] = None, name: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.what = what
        self.name = name


class Conflict(OpsConductorError):
    """The request conflicts with the current state (a deprecated job, a secret in use, …)."""


class ExecutionError(OpsConductorError):
    """A run did not succeed (raised with ``check=True``), or an executor failed to reach or drive a target."""

    run_id: Optional[str]
    """The run, when this is about one."""
    status: Optional[str]
    """The run's final status (``failed``, ``cancelled``, ``timed_out``), when this is about a run."""

    def __init__(
        self, message: str, run_id: Optional[str] = None, status: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class StoreError(OpsConductorError):
    """The database failed (unreachable, locked for too long, corrupt, newer schema, …)."""


class PermissionDenied(OpsConductorError, PermissionError):
    """The acting user's role does not allow this."""


class Unauthenticated(OpsConductorError):
    """The caller could not be identified (bad credentials, an expired token)."""
