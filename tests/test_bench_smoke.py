"""The benchmarks still run (CI smoke slice). Only machine-independent facts are asserted here:
timings are reported by `make bench` as ratios, never checked in tests."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(only: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "evidence.bench", "--quick", "--only", only],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    lines = [
        json.loads(line)
        for line in out.stdout.splitlines()
        if line.startswith("{") and "severity" not in line
    ]
    return {k: v for line in lines for k, v in line.items()}


def test_a_cold_import_of_main_loads_no_backend_pubsub_or_jsonschema_module_and_every_function_starts():
    result = run_bench("cold_start")["cold_start"]
    assert result["heavy_modules_loaded_at_import"] == []
    assert {f["function"] for f in result["functions"]} == {
        "on_object_finalized",
        "on_message",
        "on_job_status",
        "check_runs",
        "api",
    }
    assert all(f["wall_ms"] > 0 and f["peak_rss_mb"] > 0 for f in result["functions"])
    # the project's own share: each function's cold start minus the floor of the same run, with its
    # goal and the phases it breaks down into
    assert result["floor"]["wall_ms"] > 0 and result["share_goal_ms"] == 100
    for f in result["functions"]:
        assert f["floor_ms"] == result["floor"]["wall_ms"]
        assert f["share_ms"] == round(
            f["wall_ms"] - f["floor_ms"], 1
        )  # one repetition: the pair's difference
        assert set(f["share_spread_ms"]) == {"min", "p25", "p75", "max"}
        own = sum(f["share_breakdown_ms"][p] for p in ("import", "config", "first_event"))
        assert abs(f["share_own_phases_ms"] - own) < 0.5  # one repetition: the phases' differences add up
        assert isinstance(f["meets_share_goal"], bool)
        assert set(f["share_breakdown_ms"]) == {
            "functions_framework",
            "auth_libs",
            "import",
            "config",
            "first_event",
            "first_event_http_wait",
            "first_event_rest",
        }
        assert f["phases_ms"]["import"] > 0 and f["phases_ms"]["config"] > 0


def test_a_quiet_sweep_costs_the_same_ledger_calls_however_many_finished_runs_exist():
    result = run_bench("sweep_history")["sweep_history"]
    assert result["calls_ratio"] == 1.0
    assert result["baseline_ledger_calls"] == 1  # one listing of the active markers, nothing read


def test_a_launch_costs_at_most_three_api_calls_and_a_burst_launches_each_object_once():
    results = run_bench("warm,burst")
    assert results["warm"]["api_calls_per_launch"]["total"] <= 3
    burst = results["burst"]["ours"]
    assert burst["launched"] == burst["objects"] and burst["duplicate_jobs"] == 0


def test_windows_launch_every_object_in_exactly_one_manifest_with_fewer_jobs():
    result = run_bench("windows")["windows"]
    windowed, per_object = result["windowed"], result["per_object"]
    assert windowed["objects_launched"] == windowed["objects"] == 40
    assert windowed["objects_in_two_jobs"] == 0 and per_object["objects_in_two_jobs"] == 0
    assert windowed["jobs"] == 4 and windowed["manifests"] == 4  # windows of 10
    assert per_object["jobs"] == 40
    assert result["backend_calls_ratio"] is not None and result["backend_calls_ratio"] < 1
