"""Typed, read-only wrappers over the events the functions receive.

Shapes (Google's ``google-cloudevents`` schemas):

- **Storage object finalized** (Eventarc): CloudEvent type
  ``google.cloud.storage.object.v1.finalized``, source ``//storage.googleapis.com/projects/_/buckets/B``,
  data = the object resource (``bucket, name, generation, size, contentType, metadata, ...``).
- **Pub/Sub message published** (Eventarc): type ``google.cloud.pubsub.topic.v1.messagePublished``,
  source ``//pubsub.googleapis.com/projects/P/topics/T``, data ``{"message": {"data": base64,
  "attributes", "messageId", "publishTime", "orderingKey"}, "subscription"}``.
- **Cloud Storage notification through Pub/Sub**: a message whose attributes carry ``eventType``,
  ``bucketId``, ``objectId``, ``objectGeneration`` (data = object JSON when
  ``payloadFormat=JSON_API_V1``). Only ``OBJECT_FINALIZE`` counts as a finalize event.

The wrappers tolerate what real deliveries do: numbers sent as strings, camelCase and snake_case
copies of the same field, empty or non-JSON message data. Anything that cannot be understood is an
:class:`~handlers.core.errors.EventError` naming the field: a text field (bucket, name, content type,
hashes, metadata and attribute values) of another type, and text that is not valid Unicode (a lone
surrogate a JSON escape can carry), which no log line, ledger record or job parameter could hold.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.core.errors import EventError
from handlers.core.times import iso, parse_time
from handlers.model.templates import dotted

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
NOTIFICATION_FINALIZE = "OBJECT_FINALIZE"
_NOTIFICATION_ATTRS = ("eventType", "bucketId", "objectId")


def _first(d: Mapping[str, Any], *names: str) -> Any:
    """The first present, non-empty value among ``names`` (camelCase and snake_case copies)."""
    for n in names:
        v = d.get(n)
        if v not in (None, ""):
            return v
    return None


def _text(value: Any, field_name: str) -> str | None:
    """A text field: ``None`` when absent or empty; a value of another type is malformed (its
    ``str()`` would render into parameters as ``None``, ``['a']``...)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventError(f"{field_name} must be a string, got {type(value).__name__}", field=field_name)
    return value


def invalid_text_path(value: Any, path: str = "") -> str | None:
    """Where ``value`` holds a string (or key) that is not valid Unicode (a lone surrogate, which a
    JSON ``\\ud800`` escape can carry but UTF-8 cannot), or ``None`` when it holds none."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if not _encodable(node):
                return where or "value"
        elif isinstance(node, Mapping):
            for key, child in node.items():
                here = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and not _encodable(key):
                    return here
                stack.append((child, here))
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{where}.{i}" if where else str(i)) for i, child in enumerate(node))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_unicode(value: Any, what: str) -> None:
    where = invalid_text_path(value)
    if where is not None:
        raise EventError(f"{what} carries text that is not valid Unicode at {where!r}", field=where)


# ASCII digits only: int() alone also reads "1_000" as 1000 and "\uff11\uff12" as 12, so garbage
# would become another generation (another run identity) or size.
_INT_TEXT = re.compile(r"[ \t\r\n]*[+-]?[0-9]+[ \t\r\n]*")


def to_int(value: Any, field_name: str) -> int | None:
    """An integer from a JSON number or a numeric string; ``None`` when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise EventError(f"{field_name} must be a number, got {value!r}", field=field_name)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    raise EventError(f"{field_name} must be an integer, got {value!r}", field=field_name)


def cloud_event_parts(cloud_event: Any) -> tuple[dict[str, Any], Any]:
    """(attributes, data) of a ``cloudevents`` CloudEvent or of a plain dict."""
    if hasattr(cloud_event, "get_attributes"):
        return dict(cloud_event.get_attributes()), cloud_event.data
    if isinstance(cloud_event, Mapping):
        attrs = {k: v for k, v in cloud_event.items() if k != "data"}
        return attrs, cloud_event.get("data")
    raise EventError(f"not a CloudEvent: {type(cloud_event).__name__}")


@dataclass(frozen=True)
class StorageObject:
    """One version of one Cloud Storage object."""

    bucket: str
    name: str
    generation: int
    size: int | None = None
    content_type: str | None = None
    metageneration: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    md5_hash: str | None = None
    crc32c: str | None = None
    time_created: dt.datetime | None = None

    @property
    def identity(self) -> str:
        """``bucket/name#generation``: one version of one object, stable across redeliveries."""
        return f"{self.bucket}/{self.name}#{self.generation}"

    @property
    def dirname(self) -> str:
        """Everything before the last ``/``, as written: object names are flat, so the ``//`` of
        ``a//b.txt`` is part of its prefix (posixpath.dirname would drop it: ``a``, another prefix)."""
        return self.name.rpartition("/")[0]

    @property
    def basename(self) -> str:
        return self.name.rpartition("/")[2]

    @property
    def stem(self) -> str:
        base = self.basename
        return base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base

    @property
    def extension(self) -> str:
        """The extension without its dot (``csv``), or empty."""
        base = self.basename
        return base.rsplit(".", 1)[1] if "." in base.lstrip(".") else ""

    @classmethod
    def from_resource(
        cls, data: Mapping[str, Any], *, fallback: Mapping[str, Any] | None = None
    ) -> StorageObject:
        """Build from an object resource (JSON API v1), tolerant of string numbers and snake_case."""
        fb = fallback or {}
        bucket = _text(_first(data, "bucket"), "bucket") or fb.get("bucket")
        name = _text(_first(data, "name"), "name") or fb.get("name")
        generation = to_int(_first(data, "generation") or fb.get("generation"), "generation")
        if not bucket:
            raise EventError("storage event has no bucket", field="bucket")
        if not name:
            raise EventError("storage event has no object name", field="name")
        if generation is None:
            raise EventError("storage event has no generation", field="generation")
        metadata = _first(data, "metadata") or {}
        if not isinstance(metadata, Mapping):
            raise EventError("metadata must be an object", field="metadata")
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise EventError(
                    f"metadata.{key} must be a string, got {type(value).__name__}", field=f"metadata.{key}"
                )
        return cls(
            bucket=str(bucket),
            name=str(name),
            generation=generation,
            size=to_int(_first(data, "size"), "size"),
            content_type=_text(_first(data, "contentType", "content_type"), "contentType"),
            metageneration=to_int(_first(data, "metageneration"), "metageneration"),
            metadata={str(k): v for k, v in metadata.items()},
            md5_hash=_text(_first(data, "md5Hash", "md5_hash"), "md5Hash"),
            crc32c=_text(_first(data, "crc32c"), "crc32c"),
            time_created=parse_time(_first(data, "timeCreated", "time_created"), "timeCreated"),
        )


@dataclass(frozen=True)
class ObjectEvent:
    """An object-finalize event, from Eventarc or from a Pub/Sub storage notification."""

    event_id: str
    event_time: dt.datetime
    object: StorageObject
    via: str = "eventarc"
    rerun: int = 0  # a replay's deliberate new generation of runs (0: the live run's generation)

    kind = "storage"

    @property
    def identity(self) -> str:
        return self.object.identity

    @property
    def lookup(self) -> Callable[[str], Any]:
        return object_lookup(self)

    def summary(self) -> dict[str, Any]:
        o = self.object
        return {
            "kind": "storage",
            "bucket": o.bucket,
            "name": o.name,
            "generation": str(o.generation),
            "event_id": self.event_id,
            "event_time": iso(self.event_time),
            **({"rerun": self.rerun} if self.rerun else {}),
        }


@dataclass(frozen=True)
class MessageEvent:
    """A Pub/Sub message delivered as a CloudEvent."""

    event_id: str
    event_time: dt.datetime
    project: str
    topic: str
    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: dt.datetime | None = None
    ordering_key: str | None = None
    subscription: str | None = None
    rerun: int = 0  # a replay's deliberate new generation of runs (0: the live run's generation)

    kind = "pubsub"

    @property
    def identity(self) -> str:
        return self.message_id

    @property
    def lookup(self) -> Callable[[str], Any]:
        return message_lookup(self)

    @property
    def text(self) -> str:
        """The message data as text (invalid UTF-8 replaced)."""
        return self.data.decode("utf-8", errors="replace")

    @functools.cached_property
    def json(self) -> Any:
        """The message data parsed as JSON, or ``None`` when empty or not JSON (nested deeper than
        the parser goes, or holding text that is not valid Unicode, counts as not JSON)."""
        if not self.data.strip():
            return None
        try:
            value = json.loads(self.data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        # Lone surrogates come from \u escapes, or from raw bytes json decodes with surrogatepass.
        suspect = b"\\u" in self.data or not self.data.isascii()
        if suspect and invalid_text_path(value) is not None:
            return None
        return value

    def is_storage_notification(self) -> bool:
        return all(self.attributes.get(a) for a in _NOTIFICATION_ATTRS)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "pubsub",
            "topic": self.topic,
            "message_id": self.message_id,
            "event_id": self.event_id,
            "event_time": iso(self.event_time),
            **({"rerun": self.rerun} if self.rerun else {}),
        }


def _event_time(attrs: Mapping[str, Any], *candidates: Any) -> dt.datetime:
    for value in (attrs.get("time"), *candidates):
        parsed = parse_time(value)
        if parsed is not None:
            return parsed
    return dt.datetime.now(dt.UTC)


def parse_object_finalized(cloud_event: Any) -> ObjectEvent:
    """Wrap an Eventarc Cloud Storage finalize CloudEvent."""
    attrs, data = cloud_event_parts(cloud_event)
    if attrs.get("type") not in (None, STORAGE_FINALIZED):
        raise EventError(f"expected {STORAGE_FINALIZED}, got {attrs.get('type')!r}", field="type")
    data = _json_object(data, "data")
    _require_unicode(attrs, "the CloudEvent")
    _require_unicode(data, "the storage event")
    fallback: dict[str, Any] = {}
    source, subject = str(attrs.get("source") or ""), str(attrs.get("subject") or "")
    if "/buckets/" in source:
        fallback["bucket"] = source.rsplit("/buckets/", 1)[1]
    if subject.startswith("objects/"):
        fallback["name"] = subject[len("objects/") :]
    obj = StorageObject.from_resource(data, fallback=fallback)
    return ObjectEvent(
        event_id=str(attrs.get("id") or obj.identity),
        event_time=_event_time(attrs, _first(data, "updated"), obj.time_created),
        object=obj,
    )


def parse_message(cloud_event: Any) -> MessageEvent:
    """Wrap an Eventarc Pub/Sub CloudEvent (also the body functions-framework builds from a push)."""
    attrs, data = cloud_event_parts(cloud_event)
    if attrs.get("type") not in (None, PUBSUB_PUBLISHED):
        raise EventError(f"expected {PUBSUB_PUBLISHED}, got {attrs.get('type')!r}", field="type")
    body = _json_object(data, "data")
    _require_unicode(attrs, "the CloudEvent")
    _require_unicode(body, "the Pub/Sub event")
    message = body.get("message")
    if not isinstance(message, Mapping):
        raise EventError("Pub/Sub event has no message object", field="message")
    message_id = _first(message, "messageId", "message_id")
    if not message_id:
        raise EventError("Pub/Sub message has no messageId", field="message.messageId")
    raw = message.get("data") or ""
    try:
        payload = base64.b64decode(raw, validate=True) if raw else b""
    except (binascii.Error, ValueError, TypeError) as exc:
        raise EventError("message.data is not valid base64", field="message.data") from exc
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise EventError("message.attributes must be an object", field="message.attributes")
    for key, value in attributes.items():
        if not isinstance(value, str):
            raise EventError(
                f"message.attributes.{key} must be a string, got {type(value).__name__}",
                field=f"message.attributes.{key}",
            )
    project, topic = split_topic(str(attrs.get("source") or ""))
    publish_time = parse_time(_first(message, "publishTime", "publish_time"), "message.publishTime")
    return MessageEvent(
        event_id=str(attrs.get("id") or message_id),
        event_time=_event_time(attrs, publish_time),
        project=project,
        topic=topic,
        message_id=str(message_id),
        data=payload,
        attributes={str(k): v for k, v in attributes.items()},
        publish_time=publish_time,
        ordering_key=_text(_first(message, "orderingKey", "ordering_key"), "message.orderingKey"),
        subscription=body.get("subscription"),
    )


def object_event_from_notification(msg: MessageEvent) -> ObjectEvent | None:
    """The finalize event carried by a storage notification, or ``None`` for other event types."""
    if msg.attributes.get("eventType") != NOTIFICATION_FINALIZE:
        return None
    data = msg.json if isinstance(msg.json, Mapping) else {}
    fallback = {
        "bucket": msg.attributes.get("bucketId"),
        "name": msg.attributes.get("objectId"),
        "generation": msg.attributes.get("objectGeneration"),
    }
    obj = StorageObject.from_resource(data, fallback=fallback)
    event_time = parse_time(msg.attributes.get("eventTime"), "eventTime") or msg.event_time
    return ObjectEvent(event_id=msg.event_id, event_time=event_time, object=obj, via="pubsub-notification")


def split_topic(source_or_name: str) -> tuple[str, str]:
    """(project, topic) from ``//pubsub.googleapis.com/projects/P/topics/T`` or ``projects/P/topics/T``."""
    marker = "projects/"
    if marker in source_or_name and "/topics/" in source_or_name:
        tail = source_or_name[source_or_name.index(marker) + len(marker) :]
        project, _, topic = tail.partition("/topics/")
        return project, topic
    return "", source_or_name.rsplit("/", 1)[-1]


def _json_object(data: Any, field_name: str) -> Mapping[str, Any]:
    if isinstance(data, bytes | bytearray):
        try:
            data = json.loads(data or b"{}")
        except ValueError as exc:
            raise EventError(f"{field_name} is not JSON", field=field_name) from exc
    if isinstance(data, str):
        try:
            data = json.loads(data or "{}")
        except ValueError as exc:
            raise EventError(f"{field_name} is not JSON", field=field_name) from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise EventError(f"{field_name} must be a JSON object", field=field_name)
    return data


def object_lookup(event: ObjectEvent) -> Callable[[str], Any]:
    """Template values of an object event (see :mod:`handlers.model.templates`)."""
    o = event.object
    simple = {
        "bucket": o.bucket,
        "name": o.name,
        "dirname": o.dirname,
        "basename": o.basename,
        "stem": o.stem,
        "extension": o.extension,
        "generation": o.generation,
        "metageneration": o.metageneration,
        "size": o.size,
        "content_type": o.content_type,
        "md5_hash": o.md5_hash,
        "crc32c": o.crc32c,
        "time_created": o.time_created,
    }

    def lookup(path: str) -> Any:
        if path in simple:
            return simple[path]
        if path.startswith("metadata."):
            return o.metadata[path[len("metadata.") :]]
        raise KeyError(path)

    return lookup


def message_lookup(event: MessageEvent) -> Callable[[str], Any]:
    """Template values of a message (``data.a.b``: a JSON field by dotted path)."""
    simple = {
        "topic": event.topic,
        "message_id": event.message_id,
        "ordering_key": event.ordering_key,
        "publish_time": event.publish_time,
    }

    def lookup(path: str) -> Any:
        if path in simple:
            return simple[path]
        if path == "data":
            # The payload as text only when it is text: U+FFFD replacements would be a parameter the
            # message never said (a binary payload has no value here; use {data|...} for a default).
            try:
                return event.data.decode("utf-8")
            except UnicodeDecodeError:
                raise KeyError(path) from None
        if path.startswith("attributes."):
            return event.attributes[path[len("attributes.") :]]
        if path.startswith("data."):
            payload = event.json
            if payload is None:
                raise KeyError(path)
            return dotted(payload, path[len("data.") :])
        raise KeyError(path)

    return lookup
