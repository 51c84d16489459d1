"""Specification: the REST trigger API starts, shows and cancels runs; every answer matches the OpenAPI file.

The API runs inside functions-framework (the ``api`` HTTP function of main.py); launches reach the
Dataflow emulator and the ledger lives in fake-gcs-server. ID tokens are real RS256 JWTs signed by
a key the test creates, verified by google-auth against a certs endpoint served on loopback (the
only stand-in: Google's signing keys cannot be used offline).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import functions_framework
import jsonschema
import pytest
import yaml
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from handlers.launch.runtime import reset_default

ROOT = Path(__file__).resolve().parents[1]
OPENAPI = yaml.safe_load((ROOT / "handlers" / "schemas" / "api.openapi.yaml").read_text())


def check_openapi(path_template: str, method: str, response) -> dict:
    """Validate a response body against the committed OpenAPI document; returns the body."""
    operation = OPENAPI["paths"][path_template][method]
    declared = operation["responses"].get(str(response.status_code))
    assert declared is not None, f"{method.upper()} {path_template} does not declare {response.status_code}"
    if "$ref" in declared:
        declared = OPENAPI["components"]["responses"][declared["$ref"].rsplit("/", 1)[-1]]
    schema = declared["content"]["application/json"]["schema"]
    body = response.get_json()
    jsonschema.validate(body, {"components": OPENAPI["components"], **schema})
    return body


@pytest.fixture
def api(world, dataflow, monkeypatch):
    opts = dataflow.pipeline_options("backfill")
    config = world.write_config(
        {
            "backfill": {
                **opts,
                "inputs": {
                    "day": {"pattern": "[0-9]{4}-[0-9]{2}-[0-9]{2}", "description": "YYYY-MM-DD"},
                    "table": {"required": False, "default": "sales"},
                },
                "parameters": {"day": "{input.day}", "output": "gs://out/{input.table}/{input.day}/"},
            },
            "events-only": {
                **dataflow.pipeline_options("events-only"),
                "parameters": {"inputFile": "gs://{bucket}/{name}"},
            },
        },
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "events-only"}},
    )
    monkeypatch.setenv("PIPELINES_CONFIG", str(config))
    reset_default()
    app = functions_framework.create_app("api", str(ROOT / "main.py"), "http")
    client = app.test_client()
    client.world = world
    return client


def start(api, body, key="req-1", **headers):
    return api.post("/runs", json=body, headers={"Idempotency-Key": key, **headers})


def test_post_runs_launches_once_per_idempotency_key(api, dataflow):
    first = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-01"}})
    assert first.status_code == 202
    body = check_openapi("/runs", "post", first)
    assert body["result"] == "launched" and body["status_url"] == f"/runs/{body['run_key']}"
    again = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-01"}})
    assert check_openapi("/runs", "post", again)["run_key"] == body["run_key"]
    assert again.get_json()["result"] == "duplicate"
    (launch,) = dataflow.launches()
    assert launch["parameters"] == {"day": "2026-11-01", "output": "gs://out/sales/2026-11-01/"}


def test_the_same_key_for_a_different_request_is_a_conflict(api, dataflow):
    start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-01"}}, key="k")
    clash = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-02"}}, key="k")
    assert clash.status_code == 409 and check_openapi("/runs", "post", clash)["error"]["status"] == "ABORTED"
    assert len(dataflow.launches()) == 1


def test_concurrent_requests_with_one_key_and_different_bodies_get_one_run_and_one_conflict(api, dataflow):
    """Both requests pass the early check before either claimed the run: the one that lost the claim
    must answer 409, never 202 with the other body's run (as payment APIs do)."""
    days = [f"2026-10-{d:02d}" for d in range(1, 9)]
    answers: dict[tuple[str, str], tuple[int, dict]] = {}

    def post(key: str, day: str, gate: threading.Barrier) -> None:
        client = api.application.test_client()
        gate.wait()
        response = start(client, {"pipeline": "backfill", "parameters": {"day": day}}, key=key)
        answers[key, day] = (response.status_code, check_openapi("/runs", "post", response))

    for i in range(4):
        gate = threading.Barrier(2)
        pair = [threading.Thread(target=post, args=(f"race-{i}", days[2 * i + j], gate)) for j in (0, 1)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()

    launched = {launch["parameters"]["day"] for launch in dataflow.launches()}
    for i in range(4):
        statuses = sorted(answers[f"race-{i}", days[2 * i + j]][0] for j in (0, 1))
        assert statuses == [202, 409], (i, answers)
        (winner,) = [days[2 * i + j] for j in (0, 1) if answers[f"race-{i}", days[2 * i + j]][0] == 202]
        assert winner in launched
    assert len(dataflow.launches()) == 4


def test_bad_or_missing_parameters_are_400_naming_each_field(api, dataflow):
    bad = start(api, {"pipeline": "backfill", "parameters": {"dya": "x", "table": {"nested": 1}}})
    assert bad.status_code == 400
    fields = {d["field"]: d["problem"] for d in check_openapi("/runs", "post", bad)["error"]["details"]}
    assert set(fields) == {"parameters.dya", "parameters.table", "parameters.day"}
    assert "required" in fields["parameters.day"]
    pattern = start(api, {"pipeline": "backfill", "parameters": {"day": "yesterday"}})
    assert pattern.status_code == 400 and "pattern" in pattern.get_json()["error"]["details"][0]["problem"]
    assert dataflow.launches() == []


@pytest.mark.parametrize(
    "body,headers,status",
    [
        ({"pipeline": "nope"}, {}, 404),
        ({"pipeline": "events-only"}, {}, 409),
        ({"parameters": {}}, {}, 400),
        ({"pipeline": "backfill", "extra": 1}, {}, 400),
        ({"pipeline": "backfill", "parameters": {"day": "2026-01-01"}}, {"Idempotency-Key": ""}, 400),
    ],
)
def test_request_errors_are_json(api, body, headers, status):
    response = api.post("/runs", json=body, headers={"Idempotency-Key": "x", **headers})
    assert response.status_code == status
    check_openapi("/runs", "post", response)


def test_non_json_and_oversized_bodies_are_refused(api):
    not_json = api.post(
        "/runs", data=b"{nope", headers={"Idempotency-Key": "x", "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and check_openapi("/runs", "post", not_json)
    huge = api.post("/runs", data=b"{" + b" " * (70 * 1024) + b"}", headers={"Idempotency-Key": "x"})
    assert huge.status_code == 413 and check_openapi("/runs", "post", huge)


def test_get_run_shows_the_ledger_record_and_the_live_state(api, dataflow):
    key = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-03"}}).get_json()["run_key"]
    dataflow.advance(1.5)
    response = api.get(f"/runs/{key}")
    body = check_openapi("/runs/{runKey}", "get", response)
    assert body["run"]["run_key"] == key and body["run"]["trigger"] == "api"
    assert body["live"]["backend_state"] == "JOB_STATE_RUNNING"
    missing = api.get("/runs/api-00000000000000000000")
    assert missing.status_code == 404 and check_openapi("/runs/{runKey}", "get", missing)


def test_cancel_asks_the_backend_to_stop_the_job(api, dataflow):
    key = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-04"}}).get_json()["run_key"]
    response = api.post(f"/runs/{key}:cancel")
    assert response.status_code == 202 and check_openapi("/runs/{runKey}:cancel", "post", response)
    dataflow.advance(10)
    assert dataflow.jobs()[0]["currentState"] == "JOB_STATE_CANCELLED"


def test_pipelines_lists_inputs_and_whether_each_can_be_launched_by_hand(api):
    body = check_openapi("/pipelines", "get", api.get("/pipelines"))
    by_name = {p["name"]: p for p in body["pipelines"]}
    assert by_name["backfill"]["launchable"] and not by_name["events-only"]["launchable"]
    day = next(i for i in by_name["backfill"]["inputs"] if i["name"] == "day")
    assert day == {
        "name": "day",
        "required": True,
        "pattern": "[0-9]{4}-[0-9]{2}-[0-9]{2}",
        "description": "YYYY-MM-DD",
        "default": None,
    }


def test_unknown_routes_and_methods_are_json_errors(api):
    assert (
        api.get("/nowhere").status_code == 404
        and api.get("/nowhere").get_json()["error"]["status"] == "NOT_FOUND"
    )
    assert api.get("/runs").status_code == 405


# --------------------------------------------------------------------------------------------
# ID token verification (the optional second lock)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signing():
    """An RSA key, and its public half served as a Google-style certs document on loopback."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.auth import crypt

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    certs = json.dumps({"test-key": public_pem})
    fetches: list[str] = []

    def serve(env, sr):
        fetches.append(env["PATH_INFO"])
        return Response(certs, mimetype="application/json")(env, sr)

    server = make_server("127.0.0.1", 0, serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signer = crypt.RSASigner.from_string(private_pem, key_id="test-key")
    yield signer, f"http://127.0.0.1:{server.server_port}/certs", fetches
    server.shutdown()


def id_token(signer, **claims):
    from google.auth import jwt

    now = int(time.time())
    payload = {
        "iss": "https://accounts.google.com",
        "aud": "https://api.example",
        "iat": now,
        "exp": now + 300,
        "email": "ci@project.iam.gserviceaccount.com",
        "email_verified": True,
        **claims,
    }
    return jwt.encode(signer, payload).decode()


@pytest.fixture
def locked_api(api, signing, monkeypatch):
    monkeypatch.setenv("API_AUDIENCE", "https://api.example")
    monkeypatch.setenv("API_ID_TOKEN_CERTS_URL", signing[1])
    monkeypatch.setenv("API_ALLOWED_CALLERS", "ci@project.iam.gserviceaccount.com")
    return api


@pytest.mark.parametrize(
    "claims,status",
    [
        ({}, 200),
        ({"aud": "https://someone-else"}, 401),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, 401),
        ({"iss": "https://evil.example"}, 401),
        ({"email": "intruder@example.com"}, 403),
    ],
)
def test_id_tokens_are_checked_for_audience_issuer_expiry_and_caller(locked_api, signing, claims, status):
    token = id_token(signing[0], **claims)
    response = locked_api.get("/pipelines", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == status, response.get_json()


def test_without_a_token_the_locked_api_answers_401(locked_api):
    response = locked_api.get("/pipelines")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


def test_google_certificates_are_fetched_once_per_process_not_per_request(locked_api, signing, monkeypatch):
    from handlers.entry import api as rest

    monkeypatch.setattr(rest, "_certs", {})
    url = f"{signing[1]}?fresh=1"  # a URL no other test warmed
    monkeypatch.setenv("API_ID_TOKEN_CERTS_URL", url)
    before = len(signing[2])
    for _ in range(5):
        token = id_token(signing[0])
        assert locked_api.get("/pipelines", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert len(signing[2]) - before == 1


def test_unreachable_certificates_answer_503_try_again_not_401(locked_api, signing, monkeypatch):
    from handlers.core.clients import is_loopback  # the closed port below is on this machine
    from handlers.entry import api as rest

    monkeypatch.setattr(rest, "_certs", {})
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there now
    url = f"http://127.0.0.1:{port}/certs"
    assert is_loopback(url)
    monkeypatch.setenv("API_ID_TOKEN_CERTS_URL", url)
    token = id_token(signing[0])
    response = locked_api.get("/pipelines", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["error"]["status"] == "UNAVAILABLE"


def test_a_certificates_endpoint_that_redirects_is_not_followed(locked_api, signing, monkeypatch):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from handlers.entry import api as rest

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", signing[1])  # the real certificates, one hop away
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(rest, "_certs", {})
    monkeypatch.setenv("API_ID_TOKEN_CERTS_URL", f"http://127.0.0.1:{server.server_port}/certs")
    fetched_before = len(signing[2])
    try:
        token = id_token(signing[0])
        response = locked_api.get("/pipelines", headers={"Authorization": f"Bearer {token}"})
    finally:
        server.shutdown()
    # the redirect is refused (a 503 to try again), not followed to the certificates it names
    assert response.status_code == 503 and response.get_json()["error"]["status"] == "UNAVAILABLE"
    assert len(signing[2]) == fetched_before


def test_verifying_tokens_while_allowing_every_caller_is_warned_about(api, signing, monkeypatch, capsys):
    from handlers.entry import api as rest

    monkeypatch.setattr(rest, "_open_api_warned", False)
    monkeypatch.setenv("API_AUDIENCE", "https://api.example")
    monkeypatch.setenv("API_ID_TOKEN_CERTS_URL", signing[1])
    monkeypatch.delenv("API_ALLOWED_CALLERS", raising=False)
    token = id_token(signing[0], email="anyone@example.com")
    assert api.get("/pipelines", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert api.get("/pipelines", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    warnings = [
        line for line in capsys.readouterr().out.splitlines() if "API_ALLOWED_CALLERS is empty" in line
    ]
    assert len(warnings) == 1


def test_a_manual_run_that_failed_permanently_can_be_retried_with_the_same_key(api, dataflow):
    from handlers.follow.tracking import Tracker
    from handlers.launch.runtime import default_runtime

    # GIVEN a manual launch the backend refuses once (400: a permanent failure)
    dataflow.inject("launch", 400)
    failed = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-02"}}, key="retry-me")
    assert failed.status_code == 202 and failed.get_json()["result"] == "failed"
    # WHILE its failure is not announced yet, the same request is asked to come back shortly
    early = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-02"}}, key="retry-me")
    assert early.status_code == 503 and early.headers["Retry-After"]
    # WHEN the failure was announced (the sweep publishes the LAUNCH_FAILED completion)
    key = failed.get_json()["run_key"]
    assert Tracker(default_runtime()).sweep().finished == {key: "LAUNCH_FAILED"}
    # THEN the same idempotency key launches it, as the same run, once
    again = start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-02"}}, key="retry-me")
    body = check_openapi("/runs", "post", again)
    assert body["result"] == "launched" and body["run_key"] == key
    assert (
        start(api, {"pipeline": "backfill", "parameters": {"day": "2026-11-02"}}, key="retry-me").get_json()[
            "result"
        ]
        == "duplicate"
    )
    assert len([launch for launch in dataflow.launches() if launch["status"] == 200]) == 1
    record = api.get(f"/runs/{key}").get_json()["run"]
    assert record["attempts"] == 2 and record["completion"] is None
