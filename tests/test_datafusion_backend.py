"""Specification of the Data Fusion / CDAP backend (handlers/backends/datafusion.py) against the emulator.

Each test reads GIVEN / WHEN / THEN and asserts what reached the emulator (its request log, the
start items it received, the runs it created), not which function was called. One emulator serves
the module; every test starts from a reset with default settings.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from handlers.backends.contract import JobRef, LaunchRequest, RunState
from handlers.backends.datafusion import RUN_KEY_ARG, DataFusion, check_options
from handlers.core import logs
from handlers.core.errors import AlreadyExists, BackendRejected, BackendUnavailable, ConfigError, NotFound
from handlers.model.config import Pipeline, build_config
from local.emulators.base import ServerHandle
from local.emulators.cdap import serve
from local.kits.datafusion import DataFusionHarness
from tests.support.emulator_client import (
    advance,
    control,
    emulator_fixture,
    recorded_requests,
    reset_emulator,
)

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "demo-project"
REGION = "europe-west1"
INSTANCE = "etl"


# ------------------------------------------------------------------------------------------ fixtures


emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    reset_emulator(emulator, {"visible_after_seconds": 0, "auto_instances": True, "require_auth": True})


@pytest.fixture
def backend(emulator: ServerHandle) -> DataFusion:
    return DataFusion(session=bearer_session(), endpoint=emulator.url)


def bearer_session() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = "Bearer test-token"
    return session


def register(emulator: ServerHandle, app: str = "ingest", mode: str = "batch", **behavior: Any) -> None:
    behavior = {"pending_seconds": 1, "starting_seconds": 1, "run_seconds": 3, **behavior}
    control(emulator, "POST", "apps", {"app": app, "mode": mode, "behavior": behavior})


def fault(emulator: ServerHandle, **rule: Any) -> None:
    control(emulator, "POST", "faults", rule)


def requests_to(emulator: ServerHandle, suffix: str, method: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in recorded_requests(emulator)
        if r["path"].endswith(suffix) and (method is None or r["method"] == method)
    ]


def runs(emulator: ServerHandle) -> list[dict[str, Any]]:
    return list(control(emulator, "GET", "runs")["runs"])


def pipeline(app: str = "ingest", mode: str = "batch", **options: Any) -> Pipeline:
    opts = {"instance": INSTANCE, "app": app, **options}
    if "api_endpoint" in options:
        opts.pop("instance")
    return Pipeline(name=app, backend="datafusion", project=PROJECT, region=REGION, mode=mode, options=opts)


def launch_request(
    p: Pipeline, key: str = "storage-landing-0001", parameters: dict[str, str] | None = None
) -> LaunchRequest:
    return LaunchRequest(
        run_key=key,
        job_name=f"{p.name}-{key}",
        pipeline=p,
        parameters=parameters or {"input": "gs://landing/in.csv"},
    )


# ------------------------------------------------------------------------------------------ config


def test_a_datafusion_pipeline_in_the_routing_config_validates_its_backend_fields() -> None:
    # GIVEN a config with one valid Data Fusion pipeline and one with every mistake at once
    settings = {"project": PROJECT, "region": REGION, "ledger": {"bucket": "ledger"}}
    good = {"backend": "datafusion", "instance": INSTANCE, "app": "Ingest_Orders-v2"}
    broken = {"backend": "datafusion", "namespace": "fin-ance", "app": "bad app"}
    # WHEN it is loaded THEN only the broken pipeline's problems are reported, each naming its field
    with pytest.raises(ConfigError) as caught:
        build_config({"settings": settings, "pipelines": {"ingest": good, "broken": broken}})
    problems = "\n".join(caught.value.problems)
    assert "pipeline 'broken': app:" in problems
    assert "pipeline 'broken': namespace:" in problems
    assert "pipeline 'broken': instance: is required" in problems
    assert "'ingest'" not in problems
    cfg = build_config({"settings": settings, "pipelines": {"ingest": good}})
    assert dict(cfg.pipelines["ingest"].options) == {"instance": INSTANCE, "app": "Ingest_Orders-v2"}


def test_check_options_wants_an_instance_or_an_https_api_endpoint_but_not_both() -> None:
    assert check_options({"app": "a", "instance": "etl"}) == []
    assert (
        check_options({"app": "a", "api_endpoint": "https://x-dot-euw1.datafusion.googleusercontent.com/api"})
        == []
    )
    assert check_options({"app": "a", "api_endpoint": "http://127.0.0.1:8090/api"}) == []
    assert any(
        "not both" in p for p in check_options({"app": "a", "instance": "etl", "api_endpoint": "https://x"})
    )
    assert any(
        "https://" in p for p in check_options({"app": "a", "api_endpoint": "http://cdap.example.com/api"})
    )
    assert any(p.startswith("app:") for p in check_options({"instance": "etl"}))


def test_the_module_imports_no_http_or_google_library() -> None:
    # GIVEN a fresh interpreter WHEN the backend module is imported THEN requests/google stay unloaded
    code = (
        "import sys, handlers.backends.datafusion; "
        "print([m for m in ('requests', 'google.auth', 'googleapiclient') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ launch


def test_launch_starts_the_batch_workflow_with_the_parameters_and_the_run_key(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN a deployed batch pipeline on instance "etl"
    register(emulator)
    p = pipeline()
    # WHEN one run is launched
    ref = backend.launch(launch_request(p, parameters={"input": "gs://landing/in.csv", "day": "2026-03-01"}))
    # THEN CDAP received one batch start item for DataPipelineWorkflow with the parameters + run key
    (start,) = requests_to(emulator, "/namespaces/default/start")
    assert start["body"] == [
        {
            "appId": "ingest",
            "programType": "workflow",
            "programId": "DataPipelineWorkflow",
            "runtimeargs": {
                "input": "gs://landing/in.csv",
                "day": "2026-03-01",
                RUN_KEY_ARG: "storage-landing-0001",
            },
        }
    ]
    assert start["headers"]["Authorization"] == "Bearer test-token"
    # AND the reference names that run and how to reach it again
    (run,) = runs(emulator)
    assert ref.job_id == run["record"]["runid"]
    assert ref.backend == "datafusion" and ref.project == PROJECT and ref.region == REGION
    assert ref.url == f"{emulator.url}/pipelines/ns/default/view/ingest"
    assert {k: ref.extra[k] for k in ("namespace", "app", "program_type", "program_id", "api_endpoint")} == {
        "namespace": "default",
        "app": "ingest",
        "program_type": "workflow",
        "program_id": "DataPipelineWorkflow",
        "api_endpoint": f"{emulator.url}/api",
    }
    assert JobRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref  # survives the ledger


def test_the_instance_is_looked_up_once_for_many_launches_even_concurrent_ones(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN a deployed pipeline and a fresh backend (empty cache)
    register(emulator)
    p = pipeline()
    errors: list[BaseException] = []

    def launch(i: int) -> None:
        try:
            backend.launch(launch_request(p, key=f"k-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # WHEN eight launches run at once, then two more
    threads = [threading.Thread(target=launch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    launch(8)
    launch(9)
    # THEN every launch started a run, and the Data Fusion API was asked about the instance once
    assert errors == []
    assert len(runs(emulator)) == 10
    lookups = requests_to(emulator, f"/instances/{INSTANCE}")
    assert [r["path"] for r in lookups] == [f"/v1/projects/{PROJECT}/locations/{REGION}/instances/{INSTANCE}"]


def test_an_explicit_api_endpoint_skips_the_instance_lookup(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN a pipeline configured with the CDAP API base URL itself
    register(emulator)
    p = pipeline(api_endpoint=f"{emulator.url}/api")
    # WHEN it is launched
    ref = backend.launch(launch_request(p))
    # THEN no instance was looked up, the run started, and there is no UI link to offer
    assert requests_to(emulator, f"/instances/{INSTANCE}") == []
    assert len(runs(emulator)) == 1 and ref.url == ""


def test_an_unknown_app_is_a_permanent_not_found_although_http_said_200(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN no app named "missing"
    p = pipeline(app="missing")
    # WHEN it is launched THEN the item's statusCode 404 becomes NotFound (permanent)
    with pytest.raises(NotFound) as caught:
        backend.launch(launch_request(p))
    assert caught.value.pipeline == "missing" and caught.value.run_key == "storage-landing-0001"
    # AND the start request itself was answered 200
    assert [r["status"] for r in requests_to(emulator, "/start")] == [200]
    assert runs(emulator) == []


@pytest.mark.parametrize(
    ("item_status", "error"),
    [(400, BackendRejected), (403, BackendRejected), (500, BackendUnavailable), (503, BackendUnavailable)],
)
def test_a_failed_start_item_maps_to_the_error_tree(
    emulator: ServerHandle, backend: DataFusion, item_status: int, error: type[Exception]
) -> None:
    # GIVEN CDAP will fail the next start item with this statusCode
    register(emulator)
    fault(emulator, operation="start.item", status=item_status)
    # WHEN a run is launched THEN the matching error is raised
    with pytest.raises(error) as caught:
        backend.launch(launch_request(pipeline()))
    assert getattr(caught.value, "status", None) == item_status
    assert runs(emulator) == []


def test_an_item_conflict_is_already_exists_only_when_the_running_run_is_ours(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN CDAP answers 409 (program already running) to two starts: the first after starting our run
    register(emulator)
    mine = {"runtimeargs": {RUN_KEY_ARG: "mine"}}
    fault(emulator, operation="start.item", status=409, after_effect=True, match=mine)
    fault(emulator, operation="start.item", status=409, match={"runtimeargs": {RUN_KEY_ARG: "theirs"}})
    p = pipeline()
    # WHEN both are launched
    with pytest.raises(AlreadyExists):
        backend.launch(launch_request(p, key="mine"))
    # THEN ours is "already launched" (find sees our key); the other is a permanent rejection
    with pytest.raises(BackendRejected) as caught:
        backend.launch(launch_request(p, key="theirs"))
    assert not isinstance(caught.value, AlreadyExists) and caught.value.status == 409
    assert [r["runtimeargs"][RUN_KEY_ARG] for r in runs(emulator)] == ["mine"]


@pytest.mark.parametrize("status", [503, 504, 429])
def test_an_unavailable_cdap_is_retryable_with_its_retry_after(
    emulator: ServerHandle, backend: DataFusion, status: int
) -> None:
    # GIVEN CDAP answers the start with a transient HTTP error
    register(emulator)
    fault(emulator, operation="start", status=status, retry_after=7)
    # WHEN a run is launched THEN BackendUnavailable carries the server's hint, and nothing ran
    with pytest.raises(BackendUnavailable) as caught:
        backend.launch(launch_request(pipeline()))
    assert caught.value.status == status and caught.value.retry_after == 7
    assert runs(emulator) == []


def test_an_instance_being_upgraded_is_retryable_and_not_cached(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN the instance is being upgraded
    register(emulator)
    control(emulator, "POST", "instances", {"instance": INSTANCE, "state": "UPGRADING"})
    # WHEN a run is launched THEN it is retryable and nothing started
    with pytest.raises(BackendUnavailable):
        backend.launch(launch_request(pipeline()))
    assert runs(emulator) == []
    # AND once ACTIVE again, the next launch looks the instance up afresh and starts the run
    control(emulator, "POST", "instances", {"instance": INSTANCE, "state": "ACTIVE"})
    backend.launch(launch_request(pipeline()))
    assert len(requests_to(emulator, f"/instances/{INSTANCE}")) == 2 and len(runs(emulator)) == 1


def test_an_unknown_instance_is_not_found(emulator: ServerHandle, backend: DataFusion) -> None:
    control(emulator, "POST", "settings", {"auto_instances": False})
    with pytest.raises(NotFound):
        backend.launch(launch_request(pipeline(instance="gone")))


# ------------------------------------------------------------------------------------ find (idempotency)


def test_after_a_lost_start_answer_find_returns_the_same_run_and_nothing_is_started_twice(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN the start succeeds inside CDAP but its answer is lost (504 after the effect)
    register(emulator)
    fault(emulator, operation="start", status=504, after_effect=True)
    request = launch_request(pipeline())
    with pytest.raises(BackendUnavailable):
        backend.launch(request)
    # WHEN the launch service looks before relaunching (as it does after a retryable error)
    found = backend.find(request)
    # THEN it finds the run that did start, by its run key, and no second run exists
    (run,) = runs(emulator)
    assert found is not None and found.job_id == run["record"]["runid"]
    assert found.extra["program_id"] == "DataPipelineWorkflow"
    assert len(requests_to(emulator, "/start")) == 1
    listed = requests_to(emulator, "/workflows/DataPipelineWorkflow/runs", method="GET")
    assert listed[-1]["query"]["limit"] == "100"


def test_find_returns_none_without_a_run_of_this_key_and_the_newest_one_otherwise(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN two runs of key "a" (100 s apart) and one of key "b"
    register(emulator)
    p = pipeline()
    backend.launch(launch_request(p, key="a"))
    advance(emulator, 100)
    newest = backend.launch(launch_request(p, key="a"))
    backend.launch(launch_request(p, key="b"))
    # WHEN runs are looked up by key THEN key "a" yields its newest run and key "c" nothing
    found = backend.find(launch_request(p, key="a"))
    assert found is not None and found.job_id == newest.job_id
    assert backend.find(launch_request(p, key="c")) is None


def test_find_narrows_the_listing_to_runs_started_since_the_claim(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN a request that knows when its run was first claimed
    register(emulator)
    claimed = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    request = LaunchRequest(
        run_key="k", job_name="ingest-k", pipeline=pipeline(), parameters={}, requested_at=claimed
    )
    # WHEN find lists runs THEN it asks only for runs started since then (minus clock skew)
    backend.find(request)
    (listed,) = requests_to(emulator, "/runs", method="GET")
    assert int(listed["query"]["start"]) == int(claimed.timestamp()) - 600


# ----------------------------------------------------------------------------------------- status


def test_status_follows_the_run_through_to_completed(emulator: ServerHandle, backend: DataFusion) -> None:
    # GIVEN a launched batch run (1 s provisioning, 1 s starting, 3 s running)
    register(emulator)
    ref = backend.launch(launch_request(pipeline()))
    # WHEN its status is read as the clock moves THEN states are normalized, times are UTC datetimes
    pending = backend.status(ref)
    assert (pending.state, pending.raw_state) == (RunState.PENDING, "PENDING") and pending.end_time is None
    advance(emulator, 1.2)
    assert (backend.status(ref).state, backend.status(ref).raw_state) == (RunState.PENDING, "STARTING")
    advance(emulator, 1)
    running = backend.status(ref)
    assert running.state is RunState.RUNNING and running.start_time is not None
    advance(emulator, 3)
    done = backend.status(ref)
    assert (done.state, done.raw_state, done.reason) == (RunState.SUCCEEDED, "COMPLETED", None)
    assert done.end_time is not None and done.start_time is not None and done.end_time >= done.start_time
    assert done.end_time.tzinfo is dt.UTC and done.state_time == done.end_time
    assert requests_to(emulator, f"/workflows/DataPipelineWorkflow/runs/{ref.job_id}")


def test_a_failed_run_reports_the_reason_cdap_classifies(emulator: ServerHandle, backend: DataFusion) -> None:
    # GIVEN a pipeline whose BigQuery stage fails
    register(emulator, outcome="FAILED", failure_message="Table orders not found", failure_stage="BigQuery")
    ref = backend.launch(launch_request(pipeline()))
    advance(emulator, 10)
    # WHEN its status is read
    status = backend.status(ref)
    # THEN it is FAILED with the classified reason, read from the classify endpoint
    assert (status.state, status.raw_state) == (RunState.FAILED, "FAILED")
    assert status.reason == "BigQuery: Table orders not found"
    assert requests_to(emulator, f"/runs/{ref.job_id}/classify", method="POST")


def test_a_failed_run_without_a_classification_still_has_a_reason(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN a failed run on a CDAP whose classify endpoint answers 404 (older than 6.11)
    register(emulator, outcome="FAILED")
    ref = backend.launch(launch_request(pipeline()))
    advance(emulator, 10)
    fault(emulator, operation="runs.classify", status=404)
    # WHEN its status is read THEN the state is known and the reason says so
    status = backend.status(ref)
    assert status.state is RunState.FAILED and status.reason == "CDAP run FAILED"


def test_a_404_just_after_the_start_is_pending_but_later_it_is_not_found(emulator: ServerHandle) -> None:
    # GIVEN run records appear only 30 s after a start, and a backend on a controllable clock
    control(emulator, "POST", "settings", {"visible_after_seconds": 30})
    register(emulator)
    now = [1_000_000.0]
    backend = DataFusion(session=bearer_session(), endpoint=emulator.url, clock=lambda: now[0])
    ref = backend.launch(launch_request(pipeline()))
    # WHEN the run is read right away THEN CDAP says 404 and the backend says PENDING (not yet visible)
    early = backend.status(ref)
    assert (early.state, early.raw_state) == (RunState.PENDING, "NOT_YET_VISIBLE")
    assert requests_to(emulator, f"/runs/{ref.job_id}")[-1]["status"] == 404
    # AND once visible it is reported normally
    advance(emulator, 31)
    assert backend.status(ref).raw_state == "COMPLETED"  # a 5 s run, 31 s later
    # BUT a run still unknown long after its launch is NotFound
    stale = JobRef.from_json({**ref.to_json(), "id": "3f1c9a40-0000-11f1-8000-000000000000"})
    now[0] += 121
    with pytest.raises(NotFound):
        backend.status(stale)


def test_a_transient_error_on_status_is_retryable(emulator: ServerHandle, backend: DataFusion) -> None:
    register(emulator)
    ref = backend.launch(launch_request(pipeline()))
    fault(emulator, operation="runs.get", status=504)
    with pytest.raises(BackendUnavailable):
        backend.status(ref)
    assert backend.status(ref).state is RunState.PENDING


# ----------------------------------------------------------------------------------------- cancel


def test_cancel_stops_the_run_which_ends_killed_and_cancelled(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN a running batch run
    register(emulator, stop_seconds=2)
    ref = backend.launch(launch_request(pipeline()))
    advance(emulator, 2.5)
    assert backend.status(ref).state is RunState.RUNNING
    # WHEN it is cancelled
    backend.cancel(ref)
    # THEN CDAP received a stop for that run; it is STOPPING (still running), then KILLED = CANCELLED
    assert [r["status"] for r in requests_to(emulator, f"/runs/{ref.job_id}/stop")] == [200]
    stopping = backend.status(ref)
    assert (stopping.state, stopping.raw_state) == (RunState.RUNNING, "STOPPING")
    advance(emulator, 2.5)
    killed = backend.status(ref)
    assert (killed.state, killed.raw_state) == (RunState.CANCELLED, "KILLED")
    assert killed.end_time is not None


def test_a_drain_request_stops_the_run_and_says_so(emulator: ServerHandle, backend: DataFusion) -> None:
    # GIVEN a running streaming run
    register(emulator, app="events", mode="streaming")
    ref = backend.launch(launch_request(pipeline(app="events", mode="streaming")))
    advance(emulator, 5)
    stream = io.StringIO()
    logs.set_stream(stream)
    try:
        # WHEN a drain is asked for
        backend.cancel(ref, drain=True)
    finally:
        logs.set_stream(None)
    # THEN the run is stopped (CDAP has no drain), and a warning says so
    assert len(requests_to(emulator, f"/spark/DataStreamsSparkStreaming/runs/{ref.job_id}/stop")) == 1
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["severity"] == "WARNING" and "drain" in line["message"]


def test_stopping_a_finished_run_is_rejected(emulator: ServerHandle, backend: DataFusion) -> None:
    register(emulator)
    ref = backend.launch(launch_request(pipeline()))
    advance(emulator, 10)
    with pytest.raises(BackendRejected) as caught:
        backend.cancel(ref)
    assert caught.value.status == 400


# -------------------------------------------------------------------------------------- streaming


def test_a_streaming_pipeline_runs_the_spark_streaming_program(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN a deployed streaming pipeline
    register(emulator, app="events", mode="streaming")
    p = pipeline(app="events", mode="streaming")
    # WHEN it is launched and watched for an hour
    ref = backend.launch(launch_request(p))
    advance(emulator, 3600)
    status = backend.status(ref)
    # THEN the spark program was started, its run is read on the spark path, and it keeps running
    (start,) = requests_to(emulator, "/start")
    assert start["body"][0]["programType"] == "spark"
    assert start["body"][0]["programId"] == "DataStreamsSparkStreaming"
    assert ref.extra["program_type"] == "spark"
    assert requests_to(emulator, f"/apps/events/spark/DataStreamsSparkStreaming/runs/{ref.job_id}")
    assert status.state is RunState.RUNNING
    found = backend.find(launch_request(p))
    assert found is not None and found.job_id == ref.job_id


# ---------------------------------------------------------------------------------------- harness


def test_the_harness_drives_the_emulator_for_the_contract_suite(emulator: ServerHandle) -> None:
    # GIVEN the harness and a pipeline defined through it
    harness = DataFusionHarness(emulator)
    harness.reset()
    options = harness.pipeline_options("orders")
    doc = {
        "settings": {"project": PROJECT, "region": REGION, "ledger": {"bucket": "ledger"}},
        "pipelines": {"orders": options},
    }
    p = build_config(doc).pipelines["orders"]
    backend = harness.backend()
    # WHEN a launch's answer is lost, and the pipeline is then set to fail
    harness.inject("launch", 503, after_effect=True)
    with pytest.raises(BackendUnavailable):
        backend.launch(launch_request(p, parameters={"input": "gs://b/o"}))
    found = backend.find(launch_request(p))
    harness.set_outcome("orders", succeed=False, reason="bad rows")
    failing = backend.launch(launch_request(p, key="second"))
    harness.advance(10)
    # THEN the harness reports what the emulator received and created
    assert harness.launches()[0]["parameters"] == {"input": "gs://b/o"}
    assert [launch["status"] for launch in harness.launches()] == [503, 200]
    assert harness.runs_started() == 2 and found is not None
    assert backend.status(found).state is RunState.SUCCEEDED
    assert backend.status(failing).reason == "bad rows"
    assert harness.expire_credentials() is False
