"""A test world: one ledger bucket, one completion topic, a config and a runtime on real emulators."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from handlers.launch.ledger import Run
from handlers.launch.runtime import Runtime, make_runtime
from handlers.model.config import Config, build_config
from local.services import LOCAL_PROJECT, pull_all
from local.world import LocalWorld, config_doc

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "handlers" / "schemas" / "run-completed.v1.json").read_text())


def wait_until(
    predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class World:
    """One test's corner of the session's :class:`~local.world.LocalWorld`."""

    def __init__(self, local: LocalWorld, gcs: Any, name: str, tmp_path: Path) -> None:
        assert local.pubsub is not None
        self.gcs = gcs
        self.pubsub_host = local.pubsub.host
        self.name = name
        self.tmp_path = tmp_path
        self.project = LOCAL_PROJECT
        self.ledger_bucket = f"{name}-ledger"
        self.completion_topic = f"{name}-completions"
        self.completion_sub = f"{name}-completions-watch"
        local.create(
            buckets=[self.ledger_bucket],
            topics=[self.completion_topic],
            pull={self.completion_sub: self.completion_topic},
        )
        self._seen_completions: list[dict[str, Any]] = []

    # -- config and runtime ----------------------------------------------------------------------
    def config_doc(
        self, pipelines: dict[str, Any], triggers: dict[str, Any], **settings: Any
    ) -> dict[str, Any]:
        return config_doc(
            ledger_bucket=self.ledger_bucket,
            completion_topic=self.completion_topic,
            pipelines=pipelines,
            triggers=triggers,
            **{"launch_budget": "20s", **settings},
        )

    def config(self, pipelines: dict[str, Any], triggers: dict[str, Any], **settings: Any) -> Config:
        return build_config(self.config_doc(pipelines, triggers, **settings))

    def write_config(self, pipelines: dict[str, Any], triggers: dict[str, Any], **settings: Any) -> Path:
        path = self.tmp_path / "pipelines.yaml"
        doc = self.config_doc(pipelines, triggers, **settings)
        build_config(doc)  # fail early and clearly on a bad test config
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def runtime(self, config: Config, **backends: Any) -> Runtime:
        return make_runtime(config, backends=dict(backends))

    # -- observing -------------------------------------------------------------------------------
    def runs(self, runtime: Runtime) -> list[Run]:
        return [r for r in (runtime.ledger.get(k) for k in runtime.ledger.all_keys()) if r is not None]

    def completions(self, *, expect: int | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every completion message published so far (validated against the committed JSON Schema)."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = pull_all(
                self.project, self.completion_sub, timeout=0.5, min_messages=0, emulator_host=self.pubsub_host
            )
            for m in msgs:
                event = json.loads(m["data"])
                if event.get("type") == "io.eventpipelines.run.completed.v1":
                    jsonschema.validate(event, SCHEMA)
                self._seen_completions.append(
                    {"event": event, "attributes": dict(m["attributes"]), "message_id": m["message_id"]}
                )
            if expect is None or len(self._seen_completions) >= expect or time.monotonic() > deadline:
                if expect is None or time.monotonic() > deadline:
                    break
                # give a duplicate a chance to show up before declaring the count
                time.sleep(0.3)
                more = pull_all(
                    self.project,
                    self.completion_sub,
                    timeout=0.3,
                    min_messages=0,
                    emulator_host=self.pubsub_host,
                )
                for m in more:
                    event = json.loads(m["data"])
                    self._seen_completions.append(
                        {"event": event, "attributes": dict(m["attributes"]), "message_id": m["message_id"]}
                    )
                break
            time.sleep(0.1)
        return list(self._seen_completions)
