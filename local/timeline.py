"""The demo's timeline: what the local stack observed, printed in time order.

:class:`Observer` polls the stack's real signals (pull subscriptions on the notification and
completion topics, the run records in the ledger bucket, the functions' structured JSON logs) and
feeds a :class:`Timeline`, which prints ``  4.71s  completion published   wordcount SUCCEEDED``.
Nothing here starts or stops a service.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from handlers.backends import registry
from handlers.entry.cli.output import clean
from handlers.model.config import Config
from local.kits import kit
from local.services import FunctionServer, pull_all, storage_client

CHAIN_END_LOG = "no completion trigger waits for this pipeline"


def job_noun(backend: str) -> str:
    """What a run of ``backend`` is called in the timeline (``Data Fusion run``)."""
    try:
        return f"{kit(backend).title(backend)} {registry.spec(backend).job_noun}"
    except KeyError:
        return f"{backend} job"


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
        """One terminal line; object names and log text come from outside, so control characters
        are shown escaped (``\\x1b``), never sent to the terminal."""
        elapsed = max(0.0, event.at - self.origin)
        text = f"{elapsed:7.2f}s  {clean(event.label):<22} {clean(event.detail)}".rstrip()
        return f"{text}  ({clean(event.source)})" if event.source else text

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
            noun = job_noun(str(entry.get("backend")))
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
