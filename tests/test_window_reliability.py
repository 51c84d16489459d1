"""Windows under crash and fault injection, CI slice (``evidence/reliability/windows.py``; full size:
``python -m evidence.reliability.windows crashes --per-boundary 2`` and ``... faults --events 1000
--window 100``): real functions killed with SIGKILL at every window step boundary, or faulted by the
proxies, and still every object in exactly one launched manifest, each launched once.
"""

from __future__ import annotations

import json

from evidence.reliability import windows


def test_a_kill_at_every_window_step_boundary_loses_and_doubles_no_object():
    figures = windows.run_crashes(1, windows.BOUNDARIES, windows.CRASH_SETTINGS)
    rows = {row["boundary"]: row for row in figures["boundaries"]}
    assert set(rows) == set(windows.BY_NAME)
    for name, row in rows.items():
        assert row["crashes"] == 1, f"{name}: the boundary was never crossed, so nothing was killed"
        assert row["lost"] == 0 and row["doubled"] == 0, f"{name}: an object lost or in two windows"
        assert row["duplicate_jobs"] == 0, f"{name}: a window launched twice"
    assert figures["objects_lost"] == figures["objects_doubled"] == 0
    assert figures["completions"] == figures["windows_launched"] == figures["jobs"]
    assert figures["manifests_never_launched"] == 0 and figures["goal_met"] is True


def test_objects_delivered_concurrently_and_twice_under_faults_fill_windows_exactly_once(tmp_path):
    options = windows.FaultOptions(events=60, window=10, rate=0.2, seed=3, duplicates=0.3, max_seconds=240)
    figures = windows.run_faults(options)
    assert figures["faults_injected_total"] > 0, "no fault was injected: the test would prove nothing"
    assert figures["objects_lost"] == 0 and figures["objects_doubled"] == 0
    assert figures["duplicate_jobs"] == 0 and figures["duplicate_completions"] == 0
    assert sum(size * n for size, n in figures["window_sizes"].items()) == 60
    json_path, _ = windows.write_results("faults", figures, "pytest slice", out_dir=tmp_path)
    assert json.loads(json_path.read_text())["figures"]["goal_met"] is True
