"""Fault injection: many events through the real functions while the ledger and the backend misbehave.

    python -m evidence.reliability.faults --events 1000 --rate 0.1 --kinds 429,503,timeout,reset,lost \\
        --seed 1 --duplicates 0.2 [--parallel 8] [--status-push] [--max-seconds 900] \\
        [--backends dataflow,datafusion,fabric,dataproc] [--functions-dir CHECKOUT] [--keep] [--no-write]
        [--results NAME]

The rig (:mod:`reliability.rig`) runs the Pub/Sub emulator, fake-gcs-server (the ledger) and the
Dataflow emulator (fast clock; with ``--backends`` also the CDAP and Fabric emulators, the events
spread over them), with a :class:`~local.faultproxy.FaultProxy` in front of the ledger and
one in front of each backend; ``on_object_finalized`` and ``check_runs`` (and, with
``--status-push``, ``on_job_status``) run under functions-framework with their storage and backend
endpoints pointed at the proxies and a short ``PIPELINES_HTTP_TIMEOUT``. ``--functions-dir`` serves
``main.py`` from another checkout (to measure a branch with this suite); ``--keep`` keeps the logs.

The suite plays the platform: it delivers ``--events`` distinct storage-finalized CloudEvents,
``--parallel`` at a time; a ``--duplicates`` fraction is delivered twice (half of them concurrently,
half again just after the first delivery was acknowledged); every delivery answered non-2xx or cut
off is redelivered with the same event id after a compressed backoff. Meanwhile and afterwards it
fires scheduler ticks at ``check_runs`` until every event's completion was published and no run is
left active (or until nothing is left that could complete the rest: no active run and no new
completion for 10 s; or ``--max-seconds``), then keeps sweeping a moment so a late duplicate shows.

The verdict comes only from what reached the services: **lost** events (no job in the emulator, no
finished run in the ledger, or no completion message), **duplicate jobs** (more than one emulator
job for an event), **duplicate completions** (more than one message per event, or per completion
id, on the completion topic), and runs that adopted another event's job (a job announced for two
runs, or a completion naming a job launched for another event). Figures go to
``results/faults.json`` and ``results/faults.md`` (:func:`bench.report.write`); the exit status is
0 only when all of these are zero.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evidence.reliability.rig import (
    BACKENDS,
    LANDING_BUCKET,
    CompletionWatch,
    Event,
    Platform,
    Rig,
    RigSettings,
    event_name,
    exactly_once,
    report_run,
    settle,
    sweeping,
)
from local.faultproxy import CONFLICT_KINDS, KINDS, even_rates, parse_kinds

# Which ledger requests may be faulted (searched in "METHOD /path?query"): every object call. Every
# request reaching a backend proxy (protocol calls only: the functions never use /_emulator/) may be.
LEDGER_MATCH = r"^(GET|POST|PUT|PATCH|DELETE) /(upload/)?(download/)?storage/v1/b/"
# Once no run is active, completions still missing after this long will never come.
STALL_SECONDS = 10.0


@dataclass
class Options:
    events: int = 1000
    rate: float = 0.1
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    cover: bool = False  # every proxy injects each of its kinds once first (small runs: every kind seen)
    seed: int = 1
    duplicates: float = 0.2
    parallel: int = 8
    max_seconds: float = 900.0
    sweep_every: float = 1.0
    quiet_seconds: float = 3.0  # extra sweeping once every event completed and no run is left active
    settings: RigSettings = field(default_factory=RigSettings)
    functions_dir: Path | None = None  # serve main.py from another checkout (default: this one)
    keep_dir: bool = False


def plan_duplicates(count: int, fraction: float, rng: random.Random) -> list[str | None]:
    """Per event: ``None`` (delivered once), ``"concurrent"`` or ``"after_ack"`` (delivered twice)."""
    plan: list[str | None] = []
    for _ in range(count):
        if rng.random() < fraction:
            plan.append("concurrent" if rng.random() < 0.5 else "after_ack")
        else:
            plan.append(None)
    return plan


def run(options: Options) -> dict[str, Any]:
    """Run the suite; returns the figures (verdict, deliveries, faults, times)."""
    rng = random.Random(options.seed)
    started = time.monotonic()
    with Rig(options.settings, functions_dir=options.functions_dir, keep_dir=options.keep_dir) as rig:
        rig.start(seed=options.seed)
        rates = even_rates(options.rate, options.kinds)
        # 412 and 409 are what a contended store answers: the ledger only (a backend's 409 means
        # something else to each backend, and none of them takes a generation precondition)
        backend_rates = {k: p for k, p in rates.items() if k not in CONFLICT_KINDS}
        for name, proxy in rig.proxies.items():
            if name == "ledger":
                proxy.set_faults(rates, match=LEDGER_MATCH, cover=options.cover)
            else:
                proxy.set_faults(backend_rates, cover=options.cover)
        backends = options.settings.backends
        events = [
            Event.storage(LANDING_BUCKET, event_name(backends[i % len(backends)], f"{options.seed}/{i:05d}"))
            for i in range(options.events)
        ]
        plan = plan_duplicates(len(events), options.duplicates, rng)
        deadline = started + options.max_seconds
        platform = Platform(rig, deadline=deadline)
        watch = CompletionWatch(rig)
        wanted = {e.input_file for e in events}

        def deliver(event: Event, duplicate: str | None) -> None:
            platform.deliver(event)
            if duplicate == "after_ack":
                time.sleep(rng.uniform(0, 1.0))
                platform.deliver(event)

        delivering = time.monotonic()
        with sweeping(platform, every=options.sweep_every):
            with cf.ThreadPoolExecutor(options.parallel, thread_name_prefix="platform") as pool:
                futures: list[cf.Future[Any]] = []
                for event, duplicate in zip(events, plan, strict=True):
                    futures.append(pool.submit(deliver, event, duplicate))
                    if duplicate == "concurrent":
                        futures.append(pool.submit(platform.deliver, event))
                for fut in cf.as_completed(futures):
                    fut.result()
            delivered_at = time.monotonic()

            # Settled: every event has its completion and no run is left active (nothing a sweep
            # could still republish). Stalled: no run is active and no completion arrived for
            # STALL_SECONDS although some are missing: nothing is left that could produce them.
            stalled = settle(
                wanted,
                watch.completed,
                lambda: rig.active_markers() == 0,
                deadline=deadline,
                stall_seconds=STALL_SECONDS,
            )
            completed_at = time.monotonic()
            time.sleep(options.quiet_seconds)  # keep sweeping: in-flight duplicates show up now
        faults_off = time.monotonic()
        for proxy in rig.proxies.values():
            proxy.clear_faults()
        observed = rig.observe()
        observed.completions = watch.poll()
        verdict = observed.verdict(events)
        proxies = {name: proxy.counters() for name, proxy in rig.proxies.items()}
        startup = rig.startup_seconds
        work_dir = str(rig.work_dir) if options.keep_dir else None
        instances = dict(rig.instances_started)
    injected: Counter[str] = Counter()
    for counters in proxies.values():
        injected.update(counters["injected"])
    figures = {
        "goal_met": exactly_once(verdict),
        **verdict,
        "duplicates_planned": dict(Counter(p for p in plan if p)),
        "deliveries": platform.counts["deliveries"],
        "redeliveries": platform.counts["redeliveries"],
        "delivery_answers": {k[7:]: v for k, v in sorted(platform.counts.items()) if k.startswith("answer_")},
        "sweeps": platform.counts["sweeps"],
        "sweeps_failed": platform.counts["sweeps_failed"],
        "function_instances": instances,
        "fault_rate": options.rate,
        "fault_kinds": options.kinds,
        "fault_cover": options.cover,
        "faults_injected": dict(injected),
        "faults_injected_total": sum(injected.values()),
        "faults_by_target": {name: c["injected"] for name, c in proxies.items()},
        "requests_by_target": {
            name: {k: c[k] for k in ("requests", "matched", "forwarded", "answered", "connections")}
            for name, c in proxies.items()
        },
        "seed": options.seed,
        "parallel": options.parallel,
        "settings": {
            "lease": options.settings.lease,
            "publish_lease": options.settings.publish_lease,
            "launch_budget": options.settings.launch_budget,
            "http_timeout": options.settings.http_timeout,
            "dataflow_speed": options.settings.speed,
            "status_push": options.settings.status_push,
            "backends": list(options.settings.backends),
        },
        "startup_seconds": round(startup, 2),
        "delivery_seconds": round(delivered_at - delivering, 2),
        "settle_seconds": round(completed_at - delivered_at, 2),
        "quiet_seconds": round(faults_off - completed_at, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
        "timed_out": completed_at >= deadline,
        "stalled": stalled,
    }
    if work_dir:
        figures["work_dir"] = work_dir
    return figures


def write_results(
    figures: dict[str, Any], command: str, out_dir: Path | None = None, *, name: str = "faults"
) -> tuple[Path, Path]:
    from evidence.bench.report import markdown_table, write

    rows = [
        {"figure": "events (distinct)", "value": figures["events"]},
        {
            "figure": "deliveries / redeliveries",
            "value": f"{figures['deliveries']} / {figures['redeliveries']}",
        },
        {"figure": "duplicate deliveries planned", "value": figures["duplicates_planned"]},
        {"figure": "faults injected", "value": figures["faults_injected_total"]},
        {"figure": "**events lost**", "value": figures["events_lost"]},
        {"figure": "**duplicate jobs**", "value": figures["duplicate_jobs"]},
        {"figure": "**duplicate completions**", "value": figures["duplicate_completions"]},
        {
            "figure": "jobs / completions / ledger runs",
            "value": f"{figures['jobs']} / {figures['completions']} / {figures['ledger_runs']}",
        },
        {"figure": "completion states", "value": figures["completion_states"]},
        {"figure": "jobs by backend", "value": figures["jobs_by_backend"]},
        {"figure": "launch requests answered, by backend", "value": figures["launch_requests_by_answer"]},
        {
            "figure": "jobs shared by runs / completions naming a wrong job",
            "value": f"{figures['jobs_shared_by_runs']} / {figures['completions_naming_a_wrong_job']}",
        },
        {"figure": "active markers left", "value": figures["active_markers_left"]},
        {"figure": "sweeps (failed)", "value": f"{figures['sweeps']} ({figures['sweeps_failed']})"},
        {"figure": "wall time (s)", "value": figures["wall_seconds"]},
        {
            "figure": "startup / delivery / settle (s)",
            "value": f"{figures['startup_seconds']} / {figures['delivery_seconds']} / {figures['settle_seconds']}",
        },
    ]
    fault_rows = [
        {"target": name, **counts, "requests": figures["requests_by_target"][name]["requests"]}
        for name, counts in figures["faults_by_target"].items()
    ]
    notes = (
        "Faults injected per target (each request faulted at most once):\n\n"
        + markdown_table(fault_rows)
        + "\nLost = an event without a job in its backend's emulator, without a finished run in the "
        "ledger, or without a completion message. Duplicate jobs = emulator jobs beyond one per event. "
        "Duplicate completions = completion messages beyond one per event (and per completion id). "
        "A job shared by runs / a completion naming a wrong job = a run that adopted another event's "
        "job. Judged from the backend emulators, the ledger bucket (read directly) and a subscription "
        "on the completion topic only."
    )
    if figures["lost_examples"]:
        notes += "\n\nLost, first examples: " + json.dumps(figures["lost_examples"])
    return write(
        name, figures, command=command, table=rows, title="Fault injection", notes=notes, out_dir=out_dir
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evidence.reliability.faults", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=0.1, help="fault probability per ledger/backend request"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"subset of {','.join(KINDS + CONFLICT_KINDS)} (412 and 409: on the ledger only), or all",
    )
    parser.add_argument(
        "--cover", action="store_true", help="every proxy injects each of its kinds once before drawing"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duplicates", type=float, default=0.2, help="fraction of events delivered twice")
    parser.add_argument("--parallel", type=int, default=8, help="deliveries in flight")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--sweep-every", type=float, default=1.0, help="seconds between scheduler ticks")
    parser.add_argument(
        "--status-push", action="store_true", help="also run on_job_status (statusChanged push)"
    )
    parser.add_argument("--lease", default=RigSettings.lease)
    parser.add_argument("--publish-lease", default=RigSettings.publish_lease)
    parser.add_argument("--launch-budget", default=RigSettings.launch_budget)
    parser.add_argument("--http-timeout", default=RigSettings.http_timeout, help="PIPELINES_HTTP_TIMEOUT")
    parser.add_argument(
        "--speed", type=float, default=RigSettings.speed, help="Dataflow emulator clock speed"
    )
    parser.add_argument(
        "--backends",
        default="dataflow",
        help=f"comma-separated subset of {','.join(BACKENDS)} (events spread over them)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    parser.add_argument(
        "--results", default="faults", help="name of the results files (results/NAME.json, NAME.md)"
    )
    parser.add_argument("--functions-dir", type=Path, help="serve main.py from this checkout instead")
    parser.add_argument("--keep", action="store_true", help="keep the rig's work dir (logs) and print it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        events=args.events,
        rate=args.rate,
        kinds=parse_kinds(args.kinds),
        cover=args.cover,
        seed=args.seed,
        duplicates=args.duplicates,
        parallel=args.parallel,
        max_seconds=args.max_seconds,
        sweep_every=args.sweep_every,
        functions_dir=args.functions_dir,
        keep_dir=args.keep,
        settings=RigSettings(
            lease=args.lease,
            publish_lease=args.publish_lease,
            launch_budget=args.launch_budget,
            http_timeout=args.http_timeout,
            speed=args.speed,
            status_push=args.status_push,
            backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        ),
    )
    figures = run(options)

    def write(figures: dict[str, Any], command: str) -> Any:
        return write_results(figures, command, name=args.results)

    return report_run(figures, "evidence.reliability.faults", argv, None if args.no_write else write)


if __name__ == "__main__":
    raise SystemExit(main())
