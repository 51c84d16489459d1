"""``explain``: which triggers an event matches, why the others do not, and what each would do.

Explain builds the event the way the functions would receive it and renders the plan of the one
decision path (:func:`handlers.route.plan.plan_event`), the very plan ``on_object_finalized`` and
``on_message`` act on: the same matching, run keys, job names, labels, rendered parameters and
outputs, fan-in join keys. It reads the config only: no ledger, no backend, no network (whether a
fan-in's other upstreams already arrived is in the ledger, which explain does not read). One
exception, for ``batch:`` triggers: which window an object would join is ledger state, so explain
reads (never writes) the window documents to say it, unless ``--no-ledger`` is given.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import mimetypes
import sys
from dataclasses import dataclass, field
from typing import Any

from handlers.core.errors import EventError, PipelineError
from handlers.core.ids import digest
from handlers.core.times import iso
from handlers.entry.cli.args import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    _human_seconds,
    _kv,
    _load,
    _read_arg,
    _runtime,
)
from handlers.entry.cli.output import Output, clean
from handlers.model.completions import RUN_COMPLETED, Completion, completion_id, parse_completion
from handlers.model.config import Config, Trigger
from handlers.model.events import MessageEvent, ObjectEvent, StorageObject, split_topic
from handlers.route.plan import (
    Action,
    EventPlan,
    LaunchPlan,
    TriggerDecision,
    WindowPlan,
    plan_completion,
    plan_message,
    plan_object,
)


@dataclass
class TriggerExplanation:
    """What one trigger would do with the explained event (a view of its TriggerDecision)."""

    trigger: str
    pipeline: str
    backend: str
    kind: str
    matched: bool
    reasons: list[str] = field(default_factory=list)
    action: str | None = None  # launch | wait | abandon | join | fail | None (no match)
    run_key: str | None = None
    job_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    join: dict[str, Any] | None = None
    window: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "trigger": self.trigger,
            "pipeline": self.pipeline,
            "backend": self.backend,
            "kind": self.kind,
            "matched": self.matched,
            "reasons": self.reasons,
            "action": self.action,
        }
        if self.matched:
            doc.update(
                run_key=self.run_key,
                job_name=self.job_name,
                labels=self.labels,
                parameters=self.parameters,
                outputs=self.outputs,
                error=self.error,
            )
        if self.join is not None:
            doc["join"] = self.join
        if self.window is not None:
            doc["window"] = self.window
        return doc


@dataclass
class Explanation:
    kind: str
    event: dict[str, Any]
    triggers: list[TriggerExplanation]
    max_event_age_seconds: float
    age_seconds: float
    notes: list[str] = field(default_factory=list)
    # event fields the command line did not give, and how explain made them up
    assumed: dict[str, str] = field(default_factory=dict)

    @property
    def too_old(self) -> bool:
        return self.age_seconds > self.max_event_age_seconds

    @property
    def acting(self) -> list[str]:
        """Triggers that would do something (launch, or record a fan-in arrival)."""
        if self.too_old:
            return []
        return [t.trigger for t in self.triggers if t.action in ("launch", "wait", "abandon", "join")]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event": self.event,
            "age_seconds": round(self.age_seconds, 3),
            "max_event_age_seconds": self.max_event_age_seconds,
            "too_old": self.too_old,
            "assumed": self.assumed,
            "notes": self.notes,
            "would_act": self.acting,
            "triggers": [t.to_json() for t in self.triggers],
        }


# ---------------------------------------------------------------------------------------------
# From the plan to the explanation
# ---------------------------------------------------------------------------------------------
def _launch_view(plan: LaunchPlan, ex: TriggerExplanation) -> None:
    """Run key, job name, labels, parameters and outputs exactly as the launch service gets them."""
    if plan.action is Action.SKIP:
        assert plan.error is not None
        ex.action, ex.error = "fail", f"no run identity: {plan.error.message} (acknowledged without a run)"
        return
    ex.run_key, ex.job_name, ex.labels = str(plan.run_key), plan.job_name, plan.labels
    if plan.action is Action.FAIL:
        assert plan.error is not None
        ex.action, ex.error = "fail", f"{plan.error.message} (the run would be recorded LAUNCH_FAILED)"
        return
    assert plan.rendered is not None
    ex.action = "launch"
    ex.parameters, ex.outputs = dict(plan.rendered.parameters), dict(plan.rendered.outputs)


def _limits(trigger: Trigger) -> dict[str, Any]:
    spec = trigger.batch
    assert spec is not None
    return {
        "max_items": spec.max_items,
        "max_bytes": spec.max_bytes,
        "max_wait_seconds": spec.max_wait_seconds,
    }


def _window_view(plan: WindowPlan, ex: TriggerExplanation) -> None:
    """A batched trigger: the window key and limits (which window: :func:`locate_windows`)."""
    if plan.action is Action.SKIP:
        assert plan.error is not None
        ex.action, ex.error = "fail", f"window key: {plan.error.message} (acknowledged without a window)"
        return
    ex.action = "join"
    ex.window = {"key": plan.key, "limits": _limits(plan.trigger)}


def locate_windows(config: Config, plan: EventPlan, ex: Explanation) -> None:
    """Read the ledger (read only) for the window each batched trigger's object is in or would join."""
    views = {t.trigger: t for t in ex.triggers}
    plans = [d.window for d in plan.matched if d.window is not None and d.window.action is Action.JOIN]
    if not plans:
        return
    from handlers.launch.windows import Windows  # the launch stack: only when a trigger batches

    try:
        windows = Windows(_runtime(config))
        for wplan in plans:
            where = windows.whereabouts(wplan)
            view = views[wplan.trigger.name].window
            assert view is not None
            view.update(
                window=where.window,
                joined=where.joined,
                state=where.state,
                count=where.count,
                bytes=where.bytes,
                run_key=where.run_key,
            )
    except PipelineError as exc:
        ex.notes.append(f"the ledger could not be read to find the window: {exc.message}")


def _view(config: Config, decision: TriggerDecision) -> TriggerExplanation:
    trigger = decision.trigger
    pipeline = config.pipelines.get(trigger.pipeline)
    ex = TriggerExplanation(
        trigger=trigger.name,
        pipeline=trigger.pipeline,
        backend=pipeline.backend if pipeline else "?",
        kind="fan-in" if trigger.scope == "fanin" else trigger.kind,
        matched=decision.match.matched,
        reasons=list(decision.match.reasons),
    )
    if decision.launch is not None:
        _launch_view(decision.launch, ex)
    if decision.window is not None:
        _window_view(decision.window, ex)
    join = decision.join
    if join is None:
        return ex
    comp = join.completion
    if join.action is Action.SKIP:
        assert join.error is not None
        ex.action, ex.error = (
            "fail",
            f"join key: {join.error.message} (the completion is acknowledged and ignored)",
        )
        return ex
    ex.join = {
        "join_key": join.join_key,
        "upstreams": list(trigger.completion.upstream if trigger.completion else ()),
        "arrives": comp.pipeline,
    }
    if join.action is Action.ABANDON:
        ex.action = "abandon"
        ex.join["waiting_for"] = []
        ex.error = (
            f"upstream {comp.pipeline} ended {comp.state}: the join for key {join.join_key!r} is ABANDONED, "
            f"{trigger.pipeline} never launches for it and a join.abandoned event is published"
        )
        return ex
    ex.action = "wait"
    ex.join["waiting_for"] = list(join.waiting_for)
    partial = join.partial
    if partial is not None and partial.run_key is not None:
        ex.run_key, ex.job_name, ex.labels = str(partial.run_key), partial.job_name, partial.labels
        if partial.rendered is not None:
            ex.parameters, ex.outputs = dict(partial.rendered.parameters), dict(partial.rendered.outputs)
        elif partial.error is not None:
            ex.join["pending_parameters"] = (
                partial.error.message + " (filled in when the other upstreams arrive)"
            )
    return ex


def _event_info(plan: EventPlan) -> dict[str, Any]:
    event = plan.event
    if isinstance(event, ObjectEvent):
        o = event.object
        return {
            **event.summary(),
            "size": o.size,
            "content_type": o.content_type,
            "metadata": dict(o.metadata),
            "via": event.via,
        }
    if isinstance(event, Completion):
        return {
            **event.summary(),
            "upstream_parameters": dict(event.data.get("parameters") or {}),
            "upstream_outputs": dict(event.data.get("outputs") or {}),
        }
    info = {**event.summary(), "attributes": dict(event.attributes)}
    if plan.ignored is None and plan.refused is None:
        info["data"] = event.json if event.json is not None else event.text
    return info


def explanation_of(
    config: Config, plan: EventPlan, *, delivered_at: dt.datetime | None = None
) -> Explanation:
    """The explanation of an event's plan."""
    info = _event_info(plan)
    if plan.kind == "completion" and isinstance(plan.event, Completion):
        info["delivered_at"] = iso(delivered_at or plan.event.event_time)
    notes = list(plan.notes) + [why for why in (plan.ignored, plan.refused) if why]
    return Explanation(
        plan.kind,
        info,
        [_view(config, d) for d in plan.decisions],
        plan.max_age_seconds,
        plan.age_seconds,
        notes=notes,
    )


def explain_object(config: Config, event: ObjectEvent, *, now: dt.datetime | None = None) -> Explanation:
    """Every storage trigger against ``event`` (pure: reads nothing but ``config``)."""
    return explanation_of(config, plan_object(config, event, now=now))


def explain_message(config: Config, event: MessageEvent, *, now: dt.datetime | None = None) -> Explanation:
    """A Pub/Sub message as ``on_message`` routes it."""
    plan = plan_message(config, event, now=now)
    return explanation_of(config, plan, delivered_at=event.event_time)


def explain_completion(
    config: Config,
    comp: Completion,
    *,
    delivered_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> Explanation:
    plan = plan_completion(config, comp, delivered_at=delivered_at, now=now)
    return explanation_of(config, plan, delivered_at=delivered_at)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
ASSUMED = {  # event field -> how explain makes it up when its flag is not given
    "event_time": "now; --time sets it",
    "generation": "the event time in microseconds, as GCS assigns it; the run key depends on it: --generation",
    "size": "0; --size sets it",
    "content_type": "guessed from the name; --content-type sets it",
    "message_id": "derived from topic, data and attributes; --message-id sets it",
    "delivered_at": "now; --time sets it",
}


def _completion_from_arg(value: str, delivered_at: dt.datetime, project: str) -> Completion | None:
    """A Completion from a CloudEvent JSON (inline, ``@file``, a path, or ``-``). The bare ``data``
    object of one (with run_key, pipeline, state) is accepted too and given its deterministic id."""
    if value.lstrip().startswith("{"):
        raw = value.encode()
    elif value in ("-", "@-"):
        raw = sys.stdin.buffer.read()
    else:
        raw = _read_arg(value if value.startswith("@") else "@" + value, "--completion")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"--completion: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise UsageError("--completion: expected a JSON object (a completion CloudEvent)")
    if "type" not in doc and {"run_key", "pipeline", "state"} <= set(doc):
        doc = {
            "specversion": "1.0",
            "type": RUN_COMPLETED,
            "id": completion_id(str(doc["run_key"]), str(doc["state"])),
            "time": doc.get("ended_at"),
            "data": doc,
        }
    message = MessageEvent(
        event_id=str(doc.get("id") or "explain"),
        event_time=delivered_at,
        project=project,
        topic="",
        message_id=str(doc.get("id") or "explain"),
        data=json.dumps(doc).encode(),
        attributes={},
    )
    try:
        return parse_completion(message)
    except EventError as exc:
        raise UsageError(f"--completion: {exc.message}") from exc


def cmd_explain(args: argparse.Namespace, out: Output) -> int:
    config = _load(args)
    when: dt.datetime = args.time or dt.datetime.now(dt.UTC)
    now = dt.datetime.now(dt.UTC)
    given = [
        flag
        for flag, v in (("--bucket", args.bucket), ("--topic", args.topic), ("--completion", args.completion))
        if v is not None
    ]
    if len(given) > 1:
        raise UsageError(f"explain takes one event: {' and '.join(given)} were both given")
    missing: dict[str, Any] = {}
    if args.bucket is not None:
        if not args.name:
            raise UsageError("explain --bucket needs --name")
        generation = args.generation if args.generation is not None else int(when.timestamp() * 1_000_000)
        content_type = args.content_type or mimetypes.guess_type(args.name)[0] or "application/octet-stream"
        obj = StorageObject(
            bucket=args.bucket,
            name=args.name,
            generation=generation,
            size=args.size if args.size is not None else 0,
            content_type=content_type,
            metageneration=1,
            metadata=dict(args.metadata or []),
            time_created=when,
        )
        missing.update(generation=args.generation, size=args.size, content_type=args.content_type)
        plan = plan_object(config, ObjectEvent(args.event_id or obj.identity, when, obj), now=now)
        explanation = explanation_of(config, plan)
        if not args.no_ledger:
            locate_windows(config, plan, explanation)
    elif args.topic is not None:
        project, topic = split_topic(args.topic)
        data = _read_arg(args.data, "--data") if args.data is not None else b""
        attributes = dict(args.attribute or [])
        message_id = args.message_id or (
            "local-"
            + digest(
                json.dumps([topic, base64.b64encode(data).decode(), attributes], sort_keys=True), length=16
            )
        )
        message = MessageEvent(
            event_id=args.event_id or message_id,
            event_time=when,
            project=project or config.settings.project,
            topic=topic,
            message_id=message_id,
            data=data,
            attributes=attributes,
            publish_time=when,
        )
        missing["message_id"] = args.message_id
        try:
            explanation = explain_message(config, message, now=now)
        except EventError as exc:
            raise UsageError(f"the message cannot be read as the function would: {exc.message}") from exc
    elif args.completion is not None:
        comp = _completion_from_arg(args.completion, when, config.settings.project)
        if comp is None:
            raise UsageError("--completion: a join.abandoned notice launches nothing")
        explanation = explain_completion(config, comp, delivered_at=when, now=now)
    else:
        raise UsageError("explain needs an event: --bucket/--name, --topic or --completion")
    # the time given (or not) is a completion's delivery, any other event's own time
    missing["delivered_at" if explanation.kind == "completion" else "event_time"] = args.time
    explanation.assumed = {k: ASSUMED[k] for k, v in missing.items() if v is None and k in explanation.event}
    if out.json:
        out.emit(explanation.to_json())
    else:
        print_explanation(explanation, out)
    return EXIT_OK if explanation.acting else EXIT_FAILURE


def _window_pairs(window: dict[str, Any]) -> list[tuple[str, Any]]:
    limits = ", ".join(
        f"{k} {_human_seconds(v) if k == 'max_wait_seconds' else v}".replace("_seconds", "")
        for k, v in window["limits"].items()
        if v is not None
    )
    pairs: list[tuple[str, Any]] = [("window key", repr(window["key"])), ("closes at", limits)]
    if "window" not in window:
        return pairs
    if window["joined"]:
        where = f"{window['window']}: already a member ({window['state']}, {window['count']} objects)"
    elif window["state"] is None:
        where = f"{window['window']}: would open it (its first object)"
    else:
        where = (
            f"{window['window']}: would join it ({window['count']} objects, {window['bytes']} bytes so far)"
        )
    pairs.append(("window", where))
    if window.get("run_key"):
        pairs.append(("window run", window["run_key"]))
    return pairs


def print_explanation(ex: Explanation, out: Output) -> None:
    ev = ex.event

    def said(key: str, text: Any) -> str:
        """``text``, marked when explain made the value up."""
        how = ex.assumed.get(key)
        return f"{text}  " + out.paint(f"(assumed: {how})", "yellow") if how else str(text)

    if ex.kind == "storage":
        out.line(f"storage event  gs://{clean(ev['bucket'])}/{clean(ev['name'])}")
        facts = [
            ("generation", said("generation", ev["generation"])),
            ("size", said("size", ev["size"])),
            ("content type", said("content_type", ev["content_type"])),
        ]
        if ev.get("metadata"):
            facts.append(("metadata", ", ".join(f"{k}={v}" for k, v in sorted(ev["metadata"].items()))))
    elif ex.kind == "pubsub":
        out.line(f"pubsub message  topic {clean(ev['topic'])}")
        facts = [("id", said("message_id", clean(ev["message_id"])))]
        if ev.get("attributes"):
            facts.append(("attributes", ", ".join(f"{k}={v}" for k, v in sorted(ev["attributes"].items()))))
        if "data" in ev:
            data = ev["data"]
            facts.append(("data", data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)))
    else:
        out.line(
            f"completion  {clean(ev['upstream_pipeline'])} {out.state(ev['upstream_state'])}"
            f"  run {clean(ev['upstream_run_key'])}"
        )
        facts = [("event id", ev["event_id"])]
        if ev.get("upstream_parameters"):
            facts.append(("parameters", _kv(ev["upstream_parameters"])))
        if ev.get("upstream_outputs"):
            facts.append(("outputs", _kv(ev["upstream_outputs"])))
    age = _human_seconds(ex.age_seconds) if ex.age_seconds >= 0 else "in the future"
    if ex.kind == "completion":
        facts.append(("ended at", ev["event_time"]))
        facts.append(("delivered", said("delivered_at", f"{ev['delivered_at']}  (age {age})")))
    else:
        facts.append(("event time", said("event_time", f"{ev['event_time']}  (age {age})")))
    out.pairs(facts, indent=2)
    for note in ex.notes:
        out.line(out.paint(f"  note: {clean(note)}", "dim"))
    if ex.too_old:
        out.line(
            out.paint(
                f"  the event is older than max_event_age ({ex.max_event_age_seconds:.0f}s): "
                "it would be dropped and nothing launched",
                "red",
            )
        )
    out.line()
    for t in ex.triggers:
        tag = out.paint("MATCH", "green") if t.matched else out.paint("miss ", "dim")
        out.line(f"{tag}  {clean(t.trigger)}  ({t.kind}) -> {clean(t.pipeline)} [{t.backend}]")
        for reason in t.reasons:
            out.line(f"       - {clean(reason)}")
        if not t.matched:
            continue
        pairs: list[tuple[str, Any]] = []
        if t.join is not None:
            pairs.append(("join key", t.join["join_key"]))
            if t.action == "wait":
                waiting = ", ".join(t.join["waiting_for"]) or "nobody"
                pairs.append(("arrives", t.join["arrives"]))
                pairs.append(("waits for", f"{waiting} (SUCCEEDED, same join key); then launches once"))
        if t.window is not None:
            pairs += _window_pairs(t.window)
        if t.run_key:
            pairs += [("run key", t.run_key), ("job name", t.job_name), ("labels", _kv(t.labels))]
        out.pairs(pairs, indent=7)
        if t.error and t.action in ("fail", "abandon"):
            out.line(out.paint(f"       {clean(t.error)}", "red"))
        if t.parameters:
            out.line("       parameters")
            out.pairs(sorted(t.parameters.items()), indent=9)
        if t.outputs:
            out.line("       outputs")
            out.pairs(sorted(t.outputs.items()), indent=9)
        if t.join and t.join.get("pending_parameters"):
            out.line(f"       parameters pending: {clean(t.join['pending_parameters'])}")
    out.line()
    total = len(ex.triggers)
    matched = sum(1 for t in ex.triggers if t.matched)
    summary = f"{ex.kind} triggers: {matched} of {total} matched"
    acting = ex.acting
    summary += f"; would act: {', '.join(acting)}" if acting else "; nothing would launch"
    out.line(summary)
