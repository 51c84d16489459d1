"""Crash injection, CI slice: one SIGKILL of the function process at each step boundary, then the
platform starts a new instance and redelivers (``evidence/reliability/crashes.py``; full size:
``python -m evidence.reliability.crashes --per-boundary 3``).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from evidence.reliability import crashes


@pytest.mark.parametrize("backend", ["dataflow", "datafusion", "fabric", "dataproc"])
def test_a_kill_at_every_step_boundary_still_gives_one_job_and_one_completion_per_event(tmp_path, backend):
    figures = crashes.run(per_boundary=1, settings=replace(crashes.CRASH_SETTINGS, backends=(backend,)))

    rows = {row["boundary"]: row for row in figures["boundaries"]}
    assert set(rows) == {b.name for b in crashes.BOUNDARIES}
    for name, row in rows.items():
        assert row["crashes"] == 1, f"{name}: the boundary was never crossed, so nothing was killed"
        assert row["lost"] == 0, f"{name}: event lost after the crash"
        assert row["duplicate_jobs"] == 0, f"{name}: job launched twice"
        assert row["duplicate_completions"] == 0, f"{name}: completion published twice"
    assert figures["instances_replaced"] == len(rows), "each crash was followed by a new instance"
    assert figures["jobs"] == figures["completions"] == len(rows)
    assert figures["completion_states"] == {"SUCCEEDED": len(rows)}
    json_path, md_path = crashes.write_results(figures, "pytest slice", out_dir=tmp_path)
    assert json.loads(json_path.read_text())["figures"]["goal_met"] is True
    assert "between_completion_write_and_publish" in md_path.read_text()
