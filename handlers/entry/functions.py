"""From a delivered CloudEvent to launches: parse, drop stale events, route, launch each match.

The error policy lives here, once for every entry point:

- a malformed event, an unsupported event type, no matching trigger -> logged, acknowledged;
- an event older than ``settings.max_event_age`` -> dropped with a log line, acknowledged;
- a permanent launch error -> recorded in the ledger by the launch service, acknowledged;
- any other permanent error that reaches here (a completion whose fields cannot be read, say) ->
  logged with its reason, acknowledged: a permanent error never becomes an HTTP 500;
- a retryable error -> raised after every matching trigger had its turn (the platform redelivers;
  triggers that already launched see a duplicate next time).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from handlers.core import logs
from handlers.core.errors import EventError, EventTooOld, PermanentError, RetryableError
from handlers.core.times import age_seconds
from handlers.follow import completion
from handlers.launch.runtime import Runtime
from handlers.launch.service import LaunchService, Outcome
from handlers.model import events
from handlers.model.config import Trigger
from handlers.route import match as routing

_TRIGGER_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_RUN_HASH = re.compile(r"[0-9a-f]{20}")


def _too_old(runtime: Runtime, event: Any, now: dt.datetime | None = None) -> bool:
    age = age_seconds(event.event_time, now)
    limit = runtime.config.settings.max_event_age_seconds
    if age > limit:
        err = EventTooOld(f"event is {age:.0f}s old, older than max_event_age {limit:.0f}s: dropped")
        logs.warning(err.message, event_id=event.event_id, event=event.summary(), **err.context())
        return True
    return False


def launch_matches(
    runtime: Runtime, event: Any, triggers: Iterable[Trigger], service: LaunchService | None = None
) -> list[Outcome]:
    """Launch every trigger; raise the first retryable error only after all had their turn."""
    service = service or LaunchService(runtime)
    outcomes: list[Outcome] = []
    pending: RetryableError | None = None
    for trigger in triggers:
        try:
            outcomes.append(service.start(trigger, event))
        except RetryableError as exc:
            logs.warning(
                "transient failure: the event will be redelivered",
                **{**exc.context(), "trigger": trigger.name},
            )
            pending = pending or exc
        except PermanentError as exc:
            logs.error(
                "permanent failure before a run was recorded: acknowledged",
                **{**exc.context(), "trigger": trigger.name},
            )
    if pending is not None:
        raise pending
    return outcomes


def _launch_hits(runtime: Runtime, event: Any, matches: list[routing.Match], what: str) -> list[Outcome]:
    """Launch the matched triggers; log the near misses when nothing matched."""
    hits = [m.trigger for m in matches if m.matched]
    if not hits:
        logs.info(
            f"no trigger matches this {what}",
            event=event.summary(),
            near_misses={m.trigger.name: list(m.reasons) for m in matches},
        )
        return []
    return launch_matches(runtime, event, hits)


def handle_object(runtime: Runtime, event: events.ObjectEvent) -> list[Outcome]:
    with logs.bind(event_id=event.event_id):
        if _too_old(runtime, event):
            return []
        return _launch_hits(runtime, event, routing.match_object(runtime.config, event), "object")


def handle_object_finalized(cloud_event: Any, runtime: Runtime) -> list[Outcome]:
    """``on_object_finalized``: an Eventarc Cloud Storage finalize event."""
    try:
        event = events.parse_object_finalized(cloud_event)
    except EventError as exc:
        logs.error("malformed storage event: acknowledged", **exc.context())
        return []
    return handle_object(runtime, event)


def handle_message(cloud_event: Any, runtime: Runtime) -> list[Outcome]:
    """``on_message``: a Pub/Sub message; storage notifications count as finalize events."""
    try:
        return _handle_message(cloud_event, runtime)
    except PermanentError as exc:
        logs.error("permanent failure: the message is acknowledged", **exc.context())
        return []


def _handle_message(cloud_event: Any, runtime: Runtime) -> list[Outcome]:
    try:
        message = events.parse_message(cloud_event)
    except EventError as exc:
        logs.error("malformed Pub/Sub event: acknowledged", **exc.context())
        return []
    with logs.bind(event_id=message.event_id):
        if message.is_storage_notification():
            try:
                obj_event = events.object_event_from_notification(message)
            except EventError as exc:
                logs.error("malformed storage notification: acknowledged", **exc.context())
                return []
            if obj_event is None:
                logs.info(
                    "storage notification ignored: only OBJECT_FINALIZE launches",
                    event_type=message.attributes.get("eventType"),
                )
                return []
            return handle_object(runtime, obj_event)
        if _too_old(runtime, message):
            return []
        if completion.is_completion_message(message):
            from handlers.follow.chaining import handle_completion

            return handle_completion(runtime, message)
        return _launch_hits(runtime, message, routing.match_message(runtime.config, message), "message")


def handle_job_status(cloud_event: Any, runtime: Runtime) -> str | None:
    """``on_job_status``: Eventarc's Dataflow ``statusChanged``; completes the run without waiting."""
    from handlers.follow.tracking import Tracker

    attrs, data = events.cloud_event_parts(cloud_event)
    job = (data or {}).get("payload") if isinstance(data, dict) else None
    if not isinstance(job, dict):
        logs.error("statusChanged event without a Job payload: acknowledged", event_id=attrs.get("id"))
        return None
    labels = job.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    trigger, run_hash = labels.get("pipeline-trigger"), labels.get("run-key-hash")
    # Only labels this project writes (params.job_labels) name a run; anything else, forged or
    # foreign, would make a ledger object name of arbitrary text.
    if not (isinstance(trigger, str) and _TRIGGER_LABEL.fullmatch(trigger)) or not (
        isinstance(run_hash, str) and _RUN_HASH.fullmatch(run_hash)
    ):
        logs.info(
            "job was not launched by this project: ignored", job_id=job.get("id"), job_name=job.get("name")
        )
        return None
    run_key = f"{trigger}-{run_hash}"
    with logs.bind(event_id=attrs.get("id"), run_key=run_key, job_id=job.get("id")):
        logs.info("job status changed", backend_state=job.get("currentState"))
        return Tracker(runtime).check(run_key)


def handle_sweep(cloud_event: Any, runtime: Runtime) -> Any:
    """``check_runs``: the scheduled sweep over active runs."""
    from handlers.follow.tracking import Tracker

    attrs, _ = events.cloud_event_parts(cloud_event)
    with logs.bind(event_id=attrs.get("id")):
        return Tracker(runtime).sweep()
