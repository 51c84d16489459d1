"""The completion event format, and completions as the events ``completion`` triggers receive.

Every finished run is announced once on the completion topic as a structured CloudEvent (built
and published by :mod:`handlers.follow.completion`); this module is the format both sides share:

- the CloudEvent types (:data:`RUN_COMPLETED`, :data:`JOIN_ABANDONED`), the schema version and the
  Pub/Sub attribute that tells them apart (:data:`EVENT_TYPE_ATTR`);
- :func:`completion_id`, the deterministic event id per (run, terminal state);
- :class:`Completion`, a received completion as the input of a ``completion`` trigger
  (:func:`parse_completion`), and :class:`FanInEvent`, the input of a fan-in launch: the join key
  and every upstream's completion.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.core.errors import EventError
from handlers.core.ids import digest
from handlers.core.times import iso, parse_time
from handlers.model.events import MessageEvent

SCHEMA_VERSION = 1
RUN_COMPLETED = "io.eventpipelines.run.completed.v1"
JOIN_ABANDONED = "io.eventpipelines.join.abandoned.v1"
DATASCHEMA = "urn:eventpipelines:schema:run-completed:1"
EVENT_TYPE_ATTR = "event_type"


def completion_id(run_key: str, state: str) -> str:
    """The completion event's id: the same for every publish of one run's end."""
    return digest(run_key, state, length=32)


@dataclass(frozen=True)
class Completion:
    """A received completion event, as the input of a ``completion`` trigger."""

    event_id: str
    event_time: dt.datetime
    data: Mapping[str, Any]
    kind = "completion"

    @property
    def pipeline(self) -> str:
        return str(self.data["pipeline"])

    @property
    def state(self) -> str:
        return str(self.data["state"])

    @property
    def run_key(self) -> str:
        return str(self.data["run_key"])

    @property
    def identity(self) -> str:
        return f"completion:{self.event_id}"

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "completion",
            "upstream_run_key": self.run_key,
            "upstream_pipeline": self.pipeline,
            "upstream_state": self.state,
            "event_id": self.event_id,
            "event_time": self.event_time.isoformat().replace("+00:00", "Z"),
        }

    @property
    def lookup(self) -> Callable[[str], Any]:
        return upstream_lookup(self.data, prefix="upstream.")


def upstream_lookup(data: Mapping[str, Any], prefix: str) -> Callable[[str], Any]:
    """Template values ``<prefix>run_key``, ``<prefix>parameters.X``, ... from completion data."""
    job = data.get("job") or {}
    simple = {
        "run_key": data.get("run_key"),
        "pipeline": data.get("pipeline"),
        "state": data.get("state"),
        "backend": data.get("backend"),
        "trigger": data.get("trigger"),
        "job_id": job.get("id"),
        "job_url": job.get("url"),
        "reason": data.get("reason"),
        "duration_seconds": data.get("duration_seconds"),
        "start_time": parse_time(data.get("started_at")),
        "end_time": parse_time(data.get("ended_at")),
    }

    window = data.get("window") or {}

    def lookup(path: str) -> Any:
        if not path.startswith(prefix):
            raise KeyError(path)
        rest = path[len(prefix) :]
        if rest in simple:
            return simple[rest]
        if rest.startswith("window.") and isinstance(window, Mapping):
            value = window[rest[len("window.") :]]
            return parse_time(value) if rest.endswith("_time") else value
        for section in ("parameters", "outputs", "event"):
            if rest.startswith(section + "."):
                return (data.get(section) or {})[rest[len(section) + 1 :]]
        raise KeyError(path)

    return lookup


def is_completion_message(message: MessageEvent) -> bool:
    if message.attributes.get(EVENT_TYPE_ATTR) in ("run.completed", "join.abandoned"):
        return True
    body = message.json
    return isinstance(body, Mapping) and body.get("type") in (RUN_COMPLETED, JOIN_ABANDONED)


def parse_completion(message: MessageEvent) -> Completion | None:
    """The completion carried by ``message`` (``None`` for a join-abandoned notice)."""
    body = message.json
    if not isinstance(body, Mapping) or not isinstance(body.get("data"), Mapping):
        raise EventError("completion message data is not a CloudEvent JSON object", field="message.data")
    if body.get("type") == JOIN_ABANDONED:
        return None
    if body.get("type") != RUN_COMPLETED:
        raise EventError(f"unknown completion event type {body.get('type')!r}", field="type")
    data = body["data"]
    for required in ("run_key", "pipeline", "state"):
        if not data.get(required):
            raise EventError(f"completion event has no {required}", field=f"data.{required}")
        if not isinstance(data[required], str):
            raise EventError(f"completion event {required} is not text", field=f"data.{required}")
    for nested in ("job", "parameters", "outputs", "event", "error", "window"):
        if data.get(nested) is not None and not isinstance(data[nested], Mapping):
            raise EventError(f"completion event {nested} is not an object", field=f"data.{nested}")
    when = parse_time(body.get("time")) or message.event_time
    return Completion(event_id=str(body.get("id") or message.message_id), event_time=when, data=data)


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
        return digest(self.trigger, self.join_key, length=32)

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
        lookups = {p: upstream_lookup(d, prefix=f"upstreams.{p}.") for p, d in self.upstreams.items()}

        def lookup(path: str) -> Any:
            if path == "join_key":
                return self.join_key
            if path.startswith("upstreams."):
                name = path.split(".", 2)[1]
                if name in lookups:
                    return lookups[name](path)
            raise KeyError(path)

        return lookup
