"""Specification of the local Dataproc Serverless batches emulator (local/emulators/dataproc.py).

Each test reads GIVEN / WHEN / THEN. One emulator serves the module; every test starts from
``POST /_emulator/reset``. Most tests drive it with Google's own discovery-based client, built from
the ``dataproc v1`` document bundled with google-api-python-client, so the emulator is proven to
answer what that client sends; a few send raw HTTP to reach what the client cannot (malformed
bodies, the control API). Batch states follow the emulator clock, moved with ``/_emulator/clock``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import requests
from googleapiclient.errors import HttpError

from local.emulators.base import ServerHandle
from local.emulators.dataproc import DISCOVERY_REVISION, serve
from tests.support.emulator_client import advance, control, emulator_fixture, recorded_requests

PROJECT = "demo-project"
REGION = "europe-west1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
MAIN = "gs://jobs-bucket/etl/daily.py"
RFC3339_Z_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")

emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    control(emulator, "POST", "reset")
    register(emulator)


def register(emulator: ServerHandle, main: str = MAIN, **behavior: Any) -> None:
    body = {"main": main, "behavior": {"pending_seconds": 1, "run_seconds": 3, **behavior}}
    control(emulator, "POST", "mains", body)


@pytest.fixture
def client(emulator: ServerHandle) -> Any:
    """Google's discovery client for dataproc v1, pointed at the emulator, anonymous."""
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient.discovery import build_from_document
    from googleapiclient.discovery_cache import get_static_doc

    return build_from_document(
        get_static_doc("dataproc", "v1"),
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.url + "/"},
    )


def create(client: Any, batch_id: str = "daily-0001", **body: Any) -> dict[str, Any]:
    batch = {"pysparkBatch": {"mainPythonFileUri": MAIN, "args": ["--day=2026-12-06"]}, **body}
    return dict(
        client.projects().locations().batches().create(parent=PARENT, batchId=batch_id, body=batch).execute()
    )


def get(client: Any, batch_id: str = "daily-0001") -> dict[str, Any]:
    return dict(client.projects().locations().batches().get(name=f"{PARENT}/batches/{batch_id}").execute())


def error_of(exc: HttpError) -> dict[str, Any]:
    return dict(json.loads(exc.content)["error"])


# --------------------------------------------------------------------------------------- discovery


def test_the_emulator_follows_the_bundled_discovery_revision():
    from googleapiclient.discovery_cache import get_static_doc

    # GIVEN the discovery document google-api-python-client bundles
    doc = json.loads(get_static_doc("dataproc", "v1"))
    # THEN the emulator names the revision it was written against
    assert doc["revision"] == DISCOVERY_REVISION


# ------------------------------------------------------------------------------------------ create


def test_create_answers_a_batch_operation_and_the_batch_is_pending(client, emulator):
    # WHEN Google's client creates a PySpark batch with a chosen id, a request id and labels
    op = (
        client.projects()
        .locations()
        .batches()
        .create(
            parent=PARENT,
            batchId="daily-0001",
            requestId="req-1",
            body={"pysparkBatch": {"mainPythonFileUri": MAIN}, "labels": {"team": "data"}},
        )
        .execute()
    )
    # THEN the answer is an Operation named under regions/, describing the batch
    assert re.fullmatch(rf"projects/{PROJECT}/regions/{REGION}/operations/[0-9a-f]{{32}}", op["name"])
    meta = op["metadata"]
    assert meta["@type"] == "type.googleapis.com/google.cloud.dataproc.v1.BatchOperationMetadata"
    assert meta["batch"] == f"{PARENT}/batches/daily-0001"
    assert meta["operationType"] == "BATCH" and meta["labels"] == {"team": "data"}
    assert "done" not in op
    # AND the batch reads back PENDING, pointing at that operation
    batch = get(client)
    assert batch["state"] == "PENDING" and batch["operation"] == op["name"]
    assert batch["uuid"] == meta["batchUuid"] and RFC3339_Z_RE.fullmatch(batch["createTime"])
    assert batch["labels"] == {"team": "data"}
    # AND the request the client sent is what the emulator recorded
    (sent,) = [r for r in recorded_requests(emulator) if r["method"] == "POST"]
    assert sent["path"] == f"/v1/{PARENT}/batches"
    assert sent["query"] == {"batchId": "daily-0001", "requestId": "req-1", "alt": "json"}


def test_a_used_batch_id_answers_409_already_exists_in_any_state(client, emulator):
    # GIVEN a batch that has already finished
    create(client)
    advance(emulator, 60)
    assert get(client)["state"] == "SUCCEEDED"
    # WHEN a second create uses the same id
    with pytest.raises(HttpError) as caught:
        create(client)
    # THEN it answers 409 ALREADY_EXISTS and no second batch exists
    assert caught.value.resp.status == 409 and error_of(caught.value)["status"] == "ALREADY_EXISTS"
    assert len(control(emulator, "GET", "batches")["batches"]) == 1


def test_a_repeated_request_id_answers_the_first_operation(emulator):
    # GIVEN a create whose answer the client never saw
    url = f"{emulator.url}/v1/{PARENT}/batches"
    body = {"pysparkBatch": {"mainPythonFileUri": MAIN}}
    params = {"batchId": "daily-0001", "requestId": "same-request"}
    first = requests.post(url, params=params, json=body, timeout=5)
    # WHEN the same request (same requestId) is sent again
    again = requests.post(url, params=params, json=body, timeout=5)
    # THEN it answers the first operation, not a conflict
    assert first.status_code == again.status_code == 200
    assert again.json()["name"] == first.json()["name"]


@pytest.mark.parametrize(
    ("batch_id", "ok"),
    [
        ("abcd", True),
        ("a" * 63, True),
        ("abc", False),
        ("a" * 64, False),
        ("Daily-1", False),
        ("a_b_c", False),
    ],
)
def test_batch_ids_are_4_to_63_lowercase_letters_digits_or_hyphens(client, batch_id, ok):
    # WHEN a batch is created with this id
    if ok:
        assert create(client, batch_id)["metadata"]["batch"].endswith(f"/batches/{batch_id}")
        return
    with pytest.raises(HttpError) as caught:
        create(client, batch_id)
    # THEN an invalid one answers 400 INVALID_ARGUMENT naming batch_id
    assert caught.value.resp.status == 400
    assert error_of(caught.value)["details"][0]["fieldViolations"][0]["field"] == "batch_id"


def test_unknown_fields_at_any_depth_answer_400_naming_the_path(emulator):
    # WHEN a body carries a field the discovery document does not know, inside environmentConfig
    body = {
        "pysparkBatch": {"mainPythonFileUri": MAIN},
        "environmentConfig": {"executionConfig": {"serviceAccount": "sa@x", "machineType": "n2"}},
    }
    r = requests.post(f"{emulator.url}/v1/{PARENT}/batches", params={"batchId": "abcd"}, json=body, timeout=5)
    # THEN it answers Google's 400 INVALID_ARGUMENT naming the field and where it is
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and '"machineType"' in error["message"]
    violation = error["details"][0]["fieldViolations"][0]
    assert violation["field"] == "batch.environment_config.execution_config"


def test_wrongly_typed_values_and_bad_durations_are_refused(emulator):
    url = f"{emulator.url}/v1/{PARENT}/batches"
    # WHEN args is not a list, or ttl is not a protobuf Duration
    bad_args = {"pysparkBatch": {"mainPythonFileUri": MAIN, "args": "--x=1"}}
    bad_ttl = {
        "pysparkBatch": {"mainPythonFileUri": MAIN},
        "environmentConfig": {"executionConfig": {"ttl": "1h"}},
    }
    # THEN both answer 400 INVALID_ARGUMENT
    for body in (bad_args, bad_ttl):
        r = requests.post(url, params={"batchId": "abcd"}, json=body, timeout=5)
        assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_exactly_one_workload_with_its_main_is_required(client):
    # WHEN a batch names no workload, two workloads, or a Spark batch without main class or jar
    bodies = [
        {},
        {"pysparkBatch": {"mainPythonFileUri": MAIN}, "sparkBatch": {"mainClass": "a.B"}},
        {"sparkBatch": {"args": ["x"]}},
        {"pysparkBatch": {"args": ["x"]}},
    ]
    for body in bodies:
        with pytest.raises(HttpError) as caught:
            client.projects().locations().batches().create(parent=PARENT, batchId="abcd", body=body).execute()
        # THEN each answers 400 INVALID_ARGUMENT
        assert caught.value.resp.status == 400 and error_of(caught.value)["status"] == "INVALID_ARGUMENT"


def test_output_only_fields_sent_by_a_client_are_ignored(client):
    # WHEN a client sends output-only fields with its batch
    create(client, state="SUCCEEDED", uuid="mine", name="projects/x/locations/y/batches/z")
    # THEN the service's own values stand
    batch = get(client)
    assert batch["state"] == "PENDING" and batch["uuid"] != "mine"
    assert batch["name"] == f"{PARENT}/batches/daily-0001"


def test_labels_follow_the_label_rules(client):
    # WHEN labels break the rules (upper case key, too many)
    for labels in ({"Team": "x"}, {f"k{i}": "v" for i in range(33)}):
        with pytest.raises(HttpError) as caught:
            create(client, labels=labels)
        # THEN 400 INVALID_ARGUMENT on batch.labels
        assert error_of(caught.value)["details"][0]["fieldViolations"][0]["field"] == "batch.labels"


def test_every_workload_kind_is_accepted(client, emulator):
    # GIVEN main files registered for Spark (jar and class), SparkR and Spark SQL
    for main in ("gs://b/app.jar", "com.example.Main", "gs://b/report.R", "gs://b/q.sql"):
        register(emulator, main)
    bodies = {
        "spark-jar": {"sparkBatch": {"mainJarFileUri": "gs://b/app.jar", "args": ["a"]}},
        "spark-class": {"sparkBatch": {"mainClass": "com.example.Main", "jarFileUris": ["gs://b/app.jar"]}},
        "spark-r": {"sparkRBatch": {"mainRFileUri": "gs://b/report.R"}},
        "spark-sql": {"sparkSqlBatch": {"queryFileUri": "gs://b/q.sql", "queryVariables": {"day": "1"}}},
    }
    for batch_id, body in bodies.items():
        client.projects().locations().batches().create(parent=PARENT, batchId=batch_id, body=body).execute()
    advance(emulator, 60)
    # THEN each ran to success and reads back with its workload
    for batch_id, body in bodies.items():
        batch = get(client, batch_id)
        assert batch["state"] == "SUCCEEDED"
        (kind,) = body
        assert batch[kind] == body[kind]


# --------------------------------------------------------------------------------- state machine


def test_a_batch_goes_pending_running_succeeded_with_its_history(client, emulator):
    create(client)
    assert get(client)["state"] == "PENDING"
    advance(emulator, 1.5)
    running = get(client)
    assert running["state"] == "RUNNING" and [h["state"] for h in running["stateHistory"]] == ["PENDING"]
    assert running["runtimeInfo"]["outputUri"].startswith("gs://")
    advance(emulator, 5)
    done = get(client)
    assert done["state"] == "SUCCEEDED" and [h["state"] for h in done["stateHistory"]] == [
        "PENDING",
        "RUNNING",
    ]
    assert "stateMessage" not in done
    # AND its operation is done with the batch as response
    op = client.projects().regions().operations().get(name=done["operation"]).execute()
    assert op["done"] is True and op["response"]["state"] == "SUCCEEDED"


def test_a_failing_main_file_fails_with_its_message(client, emulator):
    # GIVEN a main file registered to fail
    register(emulator, outcome="FAILED", state_message="Table sales_raw does not exist")
    create(client)
    advance(emulator, 10)
    # THEN the batch is FAILED with that stateMessage, and its operation carries the error
    batch = get(client)
    assert batch["state"] == "FAILED" and batch["stateMessage"] == "Table sales_raw does not exist"
    op = client.projects().regions().operations().get(name=batch["operation"]).execute()
    assert op["done"] is True and op["error"]["message"] == "Table sales_raw does not exist"


def test_an_outcome_argument_overrides_the_registered_outcome(client, emulator):
    register(emulator, outcome_arg="--simulateOutcome")
    create(client, pysparkBatch={"mainPythonFileUri": MAIN, "args": ["--simulateOutcome=FAILED"]})
    advance(emulator, 10)
    assert get(client)["state"] == "FAILED"


def test_an_unregistered_main_file_fails_once_it_would_run(client, emulator):
    create(client, pysparkBatch={"mainPythonFileUri": "gs://nowhere/missing.py"})
    advance(emulator, 2)
    batch = get(client)
    assert batch["state"] == "FAILED" and "gs://nowhere/missing.py" in batch["stateMessage"]


def test_a_missing_batch_answers_404_not_found(client):
    with pytest.raises(HttpError) as caught:
        get(client, "nope-0001")
    assert caught.value.resp.status == 404 and error_of(caught.value)["status"] == "NOT_FOUND"


# ------------------------------------------------------------------------------------------ cancel


def test_cancelling_the_operation_cancels_the_batch(client, emulator):
    # GIVEN a running batch
    op = create(client)
    advance(emulator, 1.5)
    # WHEN its operation is cancelled through Google's client
    assert client.projects().regions().operations().cancel(name=op["name"]).execute() == {}
    # THEN it is CANCELLING, then CANCELLED
    assert get(client)["state"] == "CANCELLING"
    advance(emulator, 5)
    assert get(client)["state"] == "CANCELLED"
    done = client.projects().regions().operations().get(name=op["name"]).execute()
    assert done["done"] is True and done["error"]["code"] == 1


def test_cancelling_a_finished_batch_answers_failed_precondition(client, emulator):
    op = create(client)
    advance(emulator, 60)
    with pytest.raises(HttpError) as caught:
        client.projects().regions().operations().cancel(name=op["name"]).execute()
    assert caught.value.resp.status == 400 and error_of(caught.value)["status"] == "FAILED_PRECONDITION"
    assert get(client)["state"] == "SUCCEEDED"


def test_an_unknown_operation_answers_404(client):
    with pytest.raises(HttpError) as caught:
        client.projects().regions().operations().cancel(
            name=f"projects/{PROJECT}/regions/{REGION}/operations/x"
        ).execute()
    assert caught.value.resp.status == 404


# ------------------------------------------------------------------------------------- list/delete


def test_list_pages_newest_first_and_delete_needs_a_finished_batch(client, emulator):
    for i in range(3):
        create(client, f"batch-{i:04d}")
    batches = client.projects().locations().batches()
    first = batches.list(parent=PARENT, pageSize=2).execute()
    assert [b["name"].rsplit("/", 1)[1] for b in first["batches"]] == ["batch-0002", "batch-0001"]
    rest = batches.list(parent=PARENT, pageSize=2, pageToken=first["nextPageToken"]).execute()
    assert [b["name"].rsplit("/", 1)[1] for b in rest["batches"]] == ["batch-0000"]
    assert "nextPageToken" not in rest
    # a pending batch cannot be deleted; a finished one can, and its id is then free
    with pytest.raises(HttpError) as caught:
        batches.delete(name=f"{PARENT}/batches/batch-0000").execute()
    assert error_of(caught.value)["status"] == "FAILED_PRECONDITION"
    advance(emulator, 60)
    assert batches.delete(name=f"{PARENT}/batches/batch-0000").execute() == {}
    create(client, "batch-0000")


def test_list_filters_are_refused_rather_than_ignored(client):
    with pytest.raises(HttpError) as caught:
        client.projects().locations().batches().list(parent=PARENT, filter="state = RUNNING").execute()
    assert caught.value.resp.status == 400


# ---------------------------------------------------------------------------- faults, tokens, cli


def test_fault_rules_apply_to_creates_and_a_lost_answer_still_creates(client, emulator):
    # GIVEN a 503 after the effect on the next create of this batch id
    control(
        emulator,
        "POST",
        "faults",
        {
            "operation": "batches.create",
            "match": {"batchId": "daily-0001"},
            "status": 503,
            "after_effect": True,
        },
    )
    with pytest.raises(HttpError) as caught:
        create(client)
    # THEN the client saw 503 but the batch exists (the lost-response case)
    assert caught.value.resp.status == 503
    assert get(client)["state"] == "PENDING"


def test_enforced_tokens_refuse_calls_without_a_live_token(client, emulator):
    from local.emulators.base import GoogleTokens

    # GIVEN a batch, and the emulator checking Google tokens
    create(client)
    control(emulator, "POST", "google-tokens", {"enforce": True})
    url = f"{emulator.url}/v1/{PARENT}/batches/daily-0001"
    # WHEN a call carries no token THEN it answers Google's 401 UNAUTHENTICATED
    refused = requests.get(url, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"]["status"] == "UNAUTHENTICATED"
    # WHEN it carries a token the emulator issued THEN it is served
    grant = {"grant_type": "refresh_token", "refresh_token": GoogleTokens.REFRESH_TOKEN}
    token = requests.post(f"{emulator.url}/oauth2/token", data=grant, timeout=5).json()["access_token"]
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200


def test_the_command_line_serves_until_terminated(tmp_path):
    mains = tmp_path / "mains.json"
    mains.write_text(json.dumps({"mains": [{"main": MAIN}]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "local.emulators.dataproc", "--port", "0", "--mains", str(mains)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["ready"] is True
        listed = requests.get(f"{ready['url']}/_emulator/mains", timeout=5).json()["mains"]
        assert [m["main"] for m in listed] == [MAIN]
    finally:
        process.terminate()
        process.wait(timeout=10)
