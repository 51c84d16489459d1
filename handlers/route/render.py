"""Run identity and parameters: what one event means for one trigger.

- the **identity** of the event for a trigger: ``bucket/name#generation`` for objects; the message
  id, or the configured ``dedupe_by`` field, for messages; the upstream completion id for chains;
- the **run key** ``<trigger>-<hash>``: a hash of trigger and identity, stable across redeliveries;
- the **job name**: ``<pipeline>-<hash>``, valid for Dataflow (``[a-z]([-a-z0-9]{0,1022}[a-z0-9])?``)
  whatever the object name holds (spaces, unicode, ``#``, ``%``, newlines, 1024 bytes);
- the **labels** on every job (trigger, pipeline, run hash);
- the **lookup** that feeds parameter templates from the event (see :mod:`handlers.model.templates`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.core.errors import ParameterError
from handlers.model.config import Config, Pipeline, Trigger
from handlers.model.events import MessageEvent, ObjectEvent
from handlers.model.templates import dotted, render_all

HASH_CHARS = 20


def run_hash(trigger: str, identity: str) -> str:
    return hashlib.sha256(f"{trigger}\n{identity}".encode()).hexdigest()[:HASH_CHARS]


def run_key(trigger: str, identity: str) -> str:
    return f"{trigger}-{run_hash(trigger, identity)}"


def slug(text: str) -> str:
    """Lowercase ``[-a-z0-9]``, no leading digit or dash, no double dashes."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not s or not s[0].isalpha():
        s = "p-" + s
    return s.strip("-")


def job_name(pipeline: str, key: str) -> str:
    """A valid, deterministic job name for this pipeline and run key."""
    h = key.rsplit("-", 1)[-1]
    return f"{slug(pipeline)[:60]}-{h}"


def label_value(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def job_labels(trigger: str, pipeline: str, key: str) -> dict[str, str]:
    return {
        "pipeline-trigger": label_value(trigger),
        "pipeline": label_value(pipeline),
        "run-key-hash": key.rsplit("-", 1)[-1],
    }


def identity_of(trigger: Trigger, event: Any) -> str:
    """The part of the event that makes a delivery the same run as another delivery."""
    if isinstance(event, ObjectEvent):
        return event.identity
    if isinstance(event, MessageEvent):
        dedupe = trigger.pubsub.dedupe_by if trigger.pubsub else None
        if dedupe:
            try:
                value = _message_lookup(event)(dedupe)
            except KeyError:
                value = None
            if value in (None, ""):
                raise ParameterError(
                    f"dedupe_by {dedupe}: the message has no value there", trigger=trigger.name, field=dedupe
                )
            return f"{dedupe}={value if isinstance(value, str) else repr(value)}"
        return f"message:{event.message_id}"
    identity = getattr(event, "identity", None)
    if not identity:
        raise ParameterError("event has no identity", trigger=trigger.name)
    return str(identity)


def _object_lookup(event: ObjectEvent) -> Callable[[str], Any]:
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


def _message_lookup(event: MessageEvent) -> Callable[[str], Any]:
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


def event_lookup(event: Any) -> Callable[[str], Any]:
    """The scope-specific half of a template lookup."""
    if isinstance(event, ObjectEvent):
        return _object_lookup(event)
    if isinstance(event, MessageEvent):
        return _message_lookup(event)
    lookup = getattr(event, "lookup", None)
    if lookup is None:
        raise TypeError(f"no template lookup for {type(event).__name__}")
    return lookup


@dataclass(frozen=True)
class Rendered:
    run_key: str
    job_name: str
    parameters: Mapping[str, str]
    outputs: Mapping[str, str]
    labels: Mapping[str, str]


def render(config: Config, trigger: Trigger, pipeline: Pipeline, event: Any, key: str) -> Rendered:
    """Render parameters then outputs; raises one ParameterError naming every missing value."""
    scoped = event_lookup(event)
    common = {
        "event_id": event.event_id,
        "event_time": event.event_time,
        "trigger": trigger.name,
        "pipeline": pipeline.name,
        "run_key": key,
        "project": pipeline.project,
        "region": pipeline.region,
    }

    def lookup(path: str) -> Any:
        if path in common:
            return common[path]
        return scoped(path)

    try:
        parameters = render_all(config.templates_for(trigger), lookup)

        def output_lookup(path: str) -> Any:
            if path.startswith("params."):
                return parameters[path[len("params.") :]]
            return lookup(path)

        outputs = render_all(pipeline.outputs, output_lookup)
    except ParameterError as exc:
        exc.trigger, exc.pipeline, exc.run_key = trigger.name, pipeline.name, key
        raise
    return Rendered(
        run_key=key,
        job_name=job_name(pipeline.name, key),
        parameters=parameters,
        outputs=outputs,
        labels=job_labels(trigger.name, pipeline.name, key),
    )
