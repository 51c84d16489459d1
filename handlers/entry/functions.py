"""The functions' services: from a delivered CloudEvent to plans, and from plans to launches.

Each entry point of ``main.py`` calls one ``handle_*`` here. An event is parsed into its typed form
(:mod:`handlers.model.events`), planned by the one decision path (:mod:`handlers.route.plan`) and
the plan carried out: launches by :mod:`handlers.launch.service`, completions by
:mod:`handlers.follow.chaining`, pushed backend status by :mod:`handlers.follow.tracking`.

The error policy lives here, once for every entry point:

- a malformed event, an unsupported event type, no matching trigger -> logged, acknowledged;
- an event older than ``settings.max_event_age`` -> dropped with a log line, acknowledged;
- a permanent launch error -> recorded in the ledger by the launch service, acknowledged;
- any other permanent error that reaches here (a completion whose fields cannot be read, say) ->
  logged with its reason, acknowledged: a permanent error never becomes an HTTP 500;
- a retryable error -> raised after every matching trigger had its turn (the platform redelivers;
  triggers that already launched see a duplicate next time, objects that joined a window find it).
"""

from __future__ import annotations

from typing import Any

from handlers.backends import registry
from handlers.backends.contract import BackendSpec, PushedStatus
from handlers.core import logs
from handlers.core.errors import EventError, EventTooOld, PermanentError, RetryableError
from handlers.launch.runtime import Runtime
from handlers.launch.service import LaunchService, Outcome
from handlers.model import events
from handlers.route.identity import InvalidRunKey, RunKey
from handlers.route.plan import EventPlan, plan_message, plan_object


def _too_old(plan: EventPlan) -> bool:
    if plan.too_old:
        err = EventTooOld(
            f"event is {plan.age_seconds:.0f}s old, older than max_event_age {plan.max_age_seconds:.0f}s: dropped"
        )
        logs.warning(err.message, event_id=plan.event.event_id, event=plan.event.summary(), **err.context())
    return plan.too_old


def carry_out(runtime: Runtime, plan: EventPlan, service: LaunchService | None = None) -> list[Outcome]:
    """Act on an event's plan: nothing when it is too old or ignored, the completion triggers for a
    completion, else every matched trigger's launch (near misses logged when nothing matched)."""
    if _too_old(plan):
        return []
    if plan.ignored:
        logs.info(f"{plan.kind} event ignored: {plan.ignored}")
        return []
    if plan.refused:
        logs.warning(f"{plan.kind} event refused: acknowledged", reason=plan.refused)
        return []
    if plan.kind == "completion":
        from handlers.follow.chaining import handle_completion  # only on_message chains: cold start

        return handle_completion(runtime, plan, service)
    if not plan.matched:
        logs.info(
            f"no trigger matches this {'object' if plan.kind == 'storage' else 'message'}",
            event=plan.event.summary(),
            near_misses={d.trigger.name: list(d.match.reasons) for d in plan.decisions},
        )
        return []
    service = service or LaunchService(runtime)
    launches = [d.launch for d in plan.matched if d.launch is not None]
    windows = [d.window for d in plan.matched if d.window is not None]
    if not windows:
        return service.launch_all(launches)
    from handlers.launch.windows import Windows  # only configs with batch: triggers need it

    outcomes: list[Outcome] = []
    pending: RetryableError | None = None
    for act in (lambda: service.launch_all(launches), lambda: Windows(runtime, service).join_all(windows)):
        try:
            outcomes.extend(act())
        except RetryableError as exc:  # each already gave every plan its turn: redeliver after both
            pending = pending or exc
    if pending is not None:
        raise pending
    return outcomes


def handle_object(runtime: Runtime, event: events.ObjectEvent) -> list[Outcome]:
    with logs.bind(event_id=event.event_id):
        return carry_out(runtime, plan_object(runtime.config, event))


def handle_object_finalized(cloud_event: Any, runtime: Runtime) -> list[Outcome]:
    """``on_object_finalized``: an Eventarc Cloud Storage finalize event."""
    try:
        event = events.parse_object_finalized(cloud_event)
    except EventError as exc:
        logs.error("malformed storage event: acknowledged", **exc.context())
        return []
    return handle_object(runtime, event)


def handle_message(cloud_event: Any, runtime: Runtime) -> list[Outcome]:
    """``on_message``: a Pub/Sub message; storage notifications count as finalize events, completion
    events go to the completion triggers, a backend's pushed status (a message a configured
    backend's :class:`~handlers.backends.contract.StatusPush` recognises: Data Fusion's program status
    events) completes its run."""
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
        spec = _recognising_backend(runtime, message)
        if spec is not None and spec.push is not None:
            # a backend's own status event (Data Fusion publishes to Pub/Sub): no trigger sees it
            _pushed_status(runtime, spec, message.attributes, message.json, message.event_id)
            return []
        try:
            plan = plan_message(runtime.config, message)
        except EventError as exc:
            what = "storage notification" if message.is_storage_notification() else "completion event"
            logs.error(f"malformed {what}: acknowledged", **exc.context())
            return []
        return carry_out(runtime, plan)


def _pushing_backend(runtime: Runtime, event_type: Any) -> BackendSpec | None:
    """The configured backend whose status events arrive as CloudEvents of ``event_type``."""
    for name in sorted({p.backend for p in runtime.config.pipelines.values()}):
        spec = registry.spec(name)
        if spec.push is not None and spec.push.event_type is not None and spec.push.event_type == event_type:
            return spec
    return None


def _recognising_backend(runtime: Runtime, message: events.MessageEvent) -> BackendSpec | None:
    """The configured backend whose status events arrive as Pub/Sub messages like this one."""
    for name in sorted({p.backend for p in runtime.config.pipelines.values()}):
        spec = registry.spec(name)
        push = spec.push
        if (
            push is not None
            and push.recognises is not None
            and push.recognises(message.attributes, message.json)
        ):
            return spec
    return None


def handle_job_status(cloud_event: Any, runtime: Runtime) -> str | None:
    """``on_job_status``: a backend's own status event (Eventarc); completes the run without waiting.

    The backend that declares the event's type parses it (:class:`~handlers.backends.contract.StatusPush`);
    only a run key this project could have written names a run: anything else, forged or foreign,
    is ignored with a log line."""
    attrs, data = events.cloud_event_parts(cloud_event)
    spec = _pushing_backend(runtime, attrs.get("type"))
    if spec is None or spec.push is None:
        logs.error(
            "status event of a type no configured backend pushes: acknowledged", event_type=attrs.get("type")
        )
        return None
    return _pushed_status(runtime, spec, attrs, data, attrs.get("id"))


def _pushed_status(runtime: Runtime, spec: BackendSpec, attrs: Any, data: Any, event_id: Any) -> str | None:
    """Parse a backend's status event and check the run it names at once (the backend is asked:
    the event itself only says which run to look at, so a forged one changes nothing)."""
    from handlers.follow.tracking import Tracker  # the sweep's module: loaded by the functions using it

    assert spec.push is not None
    try:
        pushed = spec.push.parse(attrs, data)
    except EventError as exc:
        logs.error(
            "malformed status event: acknowledged", event_id=event_id, backend=spec.name, **exc.context()
        )
        return None
    key = _run_key(pushed)
    if pushed is None or key is None:
        logs.info(
            "job was not launched by this project: ignored",
            job_id=pushed.job_id if pushed else None,
            backend=spec.name,
        )
        return None
    with logs.bind(event_id=event_id, run_key=str(key), job_id=pushed.job_id):
        logs.info("job status changed", backend_state=pushed.raw_state)
        return Tracker(runtime).check(str(key))


def _run_key(pushed: PushedStatus | None) -> RunKey | None:
    if pushed is None:
        return None
    if pushed.run_key is not None:
        try:
            return RunKey.parse(pushed.run_key)
        except InvalidRunKey:
            return None
    return RunKey.from_labels(pushed.labels)


def handle_sweep(cloud_event: Any, runtime: Runtime) -> Any:
    """``check_runs``: the scheduled sweep over active runs."""
    from handlers.follow.tracking import Tracker  # the sweep's module: loaded by the two functions using it

    attrs, _ = events.cloud_event_parts(cloud_event)
    with logs.bind(event_id=attrs.get("id")):
        return Tracker(runtime).sweep()
