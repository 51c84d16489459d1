"""Retries inside one invocation: capped exponential backoff with jitter, honouring Retry-After.

Only :class:`~handlers.core.errors.RetryableError` is retried; permanent errors pass straight through.
The total time is bounded by a budget: when it runs out, the last retryable error is raised so the
platform redelivers the event later (with its own, longer backoff).

Built on tenacity (a well-kept retry library, 8 to 12 ms of import on top of google-auth), which is
imported only when a first attempt fails: most invocations never retry, and a cold start then does
not pay for it (measured by ``make bench``, docs/PERFORMANCE.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from handlers.core import logs
from handlers.core.errors import RetryableError

if TYPE_CHECKING:
    import tenacity

T = TypeVar("T")


@functools.cache
def _wait_class() -> type[Any]:
    """The wait strategy, defined on first use because it subclasses a tenacity class."""
    import tenacity  # only once a call has failed: tenacity is not imported on a cold start's success

    class _WaitHonouringRetryAfter(tenacity.wait.wait_base):
        """Exponential backoff with full jitter, but never shorter than the server's Retry-After."""

        def __init__(self, initial: float, maximum: float) -> None:
            self._backoff = tenacity.wait_random_exponential(multiplier=initial, max=maximum)
            self._maximum = maximum

        def __call__(self, retry_state: tenacity.RetryCallState) -> float:
            wait = self._backoff(retry_state)
            outcome = retry_state.outcome
            exc = outcome.exception() if outcome is not None else None
            hinted = getattr(exc, "retry_after", None)
            if hinted is not None:
                wait = max(wait, min(float(hinted), self._maximum))
            return float(wait)

    return _WaitHonouringRetryAfter


def call(
    fn: Callable[[], T],
    *,
    budget_seconds: float,
    initial: float = 0.5,
    maximum: float = 10.0,
    what: str = "call",
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """Run ``fn`` until it succeeds, a permanent error escapes, or the budget is spent.

    The first attempt runs without tenacity; when it fails with a retryable error, tenacity takes
    over from exactly that point (its first attempt re-raises the error just caught, so the
    attempts, waits, log lines and deadline are those of a tenacity loop from the start).
    """
    deadline = time.monotonic() + budget_seconds
    try:
        return fn()
    except RetryableError as exc:
        first_failure: list[BaseException] = [exc]

    def attempt() -> T:
        if first_failure:
            raise first_failure.pop()
        return fn()

    import tenacity  # only now that a retry is due (see the module's docstring)

    def stop(retry_state: tenacity.RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        return time.monotonic() + upcoming >= deadline

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        logs.warning(
            f"{what}: retrying after a transient error",
            attempt=retry_state.attempt_number,
            wait_seconds=round(retry_state.upcoming_sleep, 3),
            cause=str(exc),
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(RetryableError),
        wait=_wait_class()(initial, maximum),
        stop=stop,
        sleep=sleep,
        reraise=True,
        before_sleep=before_sleep,
    )
    return retrying(attempt)
