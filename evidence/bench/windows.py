"""Windows: N objects (1,000 in the full run) dropped at once, launched one job per object (the
baseline) and then through a window of W (100: 10 jobs), in the same run, over the same transport as
the burst: fake-gcs-server notifications -> Pub/Sub push -> ``on_message`` under functions-framework.

Reported per side: time from the first upload until every object is launched (its own job, or a
launched job whose manifest lists it), jobs, the Dataflow emulator's launch requests (backend calls),
and the exactly-once facts (objects in no job / in two); and the ratios windowed / one per object.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from evidence.bench.stack import LEDGER_BUCKET, Services, config_doc, local_services

ROOT = Path(__file__).resolve().parents[2]


def batched_config(path: Path, project: str, prefix: str, window: int) -> Path:
    """The bench config with the storage trigger batched and its pipeline reading the manifest."""
    doc = config_doc(project, prefix)
    doc["triggers"]["landing"]["batch"] = {"max_items": window, "max_wait": "5m"}
    doc["pipelines"]["wordcount"]["parameters"] = {
        "inputFile": "{batch.manifest}",
        "output": "gs://o/{batch.id}/",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _launch_requests(services: Services) -> int:
    from local.kits import kit

    return sum(kit("dataflow").launch_statuses(services.dataflow_url).values())


def _launched(services: Services, names: list[str], cache: dict[str, list[str]]) -> collections.Counter[str]:
    """How many launched jobs cover each object (its own job, or a manifest listing it)."""
    covered: collections.Counter[str] = collections.Counter()
    for job in services.jobs():
        uri = str(job.get("parameters", {}).get("inputFile", ""))
        if uri.endswith(".jsonl"):
            if uri not in cache:
                bucket, _, name = uri[len("gs://") :].partition("/")
                text = services.gcs.bucket(bucket).blob(name).download_as_bytes().decode()
                cache[uri] = [f"gs://landing/{json.loads(line)['name']}" for line in text.splitlines()]
            covered.update(cache[uri])
        else:
            covered[uri] += 1
    wanted = set(names)
    return collections.Counter({k: v for k, v in covered.items() if k in wanted})


def _drop(services: Services, server: Any, prefix: str, n: int, timeout: float) -> dict[str, Any]:
    from local.services import GCS_NOTIFICATION_TOPIC, delete_subscription, ensure_push_subscription

    subscription = f"windows-{uuid.uuid4().hex[:8]}"
    endpoint = f"{server.url}/projects/{services.project}/topics/{GCS_NOTIFICATION_TOPIC}"
    ensure_push_subscription(
        services.project, GCS_NOTIFICATION_TOPIC, subscription, endpoint, emulator_host=services.pubsub_host
    )
    bucket = services.gcs.bucket("landing")
    names = [f"{prefix}/{i:05d}.csv" for i in range(n)]
    wanted = [f"gs://landing/{name}" for name in names]
    jobs_before, requests_before = len(services.jobs()), _launch_requests(services)
    cache: dict[str, list[str]] = {}
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: bucket.blob(name).upload_from_string(b"a,b\n1,2\n"), names))
    deadline = time.monotonic() + timeout
    while True:
        covered = _launched(services, wanted, cache)
        if len(covered) == n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    time.sleep(2.0)  # late redeliveries would show up as second jobs now
    covered = _launched(services, wanted, cache)
    delete_subscription(services.project, subscription, emulator_host=services.pubsub_host)
    return {
        "objects": n,
        "all_launched_s": round(elapsed, 2) if len(covered) == n else None,
        "objects_launched": len(covered),
        "objects_in_two_jobs": sum(1 for c in covered.values() if c > 1),
        "jobs": len(services.jobs()) - jobs_before,
        "backend_launch_requests": _launch_requests(services) - requests_before,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def measure(
    n: int, window: int, progress: Callable[[str], None] = print, timeout: float = 600
) -> dict[str, Any]:
    from evidence.bench.stack import write_config
    from local.services import FunctionServer

    with (
        local_services(dataflow_in_process=False, tick_interval=60, notifications=True) as services,
        tempfile.TemporaryDirectory() as tmp,
    ):
        plain = write_config(Path(tmp) / "plain.yaml", services.project, "win-plain/")
        batched = batched_config(Path(tmp) / "batched.yaml", services.project, "win-batched/", window)
        sides = {}
        for label, config in (("per_object", plain), ("windowed", batched)):
            server = FunctionServer(ROOT, "on_message", env={"PIPELINES_CONFIG": str(config)}, log_dir=tmp)
            with server.start():
                sides[label] = _drop(services, server, f"windows-{label}", n, timeout)
            progress(f"windows: {label} done in {sides[label]['all_launched_s']}s")
        manifests = sum(1 for _ in services.gcs.list_blobs(LEDGER_BUCKET, prefix="win-batched/manifests/"))
    ours, base = sides["windowed"], sides["per_object"]
    return {
        "window": window,
        "windowed": {**ours, "manifests": manifests},
        "per_object": base,
        "time_ratio": _ratio(ours["all_launched_s"], base["all_launched_s"]),
        "backend_calls_ratio": _ratio(ours["backend_launch_requests"], base["backend_launch_requests"]),
        "jobs_ratio": _ratio(ours["jobs"], base["jobs"]),
    }
