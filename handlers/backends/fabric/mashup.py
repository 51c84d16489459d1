"""The public parameters of a Dataflow Gen2, read from its ``mashup.pq`` as Power Query declares them.

A parameter is a shared query whose ``meta`` record says ``IsParameterQuery = true``::

    shared Region = "emea" meta [IsParameterQuery = true, Type = "Text", IsParameterQueryRequired = true];

Its Power Query type maps to the REST API's parameter type (``Text`` -> ``String``, ``Logical`` ->
``Boolean``, ``Int64`` -> ``Integer``...), its value is the default. ``validate`` checks a
pipeline's configured parameters against the definition kept in the repo with it (offline), and the
local Fabric emulator answers ``GET .../dataflows/{id}/parameters`` from it.
"""

from __future__ import annotations

import re
from typing import Any

_PARAM_RE = re.compile(
    r'shared\s+(?P<name>#"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(?P<value>[^;]+?)\s+meta\s*\[(?P<meta>[^\]]*)\]\s*;',
    re.DOTALL,
)
_FIELD_RE = re.compile(r'(\w+)\s*=\s*("(?:[^"]|"")*"|[^,\]]+)')
PQ_TYPES = {
    "Text": "String",
    "Logical": "Boolean",
    "Int64": "Integer",
    "Number": "Number",
    "Decimal": "Number",
    "Date": "Date",
    "DateTime": "DateTime",
    "DateTimeZone": "DateTimeZone",
    "Time": "Time",
    "Duration": "Duration",
    "Any": "String",
}


def _unquote(text: str) -> str:
    text = text.strip()
    if text.startswith('#"'):
        text = text[1:]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


def _default(value: str, kind: str) -> Any:
    text = value.strip()
    if kind == "Boolean":
        return text.lower() == "true"
    if kind == "Integer":
        try:
            return int(text)
        except ValueError:
            return 0
    if kind == "Number":
        try:
            return float(text)
        except ValueError:
            return 0.0
    return _unquote(text)


def parameters(mashup: str) -> list[dict[str, Any]]:
    """The DataflowParameter entries a mashup document declares, in document order."""
    found = []
    for match in _PARAM_RE.finditer(mashup):
        meta = {k: _unquote(v) for k, v in _FIELD_RE.findall(match.group("meta"))}
        if meta.get("IsParameterQuery", "").lower() != "true":
            continue
        kind = PQ_TYPES.get(meta.get("Type", "Any"), "String")
        found.append(
            {
                "name": _unquote(match.group("name")),
                "description": meta.get("Description", ""),
                "isRequired": meta.get("IsParameterQueryRequired", "").lower() == "true",
                "type": kind,
                "defaultValue": _default(match.group("value"), kind),
            }
        )
    return found
