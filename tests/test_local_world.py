"""The one assembler (``local/world.py``) and the backend kits (``local/kits/``): what a config's
pipelines put in each emulator, which variables point the functions at them, and that ``close``
stops what was started."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from handlers.backends import registry
from handlers.model.config import Config, build_config
from local.kits import KITS, Timing, kit
from local.kits.base import control
from local.world import LocalWorld, config_doc, pipeline_doc

BACKENDS = ("dataflow", "dataflow-flex", "datafusion", "fabric")


def _config() -> Config:
    pipelines = {
        f"p-{b}": pipeline_doc(b, f"p-{b}", parameters={"inputFile": "gs://{bucket}/{name}"})
        for b in BACKENDS
    }
    pipelines["p-fabric"]["credentials"] = "FABRIC_SALES"
    triggers = {
        f"t-{b}": {"storage": {"bucket": "in", "glob": f"{b}/**"}, "pipeline": f"p-{b}"} for b in BACKENDS
    }
    return build_config(
        config_doc(ledger_bucket="l", completion_topic="c", pipelines=pipelines, triggers=triggers)
    )


def test_every_backend_of_the_registry_has_a_kit_that_serves_it() -> None:
    assert set(registry.names()) <= set(KITS)
    for name in KITS:
        assert name in kit(name).backends
        assert kit(name).title(name)


def test_the_world_starts_one_emulator_per_kit_holding_what_the_config_needs(tmp_path: Path) -> None:
    config = _config()
    timing = Timing(pending_seconds=4, run_seconds=9, dedupe=False, poll_after_seconds=0)
    with LocalWorld(tmp_path) as world:
        started = world.start_backends(BACKENDS, pipelines=config.pipelines.values(), timing=timing)
        assert sorted(started) == ["dataflow", "datafusion", "fabric"]  # one Dataflow emulator for both

        templates = control(started["dataflow"].url, "GET", "templates")["templates"]
        kinds = {t["gcsPath"]: t["kind"] for t in templates}
        assert kinds == {
            "gs://local-templates/dataflow/p-dataflow": "classic",
            "gs://local-templates/dataflow-flex/p-dataflow-flex": "flex",
        }
        (app,) = control(started["datafusion"].url, "GET", "apps")["apps"]
        assert (app["app"], app["behavior"]["pending_seconds"], app["behavior"]["run_seconds"]) == (
            "p_datafusion",
            2,
            9,
        )
        (item,) = control(started["fabric"].url, "GET", "items")["items"]
        assert item["item"] == config.pipelines["p-fabric"].options["item"]
        assert item["behavior"]["dedupe"] is False
        (client,) = control(started["fabric"].url, "GET", "clients")["clients"]

        env = world.backend_env()
        assert env["DATAFLOW_API_ENDPOINT"] == started["dataflow"].url
        assert env["DATAFUSION_API_ENDPOINT"] == started["datafusion"].url
        assert env["FABRIC_API_ENDPOINT"] == env["FABRIC_TOKEN_ENDPOINT"] == started["fabric"].url
        assert env["FABRIC_SALES_CLIENT_ID"] == client["client_id"]
        assert all(kit(name).jobs(handle.url) == [] for name, handle in started.items())
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{started['dataflow'].url}/_emulator/templates", timeout=2)


def test_an_emulator_in_its_own_process_gets_its_fixtures_over_the_control_api(tmp_path: Path) -> None:
    config = _config()
    with LocalWorld(tmp_path) as world:
        (handle,) = world.start_backends(
            ["dataflow"],
            pipelines=config.pipelines.values(),
            own_process=True,
            tick_interval=1,
        ).values()
        paths = {t["gcsPath"] for t in control(handle.url, "GET", "templates")["templates"]}
        assert "gs://local-templates/dataflow/p-dataflow" in paths
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{handle.url}/_emulator/templates", timeout=2)


def test_a_launch_path_is_recognised_by_its_kit_only() -> None:
    paths = {
        "dataflow": "/v1b3/projects/p/locations/r/templates:launch",
        "datafusion": "/v3/namespaces/default/apps/a/workflows/DataPipelineWorkflow/start",
        "fabric": "/v1/workspaces/w/items/i/jobs/Pipeline/instances",
    }
    for backend, path in paths.items():
        assert [b for b in paths if kit(b).is_launch_path(path)] == [backend]
