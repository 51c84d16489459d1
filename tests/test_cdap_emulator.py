"""Specification of the local Data Fusion + CDAP REST v3 emulator (local/emulators/cdap.py).

Each test reads GIVEN / WHEN / THEN and speaks the wire protocol with ``requests``. One emulator
serves the whole module; every test starts from ``POST /_emulator/reset`` with default settings and
registers the apps it needs. Runs follow the emulator clock, moved with ``POST /_emulator/clock``,
so no test sleeps for a run to progress.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from local.emulators.base import ServerHandle
from local.emulators.cdap import serve
from tests.support.emulator_client import advance, control, emulator_fixture, reset_emulator

ROOT = Path(__file__).resolve().parent.parent
BEARER = {"Authorization": "Bearer test-token"}
BATCH = "workflows/DataPipelineWorkflow"
STREAMING = "spark/DataStreamsSparkStreaming"


# ------------------------------------------------------------------------------------------ fixtures


emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    reset_emulator(emulator, {"visible_after_seconds": 0, "auto_instances": True, "require_auth": True})


@pytest.fixture
def cdap(emulator: ServerHandle) -> requests.Session:
    session = requests.Session()
    session.headers.update(BEARER)
    return session


def register(emulator: ServerHandle, app: str = "ingest", mode: str = "batch", **behavior: Any) -> None:
    body = {"namespace": "default", "app": app, "mode": mode, "behavior": behavior}
    control(emulator, "POST", "apps", body)


def ns_url(emulator: ServerHandle, namespace: str = "default") -> str:
    return f"{emulator.url}/api/v3/namespaces/{namespace}"


def program_url(emulator: ServerHandle, app: str = "ingest", program: str = BATCH) -> str:
    return f"{ns_url(emulator)}/apps/{app}/{program}"


def start(
    cdap: requests.Session,
    emulator: ServerHandle,
    app: str = "ingest",
    args: dict[str, Any] | None = None,
    streaming: bool = False,
) -> requests.Response:
    item: dict[str, Any] = {
        "appId": app,
        "programType": "spark" if streaming else "workflow",
        "programId": "DataStreamsSparkStreaming" if streaming else "DataPipelineWorkflow",
    }
    if args is not None:
        item["runtimeargs"] = args
    return cdap.post(f"{ns_url(emulator)}/start", json=[item], timeout=5)


def start_run(cdap: requests.Session, emulator: ServerHandle, **kwargs: Any) -> str:
    answer = start(cdap, emulator, **kwargs)
    assert answer.status_code == 200
    item = answer.json()[0]
    assert item["statusCode"] == 200, item
    return str(item["runId"])


def run_record(cdap: requests.Session, emulator: ServerHandle, run_id: str, program: str = BATCH) -> Any:
    r = cdap.get(f"{program_url(emulator, program=program)}/runs/{run_id}", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def runs(emulator: ServerHandle) -> list[dict[str, Any]]:
    return list(control(emulator, "GET", "runs")["runs"])


def assert_plain_text(r: requests.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.strip()


# ------------------------------------------------------------------------- Data Fusion instances.get


def test_instance_lookup_answers_a_v1_instance_whose_api_endpoint_is_the_emulators_cdap_api(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    from googleapiclient.discovery_cache import get_static_doc

    # GIVEN any instance name (auto_instances is the default)
    # WHEN the instance is looked up through the Data Fusion v1 API
    r = cdap.get(f"{emulator.url}/v1/projects/demo/locations/europe-west1/instances/etl", timeout=5)
    # THEN it is an Instance as the v1 discovery document describes it, ACTIVE, pointing at /api
    assert r.status_code == 200
    instance = r.json()
    schema = json.loads(get_static_doc("datafusion", "v1"))["schemas"]["Instance"]["properties"]
    assert set(instance) <= set(schema), set(instance) - set(schema)
    assert instance["name"] == "projects/demo/locations/europe-west1/instances/etl"
    assert instance["state"] == "ACTIVE"
    assert instance["state"] in schema["state"]["enum"]
    assert instance["apiEndpoint"] == f"{emulator.url}/api"
    assert instance["serviceEndpoint"] == emulator.url


def test_an_unregistered_instance_is_404_with_googles_error_json_when_auto_instances_is_off(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN only "etl" is registered and auto_instances is off
    control(emulator, "POST", "settings", {"auto_instances": False})
    control(emulator, "POST", "instances", {"instance": "etl", "state": "UPGRADING"})
    base = f"{emulator.url}/v1/projects/demo/locations/europe-west1/instances"
    # WHEN both names are looked up
    known, unknown = cdap.get(f"{base}/etl", timeout=5), cdap.get(f"{base}/other", timeout=5)
    # THEN the registered one answers with its state, the other 404 NOT_FOUND in Google's JSON shape
    assert known.status_code == 200 and known.json()["state"] == "UPGRADING"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["status"] == "NOT_FOUND"


def test_calls_without_a_bearer_token_are_refused_401(emulator: ServerHandle) -> None:
    # GIVEN a registered app and a client that sends no Authorization header
    register(emulator)
    # WHEN it looks up the instance and starts the pipeline
    lookup = requests.get(f"{emulator.url}/v1/projects/p/locations/l/instances/i", timeout=5)
    started = requests.post(
        f"{ns_url(emulator)}/start",
        json=[{"appId": "ingest", "programType": "workflow", "programId": "DataPipelineWorkflow"}],
        timeout=5,
    )
    # THEN Data Fusion answers Google's UNAUTHENTICATED JSON, CDAP plain text, and nothing runs
    assert lookup.status_code == 401 and lookup.json()["error"]["status"] == "UNAUTHENTICATED"
    assert_plain_text(started, 401)
    assert runs(emulator) == []
    assert control(emulator, "GET", "starts")["starts"][0]["status"] == 401


# ----------------------------------------------------------------------------------------- start


def test_batch_start_answers_one_result_per_item_with_its_own_status_code(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN one deployed batch pipeline
    register(emulator)
    items = [
        {
            "appId": "ingest",
            "programType": "workflow",
            "programId": "DataPipelineWorkflow",
            "runtimeargs": {"input": "gs://b/o", "retries": 3},
        },
        {"appId": "missing", "programType": "workflow", "programId": "DataPipelineWorkflow"},
        {"appId": "ingest", "programType": "spark", "programId": "DataStreamsSparkStreaming"},
    ]
    # WHEN a batch start names it, an unknown app, and a program the app does not have
    r = cdap.post(f"{ns_url(emulator)}/start", json=items, timeout=5)
    # THEN HTTP is 200 and each item carries its own statusCode: runId, or an error text
    assert r.status_code == 200
    ok, no_app, no_program = r.json()
    assert ok["statusCode"] == 200 and uuid.UUID(ok["runId"]) and "error" not in ok
    assert ok["programType"] == "Workflow"  # CDAP echoes the type's serialized name
    # the fields of CDAP's BatchProgramResult (cdap-proto, which extends BatchProgram: cdapio/cdap 2fd8cba2)
    assert set(ok) == {"appId", "programType", "programId", "appVersion", "statusCode", "runId"}
    assert set(no_app) == {"appId", "programType", "programId", "appVersion", "statusCode", "error"}
    assert no_app["statusCode"] == 404 and no_app["error"] and "runId" not in no_app
    assert no_program["statusCode"] == 404 and no_program["programType"] == "Spark"
    # AND the run was started with the runtime arguments, numbers read as text
    (run,) = runs(emulator)
    assert run["runtimeargs"] == {"input": "gs://b/o", "retries": "3"}


def test_a_start_in_an_unknown_namespace_fails_the_item_with_404(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN an app in "default" only
    register(emulator)
    # WHEN the start names another namespace
    r = cdap.post(
        f"{ns_url(emulator, 'finance')}/start",
        json=[{"appId": "ingest", "programType": "Workflow", "programId": "DataPipelineWorkflow"}],
        timeout=5,
    )
    # THEN the item says 404 (namespace not found) while HTTP says 200
    assert r.status_code == 200 and r.json()[0]["statusCode"] == 404


@pytest.mark.parametrize(
    "body",
    [
        {"appId": "ingest", "programType": "workflow", "programId": "DataPipelineWorkflow"},
        [{"appId": "ingest", "programId": "DataPipelineWorkflow"}],
        [{"appId": "ingest", "programType": "flow", "programId": "X"}],
        [
            {
                "appId": "ingest",
                "programType": "workflow",
                "programId": "DataPipelineWorkflow",
                "runtimeargs": [],
            }
        ],
    ],
    ids=["not-an-array", "no-program-type", "unknown-program-type", "args-not-an-object"],
)
def test_a_malformed_batch_start_is_400_plain_text_and_starts_nothing(
    emulator: ServerHandle, cdap: requests.Session, body: Any
) -> None:
    # GIVEN a deployed pipeline
    register(emulator)
    # WHEN the start request is malformed
    r = cdap.post(f"{ns_url(emulator)}/start", json=body, timeout=5)
    # THEN the whole request is refused with a plain-text 400 and no run exists
    assert_plain_text(r, 400)
    assert runs(emulator) == []
    assert control(emulator, "GET", "starts")["starts"][-1]["status"] == 400


def test_the_single_program_start_answers_200_without_a_run_id(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN a deployed batch pipeline
    register(emulator)
    # WHEN it is started through the single-program endpoint
    r = cdap.post(f"{program_url(emulator)}/start", json={"input": "x"}, timeout=5)
    # THEN the answer is an empty 200: the run exists, but the caller cannot know its id
    assert r.status_code == 200 and r.content == b""
    (run,) = runs(emulator)
    assert run["runtimeargs"] == {"input": "x"}


# --------------------------------------------------------------------------------- run lifecycle


def test_a_batch_run_moves_pending_starting_running_completed_on_the_emulator_clock(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN a pipeline taking 1 s to provision, 1 s to start, 3 s to run
    register(emulator, pending_seconds=1, starting_seconds=1, run_seconds=3)
    run_id = start_run(cdap, emulator, args={"day": "2026-03-01"})
    # WHEN the clock moves on, THEN the record follows, with epoch-second timestamps
    first = run_record(cdap, emulator, run_id)
    assert first["status"] == "PENDING" and first["cluster"]["status"] == "PROVISIONING"
    assert isinstance(first["starting"], int) and "start" not in first and "end" not in first
    assert json.loads(first["properties"]["runtimeArgs"])["day"] == "2026-03-01"
    advance(emulator, 1.2)
    assert run_record(cdap, emulator, run_id)["status"] == "STARTING"
    advance(emulator, 1)
    running = run_record(cdap, emulator, run_id)
    assert running["status"] == "RUNNING" and running["start"] >= running["starting"]
    advance(emulator, 3)
    done = run_record(cdap, emulator, run_id)
    assert done["status"] == "COMPLETED"
    assert done["end"] >= done["start"] and done["cluster"]["status"] == "DEPROVISIONED"


def test_a_failed_run_carries_no_error_text_but_classify_gives_the_failure(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN a pipeline whose outcome a runtime argument can override, and a stage that breaks
    register(
        emulator,
        outcome_arg="simulate.outcome",
        failure_message="Table orders not found",
        failure_stage="BigQuery",
    )
    failing = start_run(cdap, emulator, args={"simulate.outcome": "FAILED"})
    passing = start_run(cdap, emulator)
    advance(emulator, 10)
    # WHEN the runs are read and classified
    record = run_record(cdap, emulator, failing)
    classified = cdap.post(f"{program_url(emulator)}/runs/{failing}/classify", timeout=5)
    not_failed = cdap.post(f"{program_url(emulator)}/runs/{passing}/classify", timeout=5)
    # THEN the record only says FAILED; classify names the stage and message; others cannot be classified
    assert record["status"] == "FAILED" and "Table orders" not in json.dumps(record)
    assert run_record(cdap, emulator, passing)["status"] == "COMPLETED"
    assert classified.status_code == 200
    assert classified.json()[0]["stageName"] == "BigQuery"
    assert classified.json()[0]["errorMessage"] == "Table orders not found"
    assert_plain_text(not_failed, 400)


def test_a_streaming_run_keeps_running_until_stopped_then_stopping_then_killed(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN a running streaming pipeline
    register(emulator, app="events", mode="streaming", stop_seconds=2)
    run_id = start_run(cdap, emulator, app="events", streaming=True)
    url = f"{program_url(emulator, 'events', STREAMING)}/runs/{run_id}"
    advance(emulator, 3600)
    assert cdap.get(url, timeout=5).json()["status"] == "RUNNING"
    # WHEN it is stopped
    stopped = cdap.post(f"{url}/stop", timeout=5)
    # THEN it is STOPPING, then KILLED stop_seconds later, with stopping and end times
    assert stopped.status_code == 200
    record = cdap.get(url, timeout=5).json()
    assert record["status"] == "STOPPING" and "stopping" in record and "end" not in record
    advance(emulator, 2.5)
    record = cdap.get(url, timeout=5).json()
    assert record["status"] == "KILLED" and record["end"] >= record["stopping"]


def test_stop_answers_400_for_a_finished_or_unknown_run_404_for_an_unknown_app_and_kills_a_pending_one(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN one finished run and one still provisioning
    register(emulator, pending_seconds=30)
    finished = start_run(cdap, emulator)
    advance(emulator, 60)
    pending = start_run(cdap, emulator)
    base = f"{program_url(emulator)}/runs"
    # WHEN each is stopped, and an unknown run too
    again = cdap.post(f"{base}/{finished}/stop", timeout=5)
    unknown = cdap.post(f"{base}/{uuid.uuid1()}/stop", timeout=5)
    killed = cdap.post(f"{base}/{pending}/stop", timeout=5)
    no_app = cdap.post(f"{base.replace('/apps/', '/apps/nope-', 1)}/{uuid.uuid1()}/stop", timeout=5)
    # THEN, as CDAP's ProgramLifecycleService.issueStop decides (cdapio/cdap): a run with no active
    # run record, finished or unknown, is "not running" (400); an unknown program is 404; the
    # pending one is KILLED
    assert_plain_text(again, 400)
    assert_plain_text(unknown, 400)
    assert "is not running" in unknown.text
    assert_plain_text(no_app, 404)
    assert killed.status_code == 200
    assert run_record(cdap, emulator, pending)["status"] == "KILLED"


def test_a_just_started_run_answers_404_until_it_becomes_visible(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN run records become visible 5 s after the start (CDAP records runs asynchronously)
    control(emulator, "POST", "settings", {"visible_after_seconds": 5})
    register(emulator)
    run_id = start_run(cdap, emulator)
    # WHEN the run is read and listed right away
    early = cdap.get(f"{program_url(emulator)}/runs/{run_id}", timeout=5)
    listed = cdap.get(f"{program_url(emulator)}/runs", timeout=5).json()
    # THEN it is not found (plain text) and not listed; a little later it is
    assert_plain_text(early, 404)
    assert listed == []
    advance(emulator, 5)
    assert run_record(cdap, emulator, run_id)["runid"] == run_id
    assert [r["runid"] for r in cdap.get(f"{program_url(emulator)}/runs", timeout=5).json()] == [run_id]


def test_runs_list_is_newest_first_and_filters_by_status_start_end_and_limit(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN three runs, 100 s apart; the first two have finished
    register(emulator, run_seconds=3)
    first = start_run(cdap, emulator)
    advance(emulator, 100)
    second = start_run(cdap, emulator)
    advance(emulator, 100)
    third = start_run(cdap, emulator)
    url = f"{program_url(emulator)}/runs"
    starting = {r["runid"]: r["starting"] for r in cdap.get(url, timeout=5).json()}

    def listed(**params: Any) -> list[str]:
        r = cdap.get(url, params=params, timeout=5)
        assert r.status_code == 200, r.text
        return [record["runid"] for record in r.json()]

    # WHEN / THEN the list is newest first; filters narrow it
    assert listed() == [third, second, first]
    assert listed(status="completed") == [second, first]
    assert listed(status="PENDING") == [third]
    assert listed(limit=1) == [third]
    assert listed(start=starting[second]) == [third, second]
    assert listed(start=starting[first], end=starting[third]) == [second, first]
    assert_plain_text(cdap.get(url, params={"status": "DONE"}, timeout=5), 400)
    assert_plain_text(cdap.get(f"{ns_url(emulator, 'nope')}/apps/ingest/{BATCH}/runs", timeout=5), 404)
    assert_plain_text(cdap.get(f"{ns_url(emulator)}/apps/ingest/flows/x/runs", timeout=5), 400)


# ----------------------------------------------------------------------------------------- faults


def test_a_start_fault_answers_plain_text_with_retry_after_and_starts_nothing(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN CDAP will answer 503 once
    register(emulator)
    control(emulator, "POST", "faults", {"operation": "start", "status": 503, "retry_after": 2})
    # WHEN a start is sent twice
    refused = start(cdap, emulator)
    accepted = start(cdap, emulator)
    # THEN the first is a plain-text 503 with Retry-After and no run; the second starts one
    assert_plain_text(refused, 503)
    assert refused.headers["Retry-After"] == "2"
    assert accepted.status_code == 200
    assert len(runs(emulator)) == 1
    assert [s["status"] for s in control(emulator, "GET", "starts")["starts"]] == [503, 200]


def test_an_after_effect_fault_starts_the_run_and_then_loses_the_answer(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN a 504 after the effect, only for the start carrying run key k-1
    register(emulator)
    rule = {
        "operation": "start",
        "status": 504,
        "after_effect": True,
        "match": {"app": "ingest", "runtimeargs": {"eventpipelines.run_key": "k-1"}},
    }
    control(emulator, "POST", "faults", rule)
    # WHEN another start and then the matching one are sent
    other = start(cdap, emulator, args={"eventpipelines.run_key": "k-0"})
    lost = start(cdap, emulator, args={"eventpipelines.run_key": "k-1"})
    # THEN only the matching start was answered 504, yet both runs exist
    assert other.status_code == 200
    assert_plain_text(lost, 504)
    assert sorted(r["runtimeargs"]["eventpipelines.run_key"] for r in runs(emulator)) == ["k-0", "k-1"]


def test_a_start_item_fault_fails_the_item_while_http_stays_200(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN CDAP will say the program is already running (409) for the next item
    register(emulator)
    control(emulator, "POST", "faults", {"operation": "start.item", "status": 409})
    # WHEN it is started
    r = start(cdap, emulator)
    # THEN the HTTP status is 200 but the item says 409 with an error text, and nothing runs
    assert r.status_code == 200
    assert r.json()[0]["statusCode"] == 409 and r.json()[0]["error"]
    assert runs(emulator) == []


def test_run_faults_fire_per_operation(emulator: ServerHandle, cdap: requests.Session) -> None:
    # GIVEN a run, and faults on runs.get (once) and runs.list (twice)
    register(emulator)
    run_id = start_run(cdap, emulator)
    control(emulator, "POST", "faults", {"operation": "runs.get", "status": 500})
    control(emulator, "POST", "faults", {"operation": "runs.list", "status": 503, "times": 2})
    url = f"{program_url(emulator)}/runs"
    # WHEN / THEN each operation fails as many times as its rule says, then answers normally
    assert_plain_text(cdap.get(f"{url}/{run_id}", timeout=5), 500)
    assert cdap.get(f"{url}/{run_id}", timeout=5).status_code == 200
    assert [cdap.get(url, timeout=5).status_code for _ in range(3)] == [503, 503, 200]


def test_reset_forgets_runs_and_starts_but_keeps_apps(emulator: ServerHandle, cdap: requests.Session) -> None:
    # GIVEN a run of a registered app
    register(emulator)
    start_run(cdap, emulator)
    # WHEN the emulator is reset
    control(emulator, "POST", "reset")
    # THEN runs and starts are gone, and the app can still be started
    assert runs(emulator) == [] and control(emulator, "GET", "starts")["starts"] == []
    assert "ingest" in [a["app"] for a in control(emulator, "GET", "apps")["apps"]]
    start_run(cdap, emulator)


# ---------------------------------------------------------------------------------- deployed pipelines
# AppLifecycleHttpHandler (cdap-app-fabric): PUT .../apps/{app} takes an AppRequest and answers
# "Deploy Complete"; GET .../apps/{app} answers an ApplicationDetail whose configuration is JSON text.

PIPELINE = {
    "name": "orders",
    "description": "exported from Data Fusion",
    "artifact": {"name": "cdap-data-pipeline", "version": "6.10.1", "scope": "SYSTEM"},
    "config": {"stages": [{"name": "Source", "plugin": {"name": "GCSFile", "type": "batchsource"}}]},
}


def test_put_deploys_an_exported_pipeline_and_get_describes_it(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    answer = cdap.put(f"{ns_url(emulator)}/apps/orders", json=PIPELINE, timeout=5)
    assert (answer.status_code, answer.text) == (200, "Deploy Complete")
    detail = cdap.get(f"{ns_url(emulator)}/apps/orders", timeout=5).json()
    assert detail["name"] == "orders"
    assert detail["artifact"] == PIPELINE["artifact"]
    assert json.loads(detail["configuration"]) == PIPELINE["config"]
    assert detail["programs"] == [
        {"type": "Workflow", "app": "orders", "name": "DataPipelineWorkflow", "description": ""}
    ]
    uuid.UUID(detail["appVersion"])  # each deploy is a new version
    # AND the deployed pipeline can be started like any other
    assert start(cdap, emulator, app="orders").json()[0]["statusCode"] == 200


def test_each_put_makes_a_new_app_version(emulator: ServerHandle, cdap: requests.Session) -> None:
    versions = []
    for _ in range(2):
        cdap.put(f"{ns_url(emulator)}/apps/orders", json=PIPELINE, timeout=5).raise_for_status()
        versions.append(cdap.get(f"{ns_url(emulator)}/apps/orders", timeout=5).json()["appVersion"])
    assert versions[0] != versions[1]


def test_a_streaming_artifact_deploys_a_streaming_pipeline(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    body = {**PIPELINE, "artifact": {**PIPELINE["artifact"], "name": "cdap-data-streams"}}
    cdap.put(f"{ns_url(emulator)}/apps/live", json=body, timeout=5).raise_for_status()
    detail = cdap.get(f"{ns_url(emulator)}/apps/live", timeout=5).json()
    assert detail["programs"][0]["name"] == "DataStreamsSparkStreaming"


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ("{not json", 400, "JsonSyntaxException"),
        ({"config": PIPELINE["config"]}, 400, "Artifact must be provided"),
        (
            {**PIPELINE, "artifact": {"name": "my-plugin", "version": "1.0.0", "scope": "SYSTEM"}},
            404,
            "not found",
        ),
        ({**PIPELINE, "artifact": {**PIPELINE["artifact"], "scope": "GLOBAL"}}, 400, "Invalid scope"),
        ({**PIPELINE, "config": {"stages": []}}, 400, "at least one stage"),
    ],
)
def test_put_refuses_what_cdap_refuses_with_a_plain_text_reason(
    emulator: ServerHandle, cdap: requests.Session, body: Any, status: int, text: str
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    answer = cdap.put(f"{ns_url(emulator)}/apps/orders", data=data, timeout=5)
    assert answer.status_code == status and text in answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert cdap.get(f"{ns_url(emulator)}/apps/orders", timeout=5).status_code == 404


def test_get_of_an_unknown_app_or_namespace_is_404_plain_text(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    answer = cdap.get(f"{ns_url(emulator)}/apps/nope", timeout=5)
    assert (answer.status_code, answer.text) == (404, "Application 'nope' was not found.")
    assert cdap.get(f"{ns_url(emulator, 'finance')}/apps/nope", timeout=5).status_code == 404
    assert cdap.put(f"{ns_url(emulator, 'finance')}/apps/orders", json=PIPELINE, timeout=5).status_code == 404


def test_app_calls_need_a_bearer_token(emulator: ServerHandle) -> None:
    assert requests.put(f"{ns_url(emulator)}/apps/orders", json=PIPELINE, timeout=5).status_code == 401
    assert requests.get(f"{ns_url(emulator)}/apps/orders", timeout=5).status_code == 401


def test_reset_undoes_deploys_but_keeps_registered_apps(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    register(emulator)
    cdap.put(f"{ns_url(emulator)}/apps/orders", json=PIPELINE, timeout=5).raise_for_status()
    control(emulator, "POST", "reset")
    assert cdap.get(f"{ns_url(emulator)}/apps/orders", timeout=5).status_code == 404
    assert cdap.get(f"{ns_url(emulator)}/apps/ingest", timeout=5).status_code == 200


# ---------------------------------------------------------------------------------- event publishing
# datafusion v1 instances.patch with updateMask=eventPublishConfig; CDAP's ProgramStatusEventPublisher
# then writes a ProgramStatusEvent per run status change through Data Fusion's PubSubEventWriter.


def instance_url(emulator: ServerHandle, instance: str = "etl") -> str:
    return f"{emulator.url}/v1/projects/p/locations/europe-west1/instances/{instance}"


def test_patch_sets_event_publishing_and_answers_a_done_operation(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    config = {"enabled": True, "topic": "projects/p/topics/cdf-status"}
    answer = cdap.patch(
        instance_url(emulator),
        params={"updateMask": "eventPublishConfig"},
        json={"eventPublishConfig": config},
        timeout=5,
    )
    assert answer.status_code == 200
    operation = answer.json()
    assert operation["done"] is True and operation["metadata"]["verb"] == "update"
    assert operation["response"]["eventPublishConfig"] == config
    assert cdap.get(instance_url(emulator), timeout=5).json()["eventPublishConfig"] == config


def test_patch_without_the_mask_leaves_event_publishing_alone(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    body = {"eventPublishConfig": {"enabled": True, "topic": "projects/p/topics/cdf-status"}}
    cdap.patch(instance_url(emulator), json=body, timeout=5).raise_for_status()
    assert "eventPublishConfig" not in cdap.get(instance_url(emulator), timeout=5).json()


@pytest.mark.parametrize(
    "config",
    [
        {"enabled": True},
        {"enabled": "yes", "topic": "projects/p/topics/abc"},
        {"enabled": True, "topic": "cdf"},
    ],
)
def test_patch_refuses_an_incomplete_event_publish_config(
    emulator: ServerHandle, cdap: requests.Session, config: dict[str, Any]
) -> None:
    answer = cdap.patch(
        instance_url(emulator),
        params={"updateMask": "eventPublishConfig"},
        json={"eventPublishConfig": config},
        timeout=5,
    )
    assert answer.status_code == 400 and answer.json()["error"]["status"] == "INVALID_ARGUMENT"


def enable_events(cdap: requests.Session, emulator: ServerHandle, topic: str = "cdf-status") -> None:
    cdap.patch(
        instance_url(emulator),
        params={"updateMask": "eventPublishConfig"},
        json={"eventPublishConfig": {"enabled": True, "topic": f"projects/p/topics/{topic}"}},
        timeout=5,
    ).raise_for_status()


def events(emulator: ServerHandle) -> list[dict[str, Any]]:
    return [e["event"] for e in control(emulator, "GET", "events")["events"]]


def test_each_status_change_is_announced_as_a_program_status_event(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    # GIVEN an instance publishing events and a run of a registered app
    register(emulator, pending_seconds=1, starting_seconds=1, run_seconds=3)
    enable_events(cdap, emulator)
    run_id = start_run(cdap, emulator, args={"input": "gs://b/x", "eventpipelines.run_key": "k-1"})
    # WHEN the run ends
    advance(emulator, 10)
    # THEN one event per status, in order, shaped as CDAP's ProgramStatusEvent (Gson, nulls left out),
    # the workflow's own and those of the Spark program it runs the stages in, between its RUNNING
    # and its end
    announced = events(emulator)
    assert [
        (e["programStatusEventDetails"]["programName"], e["programStatusEventDetails"]["status"])
        for e in announced
    ] == [
        ("DataPipelineWorkflow", "PENDING"),
        ("DataPipelineWorkflow", "STARTING"),
        ("DataPipelineWorkflow", "RUNNING"),
        ("phase-1", "STARTING"),
        ("phase-1", "RUNNING"),
        ("phase-1", "COMPLETED"),
        ("DataPipelineWorkflow", "COMPLETED"),
    ]
    phase = announced[3]["programStatusEventDetails"]
    assert phase["workflowId"] == run_id and phase["systemArgs"]["workflowRunId"] == run_id
    assert phase["runID"] != run_id and phase["userArgs"]["eventpipelines.run_key"] == "k-1"
    last = announced[-1]
    assert set(last) == {"publishTime", "version", "instanceName", "projectName", "programStatusEventDetails"}
    assert (last["version"], last["instanceName"], last["projectName"]) == ("v1", "etl", "p")
    details = last["programStatusEventDetails"]
    assert details["runID"] == run_id and details["programName"] == "DataPipelineWorkflow"
    assert (details["applicationName"], details["namespace"]) == ("ingest", "default")
    assert details["userArgs"] == {"input": "gs://b/x", "eventpipelines.run_key": "k-1"}
    assert details["pipelineMetrics"] == [] and "error" not in details
    assert details["eventTime"] == announced[0]["programStatusEventDetails"]["eventTime"]  # the run id's time


def test_a_failed_run_announces_its_error_and_a_stopped_one_killed(
    emulator: ServerHandle, cdap: requests.Session
) -> None:
    register(emulator, outcome="FAILED", failure_message="bad row")
    register(emulator, app="slow", run_seconds=100)
    enable_events(cdap, emulator)
    start_run(cdap, emulator)
    slow = start_run(cdap, emulator, app="slow")
    advance(emulator, 10)
    cdap.post(f"{program_url(emulator, 'slow')}/runs/{slow}/stop", timeout=5).raise_for_status()
    advance(emulator, 5)
    final = {
        e["programStatusEventDetails"]["applicationName"]: e["programStatusEventDetails"]
        for e in events(emulator)
        if e["programStatusEventDetails"]["status"] in ("FAILED", "KILLED")
        and e["programStatusEventDetails"]["programName"] == "DataPipelineWorkflow"
    }
    phases = [
        e["programStatusEventDetails"]["status"]
        for e in events(emulator)
        if e["programStatusEventDetails"]["programName"] == "phase-1"
        and e["programStatusEventDetails"]["applicationName"] == "slow"
    ]
    assert phases == ["STARTING", "RUNNING", "KILLED"]  # killed with its workflow
    assert json.loads(final["ingest"]["error"])["message"] == "bad row"
    assert final["slow"]["status"] == "KILLED"


def test_no_events_without_event_publishing(emulator: ServerHandle, cdap: requests.Session) -> None:
    register(emulator)
    start_run(cdap, emulator)
    advance(emulator, 10)
    assert events(emulator) == []


def test_events_reach_the_pubsub_emulator_as_json_without_attributes(
    emulator: ServerHandle, cdap: requests.Session, pubsub_emulator: Any, unique_name: str
) -> None:
    from local.services import LOCAL_PROJECT, ensure_pull_subscription, ensure_topic, pull_all

    ensure_topic(LOCAL_PROJECT, unique_name, emulator_host=pubsub_emulator.host)
    ensure_pull_subscription(LOCAL_PROJECT, unique_name, unique_name, emulator_host=pubsub_emulator.host)
    control(emulator, "POST", "settings", {"pubsub_emulator_host": pubsub_emulator.host})
    try:
        register(emulator)
        cdap.patch(
            instance_url(emulator),
            params={"updateMask": "eventPublishConfig"},
            json={
                "eventPublishConfig": {
                    "enabled": True,
                    "topic": f"projects/{LOCAL_PROJECT}/topics/{unique_name}",
                }
            },
            timeout=5,
        ).raise_for_status()
        run_id = start_run(cdap, emulator)
        advance(emulator, 10)
        messages = pull_all(
            LOCAL_PROJECT, unique_name, min_messages=7, timeout=10, emulator_host=pubsub_emulator.host
        )
    finally:
        control(emulator, "POST", "settings", {"pubsub_emulator_host": None})
    details = [json.loads(m["data"])["programStatusEventDetails"] for m in messages]
    workflow = [d for d in details if d["programName"] == "DataPipelineWorkflow"]
    # (Pub/Sub keeps no order without ordering keys, and Data Fusion's writer sets none)
    assert sorted(d["status"] for d in workflow) == ["COMPLETED", "PENDING", "RUNNING", "STARTING"]
    assert {d["runID"] for d in workflow} == {run_id}
    assert len(details) == 7 and {d["workflowId"] for d in details} == {"", run_id}
    assert all(m["attributes"] == {} for m in messages)
    assert all(e["published"] for e in control(emulator, "GET", "events")["events"])


# -------------------------------------------------------------------------------------------- serving


def test_the_emulator_refuses_a_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve(host="0.0.0.0")


def test_the_command_line_prints_a_ready_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    # GIVEN an apps file
    apps = tmp_path / "apps.json"
    apps.write_text(json.dumps({"apps": [{"app": "ingest", "mode": "batch"}]}))
    # WHEN the emulator runs as a command
    proc = subprocess.Popen(
        [sys.executable, "-m", "local.emulators.cdap", "--port", "0", "--apps", str(apps)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        # THEN it announces its URL and serves the registered app
        assert ready["ready"] is True
        listed = requests.get(f"{ready['url']}/_emulator/apps", timeout=5).json()
        assert [a["app"] for a in listed["apps"]] == ["ingest"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
