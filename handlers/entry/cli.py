"""The command line for data engineers: ``python -m handlers COMMAND [options]``.

::

    validate [CONFIG]          check a routing config; list every problem
    explain  --bucket/--topic/--completion ...
                               which triggers an event matches, why the others do not, and what each
                               match would launch (run key, job name, labels, parameters, outputs);
                               reads the config only: no ledger, no backend, no network
    runs                       the runs in the ledger, newest first (--active: the active index only)
    launch   PIPELINE          start a run by hand through :mod:`handlers.entry.manual` (idempotent); --wait
    cancel   RUN_KEY           ask the backend to stop a run's job
    graph                      the config as a Mermaid ``flowchart LR`` (or nodes/edges with --json)

Every command takes ``--config FILE`` (default ``$PIPELINES_CONFIG``, else ``pipelines.yaml``) and
``--json`` (one JSON document on stdout, also for errors). Human output goes to stdout in aligned
columns, coloured only when stdout is a terminal and ``NO_COLOR`` is unset; progress and, with
``--verbose``, the services' structured logs go to stderr.

Exit codes: ``0`` success, ``1`` a failure or something not found (including "no trigger would
launch" for ``explain`` and "did not succeed" for ``launch --wait``), ``2`` a usage error or an
invalid config. ``docs/cli.md`` is the user guide.

This module is a thin shell: matching comes from :mod:`handlers.route.match`, run keys and rendering
from :mod:`handlers.route.render`, chaining from :mod:`handlers.follow.completion` / :mod:`handlers.follow.chaining`,
and launch/status/cancel from :mod:`handlers.entry.manual` (shared with the REST API).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import datetime as dt
import hashlib
import io
import json
import mimetypes
import os
import re
import sys
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from handlers.backends.contract import TERMINAL_STATES, RunState
from handlers.core import logs
from handlers.core.errors import (
    ConfigError,
    EventError,
    NotFound,
    ParameterError,
    PipelineError,
    RetryableError,
)
from handlers.core.times import age_seconds, iso, parse_time
from handlers.follow import completion
from handlers.model.config import Config, Pipeline, Trigger, load_config
from handlers.model.events import (
    MessageEvent,
    ObjectEvent,
    StorageObject,
    object_event_from_notification,
    split_topic,
)
from handlers.route import match as routing
from handlers.route.render import identity_of, job_labels, job_name, render, run_key

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_RUNS_LIMIT = 50


class UsageError(Exception):
    """A command line the tool cannot act on (exit 2)."""


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "dim": "2", "bold": "1"}
_STATE_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "LAUNCH_FAILED": "red",
    "TIMED_OUT": "red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "PENDING": "cyan",
    "CLAIMED": "dim",
}


def clean(text: Any) -> str:
    """``text`` safe for one terminal line: control and format characters (newlines, escape
    sequences, bidi overrides) are shown as escapes instead of acting on the terminal."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(
                {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
                or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
            )
        else:
            out.append(ch)
    return "".join(out)


class Output:
    """Where a command writes: JSON or human text on stdout, progress and notes on stderr."""

    def __init__(self, *, as_json: bool, stdout: TextIO, stderr: TextIO, colour: bool) -> None:
        self.json = as_json
        self.stdout = stdout
        self.stderr = stderr
        self.colour = colour

    def emit(self, doc: Any) -> None:
        self.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")

    def line(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def paint(self, text: str, colour: str | None) -> str:
        if not self.colour or not colour:
            return text
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"

    def state(self, state: str, width: int = 0) -> str:
        return self.paint(state.ljust(width), _STATE_COLOURS.get(state))

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[str]], colours: Sequence[str | None]
    ) -> None:
        """Aligned columns (the last one is not padded); ``colours`` names a colour per column."""
        cells = [[clean(c) for c in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        last = len(headers) - 1
        self.line(
            "  ".join(
                self.paint(h if i == last else h.ljust(widths[i]), "bold") for i, h in enumerate(headers)
            )
        )
        for row in cells:
            parts = []
            for i, c in enumerate(row):
                padded = c if i == last else c.ljust(widths[i])
                colour = _STATE_COLOURS.get(c) if colours[i] == "state" else colours[i]
                parts.append(self.paint(padded, colour))
            self.line("  ".join(parts).rstrip())

    def pairs(self, items: Iterable[tuple[str, Any]], indent: int = 0) -> None:
        """``key  value`` lines with the values aligned."""
        items = list(items)
        if not items:
            return
        width = max(len(k) for k, _ in items)
        for key, value in items:
            self.line(" " * indent + f"{key.ljust(width)}  {clean(value)}")


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, else at most once a second."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = _isatty(stream)
        self._last = 0.0
        self._shown = False

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        elif force or now - self._last >= 1.0:
            self.stream.write(text + "\n")
        else:
            return
        self._last = now
        self._shown = True
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------------------
def key_value(text: str) -> tuple[str, str]:
    """``k=v`` -> ``("k", "v")`` (argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _time_arg(text: str) -> dt.datetime:
    try:
        parsed = parse_time(text, "--time")
    except EventError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc
    if parsed is None:
        raise argparse.ArgumentTypeError("--time needs an RFC 3339 timestamp")
    return parsed


def _read_arg(value: str, what: str) -> bytes:
    """``@file`` / ``@-`` (stdin) / literal text."""
    if value == "@-" or value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"{what}: cannot read {value[1:]}: {exc.strerror or exc}") from exc
    return value.encode()


def _load(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _runtime(config: Config) -> Any:
    from handlers.launch.runtime import make_runtime

    return make_runtime(config)


def _age(created: str | None, now: dt.datetime) -> tuple[str, float | None]:
    """Human age (``45s``, ``3m``, ``2h``, ``5d``) and seconds since ``created``."""
    when = parse_time(created) if created else None
    if when is None:
        return "-", None
    seconds = max(0.0, (now - when).total_seconds())
    return _human_seconds(seconds), seconds


def _human_seconds(seconds: float) -> str:
    """``45s``, ``3m``, ``2h``, ``5d``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
def summarize(config: Config) -> dict[str, Any]:
    """Counts of pipelines (by backend) and triggers (by kind; fan-ins counted apart)."""
    kinds: dict[str, int] = {}
    for trig in config.triggers.values():
        kind = "fan-in" if trig.scope == "fanin" else trig.kind
        kinds[kind] = kinds.get(kind, 0) + 1
    backends: dict[str, int] = {}
    for p in config.pipelines.values():
        backends[p.backend] = backends.get(p.backend, 0) + 1
    return {
        "pipelines": len(config.pipelines),
        "triggers": len(config.triggers),
        "triggers_by_kind": dict(sorted(kinds.items())),
        "pipelines_by_backend": dict(sorted(backends.items())),
    }


def cmd_validate(args: argparse.Namespace, out: Output) -> int:
    path = args.file or getattr(args, "config", None)
    config = load_config(path)  # a ConfigError is reported by main() with every problem
    summary = summarize(config)
    if out.json:
        out.emit({"valid": True, "source": config.source, **summary})
        return EXIT_OK
    by_kind = ", ".join(f"{n} {k}" for k, n in summary["triggers_by_kind"].items())
    out.line(
        f"{clean(config.source)}: {out.paint('OK', 'green')}: {summary['pipelines']} pipeline"
        f"{'' if summary['pipelines'] == 1 else 's'}, {summary['triggers']} trigger"
        f"{'' if summary['triggers'] == 1 else 's'}" + (f" ({by_kind})" if by_kind else "")
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------
@dataclass
class TriggerExplanation:
    """What one trigger would do with the explained event."""

    trigger: str
    pipeline: str
    backend: str
    kind: str
    matched: bool
    reasons: list[str] = field(default_factory=list)
    action: str | None = None  # launch | wait | abandon | fail | None (no match)
    run_key: str | None = None
    job_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    join: dict[str, Any] | None = None

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
        return doc


@dataclass
class Explanation:
    kind: str
    event: dict[str, Any]
    triggers: list[TriggerExplanation]
    max_event_age_seconds: float
    age_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def too_old(self) -> bool:
        return self.age_seconds > self.max_event_age_seconds

    @property
    def acting(self) -> list[str]:
        """Triggers that would do something (launch, or record a fan-in arrival)."""
        if self.too_old:
            return []
        return [t.trigger for t in self.triggers if t.action in ("launch", "wait", "abandon")]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event": self.event,
            "age_seconds": round(self.age_seconds, 3),
            "max_event_age_seconds": self.max_event_age_seconds,
            "too_old": self.too_old,
            "notes": self.notes,
            "would_act": self.acting,
            "triggers": [t.to_json() for t in self.triggers],
        }


def _rendered_into(config: Config, trigger: Trigger, event: Any, ex: TriggerExplanation) -> None:
    """Fill run key, job name, labels, parameters and outputs exactly as the launch service would."""
    pipeline = config.pipelines[trigger.pipeline]
    try:
        key = run_key(trigger.name, identity_of(trigger, event))
    except ParameterError as exc:
        ex.action, ex.error = "fail", f"no run identity: {exc.message} (acknowledged without a run)"
        return
    except KeyError:  # identity_of lets a missing dedupe_by field escape as KeyError
        dedupe = trigger.pubsub.dedupe_by if trigger.pubsub else None
        ex.action = "fail"
        ex.error = f"no run identity: dedupe_by {dedupe}: the message has no value there"
        return
    ex.run_key, ex.job_name = key, job_name(pipeline.name, key)
    ex.labels = job_labels(trigger.name, pipeline.name, key)
    try:
        rendered = render(config, trigger, pipeline, event, key)
    except ParameterError as exc:
        ex.action, ex.error = "fail", f"{exc.message} (the run would be recorded LAUNCH_FAILED)"
        return
    ex.action = "launch"
    ex.parameters, ex.outputs = dict(rendered.parameters), dict(rendered.outputs)


def _base(config: Config, trigger: Trigger, matched: bool, reasons: Iterable[str]) -> TriggerExplanation:
    pipeline = config.pipelines.get(trigger.pipeline)
    return TriggerExplanation(
        trigger=trigger.name,
        pipeline=trigger.pipeline,
        backend=pipeline.backend if pipeline else "?",
        kind="fan-in" if trigger.scope == "fanin" else trigger.kind,
        matched=matched,
        reasons=list(reasons),
    )


def explain_object(config: Config, event: ObjectEvent, *, now: dt.datetime | None = None) -> Explanation:
    """Every storage trigger against ``event`` (pure: reads nothing but ``config``)."""
    results = []
    for match in routing.match_object(config, event):
        ex = _base(config, match.trigger, match.matched, match.reasons)
        if match.matched:
            _rendered_into(config, match.trigger, event, ex)
        results.append(ex)
    o = event.object
    info = {
        **event.summary(),
        "size": o.size,
        "content_type": o.content_type,
        "metadata": dict(o.metadata),
        "via": event.via,
    }
    return Explanation(
        "storage", info, results, config.settings.max_event_age_seconds, age_seconds(event.event_time, now)
    )


def explain_message(config: Config, event: MessageEvent, *, now: dt.datetime | None = None) -> Explanation:
    """A Pub/Sub message as ``on_message`` routes it: a storage notification is explained as the
    object it announces, a completion CloudEvent as a completion, anything else against every
    pubsub trigger."""
    age = age_seconds(event.event_time, now)
    if event.is_storage_notification():
        obj_event = object_event_from_notification(event)
        if obj_event is None:
            info = {**event.summary(), "attributes": dict(event.attributes)}
            ex = Explanation("pubsub", info, [], config.settings.max_event_age_seconds, age)
            ex.notes.append(
                f"a storage notification of type {event.attributes.get('eventType')!r}: ignored "
                "(only OBJECT_FINALIZE launches)"
            )
            return ex
        result = explain_object(config, obj_event, now=now)
        result.notes.append("a Cloud Storage notification: routed as the object-finalize event it carries")
        return result
    if completion.is_completion_message(event):
        comp = completion.parse_completion(event)
        if comp is None:
            info = {**event.summary(), "attributes": dict(event.attributes)}
            ex = Explanation("completion", info, [], config.settings.max_event_age_seconds, age)
            ex.notes.append("a join.abandoned notice: nothing launches from it")
            return ex
        return explain_completion(config, comp, delivered_at=event.event_time, now=now)
    results = []
    for match in routing.match_message(config, event):
        one = _base(config, match.trigger, match.matched, match.reasons)
        if match.matched:
            _rendered_into(config, match.trigger, event, one)
        results.append(one)
    info = {
        **event.summary(),
        "attributes": dict(event.attributes),
        "data": event.json if event.json is not None else event.text,
    }
    return Explanation("pubsub", info, results, config.settings.max_event_age_seconds, age)


def _join_key(trigger: Trigger, comp: completion.Completion) -> str:
    """The fan-in join key exactly as the chaining service renders it (no I/O)."""
    from handlers.follow.chaining import join_key_for

    return join_key_for(trigger, comp)


def _explain_fan_in(
    config: Config, trigger: Trigger, comp: completion.Completion, ex: TriggerExplanation
) -> None:
    from handlers.follow.chaining import FanInEvent

    assert trigger.completion is not None
    others = [u for u in trigger.completion.upstream if u != comp.pipeline]
    try:
        key = _join_key(trigger, comp)
    except ParameterError as exc:
        ex.action = "fail"
        ex.error = f"join key: {exc.message} (the completion is acknowledged and ignored)"
        return
    join: dict[str, Any] = {
        "join_key": key,
        "upstreams": list(trigger.completion.upstream),
        "arrives": comp.pipeline,
    }
    ex.join = join
    if comp.state != "SUCCEEDED":
        ex.action = "abandon"
        join["waiting_for"] = []
        ex.error = (
            f"upstream {comp.pipeline} ended {comp.state}: the join for key {key!r} is ABANDONED, "
            f"{trigger.pipeline} never launches for it and a join.abandoned event is published"
        )
        return
    ex.action = "wait"
    join["waiting_for"] = others
    pipeline = config.pipelines[trigger.pipeline]
    partial = FanInEvent(trigger.name, key, {comp.pipeline: dict(comp.data)}, comp.event_time)
    ex.run_key = run_key(trigger.name, identity_of(trigger, partial))
    ex.job_name = job_name(pipeline.name, ex.run_key)
    ex.labels = job_labels(trigger.name, pipeline.name, ex.run_key)
    try:
        rendered = render(config, trigger, pipeline, partial, ex.run_key)
        ex.parameters, ex.outputs = dict(rendered.parameters), dict(rendered.outputs)
    except ParameterError as exc:
        join["pending_parameters"] = exc.message + " (filled in when the other upstreams arrive)"


def explain_completion(
    config: Config,
    comp: completion.Completion,
    *,
    delivered_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> Explanation:
    """Every completion trigger against one completion event, as :mod:`handlers.follow.chaining` would
    route it, without reading or writing the ledger (a fan-in shows the join key and the upstreams
    it waits for; whether they already arrived is in the ledger, which explain does not read)."""
    results = []
    for trigger in config.triggers_of("completion"):
        spec = trigger.completion
        assert spec is not None
        reasons = []
        if comp.pipeline not in spec.upstream:
            reasons.append(f"upstream pipeline is {comp.pipeline!r}, trigger waits for {list(spec.upstream)}")
        elif not spec.is_fan_in and comp.state not in spec.states:
            reasons.append(f"upstream state is {comp.state!r}, trigger wants one of {list(spec.states)}")
        ex = _base(config, trigger, not reasons, reasons)
        if not reasons:
            if spec.is_fan_in:
                _explain_fan_in(config, trigger, comp, ex)
            else:
                _rendered_into(config, trigger, comp, ex)
        results.append(ex)
    info = {**comp.summary(), "upstream_parameters": dict(comp.data.get("parameters") or {})}
    info["upstream_outputs"] = dict(comp.data.get("outputs") or {})
    info["delivered_at"] = iso(delivered_at or comp.event_time)
    age = age_seconds(delivered_at or comp.event_time, now)
    return Explanation("completion", info, results, config.settings.max_event_age_seconds, age)


def _completion_from_arg(value: str, delivered_at: dt.datetime, project: str) -> completion.Completion | None:
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
            "type": completion.RUN_COMPLETED,
            "id": completion.completion_id(str(doc["run_key"]), str(doc["state"])),
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
        return completion.parse_completion(message)
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
        explanation = explain_object(config, ObjectEvent(args.event_id or obj.identity, when, obj), now=now)
    elif args.topic is not None:
        project, topic = split_topic(args.topic)
        data = _read_arg(args.data, "--data") if args.data is not None else b""
        attributes = dict(args.attribute or [])
        message_id = args.message_id or (
            "local-"
            + hashlib.sha256(
                json.dumps([topic, base64.b64encode(data).decode(), attributes], sort_keys=True).encode()
            ).hexdigest()[:16]
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
        explanation = explain_message(config, message, now=now)
    elif args.completion is not None:
        comp = _completion_from_arg(args.completion, when, config.settings.project)
        if comp is None:
            raise UsageError("--completion: a join.abandoned notice launches nothing")
        explanation = explain_completion(config, comp, delivered_at=when, now=now)
    else:
        raise UsageError("explain needs an event: --bucket/--name, --topic or --completion")
    if out.json:
        out.emit(explanation.to_json())
    else:
        _print_explanation(explanation, out)
    return EXIT_OK if explanation.acting else EXIT_FAILURE


def _print_explanation(ex: Explanation, out: Output) -> None:
    ev = ex.event
    if ex.kind == "storage":
        out.line(f"storage event  gs://{clean(ev['bucket'])}/{clean(ev['name'])}")
        facts = [
            ("generation", ev["generation"]),
            ("size", ev["size"]),
            ("content type", ev["content_type"]),
        ]
        if ev.get("metadata"):
            facts.append(("metadata", ", ".join(f"{k}={v}" for k, v in sorted(ev["metadata"].items()))))
    elif ex.kind == "pubsub":
        out.line(f"pubsub message  topic {clean(ev['topic'])}  id {clean(ev['message_id'])}")
        facts = []
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
        facts.append(("delivered", f"{ev['delivered_at']}  (age {age})"))
    else:
        facts.append(("event time", f"{ev['event_time']}  (age {age})"))
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


def _kv(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(mapping.items()))


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def _read_runs(ledger: Any, keys: Sequence[str], progress: Progress, workers: int = 8) -> list[Any]:
    """Read run records concurrently, reporting ``reading i/n runs``."""
    runs = []
    total = len(keys)
    done = 0
    lock = threading.Lock()
    progress.update(f"reading 0/{total} runs", force=True)
    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, total or 1))) as pool:
        for run in pool.map(ledger.get, keys):
            with lock:
                done += 1
                progress.update(f"reading {done}/{total} runs", force=done == total)
            if run is not None:
                runs.append(run)
    progress.done()
    return runs


def run_row(run: Any, now: dt.datetime) -> dict[str, Any]:
    """One run as the ``runs`` command shows it."""
    job = run.job or {}
    age, seconds = _age(run.created_at, now)
    return {
        "run_key": run.run_key,
        "pipeline": run.pipeline,
        "trigger": run.trigger,
        "state": run.state,
        "age": age,
        "age_seconds": round(seconds, 3) if seconds is not None else None,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "job_id": job.get("id"),
        "job_url": job.get("url"),
        "error": (run.error or {}).get("message") if run.error else None,
    }


def cmd_runs(args: argparse.Namespace, out: Output) -> int:
    config = _load(args)
    runtime = _runtime(config)
    ledger = runtime.ledger
    keys = ledger.active_keys() if args.active else ledger.all_keys()
    show = args.progress or (_isatty(out.stderr) and len(keys) > 20)
    runs = _read_runs(ledger, keys, Progress(out.stderr, show))
    if args.pipeline:
        runs = [r for r in runs if r.pipeline == args.pipeline]
    if args.state:
        runs = [r for r in runs if r.state == args.state]
    runs.sort(key=lambda r: (r.created_at or "", r.run_key), reverse=True)
    total = len(runs)
    if args.limit:
        runs = runs[: args.limit]
    now = dt.datetime.now(dt.UTC)
    rows = [run_row(r, now) for r in runs]
    if out.json:
        out.emit({"runs": rows, "total": total, "shown": len(rows), "active_only": bool(args.active)})
        return EXIT_OK
    if not rows:
        out.line("no runs" + (" (active index)" if args.active else ""))
        return EXIT_OK
    out.table(
        ["RUN KEY", "PIPELINE", "TRIGGER", "STATE", "AGE", "JOB", "LINK"],
        [
            [
                r["run_key"],
                r["pipeline"],
                r["trigger"],
                r["state"],
                r["age"],
                r["job_id"] or "-",
                r["job_url"] or "-",
            ]
            for r in rows
        ],
        [None, None, None, "state", None, None, "dim"],
    )
    more = f" of {total} (--limit 0 shows all)" if total > len(rows) else ""
    out.line(out.paint(f"{len(rows)} run{'' if len(rows) == 1 else 's'}{more}, newest first", "dim"))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# launch / cancel
# ---------------------------------------------------------------------------------------------
def _caller() -> str:
    try:
        import getpass

        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _current_state(status: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(state, backend state, reason) from :func:`handlers.entry.manual.run_status`: the ledger's state
    once terminal, else the backend's live state."""
    run = status["run"]
    live = status.get("live") or {}
    if run["state"] in TERMINAL_STATES or not live.get("state"):
        reason = (run.get("error") or {}).get("message") if run.get("error") else None
        return run["state"], run.get("raw_state"), reason
    return live["state"], live.get("backend_state"), live.get("reason")


def wait_for(
    runtime: Any,
    key: str,
    *,
    interval: float,
    timeout: float | None,
    progress: Progress,
    sleep: Callable[[float], Any] = time.sleep,
) -> tuple[str, str | None, str | None, bool]:
    """Poll :func:`handlers.entry.manual.run_status` until the run is terminal (or ``timeout``).

    Returns ``(state, backend_state, reason, timed_out)``.
    """
    from handlers.entry.manual import run_status

    started = time.monotonic()
    last = ""
    while True:
        state, raw, reason = _current_state(run_status(runtime, key))
        elapsed = time.monotonic() - started
        text = f"{state}" + (f" ({raw})" if raw else "") + f"  {int(elapsed // 60)}:{int(elapsed % 60):02d}"
        progress.update(f"waiting for {key}: {text}", force=text.split()[0] != last)
        last = state
        if state in TERMINAL_STATES:
            progress.done()
            return state, raw, reason, False
        if timeout is not None and elapsed >= timeout:
            progress.done()
            return state, raw, reason, True
        sleep(interval)


def cmd_launch(args: argparse.Namespace, out: Output) -> int:
    from handlers.entry.manual import start_run

    config = _load(args)
    runtime = _runtime(config)
    key = args.idempotency_key or str(uuid.uuid4())
    generated = args.idempotency_key is None
    inputs = dict(args.param or [])
    if generated and not out.json:
        out.note(f"idempotency key {key} (retry with --idempotency-key {key} to reuse this run)")
    try:
        outcome, run = start_run(runtime, args.pipeline, inputs, key, caller=_caller())
    except RetryableError as exc:
        raise RetryableError(
            f"{exc.message}; retry safely with --idempotency-key {key}", run_key=exc.run_key
        ) from exc
    job = (run.job if run else None) or {}
    doc: dict[str, Any] = {
        "idempotency_key": key,
        "run_key": outcome.run_key,
        "pipeline": outcome.pipeline,
        "result": outcome.result,
        "state": run.state if run else None,
        "job_id": outcome.job_id or job.get("id"),
        "job_url": job.get("url"),
        "reason": outcome.reason,
    }
    code = EXIT_FAILURE if outcome.result == "failed" else EXIT_OK
    if not out.json:
        out.pairs(
            [
                ("run key", doc["run_key"]),
                ("result", doc["result"]),
                ("state", doc["state"] or "-"),
                ("job", doc["job_id"] or "-"),
                ("link", doc["job_url"] or "-"),
                ("idempotency key", key),
            ]
            + ([("reason", doc["reason"])] if doc["reason"] else [])
        )
    if args.wait and outcome.run_key and code == EXIT_OK:
        state, raw, reason, timed_out = wait_for(
            runtime,
            outcome.run_key,
            interval=args.interval,
            timeout=args.timeout,
            progress=Progress(out.stderr, True),
        )
        doc.update(final_state=state, backend_state=raw, final_reason=reason, wait_timed_out=timed_out)
        code = EXIT_OK if state == "SUCCEEDED" and not timed_out else EXIT_FAILURE
        if not out.json:
            if timed_out:
                out.line(out.paint(f"still {state} after {args.timeout:.0f}s: stopped waiting", "yellow"))
            else:
                out.line(
                    f"finished         {out.state(state)}"
                    + (f" ({clean(raw)})" if raw else "")
                    + (f": {clean(reason)}" if reason else "")
                )
    if out.json:
        out.emit(doc)
    return code


def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    from handlers.entry.manual import cancel_run

    runtime = _runtime(_load(args))
    run = cancel_run(runtime, args.run_key)
    job = run.job or {}
    if out.json:
        out.emit(
            {"run_key": run.run_key, "state": run.state, "cancel_requested": True, "job_id": job.get("id")}
        )
    else:
        out.line(
            f"cancel requested for {clean(run.run_key)} (job {clean(job.get('id') or '-')}, now {out.state(run.state)}); "
            "the tracker records CANCELLED when the job stops"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# graph
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # storage | pubsub | pipeline | join
    name: str
    lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "label": list(self.lines)}


@dataclass(frozen=True, order=True)
class Edge:
    source: str
    target: str
    label: str = ""
    kind: str = "trigger"  # trigger | completion | fan-in | join

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target, "label": self.label, "kind": self.kind}


_MERMAID_ESCAPES = {
    "#": "#35;",
    '"': "#quot;",
    "<": "#lt;",
    ">": "#gt;",
    "&": "#amp;",
    "`": "#96;",
    "|": "#124;",
    "\\": "#92;",
    "%": "#37;",
}


def mermaid_text(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label: characters Mermaid parses are entity codes,
    control characters become spaces."""
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)
    return "".join(_MERMAID_ESCAPES.get(ch, ch) for ch in text)


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _storage_lines(trigger: Trigger) -> tuple[str, ...]:
    m = trigger.storage
    assert m is not None
    if m.glob:
        pattern = m.glob
    elif m.prefix or m.suffix:
        pattern = f"{m.prefix or ''}*{m.suffix or ''}"
    else:
        pattern = "**"
    lines = [trigger.name, f"gs://{m.bucket}/{pattern}"]
    if m.glob and (m.prefix or m.suffix):
        lines.append(f"name {m.prefix or ''}*{m.suffix or ''}")
    if m.regex is not None:
        lines.append(f"regex {m.regex.pattern}")
    if m.content_types:
        lines.append("type " + ", ".join(m.content_types))
    if m.min_size is not None and m.max_size is not None:
        lines.append(f"size {_size(m.min_size)} to {_size(m.max_size)}")
    elif m.min_size is not None:
        lines.append(f"size >= {_size(m.min_size)}")
    elif m.max_size is not None:
        lines.append(f"size <= {_size(m.max_size)}")
    return tuple(lines)


def _condition_text(where: str, cond: Any) -> str:
    label = f"{where}.{cond.path}"
    if cond.exists is not None:
        return f"{label} {'exists' if cond.exists else 'absent'}"
    if cond.equals is not None:
        return f"{label} = {cond.equals}"
    if cond.one_of is not None:
        return f"{label} in {', '.join(cond.one_of)}"
    if cond.regex is not None:
        return f"{label} ~ {cond.regex.pattern}"
    if cond.prefix is not None or cond.suffix is not None:
        return f"{label} = {cond.prefix or ''}*{cond.suffix or ''}"
    return label


def _pubsub_lines(trigger: Trigger) -> tuple[str, ...]:
    m = trigger.pubsub
    assert m is not None
    lines = [trigger.name, f"topic {m.topic}"]
    lines += [_condition_text("attributes", c) for c in m.attributes]
    lines += [_condition_text("data", c) for c in m.data]
    return tuple(lines)


def graph_model(config: Config) -> tuple[list[Node], list[Edge]]:
    """Nodes (storage/pubsub triggers, pipelines, fan-in joins) and edges, sorted and stable."""
    used: set[str] = set()

    def node_id(prefix: str, name: str) -> str:
        base = prefix + re.sub(r"[^A-Za-z0-9_]", "_", name)
        candidate, n = base, 2
        while candidate in used:
            candidate, n = f"{base}_{n}", n + 1
        used.add(candidate)
        return candidate

    nodes: list[Node] = []
    edges: list[Edge] = []
    pipeline_ids: dict[str, str] = {}
    for name in sorted(config.pipelines):
        p: Pipeline = config.pipelines[name]
        detail = p.backend + (" · streaming" if p.mode == "streaming" else "")
        pipeline_ids[name] = node_id("p_", name)
        nodes.append(Node(pipeline_ids[name], "pipeline", name, (name, detail)))
    for name in sorted(config.triggers):
        trig = config.triggers[name]
        target = pipeline_ids.get(trig.pipeline)
        if target is None:
            continue
        if trig.storage is not None:
            tid = node_id("t_", name)
            nodes.append(Node(tid, "storage", name, _storage_lines(trig)))
            edges.append(Edge(tid, target))
        elif trig.pubsub is not None:
            tid = node_id("t_", name)
            nodes.append(Node(tid, "pubsub", name, _pubsub_lines(trig)))
            edges.append(Edge(tid, target))
        elif trig.completion is not None:
            spec = trig.completion
            if spec.is_fan_in:
                jid = node_id("j_", name)
                key = spec.join_key.source if spec.join_key is not None else ""
                nodes.append(Node(jid, "join", name, (name, f"join on {key}")))
                for up in sorted(spec.upstream):
                    if up in pipeline_ids:
                        edges.append(Edge(pipeline_ids[up], jid, ", ".join(spec.states), "fan-in"))
                edges.append(Edge(jid, target, "", "join"))
            else:
                for up in spec.upstream:
                    if up in pipeline_ids:
                        edges.append(
                            Edge(pipeline_ids[up], target, f"{name}: {', '.join(spec.states)}", "completion")
                        )
    order = {"storage": 0, "pubsub": 1, "pipeline": 2, "join": 3}
    nodes.sort(key=lambda n: (order[n.kind], n.name))
    edges.sort()
    return nodes, edges


_SHAPES = {
    "storage": ('[("', '")]'),
    "pubsub": ('>"', '"]'),
    "pipeline": ('["', '"]'),
    "join": ('{{"', '"}}'),
}


def graph_mermaid(config: Config) -> str:
    """The config as a Mermaid ``flowchart LR``: storage triggers (cylinders) and pubsub triggers
    (flags) point at pipelines (boxes, with their backend); completion triggers are edges labelled
    with the trigger and the states; fan-ins go through a join node (hexagon) naming the join key.
    Deterministic (sorted) so it can be committed and diffed."""
    nodes, edges = graph_model(config)
    lines = ["flowchart LR"]
    for n in nodes:
        left, right = _SHAPES[n.kind]
        label = "<br/>".join(mermaid_text(line) for line in n.lines)
        lines.append(f"    {n.id}{left}{label}{right}")
    for e in edges:
        arrow = f' -->|"{mermaid_text(e.label)}"| ' if e.label else " --> "
        lines.append(f"    {e.source}{arrow}{e.target}")
    return "\n".join(lines) + "\n"


def cmd_graph(args: argparse.Namespace, out: Output) -> int:
    config = _load(args)
    if out.json:
        nodes, edges = graph_model(config)
        out.emit({"nodes": [n.to_json() for n in nodes], "edges": [e.to_json() for e in edges]})
    else:
        out.stdout.write(graph_mermaid(config))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="routing config (default: $PIPELINES_CONFIG, else pipelines.yaml)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the services' structured logs on stderr",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="python -m handlers",
        description="Inspect, explain and operate the event-driven pipeline launcher.",
        epilog="exit codes: 0 ok, 1 failure or not found, 2 usage error or invalid config. See docs/cli.md.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", parents=[common], help="check a routing config, listing every problem")
    p.add_argument("file", nargs="?", metavar="CONFIG", help="the config to check (default: --config)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "explain",
        parents=[common],
        help="which triggers an event matches and what they would launch (no side effects)",
        description="Explain an event against every trigger of its kind. Reads the config only: "
        "no ledger, no backend, no network.",
    )
    src = p.add_argument_group("event (one of)")
    src.add_argument("--bucket", help="storage event: the bucket")
    src.add_argument("--topic", help="pubsub event: the topic (name or projects/P/topics/T)")
    src.add_argument("--completion", metavar="FILE|JSON", help="a completion CloudEvent (JSON, a file, or -)")
    obj = p.add_argument_group("storage event")
    obj.add_argument("--name", help="the object name")
    obj.add_argument("--size", type=int, help="bytes (default 0)")
    obj.add_argument("--content-type", help="default: guessed from the name")
    obj.add_argument("--generation", type=int, help="default: the event time in microseconds, like GCS")
    obj.add_argument("--metadata", type=key_value, action="append", metavar="K=V", help="custom metadata")
    msg = p.add_argument_group("pubsub event")
    msg.add_argument("--data", metavar="TEXT|@FILE", help="message data (@file, @- for stdin)")
    msg.add_argument("--attribute", type=key_value, action="append", metavar="K=V", help="message attribute")
    msg.add_argument("--message-id", help="default: derived from topic, data and attributes")
    p.add_argument("--time", type=_time_arg, help="event time, RFC 3339 (default: now)")
    p.add_argument("--event-id", help="the CloudEvent id (default: as the function derives it)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("runs", parents=[common], help="list runs from the ledger, newest first")
    p.add_argument("--pipeline", help="only this pipeline")
    p.add_argument(
        "--state",
        type=str.upper,
        choices=[str(s) for s in RunState],
        metavar="STATE",
        help="only this state (" + ", ".join(str(s) for s in RunState) + ")",
    )
    p.add_argument("--active", action="store_true", help="only runs in the active index (cheap)")
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_RUNS_LIMIT,
        help=f"at most N (default {DEFAULT_RUNS_LIMIT}; 0: all)",
    )
    p.add_argument("--progress", action="store_true", help="report reading progress on stderr")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("launch", parents=[common], help="start a run by hand (idempotent)")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("--param", type=key_value, action="append", metavar="K=V", help="a declared input")
    p.add_argument("--idempotency-key", metavar="K", help="same key, same run (default: a new uuid, printed)")
    p.add_argument(
        "--wait", action="store_true", help="follow the run until it ends; exit 0 only on SUCCEEDED"
    )
    p.add_argument(
        "--interval", type=float, default=5.0, help="seconds between polls with --wait (default 5)"
    )
    p.add_argument("--timeout", type=float, help="stop waiting after this many seconds (exit 1)")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("cancel", parents=[common], help="ask the backend to stop a run's job")
    p.add_argument("run_key", metavar="RUN_KEY")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "graph", parents=[common], help="the config as a Mermaid flowchart (--json: nodes/edges)"
    )
    p.set_defaults(func=cmd_graph)
    return parser


def _report_error(out: Output, exc: BaseException, code: int) -> int:
    doc: dict[str, Any] = {"type": type(exc).__name__, "message": getattr(exc, "message", None) or str(exc)}
    if isinstance(exc, ConfigError):
        doc.update(source=exc.source, problems=exc.problems)
    problems = getattr(exc, "problems", None)
    if isinstance(problems, dict):
        doc["problems"] = [f"{k}: {v}" for k, v in problems.items()]
    if isinstance(exc, PipelineError) and exc.run_key:
        doc["run_key"] = exc.run_key
    if isinstance(exc, PipelineError):
        doc["retryable"] = exc.retryable
    if out.json:
        out.emit({"error": doc, "exit_code": code})
        return code
    if isinstance(exc, ConfigError):
        n = len(exc.problems)
        out.line(f"{clean(exc.source)}: {out.paint('INVALID', 'red')}: {n} problem{'' if n == 1 else 's'}")
        for problem in exc.problems:
            out.line(f"  {clean(problem)}")
        return code
    out.note(f"error: {clean(doc['message'])}")
    for problem in doc.get("problems") or []:
        out.note(f"  {clean(problem)}")
    return code


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run one command; returns the exit code (never raises for expected failures)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    colour = _isatty(stdout) and not os.environ.get("NO_COLOR")
    out = Output(as_json=bool(getattr(args, "json", False)), stdout=stdout, stderr=stderr, colour=colour)
    previous = getattr(logs, "_stream", None)
    logs.set_stream(stderr if getattr(args, "verbose", False) else cast(TextIO, _Discard()))
    try:
        return int(args.func(args, out))
    except ConfigError as exc:
        return _report_error(out, exc, EXIT_USAGE)
    except UsageError as exc:
        return _report_error(out, exc, EXIT_USAGE)
    except ParameterError as exc:  # includes manual.InvalidRequest: bad --param values
        return _report_error(out, exc, EXIT_USAGE)
    except (NotFound, PipelineError) as exc:
        return _report_error(out, exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        out.note("interrupted")
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; stop quietly
        _silence(stdout)
        return EXIT_FAILURE
    except Exception as exc:
        # A Google API or HTTP error the services let through (a missing ledger bucket lists as
        # 404): report it as a failure; anything else is a bug and keeps its traceback.
        if not exc.__class__.__module__.startswith(("google.", "requests", "urllib3")):
            raise
        return _report_error(out, exc, EXIT_FAILURE)
    finally:
        logs.set_stream(previous)
        try:
            stdout.flush()
        except BrokenPipeError:
            _silence(stdout)


def _silence(stream: TextIO) -> None:
    """Point a closed pipe's file descriptor at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        pass


class _Discard:
    """A write-only sink for log lines nobody asked to see."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


__all__ = ["explain_completion", "explain_message", "explain_object", "graph_mermaid", "graph_model", "main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
