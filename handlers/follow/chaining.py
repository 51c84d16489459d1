"""Chaining: completion events launch the next pipelines.

A ``completion`` trigger names its upstream pipeline(s) and the states it reacts to::

    triggers:
      report-after-load:
        completion: {upstream: load, states: [SUCCEEDED]}
        pipeline: report
        parameters: {input: "{upstream.outputs.table}", day: "{upstream.parameters.day}"}

One upstream: each completion event launches the trigger's pipeline once; the run identity is the
completion's deterministic event id, so however often the message arrives the ledger sees one run.

Several upstreams (**fan-in**): every completion renders the trigger's ``join_key`` (for example the
day it processed) and records its arrival in ``joins/<trigger>/<hash>.json`` by compare-and-swap.
When all upstreams have SUCCEEDED for a key, the pipeline launches once (identity: the join key).
If one of them ends in any other state, the join is ABANDONED for that key: it never launches, and
a ``join.abandoned`` event is published on the completion topic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.core import logs
from handlers.core.errors import EventError, ParameterError
from handlers.core.times import iso, parse_time
from handlers.follow import completion
from handlers.launch.ledger import Conflict
from handlers.launch.runtime import Runtime
from handlers.launch.service import LaunchService, Outcome
from handlers.model.config import Trigger
from handlers.model.events import MessageEvent

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
)


@dataclass(frozen=True)
class FanInEvent:
    """The input of a fan-in launch: the join key and every upstream's completion."""

    trigger: str
    join_key: str
    upstreams: Mapping[str, Mapping[str, Any]]
    event_time: dt.datetime
    kind = "fanin"

    @property
    def event_id(self) -> str:
        return hashlib.sha256(f"{self.trigger}\n{self.join_key}".encode()).hexdigest()[:32]

    @property
    def identity(self) -> str:
        return f"join:{self.join_key}"

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "fanin",
            "join_key": self.join_key,
            "event_id": self.event_id,
            "upstream_run_keys": {p: d.get("run_key") for p, d in self.upstreams.items()},
            "event_time": iso(self.event_time),
        }

    @property
    def lookup(self) -> Callable[[str], Any]:
        lookups = {
            p: completion.upstream_lookup(d, prefix=f"upstreams.{p}.") for p, d in self.upstreams.items()
        }

        def lookup(path: str) -> Any:
            if path == "join_key":
                return self.join_key
            if path.startswith("upstreams."):
                name = path.split(".", 2)[1]
                if name in lookups:
                    return lookups[name](path)
            raise KeyError(path)

        return lookup


def handle_completion(
    runtime: Runtime, message: MessageEvent, service: LaunchService | None = None
) -> list[Outcome]:
    """Route one completion message to the completion triggers it satisfies."""
    from handlers.entry.functions import launch_matches

    try:
        comp = completion.parse_completion(message)
    except EventError as exc:
        logs.error("malformed completion event: acknowledged", **exc.context())
        return []
    if comp is None:
        logs.info("join-abandoned notice received: nothing to launch")
        return []
    triggers = [
        t
        for t in runtime.config.triggers_of("completion")
        if t.completion and comp.pipeline in t.completion.upstream
    ]
    singles = [
        t
        for t in triggers
        if t.completion and not t.completion.is_fan_in and comp.state in t.completion.states
    ]
    service = service or LaunchService(runtime)
    outcomes = launch_matches(runtime, comp, singles, service) if singles else []
    for trigger in triggers:
        if trigger.completion and trigger.completion.is_fan_in:
            outcomes.extend(FanIn(runtime, service).arrive(trigger, comp))
    if not triggers:
        logs.info("no completion trigger waits for this pipeline", upstream_pipeline=comp.pipeline)
    elif not singles and not any(t.completion and t.completion.is_fan_in for t in triggers):
        logs.info(
            "no completion trigger waits for this state: acknowledged",
            upstream_pipeline=comp.pipeline,
            state=comp.state,
            triggers={t.name: sorted(t.completion.states) for t in triggers if t.completion},
        )
    return outcomes


def join_key_for(trigger: Trigger, comp: completion.Completion) -> str:
    """The fan-in join key ``comp`` brings to ``trigger`` (rendered from that one completion)."""
    assert trigger.completion is not None and trigger.completion.join_key is not None
    common = {
        "event_id": comp.event_id,
        "event_time": comp.event_time,
        "trigger": trigger.name,
        "pipeline": trigger.pipeline,
    }
    upstream = comp.lookup

    def lookup(path: str) -> Any:
        return common[path] if path in common else upstream(path)

    return trigger.completion.join_key.render(lookup, name="join_key")


class FanIn:
    def __init__(self, runtime: Runtime, service: LaunchService) -> None:
        self.rt = runtime
        self.service = service

    def arrive(self, trigger: Trigger, comp: completion.Completion) -> list[Outcome]:
        assert trigger.completion is not None
        try:
            join_key = join_key_for(trigger, comp)
        except ParameterError as exc:
            logs.error(
                "fan-in join key could not be rendered: acknowledged", trigger=trigger.name, **exc.context()
            )
            return []
        doc_name = f"joins/{trigger.name}/{hashlib.sha256(join_key.encode()).hexdigest()[:24]}.json"
        with logs.bind(trigger=trigger.name, join_key=join_key):
            for _ in range(20):
                found = self.rt.ledger.read_doc(doc_name)
                doc, generation = (
                    found
                    if found
                    else (
                        {
                            "trigger": trigger.name,
                            "join_key": join_key,
                            "state": "WAITING",
                            "arrived": {},
                            "created_at": iso(dt.datetime.now(dt.UTC)),
                        },
                        0,
                    )
                )
                try:
                    return self._step(trigger, comp, join_key, doc_name, doc, generation)
                except Conflict:
                    continue
            raise Conflict(doc_name)

    def _step(
        self,
        trigger: Trigger,
        comp: completion.Completion,
        join_key: str,
        name: str,
        doc: dict[str, Any],
        generation: int,
    ) -> list[Outcome]:
        assert trigger.completion is not None
        ledger = self.rt.ledger
        if doc["state"] == "ABANDONED":
            if not doc.get("notice_published"):
                self._announce_abandoned(trigger, doc)
                doc["notice_published"] = True
                ledger.write_doc(name, doc, generation)
            logs.info("fan-in already abandoned for this key", upstream_pipeline=comp.pipeline)
            return []
        if comp.state != "SUCCEEDED":
            if doc["state"] == "LAUNCHED":
                logs.warning(
                    "upstream failed after the fan-in already launched", upstream_pipeline=comp.pipeline
                )
                return []
            doc = {
                **doc,
                "state": "ABANDONED",
                "abandoned_by": {"pipeline": comp.pipeline, "run_key": comp.run_key, "state": comp.state},
            }
            generation = ledger.write_doc(name, doc, generation)
            logs.warning(
                "fan-in abandoned: an upstream did not succeed",
                upstream_pipeline=comp.pipeline,
                upstream_state=comp.state,
            )
            self._announce_abandoned(trigger, doc)
            ledger.write_doc(name, {**doc, "notice_published": True}, generation)
            return []
        arrived = dict(doc.get("arrived") or {})
        if comp.pipeline not in arrived:
            arrived[comp.pipeline] = {k: comp.data.get(k) for k in _KEEP}
            doc = {**doc, "arrived": arrived}
            generation = ledger.write_doc(name, doc, generation)
            logs.info(
                "fan-in: upstream arrived",
                upstream_pipeline=comp.pipeline,
                waiting_for=[u for u in trigger.completion.upstream if u not in arrived],
            )
        if not all(u in arrived for u in trigger.completion.upstream):
            return []
        ends = [parse_time(arrived[u].get("ended_at")) for u in trigger.completion.upstream]
        event_time = max((e for e in ends if e is not None), default=comp.event_time)
        event = FanInEvent(
            trigger.name, join_key, {u: arrived[u] for u in trigger.completion.upstream}, event_time
        )
        outcome = self.service.start(trigger, event)
        if doc["state"] != "LAUNCHED":
            try:
                ledger.write_doc(name, {**doc, "state": "LAUNCHED", "run_key": outcome.run_key}, generation)
            except Conflict:
                pass  # another delivery recorded it; the run ledger already made the launch unique
        return [outcome]

    def _announce_abandoned(self, trigger: Trigger, doc: Mapping[str, Any]) -> None:
        topic = self.rt.config.settings.completion_topic_path
        if not topic:
            return
        by = doc.get("abandoned_by") or {}
        event = {
            "specversion": "1.0",
            "type": completion.JOIN_ABANDONED,
            "source": f"//eventpipelines/projects/{self.rt.config.settings.project}/triggers/{trigger.name}",
            "subject": f"joins/{trigger.name}",
            "id": hashlib.sha256(f"{trigger.name}\n{doc['join_key']}\nabandoned".encode()).hexdigest()[:32],
            "time": iso(dt.datetime.now(dt.UTC)),
            "datacontenttype": "application/json",
            "data": {
                "schema_version": completion.SCHEMA_VERSION,
                "trigger": trigger.name,
                "pipeline": trigger.pipeline,
                "join_key": doc["join_key"],
                "arrived": sorted((doc.get("arrived") or {}).keys()),
                "abandoned_by": dict(by),
            },
        }
        completion.publish(self.rt.publisher, topic, event)
