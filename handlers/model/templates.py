"""Parameter templates: ``"gs://{bucket}/{name}"`` rendered from an event.

Syntax: Python-style ``{placeholder}`` fields; ``{{`` and ``}}`` for literal braces;
``{event_time:%Y/%m/%d}`` formats a time with strftime; ``{metadata.owner|nobody}`` gives a default
used when the value is absent. Placeholders are checked when the config loads (an unknown one is a
load error), so rendering can only fail on a value the event does not carry, which is a
:class:`~handlers.core.errors.ParameterError` naming the parameter.

Which placeholders exist depends on what started the run (the *scope*):

=============  ==================================================================================
scope          placeholders
=============  ==================================================================================
every scope    ``event_id``, ``event_time`` (time), ``trigger``, ``pipeline``, ``run_key``,
               ``project``, ``region``
storage        ``bucket``, ``name``, ``dirname``, ``basename``, ``stem``, ``extension``,
               ``generation``, ``metageneration``, ``size``, ``content_type``, ``md5_hash``,
               ``crc32c``, ``time_created`` (time), ``metadata.KEY``
pubsub         ``topic``, ``message_id``, ``publish_time`` (time), ``ordering_key``, ``data``
               (the whole payload as text), ``data.a.b.0`` (a JSON field by dotted path),
               ``attributes.KEY``
completion     ``upstream.run_key|pipeline|state|backend|trigger|job_id|job_url|reason``,
               ``upstream.start_time`` / ``upstream.end_time`` (time), ``upstream.duration_seconds``,
               ``upstream.parameters.NAME``, ``upstream.outputs.NAME``, ``upstream.event.KEY``,
               ``upstream.window.<any batch field>`` (the upstream run launched a window);
               fan-in: ``join_key`` and ``upstreams.PIPELINE.<any upstream field above>``
window         a storage trigger with ``batch:`` launches once per window of objects:
               ``batch.manifest`` (gs:// URI of the manifest), ``batch.manifest_bucket``,
               ``batch.manifest_name``, ``batch.count``, ``batch.bytes``, ``batch.id``, ``batch.key``,
               ``batch.bucket``, ``batch.reason``, ``batch.first_time`` / ``batch.last_time`` (time)
api            ``input.NAME`` (a parameter of the REST call)
outputs        everything of the run's scope plus ``params.NAME`` (the rendered parameters)
=============  ==================================================================================
"""

from __future__ import annotations

import datetime as dt
import json
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.core.errors import ParameterError
from handlers.core.times import parse_time

COMMON = frozenset({"event_id", "trigger", "pipeline", "run_key", "project", "region"})
COMMON_TIMES = frozenset({"event_time"})
STORAGE = frozenset(
    {
        "bucket",
        "name",
        "dirname",
        "basename",
        "stem",
        "extension",
        "generation",
        "metageneration",
        "size",
        "content_type",
        "md5_hash",
        "crc32c",
    }
)
STORAGE_TIMES = frozenset({"time_created"})
PUBSUB = frozenset({"topic", "message_id", "ordering_key", "data"})
PUBSUB_TIMES = frozenset({"publish_time"})
UPSTREAM = frozenset(
    {"run_key", "pipeline", "state", "backend", "trigger", "job_id", "job_url", "reason", "duration_seconds"}
)
UPSTREAM_TIMES = frozenset({"start_time", "end_time"})
UPSTREAM_MAPS = ("parameters.", "outputs.", "event.")
WINDOW = frozenset(
    {
        "batch.manifest",
        "batch.manifest_bucket",
        "batch.manifest_name",
        "batch.count",
        "batch.bytes",
        "batch.id",
        "batch.key",
        "batch.bucket",
        "batch.reason",
    }
)
WINDOW_TIMES = frozenset({"batch.first_time", "batch.last_time"})
UPSTREAM_WINDOW = frozenset({"window." + p[len("batch.") :] for p in WINDOW | WINDOW_TIMES})

SCOPES = ("storage", "pubsub", "completion", "fanin", "api", "window")

_MISSING = object()


@dataclass(frozen=True)
class Field:
    """One ``{...}`` field of a template."""

    path: str
    spec: str
    default: str | None
    is_time: bool


def _is_time(path: str) -> bool:
    if path in COMMON_TIMES | STORAGE_TIMES | PUBSUB_TIMES | WINDOW_TIMES:
        return True
    for prefix in ("upstream.", "upstreams."):
        if path.startswith(prefix):
            return path.rsplit(".", 1)[-1] in UPSTREAM_TIMES or path.endswith(
                (".window.first_time", ".window.last_time")
            )
    return False


def _upstream_field_problem(rest: str) -> str | None:
    if rest in UPSTREAM or rest in UPSTREAM_TIMES or rest in UPSTREAM_WINDOW:
        return None
    for prefix in UPSTREAM_MAPS:
        if rest.startswith(prefix) and len(rest) > len(prefix):
            return None
    return "unknown upstream field"


def placeholder_problem(
    path: str, scope: str, *, upstreams: Iterable[str] = (), outputs: bool = False
) -> str | None:
    """Why ``path`` is not a valid placeholder in ``scope``, or ``None`` when it is."""
    if path in COMMON or path in COMMON_TIMES:
        return None
    if outputs and path.startswith("params.") and len(path) > len("params."):
        return None
    if scope == "storage":
        if path in STORAGE or path in STORAGE_TIMES:
            return None
        if path.startswith("metadata.") and len(path) > len("metadata."):
            return None
    elif scope == "pubsub":
        if path in PUBSUB or path in PUBSUB_TIMES:
            return None
        if path.startswith(("data.", "attributes.")) and not path.endswith("."):
            return None
    elif scope in ("completion", "fanin"):
        if path.startswith("upstream.") and scope == "completion":
            return _upstream_field_problem(path[len("upstream.") :])
        if scope == "fanin":
            if path == "join_key":
                return None
            if path.startswith("upstreams."):
                name, _, rest = path[len("upstreams.") :].partition(".")
                if name not in set(upstreams):
                    return f"'{name}' is not an upstream of this trigger"
                return _upstream_field_problem(rest)
    elif scope == "api":
        if path.startswith("input.") and len(path) > len("input."):
            return None
    elif scope == "window":
        if path in WINDOW or path in WINDOW_TIMES:
            return None
        if path in STORAGE or path in STORAGE_TIMES or path.startswith("metadata."):
            return "a batched trigger launches once per window of objects: use {batch.*} (see batch:)"
    return f"not available for {scope} triggers"


@dataclass(frozen=True)
class Template:
    """A parsed parameter template."""

    source: str
    parts: tuple[str | Field, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        """Parse ``source``; raises ``ValueError`` with the reason on bad syntax."""
        parts: list[str | Field] = []
        for literal, field_name, spec, conversion in string.Formatter().parse(source):
            if literal:
                parts.append(literal)
            if field_name is None:
                continue
            if conversion:
                raise ValueError(f"conversion '!{conversion}' is not supported in {{{field_name}}}")
            path, sep, default = field_name.partition("|")
            path = path.strip()
            if not path:
                raise ValueError("empty placeholder {}")
            is_time = _is_time(path)
            if spec and not is_time:
                raise ValueError(f"a format (':{spec}') is only allowed on time placeholders, not {{{path}}}")
            parts.append(Field(path, spec or "", default if sep else None, is_time))
        return cls(source, tuple(parts))

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(p for p in self.parts if isinstance(p, Field))

    def render(self, lookup: Callable[[str], Any], *, name: str = "") -> str:
        """Render with ``lookup(path)``, which returns the value or raises ``KeyError``."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                value = lookup(part.path)
            except KeyError:
                value = _MISSING
            if value is _MISSING or value is None:
                if part.default is not None:
                    out.append(part.default)
                    continue
                raise ParameterError(
                    f"parameter '{name}': the event has no value for {{{part.path}}}", field=name
                )
            out.append(_format(value, part))
        return "".join(out)


def _format(value: Any, part: Field) -> str:
    if part.is_time:
        if isinstance(value, str):
            value = parse_time(value, part.path)
        if isinstance(value, dt.datetime):
            if part.spec:
                return value.astimezone(dt.UTC).strftime(part.spec)
            return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return str(value)


def dotted(data: Any, path: str) -> Any:
    """Walk ``a.b.0.c`` through dicts and lists; raises ``KeyError`` when a step is missing."""
    node = data
    for step in path.split("."):
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            raise KeyError(path)
    return node


def render_all(templates: Mapping[str, Template], lookup: Callable[[str], Any]) -> dict[str, str]:
    """Render every template; collects all missing values into one :class:`ParameterError`."""
    rendered: dict[str, str] = {}
    problems: list[str] = []
    for key, template in templates.items():
        try:
            rendered[key] = template.render(lookup, name=key)
        except ParameterError as exc:
            problems.append(exc.message)
    if problems:
        raise ParameterError(
            "; ".join(problems), field=",".join(sorted(k for k in templates if k not in rendered))
        )
    return rendered
