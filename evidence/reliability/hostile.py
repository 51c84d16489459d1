"""Hostile upstreams: every backend's launch, find, status and cancel, the Entra token endpoint and the
GCE metadata server, answered from a generated corpus of bad answers (evidence/reliability/hostile_corpus.py).

A small loopback server answers every request from the corpus answer under test (and echoes back
the secret the request carried, in the answer's form); a second one stands for "elsewhere", the
target of every redirect. The real backend clients (as the launch service and the tracking sweep
hold them: :func:`handlers.backends.contract.guarded`), the real token provider and google-auth's
metadata credentials are called against it. The oracle, per call:

- no unhandled exception: the outcome is ok, a RetryableError or a PermanentError, never another one
  (which the function would answer with HTTP 500, a redelivery loop of a bug);
- the outcome is one the corpus's decision table allows for the answer's class;
- no secret in any form (raw, 8+ character fragments, URL-encoded, base64) in the log lines, in the
  error's message and context (what the ledger, completion events, REST answers and CLI print carry),
  or in the returned job reference and status;
- no request ever reaches the redirect target.

    python -m evidence.reliability.hostile --fuzz 200 --seed 11 [--json]

Exits 1 when any call breaks the oracle (each one is listed).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus

from evidence.reliability.hostile_corpus import ALLOWED, HUGE_BYTES, Answer, echo_form, generate

# Random-looking, so that no word of a name or a message can pass for a fragment of one of them.
GOOGLE_TOKEN = "ya29.Zq8Xw3Kv7Lm2Np5Rt9Yb4Hc6Jd1Fg0Ue"
FABRIC_TOKEN = "eyQm8Rt5Yu2Io0Pa3Sx7Cv1Bn4Mk6Lj9Hg"
CLIENT_SECRET = "Lk4Jh6Gf8Ds0Aa2ZqW3eR5tY7uI9oP1aS"
REFRESH_TOKEN = "Mn1Bv3Cx5Zl7Kj9HgF2dS4aQ6wE8rT0yU"
TIMEOUT = (2.0, 0.5)  # (connect, read): the "hang" answers wait longer than the read timeout
TARGETS = ("dataflow", "datafusion", "fabric", "dataproc", "entra", "metadata")
OPS = ("launch", "find", "status", "cancel")
# A cancel may also end permanent on a garbled 2xx: the answer shows there is nothing to cancel
# (a Dataproc batch without an operation), and a cancel is never retried for ever.
CANCEL_ALSO = frozenset({"permanent"})
# The metadata server is the platform's own credential source: whatever it answers, a failure to
# get a token is retryable (the event is redelivered until its maximum age), never a decision.
METADATA_ALLOWED = frozenset({"retryable", "ok"})


class _State:
    def __init__(self) -> None:
        self.answer: Answer | None = None
        self.elsewhere_hits = 0
        self.lock = threading.Lock()


def _secret_of(handler: BaseHTTPRequestHandler, body: bytes) -> str:
    auth = handler.headers.get("Authorization") or ""
    if " " in auth:
        return auth.split(None, 1)[1]
    form = parse_qs(body.decode("utf-8", "replace"))
    for key in ("client_secret", "refresh_token"):
        if form.get(key):
            return form[key][0]
    return "nothing-was-sent-here"  # the metadata server is asked without any secret


def _serve(
    state: _State, *, elsewhere_url: Callable[[], str], elsewhere: bool = False
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if elsewhere:
                with state.lock:
                    state.elsewhere_hits += 1
                return self._send(200, "application/json", b"{}")
            answer = state.answer
            good = self._good_answer(answer)
            if good is not None:
                return self._send(200, "application/json", json.dumps(good).encode())
            assert answer is not None
            if answer.delay:
                time.sleep(answer.delay)
            secret = _secret_of(self, body)
            text = answer.body.replace("{echo}", echo_form(secret, answer.echo).replace('"', '\\"'))
            payload = text.encode()
            headers = dict(answer.headers)
            if answer.redirect:
                headers["Location"] = elsewhere_url() + "/stolen?token=" + quote(secret)
            if answer.huge:
                payload = b'{"id": "' + b"x" * HUGE_BYTES + b'"}'
            if answer.trickle:
                return self._trickle(answer.status, answer.content_type, payload)
            return self._send(answer.status, answer.content_type, payload, headers)

        def _good_answer(self, answer: Answer | None) -> dict[str, Any] | None:
            """The token endpoint and the metadata server answer well unless they are the target."""
            target = getattr(state, "target", "")
            path = self.path.split("?")[0]
            if path.endswith("/oauth2/v2.0/token") and target != "entra":
                return {"access_token": FABRIC_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
            if path.startswith("/computeMetadata/") and target != "metadata":
                if path.endswith("/token"):
                    return {"access_token": GOOGLE_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
                return {"email": "hostile@local-project.iam.gserviceaccount.com", "scopes": ["x"]}
            if answer is None:
                return {}
            return None

        def _send(
            self, status: int, ctype: str, payload: bytes, headers: dict[str, str] | None = None
        ) -> None:
            try:
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Metadata-Flavor", "Google")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _trickle(self, status: int, ctype: str, payload: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                for i in range(0, len(payload), 4):  # 4 bytes every 0.1 s: each read quick, the whole not
                    self.wfile.write(payload[i : i + 4])
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that gave up (a timeout, a capped read) resets the connection: expected

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _needles(secret: str) -> list[str]:
    """What counts as a leak of ``secret``: every 8-character run of it and of its encodings."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(secret.encode()).decode().rstrip("="),
    }
    return sorted({f[i : i + 8] for f in forms for i in range(len(f) - 7)})


SECRETS = (GOOGLE_TOKEN, FABRIC_TOKEN, CLIENT_SECRET, REFRESH_TOKEN)
NEEDLES = {s: _needles(s) for s in SECRETS}


def leaked(text: str) -> list[str]:
    return [s[:6] + "..." for s, needles in NEEDLES.items() if any(n in text for n in needles)]


# ----------------------------------------------------------------------------------------- targets


def _config(url: str) -> Any:
    from handlers.model.config import build_config

    return build_config(
        {
            "settings": {
                "project": "local-project",
                "region": "europe-west1",
                "ledger": {"bucket": "ledger"},
            },
            "pipelines": {
                "df": {
                    "backend": "dataflow",
                    "template": "gs://t/wordcount",
                    "parameters": {"in": "gs://b/x"},
                },
                "cdap": {
                    "backend": "datafusion",
                    "instance": "analytics",
                    "app": "app",
                    "parameters": {"in": "x"},
                },
                "fab": {
                    "backend": "fabric",
                    "workspace": "11111111-2222-3333-4444-555555555555",
                    "item": "66666666-7777-8888-9999-000000000000",
                    "parameters": {"Day": "x"},
                },
                "spark": {
                    "backend": "dataproc",
                    "pyspark": {"main": "gs://b/job.py"},
                    "parameters": {"in": "x"},
                },
            },
            "triggers": {"t": {"storage": {"bucket": "in"}, "pipeline": "df"}},
        }
    )


PIPELINE_OF = {"dataflow": "df", "datafusion": "cdap", "fabric": "fab", "dataproc": "spark"}


def _backend(name: str, url: str) -> Any:
    import requests

    from handlers.backends import registry
    from handlers.backends.contract import guarded

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {GOOGLE_TOKEN}"
    kwargs: dict[str, Any] = {"session": session, "endpoint": url, "timeout": TIMEOUT}
    if name == "fabric":
        from handlers.backends.fabric.entra import TokenProvider

        env = {"FABRIC_TENANT_ID": "tenant", "FABRIC_CLIENT_ID": "app", "FABRIC_REFRESH_TOKEN": REFRESH_TOKEN}
        env["FABRIC_CLIENT_SECRET"] = CLIENT_SECRET
        kwargs["session"] = requests.Session()
        kwargs["tokens"] = TokenProvider(token_endpoint=url, env=env, timeout=TIMEOUT)
        # A listing page is retried for 5 s by default; the suite wants the decision, not the wait
        # (the retry itself is specified in tests/test_fabric.py)
        kwargs["page_retry_seconds"] = 0.3
    return guarded(registry.spec(name).build(**kwargs))


def _call(target: str, op: str, url: str, cfg: Any) -> Any:
    import datetime as dt

    from handlers.backends.contract import JobRef, LaunchRequest

    if target == "entra":
        from handlers.backends.fabric.entra import TokenProvider

        env = {"FABRIC_TENANT_ID": "tenant", "FABRIC_CLIENT_ID": "app", "FABRIC_CLIENT_SECRET": CLIENT_SECRET}
        env["FABRIC_REFRESH_TOKEN"] = REFRESH_TOKEN
        mode = "service_principal" if op == "client_credentials" else "delegated"
        return TokenProvider(token_endpoint=url, env=env, timeout=TIMEOUT).token("FABRIC", mode)
    if target == "metadata":
        import google.auth.compute_engine
        import google.auth.transport.requests

        from handlers.core import clients, http

        credentials = google.auth.compute_engine.Credentials()
        session = google.auth.transport.requests.AuthorizedSession(
            credentials, auth_request=clients.token_request()
        )
        return http.send(session, "GET", url + "/anything", what="metadata-backed call", timeout=TIMEOUT)
    backend = _backend(target, url)
    pipeline = cfg.pipelines[PIPELINE_OF[target]]
    request = LaunchRequest(
        run_key=f"{pipeline.name}:abc123",
        job_name=f"{pipeline.name}-abc123",
        pipeline=pipeline,
        parameters=dict(pipeline.parameters and {"in": "x"}),
        labels={"pipelines-run": "abc123"},
        requested_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
    )
    ref = JobRef(
        backend=target,
        job_id="11111111-aaaa-4bbb-8ccc-222222222222",
        job_name=request.job_name,
        project="local-project",
        region="europe-west1",
        extra={
            "workspace": pipeline.options.get("workspace", ""),
            "item": pipeline.options.get("item", ""),
            "instance": "analytics",
            "namespace": "default",
            "api_endpoint": url,
            "app": "app",
            "program": "DataPipelineWorkflow",
            "program_type": "workflows",
            "location": "europe-west1",
        },
    )
    if op == "launch":
        return backend.launch(request)
    if op == "find":
        return backend.find(request)
    if op == "status":
        return backend.status(ref)
    return backend.cancel(ref)


def _ops(target: str) -> tuple[str, ...]:
    if target == "entra":
        return ("client_credentials", "refresh_token")
    if target == "metadata":
        return ("token",)
    return OPS


def _shown(result: Any) -> str:
    if result is None:
        return ""
    to_json = getattr(result, "to_json", None)
    if callable(to_json):
        return json.dumps(to_json(), default=str)
    if hasattr(result, "content"):
        return ""  # an HTTP answer the caller reads itself
    return repr(result)


def run(
    fuzz: int, seed: int, targets: tuple[str, ...] = TARGETS, only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Every call of every target against the corpus (``only``: just the answers of these names)."""
    from handlers.core import logs
    from handlers.core.errors import PermanentError, RetryableError

    state = _State()
    elsewhere = _serve(state, elsewhere_url=lambda: "", elsewhere=True)
    elsewhere_url = f"http://127.0.0.1:{elsewhere.server_address[1]}"
    server = _serve(state, elsewhere_url=lambda: elsewhere_url)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ["GCE_METADATA_HOST"] = url.removeprefix("http://")  # read by google-auth at import
    os.environ["GCE_METADATA_IP"] = url.removeprefix("http://")
    cfg = _config(url)
    corpus = [a for a in generate(fuzz, seed) if not only or a.name in only]
    outcomes: Counter[str] = Counter()
    by_class: dict[str, Counter[str]] = {}
    by_target: dict[str, Counter[str]] = {}
    failures: list[dict[str, Any]] = []
    calls = 0
    started = time.monotonic()
    try:
        for target in targets:
            # The metadata server meets the fixed classes only: google-auth retries each failure with
            # backoff itself (seconds per answer), and its outcome is the same for every answer.
            answers = (
                [a for a in corpus if not a.name.startswith("fuzz-")] if target == "metadata" else corpus
            )
            for op in _ops(target):
                for answer in answers:
                    state.answer = answer
                    state.target = target  # type: ignore[attr-defined]
                    stream = io.StringIO()
                    logs.set_stream(stream)
                    logs.forget_secrets()  # each call starts as a fresh process would
                    shown = ""
                    try:
                        result = _call(target, op, url, cfg)
                        shown = (
                            "" if target == "entra" else _shown(result)
                        )  # a token is handed out, never shown
                        outcome = "ok"
                    except RetryableError as exc:
                        outcome, shown = "retryable", str(exc) + json.dumps(exc.context(), default=str)
                    except PermanentError as exc:
                        outcome, shown = "permanent", str(exc) + json.dumps(exc.context(), default=str)
                    except Exception as exc:  # the finding: an unhandled exception (HTTP 500)
                        outcome, shown = "unhandled", f"{type(exc).__name__}: {exc}"
                    finally:
                        logs.set_stream(None)
                    calls += 1
                    outcomes[outcome] += 1
                    by_class.setdefault(answer.klass, Counter())[outcome] += 1
                    by_target.setdefault(target, Counter())[outcome] += 1
                    problems = []
                    allowed = ALLOWED[answer.klass] | (CANCEL_ALSO if op == "cancel" else frozenset())
                    if target == "metadata":
                        allowed = METADATA_ALLOWED
                    if outcome not in allowed:
                        problems.append(f"{outcome}, expected {'/'.join(sorted(allowed))}")
                    secrets = leaked(stream.getvalue() + shown)
                    if secrets:
                        problems.append(f"secret leaked: {secrets}")
                    if problems:
                        failures.append(
                            {
                                "target": target,
                                "op": op,
                                "answer": answer.name,
                                "problems": problems,
                                "detail": shown[:300],
                            }
                        )
    finally:
        server.shutdown()
        elsewhere.shutdown()
    return {
        "corpus": len(corpus),
        "targets": list(targets),
        "calls": calls,
        "outcomes": dict(outcomes),
        "by_class": {k: dict(v) for k, v in sorted(by_class.items())},
        "by_target": {k: dict(v) for k, v in by_target.items()},
        "unhandled": outcomes["unhandled"],
        "wrong_decision": sum(1 for f in failures if any("expected" in p for p in f["problems"])),
        "secret_leaks": sum(1 for f in failures if any("secret" in p for p in f["problems"])),
        "redirects_followed": state.elsewhere_hits,
        "failures": failures,
        "seconds": round(time.monotonic() - started, 1),
    }


def write_results(report: dict[str, Any], command: str) -> None:
    from evidence.bench.report import markdown_table, write

    rows = [
        {
            "target": t,
            "calls": sum(c.values()),
            **{k: c.get(k, 0) for k in ("ok", "retryable", "permanent", "unhandled")},
        }
        for t, c in report["by_target"].items()
    ]
    kinds = ("ok", "retryable", "permanent", "unhandled")
    classes = [{"answer class": k, **{o: v.get(o, 0) for o in kinds}} for k, v in report["by_class"].items()]
    notes = (
        "Outcomes by answer class:\n\n"
        + markdown_table(classes)
        + f"\nCorpus: {report['corpus']} answers per call. Unhandled exceptions: {report['unhandled']}; "
        f"decisions outside the table: {report['wrong_decision']}; secret leaks: {report['secret_leaks']}; "
        f"redirects followed: {report['redirects_followed']}; wall time {report['seconds']} s."
    )
    write("hostile", report, command=command, table=rows, title="Hostile upstreams", notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evidence.reliability.hostile", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--fuzz", type=int, default=200, help="seeded fuzz answers on top of the fixed classes"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--only", default="", help="just the corpus answers of these names (comma-separated)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument(
        "--no-write", action="store_true", help="print the figures only (no results/hostile.*)"
    )
    args = parser.parse_args(argv)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    only = tuple(a.strip() for a in args.only.split(",") if a.strip())
    report = run(args.fuzz, args.seed, targets, only)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for f in report["failures"]:
            print(f"FAIL {f['target']} {f['op']} {f['answer']}: {'; '.join(f['problems'])} | {f['detail']}")
        summary = {k: v for k, v in report.items() if k != "failures"}
        print(json.dumps(summary, indent=2))
    if not args.no_write:
        write_results(report, "python -m evidence.reliability.hostile " + " ".join(argv or sys.argv[1:]))
    bad = (
        report["unhandled"]
        or report["wrong_decision"]
        or report["secret_leaks"]
        or report["redirects_followed"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
