"""The one contract every pipeline backend implements, and the normalized run states.

A backend turns a :class:`LaunchRequest` into a running job and answers four questions about it::

    launch(request) -> JobRef          start it (raises AlreadyExists if that name is already active)
    find(request)   -> JobRef | None   the job this run already started, in any state (idempotency)
    status(ref)     -> JobStatus       its current state, normalized
    cancel(ref, drain=False)           stop it (drain: let a streaming job finish its in-flight work)

Tracking, completion events and chaining only ever see these types, so they work unchanged for
every backend. Adding a backend means one new module here and one line in ``BACKENDS``.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class RunState(enum.StrEnum):
    """The normalized state of a run, whatever its backend."""

    CLAIMED = "CLAIMED"  # ledger only: an invocation owns the run, no job recorded yet
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    LAUNCH_FAILED = "LAUNCH_FAILED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT, RunState.LAUNCH_FAILED}
)


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one run."""

    run_key: str
    job_name: str
    pipeline: Any  # handlers.model.config.Pipeline (kept loose to avoid an import cycle)
    parameters: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    # When the run was first claimed: backends without a searchable run key (Fabric) look for
    # job instances started after it when an earlier start attempt's answer was lost.
    requested_at: dt.datetime | None = None


@dataclass(frozen=True)
class JobRef:
    """Where a launched run lives in its backend."""

    backend: str
    job_id: str
    job_name: str = ""
    project: str = ""
    region: str = ""
    url: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "id": self.job_id,
            "name": self.job_name,
            "project": self.project,
            "region": self.region,
            "url": self.url,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobRef:
        return cls(
            backend=doc["backend"],
            job_id=doc["id"],
            job_name=doc.get("name", ""),
            project=doc.get("project", ""),
            region=doc.get("region", ""),
            url=doc.get("url", ""),
            extra=doc.get("extra") or {},
        )


@dataclass(frozen=True)
class JobStatus:
    """A backend's answer about one job, normalized."""

    state: RunState
    raw_state: str
    reason: str | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    state_time: dt.datetime | None = None


class Backend(Protocol):
    """What the launch service and the tracker need from a pipeline system."""

    name: str
    # Optional: seconds a just-started run may stay invisible to find(); the launch service waits
    # that long after an uncertain start before concluding that nothing started.
    # settle_seconds: float
    # Optional: False when find() can only guess (a Fabric job instance carries no run key): the
    # launch service then claims each job id in the ledger, so no two runs follow one job, and asks
    # find() again without the ids other runs own.
    # exact_find: bool

    def launch(self, request: LaunchRequest) -> JobRef: ...

    def find(self, request: LaunchRequest, exclude: frozenset[str] = frozenset()) -> JobRef | None: ...

    def status(self, ref: JobRef) -> JobStatus: ...

    def cancel(self, ref: JobRef, *, drain: bool = False) -> None: ...
