"""Warm per-event cost through functions-framework (gunicorn, as deployed): our
``on_object_finalized`` beside Google's sample shape (evidence/bench/google_sample.py), both served the same
way and launching on the same Dataflow emulator, in the same run.

- latency: events one at a time, p50/p99, minus the emulator's own answer time for one launch
  (measured directly in the same run; both sides make exactly one launch call per event);
- throughput: events per second with 8 deliveries in flight;
- API calls per launch: counted at the HTTP sessions in-process (ledger + backend), goal <= 3.
"""

from __future__ import annotations

import concurrent.futures as cf
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from evidence.bench.stack import TEMPLATE, CallCounter, Services, local_services, write_config
from local.world import REGION

ROOT = Path(__file__).resolve().parents[2]
CALLS_GOAL = 3


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _event(i: int, prefix: str) -> tuple[dict[str, str], bytes]:
    from cloudevents.conversion import to_binary

    from tests.support import events as ev

    headers, body = to_binary(
        ev.storage_finalized("landing", f"{prefix}/{uuid.uuid4().hex}.csv", generation=i + 1)
    )
    return dict(headers), body


def emulator_launch_ms(services: Services, n: int) -> float:
    """The emulator's own answer time for one templates.launch, called directly (median)."""
    url = f"{services.dataflow_url}/v1b3/projects/{services.project}/locations/{REGION}/templates:launch"
    session = requests.Session()
    samples = []
    for _i in range(n):
        body = {
            "jobName": f"direct-{uuid.uuid4().hex[:12]}",
            "parameters": {"inputFile": "gs://a/b", "output": "gs://o/"},
        }
        t = time.perf_counter()
        session.post(url, params={"gcsPath": TEMPLATE}, json=body, timeout=30).raise_for_status()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def _drive(url: str, prefix: str, n: int, concurrency: int) -> tuple[list[float], float]:
    session = requests.Session()
    events = [_event(i, prefix) for i in range(n)]

    def one(event: tuple[dict[str, str], bytes]) -> float:
        t = time.perf_counter()
        answer = session.post(url, headers=event[0], data=event[1], timeout=60)
        if answer.status_code >= 300:
            raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:300]}")
        return (time.perf_counter() - t) * 1000

    started = time.perf_counter()
    if concurrency == 1:
        latencies = [one(e) for e in events]
    else:
        with cf.ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(one, events))
    return latencies, time.perf_counter() - started


def calls_per_launch(services: Services, config: Path, n: int) -> dict[str, float]:
    """Launch ``n`` events in-process and count what reached fake-gcs-server and the emulator."""
    from handlers.core import clients
    from handlers.entry import functions as dispatch
    from handlers.launch.runtime import make_runtime
    from handlers.model.config import load_config
    from tests.support import events as ev

    counter = CallCounter()
    ledger_http = requests.Session()
    ledger_http.hooks["response"].append(counter.hook("ledger"))
    clients.reset()
    runtime = make_runtime(load_config(config), ledger_session=ledger_http)
    clients.google_session().hooks["response"].append(counter.hook("backend"))
    for _i in range(n):
        dispatch.handle_object_finalized(
            ev.storage_finalized("landing", f"count/{uuid.uuid4().hex}.csv"), runtime
        )
    ledger, backend = counter.total("ledger"), counter.total("backend")
    return {"ledger": ledger / n, "backend": backend / n, "total": (ledger + backend) / n}


def measure(n: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from local.services import FunctionServer

    with (
        local_services(dataflow_in_process=False, tick_interval=60) as services,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = write_config(Path(tmp) / "warm.yaml", services.project, "warm/")
        emulator_ms = emulator_launch_ms(services, max(20, n // 5))
        sides = {
            "sample": FunctionServer(
                ROOT, "launch_template", source="evidence/bench/google_sample.py", log_dir=tmp
            ),
            "ours": FunctionServer(
                ROOT, "on_object_finalized", env={"PIPELINES_CONFIG": str(config)}, log_dir=tmp
            ),
        }
        results: dict[str, Any] = {}
        for name, server in sides.items():
            with server.start():
                _drive(server.url, f"warmup-{name}", 20, 1)
                latencies, _ = _drive(server.url, f"seq-{name}", n, 1)
                _, wall = _drive(server.url, f"conc-{name}", n, 8)
            p50, p99 = _pct(latencies, 0.5), _pct(latencies, 0.99)
            results[name] = {
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "p50_minus_emulator_ms": round(p50 - emulator_ms, 2),
                "p99_minus_emulator_ms": round(p99 - emulator_ms, 2),
                "events_per_s_8_in_flight": round(n / wall, 1),
            }
            progress(f"warm: {name} done")
        calls = calls_per_launch(services, config, max(20, n // 5))
    ours, sample = results["ours"], results["sample"]
    return {
        "events": n,
        "emulator_launch_ms": round(emulator_ms, 2),
        "ours": ours,
        "sample": sample,
        "p50_ratio_net": round(ours["p50_minus_emulator_ms"] / sample["p50_minus_emulator_ms"], 2),
        "throughput_ratio": round(ours["events_per_s_8_in_flight"] / sample["events_per_s_8_in_flight"], 2),
        "api_calls_per_launch": calls,
        "calls_goal": CALLS_GOAL,
        "meets_calls_goal": calls["total"] <= CALLS_GOAL,
    }
