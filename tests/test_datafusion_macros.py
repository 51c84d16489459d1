"""Specification: the runtime arguments a config passes to a Data Fusion pipeline kept as code are
checked against its macros at ``python -m handlers validate``, offline, reading the exported JSON.

- A macro ``${name}`` no argument supplies (not in ``parameters``, not in ``preset_arguments``) is an
  error: that run would fail in CDAP when it starts.
- An argument no macro reads is a warning: CDAP ignores it (a typo, or an argument a plugin reads in
  code), so it cannot fail a run. CDAP's own arguments (``system.*``, ``spark.*``...) are exempt.
- Macro functions (``${secure(key)}``, ``${logicalStartTime(...)}``) are not arguments; the macros
  nested in them and in other macros are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.backends.datafusion import macros
from handlers.entry import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "datafusion" / "enrich-word-counts.json"


def pipeline_json(*properties: str, artifact: str = "cdap-data-pipeline") -> dict[str, Any]:
    return {
        "name": "p",
        "artifact": {"name": artifact, "version": "6.10.1", "scope": "SYSTEM"},
        "config": {
            "stages": [
                {"name": f"s{i}", "plugin": {"name": "X", "type": "transform", "properties": {"v": text}}}
                for i, text in enumerate(properties)
            ]
        },
    }


def config_with(tmp_path: Path, content: dict[str, Any] | None, **pipeline: Any) -> Path:
    if content is not None:
        (tmp_path / "flows").mkdir(exist_ok=True)
        (tmp_path / "flows" / "p.json").write_text(json.dumps(content))
    doc = {
        "settings": {"project": "p", "region": "europe-west1", "ledger": {"bucket": "ledger"}},
        "pipelines": {
            "orders": {
                "backend": "datafusion",
                "instance": "etl",
                "app": "orders",
                "definition": "flows/p.json",
                **pipeline,
            }
        },
    }
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def validate(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["validate", str(path), *flags])
    return code, capsys.readouterr().out


# ------------------------------------------------------------------------------------------ parsing


def test_plain_macros_are_arguments_and_macro_functions_are_not() -> None:
    found = macros(
        {
            "a": "gs://${bucket}/in/${day}.csv",
            "b": ["${secure(db-password)}", "${logicalStartTime(yyyy-MM-dd)}"],
        }
    )
    assert found.arguments == {"bucket", "day"}
    assert found.functions == {"secure", "logicalStartTime"}
    assert found.dynamic == frozenset()


def test_macros_nested_in_functions_and_in_other_macros_are_arguments_too() -> None:
    found = macros("${logicalStartTime(${format},1d)} ${${env}.table}")
    assert found.arguments == {"format", "env"}
    assert found.functions == {"logicalStartTime"}
    assert found.dynamic == {"${env}.table"}  # its name is only known at run time


def test_escaped_and_unclosed_macros_are_plain_text() -> None:
    assert macros(r"cost \${price} and ${open").arguments == frozenset()


def test_keys_are_not_read_as_macros_only_values() -> None:
    assert macros({"${key}": "${value}"}).arguments == {"value"}


def test_the_example_pipeline_reads_counts_and_day() -> None:
    found = macros(json.loads(EXAMPLE.read_text())["config"])
    assert found.arguments == {"counts", "day"}
    assert found.functions == {"secure", "logicalStartTime"}


# ------------------------------------------------------------------------------------------ validate


def test_the_example_config_validates_with_its_pipeline_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = validate(capsys, ROOT / "examples" / "pipelines.yaml")
    assert code == 0 and ": warning:" not in out


def test_arguments_matching_the_macros_validate_cleanly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_with(
        tmp_path,
        pipeline_json("${input}", "${secure(key)}"),
        parameters={"input": "gs://landing/{run_key}.csv"},
    )
    code, out = validate(capsys, path)
    assert code == 0 and out.startswith(f"{path}: OK") and ": warning:" not in out


def test_a_macro_no_argument_supplies_is_an_error_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_with(
        tmp_path,
        pipeline_json("${input}", "${output}", "${logicalStartTime(${fmt})}"),
        parameters={"input": "x"},
    )
    code, out = validate(capsys, path)
    assert code == 2, out
    assert "INVALID" in out
    assert "pipeline 'orders': macro ${fmt} in p.json has no runtime argument" in out
    assert "pipeline 'orders': macro ${output} in p.json has no runtime argument" in out
    assert "${input}" not in out


def test_an_argument_data_fusion_supplies_itself_is_named_in_preset_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_with(
        tmp_path,
        pipeline_json("${input}", "${output}"),
        parameters={"input": "x"},
        preset_arguments=["output"],
    )
    code, out = validate(capsys, path)
    assert code == 0, out


def test_an_argument_no_macro_reads_is_a_warning_not_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_with(
        tmp_path,
        pipeline_json("${input}"),
        parameters={
            "input": "x",
            "inptu": "typo",
            "system.profile.name": "USER:small",
            "spark.executor.cores": "2",
        },
    )
    code, out = validate(capsys, path)
    assert code == 0, out
    assert "warning: pipeline 'orders': parameters.inptu is passed but p.json reads no ${inptu}" in out
    assert "system.profile.name" not in out and "spark.executor" not in out
    code, doc = cli.main(["validate", str(path), "--json"]), json.loads(capsys.readouterr().out)
    assert code == 0 and doc["valid"] is True
    assert doc["warnings"] == ["pipeline 'orders': parameters.inptu is passed but p.json reads no ${inptu}"]


def test_no_unread_warning_when_a_macro_name_is_built_at_run_time(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = config_with(
        tmp_path, pipeline_json("${${env}.path}"), parameters={"env": "prod", "prod.path": "gs://x"}
    )
    code, out = validate(capsys, path)
    assert code == 0 and ": warning:" not in out


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        (None, "cannot read"),
        (
            pipeline_json("${a}", artifact="cdap-data-streams"),
            "mode batch but p.json is a cdap-data-streams pipeline",
        ),
        ({"artifact": {"name": "cdap-data-pipeline", "version": "6.10.1"}, "config": {}}, "config.stages"),
    ],
)
def test_a_missing_or_mismatched_definition_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, definition: dict[str, Any] | None, problem: str
) -> None:
    code, out = validate(capsys, config_with(tmp_path, definition, parameters={"a": "1"}))
    assert code == 2 and problem in out


def test_a_definition_path_must_be_a_relative_json_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = validate(capsys, config_with(tmp_path, None, definition="/etc/passwd"))
    assert code == 2 and "definition: must be the pipeline's exported JSON file" in out
