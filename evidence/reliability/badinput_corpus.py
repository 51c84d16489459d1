"""The bad-input corpus: generated cases, each with what the error policy says must happen.

Every case is built from hypothesis strategies (see :func:`generate`) together with its **oracle**:
the launches it may cause (none, or exactly the parameters computed here from what was generated),
the HTTP statuses its deliveries may get, and, for configs, the problems the validator must name.
The oracle is written from the documented contracts (docs/config.md, the event shapes in
handlers/model/events.py's docstring, the OpenAPI file), never by calling the code under test: it knows
what each generated field *means* because it generated it.

Categories (``CATEGORIES``): malformed storage CloudEvents, Pub/Sub messages, Cloud Storage
notifications through Pub/Sub, completion-shaped messages, Dataflow statusChanged events, hostile
object names, REST requests to the ``api`` function, and config documents.

Every case is independent of the others: run identities (generation, message id, order id,
idempotency key, completion id) carry the case number, and a redelivery is a second delivery of the
same case, so cases may run in any order and a failure points at one case.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote

import yaml
from hypothesis import strategies as st

Draw = Callable[..., Any]

# ---------------------------------------------------------------------------------------------
# The suite's routing config (the ledger bucket and completion topic are per run)
# ---------------------------------------------------------------------------------------------
PROJECT = "local-project"
REGION = "europe-west1"
LANDING_BUCKET = "bi-landing"
SIZED_BUCKET = "bi-sized"
TEMPLATE_BUCKET = "gs://badinput-templates"
FABRIC_WORKSPACE = "5d1c7a3e-2b4f-4c1d-9e8a-7b6c5d4e3f21"
FABRIC_ITEM = "8e2f1a0b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
FABRIC_TENANT = "0f1e2d3c-4b5a-4697-8877-665544332211"
FABRIC_CLIENT = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STATUS_CHANGED = "google.cloud.dataflow.job.v1beta3.statusChanged"
RUN_COMPLETED = "io.eventpipelines.run.completed.v1"
JOIN_ABANDONED = "io.eventpipelines.join.abandoned.v1"

# Dataflow pipelines: name -> (template path, flex?)
DATAFLOW_PIPELINES = {
    "ingest": (f"{TEMPLATE_BUCKET}/ingest", False),
    "sized": (f"{TEMPLATE_BUCKET}/sized", False),
    "orders": (f"{TEMPLATE_BUCKET}/orders.json", True),
    "events": (f"{TEMPLATE_BUCKET}/events", False),
    "chained": (f"{TEMPLATE_BUCKET}/chained", False),
    "manual": (f"{TEMPLATE_BUCKET}/manual", False),
}
TEMPLATE_PARAMETERS = {
    "ingest": ["input", "name", "dir", "base", "stem", "ext", "generation", "owner", "day"],
    "sized": ["input", "size", "type"],
    "orders": ["orderId", "region", "note"],
    "events": ["key", "payload", "first"],
    "chained": ["upstreamName", "upstreamRun", "upstreamState"],
    "manual": ["day", "table", "note"],
}
MAX_EVENT_AGE = dt.timedelta(hours=1)
MANUAL_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_BODY_BYTES = 64 * 1024
MAX_KEY_LENGTH = 200


def config_doc(ledger_bucket: str, completion_topic: str) -> dict[str, Any]:
    """The routing config every event and REST case runs against."""

    def dataflow(name: str, parameters: dict[str, str], **extra: Any) -> dict[str, Any]:
        path, flex = DATAFLOW_PIPELINES[name]
        return {
            "backend": "dataflow-flex" if flex else "dataflow",
            "template": path,
            "environment": {"tempLocation": "gs://badinput-temp/tmp", "maxWorkers": 1},
            "parameters": parameters,
            **extra,
        }

    return {
        "settings": {
            "project": PROJECT,
            "region": REGION,
            "ledger": {"bucket": ledger_bucket, "prefix": "ledger/", "lease": "10m"},
            "completion_topic": completion_topic,
            "max_event_age": "1h",
            "launch_budget": "5s",
        },
        "pipelines": {
            "ingest": dataflow(
                "ingest",
                {
                    "input": "gs://{bucket}/{name}",
                    "name": "{name}",
                    "dir": "{dirname}",
                    "base": "{basename}",
                    "stem": "{stem}",
                    "ext": "{extension}",
                    "generation": "{generation}",
                    "owner": "{metadata.owner|nobody}",
                    "day": "{event_time:%Y-%m-%d}",
                },
                outputs={"copy": "gs://badinput-out/{stem}/{params.day}/"},
            ),
            "sized": dataflow(
                "sized", {"input": "gs://{bucket}/{name}", "size": "{size}", "type": "{content_type}"}
            ),
            "orders": dataflow(
                "orders",
                {
                    "orderId": "{data.order.id}",
                    "region": "{attributes.region|none}",
                    "note": "{data.order.note|}",
                },
            ),
            "events": dataflow(
                "events", {"key": "{attributes.key}", "payload": "{data}", "first": "{data.items.0|none}"}
            ),
            "chained": dataflow(
                "chained",
                {
                    "upstreamName": "{upstream.parameters.name}",
                    "upstreamRun": "{upstream.run_key}",
                    "upstreamState": "{upstream.state}",
                },
            ),
            "manual": dataflow(
                "manual",
                {"day": "{input.day}", "table": "{input.table}", "note": "{input.note|}"},
                inputs={
                    "day": {"pattern": MANUAL_DAY.pattern, "description": "YYYY-MM-DD"},
                    "table": {"required": False, "default": "sales"},
                    "note": {"required": False},
                },
            ),
            "report": {
                "backend": "fabric",
                "workspace": FABRIC_WORKSPACE,
                "item": FABRIC_ITEM,
                "job_type": "Execute",
                "auth": "delegated",
                "parameters": {"Source": "{attributes.source}", "Day": "{event_time:%Y-%m-%d}"},
            },
        },
        "triggers": {
            "landing": {
                "storage": {"bucket": LANDING_BUCKET, "glob": "incoming/**/*.txt"},
                "pipeline": "ingest",
            },
            "sized": {
                "storage": {
                    "bucket": SIZED_BUCKET,
                    "prefix": "in/",
                    "suffix": ".csv",
                    "content_type": "text/*",
                    "min_size": 1,
                    "max_size": 1_000_000,
                },
                "pipeline": "sized",
            },
            "orders": {
                "pubsub": {
                    "topic": "orders",
                    "attributes": {"kind": "order"},
                    "data": {"order.id": {"exists": True}},
                    "dedupe_by": "data.order.id",
                },
                "pipeline": "orders",
            },
            "events": {"pubsub": {"topic": "events"}, "pipeline": "events"},
            "reports": {
                "pubsub": {"topic": "reports", "attributes": {"source": {"exists": True}}},
                "pipeline": "report",
            },
            "after-ingest": {
                "completion": {"upstream": "ingest", "states": ["SUCCEEDED", "FAILED"]},
                "pipeline": "chained",
            },
        },
    }


# ---------------------------------------------------------------------------------------------
# What a case is
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """One launch request as the backend sees it: the target and the exact parameters."""

    target: str  # "dataflow:<template path>" or "fabric:<item id>"
    parameters: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, pipeline: str, parameters: Mapping[str, str]) -> Launch:
        target = (
            f"fabric:{FABRIC_ITEM}" if pipeline == "report" else f"dataflow:{DATAFLOW_PIPELINES[pipeline][0]}"
        )
        return cls(target, tuple(sorted(parameters.items())))


LaunchSet = tuple[Launch, ...]
NONE: tuple[LaunchSet, ...] = ((),)  # "must not launch anything"


@dataclass
class Delivery:
    """One HTTP request to one function of main.py."""

    function: str  # on_object_finalized | on_message | on_job_status | api
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/"
    statuses: frozenset[int] = frozenset({200})  # the statuses the policy allows
    follow: str | None = None  # REST: path = "/runs/" + previous answer's run_key + follow
    read_only: bool = False  # a successful read needs no log line
    framework_404: bool = False  # functions-framework may refuse the path itself (HTML 404)


@dataclass
class Case:
    number: int
    category: str
    shape: str  # what was generated, in a few words (figures and failure reports)
    deliveries: list[Delivery] = field(default_factory=list)
    launches: tuple[LaunchSet, ...] = NONE  # the acceptable sets of launches over the whole case
    known: str | None = None  # a reported, not yet fixed bug this case exercises (KNOWN_BUGS)
    config_text: str | None = None  # config cases: the YAML document
    config_markers: tuple[str, ...] = ()  # each must appear in some listed problem
    config_valid: bool | None = None  # True: must load; False: must be refused; None: either
    summary: str = ""  # the salient inputs, shortened
    # Run records written to the ledger before the deliveries (``ledger/runs/<run_key>.json``): the
    # finished upstream runs a completion case's messages announce, truthfully or not.
    ledger_runs: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        return f"#{self.number} {self.category}/{self.shape}" + (f" {self.summary}" if self.summary else "")


# Reported bugs in modules this suite may not change (see the final report); a case that exercises
# one is tagged, counted apart and does not fail the CI slice. The regression tests for them are
# strict xfails, so a fix turns them into failures until the tag goes.
KNOWN_BUGS: dict[
    str, str
] = {}  # none open: the four reported here were fixed in completion, chaining and launch


# ---------------------------------------------------------------------------------------------
# Shared strategies
# ---------------------------------------------------------------------------------------------
HOSTILE_SNIPPETS = (
    "..",
    "../",
    "../../etc/passwd",
    "%",
    "%2e%2e%2f",
    "%00",
    "#",
    "#frag",
    "?",
    "?x=1&y=2",
    "{name}",
    "{bucket}",
    "{{",
    "}}",
    "{0}",
    "{name!r}",
    "{event_time:%Y}",
    "{metadata.owner|x}",
    "\u202e",  # right-to-left override
    "\u200f",  # right-to-left mark
    "\u2067",  # right-to-left isolate
    "\x00",
    "\n",
    "\r\n",
    "\t",
    "\x1b[31m",
    "\x7f",
    "\u2028",
    "\ufeff",
    "\u200b",
    "e\u0301",
    "\ufb01",
    "\U0001f642",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u05e2\u05d1\u05e8\u05d9\u05ea",
    "${HOME}",
    "$(id)",
    "`id`",
    "'; DROP TABLE runs; --",
    '"',
    "\\",
    "<script>alert(1)</script>",
    "*",
    "**",
    "[a-z]",
    "incoming/**/*.txt",
    " ",
    "/",
    "//",
    ".txt",
    ".",
    "~",
    "gs://",
)
# Valid Unicode text (no lone surrogates), controls included.
_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_chars = st.characters(exclude_categories=_SURROGATES)
_control = st.characters(min_codepoint=0, max_codepoint=0x1F)
name_piece = st.one_of(
    st.sampled_from(HOSTILE_SNIPPETS),
    st.text(_chars, min_size=1, max_size=10),
    st.text(_control, min_size=1, max_size=3),
)
hostile_text = st.lists(name_piece, min_size=1, max_size=6).map("".join)
LONE_SURROGATES = ("\ud800", "\udfff", "a\udc80b")

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(_chars, max_size=12),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(_chars, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# A value of the wrong type for a field that should be a string.
not_a_string = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(_chars, max_size=5), max_size=3),
    st.dictionaries(st.text(_chars, max_size=5), st.text(_chars, max_size=5), max_size=2),
)


def fmt(value: Any) -> str | None:
    """How a JSON value from an event renders into a parameter (docs/config.md): text verbatim,
    numbers as the JSON text the event carried, true/false, objects and arrays as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys included) is not valid Unicode."""
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, Mapping):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_lone_surrogate(v) for v in value)
    return False


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- times ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Time:
    """A generated time field: ``text`` as sent (``MISSING`` = absent) and what it means."""

    text: Any
    when: dt.datetime | None  # None: absent or empty
    garbage: bool = False


MISSING: Any = object()
GARBAGE_TIMES = (
    "yesterday",
    "2026-13-45T00:00:00Z",
    "2026-02-30T10:00:00Z",
    "10:00",
    "T",
    "2026-01-01T00:00:00+25:00",
    "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",
    "1e9",
    "2026-01-01T00:00:00Zjunk",
)


def _rfc3339(when: dt.datetime, style: int) -> str:
    when = when.astimezone(dt.UTC)
    if style == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style == 1:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}123Z"  # 9 digits
    if style == 2:
        return when.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 3:
        shifted = when.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
        return shifted.isoformat()
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fz")  # lowercase z


def _whole_ms(when: dt.datetime) -> dt.datetime:
    return when.replace(microsecond=(when.microsecond // 1000) * 1000)


@st.composite
def times(
    draw: Draw,
    now: dt.datetime,
    *,
    allow_garbage: bool = True,
    allow_missing: bool = True,
    valid: bool = False,
) -> Time:
    kinds = ["fresh", "fresh", "fresh", "future"] if valid else ["fresh", "fresh", "fresh", "future", "old"]
    allow_garbage = allow_garbage and not valid
    if allow_garbage:
        kinds += ["garbage", "wrong-type"]
    if allow_missing:
        kinds += ["missing", "empty"]
    kind = draw(st.sampled_from(kinds))
    if kind == "missing":
        return Time(MISSING, None)
    if kind == "empty":
        return Time("", None)
    if kind == "garbage":
        return Time(draw(st.sampled_from(GARBAGE_TIMES)), None, garbage=True)
    if kind == "wrong-type":
        return Time(
            draw(st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))), None, True
        )
    offset = {
        "fresh": draw(st.integers(-600, 60)),
        "future": draw(st.integers(3600, 86400 * 400)),
        "old": -draw(st.integers(3 * 3600, 86400 * 3000)),
    }[kind]
    when = _whole_ms(now + dt.timedelta(seconds=offset))
    return Time(_rfc3339(when, draw(st.integers(0, 4))), when)


def too_old(when: dt.datetime, now: dt.datetime) -> bool:
    return now - when > MAX_EVENT_AGE


# ---- integers sent as numbers, strings or garbage ----------------------------------------------
@dataclass(frozen=True)
class Int:
    raw: Any  # what the event carries (MISSING = absent)
    value: int | None  # what it means; None = absent
    garbage: bool = False
    either: bool = False  # lenient forms: reading them as ``value`` or as garbage are both fine


GARBAGE_INTS = (
    "twelve",
    "1_000",
    "\uff11\uff12",
    "\u0661\u0662",
    "0x1F",
    "1e3",
    "12abc",
    "1.5",
    "NaN",
    "--1",
    "\u00b9",
)


@st.composite
def ints(draw: Draw, value: int, *, required: bool, valid: bool = False) -> Int:
    kinds = ["number", "string", "string", "float"]
    if not valid:
        kinds += ["garbage", "bool", "wrong-type", "lenient"]
    if not required and not valid:
        kinds += ["missing", "null", "empty"]
    kind = draw(st.sampled_from(kinds))
    if kind == "number":
        return Int(value, value)
    if kind == "string":
        return Int(str(value), value)
    if kind == "float":
        return Int(float(value), value) if value < 2**53 else Int(str(value), value)
    if kind == "lenient":
        return Int(draw(st.sampled_from([f" {value} ", f"+{value}", f"{value}\n"])), value, either=True)
    if kind == "garbage":
        return Int(draw(st.sampled_from(GARBAGE_INTS)), None, garbage=True)
    if kind == "bool":
        return Int(draw(st.booleans()), None, garbage=True)
    if kind == "wrong-type":
        return Int(
            draw(
                st.one_of(
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                    st.just(1.5),
                )
            ),
            None,
            garbage=True,
        )
    if kind == "missing":
        return Int(MISSING, None)
    if kind == "null":
        return Int(None, None)
    return Int("", None)


# ---------------------------------------------------------------------------------------------
# CloudEvent bodies (structured mode, as Eventarc and Pub/Sub push deliver them)
# ---------------------------------------------------------------------------------------------
def structured(
    attrs: Mapping[str, Any], data: Any = MISSING, *, data_bytes: bytes | None = None
) -> tuple[dict[str, str], bytes]:
    doc: dict[str, Any] = {"specversion": "1.0"}
    doc.update({k: v for k, v in attrs.items() if v is not MISSING})
    if data_bytes is not None:
        doc["data_base64"] = base64.b64encode(data_bytes).decode()
    elif data is not MISSING:
        doc["datacontenttype"] = "application/json"
        doc["data"] = data
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(doc).encode()


def binary(
    attrs: Mapping[str, Any], data: Any = MISSING, *, data_bytes: bytes | None = None
) -> tuple[dict[str, str], bytes] | None:
    """Binary content mode (how Eventarc delivers): attributes as ``ce-`` headers, the data as the
    body. ``None`` when an attribute cannot be an HTTP header (not text, not Latin-1, a newline)."""
    headers = {"ce-specversion": "1.0"}
    for key, value in attrs.items():
        if value is MISSING:
            continue
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00") or not _latin1(value):
            return None
        headers[f"ce-{key}"] = value
    if data_bytes is not None:
        return {**headers, "Content-Type": "application/octet-stream"}, data_bytes
    if data is MISSING:
        return headers, b""
    return {**headers, "Content-Type": "application/json"}, json.dumps(data).encode()


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def event_delivery(
    function: str,
    attrs: Mapping[str, Any],
    data: Any = MISSING,
    *,
    data_bytes: bytes | None = None,
    binary_mode: bool = False,
) -> Delivery:
    """A CloudEvent delivery, in binary content mode when asked and possible, else structured."""
    encoded = binary(attrs, data, data_bytes=data_bytes) if binary_mode else None
    headers, body = encoded or structured(attrs, data, data_bytes=data_bytes)
    return Delivery(function, body, headers)


# ---------------------------------------------------------------------------------------------
# The storage oracle: an object resource -> the object, or "malformed"
# ---------------------------------------------------------------------------------------------
class Malformed(Exception):
    """The oracle's verdict: the event cannot be understood (acknowledge, launch nothing)."""


@dataclass(frozen=True)
class Obj:
    bucket: str
    name: str
    generation: int
    size: int | None
    content_type: str | None
    metadata: Mapping[str, str]
    either: bool = False  # some field had a lenient form: not launching is fine too


def _present(value: Any) -> bool:
    return value is not MISSING and value is not None and value != ""


def _text_field(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key, MISSING)
    if not _present(value):
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key} is not a string")
    return value


def _int_field(spec: Int | None) -> int | None:
    if spec is None or not _present(spec.raw):
        return None
    if spec.garbage:
        raise Malformed("not an integer")
    return spec.value


def oracle_object(
    data: Mapping[str, Any],
    *,
    fallback: Mapping[str, str | None],
    generation: Int | None,
    size: Int | None,
    fallback_generation: Int | None = None,
) -> Obj:
    """The object a finalize event describes (docs: numbers as numbers or strings; camelCase or
    snake_case; the CloudEvent source/subject or the notification attributes fill in bucket, name
    and generation)."""
    bucket = _text_field(data, "bucket") or fallback.get("bucket")
    name = _text_field(data, "name") or fallback.get("name")
    gen = _int_field(generation)
    either = bool(generation and generation.either) or bool(size and size.either)
    if gen is None and fallback_generation is not None:
        gen = _int_field(fallback_generation)
        either = either or fallback_generation.either
    if gen == 0:
        either = True  # a zero generation does not exist; refusing it is fine too
    sz = _int_field(size)
    ct = _text_field(data, "contentType") or _text_field(data, "content_type")
    _text_field(data, "md5Hash")
    _text_field(data, "crc32c")
    metadata = data.get("metadata", MISSING)
    if not _present(metadata) or metadata in ({}, [], 0, False):
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise Malformed("metadata is not an object")
    for value in metadata.values():
        if not isinstance(value, str):
            raise Malformed("a metadata value is not a string")
    if not bucket:
        raise Malformed("no bucket")
    if not name:
        raise Malformed("no name")
    if gen is None:
        raise Malformed("no generation")
    return Obj(bucket, name, gen, sz, ct, dict(metadata), either)


def _split_name(name: str) -> dict[str, str]:
    directory, _, base = name.rpartition("/")
    core = base.lstrip(".")
    lead = base[: len(base) - len(core)]
    if "." in core:
        stem_core, _, ext = core.rpartition(".")
        stem = lead + stem_core
    else:
        stem, ext = base, ""
    return {"dir": directory, "base": base, "stem": stem, "ext": ext}


def storage_launches(obj: Obj, when: dt.datetime) -> LaunchSet:
    """What the suite config launches for an object finalized at ``when`` (not too old)."""
    out: list[Launch] = []
    name = obj.name
    if obj.bucket == LANDING_BUCKET and name.startswith("incoming/") and name.endswith(".txt"):
        parts = _split_name(name)
        out.append(
            Launch.of(
                "ingest",
                {
                    "input": f"gs://{obj.bucket}/{name}",
                    "name": name,
                    "dir": parts["dir"],
                    "base": parts["base"],
                    "stem": parts["stem"],
                    "ext": parts["ext"],
                    "generation": str(obj.generation),
                    "owner": obj.metadata.get("owner", "nobody"),
                    "day": when.astimezone(dt.UTC).strftime("%Y-%m-%d"),
                },
            )
        )
    if obj.bucket == SIZED_BUCKET and name.startswith("in/") and name.endswith(".csv"):
        mime = (obj.content_type or "").split(";", 1)[0].strip().lower()
        if mime.startswith("text/") and obj.size is not None and 1 <= obj.size <= 1_000_000:
            out.append(
                Launch.of(
                    "sized",
                    {
                        "input": f"gs://{obj.bucket}/{name}",
                        "size": str(obj.size),
                        "type": obj.content_type or "",
                    },
                )
            )
    return tuple(out)


def _options(launches: LaunchSet, either: bool) -> tuple[LaunchSet, ...]:
    return ((), launches) if either and launches else (launches,)


# ---------------------------------------------------------------------------------------------
# Category: storage CloudEvents (Eventarc finalize)
# ---------------------------------------------------------------------------------------------
def _base_generation(number: int) -> int:
    return 1_700_000_000_000_000 + number * 10


@st.composite
def object_names(draw: Draw, number: int) -> str:
    """Object names: mostly under incoming/ and ending .txt (the landing glob), some not."""
    middle = draw(hostile_text)
    kind = draw(st.sampled_from(["match", "match", "match", "deep", "long", "glob", "near-miss", "other"]))
    if kind == "match":
        return f"incoming/{middle}-{number}.txt"
    if kind == "deep":
        return f"incoming/{middle}/{draw(hostile_text)}/{number}.txt"
    if kind == "glob":
        return draw(
            st.sampled_from(["incoming/**/*.txt", "incoming/*.txt", "incoming/?.txt", "incoming/[a-z].txt"])
        )
    if kind == "long":
        return long_name(draw(st.text(_chars, min_size=1, max_size=4)), number)
    if kind == "near-miss":
        return draw(
            st.sampled_from(
                [
                    f"incoming/{middle}-{number}.txt\n",
                    f"Incoming/{middle}-{number}.txt",
                    f"/incoming/{middle}-{number}.txt",
                    f"incoming/{middle}-{number}.TXT",
                    f"incoming/{middle}-{number}.txt ",
                    f"{middle}-{number}.txt",
                    f"incoming\\{middle}-{number}.txt",
                ]
            )
        )
    return f"{middle}-{number}"


def long_name(unit: str, number: int, total: int = 1024) -> str:
    """An ``incoming/...txt`` name of exactly ``total`` UTF-8 bytes built from ``unit`` repeated."""
    head, tail = "incoming/", f"-{number}.txt"
    budget = total - len(head.encode()) - len(tail.encode())
    body = ""
    while len((body + unit).encode()) <= budget:
        body += unit
    body += "x" * (budget - len(body.encode()))
    name = head + body + tail
    assert len(name.encode()) == total
    return name


@st.composite
def storage_cases(draw: Draw, number: int, now: dt.datetime, *, hostile_names: bool = False) -> Case:
    category = "object_name" if hostile_names else "storage_event"
    # Half the storage events are well-formed (hostile content only), so launches are checked too.
    broken = not hostile_names and draw(st.booleans())
    bucket = draw(st.sampled_from([LANDING_BUCKET, LANDING_BUCKET, SIZED_BUCKET, "bi-other"]))
    if bucket == SIZED_BUCKET:
        name = draw(
            st.sampled_from(
                [f"in/{number}.csv", f"in/{draw(hostile_text)}-{number}.csv", f"out/{number}.csv"]
            )
        )
    else:
        name = draw(object_names(number))
    if hostile_names and draw(st.integers(0, 15)) == 15:
        name = f"incoming/{draw(st.sampled_from(LONE_SURROGATES))}-{number}.txt"
    gen_value = _base_generation(number)
    generation = (
        draw(ints(gen_value, required=True, valid=not broken))
        if not hostile_names
        else Int(str(gen_value), gen_value)
    )
    size_value = draw(st.sampled_from([0, 12, 999_999, 1_000_000, 1_000_001, 5 * 2**40]))
    size = (
        draw(ints(size_value, required=False, valid=not broken))
        if not hostile_names
        else Int(str(size_value), size_value)
    )
    content_type = draw(
        st.sampled_from(
            ["text/plain", "text/csv; charset=utf-8", "TEXT/CSV", "application/json", "text/", ""]
        )
    )
    time = draw(times(now, valid=not broken))
    data: dict[str, Any] = {
        "kind": "storage#object",
        "bucket": bucket,
        "name": name,
        "metageneration": "1",
        "contentType": content_type,
        "timeCreated": _rfc3339(now, 0),
        "updated": _rfc3339(now, 0),
        "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==",
        "crc32c": "mnG7TA==",
        "storageClass": "STANDARD",
    }
    if generation.raw is not MISSING:
        data["generation"] = generation.raw
    if size.raw is not MISSING:
        data["size"] = size.raw
    metadata_kind = draw(
        st.sampled_from(
            ["none", "owner", "owner", "empty-owner", "wrong-owner", "not-object"]
            if broken
            else ["none", "owner", "owner", "empty-owner"]
        )
    )
    if metadata_kind == "owner":
        data["metadata"] = {"owner": draw(hostile_text), "batch": "7"}
    elif metadata_kind == "empty-owner":
        data["metadata"] = {"owner": ""}
    elif metadata_kind == "wrong-owner":
        data["metadata"] = {"owner": draw(not_a_string)}
    elif metadata_kind == "not-object":
        data["metadata"] = draw(
            st.one_of(
                st.lists(st.text(max_size=3), min_size=1, max_size=2),
                st.text(min_size=1, max_size=5),
                st.integers(1, 9),
            )
        )
    attrs: dict[str, Any] = {
        "type": STORAGE_FINALIZED,
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{name}",
        "id": f"bi-{number}",
        "time": time.text,
    }
    shape = [
        f"gen:{_int_kind(generation)}",
        f"size:{_int_kind(size)}",
        f"time:{_time_kind(time)}",
        f"meta:{metadata_kind}",
    ]
    envelope_data: Any = data
    data_bytes: bytes | None = None
    mutations = (
        draw(st.lists(st.sampled_from(STORAGE_MUTATIONS), min_size=1, max_size=3, unique=True))
        if broken
        else []
    )
    for mutation in mutations:
        shape.append(mutation)
        if mutation == "drop-bucket":
            data.pop("bucket", None)
        elif mutation == "drop-name":
            data.pop("name", None)
        elif mutation == "drop-name-and-subject":
            data.pop("name", None)
            attrs["subject"] = MISSING
        elif mutation == "drop-bucket-and-source":
            data.pop("bucket", None)
            attrs["source"] = "//storage.googleapis.com/projects/_"
        elif mutation == "empty-name":
            data["name"] = ""
        elif mutation == "wrong-type-name":
            data["name"] = draw(not_a_string)
        elif mutation == "wrong-type-bucket":
            data["bucket"] = draw(not_a_string)
        elif mutation == "wrong-type-content-type":
            data["contentType"] = draw(not_a_string)
        elif mutation == "wrong-type-md5":
            data["md5Hash"] = draw(not_a_string)
        elif mutation == "snake-case":
            data["content_type"] = data.pop("contentType")
        elif mutation == "garbage-time-created":
            data["timeCreated"] = draw(st.sampled_from(GARBAGE_TIMES))
        elif mutation == "subject-differs":
            attrs["subject"] = f"objects/elsewhere/{number}.txt"
        elif mutation == "wrong-event-type":
            attrs["type"] = draw(
                st.sampled_from(
                    [PUBSUB_PUBLISHED, STORAGE_FINALIZED.replace("finalized", "deleted"), "x", ""]
                )
            )
        elif mutation == "data-not-object":
            envelope_data = draw(
                st.one_of(st.lists(json_leaf, max_size=3), st.text(max_size=20), st.integers(), st.booleans())
            )
        elif mutation == "data-json-text":
            envelope_data = json.dumps(data)
        elif mutation == "data-binary":
            data_bytes = draw(st.sampled_from([json.dumps(data).encode(), b"\xff\xfe\x00garbage", b""]))
        elif mutation == "data-null":
            envelope_data = None
        elif mutation == "lone-surrogate-id":
            attrs["id"] = f"bi-{number}\ud800"
    delivery = event_delivery(
        "on_object_finalized", attrs, envelope_data, data_bytes=data_bytes, binary_mode=number % 2 == 1
    )
    redeliver = draw(st.integers(0, 9)) == 9
    case = Case(number, category, "+".join(shape), [delivery] * (2 if redeliver else 1))
    if redeliver:
        case.shape += "+redelivered"
    case.summary = f"name={short(data.get('name', MISSING) if isinstance(data, dict) else None)}"
    # ---- the oracle ----
    case.launches = _storage_oracle(attrs, envelope_data, data_bytes, data, generation, size, time, now)
    return case


STORAGE_MUTATIONS = (
    "drop-bucket",
    "drop-name",
    "drop-name-and-subject",
    "drop-bucket-and-source",
    "empty-name",
    "wrong-type-name",
    "wrong-type-bucket",
    "wrong-type-content-type",
    "wrong-type-md5",
    "snake-case",
    "garbage-time-created",
    "subject-differs",
    "wrong-event-type",
    "data-not-object",
    "data-json-text",
    "data-binary",
    "data-null",
    "lone-surrogate-id",
)


def _int_kind(spec: Int) -> str:
    if spec.raw is MISSING:
        return "missing"
    if spec.garbage:
        return "garbage"
    if spec.either:
        return "lenient"
    return type(spec.raw).__name__


def _time_kind(time: Time) -> str:
    if time.text is MISSING:
        return "missing"
    if time.garbage:
        return "garbage"
    if time.when is None:
        return "empty"
    return "ok"


def _storage_oracle(
    attrs: Mapping[str, Any],
    envelope_data: Any,
    data_bytes: bytes | None,
    data: dict[str, Any],
    generation: Int,
    size: Int,
    time: Time,
    now: dt.datetime,
) -> tuple[LaunchSet, ...]:
    if has_lone_surrogate(attrs) or has_lone_surrogate(envelope_data):
        return NONE
    if attrs.get("type") not in (MISSING, STORAGE_FINALIZED):
        return NONE
    if data_bytes is not None:
        try:
            parsed = json.loads(data_bytes or b"{}")
        except ValueError:
            return NONE
    elif envelope_data is None:
        parsed = {}
    elif isinstance(envelope_data, str):
        try:
            parsed = json.loads(envelope_data or "{}")
        except ValueError:
            return NONE
    else:
        parsed = envelope_data
    if not isinstance(parsed, Mapping):
        return NONE
    source = attrs.get("source", MISSING)
    subject = attrs.get("subject", MISSING)
    fallback: dict[str, str | None] = {}
    if isinstance(source, str) and "/buckets/" in source:
        fallback["bucket"] = source.rsplit("/buckets/", 1)[1]
    if isinstance(subject, str) and subject.startswith("objects/"):
        fallback["name"] = subject[len("objects/") :]
    # The oracle knows what generation and size mean because it generated them; a re-encoded copy
    # of the resource (JSON text, binary JSON) carries the same values.
    same = parsed == data
    gen_spec = generation if same and "generation" in parsed else None
    size_spec = size if same and "size" in parsed else None
    try:
        for key in ("timeCreated", "time_created"):
            value = parsed.get(key)
            if _present(value) and (not isinstance(value, str) or value in GARBAGE_TIMES):
                raise Malformed("timeCreated")
        obj = oracle_object(parsed, fallback=fallback, generation=gen_spec, size=size_spec)
    except Malformed:
        return NONE
    if time.garbage:
        return NONE
    when = time.when
    if when is None:
        # the SDK fills a missing CloudEvent time with "now"; an empty one falls back to updated
        when = now
    if too_old(when, now):
        return NONE
    return _options(storage_launches(obj, when), obj.either)


# ---------------------------------------------------------------------------------------------
# Pub/Sub messages (incl. storage notifications and completions): the shared message oracle
# ---------------------------------------------------------------------------------------------
@dataclass
class Message:
    """A generated Pub/Sub delivery, with what the oracle needs to know about it."""

    topic_source: Any  # the CloudEvent source
    message_id: Any
    payload: bytes  # what the data field encodes (when ``data_field`` is valid base64 of it)
    data_field: Any  # the message.data as sent (MISSING = absent)
    attributes: Any  # dict[str, Any] | other | MISSING
    publish_time: Time
    ce_time: Time
    body_extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"message": "not an object"}
    ordering_key: Any = MISSING

    def delivery(self, number: int) -> Delivery:
        message: dict[str, Any] = {}
        if self.data_field is not MISSING:
            message["data"] = self.data_field
        if self.attributes is not MISSING:
            message["attributes"] = self.attributes
        if self.message_id is not MISSING:
            message["messageId"] = self.message_id
            message["message_id"] = self.message_id
        if self.publish_time.text is not MISSING:
            message["publishTime"] = self.publish_time.text
        if self.ordering_key is not MISSING:
            message["orderingKey"] = self.ordering_key
        body: dict[str, Any] = {
            "message": message,
            "subscription": f"projects/{PROJECT}/subscriptions/bi-sub",
        }
        body.update(self.body_extra)
        attrs = {
            "type": PUBSUB_PUBLISHED,
            "source": self.topic_source,
            "id": self.message_id
            if isinstance(self.message_id, str) and self.message_id
            else f"bi-msg-{number}",
            "time": self.ce_time.text,
        }
        return event_delivery("on_message", attrs, body, binary_mode=number % 2 == 1)


def _pushed_message(
    topic: str, message_id: str, payload: bytes, attributes: Any, now: dt.datetime
) -> Message:
    """A message as a push delivers it: data base64 (absent when empty), publish time set, no CE time."""
    return Message(
        topic_source=topic_source(topic),
        message_id=message_id,
        payload=payload,
        data_field=base64.b64encode(payload).decode() if payload else MISSING,
        attributes=attributes,
        publish_time=Time(_rfc3339(now, 0), now),
        ce_time=Time(MISSING, None),
    )


def topic_source(topic: str) -> str:
    return f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{topic}"


def oracle_topic(source: Any) -> str:
    text = source if isinstance(source, str) else ""
    if "projects/" in text and "/topics/" in text:
        return text[text.index("projects/") + len("projects/") :].partition("/topics/")[2]
    return text.rsplit("/", 1)[-1]


def oracle_payload_json(payload: bytes) -> Any:
    """The payload as JSON (MISSING when empty, not JSON or not valid Unicode text)."""
    if not payload.strip():
        return MISSING
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return MISSING
    if has_lone_surrogate(value):
        return MISSING
    return value


def dotted(value: Any, path: str) -> Any:
    node = value
    for step in path.split("."):
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return MISSING
    return node


@dataclass(frozen=True)
class ParsedMessage:
    topic: str
    attributes: Mapping[str, str]
    payload: bytes
    when: dt.datetime  # the message's event time


def oracle_message(msg: Message, now: dt.datetime) -> ParsedMessage:
    """What ``on_message`` understands of a delivery, or Malformed."""
    if (
        has_lone_surrogate(msg.topic_source)
        or has_lone_surrogate(msg.message_id)
        or has_lone_surrogate(msg.attributes)
    ):
        raise Malformed("text is not valid Unicode")
    if has_lone_surrogate(msg.ordering_key) or has_lone_surrogate(msg.body_extra):
        raise Malformed("text is not valid Unicode")
    if "message" in msg.body_extra:
        raise Malformed("message is not an object")
    if not _present(msg.message_id) or msg.message_id in (0, False, [], {}):
        raise Malformed("no messageId")
    raw = msg.data_field
    if raw is MISSING or not raw:
        payload = b""
    elif not isinstance(raw, str):
        raise Malformed("data is not base64 text")
    else:
        try:
            payload = base64.b64decode(raw, validate=True)
        except ValueError as exc:
            raise Malformed("data is not base64") from exc
    attributes = msg.attributes
    if attributes is MISSING or not attributes:
        attributes = {}
    if not isinstance(attributes, Mapping):
        raise Malformed("attributes is not an object")
    if not all(isinstance(v, str) for v in attributes.values()):
        raise Malformed("an attribute value is not a string")
    if msg.publish_time.garbage or msg.ce_time.garbage:
        raise Malformed("bad time")
    when = msg.ce_time.when or msg.publish_time.when or now
    if msg.ce_time.text is MISSING:
        when = now  # the SDK fills a missing CloudEvent time with now
    return ParsedMessage(oracle_topic(msg.topic_source), dict(attributes), payload, when)


def message_launches(msg: ParsedMessage, now: dt.datetime) -> tuple[LaunchSet, ...]:
    """Routing of a plain (not notification, not completion) message through the suite config."""
    if too_old(msg.when, now):
        return NONE
    attrs = msg.attributes
    data = oracle_payload_json(msg.payload)
    if msg.topic == "orders":
        if attrs.get("kind") != "order":
            return NONE
        order_id = dotted(data, "order.id") if data is not MISSING else MISSING
        if order_id is MISSING or order_id is None or order_id == "":
            return NONE  # no match (missing) or no run identity (null / empty)
        note = dotted(data, "order.note")
        params = {
            "orderId": fmt(order_id) or "",
            "region": attrs.get("region", "none"),
            "note": "" if note is MISSING or note is None else (fmt(note) or ""),
        }
        launch = Launch.of("orders", params)
        # true/false cannot be unique per case: an earlier case may have claimed the same identity
        return ((), (launch,)) if isinstance(order_id, bool) else ((launch,),)
    if msg.topic == "events":
        first = dotted(data, "items.0") if data is not MISSING else MISSING
        try:
            text = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            return NONE  # {data} has no faithful text value: LAUNCH_FAILED
        if "key" not in attrs:
            return NONE  # a parameter has no value: LAUNCH_FAILED, recorded
        first_text = "none" if first is MISSING or first is None else (fmt(first) or "")
        return ((Launch.of("events", {"key": attrs["key"], "payload": text, "first": first_text}),),)
    if msg.topic == "reports" and "source" in attrs:
        day = msg.when.astimezone(dt.UTC).strftime("%Y-%m-%d")
        return ((Launch.of("report", {"Source": attrs["source"], "Day": day}),),)
    return NONE


def is_notification(attributes: Mapping[str, str]) -> bool:
    return all(attributes.get(a) for a in ("eventType", "bucketId", "objectId"))


def is_completion(msg: ParsedMessage) -> bool:
    if msg.attributes.get("event_type") in ("run.completed", "join.abandoned"):
        return True
    body = oracle_payload_json(msg.payload)
    return isinstance(body, Mapping) and body.get("type") in (RUN_COMPLETED, JOIN_ABANDONED)


# ---------------------------------------------------------------------------------------------
# Category: Pub/Sub messages
# ---------------------------------------------------------------------------------------------
@st.composite
def valid_attributes(draw: Draw, topic: str) -> dict[str, str]:
    """Attributes a trigger on ``topic`` routes on, with hostile values (and hostile extras)."""
    attrs = draw(st.dictionaries(hostile_text, hostile_text, max_size=2))
    attrs.pop("kind", None)
    if topic == "orders":
        attrs["kind"] = "order"
        if draw(st.booleans()):
            attrs["region"] = draw(st.one_of(hostile_text, st.just("")))
    elif topic == "events":
        attrs["key"] = draw(st.one_of(hostile_text, st.just("")))
    elif topic == "reports":
        attrs["source"] = draw(st.one_of(hostile_text, st.just("")))
    return attrs


@st.composite
def payloads(draw: Draw, number: int, valid_for: str | None = None) -> tuple[str, bytes]:
    if valid_for == "orders":
        kinds = ["order"] * 4 + ["surrogate", "oversized"]
    elif valid_for == "events":
        kinds = ["events"] * 3 + ["text", "binary", "empty", "big", "nested", "not-utf8-json"]
    elif valid_for is not None:
        kinds = ["json", "text", "binary", "empty"]
    else:
        kinds = [
            "order", "order", "order", "events", "events", "json", "text", "binary", "empty", "big",
            "oversized", "nested", "surrogate", "not-utf8-json",
        ]  # fmt: skip
    kind = draw(st.sampled_from(kinds))
    if kind == "order":
        order: dict[str, Any] = {}
        id_kind = draw(
            st.sampled_from(["text", "text", "number", "object", "null", "empty", "missing", "bool"])
        )
        if id_kind == "text":
            order["id"] = f"{draw(hostile_text)}-{number}"
        elif id_kind == "number":
            order["id"] = number * 1000 + draw(st.integers(0, 999))
        elif id_kind == "object":
            order["id"] = {"n": number, "x": draw(json_value)}
        elif id_kind == "null":
            order["id"] = None
        elif id_kind == "empty":
            order["id"] = ""
        elif id_kind == "bool":
            order["id"] = True if number % 2 else f"{number}"
        if draw(st.booleans()):
            order["note"] = draw(st.one_of(hostile_text, json_leaf))
        doc: Any = {"order": order, "extra": draw(json_value)}
        if draw(st.integers(0, 6)) == 6:
            doc = {"order": draw(st.one_of(st.lists(json_leaf, max_size=2), st.text(max_size=4), st.none()))}
        return f"order:{id_kind}", json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    if kind == "events":
        items = draw(
            st.one_of(
                st.lists(json_value, max_size=3),
                st.dictionaries(st.sampled_from(["0", "1"]), json_value, max_size=2),
                json_leaf,
            )
        )
        return "events", json.dumps({"items": items, "n": number}).encode()
    if kind == "json":
        return "json", json.dumps(draw(json_value)).encode()
    if kind == "text":
        return "text", draw(hostile_text).encode()
    if kind == "binary":
        return "binary", draw(st.binary(min_size=1, max_size=64)) + b"\xff"
    if kind == "empty":
        return "empty", draw(st.sampled_from([b"", b" ", b"\n\t "]))
    if kind == "big":
        size = draw(st.sampled_from([100_000, 400_000, 511 * 1024]))
        return "big", json.dumps({"items": [f"{number}"], "pad": "x" * size}).encode()
    if kind == "oversized":
        size = draw(st.sampled_from([512 * 1024 + 1, 600_000, 1_100_000]))
        return "oversized", json.dumps(
            {"order": {"id": f"big-{number}"}, "items": ["x"], "pad": "y" * size}
        ).encode()
    if kind == "nested":
        depth = draw(st.sampled_from([50, 2_000, 100_000]))
        return f"nested:{depth}", ("[" * depth + "]" * depth).encode()
    if kind == "surrogate":
        return "surrogate", b'{"order": {"id": "\\ud800-' + str(
            number
        ).encode() + b'"}, "items": ["\\udfff"]}'
    return "not-utf8-json", b'{"order": {"id": "caf\xe9-' + str(number).encode() + b'"}, "items": ["\xff"]}'


@st.composite
def attribute_maps(draw: Draw, number: int) -> Any:
    kind = draw(
        st.sampled_from(["good", "good", "good", "missing", "empty", "wrong-values", "not-object", "hostile"])
    )
    if kind == "missing":
        return MISSING
    if kind == "empty":
        return {}
    if kind == "not-object":
        return draw(
            st.one_of(
                st.lists(st.text(max_size=3), min_size=1, max_size=2),
                st.text(min_size=1, max_size=4),
                st.integers(1, 5),
            )
        )
    attrs: dict[str, Any] = {}
    if draw(st.booleans()):
        attrs["kind"] = draw(st.sampled_from(["order", "order", "Order", "order ", ""]))
    if draw(st.booleans()):
        attrs["region"] = draw(st.one_of(hostile_text, st.just("")))
    if draw(st.booleans()):
        attrs["key"] = draw(st.one_of(hostile_text, st.just("")))
    if draw(st.booleans()):
        attrs["source"] = draw(st.one_of(hostile_text, st.just("")))
    if kind == "hostile":
        attrs[draw(hostile_text)] = draw(hostile_text)
    if kind == "wrong-values":
        attrs[draw(st.sampled_from(["kind", "region", "key", "source"]))] = draw(
            not_a_string.filter(lambda v: not isinstance(v, str))
        )
    return attrs


@st.composite
def pubsub_cases(draw: Draw, number: int, now: dt.datetime) -> Case:
    # Half the messages are well-formed deliveries with hostile content, so launches are checked too.
    broken = draw(st.booleans())
    topic = draw(st.sampled_from(["orders", "orders", "events", "reports", "unrouted"]))
    source = topic_source(topic)
    source_kind = draw(st.sampled_from(["ok"] * 6 + ["short", "garbage", "nested", "empty-topic"]))
    if source_kind == "short":
        source = f"projects/{PROJECT}/topics/{topic}"
    elif source_kind == "garbage":
        source = draw(hostile_text)
    elif source_kind == "nested":
        source = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{topic}/extra"
    elif source_kind == "empty-topic":
        source = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/"
    payload_kind, payload = draw(payloads(number))
    data_kind = draw(
        st.sampled_from(["b64"] * 8 + ["missing", "bad-b64", "urlsafe", "wrong-type", "surrogate-attr"])
    )
    data_field: Any = base64.b64encode(payload).decode() if payload else MISSING
    if data_kind == "missing":
        data_field = MISSING
    elif data_kind == "bad-b64":
        data_field = draw(
            st.sampled_from(["%%%not-base64%%%", "YWJj\n", "YWJ", "\u00fc\u00fc==", "====", "Y W J j"])
        )
    elif data_kind == "urlsafe":
        data_field = base64.urlsafe_b64encode(payload + b"\xfb\xff").decode()
    elif data_kind == "wrong-type":
        data_field = draw(
            st.one_of(
                st.integers(1, 99),
                st.lists(st.integers(), min_size=1, max_size=2),
                st.dictionaries(st.just("a"), st.integers(), min_size=1),
            )
        )
    attributes = draw(attribute_maps(number))
    if data_kind == "surrogate-attr":
        attributes = {"kind": "order", "region": "eu\udc00"}
    message_id = draw(st.sampled_from(["ok"] * 8 + ["missing", "empty", "number", "list"]))
    mid: Any = {
        "ok": f"{number}{draw(st.integers(100, 999))}",
        "missing": MISSING,
        "empty": "",
        "number": number + 10**12,
        "list": [number],
    }[message_id]
    msg = Message(
        topic_source=source,
        message_id=mid,
        payload=payload,
        data_field=data_field,
        attributes=attributes,
        publish_time=draw(times(now)),
        ce_time=draw(times(now, allow_garbage=False)),
    )
    if draw(st.integers(0, 12)) == 12:
        msg.body_extra = {
            "message": draw(st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.none()))
        }
    if not broken:
        payload_kind, payload = draw(payloads(number, valid_for=topic))
        msg = Message(
            topic_source=topic_source(topic),
            message_id=f"{number}{draw(st.integers(100, 999))}",
            payload=payload,
            data_field=base64.b64encode(payload).decode() if payload else MISSING,
            attributes=draw(valid_attributes(topic)),
            publish_time=draw(times(now, valid=True)),
            ce_time=draw(times(now, allow_garbage=False, valid=True)),
        )
        source_kind, data_kind, message_id = "ok", "b64", "ok"
    shape = f"{topic}:{source_kind}+payload:{payload_kind}+data:{data_kind}+id:{message_id}+pt:{_time_kind(msg.publish_time)}"
    case = Case(number, "pubsub_message", shape, [msg.delivery(number)])
    if draw(st.integers(0, 9)) == 9:
        case.deliveries.append(case.deliveries[0])
        case.shape += "+redelivered"
    case.summary = f"attributes={short(attributes)} payload={short(payload[:60])}"
    try:
        parsed = oracle_message(msg, now)
    except Malformed:
        case.launches = NONE
        return case
    if is_notification(parsed.attributes) or is_completion(parsed):
        case.launches = NONE  # generated attributes never make one; guard anyway
        return case
    case.launches = message_launches(parsed, now)
    return case


# ---------------------------------------------------------------------------------------------
# Category: Cloud Storage notifications through Pub/Sub
# ---------------------------------------------------------------------------------------------
@st.composite
def notification_cases(draw: Draw, number: int, now: dt.datetime) -> Case:
    # Half are what fake-gcs-server and GCS send (hostile names only), so launches are checked too.
    malformed = draw(st.booleans())
    bucket = draw(st.sampled_from([LANDING_BUCKET, SIZED_BUCKET, "bi-other"]))
    name = draw(object_names(number)) if bucket != SIZED_BUCKET else f"in/{draw(hostile_text)}-{number}.csv"
    gen_value = _base_generation(number) + 1
    event_type = draw(
        st.sampled_from(
            ["OBJECT_FINALIZE"] * 5
            + ["OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE", "object_finalize", "BOGUS"]
            if malformed
            else ["OBJECT_FINALIZE"]
        )
    )
    event_time = draw(times(now, valid=not malformed))
    attributes: dict[str, Any] = {
        "eventType": event_type,
        "bucketId": bucket,
        "objectId": name,
        "payloadFormat": draw(st.sampled_from(["JSON_API_V1", "NONE"])),
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
    }
    gen_kind = draw(
        st.sampled_from(["ok", "ok", "ok", "missing", "garbage", "lenient"] if malformed else ["ok"])
    )
    attr_gen: Int | None = None
    if gen_kind == "ok":
        attr_gen = Int(str(gen_value), gen_value)
    elif gen_kind == "garbage":
        attr_gen = Int(draw(st.sampled_from(GARBAGE_INTS)), None, garbage=True)
    elif gen_kind == "lenient":
        attr_gen = Int(f" {gen_value} ", gen_value, either=True)
    if attr_gen is not None:
        attributes["objectGeneration"] = attr_gen.raw
    if event_time.text is not MISSING:
        attributes["eventTime"] = (
            event_time.text if isinstance(event_time.text, str) else json.dumps(event_time.text)
        )
    broken = draw(
        st.lists(
            st.sampled_from(
                [
                    "drop-bucketId",
                    "drop-objectId",
                    "empty-objectId",
                    "wrong-type-objectId",
                    "drop-eventType",
                    "surrogate-objectId",
                ]
            ),
            max_size=1,
        )
        if malformed
        else st.just([])
    )
    for b in broken:
        if b == "drop-bucketId":
            attributes.pop("bucketId")
        elif b == "drop-objectId":
            attributes.pop("objectId")
        elif b == "empty-objectId":
            attributes["objectId"] = ""
        elif b == "wrong-type-objectId":
            attributes["objectId"] = draw(not_a_string.filter(lambda v: not isinstance(v, str) and bool(v)))
        elif b == "drop-eventType":
            attributes.pop("eventType")
        elif b == "surrogate-objectId":
            attributes["objectId"] = f"incoming/\ud800{number}.txt"
    data_kind = draw(
        st.sampled_from(
            ["resource", "resource", "none", "lying", "not-json", "json-list"]
            if malformed
            else ["resource", "none"]
        )
    )
    resource: dict[str, Any] = {
        "bucket": bucket,
        "name": name,
        "generation": str(gen_value),
        "size": "12",
        "contentType": "text/csv",
    }
    if data_kind == "resource":
        payload = json.dumps(resource).encode()
    elif data_kind == "none":
        payload = b""
    elif data_kind == "lying":
        resource = {
            **resource,
            "name": f"incoming/lie-{number}.txt",
            "generation": draw(st.sampled_from([str(gen_value + 5), "soon", 7.5])),
        }
        payload = json.dumps(resource).encode()
    elif data_kind == "not-json":
        payload = b"\x00\x01 not json"
    else:
        payload = b"[1, 2]"
    msg = _pushed_message(
        "gcs-notifications", f"{number}{draw(st.integers(100, 999))}", payload, attributes, now
    )
    shape = f"{event_type}+gen:{gen_kind}+time:{_time_kind(event_time)}+data:{data_kind}" + "".join(
        f"+{b}" for b in broken
    )
    case = Case(number, "gcs_notification", shape, [msg.delivery(number)])
    case.summary = f"objectId={short(attributes.get('objectId', MISSING))}"
    case.launches = _notification_oracle(msg, resource, data_kind, attr_gen, gen_value, event_time, now)
    return case


def _notification_oracle(
    msg: Message,
    resource: Mapping[str, Any],
    data_kind: str,
    attr_gen: Int | None,
    gen_value: int,
    event_time: Time,
    now: dt.datetime,
) -> tuple[LaunchSet, ...]:
    try:
        parsed = oracle_message(msg, now)
    except Malformed:
        return NONE
    attrs = parsed.attributes
    if not is_notification(attrs):
        return NONE  # an ordinary message on an unrouted topic
    if attrs.get("eventType") != "OBJECT_FINALIZE":
        return NONE
    data = oracle_payload_json(parsed.payload)
    data = data if isinstance(data, Mapping) else {}
    gen_raw = data.get("generation", MISSING)
    if data_kind in ("resource",):
        gen_spec: Int | None = Int(gen_raw, gen_value)
    elif data_kind == "lying":
        gen_spec = (
            Int(gen_raw, int(gen_raw))
            if isinstance(gen_raw, str) and gen_raw.isdigit()
            else Int(gen_raw, None, garbage=True)
        )
    else:
        gen_spec = None
    fallback_gen = attr_gen if "objectGeneration" in attrs else None
    if data_kind == "none" and gen_spec is None and fallback_gen is None:
        return NONE
    try:
        obj = oracle_object(
            data,
            fallback={"bucket": attrs.get("bucketId"), "name": attrs.get("objectId")},
            generation=gen_spec,
            size=Int(data["size"], int(data["size"])) if "size" in data else None,
            fallback_generation=fallback_gen,
        )
    except Malformed:
        return NONE
    if event_time.garbage:
        return NONE
    when = event_time.when or parsed.when
    if too_old(when, now):
        return NONE
    return _options(storage_launches(obj, when), obj.either)


# ---------------------------------------------------------------------------------------------
# Category: completion-shaped messages (that may lie)
# ---------------------------------------------------------------------------------------------
def _ledger_time(now: dt.datetime, seconds: float) -> str:
    """A time as the ledger writes it (RFC 3339, UTC, milliseconds, ``Z``)."""
    return (now + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _completion_id(run_key: str, state: str) -> str:
    """The id a run's completion event carries (restated: sha256 of ``run_key\nstate``, 32 hex)."""
    return hashlib.sha256(f"{run_key}\n{state}".encode()).hexdigest()[:32]


@st.composite
def completion_cases(draw: Draw, number: int, now: dt.datetime, completion_topic: str) -> Case:
    # Half are well-formed completions of the awaited upstream. Chaining believes only the ledger:
    # most cases first write the upstream run's record (with hostile parameters) to the ledger, and
    # a completion launches only when it arrived on the completion topic and agrees with that record
    # (run, pipeline, state, id); the launch then carries the ledger's parameters, whatever the
    # message says.
    broken = draw(st.booleans())
    run_key = f"landing-{hashlib.sha256(str(number).encode()).hexdigest()[:20]}"
    seeded = draw(st.integers(0, 3)) > 0
    data: dict[str, Any] = {
        "schema_version": 1,
        "run_key": run_key,
        "pipeline": draw(st.sampled_from(["ingest", "ingest", "ingest", "sized", "nope", "INGEST"]))
        if broken
        else "ingest",
        "trigger": "landing",
        "backend": "dataflow",
        "state": draw(
            st.sampled_from(
                ["SUCCEEDED", "SUCCEEDED", "FAILED", "CANCELLED", "succeeded", "DONE"]
                if broken
                else ["SUCCEEDED", "FAILED"]
            )
        ),
        "parameters": {"name": draw(hostile_text)},
        "job": {"id": f"job-{number}", "url": "https://console.cloud.google.com/x"},
        "started_at": _rfc3339(now, 0),
        "ended_at": _rfc3339(now, 0),
        "reason": None,
    }
    ledger_state = draw(st.sampled_from(["SUCCEEDED", "FAILED"])) if broken else data["state"]
    ledger_name = draw(hostile_text)
    if not broken and draw(st.booleans()):
        data["parameters"] = {"name": ledger_name}  # the truth; otherwise a forged name
    body: dict[str, Any] = {
        "specversion": "1.0",
        "type": RUN_COMPLETED,
        "source": f"//eventpipelines/projects/{PROJECT}/pipelines/ingest",
        "subject": f"runs/{data['run_key']}",
        "id": draw(
            st.sampled_from(
                [_completion_id(run_key, data["state"])] * 3
                + [f"completion-{number}-{uuid.UUID(int=number).hex[:8]}"]
            )
        ),
        "time": _rfc3339(now, 0),
        "datacontenttype": "application/json",
        "data": data,
    }
    lies = draw(
        st.lists(
            st.sampled_from(COMPLETION_LIES if broken else ("no-id", "parameters-name-object")),
            max_size=2,
            unique=True,
        )
    )
    for lie in lies:
        if lie == "drop-run-key":
            data.pop("run_key")
        elif lie == "drop-pipeline":
            data.pop("pipeline")
        elif lie == "empty-state":
            data["state"] = ""
        elif lie == "wrong-type-pipeline":
            data["pipeline"] = draw(st.sampled_from([["ingest"], {"name": "ingest"}, 7]))
        elif lie == "wrong-type-run-key":
            data["run_key"] = draw(
                st.one_of(
                    st.integers(1, 10**6),
                    st.lists(st.text(max_size=3), min_size=1, max_size=2),
                    st.dictionaries(st.just("k"), st.text(max_size=3), min_size=1),
                )
            )
        elif lie == "parameters-not-object":
            data["parameters"] = draw(st.sampled_from([["ingest"], "name", 5]))
        elif lie == "parameters-missing-name":
            data["parameters"] = {"other": "x"}
        elif lie == "parameters-name-object":
            data["parameters"] = {"name": draw(json_value)}
        elif lie == "job-not-object":
            data["job"] = draw(st.sampled_from([["job"], "job-1", 5]))
        elif lie == "garbage-started-at":
            data["started_at"] = draw(st.sampled_from([*GARBAGE_TIMES, 17]))
        elif lie == "garbage-body-time":
            body["time"] = draw(st.sampled_from([*GARBAGE_TIMES, 5]))
        elif lie == "no-id":
            body.pop("id")
        elif lie == "type-abandoned":
            body["type"] = JOIN_ABANDONED
        elif lie == "type-other":
            body["type"] = draw(st.sampled_from(["io.eventpipelines.run.completed.v2", "", "x"]))
        elif lie == "data-not-object":
            body["data"] = draw(st.sampled_from([["x"], "data", 3, None]))
    attr_kind = draw(
        st.sampled_from(
            ["attributes", "attributes", "body-only", "attributes-only"]
            if broken
            else ["attributes", "body-only"]
        )
    )
    attributes: dict[str, Any] = {}
    if attr_kind != "body-only":
        attributes = {
            "event_type": "run.completed",
            "pipeline": "ingest",
            "state": "SUCCEEDED",
            "run_key": "x",
            "schema_version": "1",
        }
    payload_kind = draw(
        st.sampled_from(["cloudevent"] * 6 + ["not-json", "json-list", "empty"] if broken else ["cloudevent"])
    )
    if attr_kind == "attributes-only":
        payload_kind = "empty"
    payload = {
        "cloudevent": json.dumps(body, ensure_ascii=False).encode(),
        "not-json": b"run.completed, honest",
        "json-list": json.dumps([body]).encode(),
        "empty": b"",
    }[payload_kind]
    topic = draw(st.sampled_from([completion_topic, completion_topic, "orders", "unrouted"]))
    msg = _pushed_message(topic, f"{number}{draw(st.integers(100, 999))}", payload, attributes, now)
    shape = f"{attr_kind}+{payload_kind}+{data.get('pipeline')!s:.10}/{data.get('state')!s:.10}" + "".join(
        f"+{lie}" for lie in lies
    )
    case = Case(number, "completion_message", shape, [msg.delivery(number)])
    if draw(st.integers(0, 7)) == 7:
        case.deliveries.append(case.deliveries[0])
        case.shape += "+redelivered"
    case.summary = f"parameters={short(data.get('parameters'))}"
    if seeded:
        case.shape += "+in-ledger"
        case.ledger_runs.append(
            {
                "run_key": run_key,
                "trigger": "landing",
                "pipeline": "ingest",
                "backend": "dataflow",
                "state": ledger_state,
                "job_name": f"ingest-{run_key[-20:]}",
                "parameters": {"name": ledger_name},
                "job": {"backend": "dataflow", "id": f"job-{number}", "name": f"ingest-{run_key[-20:]}"},
                "created_at": _ledger_time(now, -120),
                "started_at": _ledger_time(now, -60),
                "ended_at": _ledger_time(now, -1),
                "completion": {"id": _completion_id(run_key, ledger_state), "published": True},
            }
        )
    parsed = oracle_message(msg, now)
    if not is_completion(parsed):
        case.launches = message_launches(parsed, now)
        return case
    doc = oracle_payload_json(parsed.payload)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("data"), Mapping):
        return case
    if doc.get("type") != RUN_COMPLETED:
        return case
    cdata = doc["data"]
    if not all(cdata.get(k) for k in ("run_key", "pipeline", "state")):
        return case
    if not all(isinstance(cdata[k], str) for k in ("run_key", "pipeline", "state")):
        return case  # malformed: acknowledged with a reason
    if body.get("time") is not None and (
        not isinstance(body.get("time"), str) or body.get("time") in GARBAGE_TIMES
    ):
        return case
    # nested blocks that are not objects make the whole completion malformed: acknowledged, logged
    if any(
        cdata.get(k) is not None and not isinstance(cdata[k], Mapping)
        for k in ("job", "parameters", "outputs", "event", "error")
    ):
        return case
    if cdata["pipeline"] == "ingest" and cdata["state"] not in ("SUCCEEDED", "FAILED"):
        return case  # no trigger waits for this state: acknowledged with a log line
    if cdata["pipeline"] != "ingest":
        return case
    # The trigger matches; its lookups read parameters, job and the times of the upstream run.
    started = cdata.get("started_at")
    if _present(started) and (not isinstance(started, str) or started in GARBAGE_TIMES):
        return case  # malformed: acknowledged with a reason, nothing launched
    # Only now does chaining read the ledger: a completion from another topic, of a run the ledger
    # does not hold, or disagreeing with its record is refused with a warning.
    if topic != completion_topic or not seeded:
        return case
    said_id = doc.get("id") or msg.message_id
    if (cdata["run_key"], cdata["pipeline"], cdata["state"], said_id) != (
        run_key,
        "ingest",
        ledger_state,
        _completion_id(run_key, ledger_state),
    ):
        return case
    case.launches = (
        (
            Launch.of(
                "chained",
                {"upstreamName": ledger_name, "upstreamRun": run_key, "upstreamState": ledger_state},
            ),
        ),
    )
    return case


COMPLETION_LIES = (
    "drop-run-key",
    "drop-pipeline",
    "empty-state",
    "wrong-type-pipeline",
    "wrong-type-run-key",
    "parameters-not-object",
    "parameters-missing-name",
    "parameters-name-object",
    "job-not-object",
    "garbage-started-at",
    "garbage-body-time",
    "no-id",
    "type-abandoned",
    "type-other",
    "data-not-object",
)


# ---------------------------------------------------------------------------------------------
# Category: Dataflow statusChanged events with broken payloads
# ---------------------------------------------------------------------------------------------
@st.composite
def job_status_cases(draw: Draw, number: int, now: dt.datetime) -> Case:
    kind = draw(
        st.sampled_from(
            [
                "no-payload",
                "payload-not-object",
                "no-labels",
                "labels-not-object",
                "foreign-labels",
                "forged-unknown-run",
                "hostile-labels",
                "long-hash",
                "wrong-type-labels",
                "data-not-object",
                "surrogate-labels",
            ]
        )
    )
    job: Any = {
        "id": f"2026-01-01_00_00_00-{number}",
        "name": f"ingest-{number}",
        "projectId": PROJECT,
        "location": REGION,
        "currentState": draw(
            st.sampled_from(
                ["JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_RUNNING", "JOB_STATE_BOGUS", ""]
            )
        ),
        "type": "JOB_TYPE_BATCH",
    }
    data: Any = {"payload": job}
    if kind == "no-payload":
        data = {"job": job}
    elif kind == "payload-not-object":
        data = {
            "payload": draw(
                st.one_of(st.text(max_size=8), st.lists(st.integers(), max_size=2), st.integers())
            )
        }
    elif kind == "data-not-object":
        data = draw(st.one_of(st.text(max_size=8), st.lists(st.integers(), max_size=2), st.none()))
    elif kind == "labels-not-object":
        job["labels"] = draw(
            st.one_of(
                st.lists(st.text(max_size=4), min_size=1, max_size=2),
                st.text(min_size=1, max_size=6),
                st.integers(1, 9),
            )
        )
    elif kind == "foreign-labels":
        job["labels"] = {"team": "data", "env": draw(hostile_text)}
    elif kind == "forged-unknown-run":
        job["labels"] = {
            "pipeline-trigger": "landing",
            "pipeline": "ingest",
            "run-key-hash": hashlib.sha256(f"forged{number}".encode()).hexdigest()[:20],
        }
    elif kind == "hostile-labels":
        job["labels"] = {"pipeline-trigger": draw(hostile_text), "run-key-hash": draw(hostile_text)}
    elif kind == "long-hash":
        job["labels"] = {
            "pipeline-trigger": "landing",
            "run-key-hash": "a" * draw(st.sampled_from([1100, 5000])),
        }
    elif kind == "wrong-type-labels":
        job["labels"] = {"pipeline-trigger": draw(not_a_string), "run-key-hash": draw(not_a_string)}
    elif kind == "surrogate-labels":
        job["labels"] = {"pipeline-trigger": "landing", "run-key-hash": "\ud800" * 20}
    attrs = {
        "type": STATUS_CHANGED,
        "source": f"//dataflow.googleapis.com/projects/{PROJECT}/locations/{REGION}",
        "subject": f"jobs/{job['id'] if isinstance(job, dict) else number}",
        "id": f"status-{number}",
        "time": _rfc3339(now, 0),
    }
    case = Case(
        number,
        "job_status",
        kind,
        [event_delivery("on_job_status", attrs, data, binary_mode=number % 2 == 1)],
    )
    case.summary = f"data={short(data)}"
    return case


# ---------------------------------------------------------------------------------------------
# Category: REST requests to the api function
# ---------------------------------------------------------------------------------------------
INJECTIONS = (
    "' OR '1'='1",
    "<img src=x onerror=alert(1)>",
    "{{7*7}}",
    "${jndi:ldap://127.0.0.1/a}",
    "../../",
    "\x00",
    "%0d%0a",
    "; rm -rf /",
    "\u202e",
)


def _framework_404(path: str) -> bool:
    """Paths functions-framework's own route refuses (HTML 404) before the function runs: its
    ``/<path:path>`` rule matches no newline and no leading double slash."""
    return "\n" in path or path.startswith("//")


def _body_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def rest_cases(draw: Draw, number: int) -> Case:
    kind = draw(
        st.sampled_from(
            ["start"] * 6
            + [
                "start-twice",
                "start-conflict",
                "start-then-get",
                "start-then-cancel",
                "raw-body",
                "nan-body",
                "nested",
                "huge",
                "surrogate",
                "method",
                "path",
                "get-unknown-run",
            ]
        )
    )
    key = f"key-{number}-{draw(st.sampled_from(['a', 'é', 'Z', '*', ' ', '%', '#', '{}']))}"
    key_kind = draw(st.sampled_from(["ok"] * 6 + ["missing", "empty", "max", "too-long", "injection"]))
    headers: dict[str, str] = {
        "Content-Type": draw(
            st.sampled_from(
                ["application/json"] * 4
                + [
                    "text/plain",
                    "application/xml",
                    "multipart/form-data; boundary=x",
                    "application/json; charset=latin-1",
                    "",
                ]
            )
        )
    }
    if key_kind == "ok":
        headers["Idempotency-Key"] = key
    elif key_kind == "empty":
        headers["Idempotency-Key"] = ""
    elif key_kind == "max":
        headers["Idempotency-Key"] = (key + "k" * MAX_KEY_LENGTH)[:MAX_KEY_LENGTH]
    elif key_kind == "too-long":
        headers["Idempotency-Key"] = key + "k" * draw(st.sampled_from([MAX_KEY_LENGTH, 5000]))
    elif key_kind == "injection":
        headers["Idempotency-Key"] = f"{number}" + draw(
            st.sampled_from([i for i in INJECTIONS if "\x00" not in i and "\u202e" not in i])
        )
    key_ok = key_kind in ("ok", "max", "injection")
    content_json = headers["Content-Type"].startswith("application/json")
    case = Case(number, "rest", kind)

    def status_set(*codes: int) -> frozenset[int]:
        allowed = set(codes)
        if not content_json:
            allowed.add(415)  # refusing a non-JSON content type is fine too
        return frozenset(allowed)

    if kind in ("method", "path", "get-unknown-run"):
        if kind == "method":
            unknown_run = f"/runs/api-{'0' * 20}"
            path = draw(st.sampled_from(["/runs", "/pipelines", unknown_run, f"{unknown_run}:cancel"]))
            method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"]))
            allowed, answer = {
                "/runs": ("POST", {400, 415}),  # an empty body
                "/pipelines": ("GET", {200}),
                unknown_run: ("GET", {404}),
            }.get(path, ("POST", {404}))
            statuses = frozenset(answer if method == allowed else {405})
            read_only = method == "GET" and 200 in statuses
            if method == "HEAD":
                statuses = frozenset({405, 200})  # HEAD answers carry no body
        elif kind == "get-unknown-run":
            path = draw(
                st.sampled_from(
                    [f"/runs/api-{'f' * 20}", f"/runs/manual-{'1' * 20}", f"/runs/api-{'0' * 20}:cancel"]
                )
            )
            method = "POST" if path.endswith(":cancel") else "GET"
            statuses, read_only = frozenset({404}), False
        else:
            raw = draw(
                st.one_of(
                    st.sampled_from(
                        [
                            "/",
                            "/run",
                            "/runs/",
                            "/runs//",
                            "/pipelines/",
                            "/runs/UPPER-00000000000000000000",
                            "/runs/api-0000",
                            "/runs/../pipelines",
                            "/%2e%2e/runs",
                            "/runs/api-00000000000000000000:cancel:cancel",
                            "/runs/api-00000000000000000000/extra",
                            "/pipelines?x=1",
                        ]
                    ),
                    hostile_text.map(lambda t: "/" + t),
                )
            )
            path = quote(raw, safe="/:?=&%")
            method = draw(st.sampled_from(["GET", "POST"]))
            normalized = raw.split("?", 1)[0].rstrip("/") or "/"
            if normalized == "/pipelines":
                statuses, read_only = frozenset({200} if method == "GET" else {405}), method == "GET"
            elif normalized == "/runs":
                statuses, read_only = frozenset({405} if method == "GET" else {400, 415}), False
            else:
                statuses, read_only = frozenset({404, 405}), False
            if ".." in raw or "%2e" in raw:
                statuses = statuses | {200, 400, 404, 405, 415}  # if the client resolved the dot segments
        case.shape = f"{kind}:{method}"
        decoded = unquote(path.split("?", 1)[0])
        case.deliveries = [
            Delivery(
                "api",
                b"",
                headers,
                method=method,
                path=path,
                statuses=statuses | ({404} if _framework_404(decoded) else set()),
                read_only=read_only,
                framework_404=_framework_404(decoded),
            )
        ]
        case.summary = f"{method} {short(path)}"
        return case

    pipeline = draw(st.sampled_from(["manual"] * 6 + ["ingest", "nope", "", "report"]))
    params_kind = draw(
        st.sampled_from(
            ["good"] * 5 + ["bad-day", "missing-day", "unknown", "nested", "null", "not-object", "numbers"]
        )
    )
    params: Any
    day = draw(st.sampled_from(["2026-11-01", "2026-02-29", "0000-00-00"]))
    if params_kind == "good":
        params = {"day": day}
        if draw(st.booleans()):
            params["table"] = draw(hostile_text)
        if draw(st.booleans()):
            params["note"] = draw(
                st.one_of(
                    hostile_text,
                    st.integers(),
                    st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False),
                )
            )
    elif params_kind == "bad-day":
        params = {
            "day": draw(
                st.sampled_from(
                    [
                        "yesterday",
                        "2026-11-01\n",
                        " 2026-11-01",
                        "2026-11-1",
                        "\uff12\uff10\uff12\uff16-11-01",
                        "2026-11-01' OR 1=1",
                    ]
                )
            )
        }
    elif params_kind == "missing-day":
        params = {"table": "x"}
    elif params_kind == "unknown":
        params = {"day": day, draw(hostile_text): "x"}
    elif params_kind == "nested":
        params = {
            "day": day,
            "note": draw(
                st.one_of(
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.just("a"), st.integers(), max_size=1),
                    st.none(),
                )
            ),
        }
    elif params_kind == "null":
        params = None
    elif params_kind == "not-object":
        params = draw(st.sampled_from([["day"], "day=2026-11-01", 7]))
    else:
        params = {"day": 20261101}
    body: Any = (
        {"pipeline": pipeline, "parameters": params} if params_kind != "null" else {"pipeline": pipeline}
    )
    body_kind = draw(st.sampled_from(["ok"] * 8 + ["unknown-field", "pipeline-wrong-type", "not-object"]))
    if body_kind == "unknown-field":
        body[draw(st.sampled_from(["extra", "Pipeline", "__proto__", "parameters "]))] = draw(json_leaf)
    elif body_kind == "pipeline-wrong-type":
        body["pipeline"] = draw(not_a_string.filter(lambda v: not isinstance(v, str)))
    elif body_kind == "not-object":
        body = draw(st.one_of(st.lists(json_leaf, max_size=3), json_leaf))
    raw_body = _body_bytes(body)
    problems: set[int] = set()
    if kind == "raw-body":
        raw_body = draw(
            st.sampled_from(
                [
                    b"{nope",
                    b"",
                    b"\xff\xfe{}",
                    b"null",
                    b"[]",
                    b'"pipeline"',
                    b"{'pipeline': 'manual'}",
                    b"\x00",
                ]
            )
        )
        problems.add(400)
    elif kind == "nan-body":
        raw_body = draw(
            st.sampled_from(
                [
                    b'{"pipeline": "manual", "parameters": {"day": NaN}}',
                    b'{"pipeline": "manual", "parameters": {"note": Infinity, "day": "2026-11-01"}}',
                    b'{"pipeline": "manual", "parameters": {"note": -Infinity, "day": "2026-11-01"}}',
                ]
            )
        )
        problems.add(400)
    elif kind == "nested":
        depth = draw(st.sampled_from([100, 5_000, 30_000]))
        raw_body = (
            b'{"pipeline": "manual", "parameters": {"day": "2026-11-01", "note": '
            + b"[" * depth
            + b"]" * depth
            + b"}}"
        )
        problems.add(400)
    elif kind == "huge":
        raw_body = json.dumps(
            {
                "pipeline": "manual",
                "parameters": {
                    "day": "2026-11-01",
                    "note": "n" * draw(st.sampled_from([MAX_BODY_BYTES, 10 * MAX_BODY_BYTES])),
                },
            }
        ).encode()
        problems.add(413)
    elif kind == "surrogate":
        raw_body = (
            b'{"pipeline": "manual", "parameters": {"day": "2026-11-01", "note": "\\ud800-'
            + str(number).encode()
            + b'"}}'
        )
        problems.add(400)
    if len(raw_body) > MAX_BODY_BYTES:
        problems = {413}
    launch: Launch | None = None
    if not problems:
        if not isinstance(body, dict):
            problems.add(400)
        else:
            if set(body) - {"pipeline", "parameters"}:
                problems.add(400)
            if not isinstance(body.get("pipeline"), str) or not body.get("pipeline"):
                problems.add(400)
            elif body["pipeline"] not in ("manual", "ingest", "report"):
                problems.add(404)
            elif body["pipeline"] != "manual":
                problems.add(409)  # takes its parameters from events
            if "parameters" in body and not isinstance(body["parameters"], dict):
                problems.add(400)
            if not key_ok:
                problems.add(400)
            if isinstance(body.get("parameters", {}), dict) and body.get("pipeline") == "manual":
                given = body.get("parameters", {})
                values: dict[str, str] = {}
                for name, value in given.items():
                    if (
                        name not in ("day", "table", "note")
                        or value is None
                        or isinstance(value, dict | list)
                    ):
                        problems.add(400)
                    else:
                        values[name] = fmt(value) or ""
                if "day" not in values or not MANUAL_DAY.fullmatch(values["day"]):
                    problems.add(400)
                if not problems:
                    launch = Launch.of(
                        "manual",
                        {
                            "day": values["day"],
                            "table": values.get("table", "sales"),
                            "note": values.get("note", ""),
                        },
                    )
    first = Delivery("api", raw_body, headers, path="/runs", statuses=status_set(*(problems or {202})))
    case.deliveries = [first]
    case.shape = f"{kind}+key:{key_kind}+params:{params_kind}+body:{body_kind}+ct:{'json' if content_json else 'other'}"
    case.summary = f"body={short(raw_body[:100])}"
    if launch is not None and content_json:
        case.launches = ((launch,),)
    elif launch is not None:
        case.launches = ((), (launch,))  # 415 or launched
    if launch is None:
        return case
    if kind == "start-twice":
        case.deliveries.append(Delivery("api", raw_body, headers, path="/runs", statuses=status_set(202)))
    elif kind == "start-conflict":
        other = dict(body)
        other["parameters"] = {**body["parameters"], "table": f"other-{number}"}
        if other["parameters"] != body["parameters"]:
            case.deliveries.append(
                Delivery("api", _body_bytes(other), headers, path="/runs", statuses=status_set(409))
            )
    elif kind == "start-then-get" and content_json:
        case.deliveries.append(
            Delivery("api", b"", {}, method="GET", follow="", statuses=frozenset({200}), read_only=True)
        )
    elif kind == "start-then-cancel" and content_json:
        case.deliveries.append(
            Delivery("api", b"", {}, method="POST", follow=":cancel", statuses=frozenset({202}))
        )
    return case


# ---------------------------------------------------------------------------------------------
# Category: config documents through the validator
# ---------------------------------------------------------------------------------------------
def suite_config_for_mutation() -> dict[str, Any]:
    """A valid config exercising every trigger kind, a fan-in and inputs (mutated below)."""
    doc = config_doc("bi-config-ledger", "bi-config-completions")
    doc["pipelines"]["audit"] = {
        "backend": "dataflow",
        "template": f"{TEMPLATE_BUCKET}/audit",
        "parameters": {"day": "{event_time:%Y-%m-%d}"},
    }
    doc["pipelines"]["joined"] = {
        "backend": "dataflow",
        "template": f"{TEMPLATE_BUCKET}/joined",
        "parameters": {"day": "{join_key}", "name": "{upstreams.ingest.parameters.name}"},
    }
    doc["triggers"]["audit-landing"] = {
        "storage": {"bucket": "bi-audit", "regex": "^audit/.*\\.json$"},
        "pipeline": "audit",
    }
    doc["triggers"]["join-both"] = {
        "completion": {"upstream": ["ingest", "audit"], "join_key": "{upstream.parameters.day}"},
        "pipeline": "joined",
    }
    return doc


@dataclass(frozen=True)
class Mutation:
    name: str
    target: str  # mutations on the same target are not combined
    apply: Callable[[dict[str, Any], Draw], str | None]  # changes the doc, returns the marker
    # (None: the change is legal or debatable; the validator may accept it, and an accepted config
    # must then route events without failing)


def _mutations() -> list[Mutation]:
    out: list[Mutation] = []

    def add(name: str, target: str, fn: Callable[[dict[str, Any], Draw], str | None]) -> None:
        out.append(Mutation(name, target, fn))

    def drop_ledger_bucket(doc: dict[str, Any], draw: Draw) -> str:
        del doc["settings"]["ledger"]["bucket"]
        return "settings.ledger.bucket"

    def ledger_bucket_type(doc: dict[str, Any], draw: Draw) -> str:
        doc["settings"]["ledger"]["bucket"] = draw(st.sampled_from([["a"], {"b": 1}]))
        return "settings.ledger.bucket"

    def empty_region(doc: dict[str, Any], draw: Draw) -> str:
        doc["settings"]["region"] = draw(st.sampled_from(["", None]))
        return "settings.region"

    def bad_age(doc: dict[str, Any], draw: Draw) -> str:
        doc["settings"]["max_event_age"] = draw(
            st.sampled_from(["ten minutes", -5, 0, float("nan"), True, [1], "5 parsecs"])
        )
        return "settings.max_event_age"

    def bad_lease(doc: dict[str, Any], draw: Draw) -> str:
        doc["settings"]["ledger"]["lease"] = draw(st.sampled_from(["forever", "-1m", float("nan")]))
        return "settings.ledger.lease"

    def unknown_setting(doc: dict[str, Any], draw: Draw) -> str:
        doc["settings"]["max_event_aeg"] = "1h"
        return "unknown field 'max_event_aeg'"

    def bad_backend(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["sized"]["backend"] = draw(st.sampled_from(["spark", "", None, ["dataflow"]]))
        return "pipeline 'sized'.backend"

    def unknown_pipeline_field(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["events"]["paramters"] = {}
        return "unknown field 'paramters'"

    def bad_placeholder(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["orders"]["parameters"]["orderId"] = draw(
            st.sampled_from(["{nope}", "{bucket}", "{data.}", "{upstream.state}"])
        )
        return "pipeline 'orders'.parameters.orderId"

    def bad_syntax(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["audit"]["parameters"]["day"] = draw(
            st.sampled_from(["{", "}", "{event_time!r}", "{}", "{name:%Y}", "{event_time:%Y"])
        )
        return "pipeline 'audit'.parameters.day"

    def param_type(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["chained"]["parameters"]["upstreamRun"] = draw(
            st.sampled_from([["a"], {"a": 1}, None, True])
        )
        return "pipeline 'chained'.parameters.upstreamRun"

    def bad_mode(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["joined"]["mode"] = draw(st.sampled_from(["sometimes", 1, ["batch"]]))
        return "pipeline 'joined'.mode"

    def bad_timeout(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["manual"]["timeout"] = draw(st.sampled_from(["forever", "-2h", 0, float("nan")]))
        return "pipeline 'manual'.timeout"

    def bad_labels(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["ingest"]["labels"] = {"Bad Key": "v"}
        return "pipeline 'ingest'.labels.Bad Key"

    def bad_pattern(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["manual"]["inputs"]["day"]["pattern"] = draw(st.sampled_from(["(", "[z-a]", "*"]))
        return "pipeline 'manual'.inputs.day.pattern"

    def dangling_pipeline(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["events"]["pipeline"] = "missing-pipe"
        return "trigger 'events'.pipeline"

    def two_kinds(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["reports"]["storage"] = {"bucket": "x"}
        return "trigger 'reports'"

    def no_bucket(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["sized"]["storage"].pop("bucket")
        return "trigger 'sized'.storage.bucket"

    def bad_regex(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["audit-landing"]["storage"]["regex"] = draw(
            st.sampled_from(["(", "[z-a]", "*x", "(?P<a>"])
        )
        return "trigger 'audit-landing'.storage.regex"

    def bad_glob(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["landing"]["storage"]["glob"] = draw(
            st.sampled_from(["incoming/[z-a].txt", "[9-0]*", ["*.txt"], {"a": 1}])
        )
        return "trigger 'landing'.storage.glob"

    def bad_size(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["sized"]["storage"]["min_size"] = draw(st.sampled_from([-1, "big", 1.5, True]))
        return "trigger 'sized'.storage.min_size"

    def min_over_max(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["sized"]["storage"]["min_size"] = 2_000_000
        return "trigger 'sized'.storage"

    def prefix_type(doc: dict[str, Any], draw: Draw) -> str:
        key = draw(st.sampled_from(["prefix", "suffix"]))
        doc["triggers"]["sized"]["storage"][key] = draw(st.sampled_from([["in/"], {"a": 1}]))
        return f"trigger 'sized'.storage.{key}"

    def prefix_scalar(doc: dict[str, Any], draw: Draw) -> str | None:
        key = draw(st.sampled_from(["prefix", "suffix"]))
        doc["triggers"]["sized"]["storage"][key] = draw(st.sampled_from([5, 2026, True, 1.5]))
        return None

    def content_type_type(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["sized"]["storage"]["content_type"] = draw(
            st.sampled_from([5, {"text/*": 1}, [["text/*"]]])
        )
        return "trigger 'sized'.storage.content_type"

    def no_topic(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["events"]["pubsub"].pop("topic")
        return "trigger 'events'.pubsub.topic"

    def bad_dedupe(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["orders"]["pubsub"]["dedupe_by"] = draw(
            st.sampled_from(["order.id", "data.", 5, "messageId"])
        )
        return "trigger 'orders'.pubsub.dedupe_by"

    def bad_condition_regex(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["orders"]["pubsub"]["attributes"]["kind"] = {"regex": "("}
        return "trigger 'orders'.pubsub.attributes.kind.regex"

    def condition_type(doc: dict[str, Any], draw: Draw) -> str:
        op = draw(st.sampled_from(["prefix", "suffix", "equals"]))
        doc["triggers"]["reports"]["pubsub"]["attributes"]["source"] = {
            op: draw(st.sampled_from([["a"], {"a": 1}]))
        }
        return f"trigger 'reports'.pubsub.attributes.source.{op}"

    def condition_scalar(doc: dict[str, Any], draw: Draw) -> str | None:
        op = draw(st.sampled_from(["prefix", "suffix", "regex"]))
        doc["triggers"]["reports"]["pubsub"]["attributes"]["source"] = {
            op: draw(st.sampled_from([5, 2026, False]))
        }
        return None

    def condition_in(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["orders"]["pubsub"]["data"]["order.id"] = {"in": "x"}
        return "trigger 'orders'.pubsub.data.order.id.in"

    def condition_unknown(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["orders"]["pubsub"]["data"]["order.id"] = {"equal": "x"}
        return "unknown field 'equal'"

    def bad_upstream(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["after-ingest"]["completion"]["upstream"] = "nope"
        return "trigger 'after-ingest'.completion.upstream"

    def bad_states(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["after-ingest"]["completion"]["states"] = draw(
            st.sampled_from([["DONE"], ["succeeded"], "SUCCEEDED!"])
        )
        return "trigger 'after-ingest'.completion.states"

    def fan_in_without_key(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["join-both"]["completion"].pop("join_key")
        return "trigger 'join-both'.completion.join_key"

    def loop(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["back-edge"] = {"completion": {"upstream": "chained"}, "pipeline": "ingest"}
        return "completion triggers form a loop"

    def reserved(doc: dict[str, Any], draw: Draw) -> str:
        doc["triggers"]["api"] = {"pubsub": {"topic": "x"}, "pipeline": "events"}
        return "trigger 'api'"

    def top_level(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipeline"] = {}
        return "unknown field 'pipeline'"

    def bad_name(doc: dict[str, Any], draw: Draw) -> str:
        name = draw(st.sampled_from(["Bad Name", "9lives", "x" * 70, "-dash", "naïve", "newline\n"]))
        doc["pipelines"][name] = {
            "backend": "dataflow",
            "template": f"{TEMPLATE_BUCKET}/x",
            "inputs": {"a": {}},
            "parameters": {"a": "{input.a}"},
        }
        return f"pipeline '{name}'"

    def no_template(doc: dict[str, Any], draw: Draw) -> str:
        doc["pipelines"]["events"]["template"] = draw(st.sampled_from(["", "s3://x", None, 5]))
        return "pipeline 'events': template"

    for fn, target in (
        (drop_ledger_bucket, "settings.ledger"),
        (ledger_bucket_type, "settings.ledger"),
        (empty_region, "settings.region"),
        (bad_age, "settings.max_event_age"),
        (bad_lease, "settings.ledger"),
        (unknown_setting, "settings.unknown"),
        (bad_backend, "pipeline.sized"),
        (unknown_pipeline_field, "pipeline.events"),
        (bad_placeholder, "pipeline.orders"),
        (bad_syntax, "pipeline.audit"),
        (param_type, "pipeline.chained"),
        (bad_mode, "pipeline.joined"),
        (bad_timeout, "pipeline.manual"),
        (bad_labels, "pipeline.ingest"),
        (bad_pattern, "pipeline.manual"),
        (dangling_pipeline, "trigger.events"),
        (two_kinds, "trigger.reports"),
        (no_bucket, "trigger.sized"),
        (bad_regex, "trigger.audit-landing"),
        (bad_glob, "trigger.landing"),
        (bad_size, "trigger.sized"),
        (min_over_max, "trigger.sized"),
        (prefix_type, "trigger.sized"),
        (prefix_scalar, "trigger.sized"),
        (condition_scalar, "trigger.reports"),
        (content_type_type, "trigger.sized"),
        (no_topic, "trigger.events"),
        (bad_dedupe, "trigger.orders"),
        (bad_condition_regex, "trigger.orders"),
        (condition_type, "trigger.reports"),
        (condition_in, "trigger.orders"),
        (condition_unknown, "trigger.orders"),
        (bad_upstream, "trigger.after-ingest"),
        (bad_states, "trigger.after-ingest"),
        (fan_in_without_key, "trigger.join-both"),
        (loop, "trigger.after-ingest"),  # the loop runs through after-ingest: not with bad_upstream
        (reserved, "triggers.api"),
        (top_level, "top"),
        (bad_name, "pipeline.new"),
        (no_template, "pipeline.events"),
    ):
        add(fn.__name__, target, fn)
    return out


MUTATIONS = _mutations()
_yaml_key = st.one_of(st.text(_chars, max_size=10), st.integers(-3, 3), st.booleans(), st.none())
yaml_value = st.recursive(
    st.one_of(json_leaf, st.floats(), st.dates(), st.binary(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_yaml_key, children, max_size=4)
    ),
    max_leaves=16,
)
FIELD_NAMES = (
    "backend",
    "template",
    "parameters",
    "outputs",
    "inputs",
    "mode",
    "timeout",
    "labels",
    "storage",
    "pubsub",
    "completion",
    "pipeline",
    "bucket",
    "glob",
    "regex",
    "prefix",
    "suffix",
    "topic",
    "attributes",
    "data",
    "dedupe_by",
    "upstream",
    "states",
    "join_key",
    "ledger",
    "project",
    "region",
)
RAW_YAML = (
    "",
    "---\n...\n",
    "[",
    "{a: b",
    "!!python/object/apply:os.system ['id']",
    "settings: !!binary aGk=",
    "a: &x [1, 2]\nb: *x\nc: *y\n",
    "lol: &a [x, x, x, x, x, x, x, x, x]\nlol2: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nlol3: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\npipelines: *c\n",
    # A "billion laughs" alias bomb: 9 levels of 9 aliases, 387 million nodes once expanded
    "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10)).join(
        ["l0: &l0 [x]\n", "pipelines: *l9\n"]
    ),
    "? [1, 2]\n: x\n",
    "settings:\n  max_event_age: 12:30\n",
    "\t- tab",
    "pipelines:\n  x:\n    backend: dataflow\n    backend: fabric\n",
    "%YAML 9.9\n---\na: 1\n",
    "\x00\x01",
    "\ufeffsettings: {}",
)


@st.composite
def config_cases(draw: Draw, number: int) -> Case:
    kind = draw(st.sampled_from(["near-valid"] * 5 + ["random-value", "schema-shaped", "raw-text", "deep"]))
    case = Case(number, "config", kind)
    if kind == "near-valid":
        doc = suite_config_for_mutation()
        chosen: list[Mutation] = []
        for mutation in draw(
            st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3, unique_by=lambda m: m.name)
        ):
            if all(m.target != mutation.target for m in chosen):
                chosen.append(mutation)
        markers = tuple(marker for m in chosen if (marker := m.apply(doc, draw)) is not None)
        case.shape = "near-valid:" + "+".join(m.name for m in chosen)
        case.config_text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        case.config_markers = markers
        case.config_valid = False if markers else None
        case.summary = f"markers={list(markers)}"
        return case
    if kind == "random-value":
        case.config_text = yaml.safe_dump(draw(yaml_value), allow_unicode=draw(st.booleans()))
    elif kind == "schema-shaped":
        leaf = st.one_of(
            yaml_value,
            hostile_text,
            st.sampled_from(["dataflow", "fabric", "{name}", "{", "gs://x/y", "1h", "[a-", "**/*"]),
        )
        section = st.dictionaries(
            st.one_of(hostile_text, st.sampled_from(["a", "ingest", "api"])),
            st.dictionaries(
                st.sampled_from(FIELD_NAMES),
                st.one_of(
                    leaf, st.dictionaries(st.sampled_from((*FIELD_NAMES, "x.y", "kind")), leaf, max_size=3)
                ),
                max_size=5,
            ),
            max_size=3,
        )
        doc = {
            "settings": draw(
                st.one_of(
                    st.just({"project": "p", "region": "r", "ledger": {"bucket": "b"}}),
                    st.dictionaries(
                        st.sampled_from((*FIELD_NAMES, "max_event_age", "completion_topic")), leaf, max_size=4
                    ),
                )
            ),
            "pipelines": draw(section),
            "triggers": draw(section),
        }
        case.config_text = yaml.safe_dump(doc, allow_unicode=True)
    elif kind == "raw-text":
        case.config_text = draw(st.one_of(st.sampled_from(RAW_YAML), st.text(max_size=60)))
    else:
        depth = draw(st.sampled_from([200, 5_000, 50_000]))
        case.config_text = draw(
            st.sampled_from(
                [
                    "[" * depth + "]" * depth,
                    "a:\n" + "".join("  " * i + "b:\n" for i in range(1, min(depth, 400))),
                    "{a: " * depth + "1" + "}" * depth,
                ]
            )
        )
        case.shape = f"deep:{depth}"
    case.summary = f"text={short(case.config_text[:60] if case.config_text else '')}"
    return case


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
CATEGORIES = (
    "storage_event",
    "object_name",
    "pubsub_message",
    "gcs_notification",
    "completion_message",
    "job_status",
    "rest",
    "config",
)
# One round of the schedule: case n belongs to category SCHEDULE[n % len(SCHEDULE)].
SCHEDULE = (
    "storage_event",
    "object_name",
    "pubsub_message",
    "rest",
    "config",
    "storage_event",
    "pubsub_message",
    "gcs_notification",
    "completion_message",
    "object_name",
    "rest",
    "job_status",
    "config",
    "pubsub_message",
)


def build_case(draw: Draw, category: str, number: int, now: dt.datetime, completion_topic: str) -> Case:
    if category == "storage_event":
        return draw(storage_cases(number, now))
    if category == "object_name":
        return draw(storage_cases(number, now, hostile_names=True))
    if category == "pubsub_message":
        return draw(pubsub_cases(number, now))
    if category == "gcs_notification":
        return draw(notification_cases(number, now))
    if category == "completion_message":
        return draw(completion_cases(number, now, completion_topic))
    if category == "job_status":
        return draw(job_status_cases(number, now))
    if category == "rest":
        return draw(rest_cases(number))
    return draw(config_cases(number))


def _draw_category(
    category: str, wanted: list[int], seed: int, when: dt.datetime, completion_topic: str
) -> list[Case]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    drawn: list[Case] = []
    for attempt in range(5):
        if len(drawn) >= len(wanted):
            break

        @settings(
            max_examples=len(wanted) - len(drawn),
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            deadline=None,
        )
        @given(st.data())
        def collect(data: Any) -> None:
            if len(drawn) < len(wanted):
                drawn.append(build_case(data.draw, category, wanted[len(drawn)], when, completion_topic))

        hseed(seed + attempt)(collect)()
    return drawn


def generate(count: int, seed: int, *, completion_topic: str, now: dt.datetime | None = None) -> list[Case]:
    """``count`` cases drawn by hypothesis with ``seed``, numbered 0..count-1.

    Case ``n`` belongs to category ``SCHEDULE[n % len(SCHEDULE)]``; each category is drawn by its
    own ``@given`` run (hypothesis requires one strategy shape per run), then the cases are put
    back in number order.
    """
    when = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    numbers: dict[str, list[int]] = {}
    for n in range(count):
        numbers.setdefault(SCHEDULE[n % len(SCHEDULE)], []).append(n)
    cases: list[Case] = []
    for index, (category, wanted) in enumerate(sorted(numbers.items())):
        cases.extend(_draw_category(category, wanted, seed * 1000 + index * 10, when, completion_topic))
    return sorted(cases, key=lambda c: c.number)


# ---------------------------------------------------------------------------------------------
# Hand-made cases (regressions and the oracles' self-tests)
# ---------------------------------------------------------------------------------------------
def example_storage_case(number: int, now: dt.datetime, name: str, *, owner: str | None = None) -> Case:
    """A well-formed finalize event for ``name`` in the landing bucket, with its oracle."""
    gen = _base_generation(number)
    data: dict[str, Any] = {
        "bucket": LANDING_BUCKET,
        "name": name,
        "generation": str(gen),
        "size": "12",
        "contentType": "text/plain",
        "timeCreated": _rfc3339(now, 0),
    }
    if owner is not None:
        data["metadata"] = {"owner": owner}
    attrs = {
        "type": STORAGE_FINALIZED,
        "source": f"//storage.googleapis.com/projects/_/buckets/{LANDING_BUCKET}",
        "subject": f"objects/{name}",
        "id": f"bi-{number}",
        "time": _rfc3339(now, 0),
    }
    obj = oracle_object(data, fallback={}, generation=Int(str(gen), gen), size=Int("12", 12))
    case = Case(number, "storage_event", "example", [event_delivery("on_object_finalized", attrs, data)])
    case.launches = _options(storage_launches(obj, now), obj.either)
    case.summary = f"name={short(name)}"
    return case


def example_message_case(number: int, now: dt.datetime, order_id: Any, region: str | None = None) -> Case:
    """A well-formed order message on the orders topic, with its oracle."""
    payload = json.dumps({"order": {"id": order_id}}).encode()
    attributes = {"kind": "order", **({"region": region} if region is not None else {})}
    msg = Message(
        topic_source=topic_source("orders"),
        message_id=f"{number}001",
        payload=payload,
        data_field=base64.b64encode(payload).decode(),
        attributes=attributes,
        publish_time=Time(_rfc3339(now, 0), now),
        ce_time=Time(_rfc3339(now, 0), now),
    )
    case = Case(number, "pubsub_message", "example", [msg.delivery(number)])
    case.launches = message_launches(oracle_message(msg, now), now)
    return case


def example_rest_case(number: int, day: str = "2026-11-01", note: str | None = None) -> Case:
    """POST /runs for the manual pipeline, with its oracle."""
    parameters = {"day": day, **({"note": note} if note is not None else {})}
    body = json.dumps({"pipeline": "manual", "parameters": parameters}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"example-{number}"}
    case = Case(
        number, "rest", "example", [Delivery("api", body, headers, path="/runs", statuses=frozenset({202}))]
    )
    case.launches = ((Launch.of("manual", {"day": day, "table": "sales", "note": note or ""}),),)
    return case


def example_config_case(number: int) -> Case:
    """A config with no ledger bucket: the validator must say so."""
    doc = suite_config_for_mutation()
    del doc["settings"]["ledger"]["bucket"]
    case = Case(number, "config", "example", config_text=yaml.safe_dump(doc, sort_keys=False))
    case.config_markers, case.config_valid = ("settings.ledger.bucket",), False
    return case
