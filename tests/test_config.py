"""Specification: the routing config is validated once, and every problem is reported together."""

import datetime as dt
import textwrap
from pathlib import Path

import pytest
import yaml

from handlers.core.errors import ConfigError, ParameterError
from handlers.core.patterns import Glob
from handlers.model.config import build_config, load_config, parse_duration
from handlers.model.templates import Template

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "settings": {"project": "p", "region": "europe-west1", "ledger": {"bucket": "ledger"}},
    "pipelines": {
        "wc": {
            "backend": "dataflow",
            "template": "gs://t/wc",
            "parameters": {"input": "gs://{bucket}/{name}"},
        }
    },
    "triggers": {"landing": {"storage": {"bucket": "in"}, "pipeline": "wc"}},
}


def problems_of(doc) -> list[str]:
    with pytest.raises(ConfigError) as err:
        build_config(doc)
    return err.value.problems


def test_the_example_config_in_the_repository_is_valid():
    cfg = load_config(ROOT / "examples" / "pipelines.yaml")
    assert {"wordcount", "orders-load"} <= set(cfg.pipelines)


def test_a_config_with_several_mistakes_reports_all_of_them_in_one_error():
    doc = yaml.safe_load(
        textwrap.dedent("""
        settings: {project: p, region: r, ledger: {bucket: b, lease: 10 minutes}}
        pipelines:
          wc:
            backend: dataflow
            template: s3://wrong
            environment: {maxWorkerz: 2}
            parameters: {input: "gs://{bucket}/{nmae}"}
          other: {backend: spark}
        triggers:
          t1: {storage: {bucket: in, regex: "(["}, pipeline: wc}
          t2: {pubsub: {topic: orders}, pipeline: wcc}
          t3: {pipeline: wc, storage: {bucket: x}, pubsub: {topic: y}}
    """)
    )
    problems = problems_of(doc)
    text = "\n".join(problems)
    expected = [
        "settings.ledger.lease",  # bad duration
        "pipeline 'wc': template",  # not gs://
        "environment.maxWorkerz",  # unknown runtime environment field
        "{nmae}",  # unknown placeholder named
        "pipeline 'other'.backend",  # unknown backend
        "trigger 't1'.storage.regex",  # bad regex
        "unknown pipeline 'wcc' (did you mean 'wc'?)",  # dangling reference with a hint
        "trigger 't3': needs exactly one of",  # two kinds
    ]
    for fragment in expected:
        assert fragment in text, f"missing problem {fragment!r} in:\n{text}"
    assert len(problems) >= len(expected)


def test_unknown_placeholder_is_a_load_error_naming_pipeline_field_and_trigger():
    doc = {**BASE, "pipelines": {"wc": {**BASE["pipelines"]["wc"], "parameters": {"x": "{data.id}"}}}}
    (problem,) = problems_of(doc)
    assert problem.startswith("pipeline 'wc'.parameters.x")
    assert "{data.id}" in problem and "trigger 'landing'" in problem


def test_unknown_fields_are_reported_with_a_suggestion():
    doc = {**BASE, "triggers": {"landing": {"storage": {"bucket": "in", "globb": "*.csv"}, "pipeline": "wc"}}}
    assert any("unknown field 'globb' (did you mean 'glob'?)" in p for p in problems_of(doc))


def test_completion_loops_are_rejected():
    doc = {
        **BASE,
        "pipelines": {
            "a": {"backend": "dataflow", "template": "gs://t/a"},
            "b": {"backend": "dataflow", "template": "gs://t/b"},
        },
        "triggers": {
            "a-to-b": {"completion": {"upstream": "a"}, "pipeline": "b"},
            "b-to-a": {"completion": {"upstream": "b"}, "pipeline": "a"},
        },
    }
    assert any("loop" in p for p in problems_of(doc))


def test_fan_in_needs_a_join_key_and_its_templates_use_upstreams():
    doc = {
        **BASE,
        "pipelines": {
            **BASE["pipelines"],
            "c": {
                "backend": "dataflow",
                "template": "gs://t/c",
                "parameters": {
                    "a": "{upstreams.wc.outputs.x}",
                    "k": "{join_key}",
                    "bad": "{upstreams.zz.run_key}",
                },
            },
        },
        "triggers": {
            **BASE["triggers"],
            "join": {"completion": {"upstream": ["wc", "wc2"]}, "pipeline": "c"},
        },
    }
    text = "\n".join(problems_of(doc))
    assert "join_key: is required" in text
    assert "'zz' is not an upstream" in text
    assert "unknown pipeline 'wc2'" in text


@pytest.mark.parametrize(
    "text,seconds",
    [(90, 90.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("1d", 86400.0), ("250ms", 0.25)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "pattern,name,matches",
    [
        ("incoming/*.csv", "incoming/a.csv", True),
        ("incoming/*.csv", "incoming/sub/a.csv", False),
        ("incoming/**/*.csv", "incoming/a.csv", True),
        ("incoming/**/*.csv", "incoming/x/y/a.csv", True),
        ("**", "anything/at all\nwith newline", True),
        ("data-?.json", "data-1.json", True),
        ("data-[0-9].json", "data-x.json", False),
    ],
)
def test_glob_semantics(pattern, name, matches):
    assert Glob(pattern).match(name) is matches


def test_templates_render_time_formats_defaults_and_literal_braces():
    when = dt.datetime(2026, 11, 22, 10, 15, 30, tzinfo=dt.UTC)
    values = {"event_time": when, "name": "a b#%.csv"}
    t = Template.parse("{{literal}}/{event_time:%Y/%m/%d}/{name}/{metadata.owner|nobody}")

    def lookup(path):
        return values[path]

    assert t.render(lookup) == "{literal}/2026/11/22/a b#%.csv/nobody"


def test_rendering_a_missing_value_names_the_parameter():
    with pytest.raises(ParameterError) as err:
        Template.parse("{data.order.id}").render(lambda p: (_ for _ in ()).throw(KeyError(p)), name="orderId")
    assert err.value.field == "orderId" and "{data.order.id}" in err.value.message


# ------------------------------------------------------------------------------------- alias bombs


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: each level lists ``width`` aliases of the level before, so a
    few hundred characters expand to width**levels (387,420,489) nodes."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append("settings: {project: p, region: r, ledger: {bucket: b}}")
    lines.append(f"pipelines: {{wc: {{backend: dataflow, template: 'gs://t/wc', labels: *a{levels}}}}}")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_with_a_clear_config_error_after_counting_only_its_text(tmp_path):
    from handlers.model.config import MAX_YAML_NODES, yaml_distinct_nodes

    path = tmp_path / "pipelines.yaml"
    path.write_text(_alias_bomb())
    # WHEN the config is loaded
    with pytest.raises(ConfigError) as err:
        load_config(path)
    # THEN it is refused as an alias bomb before anything walks the expanded document
    [problem] = err.value.problems
    assert "alias bomb" in problem and f"{MAX_YAML_NODES:,} nodes" in problem
    # AND the check's work is the document's distinct nodes (the text), not its 387 million expanded
    assert yaml_distinct_nodes(_alias_bomb()) < 150


def test_anchors_and_aliases_that_expand_modestly_still_load(tmp_path):
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        textwrap.dedent("""
        settings: {project: p, region: europe-west1, ledger: {bucket: ledger}}
        pipelines:
          wc: {backend: dataflow, template: "gs://t/wc", labels: &labels {team: data, cost: ingest}}
          wc2: {backend: dataflow, template: "gs://t/wc", labels: *labels}
        triggers:
          landing: {storage: {bucket: in}, pipeline: wc}
        """)
    )
    cfg = load_config(path)
    assert dict(cfg.pipelines["wc2"].labels) == {"team": "data", "cost": "ingest"}


def test_a_config_holding_characters_yaml_refuses_is_a_config_error_not_a_crash(tmp_path):
    # the YAML reader refuses control characters as it is built, before any parse (bad-input #362)
    from handlers.core.errors import ConfigError
    from handlers.model.config import load_config

    path = tmp_path / "pipelines.yaml"
    path.write_text("\x00\x01", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "not valid YAML" in str(refused.value)
