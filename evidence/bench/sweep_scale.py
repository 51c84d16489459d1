"""Sweep at scale: N active runs (10,000 in the full run) whose backend answers every status call
after 50 ms of injected latency. Each sweep runs in a fresh process, as ``check_runs`` does.

Reported: wall time and peak RSS of the first sweep after the launches (it writes each run's job into
its record) and of a steady sweep (nothing changed: one backend call per run, one ledger list per
1,000 runs), the API calls of each, and the floor: the same backend calls through the same pool and
nothing else, measured in the same run. Goal: the steady sweep of 10,000 runs within 20 s.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evidence.bench.stack import local_services, write_config

ROOT = Path(__file__).resolve().parents[2]
WALL_GOAL_S = 20.0


def _child(config: Path, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "evidence.bench._sweep_child", str(config), *extra],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith('{"runs"')]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"sweep child failed: {out.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def launch_runs(config: Path, count: int, progress: Callable[[str], None]) -> float:
    """``count`` storage events through the real launch path (claim, launch, marker), 16 at a time."""
    from handlers.core import clients, logs
    from handlers.entry import functions as dispatch
    from handlers.launch.runtime import make_runtime
    from handlers.model.config import load_config
    from tests.support import events as ev

    clients.reset()
    logs.set_stream(open(os.devnull, "w"))  # noqa: SIM115 (the setup's own log lines are not measured)
    runtime = make_runtime(load_config(config))
    started = time.perf_counter()
    done = 0

    def one(i: int) -> None:
        dispatch.handle_object_finalized(
            ev.storage_finalized("landing", f"scale/{i:06d}.csv", generation=1), runtime
        )

    with cf.ThreadPoolExecutor(16) as pool:
        for _ in pool.map(one, range(count)):
            done += 1
            if done % 1000 == 0:
                progress(f"sweep_scale: {done}/{count} runs launched")
    return time.perf_counter() - started


def measure(runs: int, latency_ms: int = 50, progress: Callable[[str], None] = print) -> dict[str, Any]:
    with (
        local_services(dataflow_in_process=False, tick_interval=60) as services,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = write_config(Path(tmp) / "sweep.yaml", services.project, "sweep/")
        launch_s = launch_runs(config, runs, progress)
        progress(f"sweep_scale: {runs} runs launched in {launch_s:.1f}s; sweeping")
        services.dataflow_control(
            "POST", "faults", {"operation": "jobs.get", "latency_ms": latency_ms, "times": -1}
        )
        first = _child(config)
        steady = _child(config)
        floor = _child(config, "--floor")
        writes_per_s = _ledger_write_rate(services, 2000)
    ideal = runs * latency_ms / 1000 / steady["workers"]
    return {
        "active_runs": runs,
        "backend_latency_ms": latency_ms,
        "workers": steady["workers"],
        "first_sweep": first,
        "steady_sweep": steady,
        "floor": floor,
        "ideal_s": round(ideal, 2),
        "steady_vs_floor": round(steady["wall_s"] / floor["wall_s"], 2),
        "wall_goal_s": WALL_GOAL_S,
        "meets_goal": steady["wall_s"] <= WALL_GOAL_S,
        "launch_s": round(launch_s, 1),
        "ledger_writes_per_s_at_this_size": round(writes_per_s, 1),
        "first_sweep_write_floor_s": round(first["calls"].get("ledger POST", 0) / writes_per_s, 1),
    }


def _ledger_write_rate(services: Any, n: int) -> float:
    """Plain small uploads per second into the (now full) ledger bucket, 64 at a time: fake-gcs-server's
    own write speed at this size, the floor of a sweep that writes every run."""
    bucket = services.gcs.bucket("bench-ledger")
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda i: bucket.blob(f"write-floor/{i}").upload_from_string(b"{}"), range(n)))
    return n / (time.perf_counter() - started)
