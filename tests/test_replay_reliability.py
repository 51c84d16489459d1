"""Replays under faults and crashes, CI slice (``evidence/reliability/replay.py``; full size in
``make reliability``): the real ``python -m handlers replay`` command line, with ledger and backend
faults, SIGKILLed in the middle of its work and run again, after part of the bucket was delivered
live; from the bucket and from a dead-letter subscription, every object still has exactly one job
and one completion.
"""

from __future__ import annotations

import json

from evidence.reliability import replay


def test_a_replay_killed_mid_way_under_faults_then_run_again_launches_every_object_once(tmp_path):
    options = replay.Options(objects=30, already=0.3, kills=2, rate=0.1, seed=5, max_seconds=240)
    figures = replay.run(options)
    assert figures["faults_injected_total"] > 0, "no fault was injected: the test would prove nothing"
    killed = [a for a in figures["replay_attempts"] if a["killed"]]
    assert len(killed) == 2 and all(a["jobs_before_kill"] >= 1 for a in killed), (
        "a kill landed outside the work"
    )
    assert 0 < figures["objects_delivered_live_first"] < 30
    assert figures["events_lost"] == 0 and figures["duplicate_jobs"] == 0
    assert figures["duplicate_completions"] == 0 and figures["jobs"] == 30
    json_path, _ = replay.write_results(figures, "pytest slice", out_dir=tmp_path)
    assert json.loads(json_path.read_text())["figures"]["goal_met"] is True


def test_a_dead_letter_replay_killed_under_faults_then_run_again_launches_every_object_once():
    """The dead-letter source: every object's notification in the trigger's dead-letter
    subscription (a tenth twice); a killed replay's messages return when their lease runs out."""
    options = replay.Options(
        objects=20, already=0.3, kills=1, rate=0.1, seed=3, max_seconds=240, source="dead-letters"
    )
    figures = replay.run(options)
    assert figures["faults_injected_total"] > 0, "no fault was injected: the test would prove nothing"
    assert figures["dead_letter_messages"] > 20, "no notification was dead-lettered twice"
    killed = [a for a in figures["replay_attempts"] if a["killed"]]
    assert len(killed) == 1 and killed[0]["jobs_before_kill"] >= 1, "the kill landed outside the work"
    assert figures["events_lost"] == 0 and figures["duplicate_jobs"] == 0
    assert figures["duplicate_completions"] == 0 and figures["jobs"] == 20
    assert figures["goal_met"] is True
