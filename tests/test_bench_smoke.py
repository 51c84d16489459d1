"""The benchmarks still run (CI smoke slice). Only machine-independent facts are asserted here:
timings are reported by `make bench` as ratios, never checked in tests."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(only: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", only],
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


def test_a_cold_import_of_main_loads_no_backend_pubsub_or_jsonschema_module():
    result = run_bench("cold_start")["cold_start"]
    assert result["heavy_modules_loaded_at_import"] == "[]"
    assert result["time_ratio"] > 0 and result["rss_ratio"] > 0


def test_the_sweep_reads_only_active_runs_however_many_finished_runs_exist():
    result = run_bench("sweep_scaling")["sweep_scaling"]
    assert result["reads_ratio"] == 1.0
