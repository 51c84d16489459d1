"""The project's one error tree.

Every failure the functions can meet is one of these, and the split decides what the platform
does with the event::

    PipelineError                    base; carries trigger / pipeline / field / run_key context
    ├── RetryableError               raise from the function -> HTTP 500 -> the platform redelivers
    │   ├── BackendUnavailable       429, 5xx, connection errors, timeouts from a pipeline backend
    │   ├── LedgerUnavailable        the run ledger (GCS) could not be read or written
    │   ├── PublishUnavailable       the completion topic could not be reached
    │   └── RunInProgress            another invocation holds a fresh claim on this run
    └── PermanentError               record in the ledger, log, acknowledge: never loops
        ├── ConfigError              the routing config is invalid (lists every problem)
        ├── EventError               a malformed or unsupported event
        ├── ParameterError           a parameter could not be rendered, or fails the template's rules
        ├── NotFound                 an unknown pipeline / run / job
        ├── BackendRejected          400 / 401 / 403 / 404 / 409-conflict from a backend
        │   └── AlreadyExists        a job with this name is already active (treated as success)
        └── EventTooOld              the event is older than the configured maximum age

Code branches on the class (and ``status``/``reason`` fields), never on message text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from handlers.core import logs


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        trigger: str | None = None,
        pipeline: str | None = None,
        field: str | None = None,
        run_key: str | None = None,
    ) -> None:
        message = logs.scrub(message)  # upstream text can echo a secret: never kept, logged or recorded
        super().__init__(message)
        self.message = message
        self.trigger = trigger
        self.pipeline = pipeline
        self.field = field
        self.run_key = run_key

    def context(self) -> dict[str, Any]:
        """The non-empty context fields, for logs and ledger records."""
        ctx = {
            "error": type(self).__name__,
            "message": self.message,
            "retryable": self.retryable,
            "trigger": self.trigger,
            "pipeline": self.pipeline,
            "field": self.field,
            "run_key": self.run_key,
        }
        return {k: v for k, v in ctx.items() if v is not None}


class RetryableError(PipelineError):
    """A failure a later attempt can cure: the function raises so the platform redelivers."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.retry_after = retry_after


class BackendUnavailable(RetryableError):
    """The backend answered 429/5xx, or could not be reached in time."""

    def __init__(self, message: str, *, status: int | None = None, **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.status = status


class LedgerUnavailable(RetryableError):
    """The run ledger could not be read or written."""


class PublishUnavailable(RetryableError):
    """A completion event could not be published."""


class RunInProgress(RetryableError):
    """Another invocation holds a fresh claim on this run and has not recorded a job yet."""


class PermanentError(PipelineError):
    """A failure no retry can cure: record it, log it, acknowledge the event."""


class ConfigError(PermanentError):
    """The routing config is invalid. ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: Iterable[str], *, source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class EventError(PermanentError):
    """The event is malformed or of a kind this function does not handle."""


class ParameterError(PermanentError):
    """A parameter could not be rendered from the event, or breaks the pipeline's rules."""


class NotFound(PermanentError):
    """An unknown pipeline, run or job."""


class BackendRejected(PermanentError):
    """The backend refused the request for a reason a retry cannot fix."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str | None = None, **ctx: Any
    ) -> None:
        super().__init__(message, **ctx)
        self.status = status
        self.reason = logs.scrub(reason) if isinstance(reason, str) else reason  # an upstream's word too

    def context(self) -> dict[str, Any]:
        ctx = super().context()
        if self.status is not None:
            ctx["status"] = self.status
        if self.reason:
            ctx["reason"] = self.reason
        return ctx


class AlreadyExists(BackendRejected):
    """A job with this name is already active: the launch already happened."""


class EventTooOld(PermanentError):
    """The event is older than the configured maximum age and is dropped."""
