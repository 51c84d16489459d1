"""Specification: bounded work per event. What one event renders is capped, and a completion event
always fits what Eventarc delivers, so an oversized input fails once with a reason instead of
failing every publish forever."""

from __future__ import annotations

import json

import jsonschema

from handlers.follow import completion
from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchResult, LaunchService
from handlers.model.events import parse_message
from tests.support import events as ev
from tests.support.world import SCHEMA


def _completion_event(**data_changes):
    data = {
        "schema_version": 1,
        "run_key": "landing-" + "0" * 20,
        "pipeline": "wordcount",
        "trigger": "landing",
        "backend": "dataflow",
        "state": "FAILED",
        "backend_state": "JOB_STATE_FAILED",
        "job": None,
        "parameters": {"small": "s"},
        "outputs": {},
        "event": {"kind": "storage", "bucket": "b", "name": "n"},
        "started_at": "2026-12-06T10:00:00.000Z",
        "ended_at": "2026-12-06T10:01:00.000Z",
        "duration_seconds": 60.0,
        "reason": "short",
        "attempts": 1,
        **data_changes,
    }
    return {
        "specversion": "1.0",
        "type": "io.eventpipelines.run.completed.v1",
        "source": "//eventpipelines/projects/p/pipelines/wordcount",
        "subject": f"runs/{data['run_key']}",
        "id": "0" * 32,
        "time": data["ended_at"],
        "datacontenttype": "application/json",
        "dataschema": "urn:eventpipelines:schema:run-completed:1",
        "data": data,
    }


def test_an_event_within_the_limit_is_left_as_it_is():
    event = _completion_event()
    assert completion.fit(json.loads(json.dumps(event))) == event


def test_an_oversized_completion_is_cut_to_fit_and_says_what_was_cut():
    # GIVEN a failure text of 1 MB and a 300 KB parameter
    event = _completion_event(reason="x" * 1_000_000, parameters={"small": "s", "big": "y" * 300_000})
    # WHEN it is fitted
    fitted = completion.fit(event)
    # THEN it is under the limit, still valid, and names the fields it cut
    size = len(json.dumps(fitted, sort_keys=True, ensure_ascii=False).encode())
    assert size <= completion.MAX_EVENT_BYTES
    jsonschema.validate(fitted, SCHEMA)
    assert fitted["data"]["trimmed"] == ["parameters.big", "reason"]
    assert fitted["data"]["reason"].endswith("more characters trimmed]")
    assert fitted["data"]["parameters"]["small"] == "s"


def test_a_message_too_big_to_render_fails_once_with_the_reason_and_is_announced(world, dataflow):
    # GIVEN a trigger that renders the whole message payload into a parameter
    dataflow.register("wordcount")
    config = world.config(
        {"wordcount": {"backend": "dataflow", "template": dataflow.template_path("wordcount")}},
        {
            "orders": {
                "pubsub": {"topic": "orders"},
                "pipeline": "wordcount",
                "parameters": {"payload": "{data}"},
            }
        },
    )
    runtime = world.runtime(config)
    # WHEN a 300 KB message arrives
    message = parse_message(ev.pubsub_message("orders", "z" * 300_000))
    outcome = LaunchService(runtime).start(config.triggers["orders"], message)
    # THEN nothing reaches Dataflow, the run is LAUNCH_FAILED with the reason, and its completion
    # event (published once, within the limit) says why
    assert outcome.result is LaunchResult.FAILED and "bytes" in (outcome.reason or "")
    assert dataflow.jobs() == []
    assert Tracker(runtime).sweep().finished == {outcome.run_key: "LAUNCH_FAILED"}
    (c,) = world.completions(expect=1)
    assert "over the 262144 bytes one launch may carry" in c["event"]["data"]["reason"]
