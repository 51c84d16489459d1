"""Cold start of each function: a fresh process imports ``main`` (through functions-framework, as the
platform does), loads the config and handles its first event against the local services. Wall ms
and peak RSS, beside a baseline shaped like Google's official sample (evidence/bench/google_sample.py:
functions-framework + googleapiclient discovery ``build`` for Dataflow + a Pub/Sub publisher).

Goals, per function: at most 0.75x the baseline's wall time and 0.85x its peak RSS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evidence.bench.stack import Services, local_services, write_config

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("on_object_finalized", "on_message", "on_job_status", "check_runs", "api")
TIME_GOAL, RSS_GOAL = 0.75, 0.85


def _structured(event: Any) -> dict[str, Any]:
    from cloudevents.conversion import to_structured

    headers, body = to_structured(event)
    return {"headers": dict(headers), "body": body.decode()}


def _launch_one(services: Services, config_path: Path, name: str) -> None:
    """Launch a run in this process (setup for the tracking functions), then let its job finish."""
    from handlers.core import clients
    from handlers.entry import functions as dispatch
    from handlers.launch.runtime import make_runtime
    from handlers.model.config import load_config
    from tests.support import events as ev

    clients.reset()
    runtime = make_runtime(load_config(config_path))
    dispatch.handle_object_finalized(ev.storage_finalized("landing", name, generation=1), runtime)
    services.dataflow_control("POST", "clock", {"advance_seconds": 7200})


class Cases:
    """Builds, for one repetition, the request each function (and the baseline) gets first."""

    def __init__(self, services: Services, work: Path) -> None:
        self.services = services
        self.work = work

    def config(self, fn: str, rep: int) -> Path:
        return write_config(self.work / f"{fn}-{rep}.yaml", self.services.project, f"cold/{fn}/{rep}/")

    def request(self, fn: str, rep: int) -> tuple[str, str, str, dict[str, Any], dict[str, str]]:
        """(source, target, signature, request, extra env)."""
        from cloudevents.http import CloudEvent

        from tests.support import events as ev

        tag = uuid.uuid4().hex[:10]
        if fn == "baseline":
            event = ev.storage_finalized("landing", f"sample/{tag}.csv", generation=rep + 1)
            return "evidence/bench/google_sample.py", "launch_template", "cloudevent", _structured(event), {}
        config = self.config(fn, rep)
        # the production credential path: google.auth.default() against the local metadata server
        env = {"PIPELINES_CONFIG": str(config), "PIPELINES_ANONYMOUS_AUTH": ""}
        if fn == "on_object_finalized":
            event = ev.storage_finalized("landing", f"in/{tag}.csv", generation=rep + 1)
            return "main.py", fn, "cloudevent", _structured(event), env
        if fn == "on_message":
            event = ev.pubsub_message("orders", {"order": tag, "file": f"gs://landing/{tag}.csv"})
            return "main.py", fn, "cloudevent", _structured(event), env
        if fn == "api":
            body = json.dumps({"pipeline": "manual", "parameters": {"file": f"gs://landing/{tag}.csv"}})
            request = {
                "path": "/runs",
                "method": "POST",
                "headers": {"Content-Type": "application/json", "Idempotency-Key": tag},
                "body": body,
            }
            return "main.py", fn, "http", request, env
        _launch_one(self.services, config, f"tracked/{tag}.csv")
        if fn == "check_runs":
            event = ev.pubsub_message("check-runs", {"schedule": "every minute"})
            return "main.py", fn, "cloudevent", _structured(event), env
        assert fn == "on_job_status"
        job = max(self.services.jobs(), key=lambda j: j["job"]["createTime"])["job"]
        event = CloudEvent(
            {
                "type": "google.cloud.dataflow.job.v1beta3.statusChanged",
                "source": f"//dataflow.googleapis.com/projects/{self.services.project}/locations/europe-west1",
                "subject": f"jobs/{job['id']}",
                "id": tag,
            },
            {"payload": job},
        )
        return "main.py", fn, "cloudevent", _structured(event), env


def _run_child(
    python: str, source: str, target: str, signature: str, request: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(request, fh)
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "evidence" / "bench" / "_cold_child.py"),
                str(ROOT / source),
                target,
                signature,
                fh.name,
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.unlink(fh.name)
    lines = [line for line in out.stdout.splitlines() if line.startswith('{"status"')]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"cold start of {target} failed: {out.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result["status"] >= 300:
        raise RuntimeError(f"cold start of {target} answered {result['status']}: {result['body']}")
    return result


def measure(
    repeat: int,
    functions: tuple[str, ...] = FUNCTIONS,
    *,
    isolated: bool = True,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``isolated``: each side in a venv holding only its own deployed requirements (evidence/bench/venvs.py);
    otherwise both in the development venv (quick, for CI: facts only, not the figures)."""
    from evidence.bench import venvs

    pythons = {
        "baseline": venvs.python("sample", progress) if isolated else sys.executable,
        "ours": venvs.python("ours", progress) if isolated else sys.executable,
    }
    samples: dict[str, list[dict[str, Any]]] = {fn: [] for fn in ("baseline", *functions)}
    with local_services() as services, tempfile.TemporaryDirectory() as tmp:
        cases = Cases(services, Path(tmp))

        def run(fn: str, rep: int) -> dict[str, Any]:
            return _run_child(pythons["baseline" if fn == "baseline" else "ours"], *cases.request(fn, rep))

        # warm the .pyc files of both sides once (a deployed function ships compiled bytecode too)
        for fn in ("baseline", *functions):
            run(fn, 10_000 + len(fn))
        for rep in range(repeat):
            for fn in samples:  # interleaved, so drift hits both sides alike
                samples[fn].append(run(fn, rep))
            progress(f"cold_start: repetition {rep + 1}/{repeat} done")
    base_ms = statistics.median(s["ms"] for s in samples["baseline"])
    base_rss = statistics.median(s["peak_rss_mb"] for s in samples["baseline"])
    rows = []
    for fn in functions:
        ms = statistics.median(s["ms"] for s in samples[fn])
        rss = statistics.median(s["peak_rss_mb"] for s in samples[fn])
        rows.append(
            {
                "function": fn,
                "wall_ms": ms,
                "peak_rss_mb": rss,
                "time_ratio": round(ms / base_ms, 2),
                "rss_ratio": round(rss / base_rss, 2),
                "time_goal": TIME_GOAL,
                "rss_goal": RSS_GOAL,
                "meets_goals": ms / base_ms <= TIME_GOAL and rss / base_rss <= RSS_GOAL,
            }
        )
    return {
        "environments": "each side in a venv of its own deployed requirements"
        if isolated
        else "both sides in the development venv (smoke run: ratios not representative)",
        "baseline": "Google's sample shape: functions-framework + googleapiclient build('dataflow') + PublisherClient, first event",
        "repetitions": repeat,
        "baseline_wall_ms": base_ms,
        "baseline_peak_rss_mb": base_rss,
        "functions": rows,
        "import_breakdown": breakdown(pythons["ours"], 3 if repeat < 3 else 5),
        "heavy_modules_loaded_at_import": heavy_modules_at_import(),
    }


BREAKDOWN_STEPS = (
    ("functions-framework", "import functions_framework"),
    ("+ google-auth credential path (compute engine, requests transport)",
     "import google.auth, google.auth.compute_engine, google.auth.transport.requests"),
    ("+ this project's modules for a launch (yaml, tenacity included)",
     "import main, handlers.entry.functions, handlers.launch.service, handlers.launch.store, handlers.backends.dataflow, yaml"),
)  # fmt: skip


def breakdown(python: str, repeat: int = 5) -> list[dict[str, Any]]:
    """Where a cold start's import time goes, cumulatively, in ``python``'s venv (median of fresh
    processes): the part that is not ours bounds how far below the sample a function can start."""
    rows: list[dict[str, Any]] = []
    statement = ""
    for label, step in BREAKDOWN_STEPS:
        statement += step + "; "
        code = (
            "import time; t = time.perf_counter(); " + statement + "print((time.perf_counter() - t) * 1000, "
            "[int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)"
        )
        samples = []
        for _ in range(repeat):
            out = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
            ms, rss = out.stdout.split()
            samples.append((float(ms), float(rss)))
        rows.append(
            {
                "imports": label,
                "cumulative_ms": round(statistics.median(m for m, _ in samples), 1),
                "cumulative_rss_mb": round(statistics.median(r for _, r in samples), 1),
            }
        )
    return rows


def heavy_modules_at_import() -> list[str]:
    """Modules a bare ``import main`` must not pull in (each function loads what it needs on first use)."""
    code = (
        "import sys, main; print(sorted(m for m in ('google.cloud.pubsub_v1', 'grpc', 'googleapiclient',"
        " 'jsonschema', 'handlers.backends.dataflow', 'handlers.follow.tracking', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().replace("'", '"')))
