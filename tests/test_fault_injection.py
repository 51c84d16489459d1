"""Fault injection, CI slice: the real functions under functions-framework, the ledger and Dataflow
behind fault proxies, the suite playing the platform (``evidence/reliability/faults.py``; full size:
``python -m evidence.reliability.faults --events 1000``).

Asserted only from what reached the services: the Dataflow emulator's jobs, the ledger bucket and
the completion topic.
"""

from __future__ import annotations

import json
import threading

from evidence.reliability import faults
from evidence.reliability.rig import (
    LANDING_BUCKET,
    CompletionWatch,
    Event,
    Platform,
    Rig,
    RigSettings,
    event_name,
)
from local.faultproxy import ALL_KINDS, KINDS

LEDGER_CLAIM = r"^POST /upload/storage/v1/b/rig-ledger/o\?.*ifGenerationMatch=0"


def test_sixty_events_under_every_fault_kind_give_one_job_and_one_completion_each(tmp_path):
    figures = faults.run(
        faults.Options(
            events=60, rate=0.2, kinds=list(KINDS), cover=True, seed=7, duplicates=0.2, max_seconds=75
        )
    )

    assert figures["faults_injected"] == {k: figures["faults_injected"][k] for k in KINDS}
    assert all(figures["faults_injected"][k] > 0 for k in KINDS), figures["faults_injected"]
    assert all(sum(per.values()) > 0 for per in figures["faults_by_target"].values())
    assert figures["duplicates_planned"].get("concurrent") and figures["duplicates_planned"].get("after_ack")
    assert figures["deliveries"] >= 60 + sum(figures["duplicates_planned"].values())
    assert figures["events_lost"] == 0, figures["lost_examples"]
    assert figures["duplicate_jobs"] == 0, figures["duplicate_job_examples"]
    assert figures["duplicate_completions"] == 0 and figures["duplicate_completion_ids"] == 0
    assert figures["jobs"] == 60 and figures["completion_states"] == {"SUCCEEDED": 60}
    assert figures["stray_jobs"] == 0 and figures["active_markers_left"] == 0
    json_path, md_path = faults.write_results(figures, "pytest slice", out_dir=tmp_path)
    assert (
        json.loads(json_path.read_text())["figures"]["events"] == 60 and "events lost" in md_path.read_text()
    )


def test_a_claim_whose_answer_was_lost_still_ends_with_one_job_and_one_completion():
    """The claim write is applied but its answer is lost: the storage client's own retry then meets
    the run it just created (412). The run must still be followed to its completion."""
    with Rig(RigSettings()) as rig:
        rig.start()
        rig.proxies["ledger"].set_faults({"lost": 1.0}, match=LEDGER_CLAIM, limit=1)
        platform = Platform(rig)
        watch = CompletionWatch(rig)
        event = Event.storage(LANDING_BUCKET, event_name("dataflow", "claim-answer-lost"))

        delivery = platform.deliver(event)
        for _ in range(20):
            platform.sweep()
            watch.poll()
            if event.input_file in watch.inputs_completed():
                break
        observed = rig.observe()
        observed.completions = watch.poll()
        verdict = observed.verdict([event])
        injected = rig.proxies["ledger"].counters()["injected"]["lost"]

    assert delivery.acked and injected == 1
    assert verdict["jobs"] == 1 and verdict["duplicate_jobs"] == 0
    assert verdict["events_without_completion"] == 0, verdict["lost_examples"]
    assert verdict["events_lost"] == 0 and verdict["completions"] == 1


FABRIC_RUN = r"^POST /v1/workspaces/[^/]+/(items|dataflows)/[^/]+/jobs/[^/]+/instances"


def _two_fabric_runs_whose_answers_were_lost() -> tuple[dict, int]:
    with Rig(RigSettings(backends=("fabric",))) as rig:
        rig.start()
        rig.proxies["fabric"].set_faults({"lost": 1.0}, match=FABRIC_RUN, limit=2)
        platform = Platform(rig)
        watch = CompletionWatch(rig)
        events = [Event.storage(LANDING_BUCKET, event_name("fabric", f"lost-answer-{i}")) for i in range(2)]

        deliveries = [threading.Thread(target=platform.deliver, args=(e,)) for e in events]
        for thread in deliveries:
            thread.start()
        for thread in deliveries:
            thread.join()
        for _ in range(20):
            platform.sweep()
            watch.poll()
            if {e.input_file for e in events} <= watch.inputs_completed():
                break
        observed = rig.observe()
        observed.completions = watch.poll()
        verdict = observed.verdict(events)
        injected = rig.proxies["fabric"].counters()["injected"]["lost"]

    return verdict, injected


def test_two_fabric_runs_whose_answers_were_lost_each_follow_their_own_instance():
    """Fabric instances carry nothing of ours: the launch service starts one run of an item at a
    time (its launch slot), so after a lost answer the newest instance no other run claimed is the
    run's own; each run follows the instance started with its own parameters."""
    verdict, injected = _two_fabric_runs_whose_answers_were_lost()
    assert injected == 2 and verdict["jobs"] == 2 and verdict["completions"] == 2
    assert verdict["jobs_shared_by_runs"] == 0 and verdict["duplicate_jobs"] == 0
    assert verdict["completions_naming_a_wrong_job"] == 0 and verdict["events_lost"] == 0


def test_fabric_and_dataflow_at_the_harsher_setting_every_kind_and_every_event_delivered_twice():
    """The harsher published setting at a small size: a 20 % fault rate of every kind (412 and 409
    on the ledger only), every event delivered twice, Fabric (no run key on its instances) next to
    Dataflow. ``cover``: every kind is injected at least once however the requests interleave."""
    figures = faults.run(
        faults.Options(
            events=24,
            rate=0.2,
            kinds=list(ALL_KINDS),
            cover=True,
            seed=11,
            duplicates=1.0,
            max_seconds=150,
            settings=RigSettings(backends=("fabric", "dataflow")),
        )
    )

    assert all(figures["faults_injected"].get(k, 0) > 0 for k in ALL_KINDS), figures["faults_injected"]
    assert set(figures["faults_by_target"]["fabric"]) <= set(KINDS)
    assert sum(figures["duplicates_planned"].values()) == 24
    assert figures["events_lost"] == 0, figures["lost_examples"]
    assert figures["duplicate_jobs"] == 0, figures["duplicate_job_examples"]
    assert figures["duplicate_completions"] == 0 and figures["duplicate_completion_ids"] == 0
    assert figures["jobs_shared_by_runs"] == 0 and figures["completions_naming_a_wrong_job"] == 0
    assert figures["jobs_by_backend"] == {"fabric": 12, "dataflow": 12}
    assert figures["completion_states"] == {"SUCCEEDED": 24} and figures["active_markers_left"] == 0
