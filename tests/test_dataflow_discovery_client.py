"""Specification: the Dataflow emulator answers what Google's own client sends.

google-api-python-client builds its Dataflow client from the discovery document it bundles
(``dataflow.v1b3``); pointed at the emulator over loopback, it launches a template, reads the job
back, lists it by name, gets a 409 for a second active job of that name, cancels it and reads its
messages, with request bodies and paths of Google's making, not ours. The emulator follows the
revision named in its module docstring; a newer bundled revision fails the first test, as a reminder
to check what changed.
"""

from __future__ import annotations

import json

import pytest
from google.auth.credentials import AnonymousCredentials
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError

from local.emulators import dataflow as emulator

PROJECT, REGION = "local-project", "europe-west1"


@pytest.fixture
def client(dataflow, dataflow_emulator):
    doc = get_static_doc("dataflow", "v1b3")
    return build_from_document(
        doc,
        client_options={"api_endpoint": dataflow_emulator.url},
        credentials=AnonymousCredentials(),
    )


def test_the_emulator_names_the_discovery_revision_it_follows():
    revision = json.loads(get_static_doc("dataflow", "v1b3"))["revision"]
    assert f"revision {revision}" in (emulator.__doc__ or "")


def test_googles_client_launches_reads_lists_refuses_a_duplicate_and_cancels(client, dataflow):
    dataflow.register("wordcount", run_seconds=3600)
    templates = client.projects().locations().templates()
    jobs = client.projects().locations().jobs()
    body = {
        "jobName": "wordcount-google-client",
        "parameters": {"inputFile": "gs://landing/a.txt"},
        "environment": {"tempLocation": "gs://tmp/x", "additionalUserLabels": {"origin": "discovery"}},
    }
    launched = templates.launch(
        projectId=PROJECT, location=REGION, gcsPath=dataflow.template_path("wordcount"), body=body
    ).execute()
    job = launched["job"]
    assert job["name"] == "wordcount-google-client" and job["labels"] == {"origin": "discovery"}

    got = jobs.get(projectId=PROJECT, location=REGION, jobId=job["id"], view="JOB_VIEW_SUMMARY").execute()
    assert got["id"] == job["id"] and got["currentState"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")

    listed = jobs.list(projectId=PROJECT, location=REGION, filter="ACTIVE", name=job["name"]).execute()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]

    with pytest.raises(HttpError) as duplicate:
        templates.launch(
            projectId=PROJECT, location=REGION, gcsPath=dataflow.template_path("wordcount"), body=body
        ).execute()
    assert duplicate.value.resp.status == 409
    assert json.loads(duplicate.value.content)["error"]["status"] == "ALREADY_EXISTS"

    cancelled = jobs.update(
        projectId=PROJECT, location=REGION, jobId=job["id"], body={"requestedState": "JOB_STATE_CANCELLED"}
    ).execute()
    assert cancelled["id"] == job["id"]
    messages = (
        jobs.messages()
        .list(projectId=PROJECT, location=REGION, jobId=job["id"], minimumImportance="JOB_MESSAGE_ERROR")
        .execute()
    )
    assert isinstance(messages, dict)


def test_googles_client_gets_google_shaped_errors_for_an_unknown_template_and_field(client, dataflow):
    templates = client.projects().locations().templates()
    with pytest.raises(HttpError) as missing:
        templates.get(
            projectId=PROJECT, location=REGION, gcsPath="gs://nowhere/x", view="METADATA_ONLY"
        ).execute()
    assert missing.value.resp.status == 404
    dataflow.register("wordcount")
    with pytest.raises(HttpError) as unknown:
        templates.launch(
            projectId=PROJECT,
            location=REGION,
            gcsPath=dataflow.template_path("wordcount"),
            body={"jobName": "x-1", "notAField": 1},
        ).execute()
    error = json.loads(unknown.value.content)["error"]
    assert (
        unknown.value.resp.status == 400
        and error["status"] == "INVALID_ARGUMENT"
        and "notAField" in error["message"]
    )
