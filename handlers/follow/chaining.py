"""Chaining: completion events launch the next pipelines.

A ``completion`` trigger names its upstream pipeline(s) and the states it reacts to::

    triggers:
      report-after-load:
        completion: {upstream: load, states: [SUCCEEDED]}
        pipeline: report
        parameters: {input: "{upstream.outputs.table}", day: "{upstream.parameters.day}"}

Which completion triggers a completion satisfies, and what each would do, is decided by the one
decision path (:func:`handlers.route.plan.plan_completion`); this module carries the decisions out.

One upstream: each completion event launches the trigger's pipeline once; the run identity is the
completion's deterministic event id, so however often the message arrives the ledger sees one run.

Several upstreams (**fan-in**): every completion brings the trigger's ``join_key`` (for example the
day it processed), and its arrival is recorded in the join document ``joins/<trigger>/<hash>.json``
(:class:`JoinDoc`) by compare-and-swap. When all upstreams have SUCCEEDED for a key, the pipeline
launches once (identity: the join key). If one of them ends in any other state, the join is
ABANDONED for that key: it never launches, and a ``join.abandoned`` event is published on the
completion topic.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from handlers.core import logs
from handlers.core.ids import digest
from handlers.core.times import iso, now, parse_time
from handlers.follow import completion
from handlers.launch.ledger import Conflict
from handlers.launch.runtime import Runtime
from handlers.launch.service import LaunchService, Outcome
from handlers.model.completions import JOIN_ABANDONED, SCHEMA_VERSION, Completion, FanInEvent, completion_id
from handlers.model.config import Trigger
from handlers.route.identity import InvalidRunKey, RunKey
from handlers.route.plan import Action, EventPlan, JoinPlan, plan_completion

# What a fan-in keeps of each upstream's completion (its template values, see FanInEvent).
_KEEP = (
    "run_key",
    "pipeline",
    "trigger",
    "backend",
    "state",
    "job",
    "parameters",
    "outputs",
    "event",
    "started_at",
    "ended_at",
    "duration_seconds",
    "reason",
    "window",  # present when the upstream run was a window's (a batch: trigger)
)


class JoinState(enum.StrEnum):
    WAITING = "WAITING"  # some upstreams have not succeeded yet
    LAUNCHED = "LAUNCHED"  # every upstream succeeded: the pipeline was launched (once)
    ABANDONED = "ABANDONED"  # an upstream did not succeed: the join never launches


@dataclass(frozen=True)
class JoinDoc:
    """The fan-in join document of one trigger and join key (stored as JSON in the ledger)."""

    trigger: str
    join_key: str
    state: JoinState = JoinState.WAITING
    arrived: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    created_at: str | None = None
    run_key: str | None = None
    abandoned_by: Mapping[str, Any] | None = None
    notice_published: bool = False

    @staticmethod
    def name(trigger: str, join_key: str) -> str:
        return f"joins/{trigger}/{digest(join_key, length=24)}.json"

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JoinDoc:
        return cls(
            trigger=str(doc["trigger"]),
            join_key=str(doc["join_key"]),
            state=JoinState(doc.get("state") or JoinState.WAITING),
            arrived=dict(doc.get("arrived") or {}),
            created_at=doc.get("created_at"),
            run_key=doc.get("run_key"),
            abandoned_by=doc.get("abandoned_by"),
            notice_published=bool(doc.get("notice_published")),
        )

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "trigger": self.trigger,
            "join_key": self.join_key,
            "state": str(self.state),
            "arrived": {k: dict(v) for k, v in self.arrived.items()},
            "created_at": self.created_at,
        }
        if self.run_key is not None:
            doc["run_key"] = self.run_key
        if self.abandoned_by is not None:
            doc["abandoned_by"] = dict(self.abandoned_by)
        if self.notice_published:
            doc["notice_published"] = True
        return doc


def verified(runtime: Runtime, comp: Completion) -> Completion | None:
    """The completion as the ledger tells it, or ``None`` (refused, with a warning) when the message
    names no run the ledger knows, a run not yet finished, or disagrees with the run's record.

    A message on the completion topic is only a hint that a run ended: its state, job, parameters,
    outputs and times are read again from the run's ledger record, so a forged or stale message can
    neither launch with parameters of its choosing nor abandon a fan-in the real run would satisfy."""
    try:
        key = str(RunKey.parse(comp.run_key))
    except InvalidRunKey as exc:
        logs.warning("completion refused: its run key is not one this project writes", reason=str(exc))
        return None
    run = runtime.ledger.get(key)
    if run is None:
        logs.warning("completion refused: the ledger has no such run", upstream_run_key=key)
        return None
    disagreements = [
        f"{what}: message says {said!r}, ledger says {known!r}"
        for what, said, known in (
            ("state", comp.state, str(run.state) if run.terminal else f"{run.state} (not finished)"),
            ("pipeline", comp.pipeline, run.pipeline),
            ("id", comp.event_id, completion_id(run.run_key, run.state)),
        )
        if said != known
    ]
    if disagreements:
        logs.warning(
            "completion refused: it disagrees with the run's ledger record",
            upstream_run_key=key,
            disagreements=disagreements,
        )
        return None
    return Completion(
        event_id=comp.event_id,
        event_time=parse_time(run.ended_at) or comp.event_time,
        data=completion.completion_data(run),
    )


def handle_completion(
    runtime: Runtime, plan: EventPlan, service: LaunchService | None = None
) -> list[Outcome]:
    """Carry out a completion's plan, once the ledger has confirmed it (:func:`verified`): launch
    the single chains, record fan-in arrivals."""
    trusted = verified(runtime, plan.event)
    if trusted is None:
        return []
    # Planned again from the ledger's facts; the message's age (already checked) still decides.
    replanned = plan_completion(runtime.config, trusted, delivered_at=plan.event.event_time)
    replanned.age_seconds = plan.age_seconds
    plan = replanned
    comp = plan.event
    service = service or LaunchService(runtime)
    singles = [d.launch for d in plan.matched if d.launch is not None]
    outcomes = service.launch_all(singles) if singles else []
    for decision in plan.matched:
        if decision.join is not None:
            outcomes.extend(FanIn(runtime, service).arrive(decision.join))
    if not plan.matched:
        waiting = [
            d.trigger
            for d in plan.decisions
            if comp.pipeline in (d.trigger.completion.upstream if d.trigger.completion else ())
        ]
        if not waiting:
            logs.info("no completion trigger waits for this pipeline", upstream_pipeline=comp.pipeline)
        else:
            logs.info(
                "no completion trigger waits for this state: acknowledged",
                upstream_pipeline=comp.pipeline,
                state=comp.state,
                triggers={t.name: sorted(t.completion.states) for t in waiting if t.completion},
            )
    return outcomes


class FanIn:
    def __init__(self, runtime: Runtime, service: LaunchService) -> None:
        self.rt = runtime
        self.service = service

    def arrive(self, join: JoinPlan) -> list[Outcome]:
        trigger = join.trigger
        if join.action is Action.SKIP or join.join_key is None:
            assert join.error is not None
            logs.error(
                "fan-in join key could not be rendered: acknowledged",
                trigger=trigger.name,
                **join.error.context(),
            )
            return []
        name = JoinDoc.name(trigger.name, join.join_key)
        with logs.bind(trigger=trigger.name, join_key=join.join_key):
            for _ in range(20):
                found = self.rt.ledger.read_doc(name)
                if found:
                    doc, generation = JoinDoc.from_json(found[0]), found[1]
                else:
                    doc, generation = JoinDoc(trigger.name, join.join_key, created_at=iso(now())), 0
                try:
                    return self._step(join, name, doc, generation)
                except Conflict:
                    continue
            raise Conflict(name)

    def _write(self, name: str, doc: JoinDoc, generation: int) -> int:
        return self.rt.ledger.write_doc(name, doc.to_json(), generation)

    def _step(self, join: JoinPlan, name: str, doc: JoinDoc, generation: int) -> list[Outcome]:
        trigger, comp = join.trigger, join.completion
        assert trigger.completion is not None
        if doc.state is JoinState.ABANDONED:
            if not doc.notice_published:
                self._announce_abandoned(trigger, doc)
                self._write(name, replace(doc, notice_published=True), generation)
            logs.info("fan-in already abandoned for this key", upstream_pipeline=comp.pipeline)
            return []
        if join.action is Action.ABANDON:
            if doc.state is JoinState.LAUNCHED:
                logs.warning(
                    "upstream failed after the fan-in already launched", upstream_pipeline=comp.pipeline
                )
                return []
            doc = replace(
                doc,
                state=JoinState.ABANDONED,
                abandoned_by={"pipeline": comp.pipeline, "run_key": comp.run_key, "state": comp.state},
            )
            generation = self._write(name, doc, generation)
            logs.warning(
                "fan-in abandoned: an upstream did not succeed",
                upstream_pipeline=comp.pipeline,
                upstream_state=comp.state,
            )
            self._announce_abandoned(trigger, doc)
            self._write(name, replace(doc, notice_published=True), generation)
            return []
        arrived = dict(doc.arrived)
        if comp.pipeline not in arrived:
            arrived[comp.pipeline] = {k: comp.data.get(k) for k in _KEEP}
            doc = replace(doc, arrived=arrived)
            generation = self._write(name, doc, generation)
            logs.info(
                "fan-in: upstream arrived",
                upstream_pipeline=comp.pipeline,
                waiting_for=[u for u in trigger.completion.upstream if u not in arrived],
            )
        if not all(u in arrived for u in trigger.completion.upstream):
            return []
        ends = [parse_time(arrived[u].get("ended_at")) for u in trigger.completion.upstream]
        event_time = max((e for e in ends if e is not None), default=comp.event_time)
        assert join.join_key is not None
        event = FanInEvent(
            trigger.name, join.join_key, {u: arrived[u] for u in trigger.completion.upstream}, event_time
        )
        outcome = self.service.start(trigger, event)
        if doc.state is not JoinState.LAUNCHED:
            try:
                self._write(name, replace(doc, state=JoinState.LAUNCHED, run_key=outcome.run_key), generation)
            except Conflict:
                pass  # another delivery recorded it; the run ledger already made the launch unique
        return [outcome]

    def _announce_abandoned(self, trigger: Trigger, doc: JoinDoc) -> None:
        topic = self.rt.config.settings.completion_topic_path
        if not topic:
            return
        event = {
            "specversion": "1.0",
            "type": JOIN_ABANDONED,
            "source": f"//eventpipelines/projects/{self.rt.config.settings.project}/triggers/{trigger.name}",
            "subject": f"joins/{trigger.name}",
            "id": digest(trigger.name, doc.join_key, "abandoned", length=32),
            "time": iso(dt.datetime.now(dt.UTC)),
            "datacontenttype": "application/json",
            "data": {
                "schema_version": SCHEMA_VERSION,
                "trigger": trigger.name,
                "pipeline": trigger.pipeline,
                "join_key": doc.join_key,
                "arrived": sorted(doc.arrived),
                "abandoned_by": dict(doc.abandoned_by or {}),
            },
        }
        completion.publish(self.rt.publisher, topic, event)
