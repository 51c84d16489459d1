"""Benchmarks, each reported as a ratio against a baseline measured in the same run.

    python -m bench            # all benchmarks, full size
    python -m bench --quick    # a small smoke slice (CI runs this)
    python -m bench --only cold_start,routing

1. cold_start: importing ``main`` (what a cold Cloud Function pays) vs importing functions_framework
   alone; fresh processes, median time and peak RSS. Entry points must not pull in the backends,
   the Pub/Sub client or jsonschema at import.
2. routing: route + render one storage event against a 50-trigger config vs ``json.loads`` of the
   same event (a floor for "touching the event at all").
3. ledger_claim: a run claim (create-only JSON write + active marker) on fake-gcs-server vs one plain
   upload of the same bytes.
4. sweep_scaling: a sweep over N active runs with 0 vs 10xN finished runs in the ledger; the ratio
   should stay near 1 (the sweep reads the active index only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def _import_cost(statement: str, repeat: int) -> tuple[float, float]:
    code = (
        "import resource, time; t=time.perf_counter(); "
        + statement
        + "; d=time.perf_counter()-t; print(d, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    times, rss = [], []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "0"},
        )
        d, r = out.stdout.split()
        times.append(float(d))
        rss.append(float(r) / 1024)
    return statistics.median(times), statistics.median(rss)


def bench_cold_start(quick: bool) -> dict[str, Any]:
    repeat = 3 if quick else 9
    _import_cost("import main", 1)  # warm the .pyc files
    base_t, base_rss = _import_cost("import functions_framework", repeat)
    main_t, main_rss = _import_cost("import main", repeat)
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, main; print(sorted(m for m in ('google.cloud.pubsub_v1',"
            "'jsonschema','handlers.backends.dataflow','handlers.tracking','yaml') if m in sys.modules))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {
        "baseline": "import functions_framework",
        "baseline_ms": round(base_t * 1000, 1),
        "import_main_ms": round(main_t * 1000, 1),
        "time_ratio": round(main_t / base_t, 2),
        "baseline_rss_mb": round(base_rss, 1),
        "main_rss_mb": round(main_rss, 1),
        "rss_ratio": round(main_rss / base_rss, 2),
        "heavy_modules_loaded_at_import": heavy,
    }


def _big_config(n: int) -> Any:
    from handlers.config import build_config

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
    from handlers import events, params, routing

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
            ev = events.parse_object_finalized(json.loads(text))
            for m in routing.match_object(config, ev):
                if m.matched:
                    params.render(config, m.trigger, config.pipelines[m.trigger.pipeline], ev, "k-0")

    b, r = _median_time(baseline, 5), _median_time(route, 5)
    return {
        "baseline": "json.loads of the event",
        "events": n,
        "baseline_us_per_event": round(b / n * 1e6, 2),
        "route_render_us_per_event": round(r / n * 1e6, 2),
        "ratio": round(r / b, 1),
    }


def _with_services(fn: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
    from deploy.local.services import FakeGcs, ensure_bucket, storage_client

    with FakeGcs().start() as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        client = storage_client(gcs.url)
        ensure_bucket(client, "bench-ledger")
        return fn(client, "bench-ledger")


def bench_ledger_claim(quick: bool) -> dict[str, Any]:
    def run(client: Any, bucket: str) -> dict[str, Any]:
        from handlers.ledger import GcsStore, Ledger, Run

        ledger = Ledger(GcsStore(bucket, client), "bench/")
        n = 20 if quick else 200
        payload = Ledger._encode(Run("t-0", "t", "p", "dataflow", "CLAIMED", "p-0"))
        counter = iter(range(10**9))

        def plain() -> None:
            client.bucket(bucket).blob(f"plain/{next(counter)}").upload_from_string(payload)

        def claim() -> None:
            key = f"t-{next(counter)}"
            ledger.create(Run(key, "t", "p", "dataflow", "CLAIMED", "p-0"))
            ledger.mark_active(key)

        def repeat(step: Callable[[], None]) -> Callable[[], None]:
            def run_all() -> None:
                for _ in range(n):
                    step()

            return run_all

        b = _median_time(repeat(plain), 3) / n
        c = _median_time(repeat(claim), 3) / n
        return {
            "baseline": "one plain upload",
            "baseline_ms": round(b * 1000, 2),
            "claim_ms": round(c * 1000, 2),
            "ratio": round(c / b, 2),
        }

    return _with_services(run)


def bench_sweep_scaling(quick: bool) -> dict[str, Any]:
    def run(client: Any, bucket: str) -> dict[str, Any]:
        from handlers.backends.base import JobStatus, RunState
        from handlers.config import build_config
        from handlers.ledger import Run
        from handlers.runtime import make_runtime
        from handlers.tracking import Tracker

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
            rt = make_runtime(config, storage_client=client, backends={"dataflow": StillRunning()})  # type: ignore[dict-item]
            job = {"backend": "dataflow", "id": "j", "name": "n", "project": "p", "region": "r", "url": ""}
            for i in range(active):
                rt.ledger.create(
                    Run(
                        f"a-{i}",
                        "a",
                        "p",
                        "dataflow",
                        "RUNNING",
                        "n",
                        job=job,
                        last_seen_at="2999-01-01T00:00:00Z",
                    )
                )
                rt.ledger.mark_active(f"a-{i}")
            for i in range(finished):
                rt.ledger.create(Run(f"f-{i}", "f", "p", "dataflow", "SUCCEEDED", "n", job=job))
            store = rt.ledger.store
            calls = {"read": 0, "list": 0}
            real_read, real_list = store.read, store.list

            def read(name: str) -> Any:
                calls["read"] += 1
                return real_read(name)

            def listing(prefix: str) -> Any:
                calls["list"] += 1
                return real_list(prefix)

            store.read, store.list = read, listing  # type: ignore[method-assign]
            tracker = Tracker(rt)
            seconds = _median_time(lambda: tracker.sweep(), 3)
            return seconds, calls["read"] / 3

        base, base_reads = measure("scale0/", 0)
        loaded, loaded_reads = measure("scale10/", active * 10)
        return {
            "active_runs": active,
            "baseline": "sweep with no finished runs",
            "baseline_reads": base_reads,
            f"with_{active * 10}_finished_reads": loaded_reads,
            "reads_ratio": round(loaded_reads / base_reads, 2),
            "baseline_ms": round(base * 1000, 1),
            f"with_{active * 10}_finished_ms": round(loaded * 1000, 1),
            "time_ratio": round(loaded / base, 2),
            "note": "time includes fake-gcs-server's prefix listing, which scans the whole in-memory bucket",
        }

    return _with_services(run)


BENCHES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "cold_start": bench_cold_start,
    "routing": bench_routing,
    "ledger_claim": bench_ledger_claim,
    "sweep_scaling": bench_sweep_scaling,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (the CI smoke slice)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHES)
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "local-project")
    results = {}
    for name in names:
        results[name] = BENCHES[name](args.quick)
        print(json.dumps({name: results[name]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
