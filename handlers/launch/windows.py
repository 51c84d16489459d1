"""Windows in the ledger: many object events, one launch per window, each object in exactly one.

A storage trigger with ``batch:`` does not launch per object. Under the ledger prefix::

    windows/<trigger>/<key hash>/<seq>.json     the window document (compare-and-swap): state,
                                                members (their manifest lines), bytes, times
    windows/<trigger>/<key hash>/current.json   a hint: the sequence number of the open window
    windows/<trigger>/members/<object hash>.json  membership: which window this object belongs to
                                                (create-only; moved only off a sealed window)
    windows-open/<trigger>/<window id>          a marker while the window is not launched: the
                                                sweep lists these (max_wait, unfinished closes)

A window is ``OPEN`` -> ``CLOSING`` (sealed: its members never change again) -> ``LAUNCHED``
(handed to the launch service, run key from trigger and window id), or ``OPEN`` -> ``EMPTY`` when
``max_wait`` passed with no member. Joining, for one object (however often it is delivered)::

    create the membership (create-only) naming the window this process last saw open (else: the
    hint, then the first OPEN by sequence; created if missing: marker first, then the document)
       │  it exists already (a redelivery, or a concurrent delivery won): read it
       v
    the window the membership names
       ├─ lists the object ─────────────> joined (if CLOSING: finish the close)
       ├─ OPEN: add it by CAS ───────────> joined; the add that fills it seals it CLOSING in the same
       │                                   write, then finishes the close (manifest, launch)
       └─ sealed without it ─────────────> move the membership (CAS) to the open window, again

Why nothing is lost or doubled: an object is only ever added to the window its membership names, by
a CAS on a document that is still OPEN; the membership moves only after the named window was seen
sealed without it, and a sealed window never changes its members. A delivery that crashes after
writing the membership and before the add leaves the object in no window yet: its redelivery (the
platform redelivers until acknowledged) completes the join, moving it if that window closed
meanwhile. Closing is idempotent: the manifest (``batch.manifest_prefix``) is written create-only
from the sealed members, and the launch goes through the launch service's exactly-once claim; the
sweep (:meth:`Windows.sweep`, run by ``check_runs``) seals windows past ``max_wait`` and finishes
every close a crash left half done.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from handlers.core import logs
from handlers.core.errors import LedgerUnavailable, PipelineError
from handlers.core.ids import digest
from handlers.core.times import from_iso, iso, now
from handlers.launch.ledger import Conflict
from handlers.launch.runtime import Runtime
from handlers.launch.service import LaunchResult, LaunchService, Outcome, WindowResult, each_in_turn
from handlers.launch.store import GcsStore
from handlers.model.config import Trigger
from handlers.model.windows import (
    MANIFEST_CONTENT_TYPE,
    Member,
    WindowEvent,
    key_hash,
    manifest_lines,
    manifest_location,
    time_of,
    window_id,
)
from handlers.route.plan import Action, WindowPlan, plan_launch

MAX_ATTEMPTS = 80  # compare-and-swap rounds one join may take under contention before redelivery
CLOSE_GRACE_SECONDS = 15.0  # a CLOSING window younger than this is left to the delivery closing it


class WindowState(enum.StrEnum):
    OPEN = "OPEN"  # taking members
    CLOSING = "CLOSING"  # sealed (members final); manifest and launch may still be under way
    LAUNCHED = "LAUNCHED"  # its run was handed to the launch service (run_key recorded)
    EMPTY = "EMPTY"  # max_wait passed without a member: closed, nothing launches


@dataclass(frozen=True)
class WindowDoc:
    """One window's document."""

    trigger: str
    key: str
    seq: int
    state: WindowState = WindowState.OPEN
    members: tuple[Member, ...] = ()
    bytes: int = 0
    created_at: str | None = None
    opened_at: str | None = None  # when its first member joined
    closed_at: str | None = None
    reason: str | None = None  # max_items | max_bytes | max_wait
    run_key: str | None = None
    rerun: int = 0  # a replay's rerun generation: its windows are its own (handlers.model.windows)
    generation: int = field(default=0, compare=False)  # not stored

    @property
    def id(self) -> str:
        return window_id(self.trigger, self.key, self.seq, self.rerun)

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def sealed(self) -> bool:
        return self.state is not WindowState.OPEN

    def contains(self, member: Member) -> bool:
        return any(m.identity == member.identity for m in self.members)

    def to_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "key": self.key,
            "seq": self.seq,
            "id": self.id,
            "state": str(self.state),
            "members": [m.to_json() for m in self.members],
            "count": self.count,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "reason": self.reason,
            "run_key": self.run_key,
            **({"rerun": self.rerun} if self.rerun else {}),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], generation: int) -> WindowDoc:
        rerun = int(doc.get("rerun") or 0)
        return cls(
            trigger=str(doc["trigger"]),
            key=str(doc["key"]),
            seq=int(doc["seq"]),
            state=WindowState(doc.get("state") or WindowState.OPEN),
            members=tuple(Member.from_json(m, rerun) for m in doc.get("members") or ()),
            bytes=int(doc.get("bytes") or 0),
            created_at=doc.get("created_at"),
            opened_at=doc.get("opened_at"),
            closed_at=doc.get("closed_at"),
            reason=doc.get("reason"),
            run_key=doc.get("run_key"),
            rerun=rerun,
            generation=generation,
        )

    def seal(self, reason: str, at: dt.datetime) -> WindowDoc:
        state = WindowState.CLOSING if self.members else WindowState.EMPTY
        return replace(self, state=state, closed_at=iso(at), reason=reason)

    def due_at(self, max_wait: float | None) -> dt.datetime | None:
        since = from_iso(self.opened_at or self.created_at)
        return since + dt.timedelta(seconds=max_wait) if since and max_wait else None


def doc_name(trigger: str, wid: str) -> str:
    khash, _, seq = wid.rpartition("-")
    return f"windows/{trigger}/{khash}/{seq}.json"


def hint_name(trigger: str, key: str, rerun: int = 0) -> str:
    return f"windows/{trigger}/{key_hash(trigger, key, rerun)}/current.json"


def member_name(trigger: str, member: Member) -> str:
    return f"windows/{trigger}/members/{digest(member.identity, length=32)}.json"


MARKERS = "windows-open/"
# (ledger bucket, prefix, trigger, key, rerun) -> the sequence of the window this process last saw open: a
# warm instance goes straight to it instead of reading the ledger's hint (a stale guess only costs a
# step forward). Plain dict operations: atomic under the GIL, so thread-safe without a lock.
_LAST_OPEN: dict[tuple[str, str, str, str, int], int] = {}


@dataclass
class WindowSweep:
    """What one sweep did to the open windows."""

    open: int = 0
    closed: dict[str, str] = field(default_factory=dict)  # window id -> why (max_wait)
    launched: dict[str, str] = field(default_factory=dict)  # window id -> run key
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Whereabouts:
    """Which window an object is in, or would join (``explain``; read only)."""

    window: str
    joined: bool  # the object is already a member
    state: str | None  # None: the window does not exist yet (the object would open it)
    count: int = 0
    bytes: int = 0
    run_key: str | None = None


class Windows:
    """Joins, closes and sweeps the windows of the batched triggers."""

    def __init__(
        self,
        runtime: Runtime,
        service: LaunchService | None = None,
        *,
        clock: Callable[[], dt.datetime] = now,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.rt = runtime
        self.service = service or LaunchService(runtime)
        self.clock = clock
        self.sleep = sleep
        self._stores: dict[str, GcsStore] = {}

    @property
    def ledger(self) -> Any:
        return self.rt.ledger

    # -- documents ---------------------------------------------------------------------------------
    def _read(self, trigger: str, wid: str) -> WindowDoc | None:
        found = self.ledger.read_doc(doc_name(trigger, wid))
        return None if found is None else WindowDoc.from_json(found[0], found[1])

    def _write(self, doc: WindowDoc) -> WindowDoc:
        generation = self.ledger.write_doc(doc_name(doc.trigger, doc.id), doc.to_json(), doc.generation)
        return replace(doc, generation=generation)

    def _marker(self, trigger: str, wid: str) -> str:
        return f"{self.ledger.prefix}{MARKERS}{trigger}/{wid}"

    def _create(self, trigger: Trigger, key: str, seq: int, rerun: int = 0) -> WindowDoc:
        """The window ``seq`` of ``key``, created OPEN unless it exists: the marker first, so a window
        document never exists without the marker the sweep finds it by."""
        wid = window_id(trigger.name, key, seq, rerun)
        stamp = iso(self.clock())
        self.ledger.store.put_meta(self._marker(trigger.name, wid), {"since": stamp})
        doc = WindowDoc(trigger.name, key, seq, created_at=stamp, rerun=rerun)
        try:
            return self._write(doc)
        except Conflict:
            found = self._read(trigger.name, wid)
            if found is None:
                raise LedgerUnavailable(f"window {wid}: created by another and gone again") from None
            return found

    def _cache_key(self, trigger: str, key: str, rerun: int = 0) -> tuple[str, str, str, str, int]:
        return (self.rt.config.settings.ledger_bucket, self.ledger.prefix, trigger, key, rerun)

    def _open_window(self, trigger: Trigger, key: str, after: int = 0, rerun: int = 0) -> WindowDoc:
        """The open window of ``key`` (created when there is none), past sequence ``after``: from the
        sequence this process last saw open, else the ledger's hint, walking forward."""
        ck = self._cache_key(trigger.name, key, rerun)
        known = _LAST_OPEN.get(ck)
        if known is None:
            hint = self.ledger.read_doc(hint_name(trigger.name, key, rerun))
            known = int(hint[0].get("seq") or 1) if hint else 1
        start = seq = max(known, after + 1)
        for _ in range(MAX_ATTEMPTS):
            doc = self._read(trigger.name, window_id(trigger.name, key, seq, rerun))
            if doc is None:
                doc = self._create(trigger, key, seq, rerun)
            if not doc.sealed:
                _LAST_OPEN[ck] = seq
                if seq != start:
                    self._advance_hint(trigger.name, key, seq, rerun)
                return doc
            seq += 1
        raise LedgerUnavailable(f"trigger {trigger.name}: no open window found", trigger=trigger.name)

    def _advance_hint(self, trigger: str, key: str, seq: int, rerun: int = 0) -> None:
        """Move the ledger's hint forward (a hint only: losing a race to a newer one is fine)."""
        name = hint_name(trigger, key, rerun)
        hint = self.ledger.read_doc(name)
        if hint is not None and int(hint[0].get("seq") or 0) >= seq:
            return
        try:
            self.ledger.write_doc(name, {"seq": seq}, hint[1] if hint else 0)
        except Conflict:
            pass

    # -- joining -----------------------------------------------------------------------------------
    def join_all(self, plans: Iterable[WindowPlan]) -> list[Outcome]:
        """Join every plan's window; raise the first retryable error after all had their turn."""
        return each_in_turn(
            plans,
            self.join,
            retryable="transient failure joining a window: the event will be redelivered",
            permanent="permanent failure joining a window: acknowledged",
        )

    def join(self, plan: WindowPlan) -> Outcome:
        """Put the plan's object in exactly one window of its trigger and key; close it when full."""
        trigger = plan.trigger
        if plan.action is not Action.JOIN or plan.key is None or plan.member is None:
            assert plan.error is not None
            logs.error("the window key could not be rendered: acknowledged", **plan.error.context())
            return Outcome(
                trigger.name, trigger.pipeline, None, LaunchResult.FAILED, reason=plan.error.message
            )
        key, member, rerun = plan.key, plan.member, plan.member.rerun
        with logs.bind(trigger=trigger.name, object=member.identity):
            mname = member_name(trigger.name, member)
            # The window this process last saw open (else the one the ledger says): a guess the
            # loop below corrects (a sealed window moves the membership on).
            doc: WindowDoc | None = None
            seq = _LAST_OPEN.get(self._cache_key(trigger.name, key, rerun))
            if seq is None:
                doc = self._open_window(trigger, key, rerun=rerun)
            wid = doc.id if doc is not None else window_id(trigger.name, key, seq or 1, rerun)
            record: dict[str, Any] = {
                "window": wid,
                "object": member.to_json(),
                "joined_at": iso(self.clock()),
            }
            try:
                mgen = self.ledger.write_doc(mname, record, 0)
            except Conflict:  # a delivery of this object got there first (or this is a redelivery)
                found = self.ledger.read_doc(mname)
                if found is None:
                    raise LedgerUnavailable(f"membership {mname}: vanished after a conflict") from None
                (record, mgen), doc = found, None
            for attempt in range(MAX_ATTEMPTS):
                wid = str(record["window"])
                if doc is None or doc.id != wid:
                    doc = self._read(trigger.name, wid)
                    if doc is None:  # removed behind our back (a lifecycle rule): open it again
                        doc = self._create(trigger, key, int(wid.rpartition("-")[2]), rerun)
                self._saw(doc)
                if doc.contains(member):
                    return self._joined(trigger, doc)
                if not doc.sealed:
                    try:
                        doc = self._write(self._add(trigger, doc, member))
                    except Conflict:
                        doc = None
                        self._back_off(attempt)
                        continue
                    self._saw(doc)
                    if doc.contains(member):
                        logs.info("object joined a window", window=doc.id, count=doc.count)
                        return self._joined(trigger, doc)
                    if doc.state is WindowState.CLOSING:  # we sealed it (full without this object)
                        self._finish_quietly(trigger, doc)
                # sealed without it: the object belongs to the open window after it
                target = self._open_window(trigger, key, after=doc.seq, rerun=rerun)
                moved = {**record, "window": target.id, "moved_from": wid}
                try:
                    mgen = self.ledger.write_doc(mname, moved, mgen)
                    record, doc = moved, target
                    logs.info("window closed before the object was added: moved", window=target.id)
                except Conflict:
                    again = self.ledger.read_doc(mname)
                    assert again is not None
                    record, mgen = again
                    doc = None
            raise LedgerUnavailable(f"window of {member.identity}: too much contention", trigger=trigger.name)

    def _saw(self, doc: WindowDoc) -> None:
        """Remember where the open window of ``doc``'s key is: this one, or (sealed) the next."""
        ck = self._cache_key(doc.trigger, doc.key, doc.rerun)
        seq = doc.seq + 1 if doc.sealed else doc.seq
        if _LAST_OPEN.get(ck, 0) < seq:
            _LAST_OPEN[ck] = seq

    def _back_off(self, attempt: int) -> None:
        self.sleep(random.uniform(0, 0.01 * min(attempt + 1, 10)))

    def _add(self, trigger: Trigger, doc: WindowDoc, member: Member) -> WindowDoc:
        """``doc`` with ``member`` added (sealed in the same write when that fills it), or sealed
        without it when it would overflow ``max_bytes`` (an oversized object still gets a window)."""
        spec = trigger.batch
        assert spec is not None
        stamp = self.clock()
        if spec.max_bytes is not None and doc.members and doc.bytes + member.size > spec.max_bytes:
            return doc.seal("max_bytes", stamp)
        added = replace(
            doc,
            members=(*doc.members, member),
            bytes=doc.bytes + member.size,
            opened_at=doc.opened_at or iso(stamp),
        )
        if added.count >= spec.item_limit:
            return added.seal("max_items", stamp)
        if spec.max_bytes is not None and added.bytes >= spec.max_bytes:
            return added.seal("max_bytes", stamp)
        return added

    def _joined(self, trigger: Trigger, doc: WindowDoc) -> Outcome:
        run_key = doc.run_key
        if doc.state is WindowState.CLOSING:
            run_key = self._finish_quietly(trigger, doc) or run_key
        return Outcome(trigger.name, trigger.pipeline, run_key, WindowResult.JOINED, window=doc.id)

    def _finish_quietly(self, trigger: Trigger, doc: WindowDoc) -> str | None:
        """Finish a sealed window's close from a delivery: its objects are safe in the sealed window
        whatever happens, so a failure here is left to the sweep (the delivery is acknowledged)."""
        try:
            return self.finish(trigger, doc).run_key
        except PipelineError as exc:
            logs.warning(
                "window sealed but its launch is not done: the sweep finishes it",
                window=doc.id,
                **exc.context(),
            )
            return None

    # -- closing -----------------------------------------------------------------------------------
    def event_of(self, trigger: Trigger, doc: WindowDoc) -> WindowEvent:
        """The closed window as its launch's input."""
        assert trigger.storage is not None and doc.members
        bucket, name = manifest_location(self.rt.config.settings, trigger, doc.id)
        times = sorted(m.event_time for m in doc.members)
        return WindowEvent(
            trigger=trigger.name,
            window_id=doc.id,
            key=doc.key,
            bucket=trigger.storage.bucket,
            count=doc.count,
            bytes=doc.bytes,
            first_time=time_of(times[0]),
            last_time=time_of(times[-1]),
            manifest_bucket=bucket,
            manifest_name=name,
            reason=doc.reason or "",
            rerun=doc.rerun,
        )

    def _store(self, bucket: str) -> Any:
        if bucket == self.rt.config.settings.ledger_bucket:
            return self.ledger.store
        if bucket not in self._stores:
            self._stores[bucket] = GcsStore(bucket)
        return self._stores[bucket]

    def _write_manifest(self, event: WindowEvent, doc: WindowDoc) -> None:
        """Create-only: a manifest written before a crash has the same bytes (the members are sealed)."""
        try:
            self._store(event.manifest_bucket).create(
                event.manifest_name, manifest_lines(doc.members), content_type=MANIFEST_CONTENT_TYPE
            )
        except Conflict:
            pass

    def finish(self, trigger: Trigger, doc: WindowDoc) -> Outcome:
        """Finish a sealed window's close: manifest, launch (exactly once), LAUNCHED, marker gone."""
        assert doc.state is WindowState.CLOSING
        event = self.event_of(trigger, doc)
        with logs.bind(window=doc.id):
            self._write_manifest(event, doc)
            outcome = self.service.launch(plan_launch(self.rt.config, trigger, event))

            def launched(current: WindowDoc) -> WindowDoc | None:
                if current.state is not WindowState.CLOSING:
                    return None
                return replace(current, state=WindowState.LAUNCHED, run_key=outcome.run_key)

            self._mutate(trigger.name, doc, launched)
            self.ledger.store.delete(self._marker(trigger.name, doc.id))
            logs.info(
                "window launched",
                count=doc.count,
                bytes=doc.bytes,
                reason=doc.reason,
                run_key=outcome.run_key,
            )
        return replace(outcome, window=doc.id)

    def _mutate(
        self, trigger: str, doc: WindowDoc, change: Callable[[WindowDoc], WindowDoc | None]
    ) -> WindowDoc | None:
        current: WindowDoc | None = doc
        for attempt in range(MAX_ATTEMPTS):
            if current is None:
                current = self._read(trigger, doc.id)
                if current is None:
                    return None
            changed = change(current)
            if changed is None:
                return current
            try:
                return self._write(changed)
            except Conflict:
                current = None
                self._back_off(attempt)
        raise LedgerUnavailable(f"window {doc.id}: too much contention", trigger=trigger)

    # -- the sweep ---------------------------------------------------------------------------------
    def sweep(self) -> WindowSweep:
        """Seal the windows past ``max_wait``, finish closes a crash left half done, forget launched
        windows' markers. Errors are per window: the next sweep tries again."""
        report = WindowSweep()
        prefix = f"{self.ledger.prefix}{MARKERS}"
        for name, meta in list(self.ledger.store.list_meta(prefix)):
            trigger_name, _, wid = name[len(prefix) :].partition("/")
            report.open += 1
            try:
                self._sweep_one(trigger_name, wid, meta, report)
            except PipelineError as exc:
                report.errors[wid] = exc.message
                logs.warning(
                    "could not sweep a window; the next sweep tries again", window=wid, **exc.context()
                )
        if report.open:
            logs.info(
                "windows swept",
                open=report.open,
                closed=len(report.closed),
                launched=len(report.launched),
                errors=len(report.errors),
            )
        return report

    def _sweep_one(self, trigger_name: str, wid: str, meta: Mapping[str, str], report: WindowSweep) -> None:
        trigger = self.rt.config.triggers.get(trigger_name)
        marker = self._marker(trigger_name, wid)
        if trigger is None or trigger.batch is None:
            logs.warning("a window of a trigger that no longer batches: left alone", window=wid)
            return
        stamp = self.clock()
        doc = self._read(trigger_name, wid)
        if doc is None:
            since = from_iso(meta.get("since"))
            lease = self.rt.config.settings.lease_seconds
            if since is None or (stamp - since).total_seconds() > lease:
                self.ledger.store.delete(marker)  # its creator died before writing the document
            return
        if doc.state is WindowState.OPEN:
            due = doc.due_at(trigger.batch.max_wait_seconds)
            if due is None or stamp < due:
                return

            def seal(current: WindowDoc) -> WindowDoc | None:
                return None if current.sealed else current.seal("max_wait", stamp)

            sealed = self._mutate(trigger_name, doc, seal)
            if sealed is None:
                return
            doc = sealed
            if doc.state is WindowState.CLOSING and doc.reason == "max_wait":
                report.closed[wid] = "max_wait"
        elif doc.state is WindowState.CLOSING:
            closed = from_iso(doc.closed_at)
            grace = min(CLOSE_GRACE_SECONDS, self.rt.config.settings.lease_seconds)
            if closed is not None and (stamp - closed).total_seconds() < grace:
                return  # the delivery that sealed it is most likely launching it right now
        if doc.state is WindowState.CLOSING:
            report.launched[wid] = str(self.finish(trigger, doc).run_key)
        else:  # LAUNCHED or EMPTY
            self.ledger.store.delete(marker)

    # -- explain -----------------------------------------------------------------------------------
    def whereabouts(self, plan: WindowPlan) -> Whereabouts:
        """The window the plan's object is in, or the one it would join now (reads only)."""
        assert plan.key is not None and plan.member is not None
        trigger, key, rerun = plan.trigger, plan.key, plan.member.rerun
        found = self.ledger.read_doc(member_name(trigger.name, plan.member))
        if found is not None:
            doc = self._read(trigger.name, str(found[0]["window"]))
            if doc is not None and doc.contains(plan.member):
                return Whereabouts(doc.id, True, str(doc.state), doc.count, doc.bytes, doc.run_key)
        hint = self.ledger.read_doc(hint_name(trigger.name, key, rerun))
        seq = int(hint[0].get("seq") or 1) if hint else 1
        for _ in range(MAX_ATTEMPTS):
            doc = self._read(trigger.name, window_id(trigger.name, key, seq, rerun))
            if doc is None:
                return Whereabouts(window_id(trigger.name, key, seq, rerun), False, None)
            if not doc.sealed:
                return Whereabouts(doc.id, False, str(doc.state), doc.count, doc.bytes)
            seq += 1
        return Whereabouts(window_id(trigger.name, key, seq, rerun), False, None)
