"""Time, one way everywhere: aware UTC datetimes inside, RFC 3339 text (``Z``, milliseconds) outside.

- :func:`now` the current time (the one clock seam: services take a ``clock`` defaulting to it);
- :func:`iso` a datetime as RFC 3339 text with ``Z``; :func:`from_iso` back (``None`` passes);
- :func:`parse_time` tolerant RFC 3339 parsing for what arrives from outside (events, backends): any
  number of fraction digits, ``Z`` or an offset, no zone meaning UTC; bad text is an
  :class:`~handlers.core.errors.EventError` naming the field;
- :func:`from_epoch` epoch seconds (CDAP run records) as a datetime; :func:`age_seconds`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from handlers.core.errors import EventError


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    """RFC 3339 UTC text with ``Z``, milliseconds precision."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(value: str | None) -> dt.datetime | None:
    """The datetime of text this project wrote with :func:`iso` (``None`` or empty: ``None``)."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_time(value: Any, field_name: str = "time") -> dt.datetime | None:
    """An aware UTC datetime from RFC 3339 text (with ``Z`` or an offset, any fraction digits)."""
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str):
        raise EventError(f"{field_name} must be an RFC 3339 timestamp, got {value!r}", field=field_name)
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python's parser takes at most 6 fraction digits; Pub/Sub sends 9, Fabric 7.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise EventError(f"{field_name} is not an RFC 3339 timestamp: {value!r}", field=field_name) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def from_epoch(value: Any) -> dt.datetime | None:
    """Epoch seconds as a datetime; ``None`` for anything that is not a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return dt.datetime.fromtimestamp(float(value), dt.UTC)


def age_seconds(when: dt.datetime, at: dt.datetime | None = None) -> float:
    """How old ``when`` is at ``at`` (default: now)."""
    return ((at or now()) - when).total_seconds()
