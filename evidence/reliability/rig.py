"""The test rig shared by the fault- and crash-injection suites: real services, fault proxies, the
real functions in functions-framework processes (all assembled by :class:`local.world.LocalWorld`,
the emulators through their kits), and a stand-in for the platform that delivers.

::

    Rig (this process)                              functions-framework processes
    ├── Pub/Sub emulator (Java)  <──────publish────── on_object_finalized ─┐
    ├── fake-gcs-server (Go)     <──FaultProxy "ledger"──── check_runs ────┤ STORAGE_EMULATOR_HOST,
    ├── Dataflow emulator        <──FaultProxy "dataflow"── on_job_status ─┘ *_API_ENDPOINT = proxies
    ├── CDAP / Fabric emulators  <──FaultProxy "datafusion" / "fabric"   (with --backends)
    └── Platform: delivers CloudEvents (redelivering on non-2xx or a failed connection, same event id,
        compressed backoff), fires the scheduler's sweeps, starts a new instance when one died

Every backend in ``RigSettings.backends`` gets one pipeline, fed by a storage trigger on
``in/<backend>/**`` (:func:`event_name`). The verdict is taken only from what reached the services
(:class:`Observed`): the jobs/runs/instances the emulators hold (and the launch requests they
answered), the run objects in the ledger bucket (read directly, not through the proxy), and the
messages on the completion topic (pulled through a subscription created before anything ran).
Events are told apart by their object name, which the launched job carries in its parameters and
the completion event in its data; nothing here depends on how the functions name runs or lay out
their ledger records beyond "one JSON object per run under ``<prefix>runs/`` with a ``state``, and
``<prefix>active/`` markers while a run is followed" (see :meth:`Observed.ledger_runs`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from handlers.backends import registry
from handlers.backends.contract import TERMINAL_STATES
from handlers.model.config import build_config
from local.faultproxy import AfterUpstream, FaultProxy
from local.kits import EmulatorHandle, Timing, kit, kits_for
from local.kits import names as kit_names
from local.services import (
    LOCAL_PROJECT,
    FakeGcs,
    FunctionServer,
    PubSubEmulator,
    live_processes_in_group,
    pull_all,
    storage_client,
)
from local.world import LocalWorld, pipeline_doc
from local.world import config_doc as world_config_doc

ROOT = Path(__file__).resolve().parents[2]
LEDGER_BUCKET = "rig-ledger"
LEDGER_PREFIX = "ledger/"
LANDING_BUCKET = "rig-landing"
COMPLETION_TOPIC = "rig-completions"
COMPLETION_SUB = "rig-completions-watch"
# The backends a rig can run: one per kit (their emulators, fixtures and job listings).
BACKENDS = tuple(kits_for(kit_names()))
TERMINAL = frozenset(str(state) for state in TERMINAL_STATES)
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"


@dataclass(frozen=True)
class RigSettings:
    """Knobs of one rig; the defaults suit the fault suite."""

    lease: str = "20s"  # settings.ledger.lease: a claim older than this may be taken over
    publish_lease: str = "30s"  # settings.publish_lease: longer than a faulted ledger write can take
    launch_budget: str = "6s"  # settings.launch_budget
    http_timeout: str = "1,2"  # PIPELINES_HTTP_TIMEOUT (connect, read) in the functions
    speed: float = 20.0  # Dataflow emulator clock speed
    pending_seconds: float = 2.0  # job timeline, emulator seconds
    run_seconds: float = 4.0
    status_push: bool = False  # run on_job_status and let the emulator push statusChanged to it
    backends: tuple[str, ...] = ("dataflow",)  # events are spread over these, one pipeline each
    threads: int | None = None  # functions-framework THREADS (default 4 per core)


def _utc(offset: float = 0.0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One storage-finalized CloudEvent (binary mode) as Eventarc delivers it; redeliveries reuse it."""

    event_id: str
    bucket: str
    name: str
    generation: str
    time: str

    @property
    def backend(self) -> str:
        """The backend whose trigger this event's object name matches (``in/<backend>/...``)."""
        parts = self.name.split("/")
        return parts[1] if len(parts) > 2 and parts[1] in BACKENDS else "dataflow"

    @classmethod
    def storage(cls, bucket: str, name: str) -> Event:
        return cls(
            event_id=str(uuid.uuid4().int)[:16],
            bucket=bucket,
            name=name,
            generation=str(1_700_000_000_000_000 + random.randrange(10**9)),
            time=_utc(),
        )

    @property
    def input_file(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    def http(self) -> tuple[dict[str, str], bytes]:
        headers = {
            "ce-specversion": "1.0",
            "ce-type": STORAGE_FINALIZED,
            "ce-source": f"//storage.googleapis.com/projects/_/buckets/{self.bucket}",
            "ce-subject": f"objects/{self.name}",
            "ce-id": self.event_id,
            "ce-time": self.time,
            "Content-Type": "application/json",
        }
        data = {
            "kind": "storage#object",
            "bucket": self.bucket,
            "name": self.name,
            "generation": self.generation,
            "metageneration": "1",
            "contentType": "text/plain",
            "size": "12",
            "timeCreated": self.time,
            "updated": self.time,
            "storageClass": "STANDARD",
        }
        return headers, json.dumps(data).encode()


def scheduler_tick() -> tuple[dict[str, str], bytes]:
    """What Cloud Scheduler -> Pub/Sub delivers to ``check_runs`` (a fresh message each time)."""
    message_id = str(uuid.uuid4().int)[:17]
    when = _utc()
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": f"//pubsub.googleapis.com/projects/{LOCAL_PROJECT}/topics/pipeline-sweep",
        "ce-id": message_id,
        "ce-time": when,
        "Content-Type": "application/json",
    }
    body = {
        "message": {
            "data": base64.b64encode(b'{"from": "scheduler"}').decode(),
            "messageId": message_id,
            "publishTime": when,
        },
        "subscription": f"projects/{LOCAL_PROJECT}/subscriptions/pipeline-sweep",
    }
    return headers, json.dumps(body).encode()


def pipeline_name(backend: str) -> str:
    return f"ingest-{backend}"


def event_name(backend: str, tag: str) -> str:
    """An object name only ``backend``'s trigger matches."""
    return f"in/{backend}/{tag}.txt"


def config_doc(settings: RigSettings) -> dict[str, Any]:
    """The routing config: one pipeline and one storage trigger (``in/<backend>/**``) per backend."""
    pipelines = {
        pipeline_name(b): pipeline_doc(b, pipeline_name(b), parameters={"inputFile": "gs://{bucket}/{name}"})
        for b in settings.backends
    }
    triggers = {
        f"landing-{b}": {
            "storage": {"bucket": LANDING_BUCKET, "glob": f"in/{b}/**"},
            "pipeline": pipeline_name(b),
        }
        for b in settings.backends
    }
    return world_config_doc(
        ledger_bucket=LEDGER_BUCKET,
        completion_topic=COMPLETION_TOPIC,
        pipelines=pipelines,
        triggers=triggers,
        ledger_prefix=LEDGER_PREFIX,
        lease=settings.lease,
        launch_budget=settings.launch_budget,
        publish_lease=settings.publish_lease,
    )


class Rig:
    """Every service of one suite run, assembled by a :class:`~local.world.LocalWorld`:
    :meth:`start` brings them up, :meth:`close` stops them all."""

    def __init__(
        self,
        settings: RigSettings | None = None,
        work_dir: Path | None = None,
        *,
        functions_dir: Path | None = None,
        keep_dir: bool = False,
    ) -> None:
        self.settings = settings or RigSettings()
        # functions_dir: where main.py and handlers/ are served from
        self.world = LocalWorld(work_dir, functions_dir=functions_dir or ROOT, keep_dir=keep_dir)
        self.work_dir = self.world.work_dir
        self.instances_started: Counter[str] = Counter()
        self._function_lock = threading.Lock()
        self.config_path = self.work_dir / "pipelines.yaml"
        self.startup_seconds = 0.0

    @property
    def gcs(self) -> FakeGcs:
        assert self.world.gcs is not None
        return self.world.gcs

    @property
    def pubsub(self) -> PubSubEmulator:
        assert self.world.pubsub is not None
        return self.world.pubsub

    @property
    def emulators(self) -> dict[str, EmulatorHandle]:
        """Backend -> its running emulator."""
        return self.world.emulators

    @property
    def proxies(self) -> dict[str, FaultProxy]:
        """``ledger`` (in front of fake-gcs-server) and one per backend."""
        return self.world.proxies

    @property
    def functions(self) -> dict[str, FunctionServer]:
        return self.world.functions

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, *, seed: int = 0, hooks: Mapping[str, AfterUpstream] | None = None) -> Rig:
        """Start everything; ``hooks`` maps a proxy name (``ledger`` or a backend) to its
        ``after_upstream`` hook."""
        started = time.monotonic()
        hooks = hooks or {}
        settings, world = self.settings, self.world
        world.logs_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
        doc = config_doc(settings)
        with contextlib.ExitStack() as undo:
            undo.callback(self.close)
            world.start_pubsub()
            world.start_gcs()
            world.create(
                buckets=[LEDGER_BUCKET, LANDING_BUCKET],
                topics=[COMPLETION_TOPIC],
                pull={COMPLETION_SUB: COMPLETION_TOPIC},
            )
            # One instance per event: Fabric's dedupe of concurrent runs of one item would turn
            # most of a thousand concurrent events into Deduped (CANCELLED) runs.
            timing = Timing(
                settings.pending_seconds, settings.run_seconds, dedupe=False, poll_after_seconds=0
            )
            pipelines = build_config(doc).pipelines.values()
            world.start_backends(settings.backends, pipelines=pipelines, timing=timing, speed=settings.speed)
            upstreams = {"ledger": self.gcs.url, **{b: h.url for b, h in self.emulators.items()}}
            for i, (name, upstream) in enumerate(upstreams.items()):
                world.add_fault_proxy(
                    name, upstream, seed=seed + i, after_upstream=hooks.get(name), hold_seconds=30
                )
            self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
            self._start_functions()
            undo.pop_all()
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_functions(self) -> None:
        targets = ["on_object_finalized", "check_runs"]
        # the emulators that push status as CloudEvents to on_job_status (Data Fusion publishes to
        # Pub/Sub instead, which this rig does not route: its runs end through the sweep here)
        pushing = [
            b for b in self.emulators if (push := registry.spec(b).push) is not None and push.event_type
        ]
        if self.settings.status_push and pushing:
            targets.append("on_job_status")
        self.world.start_functions([self._new_instance(t) for t in targets], timeout=60)
        if "on_job_status" in targets:
            for backend in pushing:
                requests.post(
                    f"{self.emulators[backend].url}/_emulator/notify",
                    json={"url": self.url("on_job_status") + "/"},
                    timeout=5,
                ).raise_for_status()

    def function_env(self) -> dict[str, str]:
        """The functions reach the ledger and every backend through the fault proxies."""
        extra = {
            "PIPELINES_CONFIG": str(self.config_path),
            "PIPELINES_HTTP_TIMEOUT": self.settings.http_timeout,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        if self.settings.threads:
            extra["THREADS"] = str(self.settings.threads)
        return self.world.function_env(through_proxies=True, **extra)

    def _new_instance(self, target: str) -> FunctionServer:
        self.instances_started[target] += 1
        log_name = f"{target}-{self.instances_started[target]}"
        return self.world.add_function(target, self.function_env(), log_name=log_name)

    def close(self) -> None:
        self.world.close()

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- function instances ---------------------------------------------------------------------
    def url(self, target: str) -> str:
        return self.functions[target].url

    def kill(self, target: str) -> None:
        """SIGKILL the function's whole process group (master and workers) and wait until it is gone."""
        server = self.functions[target]
        pgid = server.pid
        if pgid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while live_processes_in_group(pgid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def alive(self, target: str) -> bool:
        return self.functions[target].running

    def replace_instance(self, target: str) -> FunctionServer:
        """What the platform does after an instance died: start a new one (new process, new port)."""
        with self._function_lock:
            old = self.functions[target]
            if old.running:
                return old
            with contextlib.suppress(Exception):
                old.stop(grace=0.5)
            server = self._new_instance(target)
            server.start(timeout=60)
            return server

    # -- observing ------------------------------------------------------------------------------
    def active_markers(self) -> int:
        """Active-run markers in the ledger (read directly): while one is left, a sweep may still act."""
        client = storage_client(self.gcs.url)
        return sum(1 for _ in client.list_blobs(LEDGER_BUCKET, prefix=f"{LEDGER_PREFIX}active/"))

    def observe(self) -> Observed:
        return Observed.collect(self)


@dataclass
class Delivery:
    """One event's delivery chain: every attempt's outcome until the function acknowledged it."""

    event: Event
    target: str
    outcomes: list[str] = field(default_factory=list)
    acked: bool = False

    @property
    def attempts(self) -> int:
        return len(self.outcomes)


class Platform:
    """Eventarc / Cloud Functions as the functions see them: at-least-once delivery with redelivery of
    the same event (same id) after a non-2xx answer or a failed connection, with exponential backoff
    compressed from Eventarc's 10 s..600 s to ``initial``..``maximum``; a dead instance is replaced."""

    def __init__(
        self,
        rig: Rig,
        *,
        initial: float = 0.2,
        maximum: float = 4.0,
        request_timeout: float = 120.0,
        deadline: float | None = None,
    ) -> None:
        self.rig = rig
        self.initial = initial
        self.maximum = maximum
        self.request_timeout = request_timeout
        self.deadline = deadline
        self._local = threading.local()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.sweep_seconds: list[float] = []

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._local.session = session
        return session

    def attempt(self, target: str, headers: Mapping[str, str], body: bytes) -> str:
        """One delivery attempt: ``"2xx"``-style status text, or the connection error's class name."""
        try:
            url = self.rig.url(target)
            answer = self._session().post(
                url + "/", headers=dict(headers), data=body, timeout=self.request_timeout
            )
        except requests.RequestException as exc:
            self._local.session = None  # a broken keep-alive connection is not reused
            return exc.__class__.__name__
        return str(answer.status_code)

    def deliver(self, event: Event, target: str = "on_object_finalized") -> Delivery:
        """Deliver until acknowledged (2xx) or the deadline passes."""
        delivery = Delivery(event, target)
        headers, body = event.http()
        delay = self.initial
        while True:
            outcome = self.attempt(target, headers, body)
            delivery.outcomes.append(outcome)
            with self._lock:
                self.counts["deliveries"] += 1
                self.counts["redeliveries"] += delivery.attempts > 1
                self.counts[f"answer_{outcome}"] += 1
            if outcome.startswith("2"):
                delivery.acked = True
                return delivery
            if not outcome.isdigit() and not self.rig.alive(target):
                self.rig.replace_instance(target)  # the instance died: the platform starts another
                with self._lock:
                    self.counts["instances_replaced"] += 1
            if self.deadline is not None and time.monotonic() + delay > self.deadline:
                return delivery
            time.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self.maximum)

    def sweep(self) -> str:
        """One Cloud Scheduler tick delivered to ``check_runs`` (not retried: the next tick comes)."""
        headers, body = scheduler_tick()
        began = time.monotonic()
        outcome = self.attempt("check_runs", headers, body)
        with self._lock:
            self.sweep_seconds.append(time.monotonic() - began)
            self.counts["sweeps"] += 1
            self.counts["sweeps_failed"] += not outcome.startswith("2")
        if not outcome.isdigit() and not self.rig.alive("check_runs"):
            self.rig.replace_instance("check_runs")
            with self._lock:
                self.counts["instances_replaced"] += 1
        return outcome


# ------------------------------------------------------------------------------------------ verdict


@dataclass
class Observed:
    """What reached the services, and the exactly-once verdict per event (by object name)."""

    jobs: list[dict[str, Any]]  # {"backend", "input", "raw"} for every job/run/instance of every emulator
    launch_requests: Counter[str]  # "<backend> <answer status>" -> count
    runs: list[dict[str, Any]]
    active_markers: int
    completions: list[dict[str, Any]]

    @classmethod
    def collect(cls, rig: Rig, completions: Sequence[dict[str, Any]] = ()) -> Observed:
        jobs: list[dict[str, Any]] = []
        launches: Counter[str] = Counter()
        for backend, handle in rig.emulators.items():
            jobs += kit(backend).jobs(handle.url)
            launches += kit(backend).launch_statuses(handle.url)
        runs, active = cls.ledger_runs(rig)
        return cls(jobs, launches, runs, active, list(completions))

    @staticmethod
    def ledger_runs(rig: Rig) -> tuple[list[dict[str, Any]], int]:
        """Run records (``<prefix>runs/*.json``, read straight from fake-gcs-server) and active markers."""
        client = storage_client(rig.gcs.url)
        runs = []
        for blob in client.list_blobs(LEDGER_BUCKET, prefix=f"{LEDGER_PREFIX}runs/"):
            raw = blob.download_as_bytes()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {}
            runs.append({"object": blob.name, "state": doc.get("state"), "raw": raw.decode(errors="replace")})
        active = sum(1 for _ in client.list_blobs(LEDGER_BUCKET, prefix=f"{LEDGER_PREFIX}active/"))
        return runs, active

    def verdict(self, events: Sequence[Event]) -> dict[str, Any]:
        by_input: dict[str, Event] = {e.input_file: e for e in events}
        jobs_per: Counter[str] = Counter()
        for job in self.jobs:
            jobs_per[job["input"]] += 1
        finished: set[str] = set()
        runs_per: Counter[str] = Counter()
        for run in self.runs:
            for e in events:
                if json.dumps(e.name)[1:-1] in run["raw"]:
                    runs_per[e.input_file] += 1
                    if run["state"] in TERMINAL:
                        finished.add(e.input_file)
                    break
        completions_per: Counter[str] = Counter()
        per_completion_id: Counter[str] = Counter()
        states: Counter[str] = Counter()
        runs_of_job: dict[str, set[str]] = {}
        input_of_job = {job["id"]: job["input"] for job in self.jobs}
        wrong_job = 0
        for message in self.completions:
            data = message["event"].get("data") or {}
            job_id = (data.get("job") or {}).get("id")
            if job_id:
                runs_of_job.setdefault(str(job_id), set()).add(str(data.get("run_key")))
                announced = (data.get("parameters") or {}).get("inputFile")
                wrong_job += input_of_job.get(str(job_id)) != announced
            completions_per[(data.get("parameters") or {}).get("inputFile", "")] += 1
            per_completion_id[str(message["event"].get("id"))] += 1
            states[str(data.get("state"))] += 1
        lost = [
            key for key in by_input if jobs_per[key] == 0 or key not in finished or completions_per[key] == 0
        ]
        return {
            "events": len(events),
            "events_lost": len(lost),
            "events_without_job": sum(1 for k in by_input if jobs_per[k] == 0),
            "events_without_finished_run": sum(1 for k in by_input if k not in finished),
            "events_without_completion": sum(1 for k in by_input if completions_per[k] == 0),
            "duplicate_jobs": sum(max(0, jobs_per[k] - 1) for k in by_input),
            "events_with_duplicate_jobs": sum(1 for k in by_input if jobs_per[k] > 1),
            "duplicate_completions": sum(max(0, completions_per[k] - 1) for k in by_input),
            "duplicate_completion_ids": sum(max(0, n - 1) for n in per_completion_id.values()),
            "duplicate_run_records": sum(max(0, runs_per[k] - 1) for k in by_input),
            # one backend job announced as the job of several runs: a run adopted another run's job
            "jobs_shared_by_runs": sum(1 for runs in runs_of_job.values() if len(runs) > 1),
            # a completion naming a job that does not exist, or that was launched for another event
            "completions_naming_a_wrong_job": wrong_job,
            "jobs": len(self.jobs),
            "stray_jobs": sum(n for k, n in jobs_per.items() if k not in by_input),
            "completions": len(self.completions),
            "completion_states": dict(states),
            "launch_requests_by_answer": dict(sorted(self.launch_requests.items())),
            "jobs_by_backend": dict(Counter(j["backend"] for j in self.jobs)),
            "ledger_runs": len(self.runs),
            "active_markers_left": self.active_markers,
            "lost_examples": [
                {
                    "name": by_input[k].name,
                    "jobs": jobs_per[k],
                    "run_states": [
                        r["state"] for r in self.runs if json.dumps(by_input[k].name)[1:-1] in r["raw"]
                    ],
                    "completions": completions_per[k],
                }
                for k in lost[:5]
            ],
            "duplicate_job_examples": [by_input[k].name for k in by_input if jobs_per[k] > 1][:5],
        }


def exactly_once(verdict: Mapping[str, Any]) -> bool:
    """The goal: nothing lost, no duplicate job or completion, every run following its own job."""
    return all(
        verdict[k] == 0
        for k in (
            "events_lost",
            "duplicate_jobs",
            "duplicate_completions",
            "duplicate_completion_ids",
            "jobs_shared_by_runs",
            "completions_naming_a_wrong_job",
        )
    )


class CompletionWatch:
    """Pulls the completion topic's watch subscription; keeps every message (duplicates included)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def poll(self) -> list[dict[str, Any]]:
        got = pull_all(
            LOCAL_PROJECT,
            COMPLETION_SUB,
            max_messages=1000,
            timeout=0.2,
            min_messages=0,
            emulator_host=self.rig.pubsub.host,
        )
        fresh = [
            {
                "event": json.loads(m["data"]),
                "attributes": dict(m["attributes"]),
                "message_id": m["message_id"],
            }
            for m in got
        ]
        with self._lock:
            self.messages.extend(fresh)
            return list(self.messages)

    def completed(self) -> set[str]:
        """Poll, then the inputs whose completion arrived."""
        self.poll()
        return self.inputs_completed()

    def inputs_completed(self) -> set[str]:
        with self._lock:
            return {
                str(((m["event"].get("data") or {}).get("parameters") or {}).get("inputFile"))
                for m in self.messages
            }


def settle(
    wanted: set[str],
    done: Callable[[], set[str]],
    idle: Callable[[], bool],
    *,
    deadline: float,
    stall_seconds: float,
    every: float = 0.5,
) -> bool:
    """Wait until every ``wanted`` input is ``done`` and the services are ``idle`` (nothing a sweep
    could still republish), or until the deadline; return True when it **stalled**: idle, some still
    missing, and nothing new done for ``stall_seconds`` (nothing is left that could produce them)."""
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = done()
        if len(got) != last:
            last, last_change = len(got), time.monotonic()
        quiet = idle()
        if quiet and wanted <= got:
            return False
        if quiet and time.monotonic() - last_change > stall_seconds:
            return True
        time.sleep(every)
    return False


@contextlib.contextmanager
def sweeping(platform: Platform, every: float = 1.0, in_flight: int = 2) -> Iterator[threading.Event]:
    """Fire a scheduler tick at ``check_runs`` every ``every`` s until the block exits, as Cloud Scheduler
    does (it does not wait for the previous sweep), but with at most ``in_flight`` sweeps running."""
    stop = threading.Event()
    slots = threading.BoundedSemaphore(in_flight)

    def one() -> None:
        try:
            with contextlib.suppress(Exception):
                platform.sweep()
        finally:
            slots.release()

    def loop() -> None:
        workers: list[threading.Thread] = []
        while not stop.is_set():
            if slots.acquire(blocking=False):
                worker = threading.Thread(target=one, name="sweep", daemon=True)
                worker.start()
                workers.append(worker)
            stop.wait(every)
        for worker in workers:
            worker.join(timeout=180)

    thread = threading.Thread(target=loop, name="scheduler", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=200)


def report_run(
    figures: dict[str, Any],
    module: str,
    argv: Sequence[str] | None,
    write: Callable[[dict[str, Any], str], Any] | None,
) -> int:
    """The end of a suite's ``main``: print the figures, write the results files (unless ``write`` is
    None) with the command that reproduces them, exit 0 only when the suite's goal was met."""
    import shlex
    import sys

    print(json.dumps(figures, indent=2, sort_keys=True))
    if write is not None:
        argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        write(figures, f"python -m {module} {argv_text}".strip())
    return 0 if figures["goal_met"] else 1
