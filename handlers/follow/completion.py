"""The completion event: one CloudEvent per finished run, on the completion topic.

Published as a structured-mode CloudEvent (JSON) in the Pub/Sub message data, with attributes
subscribers can filter on::

    attributes: event_type=run.completed, pipeline, state, trigger, run_key, backend, schema_version
    data:       {"specversion": "1.0", "type": "io.eventpipelines.run.completed.v1",
                 "source": "//eventpipelines/projects/P/pipelines/NAME", "subject": "runs/RUN_KEY",
                 "id": <sha256(run_key, state)>, "time": <end time>, "datacontenttype": "application/json",
                 "dataschema": "urn:eventpipelines:schema:run-completed:1", "data": {...}}

The ``id`` is deterministic per (run, terminal state): a republish after a crash carries the same id,
so consumers can deduplicate. The schema is committed at ``handlers/schemas/run-completed.v1.json``.

A fan-in that can never complete publishes ``io.eventpipelines.join.abandoned.v1`` the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.core.errors import EventError, PublishUnavailable
from handlers.core.times import from_iso, parse_time
from handlers.launch.ledger import Run
from handlers.model.events import MessageEvent

SCHEMA_VERSION = 1
RUN_COMPLETED = "io.eventpipelines.run.completed.v1"
JOIN_ABANDONED = "io.eventpipelines.join.abandoned.v1"
DATASCHEMA = "urn:eventpipelines:schema:run-completed:1"
EVENT_TYPE_ATTR = "event_type"


def completion_id(run_key: str, state: str) -> str:
    return hashlib.sha256(f"{run_key}\n{state}".encode()).hexdigest()[:32]


def build_event(run: Run, project: str) -> dict[str, Any]:
    """The CloudEvent (structured JSON) announcing ``run``'s terminal state."""
    job = run.job or {}
    started = from_iso(run.started_at or run.launched_at or run.created_at)
    ended = from_iso(run.ended_at)
    duration = (ended - started).total_seconds() if started and ended else None
    data = {
        "schema_version": SCHEMA_VERSION,
        "run_key": run.run_key,
        "pipeline": run.pipeline,
        "trigger": run.trigger,
        "backend": run.backend,
        "state": run.state,
        "backend_state": run.raw_state,
        "job": {
            "id": job.get("id"),
            "name": job.get("name") or run.job_name,
            "url": job.get("url"),
            "project": job.get("project"),
            "region": job.get("region"),
        }
        if job
        else None,
        "parameters": dict(run.parameters),
        "outputs": dict(run.outputs),
        "event": dict(run.event),
        "started_at": run.started_at or run.launched_at,
        "ended_at": run.ended_at,
        "duration_seconds": round(duration, 3) if duration is not None else None,
        "reason": (run.error or {}).get("message") if run.error else None,
        "attempts": run.attempts,
    }
    return {
        "specversion": "1.0",
        "type": RUN_COMPLETED,
        "source": f"//eventpipelines/projects/{project}/pipelines/{run.pipeline}",
        "subject": f"runs/{run.run_key}",
        "id": completion_id(run.run_key, run.state),
        "time": run.ended_at,
        "datacontenttype": "application/json",
        "dataschema": DATASCHEMA,
        "data": data,
    }


def attributes_for(event: Mapping[str, Any]) -> dict[str, str]:
    data = event["data"]
    if event["type"] == JOIN_ABANDONED:
        return {
            EVENT_TYPE_ATTR: "join.abandoned",
            "trigger": data["trigger"],
            "pipeline": data["pipeline"],
            "state": "ABANDONED",
            "schema_version": str(SCHEMA_VERSION),
        }
    return {
        EVENT_TYPE_ATTR: "run.completed",
        "pipeline": data["pipeline"],
        "state": data["state"],
        "trigger": data["trigger"],
        "run_key": data["run_key"],
        "backend": data["backend"],
        "schema_version": str(SCHEMA_VERSION),
    }


def publish(publisher: Any, topic_path: str, event: Mapping[str, Any], timeout: float = 30.0) -> str:
    """Publish the CloudEvent; returns the Pub/Sub message id. Failures are retryable."""
    payload = json.dumps(event, sort_keys=True, ensure_ascii=False).encode()
    try:
        future = publisher.publish(topic_path, payload, **attributes_for(event))
        return str(future.result(timeout=timeout))
    except Exception as exc:
        raise PublishUnavailable(f"publish to {topic_path} failed: {exc.__class__.__name__}: {exc}") from exc


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

    def lookup(path: str) -> Any:
        if not path.startswith(prefix):
            raise KeyError(path)
        rest = path[len(prefix) :]
        if rest in simple:
            return simple[rest]
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
    for nested in ("job", "parameters", "outputs", "event", "error"):
        if data.get(nested) is not None and not isinstance(data[nested], Mapping):
            raise EventError(f"completion event {nested} is not an object", field=f"data.{nested}")
    when = parse_time(body.get("time")) or message.event_time
    return Completion(event_id=str(body.get("id") or message.message_id), event_time=when, data=data)
