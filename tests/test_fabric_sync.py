"""Specification: a Fabric Dataflow Gen2 from its name to its result, against the local Fabric emulator.

The repo keeps the dataflow's definition (examples/fabric/sales-dataflow: queryMetadata.json,
mashup.pq, .platform); the config names the workspace and the dataflow by display name. `sync`
creates the dataflow when it is missing and updates it when the repo differs, through Fabric's
long-running operations, then applies the changes; a launch checks its parameters against the
dataflow's public ones before anything runs, and runs it through the dataflow execute path.
Assertions are on what reached the emulator.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.backends.contract import LaunchRequest, SyncChange
from handlers.backends.fabric.jobs import Fabric
from handlers.backends.fabric.lookup import NameAmbiguous, NameCache, NameNotFound
from handlers.core.errors import ParameterError
from handlers.entry.cli import main
from handlers.model.config import Pipeline
from local.emulators.base import ServerHandle
from local.emulators.fabric import serve
from local.kits.fabric import FabricHarness
from tests.support.emulator_client import emulator_fixture

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fabric"

emulator = emulator_fixture(serve)


class Workspace:
    """Each test's own workspace (the emulator keeps items across tests): a new id and name."""

    id = ""
    name = ""


WS = Workspace()


@pytest.fixture
def fabric(emulator: ServerHandle) -> Iterator[FabricHarness]:
    harness = FabricHarness(emulator)
    harness.reset()
    harness.control("settings", {"page_size": 50, "lro_seconds": 0})
    WS.id, WS.name = str(uuid.uuid4()), f"Sales Analytics {uuid.uuid4().hex[:8]}"
    harness.control("workspaces", {"id": WS.id, "displayName": WS.name})
    yield harness
    harness.reset()


@pytest.fixture
def repo(tmp_path: Path, fabric: FabricHarness) -> Path:
    """A copy of the example config (in this test's workspace) and its dataflow definition."""
    shutil.copytree(EXAMPLE, tmp_path / "fabric")
    config = tmp_path / "fabric" / "pipelines.yaml"
    config.write_text(config.read_text().replace("workspace: Sales Analytics ", f"workspace: {WS.name} "))
    return tmp_path / "fabric"


def sales(**options: Any) -> Pipeline:
    base = {
        "workspace": WS.name,
        "item": "sales-dataflow",
        "definition": "sales-dataflow/",
        "execute_option": "ApplyChangesIfNeeded",
        "auth": "delegated",
    }
    return Pipeline(
        name="sales-refresh", backend="fabric", project="p", region="r", options={**base, **options}
    )


def launch_request(p: Pipeline, **parameters: str) -> LaunchRequest:
    return LaunchRequest("run-1", "sales-refresh-run-1", p, parameters, requested_at=dt.datetime.now(dt.UTC))


def paths(fabric: FabricHarness, method: str | None = None) -> list[str]:
    return [
        r["method"] + " " + r["path"]
        for r in fabric.requests_received()
        if method is None or r["method"] == method
    ]


def dataflows(fabric: FabricHarness) -> list[dict[str, Any]]:
    return [i for i in fabric.control("items", method="GET")["items"] if i["workspace"] == WS.id]


def synced(fabric: FabricHarness, repo: Path) -> tuple[Fabric, str]:
    backend = fabric.backend()
    step = backend.plan_sync(sales(), str(repo))
    assert step is not None
    return backend, backend.apply_sync(step)


# ------------------------------------------------------------------------------------------- sync


def test_a_missing_dataflow_is_created_from_the_repo_through_a_long_running_operation(
    fabric: FabricHarness, repo: Path
) -> None:
    backend = fabric.backend()
    # WHEN sync plans the pipeline: the dataflow is not in the workspace
    step = backend.plan_sync(sales(), str(repo))
    assert step is not None and step.change is SyncChange.CREATE and step.found is None
    assert step.summary == "new: .platform, mashup.pq, queryMetadata.json"
    assert dataflows(fabric) == []  # planning changed nothing
    # AND it is applied
    item = backend.apply_sync(step)
    # THEN the emulator holds the dataflow with the repo's three parts, applied
    [created] = dataflows(fabric)
    assert (
        created["item"] == item
        and created["displayName"] == "sales-dataflow"
        and created["type"] == "Dataflow"
    )
    assert created["definitionParts"] == [".platform", "mashup.pq", "queryMetadata.json"]
    assert created["appliedVersion"] == created["version"] == 1
    # AND it went: workspace by name, create (202) -> operation state -> result, then applyChanges
    posts = [p for p in paths(fabric) if "/oauth2/" not in p]
    assert posts[0] == "GET /v1/workspaces"
    create = f"POST /v1/workspaces/{WS.id}/dataflows"
    assert create in posts
    after = posts[posts.index(create) + 1 :]
    assert after[0].startswith("GET /v1/operations/") and after[1].endswith("/result")
    assert after[2] == f"POST /v1/workspaces/{WS.id}/dataflows/{item}/jobs/applyChanges/instances"
    [body] = [r["body"] for r in fabric.requests_received() if r["method"] + " " + r["path"] == create]
    assert body["displayName"] == "sales-dataflow"
    assert sorted(p["path"] for p in body["definition"]["parts"]) == [
        ".platform",
        "mashup.pq",
        "queryMetadata.json",
    ]
    assert {p["payloadType"] for p in body["definition"]["parts"]} == {"InlineBase64"}


def test_an_unchanged_definition_is_left_alone(fabric: FabricHarness, repo: Path) -> None:
    backend, item = synced(fabric, repo)
    fabric.reset()
    step = backend.plan_sync(sales(), str(repo))
    assert step is not None and step.change is SyncChange.UNCHANGED and step.found == item
    assert backend.apply_sync(step) == item
    # THEN Fabric's copy was read (getDefinition) and nothing was written
    assert any(p.endswith(f"/dataflows/{item}/getDefinition") for p in paths(fabric, "POST"))
    assert not [p for p in paths(fabric, "POST") if "updateDefinition" in p or "applyChanges" in p]
    assert dataflows(fabric)[0]["version"] == 1


def test_a_changed_definition_is_updated_and_its_changes_applied(fabric: FabricHarness, repo: Path) -> None:
    backend, item = synced(fabric, repo)
    mashup = repo / "sales-dataflow" / "mashup.pq"
    mashup.write_text(mashup.read_text().replace('{"amer", 20}', '{"amer", 25}'))
    # WHEN the repo's mashup changed
    step = backend.plan_sync(sales(), str(repo))
    assert step is not None and step.change is SyncChange.UPDATE and step.summary == "mashup.pq changed"
    fabric.reset()
    assert backend.apply_sync(step) == item
    # THEN the new mashup reached Fabric by updateDefinition, and the change was applied
    posts = paths(fabric, "POST")
    assert f"/v1/workspaces/{WS.id}/dataflows/{item}/updateDefinition" in " ".join(posts)
    assert posts[-1].endswith(f"/dataflows/{item}/jobs/applyChanges/instances")
    [flow] = dataflows(fabric)
    assert flow["version"] == flow["appliedVersion"] == 2
    assert backend.plan_sync(sales(), str(repo)).change is SyncChange.UNCHANGED  # type: ignore[union-attr]


def test_a_definition_folder_without_its_parts_is_a_clear_config_error(
    fabric: FabricHarness, repo: Path
) -> None:
    (repo / "sales-dataflow" / "mashup.pq").unlink()
    from handlers.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lacks mashup\.pq"):
        fabric.backend().plan_sync(sales(), str(repo))


# ------------------------------------------------------------------------------------------ names


def test_names_resolve_through_every_page_of_the_list_apis(fabric: FabricHarness, repo: Path) -> None:
    _, item = synced(fabric, repo)
    for n in range(3):  # other dataflows and workspaces, so the one we want is on a later page
        fabric.control("workspaces", {"id": str(uuid.uuid4()), "displayName": f"A{n}"})
    fabric.control("settings", {"page_size": 1})
    fabric.reset({"page_size": 1, "lro_seconds": 0})
    backend = fabric.backend()
    assert backend.resolve(sales().options) == (WS.id, item)
    listed = [r for r in fabric.requests_received() if r["path"] == "/v1/workspaces"]
    assert len(listed) >= 4 and "continuationToken" in listed[-1]["query"]
    # AND the answer is cached: a second resolve lists nothing
    before = len(fabric.requests_received())
    backend.resolve(sales().options)
    assert len(fabric.requests_received()) == before


def test_an_absent_name_is_an_error_naming_the_candidates(fabric: FabricHarness, repo: Path) -> None:
    synced(fabric, repo)
    with pytest.raises(NameNotFound) as caught:
        fabric.backend().resolve(sales(item="Sales-Dataflow").options)
    assert "no Dataflow named 'Sales-Dataflow'" in caught.value.message
    assert "did you mean 'sales-dataflow'" in caught.value.message
    with pytest.raises(NameNotFound) as caught:
        fabric.backend().resolve(sales(workspace="Sales").options)
    assert "no workspace named 'Sales'" in caught.value.message and repr(WS.name) in caught.value.message


def test_an_ambiguous_name_is_an_error_naming_the_ids(fabric: FabricHarness) -> None:
    twin = str(uuid.uuid4())
    fabric.control("workspaces", {"id": twin, "displayName": WS.name})
    with pytest.raises(NameAmbiguous) as caught:
        fabric.backend().resolve(sales().options)
    assert WS.id in caught.value.message and twin in caught.value.message and not caught.value.retryable


# ------------------------------------------------------------------------------------- parameters


def test_a_launch_sends_typed_parameters_on_the_dataflow_execute_path(
    fabric: FabricHarness, repo: Path
) -> None:
    backend, item = synced(fabric, repo)
    fabric.reset()
    ref = backend.launch(launch_request(sales(), Region="amer", Day="2026-03-13", BatchSize="500"))
    # THEN the parameters were read from the dataflow, and the run went to the dataflow path
    post = [r for r in fabric.requests_received() if r["method"] == "POST" and "/jobs/" in r["path"]]
    assert [r["path"] for r in post] == [f"/v1/workspaces/{WS.id}/dataflows/{item}/jobs/execute/instances"]
    assert post[0]["body"] == {
        "executionData": {
            "executeOption": "ApplyChangesIfNeeded",
            "parameters": [
                {"parameterName": "Region", "type": "Automatic", "value": "amer"},
                {"parameterName": "Day", "type": "Automatic", "value": "2026-03-13"},
                {"parameterName": "BatchSize", "type": "Automatic", "value": 500},  # an Integer
            ],
        }
    }
    [instance] = fabric.instances()
    assert instance["id"] == ref.job_id and instance["parameters"]["BatchSize"] == 500
    assert ref.extra["workspace"] == WS.id and ref.extra["item"] == item


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"Region": "amer", "Day": "2026-03-13", "BatchSize": "many"}, "'many' is not an Integer"),
        ({"Region": "amer", "Day": "13/03/2026"}, "is not a Date"),
        ({"Region": "amer", "Day": "2026-03-13", "Regoin": "x"}, "'Regoin': unknown to the dataflow"),
        ({"Day": "2026-03-13"}, "'Region': required by the dataflow"),
    ],
)
def test_a_wrong_parameter_is_refused_before_anything_runs(
    fabric: FabricHarness, repo: Path, parameters: dict[str, str], reason: str
) -> None:
    backend, _ = synced(fabric, repo)
    fabric.reset()
    with pytest.raises(ParameterError) as caught:
        backend.launch(launch_request(sales(), **parameters))
    assert reason in caught.value.message and not caught.value.retryable
    assert fabric.launches() == [] and fabric.runs_started() == 0


def test_the_dataflow_parameters_are_read_once_then_cached(fabric: FabricHarness, repo: Path) -> None:
    backend, _ = synced(fabric, repo)
    fabric.reset()
    for _ in range(2):
        backend.launch(launch_request(sales(), Region="amer", Day="2026-03-13"))
    reads = [r for r in fabric.requests_received() if r["path"].endswith("/parameters")]
    assert len(reads) == 1 and fabric.runs_started() == 2


# ---------------------------------------------------------------------------- the command line


def run_cli(*argv: str) -> tuple[int, Any]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main([*argv, "--json"], stdout=stdout, stderr=stderr)
    return code, json.loads(stdout.getvalue())


def test_sync_dry_run_then_sync_then_validate_online(
    fabric: FabricHarness, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fabric.environment().items():
        monkeypatch.setenv(name, value)
    config = str(repo / "pipelines.yaml")
    # WHEN sync --dry-run runs: a plan, nothing created
    code, doc = run_cli("sync", "--config", config, "--dry-run")
    assert code == 0 and doc["dry_run"] is True
    [planned] = doc["pipelines"]
    assert planned["pipeline"] == "sales-refresh" and planned["change"] == "create"
    assert dataflows(fabric) == []
    # WHEN sync runs: created; a second sync leaves it alone
    code, doc = run_cli("sync", "--config", config)
    assert code == 0 and doc["pipelines"][0]["change"] == "create" and doc["pipelines"][0]["applied"]
    [flow] = dataflows(fabric)
    code, doc = run_cli("sync", "--config", config)
    assert doc["pipelines"][0]["change"] == "unchanged" and doc["pipelines"][0]["id"] == flow["item"]
    # THEN validate --online accepts the example's parameters ...
    assert run_cli("validate", config, "--online")[0] == 0
    # ... and names a literal value the dataflow's type refuses
    raw = yaml.safe_load(Path(config).read_text())
    raw["pipelines"]["sales-refresh"]["parameters"]["BatchSize"] = "lots"
    Path(config).write_text(yaml.safe_dump(raw))
    code, doc = run_cli("validate", config, "--online")
    assert code == 2
    assert any("'BatchSize': 'lots' is not an Integer" in p for p in doc["error"]["problems"])


def test_validate_checks_parameter_names_against_the_definition_kept_in_the_repo(repo: Path) -> None:
    config = repo / "pipelines.yaml"
    assert run_cli("validate", str(config))[0] == 0  # offline: no emulator, no credentials
    raw = yaml.safe_load(config.read_text())
    parameters = raw["pipelines"]["sales-refresh"]["parameters"]
    parameters["Regoin"] = parameters.pop("Region")
    config.write_text(yaml.safe_dump(raw))
    code, doc = run_cli("validate", str(config))
    assert code == 2
    problems = doc["error"]["problems"]
    assert any("parameter 'Regoin': not a public parameter of the dataflow" in p for p in problems)
    assert any("parameter 'Region': required by the dataflow but not configured" in p for p in problems)


def test_sync_checks_the_configured_parameters_against_the_synced_dataflow(
    fabric: FabricHarness, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fabric.environment().items():
        monkeypatch.setenv(name, value)
    config = repo / "pipelines.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["pipelines"]["sales-refresh"]["parameters"]["BatchSize"] = "lots"
    config.write_text(yaml.safe_dump(raw))
    code, doc = run_cli("sync", "--config", str(config))
    # THEN the dataflow was created, and the parameter its type refuses was named (exit 1)
    [result] = doc["pipelines"]
    assert code == 1 and result["applied"] and result["change"] == "create"
    assert "'BatchSize': 'lots' is not an Integer" in result["error"]


def test_names_are_listed_again_once_the_cache_expires(fabric: FabricHarness, repo: Path) -> None:
    backend, item = synced(fabric, repo)
    backend.names = NameCache(ttl_seconds=0.0)  # every answer is already stale
    fabric.reset()
    for _ in range(2):
        assert backend.resolve(sales().options) == (WS.id, item)
    listed = [r for r in fabric.requests_received() if r["path"] == "/v1/workspaces"]
    assert len(listed) == 2


def test_a_data_pipeline_kept_in_the_repo_is_created_without_apply_changes(
    fabric: FabricHarness, tmp_path: Path
) -> None:
    folder = tmp_path / "copy-orders"
    folder.mkdir()
    (folder / ".platform").write_text(
        json.dumps({"metadata": {"type": "DataPipeline", "displayName": "copy-orders"}})
    )
    (folder / "pipeline-content.json").write_text(json.dumps({"properties": {"activities": []}}))
    options = {
        "workspace": WS.name,
        "item": "copy-orders",
        "item_type": "DataPipeline",
        "definition": "copy-orders/",
    }
    p = Pipeline(name="copy", backend="fabric", project="p", region="r", options=options)
    backend = fabric.backend()
    step = backend.plan_sync(p, str(tmp_path))
    assert step is not None and step.change is SyncChange.CREATE
    item = backend.apply_sync(step)
    posts = paths(fabric, "POST")
    assert f"POST /v1/workspaces/{WS.id}/dataPipelines" in posts
    assert not [x for x in posts if "applyChanges" in x]
    [created] = [i for i in dataflows(fabric) if i["item"] == item]
    assert created["type"] == "DataPipeline" and created["definitionParts"] == [
        ".platform",
        "pipeline-content.json",
    ]
