"""Specification: the docs are executed. Every YAML snippet in README.md and docs/ is either a routing
config that validates (a snippet of only ``pipelines:`` and ``triggers:`` gets the settings every
config needs), or a registration file a local emulator loads, or is marked illustrative with an
``<!-- illustrative -->`` comment right above it (a field reference with placeholders, say)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.model.config import build_config
from local.emulators.cdap import load_apps, load_instances
from local.emulators.dataflow import load_templates
from local.emulators.dataproc import load_mains
from local.emulators.fabric import load_clients, load_items

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SETTINGS = {"project": "docs-project", "region": "europe-west1", "ledger": {"bucket": "docs-ledger"}}
LOADERS = {
    "templates": load_templates,
    "apps": load_apps,
    "instances": load_instances,
    "items": load_items,
    "clients": load_clients,
    "mains": load_mains,
}


def _snippets() -> list[Any]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"```yaml\n(.*?)```", text, flags=re.DOTALL):
            before = text[: m.start()].rstrip().splitlines()[-1:] or [""]
            line = text[: m.start()].count("\n") + 1
            illustrative = before[0].strip().startswith("<!-- illustrative")
            found.append(pytest.param(m.group(1), illustrative, id=f"{path.relative_to(ROOT)}:{line}"))
    return found


@pytest.mark.parametrize(("snippet", "illustrative"), _snippets())
def test_every_yaml_snippet_in_the_docs_is_a_valid_config_or_registration(snippet, illustrative):
    if illustrative:
        pytest.skip("marked illustrative")
    doc = yaml.safe_load(snippet)
    assert isinstance(doc, dict), "a snippet is a mapping"
    registrations = [k for k in doc if k in LOADERS]
    if registrations:
        for key in registrations:
            assert LOADERS[key](doc[key]), f"{key}: nothing loaded"
        return
    config = {"settings": {**SETTINGS, **(doc.get("settings") or {})}, "triggers": {}, **doc}
    config["settings"] = {**SETTINGS, **(doc.get("settings") or {})}
    build_config(config)  # raises ConfigError listing every problem


def test_the_snippets_are_found():
    assert len(_snippets()) >= 8
