"""A Dataflow Gen2's public parameters, and the configured ones checked against them.

Fabric lists a dataflow's public parameters (``GET /v1/workspaces/{ws}/dataflows/{id}/parameters``,
DataflowParameters: ``{value: [{name, type, isRequired, description, defaultValue}]}``, paginated).
Before anything runs, the parameters a run sends are checked against that list::

    a name the dataflow does not declare       -> problem "unknown parameter"
    a required parameter left out              -> problem "missing required parameter"
    a value that cannot be the declared type   -> problem "not a <type>"

and each value is sent as its declared type (an Integer as a JSON number, a Boolean as true/false),
since the execute body's ``value`` is typed by the dataflow, not by us. Date and time types are
checked for their ISO 8601 form and sent as text, as the spec's examples show.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TYPES = ("String", "Boolean", "Integer", "Number", "DateTime", "DateTimeZone", "Date", "Time", "Duration")
_DURATION_RE = re.compile(r"^-?P(?!$)(\d+(\.\d+)?D)?(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$")
_BOOLS = {"true": True, "false": False}


@dataclass(frozen=True)
class Declared:
    """One public parameter of a dataflow."""

    name: str
    type: str
    required: bool
    default: Any = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Declared:
        return cls(
            name=str(raw.get("name")),
            type=str(raw.get("type") or "String"),
            required=bool(raw.get("isRequired")),
            default=raw.get("defaultValue"),
        )


def cast(value: str, kind: str) -> Any:
    """``value`` as the JSON value of a parameter of type ``kind``; ValueError when it cannot be."""
    text = value.strip()
    if kind == "Boolean":
        if text.lower() not in _BOOLS:
            raise ValueError("not a Boolean (true or false)")
        return _BOOLS[text.lower()]
    if kind == "Integer":
        if not re.fullmatch(r"[+-]?\d+", text) or not -(2**63) <= int(text) < 2**63:
            raise ValueError("not an Integer (a whole number within 64 bits)")
        return int(text)
    if kind == "Number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError("not a Number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("not a finite Number")
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else number
    if kind == "Date":
        dt.date.fromisoformat(_checked(text, r"\d{4}-\d{2}-\d{2}", "a Date (YYYY-MM-DD)"))
    elif kind == "Time":
        dt.time.fromisoformat(_checked(text, r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?", "a Time (hh:mm:ss)"))
    elif kind in ("DateTime", "DateTimeZone"):
        parsed = _datetime(text)
        if kind == "DateTimeZone" and parsed.tzinfo is None:
            raise ValueError("not a DateTimeZone (a date and time with an offset)")
    elif kind == "Duration":
        if not _DURATION_RE.match(text):
            raise ValueError("not a Duration (ISO 8601, like P1DT2H)")
    return value


def _checked(text: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, text):
        raise ValueError(f"not {what}")
    return text


def _datetime(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not a DateTime (ISO 8601, like 2026-01-31T10:00:00Z)") from None


def check(
    declared: list[Declared], configured: Mapping[str, str | None], *, partial: bool = False
) -> list[str]:
    """Every problem of ``configured`` (name -> value, ``None``: known only at run time) against
    ``declared``; ``partial``: some parameters are unknown until run time (skip "missing")."""
    by_name = {d.name: d for d in declared}
    problems = []
    for name, value in configured.items():
        found = by_name.get(name)
        if found is None:
            names = ", ".join(sorted(by_name)) or "none"
            problems.append(f"parameter {name!r}: unknown to the dataflow (it declares: {names})")
            continue
        if value is not None:
            try:
                cast(value, found.type)
            except ValueError as exc:
                problems.append(f"parameter {name!r}: {value!r} is {exc}")
    if not partial:
        for d in declared:
            if d.required and d.name not in configured:
                problems.append(
                    f"parameter {d.name!r}: required by the dataflow ({d.type}) but not configured"
                )
    return problems


def typed(declared: list[Declared], parameters: Mapping[str, str]) -> dict[str, Any]:
    """The run's parameters as their declared types (call after :func:`check` found no problem)."""
    by_name = {d.name: d for d in declared}
    return {
        name: cast(value, by_name[name].type) if name in by_name else value
        for name, value in parameters.items()
    }
