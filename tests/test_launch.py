"""Specification: storage and Pub/Sub events launch Dataflow templates exactly once.

Everything here runs on real local services: fake-gcs-server holds the run ledger, Google's Pub/Sub
emulator carries messages, the project's Dataflow emulator receives the launches, and the functions
run inside functions-framework (in-process test client or a real gunicorn server). Assertions are on
what reached the Dataflow emulator and the ledger.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
from pathlib import Path

import pytest
import requests
from cloudevents.conversion import to_binary

from handlers.backends.contract import RunState
from handlers.core.times import iso, now
from handlers.launch.ledger import Run
from handlers.route.identity import RunKey
from local.services import (
    GCS_NOTIFICATION_TOPIC,
    LOCAL_PROJECT,
    FunctionServer,
    delete_subscription,
    ensure_bucket,
    ensure_push_subscription,
)
from tests.support import events as ev
from tests.support.world import wait_until

ROOT = Path(__file__).resolve().parents[1]
JOB_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$")


def wordcount_setup(
    world, dataflow, *, bucket: str = "landing", flex: bool = False, params: dict | None = None, **trigger
):
    name = "wordcount"
    opts = dataflow.pipeline_options(name)
    if flex:
        from local.kits.dataflow import DataflowHarness

        flex_h = DataflowHarness(dataflow.emulator, flex=True)
        opts = flex_h.pipeline_options(name)
    pipeline = {
        **opts,
        "parameters": params
        or {"inputFile": "gs://{bucket}/{name}", "output": "gs://out/{stem}/{event_time:%Y%m%d}/"},
    }
    return world.write_config(
        {name: pipeline}, {"landing": {"storage": {"bucket": bucket, **trigger}, "pipeline": name}}
    )


# --------------------------------------------------------------------------------------------
# The happy paths
# --------------------------------------------------------------------------------------------
def test_finalize_event_launches_the_classic_template_with_parameters_from_the_event(world, dataflow, call):
    # GIVEN a storage trigger on bucket "landing" for *.txt under incoming/
    config = wordcount_setup(world, dataflow, glob="incoming/**/*.txt")
    # WHEN an object is finalized there
    event = ev.storage_finalized("landing", "incoming/2026/sales.txt", generation=42)
    day = event["time"][:10].replace("-", "")
    response = call("on_object_finalized", event, config)
    # THEN the function acknowledges and exactly one classic launch reached Dataflow
    assert response.status_code == 200, response.data
    (launch,) = dataflow.launches()
    assert launch["status"] == 200
    assert launch["parameters"] == {
        "inputFile": "gs://landing/incoming/2026/sales.txt",
        "output": f"gs://out/sales/{day}/",
    }
    body = launch["body"]
    assert JOB_NAME_RE.match(body["jobName"]) and body["jobName"].startswith("wordcount-")
    labels = body["environment"]["additionalUserLabels"]
    assert labels["pipeline"] == "wordcount" and labels["pipeline-trigger"] == "landing"
    assert body["environment"]["tempLocation"] == "gs://temp/tmp"
    # AND the ledger records the run with its job
    (run,) = world.runs(
        world.runtime(world.config({"wordcount": {**dataflow.pipeline_options("wordcount")}}, {}))
    )
    assert run.state == RunState.PENDING and run.job["id"] == dataflow.jobs()[0]["id"]
    assert run.event["name"] == "incoming/2026/sales.txt" and run.event["generation"] == "42"


def test_finalize_event_launches_a_flex_template(world, dataflow, call):
    config = wordcount_setup(world, dataflow, flex=True)
    response = call("on_object_finalized", ev.storage_finalized("landing", "a.txt"), config)
    assert response.status_code == 200
    requests_seen = [
        r
        for r in requests.get(f"{dataflow.url}/_emulator/requests").json()["requests"]
        if r["path"].endswith("flexTemplates:launch")
    ]
    (launch,) = requests_seen
    lp = launch["body"]["launchParameter"]
    assert lp["containerSpecGcsPath"] == "gs://templates/dataflow-flex/wordcount"
    assert lp["parameters"]["inputFile"] == "gs://landing/a.txt"
    assert launch["status"] == 200 and len(dataflow.jobs()) == 1


def test_an_object_that_matches_no_trigger_launches_nothing(world, dataflow, call):
    config = wordcount_setup(world, dataflow, glob="incoming/*.csv")
    response = call("on_object_finalized", ev.storage_finalized("landing", "incoming/readme.md"), config)
    assert response.status_code == 200 and dataflow.launches() == []


def test_one_event_matching_two_triggers_launches_each_pipeline_once(world, dataflow, call):
    a, b = dataflow.pipeline_options("alpha"), dataflow.pipeline_options("beta")
    config = world.write_config(
        {"alpha": {**a, "parameters": {"input": "{name}"}}, "beta": {**b, "parameters": {"input": "{name}"}}},
        {
            "to-alpha": {"storage": {"bucket": "landing"}, "pipeline": "alpha"},
            "to-beta": {"storage": {"bucket": "landing", "suffix": ".txt"}, "pipeline": "beta"},
        },
    )
    event = ev.storage_finalized("landing", "x.txt")
    for _ in range(3):
        assert call("on_object_finalized", event, config).status_code == 200
    names = sorted(j["name"] for j in dataflow.jobs())
    assert len(names) == 2 and names[0].startswith("alpha-") and names[1].startswith("beta-")


def test_pubsub_message_with_conditions_and_dedupe_field_launches_once_per_order(world, dataflow, call):
    opts = dataflow.pipeline_options("orders")
    config = world.write_config(
        {
            "orders": {
                **opts,
                "parameters": {
                    "orderId": "{data.order.id}",
                    "region": "{attributes.region|eu}",
                    "day": "{event_time:%Y-%m-%d}",
                },
            }
        },
        {
            "new-orders": {
                "pubsub": {
                    "topic": "orders",
                    "attributes": {"kind": "order"},
                    "data": {"order.total": {"regex": "^[0-9.]+$"}},
                    "dedupe_by": "data.order.id",
                },
                "pipeline": "orders",
            }
        },
    )
    payload = {"order": {"id": "O-1", "total": 12.5}}
    # two different messages carrying the same order id, and one that fails the attribute condition
    first = ev.pubsub_message("orders", payload, attributes={"kind": "order"})
    call("on_message", first, config)
    call(
        "on_message",
        ev.pubsub_message("orders", payload, attributes={"kind": "order", "region": "us"}),
        config,
    )
    call(
        "on_message",
        ev.pubsub_message("orders", {"order": {"id": "O-2", "total": 1}}, attributes={"kind": "refund"}),
        config,
    )
    (launch,) = dataflow.launches()
    assert launch["parameters"] == {"orderId": "O-1", "region": "eu", "day": first["time"][:10]}


# --------------------------------------------------------------------------------------------
# Exactly once under at-least-once delivery
# --------------------------------------------------------------------------------------------
def _function_server(target: str, config: Path, tmp_path: Path) -> FunctionServer:
    import os

    env = {
        k: os.environ[k]
        for k in (
            "STORAGE_EMULATOR_HOST",
            "PUBSUB_EMULATOR_HOST",
            "DATAFLOW_API_ENDPOINT",
            "PIPELINES_ANONYMOUS_AUTH",
            "GOOGLE_CLOUD_PROJECT",
        )
    }
    env["PIPELINES_CONFIG"] = str(config)
    return FunctionServer(ROOT, target, env=env, log_dir=tmp_path)


def test_the_same_event_delivered_20_times_concurrently_starts_one_job(world, dataflow, tmp_path):
    config = wordcount_setup(world, dataflow)
    event = ev.storage_finalized("landing", "incoming/big file.txt", generation=7)
    headers, body = to_binary(event)
    with _function_server("on_object_finalized", config, tmp_path).start() as server:
        with cf.ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(
                pool.map(
                    lambda _: requests.post(server.url, headers=headers, data=body, timeout=60), range(20)
                )
            )
        log = server.log_text()
    codes = sorted(a.status_code for a in answers)
    # THEN exactly one job exists; every delivery either launched, saw a duplicate, or asked for a retry
    assert len(dataflow.jobs()) == 1, log
    assert set(codes) <= {200, 500} and codes.count(200) >= 1
    launches_ok = [launch for launch in dataflow.launches() if launch["status"] == 200]
    assert len(launches_ok) == 1


def test_two_503s_then_success_gives_one_job(world, dataflow, call):
    config = wordcount_setup(world, dataflow)
    dataflow.inject("launch", 503, times=2)
    response = call("on_object_finalized", ev.storage_finalized("landing", "a.txt"), config)
    assert response.status_code == 200
    assert [launch["status"] for launch in dataflow.launches()] == [503, 503, 200]
    assert len(dataflow.jobs()) == 1


def test_a_lost_response_after_the_job_was_created_still_gives_one_job(world, dataflow, call):
    config = wordcount_setup(world, dataflow)
    # the emulator creates the job, then answers 503 as if the response was lost
    dataflow.inject("launch", 503, after_effect=True)
    response = call("on_object_finalized", ev.storage_finalized("landing", "lost.txt"), config)
    assert response.status_code == 200
    (job,) = dataflow.jobs()
    runtime = world.runtime(world.config({"wordcount": dataflow.pipeline_options("wordcount")}, {}))
    (run,) = world.runs(runtime)
    assert run.job["id"] == job["id"]
    # and the second attempt looked the job up instead of blindly relaunching
    assert len(dataflow.launches()) == 1


def test_redelivery_after_a_transient_failure_that_exhausted_the_budget_launches_once(world, dataflow, call):
    config = wordcount_setup(world, dataflow)
    dataflow.inject("launch", 503, times=-1)
    event = ev.storage_finalized("landing", "flaky.txt")
    # the short budget makes the invocation give up and ask for a redelivery (HTTP 500)
    cfg_path = world.write_config(
        {
            "wordcount": {
                **dataflow.pipeline_options("wordcount"),
                "parameters": {"inputFile": "gs://{bucket}/{name}"},
            }
        },
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wordcount"}},
        launch_budget="1s",
    )
    assert call("on_object_finalized", event, cfg_path).status_code == 500
    requests.delete(f"{dataflow.url}/_emulator/faults", timeout=5)
    # WHEN the platform redelivers, the released claim is taken over and the job launched once
    assert call("on_object_finalized", event, cfg_path).status_code == 200
    assert call("on_object_finalized", event, config).status_code == 200
    assert len(dataflow.jobs()) == 1


def test_a_permanent_400_is_recorded_with_its_reason_and_never_retried(world, dataflow, call):
    # GIVEN a template that declares a required parameter the config does not set
    dataflow.register(
        "strict",
        params=[
            {"name": "inputFile", "label": "in", "helpText": "in"},
            {"name": "mandatory", "label": "m", "helpText": "m"},
        ],
    )
    config = world.write_config(
        {
            "strict": {
                "backend": "dataflow",
                "template": dataflow.template_path("strict"),
                "parameters": {"inputFile": "gs://{bucket}/{name}"},
            }
        },
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "strict"}},
    )
    event = ev.storage_finalized("landing", "x.txt")
    # WHEN the event is delivered (and redelivered)
    assert call("on_object_finalized", event, config).status_code == 200
    assert call("on_object_finalized", event, config).status_code == 200
    # THEN Dataflow saw one launch, answered 400, and the ledger shows the failure and why
    assert [launch["status"] for launch in dataflow.launches()] == [400]
    runtime = world.runtime(world.config({"strict": {"backend": "dataflow", "template": "gs://x/y"}}, {}))
    (run,) = world.runs(runtime)
    assert run.state == RunState.LAUNCH_FAILED
    assert run.error["status"] == 400 and "mandatory" in run.error["message"]
    assert dataflow.jobs() == []


def test_validate_parameters_catches_a_missing_parameter_before_launching(world, dataflow, call):
    dataflow.register(
        "checked",
        params=[
            {"name": "inputFile", "label": "in", "helpText": "in"},
            {"name": "day", "label": "d", "helpText": "d", "regexes": ["^[0-9-]+$"]},
        ],
    )
    config = world.write_config(
        {
            "checked": {
                "backend": "dataflow",
                "template": dataflow.template_path("checked"),
                "validate_parameters": True,
                "parameters": {"inputFile": "gs://{bucket}/{name}", "day": "{metadata.day|not-a-day}"},
            }
        },
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "checked"}},
    )
    assert call("on_object_finalized", ev.storage_finalized("landing", "x.txt"), config).status_code == 200
    assert dataflow.launches() == []  # refused before any launch
    runtime = world.runtime(world.config({"checked": {"backend": "dataflow", "template": "gs://x/y"}}, {}))
    (run,) = world.runs(runtime)
    assert run.state == RunState.LAUNCH_FAILED and run.error["field"] == "day"


def test_a_missing_event_value_is_recorded_as_launch_failed_naming_the_parameter(world, dataflow, call):
    config = world.write_config(
        {"wc": {**dataflow.pipeline_options("wc"), "parameters": {"owner": "{metadata.owner}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    assert call("on_object_finalized", ev.storage_finalized("landing", "x.txt"), config).status_code == 200
    runtime = world.runtime(world.config({"wc": {"backend": "dataflow", "template": "gs://x/y"}}, {}))
    (run,) = world.runs(runtime)
    assert run.state == RunState.LAUNCH_FAILED and run.error["field"] == "owner"
    assert "{metadata.owner}" in run.error["message"]
    assert dataflow.launches() == []


@pytest.mark.parametrize(
    "name",
    [
        "with spaces/and more spaces.txt",
        "ünïcødé/数据/файл.txt",
        "hash#and?query%20encoded%.txt",
        "new\nline\r\nname.txt",
        "../../etc/passwd",
        "x" * 1020 + ".txt",
        "é" * 510 + ".t",  # 1022 bytes of UTF-8
    ],
)
def test_hostile_object_names_give_valid_job_names_and_exact_parameters(world, dataflow, call, name):
    config = world.write_config(
        {
            "wc": {
                **dataflow.pipeline_options("wc"),
                "parameters": {"inputFile": "gs://{bucket}/{name}", "stem": "{stem}"},
            }
        },
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wc"}},
    )
    response = call("on_object_finalized", ev.storage_finalized("landing", name), config)
    assert response.status_code == 200, response.data
    (launch,) = dataflow.launches()
    assert launch["status"] == 200
    assert JOB_NAME_RE.match(launch["body"]["jobName"])
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert launch["parameters"] == {"inputFile": f"gs://landing/{name}", "stem": stem}


# --------------------------------------------------------------------------------------------
# Crashed invocations, stale and malformed events
# --------------------------------------------------------------------------------------------
def _stale_claim(runtime, trigger: str, pipeline: str, identity: str) -> Run:
    key = str(RunKey.of(trigger, identity))
    run = Run(
        run_key=key,
        trigger=trigger,
        pipeline=pipeline,
        backend="dataflow",
        state=RunState.CLAIMED,
        job_name=f"{pipeline}-{key.rsplit('-', 1)[1]}",
        owner="crashed-invocation",
        lease_until=iso(now()),
        attempts=1,
    )
    return runtime.ledger.create(run)


def test_a_claim_left_by_a_crashed_invocation_is_taken_over_without_a_second_job(world, dataflow, call):
    config_path = wordcount_setup(world, dataflow)
    runtime = world.runtime(
        world.config(
            {"wordcount": dataflow.pipeline_options("wordcount")},
            {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wordcount"}},
        )
    )
    event = ev.storage_finalized("landing", "crash.txt", generation=5)
    # GIVEN the crashed invocation had launched the job (it finished quickly) but recorded nothing
    stale = _stale_claim(runtime, "landing", "wordcount", "landing/crash.txt#5")
    backend = dataflow.backend()
    from handlers.backends.contract import LaunchRequest

    pipeline = runtime.config.pipelines["wordcount"]
    backend.launch(
        LaunchRequest(stale.run_key, stale.job_name, pipeline, {"inputFile": "gs://landing/crash.txt"})
    )
    dataflow.advance(600)  # the job is DONE: a name lookup must search every state
    # WHEN the event is redelivered
    assert call("on_object_finalized", event, config_path).status_code == 200
    # THEN no second job started and the run records the existing one
    (job,) = dataflow.jobs()
    run = runtime.ledger.get(stale.run_key)
    assert run.job["id"] == job["id"] and run.attempts == 2
    assert len(dataflow.launches()) == 1


def test_a_claim_left_by_a_crashed_invocation_before_launching_is_launched_by_the_next_delivery(
    world, dataflow, call
):
    config_path = wordcount_setup(world, dataflow)
    runtime = world.runtime(
        world.config(
            {"wordcount": dataflow.pipeline_options("wordcount")},
            {"landing": {"storage": {"bucket": "landing"}, "pipeline": "wordcount"}},
        )
    )
    stale = _stale_claim(runtime, "landing", "wordcount", "landing/crash2.txt#9")
    assert (
        call(
            "on_object_finalized", ev.storage_finalized("landing", "crash2.txt", generation=9), config_path
        ).status_code
        == 200
    )
    (job,) = dataflow.jobs()
    assert runtime.ledger.get(stale.run_key).job["id"] == job["id"]


def test_events_older_than_the_maximum_age_are_dropped(world, dataflow, call):
    config = wordcount_setup(world, dataflow)
    old = ev.storage_finalized("landing", "old.txt", time=ev.now_iso(-2 * 3600))
    assert call("on_object_finalized", old, config).status_code == 200
    assert dataflow.launches() == []


@pytest.mark.parametrize(
    "target,event",
    [
        ("on_object_finalized", ev.storage_finalized("landing", "x.txt", generation="not-a-number")),
        ("on_message", ev.pubsub_message("orders", b"\x00\xff binary")),
    ],
)
def test_malformed_or_unroutable_events_are_acknowledged_without_launching(
    world, dataflow, call, target, event
):
    config = wordcount_setup(world, dataflow)
    assert call(target, event, config).status_code == 200
    assert dataflow.launches() == []


# --------------------------------------------------------------------------------------------
# The real notification path: upload -> fake-gcs-server -> Pub/Sub emulator -> push -> on_message
# --------------------------------------------------------------------------------------------
def test_an_uploaded_object_reaches_on_message_through_its_notification_and_launches_once(
    world, dataflow, gcs, tmp_path, unique_name
):
    bucket = f"{unique_name}-landing"
    ensure_bucket(gcs, bucket)
    config = wordcount_setup(world, dataflow, bucket=bucket, glob="drop/*.txt")
    subscription = f"{unique_name}-notify-push"
    with _function_server("on_message", config, tmp_path).start() as server:
        push_url = f"{server.url}/projects/{LOCAL_PROJECT}/topics/{GCS_NOTIFICATION_TOPIC}"
        ensure_push_subscription(LOCAL_PROJECT, GCS_NOTIFICATION_TOPIC, subscription, push_url)
        try:
            gcs.bucket(bucket).blob("drop/hello world.txt").upload_from_string(b"hello hello world")
            wait_until(lambda: dataflow.jobs(), timeout=20, what="a job launched from the notification")
        finally:
            delete_subscription(LOCAL_PROJECT, subscription)
        log = server.log_text()
    (launch,) = [launch for launch in dataflow.launches() if launch["status"] == 200]
    assert launch["parameters"]["inputFile"] == f"gs://{bucket}/drop/hello world.txt", log
    assert len(dataflow.jobs()) == 1


def test_a_message_without_its_dedupe_field_is_acknowledged_without_a_run(world, dataflow, call):
    opts = dataflow.pipeline_options("orders")
    config = world.write_config(
        {"orders": {**opts, "parameters": {"orderId": "{data.order.id}"}}},
        {"new-orders": {"pubsub": {"topic": "orders", "dedupe_by": "data.order.id"}, "pipeline": "orders"}},
    )
    response = call("on_message", ev.pubsub_message("orders", {"no_order": True}), config)
    assert response.status_code == 200  # acknowledged: a redelivery could not cure it
    assert dataflow.launches() == []
