"""Realistic CloudEvents, shaped like Google's google-cloudevents test data."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

from cloudevents.http import CloudEvent


def now_iso(offset_seconds: float = 0) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def storage_finalized(
    bucket: str,
    name: str,
    *,
    generation: int | str = 1700000000000001,
    size: int | str = 12,
    content_type: str = "text/plain",
    metadata: dict[str, str] | None = None,
    event_id: str | None = None,
    time: str | None = None,
) -> CloudEvent:
    attributes = {
        "specversion": "1.0",
        "type": "google.cloud.storage.object.v1.finalized",
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{name}",
        "id": event_id or str(uuid.uuid4().int)[:16],
        "time": time or now_iso(),
    }
    data: dict[str, Any] = {
        "kind": "storage#object",
        "bucket": bucket,
        "name": name,
        "generation": str(generation),
        "metageneration": "1",
        "contentType": content_type,
        "size": str(size),
        "timeCreated": attributes["time"],
        "updated": attributes["time"],
        "storageClass": "STANDARD",
        "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==",
        "crc32c": "mnG7TA==",
    }
    if metadata:
        data["metadata"] = metadata
    return CloudEvent(attributes, data)


def pubsub_message(
    topic: str,
    data: Any = None,
    *,
    attributes: dict[str, str] | None = None,
    message_id: str | None = None,
    project: str = "local-project",
    time: str | None = None,
) -> CloudEvent:
    if data is None:
        raw = b""
    elif isinstance(data, bytes):
        raw = data
    elif isinstance(data, str):
        raw = data.encode()
    else:
        raw = json.dumps(data).encode()
    message_id = message_id or str(uuid.uuid4().int)[:17]
    when = time or now_iso()
    message = {
        "attributes": attributes or {},
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": when,
        "publish_time": when,
    }
    if raw:
        message["data"] = base64.b64encode(raw).decode()
    ce_attrs = {
        "specversion": "1.0",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
        "id": message_id,
        "time": when,
    }
    return CloudEvent(
        ce_attrs, {"message": message, "subscription": f"projects/{project}/subscriptions/{topic}-sub"}
    )


def push_body(data: bytes, attributes: dict[str, str], message_id: str, subscription: str) -> dict[str, Any]:
    """The body a Pub/Sub push subscription POSTs."""
    when = now_iso()
    return {
        "subscription": subscription,
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": when,
            "publish_time": when,
        },
    }
