"""Shared plumbing for the local backend emulators (Dataflow, CDAP, Fabric).

Every emulator in ``deploy/local`` is a Flask app plus an :class:`EmulatorState` subclass. This module
holds what they have in common, so each emulator file only describes its own protocol. The API below
is small on purpose and meant to stay stable:

``utc_timestamp`` / ``rfc3339`` / ``entry_at``
    Timestamps with any number of fraction digits; the entry of a time-ordered job timeline
    reached at a given emulator time (every emulator's job state machine reads it).

``ScaledClock``
    The emulator clock: ``now()`` is wall time plus the accumulated ``advance(seconds)``, with the
    time elapsed since start scaled by ``speed`` (``set_speed(f)``). Job state machines read this
    clock, never ``time.time()``, so tests can move time forward instantly.

``FaultRule`` / ``FaultRules``
    Fault injection. ``FaultRules.add(body)`` parses the common rule shape
    ``{"operation", "match", "status", "times", "retry_after", "latency_ms", "after_effect",
    "message"}``; ``FaultRules.run(operation, attrs, effect, render_error)`` is what a route calls:
    it finds the first rule whose ``operation`` (or ``*``) and ``match`` fit ``attrs`` (a ``match``
    value that is a dict must be a subset of the attr dict; anything else compares equal), sleeps the
    rule's latency, then either calls ``effect()`` normally, or answers ``render_error(rule)``
    (calling ``effect()`` first when ``after_effect`` is set: the "lost response" case). A
    ``Retry-After`` header is added when the rule has ``retry_after``.

``RequestLog``
    Thread-safe list of recorded protocol requests (``record``, ``list``, ``clear``).

``EmulatorState``
    Base class of an emulator's state: ``lock`` (an RLock guarding all mutable state), ``clock``,
    ``faults``, ``requests``. Subclasses extend ``reset()`` (forget jobs), ``close()`` (stop
    background threads) and ``after_clock_change()`` (react at once to a clock move).

``install_control_api(app, state)`` / ``emulator_app(name, state, protocol_routes, control_routes)``
    ``install_control_api`` records every request outside ``/_emulator/`` into ``state.requests``
    and adds the common control routes: ``POST /_emulator/reset``, ``GET /_emulator/requests``,
    ``GET|POST|DELETE /_emulator/faults``, ``GET|POST /_emulator/clock`` (``{"advance_seconds": N}``,
    ``{"speed": F}``). The state is stored in ``app.extensions["emulator_state"]``; ``state_of(app)``
    returns it. ``emulator_app`` is what every ``create_app`` returns: a Flask app with the control
    API, then ``protocol_routes(app)`` and ``control_routes(app, state)``.

``install_registry_routes(app, state, name, load=, store=, registered=, ...)``
    ``GET|POST /_emulator/<name>`` for what an emulator lets tests register (templates, apps,
    instances, items, clients): GET lists ``registered()``, POST stores each entry of ``load(body)``;
    both answer ``{name: [entry.to_json(), ...]}``, a refused body answers 400.
    ``load_bodies(source, key)`` reads such entries from a YAML/JSON file, a list, one object or
    ``{key: [...]}``; ``reject_unknown_fields(body, known, what)`` refuses unknown keys.

``install_route_errors(app, render)`` / ``google_route_error(code)``
    Unknown paths (404) and refused methods (405) are answered by ``render(code)``;
    ``google_route_error`` is Google's JSON for both.

``google_error(code, message, status=None, details=None, headers=None)``
    A Flask response carrying Google's error JSON ``{"error": {"code", "message", "status"}}``;
    ``GOOGLE_STATUS_BY_CODE`` maps HTTP codes to canonical status names.

``ProtocolError`` / ``guarded(action)`` / ``peek_json_body()`` / ``encode_page_token`` / ``decode_page_token``
    A protocol route raises a ``ProtocolError`` subclass whose ``response()`` is the protocol's own
    error; ``guarded`` runs a route's action, answering such an error, passing a Response through
    and answering anything else as JSON. ``peek_json_body`` is the body as a dict for fault
    ``match`` attributes (``{}`` when it is not one); the page tokens are opaque ``emu:<n>`` tokens.

``ensure_loopback(host)`` / ``start_server(app, host, port, access_log=False)`` / ``serve_app(...)`` / ``run_cli(...)``
    ``start_server`` refuses non-loopback hosts, runs a threaded werkzeug server in a daemon thread
    and returns a :class:`ServerHandle` (``url``, ``host``, ``port``, ``app``, ``app_state``,
    ``shutdown()``, usable as a context manager). ``serve_app(create_app, host, port, **kwargs)`` is
    the body of every emulator's ``serve()``. ``run_cli`` implements the standard
    ``--host/--port [--access-log] ... --speed F`` command line: it prints one JSON line
    ``{"ready": true, "url": ..., "port": ...}`` once the socket is listening and serves until
    SIGINT/SIGTERM.

``built_once(build)``
    Decorator for a costly shared resource (bundled schemas): built on first use, under a lock.
"""

from __future__ import annotations

import argparse
import base64
import functools
import ipaddress
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

CONTROL_PREFIX = "/_emulator/"
STATE_KEY = "emulator_state"

GOOGLE_STATUS_BY_CODE: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


T = TypeVar("T")


def built_once(build: Callable[[], T]) -> Callable[[], T]:
    """Decorator: ``build()`` runs on the first call only (thread-safely, retried if it raised); every
    call returns that value. For costly shared resources such as bundled schemas."""
    lock = threading.Lock()
    built: list[T] = []

    @functools.wraps(build)
    def get() -> T:
        with lock:
            if not built:
                built.append(build())
            return built[0]

    return get


# --------------------------------------------------------------------------------------------- clock


class ScaledClock:
    """Emulator time in epoch seconds: start + (wall elapsed) * speed + accumulated advances."""

    def __init__(self, speed: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._anchor_wall = time.time()
        self._anchor_emu = self._anchor_wall
        self._speed = float(speed)

    def now(self) -> float:
        with self._lock:
            return self._anchor_emu + (time.time() - self._anchor_wall) * self._speed

    @property
    def speed(self) -> float:
        return self._speed

    def advance(self, seconds: float) -> float:
        """Move the clock forward (never backward) and return the new emulator time."""
        if seconds < 0:
            raise ValueError("advance_seconds must be >= 0")
        with self._lock:
            self._anchor_emu += float(seconds)
        return self.now()

    def set_speed(self, speed: float) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        with self._lock:
            wall = time.time()
            self._anchor_emu += (wall - self._anchor_wall) * self._speed
            self._anchor_wall = wall
            self._speed = float(speed)


def utc_timestamp(epoch_seconds: float, *, digits: int = 6, suffix: str = "Z") -> str:
    """UTC ``YYYY-MM-DDTHH:MM:SS.<digits fraction digits><suffix>``."""
    scale = 10**digits
    whole = int(epoch_seconds)
    fraction = round((epoch_seconds - whole) * scale)
    if fraction >= scale:
        whole, fraction = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:0{digits}d}{suffix}"


def rfc3339(epoch_seconds: float) -> str:
    """UTC RFC 3339 timestamp with microseconds and a ``Z`` suffix."""
    return utc_timestamp(epoch_seconds)


class Timed(Protocol):
    """A timeline entry: something that takes effect at emulator time ``at``."""

    at: float


E = TypeVar("E", bound=Timed)


def entry_at(timeline: Sequence[E], now: float) -> E:
    """The last entry of a time-ordered ``timeline`` already reached at ``now`` (else the first)."""
    current = timeline[0]
    for entry in timeline:
        if entry.at <= now:
            current = entry
    return current


# ------------------------------------------------------------------------------------------- loading

BodiesSource = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Mapping[str, Any]


def load_bodies(source: BodiesSource, key: str) -> list[Any]:
    """The registration bodies in ``source``: a YAML/JSON file path, a list of bodies, one body, or
    ``{key: [...]}``; ``key`` is the plural noun (``"templates"``, ``"apps"``)."""
    loaded: Any = source
    if isinstance(source, str | os.PathLike):
        import yaml  # lazy: only needed for registration files

        loaded = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or []
    if isinstance(loaded, Mapping):
        loaded = loaded.get(key, [loaded])
    if not isinstance(loaded, list | tuple):
        raise ValueError(f"{key} must be a list of {key[:-1]} objects")
    return list(loaded)


def reject_unknown_fields(body: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ``ValueError("unknown <what> field(s): a, b")`` when ``body`` has keys outside ``known``."""
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} field(s): {', '.join(unknown)}")


# -------------------------------------------------------------------------------------------- faults


@dataclass
class FaultRule:
    """One fault rule; see the module docstring for the meaning of each field."""

    operation: str
    match: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    times: int = 1
    retry_after: float | None = None
    latency_ms: int = 0
    after_effect: bool = False
    message: str | None = None
    fired: int = 0

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> FaultRule:
        known = {
            "operation",
            "match",
            "status",
            "times",
            "retry_after",
            "latency_ms",
            "after_effect",
            "message",
        }
        reject_unknown_fields(body, known, "fault rule")
        operation = body.get("operation")
        if not isinstance(operation, str) or not operation:
            raise ValueError("fault rule needs an 'operation' (an operation name or '*')")
        match = body.get("match") or {}
        if not isinstance(match, dict):
            raise ValueError("'match' must be an object")
        status = body.get("status")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            raise ValueError("'status' must be an HTTP status code")
        times = body.get("times", 1)
        if not isinstance(times, int) or (times < 1 and times != -1):
            raise ValueError("'times' must be a positive integer or -1 (forever)")
        retry_after = body.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, int | float):
            raise ValueError("'retry_after' must be a number of seconds")
        latency_ms = body.get("latency_ms", 0) or 0
        if not isinstance(latency_ms, int | float) or latency_ms < 0:
            raise ValueError("'latency_ms' must be a non-negative number")
        if status is None and not latency_ms:
            raise ValueError("a fault rule needs a 'status', a 'latency_ms', or both")
        return cls(
            operation=operation,
            match=match,
            status=status,
            times=times,
            retry_after=retry_after,
            latency_ms=int(latency_ms),
            after_effect=bool(body.get("after_effect", False)),
            message=body.get("message"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "match": self.match,
            "status": self.status,
            "times": self.times,
            "retry_after": self.retry_after,
            "latency_ms": self.latency_ms,
            "after_effect": self.after_effect,
            "message": self.message,
            "fired": self.fired,
        }

    def matches(self, operation: str, attrs: Mapping[str, Any]) -> bool:
        if self.operation not in ("*", operation):
            return False
        return _subset_match(self.match, attrs)


def _subset_match(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    for key, want in expected.items():
        if key not in actual:
            return False
        got = actual[key]
        if isinstance(want, dict):
            if not isinstance(got, Mapping) or not _subset_match(want, got):
                return False
        elif want != got:
            return False
    return True


class FaultRules:
    """Ordered, thread-safe list of :class:`FaultRule`; the first matching live rule fires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(self, body: Mapping[str, Any]) -> FaultRule:
        rule = FaultRule.from_json(body)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.to_json() for rule in self._rules]

    def take(self, operation: str, attrs: Mapping[str, Any]) -> FaultRule | None:
        """Consume one firing of the first rule matching ``operation``/``attrs``, if any."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(operation, attrs):
                    rule.fired += 1
                    if rule.times != -1:
                        rule.times -= 1
                        if rule.times == 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def run(
        self,
        operation: str,
        attrs: Mapping[str, Any],
        effect: Callable[[], Response],
        render_error: Callable[[FaultRule], Response],
    ) -> Response:
        """Answer a protocol request, applying the first matching fault rule around ``effect``."""
        rule = self.take(operation, attrs)
        if rule is None:
            return effect()
        if rule.latency_ms:
            time.sleep(rule.latency_ms / 1000.0)
        if rule.status is None:
            return effect()
        if rule.after_effect:
            effect()
        response = render_error(rule)
        if rule.retry_after is not None:
            retry_after = rule.retry_after
            response.headers["Retry-After"] = str(
                int(retry_after) if retry_after == int(retry_after) else retry_after
            )
        return response


# ------------------------------------------------------------------------------------ request log


class RequestLog:
    """Thread-safe record of protocol requests, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# ----------------------------------------------------------------------------------------- state


class GoogleTokens:
    """Google OAuth 2.0 access tokens, as the Google-fronted emulators (Dataflow, Data Fusion) see them.

    Off by default (every caller is accepted, as tests with anonymous credentials need). Once
    enforced, protocol calls must carry ``Authorization: Bearer <token>`` with a token this emulator
    issued from ``POST /oauth2/token`` (the refresh-token grant google-auth's user credentials use)
    and that has not expired on the emulator clock; others answer 401, which makes google-auth's
    ``AuthorizedSession`` refresh the token and retry: the path an expired token takes in production.
    """

    REFRESH_TOKEN = "local-refresh-token"

    def __init__(self, clock: ScaledClock) -> None:
        self.clock = clock
        self.enforced = False
        self.lifetime_seconds = 3600.0
        self._tokens: dict[str, float] = {}
        self._issued = 0
        self._lock = threading.Lock()

    def issue(self) -> tuple[str, float]:
        with self._lock:
            self._issued += 1
            token = f"ya29.local-{self._issued}"
            self._tokens[token] = self.clock.now() + self.lifetime_seconds
            return token, self.lifetime_seconds

    def accepts(self, authorization: str | None) -> bool:
        if not self.enforced:
            return True
        token = (authorization or "").removeprefix("Bearer ").strip()
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and self.clock.now() < expiry

    def expire_all(self) -> None:
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    def reset(self) -> None:
        with self._lock:
            self.enforced = False
            self.lifetime_seconds = 3600.0
            self._tokens.clear()

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enforce": self.enforced,
                "lifetime_seconds": self.lifetime_seconds,
                "issued": self._issued,
            }


class Outbox:
    """What an emulator sends on its own (status events): every record kept for its control API,
    and the deliverable ones sent in order by one background worker. :meth:`clear` forgets the
    records and drops what is still queued. Subclasses write :meth:`_deliver` (updating the record
    under ``self._lock``)."""

    def __init__(self, thread_name: str) -> None:
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._generation = 0
        self._queue: queue.Queue[tuple[int, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=thread_name, daemon=True)
        self._thread.start()

    def _enqueue(self, record: dict[str, Any], deliverable: bool) -> None:
        with self._lock:
            self._records.append(record)
            generation = self._generation
        if deliverable:
            self._queue.put((generation, record))

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._generation += 1

    def close(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            generation, record = item
            with self._lock:
                if generation != self._generation:
                    continue
            self._deliver(record)

    def _deliver(self, record: dict[str, Any]) -> None:
        raise NotImplementedError


class EmulatorState:
    """Common mutable state of an emulator. Subclass it and extend the hooks."""

    def __init__(self, *, speed: float = 1.0) -> None:
        self.lock = threading.RLock()
        self.clock = ScaledClock(speed)
        self.faults = FaultRules()
        self.requests = RequestLog()
        self.google_tokens = GoogleTokens(self.clock)

    def reset(self) -> None:
        """Forget faults, recorded requests and issued tokens (subclasses also forget their jobs)."""
        self.faults.clear()
        self.requests.clear()
        self.google_tokens.reset()

    def close(self) -> None:
        """Stop background threads; called by :meth:`ServerHandle.shutdown`."""

    def after_clock_change(self) -> None:
        """Called after ``/_emulator/clock`` moved the clock or changed its speed."""


def state_of(app: Flask) -> Any:
    return app.extensions[STATE_KEY]


# ----------------------------------------------------------------------------------- responses


def google_error(
    code: int,
    message: str,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Google's JSON error body ``{"error": {"code", "message", "status"[, "details"]}}``."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or GOOGLE_STATUS_BY_CODE.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    response = jsonify({"error": error})
    response.status_code = code
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def google_unauthenticated() -> Response:
    """The 401 a Google API answers a call without a valid bearer token (its own wording)."""
    return google_error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
        "other valid authentication credential.",
        "UNAUTHENTICATED",
    )


def google_route_error(code: int) -> Response:
    """Google's JSON answer to a path no route serves (404) or a method its route refuses (405)."""
    if code == 404:
        return google_error(404, f"The requested URL {request.path} was not found on this server.")
    return google_error(405, f"Method {request.method} is not allowed for {request.path}.", "UNIMPLEMENTED")


def install_route_errors(app: Flask, render: Callable[[int], Response]) -> None:
    """Answer an unknown path (404) and a method its route does not take (405) with ``render(code)``."""
    app.register_error_handler(404, lambda _: render(404))
    app.register_error_handler(405, lambda _: render(405))


def control_error(message: str, code: int = 400) -> Response:
    response = jsonify({"error": message})
    response.status_code = code
    return response


def json_body() -> Any:
    """The request body parsed as JSON, ``{}`` when empty; raises ``ValueError`` when malformed."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"request body is not valid JSON: {exc}") from exc


def peek_json_body() -> Mapping[str, Any]:
    """The request body when it is a JSON object, else ``{}``; never raises (for fault ``match`` attrs)."""
    try:
        body = json_body()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class ProtocolError(Exception):
    """An error a protocol route answers in its protocol's own shape (Google JSON, CDAP text...)."""

    def response(self) -> Response:
        raise NotImplementedError


def guarded(action: Callable[[], Any]) -> Response:
    """Run a protocol route's ``action``: a Response passes through, another result is answered as
    JSON, a :class:`ProtocolError` answers its own ``response()``."""
    try:
        result = action()
    except ProtocolError as exc:
        return exc.response()
    return result if isinstance(result, Response) else jsonify(result)


def encode_page_token(position: int) -> str:
    """The emulators' opaque page token for ``position`` (an offset or a sequence number)."""
    return base64.urlsafe_b64encode(f"emu:{position}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int | None:
    """The position an :func:`encode_page_token` token carries; None when ``token`` is not one."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if text.startswith("emu:"):
            return int(text[4:])
    except (ValueError, UnicodeDecodeError):
        pass
    return None


# ----------------------------------------------------------------------------------- control API


def _recorded_body() -> Any:
    raw = request.get_data(cache=True)
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def install_control_api(app: Flask, state: EmulatorState) -> None:
    """Attach ``state`` to ``app``, record protocol requests and add the common control routes."""
    app.extensions[STATE_KEY] = state

    @app.after_request
    def _record(response: Response) -> Response:
        if not request.path.startswith(CONTROL_PREFIX):
            state.requests.record(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.args.to_dict(),
                    "headers": dict(request.headers.items()),
                    "body": _recorded_body(),
                    "status": response.status_code,
                }
            )
        return response

    @app.post("/_emulator/reset")
    def _reset() -> Response:
        state.reset()
        return jsonify({"reset": True})

    @app.get("/_emulator/requests")
    def _requests() -> Response:
        return jsonify({"requests": state.requests.list()})

    @app.get("/_emulator/faults")
    def _faults_list() -> Response:
        return jsonify({"faults": state.faults.list()})

    @app.post("/_emulator/faults")
    def _faults_add() -> Response:
        try:
            body = json_body()
            if not isinstance(body, dict):
                raise ValueError("fault rule must be a JSON object")
            rule = state.faults.add(body)
        except ValueError as exc:
            return control_error(str(exc))
        return jsonify({"fault": rule.to_json()})

    @app.delete("/_emulator/faults")
    def _faults_clear() -> Response:
        state.faults.clear()
        return jsonify({"faults": []})

    @app.route("/_emulator/clock", methods=["GET", "POST"])
    def _clock() -> Response:
        if request.method == "POST":
            try:
                _apply_clock_change(state.clock, json_body())
            except (ValueError, TypeError) as exc:
                return control_error(str(exc))
            state.after_clock_change()
        now = state.clock.now()
        return jsonify({"now": rfc3339(now), "epoch_seconds": now, "speed": state.clock.speed})


def install_google_tokens(app: Flask, state: EmulatorState, unauthenticated: Callable[[], Response]) -> None:
    """Serve ``POST /oauth2/token`` and, while enforced, refuse protocol calls without a live token.

    Control: ``POST /_emulator/google-tokens`` ``{"enforce": bool, "lifetime_seconds": N, "expire": true}``
    (``expire`` ends every token issued so far). ``unauthenticated()`` renders the emulator's 401.
    """
    tokens = state.google_tokens

    @app.before_request
    def _check_token() -> Response | None:
        if request.path.startswith(CONTROL_PREFIX) or request.path == "/oauth2/token":
            return None
        return None if tokens.accepts(request.headers.get("Authorization")) else unauthenticated()

    @app.post("/oauth2/token")
    def _token() -> Response:
        form = request.form
        if (
            form.get("grant_type") != "refresh_token"
            or form.get("refresh_token") != GoogleTokens.REFRESH_TOKEN
        ):
            response = jsonify({"error": "invalid_grant", "error_description": "Bad Request"})
            response.status_code = 400
            return response
        token, lifetime = tokens.issue()
        return jsonify(
            {
                "access_token": token,
                "expires_in": int(lifetime),
                "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/cloud-platform",
            }
        )

    @app.route("/_emulator/google-tokens", methods=["GET", "POST"])
    def _google_tokens() -> Response:
        if request.method == "POST":
            try:
                body = json_body()
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                reject_unknown_fields(body, ("enforce", "lifetime_seconds", "expire"), "google-tokens")
                if "enforce" in body:
                    tokens.enforced = bool(body["enforce"])
                if "lifetime_seconds" in body:
                    tokens.lifetime_seconds = float(body["lifetime_seconds"])
                if body.get("expire"):
                    tokens.expire_all()
            except (ValueError, TypeError) as exc:
                return control_error(str(exc))
        return jsonify(tokens.to_json())


S = TypeVar("S", bound=EmulatorState)


def emulator_app(
    import_name: str,
    state: S,
    protocol_routes: Callable[[Flask], None],
    control_routes: Callable[[Flask, S], None],
) -> Flask:
    """What every ``create_app`` assembles: a Flask app carrying ``state`` with the common control API
    (:func:`install_control_api`), then the emulator's protocol routes and its own control routes."""
    app = Flask(import_name)
    install_control_api(app, state)
    protocol_routes(app)
    control_routes(app, state)
    return app


class Registrable(Protocol):
    """What a control route registers (a template, an app, an item...): it lists itself as JSON."""

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Registrable)


def install_registry_routes(
    app: Flask,
    state: EmulatorState,
    name: str,
    *,
    load: Callable[[Any], Sequence[R]],
    store: Callable[[R], None],
    registered: Callable[[], Iterable[R]],
    body_noun: str | None = None,
    errors: tuple[type[Exception], ...] = (ValueError, TypeError),
) -> None:
    """Add ``GET /_emulator/<name>`` (list ``registered()``) and ``POST /_emulator/<name>`` (register).

    Both answer ``{name: [entry.to_json(), ...]}``; ``registered()`` and every ``store(entry)`` run
    under ``state.lock``. A POST body ``load`` refuses with one of ``errors`` answers 400. With
    ``body_noun``, a body that is neither an object nor a list is refused first ("<body_noun> body
    must be an object or a list"), for loaders that would read a string as a file path.
    """

    def listed() -> Response:
        with state.lock:
            return jsonify({name: [entry.to_json() for entry in registered()]})

    def register() -> Response:
        try:
            body = json_body()
            if body_noun is not None and not isinstance(body, dict | list):
                raise ValueError(f"{body_noun} body must be an object or a list")
            loaded = load(body)
        except errors as exc:
            return control_error(str(exc))
        with state.lock:
            for entry in loaded:
                store(entry)
        return jsonify({name: [entry.to_json() for entry in loaded]})

    app.add_url_rule(f"{CONTROL_PREFIX}{name}", f"{name}_list", listed, methods=["GET"])
    app.add_url_rule(f"{CONTROL_PREFIX}{name}", f"{name}_register", register, methods=["POST"])


def _apply_clock_change(clock: ScaledClock, body: Any) -> None:
    if not isinstance(body, dict) or not set(body) <= {"advance_seconds", "speed"}:
        raise ValueError('clock body must be {"advance_seconds": N} and/or {"speed": F}')
    if "speed" in body:
        clock.set_speed(float(body["speed"]))
    if "advance_seconds" in body:
        clock.advance(float(body["advance_seconds"]))


# -------------------------------------------------------------------------------------- serving


def ensure_loopback(host: str) -> None:
    """Raise ``ValueError`` unless ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"emulators bind loopback addresses only, not {host!r}")


class ServerHandle:
    """A running emulator: ``url``, ``host``, ``port``, ``app``, ``app_state``, ``shutdown()``."""

    def __init__(self, app: Flask, server: BaseWSGIServer, thread: threading.Thread) -> None:
        self.app = app
        self.app_state: Any = state_of(app)
        self._server = server
        self._thread = thread
        self.host: str = server.host
        self.port: int = server.server_port
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{url_host}:{self.port}"

    def shutdown(self) -> None:
        self.app_state.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


class _KeepAliveRequestHandler(WSGIRequestHandler):
    """HTTP/1.1, so clients keep their connections (werkzeug's default HTTP/1.0 closes each one:
    a new TCP connection per request, which capped a concurrent sweep at the handshake rate)."""

    protocol_version = "HTTP/1.1"


class _QuietRequestHandler(_KeepAliveRequestHandler):
    """Werkzeug handler without the per-request access log line (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def start_server(
    app: Flask, host: str = "127.0.0.1", port: int = 0, *, access_log: bool = False
) -> ServerHandle:
    """Serve ``app`` (threaded werkzeug) from a daemon thread; ``port=0`` picks a free port."""
    ensure_loopback(host)
    handler = _KeepAliveRequestHandler if access_log else _QuietRequestHandler
    server = make_server(host, port, app, threaded=True, request_handler=handler)
    thread = threading.Thread(target=server.serve_forever, name=f"emulator-{app.name}", daemon=True)
    thread.start()
    return ServerHandle(app, server, thread)


def serve_app(
    create_app: Callable[..., Flask], host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> ServerHandle:
    """The body of every emulator's ``serve()``: refuse a non-loopback ``host`` before building
    ``create_app(**kwargs)``, then :func:`start_server` it (no access log)."""
    ensure_loopback(host)
    return start_server(create_app(**kwargs), host, port)


def run_cli(
    argv: Sequence[str] | None,
    description: str,
    build_app: Callable[[argparse.Namespace], Flask],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Standard ``--host/--port [--access-log] ... --speed`` entry point (``add_arguments`` adds the
    emulator's own options before ``--speed``); prints the ready JSON line and serves until a signal."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--access-log", action="store_true", help="log every request on stderr")
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--speed", type=float, default=1.0, help="emulator clock speed factor")
    args = parser.parse_args(argv)
    try:
        ensure_loopback(args.host)
    except ValueError as exc:
        parser.error(str(exc))
    handle = start_server(build_app(args), args.host, args.port, access_log=args.access_log)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sys.stdout.write(json.dumps({"ready": True, "url": handle.url, "port": handle.port}) + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    handle.shutdown()
    return 0
