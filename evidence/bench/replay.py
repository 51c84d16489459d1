"""Replay: N objects (10,000 in the full run) in a bucket, half of which already ran, replayed for
their trigger (``python -m handlers replay``'s code path, in process, against the local stack).

Baseline, in the same run and against the same services: the first half launched as live events
(:func:`handlers.entry.functions.handle_object`, the path ``on_object_finalized`` takes), one after
the other as a replay launches them. Then the replay of all N: exactly the other half must launch.

Reported: wall time and API calls (ledger, backend) of each; the replay's launches and skips; jobs
per object on the Dataflow emulator afterwards (every object exactly one job).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import time
from collections.abc import Callable
from typing import Any

from evidence.bench.stack import CallCounter, Services, local_services

BUCKET = "landing"
PREFIX = "replay/"


def _upload(services: Services, n: int) -> list[str]:
    bucket = services.gcs.bucket(BUCKET)
    names = [f"{PREFIX}{i:05d}.csv" for i in range(n)]
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: bucket.blob(name).upload_from_string(b"a,b\n1,2\n"), names))
    return names


def measure(n: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    import requests

    from handlers.core import clients
    from handlers.entry.functions import handle_object
    from handlers.entry.replay import Replay, ReplaySpec, object_event
    from handlers.launch.runtime import make_runtime
    from handlers.launch.store import GcsStore
    from handlers.model.config import build_config

    with local_services(dataflow_in_process=False, tick_interval=60) as services:
        from evidence.bench.stack import config_doc

        progress(f"replay: uploading {n} objects")
        _upload(services, n)
        counter = CallCounter()
        ledger_http = requests.Session()
        ledger_http.hooks["response"].append(counter.hook("ledger"))
        clients.reset()
        runtime = make_runtime(
            build_config(config_doc(services.project, "replay/")), ledger_session=ledger_http
        )
        clients.google_session().hooks["response"].append(counter.hook("backend"))
        resources = list(GcsStore(BUCKET, session=requests.Session()).list_objects(PREFIX))
        half = resources[: n // 2]

        progress(f"replay: baseline, {len(half)} objects launched as live events")
        counter.calls.clear()
        started = time.perf_counter()
        for resource in half:
            handle_object(runtime, object_event(resource))
        baseline_s = time.perf_counter() - started
        baseline_calls = {"ledger": counter.total("ledger"), "backend": counter.total("backend")}

        progress(f"replay: replaying all {n} objects ({len(half)} already ran)")
        counter.calls.clear()
        started = time.perf_counter()
        summary = Replay(runtime, ReplaySpec("landing", bucket=BUCKET, prefix=PREFIX)).run()
        replay_s = time.perf_counter() - started
        replay_calls = {"ledger": counter.total("ledger"), "backend": counter.total("backend")}

        jobs = collections.Counter(j.get("parameters", {}).get("inputFile", "") for j in services.jobs())
        wanted = [f"gs://{BUCKET}/{r['name']}" for r in resources]
        per_object = collections.Counter(jobs[w] for w in wanted)
        launched = len(summary.launched)
        return {
            "objects": n,
            "already_ran": len(half),
            "baseline": f"the same number of launches ({len(half)}) as live events, one after the other",
            "baseline_s": round(baseline_s, 2),
            "baseline_calls": baseline_calls,
            "baseline_ms_per_launch": round(baseline_s / max(len(half), 1) * 1000, 2),
            "replay_s": round(replay_s, 2),
            "replay_calls": replay_calls,
            "replay_launched": launched,
            "replay_skipped": len(summary.skipped),
            "replay_failed": len(summary.failed),
            "replay_ledger_calls_per_object": round(replay_calls["ledger"] / n, 2),
            "time_ratio": round(replay_s / baseline_s, 2) if baseline_s else None,
            "objects_by_job_count": {str(k): v for k, v in sorted(per_object.items())},
            "exactly_once": per_object == collections.Counter({1: n}) and launched == n - len(half),
        }
