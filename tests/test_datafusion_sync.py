"""Specification: a Data Fusion pipeline kept as code (its exported JSON in the repo) is deployed by
sync with ``PUT v3/namespaces/{ns}/apps/{app}`` when it is missing or differs, and left alone when
it matches (handlers/backends/datafusion.py: plan_sync, apply_sync).

Against the CDAP emulator: each test asserts the deploys it received (the request body exactly as
the file holds it) and what its ``GET .../apps/{app}`` answers afterwards.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from handlers.backends.contract import SyncChange
from handlers.backends.datafusion import DataFusion
from handlers.core.errors import ConfigError, NotFound
from handlers.model.config import Pipeline
from local.emulators.base import ServerHandle
from local.emulators.cdap import serve
from tests.support.emulator_client import control, emulator_fixture, reset_emulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "datafusion" / "enrich-word-counts.json"

emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    reset_emulator(emulator, {"visible_after_seconds": 0, "auto_instances": True, "require_auth": True})


@pytest.fixture
def backend(emulator: ServerHandle) -> DataFusion:
    session = requests.Session()
    session.headers["Authorization"] = "Bearer test-token"
    return DataFusion(session=session, endpoint=emulator.url)


def pipeline(app: str, definition: str | None = "pipeline.json", **options: Any) -> Pipeline:
    opts: dict[str, Any] = {"instance": "etl", "app": app, **options}
    if definition is not None:
        opts["definition"] = definition
    return Pipeline(name=app, backend="datafusion", project="p", region="europe-west1", options=opts)


def write(folder: Path, doc: dict[str, Any], name: str = "pipeline.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(doc, indent=2))
    return path


def example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return doc


def deploys(emulator: ServerHandle) -> list[dict[str, Any]]:
    return list(control(emulator, "GET", "deploys")["deploys"])


def app_detail(emulator: ServerHandle, app: str) -> dict[str, Any]:
    answer = requests.get(
        f"{emulator.url}/api/v3/namespaces/default/apps/{app}",
        headers={"Authorization": "Bearer t"},
        timeout=5,
    )
    answer.raise_for_status()
    detail: dict[str, Any] = answer.json()
    return detail


def test_a_missing_pipeline_is_planned_as_create_and_deployed_from_the_repos_json(
    emulator: ServerHandle, backend: DataFusion
) -> None:
    # GIVEN the example pipeline's exported JSON and no app of that name on the instance
    p = pipeline("enrich-word-counts", definition="datafusion/enrich-word-counts.json")
    # WHEN sync plans it THEN it is a create, nothing is deployed yet
    step = backend.plan_sync(p, str(ROOT / "examples"))
    assert step is not None and step.change == SyncChange.CREATE
    assert step.target == "default/enrich-word-counts" and step.found is None
    assert deploys(emulator) == []
    # WHEN the step is applied THEN one PUT carried the file's JSON as it is, and CDAP now has the app
    version = backend.apply_sync(step)
    (deploy,) = deploys(emulator)
    assert (deploy["app"], deploy["status"], deploy["answer"]) == (
        "enrich-word-counts",
        200,
        "Deploy Complete",
    )
    assert deploy["body"] == example()
    detail = app_detail(emulator, "enrich-word-counts")
    assert detail["appVersion"] == version
    assert detail["artifact"] == example()["artifact"]
    assert json.loads(detail["configuration"]) == example()["config"]


def test_an_unchanged_pipeline_is_left_alone(
    emulator: ServerHandle, backend: DataFusion, tmp_path: Path
) -> None:
    # GIVEN a pipeline deployed from its JSON
    write(tmp_path, example())
    p = pipeline("orders")
    backend.apply_sync(backend.plan_sync(p, str(tmp_path)))  # type: ignore[arg-type]
    before = app_detail(emulator, "orders")["appVersion"]
    # WHEN sync runs again on the same file THEN the plan says unchanged and applying sends no PUT
    step = backend.plan_sync(p, str(tmp_path))
    assert step is not None and step.change == SyncChange.UNCHANGED and step.found == before
    calls = len(control(emulator, "GET", "requests")["requests"])
    assert backend.apply_sync(step) == before
    assert len(deploys(emulator)) == 1
    assert len(control(emulator, "GET", "requests")["requests"]) == calls  # not even a GET
    assert app_detail(emulator, "orders")["appVersion"] == before


def test_defaults_cdap_adds_to_the_deployed_config_do_not_count_as_a_change(
    emulator: ServerHandle, backend: DataFusion, tmp_path: Path
) -> None:
    # GIVEN the app was deployed with a config holding a field the repo's export leaves out
    doc = example()
    live = copy.deepcopy(doc)
    live["config"]["stageLoggingEnabled"] = True
    live["config"]["rangeRecordsPreview"] = {"min": 1, "max": 5000}
    requests.put(
        f"{emulator.url}/api/v3/namespaces/default/apps/orders",
        json=live,
        headers={"Authorization": "Bearer t"},
        timeout=5,
    ).raise_for_status()
    del doc["config"]["stageLoggingEnabled"]
    write(tmp_path, doc)
    # WHEN sync plans THEN only what the repo states is compared: unchanged
    step = backend.plan_sync(pipeline("orders"), str(tmp_path))
    assert step is not None and step.change == SyncChange.UNCHANGED


def test_a_changed_stage_is_planned_as_an_update_naming_the_stage_and_deployed_as_a_new_version(
    emulator: ServerHandle, backend: DataFusion, tmp_path: Path
) -> None:
    # GIVEN a deployed pipeline whose JSON in the repo then changes one stage and adds another
    write(tmp_path, example())
    p = pipeline("orders")
    first = backend.apply_sync(backend.plan_sync(p, str(tmp_path)))  # type: ignore[arg-type]
    doc = example()
    doc["config"]["stages"][1]["plugin"]["properties"]["threshold"] = "5"
    doc["config"]["stages"].append({"name": "Audit", "plugin": {"name": "Trash", "type": "batchsink"}})
    doc["artifact"]["version"] = "6.10.2"
    write(tmp_path, doc)
    # WHEN sync plans THEN an update whose one-line summary names what differs
    step = backend.plan_sync(p, str(tmp_path))
    assert step is not None and step.change == SyncChange.UPDATE and step.found == first
    assert step.summary == ("artifact version 6.10.1 -> 6.10.2; stages changed: Enrich; stages added: Audit")
    # WHEN applied THEN CDAP holds the new definition under a new app version
    second = backend.apply_sync(step)
    assert second != first
    detail = app_detail(emulator, "orders")
    assert json.loads(detail["configuration"]) == doc["config"]
    assert [d["status"] for d in deploys(emulator)] == [200, 200]


def test_a_removed_stage_and_a_changed_setting_are_named_in_the_summary(
    emulator: ServerHandle, backend: DataFusion, tmp_path: Path
) -> None:
    write(tmp_path, example())
    p = pipeline("orders")
    backend.apply_sync(backend.plan_sync(p, str(tmp_path)))  # type: ignore[arg-type]
    doc = example()
    doc["config"]["stages"] = doc["config"]["stages"][:2]
    doc["config"]["engine"] = "mapreduce"
    write(tmp_path, doc)
    step = backend.plan_sync(p, str(tmp_path))
    assert step is not None
    assert step.summary == "stages removed: WordCounts; config fields changed: engine"


def test_a_pipeline_without_a_definition_is_not_synced(emulator: ServerHandle, backend: DataFusion) -> None:
    assert backend.plan_sync(pipeline("orders", definition=None), str(ROOT)) is None
    assert deploys(emulator) == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        (
            json.dumps({"artifact": {"name": "cdap-data-pipeline", "version": "6.10.1"}, "config": {}}),
            "config.stages",
        ),
        (
            json.dumps(
                {"artifact": {"name": "my-app", "version": "1.0.0"}, "config": {"stages": [{"name": "a"}]}}
            ),
            "artifact.name",
        ),
        (
            json.dumps(
                {
                    "artifact": {"name": "cdap-data-pipeline", "version": "6.10.1"},
                    "config": {"stages": [{"name": "a"}, {"name": "a"}]},
                }
            ),
            "unique name",
        ),
    ],
)
def test_a_definition_that_cannot_be_read_or_is_not_a_pipeline_is_a_config_error_before_any_call(
    emulator: ServerHandle, backend: DataFusion, tmp_path: Path, content: str | None, problem: str
) -> None:
    if content is not None:
        (tmp_path / "pipeline.json").write_text(content)
    with pytest.raises(ConfigError) as caught:
        backend.plan_sync(pipeline("orders"), str(tmp_path))
    assert problem in "\n".join(caught.value.problems)
    assert not [r for r in control(emulator, "GET", "requests")["requests"] if "/apps/" in r["path"]]


def test_a_streaming_pipelines_json_must_be_a_streaming_artifact(backend: DataFusion, tmp_path: Path) -> None:
    write(tmp_path, example())  # cdap-data-pipeline: batch
    p = Pipeline(
        name="s",
        backend="datafusion",
        project="p",
        region="r",
        mode="streaming",
        options={"instance": "etl", "app": "s", "definition": "pipeline.json"},
    )
    with pytest.raises(ConfigError, match=r"mode streaming but pipeline\.json is cdap-data-pipeline"):
        backend.plan_sync(p, str(tmp_path))


def test_cdap_refusing_the_deploy_is_a_permanent_error_naming_its_answer(
    emulator: ServerHandle, backend: DataFusion, tmp_path: Path
) -> None:
    # GIVEN a namespace the instance does not have
    write(tmp_path, example())
    step = backend.plan_sync(pipeline("orders", namespace="finance"), str(tmp_path))
    assert step is not None and step.change == SyncChange.CREATE
    # WHEN applied THEN CDAP's 404 is a NotFound, and nothing was deployed
    with pytest.raises(NotFound, match="namespace:finance"):
        backend.apply_sync(step)
    assert [d["status"] for d in deploys(emulator)] == [404]


def test_a_transient_error_on_deploy_is_retried(
    emulator: ServerHandle, backend: DataFusion, tmp_path: Path
) -> None:
    write(tmp_path, example())
    step = backend.plan_sync(pipeline("orders"), str(tmp_path))
    control(emulator, "POST", "faults", {"operation": "apps.deploy", "status": 503, "times": 1})
    version = backend.apply_sync(step)  # type: ignore[arg-type]
    assert [d["status"] for d in deploys(emulator)] == [503, 200]
    assert app_detail(emulator, "orders")["appVersion"] == version
