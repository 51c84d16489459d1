"""Specification: the deploy runs `sync` for pipelines kept in the repo, before the functions that
launch them are deployed; a config without such pipelines gets no sync step."""

from __future__ import annotations

from pathlib import Path

from deploy import build
from deploy.options import DeployOptions
from handlers.model.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def plan_for(config: Path, tmp_path: Path) -> list[tuple[str, ...]]:
    cfg = load_config(config)
    opts = DeployOptions(  # type: ignore[call-arg]
        project=cfg.settings.project,
        region=cfg.settings.region,
        config_path=str(config),
        source=str(ROOT),
        build_dir=str(tmp_path / "build"),
        env={"FABRIC_TENANT_ID": "tenant-1", "FABRIC_CLIENT_ID": "client-1"},
        secrets={"FABRIC_REFRESH_TOKEN": "fabric-refresh-token"},
    )
    return [step.argv for step in build.build_plan(cfg, opts).steps]


def test_a_pipeline_kept_in_the_repo_is_synced_before_any_function_is_deployed(tmp_path: Path) -> None:
    config = ROOT / "examples" / "fabric" / "pipelines.yaml"
    argv = plan_for(config, tmp_path)
    sync = ("python", "-m", "handlers", "sync", "--config", str(config))
    assert sync in argv
    first_function = next(i for i, a in enumerate(argv) if a[:3] == ("gcloud", "functions", "deploy"))
    assert argv.index(sync) < first_function


def test_the_example_config_syncs_its_data_fusion_pipeline_too(tmp_path: Path) -> None:
    config = ROOT / "examples" / "pipelines.yaml"  # enrich-counts keeps its exported JSON
    assert ("python", "-m", "handlers", "sync", "--config", str(config)) in plan_for(config, tmp_path)


def test_a_config_without_definitions_gets_no_sync_step(tmp_path: Path) -> None:
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "settings: {project: p1, region: europe-west1, ledger: {bucket: p1-ledger}}\n"
        "pipelines:\n"
        "  load: {backend: fabric, workspace: Sales, item: sales-dataflow}\n"
        "triggers:\n"
        "  drop: {storage: {bucket: p1-drop}, pipeline: load}\n"
    )
    argv = plan_for(config, tmp_path)
    assert not [a for a in argv if "sync" in a]
