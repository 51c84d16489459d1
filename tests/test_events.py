"""Specification: the event wrappers accept what real deliveries look like, and name what is wrong."""

import base64
import copy
import datetime as dt
import json
from pathlib import Path

import pytest
from cloudevents.http import CloudEvent

from handlers.core.errors import EventError
from handlers.model import events

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    """The raw fixture: {"attributes": CloudEvent attributes, "data": payload}."""
    return json.loads((FIXTURES / name).read_text())


def as_cloud_event(raw: dict) -> CloudEvent:
    """What functions-framework hands a function."""
    return CloudEvent(raw["attributes"], raw["data"])


def test_storage_finalize_event_exposes_object_fields_with_string_numbers_converted():
    ev = events.parse_object_finalized(as_cloud_event(fixture("storage_finalized.json")))
    o = ev.object
    assert (o.bucket, o.name, o.generation, o.size) == (
        "demo-landing",
        "incoming/2026/11/sales report.txt",
        1700000000123456,
        2048,
    )
    assert (o.dirname, o.basename, o.stem, o.extension) == (
        "incoming/2026/11",
        "sales report.txt",
        "sales report",
        "txt",
    )
    assert o.metadata == {"owner": "finance", "batch": "42"}
    assert ev.identity == "demo-landing/incoming/2026/11/sales report.txt#1700000000123456"
    assert ev.event_time == dt.datetime(2026, 11, 22, 10, 15, 30, 123456, tzinfo=dt.UTC)


def test_storage_event_accepts_numbers_as_numbers_and_snake_case_fields():
    raw = fixture("storage_finalized.json")
    data = raw["data"]
    data["generation"], data["size"] = 7, 10
    data["content_type"] = data.pop("contentType")
    o = events.parse_object_finalized(as_cloud_event(raw)).object
    assert (o.generation, o.size, o.content_type) == (7, 10, "text/plain")


def test_storage_event_without_generation_is_a_malformed_event_naming_the_field():
    raw = fixture("storage_finalized.json")
    del raw["data"]["generation"]
    with pytest.raises(EventError) as err:
        events.parse_object_finalized(as_cloud_event(raw))
    assert err.value.field == "generation"


def test_storage_event_with_garbage_size_names_the_field():
    raw = fixture("storage_finalized.json")
    raw["data"]["size"] = "twelve"
    with pytest.raises(EventError) as err:
        events.parse_object_finalized(as_cloud_event(raw))
    assert err.value.field == "size"


def test_pubsub_message_decodes_json_data_and_keeps_attributes():
    msg = events.parse_message(as_cloud_event(fixture("pubsub_message.json")))
    assert (msg.project, msg.topic, msg.message_id) == ("demo-project", "orders", "11873541938204455")
    assert msg.json == {"order": {"id": "O-1001", "total": 12.5}, "region": "eu"}
    assert msg.attributes == {"kind": "order", "region": "eu"}
    assert msg.publish_time == dt.datetime(2026, 11, 22, 10, 16, 0, 456789, tzinfo=dt.UTC)


@pytest.mark.parametrize("payload", [b"", b"not json at all", b"\xff\xfe binary"])
def test_pubsub_message_with_empty_or_non_json_data_is_accepted(payload):
    raw = fixture("pubsub_message.json")
    raw["data"]["message"]["data"] = base64.b64encode(payload).decode()
    msg = events.parse_message(as_cloud_event(raw))
    assert msg.data == payload and msg.json is None


def test_pubsub_message_with_only_snake_case_id_is_accepted():
    raw = fixture("pubsub_message.json")
    del raw["data"]["message"]["messageId"]
    assert events.parse_message(as_cloud_event(raw)).message_id == "11873541938204455"


def test_pubsub_attributes_only_message_has_no_data():
    raw = fixture("pubsub_message.json")
    del raw["data"]["message"]["data"]
    msg = events.parse_message(as_cloud_event(raw))
    assert msg.data == b"" and msg.json is None and msg.text == ""


def test_pubsub_message_with_invalid_base64_is_malformed():
    raw = fixture("pubsub_message.json")
    raw["data"]["message"]["data"] = "%%%not-base64%%%"
    with pytest.raises(EventError) as err:
        events.parse_message(as_cloud_event(raw))
    assert err.value.field == "message.data"


def test_storage_notification_through_pubsub_becomes_a_finalize_event():
    msg = events.parse_message(as_cloud_event(fixture("gcs_notification_message.json")))
    assert msg.is_storage_notification()
    ev = events.object_event_from_notification(msg)
    assert ev is not None and ev.via == "pubsub-notification"
    assert ev.identity == "demo-landing/incoming/a.txt#1700000000000001"
    assert ev.object.size == 12


def test_storage_notification_with_payload_format_none_uses_attributes():
    raw = fixture("gcs_notification_message.json")
    raw["data"]["message"]["data"] = ""
    raw["data"]["message"]["attributes"]["payloadFormat"] = "NONE"
    ev = events.object_event_from_notification(events.parse_message(as_cloud_event(raw)))
    assert ev is not None and ev.identity == "demo-landing/incoming/a.txt#1700000000000001"


@pytest.mark.parametrize("event_type", ["OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE"])
def test_other_storage_notifications_launch_nothing(event_type):
    raw = copy.deepcopy(fixture("gcs_notification_message.json"))
    raw["data"]["message"]["attributes"]["eventType"] = event_type
    assert events.object_event_from_notification(events.parse_message(as_cloud_event(raw))) is None


def test_object_name_edge_cases_split_into_parts():
    o = events.StorageObject(bucket="b", name=".hidden", generation=1)
    assert (o.stem, o.extension) == (".hidden", "")
    o = events.StorageObject(bucket="b", name="dir/archive.tar.gz", generation=1)
    assert (o.dirname, o.stem, o.extension) == ("dir", "archive.tar", "gz")
