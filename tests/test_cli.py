"""Specification: the command line (``python -m handlers``) for data engineers.

Commands run in-process through ``handlers.entry.cli.main(argv)`` (one subprocess proves the entry
point). ``explain`` and ``graph`` need a config only; ``runs``, ``launch`` and ``cancel`` work on the
real emulators (fake-gcs-server ledger, Dataflow emulator) through the ``world`` and ``dataflow``
fixtures, with runs created by the same services the functions use.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.core import clients
from handlers.core.errors import ConfigError
from handlers.entry import cli
from handlers.entry.manual import start_run
from handlers.follow import completion
from handlers.follow.tracking import Tracker
from handlers.launch.ledger import Run
from handlers.launch.service import LaunchService
from handlers.model.config import load_config
from handlers.model.events import ObjectEvent, parse_object_finalized
from handlers.route.identity import RunKey
from tests.support import events as ev

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipelines.yaml"
EXPECTED_GRAPH = ROOT / "tests" / "fixtures" / "example-graph.mmd"
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the test's own service calls logged
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def explain(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    """``explain --config CONFIG ARGV...``: (exit code, stdout, stderr)."""
    return run(capsys, "explain", "--config", str(config), *argv)


def explain_json(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, Any]:
    """``explain --config CONFIG ARGV... --json``: (exit code, parsed JSON)."""
    return run_json(capsys, "explain", "--config", str(config), *argv)


def write(tmp_path: Path, doc: dict[str, Any], name: str = "pipelines.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def settings(**extra: Any) -> dict[str, Any]:
    return {
        "project": "demo",
        "region": "europe-west1",
        "ledger": {"bucket": "ledger"},
        "completion_topic": "done",
        **extra,
    }


def df(name: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "dataflow", "template": f"gs://templates/{name}", **extra}


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
def test_validate_a_good_config_prints_a_one_line_summary(capsys):
    code, out, err = run(capsys, "validate", str(EXAMPLE))
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"{EXAMPLE}: OK: 4 pipelines, 4 triggers (1 completion, 1 fan-in, 1 pubsub, 1 storage)"
    ]
    code, doc = run_json(capsys, "validate", str(EXAMPLE))
    assert code == 0 and doc["valid"] is True
    assert doc["triggers_by_kind"] == {"completion": 1, "fan-in": 1, "pubsub": 1, "storage": 1}
    assert doc["pipelines_by_backend"] == {"dataflow": 1, "dataflow-flex": 1, "datafusion": 1, "fabric": 1}


def test_validate_counts_chains_and_fan_ins_apart(capsys, tmp_path):
    path = write(tmp_path, chain_doc())
    code, out, _ = run(capsys, "validate", "--config", str(path))
    assert code == 0
    assert out.strip().endswith("5 pipelines, 5 triggers (1 completion, 1 fan-in, 3 storage)")


def test_validate_a_bad_config_lists_every_problem_and_exits_2(capsys, tmp_path):
    bad = {
        "settings": {"region": "eu", "ledger": {"bucket": "l"}, "max_event_age": "soon"},
        "pipelines": {
            "Bad Name": df("x"),
            "load": {"backend": "dataflow", "parameters": {"in": "{nope}"}},
            "other": {"backend": "spark"},
        },
        "triggers": {
            "t1": {"storage": {"bucket": "b", "glb": "*.csv"}, "pipeline": "lod"},
            "t2": {"pubsub": {"topic": "x"}, "completion": {"upstream": "load"}, "pipeline": "load"},
        },
    }
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError) as expected:
        load_config(path)
    problems = expected.value.problems
    assert len(problems) >= 6
    code, out, err = run(capsys, "validate", str(path))
    assert code == 2 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{path}: INVALID: {len(problems)} problems"
    assert [line.strip() for line in lines[1:]] == problems  # every problem, one per line
    assert any("did you mean 'load'" in p for p in problems)
    code, doc = run_json(capsys, "validate", str(path))
    assert code == 2 and doc["error"]["problems"] == problems and doc["exit_code"] == 2


def test_validate_unreadable_or_not_yaml_is_exit_2(capsys, tmp_path):
    code, out, err = run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert (code, out, err) == (2, "", f"error: config file {tmp_path / 'missing.yaml'} does not exist\n")
    (tmp_path / "broken.yaml").write_text("settings: [unclosed\n")
    code, out, _ = run(capsys, "validate", str(tmp_path / "broken.yaml"))
    assert code == 2 and "not valid YAML" in out


def test_validate_takes_the_config_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("PIPELINES_CONFIG", str(EXAMPLE))
    code, out, _ = run(capsys, "validate")
    assert code == 0 and out.startswith(f"{EXAMPLE}: OK")


def test_the_module_entry_point_runs_validate_in_a_subprocess(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "handlers", "validate", "examples/pipelines.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert (
        ok.stdout
        == "examples/pipelines.yaml: OK: 4 pipelines, 4 triggers (1 completion, 1 fan-in, 1 pubsub, 1 storage)\n"
    )
    bad = write(tmp_path, {"settings": settings(), "pipelines": {"p": {"backend": "nope"}}})
    failed = subprocess.run(
        [sys.executable, "-m", "handlers", "validate", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert failed.returncode == 2 and "backend" in failed.stdout


def test_usage_errors_exit_2(capsys, tmp_path):
    assert cli.main([]) == 2
    assert (
        cli.main(["explain", "--config", str(EXAMPLE), "--bucket", "b", "--name", "n", "--metadata", "x"])
        == 2
    )
    assert cli.main(["explain", "--config", str(EXAMPLE)]) == 2
    assert (
        cli.main(["explain", "--config", str(EXAMPLE), "--bucket", "b", "--name", "n", "--topic", "t"]) == 2
    )
    assert cli.main(["explain", "--config", str(EXAMPLE), "--topic", "t", "--time", "yesterday"]) == 2
    assert cli.main(["runs", "--state", "SLEEPING", "--config", str(EXAMPLE)]) == 2
    assert cli.main(["--help"]) == 0
    err = capsys.readouterr().err
    assert "expected KEY=VALUE" in err and "explain needs an event" in err
    assert "explain takes one event: --bucket and --topic were both given" in err


# ---------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------
def storage_doc() -> dict[str, Any]:
    return {
        "settings": settings(),
        "pipelines": {
            "load": df(
                "load",
                parameters={"input": "gs://{bucket}/{name}", "day": "{event_time:%Y-%m-%d}"},
                outputs={"table": "raw.{stem}"},
            ),
            "tagged": df("tagged", parameters={"owner": "{metadata.owner}"}),
        },
        "triggers": {
            "csv-landing": {"storage": {"bucket": "landing", "glob": "in/**/*.csv"}, "pipeline": "load"},
            "big-csv": {
                "storage": {
                    "bucket": "landing",
                    "prefix": "in/",
                    "min_size": 1000,
                    "content_type": "text/csv",
                },
                "pipeline": "load",
            },
            "archive": {"storage": {"bucket": "archive"}, "pipeline": "load"},
            "owned": {"storage": {"bucket": "landing", "suffix": ".csv"}, "pipeline": "tagged"},
        },
    }


def recent() -> tuple[str, str]:
    """An event time a minute ago (RFC 3339) and its day: recent enough not to be dropped as old."""
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    return when.isoformat().replace("+00:00", "Z"), when.strftime("%Y-%m-%d")


def test_explain_storage_shows_matches_with_rendered_parameters_and_near_miss_reasons(capsys, tmp_path):
    path = write(tmp_path, storage_doc())
    when, day = recent()
    argv = ["explain", "--config", str(path), "--bucket", "landing", "--name", "in/2026/orders.csv"]
    argv += ["--size", "12", "--generation", "7", "--time", when]
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == ""
    key = str(RunKey.of("csv-landing", "landing/in/2026/orders.csv#7"))
    assert "MATCH  csv-landing  (storage) -> load [dataflow]" in out
    assert f"run key   {key}" in out and f"job name  load-{key.rsplit('-', 1)[1]}" in out
    assert "input  gs://landing/in/2026/orders.csv" in out and f"day    {day}" in out
    assert "table  raw.orders" in out
    # near misses, with every reason
    assert "miss   big-csv" in out and "- size 12 is below min_size 1000" in out
    assert "miss   archive" in out and "- bucket is 'landing', trigger wants 'archive'" in out
    # a match whose parameter cannot be rendered names the missing value
    assert "parameter 'owner': the event has no value for {metadata.owner}" in out
    assert out.rstrip().endswith("storage triggers: 2 of 4 matched; would act: csv-landing")

    code, doc = run_json(capsys, *argv)
    by = {t["trigger"]: t for t in doc["triggers"]}
    assert code == 0 and doc["would_act"] == ["csv-landing"] and doc["too_old"] is False
    assert by["csv-landing"]["run_key"] == key and by["csv-landing"]["action"] == "launch"
    assert by["csv-landing"]["parameters"] == {"input": "gs://landing/in/2026/orders.csv", "day": day}
    assert by["csv-landing"]["labels"] == {
        "pipeline-trigger": "csv-landing",
        "pipeline": "load",
        "run-key-hash": key.rsplit("-", 1)[1],
    }
    assert by["big-csv"]["matched"] is False and by["big-csv"]["reasons"] == [
        "size 12 is below min_size 1000"
    ]
    assert by["owned"]["action"] == "fail" and "{metadata.owner}" in by["owned"]["error"]
    # with the metadata, the same trigger renders
    code, doc = run_json(capsys, *argv, "--metadata", "owner=ana")
    owned = next(t for t in doc["triggers"] if t["trigger"] == "owned")
    assert owned["parameters"] == {"owner": "ana"} and sorted(doc["would_act"]) == ["csv-landing", "owned"]


def test_explain_agrees_with_the_function_path_for_the_same_event(capsys, tmp_path):
    """Run key and parameters equal what the launch path derives from a real CloudEvent."""
    path = write(tmp_path, storage_doc())
    when, _ = recent()
    cloud_event = ev.storage_finalized(
        "landing", "in/a/b.csv", generation=1700000000000001, size=5000, content_type="text/csv", time=when
    )
    event: ObjectEvent = parse_object_finalized(cloud_event)
    config = load_config(path)
    code, doc = explain_json(
        capsys,
        path,
        "--bucket",
        "landing",
        "--name",
        "in/a/b.csv",
        "--size",
        "5000",
        "--generation",
        "1700000000000001",
        "--time",
        when,
    )
    assert code == 0
    expected = cli.explain_object(config, event)  # from the parsed CloudEvent, as on_object_finalized sees it
    assert [(t["run_key"], t["parameters"]) for t in doc["triggers"] if t["matched"]] == [
        (t.run_key, t.parameters) for t in expected.triggers if t.matched
    ]
    assert doc["would_act"] == ["csv-landing", "big-csv"]


def test_explain_makes_hostile_object_names_harmless_on_the_terminal(capsys, tmp_path):
    path = write(tmp_path, storage_doc())
    hostile = "in/we ird\n\x1b[31mred\u202e#%?.csv"
    long_name = "in/" + "é" * 500 + ".csv"  # 1007 bytes of UTF-8
    for name in (hostile, long_name):
        code, out, _ = explain(capsys, path, "--bucket", "landing", "--name", name)
        assert code == 0
        assert "\x1b" not in out and "\u202e" not in out  # nothing reaches the terminal raw
        header = out.splitlines()[0]
        assert header.startswith("storage event  gs://landing/in/")
        code, doc = explain_json(capsys, path, "--bucket", "landing", "--name", name)
        match = next(t for t in doc["triggers"] if t["trigger"] == "csv-landing")
        assert doc["event"]["name"] == name  # JSON keeps the exact name
        assert match["parameters"]["input"] == f"gs://landing/{name}"
        assert JOB_NAME_RE.match(match["job_name"])
    assert (
        "we ird\\n\\x1b[31mred\\u202e#%?.csv"
        in explain(capsys, path, "--bucket", "landing", "--name", hostile)[1]
    )


def message_doc() -> dict[str, Any]:
    return {
        "settings": settings(),
        "pipelines": {
            "orders": df(
                "orders",
                parameters={
                    "orderId": "{data.order.id}",
                    "region": "{attributes.region|eu}",
                    "day": "{event_time:%Y-%m-%d}",
                },
            ),
            "refunds": df("refunds", parameters={"id": "{data.order.id}"}),
        },
        "triggers": {
            "new-orders": {
                "pubsub": {
                    "topic": "orders",
                    "attributes": {"kind": "order"},
                    "data": {"order.total": {"regex": "^[0-9]+$"}, "order.channel": ["web", "shop"]},
                    "dedupe_by": "data.order.id",
                },
                "pipeline": "orders",
            },
            "refund-orders": {
                "pubsub": {"topic": "orders", "attributes": {"kind": "refund", "urgent": {"exists": True}}},
                "pipeline": "refunds",
            },
            "elsewhere": {"pubsub": {"topic": "payments"}, "pipeline": "refunds"},
        },
    }


def test_explain_message_checks_data_and_attribute_conditions(capsys, tmp_path):
    path = write(tmp_path, message_doc())
    data = tmp_path / "order.json"
    data.write_text(json.dumps({"order": {"id": "A-17", "total": "120", "channel": "web"}}))
    argv = [
        "explain",
        "--config",
        str(path),
        "--topic",
        "projects/demo/topics/orders",
        "--data",
        f"@{data}",
        "--attribute",
        "kind=order",
        "--attribute",
        "region=us",
    ]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "MATCH  new-orders  (pubsub) -> orders [dataflow]" in out
    assert "orderId  A-17" in out and "region   us" in out
    assert "- attributes.kind is 'order', wants 'refund'" in out and "- attributes.urgent is missing" in out
    assert "- topic is 'orders', trigger wants 'payments'" in out
    code, doc = run_json(capsys, *argv)
    new = doc["triggers"][0]
    assert new["run_key"] == str(
        RunKey.of("new-orders", "data.order.id=A-17")
    )  # dedupe_by, not the message id
    assert doc["event"]["data"]["order"]["id"] == "A-17" and doc["event"]["topic"] == "orders"
    # data conditions that fail are near misses with their reasons
    code, doc = explain_json(
        capsys,
        path,
        "--topic",
        "orders",
        "--attribute",
        "kind=order",
        "--data",
        '{"order": {"id": "B", "total": "12.5", "channel": "fax"}}',
    )
    assert code == 1 and doc["would_act"] == []
    assert doc["triggers"][0]["reasons"] == [
        "data.order.total '12.5' does not match '^[0-9]+$'",
        "data.order.channel is 'fax', wants one of ['web', 'shop']",
    ]
    # a message without the dedupe_by field is acknowledged without a run
    code, doc = explain_json(
        capsys,
        path,
        "--topic",
        "orders",
        "--attribute",
        "kind=order",
        "--data",
        '{"order": {"total": "1", "channel": "web"}}',
    )
    assert doc["triggers"][0]["action"] == "fail" and "dedupe_by data.order.id" in doc["triggers"][0]["error"]


def test_explain_message_routes_storage_notifications_as_objects_and_drops_old_events(capsys, tmp_path):
    path = write(tmp_path, storage_doc())
    note = {
        "eventType": "OBJECT_FINALIZE",
        "bucketId": "landing",
        "objectId": "in/x.csv",
        "objectGeneration": "3",
    }
    argv = ["explain", "--config", str(path), "--topic", "gcs-notifications"]
    for k, v in note.items():
        argv += ["--attribute", f"{k}={v}"]
    code, doc = run_json(capsys, *argv)
    assert code == 0 and doc["kind"] == "storage" and "notification" in doc["notes"][0]
    assert doc["triggers"][0]["run_key"] == str(RunKey.of("csv-landing", "landing/in/x.csv#3"))
    code, out, _ = run(capsys, *argv, "--time", "2020-01-01T00:00:00Z")
    assert code == 1 and "older than max_event_age (3600s): it would be dropped" in out


def chain_doc() -> dict[str, Any]:
    return {
        "settings": settings(),
        "pipelines": {
            "ingest": df(
                "ingest",
                parameters={"input": "gs://{bucket}/{name}", "day": "{event_time:%Y-%m-%d}"},
                outputs={"table": "raw.{stem}"},
            ),
            "enrich": df(
                "enrich",
                parameters={
                    "source": "{upstream.outputs.table}",
                    "day": "{upstream.parameters.day}",
                    "upstream": "{upstream.run_key}",
                },
            ),
            "alert": df("alert", parameters={"file": "{name}"}),
            "audit": df("audit", parameters={"day": "{event_time:%Y-%m-%d}"}),
            "report": df(
                "report",
                parameters={
                    "key": "{join_key}",
                    "a": "{upstreams.enrich.parameters.source}",
                    "b": "{upstreams.audit.run_key}",
                },
            ),
        },
        "triggers": {
            "landing": {"storage": {"bucket": "landing", "prefix": "in/"}, "pipeline": "ingest"},
            "audit-landing": {"storage": {"bucket": "landing", "prefix": "audit/"}, "pipeline": "audit"},
            "ingest-errors": {"storage": {"bucket": "errors"}, "pipeline": "alert"},
            "after-ingest": {"completion": {"upstream": "ingest"}, "pipeline": "enrich"},
            "report-when-both": {
                "completion": {"upstream": ["enrich", "audit"], "join_key": "{upstream.parameters.day}"},
                "pipeline": "report",
            },
        },
    }


def completion_event(pipeline: str, state: str = "SUCCEEDED", **fields: Any) -> dict[str, Any]:
    """A real completion CloudEvent, built by the code that publishes them."""
    done = Run(
        run_key=f"{fields.pop('trigger', 'landing')}-0123456789abcdef0123",
        trigger="landing",
        pipeline=pipeline,
        backend="dataflow",
        state=state,
        job_name=f"{pipeline}-0123456789abcdef0123",
        parameters=fields.pop("parameters", {"day": "2026-05-01", "input": "gs://landing/in/d.csv"}),
        outputs=fields.pop("outputs", {"table": "raw.d"}),
        created_at="2026-05-01T10:00:00.000Z",
        ended_at="2026-05-01T10:05:00.000Z",
        error={"message": "boom"} if state != "SUCCEEDED" else None,
    )
    return completion.build_event(done, "demo")


def test_explain_completion_for_a_chain(capsys, tmp_path):
    path = write(tmp_path, chain_doc())
    event = completion_event("ingest")
    code, out, _ = explain(capsys, path, "--completion", json.dumps(event))
    assert code == 0
    assert out.startswith("completion  ingest SUCCEEDED  run landing-0123456789abcdef0123")
    assert "MATCH  after-ingest  (completion) -> enrich [dataflow]" in out
    assert "source    raw.d" in out and "upstream  landing-0123456789abcdef0123" in out
    assert "- upstream pipeline is 'ingest', trigger waits for ['enrich', 'audit']" in out
    # from a file, as JSON
    (tmp_path / "done.json").write_text(json.dumps(event))
    code, doc = explain_json(capsys, path, "--completion", str(tmp_path / "done.json"))
    (after,) = [t for t in doc["triggers"] if t["matched"]]
    assert after["run_key"] == str(RunKey.of("after-ingest", f"completion:{event['id']}"))
    assert after["parameters"] == {
        "source": "raw.d",
        "day": "2026-05-01",
        "upstream": "landing-0123456789abcdef0123",
    }
    # a failed upstream does not launch a success-only chain
    failed = completion_event("ingest", "FAILED")
    code, doc = explain_json(capsys, path, "--completion", json.dumps(failed))
    assert code == 1 and doc["would_act"] == []
    after = next(t for t in doc["triggers"] if t["trigger"] == "after-ingest")
    assert after["reasons"] == ["upstream state is 'FAILED', trigger wants one of ['SUCCEEDED']"]
    # the bare data object of a completion is accepted too
    code, doc = explain_json(capsys, path, "--completion", json.dumps(event["data"]))
    assert code == 0 and doc["event"]["event_id"] == event["id"]


def test_explain_completion_for_a_fan_in_shows_the_join_key_and_who_it_waits_for(capsys, tmp_path):
    path = write(tmp_path, chain_doc())
    audit = completion_event("audit", trigger="audit-landing", parameters={"day": "2026-05-01"}, outputs={})
    code, out, _ = explain(capsys, path, "--completion", json.dumps(audit))
    assert code == 0
    assert "MATCH  report-when-both  (fan-in) -> report [dataflow]" in out
    assert "join key   2026-05-01" in out
    assert "waits for  enrich (SUCCEEDED, same join key); then launches once" in out
    assert (
        "parameters pending: parameter 'a': the event has no value for {upstreams.enrich.parameters.source}"
        in out
    )
    code, doc = explain_json(capsys, path, "--completion", json.dumps(audit))
    (fan,) = [t for t in doc["triggers"] if t["matched"]]
    assert fan["action"] == "wait"
    assert fan["join"] == {
        "join_key": "2026-05-01",
        "upstreams": ["enrich", "audit"],
        "arrives": "audit",
        "waiting_for": ["enrich"],
        "pending_parameters": fan["join"]["pending_parameters"],
    }
    assert fan["run_key"] == str(RunKey.of("report-when-both", "join:2026-05-01"))
    # a failed upstream abandons the join for that key
    broken = completion_event("audit", "FAILED", trigger="audit-landing", parameters={"day": "2026-05-01"})
    code, doc = explain_json(capsys, path, "--completion", json.dumps(broken))
    fan = next(t for t in doc["triggers"] if t["trigger"] == "report-when-both")
    assert (
        fan["action"] == "abandon"
        and "ABANDONED" in fan["error"]
        and doc["would_act"] == ["report-when-both"]
    )


def test_explain_completion_rejects_what_is_not_a_completion(capsys, tmp_path):
    path = write(tmp_path, chain_doc())
    code, doc = explain_json(capsys, path, "--completion", '{"type": "other", "data": {}}')
    assert code == 2 and "unknown completion event type" in doc["error"]["message"]
    code, _, err = explain(capsys, path, "--completion", str(tmp_path / "nope.json"))
    assert code == 2 and "cannot read" in err


def test_explain_has_no_side_effects(capsys, world, dataflow, monkeypatch):
    """No ledger object, no backend request, no socket at all while explaining."""
    pipelines = {
        "ingest": {**dataflow.pipeline_options("ingest"), "parameters": {"input": "gs://{bucket}/{name}"}},
        "enrich": {**dataflow.pipeline_options("enrich"), "parameters": {"source": "{upstream.run_key}"}},
        "orders": {**dataflow.pipeline_options("orders"), "parameters": {"orderId": "{data.id}"}},
    }
    triggers = {
        "landing": {"storage": {"bucket": "landing"}, "pipeline": "ingest"},
        "orders": {"pubsub": {"topic": "orders"}, "pipeline": "orders"},
        "after": {"completion": {"upstream": "ingest"}, "pipeline": "enrich"},
    }
    path = str(world.write_config(pipelines, triggers))
    dataflow._control("POST", "reset")  # forget the template registrations above

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"explain opened a connection: {args}")

    with monkeypatch.context() as guard:
        guard.setattr(socket.socket, "connect", no_network)
        guard.setattr(socket.socket, "connect_ex", no_network)
        assert run(capsys, "explain", "--config", path, "--bucket", "landing", "--name", "a.txt")[0] == 0
        assert run(capsys, "explain", "--config", path, "--topic", "orders", "--data", '{"id": 1}')[0] == 0
        done = completion_event("ingest")
        assert run(capsys, "explain", "--config", path, "--completion", json.dumps(done), "--json")[0] == 0
    assert list(world.gcs.list_blobs(world.ledger_bucket)) == []
    assert dataflow._control("GET", "requests")["requests"] == []
    assert dataflow.jobs() == []


# ---------------------------------------------------------------------------------------------
# runs, launch, cancel: on the emulators
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def ops(world, dataflow):
    """A config with a hand-launchable pipeline and an event-driven one, written to disk."""
    pipelines = {
        "backfill": {
            **dataflow.pipeline_options("backfill"),
            "inputs": {"day": {"pattern": "[0-9]{4}-[0-9]{2}-[0-9]{2}"}},
            "parameters": {"day": "{input.day}"},
        },
        "ingest": {
            **dataflow.pipeline_options("ingest"),
            "parameters": {"input": "gs://{bucket}/{name}", "owner": "{metadata.owner}"},
        },
    }
    triggers = {"landing": {"storage": {"bucket": "landing"}, "pipeline": "ingest"}}
    path = world.write_config(pipelines, triggers)
    runtime = world.runtime(world.config(pipelines, triggers))
    return str(path), runtime


def _object(name: str, **metadata: str) -> ObjectEvent:
    return parse_object_finalized(ev.storage_finalized("landing", name, metadata=metadata or None))


def test_runs_lists_the_ledger_newest_first_with_filters(capsys, world, dataflow, ops):
    path, runtime = ops
    first, _ = start_run(runtime, "backfill", {"day": "2026-11-01"}, "key-1")
    time.sleep(0.01)
    landing = runtime.config.triggers["landing"]
    second = LaunchService(runtime).start(landing, _object("in/a.csv", owner="ana"))
    time.sleep(0.01)
    broken = LaunchService(runtime).start(landing, _object("in/b.csv"))  # no owner: LAUNCH_FAILED
    assert (first.result, second.result, broken.result) == ("launched", "launched", "failed")

    code, out, err = run(capsys, "runs", "--config", path, "--progress")
    assert code == 0 and "reading 3/3 runs" in err
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["RUN KEY", "PIPELINE", "TRIGGER", "STATE", "AGE", "JOB", "LINK"]
    keys = [line.split()[0] for line in lines[1:4]]
    assert keys == [broken.run_key, second.run_key, first.run_key]  # newest first
    row = lines[3].split()
    assert row[1:4] == ["backfill", "api", "PENDING"] and re.fullmatch(r"\d+s", row[4])
    assert row[5] == first.job_id and row[6].startswith("https://console.cloud.google.com/dataflow/jobs/")
    assert lines[1].split()[1:4] == ["ingest", "landing", "LAUNCH_FAILED"] and lines[1].split()[5] == "-"
    assert lines[-1] == "3 runs, newest first"
    # columns are aligned: every row starts its PIPELINE column where the header does
    column = lines[0].index("PIPELINE")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines[1:4])

    assert run_json(capsys, "runs", "--config", path, "--pipeline", "backfill")[1]["total"] == 1
    code, doc = run_json(capsys, "runs", "--config", path, "--state", "launch_failed")
    assert [r["run_key"] for r in doc["runs"]] == [broken.run_key] and "metadata.owner" in doc["runs"][0][
        "error"
    ]
    code, doc = run_json(capsys, "runs", "--config", path, "--limit", "1")
    assert doc["shown"] == 1 and doc["total"] == 3 and doc["runs"][0]["run_key"] == broken.run_key
    assert "1 run of 3 (--limit 0 shows all)" in run(capsys, "runs", "--config", path, "--limit", "1")[1]
    code, doc = run_json(capsys, "runs", "--config", path, "--active")
    assert doc["active_only"] and doc["total"] == 3

    # once the tracker finished them, the active index is empty and the states show
    dataflow.advance(30)
    Tracker(runtime).sweep()
    assert run(capsys, "runs", "--config", path, "--active")[1] == "no runs (active index)\n"
    code, doc = run_json(capsys, "runs", "--config", path, "--state", "SUCCEEDED")
    assert sorted(r["run_key"] for r in doc["runs"]) == sorted([first.run_key, second.run_key])
    assert all(r["job_id"] and r["age_seconds"] is not None for r in doc["runs"])


def test_runs_reports_an_unreachable_ledger_as_a_failure(capsys, world, ops, monkeypatch):
    path, _ = ops
    doc = yaml.safe_load(Path(path).read_text())
    doc["settings"]["ledger"]["bucket"] = world.name + "-nobucket"
    Path(path).write_text(yaml.safe_dump(doc))
    code, doc = run_json(capsys, "runs", "--config", path)
    assert code == 1 and doc["error"]["type"] in ("LedgerUnavailable", "NotFound")
    assert "nobucket" in doc["error"]["message"]


def test_launch_starts_a_run_once_per_idempotency_key(capsys, dataflow, ops):
    path, _ = ops
    code, out, _ = run(
        capsys,
        "launch",
        "backfill",
        "--config",
        path,
        "--param",
        "day=2026-11-01",
        "--idempotency-key",
        "k-1",
    )
    assert code == 0
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines())
    assert (
        fields["result"] == "launched" and fields["state"] == "PENDING" and fields["idempotency key"] == "k-1"
    )
    assert fields["link"].startswith("https://console.cloud.google.com/dataflow/jobs/")
    code, doc = run_json(
        capsys,
        "launch",
        "backfill",
        "--config",
        path,
        "--param",
        "day=2026-11-01",
        "--idempotency-key",
        "k-1",
    )
    assert code == 0 and doc["result"] == "duplicate" and doc["run_key"] == fields["run key"]
    assert len(dataflow.launches()) == 1 and dataflow.launches()[0]["parameters"] == {"day": "2026-11-01"}


def test_launch_without_a_key_prints_the_generated_one(capsys, ops):
    path, _ = ops
    code, out, err = run(capsys, "launch", "backfill", "--config", path, "--param", "day=2026-11-02")
    assert code == 0
    key = re.search(r"idempotency key ([0-9a-f-]{36}) \(retry with --idempotency-key \1", err)
    assert key and f"idempotency key  {key.group(1)}" in out
    code, doc = run_json(capsys, "launch", "backfill", "--config", path, "--param", "day=2026-11-03")
    assert code == 0 and re.fullmatch(r"[0-9a-f-]{36}", doc["idempotency_key"])


def test_launch_errors_name_the_problem(capsys, dataflow, ops):
    path, _ = ops
    code, out, err = run(
        capsys, "launch", "backfill", "--config", path, "--param", "day=tomorrow", "--param", "x=1"
    )
    assert code == 2 and out == ""
    assert "parameters.day: does not match the pattern" in err and "parameters.x: unknown" in err
    code, doc = run_json(capsys, "launch", "nope", "--config", path)
    assert code == 1 and doc["error"]["type"] == "NotFound"
    code, doc = run_json(capsys, "launch", "ingest", "--config", path)
    assert code == 1 and "cannot be launched by hand" in doc["error"]["message"]
    run(
        capsys,
        "launch",
        "backfill",
        "--config",
        path,
        "--param",
        "day=2026-01-01",
        "--idempotency-key",
        "same",
    )
    code, doc = run_json(
        capsys,
        "launch",
        "backfill",
        "--config",
        path,
        "--param",
        "day=2026-01-02",
        "--idempotency-key",
        "same",
    )
    assert code == 1 and doc["error"]["type"] == "IdempotencyConflict"
    assert len(dataflow.launches()) == 1


def test_launch_wait_follows_the_run_to_success(capsys, dataflow, ops):
    path, _ = ops
    dataflow.register("backfill", run_seconds=0.5)  # 1 s pending + 0.5 s running on the emulator clock
    started = time.monotonic()
    code, out, err = run(
        capsys,
        "launch",
        "backfill",
        "--config",
        path,
        "--param",
        "day=2026-11-05",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        "60",
    )
    assert code == 0, out + err
    assert time.monotonic() - started < 30
    assert "finished         SUCCEEDED (JOB_STATE_DONE)" in out
    assert re.search(r"waiting for api-[0-9a-f]{20}: (PENDING|RUNNING)", err)  # the progress line
    assert re.search(r"waiting for api-[0-9a-f]{20}: SUCCEEDED", err)


def test_launch_wait_exits_1_when_the_run_fails(capsys, dataflow, ops):
    path, _ = ops
    dataflow.register("backfill", run_seconds=0.3, outcome="FAILED", error_message="disk full")
    code, doc = run_json(
        capsys,
        "launch",
        "backfill",
        "--config",
        path,
        "--param",
        "day=2026-11-06",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        "60",
    )
    assert code == 1 and doc["final_state"] == "FAILED" and doc["wait_timed_out"] is False


def test_launch_wait_gives_up_at_its_timeout(capsys, dataflow, ops):
    path, _ = ops
    dataflow.register("backfill", run_seconds=600)
    code, doc = run_json(
        capsys,
        "launch",
        "backfill",
        "--config",
        path,
        "--param",
        "day=2026-11-07",
        "--wait",
        "--interval",
        "0.2",
        "--timeout",
        "0.5",
    )
    assert code == 1 and doc["wait_timed_out"] is True and doc["final_state"] in ("PENDING", "RUNNING")


def test_cancel_stops_the_job(capsys, dataflow, ops):
    path, _ = ops
    code, doc = run_json(capsys, "launch", "backfill", "--config", path, "--param", "day=2026-11-08")
    key = doc["run_key"]
    code, out, _ = run(capsys, "cancel", key, "--config", path)
    assert code == 0 and out.startswith(f"cancel requested for {key} (job {doc['job_id']}")
    dataflow.advance(10)
    assert dataflow.jobs()[0]["currentState"] == "JOB_STATE_CANCELLED"
    code, doc = run_json(capsys, "cancel", "api-00000000000000000000", "--config", path)
    assert code == 1 and doc["error"]["type"] == "NotFound"


def test_cancel_of_a_finished_run_is_refused(capsys, world, dataflow, ops):
    path, runtime = ops
    outcome, _ = start_run(runtime, "backfill", {"day": "2026-11-09"}, "k")
    dataflow.advance(30)
    Tracker(runtime).sweep()
    code, doc = run_json(capsys, "cancel", outcome.run_key, "--config", path)
    assert code == 1 and "already ended (SUCCEEDED)" in doc["error"]["message"]


# ---------------------------------------------------------------------------------------------
# graph
# ---------------------------------------------------------------------------------------------
def test_graph_of_the_example_config_is_stable(capsys):
    expected = EXPECTED_GRAPH.read_text()
    assert cli.graph_mermaid(load_config(EXAMPLE)) == expected, (
        "the Mermaid for examples/pipelines.yaml changed; if intended, regenerate it with "
        "`python -m handlers graph --config examples/pipelines.yaml > tests/fixtures/example-graph.mmd`"
    )
    code, out, _ = run(capsys, "graph", "--config", str(EXAMPLE))
    assert code == 0 and out == expected


def test_graph_draws_chains_and_fan_ins(capsys, tmp_path):
    path = write(tmp_path, chain_doc())
    code, out, _ = run(capsys, "graph", "--config", str(path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    t_landing[("landing<br/>gs://landing/in/*")]' in lines
    assert '    p_enrich["enrich<br/>dataflow"]' in lines
    assert '    j_report_when_both{{"report-when-both<br/>join on {upstream.parameters.day}"}}' in lines
    assert '    p_ingest -->|"after-ingest: SUCCEEDED"| p_enrich' in lines
    assert '    p_audit -->|"SUCCEEDED"| j_report_when_both' in lines
    assert '    p_enrich -->|"SUCCEEDED"| j_report_when_both' in lines
    assert "    j_report_when_both --> p_report" in lines
    assert "    t_landing --> p_ingest" in lines
    # deterministic whatever the order of the YAML
    doc = chain_doc()
    doc["triggers"] = dict(reversed(list(doc["triggers"].items())))
    doc["pipelines"] = dict(reversed(list(doc["pipelines"].items())))
    assert run(capsys, "graph", "--config", str(write(tmp_path, doc, "reversed.yaml")))[1] == out
    code, graph = run_json(capsys, "graph", "--config", str(path))
    kinds = {n["id"]: n["kind"] for n in graph["nodes"]}
    assert kinds["j_report_when_both"] == "join" and kinds["t_landing"] == "storage"
    assert {
        "from": "p_ingest",
        "to": "p_enrich",
        "label": "after-ingest: SUCCEEDED",
        "kind": "completion",
    } in graph["edges"]


def test_graph_escapes_characters_mermaid_would_parse(capsys, tmp_path):
    doc = {
        "settings": settings(),
        "pipelines": {"end": df("end"), "a-b": df("ab"), "a_b": df("a_b")},
        "triggers": {
            "weird": {
                "storage": {"bucket": "b", "regex": 'x"|<y>#&`\\\\'},
                "pipeline": "end",
            },
            "msgs": {
                "pubsub": {
                    "topic": "t",
                    "attributes": {"k": {"in": ["a", "b"]}},
                    "data": {"x.y": {"exists": False}},
                },
                "pipeline": "a-b",
            },
            "more": {"storage": {"bucket": "b", "suffix": ".csv"}, "pipeline": "a_b"},
        },
    }
    out = run(capsys, "graph", "--config", str(write(tmp_path, doc)))[1]
    line = next(line for line in out.splitlines() if line.startswith("    t_weird"))
    assert line == '    t_weird[("weird<br/>gs://b/**<br/>regex x#quot;#124;#lt;y#gt;#35;#amp;#96;#92;#92;")]'
    assert '    t_msgs>"msgs<br/>topic t<br/>attributes.k in a, b<br/>data.x.y absent"]' in out
    # ids never collide and never are a Mermaid keyword
    ids = [
        line.split("[")[0].split(">")[0].split("{")[0].strip()
        for line in out.splitlines()[1:]
        if "-->" not in line
    ]
    assert len(ids) == len(set(ids)) and "end" not in ids
    assert {"p_a_b", "p_a_b_2", "p_end"} <= set(ids)


# ---------------------------------------------------------------------------------------------
# output conventions
# ---------------------------------------------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch, tmp_path):
    path = write(tmp_path, storage_doc())
    argv = ["explain", "--config", str(path), "--bucket", "landing", "--name", "in/a.csv"]
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = Tty()
    assert cli.main(argv, stdout=tty, stderr=io.StringIO()) == 0
    assert "\x1b[32mMATCH\x1b[0m" in tty.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Tty()
    cli.main(argv, stdout=plain, stderr=io.StringIO())
    assert "\x1b" not in plain.getvalue()
    piped = io.StringIO()
    monkeypatch.delenv("NO_COLOR")
    cli.main(argv, stdout=piped, stderr=io.StringIO())
    assert "\x1b" not in piped.getvalue()


def test_service_logs_stay_off_stdout_unless_verbose(capsys, ops):
    path, _ = ops
    code, out, err = run(
        capsys, "launch", "backfill", "--config", path, "--param", "day=2026-11-10", "--json"
    )
    assert code == 0 and json.loads(out)["result"] == "launched"  # stdout: exactly one JSON document
    assert '"severity"' not in err
    code, out, err = run(
        capsys, "launch", "backfill", "--config", path, "--param", "day=2026-11-11", "--json", "-v"
    )
    assert code == 0 and json.loads(out)["result"] == "launched"
    assert '"message": "job launched"' in err


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", str(EXAMPLE)],
        ["graph", "--config", str(EXAMPLE)],
        ["explain", "--config", str(EXAMPLE), "--bucket", "demo-landing", "--name", "incoming/x.txt"],
        ["explain", "--config", str(EXAMPLE), "--topic", "orders", "--attribute", "kind=order"],
        ["--json", "validate", str(EXAMPLE)],  # --json before the command works too
    ],
)
def test_json_output_parses_for_config_only_commands(capsys, argv):
    code = cli.main([*argv, "--json"] if "--json" not in argv else argv)
    out = capsys.readouterr().out
    assert isinstance(json.loads(out), dict) and code in (0, 1)


# ---------------------------------------------------------------------------------------------
# errors a newcomer meets: said once, with what to do
# ---------------------------------------------------------------------------------------------
def test_no_config_at_all_says_where_it_looked_and_how_to_name_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINES_CONFIG", raising=False)
    code, out, err = run(capsys, "runs")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: no config: pipelines.yaml is not in {tmp_path}",
        "  what to do: pass --config FILE (e.g. --config examples/pipelines.yaml), or set PIPELINES_CONFIG "
        "(`make up` prints it)",
    ]


def test_a_config_of_a_stopped_stack_says_to_start_it_again(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINES_CONFIG", str(tmp_path / "gone" / "pipelines.yaml"))
    code, _, err = run(capsys, "explain", "--bucket", "b", "--name", "n")
    assert code == 2
    assert (
        err.splitlines()[0]
        == f"error: PIPELINES_CONFIG={tmp_path / 'gone' / 'pipelines.yaml'} does not exist"
    )
    assert "start `make up` again and paste its export lines" in err


def test_missing_credentials_say_so_once_and_name_the_local_way(capsys, monkeypatch):
    from google.auth import exceptions as auth_errors

    def no_credentials(*_: Any, **__: Any) -> Any:
        raise auth_errors.DefaultCredentialsError("Your default credentials were not found. To set up ...")

    for var in ("STORAGE_EMULATOR_HOST", "PIPELINES_ANONYMOUS_AUTH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("google.auth.default", no_credentials)
    clients.reset()  # sessions built earlier in this process are anonymous
    code, out, err = run(capsys, "runs", "--config", str(EXAMPLE))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "error: no Google credentials (Application Default Credentials) were found",
        "  what to do: for the local stack, paste the export lines `make up` prints (they set "
        "PIPELINES_ANONYMOUS_AUTH=true); for Google Cloud run `gcloud auth application-default login`",
    ]
    assert "Traceback" not in err and "credentials were not found" not in err
    code, doc = run_json(capsys, "runs", "--config", str(EXAMPLE))
    clients.reset()
    assert code == 1 and doc["error"]["hint"].startswith("for the local stack")


def test_a_stopped_local_stack_is_one_line_and_a_hint(capsys, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("PIPELINES_ANONYMOUS_AUTH", "true")
    monkeypatch.setattr("handlers.launch.store.RETRY_BUDGET_SECONDS", 0.5)
    code, _, err = run(capsys, "runs", "--config", str(EXAMPLE))
    assert code == 1
    assert err.splitlines() == [
        "error: ledger gs://demo-ledger: gcs list pipeline-ledger/runs/: connection failed (ConnectionError)",
        "  what to do: is the local stack still running? start `make up` again and paste its new export "
        "lines (its ports change each time)",
    ]


def test_launch_of_an_unknown_pipeline_prints_no_idempotency_key_and_names_the_launchable(capsys):
    code, out, err = run(capsys, "launch", "nope", "--config", str(EXAMPLE))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "error: unknown pipeline 'nope'",
        "  what to do: the pipelines this config can launch by hand: none (`python -m handlers graph` shows "
        "them all)",
    ]


# ---------------------------------------------------------------------------------------------
# explain says which values it made up
# ---------------------------------------------------------------------------------------------
def test_explain_marks_the_object_fields_it_made_up(capsys):
    code, out, _ = run(
        capsys, "explain", "--config", str(EXAMPLE), "--bucket", "demo-landing", "--name", "incoming/a.txt"
    )
    assert code == 0
    facts = {line.split()[0]: line for line in out.splitlines()[1:5]}
    assert facts["generation"].endswith(
        "(assumed: the event time in microseconds, as GCS assigns it; the run key depends on it: --generation)"
    )
    assert facts["size"] == "  size          0  (assumed: 0; --size sets it)"
    assert (
        facts["content"]
        == "  content type  text/plain  (assumed: guessed from the name; --content-type sets it)"
    )
    assert facts["event"].endswith("(age 0s)  (assumed: now; --time sets it)")
    code, doc = run_json(
        capsys, "explain", "--config", str(EXAMPLE), "--bucket", "demo-landing", "--name", "incoming/a.txt"
    )
    assert sorted(doc["assumed"]) == ["content_type", "event_time", "generation", "size"]


def test_explain_marks_nothing_it_was_given(capsys):
    given = [
        "--size",
        "2048",
        "--generation",
        "17",
        "--content-type",
        "text/plain",
        "--time",
        dt.datetime.now(dt.UTC).isoformat(),  # recent: the event is not too old to act on
    ]
    code, out, _ = run(
        capsys,
        "explain",
        "--config",
        str(EXAMPLE),
        "--bucket",
        "demo-landing",
        "--name",
        "incoming/a.txt",
        *given,
    )
    assert code == 0 and "assumed" not in out
    _, doc = run_json(
        capsys,
        "explain",
        "--config",
        str(EXAMPLE),
        "--bucket",
        "demo-landing",
        "--name",
        "incoming/a.txt",
        *given,
    )
    assert doc["assumed"] == {}


def test_explain_marks_a_derived_message_id_and_a_completions_delivery_time(capsys, tmp_path):
    args = ["explain", "--config", str(EXAMPLE), "--topic", "orders", "--attribute", "kind=order"]
    code, out, _ = run(capsys, *args, "--data", '{"order": {"id": "A-17"}}')
    assert out.splitlines()[:2] == [
        "pubsub message  topic orders",
        "  id          local-e8d44b4605a6c24c  (assumed: derived from topic, data and attributes; --message-id sets it)",
    ]
    assert code == 0
    _, doc = run_json(capsys, *args, "--data", "{}", "--message-id", "m-1")
    assert sorted(doc["assumed"]) == ["event_time"]
    path = write(tmp_path, chain_doc())
    _, doc = explain_json(capsys, path, "--completion", json.dumps(completion_event("ingest")))
    assert sorted(doc["assumed"]) == ["delivered_at"]  # the end time is the completion's own
