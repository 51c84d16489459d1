"""Specification of the local services (local/services.py) and of the emulator behaviours
the project relies on. Everything runs against the real emulators over loopback.
"""

from __future__ import annotations

import base64
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import PreconditionFailed
from google.cloud import storage
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from local import services
from local.services import (
    GCS_NOTIFICATION_TOPIC,
    LOCAL_PROJECT,
    FakeGcs,
    FunctionServer,
    PubSubEmulator,
    ServiceError,
    delete_subscription,
    ensure_bucket,
    ensure_pull_subscription,
    ensure_push_subscription,
    ensure_topic,
    free_port,
    live_processes_in_group,
    publish,
    pull_all,
)

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

PushHandler = Callable[[dict[str, Any]], int]


@pytest.fixture
def push_receiver() -> Iterator[Callable[[PushHandler], tuple[str, queue.Queue[dict[str, Any]]]]]:
    """Start tiny HTTP receivers (werkzeug in a thread); each records JSON bodies in a queue.

    Call it with a function ``body -> status`` and get ``(url, queue)`` back.
    """
    servers = []

    def start(handler: PushHandler) -> tuple[str, queue.Queue[dict[str, Any]]]:
        received: queue.Queue[dict[str, Any]] = queue.Queue()

        @Request.application
        def app(request: Request) -> Response:
            body = json.loads(request.get_data())
            body["_path"] = request.path
            received.put(body)
            return Response(status=handler(body))

        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", received

    yield start
    for server in servers:
        server.shutdown()


def _assert_group_gone(pgid: int) -> None:
    """No live process is left in the process group (and the leader pid is gone too)."""
    assert live_processes_in_group(pgid) == []
    assert not Path(f"/proc/{pgid}").exists() or "Z" in Path(f"/proc/{pgid}/stat").read_text().split()[2]


# --------------------------------------------------------------------------------------------------
# basics and error messages
# --------------------------------------------------------------------------------------------------


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_emulator_fails_with_install_instructions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud, no java
    monkeypatch.setattr(services, "SDK_ROOT_CANDIDATES", (tmp_path / "no-sdk",))
    with pytest.raises(ServiceError) as err:
        services.find_pubsub_emulator()
    message = str(err.value)
    assert "gcloud components install pubsub-emulator" in message
    assert "google-cloud-cli-pubsub-emulator" in message
    assert "Java 11" in message


def test_missing_java_is_reported_with_install_instructions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    launcher = _fake_executable(tmp_path / "cloud-pubsub-emulator")
    monkeypatch.setenv("PUBSUB_EMULATOR_BIN", str(launcher))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError, match="Java") as err:
        services.find_pubsub_emulator()
    assert "gcloud components install pubsub-emulator" in str(err.value)


def _fake_executable(path: Path, script: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_emulator_is_found_through_gcloud_info(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sdk = tmp_path / "sdk"
    launcher = _fake_executable(sdk / services.EMULATOR_RELATIVE_PATH)
    _fake_executable(tmp_path / "bin/gcloud", f"echo {sdk}")  # not inside the SDK: needs `gcloud info`
    _fake_executable(tmp_path / "bin/java")
    monkeypatch.delenv("PUBSUB_EMULATOR_BIN", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(services, "SDK_ROOT_CANDIDATES", ())
    assert services.find_pubsub_emulator() == launcher


def test_emulator_is_found_in_a_usual_sdk_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    launcher = _fake_executable(tmp_path / "sdk" / services.EMULATOR_RELATIVE_PATH)
    monkeypatch.delenv("PUBSUB_EMULATOR_BIN", raising=False)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    _fake_executable(tmp_path / "jdk/bin/java")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(services, "SDK_ROOT_CANDIDATES", (tmp_path / "nothing", tmp_path / "sdk"))
    assert services.find_pubsub_emulator() == launcher


def test_pubsub_helpers_refuse_to_run_without_an_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    with pytest.raises(ServiceError, match="PUBSUB_EMULATOR_HOST"):
        ensure_topic(LOCAL_PROJECT, "never-created")


# --------------------------------------------------------------------------------------------------
# Pub/Sub emulator
# --------------------------------------------------------------------------------------------------


def test_publish_then_pull_roundtrip(pubsub_emulator: PubSubEmulator, unique_name: str) -> None:
    assert ensure_topic(LOCAL_PROJECT, unique_name) == f"projects/{LOCAL_PROJECT}/topics/{unique_name}"
    ensure_topic(LOCAL_PROJECT, unique_name)  # idempotent
    ensure_pull_subscription(LOCAL_PROJECT, unique_name, unique_name)
    ensure_pull_subscription(LOCAL_PROJECT, unique_name, unique_name)  # idempotent

    message_id = publish(LOCAL_PROJECT, unique_name, b'{"k": 1}', {"origin": "test"})
    messages = pull_all(LOCAL_PROJECT, unique_name)

    assert [(m["data"], m["attributes"], m["message_id"]) for m in messages] == [
        (b'{"k": 1}', {"origin": "test"}, message_id)
    ]
    assert pull_all(LOCAL_PROJECT, unique_name, min_messages=0) == []  # acknowledged: not redelivered


def test_helpers_accept_the_emulator_host_explicitly(
    pubsub_emulator: PubSubEmulator, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST")
    host = pubsub_emulator.host
    ensure_topic(LOCAL_PROJECT, unique_name, emulator_host=host)
    ensure_pull_subscription(LOCAL_PROJECT, unique_name, unique_name, emulator_host=host)
    publish(LOCAL_PROJECT, unique_name, "text", emulator_host=host)
    assert [m["data"] for m in pull_all(LOCAL_PROJECT, unique_name, emulator_host=host)] == [b"text"]


def test_push_subscription_posts_the_push_body(
    pubsub_emulator: PubSubEmulator, unique_name: str, push_receiver: Any
) -> None:
    url, received = push_receiver(lambda body: 204)
    ensure_topic(LOCAL_PROJECT, unique_name)
    sub = ensure_push_subscription(LOCAL_PROJECT, unique_name, unique_name, f"{url}/push")
    try:
        message_id = publish(LOCAL_PROJECT, unique_name, b"hello", {"a": "1"})
        body = received.get(timeout=5)
    finally:
        delete_subscription(LOCAL_PROJECT, unique_name)

    assert body["_path"] == "/push"
    assert body["subscription"] == sub
    message = body["message"]
    assert base64.b64decode(message["data"]) == b"hello"
    assert message["attributes"] == {"a": "1"}
    assert message["messageId"] == message["message_id"] == message_id
    assert message["publishTime"]


def test_push_is_redelivered_with_the_same_message_id_after_a_non_2xx_answer(
    pubsub_emulator: PubSubEmulator, unique_name: str, push_receiver: Any
) -> None:
    answers = iter([500])
    url, received = push_receiver(lambda body: next(answers, 200))
    ensure_topic(LOCAL_PROJECT, unique_name)
    ensure_push_subscription(LOCAL_PROJECT, unique_name, unique_name, url)
    try:
        message_id = publish(LOCAL_PROJECT, unique_name, b"retry me")
        first, second = received.get(timeout=5), received.get(timeout=5)
    finally:
        delete_subscription(LOCAL_PROJECT, unique_name)
    assert first["message"]["messageId"] == second["message"]["messageId"] == message_id


def test_existing_subscription_is_repointed(pubsub_emulator: PubSubEmulator, unique_name: str) -> None:
    ensure_topic(LOCAL_PROJECT, unique_name)
    ensure_push_subscription(LOCAL_PROJECT, unique_name, unique_name, "http://127.0.0.1:9/nowhere")
    ensure_pull_subscription(LOCAL_PROJECT, unique_name, unique_name)  # back to pull
    publish(LOCAL_PROJECT, unique_name, b"x")
    assert [m["data"] for m in pull_all(LOCAL_PROJECT, unique_name)] == [b"x"]


def test_emulator_stop_leaves_no_java_process(tmp_path: Path) -> None:
    emulator = PubSubEmulator().start(data_dir=tmp_path)
    pgid = emulator.pid
    assert pgid is not None and live_processes_in_group(pgid) == [pgid]
    assert emulator.env() == {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{emulator.port}"}
    emulator.stop()
    _assert_group_gone(pgid)
    assert not services.port_accepts_connections(emulator.port or 0)
    assert "Server started" in emulator.log_text()  # the log survives in data_dir
    emulator.stop()  # idempotent


# --------------------------------------------------------------------------------------------------
# fake-gcs-server
# --------------------------------------------------------------------------------------------------


def test_conditional_create_succeeds_once(gcs: storage.Client, unique_name: str) -> None:
    bucket = ensure_bucket(gcs, unique_name)
    assert ensure_bucket(gcs, unique_name).name == bucket.name  # idempotent
    bucket.blob("runs/key.json").upload_from_string('{"n": 1}', if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("runs/key.json").upload_from_string('{"n": 2}', if_generation_match=0)
    assert bucket.blob("runs/key.json").download_as_bytes() == b'{"n": 1}'


def test_compare_and_swap_on_generation(gcs: storage.Client, unique_name: str) -> None:
    bucket = ensure_bucket(gcs, unique_name)
    blob = bucket.blob("state.json")
    blob.upload_from_string("v1", if_generation_match=0)
    first = bucket.get_blob("state.json")
    assert first is not None and first.generation

    bucket.blob("state.json").upload_from_string("v2", if_generation_match=first.generation)
    with pytest.raises(PreconditionFailed):  # a writer still holding the old generation loses
        bucket.blob("state.json").upload_from_string("v2-stale", if_generation_match=first.generation)
    current = bucket.get_blob("state.json")
    assert current is not None and current.generation != first.generation
    assert current.download_as_bytes() == b"v2"


def test_upload_publishes_an_object_finalize_notification(
    gcs_server: FakeGcs, gcs: storage.Client, unique_name: str
) -> None:
    # Every test's uploads go to the same topic: listen on our own subscription, keep our bucket.
    ensure_pull_subscription(LOCAL_PROJECT, GCS_NOTIFICATION_TOPIC, unique_name)
    try:
        bucket = ensure_bucket(gcs, unique_name)
        bucket.blob("in/data file #1.csv").upload_from_string("a,b\n", content_type="text/csv")
        blob = bucket.get_blob("in/data file #1.csv")
        assert blob is not None
        mine: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while not mine and time.monotonic() < deadline:
            messages = pull_all(LOCAL_PROJECT, unique_name, timeout=1)
            mine = [m for m in messages if m["attributes"].get("bucketId") == unique_name]
    finally:
        delete_subscription(LOCAL_PROJECT, unique_name)

    assert len(mine) == 1
    attributes = mine[0]["attributes"]
    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["objectId"] == "in/data file #1.csv"
    assert attributes["objectGeneration"] == str(blob.generation)
    assert attributes["payloadFormat"] == "JSON_API_V1"
    resource = json.loads(mine[0]["data"])
    assert (resource["bucket"], resource["name"]) == (unique_name, "in/data file #1.csv")


def test_fake_gcs_stop_leaves_no_process(pubsub_emulator: PubSubEmulator) -> None:
    server = FakeGcs().start()
    pgid = server.pid
    assert pgid is not None
    assert server.env() == {"STORAGE_EMULATOR_HOST": server.url}
    server.stop()
    _assert_group_gone(pgid)


# --------------------------------------------------------------------------------------------------
# functions-framework
# --------------------------------------------------------------------------------------------------

HTTP_FUNCTION = """\
import os
import sys

def hello(request):
    print("handling", request.path, file=sys.stderr, flush=True)
    return "hello " + os.environ["GREETING"]
"""

CLOUDEVENT_FUNCTION = """\
import json
import os

import functions_framework

@functions_framework.cloud_event
def on_message(event):
    record = {"type": event["type"], "source": event["source"], "id": event["id"], "data": event.data}
    with open(os.environ["OUT_FILE"], "a") as out:
        out.write(json.dumps(record) + "\\n")
"""


def test_function_server_runs_an_http_function_and_stops(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(HTTP_FUNCTION)
    with FunctionServer(tmp_path, "hello", signature_type="http", env={"GREETING": "world"}) as server:
        status, body = services.http_get(f"{server.url}/ping", timeout=5)
        pgid = server.pid
        assert pgid is not None
    assert (status, body) == (200, b"hello world")
    assert "handling /ping" in server.log_text()  # log readable after stop
    _assert_group_gone(pgid)  # gunicorn master and worker both gone


def test_function_server_reports_an_import_error(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def broken(:\n")
    with pytest.raises(ServiceError, match="SyntaxError"):
        FunctionServer(tmp_path, "broken", signature_type="http").start()


def test_push_into_functions_framework_becomes_a_message_published_cloudevent(
    pubsub_emulator: PubSubEmulator, unique_name: str, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text(CLOUDEVENT_FUNCTION)
    out_file = tmp_path / "events.jsonl"
    ensure_topic(LOCAL_PROJECT, unique_name)
    with FunctionServer(tmp_path, "on_message", env={"OUT_FILE": str(out_file)}) as server:
        endpoint = f"{server.url}/projects/{LOCAL_PROJECT}/topics/{unique_name}"
        ensure_push_subscription(LOCAL_PROJECT, unique_name, unique_name, endpoint)
        try:
            message_id = publish(LOCAL_PROJECT, unique_name, b'{"x": 1}', {"k": "v"})
            deadline = time.monotonic() + 10
            while not out_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            delete_subscription(LOCAL_PROJECT, unique_name)

    event = json.loads(out_file.read_text().splitlines()[0])
    assert event["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert event["source"] == f"//pubsub.googleapis.com/projects/{LOCAL_PROJECT}/topics/{unique_name}"
    assert event["id"] == message_id
    assert base64.b64decode(event["data"]["message"]["data"]) == b'{"x": 1}'
    assert event["data"]["message"]["attributes"] == {"k": "v"}
