"""Fabric item definitions kept in the repo, compared with Fabric's copy, and long-running operations.

A definition folder (a pipeline's ``definition`` option, relative to the routing config's folder)
holds the item's definition parts as Fabric's git integration writes them::

    Dataflow       queryMetadata.json  mashup.pq  .platform
    DataPipeline   pipeline-content.json          .platform
    Notebook       notebook-content.py            .platform

``.platform`` names the item type (``metadata.type``) and display name; other hidden files
(``.DS_Store``, ``.gitkeep``) are not parts. Parts travel base64
encoded (``payloadType: InlineBase64``). Two copies are equal when every part is: JSON parts
compared as parsed JSON, text parts with line endings normalized, and ``.platform`` by its
``metadata`` only (Fabric writes its own ``config.logicalId``).

Create, getDefinition and updateDefinition may answer 202 (a long-running operation)::

    202  x-ms-operation-id: {id}  Location: .../v1/operations/{id}  Retry-After: {s}
    GET  /v1/operations/{id}          OperationState {status: NotStarted|Running|Succeeded|Failed, error}
    GET  /v1/operations/{id}/result   the operation's result (the created item, the definition)

:func:`wait` follows one to its end within a time budget, honouring Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from handlers.core import http
from handlers.core.errors import BackendRejected, BackendUnavailable, ConfigError

PLATFORM = ".platform"
ITEM_TYPES = ("Dataflow", "DataPipeline", "Notebook")
REQUIRED_PARTS: Mapping[str, tuple[str, ...]] = {
    "Dataflow": ("queryMetadata.json", "mashup.pq", PLATFORM),
    "DataPipeline": ("pipeline-content.json", PLATFORM),
    "Notebook": (PLATFORM,),
}
COLLECTIONS: Mapping[str, str] = {
    "Dataflow": "dataflows",
    "DataPipeline": "dataPipelines",
    "Notebook": "notebooks",
}
LRO_BUDGET_SECONDS = 300.0
LRO_MAX_WAIT_SECONDS = 30.0
MAX_DEFINITION_BYTES = 10 * 1024 * 1024


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative posix path -> bytes); a clear ConfigError if unusable."""
    if not folder.is_dir():
        raise ConfigError([f"definition: {folder} is not a folder"], source="fabric definition")
    parts: dict[str, bytes] = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.is_file() and (not hidden or path.name == PLATFORM):
            data = path.read_bytes()
            total += len(data)
            parts[path.relative_to(folder).as_posix()] = data
    if total > MAX_DEFINITION_BYTES:
        raise ConfigError(
            [f"definition: {folder} holds more than {MAX_DEFINITION_BYTES} bytes"], source="fabric definition"
        )
    return parts


def platform(parts: Mapping[str, bytes], where: str) -> Mapping[str, Any]:
    """The ``.platform`` part's ``metadata`` ({type, displayName}), checked."""
    raw = parts.get(PLATFORM)
    problems = []
    metadata: Any = None
    if raw is None:
        problems.append(f"definition: {where} has no {PLATFORM} file")
    else:
        try:
            metadata = json.loads(raw).get("metadata")
        except (ValueError, AttributeError):
            problems.append(f"definition: {where}/{PLATFORM} is not a JSON object")
        if not isinstance(metadata, Mapping) or metadata.get("type") not in ITEM_TYPES:
            problems.append(
                f"definition: {where}/{PLATFORM} metadata.type must be one of {', '.join(ITEM_TYPES)}"
            )
        else:
            missing = [p for p in REQUIRED_PARTS[str(metadata["type"])] if p not in parts]
            if missing:
                problems.append(
                    f"definition: {where} lacks {', '.join(missing)} (a {metadata['type']} definition)"
                )
    if problems:
        raise ConfigError(problems, source="fabric definition")
    return dict(metadata)


def encode(parts: Mapping[str, bytes]) -> dict[str, Any]:
    """The ``definition`` object of a create or updateDefinition request."""
    return {
        "parts": [
            {"path": path, "payload": base64.b64encode(data).decode("ascii"), "payloadType": "InlineBase64"}
            for path, data in sorted(parts.items())
        ]
    }


def decode(definition: Any) -> dict[str, bytes]:
    """A definition object's parts (path -> bytes)."""
    parts: dict[str, bytes] = {}
    for part in (definition or {}).get("parts") or []:
        if not isinstance(part, Mapping) or not isinstance(part.get("path"), str):
            continue
        try:
            parts[part["path"]] = base64.b64decode(str(part.get("payload") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise BackendUnavailable(f"fabric getDefinition: part {part['path']!r} is not base64") from None
    return parts


def _normal(path: str, data: bytes) -> Any:
    if path == PLATFORM or path.endswith(".json"):
        try:
            doc = json.loads(data)
        except ValueError:
            return data
        return doc.get("metadata") if path == PLATFORM and isinstance(doc, Mapping) else doc
    return data.replace(b"\r\n", b"\n").rstrip(b"\n")


def differences(repo: Mapping[str, bytes], remote: Mapping[str, bytes]) -> list[str]:
    """The parts that differ, for people: ``mashup.pq changed``, ``x added``, ``y removed``."""
    out = []
    for path in sorted(set(repo) | set(remote)):
        if path not in remote:
            out.append(f"{path} added")
        elif path not in repo:
            out.append(f"{path} removed")
        elif _normal(path, repo[path]) != _normal(path, remote[path]):
            out.append(f"{path} changed")
    return out


# ---------------------------------------------------------------------------------------------
# Long-running operations
# ---------------------------------------------------------------------------------------------
Call = Callable[..., Any]  # (method, url, what=...) -> response, authenticated, errors mapped


def wait(
    call: Call,
    response: Any,
    *,
    what: str,
    want_result: bool,
    budget_seconds: float = LRO_BUDGET_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """The final JSON of a call that may have started a long-running operation (``None`` if none)."""
    if response.status_code != 202:
        return response.json() if response.content else None
    location = response.headers.get("Location") or ""
    operation = response.headers.get("x-ms-operation-id") or location.rstrip("/").rsplit("/", 1)[-1]
    if not location or not operation:
        raise BackendUnavailable(f"{what}: 202 without an operation Location")
    deadline = clock() + budget_seconds
    delay = http.retry_after_seconds(response.headers)
    while True:
        sleep(min(1.0 if delay is None else delay, LRO_MAX_WAIT_SECONDS))
        answer = call("GET", location, what=f"{what} (operation {operation})")
        state = answer.json() if answer.content else {}
        status = state.get("status")
        if status == "Succeeded":
            if not want_result:
                return None
            result_url = answer.headers.get("Location") or location.rstrip("/") + "/result"
            result = call("GET", result_url, what=f"{what} (operation result)")
            return result.json() if result.content else None
        if status == "Failed":
            error = state.get("error") or {}
            raise BackendRejected(
                f"{what}: operation {operation} failed: {error.get('errorCode', 'unknown')}: {error.get('message', '')}",
                reason=str(error.get("errorCode") or "OperationFailed"),
            )
        if clock() >= deadline:
            raise BackendUnavailable(
                f"{what}: operation {operation} still {status} after {budget_seconds:.0f}s"
            )
        delay = http.retry_after_seconds(answer.headers)
