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

A run launched by a window (a ``batch:`` trigger) carries ``data.window``: its id, key, count, bytes,
manifest URI, first and last event times and why it closed.

A fan-in that can never complete publishes ``io.eventpipelines.join.abandoned.v1`` the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from handlers.core.errors import PublishUnavailable
from handlers.core.times import from_iso
from handlers.launch.ledger import Run
from handlers.model.completions import (
    DATASCHEMA,
    EVENT_TYPE_ATTR,
    JOIN_ABANDONED,
    RUN_COMPLETED,
    SCHEMA_VERSION,
    completion_id,
)
from handlers.model.windows import window_of_summary


def build_event(run: Run, project: str) -> dict[str, Any]:
    """The CloudEvent (structured JSON) announcing ``run``'s terminal state."""
    return fit(
        {
            "specversion": "1.0",
            "type": RUN_COMPLETED,
            "source": f"//eventpipelines/projects/{project}/pipelines/{run.pipeline}",
            "subject": f"runs/{run.run_key}",
            "id": completion_id(run.run_key, run.state),
            "time": run.ended_at,
            "datacontenttype": "application/json",
            "dataschema": DATASCHEMA,
            "data": completion_data(run),
        }
    )


def completion_data(run: Run) -> dict[str, Any]:
    """The completion event's ``data`` for ``run``, whole (before :func:`fit`): what the event
    announces, and what chaining reads of an upstream run (from the ledger, never from a message)."""
    job = run.job or {}
    started = from_iso(run.started_at or run.launched_at or run.created_at)
    ended = from_iso(run.ended_at)
    # never negative: a backend that reports whole seconds (CDAP) can end a sub-second run "before"
    # the launch time the ledger recorded to the millisecond
    duration = max(0.0, (ended - started).total_seconds()) if started and ended else None
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
    window = window_of_summary(run.event)
    if window is not None:
        data["window"] = window
    return data


# A completion is delivered to the chained triggers through Eventarc, which drops events over 512 KB
# (Pub/Sub's own limit is 10 MB): an event stays well under it, trimming its largest texts first.
MAX_EVENT_BYTES = 256 * 1024
# The CloudEvents Pub/Sub protocol binding, structured content mode: the message data is the JSON
# event, and this attribute says so, so a generic CloudEvents consumer reads it as one.
CONTENT_TYPE_ATTR = "content-type"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
TRIMMED_VALUE_CHARS = 4096


def _size(event: Mapping[str, Any]) -> int:
    return len(json.dumps(event, sort_keys=True, ensure_ascii=False).encode())


def fit(event: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """``event`` within ``limit`` bytes: the longest texts of ``reason``, ``parameters``,
    ``outputs`` and ``event`` are cut to :data:`TRIMMED_VALUE_CHARS` (saying how much was cut), then
    whole blocks are dropped if that is not enough; ``data.trimmed`` lists what was trimmed. The run's
    full record stays in the ledger."""
    if _size(event) <= limit:
        return event
    data = event["data"]
    trimmed: list[str] = []
    texts: list[tuple[int, str, Any, Any]] = []
    if isinstance(data.get("reason"), str):
        texts.append((len(data["reason"]), "reason", data, "reason"))
    for block in ("parameters", "outputs", "event"):
        for key, value in (data.get(block) or {}).items():
            if isinstance(value, str):
                texts.append((len(value), f"{block}.{key}", data[block], key))
    for length, path, holder, key in sorted(texts, key=lambda x: x[0], reverse=True):
        if length <= TRIMMED_VALUE_CHARS or _size(event) <= limit:
            break
        holder[key] = (
            f"{holder[key][:TRIMMED_VALUE_CHARS]}...[{length - TRIMMED_VALUE_CHARS} more characters trimmed]"
        )
        trimmed.append(path)
    for block in ("parameters", "outputs"):
        if _size(event) <= limit:
            break
        data[block] = {}
        trimmed.append(block)
    data["trimmed"] = sorted(trimmed)
    return event


def attributes_for(event: Mapping[str, Any]) -> dict[str, str]:
    data = event["data"]
    if event["type"] == JOIN_ABANDONED:
        return {
            CONTENT_TYPE_ATTR: STRUCTURED_CONTENT_TYPE,
            EVENT_TYPE_ATTR: "join.abandoned",
            "trigger": data["trigger"],
            "pipeline": data["pipeline"],
            "state": "ABANDONED",
            "schema_version": str(SCHEMA_VERSION),
        }
    return {
        CONTENT_TYPE_ATTR: STRUCTURED_CONTENT_TYPE,
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
