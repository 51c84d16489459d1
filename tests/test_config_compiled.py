"""Specification: the compiled form of the config (written beside it at deploy) lets a cold start skip
the YAML parse, never its validation, and is used only when it records exactly the text beside it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.core.errors import ConfigError
from handlers.model.config import compile_config, compiled_path, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipelines.yaml"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "pipelines.yaml"
    shutil.copy(EXAMPLE, target)
    return target


def test_the_compiled_form_loads_to_the_same_config_as_the_yaml(config: Path):
    from_yaml = load_config(config)
    written = compile_config(config)
    assert written == compiled_path(config) == config.with_name("pipelines.yaml.compiled.json")
    assert load_config(config) == from_yaml


def test_a_cold_load_with_a_matching_compiled_form_does_not_import_pyyaml(config: Path):
    compile_config(config)
    code = (
        "import sys; from handlers.model.config import load_config; "
        f"load_config({str(config)!r}); print('yaml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_edited_yaml_is_read_again_and_validated_not_the_stale_compiled_form(config: Path):
    compile_config(config)
    config.write_text(config.read_text() + "\nunknown_section: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert any("unknown_section" in p for p in err.value.problems)


def test_the_compiled_document_is_validated_on_load_like_the_yaml(config: Path):
    """The compiled form skips the parse only: a document that no longer validates (here edited by
    hand, its recorded hash kept) is refused on load with the config's own path."""
    out = compile_config(config)
    assert out is not None
    record = json.loads(out.read_text())
    record["document"]["settings"]["regoin"] = "europe-west1"  # a typo the validator names
    out.write_text(json.dumps(record))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.source == str(config)
    assert any("regoin" in p for p in err.value.problems)


def test_an_unreadable_or_foreign_compiled_form_is_ignored(config: Path):
    expected = load_config(config)
    for junk in ("not json", "[]", json.dumps({"format": 99, "source_sha256": "x", "document": {}})):
        compiled_path(config).write_text(junk)
        assert load_config(config) == expected


def test_an_invalid_config_is_never_compiled(config: Path):
    config.write_text("settings: {project: p}\npipelines: {}\ntriggers: {t: {pipeline: nowhere}}\n")
    with pytest.raises(ConfigError):
        compile_config(config)
    assert not compiled_path(config).exists()


def test_a_document_json_cannot_carry_exactly_is_left_to_the_yaml_path(config: Path):
    """A YAML date or an integer key would change type through JSON: no compiled form is written (a
    stale one is removed) and the YAML keeps being parsed, so the config means what it always did."""
    compile_config(config)
    text = config.read_text().replace("pipelines:", "version: 2026-01-01\npipelines:", 1)
    config.write_text(text)
    try:
        load_config(config)  # whatever the validators say of a date here, both paths must agree
    except ConfigError:
        with pytest.raises(ConfigError):
            compile_config(config)
        return
    assert compile_config(config) is None
    assert not compiled_path(config).exists()
