"""Specification: a replay feeds old objects and dead letters through the live path, exactly once.

Objects live in fake-gcs-server, dead letters in the Pub/Sub emulator, the ledger in fake-gcs-server
and the launches reach the project's Dataflow emulator: every assertion is on what reached the
emulator (launch requests and their parameters), the ledger, or the published completion events.
"""

from __future__ import annotations

import io
import json

import pytest

from handlers.entry.cli import main as cli_main
from handlers.entry.replay import (
    Replay,
    ReplayError,
    ReplayInterrupted,
    ReplaySpec,
    TokenBucket,
    object_event,
    parse_rate,
)
from handlers.follow.tracking import Tracker
from handlers.launch.store import GcsStore
from local.services import LOCAL_PROJECT, publish
from tests.support import events as ev
from tests.support.world import wait_until

NAMES = [f"in/2026/part-{i:02d}.csv" for i in range(6)]


@pytest.fixture
def landing(world, dataflow, gcs, unique_name, local_world):
    """A bucket holding six objects, a storage trigger on it, and a runtime."""
    bucket = f"{unique_name}-landing"
    local_world.create(buckets=[bucket])
    for name in NAMES:
        gcs.bucket(bucket).blob(name).upload_from_string(b"a,b\n1,2\n")
    gcs.bucket(bucket).blob("other/readme.txt").upload_from_string(b"x")
    dataflow.register("wordcount", run_seconds=0)
    opts = dataflow.pipeline_options("wordcount")
    pipelines = {"wordcount": {**opts, "parameters": {"inputFile": "gs://{bucket}/{name}"}}}
    triggers = {"landing": {"storage": {"bucket": bucket, "glob": "in/**/*.csv"}, "pipeline": "wordcount"}}
    path = world.write_config(pipelines, triggers)
    config = world.config(pipelines, triggers)
    dataflow.register("wordcount", run_seconds=0)
    return {"bucket": bucket, "path": path, "runtime": world.runtime(config), "gcs": gcs}


def launched_inputs(dataflow) -> list[str]:
    return sorted(
        launch["parameters"]["inputFile"] for launch in dataflow.launches() if launch["status"] == 200
    )


def deliver_live(call, landing, name: str) -> None:
    blob = landing["gcs"].bucket(landing["bucket"]).get_blob(name)
    event = ev.storage_finalized(landing["bucket"], name, generation=blob.generation)
    assert call("on_object_finalized", event, landing["path"]).status_code == 200


def objects(landing, **kw) -> ReplaySpec:
    return ReplaySpec("landing", bucket=landing["bucket"], **kw)


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------
def test_a_replay_launches_exactly_the_objects_that_have_not_run_yet(landing, dataflow, call):
    # GIVEN two of the six objects already launched by live deliveries
    for name in NAMES[:2]:
        deliver_live(call, landing, name)
    assert len(launched_inputs(dataflow)) == 2
    # WHEN the bucket is replayed for the trigger
    summary = Replay(landing["runtime"], objects(landing, prefix="in/")).run()
    # THEN exactly the other four reached Dataflow, the two are skipped by their run keys
    bucket = landing["bucket"]
    assert launched_inputs(dataflow) == sorted(f"gs://{bucket}/{n}" for n in NAMES)
    assert summary.counts() == {"launched": 4, "joined": 0, "skipped": 2, "failed": 0, "unmatched": 0}
    assert {i.source.split("#")[0] for i in summary.skipped} == {f"gs://{bucket}/{n}" for n in NAMES[:2]}
    assert all(i.run_key and i.run_key.startswith("landing-") for i in summary.launched + summary.skipped)
    assert summary.complete and summary.generation == 0


def test_a_second_replay_with_the_same_parameters_launches_nothing(landing, dataflow):
    first = Replay(landing["runtime"], objects(landing)).run()
    assert first.counts()["launched"] == 6
    before = len(dataflow.launches())
    second = Replay(landing["runtime"], objects(landing)).run()
    assert len(dataflow.launches()) == before
    assert second.counts() == {
        "launched": 0,
        "joined": 0,
        "skipped": 6,
        "failed": 0,
        "unmatched": 1,
    }  # other/readme.txt


def test_a_glob_and_time_bounds_choose_the_objects(landing, dataflow):
    summary = Replay(landing["runtime"], objects(landing, glob="in/2026/part-0[0-2].csv")).run()
    assert summary.counts()["launched"] == 3
    bucket = landing["bucket"]
    assert launched_inputs(dataflow) == [f"gs://{bucket}/{n}" for n in NAMES[:3]]
    import datetime as dt

    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    later = Replay(landing["runtime"], objects(landing, prefix="in/", since=future)).run()
    assert later.seen == 0


def test_rerun_starts_a_new_generation_and_its_completion_event_says_so(landing, dataflow, world):
    runtime = landing["runtime"]
    live = Replay(runtime, objects(landing, prefix="in/2026/part-00")).run()
    (live_key,) = [i.run_key for i in live.launched]
    # WHEN the same object is replayed with rerun
    rerun = Replay(runtime, objects(landing, prefix="in/2026/part-00", rerun=True)).run()
    # THEN a second job launched, under another run key, recorded as generation 1
    assert rerun.generation == 1 and rerun.counts()["launched"] == 1
    (rerun_key,) = [i.run_key for i in rerun.launched]
    assert rerun_key != live_key
    assert len(launched_inputs(dataflow)) == 2
    record = runtime.ledger.get(rerun_key)
    assert record.rerun == 1 and record.event["rerun"] == 1
    assert runtime.ledger.get(live_key).rerun == 0
    # AND its completion event carries the generation
    wait_until(
        lambda: (Tracker(runtime).sweep(), not runtime.ledger.active_keys())[1], timeout=30, what="runs end"
    )
    done = {c["event"]["data"]["run_key"]: c["event"]["data"] for c in world.completions(expect=2)}
    assert done[rerun_key]["rerun"] == 1 and done[rerun_key]["event"]["rerun"] == 1
    assert done[live_key]["rerun"] == 0
    # AND a dry run of the next rerun shows generation 2 launching, without taking the number
    dry = Replay(runtime, objects(landing, prefix="in/2026/part-00", rerun=True), dry_run=True).run()
    assert dry.generation == 2 and dry.counts()["launched"] == 1 and len(launched_inputs(dataflow)) == 2
    # AND the next rerun is generation 2
    again = Replay(runtime, objects(landing, prefix="in/2026/part-00", rerun=True)).run()
    assert again.generation == 2 and again.counts()["launched"] == 1


def test_a_dry_run_launches_nothing_and_says_what_would_launch_and_what_is_skipped(landing, dataflow, call):
    deliver_live(call, landing, NAMES[0])
    before = len(dataflow.launches())
    summary = Replay(landing["runtime"], objects(landing, prefix="in/"), dry_run=True).run()
    assert len(dataflow.launches()) == before
    assert summary.counts() == {"launched": 5, "joined": 0, "skipped": 1, "failed": 0, "unmatched": 0}
    assert summary.dry_run and all(i.action == "would-launch" for i in summary.launched)
    # and it wrote no checkpoint: a real replay afterwards launches the five
    assert Replay(landing["runtime"], objects(landing, prefix="in/")).run().counts()["launched"] == 5


def test_an_interrupted_replay_resumes_where_it_stopped_and_launches_each_object_once(landing, dataflow):
    spec = objects(landing, prefix="in/")
    with pytest.raises(ReplayInterrupted):
        Replay(landing["runtime"], spec, stop_after=4).run()
    assert len(launched_inputs(dataflow)) == 4
    resumed = Replay(landing["runtime"], spec).run()
    assert resumed.resumed and resumed.counts()["launched"] == 2 and resumed.counts()["skipped"] == 0
    bucket = landing["bucket"]
    assert launched_inputs(dataflow) == sorted(f"gs://{bucket}/{n}" for n in NAMES)  # each exactly once


def test_the_rate_limit_spaces_the_launches_on_a_fake_clock(landing, dataflow):
    clock = [0.0]
    limiter = TokenBucket(
        2.0, burst=1, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)
    )
    stamps: list[float] = []
    replay = Replay(
        landing["runtime"],
        objects(landing, prefix="in/"),
        bucket=limiter,
        on_item=lambda item, _: stamps.append(clock[0]) if item.action == "launched" else None,
    )
    replay.run()
    assert len(launched_inputs(dataflow)) == 6 == len(stamps)
    # 2 launches a second: the sixth launch is not before 2.5 s of fake time, no second holds more than 2
    assert stamps[-1] >= 2.5
    assert max(sum(1 for s in stamps if int(s) == second) for second in range(4)) <= 2
    assert parse_rate("600/m") == 10.0 and parse_rate("3/s") == 3.0


def test_bad_replay_requests_are_refused_clearly(landing):
    runtime = landing["runtime"]
    with pytest.raises(ReplayError, match="no trigger 'nope'"):
        Replay(runtime, ReplaySpec("nope", bucket="b"))
    with pytest.raises(ReplayError, match="one source"):
        Replay(runtime, ReplaySpec("landing"))
    with pytest.raises(ReplayError, match="prefix or a glob"):
        Replay(runtime, ReplaySpec("landing", bucket="b", prefix="a", glob="a/*"))
    with pytest.raises(ReplayError, match="rate must be"):
        parse_rate("fast")


# --------------------------------------------------------------------------------------------
# Dead letters
# --------------------------------------------------------------------------------------------
@pytest.fixture
def orders(world, dataflow, local_world, unique_name):
    """A Pub/Sub trigger launching one run per order, and an empty dead-letter topic and subscription."""
    opts = dataflow.pipeline_options("orders")
    pipelines = {"orders": {**opts, "parameters": {"orderId": "{data.order}"}}}
    triggers = {"orders": {"pubsub": {"topic": "orders", "dedupe_by": "data.order"}, "pipeline": "orders"}}
    dlq_topic, dlq_sub = f"{unique_name}-dlq", f"{unique_name}-dlq-sub"
    local_world.create(topics=[dlq_topic], pull={dlq_sub: dlq_topic})
    return {
        "runtime": world.runtime(world.config(pipelines, triggers)),
        "topic": dlq_topic,
        "spec": ReplaySpec("orders", subscription=f"projects/{LOCAL_PROJECT}/subscriptions/{dlq_sub}"),
    }


def test_dead_lettered_messages_launch_once_and_are_acknowledged(orders, dataflow):
    runtime, dlq_topic, spec = orders["runtime"], orders["topic"], orders["spec"]
    for order in ("a1", "a2", "a1"):  # a1 twice: one run
        publish(LOCAL_PROJECT, dlq_topic, json.dumps({"order": order}))
    summary = Replay(runtime, spec).run()
    assert sorted(launch["parameters"]["orderId"] for launch in dataflow.launches()) == ["a1", "a2"]
    assert summary.counts() == {"launched": 2, "joined": 0, "skipped": 1, "failed": 0, "unmatched": 0}
    # every message was acknowledged: a second replay finds the subscription empty
    assert Replay(runtime, spec).run().seen == 0


def test_a_shared_dead_letter_topic_keeps_the_messages_of_other_triggers(orders, dataflow):
    runtime, dlq_topic, spec = orders["runtime"], orders["topic"], orders["spec"]
    # GIVEN a dead-letter topic shared with another subscription: an order, and a storage
    # notification for a bucket no trigger of this config watches
    publish(LOCAL_PROJECT, dlq_topic, json.dumps({"order": "b1"}))
    other = {"eventType": "OBJECT_FINALIZE", "bucketId": "elsewhere", "objectId": "x.csv"}
    other |= {"objectGeneration": "1", "payloadFormat": "JSON_API_V1"}
    publish(LOCAL_PROJECT, dlq_topic, json.dumps({"bucket": "elsewhere", "name": "x.csv"}), other)
    # WHEN it is replayed for the orders trigger
    summary = Replay(runtime, spec).run()
    # THEN the order launched, and the notification was counted once and left in the subscription
    assert summary.counts() == {"launched": 1, "joined": 0, "skipped": 0, "failed": 0, "unmatched": 1}
    assert "left in the subscription" in summary.unmatched[0].reason
    assert [launch["parameters"]["orderId"] for launch in dataflow.launches()] == ["b1"]
    # AND handed back at once (not after its lease): the next replay sees it again, and only it
    again = Replay(runtime, spec).run()
    assert again.counts()["unmatched"] == 1 and again.seen == 1 and len(dataflow.launches()) == 1


def test_dead_letters_pulled_but_not_handled_when_a_replay_stops_are_handed_back(orders, dataflow):
    runtime, dlq_topic, spec = orders["runtime"], orders["topic"], orders["spec"]
    for order in ("c1", "c2", "c3", "c4"):
        publish(LOCAL_PROJECT, dlq_topic, json.dumps({"order": order}))
    # WHEN a replay stops after one message (it pulled all four in one batch)
    first = Replay(runtime, spec, limit=1).run()
    # THEN the next replay gets the other three at once, not after their leases ran out
    rest = Replay(runtime, spec).run()
    assert (first.seen, rest.counts()["launched"]) == (1, 3)
    assert sorted(launch["parameters"]["orderId"] for launch in dataflow.launches()) == [
        "c1",
        "c2",
        "c3",
        "c4",
    ]


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_the_cli_dry_run_then_replay_prints_a_summary_with_run_keys(landing, dataflow):
    replay = ["replay", "--config", str(landing["path"]), "--trigger", "landing"]
    replay += ["--bucket", landing["bucket"], "--prefix", "in/"]
    code, out, err = run_cli(*replay, "--dry-run")
    assert code == 0, err
    assert "would launch  6" in out and dataflow.launches() == []
    code, out, err = run_cli(*replay, "--rate", "100/s", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["counts"] == {"launched": 6, "joined": 0, "skipped": 0, "failed": 0, "unmatched": 0}
    assert len(launched_inputs(dataflow)) == 6
    assert all(item["run_key"].startswith("landing-") for item in doc["launched"])
    # the plain progress line (stderr is not a terminal): a bar, the objects were counted first
    assert "replayed [########################] 6/6 100%" in err
    code, out, err = run_cli(*replay, "--rerun")
    assert code == 0, err
    assert "rerun generation 1" in out and "launched      6" in out


def test_the_progress_bar_counts_what_is_left_after_the_checkpoint_and_shows_the_time_left(landing):
    from handlers.entry.cli.output import bar

    # WHEN a replay stops after two objects and is run again, counting first
    first = Replay(landing["runtime"], objects(landing, prefix="in/"), limit=2, count_first=True).run()
    again = Replay(landing["runtime"], objects(landing, prefix="in/"), count_first=True).run()
    # THEN each run expected exactly what it went on to handle
    assert (first.expected, first.seen, first.complete) == (2, 2, False)
    assert (again.expected, again.seen, again.resumed) == (4, 4, True)
    # AND the bar says how far, how fast and how long is left at that rate
    assert bar(2500, 10_000, 50.0) == "[######..................] 2,500/10,000 25% 50/s 2m30s left"
    assert bar(10, 40, 1.0).endswith("25% 10/s 3s left") and bar(0, 0, 1.0).startswith("[....")


def test_the_cli_refuses_a_replay_without_a_source(landing):
    code, _out, err = run_cli("replay", "--config", str(landing["path"]), "--trigger", "landing")
    assert code == 2 and "one source" in err


# --------------------------------------------------------------------------------------------
# The REST API
# --------------------------------------------------------------------------------------------
@pytest.fixture
def api(landing, monkeypatch):
    import functions_framework

    from handlers.launch.runtime import reset_default
    from tests.test_api import ROOT

    monkeypatch.setenv("PIPELINES_CONFIG", str(landing["path"]))
    reset_default()
    app = functions_framework.create_app("api", str(ROOT / "main.py"), "http")
    yield app.test_client()
    reset_default()


def test_post_replays_dry_run_then_in_steps_with_progress_and_result(api, landing, dataflow, call):
    from tests.test_api import check_openapi

    deliver_live(call, landing, NAMES[0])
    body = {"trigger": "landing", "bucket": landing["bucket"], "prefix": "in/"}
    # a dry run: what would launch and what is skipped, nothing launched
    dry = check_openapi("/replays", "post", api.post("/replays", json={**body, "dry_run": True}))
    assert dry["dry_run"] and dry["counts"] == {
        "launched": 5,
        "joined": 0,
        "skipped": 1,
        "failed": 0,
        "unmatched": 0,
    }
    assert len(dataflow.launches()) == 1
    # a replay in steps of three: the first answer is not complete, its progress is readable
    first = api.post("/replays", json={**body, "max_events": 3})
    step = check_openapi("/replays", "post", first)
    assert not step["complete"] and step["counts"]["launched"] == 2 and step["counts"]["skipped"] == 1
    progress = check_openapi("/replays/{trigger}/{replayId}", "get", api.get(step["status_url"]))
    assert progress["complete"] is False and progress["after"] == NAMES[2]
    # POSTing the same body again continues where it stopped
    rest = check_openapi("/replays", "post", api.post("/replays", json={**body, "max_events": 3}))
    assert rest["resumed"] and rest["complete"] and rest["counts"]["launched"] == 3
    bucket = landing["bucket"]
    assert launched_inputs(dataflow) == sorted(f"gs://{bucket}/{n}" for n in NAMES)
    done = check_openapi("/replays/{trigger}/{replayId}", "get", api.get(rest["status_url"]))
    assert done["complete"] is True


@pytest.mark.parametrize(
    "body,field",
    [
        ({"bucket": "b"}, "trigger"),
        ({"trigger": "landing", "bucket": "b", "extra": 1}, "extra"),
        ({"trigger": "landing", "bucket": "b", "since": "yesterday"}, "since"),
        ({"trigger": "landing", "bucket": "b", "rate": "fast"}, "rate"),
        ({"trigger": "nope", "bucket": "b"}, "trigger"),
    ],
)
def test_bad_replay_requests_are_400_naming_the_field(api, body, field):
    from tests.test_api import check_openapi

    response = api.post("/replays", json=body)
    assert response.status_code == 400
    details = check_openapi("/replays", "post", response)["error"]["details"]
    assert field in {d["field"] for d in details}
    assert api.get("/replays/landing/0123456789abcdef").status_code == 404


# --------------------------------------------------------------------------------------------
# Windows: a batched trigger's replay joins windows through the live path
# --------------------------------------------------------------------------------------------
def test_a_replay_of_a_batched_trigger_puts_each_object_in_exactly_one_window(landing, world, dataflow):
    from tests.test_windows import batch_pipelines, names_in_manifests

    pipelines = batch_pipelines(dataflow)
    triggers = {
        "landing": {
            "storage": {"bucket": landing["bucket"], "prefix": "in/"},
            "pipeline": "load",
            "batch": {"max_items": 3},
        }
    }
    runtime = world.runtime(world.config(pipelines, triggers))
    spec = ReplaySpec("landing", bucket=landing["bucket"], prefix="in/")
    dry = Replay(runtime, spec, dry_run=True).run()
    assert dry.counts()["joined"] == 6 and dataflow.launches() == []
    summary = Replay(runtime, spec).run()
    # six objects joined two windows of three, each closed full and launched once
    assert summary.counts() == {"launched": 0, "joined": 6, "skipped": 0, "failed": 0, "unmatched": 0}
    assert len(dataflow.launches()) == 2
    assert sorted(names_in_manifests(world, dataflow)) == NAMES
    # a second replay finds every object in its window: nothing joins or launches again
    again = Replay(runtime, spec).run()
    assert again.counts()["skipped"] == 6 and len(dataflow.launches()) == 2


def test_a_rerun_of_a_batched_trigger_fills_windows_of_its_own_generation_once(landing, world, dataflow):
    from tests.test_windows import batch_pipelines, load_jobs, manifest

    pipelines = batch_pipelines(dataflow)
    batch = {"max_items": 3, "max_wait": "1h"}
    triggers = {
        "landing": {
            "storage": {"bucket": landing["bucket"], "prefix": "in/"},
            "pipeline": "load",
            "batch": batch,
        }
    }
    runtime = world.runtime(world.config(pipelines, triggers))
    Replay(runtime, ReplaySpec("landing", bucket=landing["bucket"], prefix="in/")).run()
    live_ids = sorted(job["parameters"]["key"] for job in load_jobs(dataflow))
    assert len(live_ids) == 2
    # WHEN a rerun is interrupted after four objects (one window of three launched, one object
    # waiting in the next), then run again
    spec = ReplaySpec("landing", bucket=landing["bucket"], prefix="in/", rerun=True)
    first = Replay(runtime, spec, limit=4).run()
    assert first.generation == 1 and first.counts()["joined"] == 4 and len(load_jobs(dataflow)) == 3
    rest = Replay(runtime, spec).run()
    # THEN it resumed generation 1: the last two objects filled the waiting window
    assert rest.resumed and rest.generation == 1 and rest.counts()["joined"] == 2
    jobs = load_jobs(dataflow)
    rerun_jobs = [j for j in jobs if j["parameters"]["key"] not in live_ids]
    assert len(jobs) == 4 and len(rerun_jobs) == 2
    # AND every object is in exactly one rerun manifest, the live windows untouched
    rerun_names = [line["name"] for j in rerun_jobs for line in manifest(world, j["parameters"]["input"])]
    assert sorted(rerun_names) == NAMES
    assert sorted(j["parameters"]["key"] for j in jobs if j["parameters"]["key"] in live_ids) == live_ids
    # AND the rerun windows' runs say generation 1, with their window, the live ones 0
    keys = {i.run_key for i in first.joined + rest.joined if i.run_key}
    records = [runtime.ledger.get(k) for k in keys]
    assert len(records) == 2 and all(r.rerun == 1 and r.event["rerun"] == 1 for r in records)
    assert {r.event["window"]["id"] for r in records} == {j["parameters"]["key"] for j in rerun_jobs}
    # AND a replay without rerun still finds every object in its live window
    assert (
        Replay(runtime, ReplaySpec("landing", bucket=landing["bucket"], prefix="in/"))
        .run()
        .counts()["skipped"]
        == 6
    )


def test_a_claim_left_by_a_crashed_launcher_is_taken_over_not_skipped(landing, dataflow):
    from dataclasses import replace

    from handlers.launch.ledger import Run
    from handlers.route.plan import plan_object

    runtime = landing["runtime"]
    spec = objects(landing, prefix="in/2026/part-00")
    # GIVEN a run claimed by a process that died before launching (its lease long expired)
    (item,) = Replay(runtime, spec, dry_run=True).run().launched
    resource = next(GcsStore(landing["bucket"]).list_objects("in/2026/part-00"))
    plan = plan_object(runtime.config, object_event(resource)).matched[0].launch
    # (a claim records the parameters it will launch: a takeover launches those)
    assert plan.rendered is not None
    stale = Run(
        item.run_key,
        "landing",
        "wordcount",
        "dataflow",
        "CLAIMED",
        plan.job_name,
        parameters=dict(plan.rendered.parameters),
        owner="dead",
    )
    runtime.ledger.create(replace(stale, lease_until="2000-01-01T00:00:00Z", attempts=1))
    # WHEN the object is replayed
    summary = Replay(runtime, spec).run()
    # THEN the claim is taken over and the job launched once
    assert summary.counts()["launched"] == 1 and len(launched_inputs(dataflow)) == 1
    assert runtime.ledger.get(item.run_key).attempts == 2


def test_dead_lettered_storage_notifications_replay_as_the_objects_they_name(
    landing, dataflow, call, local_world, unique_name
):
    # GIVEN the first object already ran live, and notifications of the first two dead-lettered
    deliver_live(call, landing, NAMES[0])
    dlq_topic, dlq_sub = f"{unique_name}-gcs-dlq", f"{unique_name}-gcs-dlq-sub"
    local_world.create(topics=[dlq_topic], pull={dlq_sub: dlq_topic})
    bucket = landing["gcs"].bucket(landing["bucket"])
    for name in NAMES[:2]:
        blob = bucket.get_blob(name)
        resource = {
            "bucket": landing["bucket"],
            "name": name,
            "generation": str(blob.generation),
            "size": "8",
        }
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": landing["bucket"],
            "objectId": name,
            "objectGeneration": str(blob.generation),
            "payloadFormat": "JSON_API_V1",
        }
        publish(LOCAL_PROJECT, dlq_topic, json.dumps(resource), attributes)
    # WHEN the dead letters are replayed for the storage trigger
    spec = ReplaySpec("landing", subscription=f"projects/{LOCAL_PROJECT}/subscriptions/{dlq_sub}")
    summary = Replay(landing["runtime"], spec).run()
    # THEN the object that ran is skipped by its run key, the other launches once
    assert summary.counts() == {"launched": 1, "joined": 0, "skipped": 1, "failed": 0, "unmatched": 0}
    assert launched_inputs(dataflow) == sorted(f"gs://{landing['bucket']}/{n}" for n in NAMES[:2])
