"""Backfill: old objects and dead-lettered messages fed through the live path, exactly once.

A replay takes one trigger and one source:

- **objects**: a bucket, listed with the Cloud Storage JSON API (paginated, in name order), under a
  prefix or matching a glob, optionally bounded by the object's update time (``since``/``until``).
  Each object becomes the ObjectEvent a live ``google.cloud.storage.object.v1.finalized`` delivery
  would be (:func:`handlers.model.events.parse_object_finalized` reads the same resource);
- **a dead-letter subscription**: messages pulled (REST, the Pub/Sub emulator locally) become the
  MessageEvent a push delivery would be, and are acknowledged only once handled.

Every event then takes the live path: :func:`handlers.route.plan.plan_object` /
:func:`~handlers.route.plan.plan_message`, restricted to the replay's trigger, carried out by
:func:`handlers.entry.functions.carry_out` (the launch service claims the run in the ledger; whatever
else the live path does to an event, such as windows, applies to replays too). Only the event-age
limit does not apply: a replay is old on purpose.

What already ran is recognised by its run key (:mod:`handlers.route.identity`): a run record in the
ledger means skipped, one ledger read. ``rerun`` starts a new *generation* instead: the events carry
``rerun=n``, the identity gets ``#rerun=n`` (another run key, never the live run's), and the run
record and its completion event say ``rerun: n``. On a ``batch:`` trigger a rerun's objects fill
windows of their own generation (:mod:`handlers.model.windows`), never the live ones. Generations are numbered per trigger by a counter
document in the ledger (``replays/<trigger>/generation.json``, compare-and-swap).

A replay is resumable: a checkpoint document in the ledger store (``replays/<trigger>/<id>.json``,
``id`` a digest of the replay's parameters) records the last object name handled, the counts and
the generation; a second replay with the same parameters continues after it. Exactly once does not
rest on the checkpoint (a crash between a launch and the next checkpoint replays a few objects,
which the ledger then skips): the checkpoint saves work.

A token bucket (:class:`TokenBucket`) spaces the launches (skips cost no backend call).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.backends.contract import RunState
from handlers.core import clients, http, logs
from handlers.core.errors import EventError, ParameterError, PermanentError, PipelineError, RetryableError
from handlers.core.ids import digest
from handlers.core.patterns import Glob, PatternError
from handlers.core.times import from_iso, iso, now
from handlers.entry.functions import carry_out
from handlers.launch.ledger import Conflict
from handlers.launch.runtime import Runtime
from handlers.launch.service import LaunchResult, LaunchService
from handlers.launch.store import GcsStore
from handlers.launch.windows import member_name
from handlers.model import events
from handlers.model.config import Trigger
from handlers.route.plan import Action, EventPlan, WindowPlan, plan_message, plan_object

CHECKPOINT_EVERY = 50  # events handled between checkpoint writes (and at the end, and on interruption)
PULL_BATCH = 100
COUNT_LIMIT = 100_000  # objects counted up front for the progress bar (100 listing calls at most)


class ReplayError(ParameterError):
    """A replay request that cannot be acted on (unknown trigger, no source, a bad glob...)."""


# ---------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplaySpec:
    """What to replay: one trigger, one source (objects or a dead-letter subscription)."""

    trigger: str
    bucket: str | None = None
    prefix: str | None = None
    glob: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    subscription: str | None = None
    rerun: bool = False

    def validate(self, triggers: Mapping[str, Trigger]) -> Trigger:
        trigger = triggers.get(self.trigger)
        if trigger is None:
            raise ReplayError(
                f"no trigger {self.trigger!r} (configured: {', '.join(sorted(triggers)) or 'none'})",
                field="trigger",
            )
        if (self.bucket is None) == (self.subscription is None):
            raise ReplayError("give one source: a bucket (objects) or a subscription (dead letters)")
        if self.subscription is not None:
            if any(v is not None for v in (self.prefix, self.glob, self.since, self.until)):
                raise ReplayError("prefix, glob, since and until apply to a bucket, not a subscription")
            if not self.subscription.startswith("projects/") or "/subscriptions/" not in self.subscription:
                raise ReplayError(
                    f"subscription must be projects/P/subscriptions/S, got {self.subscription!r}",
                    field="subscription",
                )
            if trigger.storage is None and trigger.pubsub is None:
                raise ReplayError(f"trigger {trigger.name!r} takes completions: nothing to replay")
            return trigger
        if trigger.storage is None:
            raise ReplayError(f"trigger {trigger.name!r} is not a storage trigger: replay a subscription")
        if self.prefix is not None and self.glob is not None:
            raise ReplayError("give a prefix or a glob, not both")
        if self.glob is not None:
            try:
                Glob(self.glob)
            except PatternError as exc:
                raise ReplayError(f"glob {self.glob!r}: {exc}", field="glob") from None
        if self.since and self.until and self.since >= self.until:
            raise ReplayError("since must be before until")
        return trigger

    def params(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "glob": self.glob,
            "since": iso(self.since),
            "until": iso(self.until),
            "subscription": self.subscription,
            "rerun": self.rerun,
        }

    @property
    def replay_id(self) -> str:
        """The same parameters, the same replay (its checkpoint)."""
        return digest(json.dumps(self.params(), sort_keys=True), length=16)

    @property
    def listing_prefix(self) -> str:
        """What to list: the prefix, or the glob's literal head (nothing before its first wildcard)."""
        if self.glob is not None:
            cut = min((i for i, ch in enumerate(self.glob) if ch in "*?[{\\"), default=len(self.glob))
            return self.glob[:cut]
        return self.prefix or ""


# ---------------------------------------------------------------------------------------------
# Rate limit
# ---------------------------------------------------------------------------------------------
def parse_rate(text: str) -> float:
    """``10/s``, ``600/m``, ``2.5`` (per second) -> launches per second."""
    value, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if per is None or not math.isfinite(rate) or rate <= 0:
        raise ReplayError(f"rate must be like 10/s, 600/m or 2.5, got {text!r}", field="rate")
    return rate / per


class TokenBucket:
    """At most ``rate`` acquisitions a second on average, bursts up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.clock, self.sleep = clock, sleep
        self.stamp = clock()

    def acquire(self) -> None:
        while True:
            at = self.clock()
            self.tokens = min(self.capacity, self.tokens + (at - self.stamp) * self.rate)
            self.stamp = at
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            self.sleep((1.0 - self.tokens) / self.rate)


# ---------------------------------------------------------------------------------------------
# Outcome
# ---------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One replayed event: what it is, its run key, and what the replay did."""

    source: str  # gs://bucket/name#generation or the message id
    action: str  # launched | joined | skipped | failed | unmatched (dry run: would-launch, would-join)
    run_key: str | None = None
    reason: str | None = None
    transient: bool = False  # failed on a transient error: a message stays unacknowledged


@dataclass
class Summary:
    replay_id: str
    trigger: str
    dry_run: bool
    generation: int
    resumed: bool = False
    launched: list[Item] = field(default_factory=list)
    joined: list[Item] = field(default_factory=list)  # batch: objects that joined a window
    skipped: list[Item] = field(default_factory=list)
    failed: list[Item] = field(default_factory=list)
    unmatched: list[Item] = field(default_factory=list)
    started_at: str | None = None
    ended_at: str | None = None
    complete: bool = False
    # events this run expects to handle (objects left after the checkpoint, counted first), or None:
    # a subscription, or more objects than COUNT_LIMIT
    expected: int | None = None

    def add(self, item: Item) -> None:
        {
            "launched": self.launched,
            "would-launch": self.launched,
            "joined": self.joined,
            "would-join": self.joined,
            "skipped": self.skipped,
        }.get(item.action, self.failed if item.action == "failed" else self.unmatched).append(item)

    @property
    def seen(self) -> int:
        return sum(self.counts().values())

    def counts(self) -> dict[str, int]:
        return {
            "launched": len(self.launched),
            "joined": len(self.joined),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "unmatched": len(self.unmatched),
        }

    def to_json(self) -> dict[str, Any]:
        def items(xs: list[Item]) -> list[dict[str, Any]]:
            return [{k: v for k, v in dataclasses.asdict(x).items() if v not in (None, False)} for x in xs]

        return {
            "replay_id": self.replay_id,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "rerun_generation": self.generation,
            "resumed": self.resumed,
            "complete": self.complete,
            "counts": self.counts(),
            "launched": items(self.launched),
            "joined": items(self.joined),
            "skipped": items(self.skipped),
            "failed": items(self.failed),
            "unmatched": items(self.unmatched),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One event to replay, and how to settle it once handled (ack a message; nothing for objects)."""

    label: str
    position: str  # the checkpoint position once this is handled ("" for messages)
    event: Any
    settle: Callable[[], None] = lambda: None
    release: Callable[[], None] = lambda: None  # hand a message left unacknowledged back at once
    # a message another trigger may need (a dead-letter topic shared by several subscriptions) is
    # left in the subscription when this replay's trigger does not take it
    keep_unmatched: bool = False


def object_event(resource: Mapping[str, Any]) -> events.ObjectEvent:
    """The ObjectEvent a live finalize delivery of ``resource`` would be (its time: the object's
    ``updated``, as Eventarc stamps it)."""
    bucket, name, generation = resource.get("bucket"), resource.get("name"), resource.get("generation")
    return events.parse_object_finalized(
        {
            "id": "replay-" + digest(f"{bucket}/{name}#{generation}", length=20),
            "type": events.STORAGE_FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "subject": f"objects/{name}",
            "time": resource.get("updated") or resource.get("timeCreated"),
            "data": dict(resource),
        }
    )


def object_sources(runtime: Runtime, spec: ReplaySpec, after: str | None) -> Iterator[Source]:
    assert spec.bucket is not None
    store = runtime.ledger.store
    session = getattr(store, "session", None)
    listing = GcsStore(spec.bucket, session=session, base_url=getattr(store, "base_url", None))
    glob = Glob(spec.glob) if spec.glob is not None else None
    for resource in listing.list_objects(spec.listing_prefix, start_offset=after):
        name = str(resource.get("name") or "")
        if after is not None and name <= after:
            continue
        if glob is not None and not glob.match(name):
            continue
        try:
            event = object_event(resource)
        except EventError as exc:
            yield Source(f"gs://{spec.bucket}/{name}", name, exc)
            continue
        if (spec.since and event.event_time < spec.since) or (spec.until and event.event_time >= spec.until):
            continue
        yield Source(f"gs://{event.object.identity}", name, event)


class DeadLetters:
    """Pull and acknowledge over the Pub/Sub REST API (the functions' own HTTP stack)."""

    def __init__(self, subscription: str) -> None:
        self.subscription = subscription
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        self.endpoint = f"http://{emulator}" if emulator else "https://pubsub.googleapis.com"
        self.session = clients.plain_session() if emulator else clients.google_session()

    def pull(self, n: int) -> list[Mapping[str, Any]]:
        answer = http.send_json(
            self.session,
            "POST",
            f"{self.endpoint}/v1/{self.subscription}:pull",
            what="pubsub subscriptions.pull",
            json={"maxMessages": n, "returnImmediately": True},
        )
        return list(answer.get("receivedMessages") or [])

    def ack(self, ack_id: str) -> None:
        http.send_json(
            self.session,
            "POST",
            f"{self.endpoint}/v1/{self.subscription}:acknowledge",
            what="pubsub subscriptions.acknowledge",
            json={"ackIds": [ack_id]},
        )

    def release(self, ack_id: str) -> None:
        """Hand a message back now (ack deadline 0) instead of when its lease runs out; best effort:
        if this fails, the lease runs out anyway."""
        try:
            http.send_json(
                self.session,
                "POST",
                f"{self.endpoint}/v1/{self.subscription}:modifyAckDeadline",
                what="pubsub subscriptions.modifyAckDeadline",
                json={"ackIds": [ack_id], "ackDeadlineSeconds": 0},
            )
        except PipelineError as exc:
            logs.warning(
                "could not hand a message back: it returns when its lease runs out", cause=exc.message
            )


def message_event(trigger: Trigger, subscription: str, message: Mapping[str, Any]) -> events.MessageEvent:
    """The MessageEvent a push delivery of a dead-lettered message would be, as if published on the
    trigger's topic (a storage notification is recognised by its attributes, whatever the topic)."""
    topic = trigger.pubsub.topic if trigger.pubsub is not None else "dead-letters"
    if "/topics/" not in topic:
        topic = f"projects/{subscription.split('/')[1]}/topics/{topic}"
    return events.parse_message(
        {
            "id": str(message.get("messageId") or ""),
            "type": events.PUBSUB_PUBLISHED,
            "source": f"//pubsub.googleapis.com/{topic}",
            "time": message.get("publishTime"),
            "data": {"message": dict(message), "subscription": subscription},
        }
    )


def message_sources(trigger: Trigger, spec: ReplaySpec, pull: DeadLetters) -> Iterator[Source]:
    """Every message once per replay. One this replay leaves unacknowledged (not its trigger's, or a
    transient failure) is handed back at once and not handled again: a pull that brings back only
    such messages ends the replay (the next replay sees them). Messages pulled but not handled when
    the replay stops (``limit``, an error) are handed back too."""
    assert spec.subscription is not None
    seen: set[str] = set()
    open_ids: dict[str, None] = {}  # pulled, neither acknowledged nor handed back yet

    def done(ack_id: str, action: Callable[[str], None]) -> None:
        open_ids.pop(ack_id, None)
        action(ack_id)

    try:
        while True:
            batch = pull.pull(PULL_BATCH)
            fresh = []
            for received in batch:
                ack_id = str(received.get("ackId"))
                if str((received.get("message") or {}).get("messageId")) in seen:
                    pull.release(ack_id)  # back again after we left it: for the next replay
                else:
                    open_ids[ack_id] = None
                    fresh.append(received)
            if not fresh:
                return
            for received in fresh:
                message = received.get("message") or {}
                seen.add(str(message.get("messageId")))
                ack_id = str(received.get("ackId"))
                label = f"message {message.get('messageId')}"
                try:
                    event: Any = message_event(trigger, spec.subscription, message)
                except EventError as exc:
                    event = exc
                yield Source(
                    label,
                    "",
                    event,
                    settle=lambda a=ack_id: done(a, pull.ack),  # type: ignore[misc]
                    release=lambda a=ack_id: done(a, pull.release),  # type: ignore[misc]
                    keep_unmatched=True,
                )
    finally:
        for ack_id in list(open_ids):
            pull.release(ack_id)


# ---------------------------------------------------------------------------------------------
# The replay
# ---------------------------------------------------------------------------------------------
def _plan(runtime: Runtime, trigger: Trigger, event: Any) -> EventPlan:
    plan = (
        plan_object(runtime.config, event)
        if isinstance(event, events.ObjectEvent)
        else plan_message(runtime.config, event)
    )
    plan.decisions = [d for d in plan.decisions if d.trigger.name == trigger.name]
    plan.max_age_seconds = math.inf  # a replay is old on purpose
    plan.notes.append("a replay: the event-age limit does not apply")
    return plan


class Replay:
    """One replay of ``spec`` on ``runtime``; :meth:`run` returns the :class:`Summary`."""

    def __init__(
        self,
        runtime: Runtime,
        spec: ReplaySpec,
        *,
        dry_run: bool = False,
        rate: float | None = None,
        bucket: TokenBucket | None = None,
        service: LaunchService | None = None,
        on_item: Callable[[Item, Summary], None] | None = None,
        count_first: bool = False,
        stop_after: int | None = None,
        limit: int | None = None,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        """``count_first``: list the objects once before the work to know how many there are
        (``Summary.expected``, for a progress bar; 1 listing call per 1,000 objects, at most
        COUNT_LIMIT counted). ``limit``: handle at most this many events, then stop with a checkpoint
        (``complete`` false): the same replay again continues. ``stop_after``: raise :class:`ReplayInterrupted`
        after that many (the crash the tests and the reliability suite inject)."""
        self.rt = runtime
        self.spec = spec
        self.trigger = spec.validate(runtime.config.triggers)
        self.dry_run = dry_run
        self.limiter = bucket or (TokenBucket(rate) if rate else None)
        self.service = service or LaunchService(runtime)
        self.on_item = on_item
        self.count_first = count_first
        self.stop_after = stop_after
        self.limit = limit
        self.dead_letters = dead_letters
        self.doc_name = f"replays/{self.trigger.name}/{spec.replay_id}.json"

    # -- checkpoint ----------------------------------------------------------------------------
    def _load_checkpoint(self) -> tuple[dict[str, Any] | None, int]:
        found = self.rt.ledger.read_doc(self.doc_name)
        return (None, 0) if found is None else found

    def _save(self, summary: Summary, position: str | None, gen: int) -> int:
        doc = {
            "params": self.spec.params(),
            "after": position,
            "generation": summary.generation,
            "counts": summary.counts(),
            "complete": summary.complete,
            "started_at": summary.started_at,
            "updated_at": iso(now()),
        }
        for _ in range(5):
            try:
                return self.rt.ledger.write_doc(self.doc_name, doc, gen)
            except Conflict:  # another replay with the same parameters wrote it: go on from ours
                found = self.rt.ledger.read_doc(self.doc_name)
                gen = found[1] if found else 0
        return gen

    def _current_generation(self) -> int:
        found = self.rt.ledger.read_doc(f"replays/{self.trigger.name}/generation.json")
        return int(found[0].get("generation", 0)) if found else 0

    def _next_generation(self) -> int:
        name = f"replays/{self.trigger.name}/generation.json"
        for _ in range(10):
            found = self.rt.ledger.read_doc(name)
            current, gen = (int(found[0].get("generation", 0)), found[1]) if found else (0, 0)
            try:
                self.rt.ledger.write_doc(name, {"generation": current + 1, "at": iso(now())}, gen)
                return current + 1
            except Conflict:
                continue
        raise ReplayError("could not number a new rerun generation: too much contention")

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> Summary:
        checkpoint, doc_gen = self._load_checkpoint()
        resume = checkpoint is not None and not checkpoint.get("complete")
        position: str | None = checkpoint.get("after") if resume and checkpoint else None
        if self.spec.rerun:
            if resume and checkpoint:
                generation = int(checkpoint.get("generation") or 0)
            elif self.dry_run:  # the generation a real replay would number: shown, not taken
                generation = self._current_generation() + 1
            else:
                generation = self._next_generation()
        else:
            generation = 0
        summary = Summary(
            self.spec.replay_id,
            self.trigger.name,
            self.dry_run,
            generation,
            resumed=resume,
            started_at=(checkpoint or {}).get("started_at") if resume else iso(now()),
        )
        if self.count_first and self.spec.bucket is not None:
            summary.expected = self._count(position)
        if self.dry_run:
            doc_gen = -1  # a dry run writes nothing
        elif not resume:
            doc_gen = self._save(summary, None, doc_gen)
        handled_since_save = 0
        stopped = False
        try:
            for source in self._sources(position):
                if self.limit is not None and summary.seen >= self.limit:
                    stopped = True
                    break
                if self.stop_after is not None and summary.seen >= self.stop_after:
                    raise ReplayInterrupted(f"stopped after {self.stop_after} events")
                item = self._handle(source, generation)
                left = item.transient or (item.action == "unmatched" and source.keep_unmatched)
                if item.action == "unmatched" and source.keep_unmatched:
                    item.reason = f"{item.reason}; left in the subscription"
                if not self.dry_run:
                    # a message is acknowledged only once handled, else handed back for the next replay
                    if left:
                        source.release()
                    else:
                        source.settle()
                summary.add(item)
                if source.position:
                    position = source.position
                if self.on_item:
                    self.on_item(item, summary)
                handled_since_save += 1
                if doc_gen >= 0 and handled_since_save >= CHECKPOINT_EVERY:
                    doc_gen = self._save(summary, position, doc_gen)
                    handled_since_save = 0
            summary.complete = not stopped
        finally:
            summary.ended_at = iso(now())
            if doc_gen >= 0:
                try:
                    self._save(summary, position, doc_gen)
                except RetryableError as exc:
                    logs.warning(
                        "replay checkpoint not saved: it resumes from the previous one", cause=exc.message
                    )
        logs.info(
            "replay finished", replay_id=summary.replay_id, trigger=self.trigger.name, **summary.counts()
        )
        return summary

    def _count(self, position: str | None) -> int | None:
        """How many objects this run will handle (after ``position``), or None past COUNT_LIMIT."""
        counted = 0
        for _source in object_sources(self.rt, self.spec, position):
            counted += 1
            if counted > COUNT_LIMIT:
                return None
        return counted if self.limit is None else min(counted, self.limit)

    def _sources(self, position: str | None) -> Iterator[Source]:
        if self.spec.bucket is not None:
            return object_sources(self.rt, self.spec, position)
        assert self.spec.subscription is not None
        if self.dry_run:
            raise ReplayError(
                "a dry run of a subscription would have to pull (and hide) its messages: not supported"
            )
        return message_sources(
            self.trigger, self.spec, self.dead_letters or DeadLetters(self.spec.subscription)
        )

    def _handle(self, source: Source, generation: int) -> Item:
        event = source.event
        if isinstance(event, EventError):
            return Item(source.label, "failed", reason=f"not a readable event: {event.message}")
        if generation:
            event = dataclasses.replace(event, rerun=generation)
        try:
            plan = _plan(self.rt, self.trigger, event)
        except EventError as exc:
            return Item(source.label, "failed", reason=exc.message)
        if plan.ignored or plan.refused:
            return Item(source.label, "unmatched", reason=plan.ignored or plan.refused)
        decisions = plan.matched
        if not decisions:
            reasons = [r for d in plan.decisions for r in d.match.reasons]
            return Item(
                source.label, "unmatched", reason="; ".join(reasons) or "the trigger does not take it"
            )
        if decisions[0].window is not None:
            return self._join(source, plan, decisions[0].window)
        launch = decisions[0].launch
        if launch is None or launch.run_key is None:
            why = launch.error.message if launch and launch.error else "no run for this event"
            return Item(source.label, "failed", reason=why)
        key = str(launch.run_key)
        existing = self.rt.ledger.peek(key)
        if existing is not None and existing.state == RunState.CLAIMED and existing.job is None:
            marker = self.rt.ledger.marker(key)  # its job may be on the active marker only
            if marker is not None and marker.job is not None:
                existing = marker.fold_into(existing)
        unfinished_claim = (
            existing is not None and existing.state == RunState.CLAIMED and existing.job is None
        )
        if existing is not None and not unfinished_claim:
            return Item(source.label, "skipped", key, reason=f"already ran: record {existing.state}")
        # No record, or a claim whose owner has not launched (a crashed replay or delivery): the
        # launch service waits for its owner or takes it over once its lease expired, as a
        # redelivery does.
        if self.dry_run:
            if launch.action == Action.FAIL and launch.error is not None:
                return Item(source.label, "failed", key, reason=launch.error.message)
            return Item(source.label, "would-launch", key)
        if self.limiter is not None:
            self.limiter.acquire()
        try:
            outcomes = carry_out(self.rt, plan, self.service)
        except RetryableError as exc:
            return Item(
                source.label, "failed", key, reason=f"{exc.message} (transient: replay again)", transient=True
            )
        except PermanentError as exc:
            return Item(source.label, "failed", key, reason=exc.message)
        outcome = next((o for o in outcomes if o.trigger == self.trigger.name), None)
        if outcome is None:
            return Item(source.label, "launched", key, reason="handed to the live path")
        if outcome.result in (LaunchResult.LAUNCHED, LaunchResult.ADOPTED):
            return Item(source.label, "launched", outcome.run_key or key)
        if outcome.result == LaunchResult.DUPLICATE:
            return Item(source.label, "skipped", outcome.run_key or key, reason="already ran")
        return Item(source.label, "failed", outcome.run_key or key, reason=outcome.reason)

    def _join(self, source: Source, plan: EventPlan, window: WindowPlan) -> Item:
        """A batched trigger: the object joins a window (once: its membership says whether it did),
        which launches when it closes, through the live path's windows."""
        if window.member is None or window.action != Action.JOIN:
            why = window.error.message if window.error else "no window for this object"
            return Item(source.label, "failed", reason=why)
        found = self.rt.ledger.read_doc(member_name(self.trigger.name, window.member))
        if found is not None:
            return Item(source.label, "skipped", reason=f"already in window {found[0].get('window')}")
        if self.dry_run:
            return Item(source.label, "would-join", reason=f"window key {window.key!r}")
        try:
            outcomes = carry_out(self.rt, plan, self.service)
        except RetryableError as exc:
            return Item(
                source.label, "failed", reason=f"{exc.message} (transient: replay again)", transient=True
            )
        except PermanentError as exc:
            return Item(source.label, "failed", reason=exc.message)
        outcome = next((o for o in outcomes if o.trigger == self.trigger.name), None)
        if outcome is None or outcome.result == LaunchResult.FAILED:
            return Item(source.label, "failed", reason=outcome.reason if outcome else "not joined")
        return Item(source.label, "joined", outcome.run_key, reason=f"window {outcome.window}")


class ReplayInterrupted(Exception):
    """Raised by a replay told to stop after N events (tests and the reliability suite)."""


def describe_checkpoint(runtime: Runtime, trigger: str, replay_id: str) -> dict[str, Any] | None:
    """A replay's checkpoint (its progress), or ``None``."""
    found = runtime.ledger.read_doc(f"replays/{trigger}/{replay_id}.json")
    if found is None:
        return None
    doc = dict(found[0])
    doc["replay_id"] = replay_id
    started, updated = from_iso(doc.get("started_at")), from_iso(doc.get("updated_at"))
    doc["elapsed_seconds"] = (updated - started).total_seconds() if started and updated else None
    return doc
