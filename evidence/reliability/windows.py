"""Windows under the fault and crash suites: every object in exactly one launched manifest.

    python -m evidence.reliability.windows crashes --per-boundary 2 [--backends dataflow] [--no-write]
    python -m evidence.reliability.windows faults --events 1000 --window 100 --rate 0.1 \\
        --kinds 429,503,timeout,reset,lost --seed 1 --duplicates 0.2 [--parallel 8] [--no-write]

The same rig as :mod:`evidence.reliability.crashes` and :mod:`evidence.reliability.faults` (real
functions under functions-framework, fake-gcs-server and the backend emulators behind fault
proxies, the platform redelivering until acknowledged and firing ``check_runs``), with every
storage trigger batched: ``batch: {max_items: W, max_wait: 2s, key: ...}`` and the pipeline's
``inputFile`` set to ``{batch.manifest}``.

**crashes**: for every window boundary below and every trial, a fresh window key (its own folder)
receives three objects (two for the sweep's boundary, closed by ``max_wait``); when the boundary's
request has been applied upstream and before its answer goes back, the function that sent it is
SIGKILLed (its whole process group); the platform starts a new instance and redelivers.

**faults**: ``--events`` distinct objects, ``--parallel`` at a time, a ``--duplicates`` fraction
delivered twice, while the ledger and backend proxies inject ``--kinds`` faults at ``--rate``.

The verdict is read from the services only: every job's ``inputFile`` names a manifest, read from
fake-gcs-server directly; an object is **lost** when no launched manifest lists it or that
manifest's completion never came, **doubled** when it is listed by two launched manifests or its
manifest launched two jobs; completions are counted per manifest, one per Pub/Sub message id (a
message the watch pulled twice is reported apart, as ``completion_messages_pulled_twice``). Results go to
``results/windows-crashes.*`` or ``results/windows-faults.*``; exit 0 only when nothing was lost or
doubled (and, for crashes, every boundary was reached).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from evidence.reliability.rig import (
    BACKENDS,
    LANDING_BUCKET,
    LEDGER_BUCKET,
    LEDGER_PREFIX,
    CompletionWatch,
    Event,
    Platform,
    Rig,
    RigSettings,
    config_doc,
    event_name,
    report_run,
    settle,
    sweeping,
)
from local.faultproxy import KINDS, Exchange, even_rates, parse_kinds
from local.kits import kit
from local.services import storage_client

CRASH_SETTINGS = RigSettings(lease="3s", publish_lease="2s", launch_budget="6s", http_timeout="1,2")
MAX_WAIT = "2s"
LEDGER_MATCH = r"^(GET|POST|PUT|PATCH|DELETE) /(upload/)?(download/)?storage/v1/b/"
STALL_SECONDS = 15.0


def batched_config(settings: RigSettings, window: int, key: str) -> dict[str, Any]:
    """The rig's config with every storage trigger batched and its pipeline reading the manifest."""
    doc = config_doc(settings)
    for trigger in doc["triggers"].values():
        trigger["batch"] = {"max_items": window, "max_wait": MAX_WAIT, **({"key": key} if key else {})}
    for pipeline in doc["pipelines"].values():
        pipeline["parameters"] = {"inputFile": "{batch.manifest}"}
    return doc


class WindowRig(Rig):
    """A :class:`Rig` whose functions run the batched config."""

    def __init__(self, settings: RigSettings, *, window: int, key: str = "", keep_dir: bool = False) -> None:
        super().__init__(settings, keep_dir=keep_dir)
        self.window, self.key = window, key

    def _start_functions(self) -> None:
        doc = batched_config(self.settings, self.window, self.key)
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        super()._start_functions()

    def open_windows(self) -> int:
        """Window markers left (read directly): while one is left, a sweep may still launch."""
        client = storage_client(self.gcs.url)
        return sum(1 for _ in client.list_blobs(LEDGER_BUCKET, prefix=f"{LEDGER_PREFIX}windows-open/"))


class Manifests:
    """Manifests read straight from fake-gcs-server (cached: a manifest never changes)."""

    def __init__(self, rig: Rig) -> None:
        self.client = storage_client(rig.gcs.url)
        self.cache: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def names(self, uri: str) -> list[str]:
        with self._lock:
            if uri not in self.cache:
                bucket, _, name = uri[len("gs://") :].partition("/")
                blob = self.client.bucket(bucket).blob(name)
                if not blob.exists():
                    return []
                lines = blob.download_as_bytes().decode().splitlines()
                self.cache[uri] = [json.loads(line)["name"] for line in lines]
            return self.cache[uri]

    def completed_names(self, watch: CompletionWatch) -> set[str]:
        return {n for uri in watch.inputs_completed() if uri.startswith("gs://") for n in self.names(uri)}


def verdict(rig: Rig, events: Sequence[Event], completions: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The verdict over ``events``: the manifests listing any of them, their jobs and completions."""
    manifests = Manifests(rig)
    names = [e.name for e in events]
    ours = set(names)
    jobs = [job for backend, handle in rig.emulators.items() for job in kit(backend).jobs(handle.url)]
    every_manifest = Counter(str(job["input"]) for job in jobs)
    jobs_per_manifest = Counter(
        {uri: n for uri, n in every_manifest.items() if ours & set(manifests.names(uri))}
    )
    listed: Counter[str] = Counter()
    for uri in jobs_per_manifest:
        listed.update(manifests.names(uri))
    completions_per_manifest: Counter[str] = Counter()
    per_id: Counter[str] = Counter()
    seen: dict[str, list[dict[str, Any]]] = {}
    messages: set[str] = set()
    redelivered = 0
    for message in completions:
        # one publish pulled twice (the watch's ack came too late) is not a second completion
        if message.get("message_id") in messages:
            redelivered += 1
            continue
        messages.add(str(message.get("message_id")))
        data = message["event"].get("data") or {}
        uri = (data.get("parameters") or {}).get("inputFile", "")
        if uri in jobs_per_manifest:
            completions_per_manifest[uri] += 1
            per_id[str(message["event"].get("id"))] += 1
            seen.setdefault(uri, []).append(
                {"id": message["event"].get("id"), "state": data.get("state"), "run_key": data.get("run_key"),
                 "message_id": message.get("message_id"), "attempts": data.get("attempts")}
            )  # fmt: skip
    completed = {n for uri in completions_per_manifest for n in manifests.names(uri)}
    client = storage_client(rig.gcs.url)
    written = [
        f"gs://{LEDGER_BUCKET}/{b.name}"
        for b in client.list_blobs(LEDGER_BUCKET, prefix=f"{LEDGER_PREFIX}manifests/")
    ]
    written_ours = [uri for uri in written if ours & set(manifests.names(uri))]
    figures: dict[str, Any] = {
        "objects": len(names),
        "objects_lost": sum(1 for n in names if listed[n] == 0 or n not in completed),
        "objects_in_no_manifest": sum(1 for n in names if listed[n] == 0),
        "objects_in_two_manifests": sum(1 for n in names if listed[n] > 1),
        "windows_launched": len(jobs_per_manifest),
        "jobs": sum(jobs_per_manifest.values()),
        "duplicate_jobs": sum(n - 1 for n in jobs_per_manifest.values() if n > 1),
        "completions": sum(completions_per_manifest.values()),
        "duplicate_completions": sum(n - 1 for n in completions_per_manifest.values() if n > 1),
        "duplicate_completion_ids": sum(n - 1 for n in per_id.values() if n > 1),
        "completion_messages_pulled_twice": redelivered,
        "duplicate_completion_examples": [seen[u] for u, n in completions_per_manifest.items() if n > 1][:3],
        "manifests_written": len(written_ours),
        "manifests_never_launched": sum(1 for uri in written_ours if uri not in jobs_per_manifest),
        "window_sizes": dict(sorted(Counter(len(manifests.names(u)) for u in jobs_per_manifest).items())),
        "stray_objects": sum(n for name, n in listed.items() if name not in ours),
    }
    figures["objects_doubled"] = figures["objects_in_two_manifests"] + sum(
        len(manifests.names(u)) * (n - 1) for u, n in jobs_per_manifest.items() if n > 1
    )
    return figures


def goal(figures: dict[str, Any]) -> bool:
    keys = ("objects_lost", "objects_doubled", "duplicate_jobs", "duplicate_completions", "stray_objects")
    return all(figures[k] == 0 for k in keys) and figures["manifests_never_launched"] == 0


# ------------------------------------------------------------------------------------------ crashes
def _ledger_write(proxy: str, ex: Exchange, *needles: bytes) -> bool:
    return (
        proxy == "ledger"
        and ex.method in ("POST", "PUT", "PATCH")
        and f"/b/{LEDGER_BUCKET}/o" in ex.path
        and 200 <= (ex.status or 0) < 300
        and all(n in ex.body for n in needles)
    )


def _launch(proxy: str, ex: Exchange) -> bool:
    return (
        proxy in BACKENDS
        and ex.method == "POST"
        and kit(proxy).is_launch_path(ex.path)
        and 200 <= (ex.status or 0) < 300
    )


@dataclass(frozen=True)
class Boundary:
    name: str
    target: str  # the function killed
    objects: int  # objects delivered in a trial (3 fill the window; 2 leave it to max_wait)
    when: Callable[[str, Exchange], bool]


# By what crosses the proxies: the window documents are JSON with sorted keys (": " separators).
BOUNDARIES: tuple[Boundary, ...] = (
    Boundary("after_membership_created", "on_object_finalized", 3,
             lambda p, ex: _ledger_write(p, ex, b"/members/")),
    Boundary("after_member_added", "on_object_finalized", 3,
             lambda p, ex: _ledger_write(p, ex, b'"state": "OPEN"', b'"members": [{')),
    Boundary("after_window_sealed", "on_object_finalized", 3,
             lambda p, ex: _ledger_write(p, ex, b'"state": "CLOSING"')),
    Boundary("after_manifest_written", "on_object_finalized", 3,
             lambda p, ex: _ledger_write(p, ex, b"/manifests/")),
    Boundary("after_window_launch_request", "on_object_finalized", 3, _launch),
    Boundary("after_window_marked_launched", "on_object_finalized", 3,
             lambda p, ex: _ledger_write(p, ex, b'"state": "LAUNCHED"')),
    Boundary("sweep_after_max_wait_seal", "check_runs", 2,
             lambda p, ex: _ledger_write(p, ex, b'"reason": "max_wait"', b'"state": "CLOSING"')),
)  # fmt: skip
BY_NAME = {b.name: b for b in BOUNDARIES}


@dataclass
class Trial:
    boundary: Boundary
    backend: str
    events: list[Event]
    crashed_at: float | None = None
    crash_request: str | None = None
    recovered_seconds: float | None = None
    outcome: dict[str, Any] = field(default_factory=dict)


class CrashHook:
    def __init__(self) -> None:
        self.rig: Rig | None = None
        self.trial: Trial | None = None
        self._lock = threading.Lock()

    def for_proxy(self, name: str) -> Callable[[Exchange], bool]:
        return lambda ex: self(name, ex)

    def __call__(self, proxy: str, ex: Exchange) -> bool:
        with self._lock:
            trial = self.trial
            if trial is None or trial.crashed_at is not None or not trial.boundary.when(proxy, ex):
                return False
            trial.crashed_at = time.monotonic()
            trial.crash_request = f"{proxy}: {ex.line} -> {ex.status}"
            assert self.rig is not None
            self.rig.kill(trial.boundary.target)
            return True


def run_crashes(
    per_boundary: int, boundaries: Sequence[Boundary], settings: RigSettings, keep: bool = False
) -> dict[str, Any]:
    started = time.monotonic()
    hook = CrashHook()
    trials: list[Trial] = []
    rig = WindowRig(settings, window=3, key="{dirname}", keep_dir=keep)
    with rig:
        hook.rig = rig
        rig.start(hooks={name: hook.for_proxy(name) for name in ("ledger", *BACKENDS)})
        platform = Platform(rig, initial=0.2, maximum=2.0)
        watch = CompletionWatch(rig)
        manifests = Manifests(rig)
        for backend in settings.backends:
            for boundary in boundaries:
                for i in range(per_boundary):
                    folder = f"{boundary.name}/{i:03d}"
                    events = [
                        Event.storage(LANDING_BUCKET, event_name(backend, f"{folder}/{n}"))
                        for n in range(boundary.objects)
                    ]
                    trial = Trial(boundary, backend, events)
                    hook.trial = trial
                    for event in events:
                        platform.deliver(event)
                    deadline = time.monotonic() + 60
                    wanted = {e.name for e in events}
                    while time.monotonic() < deadline:
                        platform.sweep()
                        watch.poll()
                        if wanted <= manifests.completed_names(watch):
                            break
                        time.sleep(0.3)
                    if trial.crashed_at is not None:
                        trial.recovered_seconds = round(time.monotonic() - trial.crashed_at, 2)
                    hook.trial = None
                    trials.append(trial)
        time.sleep(3.0)  # a wrongly repeated completion or launch would show up now
        for _ in range(3):
            platform.sweep()
        completions = watch.poll()
        overall = verdict(rig, [e for t in trials for e in t.events], completions)
        for trial in trials:
            trial.outcome = verdict(rig, trial.events, completions)
        instances = dict(rig.instances_started)
    rows = []
    for backend in settings.backends:
        for boundary in boundaries:
            mine = [t for t in trials if t.boundary is boundary and t.backend == backend]
            rows.append(
                {
                    "boundary": boundary.name,
                    "backend": backend,
                    "killed": boundary.target,
                    "objects": sum(len(t.events) for t in mine),
                    "crashes": sum(t.crashed_at is not None for t in mine),
                    "lost": sum(t.outcome["objects_lost"] for t in mine),
                    "doubled": sum(t.outcome["objects_doubled"] for t in mine),
                    "windows": sum(t.outcome["windows_launched"] for t in mine),
                    "duplicate_jobs": sum(t.outcome["duplicate_jobs"] for t in mine),
                    "max_recovery_seconds": max((t.recovered_seconds or 0.0 for t in mine), default=0.0),
                    "crash_request": next((t.crash_request for t in mine if t.crash_request), None),
                }
            )
    reached = all(t.crashed_at is not None for t in trials)
    return {
        "goal_met": reached and goal(overall),
        "every_boundary_reached": reached,
        "per_boundary": per_boundary,
        "boundaries": rows,
        **overall,
        "deliveries": platform.counts["deliveries"],
        "redeliveries": platform.counts["redeliveries"],
        "instances_replaced": platform.counts["instances_replaced"],
        "function_instances": instances,
        "sweeps": platform.counts["sweeps"],
        "settings": {
            "window": 3,
            "max_wait": MAX_WAIT,
            "lease": settings.lease,
            "backends": list(settings.backends),
        },
        "wall_seconds": round(time.monotonic() - started, 2),
    }


# ------------------------------------------------------------------------------------------- faults
@dataclass
class FaultOptions:
    events: int = 1000
    window: int = 100
    rate: float = 0.1
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    seed: int = 1
    duplicates: float = 0.2
    parallel: int = 8
    max_seconds: float = 900.0
    settings: RigSettings = field(default_factory=RigSettings)
    keep: bool = False


def run_faults(options: FaultOptions) -> dict[str, Any]:
    rng = random.Random(options.seed)
    started = time.monotonic()
    rig = WindowRig(options.settings, window=options.window, keep_dir=options.keep)
    with rig:
        rig.start(seed=options.seed)
        rates = even_rates(options.rate, options.kinds)
        for name, proxy in rig.proxies.items():
            proxy.set_faults(rates, match=LEDGER_MATCH if name == "ledger" else None)
        backends = options.settings.backends
        events = [
            Event.storage(LANDING_BUCKET, event_name(backends[i % len(backends)], f"w{options.seed}/{i:05d}"))
            for i in range(options.events)
        ]
        twice = [rng.random() < options.duplicates for _ in events]
        deadline = started + options.max_seconds
        platform = Platform(rig, deadline=deadline)
        watch = CompletionWatch(rig)
        manifests = Manifests(rig)
        wanted = {e.name for e in events}
        delivering = time.monotonic()
        with sweeping(platform, every=1.0):
            with cf.ThreadPoolExecutor(options.parallel, thread_name_prefix="platform") as pool:
                futures = [pool.submit(platform.deliver, e) for e in events]
                futures += [
                    pool.submit(platform.deliver, e) for e, again in zip(events, twice, strict=True) if again
                ]
                for fut in cf.as_completed(futures):
                    fut.result()
            delivered_at = time.monotonic()
            stalled = settle(
                wanted,
                lambda: (watch.poll(), manifests.completed_names(watch))[1],
                lambda: rig.active_markers() == 0 and rig.open_windows() == 0,
                deadline=deadline,
                stall_seconds=STALL_SECONDS,
            )
            completed_at = time.monotonic()
            time.sleep(3.0)
        for proxy in rig.proxies.values():
            proxy.clear_faults()
        figures = verdict(rig, events, watch.poll())
        injected: Counter[str] = Counter()
        for proxy in rig.proxies.values():
            injected.update(proxy.counters()["injected"])
        instances = dict(rig.instances_started)
    return {
        "goal_met": goal(figures),
        **figures,
        "window": options.window,
        "duplicates_delivered": sum(twice),
        "deliveries": platform.counts["deliveries"],
        "redeliveries": platform.counts["redeliveries"],
        "sweeps": platform.counts["sweeps"],
        "function_instances": instances,
        "fault_rate": options.rate,
        "fault_kinds": options.kinds,
        "faults_injected": dict(injected),
        "faults_injected_total": sum(injected.values()),
        "seed": options.seed,
        "parallel": options.parallel,
        "delivery_seconds": round(delivered_at - delivering, 2),
        "settle_seconds": round(completed_at - delivered_at, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
        "stalled": stalled,
        "timed_out": completed_at >= deadline,
    }


# ---------------------------------------------------------------------------------------------- cli
def write_results(
    suite: str, figures: dict[str, Any], command: str, out_dir: Path | None = None, *, name: str | None = None
) -> tuple[Path, Path]:
    from evidence.bench.report import write

    notes = (
        f"{figures['objects']} objects, {figures['windows_launched']} windows launched, {figures['jobs']} jobs, "
        f"{figures['completions']} completions; lost {figures['objects_lost']}, doubled {figures['objects_doubled']}, "
        f"duplicate jobs {figures['duplicate_jobs']}, duplicate completions {figures['duplicate_completions']}; "
        f"window sizes {figures['window_sizes']}; wall time {figures['wall_seconds']} s.\n\n"
        "Judged from the backend emulators (every job's inputFile is its window's manifest), the manifests "
        "read straight from fake-gcs-server, and the completion topic."
    )
    table = figures.get("boundaries") or [
        {k: figures[k] for k in ("objects", "window", "windows_launched", "objects_lost", "objects_doubled",
                                 "duplicate_jobs", "duplicate_completions", "faults_injected_total")}
    ]  # fmt: skip
    title = "Windows under crash injection" if suite == "crashes" else "Windows under fault injection"
    return write(
        name or f"windows-{suite}",
        figures,
        command=command,
        table=table,
        title=title,
        notes=notes,
        out_dir=out_dir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evidence.reliability.windows", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="suite", required=True)
    crash = sub.add_parser("crashes", help="SIGKILL at every window step boundary")
    crash.add_argument("--per-boundary", type=int, default=2)
    crash.add_argument("--boundaries", default=",".join(BY_NAME), help=f"subset of {','.join(BY_NAME)}")
    fault = sub.add_parser("faults", help="many objects into windows while the services misbehave")
    fault.add_argument("--events", type=int, default=1000)
    fault.add_argument("--window", type=int, default=100, help="batch.max_items")
    fault.add_argument("--rate", type=float, default=0.1)
    fault.add_argument("--kinds", type=parse_kinds, default=list(KINDS))
    fault.add_argument("--seed", type=int, default=1)
    fault.add_argument("--duplicates", type=float, default=0.2)
    fault.add_argument("--parallel", type=int, default=8)
    fault.add_argument("--max-seconds", type=float, default=900.0)
    for p in (crash, fault):
        p.add_argument(
            "--backends", default="dataflow", help=f"comma-separated subset of {','.join(BACKENDS)}"
        )
        p.add_argument("--no-write", action="store_true", help="print the figures only")
        p.add_argument("--results", help="name of the results files (default: windows-<suite>)")
        p.add_argument("--keep", action="store_true", help="keep the rig's work dir (logs)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if args.suite == "crashes":
        chosen = [BY_NAME[n.strip()] for n in args.boundaries.split(",") if n.strip()]
        figures = run_crashes(
            args.per_boundary, chosen, replace(CRASH_SETTINGS, backends=backends), args.keep
        )
    else:
        options = FaultOptions(
            events=args.events,
            window=args.window,
            rate=args.rate,
            kinds=args.kinds,
            seed=args.seed,
            duplicates=args.duplicates,
            parallel=args.parallel,
            max_seconds=args.max_seconds,
            settings=RigSettings(backends=backends),
            keep=args.keep,
        )
        figures = run_faults(options)
    suite = args.suite

    def write(figs: dict[str, Any], command: str) -> Any:
        return write_results(suite, figs, command, name=args.results)

    return report_run(figures, "evidence.reliability.windows", argv, None if args.no_write else write)


if __name__ == "__main__":
    raise SystemExit(main())
