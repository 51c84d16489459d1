"""Cold start of each function: a fresh process imports ``main`` (through functions-framework, as the
platform does), loads the config and handles its first event against the local services. Wall ms
and peak RSS, beside a baseline shaped like Google's official sample (evidence/bench/google_sample.py:
functions-framework + googleapiclient discovery ``build`` for Dataflow + a Pub/Sub publisher).

Goals, per function: at most 0.75x the baseline's wall time and 0.85x its peak RSS.

Beside both, the **floor** (evidence/bench/floor_function.py): functions-framework and google-auth's
credential path and nothing of this project, in our venv, measured in the same run the same way. A
function's cold start minus the floor of the same repetition is the project's own **share** (goal: at
most 100 ms), broken down by the phases the child times (import of ``main``, config load and
validation, first event).
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
SHARE_GOAL_MS = 100.0
# on_object_finalized once more, its config without the compiled form: what reading the YAML costs
YAML_ONLY = "on_object_finalized:yaml"
PHASES = ("functions_framework", "auth_libs", "import", "config", "first_event")
OWN_PHASES = ("import", "config", "first_event")  # where this project's code runs


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
        """The function's config as deploy ships it: the YAML and its compiled form beside it
        (handlers.model.config.compile_config); for the ``YAML_ONLY`` variant, the YAML alone."""
        from handlers.model.config import compile_config

        path = write_config(self.work / f"{fn}-{rep}.yaml", self.services.project, f"cold/{fn}/{rep}/")
        if fn != YAML_ONLY:
            assert compile_config(path) is not None
        return path

    def request(self, fn: str, rep: int) -> tuple[str, str, str, dict[str, Any], dict[str, str]]:
        """(source, target, signature, request, extra env)."""
        from cloudevents.http import CloudEvent

        from tests.support import events as ev

        tag = uuid.uuid4().hex[:10]
        if fn == "baseline":
            event = ev.storage_finalized("landing", f"sample/{tag}.csv", generation=rep + 1)
            return "evidence/bench/google_sample.py", "launch_template", "cloudevent", _structured(event), {}
        if fn == "floor":
            event = ev.storage_finalized("landing", f"floor/{tag}.csv", generation=rep + 1)
            return "evidence/bench/floor_function.py", "floor", "cloudevent", _structured(event), {}
        config = self.config(fn, rep)
        fn = fn.partition(":")[0]  # a variant runs the same function
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


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a measured process: this one's plus ``extra``, with bytecode writing on.

    A deployed function's own modules are compiled once, not on every start (the installed packages
    are compiled by pip already). With ``PYTHONDONTWRITEBYTECODE`` set (as in some shells and CI) the
    warm-up run could not write the .pyc files and every measured start compiled this project's
    sources again: about 45 ms, which the figures then counted as the project's share. What the
    compile costs is measured on its own (``import_breakdown``, the "compiled from source" row).
    """
    env = {**os.environ, **(extra or {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run_child(
    python: str, source: str, target: str, signature: str, request: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(request, fh)
    try:
        out = subprocess.run(
            [
                python,  # the side's own venv (evidence/bench/venvs.py)
                str(ROOT / "evidence" / "bench" / "_cold_child.py"),
                str(ROOT / source),
                target,
                signature,
                fh.name,
                *(["--auth-phase"] if "google_sample" not in source else []),
                *(["--config-phase"] if source == "main.py" else []),
            ],
            cwd=ROOT,
            env=child_env(env),
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
    variants = (YAML_ONLY,) if "on_object_finalized" in functions else ()
    sides = ("baseline", "floor", *functions, *variants)
    samples: dict[str, list[dict[str, Any]]] = {fn: [] for fn in sides}
    with local_services() as services, tempfile.TemporaryDirectory() as tmp:
        cases = Cases(services, Path(tmp))

        def run(fn: str, rep: int) -> dict[str, Any]:
            return _run_child(pythons["baseline" if fn == "baseline" else "ours"], *cases.request(fn, rep))

        # warm the .pyc files of every side once (a deployed function ships compiled bytecode too)
        for fn in sides:
            run(fn, 10_000 + len(fn))
        for rep in range(repeat):
            for fn in sides:  # interleaved, so drift hits every side alike
                samples[fn].append(run(fn, rep))
            progress(f"cold_start: repetition {rep + 1}/{repeat} done")
    base_ms = statistics.median(s["ms"] for s in samples["baseline"])
    base_rss = statistics.median(s["peak_rss_mb"] for s in samples["baseline"])
    floor = samples["floor"]
    rows = []
    for fn in functions:
        ms = statistics.median(s["ms"] for s in samples[fn])
        rss = statistics.median(s["peak_rss_mb"] for s in samples[fn])
        # the share, paired by repetition: this function's cold start minus the floor measured next to it
        shares = [s["ms"] - f["ms"] for s, f in zip(samples[fn], floor, strict=True)]
        share = statistics.median(shares)
        # the same share from the phases where project code runs only (import of main, config, first
        # event, each minus the floor's): functions-framework's and google-auth's imports are the same
        # code in both processes, so their difference is noise only; leaving it out narrows the spread
        own = [
            sum(s["phases"].get(p, 0.0) - f["phases"].get(p, 0.0) for p in OWN_PHASES)
            for s, f in zip(samples[fn], floor, strict=True)
        ]
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
                "floor_ms": statistics.median(f["ms"] for f in floor),
                "share_ms": round(share, 1),
                "share_spread_ms": _spread(shares),
                "share_own_phases_ms": round(statistics.median(own), 1),
                "share_own_phases_spread_ms": _spread(own),
                "share_goal_ms": SHARE_GOAL_MS,
                "meets_share_goal": share <= SHARE_GOAL_MS,
                "share_breakdown_ms": _share_breakdown(samples[fn], floor),
                "phases_ms": _phase_medians(samples[fn]),
                "http_calls": statistics.median(s.get("http_calls", 0) for s in samples[fn]),
                "http_wait_ms": round(statistics.median(s.get("http_ms", 0.0) for s in samples[fn]), 1),
                "gc_ms": round(statistics.median(s.get("gc_ms", 0.0) for s in samples[fn]), 1),
                "gc_full_passes": statistics.median(s.get("gc_full", 0) for s in samples[fn]),
            }
        )
    return {
        "environments": "each side in a venv of its own deployed requirements"
        if isolated
        else "both sides in the development venv (smoke run: ratios not representative)",
        "baseline": "Google's sample shape: functions-framework + googleapiclient build('dataflow') + PublisherClient, first event",
        "floor": {
            "what": "functions-framework app + google.auth.default() + AuthorizedSession's first request "
            "(token from the metadata server), no project code, in our venv (evidence/bench/floor_function.py)",
            "wall_ms": statistics.median(f["ms"] for f in floor),
            "peak_rss_mb": statistics.median(f["peak_rss_mb"] for f in floor),
            "spread_ms": _spread([f["ms"] for f in floor]),
            "phases_ms": _phase_medians(floor),
            "http_calls": statistics.median(f.get("http_calls", 0) for f in floor),
            "http_wait_ms": round(statistics.median(f.get("http_ms", 0.0) for f in floor), 1),
            "gc_ms": round(statistics.median(f.get("gc_ms", 0.0) for f in floor), 1),
            "gc_full_passes": statistics.median(f.get("gc_full", 0) for f in floor),
        },
        "share_goal_ms": SHARE_GOAL_MS,
        "repetitions": repeat,
        "baseline_wall_ms": base_ms,
        "baseline_peak_rss_mb": base_rss,
        "functions": rows,
        "config_paths": _config_paths(samples) if variants else {},
        "import_breakdown": breakdown(pythons["ours"], 3 if repeat < 3 else 5),
        "heavy_modules_loaded_at_import": heavy_modules_at_import(),
    }


def _config_paths(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """on_object_finalized with its compiled config (as deployed) against the YAML alone, same run."""
    compiled, yaml_only = samples["on_object_finalized"], samples[YAML_ONLY]
    return {
        "what": "on_object_finalized cold start: config with its compiled form (JSON, no PyYAML) vs the YAML alone",
        "compiled_config_phase_ms": round(statistics.median(r["phases"]["config"] for r in compiled), 1),
        "yaml_only_config_phase_ms": round(statistics.median(r["phases"]["config"] for r in yaml_only), 1),
        "compiled_wall_ms": statistics.median(r["ms"] for r in compiled),
        "yaml_only_wall_ms": statistics.median(r["ms"] for r in yaml_only),
        "compiled_gc_full_passes": statistics.median(r.get("gc_full", 0) for r in compiled),
        "yaml_only_gc_full_passes": statistics.median(r.get("gc_full", 0) for r in yaml_only),
        "compiled_gc_ms": round(statistics.median(r.get("gc_ms", 0.0) for r in compiled), 1),
        "yaml_only_gc_ms": round(statistics.median(r.get("gc_ms", 0.0) for r in yaml_only), 1),
        "yaml_only_minus_compiled_ms": round(
            statistics.median(y["ms"] - c["ms"] for y, c in zip(yaml_only, compiled, strict=True)), 1
        ),
    }


def _spread(values: list[float]) -> dict[str, float]:
    """min, quartiles and max (the quartiles only mean something from about 5 repetitions)."""
    if len(values) == 1:
        return {
            "min": round(values[0], 1),
            "p25": round(values[0], 1),
            "p75": round(values[0], 1),
            "max": round(values[0], 1),
        }
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "min": round(min(values), 1),
        "p25": round(q[0], 1),
        "p75": round(q[2], 1),
        "max": round(max(values), 1),
    }


def _phase_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {p: round(statistics.median(r["phases"].get(p, 0.0) for r in runs), 1) for p in PHASES}


def _share_breakdown(runs: list[dict[str, Any]], floor: list[dict[str, Any]]) -> dict[str, float]:
    """Where the share goes, phase by phase, each the median over repetitions of (ours - floor) for
    that phase: ``import`` is ``main`` and the handlers it loads, ``config`` the load and validation,
    ``first_event`` the event end to end beyond the floor's credential path. The medians need not add
    up to the median share exactly."""
    breakdown = {
        p: round(
            statistics.median(
                r["phases"].get(p, 0.0) - f["phases"].get(p, 0.0) for r, f in zip(runs, floor, strict=True)
            ),
            1,
        )
        for p in PHASES
    }
    # the first event split: waiting on the local services' answers, and everything else
    breakdown["first_event_http_wait"] = round(
        statistics.median(
            r.get("http_ms", 0.0) - f.get("http_ms", 0.0) for r, f in zip(runs, floor, strict=True)
        ),
        1,
    )
    breakdown["first_event_rest"] = round(
        statistics.median(
            (r["phases"]["first_event"] - r.get("http_ms", 0.0))
            - (f["phases"]["first_event"] - f.get("http_ms", 0.0))
            for r, f in zip(runs, floor, strict=True)
        ),
        1,
    )
    return breakdown


BREAKDOWN_STEPS = (
    ("functions-framework", "import functions_framework"),
    ("+ google-auth credential path (compute engine, requests transport)",
     "import google.auth, google.auth.compute_engine, google.auth.transport.requests"),
    ("+ this project's modules for a launch (tenacity included; PyYAML is not: the compiled config is JSON)",
     "import main, handlers.entry.functions, handlers.launch.service, handlers.launch.store, handlers.backends.dataflow"),
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
            out = subprocess.run(
                [python, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True, check=True
            )
            ms, rss = out.stdout.split()
            samples.append((float(ms), float(rss)))
        rows.append(
            {
                "imports": label,
                "cumulative_ms": round(statistics.median(m for m, _ in samples), 1),
                "cumulative_rss_mb": round(statistics.median(r for _, r in samples), 1),
            }
        )
    rows.append(_from_source(python, code, repeat))
    return rows


def _from_source(python: str, code: str, repeat: int) -> dict[str, Any]:
    """The last step again with this project's sources compiled on the fly: a copy of ``main.py``
    and ``handlers/`` without ``__pycache__`` (as deploy/deploy.py stages them), ``-B`` so that no
    run writes bytecode for the next. The installed packages keep their .pyc files."""
    import shutil

    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(ROOT / "main.py", tmp)
        shutil.copytree(
            ROOT / "handlers", Path(tmp) / "handlers", ignore=shutil.ignore_patterns("__pycache__")
        )
        for _ in range(repeat):
            out = subprocess.run(
                [python, "-B", "-c", code], cwd=tmp, capture_output=True, text=True, check=True
            )
            ms, rss = out.stdout.split()
            samples.append((float(ms), float(rss)))
    return {
        "imports": "the same, this project's sources compiled from source (no .pyc shipped)",
        "cumulative_ms": round(statistics.median(m for m, _ in samples), 1),
        "cumulative_rss_mb": round(statistics.median(r for _, r in samples), 1),
    }


def heavy_modules_at_import() -> list[str]:
    """Modules a bare ``import main`` must not pull in (each function loads what it needs on first use)."""
    code = (
        "import sys, main; print(sorted(m for m in ('google.cloud.pubsub_v1', 'grpc', 'googleapiclient',"
        " 'jsonschema', 'handlers.backends.dataflow', 'handlers.follow.tracking', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().replace("'", '"')))
