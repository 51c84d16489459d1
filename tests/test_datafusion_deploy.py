"""Specification: deploying a config with Data Fusion pipelines turns their pushed status on.

Data Fusion 6.7+ publishes each pipeline run's status changes to the topic of the instance's
``eventPublishConfig``. The deploy (its gcloud plan and the Terraform variables, both from the
backend's declaration) creates that topic, lets the Data Fusion service agent publish to it, routes
it to ``on_message``, and sets ``eventPublishConfig`` with ``instances.patch`` (no gcloud command
does): a ``curl`` whose access token is fetched inside the shell, never written in the plan.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from deploy import accounts, build, render, tfvars
from deploy.options import DeployOptions
from deploy.plan import Plan
from handlers.model.config import load_config
from local.emulators.base import ServerHandle
from local.emulators.cdap import serve
from tests.support.emulator_client import control, emulator_fixture

ROOT = Path(__file__).resolve().parents[1]
AGENT = "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-datafusion.iam.gserviceaccount.com"

emulator = emulator_fixture(serve)


def config(tmp_path: Path, instances: dict[str, str] | None = None) -> Path:
    """Pipelines on Data Fusion instances (name -> project; default one instance, cdf, in p1)."""
    pipelines = {
        f"load-{i}": {"backend": "datafusion", "instance": name, "app": f"load_{i}", "project": project}
        for i, (name, project) in enumerate((instances or {"cdf": "p1"}).items())
    }
    path = tmp_path / "cdf.yaml"
    doc = {
        "settings": {"project": "p1", "region": "europe-west1", "ledger": {"bucket": "p1-ledger"}},
        "pipelines": pipelines,
        "triggers": {"drop": {"storage": {"bucket": "p1-drop"}, "pipeline": "load-0"}},
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def plan_for(path: Path, tmp_path: Path, **flags: Any) -> Plan:
    cfg = load_config(path)
    opts = DeployOptions(
        project="p1",
        region="europe-west1",
        config_path=str(path),
        source=str(ROOT),
        build_dir=str(tmp_path / "build"),
        flags=flags,
    )
    return build.build_plan(cfg, opts)


def enable_steps(plan: Plan) -> list[tuple[str, ...]]:
    return [s.argv for s in plan.steps if s.argv[:2] == ("bash", "-c")]


def test_the_plan_creates_the_status_topic_lets_the_service_agent_publish_and_routes_it_to_on_message(
    tmp_path: Path,
) -> None:
    plan = plan_for(config(tmp_path), tmp_path)
    argvs = [s.argv for s in plan.steps]
    topic_at = argvs.index(("gcloud", "pubsub", "topics", "create", "datafusion-status", "--project=p1"))
    (grant,) = [b for b in plan.bindings if b.member == AGENT]
    assert (grant.role, grant.scope, grant.resource) == (
        "roles/pubsub.publisher",
        "topic",
        "datafusion-status",
    )
    grant_at = next(i for i, s in enumerate(plan.steps) if s.binding == grant)
    (enable,) = enable_steps(plan)
    enable_at = argvs.index(enable)
    assert topic_at < grant_at < enable_at  # Data Fusion checks it may publish when publishing is turned on
    (fn,) = [f for f in plan.functions if f.entry_point == "on_message"]
    assert (fn.trigger, fn.source, fn.name) == ("pubsub", "datafusion-status", "on-message-datafusion-status")


def test_publishing_is_turned_on_by_instances_patch_without_a_token_in_the_plan(tmp_path: Path) -> None:
    plan = plan_for(config(tmp_path), tmp_path)
    (enable,) = enable_steps(plan)
    words = shlex.split(enable[2])
    assert words[:4] == ["curl", "--fail-with-body", "-sS", "-X"] and words[4] == "PATCH"
    url = (
        "https://datafusion.googleapis.com/v1/projects/p1/locations/europe-west1/instances/cdf"
        "?updateMask=eventPublishConfig"
    )
    assert url in words
    body = json.loads(words[words.index("-d") + 1])
    assert body == {"eventPublishConfig": {"enabled": True, "topic": "projects/p1/topics/datafusion-status"}}
    assert "Authorization: Bearer $(gcloud auth print-access-token)" in words
    script = render.render_plan(plan)
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0


def test_the_enable_command_really_patches_the_instance(
    tmp_path: Path, emulator: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a stand-in gcloud printing a token, and the command aimed at the emulator's instances API
    control(emulator, "POST", "reset")
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho local-token\n")
    fake.chmod(0o755)
    url = f"{emulator.url}/v1/projects/p1/locations/europe-west1/instances/cdf?updateMask=eventPublishConfig"
    body = {"eventPublishConfig": {"enabled": True, "topic": "projects/p1/topics/datafusion-status"}}
    argv = accounts.rest_call_argv("PATCH", url, body)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "NO_PROXY": "127.0.0.1"}
    # WHEN it runs THEN the instance publishes to the topic, and the token went in the header
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    instance = requests.get(url.split("?")[0], headers={"Authorization": "Bearer t"}, timeout=5).json()
    assert instance["eventPublishConfig"] == body["eventPublishConfig"]
    (patch,) = [r for r in control(emulator, "GET", "requests")["requests"] if r["method"] == "PATCH"]
    assert patch["headers"].get("Authorization") == "Bearer local-token"


def test_a_chosen_topic_and_opting_out(tmp_path: Path) -> None:
    chosen = plan_for(config(tmp_path), tmp_path, datafusion_status_topic="cdf-runs")
    (enable,) = enable_steps(chosen)
    assert "projects/p1/topics/cdf-runs" in enable[2]
    assert any(f.source == "cdf-runs" for f in chosen.functions)
    out = plan_for(config(tmp_path), tmp_path, datafusion_no_push=True)
    assert enable_steps(out) == []
    assert not any(b.member == AGENT for b in out.bindings)
    assert not any(f.entry_point == "on_message" for f in out.functions)


def test_an_instance_of_another_project_is_left_to_the_sweep_with_a_warning(tmp_path: Path) -> None:
    plan = plan_for(config(tmp_path, {"cdf": "p1", "shared": "p2"}), tmp_path)
    (enable,) = enable_steps(plan)
    assert "/instances/cdf?" in enable[2] and "shared" not in enable[2]
    assert any("instance shared is in project p2" in w and "sweep" in w for w in plan.warnings)


def test_terraform_gets_the_same_topic_publisher_and_call(tmp_path: Path) -> None:
    path = config(tmp_path)
    opts = DeployOptions(project="p1", region="europe-west1", config_path=str(path), source=str(ROOT))
    (topic,) = tfvars.variables(load_config(path), opts)["status_topics"]
    assert (topic["topic"], topic["publisher"]) == ("datafusion-status", AGENT)
    (call,) = topic["enable"]
    assert call["method"] == "PATCH" and call["url"].endswith("/instances/cdf?updateMask=eventPublishConfig")
    assert json.loads(call["body"])["eventPublishConfig"]["topic"] == "projects/p1/topics/datafusion-status"
    main = (ROOT / "deploy" / "terraform" / "main.tf").read_text()
    for needle in (
        'resource "google_pubsub_topic" "status"',
        'resource "google_pubsub_topic_iam_member" "status_publisher"',
        'resource "terraform_data" "status_publishing"',
    ):
        assert needle in main
    assert "local.status_topics" in main  # on_message functions include the status topics
