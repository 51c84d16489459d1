"""Fabric workspaces and items named by display name or by id, resolved through the list APIs.

A pipeline's ``workspace`` and ``item`` options are either GUIDs (used as they are) or display
names, looked up through the paginated list calls of the Fabric REST API::

    GET /v1/workspaces[?continuationToken=]                       Workspaces {value: [Workspace]}
    GET /v1/workspaces/{ws}/items?type={type}[&continuationToken=] Items {value: [Item]}

Pages are followed by ``continuationToken`` (or a ``continuationUri`` on the same host: the bearer
token never leaves the API host). Answers are cached per process for ``ttl_seconds`` (thread-safe:
one lock around the cache; two threads missing at once may both look up, the last one wins).
An absent name is a :class:`NameNotFound`, a name shared by several workspaces or items a
:class:`NameAmbiguous`; both are permanent and name the candidates.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from handlers.core.errors import BackendRejected

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DEFAULT_TTL_SECONDS = 300.0
MAX_PAGES = 50
MAX_CANDIDATES_SHOWN = 10

# (url, params) -> the page's JSON body; the caller authenticates and maps errors.
PageGetter = Callable[[str, Mapping[str, str]], Mapping[str, Any]]


class NameNotFound(BackendRejected):
    """No workspace or item has that display name. Permanent."""


class NameAmbiguous(BackendRejected):
    """Several workspaces or items share that display name. Permanent."""


def is_id(value: str) -> bool:
    return bool(GUID_RE.match(value))


def list_all(get: PageGetter, url: str, params: Mapping[str, str], endpoint: str) -> list[Mapping[str, Any]]:
    """Every ``value`` entry of a paginated list, following continuation tokens."""
    found: list[Mapping[str, Any]] = []
    query = dict(params)
    for _ in range(MAX_PAGES):
        body = get(url, query)
        found.extend(v for v in body.get("value") or [] if isinstance(v, Mapping))
        token, next_uri = body.get("continuationToken"), body.get("continuationUri")
        if token:
            query = {**params, "continuationToken": str(token)}
        elif next_uri and str(next_uri).startswith(endpoint + "/"):
            url, query = str(next_uri), {}
        else:
            break
    return found


def _candidates(entries: list[Mapping[str, Any]]) -> str:
    names = sorted({str(e.get("displayName")) for e in entries})
    shown = ", ".join(repr(n) for n in names[:MAX_CANDIDATES_SHOWN])
    more = len(names) - MAX_CANDIDATES_SHOWN
    return (shown + (f" and {more} more" if more > 0 else "")) or "none"


def pick(entries: list[Mapping[str, Any]], name: str, what: str, where: str = "") -> Mapping[str, Any]:
    """The one entry whose ``displayName`` is ``name``; otherwise a clear error naming candidates."""
    matches = [e for e in entries if e.get("displayName") == name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        folded = [e for e in entries if str(e.get("displayName", "")).casefold() == name.casefold()]
        hint = f" (did you mean {_candidates(folded)}?)" if folded else ""
        raise NameNotFound(
            f"fabric: no {what} named {name!r}{where}{hint}; candidates: {_candidates(entries)}",
            reason="NameNotFound",
        )
    ids = ", ".join(str(e.get("id")) for e in matches)
    raise NameAmbiguous(
        f"fabric: {len(matches)} {what}s{where} are named {name!r} (ids {ids}); name it by id instead",
        reason="NameAmbiguous",
    )


class NameCache:
    """Display name -> entry, per (kind, scope), expiring after ``ttl_seconds``. Thread-safe."""

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, ...], tuple[float, list[Mapping[str, Any]]]] = {}

    def listing(
        self, key: tuple[str, ...], load: Callable[[], list[Mapping[str, Any]]]
    ) -> list[Mapping[str, Any]]:
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and self.clock() < cached[0]:
                return cached[1]
        entries = load()  # outside the lock: a slow list call must not block other lookups
        with self._lock:
            self._entries[key] = (self.clock() + self.ttl_seconds, entries)
        return entries

    def forget(self, key: tuple[str, ...]) -> None:
        with self._lock:
            self._entries.pop(key, None)
