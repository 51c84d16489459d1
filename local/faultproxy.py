"""A fault-injecting HTTP/1.1 reverse proxy for loopback services (the reliability suites' adversary).

It sits between a client (a function process) and one upstream (fake-gcs-server for the ledger, a
backend emulator) and, per request, injects a fault with a configurable probability::

    client ──HTTP/1.1──> FaultProxy (127.0.0.1:P) ──HTTP/1.1──> upstream
                          │
                          ├─ 429      answer 429 with Google's error JSON and ``Retry-After``; not forwarded
                          ├─ 503      answer 503 with Google's error JSON; not forwarded
                          ├─ timeout  hold the request without answering until the client gives up (or
                          │           ``hold_seconds`` pass), then close; the upstream never sees it
                          ├─ reset    close the connection at once (TCP RST), no answer; not forwarded
                          ├─ lost     forward it, let the upstream apply it, then close without
                                      answering: "the request succeeded but the response was lost"
                          ├─ 412      answer 412 (conditionNotMet) to a *conditional* request (an
                          │           ``ifGenerationMatch``/``ifMetagenerationMatch`` query): another
                          │           writer won; not forwarded. Other requests pass untouched
                          └─ 409      answer 409 (ABORTED, "concurrent update") to a write (POST, PUT,
                                      PATCH, DELETE); not forwarded. Reads pass untouched

``KINDS`` are the transport faults any upstream can suffer; ``CONFLICT_KINDS`` (412, 409) are what
a contended store answers, for the ledger (``--kinds all`` means every one of both).

Only requests whose ``"METHOD /path?query"`` matches ``match`` (a regex, searched; ``None`` = all)
can be faulted; the others pass through untouched. Decisions come from one seeded RNG, so a run's
fault *rates* are reproducible (which request gets which fault depends on thread timing). A small
run may draw a kind on no request it applies to; with ``cover=True`` every kind with a rate is owed
once, and the first matching request a still-owed kind applies to gets it (in ``rates`` order),
before the draws take over, so "every kind was injected" holds however the requests interleave.

``after_upstream(exchange)`` is called for every request the upstream answered (faulted ``lost`` ones
included), *before* the answer goes back: the crash-injection suite uses it to SIGKILL the calling
process at a step boundary. A truthy return value drops the answer (the connection is closed
instead), so the client never learns the outcome even if it is still alive.

Bodies: ``Content-Length`` and ``chunked`` requests (forwarded with a ``Content-Length``), chunked or
sized responses (answered with a ``Content-Length``), ``Expect: 100-continue``, keep-alive on both
sides. Counters: :meth:`FaultProxy.counters` (requests seen, forwarded, answered, injected per kind).

Python::

    with FaultProxy(gcs.url, rates={"503": 0.05, "lost": 0.05}, match=r"^POST /upload/", seed=7) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url}
        ...
        print(proxy.counters())

Command line (prints ``{"ready": true, "url": ...}``, serves until Ctrl-C, then prints the counters)::

    python -m local.faultproxy --upstream http://127.0.0.1:4443 --rate 0.1 \\
        --kinds 429,503,timeout,reset,lost [--match REGEX] [--seed N] [--port P]

See ``docs/local-services.md`` ("Fault proxy").
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import re
import select
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

KINDS: tuple[str, ...] = ("429", "503", "timeout", "reset", "lost")
CONFLICT_KINDS: tuple[str, ...] = ("412", "409")
ALL_KINDS: tuple[str, ...] = KINDS + CONFLICT_KINDS
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CONDITIONAL = re.compile(r"(^|&)if(Meta)?[gG]enerationMatch=")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
_GOOGLE_STATUS = {
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}
_MAX_LINE = 65536
_MAX_HEADERS = 200


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.x: the connection is closed."""


@dataclass
class Exchange:
    """One request and, once the upstream answered, its answer (what ``after_upstream`` receives)."""

    method: str
    target: str  # the request target: /path?query
    headers: list[tuple[str, str]]
    body: bytes
    fault: str | None = None  # the kind injected on this request, if any
    status: int | None = None  # the upstream's answer
    reason: str = ""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @property
    def line(self) -> str:
        """``"METHOD /path?query"``: what ``match`` regexes are searched in."""
        return f"{self.method} {self.target}"

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


AfterUpstream = Callable[[Exchange], Any]


def parse_kinds(text: str | Iterable[str]) -> list[str]:
    """``"429,503"`` or an iterable -> a validated list of fault kinds (``"all"`` = every kind)."""
    items = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    if items == ["all"]:
        return list(ALL_KINDS)
    unknown = [k for k in items if k not in ALL_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; known: {', '.join(ALL_KINDS)}")
    return items


def even_rates(rate: float, kinds: Iterable[str]) -> dict[str, float]:
    """``rate`` split evenly over ``kinds``: the probability that a matching request gets each kind."""
    chosen = parse_kinds(kinds)
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be between 0 and 1")
    return {k: rate / len(chosen) for k in chosen} if chosen else {}


def _validate_rates(rates: Mapping[str, float]) -> dict[str, float]:
    parse_kinds(list(rates))
    if any(p < 0 for p in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
        raise ValueError("fault rates must be >= 0 and sum to at most 1")
    return {k: float(v) for k, v in rates.items() if v > 0}


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    proxy: FaultProxy


class FaultProxy:
    """A threaded reverse proxy injecting faults; see the module docstring."""

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rates: Mapping[str, float] | None = None,
        match: str | None = None,
        limit: int | None = None,
        cover: bool = False,
        seed: int | None = 0,
        retry_after: float = 1.0,
        hold_seconds: float = 30.0,
        upstream_timeout: float = 60.0,
        after_upstream: AfterUpstream | None = None,
        name: str = "faultproxy",
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        _ensure_loopback(host)
        _ensure_loopback(parts.hostname)
        self.upstream = upstream.rstrip("/")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.host = host
        self.name = name
        self.retry_after = retry_after
        self.hold_seconds = hold_seconds
        self.upstream_timeout = upstream_timeout
        self.after_upstream = after_upstream
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rates: dict[str, float] = {}
        self._match: re.Pattern[str] | None = None
        self._limit: int | None = None
        self._owed: list[str] = []
        self.set_faults(rates or {}, match, limit=limit, cover=cover)
        self._counts: dict[str, Any] = {}
        self.reset_counters()
        self._requested_port = port
        self._bound_port: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- configuration --------------------------------------------------------------------------
    def set_faults(
        self,
        rates: Mapping[str, float],
        match: str | None = None,
        *,
        limit: int | None = None,
        cover: bool = False,
    ) -> None:
        """Replace the fault rates (``{kind: probability}``, summing to at most 1) and the target regex;
        with ``limit``, stop injecting after that many faults (``{"lost": 1.0}, limit=1``: exactly one);
        with ``cover``, inject every kind once first (see the module docstring)."""
        checked = _validate_rates(rates)
        pattern = re.compile(match) if match else None
        with self._lock:
            self._rates = checked
            self._match = pattern
            self._limit = limit
            self._owed = list(checked) if cover else []

    def clear_faults(self) -> None:
        self.set_faults({})

    @property
    def rates(self) -> dict[str, float]:
        with self._lock:
            return dict(self._rates)

    # -- counters -------------------------------------------------------------------------------
    def reset_counters(self) -> None:
        with self._lock:
            self._counts = {
                "connections": 0,
                "requests": 0,
                "matched": 0,
                "forwarded": 0,
                "answered": 0,
                "upstream_errors": 0,
                "dropped_by_hook": 0,
                "injected": dict.fromkeys(KINDS, 0),
            }

    def counters(self) -> dict[str, Any]:
        """``connections`` accepted, ``requests`` seen, ``matched`` by the target regex, ``forwarded`` to the upstream, ``answered``
        to the client, ``upstream_errors`` (answered 502), ``dropped_by_hook``, ``injected`` per kind."""
        with self._lock:
            snapshot = dict(self._counts)
            snapshot["injected"] = dict(self._counts["injected"])
            snapshot["injected_total"] = sum(snapshot["injected"].values())
            return snapshot

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (still known after :meth:`stop`)."""
        if self._bound_port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = _Server((self.host, self._requested_port), _Handler)
        server.proxy = self
        self._server = server
        self._bound_port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- decisions ------------------------------------------------------------------------------
    def _decide(self, exchange: Exchange) -> tuple[bool, str | None]:
        """(matches the target regex, fault kind or None) for one request."""
        with self._lock:
            self._counts["requests"] += 1
            if self._match is not None and not self._match.search(exchange.line):
                return False, None
            self._counts["matched"] += 1
            if not self._rates or self._limit == 0:
                return True, None
            owed = next((k for k in self._owed if applies(k, exchange)), None)
            if owed is not None:
                self._owed.remove(owed)
                return True, self._injecting(owed)
            draw = self._rng.random()
            total = 0.0
            for kind, p in self._rates.items():
                total += p
                if draw < total:
                    if not applies(kind, exchange):
                        return True, None
                    return True, self._injecting(kind)
            return True, None

    def _injecting(self, kind: str) -> str:
        """Count one injection of ``kind`` (conflict kinds appear once used); the caller holds the lock."""
        injected = self._counts["injected"]
        injected[kind] = injected.get(kind, 0) + 1
        if self._limit is not None:
            self._limit -= 1
        return kind


def applies(kind: str, exchange: Exchange) -> bool:
    """Whether a server could answer ``kind`` to this request (412 and 409 only to some)."""
    if kind == "412":
        return bool(_CONDITIONAL.search(exchange.query))
    if kind == "409":
        return exchange.method in _WRITES
    return True


def _ensure_loopback(host: str) -> None:
    if host not in ("localhost", "::1") and not host.startswith("127."):
        raise ValueError(f"the fault proxy talks to loopback addresses only, not {host!r}")


def google_error_body(code: int, message: str) -> bytes:
    status = _GOOGLE_STATUS.get(code, "UNKNOWN")
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


class _Handler(socketserver.StreamRequestHandler):
    """One client connection: any number of keep-alive requests."""

    server: _Server
    rbufsize = 65536
    disable_nagle_algorithm = True  # answers are written in one piece: no delayed-ACK stalls

    def setup(self) -> None:
        super().setup()
        self.proxy = self.server.proxy
        self.upstream: http.client.HTTPConnection | None = None
        self.upstream_used = False  # a reused upstream connection may have been closed by the upstream
        self.closed = False
        self.proxy._count("connections")

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self.upstream is not None:
            self.upstream.close()

    def handle(self) -> None:
        with contextlib.suppress(OSError, BadRequest, http.client.HTTPException):
            while not self.closed:
                exchange, keep_alive = self._read_request()
                if exchange is None:
                    return
                self._serve(exchange)
                if not keep_alive:
                    return

    # -- reading ----------------------------------------------------------------------------------
    def _readline(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise BadRequest("line too long")
        return line

    def _read_request(self) -> tuple[Exchange | None, bool]:
        line = self._readline()
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLFs between requests
            line = self._readline()
        if not line:
            return None, False
        try:
            method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        except ValueError:
            raise BadRequest(f"bad request line {line!r}") from None
        if not version.startswith("HTTP/1."):
            raise BadRequest(f"unsupported version {version!r}")
        headers = self._read_headers()
        lowered = {k.lower(): v for k, v in headers}
        if lowered.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in lowered.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        else:
            length = int(lowered.get("content-length", "0") or 0)
            body = self.rfile.read(length) if length else b""
            if len(body) != length:
                return None, False
        connection = lowered.get("connection", "").lower()
        keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        return Exchange(method=method, target=target, headers=headers, body=body), keep_alive

    def _read_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        while True:
            line = self._readline()
            if line in (b"\r\n", b"\n", b""):
                return headers
            if len(headers) >= _MAX_HEADERS:
                raise BadRequest("too many headers")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest(f"bad header line {line!r}")
            headers.append((name.strip(), value.strip()))

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self._readline().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise BadRequest(f"bad chunk size {size_line!r}") from None
            if size == 0:
                self._read_headers()  # trailers, ignored
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    # -- answering --------------------------------------------------------------------------------
    def _serve(self, exchange: Exchange) -> None:
        proxy = self.proxy
        matched, kind = proxy._decide(exchange)
        exchange.fault = kind
        if kind in ("429", "503", "412", "409"):
            code = int(kind)
            body = google_error_body(code, f"injected by {proxy.name}: HTTP {code}")
            extra = [("Retry-After", _seconds(proxy.retry_after))] if code == 429 else []
            text = {
                429: "Too Many Requests",
                503: "Service Unavailable",
                412: "Precondition Failed",
                409: "Conflict",
            }[code]
            self._answer(code, text, [("Content-Type", "application/json; charset=UTF-8"), *extra], body)
            return
        if kind == "timeout":
            self._hold_then_close(proxy.hold_seconds)
            return
        if kind == "reset":
            self._reset()
            return
        if not self._forward(exchange):
            return
        drop = False
        if matched and proxy.after_upstream is not None:
            drop = bool(proxy.after_upstream(exchange))
            if drop:
                proxy._count("dropped_by_hook")
        if kind == "lost" or drop:
            self._reset()
            return
        self._answer(
            exchange.status or 502,
            exchange.reason,
            exchange.response_headers,
            exchange.response_body,
            head=exchange.method == "HEAD",
        )

    def _forward(self, exchange: Exchange) -> bool:
        """Send ``exchange`` upstream and fill in its answer; on failure answer 502 and return False."""
        proxy = self.proxy
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed meanwhile
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
                )
                self.upstream_used = False
            conn = self.upstream
            reused, self.upstream_used = self.upstream_used, True
            try:
                self._send_upstream(conn, exchange)
                response = conn.getresponse()
                exchange.status = response.status
                exchange.reason = response.reason
                exchange.response_headers = [
                    (k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP
                ]
                exchange.response_body = response.read()
                if response.will_close:
                    conn.close()
                    self.upstream = None
                proxy._count("forwarded")
                return True
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self.upstream = None
                stale = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                if attempt == 1 and reused and isinstance(exc, stale):
                    continue
                proxy._count("upstream_errors")
                body = google_error_body(502, f"{proxy.name}: upstream failed: {exc.__class__.__name__}")
                self._answer(502, "Bad Gateway", [("Content-Type", "application/json")], body)
                return False
        return False

    @staticmethod
    def _send_upstream(conn: http.client.HTTPConnection, exchange: Exchange) -> None:
        conn.putrequest(exchange.method, exchange.target, skip_host=True, skip_accept_encoding=True)
        for name, value in exchange.headers:
            if name.lower() not in HOP_BY_HOP:
                conn.putheader(name, value)
        if exchange.body or exchange.method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(exchange.body)))
        conn.endheaders(exchange.body or None)

    def _answer(
        self,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        head: bool = False,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {reason or http.client.responses.get(status, '')}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
        if not (head or status in (204, 304) or 100 <= status < 200):
            lines.append(f"Content-Length: {len(body)}")
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head:
            payload += body
        self.wfile.write(payload)
        self.wfile.flush()
        self.proxy._count("answered")

    def _hold_then_close(self, seconds: float) -> None:
        """Answer nothing; close once the client gives up (EOF) or ``seconds`` passed."""
        deadline = time.monotonic() + seconds
        sock = self.connection
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select([sock], [], [], min(left, 0.5))
            if readable:
                with contextlib.suppress(OSError):
                    if not sock.recv(65536, socket.MSG_PEEK):
                        break  # the client closed: it timed out
                break  # the client sent something else (it gave up on this request): close too
        self._reset()

    def _reset(self) -> None:
        """Close the client connection abortively (RST), without answering."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback HTTP/1.1 reverse proxy injecting faults.")
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the service to front")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.1, help="probability that a matching request faults")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(ALL_KINDS)}"
    )
    parser.add_argument("--match", default=None, help='regex searched in "METHOD /path?query"')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of injected 429s")
    parser.add_argument("--hold", type=float, default=30.0, help="longest hold of a 'timeout' fault (s)")
    args = parser.parse_args(argv)
    try:
        proxy = FaultProxy(
            args.upstream,
            host=args.host,
            port=args.port,
            rates=even_rates(args.rate, args.kinds),
            match=args.match,
            seed=args.seed,
            retry_after=args.retry_after,
            hold_seconds=args.hold,
        )
    except ValueError as exc:
        parser.error(str(exc))
    proxy.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"ready": True, "url": proxy.url, "port": proxy.port, "upstream": proxy.upstream}))
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    proxy.stop()
    print(json.dumps({"counters": proxy.counters()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
