"""The run ledger: one small JSON object per run in a Cloud Storage bucket.

Layout under the configured prefix::

    runs/<run_key>.json      the run record (state, job, parameters, history, completion)
    active/<run_key>         an empty marker while the run is not finished, whose custom metadata
                             ``run`` carries what the sweep needs (backend, job, state, deadline): the
                             sweep lists only these, so its cost grows with the number of active runs,
                             never with history, and a run whose state did not change costs no ledger
                             call at all

Correctness rests on two conditional writes of small objects only (the ones fake-gcs-server and
GCS both enforce):

- **claim**: create-only, ``ifGenerationMatch=0``: of many concurrent deliveries exactly one wins;
- **update**: compare-and-swap, ``ifGenerationMatch=<generation read>``: a writer that read a stale
  record loses and must re-read (see :meth:`Ledger.mutate`).

A launch costs three calls: the claim, the backend's launch request, and the marker, written once
the job exists and carrying it. The record itself still says CLAIMED until the first check writes
the job into it; until then :meth:`Ledger.get` reads the marker too and folds the job in, so every
reader (duplicate deliveries, takeovers, the CLI, the API) sees the launched run. Markers are plain
unconditional writes and deletes: a lost, stale or repeated marker is harmless because the record
decides and the next check rewrites the marker.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

from handlers.backends.contract import JobRef, RunState
from handlers.core.errors import LedgerUnavailable, NotFound
from handlers.core.times import from_iso, iso, now
from handlers.launch.store import Conflict as Conflict  # re-exported: callers catch ledger.Conflict

SCHEMA = 1
HISTORY_LIMIT = 50


class Store(Protocol):
    """A tiny object-store contract: what the ledger needs and nothing more."""

    def read(self, name: str) -> tuple[bytes, int] | None: ...

    def create(self, name: str, data: bytes) -> int: ...

    def replace(self, name: str, data: bytes, generation: int) -> int: ...

    def delete(self, name: str) -> None: ...

    def list(self, prefix: str) -> Iterator[str]: ...

    def put_meta(self, name: str, metadata: Mapping[str, str]) -> None: ...

    def read_meta(self, name: str) -> Mapping[str, str] | None: ...

    def list_meta(self, prefix: str) -> Iterator[tuple[str, Mapping[str, str]]]: ...


@dataclass(frozen=True)
class Run:
    """One run record. Frozen: changes go through :func:`dataclasses.replace` and :meth:`Ledger.update`."""

    run_key: str
    trigger: str
    pipeline: str
    backend: str
    state: str
    job_name: str
    event: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    job: Mapping[str, Any] | None = None
    owner: str | None = None
    lease_until: str | None = None
    attempts: int = 0
    error: Mapping[str, Any] | None = None
    created_at: str | None = None
    updated_at: str | None = None
    launched_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    deadline_at: str | None = None
    last_seen_at: str | None = None
    raw_state: str | None = None
    completion: Mapping[str, Any] | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    rerun: int = 0  # a replay's rerun generation (``replay --rerun``); 0: the live run
    generation: int = 0  # not stored: the object generation this copy was read at
    unrecorded_job: bool = False  # not stored: the job came from the active marker, not the record

    @property
    def run_state(self) -> RunState:
        return RunState(self.state)

    @property
    def terminal(self) -> bool:
        return self.run_state.terminal

    @property
    def job_ref(self) -> JobRef | None:
        return JobRef.from_json(self.job) if self.job else None

    def lease_expired(self, at: dt.datetime | None = None) -> bool:
        until = from_iso(self.lease_until)
        return until is None or (at or now()) >= until

    def with_state(self, state: RunState | str, note: str = "", **changes: Any) -> Run:
        """A copy in ``state`` with a history line (bounded) and ``updated_at`` set."""
        stamp = iso(now())
        entry = {"at": stamp, "state": str(state)}
        if note:
            entry["note"] = note
        history = (*self.history, entry)[-HISTORY_LIMIT:]
        return replace(self, state=str(state), updated_at=stamp, history=history, **changes)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("generation")
        doc.pop("unrecorded_job")
        doc["history"] = list(self.history)
        doc["schema"] = SCHEMA
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], generation: int = 0) -> Run:
        known = {f for f in cls.__dataclass_fields__ if f not in ("generation", "unrecorded_job")}
        values = {k: v for k, v in doc.items() if k in known}
        values["history"] = tuple(values.get("history") or ())
        return cls(**values, generation=generation)


def launched(run: Run, job: Mapping[str, Any], launched_at: str | None, deadline_at: str | None) -> Run:
    """``run`` once its job exists: PENDING, no lease, the job and its deadline recorded."""
    return run.with_state(
        RunState.PENDING,
        f"job {job.get('id')} launched",
        job=dict(job),
        launched_at=launched_at,
        lease_until=None,
        deadline_at=deadline_at,
        last_seen_at=launched_at,
    )


@dataclass(frozen=True)
class Marker:
    """What an active marker carries (custom metadata ``run``, compact JSON): enough for the sweep to
    ask the backend and notice a change without reading the record."""

    run_key: str
    backend: str | None = None
    pipeline: str | None = None
    job: Mapping[str, Any] | None = None
    state: str | None = None
    raw_state: str | None = None
    launched_at: str | None = None
    deadline_at: str | None = None
    started_at: str | None = None
    seen_at: str | None = None
    recorded: bool = True  # False: the record does not hold the job yet (see Ledger.get)

    @classmethod
    def of(cls, run: Run, *, recorded: bool = True, seen_at: str | None = None) -> Marker:
        return cls(
            run_key=run.run_key,
            backend=run.backend,
            pipeline=run.pipeline,
            job=dict(run.job) if run.job else None,
            state=run.state,
            raw_state=run.raw_state,
            launched_at=run.launched_at,
            deadline_at=run.deadline_at,
            started_at=run.started_at,
            seen_at=seen_at or run.last_seen_at,
            recorded=recorded,
        )

    def to_meta(self) -> dict[str, str]:
        doc = {k: v for k, v in asdict(self).items() if k != "run_key" and v is not None}
        return {"run": json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))}

    @classmethod
    def from_meta(cls, run_key: str, meta: Mapping[str, str] | None) -> Marker | None:
        """``None`` for a bare marker (a run that failed to launch) or one that cannot be read."""
        try:
            doc = json.loads((meta or {})["run"])
        except (KeyError, TypeError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("job"), dict):
            return None
        known = {f for f in cls.__dataclass_fields__ if f != "run_key"}
        return cls(run_key=run_key, **{k: v for k, v in doc.items() if k in known})

    def fold_into(self, run: Run) -> Run:
        """A CLAIMED record whose job is only on the marker, seen as launched."""
        assert self.job is not None
        folded = launched(run, self.job, self.launched_at or run.updated_at, self.deadline_at)
        return replace(folded, unrecorded_job=True)


def new_owner() -> str:
    """A token naming one invocation's claim."""
    return uuid.uuid4().hex


class Ledger:
    """Run records over a :class:`Store`."""

    def __init__(self, store: Store, prefix: str = "pipeline-ledger/") -> None:
        self.store = store
        self.prefix = prefix

    def _run_name(self, run_key: str) -> str:
        return f"{self.prefix}runs/{run_key}.json"

    def _active_name(self, run_key: str) -> str:
        return f"{self.prefix}active/{run_key}"

    @staticmethod
    def _encode(run: Run) -> bytes:
        return json.dumps(run.to_json(), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()

    def get(self, run_key: str, marker: Marker | None = None) -> Run | None:
        """The run; a CLAIMED record whose job so far lives on its marker comes back with it folded in
        (``marker``: the one the caller already listed, which saves reading it again)."""
        found = self.store.read(self._run_name(run_key))
        if found is None:
            return None
        data, generation = found
        run = Run.from_json(json.loads(data), generation)
        if run.state == RunState.CLAIMED and run.job is None:
            if marker is None or marker.job is None:
                marker = Marker.from_meta(run_key, self.store.read_meta(self._active_name(run_key)))
            if marker is not None and marker.job is not None:
                return marker.fold_into(run)
        return run

    def peek(self, run_key: str) -> Run | None:
        """The record as stored (one read; a job still only on its marker is not folded in): enough
        to know a run exists, as a replay asks of every event."""
        found = self.store.read(self._run_name(run_key))
        return None if found is None else Run.from_json(json.loads(found[0]), found[1])

    def marker(self, run_key: str) -> Marker | None:
        """The run's active marker, when it carries a job (one read)."""
        return Marker.from_meta(run_key, self.store.read_meta(self._active_name(run_key)))

    def require(self, run_key: str) -> Run:
        run = self.get(run_key)
        if run is None:
            raise NotFound(f"no run {run_key!r} in the ledger", run_key=run_key)
        return run

    def create(self, run: Run) -> Run:
        """Create-only write; raises :class:`Conflict` when the run exists."""
        stamp = iso(now())
        run = replace(run, created_at=run.created_at or stamp, updated_at=stamp)
        generation = self.store.create(self._run_name(run.run_key), self._encode(run))
        return replace(run, generation=generation)

    def update(self, run: Run) -> Run:
        """Compare-and-swap on ``run.generation``; raises :class:`Conflict` when it changed."""
        generation = self.store.replace(self._run_name(run.run_key), self._encode(run), run.generation)
        return replace(run, generation=generation, unrecorded_job=False)

    def mutate(
        self,
        run_key: str,
        change: Callable[[Run], Run | None],
        attempts: int = 10,
        current: Run | None = None,
    ) -> Run | None:
        """Read, apply ``change`` (``None`` = nothing to do), write by CAS; re-read on conflict.
        ``current``: a copy the caller just read, tried first (the CAS rejects it if it is stale)."""
        for _ in range(attempts):
            current = current or self.require(run_key)
            updated = change(current)
            if updated is None:
                return current
            try:
                return self.update(updated)
            except Conflict:
                current = None
                continue
        raise LedgerUnavailable(f"run {run_key}: too much contention updating the ledger", run_key=run_key)

    def mark_active(self, run_key: str, marker: Marker | None = None) -> None:
        """Put the run in the active index (the sweep checks it), with what the sweep needs."""
        self.store.put_meta(self._active_name(run_key), marker.to_meta() if marker else {})

    def clear_active(self, run_key: str) -> None:
        self.store.delete(self._active_name(run_key))

    def active(self) -> list[tuple[str, Marker | None]]:
        """Every active run with its marker (``None``: a bare marker; the sweep reads the record)."""
        prefix = f"{self.prefix}active/"
        return [
            (name[len(prefix) :], Marker.from_meta(name[len(prefix) :], meta))
            for name, meta in self.store.list_meta(prefix)
        ]

    def active_keys(self) -> list[str]:
        return [key for key, _ in self.active()]

    def all_keys(self) -> list[str]:
        prefix = f"{self.prefix}runs/"
        return [
            name[len(prefix) : -len(".json")] for name in self.store.list(prefix) if name.endswith(".json")
        ]

    def claim_job(self, backend: str, job_id: str, run_key: str) -> bool:
        """Whether ``run_key`` owns ``job_id`` (create-only ``jobs/<backend>/<id>``; the first claim
        wins). Only for backends whose find() guesses: no two runs may follow one job."""
        name = f"jobs/{backend}/{quote(job_id, safe='')}"
        for _ in range(10):
            try:
                self.write_doc(name, {"run_key": run_key, "claimed_at": iso(now())}, 0)
                return True
            except Conflict:
                found = self.read_doc(name)
            if found is not None:
                return found[0].get("run_key") == run_key
            # a 412 for an object that is not there (a contended store): nobody claimed it yet
        raise LedgerUnavailable(f"claim of job {job_id}: conflicts without a claim to read", job_id=job_id)

    # Generic small documents (fan-in joins) share the same conditional-write discipline.
    def read_doc(self, name: str) -> tuple[dict[str, Any], int] | None:
        found = self.store.read(f"{self.prefix}{name}")
        return None if found is None else (json.loads(found[0]), found[1])

    def write_doc(self, name: str, doc: Mapping[str, Any], generation: int) -> int:
        data = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
        path = f"{self.prefix}{name}"
        return (
            self.store.create(path, data) if generation == 0 else self.store.replace(path, data, generation)
        )
