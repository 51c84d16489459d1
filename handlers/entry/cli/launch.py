"""``launch`` and ``cancel``: the REST API's own service (:mod:`handlers.entry.manual`) from the command line."""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from handlers.backends.contract import TERMINAL_STATES
from handlers.core.errors import (
    RetryableError,
)
from handlers.entry.cli.args import EXIT_FAILURE, EXIT_OK, Missing, _load, _runtime
from handlers.entry.cli.output import Output, Progress, clean
from handlers.entry.manual import cancel_run, launchable, run_status, start_run


# ---------------------------------------------------------------------------------------------
# launch / cancel
# ---------------------------------------------------------------------------------------------
def _caller() -> str:
    try:
        import getpass

        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _current_state(status: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(state, backend state, reason) from :func:`handlers.entry.manual.run_status`: the ledger's state
    once terminal, else the backend's live state."""
    run = status["run"]
    live = status.get("live") or {}
    if run["state"] in TERMINAL_STATES or not live.get("state"):
        reason = (run.get("error") or {}).get("message") if run.get("error") else None
        return run["state"], run.get("raw_state"), reason
    return live["state"], live.get("backend_state"), live.get("reason")


def wait_for(
    runtime: Any,
    key: str,
    *,
    interval: float,
    timeout: float | None,
    progress: Progress,
    sleep: Callable[[float], Any] = time.sleep,
) -> tuple[str, str | None, str | None, bool]:
    """Poll :func:`handlers.entry.manual.run_status` until the run is terminal (or ``timeout``).

    Returns ``(state, backend_state, reason, timed_out)``.
    """

    started = time.monotonic()
    last = ""
    while True:
        state, raw, reason = _current_state(run_status(runtime, key))
        elapsed = time.monotonic() - started
        text = (
            f"{state}"
            + (f" ({clean(raw)})" if raw else "")
            + f"  {int(elapsed // 60)}:{int(elapsed % 60):02d}"
        )
        progress.update(f"waiting for {key}: {text}", force=text.split()[0] != last)
        last = state
        if state in TERMINAL_STATES:
            progress.done()
            return state, raw, reason, False
        if timeout is not None and elapsed >= timeout:
            progress.done()
            return state, raw, reason, True
        sleep(interval)


def cmd_launch(args: argparse.Namespace, out: Output) -> int:

    config = _load(args)
    runtime = _runtime(config)
    key = args.idempotency_key or str(uuid.uuid4())
    generated = args.idempotency_key is None
    inputs = dict(args.param or [])
    pipeline = config.pipelines.get(args.pipeline)
    if pipeline is None:
        known = ", ".join(sorted(p.name for p in config.pipelines.values() if launchable(p))) or "none"
        raise Missing(
            f"unknown pipeline {args.pipeline!r}",
            hint=f"the pipelines this config can launch by hand: {known} (`python -m handlers graph` shows them all)",
        )
    if generated and not out.json and launchable(pipeline):
        # Said before the launch, so an interrupted command can be retried as the same run.
        out.note(f"idempotency key {key} (retry with --idempotency-key {key} to reuse this run)")
    try:
        outcome, run = start_run(runtime, args.pipeline, inputs, key, caller=_caller())
    except RetryableError as exc:
        raise RetryableError(
            f"{exc.message}; retry safely with --idempotency-key {key}", run_key=exc.run_key
        ) from exc
    job = (run.job if run else None) or {}
    doc: dict[str, Any] = {
        "idempotency_key": key,
        "run_key": outcome.run_key,
        "pipeline": outcome.pipeline,
        "result": outcome.result,
        "state": run.state if run else None,
        "job_id": outcome.job_id or job.get("id"),
        "job_url": job.get("url"),
        "reason": outcome.reason,
    }
    code = EXIT_FAILURE if outcome.result == "failed" else EXIT_OK
    if not out.json:
        out.pairs(
            [
                ("run key", doc["run_key"]),
                ("result", doc["result"]),
                ("state", doc["state"] or "-"),
                ("job", doc["job_id"] or "-"),
                ("link", doc["job_url"] or "-"),
                ("idempotency key", key),
            ]
            + ([("reason", doc["reason"])] if doc["reason"] else [])
        )
    if args.wait and outcome.run_key and code == EXIT_OK:
        state, raw, reason, timed_out = wait_for(
            runtime,
            outcome.run_key,
            interval=args.interval,
            timeout=args.timeout,
            progress=Progress(out.stderr, True),
        )
        doc.update(final_state=state, backend_state=raw, final_reason=reason, wait_timed_out=timed_out)
        code = EXIT_OK if state == "SUCCEEDED" and not timed_out else EXIT_FAILURE
        if not out.json:
            if timed_out:
                out.line(out.paint(f"still {state} after {args.timeout:.0f}s: stopped waiting", "yellow"))
            else:
                out.line(
                    f"finished         {out.state(state)}"
                    + (f" ({clean(raw)})" if raw else "")
                    + (f": {clean(reason)}" if reason else "")
                )
    if out.json:
        out.emit(doc)
    return code


def cmd_cancel(args: argparse.Namespace, out: Output) -> int:

    runtime = _runtime(_load(args))
    run = cancel_run(runtime, args.run_key)
    job = run.job or {}
    if out.json:
        out.emit(
            {"run_key": run.run_key, "state": run.state, "cancel_requested": True, "job_id": job.get("id")}
        )
    else:
        out.line(
            f"cancel requested for {clean(run.run_key)} (job {clean(job.get('id') or '-')}, now {out.state(run.state)}); "
            "the tracker records CANCELLED when the job stops"
        )
    return EXIT_OK
