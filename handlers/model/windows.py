"""Windows, typed: the objects a window holds, its manifest, and a closed window as a launch's input.

A storage trigger with ``batch:`` does not launch once per object: each matching object joins the
open window of its trigger and key (the state lives in the ledger, :mod:`handlers.launch.windows`),
and a window launches its pipeline once when it closes. What that launch sees is a
:class:`WindowEvent`: its identity is the window id (so the run key is derived from trigger and
window), and its placeholders are ``{batch.*}``.

The **manifest** lists the window's objects, one JSON object per line (newline-delimited JSON, UTF-8)::

    {"bucket": "landing", "name": "in/a.csv", "generation": "1700000000000001", "size": 12,
     "event_time": "2026-12-06T15:00:00.000Z"}

ordered by event time, then bucket, name and generation (:func:`manifest_lines`), so the same
window always gives the same bytes.

A replay's ``--rerun`` (generation ``n``) batches its objects into windows of their own: the
generation is part of the window id (:func:`key_hash`) and of each member's identity, so a rerun
never joins, moves or relaunches a live window, and its window's run says ``rerun: n``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.core.ids import digest
from handlers.core.times import iso, parse_time
from handlers.model.config import Settings, Trigger
from handlers.model.events import ObjectEvent

MANIFEST_CONTENT_TYPE = "application/x-ndjson"
KEY_CHARS = 16


@dataclass(frozen=True)
class Member:
    """One object of a window, as its manifest line says it."""

    bucket: str
    name: str
    generation: str
    size: int
    event_time: str
    rerun: int = 0  # the replay generation it joins for (0: live); not a manifest field

    @classmethod
    def of(cls, event: ObjectEvent) -> Member:
        o = event.object
        stamp = iso(event.event_time) or ""
        return cls(o.bucket, o.name, str(o.generation), int(o.size or 0), stamp, int(event.rerun or 0))

    @property
    def identity(self) -> str:
        base = f"{self.bucket}/{self.name}#{self.generation}"
        return f"{base}#rerun={self.rerun}" if self.rerun else base

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "name": self.name,
            "generation": self.generation,
            "size": self.size,
            "event_time": self.event_time,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], rerun: int = 0) -> Member:
        return cls(
            str(doc["bucket"]),
            str(doc["name"]),
            str(doc["generation"]),
            int(doc.get("size") or 0),
            str(doc["event_time"]),
            rerun,
        )


def manifest_order(member: Member) -> tuple[str, str, str, int]:
    generation = int(member.generation) if member.generation.isdigit() else 0
    return (member.event_time, member.bucket, member.name, generation)


def manifest_lines(members: Iterable[Member]) -> bytes:
    """The manifest's bytes: one compact JSON line per object, in :func:`manifest_order`."""
    ordered = sorted(members, key=manifest_order)
    return b"".join(
        json.dumps(m.to_json(), ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for m in ordered
    )


def key_hash(trigger: str, key: str, rerun: int = 0) -> str:
    """The part of a window id naming its (trigger, key) and, for a rerun, its generation."""
    if rerun:
        return digest(trigger, key, f"rerun={rerun}", length=KEY_CHARS)
    return digest(trigger, key, length=KEY_CHARS)


def window_id(trigger: str, key: str, seq: int, rerun: int = 0) -> str:
    """``<key hash>-<sequence>``: the ``seq``-th window of ``key`` for ``trigger`` (and generation)."""
    return f"{key_hash(trigger, key, rerun)}-{seq:06d}"


def manifest_location(settings: Settings, trigger: Trigger, wid: str) -> tuple[str, str]:
    """(bucket, object name) of a window's manifest: ``batch.manifest_bucket`` (default: the ledger
    bucket) and ``batch.manifest_prefix`` (default: ``<ledger prefix>manifests/``), then
    ``<trigger>/<window id>.jsonl``."""
    spec = trigger.batch
    bucket = (spec.manifest_bucket if spec else None) or settings.ledger_bucket
    prefix = (spec.manifest_prefix if spec else None) or f"{settings.ledger_prefix}manifests/"
    return bucket, f"{prefix}{trigger.name}/{wid}.jsonl"


@dataclass(frozen=True)
class WindowEvent:
    """A closed window as the input of its launch."""

    trigger: str
    window_id: str
    key: str
    bucket: str  # the trigger's bucket: every object of the window is in it
    count: int
    bytes: int
    first_time: dt.datetime
    last_time: dt.datetime
    manifest_bucket: str
    manifest_name: str
    reason: str = ""
    rerun: int = 0  # the replay generation (0: live): the launch service records it on the run
    kind = "window"

    @property
    def manifest(self) -> str:
        return f"gs://{self.manifest_bucket}/{self.manifest_name}"

    @property
    def event_id(self) -> str:
        return self.window_id

    @property
    def event_time(self) -> dt.datetime:
        return self.last_time

    @property
    def identity(self) -> str:
        return f"window:{self.window_id}"

    def window(self) -> dict[str, Any]:
        """What completion events and run records say about the window."""
        return {
            "id": self.window_id,
            "key": self.key,
            "count": self.count,
            "bytes": self.bytes,
            "manifest": self.manifest,
            "first_time": iso(self.first_time),
            "last_time": iso(self.last_time),
            "reason": self.reason,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "window",
            "bucket": self.bucket,
            "event_id": self.event_id,
            "event_time": iso(self.event_time),
            "window": self.window(),
            **({"rerun": self.rerun} if self.rerun else {}),
        }

    @property
    def lookup(self) -> Callable[[str], Any]:
        values = {
            "batch.manifest": self.manifest,
            "batch.manifest_bucket": self.manifest_bucket,
            "batch.manifest_name": self.manifest_name,
            "batch.count": self.count,
            "batch.bytes": self.bytes,
            "batch.id": self.window_id,
            "batch.key": self.key,
            "batch.bucket": self.bucket,
            "batch.reason": self.reason,
            "batch.first_time": self.first_time,
            "batch.last_time": self.last_time,
        }

        def lookup(path: str) -> Any:
            return values[path]

        return lookup


def window_of_summary(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The window a run record's event summary carries (``None``: the run is not a window's)."""
    window = summary.get("window") if summary.get("kind") == "window" else None
    return dict(window) if isinstance(window, Mapping) else None


def time_of(value: Any) -> dt.datetime:
    parsed = parse_time(value)
    assert parsed is not None
    return parsed
