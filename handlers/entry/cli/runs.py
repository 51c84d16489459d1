"""``runs``: the ledger's runs, newest first."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import threading
from collections.abc import Sequence
from typing import Any

from handlers.entry.cli.args import EXIT_OK, _age, _load, _runtime
from handlers.entry.cli.output import Output, Progress, _isatty

# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
DEFAULT_RUNS_LIMIT = 50


def _read_runs(ledger: Any, keys: Sequence[str], progress: Progress, workers: int = 8) -> list[Any]:
    """Read run records concurrently, reporting ``reading i/n runs``."""
    runs = []
    total = len(keys)
    done = 0
    lock = threading.Lock()
    progress.update(f"reading 0/{total} runs", force=True)
    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, total or 1))) as pool:
        for run in pool.map(ledger.get, keys):
            with lock:
                done += 1
                progress.update(f"reading {done}/{total} runs", force=done == total)
            if run is not None:
                runs.append(run)
    progress.done()
    return runs


def run_row(run: Any, now: dt.datetime) -> dict[str, Any]:
    """One run as the ``runs`` command shows it."""
    job = run.job or {}
    age, seconds = _age(run.created_at, now)
    return {
        "run_key": run.run_key,
        "pipeline": run.pipeline,
        "trigger": run.trigger,
        "state": run.state,
        "age": age,
        "age_seconds": round(seconds, 3) if seconds is not None else None,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "job_id": job.get("id"),
        "job_url": job.get("url"),
        "error": (run.error or {}).get("message") if run.error else None,
    }


def cmd_runs(args: argparse.Namespace, out: Output) -> int:
    config = _load(args)
    runtime = _runtime(config)
    ledger = runtime.ledger
    keys = ledger.active_keys() if args.active else ledger.all_keys()
    show = args.progress or (_isatty(out.stderr) and len(keys) > 20)
    runs = _read_runs(ledger, keys, Progress(out.stderr, show))
    if args.pipeline:
        runs = [r for r in runs if r.pipeline == args.pipeline]
    if args.state:
        runs = [r for r in runs if r.state == args.state]
    runs.sort(key=lambda r: (r.created_at or "", r.run_key), reverse=True)
    total = len(runs)
    if args.limit:
        runs = runs[: args.limit]
    now = dt.datetime.now(dt.UTC)
    rows = [run_row(r, now) for r in runs]
    if out.json:
        out.emit({"runs": rows, "total": total, "shown": len(rows), "active_only": bool(args.active)})
        return EXIT_OK
    if not rows:
        out.line("no runs" + (" (active index)" if args.active else ""))
        return EXIT_OK
    out.table(
        ["RUN KEY", "PIPELINE", "TRIGGER", "STATE", "AGE", "JOB", "LINK"],
        [
            [
                r["run_key"],
                r["pipeline"],
                r["trigger"],
                r["state"],
                r["age"],
                r["job_id"] or "-",
                r["job_url"] or "-",
            ]
            for r in rows
        ],
        [None, None, None, "state", None, None, "dim"],
    )
    more = f" of {total} (--limit 0 shows all)" if total > len(rows) else ""
    out.line(out.paint(f"{len(rows)} run{'' if len(rows) == 1 else 's'}{more}, newest first", "dim"))
    return EXIT_OK
