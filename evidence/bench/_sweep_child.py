"""One sweep in a fresh process, as ``check_runs`` runs it; prints wall time, peak RSS and the API
calls it made, counted at the two HTTP sessions (ledger and backend).

    python -m evidence.bench._sweep_child CONFIG [--floor N]

``--floor N``: instead of sweeping, issue the sweep's own backend calls (``jobs.get`` of the first N
active runs) through the same pool size and nothing else: the floor any sweep pays.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import time
from typing import Any

from evidence.bench._cold_child import peak_rss_mb
from evidence.bench.stack import CallCounter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--floor", action="store_true")
    args = parser.parse_args()

    import requests

    from handlers.core import clients
    from handlers.follow.tracking import SWEEP_WORKERS, Tracker
    from handlers.launch.runtime import make_runtime
    from handlers.model.config import load_config

    counter = CallCounter()
    ledger_http = requests.Session()
    ledger_http.hooks["response"].append(counter.hook("ledger"))
    backend_http = clients.google_session()
    backend_http.hooks["response"].append(counter.hook("backend"))
    runtime = make_runtime(load_config(args.config), ledger_session=ledger_http)
    started = time.perf_counter()
    if args.floor:
        active = runtime.ledger.active()
        backend = runtime.backend("dataflow")
        from handlers.backends.contract import JobRef

        refs = [JobRef.from_json(m.job) for _, m in active if m is not None and m.job]
        listed = time.perf_counter()
        with cf.ThreadPoolExecutor(SWEEP_WORKERS) as pool:
            list(pool.map(backend.status, refs))
        result: dict[str, Any] = {"runs": len(refs), "list_s": round(listed - started, 2)}
    else:
        report = Tracker(runtime).sweep(budget_seconds=600)
        result = {
            "runs": report.checked,
            "finished": len(report.finished),
            "errors": len(report.errors),
            "left_for_next": report.left_for_next,
        }
    result.update(
        wall_s=round(time.perf_counter() - started, 2),
        peak_rss_mb=peak_rss_mb(),
        calls=dict(counter.calls),
        workers=SWEEP_WORKERS,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
