"""The local stack: the whole product on loopback, with no cloud account.

    python -m local.stack demo [--timeout 90] [--keep-going] [--chain-backend auto]
    python -m local.stack up   [--config FILE] [--templates FILE] [--apps FILE] [--items FILE]

``demo`` starts every service, drops ``examples/demo/sample.txt`` in the landing bucket and prints
a live timeline of what really happens: the storage notification, the run claimed in the ledger,
the Dataflow job (the emulator's ``wordcount`` template really counts the words), its completion
event, the chained pipeline launched from that event, and its completion. It exits 0 once the
last pipeline of the chain published SUCCEEDED, non-zero with a one-line reason otherwise, and
always stops every process it started.

``up`` starts the same stack for a config of your own (default: the demo's), prints the
environment variables and commands to use it, streams the timeline of whatever happens, and stops
cleanly on Ctrl-C.

What runs (all on 127.0.0.1, free ports):

- Google's Pub/Sub emulator (Java) and fake-gcs-server, which publishes object notifications to a
  topic (:mod:`local.services`);
- the backend emulators in this process: Dataflow always, Data Fusion (CDAP) and Fabric when their
  modules are available (:mod:`local.emulators.dataflow`, ``cdap_emulator``,
  ``fabric_emulator``); the Dataflow emulator pushes ``statusChanged`` events to ``on_job_status``;
- one functions-framework process per entry point of ``main.py`` (``on_message``,
  ``on_job_status``, ``check_runs``, ``on_object_finalized``; ``api`` when main.py has it), with
  ``PIPELINES_CONFIG`` pointing at a generated copy of the config and the emulator endpoints set;
- push subscriptions as Eventarc would deliver: storage notifications, trigger topics and the
  completion topic into ``on_message``, a sweep topic into ``check_runs`` (published every
  ``--sweep-every`` seconds, standing in for Cloud Scheduler's every minute).

The timeline (:class:`Timeline`, fed by :class:`Observer`) only shows what the stack observed:
messages pulled from the notification and completion topics, run records in the ledger bucket, and
the functions' structured JSON logs. See ``docs/local-stack.md``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import contextlib
import datetime as dt
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from handlers.backends import registry
from handlers.core.errors import ConfigError
from handlers.model.config import Config, Trigger, build_config
from local.services import (
    LOOPBACK,
    FakeGcs,
    FunctionServer,
    ManagedService,
    PubSubEmulator,
    ServiceError,
    ensure_bucket,
    ensure_pull_subscription,
    ensure_push_subscription,
    ensure_topic,
    find_fake_gcs_binary,
    find_pubsub_emulator,
    live_processes_in_group,
    publish,
    pull_all,
    storage_client,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "examples" / "demo"
DEMO_CONFIG = DEMO_DIR / "pipelines.yaml"
DEMO_TEMPLATES = DEMO_DIR / "emulator-templates.yaml"
DEMO_VARIANTS = DEMO_DIR / "chain-variants.yaml"
DEMO_APPS = DEMO_DIR / "cdap-apps.yaml"
DEMO_ITEMS = DEMO_DIR / "fabric-items.yaml"
DEMO_REGISTRATIONS = {"dataflow": (DEMO_TEMPLATES,), "datafusion": (DEMO_APPS,), "fabric": (DEMO_ITEMS,)}
# Fake Entra credentials the stack registers in the Fabric emulator and hands to the functions.
FAKE_TENANT = "7a7a7a7a-0000-4000-8000-00000000000a"
FAKE_SECRET = "local-stack-fake-client-secret"
DEMO_SAMPLE = DEMO_DIR / "sample.txt"
DEMO_OBJECT = "incoming/sample.txt"

NOTIFICATION_TOPIC = "gcs-notifications"
SWEEP_TOPIC = "pipeline-sweep"
WATCH_COMPLETIONS = "stack-watch-completions"
WATCH_NOTIFICATIONS = "stack-watch-notifications"
CHAIN_END_LOG = "no completion trigger waits for this pipeline"
EVENT_FUNCTIONS = ("on_message", "on_job_status", "check_runs", "on_object_finalized")

# Backends whose emulator may be missing, in the order the demo prefers them for its chained step.
OPTIONAL_EMULATORS = {"datafusion": "local.emulators.cdap", "fabric": "local.emulators.fabric"}
CHAIN_PREFERENCE = ("datafusion", "fabric", "dataflow")
BACKEND_TITLES = {
    "dataflow": "Dataflow",
    "dataflow-flex": "Dataflow Flex",
    "datafusion": "Data Fusion",
    "fabric": "Fabric",
}
JOB_NOUNS = {
    "dataflow": "Dataflow job",
    "dataflow-flex": "Dataflow flex job",
    "datafusion": "Data Fusion run",
    "fabric": "Fabric job instance",
}
_LITERAL_BUCKET = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/")


class StackError(Exception):
    """The stack or the demo could not do its job; the message is the one-line reason."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP arrived: unwind to the ``finally`` that stops everything."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ================================================================================= the timeline


@dataclass(frozen=True, order=True)
class TimelineEvent:
    """One line of the timeline: ``at`` is the time it happened (epoch seconds), not when it was seen."""

    at: float
    label: str
    detail: str = ""
    source: str = ""


class Timeline:
    """Prints events in time order as ``  4.71s  completion published   wordcount SUCCEEDED``.

    Sources report events with the time they happened, which may be a moment before they are seen
    (a log line read 0.2 s late); events wait ``window`` seconds so that lines print in order.
    ``key`` deduplicates (a message delivered twice prints once). Thread-safe.
    """

    def __init__(
        self, out: TextIO | None = None, *, origin: float | None = None, window: float = 0.4
    ) -> None:
        self.out = out
        self.origin = time.time() if origin is None else origin
        self.window = window
        self._pending: list[TimelineEvent] = []
        self._keys: set[str] = set()
        self._printed: list[TimelineEvent] = []
        self._lock = threading.Lock()

    def add(
        self, at: float, label: str, detail: str = "", *, source: str = "", key: str | None = None
    ) -> bool:
        """Queue an event; returns False when ``key`` was already seen."""
        with self._lock:
            if key is not None:
                if key in self._keys:
                    return False
                self._keys.add(key)
            self._pending.append(TimelineEvent(at, label, detail, source))
            return True

    def format(self, event: TimelineEvent) -> str:
        elapsed = max(0.0, event.at - self.origin)
        text = f"{elapsed:7.2f}s  {event.label:<22} {event.detail}".rstrip()
        return f"{text}  ({event.source})" if event.source else text

    def flush(self, *, everything: bool = False) -> list[TimelineEvent]:
        """Print the events older than the reorder window (all of them with ``everything``)."""
        with self._lock:
            horizon = float("inf") if everything else time.time() - self.window
            due = sorted(e for e in self._pending if e.at <= horizon)
            self._pending = [e for e in self._pending if e.at > horizon]
            self._printed.extend(due)
            if self.out is not None:
                for event in due:
                    print(self.format(event), file=self.out, flush=True)
            return due

    @property
    def printed(self) -> list[TimelineEvent]:
        with self._lock:
            return list(self._printed)


def epoch(value: Any) -> float | None:
    """Epoch seconds from an RFC 3339 text or a datetime; None when absent or unreadable."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ================================================================================= observing


@dataclass
class RunView:
    """What the observer knows about one run record of the ledger."""

    run_key: str
    pipeline: str
    trigger: str
    backend: str
    state: str
    generation: int
    record: dict[str, Any]


@dataclass
class Completion:
    """A completion event pulled from the completion topic."""

    at: float
    pipeline: str
    state: str
    run_key: str
    data: dict[str, Any]


class FunctionLogs:
    """Follows one function's log file and turns its structured JSON lines into timeline events."""

    def __init__(self, name: str, server: FunctionServer) -> None:
        self.name = name
        self.server = server
        self._offset = 0
        self._rest = b""
        self.errors: list[str] = []

    def lines(self) -> Iterator[dict[str, Any]]:
        path = self.server.log_path
        if path is None or not path.exists():
            return
        with path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        data = self._rest + chunk
        *complete, self._rest = data.split(b"\n")
        for raw in complete:
            text = raw.decode(errors="replace").strip()
            if not text.startswith("{"):
                if text.startswith("Traceback") or "Error" in text:
                    self.errors.append(text)
                continue
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if isinstance(entry, dict) and "message" in entry:
                yield entry


class Observer:
    """Polls the stack's real signals and feeds the timeline; the demo reads its findings.

    Signals: pull subscriptions on the notification and completion topics (created before anything
    is published), the run records under the ledger prefix, and the functions' JSON logs.
    """

    def __init__(
        self,
        timeline: Timeline,
        *,
        project: str,
        pubsub_host: str,
        gcs_url: str,
        config: Config,
        functions: Mapping[str, FunctionServer],
        watch_completions: str | None,
        watch_notifications: str | None,
        interval: float = 0.2,
    ) -> None:
        self.timeline = timeline
        self.project = project
        self.pubsub_host = pubsub_host
        self.config = config
        self.interval = interval
        self.watch_completions = watch_completions
        self.watch_notifications = watch_notifications
        self.logs = [FunctionLogs(name, server) for name, server in functions.items()]
        self.storage_buckets = {t.storage.bucket for t in config.triggers_of("storage") if t.storage}
        self._client = storage_client(gcs_url, project=project)
        self._lock = threading.Lock()
        self._runs: dict[str, RunView] = {}
        self._completions: list[Completion] = []
        self._seen_logs: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures: list[str] = []

    @classmethod
    def for_stack(cls, stack: Stack, timeline: Timeline) -> Observer:
        """An observer of every signal ``stack`` offers."""
        assert stack.pubsub is not None and stack.gcs is not None
        return cls(
            timeline,
            project=stack.plan.project,
            pubsub_host=stack.pubsub.host,
            gcs_url=stack.gcs.url,
            config=stack.plan.config,
            functions=stack.functions,
            watch_completions=WATCH_COMPLETIONS if stack.plan.completion_topic else None,
            watch_notifications=WATCH_NOTIFICATIONS,
        )

    # -- what the demo asks ------------------------------------------------------------------------
    def completions(self) -> list[Completion]:
        with self._lock:
            return list(self._completions)

    def runs(self) -> list[RunView]:
        with self._lock:
            return list(self._runs.values())

    def seen_log(self, message: str) -> bool:
        with self._lock:
            return message in self._seen_logs

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll from a thread until :meth:`stop`; a stopped observer may start again where it was."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="stack-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self.timeline.flush()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """One round over every source; a failing source is reported once, not fatal."""
        for name, step in (
            ("notifications", self._poll_notifications),
            ("ledger", self._poll_ledger),
            ("logs", self._poll_logs),
            ("completions", self._poll_completions),
        ):
            try:
                step()
            except Exception as exc:
                reason = f"{name}: {exc.__class__.__name__}: {exc}"
                if reason not in self.failures:
                    self.failures.append(reason)
                    self.timeline.add(time.time(), "observer problem", reason)

    # -- sources -----------------------------------------------------------------------------------
    def _pull(self, subscription: str) -> list[dict[str, Any]]:
        return pull_all(self.project, subscription, timeout=0, min_messages=0, emulator_host=self.pubsub_host)

    def _poll_notifications(self) -> None:
        if not self.watch_notifications:
            return
        for msg in self._pull(self.watch_notifications):
            attrs = msg["attributes"]
            bucket, name = attrs.get("bucketId", "?"), attrs.get("objectId", "?")
            if bucket not in self.storage_buckets:
                continue
            self.timeline.add(
                epoch(msg["publish_time"]) or time.time(),
                "storage notification",
                f"{attrs.get('eventType', '?')} gs://{bucket}/{name}",
                key=f"notification:{msg['message_id']}",
            )

    def _poll_completions(self) -> None:
        if not self.watch_completions:
            return
        for msg in self._pull(self.watch_completions):
            at = epoch(msg["publish_time"]) or time.time()
            try:
                event = json.loads(msg["data"])
            except ValueError:
                continue
            data = event.get("data") if isinstance(event, dict) else None
            if not isinstance(data, dict):
                continue
            if event.get("type") == "io.eventpipelines.join.abandoned.v1":
                self.timeline.add(
                    at, "join abandoned", f"{data.get('pipeline')} (trigger {data.get('trigger')})"
                )
                continue
            comp = Completion(
                at, str(data.get("pipeline")), str(data.get("state")), str(data.get("run_key")), data
            )
            if not self.timeline.add(
                at,
                "completion published",
                self._describe_completion(comp),
                key=f"completion:{event.get('id')}",
            ):
                continue  # a republish with the same id
            with self._lock:
                self._completions.append(comp)

    @staticmethod
    def _describe_completion(comp: Completion) -> str:
        text = f"{comp.pipeline} {comp.state}"
        if comp.data.get("reason"):
            text += f": {comp.data['reason']}"
        return text

    def _poll_ledger(self) -> None:
        settings = self.config.settings
        prefix = f"{settings.ledger_prefix}runs/"
        bucket = self._client.bucket(settings.ledger_bucket)
        for blob in self._client.list_blobs(bucket, prefix=prefix):
            key = blob.name[len(prefix) :].removesuffix(".json")
            with self._lock:
                known = self._runs.get(key)
            if known is not None and known.generation == blob.generation:
                continue
            try:
                record = json.loads(blob.download_as_bytes())
            except Exception:
                continue  # replaced between list and read: the next round sees the new one
            self._on_record(key, int(blob.generation or 0), record, known)

    def _on_record(self, key: str, generation: int, record: dict[str, Any], known: RunView | None) -> None:
        view = RunView(
            key,
            str(record.get("pipeline")),
            str(record.get("trigger")),
            str(record.get("backend")),
            str(record.get("state")),
            generation,
            record,
        )
        with self._lock:
            self._runs[key] = view
        if known is None:
            self._announce_claim(view)
        if view.state == "LAUNCH_FAILED" and (known is None or known.state != "LAUNCH_FAILED"):
            reason = (record.get("error") or {}).get("message", "")
            when = epoch(record.get("updated_at")) or time.time()
            self.timeline.add(when, "launch failed", f"{view.pipeline}: {reason}", key=f"launch-failed:{key}")

    def _announce_claim(self, view: RunView) -> None:
        record = view.record
        event = record.get("event") or {}
        at = epoch(record.get("created_at")) or time.time()
        kind = event.get("kind")
        if kind == "completion":
            params = ", ".join(f"{k}={v}" for k, v in list((record.get("parameters") or {}).items())[:2])
            detail = f"{view.pipeline}  after {event.get('upstream_pipeline')} {event.get('upstream_state')}"
            detail += f", with {params}" if params else ""
            self.timeline.add(at, "chained launch", detail, key=f"claim:{view.run_key}")
            return
        if kind == "fanin":
            ups = ", ".join(sorted(event.get("upstream_run_keys") or {}))
            detail = f"{view.pipeline}  after {ups} (join key {event.get('join_key')})"
            self.timeline.add(at, "fan-in launch", detail, key=f"claim:{view.run_key}")
            return
        if kind == "storage":
            what = f"gs://{event.get('bucket')}/{event.get('name')}"
        elif kind == "pubsub":
            what = f"message {event.get('message_id')} on {event.get('topic')}"
        else:
            what = str(kind or "event")
        self.timeline.add(
            at,
            "run claimed",
            f"{view.pipeline}  run {view.run_key} for {what}",
            key=f"claim:{view.run_key}",
        )

    def _pipeline_of(self, entry: Mapping[str, Any]) -> str:
        if entry.get("pipeline"):
            return str(entry["pipeline"])
        key = entry.get("run_key")
        with self._lock:
            view = self._runs.get(str(key)) if key else None
        return view.pipeline if view else "?"

    def _poll_logs(self) -> None:
        for follower in self.logs:
            for entry in follower.lines():
                with self._lock:
                    self._seen_logs.add(str(entry["message"]))
                self._on_log(follower.name, entry)

    def _on_log(self, function: str, entry: Mapping[str, Any]) -> None:
        message = str(entry["message"])
        at = epoch(entry.get("time")) or time.time()
        severity = str(entry.get("severity", "INFO"))
        pipeline = self._pipeline_of(entry)

        def add(label: str, detail: str) -> None:
            self.timeline.add(at, label, detail, source=function)

        if message in ("job launched", "job adopted (already launched)"):
            noun = JOB_NOUNS.get(str(entry.get("backend")), f"{entry.get('backend')} job")
            verb = "" if message == "job launched" else " (adopted: it was already running)"
            add("job launched", f"{pipeline}  {noun} {entry.get('job_id')}{verb}")
        elif message == "duplicate delivery: run already claimed":
            add("duplicate ignored", f"{pipeline}  the run is already {entry.get('state')}")
        elif message == "job status changed":
            add("status pushed", f"{pipeline}  {entry.get('backend_state')}")
        elif message.startswith("run is "):
            add(f"job {entry.get('state')}", f"{pipeline}  ({entry.get('backend_state')})")
        elif message.startswith("run finished: "):
            reason = f": {entry['reason']}" if entry.get("reason") else ""
            add("run finished", f"{pipeline} {entry.get('state')}{reason}")
        elif message == "fan-in: upstream arrived":
            waiting = ", ".join(entry.get("waiting_for") or []) or "nothing"
            add(
                "fan-in arrival",
                f"{entry.get('upstream_pipeline')} for {entry.get('trigger')}, waiting for {waiting}",
            )
        elif message == CHAIN_END_LOG:
            add("chain end", f"nothing waits for {entry.get('upstream_pipeline')}")
        elif message == "no trigger matches this object":
            event = entry.get("event") or {}
            if event.get("bucket") in self.storage_buckets:
                add(
                    "no trigger matched", f"gs://{event.get('bucket')}/{event.get('name')}{_near_miss(entry)}"
                )
        elif message == "no trigger matches this message":
            event = entry.get("event") or {}
            add(
                "no trigger matched",
                f"message {event.get('message_id')} on {event.get('topic')}{_near_miss(entry)}",
            )
        elif message == "completion not published: no completion_topic configured":
            add("completion", f"{pipeline}: not published (no completion_topic in the config)")
        elif message == "sweep done":
            if entry.get("errors"):
                add("sweep problem", f"{entry.get('errors')} run(s) could not be checked")
        elif severity in ("WARNING", "ERROR", "CRITICAL"):
            cause = entry.get("error_message") or entry.get("cause") or ""
            add(severity.lower(), f"{message}{': ' + str(cause) if cause else ''}")


def _near_miss(entry: Mapping[str, Any]) -> str:
    """``" (landing-text: name does not match glob ...)"``: the first reason of a near miss."""
    misses = entry.get("near_misses") or {}
    for trigger, reasons in misses.items():
        if reasons:
            return f" ({trigger}: {reasons[0]})"
    return ""


# ================================================================================= the plan


def literal_buckets(config: Config) -> set[str]:
    """Buckets named literally in parameter or output templates (``gs://demo-output/...``)."""
    found: set[str] = set()
    for pipeline in config.pipelines.values():
        for template in (*pipeline.parameters.values(), *pipeline.outputs.values()):
            m = _LITERAL_BUCKET.match(template.source)
            if m and "{" not in m.group(1):
                found.add(m.group(1))
    for trigger in config.triggers.values():
        for template in trigger.parameters.values():
            m = _LITERAL_BUCKET.match(template.source)
            if m and "{" not in m.group(1):
                found.add(m.group(1))
    return found


def emulator_available(backend: str) -> bool:
    """Whether this checkout has the emulator of ``backend`` (Dataflow's always ships)."""
    module = OPTIONAL_EMULATORS.get(backend)
    if module is None:
        return True
    try:
        return callable(getattr(importlib.import_module(module), "serve", None))
    except Exception:
        return False


@dataclass
class Plan:
    """The config the stack serves (a validated generated copy) and what it has to create."""

    config: Config
    doc: dict[str, Any]
    source: Path
    note: str = ""
    chain_backend: str | None = None

    @property
    def project(self) -> str:
        return self.config.settings.project

    @property
    def storage_buckets(self) -> list[str]:
        return sorted({t.storage.bucket for t in self.config.triggers_of("storage") if t.storage})

    @property
    def buckets(self) -> list[str]:
        return sorted(
            {*self.storage_buckets, self.config.settings.ledger_bucket, *literal_buckets(self.config)}
        )

    @property
    def trigger_topics(self) -> list[str]:
        return sorted({t.pubsub.topic for t in self.config.triggers_of("pubsub") if t.pubsub})

    @property
    def completion_topic(self) -> str | None:
        path = self.config.settings.completion_topic_path
        return path.rsplit("/", 1)[-1] if path else None

    @property
    def backends(self) -> set[str]:
        return {p.backend for p in self.config.pipelines.values()}

    def chain(self, trigger: str | None = None) -> list[str]:
        """The pipelines a storage trigger starts, following single-upstream completion triggers."""
        starts = [t for t in self.config.triggers_of("storage") if trigger is None or t.name == trigger]
        if not starts:
            return []
        names = [starts[0].pipeline]
        while True:
            nxt = [
                t.pipeline
                for t in self.config.triggers_of("completion")
                if t.completion
                and t.completion.upstream == (names[-1],)
                and "SUCCEEDED" in t.completion.states
                and t.pipeline not in names
            ]
            if not nxt:
                return names
            names.append(nxt[0])


def load_doc(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StackError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise StackError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise StackError(f"{path} is not a YAML mapping")
    return doc


def choose_chain_variant(doc: dict[str, Any], requested: str) -> tuple[str | None, str]:
    """Put the demo's chained pipeline on the backend whose emulator is available (in ``doc``).

    ``examples/demo/chain-variants.yaml`` holds ``{pipeline: NAME, variants: {backend: definition}}``;
    the config's own definition of NAME counts as the variant for its backend. ``requested`` is a
    backend or ``auto`` (the first available of :data:`CHAIN_PREFERENCE`). Returns the backend and
    a note for the output.
    """
    spec = load_doc(DEMO_VARIANTS) if DEMO_VARIANTS.is_file() else {}
    name = spec.get("pipeline")
    pipelines = doc.get("pipelines") or {}
    if not isinstance(name, str) or not isinstance(pipelines.get(name), dict):
        return None, ""
    variants: dict[str, Any] = {
        pipelines[name].get("backend"): pipelines[name],
        **(spec.get("variants") or {}),
    }
    available = [b for b in CHAIN_PREFERENCE if b in variants and emulator_available(b)]
    if requested != "auto":
        if requested not in variants:
            raise StackError(f"--chain-backend {requested}: {DEMO_VARIANTS.name} has no such variant")
        if requested not in available:
            raise StackError(f"--chain-backend {requested}: its emulator is not available in this checkout")
        choice = requested
    elif available:
        choice = available[0]
    else:
        return pipelines[name].get("backend"), ""
    pipelines[name] = variants[choice]
    if choice == "dataflow" and requested == "auto":
        missing = [BACKEND_TITLES.get(b, b) for b in variants if b != "dataflow"]
        reason = f"no {' or '.join(missing)} emulator in this checkout" if missing else "no other variant"
        return choice, f"{name} runs on a second Dataflow template: {reason}"
    note = f"{name} runs on {BACKEND_TITLES.get(choice, choice)}"
    others = [BACKEND_TITLES.get(b, b) for b in available if b != choice]
    if others:
        note += f" (also available: {', '.join(others)}; pick with --chain-backend)"
    return choice, note


def make_plan(config_path: Path, work_dir: Path, *, demo_variants: bool, chain_backend: str = "auto") -> Plan:
    """Validate the config, apply the demo's chain variant, write the copy the functions load."""
    doc = load_doc(config_path)
    chosen, note = (None, "")
    if demo_variants:
        chosen, note = choose_chain_variant(doc, chain_backend)
    target = work_dir / "pipelines.yaml"
    try:
        config = build_config(doc, source=str(config_path))
    except ConfigError as exc:
        raise StackError(f"the config is not valid: {exc}") from exc
    header = f"# Generated by local/stack.py from {config_path}; edit that file instead.\n"
    target.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return Plan(config=config, doc=doc, source=target, note=note, chain_backend=chosen)


# ================================================================================= the stack


def main_has_function(name: str) -> bool:
    """Whether main.py defines a top-level function ``name`` (the HTTP ``api`` is optional)."""
    try:
        tree = ast.parse((ROOT / "main.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def dataflow_templates(plan: Plan, files: Sequence[Path]) -> list[dict[str, Any]]:
    """Templates for the Dataflow emulator: from ``files``, plus a stand-in for every Dataflow
    pipeline of the config whose template none of them registers (1 s pending, 3 s running)."""
    from local.emulators.dataflow import load_templates

    templates: list[dict[str, Any]] = []
    for path in files:
        try:
            templates.extend(t.to_json() for t in load_templates(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StackError(f"cannot load Dataflow templates from {path}: {exc}") from exc
    known = {t["gcsPath"] for t in templates}
    for pipeline in plan.config.pipelines.values():
        gcs_path = str(pipeline.options.get("template"))
        if pipeline.backend not in ("dataflow", "dataflow-flex") or gcs_path in known:
            continue
        templates.append(
            {
                "gcsPath": gcs_path,
                "kind": "flex" if pipeline.backend == "dataflow-flex" else "classic",
                "name": pipeline.name,
                "description": "registered by the local stack for this config",
                "parameters": [
                    {"name": n, "label": n, "helpText": n, "isOptional": True} for n in pipeline.parameters
                ],
                "behavior": {"pending_seconds": 1, "run_seconds": 3},
            }
        )
        known.add(gcs_path)
    return templates


def cdap_apps(plan: Plan, files: Sequence[Path]) -> list[dict[str, Any]]:
    """Apps (deployed pipelines) for the CDAP emulator: from ``files``, plus one for every Data
    Fusion pipeline of the config that none of them registers (1 s pending, 1 s starting, 3 s running).
    Instances need no registration: the emulator answers ACTIVE for any name."""
    from local.emulators.cdap import load_apps

    apps: list[dict[str, Any]] = []
    for path in files:
        try:
            apps.extend(a.to_json() for a in load_apps(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StackError(f"cannot load CDAP apps from {path}: {exc}") from exc
    known = {(a["namespace"], a["app"]) for a in apps}
    for pipeline in plan.config.pipelines.values():
        if pipeline.backend != "datafusion":
            continue
        key = (str(pipeline.options.get("namespace", "default")), str(pipeline.options.get("app")))
        if key in known:
            continue
        apps.append(
            {
                "namespace": key[0],
                "app": key[1],
                "mode": pipeline.mode,
                "behavior": {"pending_seconds": 1, "starting_seconds": 1, "run_seconds": 3},
            }
        )
        known.add(key)
    # to_json() adds programType/programId, which registration does not take back.
    return [{k: a[k] for k in ("namespace", "app", "mode", "behavior")} for a in apps]


FABRIC_ITEM_TYPES = {"execute": "Dataflow", "refresh": "Dataflow", "pipeline": "DataPipeline"}


def fabric_registrations(
    plan: Plan, files: Sequence[Path]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Items, clients and credential env vars for the Fabric emulator.

    Items come from ``files``, plus one for every Fabric pipeline of the config that none of them
    registers (its type follows the job type: Execute -> Dataflow, Pipeline -> DataPipeline,
    RunNotebook -> Notebook). Every ``credentials`` prefix the config uses gets a fake app
    registration (tenant, client id, secret, refresh token) and the matching ``<PREFIX>_*`` env
    vars for the functions: local, fake values only.
    """
    from local.emulators.fabric import load_items

    items: list[dict[str, Any]] = []
    for path in files:
        try:
            items.extend(i.to_json() for i in load_items(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StackError(f"cannot load Fabric items from {path}: {exc}") from exc
    known = {(i["workspace"], i["item"]) for i in items}
    prefixes: set[str] = set()
    for pipeline in plan.config.pipelines.values():
        if pipeline.backend != "fabric":
            continue
        options = pipeline.options
        prefixes.add(str(options.get("credentials") or "FABRIC"))
        key = (str(options["workspace"]).lower(), str(options["item"]).lower())
        if key in known:
            continue
        job_type = str(options.get("job_type") or "Execute").lower()
        items.append(
            {
                "workspace": key[0],
                "item": key[1],
                "type": FABRIC_ITEM_TYPES.get(job_type, "Notebook"),
                "displayName": pipeline.name,
                "behavior": {"not_started_seconds": 1, "run_seconds": 3, "poll_after_seconds": 1},
            }
        )
        known.add(key)
    clients: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    for prefix in sorted(prefixes):
        client_id = f"local-stack-{prefix.lower().replace('_', '-')}"
        refresh = f"local-stack-fake-refresh-token-{prefix.lower()}"
        clients.append(
            {
                "tenant": FAKE_TENANT,
                "client_id": client_id,
                "client_secret": FAKE_SECRET,
                "refresh_tokens": [refresh],
            }
        )
        env.update(
            {
                f"{prefix}_TENANT_ID": FAKE_TENANT,
                f"{prefix}_CLIENT_ID": client_id,
                f"{prefix}_CLIENT_SECRET": FAKE_SECRET,
                f"{prefix}_REFRESH_TOKEN": refresh,
            }
        )
    return items, clients, env


@dataclass
class StackTimes:
    startup: float = 0.0
    shutdown: float = 0.0


@dataclass
class Stack:
    """Every service of the local stack; :meth:`start` brings them up, :meth:`close` stops them all.

    ``close`` is idempotent and always leaves no process behind (each service runs in its own
    process group and ``stop`` waits until the group is empty).
    """

    plan: Plan
    work_dir: Path
    registrations: Mapping[str, Sequence[Path]] = field(default_factory=dict)
    sweep_every: float = 2.0
    services: list[ManagedService] = field(default_factory=list)
    functions: dict[str, FunctionServer] = field(default_factory=dict)
    emulators: dict[str, Any] = field(default_factory=dict)
    client_env: dict[str, str] = field(default_factory=dict)
    times: StackTimes = field(default_factory=StackTimes)
    pubsub: PubSubEmulator | None = None
    gcs: FakeGcs | None = None
    _sweeper: threading.Thread | None = None
    _stop_sweeping: threading.Event = field(default_factory=threading.Event)
    _closed: bool = False

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        plan = self.plan
        find_pubsub_emulator()  # missing emulator or Java: a ServiceError saying what to install,
        find_fake_gcs_binary()  # before anything was started
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        names = [*EVENT_FUNCTIONS, *(["api"] if main_has_function("api") else [])]
        pubsub_port, gcs_port, *function_ports = distinct_free_ports(2 + len(names))
        pubsub_host = f"{LOOPBACK}:{pubsub_port}"
        gcs_url = f"http://{LOOPBACK}:{gcs_port}"
        ports = dict(zip(names, function_ports, strict=True))
        url = {name: f"http://{LOOPBACK}:{port}" for name, port in ports.items()}

        # The emulators run in this process; the wordcount implementation reads and writes objects
        # through STORAGE_EMULATOR_HOST, so this process points at fake-gcs-server too.
        os.environ.update(
            {
                "STORAGE_EMULATOR_HOST": gcs_url,
                "PUBSUB_EMULATOR_HOST": pubsub_host,
                "GOOGLE_CLOUD_PROJECT": plan.project,
                "NO_PROXY": _no_proxy(),  # loopback calls never go through a proxy
                "no_proxy": _no_proxy(),
            }
        )
        endpoints = self._start_emulators(notify_url=url["on_job_status"] + "/")
        self.client_env = {
            "STORAGE_EMULATOR_HOST": gcs_url,
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            "GOOGLE_CLOUD_PROJECT": plan.project,
            "PIPELINES_CONFIG": str(plan.source),
            "PIPELINES_ANONYMOUS_AUTH": "true",
            **endpoints,
        }
        function_env = {
            # An endpoint override inherited from the caller's shell must not leak in: "" = unset.
            **{name: "" for name in registry.endpoint_envs()},
            **self.client_env,
            "NO_PROXY": _no_proxy(),
            "no_proxy": _no_proxy(),
        }
        self.pubsub = PubSubEmulator(log_dir=self.logs_dir)
        self.services.append(self.pubsub)
        for name in names:
            server = FunctionServer(
                ROOT,
                name,
                signature_type="http" if name == "api" else "cloudevent",
                env=function_env,
                log_dir=self.logs_dir / name,
            )
            self.functions[name] = server
            self.services.append(server)

        # Slow starts in parallel: the JVM and one Python interpreter per function.
        pool = cf.ThreadPoolExecutor(max_workers=len(names) + 1, thread_name_prefix="stack-start")
        try:
            pubsub = pool.submit(self.pubsub.start, port=pubsub_port)
            functions = [pool.submit(self.functions[n].start, port=ports[n]) for n in names]
            pubsub.result()
            self._create_pubsub_and_storage(gcs_port)
            for fut in functions:
                fut.result()
        finally:
            pool.shutdown(wait=True)  # no start may still be under way when close() runs
        self._subscribe(url)
        self._start_sweeper()
        self.times.startup = time.monotonic() - started

    def _start_emulators(self, notify_url: str) -> dict[str, str]:
        from local.emulators import dataflow as dataflow_emulator

        endpoints: dict[str, str] = {}
        templates = dataflow_templates(self.plan, self.registrations.get("dataflow", ()))
        handle = dataflow_emulator.serve(port=0, templates=templates, notify_url=notify_url)
        self.emulators["dataflow"] = handle
        endpoints["DATAFLOW_API_ENDPOINT"] = handle.url
        if "datafusion" in self.plan.backends and emulator_available("datafusion"):
            endpoints.update(self._start_cdap())
        if "fabric" in self.plan.backends and emulator_available("fabric"):
            endpoints.update(self._start_fabric())
        return endpoints

    def _start_cdap(self) -> dict[str, str]:
        from local.emulators import cdap as cdap_emulator

        apps = cdap_apps(self.plan, self.registrations.get("datafusion", ()))
        # The functions use anonymous credentials (no Authorization header): no bearer check here.
        handle = cdap_emulator.serve(port=0, apps=apps, require_auth=False)
        self.emulators["datafusion"] = handle
        return {"DATAFUSION_API_ENDPOINT": handle.url}

    def _start_fabric(self) -> dict[str, str]:
        from local.emulators import fabric as fabric_emulator

        items, clients, credentials = fabric_registrations(self.plan, self.registrations.get("fabric", ()))
        handle = fabric_emulator.serve(port=0, items=items, clients=clients)
        self.emulators["fabric"] = handle
        # One server plays both Fabric and the Entra token endpoint.
        return {"FABRIC_API_ENDPOINT": handle.url, "FABRIC_TOKEN_ENDPOINT": handle.url, **credentials}

    def _create_pubsub_and_storage(self, gcs_port: int) -> None:
        assert self.pubsub is not None
        plan, host = self.plan, self.pubsub.host
        topics = {NOTIFICATION_TOPIC, SWEEP_TOPIC, *plan.trigger_topics}
        if plan.completion_topic:
            topics.add(plan.completion_topic)
        for topic in sorted(topics):
            ensure_topic(plan.project, topic, emulator_host=host)
        # Watch subscriptions exist before anything is published, so the timeline misses nothing.
        ensure_pull_subscription(plan.project, NOTIFICATION_TOPIC, WATCH_NOTIFICATIONS, emulator_host=host)
        if plan.completion_topic:
            ensure_pull_subscription(
                plan.project, plan.completion_topic, WATCH_COMPLETIONS, emulator_host=host
            )
        self.gcs = FakeGcs(log_dir=self.logs_dir)
        self.services.append(self.gcs)
        only = plan.storage_buckets[0] if len(plan.storage_buckets) == 1 else None
        self.gcs.start(
            port=gcs_port, pubsub_host=host, project=plan.project, topic=NOTIFICATION_TOPIC, bucket=only
        )
        client = storage_client(self.gcs.url, project=plan.project)
        for bucket in plan.buckets:
            ensure_bucket(client, bucket)

    def _subscribe(self, url: Mapping[str, str]) -> None:
        assert self.pubsub is not None
        plan, host = self.plan, self.pubsub.host

        def push(topic: str, function: str) -> None:
            # The path makes functions-framework give the CloudEvent the topic's source.
            endpoint = f"{url[function]}/projects/{plan.project}/topics/{topic}"
            ensure_push_subscription(
                plan.project, topic, f"stack-{topic}-to-{function}", endpoint, emulator_host=host
            )

        push(NOTIFICATION_TOPIC, "on_message")
        push(SWEEP_TOPIC, "check_runs")
        for topic in plan.trigger_topics:
            push(topic, "on_message")
        if plan.completion_topic:
            push(plan.completion_topic, "on_message")

    def _start_sweeper(self) -> None:
        assert self.pubsub is not None
        host, project = self.pubsub.host, self.plan.project

        def loop() -> None:
            while not self._stop_sweeping.wait(self.sweep_every):
                with contextlib.suppress(Exception):
                    publish(project, SWEEP_TOPIC, b'{"from": "local-stack"}', emulator_host=host)

        self._sweeper = threading.Thread(target=loop, name="stack-sweep", daemon=True)
        self._sweeper.start()

    # -- introspection -------------------------------------------------------------------------------
    def process_groups(self) -> list[dict[str, Any]]:
        """Every started process group and its live pids (for tests and ``--pids-file``)."""
        groups = []
        for service in self.services:
            if service.pid is not None:
                label = service.target if isinstance(service, FunctionServer) else service.name
                groups.append(
                    {"name": label, "pgid": service.pid, "pids": live_processes_in_group(service.pid)}
                )
        return groups

    def describe(self) -> list[tuple[str, str]]:
        """(name, address) of every service, for the start-up summary."""
        rows: list[tuple[str, str]] = []
        if self.pubsub is not None:
            rows.append(("Pub/Sub emulator", self.pubsub.host))
        if self.gcs is not None:
            rows.append(("fake-gcs-server", self.gcs.url))
        for backend, handle in self.emulators.items():
            rows.append((f"{BACKEND_TITLES.get(backend, backend)} emulator", handle.url))
        for name, server in self.functions.items():
            rows.append((name, server.url))
        return rows

    # -- stop ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything; idempotent; tries every service before reporting a problem.

        Functions first (no more work is taken), in parallel; then the in-process emulators,
        fake-gcs-server and the Pub/Sub emulator, in parallel. Each ``stop`` returns only when its
        process group is empty.
        """
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        problems: list[str] = []
        self._stop_sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        functions = [s for s in self.services if isinstance(s, FunctionServer)]
        others = [s for s in self.services if not isinstance(s, FunctionServer)]
        handles = list(self.emulators.values())
        with cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="stack-stop") as pool:
            list(pool.map(lambda s: _stop_quietly(s, problems), functions))
            jobs = [pool.submit(_stop_quietly, s, problems) for s in others]
            jobs += [pool.submit(_shutdown_handle, h, problems) for h in handles]
            cf.wait(jobs)
        self.times.shutdown = time.monotonic() - started
        if problems:
            raise StackError("shutdown: " + "; ".join(problems))


def _shutdown_handle(handle: Any, problems: list[str]) -> None:
    try:
        handle.shutdown()
    except Exception as exc:
        problems.append(f"emulator: {exc}")


def _stop_quietly(service: ManagedService, problems: list[str]) -> None:
    # A gunicorn worker sometimes deadlocks in its own exit after SIGINT (one thread left, waiting on
    # a lock); stop() then ends the group with SIGKILL after the grace, so keep that grace short.
    grace = 1.5 if isinstance(service, FunctionServer) else 3.0
    try:
        service.stop(grace=grace)
    except Exception as exc:
        problems.append(f"{service.name}: {exc}")


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports: all sockets are held open until every port is known
    (asking one at a time may hand out the same port twice)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _no_proxy() -> str:
    current = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    return ",".join(x for x in (current, "127.0.0.1", "localhost") if x)


# ================================================================================= demo and up


def _write_pids(path: Path | None, stack: Stack) -> None:
    if path is not None:
        path.write_text(json.dumps({"groups": stack.process_groups()}, indent=2))


def print_services(stack: Stack, out: TextIO) -> None:
    print(f"Local stack up in {stack.times.startup:.1f}s (logs: {stack.logs_dir}):", file=out)
    for name, address in stack.describe():
        print(f"  {name:<22} {address}", file=out)
    print(file=out, flush=True)


def print_client_env(stack: Stack, out: TextIO) -> None:
    """The variables and commands a client needs to use the running stack."""
    plan = stack.plan
    print("Use it from another shell:", file=out)
    keys = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "DATAFLOW_API_ENDPOINT",
            "DATAFUSION_API_ENDPOINT", "FABRIC_API_ENDPOINT", "FABRIC_TOKEN_ENDPOINT", "PIPELINES_CONFIG")  # fmt: skip
    for key in keys:
        if stack.client_env.get(key):
            print(f"  export {key}={stack.client_env[key]}", file=out)
    for name, server in stack.functions.items():
        print(f"  export FUNCTION_{name.upper()}_URL={server.url}", file=out)
    q = json.dumps  # a JSON string is a Python string literal in double quotes
    trigger = next(iter(plan.config.triggers_of("storage")), None)
    if trigger and trigger.storage:
        name = _example_object(trigger.storage.glob or trigger.storage.prefix or "")
        code = (
            "from google.cloud import storage; from google.auth.credentials import AnonymousCredentials; "
            f"storage.Client({q(plan.project)}, AnonymousCredentials()).bucket({q(trigger.storage.bucket)})"
            f'.blob({q(name)}).upload_from_string("hello local stack")'
        )
        print(
            "\nUpload a file; google-cloud-storage finds the emulator through STORAGE_EMULATOR_HOST:",
            file=out,
        )
        print(f"  {_python_command(code)}", file=out)
    ptrigger = next(iter(plan.config.triggers_of("pubsub")), None)
    topic = SWEEP_TOPIC
    body: dict[str, Any] = {}
    attrs: dict[str, str] = {}
    what = "to the sweep topic (check active runs now)"
    if ptrigger is not None and ptrigger.pubsub is not None:
        topic, what = ptrigger.pubsub.topic, f"a message for trigger {ptrigger.name}"
        body, attrs = example_message(plan.config, ptrigger)
    extra = f", **{q(attrs)}" if attrs else ""
    code = (
        "from google.cloud import pubsub_v1; "
        f"print(pubsub_v1.PublisherClient().publish({q(f'projects/{plan.project}/topics/{topic}')}, "
        f"{q(q(body))}.encode(){extra}).result())"
    )
    print(f"\nPublish {what}; google-cloud-pubsub finds the emulator through PUBSUB_EMULATOR_HOST:", file=out)
    print(f"  {_python_command(code)}", file=out)
    if "api" in stack.functions:
        print("\nThe REST API (pipelines, runs by key):", file=out)
        print(f"  curl -s {stack.functions['api'].url}/pipelines", file=out)
    print(file=out, flush=True)


def _python_command(code: str) -> str:
    """``<this python> -c '<code>'``, quoted for a POSIX shell."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def example_message(config: Config, trigger: Trigger) -> tuple[dict[str, Any], dict[str, str]]:
    """A JSON body and attributes that ``trigger`` accepts and its parameters can render from:
    its ``equals``/``in`` conditions, and ``"example"`` for other ``data.*``/``attributes.*`` fields."""
    assert trigger.pubsub is not None
    body: dict[str, Any] = {}
    attributes: dict[str, str] = {}

    def put(path: str, value: str) -> None:
        head, _, rest = path.partition(".")
        if head == "attributes" and rest:
            attributes.setdefault(rest, value)
        elif head == "data" and rest:
            node = body
            *parents, leaf = rest.split(".")
            for part in parents:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    return
                node = child
            node.setdefault(leaf, value)

    for section, conditions in (("attributes", trigger.pubsub.attributes), ("data", trigger.pubsub.data)):
        for cond in conditions:
            value = cond.equals if cond.equals is not None else (cond.one_of or [None])[0]
            value = value if value is not None else (cond.prefix or "") + "example" + (cond.suffix or "")
            put(cond.path if cond.path.startswith(section + ".") else f"{section}.{cond.path}", value)
    for template in config.templates_for(trigger).values():
        for fld in template.fields:
            if fld.default is None:
                put(fld.path, "example")
    if trigger.pubsub.dedupe_by:
        put(trigger.pubsub.dedupe_by, "example-1")
    return body, attributes


def _example_object(pattern: str) -> str:
    """An object name a storage trigger's glob or prefix accepts, for the printed example."""
    name = pattern.replace("**/", "").replace("**", "x").replace("*", "hello").replace("?", "x")
    name = re.sub(r"\[[^\]]*\]", "x", name)
    if not name or name.endswith("/"):
        name += "hello.txt"
    return name


@contextlib.contextmanager
def session(
    args: argparse.Namespace,
    out: TextIO,
    plan_for: Callable[[Path], Plan],
    introduce: Callable[[Plan], None],
    registrations: Mapping[str, Sequence[Path]],
) -> Iterator[Stack]:
    """A started stack for the ``with`` body; stopped afterwards however the body ends.

    The work directory (generated config, logs) is removed unless ``--keep-logs`` or a failure.
    """
    work_dir = Path(tempfile.mkdtemp(prefix="local-stack-"))
    stack: Stack | None = None
    failed = False
    try:
        plan = plan_for(work_dir)
        introduce(plan)
        print("Starting the local stack...", file=out, flush=True)
        stack = Stack(plan, work_dir, registrations=registrations, sweep_every=args.sweep_every)
        stack.start()
        _write_pids(args.pids_file, stack)
        print_services(stack, out)
        yield stack
    except (StackError, ServiceError):
        failed = True
        raise
    finally:
        _shutdown(
            stack,
            out,
            bool(args.keep_logs) or (failed and stack is not None and bool(stack.services)),
            work_dir,
        )


def run_demo(args: argparse.Namespace, out: TextIO) -> int:
    """``demo``: upload the sample, follow the chain to its end, show the output; 0 on success."""
    chain: list[str] = []

    def plan_for(work_dir: Path) -> Plan:
        plan = make_plan(DEMO_CONFIG, work_dir, demo_variants=True, chain_backend=args.chain_backend)
        chain.extend(plan.chain())
        if len(chain) < 2:
            raise StackError(f"{DEMO_CONFIG} has no chain starting at a storage trigger")
        return plan

    def introduce(plan: Plan) -> None:
        steps = [
            f"{p} ({BACKEND_TITLES.get(b, b)})" for p in chain for b in [plan.config.pipelines[p].backend]
        ]
        print("Event pipelines: local demo", file=out)
        print("  chain: " + " -> ".join(steps), file=out)
        if plan.note:
            print(f"  note: {plan.note}", file=out)

    with session(args, out, plan_for, introduce, DEMO_REGISTRATIONS) as stack:
        plan = stack.plan
        assert stack.gcs is not None
        storage = next(t.storage for t in plan.config.triggers_of("storage") if t.pipeline == chain[0])
        assert storage is not None
        client = storage_client(stack.gcs.url, project=plan.project)
        timeline = Timeline(out)
        observer = Observer.for_stack(stack, timeline)
        print(
            f"Timeline (seconds since the upload; a sweep every {args.sweep_every:g}s):", file=out, flush=True
        )
        timeline.origin = time.time()
        observer.start()
        try:
            blob = client.bucket(storage.bucket).blob(DEMO_OBJECT)
            blob.upload_from_filename(str(DEMO_SAMPLE), content_type="text/plain")
            where = f"gs://{storage.bucket}/{DEMO_OBJECT} ({blob.size} bytes)"
            timeline.add(timeline.origin, "file uploaded", where)
            result = wait_for_chain(observer, timeline, plan, chain, args.timeout)
        finally:
            with _signals_deferred():
                observer.stop()
                timeline.flush(everything=True)
        print(f"{timeline.format(TimelineEvent(time.time(), 'done', result.summary()))}", file=out)
        show_output(result, client, out)
        if args.keep_going:
            print("\n--keep-going: the stack stays up.\n", file=out)
            print_client_env(stack, out)
            with contextlib.suppress(Interrupted):  # the demo succeeded: Ctrl-C is the normal end
                follow(stack, out, observer)
    return 0


@dataclass
class DemoResult:
    """The demo's chain once its last pipeline published SUCCEEDED."""

    chain: list[str]
    completions: list[Completion]
    chain_seconds: float
    output_uri: str | None = None

    def summary(self) -> str:
        return f"{' -> '.join(self.chain)} completed in {self.chain_seconds:.1f}s"


def wait_for_chain(
    observer: Observer, timeline: Timeline, plan: Plan, chain: list[str], timeout: float
) -> DemoResult:
    """Wait until the chain's last pipeline published SUCCEEDED; StackError with the reason otherwise."""
    deadline = timeline.origin + timeout
    while True:
        done = {c.pipeline: c for c in observer.completions()}
        for name in chain:
            comp = done.get(name)
            if comp is not None and comp.state != "SUCCEEDED":
                reason = f": {comp.data.get('reason')}" if comp.data.get("reason") else ""
                raise StackError(f"pipeline {name} ended {comp.state}{reason}")
        last = done.get(chain[-1])
        if last is not None:
            # A moment for the last completion's own delivery to on_message to show ("chain end").
            settle = time.time() + 1.5
            while time.time() < settle and not observer.seen_log(CHAIN_END_LOG):
                time.sleep(0.1)
            return DemoResult(
                chain,
                [done[n] for n in chain],
                chain_seconds=last.at - timeline.origin,
                output_uri=_output_uri(done[chain[0]]),
            )
        if time.time() > deadline:
            pending = next(n for n in chain if n not in done)
            runs = [r for r in observer.runs() if r.pipeline == pending]
            state = max(runs, key=lambda r: str(r.record.get("updated_at"))).state if runs else "not launched"
            title = BACKEND_TITLES.get(plan.config.pipelines[pending].backend, "?")
            extra = f" ({'; '.join(observer.failures)})" if observer.failures else ""
            raise StackError(
                f"pipeline {pending} ({title}) did not complete within {timeout:g}s: last state {state}{extra}"
            )
        time.sleep(0.1)


def _output_uri(comp: Completion) -> str | None:
    """The first gs:// object among a completion's declared outputs."""
    outputs = comp.data.get("outputs") or {}
    for value in outputs.values():
        if isinstance(value, str) and value.startswith("gs://") and not value.endswith("/"):
            return value
    return None


def show_output(result: DemoResult, client: Any, out: TextIO, lines: int = 12) -> None:
    """Print the first pipeline's output object: its gs:// path and first lines."""
    if not result.output_uri:
        print(f"\n({result.chain[0]} declares no gs:// output object)", file=out)
        return
    bucket, _, name = result.output_uri[len("gs://") :].partition("/")
    try:
        text = client.bucket(bucket).blob(name).download_as_text()
    except Exception as exc:
        raise StackError(f"the output {result.output_uri} cannot be read: {exc}") from exc
    rows = text.splitlines()
    print(f"\nOutput of {result.chain[0]}: {result.output_uri} ({len(rows)} lines)", file=out)
    for row in rows[:lines]:
        print(f"    {row}", file=out)
    if len(rows) > lines:
        print(f"    ... {len(rows) - lines} more", file=out)
    out.flush()


def follow(stack: Stack, out: TextIO, observer: Observer | None = None) -> None:
    """Stream the timeline until a signal arrives (which raises :class:`Interrupted`).

    ``observer``: carry on with one that already ran (same clock, nothing printed twice).
    """
    if observer is None:
        observer = Observer.for_stack(stack, Timeline(out))
        print("Timeline (seconds since now; Ctrl-C stops everything):", file=out, flush=True)
    else:
        print("Timeline, continued (Ctrl-C stops everything):", file=out, flush=True)
    timeline = observer.timeline
    observer.start()
    try:
        while True:
            time.sleep(0.5)
    finally:
        with _signals_deferred():
            observer.stop()
            timeline.flush(everything=True)


def run_up(args: argparse.Namespace, out: TextIO) -> int:
    """``up``: serve a config (default: the demo's) until Ctrl-C, streaming the timeline."""
    config_path = Path(args.config) if args.config else DEMO_CONFIG
    registrations: dict[str, Sequence[Path]] = dict(DEMO_REGISTRATIONS) if not args.config else {}
    if args.templates:
        registrations["dataflow"] = [Path(p) for p in args.templates]
    if args.apps:
        registrations["datafusion"] = [Path(p) for p in args.apps]
    if args.items:
        registrations["fabric"] = [Path(p) for p in args.items]

    def plan_for(work_dir: Path) -> Plan:
        return make_plan(
            config_path, work_dir, demo_variants=not args.config, chain_backend=args.chain_backend
        )

    def introduce(plan: Plan) -> None:
        print(f"Event pipelines: local stack for {config_path}", file=out)
        if plan.note:
            print(f"  note: {plan.note}", file=out)
        missing = sorted(b for b in plan.backends if not emulator_available(b))
        if missing:
            print(
                f"  warning: no {', '.join(missing)} emulator in this checkout: those launches will fail",
                file=out,
            )

    with session(args, out, plan_for, introduce, registrations) as stack:
        print_client_env(stack, out)
        follow(stack, out)
    return 0


def _shutdown(stack: Stack | None, out: TextIO, keep_dir: bool, work_dir: Path) -> None:
    """Stop every service (a second Ctrl-C is held off meanwhile) and report how long it took."""
    with _signals_deferred():
        try:
            if stack is not None and stack.services:
                stack.close()
                startup = f" (start-up took {stack.times.startup:.1f}s)" if stack.times.startup else ""
                print(
                    f"\nStopped every service in {stack.times.shutdown:.1f}s{startup}.", file=out, flush=True
                )
        finally:
            if keep_dir:
                print(f"Logs and the generated config are kept in {work_dir}", file=sys.stderr)
            else:
                shutil.rmtree(work_dir, ignore_errors=True)


# ================================================================================= signals and CLI


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """While shutting down, a second Ctrl-C must not abandon processes: note it and carry on."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda s, f: received.append(s)) for sig in HANDLED_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local.stack",
        description="Run the product on local emulators: `demo` shows a chain end to end, `up` keeps the stack running.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo chain once and exit (0 when it completed)")
    demo.add_argument("--timeout", type=float, default=90.0, help="seconds the chain may take (default 90)")
    demo.add_argument("--keep-going", action="store_true", help="keep the stack up after the demo, like `up`")
    up = sub.add_parser("up", help="keep the stack running for your own experiments (Ctrl-C stops it)")
    up.add_argument("--config", help="routing config to serve (default: examples/demo/pipelines.yaml)")
    up.add_argument(
        "--templates", action="append", help="Dataflow emulator templates file (YAML/JSON); repeatable"
    )
    up.add_argument("--apps", action="append", help="CDAP emulator apps file (YAML/JSON); repeatable")
    up.add_argument("--items", action="append", help="Fabric emulator items file (YAML/JSON); repeatable")
    for p in (demo, up):
        p.add_argument(
            "--chain-backend",
            default="auto",
            choices=("auto", *CHAIN_PREFERENCE),
            help="demo config only: backend of the chained pipeline (default: the first available of "
            + ", ".join(CHAIN_PREFERENCE)
            + ")",
        )
        p.add_argument("--sweep-every", type=float, default=2.0, help="seconds between sweeps (default 2)")
        p.add_argument(
            "--keep-logs", action="store_true", help="keep the logs and generated config after exit"
        )
        p.add_argument(
            "--pids-file", type=Path, help="write the started process groups and pids here (tests)"
        )
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace, TextIO], int] = run_demo if args.command == "demo" else run_up
    try:
        with _signals_raise():
            return run(args, out)
    except Interrupted as stop:
        print(f"\nstopped by {stop}", file=sys.stderr)
        return 0 if args.command == "up" else 128 + stop.signum
    except ServiceError as exc:
        print(f"local stack: a service could not start: {exc}", file=sys.stderr)
        return 1
    except StackError as exc:
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
