"""Crash injection: SIGKILL the function process at each step boundary, redeliver, check exactly once.

    python -m evidence.reliability.crashes --per-boundary 3 [--boundaries after_claim,after_launch_request]
        [--backends dataflow,datafusion,fabric] [--functions-dir CHECKOUT] [--keep] [--no-write]

For every boundary and every one of ``--per-boundary`` fresh events, the suite (playing the
platform, :mod:`reliability.rig`) delivers the event; when the request that marks the boundary has
been applied by the service behind a fault proxy, and *before* its answer goes back, the proxy's
``after_upstream`` hook SIGKILLs the whole process group of the function that sent it (gunicorn
master and worker: the instance is gone, mid-request). The platform then does what Cloud Functions
does: it starts a new instance and redelivers the same event (same id) until acknowledged; Cloud
Scheduler's sweeps go to ``check_runs`` (also replaced when killed) until the event's completion is
published. The verdict per event: exactly one job in the Dataflow emulator, one finished run in the
ledger, exactly one completion message.

Boundaries are defined by what crosses the proxies, not by the functions' internals, so they stay
valid when the write path changes; they live in :data:`BOUNDARIES`, one line each:

- ``after_claim``: the first ledger object write of the run was applied;
- ``after_launch_request``: the backend's launch request was applied (the job exists);
- ``after_ledger_update``: the first ledger object write after the launch request was applied;
- ``between_completion_write_and_publish``: the ledger write recording the completion decision
  (``"completion": {..., "published": false}``) was applied; the kill hits ``check_runs`` before it
  publishes, so the publish lease (``settings.publish_lease``) must expire and a later sweep publish.

Short leases (``settings.ledger.lease`` 3 s, ``settings.publish_lease`` 2 s) keep recovery quick.
Figures go to ``results/crashes.json`` and ``results/crashes.md``; exit status 0 only when every
boundary was reached every time and every event ended with exactly one job and one completion.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evidence.reliability.rig import (
    BACKENDS,
    LANDING_BUCKET,
    LEDGER_BUCKET,
    CompletionWatch,
    Event,
    Platform,
    Rig,
    RigSettings,
    event_name,
    exactly_once,
    report_run,
)
from local.faultproxy import Exchange
from local.kits import kit

CRASH_SETTINGS = RigSettings(lease="3s", publish_lease="2s", launch_budget="6s", http_timeout="1,2")

_LEDGER_OBJECTS = re.compile(rf"/b/{LEDGER_BUCKET}/o(\?|/|$)")
_UNPUBLISHED_COMPLETION = re.compile(rb'"completion"\s*:\s*\{[^{}]*"published"\s*:\s*false')


def ledger_write(proxy: str, ex: Exchange) -> bool:
    """An object write (upload) in the ledger bucket that the store applied (2xx)."""
    return (
        proxy == "ledger"
        and ex.method in ("POST", "PUT", "PATCH")
        and bool(_LEDGER_OBJECTS.search(ex.path))
        and 200 <= (ex.status or 0) < 300
    )


def launch_request(proxy: str, ex: Exchange) -> bool:
    """A launch (run, start) request the backend accepted: the job now exists."""
    return (
        proxy in BACKENDS
        and ex.method == "POST"
        and kit(proxy).is_launch_path(ex.path)
        and 200 <= (ex.status or 0) < 300
    )


def completion_decided_unpublished(proxy: str, ex: Exchange) -> bool:
    """A ledger write whose record holds the completion decision but not yet its publication."""
    return ledger_write(proxy, ex) and bool(_UNPUBLISHED_COMPLETION.search(ex.body))


@dataclass
class Seen:
    """What crossed the proxies so far in one trial (before the current exchange)."""

    ledger_writes: int = 0
    launches: int = 0
    ledger_writes_after_launch: int = 0

    def note(self, proxy: str, ex: Exchange) -> None:
        if launch_request(proxy, ex):
            self.launches += 1
        elif ledger_write(proxy, ex):
            self.ledger_writes += 1
            self.ledger_writes_after_launch += self.launches > 0


@dataclass(frozen=True)
class Boundary:
    name: str
    target: str  # the function process killed
    phase: str  # "launch": during the event's delivery; "sweep": during check_runs
    when: Callable[[Seen, str, Exchange], bool]


# The step boundaries, by what crosses the proxies. Adjust here if a boundary's marker changes.
BOUNDARIES: tuple[Boundary, ...] = (
    Boundary("after_claim", "on_object_finalized", "launch",
             lambda seen, p, ex: ledger_write(p, ex) and seen.ledger_writes == 0),
    Boundary("after_launch_request", "on_object_finalized", "launch",
             lambda seen, p, ex: launch_request(p, ex)),
    Boundary("after_ledger_update", "on_object_finalized", "launch",
             lambda seen, p, ex: ledger_write(p, ex) and seen.launches > 0 and seen.ledger_writes_after_launch == 0),
    Boundary("between_completion_write_and_publish", "check_runs", "sweep",
             lambda seen, p, ex: completion_decided_unpublished(p, ex)),
)  # fmt: skip
BY_NAME = {b.name: b for b in BOUNDARIES}


@dataclass
class Trial:
    boundary: Boundary
    event: Event
    seen: Seen = field(default_factory=Seen)
    armed: bool = False
    crashed_at: float | None = None
    crash_request: str | None = None
    delivery_attempts: int = 0
    recovered_seconds: float | None = None
    outcome: dict[str, Any] = field(default_factory=dict)


class CrashHook:
    """The proxies' ``after_upstream`` hook: kills the trial's target when its boundary is crossed."""

    def __init__(self) -> None:
        self.rig: Rig | None = None
        self.trial: Trial | None = None
        self._lock = threading.Lock()

    def for_proxy(self, name: str) -> Callable[[Exchange], bool]:
        return lambda ex: self(name, ex)

    def __call__(self, proxy: str, ex: Exchange) -> bool:
        with self._lock:
            trial = self.trial
            if trial is None or not trial.armed or trial.crashed_at is not None:
                if trial is not None:
                    trial.seen.note(proxy, ex)
                return False
            fire = trial.boundary.when(trial.seen, proxy, ex)
            trial.seen.note(proxy, ex)
            if not fire:
                return False
            trial.crashed_at = time.monotonic()
            trial.crash_request = f"{proxy}: {ex.line} -> {ex.status}"
            assert self.rig is not None
            self.rig.kill(trial.boundary.target)  # SIGKILL before the answer goes back
            return True  # and the answer is dropped


def run_trial(rig: Rig, platform: Platform, hook: CrashHook, watch: CompletionWatch, trial: Trial) -> None:
    boundary, event = trial.boundary, trial.event
    deadline = time.monotonic() + 60
    hook.trial = trial
    if boundary.phase == "launch":
        trial.armed = True
    delivery = platform.deliver(event)
    trial.delivery_attempts = delivery.attempts
    if boundary.phase == "sweep":
        trial.armed = True
    while time.monotonic() < deadline:
        platform.sweep()
        watch.poll()
        if event.input_file in watch.inputs_completed():
            break
        time.sleep(0.3)
    if trial.crashed_at is not None:
        trial.recovered_seconds = round(time.monotonic() - trial.crashed_at, 2)
    hook.trial = None


def run(
    per_boundary: int,
    boundaries: Sequence[Boundary] = BOUNDARIES,
    settings: RigSettings = CRASH_SETTINGS,
    *,
    functions_dir: Path | None = None,
    keep_dir: bool = False,
) -> dict[str, Any]:
    started = time.monotonic()
    hook = CrashHook()
    trials: list[Trial] = []
    with Rig(settings, functions_dir=functions_dir, keep_dir=keep_dir) as rig:
        hook.rig = rig
        rig.start(hooks={name: hook.for_proxy(name) for name in ("ledger", *BACKENDS)})
        platform = Platform(rig, initial=0.2, maximum=2.0)
        watch = CompletionWatch(rig)
        for backend in settings.backends:
            for boundary in boundaries:
                for i in range(per_boundary):
                    event = Event.storage(LANDING_BUCKET, event_name(backend, f"{boundary.name}/{i:03d}"))
                    trial = Trial(boundary, event)
                    run_trial(rig, platform, hook, watch, trial)
                    trials.append(trial)
        time.sleep(_quiet(settings))  # a wrongly repeated completion would show up now
        for _ in range(3):
            platform.sweep()
        observed = rig.observe()
        observed.completions = watch.poll()
        events = [t.event for t in trials]
        verdict = observed.verdict(events)
        for trial in trials:
            per = observed.verdict([trial.event])
            trial.outcome = {k: per[k] for k in ("events_lost", "duplicate_jobs", "duplicate_completions")}
        instances = dict(rig.instances_started)
        startup = rig.startup_seconds
        work_dir = str(rig.work_dir) if keep_dir else None
    rows = []
    for backend in settings.backends:
        for boundary in boundaries:
            mine = [t for t in trials if t.boundary is boundary and t.event.backend == backend]
            rows.append(
                {
                    "boundary": boundary.name,
                    "backend": backend,
                    "killed": boundary.target,
                    "events": len(mine),
                    "crashes": sum(t.crashed_at is not None for t in mine),
                    "lost": sum(t.outcome["events_lost"] for t in mine),
                    "duplicate_jobs": sum(t.outcome["duplicate_jobs"] for t in mine),
                    "duplicate_completions": sum(t.outcome["duplicate_completions"] for t in mine),
                    "max_recovery_seconds": max((t.recovered_seconds or 0.0 for t in mine), default=0.0),
                    "crash_request": next((t.crash_request for t in mine if t.crash_request), None),
                }
            )
    crashed_everywhere = all(t.crashed_at is not None for t in trials)
    figures: dict[str, Any] = {
        "goal_met": crashed_everywhere and exactly_once(verdict),
        "every_boundary_reached": crashed_everywhere,
        "per_boundary": per_boundary,
        "boundaries": rows,
        **verdict,
        "deliveries": platform.counts["deliveries"],
        "redeliveries": platform.counts["redeliveries"],
        "instances_replaced": platform.counts["instances_replaced"],
        "function_instances": instances,
        "sweeps": platform.counts["sweeps"],
        "settings": {
            "lease": settings.lease,
            "publish_lease": settings.publish_lease,
            "launch_budget": settings.launch_budget,
            "http_timeout": settings.http_timeout,
            "emulator_speed": settings.speed,
            "backends": list(settings.backends),
        },
        "startup_seconds": round(startup, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    if work_dir:
        figures["work_dir"] = work_dir
    return figures


def _quiet(settings: RigSettings) -> float:
    from handlers.model.config import parse_duration

    return parse_duration(settings.publish_lease) + 1.0


def write_results(figures: dict[str, Any], command: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    from evidence.bench.report import write

    notes = (
        f"Totals: {figures['events']} events, {figures['jobs']} jobs, {figures['completions']} completion "
        f"messages, {figures['events_lost']} lost, {figures['duplicate_jobs']} duplicate jobs, "
        f"{figures['duplicate_completions']} duplicate completions; {figures['deliveries']} deliveries "
        f"({figures['redeliveries']} redeliveries), {figures['instances_replaced']} function instances "
        f"replaced after a kill; wall time {figures['wall_seconds']} s. Settings: {figures['settings']}.\n\n"
        "Each crash is a SIGKILL of the function's whole process group, sent by the fault proxy's "
        "after_upstream hook once the boundary's request was applied upstream and before its answer "
        "went back (`crash_request` shows the first one). Recovery = crash to the event's completion "
        "on the topic. Judged from the backend emulators, the ledger bucket and the completion topic."
    )
    return write(
        "crashes",
        figures,
        command=command,
        table=figures["boundaries"],
        title="Crash injection at step boundaries",
        notes=notes,
        out_dir=out_dir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evidence.reliability.crashes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--per-boundary", type=int, default=3, help="events (crashes) per boundary")
    parser.add_argument("--boundaries", default=",".join(BY_NAME), help=f"subset of {','.join(BY_NAME)}")
    parser.add_argument("--lease", default=CRASH_SETTINGS.lease)
    parser.add_argument("--publish-lease", default=CRASH_SETTINGS.publish_lease)
    parser.add_argument("--speed", type=float, default=CRASH_SETTINGS.speed)
    parser.add_argument(
        "--backends", default="dataflow", help=f"comma-separated subset of {','.join(BACKENDS)}"
    )
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    parser.add_argument("--functions-dir", type=Path, help="serve main.py from this checkout instead")
    parser.add_argument("--keep", action="store_true", help="keep the rig's work dir (logs) and print it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        chosen = [BY_NAME[name.strip()] for name in args.boundaries.split(",") if name.strip()]
    except KeyError as exc:
        build_parser().error(f"unknown boundary {exc}; known: {', '.join(BY_NAME)}")
    settings = RigSettings(
        lease=args.lease,
        publish_lease=args.publish_lease,
        launch_budget=CRASH_SETTINGS.launch_budget,
        http_timeout=CRASH_SETTINGS.http_timeout,
        speed=args.speed,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
    )
    figures = run(args.per_boundary, chosen, settings, functions_dir=args.functions_dir, keep_dir=args.keep)
    return report_run(
        figures, "evidence.reliability.crashes", argv, write_results if not args.no_write else None
    )


if __name__ == "__main__":
    raise SystemExit(main())
