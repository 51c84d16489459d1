"""Specification of the local Fabric emulator (local/emulators/fabric.py): job API + Entra stand-in.

Each test reads GIVEN / WHEN / THEN. One emulator serves the module; every test starts from a reset
with default settings. Job states follow the emulator clock (``POST /_emulator/clock``), so no test
sleeps for a job to progress. Answers are checked against the schema fragments bundled from
Microsoft's OpenAPI specs (``local/emulators/fabric_schemas.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from local.emulators.base import ServerHandle
from local.emulators.fabric import schema_book, serve
from local.kits.fabric import entra_clients
from tests.support import emulator_client
from tests.support.emulator_client import advance, emulator_fixture, reset_emulator

ROOT = Path(__file__).resolve().parent.parent
WS = "0f1e2d3c-4b5a-4697-8877-665544332211"
DATAFLOW = "d0d0d0d0-1111-4222-8333-444444444444"
PIPELINE = "b1b1b1b1-2222-4333-8444-555555555555"
NOTEBOOK = "c2c2c2c2-3333-4444-8555-666666666666"
TENANT = "7a7a7a7a-0000-4000-8000-000000000001"
USER_APP = "user-app-0001"
SP_APP = "sp-app-0002"
SECRET = "emulator-test-secret"
REFRESH = "emulator-test-refresh-token"


# ------------------------------------------------------------------------------------------ fixtures


emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    reset_emulator(emulator, {"token_lifetime_seconds": 3600, "dedupe": True, "page_size": 50})
    control(emulator, "clients", entra_clients(TENANT, USER_APP, SP_APP, SECRET, REFRESH))
    register(emulator, DATAFLOW, "Dataflow")
    register(emulator, PIPELINE, "DataPipeline")
    register(emulator, NOTEBOOK, "Notebook")


def control(emulator: ServerHandle, path: str, body: Any = None, method: str = "POST") -> Any:
    return emulator_client.control(emulator, method, path, body)


def register(emulator: ServerHandle, item: str, kind: str, **behavior: Any) -> None:
    behavior = {"not_started_seconds": 1, "run_seconds": 3, **behavior}
    control(emulator, "items", {"workspace": WS, "item": item, "type": kind, "behavior": behavior})


def token(emulator: ServerHandle, *, app_only: bool = False, client: str | None = None) -> str:
    form = {
        "client_id": client or (SP_APP if app_only else USER_APP),
        "scope": "https://api.fabric.microsoft.com/.default",
    }
    if app_only:
        form |= {"grant_type": "client_credentials", "client_secret": SECRET}
    else:
        form |= {"grant_type": "refresh_token", "refresh_token": REFRESH}
    r = requests.post(f"{emulator.url}/{TENANT}/oauth2/v2.0/token", data=form, timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def auth(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def item_url(emulator: ServerHandle, item: str) -> str:
    return f"{emulator.url}/v1/workspaces/{WS}/items/{item}"


def run(
    emulator: ServerHandle,
    item: str,
    job_type: str,
    body: Any = None,
    *,
    access_token: str | None = None,
    query_form: bool = False,
) -> requests.Response:
    headers = auth(access_token or token(emulator))
    if job_type == "Execute" and query_form:  # the dataflow path, older query form
        url = f"{emulator.url}/v1/workspaces/{WS}/dataflows/{item}/jobs/instances?jobType=Execute"
    elif job_type == "Execute":  # the only path the spec documents executionData.parameters for
        url = f"{emulator.url}/v1/workspaces/{WS}/dataflows/{item}/jobs/execute/instances"
    elif query_form:
        url = f"{item_url(emulator, item)}/jobs/instances?jobType={job_type}"
    else:
        url = f"{item_url(emulator, item)}/jobs/{job_type}/instances"
    return requests.post(url, json=body if body is not None else {}, headers=headers, timeout=5)


def instance_id(response: requests.Response) -> str:
    return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]


def get(emulator: ServerHandle, item: str, iid: str, access_token: str | None = None) -> requests.Response:
    return requests.get(
        f"{item_url(emulator, item)}/jobs/instances/{iid}",
        headers=auth(access_token or token(emulator)),
        timeout=5,
    )


def assert_fabric_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorCode"] == code, body
    assert schema_book().problems(body, "ErrorResponse") == []
    assert body["requestId"] and isinstance(body["isRetriable"], bool)
    return dict(body)


def dataflow_params(**values: Any) -> dict[str, Any]:
    return {
        "executionData": {
            "parameters": [{"parameterName": k, "type": "Automatic", "value": v} for k, v in values.items()]
        }
    }


# ------------------------------------------------------------------------------------ Entra stand-in


def test_client_credentials_issue_an_app_only_token_living_the_configured_lifetime(
    emulator: ServerHandle,
) -> None:
    # GIVEN a 600 s token lifetime
    control(emulator, "settings", {"token_lifetime_seconds": 600})
    # WHEN the service principal asks for a token
    r = requests.post(
        f"{emulator.url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": SP_APP,
            "client_secret": SECRET,
            "scope": "https://api.fabric.microsoft.com/.default",
        },
        timeout=5,
    )
    # THEN it gets an opaque bearer token, app-only, without a refresh token
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600 and "refresh_token" not in body
    listed = control(emulator, "tokens", method="GET")["tokens"]
    assert [(t["client_id"], t["app_only"]) for t in listed][-1] == (SP_APP, True)


def test_refresh_token_grant_issues_a_delegated_token_and_a_new_refresh_token(emulator: ServerHandle) -> None:
    r = requests.post(
        f"{emulator.url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "refresh_token",
            "client_id": USER_APP,
            "refresh_token": REFRESH,
            "scope": "https://api.fabric.microsoft.com/.default offline_access",
        },
        timeout=5,
    )
    assert r.status_code == 200
    assert r.json()["refresh_token"].startswith("emu-rt-")
    assert control(emulator, "tokens", method="GET")["tokens"][-1]["app_only"] is False


def test_without_offline_access_no_new_refresh_token_is_returned(emulator: ServerHandle) -> None:
    r = requests.post(
        f"{emulator.url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "refresh_token",
            "client_id": USER_APP,
            "refresh_token": REFRESH,
            "scope": "https://api.fabric.microsoft.com/.default",
        },
        timeout=5,
    )
    assert r.status_code == 200 and "access_token" in r.json()
    assert "refresh_token" not in r.json()


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"grant_type": "client_credentials", "client_id": SP_APP, "client_secret": "wrong"},
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials", "client_id": SP_APP}, 401, "invalid_client"),
        (
            {"grant_type": "refresh_token", "client_id": USER_APP, "refresh_token": "stolen"},
            400,
            "invalid_grant",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": SECRET},
            400,
            "unauthorized_client",
        ),
        ({"grant_type": "password", "client_id": USER_APP}, 400, "unsupported_grant_type"),
    ],
)
def test_bad_credentials_are_refused_with_entra_error_json(
    emulator: ServerHandle, form: dict[str, str], status: int, error: str
) -> None:
    form = {"scope": "https://api.fabric.microsoft.com/.default", **form}
    r = requests.post(f"{emulator.url}/{TENANT}/oauth2/v2.0/token", data=form, timeout=5)
    assert r.status_code == status
    body = r.json()
    assert body["error"] == error and body["error_description"].startswith("AADSTS")
    assert "wrong" not in body["error_description"]


def test_a_used_refresh_token_is_revoked_when_the_client_rotates_strictly(emulator: ServerHandle) -> None:
    control(
        emulator,
        "clients",
        {
            "tenant": TENANT,
            "client_id": "strict",
            "client_secret": SECRET,
            "refresh_tokens": ["rt-1"],
            "revoke_used_refresh_tokens": True,
        },
    )
    form = {
        "grant_type": "refresh_token",
        "client_id": "strict",
        "scope": "https://api.fabric.microsoft.com/.default offline_access",
    }
    first = requests.post(
        f"{emulator.url}/{TENANT}/oauth2/v2.0/token", data={**form, "refresh_token": "rt-1"}, timeout=5
    )
    again = requests.post(
        f"{emulator.url}/{TENANT}/oauth2/v2.0/token", data={**form, "refresh_token": "rt-1"}, timeout=5
    )
    rotated = requests.post(
        f"{emulator.url}/{TENANT}/oauth2/v2.0/token",
        data={**form, "refresh_token": first.json()["refresh_token"]},
        timeout=5,
    )
    assert (first.status_code, again.status_code, rotated.status_code) == (200, 400, 200)
    assert again.json()["error"] == "invalid_grant"


# ------------------------------------------------------------------------------------ authentication


def test_every_fabric_call_needs_a_valid_unexpired_bearer_token(emulator: ServerHandle) -> None:
    url = f"{item_url(emulator, DATAFLOW)}/jobs/instances"
    assert_fabric_error(requests.get(url, timeout=5), 401, "Unauthorized")
    assert_fabric_error(requests.get(url, headers=auth("made-up"), timeout=5), 401, "Unauthorized")
    # GIVEN a token living 60 s of emulator time
    control(emulator, "settings", {"token_lifetime_seconds": 60})
    good = token(emulator)
    assert requests.get(url, headers=auth(good), timeout=5).status_code == 200
    # WHEN the clock passes its expiry THEN it is refused as expired
    advance(emulator, 61)
    assert_fabric_error(requests.get(url, headers=auth(good), timeout=5), 401, "TokenExpired")


def test_expiring_all_tokens_now_refuses_them_at_once(emulator: ServerHandle) -> None:
    good = token(emulator)
    assert control(emulator, "tokens/expire")["expired"] >= 1
    r = requests.get(f"{item_url(emulator, DATAFLOW)}/jobs/instances", headers=auth(good), timeout=5)
    assert_fabric_error(r, 401, "TokenExpired")
    assert token(emulator) != good  # a fresh one works again
    assert (
        requests.get(
            f"{item_url(emulator, DATAFLOW)}/jobs/instances", headers=auth(token(emulator)), timeout=5
        ).status_code
        == 200
    )


def test_an_app_only_token_cannot_execute_a_dataflow_but_can_run_a_pipeline(emulator: ServerHandle) -> None:
    sp = token(emulator, app_only=True)
    refused = run(emulator, DATAFLOW, "Execute", access_token=sp)
    assert_fabric_error(refused, 403, "PrincipalTypeNotSupported")
    assert run(emulator, PIPELINE, "Pipeline", access_token=sp).status_code == 202
    # unless the tenant allows it for that client
    control(
        emulator,
        "clients",
        {
            "tenant": TENANT,
            "client_id": SP_APP,
            "client_secret": SECRET,
            "service_principal_allowed_for_dataflows": True,
        },
    )
    assert run(emulator, DATAFLOW, "Execute", access_token=sp).status_code == 202


# --------------------------------------------------------------------------------------- run on demand


@pytest.mark.parametrize("query_form", [False, True])
def test_run_on_demand_answers_202_with_location_and_retry_after(
    emulator: ServerHandle, query_form: bool
) -> None:
    r = run(emulator, DATAFLOW, "Execute", dataflow_params(Region="EU"), query_form=query_form)
    assert r.status_code == 202 and r.content == b""
    location = r.headers["Location"]
    assert location.startswith(f"{emulator.url}/v1/workspaces/{WS}/items/{DATAFLOW}/jobs/instances/")
    assert int(r.headers["Retry-After"]) >= 0
    [instance] = control(emulator, "instances", method="GET")["instances"]
    assert instance["id"] == instance_id(r) and instance["parameters"] == {"Region": "EU"}
    assert instance["principal"] == {"client_id": USER_APP, "app_only": False}


def test_the_dataflow_specific_execute_path_runs_the_same_job(emulator: ServerHandle) -> None:
    r = requests.post(
        f"{emulator.url}/v1/workspaces/{WS}/dataflows/{DATAFLOW}/jobs/execute/instances",
        json={"executionData": {"executeOption": "ApplyChangesIfNeeded"}},
        headers=auth(token(emulator)),
        timeout=5,
    )
    assert r.status_code == 202
    assert get(emulator, DATAFLOW, instance_id(r)).json()["jobType"] == "Execute"


def test_an_instance_goes_not_started_in_progress_completed_on_the_emulator_clock(
    emulator: ServerHandle,
) -> None:
    iid = instance_id(run(emulator, DATAFLOW, "Execute"))
    seen = []
    for step in (0, 1.5, 3):
        advance(emulator, step)
        doc = get(emulator, DATAFLOW, iid).json()
        assert schema_book().problems(doc, "ItemJobInstance") == []
        seen.append((doc["status"], doc["endTimeUtc"] is None))
    assert seen == [("NotStarted", True), ("InProgress", True), ("Completed", False)]
    assert doc["invokeType"] == "Manual" and doc["itemId"] == DATAFLOW and doc["failureReason"] is None
    assert len(doc["startTimeUtc"].rsplit(".", 1)[1]) == 7  # Fabric's 100 ns digits, no offset


def test_a_failed_instance_carries_its_failure_reason(emulator: ServerHandle) -> None:
    register(
        emulator,
        PIPELINE,
        "DataPipeline",
        outcome="Failed",
        failure_reason="Copy activity failed",
        failure_code="ActivityFailed",
    )
    iid = instance_id(
        run(emulator, PIPELINE, "Pipeline", {"executionData": {"parameters": {"day": "2026-03-13"}}})
    )
    advance(emulator, 5)
    doc = get(emulator, PIPELINE, iid).json()
    assert doc["status"] == "Failed"
    assert doc["failureReason"]["errorCode"] == "ActivityFailed"
    assert doc["failureReason"]["message"] == "Copy activity failed"


def test_an_outcome_parameter_overrides_the_outcome_of_one_run(emulator: ServerHandle) -> None:
    register(emulator, DATAFLOW, "Dataflow", outcome_param="simulateOutcome")
    iid = instance_id(run(emulator, DATAFLOW, "Execute", dataflow_params(simulateOutcome="Failed")))
    advance(emulator, 5)
    assert get(emulator, DATAFLOW, iid).json()["status"] == "Failed"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            {"executionData": {"parameters": [{"parameterName": "Region", "type": "String", "value": "EU"}]}},
            "executionData.parameters[0].type",
        ),
        ({"executionData": {"executeOption": "Always"}}, "executionData.executeOption"),
        ({"executionData": {"parameter": []}}, "executionData"),
        ({"executionData": {}, "runName": "x"}, "(body)"),
        (
            {"executionData": {"parameters": [{"name": "Region", "value": "EU"}]}},
            "executionData.parameters[0]",
        ),
    ],
)
def test_a_dataflow_body_breaking_the_spec_schema_answers_400_naming_the_field(
    emulator: ServerHandle, body: dict[str, Any], where: str
) -> None:
    error = assert_fabric_error(run(emulator, DATAFLOW, "Execute", body), 400, "InvalidRequest")
    assert f"'{where}'" in error["message"]
    assert error["moreDetails"][0]["errorCode"] == "InvalidInput"
    assert control(emulator, "instances", method="GET")["instances"] == []


def test_top_level_parameters_are_not_part_of_a_dataflow_execute_body(emulator: ServerHandle) -> None:
    body = {"parameters": [{"name": "a", "type": "Automatic", "value": 1}]}
    error = assert_fabric_error(run(emulator, DATAFLOW, "Execute", body), 400, "InvalidRequest")
    assert "'parameters' was unexpected" in error["message"]


def test_top_level_parameters_as_the_spec_documents_them_run_a_pipeline(emulator: ServerHandle) -> None:
    body = {"parameters": [{"name": "day", "type": "Text", "value": "2026-03-13"}], "executionData": {}}
    assert run(emulator, PIPELINE, "Pipeline", body).status_code == 202
    assert control(emulator, "instances", method="GET")["instances"][0]["parameters"] == {"day": "2026-03-13"}


def test_execution_data_null_is_accepted_for_a_dataflow(emulator: ServerHandle) -> None:
    assert run(emulator, DATAFLOW, "Execute", {"executionData": None}).status_code == 202


def test_the_generic_item_path_runs_a_dataflow_with_its_default_parameters(emulator: ServerHandle) -> None:
    # The spec documents executionData.parameters only for .../dataflows/{id}/jobs/execute/instances
    r = requests.post(
        f"{item_url(emulator, DATAFLOW)}/jobs/Execute/instances",
        json=dataflow_params(Region="EU"),
        headers=auth(token(emulator)),
        timeout=5,
    )
    assert r.status_code == 202
    assert control(emulator, "instances", method="GET")["instances"][0]["parameters"] == {}


def test_undeclared_dataflow_parameters_are_refused(emulator: ServerHandle) -> None:
    register(emulator, DATAFLOW, "Dataflow", parameters=["Region"])
    assert run(emulator, DATAFLOW, "Execute", dataflow_params(Region="EU")).status_code == 202
    error = assert_fabric_error(
        run(emulator, DATAFLOW, "Execute", dataflow_params(Regoin="EU")), 400, "InvalidParameter"
    )
    assert "Regoin" in error["message"]


def test_notebook_parameters_take_value_and_type(emulator: ServerHandle) -> None:
    body = {"executionData": {"parameters": {"day": {"value": "2026-03-13", "type": "string"}}}}
    assert run(emulator, NOTEBOOK, "RunNotebook", body).status_code == 202
    assert control(emulator, "instances", method="GET")["instances"][0]["parameters"] == {"day": "2026-03-13"}


def test_unknown_items_and_wrong_job_types_are_refused(emulator: ServerHandle) -> None:
    assert_fabric_error(run(emulator, "99999999-9999-4999-8999-999999999999", "Execute"), 404, "ItemNotFound")
    assert_fabric_error(run(emulator, PIPELINE, "Execute"), 404, "ItemNotFound")  # not a dataflow
    assert_fabric_error(run(emulator, PIPELINE, "RunNotebook"), 400, "InvalidJobType")
    assert run(emulator, DATAFLOW, "Refresh").status_code == 202  # Refresh is an alias of Execute


# ---------------------------------------------------------------------------------------------- dedupe


def test_a_second_run_while_one_is_active_is_deduped(emulator: ServerHandle) -> None:
    first = instance_id(run(emulator, DATAFLOW, "Execute"))
    advance(emulator, 1.5)
    second = instance_id(run(emulator, DATAFLOW, "Execute"))
    doc = get(emulator, DATAFLOW, second).json()
    assert doc["status"] == "Deduped" and doc["endTimeUtc"] is not None
    assert get(emulator, DATAFLOW, first).json()["status"] == "InProgress"
    # once the first is done, a new run runs
    advance(emulator, 3)
    assert (
        get(emulator, DATAFLOW, instance_id(run(emulator, DATAFLOW, "Execute"))).json()["status"]
        == "NotStarted"
    )


def test_dedupe_can_be_turned_off(emulator: ServerHandle) -> None:
    control(emulator, "settings", {"dedupe": False})
    run(emulator, DATAFLOW, "Execute")
    second = instance_id(run(emulator, DATAFLOW, "Execute"))
    assert get(emulator, DATAFLOW, second).json()["status"] == "NotStarted"


# ------------------------------------------------------------------------------------- list and cancel


def test_listing_pages_newest_first_with_continuation_token_and_uri(emulator: ServerHandle) -> None:
    control(emulator, "settings", {"page_size": 2, "dedupe": False})
    ids = [instance_id(run(emulator, PIPELINE, "Pipeline")) for _ in range(5)]
    headers = auth(token(emulator))
    first = requests.get(f"{item_url(emulator, PIPELINE)}/jobs/instances", headers=headers, timeout=5).json()
    assert schema_book().problems(first, "ItemJobInstances") == []
    listed = [i["id"] for i in first["value"]]
    uri = first["continuationUri"]
    assert uri.startswith(emulator.url) and first["continuationToken"] in uri
    page = requests.get(uri, headers=headers, timeout=5).json()
    listed += [i["id"] for i in page["value"]]
    page = requests.get(
        f"{item_url(emulator, PIPELINE)}/jobs/instances",
        headers=headers,
        params={"continuationToken": page["continuationToken"]},
        timeout=5,
    ).json()
    listed += [i["id"] for i in page["value"]]
    assert "continuationToken" not in page and "continuationUri" not in page
    assert listed == list(reversed(ids))


def test_cancel_answers_202_and_the_instance_ends_cancelled(emulator: ServerHandle) -> None:
    iid = instance_id(run(emulator, DATAFLOW, "Execute"))
    advance(emulator, 1.5)
    r = requests.post(
        f"{item_url(emulator, DATAFLOW)}/jobs/instances/{iid}/cancel",
        headers=auth(token(emulator)),
        timeout=5,
    )
    assert r.status_code == 202 and r.headers["Location"].endswith(iid)
    assert get(emulator, DATAFLOW, iid).json()["status"] == "Cancelled"


def test_cancelling_a_finished_instance_answers_job_already_completed(emulator: ServerHandle) -> None:
    iid = instance_id(run(emulator, DATAFLOW, "Execute"))
    advance(emulator, 5)
    r = requests.post(
        f"{item_url(emulator, DATAFLOW)}/jobs/instances/{iid}/cancel",
        headers=auth(token(emulator)),
        timeout=5,
    )
    assert_fabric_error(r, 400, "JobAlreadyCompleted")


def test_an_unknown_instance_is_not_found(emulator: ServerHandle) -> None:
    assert get(emulator, DATAFLOW, "12345678-1234-4234-8234-123456789012").status_code == 404


# ---------------------------------------------------------------------------------------------- faults


def test_a_429_fault_answers_fabric_error_json_with_retry_after(emulator: ServerHandle) -> None:
    control(emulator, "faults", {"operation": "jobs.run", "status": 429, "retry_after": 2})
    r = run(emulator, DATAFLOW, "Execute")
    error = assert_fabric_error(r, 429, "TooManyRequestsForJobs")
    assert error["isRetriable"] is True and r.headers["Retry-After"] == "2"
    assert run(emulator, DATAFLOW, "Execute").status_code == 202  # fired once


def test_an_after_effect_fault_starts_the_run_and_loses_the_answer(emulator: ServerHandle) -> None:
    control(emulator, "faults", {"operation": "jobs.run", "status": 503, "after_effect": True})
    assert_fabric_error(run(emulator, DATAFLOW, "Execute"), 503, "ServiceUnavailable")
    assert len(control(emulator, "instances", method="GET")["instances"]) == 1


def test_a_token_fault_answers_entra_error_json(emulator: ServerHandle) -> None:
    control(emulator, "faults", {"operation": "token", "status": 503, "match": {"client_id": USER_APP}})
    r = requests.post(
        f"{emulator.url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "refresh_token",
            "client_id": USER_APP,
            "refresh_token": REFRESH,
            "scope": "https://api.fabric.microsoft.com/.default",
        },
        timeout=5,
    )
    assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"


def test_reset_forgets_instances_but_keeps_items_clients_and_tokens(emulator: ServerHandle) -> None:
    good = token(emulator)
    run(emulator, DATAFLOW, "Execute", access_token=good)
    control(emulator, "reset")
    assert control(emulator, "instances", method="GET")["instances"] == []
    assert run(emulator, DATAFLOW, "Execute", access_token=good).status_code == 202


def test_the_command_line_serves_until_terminated(tmp_path: Path) -> None:
    items = tmp_path / "items.json"
    items.write_text(json.dumps({"items": [{"workspace": WS, "item": DATAFLOW, "type": "Dataflow"}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "local.emulators.fabric", "--port", "0", "--items", str(items)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        listed = requests.get(f"{ready['url']}/_emulator/items", timeout=5).json()["items"]
        assert [i["item"] for i in listed] == [DATAFLOW]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
