"""The fault proxy itself: every fault kind as a real HTTP client sees it, and what the upstream saw.

The upstream is a small recording HTTP/1.1 server on loopback (and fake-gcs-server for the storage
client cases); the clients are ``requests`` and google-cloud-storage, as the functions use them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from local.faultproxy import FaultProxy, even_rates, parse_kinds
from local.services import FakeGcs, ensure_bucket, storage_client


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Recorder

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append(
                {"method": self.command, "path": self.path, "body": body, "headers": dict(self.headers)}
            )
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        answer = json.dumps({"path": self.path, "length": len(body)}).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_without_faults_requests_pass_through_with_bodies_keep_alive_and_chunked_answers(upstream):
    with FaultProxy(upstream.url) as proxy, requests.Session() as session:
        first = session.post(f"{proxy.url}/a?x=1", data=b"x" * 5000, timeout=5)
        chunked_request = session.put(f"{proxy.url}/b", data=iter([b"one ", b"two ", b"three"]), timeout=5)
        chunked_answer = session.get(f"{proxy.url}/chunked", timeout=5)
        head = session.head(f"{proxy.url}/c", timeout=5)
        # the proxy counts an answer after sending it: under load the client may read it first
        deadline = time.monotonic() + 5
        while (counters := proxy.counters())["answered"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)

    assert first.status_code == 201 and first.json() == {"path": "/a?x=1", "length": 5000}
    assert chunked_request.status_code == 200 and chunked_request.json()["length"] == len(b"one two three")
    assert chunked_answer.content == b"hello chunked world"
    assert head.status_code == 200 and head.content == b""
    assert [s["body"] for s in upstream.seen][:2] == [b"x" * 5000, b"one two three"]
    assert upstream.seen[0]["headers"]["Host"] == proxy.url.removeprefix("http://")
    assert counters["connections"] == 1, "a keep-alive client reuses one connection"
    assert counters["requests"] == counters["forwarded"] == counters["answered"] == 4
    assert counters["injected_total"] == 0


@pytest.mark.parametrize("kind, status", [("429", 429), ("503", 503)])
def test_an_error_fault_answers_google_error_json_and_never_reaches_the_upstream(upstream, kind, status):
    with FaultProxy(upstream.url, rates={kind: 1.0}, retry_after=2) as proxy, requests.Session() as s:
        answer = s.post(f"{proxy.url}/jobs", json={"a": 1}, timeout=5)
        again = s.get(f"{proxy.url}/jobs", timeout=5)  # the connection stays usable
        counters = proxy.counters()

    assert answer.status_code == status and again.status_code == status
    assert answer.json()["error"]["code"] == status
    assert answer.json()["error"]["status"] == ("RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE")
    assert (answer.headers.get("Retry-After") == "2") is (status == 429)
    assert upstream.seen == []
    assert counters["injected"][kind] == 2 and counters["connections"] == 1


def test_a_timeout_fault_is_held_past_the_client_timeout_and_never_forwarded(upstream):
    with FaultProxy(upstream.url, rates={"timeout": 1.0}, hold_seconds=20) as proxy:
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout):
            requests.post(f"{proxy.url}/jobs", json={}, timeout=(2, 0.5))
        waited = time.monotonic() - started
        # the proxy lets go of the held connection as soon as the client closed it
        deadline = time.monotonic() + 3
        while proxy.counters()["injected"]["timeout"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        counters = proxy.counters()

    assert 0.5 <= waited < 3
    assert upstream.seen == []
    assert counters["injected"]["timeout"] == 1 and counters["forwarded"] == 0


def test_a_reset_fault_closes_the_connection_without_forwarding(upstream):
    with FaultProxy(upstream.url, rates={"reset": 1.0}) as proxy:
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{proxy.url}/jobs", json={"a": 1}, timeout=5)
        counters = proxy.counters()

    assert upstream.seen == []
    assert counters["injected"]["reset"] == 1 and counters["answered"] == 0


def test_a_lost_fault_applies_the_request_upstream_but_the_client_never_hears_back(upstream):
    with FaultProxy(upstream.url, rates={"lost": 1.0}) as proxy:
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{proxy.url}/jobs", json={"create": "job-1"}, timeout=5)
        counters = proxy.counters()

    assert [(s["method"], s["path"], json.loads(s["body"])) for s in upstream.seen] == [
        ("POST", "/jobs", {"create": "job-1"})
    ]
    assert counters["injected"]["lost"] == 1 and counters["forwarded"] == 1 and counters["answered"] == 0


def test_only_requests_matching_the_regex_are_faulted_and_the_limit_caps_the_count(upstream):
    with FaultProxy(upstream.url, rates={"503": 1.0}, match=r"^POST /jobs\b") as proxy:
        reads = [requests.get(f"{proxy.url}/jobs", timeout=5).status_code for _ in range(3)]
        writes = [requests.post(f"{proxy.url}/jobs", timeout=5).status_code for _ in range(2)]
        proxy.set_faults({"503": 1.0}, match=r"^POST /jobs\b", limit=1)
        limited = [requests.post(f"{proxy.url}/jobs", timeout=5).status_code for _ in range(3)]
        counters = proxy.counters()

    assert reads == [200, 200, 200] and writes == [503, 503] and limited == [503, 201, 201]
    assert counters["matched"] == 5 and counters["requests"] == 8


def test_412_answers_only_conditional_requests_and_409_only_writes_neither_forwarded(upstream):
    with FaultProxy(upstream.url, rates={"412": 1.0}) as proxy:
        plain = requests.post(f"{proxy.url}/jobs", timeout=5)
        conditional = requests.post(f"{proxy.url}/jobs?uploadType=media&ifGenerationMatch=0", timeout=5)
        precondition = proxy.counters()["injected"]["412"]
        proxy.set_faults({"409": 1.0})
        read = requests.get(f"{proxy.url}/jobs", timeout=5)
        write = requests.put(f"{proxy.url}/jobs", timeout=5)
        conflicts = proxy.counters()["injected"]["409"]

    assert (plain.status_code, conditional.status_code, precondition) == (201, 412, 1)
    assert conditional.json()["error"] == {
        "code": 412,
        "message": "injected by faultproxy: HTTP 412",
        "status": "FAILED_PRECONDITION",
    }
    assert (read.status_code, write.status_code, conflicts) == (200, 409, 1)
    assert write.json()["error"]["status"] == "ABORTED"
    assert [(s["method"], s["path"]) for s in upstream.seen] == [("POST", "/jobs"), ("GET", "/jobs")]


def test_cover_injects_each_kind_once_on_the_first_request_it_applies_to_whatever_the_rate(upstream):
    """A rate too small to be drawn in a short run still shows up once: 412 waits for the first
    conditional request and 409 for the first write, whichever comes first."""
    rates = {"503": 0.001, "412": 0.001, "409": 0.001}
    with FaultProxy(upstream.url, rates=rates, cover=True, seed=1) as proxy, requests.Session() as s:
        codes = [
            s.get(f"{proxy.url}/a", timeout=5).status_code,  # 503 (412 and 409 do not apply to it)
            s.get(f"{proxy.url}/b", timeout=5).status_code,  # nothing owed applies: the draw passes it
            s.post(f"{proxy.url}/c?ifGenerationMatch=0", timeout=5).status_code,  # 412 comes first
            s.put(f"{proxy.url}/d", timeout=5).status_code,  # then 409
            s.put(f"{proxy.url}/e", timeout=5).status_code,  # nothing owed any more
        ]
        injected = proxy.counters()["injected"]

    assert codes == [503, 200, 412, 409, 200]
    assert (injected["503"], injected["412"], injected["409"]) == (1, 1, 1)
    assert [s["path"] for s in upstream.seen] == ["/b", "/e"]


def test_the_seeded_rng_gives_the_configured_rates(upstream):
    rates = even_rates(0.5, "429,503")
    with FaultProxy(upstream.url, rates=rates, seed=42) as proxy, requests.Session() as s:
        codes = [s.get(f"{proxy.url}/x", timeout=5).status_code for _ in range(400)]
        counters = proxy.counters()

    assert counters["injected"]["429"] == codes.count(429)
    assert counters["injected"]["503"] == codes.count(503)
    assert 160 <= codes.count(429) + codes.count(503) <= 240  # 0.5 of 400, loosely
    assert parse_kinds("all") == ["429", "503", "timeout", "reset", "lost", "412", "409"]
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_kinds("429,teapot")


def test_the_after_upstream_hook_sees_the_answer_first_and_can_drop_it(upstream):
    seen: list[tuple[str, int | None, bytes]] = []

    def hook(exchange: Any) -> bool:
        seen.append((exchange.line, exchange.status, exchange.response_body))
        return exchange.method == "POST"

    with FaultProxy(upstream.url, after_upstream=hook) as proxy:
        kept = requests.get(f"{proxy.url}/jobs/1", timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{proxy.url}/jobs", data=b"{}", timeout=5)
        counters = proxy.counters()

    assert kept.status_code == 200
    assert [(line, status) for line, status, _ in seen] == [("GET /jobs/1", 200), ("POST /jobs", 201)]
    assert len(upstream.seen) == 2 and counters["dropped_by_hook"] == 1


def test_storage_client_sees_a_lost_conditional_create_as_precondition_failed_on_its_own_retry(
    gcs_server: FakeGcs, unique_name: str
):
    """The case the run ledger's claim must survive: the create was applied, its answer lost."""
    from google.api_core.exceptions import PreconditionFailed

    ensure_bucket(storage_client(gcs_server.url), unique_name)
    proxy_lines: list[str] = []
    with FaultProxy(
        gcs_server.url,
        rates={"lost": 1.0},
        match=r"^POST /upload/",
        limit=1,
        after_upstream=lambda exchange: proxy_lines.append(exchange.line),
    ) as proxy:
        client = storage_client(proxy.url)
        blob = client.bucket(unique_name).blob("runs/r1.json")
        with pytest.raises(PreconditionFailed):
            blob.upload_from_string(b'{"owner": "me"}', if_generation_match=0, timeout=5)
        counters = proxy.counters()

    direct = storage_client(gcs_server.url).bucket(unique_name).blob("runs/r1.json")
    assert direct.download_as_bytes() == b'{"owner": "me"}'
    assert counters["injected"]["lost"] == 1
    uploads = [line for line in proxy_lines if line.startswith("POST /upload/")]
    assert len(uploads) == 2, "the original (applied, answer lost) and the client's own retry"


@pytest.mark.parametrize("kind", ["429", "503", "timeout", "reset"])
def test_storage_client_retries_transient_faults_on_reads_and_conditional_writes(
    gcs_server: FakeGcs, unique_name: str, kind: str
):
    ensure_bucket(storage_client(gcs_server.url), unique_name)
    with FaultProxy(gcs_server.url, rates={kind: 1.0}, match=r"/o(/|\?|$)", retry_after=0, limit=1) as proxy:
        blob = storage_client(proxy.url).bucket(unique_name).blob("doc.json")
        blob.upload_from_string(b"{}", if_generation_match=0, timeout=(1, 1))
        data = blob.download_as_bytes(timeout=(1, 1))
        counters = proxy.counters()

    assert data == b"{}"
    assert counters["injected"][kind] == 1
