"""Specification: the functions take events in Google's own shapes, in both CloudEvents content modes.

Held against what nobody here wrote:

- the official sample event data of ``googleapis/google-cloudevents`` (``testdata/``, copied into
  ``tests/fixtures/google-cloudevents/``, see its README for the commit), delivered as Eventarc does;
- Google's published event types in the ``google-events`` package (proto-plus classes built from the
  same repository's protos): StorageObjectData, MessagePublishedData and Dataflow's JobEventData,
  serialized by Google's own code (string enums, as Eventarc sends);
- the ``cloudevents`` SDK turning each event into structured (one JSON body) and binary (``ce-``
  headers) HTTP requests, which functions-framework serves.

Each test asserts what reached the Dataflow emulator (the launch and its parameters) or the ledger.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import functions_framework
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from google.events.cloud.dataflow_v1beta3.types import Job, JobEventData, JobState
from google.events.cloud.pubsub_v1.types import MessagePublishedData, PubsubMessage
from google.events.cloud.storage_v1.types import StorageObjectData

from handlers.launch.runtime import reset_default

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "fixtures" / "google-cloudevents"
MODES = {"structured": to_structured, "binary": to_binary}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def deliver(monkeypatch):
    """POST one CloudEvent to an entry point of main.py through functions-framework, in ``mode``."""

    def post(target: str, event: CloudEvent, config_path: Path, mode: str):
        monkeypatch.setenv("PIPELINES_CONFIG", str(config_path))
        reset_default()
        app = functions_framework.create_app(target, str(ROOT / "main.py"), "cloudevent")
        headers, body = MODES[mode](event)
        response = app.test_client().post("/", headers=headers, data=body)
        assert response.status_code == 200, response.data
        return response

    return post


def _register(dataflow, name: str, *params: str) -> None:
    """A template declaring exactly these (optional) parameters: the emulator refuses any other."""
    dataflow.register(
        name, params=[{"name": n, "label": n, "helpText": n, "isOptional": True} for n in params]
    )


def _storage_event(data: dict, event_id: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.storage.object.v1.finalized",
            "source": f"//storage.googleapis.com/projects/_/buckets/{data['bucket']}",
            "subject": f"objects/{data['name']}",
            "id": event_id,
            "time": _now(),
        },
        data,
    )


def _message_event(data: dict, topic: str, event_id: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": f"//pubsub.googleapis.com/projects/my-project/topics/{topic}",
            "id": event_id,
            "time": _now(),
        },
        data,
    )


def _storage_config(world, dataflow, bucket: str) -> Path:
    _register(dataflow, "copy", "input", "generation", "size", "type")
    return world.write_config(
        {
            "copy": {
                "backend": "dataflow",
                "template": dataflow.template_path("copy"),
                "parameters": {
                    "input": "gs://{bucket}/{name}",
                    "generation": "{generation}",
                    "size": "{size}",
                    "type": "{content_type|none}",
                },
            }
        },
        {"landing": {"storage": {"bucket": bucket}, "pipeline": "copy"}},
        max_event_age="100000d",
    )


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (
            "StorageObjectData-simple.json",
            {
                "input": "gs://some-bucket/folder/Test.cs",
                "generation": "1587627537231057",
                "size": "352",
                "type": "text/plain",
            },
        ),
        (
            "StorageObjectData-complex.json",
            {
                "input": "gs://sample-bucket/MyFile",
                "generation": "96883251",
                "size": "0",
                "type": "esse commodo",
            },
        ),
    ],
)
def test_googles_storage_samples_launch_with_their_fields(world, dataflow, deliver, sample, expected, mode):
    data = json.loads((SAMPLES / sample).read_text())
    config = _storage_config(world, dataflow, data["bucket"])
    deliver("on_object_finalized", _storage_event(data, f"{sample}-{mode}"), config, mode)
    (launch,) = dataflow.launches()
    assert launch["parameters"] == expected


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(
    ("sample", "payload"),
    [
        ("MessagePublishedData-text.json", "test message 3"),
        # camelCase and snake_case copies; bytes 01 02 03 04 are valid UTF-8 (control characters)
        ("MessagePublishedData-duplicatedFields.json", "\x01\x02\x03\x04"),
        ("MessagePublishedData-binary.json", "\x01\x02\x03\x04"),
    ],
)
def test_googles_pubsub_samples_launch_once_with_their_payload(
    world, dataflow, deliver, sample, payload, mode
):
    dataflow.register("ingest")
    config = world.write_config(
        {
            "ingest": {
                "backend": "dataflow",
                "template": dataflow.template_path("ingest"),
                "parameters": {"payload": "{data|(binary)}", "message": "{message_id}"},
            }
        },
        {"messages": {"pubsub": {"topic": "my-topic"}, "pipeline": "ingest"}},
        max_event_age="100000d",
    )
    data = json.loads((SAMPLES / sample).read_text())
    for _ in range(2):  # a redelivery keeps its message id: still one launch
        deliver("on_message", _message_event(data, "my-topic", f"{sample}-{mode}"), config, mode)
    (launch,) = dataflow.launches()
    assert launch["parameters"] == {"payload": payload, "message": "message-id"}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_googles_storage_object_data_type_reads_as_google_serializes_it(world, dataflow, deliver, mode):
    # GIVEN an object described with Google's own StorageObjectData type and its JSON serializer
    obj = StorageObjectData(
        bucket="landing",
        name="in/2026/12/orders #7.csv",
        generation=1733479200123456,
        size=2048,
        content_type="text/csv",
        metadata={"owner": "sales"},
    )
    data = json.loads(StorageObjectData.to_json(obj))
    config = _storage_config(world, dataflow, "landing")
    # WHEN it is delivered as Eventarc delivers it
    deliver("on_object_finalized", _storage_event(data, f"typed-{mode}"), config, mode)
    # THEN the launch carries its fields
    (launch,) = dataflow.launches()
    assert launch["parameters"] == {
        "input": "gs://landing/in/2026/12/orders #7.csv",
        "generation": "1733479200123456",
        "size": "2048",
        "type": "text/csv",
    }


@pytest.mark.parametrize("mode", sorted(MODES))
def test_googles_message_published_data_type_reads_as_google_serializes_it(world, dataflow, deliver, mode):
    _register(dataflow, "ingest", "order", "kind")
    config = world.write_config(
        {
            "ingest": {
                "backend": "dataflow",
                "template": dataflow.template_path("ingest"),
                "parameters": {"order": "{data.order.id}", "kind": "{attributes.kind}"},
            }
        },
        {"orders": {"pubsub": {"topic": "orders", "attributes": {"kind": "order"}}, "pipeline": "ingest"}},
    )
    message = PubsubMessage(
        data=json.dumps({"order": {"id": "A-17"}}).encode(),
        attributes={"kind": "order"},
        message_id="msg-1",
    )
    data = json.loads(MessagePublishedData.to_json(MessagePublishedData(message=message, subscription="s")))
    assert base64.b64decode(data["message"]["data"])  # Google's serializer sends bytes as base64
    deliver("on_message", _message_event(data, "orders", f"typed-{mode}"), config, mode)
    (launch,) = dataflow.launches()
    assert launch["parameters"] == {"order": "A-17", "kind": "order"}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_googles_dataflow_job_event_data_completes_the_run_it_names(world, dataflow, deliver, mode):
    # GIVEN a run launched from a storage event, whose Dataflow job is done
    config_path = _storage_config(world, dataflow, "landing")
    deliver(
        "on_object_finalized",
        _storage_event({"bucket": "landing", "name": "a.txt", "generation": "1", "size": "5"}, "e1"),
        config_path,
        mode,
    )
    (job,) = dataflow.jobs()
    dataflow.advance(3600)
    # WHEN Eventarc delivers Google's JobEventData for that job (string enums, as Eventarc sends them)
    event = JobEventData(
        payload=Job(
            id=job["id"],
            name=job["name"],
            project_id=job["projectId"],
            location=job["location"],
            current_state=JobState.JOB_STATE_DONE,
            labels=job.get("labels") or {},
        )
    )
    data = json.loads(JobEventData.to_json(event, use_integers_for_enums=False))
    assert data["payload"]["currentState"] == "JOB_STATE_DONE"
    ce = CloudEvent(
        {
            "type": "google.cloud.dataflow.job.v1beta3.statusChanged",
            "source": f"//dataflow.googleapis.com/projects/{job['projectId']}/locations/{job['location']}",
            "id": f"status-{mode}",
            "time": _now(),
        },
        data,
    )
    deliver("on_job_status", ce, config_path, mode)
    # THEN the run is finished and announced at once, without a sweep
    (completed,) = world.completions(expect=1)
    assert completed["event"]["data"]["state"] == "SUCCEEDED"
    assert completed["event"]["data"]["job"]["id"] == job["id"]
