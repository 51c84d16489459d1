"""Specification: a ``batch:`` trigger launches once per window of objects, each object in exactly one.

Real services throughout: the ledger and the manifests in fake-gcs-server, jobs in the Dataflow
emulator, completion events on the Pub/Sub emulator; deliveries through functions-framework.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import re
import time

import pytest

from handlers.core.errors import ConfigError
from handlers.core.times import iso, now
from handlers.follow.tracking import Tracker
from handlers.launch.runtime import make_runtime
from handlers.launch.windows import Windows
from handlers.model.config import build_config
from handlers.model.events import parse_object_finalized
from handlers.route.plan import plan_object
from tests.support import events as ev
from tests.test_api import ROOT, check_openapi

LANDING = "landing"


def batch_pipelines(dataflow):
    return {
        "load": {
            **dataflow.pipeline_options("load"),
            "parameters": {
                "input": "{batch.manifest}",
                "key": "{batch.id}",
                "a": "{batch.count}",
                "b": "{batch.bytes}",
                "source": "{batch.key}",
                "day": "{batch.first_time:%Y-%m-%d}",
                "upstream": "{batch.last_time}",
            },
        }
    }


def batch_world(world, dataflow, **batch):
    pipelines = batch_pipelines(dataflow)
    triggers = {
        "landing": {
            "storage": {"bucket": LANDING, "prefix": "in/"},
            "pipeline": "load",
            "batch": batch or {"max_items": 3},
        }
    }
    path = world.write_config(pipelines, triggers)
    return path, world.runtime(world.config(pipelines, triggers))


def drop(name: str, *, size: int = 12, generation: int = 1700000000000001):
    return ev.storage_finalized(LANDING, name, size=size, generation=generation)


def load_jobs(dataflow):
    return [j for j in dataflow.jobs() if j["name"].startswith("load-")]


def manifest(world, uri: str) -> list[dict]:
    bucket, _, name = uri[len("gs://") :].partition("/")
    text = world.gcs.bucket(bucket).blob(name).download_as_bytes().decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def names_in_manifests(world, dataflow) -> list[str]:
    return [
        line["name"] for job in load_jobs(dataflow) for line in manifest(world, job["parameters"]["input"])
    ]


# -- config --------------------------------------------------------------------------------------
def _config(trigger_extra: dict, pipeline_params: dict | None = None):
    return {
        "settings": {"project": "p", "region": "europe-west1", "ledger": {"bucket": "l"}},
        "pipelines": {
            "load": {
                "backend": "dataflow",
                "template": "gs://t/load",
                "parameters": pipeline_params or {"input": "{batch.manifest}"},
            }
        },
        "triggers": {"t": {"storage": {"bucket": "b"}, "pipeline": "load", **trigger_extra}},
    }


def test_the_config_checks_batch_limits_keys_and_window_placeholders_at_load():
    with pytest.raises(ConfigError) as bad:
        build_config(
            _config(
                {"batch": {"max_items": 0, "max_wait": "soon", "key": "{nope}", "size": 3}},
                {"input": "{batch.manifest}", "one": "{name}", "other": "{batch.nothing}"},
            )
        )
    text = str(bad.value)
    for expected in (
        "batch.max_items: must be a positive integer",
        "batch.max_wait: not a duration",
        "batch.key: unknown placeholder {nope}",
        "unknown field 'size'",
        "unknown placeholder {name}: a batched trigger launches once per window of objects",
        "unknown placeholder {batch.nothing}",
    ):
        assert expected in text
    with pytest.raises(ConfigError, match="needs at least one of max_items, max_bytes, max_wait"):
        build_config(_config({"batch": {"key": "{dirname}"}}))
    ok = build_config(_config({"batch": {"max_items": 100, "max_wait": "10m", "key": "{dirname}"}}))
    assert ok.triggers["t"].batch is not None and ok.triggers["t"].batch.max_wait_seconds == 600
    with pytest.raises(ConfigError, match=re.escape("{batch.manifest}: not available for storage triggers")):
        build_config(_config({}))


# -- joining -------------------------------------------------------------------------------------
def test_an_object_delivered_five_times_joins_its_window_once(world, dataflow, call):
    path, _ = batch_world(world, dataflow, max_items=3)
    first = drop("in/a.csv")
    for _ in range(5):
        assert call("on_object_finalized", first, path).status_code == 200
    assert load_jobs(dataflow) == []  # one object of three: the window is still open
    call("on_object_finalized", drop("in/b.csv"), path)
    for _ in range(3):
        call("on_object_finalized", drop("in/c.csv"), path)
        call("on_object_finalized", first, path)
    (job,) = load_jobs(dataflow)
    assert sorted(names_in_manifests(world, dataflow)) == ["in/a.csv", "in/b.csv", "in/c.csv"]
    assert job["parameters"]["a"] == "3"
    # a redelivery after the launch changes nothing
    call("on_object_finalized", drop("in/c.csv"), path)
    assert len(load_jobs(dataflow)) == 1


def test_concurrent_deliveries_from_many_threads_fill_windows_losing_and_doubling_nothing(world, dataflow):
    _, runtime = batch_world(world, dataflow, max_items=10)
    names = [f"in/part-{i:03d}.csv" for i in range(60)]
    deliveries = [parse_object_finalized(drop(n)) for n in names] * 2  # every object twice

    def deliver(event):
        from handlers.entry.functions import handle_object

        return handle_object(runtime, event)

    with cf.ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(deliver, deliveries))
    in_manifests = names_in_manifests(world, dataflow)
    assert len(load_jobs(dataflow)) == 6
    assert sorted(in_manifests) == names  # every object once: none lost, none doubled
    for job in load_jobs(dataflow):
        assert job["parameters"]["a"] == "10"


def test_max_bytes_closes_a_window_before_it_would_overflow(world, dataflow, call):
    path, _ = batch_world(world, dataflow, max_bytes=100)
    call("on_object_finalized", drop("in/a", size=60), path)
    call("on_object_finalized", drop("in/b", size=60), path)  # 120 > 100: a closes alone, b opens the next
    (job,) = load_jobs(dataflow)
    assert [line["name"] for line in manifest(world, job["parameters"]["input"])] == ["in/a"]
    assert job["parameters"]["b"] == "60"
    call("on_object_finalized", drop("in/c", size=40), path)  # 60 + 40 = 100: full
    assert sorted(names_in_manifests(world, dataflow)) == ["in/a", "in/b", "in/c"]


def test_max_wait_closes_a_window_through_the_sweep(world, dataflow, call):
    path, runtime = batch_world(world, dataflow, max_items=100, max_wait="1s")
    call("on_object_finalized", drop("in/only.csv"), path)
    Tracker(runtime).sweep()
    assert load_jobs(dataflow) == []  # not yet due
    time.sleep(1.2)
    report = Tracker(runtime).sweep()
    assert report.windows is not None and list(report.windows.closed.values()) == ["max_wait"]
    (job,) = load_jobs(dataflow)
    assert [line["name"] for line in manifest(world, job["parameters"]["input"])] == ["in/only.csv"]
    # the next object opens a new window
    call("on_object_finalized", drop("in/later.csv"), path)
    assert len(load_jobs(dataflow)) == 1


def test_windows_are_split_by_key(world, dataflow, call):
    path, _ = batch_world(world, dataflow, max_items=2, key="{dirname}")
    for name in ("in/x/1", "in/y/1", "in/x/2"):
        call("on_object_finalized", drop(name), path)
    (job,) = load_jobs(dataflow)
    assert job["parameters"]["source"] == "in/x"
    assert [line["name"] for line in manifest(world, job["parameters"]["input"])] == ["in/x/1", "in/x/2"]


# -- what the launch and the completion carry ------------------------------------------------------
def rest_api(config_path, monkeypatch):
    import functions_framework

    from handlers.launch.runtime import reset_default

    monkeypatch.setenv("PIPELINES_CONFIG", str(config_path))
    reset_default()
    return functions_framework.create_app("api", str(ROOT / "main.py"), "http").test_client()


def test_the_manifest_and_the_placeholders_reach_the_backend_and_the_completion_carries_the_window(
    world, dataflow, call, monkeypatch
):
    path, runtime = batch_world(world, dataflow, max_items=2)
    t1, t2 = iso(now() - dt.timedelta(seconds=10)), iso(now() - dt.timedelta(seconds=5))
    call("on_object_finalized", ev.storage_finalized(LANDING, "in/z.csv", size=5, time=t2), path)
    call("on_object_finalized", ev.storage_finalized(LANDING, "in/a.csv", size=7, time=t1), path)
    (job,) = load_jobs(dataflow)
    (launch,) = [x for x in dataflow.launches() if x["parameters"].get("input") == job["parameters"]["input"]]
    params = launch["parameters"]
    uri = params["input"]
    assert uri.startswith(f"gs://{world.ledger_bucket}/") and uri.endswith(".jsonl")
    assert params["a"] == "2" and params["b"] == "12" and params["source"] == ""
    assert params["day"] == t1[:10] and params["upstream"] == t2
    # one line per object, in event-time order
    assert manifest(world, uri) == [
        {
            "bucket": LANDING,
            "name": "in/a.csv",
            "generation": "1700000000000001",
            "size": 7,
            "event_time": t1,
        },
        {
            "bucket": LANDING,
            "name": "in/z.csv",
            "generation": "1700000000000001",
            "size": 5,
            "event_time": t2,
        },
    ]
    dataflow.advance(30)
    Tracker(runtime).sweep()
    (done,) = world.completions(expect=1)
    window = done["event"]["data"]["window"]
    assert window["id"] == params["key"] and window["count"] == 2 and window["manifest"] == uri
    assert done["event"]["data"]["event"]["kind"] == "window"
    # GET /runs/{key} carries it too, in the run record the REST API returns
    (run,) = world.runs(runtime)
    response = rest_api(path, monkeypatch).get(f"/runs/{run.run_key}")
    body = check_openapi("/runs/{runKey}", "get", response)
    assert body["run"]["event"]["window"] == window


def test_a_chain_after_a_window_reads_the_window_of_its_upstream(world, dataflow, call):
    pipelines = {
        **batch_pipelines(dataflow),
        "report": {
            **dataflow.pipeline_options("report"),
            "parameters": {"input": "{upstream.window.manifest}", "a": "{upstream.window.count}"},
        },
    }
    triggers = {
        "landing": {
            "storage": {"bucket": LANDING, "prefix": "in/"},
            "pipeline": "load",
            "batch": {"max_items": 2},
        },
        "after-load": {"completion": {"upstream": "load"}, "pipeline": "report"},
    }
    path = world.write_config(pipelines, triggers)
    runtime = world.runtime(world.config(pipelines, triggers))
    call("on_object_finalized", drop("in/1"), path)
    call("on_object_finalized", drop("in/2"), path)
    dataflow.advance(30)
    Tracker(runtime).sweep()
    (done,) = world.completions(expect=1)
    message = ev.pubsub_message(
        world.completion_topic,
        json.dumps(done["event"]).encode(),
        attributes=done["attributes"],
        message_id=done["message_id"],
    )
    assert call("on_message", message, path).status_code == 200
    (report,) = [j for j in dataflow.jobs() if j["name"].startswith("report-")]
    assert report["parameters"] == {"input": done["event"]["data"]["window"]["manifest"], "a": "2"}


def test_a_fan_in_joins_a_window_run_with_a_single_run(world, dataflow, call):
    pipelines = {
        **batch_pipelines(dataflow),
        "audit": {**dataflow.pipeline_options("audit"), "parameters": {"day": "{event_time:%Y-%m-%d}"}},
        "report": {
            **dataflow.pipeline_options("report"),
            "parameters": {
                "input": "{upstreams.load.window.manifest}",
                "a": "{upstreams.load.window.count}",
                "b": "{upstreams.audit.run_key}",
                "key": "{join_key}",
            },
        },
    }
    triggers = {
        "landing": {
            "storage": {"bucket": LANDING, "prefix": "in/"},
            "pipeline": "load",
            "batch": {"max_items": 2},
        },
        "audit-landing": {"storage": {"bucket": LANDING, "prefix": "audit/"}, "pipeline": "audit"},
        "report-when-both": {
            "completion": {"upstream": ["load", "audit"], "join_key": "{upstream.parameters.day}"},
            "pipeline": "report",
        },
    }
    path = world.write_config(pipelines, triggers)
    runtime = world.runtime(world.config(pipelines, triggers))
    for name in ("in/1", "in/2", "audit/x"):
        call("on_object_finalized", drop(name), path)
    dataflow.advance(30)
    Tracker(runtime).sweep()
    done = {c["attributes"]["pipeline"]: c for c in world.completions(expect=2)}
    for _ in range(2):  # each completion delivered twice
        for upstream in ("load", "audit"):
            c = done[upstream]
            message = ev.pubsub_message(
                world.completion_topic,
                json.dumps(c["event"]).encode(),
                attributes=c["attributes"],
                message_id=c["message_id"],
            )
            assert call("on_message", message, path).status_code == 200
    (report,) = [j for j in dataflow.jobs() if j["name"].startswith("report-")]
    window = done["load"]["event"]["data"]["window"]
    assert report["parameters"] == {
        "input": window["manifest"],
        "a": "2",
        "b": done["audit"]["attributes"]["run_key"],
        "key": done["audit"]["event"]["data"]["parameters"]["day"],
    }


def test_explain_shows_which_window_an_object_would_join(world, dataflow, call):
    path, runtime = batch_world(world, dataflow, max_items=3)
    event = parse_object_finalized(drop("in/q.csv"))
    (decision,) = plan_object(runtime.config, event).acting
    assert decision.window is not None
    before = Windows(runtime).whereabouts(decision.window)
    assert before.state is None and not before.joined  # no window yet: it would open the first
    call("on_object_finalized", drop("in/q.csv"), path)
    after = Windows(runtime).whereabouts(decision.window)
    assert after.window == before.window and after.joined and after.count == 1 and after.state == "OPEN"
    other = parse_object_finalized(drop("in/r.csv"))
    (d2,) = plan_object(runtime.config, other).acting
    assert d2.window is not None
    assert Windows(runtime).whereabouts(d2.window).window == before.window  # it would join the same one


def test_a_runtime_built_afresh_after_each_delivery_sees_the_same_windows(world, dataflow):
    """Several instances: each delivery through its own runtime (own HTTP session, own caches)."""
    _, runtime = batch_world(world, dataflow, max_items=4)
    from handlers.entry.functions import handle_object

    for i in range(8):
        fresh = make_runtime(runtime.config)
        handle_object(fresh, parse_object_finalized(drop(f"in/{i}")))
    assert len(load_jobs(dataflow)) == 2
    assert sorted(names_in_manifests(world, dataflow)) == [f"in/{i}" for i in range(8)]


def test_the_explain_command_names_the_window_an_object_would_join(world, dataflow, call, capsys):
    from handlers.entry import cli

    path, _ = batch_world(world, dataflow, max_items=3, max_wait="10m", key="{dirname}")
    call("on_object_finalized", drop("in/day1/a.csv"), path)
    argv = ["explain", "--config", str(path), "--bucket", LANDING, "--name", "in/day1/b.csv"]
    capsys.readouterr()  # the delivery's log lines
    assert cli.main([*argv, "--json"]) == 0
    (trigger,) = [t for t in json.loads(capsys.readouterr().out)["triggers"] if t["matched"]]
    window = trigger["window"]
    assert trigger["action"] == "join" and window["key"] == "in/day1"
    assert window["state"] == "OPEN" and window["count"] == 1 and not window["joined"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"{window['window']}: would join it (1 objects" in text
    assert "max_items 3, max_wait 10m" in text
    # without the ledger: the key and limits only
    assert cli.main([*argv, "--json", "--no-ledger"]) == 0
    (trigger,) = [t for t in json.loads(capsys.readouterr().out)["triggers"] if t["matched"]]
    assert trigger["window"] == {"key": "in/day1", "limits": window["limits"]}
