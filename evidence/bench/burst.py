"""Burst: N objects (1,000 in the full run) dropped into a bucket at once, end to end on the local
stack: fake-gcs-server publishes a notification per object to the Pub/Sub emulator, whose push
subscription delivers each to ``on_message`` under functions-framework (gunicorn), which launches.

Reported: time from the first upload until every object has its job, jobs per object (exactly once:
all 1), and the same burst through Google's sample shape (evidence/bench/google_sample.py, no ledger) over the
same transport, in the same run, as the baseline.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evidence.bench.stack import Services, local_services, write_config

ROOT = Path(__file__).resolve().parents[2]


def _jobs_by_input(services: Services) -> collections.Counter[str]:
    return collections.Counter(j.get("parameters", {}).get("inputFile", "") for j in services.jobs())


def _burst(services: Services, server: Any, prefix: str, n: int, timeout: float) -> dict[str, Any]:
    from local.services import GCS_NOTIFICATION_TOPIC, delete_subscription, ensure_push_subscription

    subscription = f"burst-{uuid.uuid4().hex[:8]}"
    endpoint = f"{server.url}/projects/{services.project}/topics/{GCS_NOTIFICATION_TOPIC}"
    ensure_push_subscription(
        services.project, GCS_NOTIFICATION_TOPIC, subscription, endpoint, emulator_host=services.pubsub_host
    )
    bucket = services.gcs.bucket("landing")
    names = [f"{prefix}/{i:05d}.csv" for i in range(n)]
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: bucket.blob(name).upload_from_string(b"a,b\n1,2\n"), names))
    dropped = time.perf_counter() - started
    wanted = {f"gs://landing/{name}" for name in names}
    deadline = time.monotonic() + timeout
    while True:
        counts = _jobs_by_input(services)
        launched = wanted & set(counts)
        if len(launched) == n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    time.sleep(2.0)  # late redeliveries would show up as second jobs now
    counts = _jobs_by_input(services)
    delete_subscription(services.project, subscription, emulator_host=services.pubsub_host)
    per_object = collections.Counter(counts[w] for w in wanted)
    return {
        "objects": n,
        "upload_s": round(dropped, 2),
        "all_launched_s": round(elapsed, 2) if len(launched) == n else None,
        "launched": len(launched),
        "objects_by_job_count": {str(k): v for k, v in sorted(per_object.items())},
        "duplicate_jobs": sum((c - 1) for c in (counts[w] for w in wanted) if c > 1),
    }


def measure(n: int, progress: Callable[[str], None] = print, timeout: float = 600) -> dict[str, Any]:
    from local.services import FunctionServer

    with (
        local_services(dataflow_in_process=False, tick_interval=60, notifications=True) as services,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = write_config(Path(tmp) / "burst.yaml", services.project, "burst/")
        sample = FunctionServer(
            ROOT, "launch_template_from_notification", source="evidence/bench/google_sample.py", log_dir=tmp
        )
        ours = FunctionServer(ROOT, "on_message", env={"PIPELINES_CONFIG": str(config)}, log_dir=tmp)
        with sample.start():
            baseline = _burst(services, sample, "burst-sample", n, timeout)
        progress(f"burst: sample done in {baseline['all_launched_s']}s")
        with ours.start():
            result = _burst(services, ours, "burst-ours", n, timeout)
        progress(f"burst: ours done in {result['all_launched_s']}s")
        runs = sum(1 for _ in services.gcs.list_blobs("bench-ledger", prefix="burst/runs/"))
    ratio = (
        round(result["all_launched_s"] / baseline["all_launched_s"], 2)
        if result["all_launched_s"] and baseline["all_launched_s"]
        else None
    )
    return {"ours": {**result, "ledger_runs": runs}, "sample": baseline, "time_ratio": ratio}
