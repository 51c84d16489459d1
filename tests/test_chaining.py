"""Specification: completion events launch the next pipelines, exactly once, including fan-ins.

The completion messages are the real ones: pulled from the completion topic on the Pub/Sub
emulator, then delivered (several times) to ``on_message`` through functions-framework.
"""

from __future__ import annotations

import json

from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchService
from tests.support import events as ev


def _object_event(name: str, generation: int = 1):
    from handlers.model.events import parse_object_finalized

    return parse_object_finalized(ev.storage_finalized("landing", name, generation=generation))


def as_delivery(world, completion: dict):
    """The completion message as on_message receives it from an Eventarc Pub/Sub trigger."""
    return ev.pubsub_message(
        world.completion_topic,
        json.dumps(completion["event"]).encode(),
        attributes=completion["attributes"],
        message_id=completion["message_id"],
    )


def chain_config(world, dataflow, *, fan_in: bool = False):
    pipelines = {
        "ingest": {
            **dataflow.pipeline_options("ingest"),
            "parameters": {"input": "gs://{bucket}/{name}", "day": "{event_time:%Y-%m-%d}"},
            "outputs": {"table": "raw.{stem}"},
        },
        "enrich": {
            **dataflow.pipeline_options("enrich"),
            "parameters": {
                "source": "{upstream.outputs.table}",
                "day": "{upstream.parameters.day}",
                "upstream": "{upstream.run_key}",
            },
        },
    }
    triggers = {
        "landing": {"storage": {"bucket": "landing", "prefix": "in/"}, "pipeline": "ingest"},
        "after-ingest": {"completion": {"upstream": "ingest"}, "pipeline": "enrich"},
    }
    if fan_in:
        pipelines["audit"] = {
            **dataflow.pipeline_options("audit"),
            "parameters": {"day": "{event_time:%Y-%m-%d}"},
        }
        pipelines["report"] = {
            **dataflow.pipeline_options("report"),
            "parameters": {
                "key": "{join_key}",
                "a": "{upstreams.enrich.parameters.source}",
                "b": "{upstreams.audit.run_key}",
            },
        }
        triggers["audit-landing"] = {
            "storage": {"bucket": "landing", "prefix": "audit/"},
            "pipeline": "audit",
        }
        triggers["report-when-both"] = {
            "completion": {"upstream": ["enrich", "audit"], "join_key": "{upstream.parameters.day}"},
            "pipeline": "report",
        }
    path = world.write_config(pipelines, triggers)
    runtime = world.runtime(world.config(pipelines, triggers))
    return path, runtime


def finish_all(world, dataflow, runtime, expect: int):
    dataflow.advance(30)
    Tracker(runtime).sweep()
    return world.completions(expect=expect)


def jobs_of(dataflow, pipeline: str):
    return [j for j in dataflow.jobs() if j["name"].startswith(pipeline + "-")]


def test_a_completion_delivered_five_times_launches_the_next_pipeline_once(world, dataflow, call):
    path, runtime = chain_config(world, dataflow)
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/orders.csv"))
    (done,) = finish_all(world, dataflow, runtime, expect=1)
    assert done["attributes"]["pipeline"] == "ingest" and done["attributes"]["state"] == "SUCCEEDED"
    for _ in range(5):
        assert call("on_message", as_delivery(world, done), path).status_code == 200
    (job,) = jobs_of(dataflow, "enrich")
    day = done["event"]["data"]["parameters"]["day"]
    assert job["parameters"] == {
        "source": "raw.orders",
        "day": day,
        "upstream": done["attributes"]["run_key"],
    }
    # and the chained run's own completion names its trigger
    completions = finish_all(world, dataflow, runtime, expect=2)
    assert [c["attributes"]["pipeline"] for c in completions] == ["ingest", "enrich"]
    assert completions[1]["event"]["data"]["event"]["kind"] == "completion"


def test_a_failed_upstream_does_not_launch_a_success_only_chain(world, dataflow, call):
    path, runtime = chain_config(world, dataflow)
    dataflow.set_outcome("ingest", succeed=False, reason="bad input")
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/x.csv"))
    (failed,) = finish_all(world, dataflow, runtime, expect=1)
    assert failed["attributes"]["state"] == "FAILED"
    assert call("on_message", as_delivery(world, failed), path).status_code == 200
    assert jobs_of(dataflow, "enrich") == []


def test_fan_in_launches_once_when_all_upstreams_succeeded_despite_duplicates(world, dataflow, call):
    path, runtime = chain_config(world, dataflow, fan_in=True)
    service = LaunchService(runtime)
    service.start(runtime.config.triggers["landing"], _object_event("in/day.csv"))
    service.start(runtime.config.triggers["audit-landing"], _object_event("audit/day.csv"))
    first = finish_all(world, dataflow, runtime, expect=2)  # ingest + audit
    by = {c["attributes"]["pipeline"]: c for c in first}
    # ingest's completion launches enrich; audit's arrives at the fan-in (twice: duplicates)
    for _ in range(2):
        call("on_message", as_delivery(world, by["ingest"]), path)
        call("on_message", as_delivery(world, by["audit"]), path)
    assert jobs_of(dataflow, "report") == []  # enrich has not completed yet
    second = finish_all(world, dataflow, runtime, expect=3)
    enrich = next(c for c in second if c["attributes"]["pipeline"] == "enrich")
    for _ in range(3):
        assert call("on_message", as_delivery(world, enrich), path).status_code == 200
        assert call("on_message", as_delivery(world, by["audit"]), path).status_code == 200
    (report,) = jobs_of(dataflow, "report")
    day = by["ingest"]["event"]["data"]["parameters"]["day"]
    assert report["parameters"] == {"key": day, "a": "raw.day", "b": by["audit"]["attributes"]["run_key"]}


def test_fan_in_never_launches_for_a_key_where_an_upstream_failed_and_says_so(world, dataflow, call):
    path, runtime = chain_config(world, dataflow, fan_in=True)
    dataflow.set_outcome("audit", succeed=False, reason="audit broke")
    service = LaunchService(runtime)
    service.start(runtime.config.triggers["landing"], _object_event("in/d.csv"))
    service.start(runtime.config.triggers["audit-landing"], _object_event("audit/d.csv"))
    first = {c["attributes"]["pipeline"]: c for c in finish_all(world, dataflow, runtime, expect=2)}
    assert first["audit"]["attributes"]["state"] == "FAILED"
    call("on_message", as_delivery(world, first["audit"]), path)
    call("on_message", as_delivery(world, first["ingest"]), path)
    enrich = next(
        c
        for c in finish_all(world, dataflow, runtime, expect=4)
        if c["attributes"].get("pipeline") == "enrich"
    )
    for _ in range(2):
        call("on_message", as_delivery(world, enrich), path)
        call("on_message", as_delivery(world, first["audit"]), path)
    assert jobs_of(dataflow, "report") == []
    abandoned = [c for c in world.completions() if c["attributes"].get("event_type") == "join.abandoned"]
    assert len(abandoned) == 1
    data = abandoned[0]["event"]["data"]
    assert data["trigger"] == "report-when-both" and data["abandoned_by"]["pipeline"] == "audit"


# ---------------------------------------------------------------------------------------------
# Forged and stray completions: chaining trusts the ledger, not the message
# ---------------------------------------------------------------------------------------------
def forged(world, real: dict, topic: str | None = None, **data_changes):
    """A copy of a real completion message with its event data changed, as anyone allowed to publish
    to a topic the functions listen on could send it."""
    event = json.loads(json.dumps(real["event"]))
    event["data"].update(data_changes)
    return ev.pubsub_message(
        topic or world.completion_topic,
        json.dumps(event).encode(),
        attributes=real["attributes"],
        message_id="forged-" + real["message_id"],
    )


def warnings_in(out: str) -> list[str]:
    return [
        json.loads(line)["message"]
        for line in out.splitlines()
        if line.startswith("{") and json.loads(line).get("severity") == "WARNING"
    ]


def test_a_forged_completion_for_an_unknown_run_launches_nothing_and_says_why(world, dataflow, call, capsys):
    path, runtime = chain_config(world, dataflow)
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/real.csv"))
    (real,) = finish_all(world, dataflow, runtime, expect=1)
    other_key = real["attributes"]["run_key"].rsplit("-", 1)[0] + "-" + "0" * 20
    capsys.readouterr()
    assert call("on_message", forged(world, real, run_key=other_key), path).status_code == 200
    assert jobs_of(dataflow, "enrich") == []
    assert any("the ledger has no such run" in w for w in warnings_in(capsys.readouterr().out))


def test_forged_parameters_never_reach_the_chained_launch_the_ledger_s_do(world, dataflow, call, capsys):
    path, runtime = chain_config(world, dataflow)
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/orders.csv"))
    (real,) = finish_all(world, dataflow, runtime, expect=1)
    hostile = forged(
        world,
        real,
        outputs={"table": "attacker.exfil"},
        parameters={"day": "1999-01-01", "input": "gs://elsewhere/x"},
    )
    # sent first, it launches with the ledger's facts (and the real completion is then a duplicate)
    assert call("on_message", hostile, path).status_code == 200
    assert call("on_message", as_delivery(world, real), path).status_code == 200
    (job,) = jobs_of(dataflow, "enrich")
    assert job["parameters"]["source"] == "raw.orders"
    assert job["parameters"]["day"] == real["event"]["data"]["parameters"]["day"] != "1999-01-01"


def test_a_completion_sent_before_its_run_ended_is_refused(world, dataflow, call, capsys):
    from handlers.model.completions import RUN_COMPLETED, completion_id

    path, runtime = chain_config(world, dataflow)
    outcome = LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/early.csv"))
    key = outcome.run_key  # launched, still running
    early = {
        "specversion": "1.0",
        "type": RUN_COMPLETED,
        "id": completion_id(key, "SUCCEEDED"),
        "source": "//eventpipelines/projects/local-project/pipelines/ingest",
        "time": "2026-01-01T00:00:00Z",
        "data": {"run_key": key, "pipeline": "ingest", "state": "SUCCEEDED", "outputs": {"table": "x.y"}},
    }
    capsys.readouterr()
    call("on_message", ev.pubsub_message(world.completion_topic, json.dumps(early).encode()), path)
    assert jobs_of(dataflow, "enrich") == []
    assert any("disagrees with the run's ledger record" in w for w in warnings_in(capsys.readouterr().out))


def test_a_completion_whose_state_disagrees_with_the_ledger_is_refused(world, dataflow, call, capsys):
    path, runtime = chain_config(world, dataflow)
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/late.csv"))
    (real,) = finish_all(world, dataflow, runtime, expect=1)
    # the same run, announced FAILED while the ledger says SUCCEEDED (and the id is a SUCCEEDED one)
    capsys.readouterr()
    lie = forged(world, real, state="FAILED")
    assert call("on_message", lie, path).status_code == 200
    assert jobs_of(dataflow, "enrich") == []
    assert any("disagrees with the run's ledger record" in w for w in warnings_in(capsys.readouterr().out))


def test_a_forged_failed_completion_cannot_abandon_a_fan_in(world, dataflow, call):
    path, runtime = chain_config(world, dataflow, fan_in=True)
    service = LaunchService(runtime)
    service.start(runtime.config.triggers["landing"], _object_event("in/f.csv"))
    service.start(runtime.config.triggers["audit-landing"], _object_event("audit/f.csv"))
    by = {c["attributes"]["pipeline"]: c for c in finish_all(world, dataflow, runtime, expect=2)}
    # an attacker announces the audit run FAILED (with the id a FAILED completion would carry)
    from handlers.model.completions import completion_id

    lie = json.loads(json.dumps(by["audit"]["event"]))
    lie["data"]["state"] = "FAILED"
    lie["id"] = completion_id(lie["data"]["run_key"], "FAILED")
    call("on_message", ev.pubsub_message(world.completion_topic, json.dumps(lie).encode()), path)
    call("on_message", as_delivery(world, by["ingest"]), path)
    call("on_message", as_delivery(world, by["audit"]), path)
    enrich = next(
        c
        for c in finish_all(world, dataflow, runtime, expect=3)
        if c["attributes"].get("pipeline") == "enrich"
    )
    call("on_message", as_delivery(world, enrich), path)
    assert len(jobs_of(dataflow, "report")) == 1
    assert not [c for c in world.completions() if c["attributes"].get("event_type") == "join.abandoned"]


def test_a_real_completion_on_another_topic_is_refused(world, dataflow, call, capsys):
    path, runtime = chain_config(world, dataflow)
    LaunchService(runtime).start(runtime.config.triggers["landing"], _object_event("in/side.csv"))
    (real,) = finish_all(world, dataflow, runtime, expect=1)
    capsys.readouterr()
    assert call("on_message", forged(world, real, topic="some-open-topic"), path).status_code == 200
    assert jobs_of(dataflow, "enrich") == []
    assert any("refused" in w for w in warnings_in(capsys.readouterr().out))
    # and from the completion topic the same completion launches
    assert call("on_message", as_delivery(world, real), path).status_code == 200
    assert len(jobs_of(dataflow, "enrich")) == 1
