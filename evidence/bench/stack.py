"""The local services every end-to-end benchmark runs against, and the config they share.

``local_services()`` has :class:`local.world.LocalWorld` start the metadata server, Google's Pub/Sub
emulator, fake-gcs-server and the Dataflow emulator (through its kit, holding the config's one
template) on loopback, points this process's environment at them (as the functions see it on the
local stack), and creates the ledger bucket, the landing bucket and the topics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from handlers.model.config import build_config
from local.kits import Timing, kit
from local.kits.base import control
from local.services import GCS_NOTIFICATION_TOPIC, storage_client
from local.world import LocalWorld, environment
from local.world import config_doc as world_config_doc

LEDGER_BUCKET = "bench-ledger"
TOPIC = "bench-completions"
SUBSCRIPTION = "bench-completions-watch"
TEMPLATE = "gs://bench-templates/wordcount"


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
    """What a benchmark uses of the local world."""

    gcs: Any  # google-cloud-storage client on fake-gcs-server
    gcs_url: str
    pubsub_host: str
    dataflow_url: str
    project: str

    def dataflow_control(self, method: str, path: str, body: Any = None) -> Any:
        return control(self.dataflow_url, method, path, body, timeout=30) or {}

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the Dataflow emulator holds (its raw listing entries)."""
        return [job["raw"] for job in kit("dataflow").jobs(self.dataflow_url)]


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
    return world_config_doc(
        project=project,
        ledger_bucket=LEDGER_BUCKET,
        ledger_prefix=prefix,
        completion_topic=TOPIC,
        pipelines={"wordcount": storage_pipeline, "orders": message_pipeline, "manual": pipeline},
        triggers={
            "landing": {"storage": {"bucket": "landing"}, "pipeline": "wordcount"},
            "orders": {"pubsub": {"topic": "orders", "dedupe_by": "data.order"}, "pipeline": "orders"},
        },
        **settings,
    )


def write_config(path: Path, project: str, prefix: str, **settings: Any) -> Path:
    path.write_text(yaml.safe_dump(config_doc(project, prefix, **settings), sort_keys=False))
    return path


@contextlib.contextmanager
def local_services(
    *, tick_interval: float = 0.5, dataflow_in_process: bool = True, notifications: bool = False
) -> Iterator[Services]:
    """The local world of the benchmarks, with this process's environment pointing at it.

    ``dataflow_in_process=False`` runs the Dataflow emulator in its own process (so it does not
    share a GIL with what is measured); its one template's jobs run for an hour of emulator time.
    ``notifications``: fake-gcs-server publishes a notification per object finalized in bucket
    ``landing`` to the ``GCS_NOTIFICATION_TOPIC`` topic."""
    with LocalWorld() as world:
        metadata = world.start_metadata()
        pubsub = world.start_pubsub()
        gcs = world.start_gcs(
            notify_topic=GCS_NOTIFICATION_TOPIC if notifications else None,
            bucket="landing" if notifications else None,
        )
        pipelines = build_config(config_doc(world.project, "bench/")).pipelines.values()
        (dataflow,) = world.start_backends(
            ["dataflow"],
            pipelines=pipelines,
            timing=Timing(pending_seconds=0, run_seconds=3600),
            own_process=not dataflow_in_process,
            tick_interval=tick_interval,
        ).values()
        world.create(
            buckets=[LEDGER_BUCKET, "landing"],
            topics=[TOPIC, "orders"],
            pull={SUBSCRIPTION: TOPIC},
        )
        with environment({**metadata.env(), **world.function_env()}):
            yield Services(storage_client(gcs.url), gcs.url, pubsub.host, dataflow.url, world.project)
