"""The REST trigger API (the ``api`` HTTP function), thin over :mod:`handlers.entry.manual`.

::

    POST /runs                 {"pipeline": ..., "parameters": {...}}  + Idempotency-Key header
                               -> 202 {"run_key", "status_url", "state", "result"}; same key -> same run
    GET  /runs/{run_key}       -> 200 {"run": <ledger record>, "live": <backend state or null>}
    POST /runs/{run_key}:cancel-> 202 {"run_key", "state"}
    GET  /pipelines            -> 200 {"pipelines": [{name, backend, inputs, launchable, ...}]}
    POST /replays              {"trigger", "bucket" + "prefix"/"glob"/"since"/"until" | "subscription",
                                "dry_run", "rerun", "rate", "max_events"}
                               -> 200 the replay's summary (``complete`` false: POST again to go on)
    GET  /replays/{trigger}/{replay_id} -> 200 its checkpoint: progress so far, complete or not

Every error is JSON ``{"error": {"code", "status", "message", "details": [{"field", "problem"}]}}``.
Bodies over 64 KiB are refused (413). The contract is committed as ``handlers/schemas/api.openapi.yaml``.

Cloud Functions IAM (``--no-allow-unauthenticated``) is the first lock. ``API_AUDIENCE`` turns on a
second one: the ``Authorization: Bearer`` Google-signed ID token must verify for that audience, and
its ``email`` must be in ``API_ALLOWED_CALLERS`` (comma-separated) when that is set.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any

from handlers.core import http, logs
from handlers.core.errors import BackendRejected, NotFound, PipelineError, RetryableError
from handlers.core.times import parse_time
from handlers.entry.manual import (
    IdempotencyConflict,
    InvalidRequest,
    cancel_run,
    describe,
    run_status,
    start_run,
)
from handlers.launch.runtime import Runtime
from handlers.model.events import invalid_text_path
from handlers.route.identity import RunKey

MAX_BODY_BYTES = 64 * 1024
_RUN_PATH = re.compile(rf"^/runs/(?P<key>{RunKey.PATTERN})(?P<cancel>:cancel)?$")
_REPLAY_PATH = re.compile(r"^/replays/(?P<trigger>[a-z][a-z0-9_-]{0,62})/(?P<id>[0-9a-f]{16})$")
REPLAY_FIELDS = {
    "trigger": str,
    "bucket": str,
    "prefix": str,
    "glob": str,
    "since": str,
    "until": str,
    "subscription": str,
    "dry_run": bool,
    "rerun": bool,
    "rate": str,
    "max_events": int,
}
REPLAY_MAX_EVENTS = 1000  # per request by default: a Cloud Function request has a time limit
REPLAY_ITEMS_SHOWN = 100  # items listed per outcome in the answer (the counts are whole)
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
DEFAULT_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


class ApiError(Exception):
    def __init__(
        self,
        code: int,
        status: str,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "status": self.status, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> tuple[str, int, dict[str, str]]:
    return (
        json.dumps(body, ensure_ascii=False, default=str),
        status,
        {"Content-Type": "application/json", **(headers or {})},
    )


CERTS_TTL_SECONDS = 3600.0  # Google rotates its signing keys over days; an unknown key id refetches
_certs_lock = threading.Lock()
_certs: dict[str, tuple[float, dict[str, str]]] = {}  # certs URL -> (fetched at, key id -> PEM)
_open_api_warned = False


def _google_certs(url: str, *, refresh: bool = False) -> dict[str, str]:
    """Google's ID-token signing certificates, fetched once per hour per process (not per request).
    Unreachable or unreadable certificates are a 503 (try again), never a 401 (your token is bad)."""
    import requests

    with _certs_lock:
        cached = _certs.get(url)
        if cached and not refresh and time.monotonic() - cached[0] < CERTS_TTL_SECONDS:
            return cached[1]
        try:  # no redirect followed, the body read capped (handlers.core.http)
            certs = http.send_json(requests, "GET", url, what="ID-token certificates")
        except PipelineError as exc:
            raise ApiError(
                503,
                "UNAVAILABLE",
                f"the ID-token certificates could not be fetched ({type(exc).__name__}): try again",
                headers={"Retry-After": "5"},
            ) from None
        if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
            raise ApiError(503, "UNAVAILABLE", "the ID-token certificates are not readable: try again")
        _certs[url] = (time.monotonic(), certs)
        return certs


def verify_caller(authorization: str | None) -> str | None:
    """Verify the Google-signed ID token when ``API_AUDIENCE`` is set; returns the caller's email."""
    global _open_api_warned
    audience = os.environ.get("API_AUDIENCE")
    if not audience:
        return None
    allowed = {e.strip().lower() for e in os.environ.get("API_ALLOWED_CALLERS", "").split(",") if e.strip()}
    if not allowed and not _open_api_warned:
        _open_api_warned = True
        logs.warning(
            "the API verifies ID tokens but API_ALLOWED_CALLERS is empty: every caller with a Google ID "
            "token for this audience may launch pipelines"
        )
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(
            401,
            "UNAUTHENTICATED",
            "an ID token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    from google.auth import exceptions as gexc
    from google.auth import jwt

    token = authorization[len("Bearer ") :]
    certs_url = os.environ.get("API_ID_TOKEN_CERTS_URL", DEFAULT_CERTS_URL)
    try:
        header = jwt.decode_header(token)
    except (ValueError, gexc.GoogleAuthError) as exc:
        raise ApiError(401, "UNAUTHENTICATED", f"invalid ID token ({type(exc).__name__})") from None
    certs = _google_certs(certs_url)
    if header.get("kid") not in certs:  # a key Google rotated in since the last fetch
        certs = _google_certs(certs_url, refresh=True)
    try:
        claims = jwt.decode(token, certs=certs, audience=audience, clock_skew_in_seconds=10)
    except (ValueError, gexc.GoogleAuthError) as exc:
        raise ApiError(401, "UNAUTHENTICATED", f"invalid ID token ({type(exc).__name__})") from None
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise ApiError(401, "UNAUTHENTICATED", "the ID token was not issued by Google")
    email = claims.get("email")
    if allowed and (not email or not claims.get("email_verified") or email.lower() not in allowed):
        raise ApiError(403, "PERMISSION_DENIED", "this caller may not use the API")
    return str(email) if email else None


def _not_json(constant: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser accepts them: a parameter "nan" or "inf")."""
    raise ValueError(f"{constant} is not JSON")


def _read_json(request: Any) -> dict[str, Any]:
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is over {MAX_BODY_BYTES} bytes")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"null", parse_constant=_not_json)
    except RecursionError as exc:  # nesting deeper than the parser goes: an HTTP 500 before
        raise ApiError(
            400,
            "INVALID_ARGUMENT",
            "the body is not JSON",
            [{"field": "body", "problem": "nested too deeply"}],
        ) from exc
    except ValueError as exc:
        raise ApiError(
            400, "INVALID_ARGUMENT", "the body is not JSON", [{"field": "body", "problem": "not valid JSON"}]
        ) from exc
    where = invalid_text_path(body)
    if where is not None:  # a lone surrogate (a "\ud800" escape): no ledger record could hold it
        raise ApiError(
            400,
            "INVALID_ARGUMENT",
            "the body holds text that is not valid Unicode",
            [{"field": where, "problem": "not valid Unicode (a lone surrogate)"}],
        )
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "INVALID_ARGUMENT",
            "the body must be a JSON object",
            [{"field": "body", "problem": "must be a JSON object"}],
        )
    return body


def _post_runs(request: Any, runtime: Runtime, caller: str | None) -> tuple[str, int, dict[str, str]]:
    body = _read_json(request)
    details = []
    pipeline = body.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline:
        details.append({"field": "pipeline", "problem": "is required (a configured pipeline name)"})
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        details.append({"field": "parameters", "problem": "must be an object"})
    for key in body:
        if key not in ("pipeline", "parameters"):
            details.append({"field": key, "problem": "unknown field"})
    if details:
        raise ApiError(400, "INVALID_ARGUMENT", "invalid request", details)
    key = request.headers.get("Idempotency-Key", "")
    outcome, run = start_run(runtime, str(pipeline), parameters, key, caller=caller)
    run_key = outcome.run_key or ""
    return _json(
        202,
        {
            "run_key": run_key,
            "status_url": f"/runs/{run_key}",
            "result": outcome.result,
            "state": run.state if run else None,
            "job_id": outcome.job_id,
            "reason": outcome.reason,
        },
        {"Location": f"/runs/{run_key}"},
    )


def _post_replays(request: Any, runtime: Runtime, caller: str | None) -> tuple[str, int, dict[str, str]]:
    # Only this route needs the replay module (and the windows it reaches): kept out of cold start.
    from handlers.entry.replay import Replay, ReplayError, ReplaySpec, parse_rate

    body = _read_json(request)
    details = []
    for key, value in body.items():
        want = REPLAY_FIELDS.get(key)
        if want is None:
            details.append({"field": key, "problem": "unknown field"})
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            details.append({"field": key, "problem": f"must be a {want.__name__}"})
    if not isinstance(body.get("trigger"), str):
        details.append({"field": "trigger", "problem": "is required (a configured trigger name)"})
    max_events = body.get("max_events", REPLAY_MAX_EVENTS)
    if isinstance(max_events, int) and not 1 <= max_events <= 100_000:
        details.append({"field": "max_events", "problem": "must be 1 to 100000"})
    times: dict[str, Any] = {}
    for name in ("since", "until"):
        if isinstance(body.get(name), str):
            try:
                times[name] = parse_time(body[name], name)
            except PipelineError as exc:
                details.append({"field": name, "problem": exc.message})
    if details:
        raise ApiError(400, "INVALID_ARGUMENT", "invalid replay request", details)
    try:
        spec = ReplaySpec(
            trigger=body["trigger"],
            bucket=body.get("bucket"),
            prefix=body.get("prefix"),
            glob=body.get("glob"),
            since=times.get("since"),
            until=times.get("until"),
            subscription=body.get("subscription"),
            rerun=bool(body.get("rerun")),
        )
        rate = parse_rate(body["rate"]) if "rate" in body else None
        replay = Replay(runtime, spec, dry_run=bool(body.get("dry_run")), rate=rate, limit=max_events)
    except ReplayError as exc:
        field = str(exc.context().get("field") or "body")
        raise ApiError(
            400, "INVALID_ARGUMENT", exc.message, [{"field": field, "problem": exc.message}]
        ) from None
    logs.info("replay requested through the API", replay_id=spec.replay_id, trigger=spec.trigger)
    summary = replay.run().to_json()
    for outcome in ("launched", "joined", "skipped", "failed", "unmatched"):
        if len(summary[outcome]) > REPLAY_ITEMS_SHOWN:
            summary[outcome] = summary[outcome][:REPLAY_ITEMS_SHOWN]
            summary["truncated"] = True
    status_url = f"/replays/{spec.trigger}/{spec.replay_id}"
    return _json(200, {**summary, "status_url": status_url}, {"Location": status_url})


def handle(request: Any, runtime: Runtime) -> tuple[str, int, dict[str, str]]:
    """Serve one API request; every answer is JSON, and every refusal is logged with its reason."""
    path = request.path.rstrip("/") or "/"
    method = request.method
    caller: str | None = None
    try:
        caller = verify_caller(request.headers.get("Authorization"))
        with logs.bind(caller=caller):
            return _route(request, runtime, path, method, caller)
    except ApiError as exc:
        error = exc
    except InvalidRequest as exc:
        details = [{"field": f, "problem": p} for f, p in exc.problems.items()]
        error = ApiError(400, "INVALID_ARGUMENT", "invalid parameters", details)
    except IdempotencyConflict as exc:
        error = ApiError(409, "ABORTED", exc.message)
    except NotFound as exc:
        error = ApiError(404, "NOT_FOUND", exc.message)
    except BackendRejected as exc:
        code = exc.status if exc.status in (400, 403, 409) else 502
        error = ApiError(code, exc.reason or "FAILED_PRECONDITION", exc.message)
    except RetryableError as exc:
        retry_after = str(int(exc.retry_after or 5))
        error = ApiError(503, "UNAVAILABLE", exc.message, headers={"Retry-After": retry_after})
    except PipelineError as exc:
        error = ApiError(400, "INVALID_ARGUMENT", exc.message)
    with logs.bind(caller=caller):
        (logs.warning if error.code < 500 else logs.error)(
            "API request refused",
            method=method,
            path=path,
            status=error.code,
            reason=error.status,
            error_message=error.message,
            details=error.details or None,
        )
    return _json(error.code, error.body(), error.headers)


def _route(
    request: Any, runtime: Runtime, path: str, method: str, caller: str | None
) -> tuple[str, int, dict[str, str]]:
    if path == "/runs":
        if method != "POST":
            raise ApiError(405, "METHOD_NOT_ALLOWED", "use POST /runs")
        return _post_runs(request, runtime, caller)
    if path == "/replays":
        if method != "POST":
            raise ApiError(405, "METHOD_NOT_ALLOWED", "use POST /replays")
        return _post_replays(request, runtime, caller)
    replay = _REPLAY_PATH.match(path)
    if replay:
        if method != "GET":
            raise ApiError(405, "METHOD_NOT_ALLOWED", "use GET /replays/{trigger}/{replay_id}")
        from handlers.entry.replay import describe_checkpoint  # only this route: kept out of cold start

        doc = describe_checkpoint(runtime, replay.group("trigger"), replay.group("id"))
        if doc is None:
            raise ApiError(404, "NOT_FOUND", "no such replay (a dry run leaves no checkpoint)")
        return _json(200, doc)
    if path == "/pipelines":
        if method != "GET":
            raise ApiError(405, "METHOD_NOT_ALLOWED", "use GET /pipelines")
        return _json(200, {"pipelines": [describe(p) for p in runtime.config.pipelines.values()]})
    match = _RUN_PATH.match(path)
    if match:
        key = match.group("key")
        if match.group("cancel"):
            if method != "POST":
                raise ApiError(405, "METHOD_NOT_ALLOWED", "use POST /runs/{key}:cancel")
            run = cancel_run(runtime, key)
            logs.info("cancel requested through the API", run_key=key)
            return _json(202, {"run_key": key, "state": run.state, "cancel_requested": True})
        if method != "GET":
            raise ApiError(405, "METHOD_NOT_ALLOWED", "use GET /runs/{key}")
        return _json(200, run_status(runtime, key))
    raise ApiError(404, "NOT_FOUND", f"no route {method} {path}")
