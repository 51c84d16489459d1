"""The local services every end-to-end benchmark runs against, and the config they share.

``local_services()`` starts Google's Pub/Sub emulator, fake-gcs-server and the project's Dataflow
emulator on loopback, points the environment at them (as the functions see it on the local stack),
creates the ledger bucket and the completion topic, and registers one classic template whose jobs
run for ``run_seconds`` of emulator time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

LEDGER_BUCKET = "bench-ledger"
TOPIC = "bench-completions"
SUBSCRIPTION = "bench-completions-watch"
TEMPLATE = "gs://bench-templates/wordcount"
REGION = "europe-west1"


class CallCounter:
    """Counts the requests a ``requests`` session sends, by ``"<kind> <METHOD>"`` (thread-safe):
    install ``counter.hook(kind)`` in ``session.hooks["response"]``."""

    def __init__(self) -> None:
        import collections
        import threading

        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def hook(self, kind: str) -> Any:
        def count(response: Any, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[f"{kind} {response.request.method}"] += 1
            return response

        return count

    def total(self, kind: str) -> int:
        return sum(n for key, n in self.calls.items() if key.startswith(f"{kind} "))


@dataclass
class Services:
    gcs: Any  # google-cloud-storage client on fake-gcs-server
    gcs_url: str
    pubsub_host: str
    dataflow_url: str
    project: str

    def dataflow_control(self, method: str, path: str, body: Any = None) -> Any:
        answer = requests.request(method, f"{self.dataflow_url}/_emulator/{path}", json=body, timeout=30)
        answer.raise_for_status()
        return answer.json() if answer.content else {}

    def register_template(self, *, run_seconds: float = 3600, pending_seconds: float = 0) -> None:
        self.dataflow_control(
            "POST",
            "templates",
            {
                "gcsPath": TEMPLATE,
                "kind": "classic",
                "name": "wordcount",
                "behavior": {
                    "pending_seconds": pending_seconds,
                    "run_seconds": run_seconds,
                    "outcome": "DONE",
                },
                "parameters": [
                    {"name": n, "label": n, "helpText": n, "isOptional": True}
                    for n in ("inputFile", "output")
                ],
            },
        )

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.dataflow_control("GET", "jobs").get("jobs", []))

    def backend_requests(self) -> list[dict[str, Any]]:
        return list(self.dataflow_control("GET", "requests").get("requests", []))


def config_doc(project: str, prefix: str, **settings: Any) -> dict[str, Any]:
    """A storage trigger, a Pub/Sub trigger and an API-launchable pipeline, all on one template."""
    pipeline = {
        "backend": "dataflow",
        "template": TEMPLATE,
        "parameters": {"inputFile": "{input.file}", "output": "gs://bench-out/{run_key}/"},
        "inputs": {"file": {"description": "input object"}},
    }
    storage_pipeline = {
        **pipeline,
        "parameters": {"inputFile": "gs://{bucket}/{name}", "output": "gs://o/{stem}/"},
    }
    message_pipeline = {
        **pipeline,
        "parameters": {"inputFile": "{data.file}", "output": "gs://o/{data.order}/"},
    }
    for p in (storage_pipeline, message_pipeline):
        p.pop("inputs")
    return {
        "settings": {
            "project": project,
            "region": REGION,
            "ledger": {"bucket": LEDGER_BUCKET, "prefix": prefix, "lease": "10m"},
            "completion_topic": TOPIC,
            "max_event_age": "1h",
            **settings,
        },
        "pipelines": {"wordcount": storage_pipeline, "orders": message_pipeline, "manual": pipeline},
        "triggers": {
            "landing": {"storage": {"bucket": "landing"}, "pipeline": "wordcount"},
            "orders": {"pubsub": {"topic": "orders", "dedupe_by": "data.order"}, "pipeline": "orders"},
        },
    }


def write_config(path: Path, project: str, prefix: str, **settings: Any) -> Path:
    path.write_text(yaml.safe_dump(config_doc(project, prefix, **settings), sort_keys=False))
    return path


@contextlib.contextmanager
def dataflow_process(tick_interval: float) -> Iterator[str]:
    """The Dataflow emulator in its own process (so it does not share a GIL with what is measured)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.emulators.dataflow",
            "--port",
            "0",
            "--tick-interval",
            str(tick_interval),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        yield str(ready["url"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def local_services(
    *, tick_interval: float = 0.5, dataflow_in_process: bool = True, notifications: bool = False
) -> Iterator[Services]:
    """``notifications``: fake-gcs-server publishes a notification per object finalized in bucket
    ``landing`` to the ``GCS_NOTIFICATION_TOPIC`` topic."""
    from local.emulators import dataflow as dataflow_emulator
    from local.metadata_server import MetadataServer
    from local.services import (
        GCS_NOTIFICATION_TOPIC,
        LOCAL_PROJECT,
        FakeGcs,
        PubSubEmulator,
        ensure_bucket,
        ensure_pull_subscription,
        ensure_topic,
        storage_client,
    )

    saved = dict(os.environ)
    try:
        with MetadataServer() as metadata, PubSubEmulator().start() as pubsub:
            os.environ.update(metadata.env())
            os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
            gcs_args: dict[str, Any] = {}
            if notifications:
                ensure_topic(LOCAL_PROJECT, GCS_NOTIFICATION_TOPIC, emulator_host=pubsub.host)
                gcs_args = {"topic": GCS_NOTIFICATION_TOPIC, "bucket": "landing"}
            with FakeGcs().start(**gcs_args) as gcs_server, contextlib.ExitStack() as stack:
                if dataflow_in_process:
                    dataflow_url = stack.enter_context(
                        dataflow_emulator.serve(port=0, tick_interval=tick_interval)
                    ).url
                else:
                    dataflow_url = stack.enter_context(dataflow_process(tick_interval))
                os.environ.update(
                    {
                        "STORAGE_EMULATOR_HOST": gcs_server.url,
                        "DATAFLOW_API_ENDPOINT": dataflow_url,
                        "PIPELINES_ANONYMOUS_AUTH": "true",
                        "GOOGLE_CLOUD_PROJECT": LOCAL_PROJECT,
                    }
                )
                client = storage_client(gcs_server.url)
                ensure_bucket(client, LEDGER_BUCKET)
                ensure_bucket(client, "landing")
                ensure_topic(LOCAL_PROJECT, TOPIC, emulator_host=pubsub.host)
                ensure_topic(LOCAL_PROJECT, "orders", emulator_host=pubsub.host)
                ensure_pull_subscription(LOCAL_PROJECT, TOPIC, SUBSCRIPTION, emulator_host=pubsub.host)
                services = Services(client, gcs_server.url, pubsub.host, dataflow_url, LOCAL_PROJECT)
                services.register_template()
                yield services
    finally:
        os.environ.clear()
        os.environ.update(saved)
