"""Benchmarks, each reported beside a baseline measured in the same run; results go to
``results/performance.json`` and ``results/performance.md``.

    python -m evidence.bench            # every benchmark, full size (about 10 minutes on 2 cores)
    python -m evidence.bench --quick    # a small smoke slice (CI runs this through tests/test_bench_smoke.py)
    python -m evidence.bench --only cold_start,warm

End to end, against the local services (evidence/bench/stack.py):

1. cold_start: each function in a fresh process (import main, load config, first event) vs Google's
   sample shape (evidence/bench/google_sample.py); each side in a venv of its own deployed requirements.
   Goals: <= 0.75x the sample's wall time, <= 0.85x its peak RSS; the project's own share (cold start
   minus the floor, functions-framework + google-auth's credential path, same run) <= 100 ms.
2. warm: per-event latency (p50/p99, minus the emulator's own launch time) and throughput through
   functions-framework vs the sample served the same way; API calls per launch (goal <= 3).
3. sweep_scale: a sweep over 10,000 active runs with 50 ms of backend latency (goal <= 20 s) vs the
   floor (the same backend calls alone, same pool); API calls and peak RSS.
4. burst: 1,000 objects dropped at once -> notifications -> Pub/Sub push -> on_message -> launches;
   time until all launched, jobs per object; the sample over the same transport as baseline.
8. windows: the same drop of 1,000 objects through a ``batch:`` window of 100 (10 jobs, every object
   in exactly one manifest) beside one job per object (1,000 jobs) in the same run: time until all
   launched and backend launch requests, as ratios.

In process:

5. routing: route + render one storage event against 50 triggers vs ``json.loads`` of the event.
6. ledger_writes: a launch's two ledger writes (claim + marker) vs one plain upload.
7. sweep_history: ledger calls of a quiet sweep with 0 vs 10xN finished runs (ratio 1: history is
   never read).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def bench_cold_start(quick: bool) -> dict[str, Any]:
    from evidence.bench import cold_start

    return cold_start.measure(1 if quick else 21, isolated=not quick, progress=_progress)


def bench_warm(quick: bool) -> dict[str, Any]:
    from evidence.bench import warm

    return warm.measure(30 if quick else 400, progress=_progress)


def bench_sweep_scale(quick: bool) -> dict[str, Any]:
    from evidence.bench import sweep_scale

    return sweep_scale.measure(200 if quick else 10_000, progress=_progress)


def bench_burst(quick: bool) -> dict[str, Any]:
    from evidence.bench import burst

    return burst.measure(50 if quick else 1000, progress=_progress)


def bench_windows(quick: bool) -> dict[str, Any]:
    from evidence.bench import windows

    return windows.measure(40 if quick else 1000, 10 if quick else 100, progress=_progress)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _big_config(n: int) -> Any:
    from handlers.model.config import build_config

    pipelines = {
        f"p{i}": {
            "backend": "dataflow",
            "template": f"gs://t/p{i}",
            "parameters": {
                "input": "gs://{bucket}/{name}",
                "day": "{event_time:%Y-%m-%d}",
                "owner": "{metadata.owner|none}",
            },
        }
        for i in range(n)
    }
    triggers = {
        f"t{i}": {
            "storage": {"bucket": "landing", "glob": f"zone{i}/**/*.csv", "max_size": 10**9},
            "pipeline": f"p{i}",
        }
        for i in range(n)
    }
    return build_config(
        {
            "settings": {"project": "p", "region": "r", "ledger": {"bucket": "l"}},
            "pipelines": pipelines,
            "triggers": triggers,
        }
    )


def bench_routing(quick: bool) -> dict[str, Any]:
    from handlers.model import events
    from handlers.route.plan import plan_object

    config = _big_config(50)
    raw = {
        "bucket": "landing",
        "name": "zone7/2026/11/file.csv",
        "generation": "17",
        "size": "1024",
        "contentType": "text/csv",
        "metadata": {"owner": "x"},
    }
    ce = {
        "type": events.STORAGE_FINALIZED,
        "id": "1",
        "time": "2026-11-22T10:00:00Z",
        "source": "//storage.googleapis.com/projects/_/buckets/landing",
        "data": raw,
    }
    text = json.dumps(ce)
    n = 200 if quick else 3000

    def baseline() -> None:
        for _ in range(n):
            json.loads(text)

    def route() -> None:
        for _ in range(n):
            plan_object(config, events.parse_object_finalized(json.loads(text)))

    b, r = _median_time(baseline, 5), _median_time(route, 5)
    return {
        "baseline": "json.loads of the event",
        "events": n,
        "baseline_us_per_event": round(b / n * 1e6, 2),
        "route_render_us_per_event": round(r / n * 1e6, 2),
        "ratio": round(r / b, 1),
    }


def _with_services(fn: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
    from local.services import FakeGcs, ensure_bucket, storage_client

    with FakeGcs().start() as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        client = storage_client(gcs.url)
        ensure_bucket(client, "bench-ledger")
        return fn(client, "bench-ledger")


def bench_ledger_writes(quick: bool) -> dict[str, Any]:
    def run(client: Any, bucket: str) -> dict[str, Any]:
        from handlers.launch.ledger import Ledger, Marker, Run
        from handlers.launch.store import GcsStore

        ledger = Ledger(GcsStore(bucket), "evidence/bench/")
        n = 20 if quick else 200
        payload = Ledger._encode(Run("t-0", "t", "p", "dataflow", "CLAIMED", "p-0"))
        counter = iter(range(10**9))
        job = {"backend": "dataflow", "id": "j", "name": "n", "project": "p", "region": "r", "url": ""}

        def plain() -> None:
            client.bucket(bucket).blob(f"plain/{next(counter)}").upload_from_string(payload)

        def launch_writes() -> None:
            key = f"t-{next(counter)}"
            run = ledger.create(Run(key, "t", "p", "dataflow", "CLAIMED", "p-0"))
            ledger.mark_active(key, Marker.of(replace(run, job=job, state="PENDING"), recorded=False))

        def repeat(step: Callable[[], None]) -> Callable[[], None]:
            def run_all() -> None:
                for _ in range(n):
                    step()

            return run_all

        b = _median_time(repeat(plain), 3) / n
        c = _median_time(repeat(launch_writes), 3) / n
        return {
            "baseline": "one plain upload",
            "baseline_ms": round(b * 1000, 2),
            "launch_ledger_writes_ms": round(c * 1000, 2),
            "ratio": round(c / b, 2),
        }

    return _with_services(run)


def bench_sweep_history(quick: bool) -> dict[str, Any]:
    def run(client: Any, bucket: str) -> dict[str, Any]:
        from handlers.backends.contract import JobStatus, RunState
        from handlers.follow.tracking import Tracker
        from handlers.launch.ledger import Marker, Run
        from handlers.launch.runtime import make_runtime
        from handlers.model.config import build_config

        class StillRunning:  # a backend answering instantly, so the ledger cost is what is measured
            name = "dataflow"

            def status(self, ref: Any) -> JobStatus:
                return JobStatus(RunState.RUNNING, "JOB_STATE_RUNNING")

        active = 10 if quick else 50

        def measure(prefix: str, finished: int) -> tuple[float, float]:
            config = build_config(
                {
                    "settings": {
                        "project": "p",
                        "region": "r",
                        "ledger": {"bucket": bucket, "prefix": prefix},
                    },
                    "pipelines": {"p": {"backend": "dataflow", "template": "gs://t/p"}},
                    "triggers": {},
                }
            )
            rt = make_runtime(config, backends={"dataflow": StillRunning()})  # type: ignore[dict-item]
            job = {"backend": "dataflow", "id": "j", "name": "n", "project": "p", "region": "r", "url": ""}
            for i in range(active):
                run = rt.ledger.create(
                    Run(
                        f"a-{i}",
                        "a",
                        "p",
                        "dataflow",
                        "RUNNING",
                        "n",
                        job=job,
                        raw_state="JOB_STATE_RUNNING",
                        last_seen_at="2999-01-01T00:00:00Z",
                    )
                )
                rt.ledger.mark_active(f"a-{i}", Marker.of(run))
            for i in range(finished):
                rt.ledger.create(Run(f"f-{i}", "f", "p", "dataflow", "SUCCEEDED", "n", job=job))
            store = rt.ledger.store
            calls = {"n": 0}

            def counted(method: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    calls["n"] += 1
                    return method(*args, **kwargs)

                return call

            for name in ("read", "read_meta", "list_meta", "create", "replace", "put_meta", "delete"):
                setattr(store, name, counted(getattr(store, name)))
            tracker = Tracker(rt)
            seconds = _median_time(lambda: tracker.sweep(), 3)
            return seconds, calls["n"] / 3

        base, base_calls = measure("scale0/", 0)
        loaded, loaded_calls = measure("scale10/", active * 10)
        return {
            "active_runs": active,
            "baseline": "quiet sweep with no finished runs",
            "baseline_ledger_calls": base_calls,
            f"with_{active * 10}_finished_ledger_calls": loaded_calls,
            "calls_ratio": round(loaded_calls / base_calls, 2),
            "baseline_ms": round(base * 1000, 1),
            f"with_{active * 10}_finished_ms": round(loaded * 1000, 1),
            "time_ratio": round(loaded / base, 2),
            "note": "time includes fake-gcs-server's prefix listing, which scans the whole in-memory bucket",
        }

    return _with_services(run)


BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "cold_start": bench_cold_start,
    "warm": bench_warm,
    "sweep_scale": bench_sweep_scale,
    "burst": bench_burst,
    "routing": bench_routing,
    "ledger_writes": bench_ledger_writes,
    "sweep_history": bench_sweep_history,
    "windows": bench_windows,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evidence.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (the CI smoke slice)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--out", default="", help="results folder (default: results/)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "local-project")
    results = {}
    for name in names:
        _progress(f"== {name}")
        results[name] = BENCHES[name](args.quick)
        print(json.dumps({name: results[name]}), flush=True)
    from evidence.bench import report

    suite = "performance-quick" if args.quick else "performance"
    command = "python -m evidence.bench" + (" --quick" if args.quick else "")
    folder = Path(args.out or os.environ.get("EVIDENCE_RESULTS_DIR") or report.RESULTS)
    previous = folder / f"{suite}.json"
    if args.only and previous.exists():  # a partial run updates its benchmarks in the last results
        earlier = json.loads(previous.read_text())
        results = {**earlier.get("figures", {}), **results}
        command = f"{earlier.get('command', command)}; then python -m evidence.bench --only {args.only}"
    report.write(
        suite,
        results,
        command=command,
        table=summary_rows(results),
        title="Performance" + (" (quick smoke slice: sizes too small for the goals)" if args.quick else ""),
        out_dir=folder,
    )
    return 0


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure that has a goal or a baseline."""
    rows: list[dict[str, Any]] = []
    cold = results.get("cold_start")
    if cold:
        for f in cold["functions"]:
            rows.append(
                {
                    "figure": f"cold start {f['function']}",
                    "measured": f"{f['wall_ms']:.0f} ms, {f['peak_rss_mb']:.1f} MB",
                    "baseline": f"{cold['baseline_wall_ms']:.0f} ms, {cold['baseline_peak_rss_mb']:.1f} MB",
                    "ratio": f"{f['time_ratio']} time, {f['rss_ratio']} RSS",
                    "goal": f"<= {f['time_goal']} time, <= {f['rss_goal']} RSS",
                    "met": "yes" if f["meets_goals"] else "no",
                }
            )
            rows.append(
                {
                    "figure": f"cold start {f['function']}: our share (cold start - floor)",
                    "measured": f"{f['share_ms']:.0f} ms (IQR {f['share_spread_ms']['p25']:.0f} to {f['share_spread_ms']['p75']:.0f}); "
                    f"own phases {f['share_own_phases_ms']:.0f} ms (IQR {f['share_own_phases_spread_ms']['p25']:.0f} to {f['share_own_phases_spread_ms']['p75']:.0f})",
                    "baseline": f"floor {f['floor_ms']:.0f} ms",
                    "ratio": "",
                    "goal": f"<= {f['share_goal_ms']:.0f} ms",
                    "met": "yes" if f["meets_share_goal"] else "no",
                }
            )
    warm = results.get("warm")
    if warm:
        o, b = warm["ours"], warm["sample"]
        rows.append(
            {
                "figure": "warm latency p50 / p99 (emulator time subtracted)",
                "measured": f"{o['p50_minus_emulator_ms']} / {o['p99_minus_emulator_ms']} ms",
                "baseline": f"{b['p50_minus_emulator_ms']} / {b['p99_minus_emulator_ms']} ms",
                "ratio": warm["p50_ratio_net"],
                "goal": "",
                "met": "",
            }
        )
        rows.append(
            {
                "figure": "warm throughput, 8 in flight",
                "measured": f"{o['events_per_s_8_in_flight']} events/s",
                "baseline": f"{b['events_per_s_8_in_flight']} events/s",
                "ratio": warm["throughput_ratio"],
                "goal": "",
                "met": "",
            }
        )
        c = warm["api_calls_per_launch"]
        rows.append(
            {
                "figure": "API calls per launch",
                "measured": f"{c['total']:.2f} ({c['ledger']:.2f} ledger + {c['backend']:.2f} backend)",
                "baseline": "",
                "ratio": "",
                "goal": f"<= {warm['calls_goal']}",
                "met": "yes" if warm["meets_calls_goal"] else "no",
            }
        )
    sweep = results.get("sweep_scale")
    if sweep:
        st = sweep["steady_sweep"]
        rows.append(
            {
                "figure": f"sweep of {sweep['active_runs']} active runs, {sweep['backend_latency_ms']} ms backend latency",
                "measured": f"{st['wall_s']} s, {st['peak_rss_mb']} MB, calls {st['calls']}",
                "baseline": f"floor {sweep['floor']['wall_s']} s",
                "ratio": sweep["steady_vs_floor"],
                "goal": f"<= {sweep['wall_goal_s']:.0f} s",
                "met": "yes" if sweep["meets_goal"] else "no",
            }
        )
        fs = sweep["first_sweep"]
        rows.append(
            {
                "figure": "first sweep after the launches (records gain their job)",
                "measured": f"{fs['wall_s']} s, {fs['peak_rss_mb']} MB, calls {fs['calls']}",
                "baseline": "",
                "ratio": "",
                "goal": "",
                "met": "",
            }
        )
    win = results.get("windows")
    if win:
        w, p = win["windowed"], win["per_object"]
        rows.append(
            {
                "figure": f"{w['objects']} objects through windows of {win['window']}: all launched",
                "measured": f"{w['all_launched_s']} s, {w['jobs']} jobs, {w['backend_launch_requests']} launch requests",
                "baseline": f"one job per object: {p['all_launched_s']} s, {p['jobs']} jobs, "
                f"{p['backend_launch_requests']} launch requests",
                "ratio": f"{win['time_ratio']} time, {win['backend_calls_ratio']} backend calls",
                "goal": "every object in exactly one launched manifest",
                "met": "yes"
                if w["objects_launched"] == w["objects"] and w["objects_in_two_jobs"] == 0
                else "no",
            }
        )
    burst = results.get("burst")
    if burst:
        o, b = burst["ours"], burst["sample"]
        rows.append(
            {
                "figure": f"burst of {o['objects']} objects: all launched",
                "measured": f"{o['all_launched_s']} s, duplicate jobs {o['duplicate_jobs']}",
                "baseline": f"{b['all_launched_s']} s, duplicate jobs {b['duplicate_jobs']}",
                "ratio": burst["time_ratio"],
                "goal": "exactly once",
                "met": "yes" if o["duplicate_jobs"] == 0 and o["launched"] == o["objects"] else "no",
            }
        )
    for name, key in (("routing", "ratio"), ("ledger_writes", "ratio"), ("sweep_history", "calls_ratio")):
        r = results.get(name)
        if r:
            rows.append(
                {
                    "figure": name,
                    "measured": {k: v for k, v in r.items() if k not in ("baseline", key, "note")},
                    "baseline": r.get("baseline", ""),
                    "ratio": r.get(key, ""),
                    "goal": "",
                    "met": "",
                }
            )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
