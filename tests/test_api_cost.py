"""Specification: what a launch and a sweep cost in API calls, counted where they arrive.

Ledger calls are counted by the HTTP session the ledger sends through (every request that reaches
fake-gcs-server); backend calls by the Dataflow emulator's own request log. The launch path is
claim -> launch request -> active marker carrying the job: three calls, ledger included. A sweep over
runs whose state did not change asks each backend once and touches the ledger only to list markers.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from handlers.entry import functions as dispatch
from handlers.follow.tracking import Tracker
from tests.support import events as ev


class CountingSession(requests.Session):
    """A plain requests session that remembers each request (method, path) it sent to fake-gcs-server."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with self._lock:
            self.calls.append((method, requests.utils.urlparse(url).path))
        return super().request(method, url, *args, **kwargs)

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def counted(world, dataflow, gcs_server):
    session = CountingSession()
    pipelines = {
        "wordcount": {
            **dataflow.pipeline_options("wordcount"),
            "parameters": {"inputFile": "gs://{bucket}/{name}", "output": "gs://out/{name}"},
        }
    }
    triggers = {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wordcount"}}
    config = world.config(pipelines, triggers)
    from handlers.launch.runtime import make_runtime

    runtime = make_runtime(config, ledger_session=session)
    return runtime, session


def deliver(runtime, name: str, generation: int = 1) -> None:
    dispatch.handle_object_finalized(ev.storage_finalized("landing", name, generation=generation), runtime)


def backend_calls(dataflow, since: int = 0) -> list[str]:
    """``METHOD last-path-segment`` of each request the Dataflow emulator received after ``since``."""
    return [f"{r['method']} {r['path'].rsplit('/', 1)[-1]}" for r in dataflow.requests_received()[since:]]


def test_a_launch_costs_three_api_calls_ledger_included(counted, dataflow):
    runtime, session = counted
    deliver(runtime, "a.csv")
    ledger_calls = session.take()
    # THEN: one create-only claim, one marker write, and one launch request; nothing else
    assert len(ledger_calls) == 2, ledger_calls
    assert all(method == "POST" and "/upload/" in path for method, path in ledger_calls)
    assert backend_calls(dataflow) == ["POST templates:launch"]
    (job,) = dataflow.jobs()
    # and every reader sees the launched run with its job at once (folded in from the marker)
    (key,) = runtime.ledger.all_keys()
    run = runtime.ledger.get(key)
    assert run.state == "PENDING" and run.job["id"] == job["id"]


def test_a_duplicate_delivery_right_after_the_launch_sees_the_job_and_launches_nothing(counted, dataflow):
    runtime, _ = counted
    deliver(runtime, "dup.csv")
    deliver(runtime, "dup.csv")
    assert len(dataflow.jobs()) == 1
    assert [c for c in backend_calls(dataflow) if c.endswith("templates:launch")] == ["POST templates:launch"]


def test_the_first_sweep_writes_the_job_into_the_record_and_quiet_sweeps_then_cost_no_ledger_read(
    counted, dataflow
):
    runtime, session = counted
    for i in range(5):
        deliver(runtime, f"quiet-{i}.csv")
    keys = runtime.ledger.all_keys()
    tracker = Tracker(runtime)
    tracker.sweep()  # first sweep: each record gains its job (CAS), each marker its state
    stored = {
        k: runtime.ledger.store.read(f"{runtime.ledger.prefix}runs/{k}.json")[0]  # type: ignore[index]
        for k in keys
    }
    assert all(b'"job":{' in data for data in stored.values())
    session.take()
    since = len(dataflow.requests_received())
    # WHEN nothing changed at the backend
    report = tracker.sweep()
    # THEN the sweep listed the markers once and asked the backend once per run: no read, no write
    assert report.checked == 5 and not report.finished
    assert session.take() == [("GET", f"/storage/v1/b/{runtime.config.settings.ledger_bucket}/o")]
    assert sorted(backend_calls(dataflow, since)) == sorted(
        f"GET {runtime.ledger.get(k).job['id']}"
        for k in keys  # type: ignore[union-attr]
    )


def test_a_state_change_seen_by_the_sweep_is_written_to_the_record_and_the_marker(counted, dataflow):
    runtime, _ = counted
    deliver(runtime, "done.csv")
    tracker = Tracker(runtime)
    tracker.sweep()
    dataflow.advance(600)  # the job ends DONE
    report = tracker.sweep()
    (key,) = runtime.ledger.all_keys()
    assert report.finished == {key: "SUCCEEDED"}
    assert runtime.ledger.active_keys() == []
    run = runtime.ledger.get(key)
    assert run.state == "SUCCEEDED" and run.completion["published"] is True


def test_a_quiet_run_is_rewritten_every_half_stall_after_so_the_lifecycle_rule_never_ages_it_out(
    counted, dataflow
):
    import datetime as dt

    from handlers.core.times import now

    runtime, session = counted
    deliver(runtime, "long.csv")
    Tracker(runtime).sweep()
    (key,) = runtime.ledger.all_keys()
    before = runtime.ledger.get(key)
    session.take()
    # WHEN 16 minutes pass quietly (stall_after defaults to 30 min)
    later = now() + dt.timedelta(minutes=16)
    Tracker(runtime, clock=lambda: later).sweep()
    # THEN the record was rewritten (a new generation, last_seen moved) and its marker too
    after = runtime.ledger.get(key)
    assert after.generation != before.generation and after.last_seen_at > before.last_seen_at
    ((_, marker),) = runtime.ledger.active()
    assert marker is not None and marker.seen_at == after.last_seen_at
    writes = [c for c in session.take() if c[0] == "POST"]
    assert len(writes) == 2  # the record (CAS) and the marker
