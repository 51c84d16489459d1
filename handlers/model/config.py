"""The routing config: which events launch which pipeline, with which parameters.

A YAML file (path from ``PIPELINES_CONFIG``, default ``pipelines.yaml`` beside ``main.py``) with
three sections; ``docs/config.md`` is the full reference::

    settings:
      project: my-project            # default project of every pipeline
      region: europe-west1           # default region (Dataflow: regional endpoints only)
      ledger: {bucket: my-ledger, prefix: pipeline-runs/, lease: 10m}
      completion_topic: pipeline-completions
      max_event_age: 1h              # older events are dropped with a log line
    pipelines:
      wordcount:
        backend: dataflow            # dataflow | dataflow-flex | datafusion | fabric
        template: gs://my-templates/wordcount
        parameters: {inputFile: "gs://{bucket}/{name}", output: "gs://out/{stem}/"}
    triggers:
      landing:
        storage: {bucket: landing, glob: "incoming/**/*.txt"}
        pipeline: wordcount

Loading validates everything at once and raises :class:`~handlers.core.errors.ConfigError` listing every
problem, each naming the trigger or pipeline and the field. The result is frozen dataclasses.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handlers.backends import registry
from handlers.backends.contract import TERMINAL_STATES
from handlers.core.errors import ConfigError
from handlers.core.patterns import Glob, PatternError, Regex, compile_regex
from handlers.model.templates import Template, placeholder_problem

CONFIG_ENV = "PIPELINES_CONFIG"
DEFAULT_CONFIG = "pipelines.yaml"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")  # \Z: "$" would let a trailing newline through
STATES = tuple(str(s) for s in TERMINAL_STATES)  # the states a completion trigger may wait for
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_COND_OPS = {"equals", "in", "regex", "prefix", "suffix", "exists"}


# ---------------------------------------------------------------------------------------------
# The frozen model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """A test on one attribute or JSON data field of a message."""

    path: str
    equals: str | None = None
    one_of: tuple[str, ...] | None = None
    regex: Regex | None = None
    prefix: str | None = None
    suffix: str | None = None
    exists: bool | None = None


@dataclass(frozen=True)
class StorageMatch:
    bucket: str
    glob: str | None = None
    glob_matcher: Glob | None = None
    regex: Regex | None = None
    prefix: str | None = None
    suffix: str | None = None
    content_types: tuple[str, ...] = ()
    min_size: int | None = None
    max_size: int | None = None


@dataclass(frozen=True)
class PubSubMatch:
    topic: str
    attributes: tuple[Condition, ...] = ()
    data: tuple[Condition, ...] = ()
    dedupe_by: str | None = None  # "data.a.b" or "attributes.k"; default: the message id


@dataclass(frozen=True)
class CompletionMatch:
    upstream: tuple[str, ...]
    states: tuple[str, ...] = ("SUCCEEDED",)
    join_key: Template | None = None

    @property
    def is_fan_in(self) -> bool:
        return len(self.upstream) > 1


MAX_WINDOW_ITEMS = 5000  # one window document holds its members: this bounds it (about 1.5 MB)


@dataclass(frozen=True)
class BatchSpec:
    """``batch:`` on a storage trigger: matching objects join a window that launches once when full
    (``max_items``, ``max_bytes``) or ``max_wait`` after its first object; ``key`` splits windows."""

    max_items: int | None = None
    max_bytes: int | None = None
    max_wait_seconds: float | None = None
    key: Template | None = None
    manifest_bucket: str | None = None  # default: the ledger bucket
    manifest_prefix: str | None = None  # default: <ledger prefix>manifests/

    @property
    def item_limit(self) -> int:
        return min(self.max_items or MAX_WINDOW_ITEMS, MAX_WINDOW_ITEMS)


class TriggerKind(enum.StrEnum):
    """What starts a trigger's runs."""

    STORAGE = "storage"  # an object finalized in a bucket
    PUBSUB = "pubsub"  # a message on a topic
    COMPLETION = "completion"  # an upstream run's completion event (a chain or a fan-in)
    API = "api"  # a run started by hand (REST API or CLI); never configured


@dataclass(frozen=True)
class Trigger:
    name: str
    kind: TriggerKind
    pipeline: str
    parameters: Mapping[str, Template] = field(default_factory=dict)
    storage: StorageMatch | None = None
    pubsub: PubSubMatch | None = None
    completion: CompletionMatch | None = None
    batch: BatchSpec | None = None
    # The name the trigger had when its runs began: a renamed trigger keeps its run keys (see key_name)
    renamed_from: str | None = None

    @property
    def key_name(self) -> str:
        """The name in this trigger's run keys: its former name when it was renamed, so a redelivery
        of an event the old name launched is the same run, not a second one."""
        return self.renamed_from or self.name

    @property
    def scope(self) -> str:
        """The scope of the launch's placeholders (see :mod:`handlers.model.templates`)."""
        if self.batch is not None:
            return "window"
        if self.completion is not None and self.completion.is_fan_in:
            return "fanin"
        return self.kind


@dataclass(frozen=True)
class Input:
    """A parameter a REST caller may pass (``{input.NAME}`` in templates)."""

    name: str
    required: bool = True
    pattern: Regex | None = None  # the whole value must match
    description: str = ""
    default: str | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    backend: str
    project: str
    region: str
    parameters: Mapping[str, Template] = field(default_factory=dict)
    outputs: Mapping[str, Template] = field(default_factory=dict)
    mode: str = "batch"  # batch | streaming
    success_after_seconds: float = 0.0  # streaming: RUNNING this long counts as success
    timeout_seconds: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, Input] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # backend-specific, checked by the backend


@dataclass(frozen=True)
class Settings:
    project: str
    region: str
    ledger_bucket: str
    ledger_prefix: str = "pipeline-ledger/"
    lease_seconds: float = 600.0
    completion_topic: str | None = None
    max_event_age_seconds: float = 3600.0
    launch_budget_seconds: float = 60.0
    stall_after_seconds: float = 1800.0
    publish_lease_seconds: float = 60.0

    @property
    def completion_topic_path(self) -> str | None:
        t = self.completion_topic
        if not t:
            return None
        return t if t.startswith("projects/") else f"projects/{self.project}/topics/{t}"


@dataclass(frozen=True)
class Config:
    settings: Settings
    pipelines: Mapping[str, Pipeline]
    triggers: Mapping[str, Trigger]
    source: str = "<config>"

    def triggers_of(self, kind: TriggerKind | str) -> list[Trigger]:
        return [t for t in self.triggers.values() if t.kind == kind]

    def pipeline(self, name: str) -> Pipeline:
        return self.pipelines[name]

    def templates_for(self, trigger: Trigger) -> dict[str, Template]:
        """The pipeline's parameter templates with the trigger's overrides on top."""
        return {**self.pipelines[trigger.pipeline].parameters, **trigger.parameters}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a duration: {value!r} (a finite number of seconds, or e.g. 30s, 10m, 2h)")
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 2h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Problems:
    """Collects every problem with its location, so one load reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def where(self) -> set[str]:
        """The locations that have a problem already."""
        return {item.split(": ", 1)[0] for item in self.items}


def _as_map(value: Any, where: str, problems: _Problems) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(where, f"must be a mapping, got {type(value).__name__}")
        return {}
    return value


def _unknown_keys(raw: Mapping[str, Any], allowed: set[str], where: str, problems: _Problems) -> None:
    for key in raw:
        if key not in allowed:
            hint = _closest(str(key), allowed)
            problems.add(where, f"unknown field '{key}'" + (f" (did you mean '{hint}'?)" if hint else ""))


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.7)
    return match[0] if match else None


def _templates(raw: Any, where: str, problems: _Problems) -> dict[str, Template]:
    result: dict[str, Template] = {}
    for key, value in _as_map(raw, where, problems).items():
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            problems.add(f"{where}.{key}", "must be a string, number or template")
            continue
        try:
            result[str(key)] = Template.parse(str(value))
        except ValueError as exc:
            problems.add(f"{where}.{key}", str(exc))
    return result


def _duration(
    raw: Mapping[str, Any], key: str, where: str, problems: _Problems, default: float | None
) -> Any:
    if key not in raw or raw[key] is None:
        return default
    try:
        seconds = parse_duration(raw[key])
    except ValueError as exc:
        problems.add(f"{where}.{key}", str(exc))
        return default
    if seconds <= 0:
        problems.add(f"{where}.{key}", "must be positive")
    return seconds


def _regex(value: Any, where: str, problems: _Problems) -> Regex | None:
    try:
        return compile_regex(str(value))
    except PatternError as exc:
        problems.add(where, str(exc))
        return None


def _conditions(raw: Any, where: str, problems: _Problems) -> tuple[Condition, ...]:
    conds: list[Condition] = []
    for path, spec in _as_map(raw, where, problems).items():
        here = f"{where}.{path}"
        if isinstance(spec, list):
            conds.append(Condition(str(path), one_of=tuple(str(v) for v in spec)))
        elif isinstance(spec, Mapping):
            _unknown_keys(spec, _COND_OPS, here, problems)
            one_of = spec.get("in")
            if one_of is not None and not isinstance(one_of, list):
                problems.add(f"{here}.in", "must be a list")
                one_of = None
            regex = _text(spec.get("regex"), f"{here}.regex", problems)
            conds.append(
                Condition(
                    str(path),
                    equals=_text(spec.get("equals"), f"{here}.equals", problems),
                    one_of=tuple(str(v) for v in one_of) if one_of is not None else None,
                    regex=_regex(regex, f"{here}.regex", problems) if regex is not None else None,
                    prefix=_text(spec.get("prefix"), f"{here}.prefix", problems),
                    suffix=_text(spec.get("suffix"), f"{here}.suffix", problems),
                    exists=bool(spec["exists"]) if "exists" in spec else None,
                )
            )
        else:
            conds.append(Condition(str(path), equals=_scalar(spec)))
    return tuple(conds)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _text(value: Any, where: str, problems: _Problems) -> str | None:
    """A text setting: a scalar as text (``2026`` -> ``"2026"``), ``None`` when absent; a list or a
    mapping is a problem (its ``str()`` would be matched against names, or fail at run time)."""
    if value is None:
        return None
    if isinstance(value, Mapping | list | tuple | set):
        problems.add(where, f"must be a string, got {type(value).__name__}")
        return None
    return _scalar(value)


def _int_or_none(raw: Mapping[str, Any], key: str, where: str, problems: _Problems) -> int | None:
    if raw.get(key) is None:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        problems.add(f"{where}.{key}", "must be a non-negative integer (bytes)")
        return None
    return value


def _storage(raw: Any, where: str, problems: _Problems) -> StorageMatch | None:
    spec = _as_map(raw, where, problems)
    allowed = {"bucket", "glob", "regex", "prefix", "suffix", "content_type", "min_size", "max_size"}
    _unknown_keys(spec, allowed, where, problems)
    bucket = spec.get("bucket")
    if not bucket or not isinstance(bucket, str):
        problems.add(f"{where}.bucket", "is required")
        return None
    ct = spec.get("content_type")
    content_types = tuple(ct) if isinstance(ct, list) else ((ct,) if ct else ())
    if not all(isinstance(c, str) for c in content_types):
        problems.add(f"{where}.content_type", "must be a content type or a list of them")
        content_types = ()
    glob = _text(spec.get("glob"), f"{where}.glob", problems)
    glob_matcher = None
    if glob:
        try:
            glob_matcher = Glob(glob)
        except PatternError as exc:
            problems.add(f"{where}.glob", f"invalid glob: {exc}")
    regex = _text(spec.get("regex"), f"{where}.regex", problems)
    m = StorageMatch(
        bucket=bucket,
        glob=glob,
        glob_matcher=glob_matcher,
        regex=_regex(regex, f"{where}.regex", problems) if regex else None,
        prefix=_text(spec.get("prefix"), f"{where}.prefix", problems),
        suffix=_text(spec.get("suffix"), f"{where}.suffix", problems),
        content_types=tuple(str(c) for c in content_types),
        min_size=_int_or_none(spec, "min_size", where, problems),
        max_size=_int_or_none(spec, "max_size", where, problems),
    )
    if m.min_size is not None and m.max_size is not None and m.min_size > m.max_size:
        problems.add(where, f"min_size ({m.min_size}) is larger than max_size ({m.max_size})")
    return m


def _pubsub(raw: Any, where: str, problems: _Problems) -> PubSubMatch | None:
    spec = _as_map(raw, where, problems)
    _unknown_keys(spec, {"topic", "attributes", "data", "dedupe_by"}, where, problems)
    topic = spec.get("topic")
    if not topic or not isinstance(topic, str):
        problems.add(f"{where}.topic", "is required")
        return None
    dedupe = spec.get("dedupe_by")
    if dedupe is not None and not (
        isinstance(dedupe, str) and dedupe.startswith(("data.", "attributes.")) and not dedupe.endswith(".")
    ):
        problems.add(f"{where}.dedupe_by", "must be 'data.<dotted path>' or 'attributes.<name>'")
        dedupe = None
    return PubSubMatch(
        topic=topic.rsplit("/", 1)[-1],
        attributes=_conditions(spec.get("attributes"), f"{where}.attributes", problems),
        data=_conditions(spec.get("data"), f"{where}.data", problems),
        dedupe_by=dedupe,
    )


def _completion(raw: Any, where: str, problems: _Problems) -> CompletionMatch | None:
    spec = _as_map(raw, where, problems)
    _unknown_keys(spec, {"upstream", "states", "join_key"}, where, problems)
    up = spec.get("upstream")
    upstream = tuple(up) if isinstance(up, list) else ((up,) if up else ())
    if not upstream:
        problems.add(f"{where}.upstream", "is required (a pipeline name, or a list for a fan-in)")
        return None
    states_raw = spec.get("states", ["SUCCEEDED"])
    states = tuple(states_raw) if isinstance(states_raw, list) else (states_raw,)
    for s in states:
        if s not in STATES:
            problems.add(f"{where}.states", f"unknown state '{s}' (one of {', '.join(STATES)})")
    join_key = _template(spec, "join_key", where, problems)
    if len(upstream) > 1:
        if join_key is None and "join_key" not in spec:
            problems.add(f"{where}.join_key", "is required when several upstream pipelines fan in")
        if tuple(states) != ("SUCCEEDED",):
            problems.add(f"{where}.states", "a fan-in waits for SUCCEEDED only")
    return CompletionMatch(upstream=tuple(str(u) for u in upstream), states=tuple(states), join_key=join_key)


def _template(spec: Mapping[str, Any], name: str, where: str, problems: _Problems) -> Template | None:
    """The optional template ``spec[name]``, parsed (a problem, and None, when it does not parse)."""
    text = _text(spec.get(name), f"{where}.{name}", problems)
    if text is None:
        return None
    try:
        return Template.parse(text)
    except ValueError as exc:
        problems.add(f"{where}.{name}", str(exc))
        return None


_TRIGGER_KEYS = {
    "pipeline",
    "parameters",
    "storage",
    "pubsub",
    "completion",
    "description",
    "batch",
    "renamed_from",
}
_BATCH_KEYS = {"max_items", "max_bytes", "max_wait", "key", "manifest_bucket", "manifest_prefix"}


def _batch(raw: Any, where: str, problems: _Problems) -> BatchSpec | None:
    spec = _as_map(raw, where, problems)
    _unknown_keys(spec, _BATCH_KEYS, where, problems)
    counts: dict[str, int | None] = {}
    for name in ("max_items", "max_bytes"):
        value = spec.get(name)
        if value is None:
            counts[name] = None
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.add(f"{where}.{name}", "must be a positive integer")
            counts[name] = None
        else:
            counts[name] = value
    if counts["max_items"] is not None and counts["max_items"] > MAX_WINDOW_ITEMS:
        problems.add(f"{where}.max_items", f"at most {MAX_WINDOW_ITEMS} objects per window")
    wait = _duration(spec, "max_wait", where, problems, None)
    if not any(k in spec for k in ("max_items", "max_bytes", "max_wait")):
        problems.add(where, "needs at least one of max_items, max_bytes, max_wait")
    key = _template(spec, "key", where, problems)
    prefix = _text(spec.get("manifest_prefix"), f"{where}.manifest_prefix", problems)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return BatchSpec(
        max_items=counts["max_items"],
        max_bytes=counts["max_bytes"],
        max_wait_seconds=wait,
        key=key,
        manifest_bucket=_text(spec.get("manifest_bucket"), f"{where}.manifest_bucket", problems),
        manifest_prefix=prefix,
    )


_PIPELINE_KEYS = {
    "backend",
    "project",
    "region",
    "parameters",
    "outputs",
    "mode",
    "success_after",
    "timeout",
    "labels",
    "inputs",
    "description",
}


def _inputs(raw: Any, where: str, problems: _Problems) -> dict[str, Input]:
    result: dict[str, Input] = {}
    for name, spec in _as_map(raw, where, problems).items():
        here = f"{where}.{name}"
        spec = spec if isinstance(spec, Mapping) else {}
        _unknown_keys(spec, {"required", "pattern", "description", "default"}, here, problems)
        pattern = _text(spec.get("pattern"), f"{here}.pattern", problems)
        result[str(name)] = Input(
            name=str(name),
            required=bool(spec.get("required", "default" not in spec)),
            pattern=_regex(pattern, f"{here}.pattern", problems) if pattern else None,
            description=str(spec.get("description", "")),
            default=_text(spec.get("default"), f"{here}.default", problems),
        )
    return result


def _pipeline(name: str, raw: Any, settings: Settings, problems: _Problems) -> Pipeline | None:
    where = f"pipeline '{name}'"
    if not NAME_RE.match(name):
        problems.add(where, "name must match [a-z][a-z0-9_-]{0,62}")
    spec = _as_map(raw, where, problems)
    backend = spec.get("backend")
    known = registry.names()
    if not isinstance(backend, str) or backend not in known:  # a list is unhashable: a TypeError
        problems.add(f"{where}.backend", f"must be one of {', '.join(known)}, got {backend!r}")
        return None
    declared = registry.spec(backend)
    option_keys = set(declared.option_keys)
    _unknown_keys(spec, _PIPELINE_KEYS | option_keys, where, problems)
    options = {k: v for k, v in spec.items() if k in option_keys}
    for message in declared.check_options(options):
        problems.add(where, message)
    mode = spec.get("mode", "batch")
    if mode not in ("batch", "streaming"):
        problems.add(f"{where}.mode", f"must be batch or streaming, got {mode!r}")
    labels = _as_map(spec.get("labels"), f"{where}.labels", problems)
    for k, v in labels.items():
        if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", str(k)) or not re.match(r"^[a-z0-9_-]{0,63}$", str(v)):
            problems.add(
                f"{where}.labels.{k}", "label keys must match [a-z][a-z0-9_-]{0,62}, values [a-z0-9_-]{0,63}"
            )
    return Pipeline(
        name=name,
        backend=str(backend),
        project=_text(spec.get("project"), f"{where}.project", problems) or settings.project,
        region=_text(spec.get("region"), f"{where}.region", problems) or settings.region,
        parameters=_templates(spec.get("parameters"), f"{where}.parameters", problems),
        outputs=_templates(spec.get("outputs"), f"{where}.outputs", problems),
        mode=str(mode),
        success_after_seconds=_duration(spec, "success_after", where, problems, 0.0),
        timeout_seconds=_duration(spec, "timeout", where, problems, None),
        labels={str(k): str(v) for k, v in labels.items()},
        inputs=_inputs(spec.get("inputs"), f"{where}.inputs", problems),
        options=options,
    )


def _trigger(name: str, raw: Any, problems: _Problems) -> Trigger | None:
    where = f"trigger '{name}'"
    if not NAME_RE.match(name):
        problems.add(where, "name must match [a-z][a-z0-9_-]{0,62}")
    if name == "api":
        problems.add(where, "the name 'api' is reserved for runs started through the REST API")
    spec = _as_map(raw, where, problems)
    _unknown_keys(spec, _TRIGGER_KEYS, where, problems)
    kinds = [k for k in ("storage", "pubsub", "completion") if k in spec]
    if len(kinds) != 1:
        problems.add(where, "needs exactly one of storage:, pubsub:, completion:")
        return None
    kind = kinds[0]
    pipeline = spec.get("pipeline")
    if not pipeline or not isinstance(pipeline, str):
        problems.add(f"{where}.pipeline", "is required")
        return None
    batch = None
    if spec.get("batch") is not None:
        if kind != "storage":
            problems.add(f"{where}.batch", "windows batch object events: only storage triggers take batch:")
        else:
            batch = _batch(spec["batch"], f"{where}.batch", problems)
    renamed_from = spec.get("renamed_from")
    if renamed_from is not None and not (isinstance(renamed_from, str) and NAME_RE.match(renamed_from)):
        problems.add(f"{where}.renamed_from", "must be the trigger's former name ([a-z][a-z0-9_-]{0,62})")
        renamed_from = None
    return Trigger(
        name=name,
        kind=TriggerKind(kind),
        pipeline=pipeline,
        parameters=_templates(spec.get("parameters"), f"{where}.parameters", problems),
        storage=_storage(spec[kind], f"{where}.storage", problems) if kind == "storage" else None,
        pubsub=_pubsub(spec[kind], f"{where}.pubsub", problems) if kind == "pubsub" else None,
        completion=_completion(spec[kind], f"{where}.completion", problems) if kind == "completion" else None,
        batch=batch,
        renamed_from=renamed_from,
    )


def _check_key_names(cfg: Config, problems: _Problems) -> None:
    """Two triggers whose run keys would carry one name would share runs: refused."""
    seen: dict[str, str] = {}
    for t in cfg.triggers.values():
        other = seen.setdefault(t.key_name, t.name)
        if other != t.name:
            problems.add(
                f"trigger '{t.name}'.renamed_from" if t.renamed_from else f"trigger '{t.name}'",
                f"its runs would share run keys with trigger '{other}' (both named '{t.key_name}' there)",
            )


def _settings(raw: Any, problems: _Problems) -> Settings:
    where = "settings"
    spec = _as_map(raw, where, problems)
    _unknown_keys(
        spec,
        {
            "project",
            "region",
            "ledger",
            "completion_topic",
            "max_event_age",
            "launch_budget",
            "stall_after",
            "publish_lease",
        },
        where,
        problems,
    )
    ledger = _as_map(spec.get("ledger"), f"{where}.ledger", problems)
    _unknown_keys(ledger, {"bucket", "prefix", "lease"}, f"{where}.ledger", problems)
    project = _text(spec.get("project"), f"{where}.project", problems) or os.environ.get(
        "GOOGLE_CLOUD_PROJECT"
    )
    if not project and f"{where}.project" not in problems.where():
        problems.add(f"{where}.project", "is required (or set GOOGLE_CLOUD_PROJECT)")
    region = _text(spec.get("region"), f"{where}.region", problems)
    if not region and f"{where}.region" not in problems.where():
        problems.add(
            f"{where}.region", "is required (every pipeline runs in a region, through regional endpoints)"
        )
    bucket = _text(ledger.get("bucket"), f"{where}.ledger.bucket", problems)
    if not bucket and f"{where}.ledger.bucket" not in problems.where():
        problems.add(f"{where}.ledger.bucket", "is required (the run ledger makes launches exactly-once)")
    prefix = _text(ledger.get("prefix", "pipeline-ledger/"), f"{where}.ledger.prefix", problems)
    if prefix is None:
        prefix = "pipeline-ledger/"
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return Settings(
        project=str(project),
        region=str(region),
        ledger_bucket=str(bucket),
        ledger_prefix=prefix,
        lease_seconds=_duration(ledger, "lease", f"{where}.ledger", problems, 600.0),
        completion_topic=_text(spec.get("completion_topic"), f"{where}.completion_topic", problems),
        max_event_age_seconds=_duration(spec, "max_event_age", where, problems, 3600.0),
        launch_budget_seconds=_duration(spec, "launch_budget", where, problems, 60.0),
        stall_after_seconds=_duration(spec, "stall_after", where, problems, 1800.0),
        publish_lease_seconds=_duration(spec, "publish_lease", where, problems, 60.0),
    )


def _check_placeholders(cfg: Config, problems: _Problems) -> None:
    triggered: dict[str, list[Trigger]] = {}
    for trig in cfg.triggers.values():
        triggered.setdefault(trig.pipeline, []).append(trig)
        if trig.pipeline not in cfg.pipelines:
            hint = _closest(trig.pipeline, set(cfg.pipelines))
            problems.add(
                f"trigger '{trig.name}'.pipeline",
                f"unknown pipeline '{trig.pipeline}'" + (f" (did you mean '{hint}'?)" if hint else ""),
            )
            continue
        pipeline = cfg.pipelines[trig.pipeline]
        upstreams = trig.completion.upstream if trig.completion else ()
        for pname, template in pipeline.parameters.items():
            if pname in trig.parameters:
                continue
            _check_template(
                template,
                trig.scope,
                f"pipeline '{pipeline.name}'.parameters.{pname}",
                problems,
                upstreams,
                via=trig.name,
            )
        for pname, template in trig.parameters.items():
            _check_template(
                template, trig.scope, f"trigger '{trig.name}'.parameters.{pname}", problems, upstreams
            )
        for oname, template in pipeline.outputs.items():
            _check_template(
                template,
                trig.scope,
                f"pipeline '{pipeline.name}'.outputs.{oname}",
                problems,
                upstreams,
                via=trig.name,
                outputs=True,
            )
        if trig.batch is not None and trig.batch.key is not None:
            # The window key is rendered from each object event on its own.
            _check_template(trig.batch.key, "storage", f"trigger '{trig.name}'.batch.key", problems)
        if trig.completion:
            for up in trig.completion.upstream:
                if up not in cfg.pipelines:
                    problems.add(f"trigger '{trig.name}'.completion.upstream", f"unknown pipeline '{up}'")
            if trig.completion.join_key is not None:
                # The join key is rendered from each arriving completion on its own.
                _check_template(
                    trig.completion.join_key,
                    "completion",
                    f"trigger '{trig.name}'.completion.join_key",
                    problems,
                    upstreams,
                )
    for pipeline in cfg.pipelines.values():
        if pipeline.inputs or pipeline.name not in triggered:
            # Launchable through the REST API: every placeholder must come from its inputs.
            for pname, template in pipeline.parameters.items():
                for f in template.fields:
                    if f.path.startswith("input.") and f.path[6:] not in pipeline.inputs:
                        problems.add(
                            f"pipeline '{pipeline.name}'.parameters.{pname}",
                            f"{{{f.path}}} names no declared input",
                        )
            if pipeline.name not in triggered:
                for pname, template in pipeline.parameters.items():
                    _check_template(
                        template, "api", f"pipeline '{pipeline.name}'.parameters.{pname}", problems
                    )


def _check_template(
    template: Template,
    scope: str,
    where: str,
    problems: _Problems,
    upstreams: tuple[str, ...] = (),
    *,
    via: str | None = None,
    outputs: bool = False,
) -> None:
    for f in template.fields:
        why = placeholder_problem(f.path, scope, upstreams=upstreams, outputs=outputs)
        if why and not (f.path.startswith("input.") and scope != "api" and f.default is not None):
            suffix = f" (used by trigger '{via}')" if via else ""
            problems.add(where, f"unknown placeholder {{{f.path}}}: {why}{suffix}")


def _check_cycles(cfg: Config, problems: _Problems) -> None:
    edges: dict[str, set[str]] = {}
    for trig in cfg.triggers.values():
        if trig.batch is not None and trig.batch.key is not None:
            # The window key is rendered from each object event on its own.
            _check_template(trig.batch.key, "storage", f"trigger '{trig.name}'.batch.key", problems)
        if trig.completion:
            for up in trig.completion.upstream:
                edges.setdefault(up, set()).add(trig.pipeline)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                problems.add("triggers", "completion triggers form a loop: " + " -> ".join(cycle))
            elif state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node, [node])


def build_config(raw: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a :class:`Config`, or raise one ConfigError listing all."""
    problems = _Problems()
    doc = _as_map(raw, "config", problems)
    _unknown_keys(doc, {"settings", "pipelines", "triggers", "version"}, "config", problems)
    settings = _settings(doc.get("settings"), problems)
    pipelines: dict[str, Pipeline] = {}
    for name, spec in _as_map(doc.get("pipelines"), "pipelines", problems).items():
        p = _pipeline(str(name), spec, settings, problems)
        if p:
            pipelines[str(name)] = p
    triggers: dict[str, Trigger] = {}
    for name, spec in _as_map(doc.get("triggers"), "triggers", problems).items():
        t = _trigger(str(name), spec, problems)
        if t:
            triggers[str(name)] = t
    if not pipelines and "pipelines" not in doc:
        problems.add("config", "has no pipelines: section")
    cfg = Config(settings=settings, pipelines=pipelines, triggers=triggers, source=source)
    _check_placeholders(cfg, problems)
    _check_cycles(cfg, problems)
    _check_key_names(cfg, problems)
    if problems.items:
        raise ConfigError(problems.items, source=source)
    return cfg


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the YAML config at ``path`` (default: ``$PIPELINES_CONFIG`` or pipelines.yaml).

    When the compiled form beside it (:func:`compile_config`) records this exact text, its document
    is read with the standard library's ``json`` instead of parsing the YAML: PyYAML is not even
    imported. Either way the document is validated by :func:`build_config`, the same as always; the
    compiled form only saves the YAML parse, and is ignored whenever it does not match.
    """
    target = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {target}: {exc.strerror or exc}"], source=str(target)) from exc
    compiled = _compiled_document(target, text)
    raw = compiled[0] if compiled else _parse_yaml(text, target)
    return build_config(raw, source=str(target))


# The most nodes a config may expand to once every alias is followed. A real config has hundreds;
# a "billion laughs" document (aliases of aliases) expands to billions from a few lines, and would
# blow up in everything that walks it after the parse (validation, the compiled form, rendering).
MAX_YAML_NODES = 100_000


def _parse_yaml(text: str, target: Path) -> Any:
    import yaml  # only when no compiled form matches (cold start: PyYAML costs about 15 ms to import)

    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters here, at once
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(target)) from exc
    try:
        node = loader.get_single_node()  # the node graph: an alias is a shared node, nothing copied
        if node is None:
            return None
        expanded = yaml_expanded_size(node, MAX_YAML_NODES)
        if expanded > MAX_YAML_NODES:
            raise ConfigError(
                [
                    f"not a usable config: its aliases expand it to more than {MAX_YAML_NODES:,} nodes"
                    " (an alias bomb?); write the repeated parts out or use fewer aliases"
                ],
                source=str(target),
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(target)) from exc
    except RecursionError as exc:  # the YAML composer recurses once per nesting level
        raise ConfigError(["not a usable config: nested too deeply"], source=str(target)) from exc
    finally:
        loader.dispose()


def yaml_expanded_size(node: Any, limit: int) -> int:
    """How many nodes the YAML node graph ``node`` has with every alias expanded, counted without
    expanding anything: each distinct node is visited once (its size memoized), so the work is the
    size of the text, however far the aliases would expand. Counting stops past ``limit``."""
    sizes: dict[int, int] = {}

    def size(n: Any) -> int:
        known = sizes.get(id(n))
        if known is not None:
            return known
        total = 1
        value = n.value
        if isinstance(value, list):
            for item in value:
                children = item if isinstance(item, tuple) else (item,)  # mapping pairs or sequence items
                for child in children:
                    total += size(child)
                    if total > limit:
                        break
                if total > limit:
                    break
        sizes[id(n)] = total
        return total

    return size(node)


def yaml_distinct_nodes(text: str) -> int:
    """How many distinct nodes the YAML ``text`` composes to (aliases shared): the work the alias
    check does, for tests."""
    import yaml  # as in _parse_yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    seen: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.value, list):
            for item in n.value:
                stack.extend(item if isinstance(item, tuple) else (item,))
    return len(seen)


COMPILED_SUFFIX = ".compiled.json"  # pipelines.yaml -> pipelines.yaml.compiled.json
COMPILED_FORMAT = 1


def compiled_path(path: str | os.PathLike[str]) -> Path:
    """Where the compiled form of the config at ``path`` lives: beside it."""
    target = Path(path)
    return target.with_name(target.name + COMPILED_SUFFIX)


def _source_digest(text: str) -> str:
    import hashlib  # loaded already by handlers.core.ids; local like the rest of the loading path

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compile_config(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Validate the YAML config at ``path`` and write its compiled form beside it (what deploy ships
    with the config): the parsed document as JSON with the SHA-256 of the text it came from, so that
    :func:`load_config` can skip the YAML parse on every cold start.

    Raises :class:`ConfigError` (nothing written) when the config is invalid. Returns the path
    written, or ``None`` when the document does not survive a JSON round trip exactly (a YAML date,
    a non-string key...): then nothing is written, a stale compiled form is removed, and
    ``load_config`` keeps parsing the YAML.
    """
    import json  # the loading path keeps its imports local (see _parse_yaml)

    target = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {target}: {exc.strerror or exc}"], source=str(target)) from exc
    raw = _parse_yaml(text, target)
    build_config(raw, source=str(target))  # validate: a config that does not load is never compiled
    out = compiled_path(target)
    try:
        encoded = json.dumps(raw, ensure_ascii=False, allow_nan=False, sort_keys=False)
        lossless = _same_document(json.loads(encoded), raw)
    except (TypeError, ValueError, RecursionError):
        lossless = False
    if not lossless:
        out.unlink(missing_ok=True)
        return None
    record = {"format": COMPILED_FORMAT, "source_sha256": _source_digest(text), "document": raw}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    tmp.replace(out)
    return out


def _same_document(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (``1 == 1.0 == True`` would hide a change)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(type(k) is str and _same_document(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_document(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _compiled_document(target: Path, text: str) -> tuple[Any] | None:
    """The document of ``target``'s compiled form when it was compiled from exactly ``text``."""
    import json  # stdlib, loaded already by the functions' modules; local like the rest

    try:
        record = json.loads(compiled_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("format") != COMPILED_FORMAT
        or record.get("source_sha256") != _source_digest(text)
        or "document" not in record
    ):
        return None
    return (record["document"],)


@functools.lru_cache(maxsize=4)
def cached_config(path: str | None = None) -> Config:
    """The config of this process, loaded once (functions-framework keeps the process warm)."""
    return load_config(path)
