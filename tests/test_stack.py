"""The local stack (``local/stack.py``, ``local/demo.py``, ``local/timeline.py``): ``make demo`` and ``make up`` end to end.

The demo runs as a subprocess exactly as ``make demo`` runs it: it must exit 0, print the chain's
timeline and the word counts of the sample, and leave no process behind (every pid of the Pub/Sub
emulator's JVM, fake-gcs-server and the functions-framework processes it reported must be gone).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from local.demo import DEMO_SAMPLE, emulator_available
from local.emulators.wordcount import count_words, format_counts
from local.services import live_processes_in_group
from local.timeline import Timeline

ROOT = Path(__file__).resolve().parents[1]
# What the test session exports must not steer the stack: it brings its own services.
_FOREIGN = (
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "DATAFLOW_API_ENDPOINT",
    "DATAFUSION_API_ENDPOINT",
    "FABRIC_API_ENDPOINT",
    "FABRIC_TOKEN_ENDPOINT",
    "PIPELINES_CONFIG",
    "PIPELINES_ANONYMOUS_AUTH",
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _stack(*args: str) -> list[str]:
    return [sys.executable, "-m", "local.stack", *args]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _assert_nothing_left(pids_file: Path) -> list[dict]:
    groups = json.loads(pids_file.read_text())["groups"]
    names = {g["name"] for g in groups}
    assert {"pubsub-emulator", "fake-gcs-server", "on_message", "on_job_status", "check_runs"} <= names
    deadline = time.monotonic() + 5  # orphans are reaped asynchronously; they are dead already
    while True:
        left = {
            g["name"]: [p for p in g["pids"] if _alive(p)] + live_processes_in_group(g["pgid"])
            for g in groups
        }
        left = {name: pids for name, pids in left.items() if pids}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"
    return groups


def _in_order(text: str, needles: list[str]) -> None:
    at = 0
    for needle in needles:
        found = text.find(needle, at)
        assert found >= 0, f"{needle!r} missing (or out of order) in:\n{text}"
        at = found + len(needle)


def _timeline_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Timeline"))
    return [line for line in lines[start + 1 :] if line.strip() and line.strip()[0].isdigit()]


def test_demo_runs_the_chain_to_its_end_and_leaves_no_process_behind(tmp_path: Path) -> None:
    pids = tmp_path / "pids.json"
    started = time.monotonic()
    proc = subprocess.run(
        _stack("demo", "--timeout", "60", "--pids-file", str(pids)),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    chained = "Data Fusion" if emulator_available("datafusion") else "Dataflow"
    assert f"chain: wordcount (Dataflow) -> publish-counts ({chained})" in out

    timeline = "\n".join(_timeline_lines(out))
    _in_order(
        timeline,
        [
            "file uploaded          gs://demo-landing/incoming/sample.txt",
            "storage notification   OBJECT_FINALIZE gs://demo-landing/incoming/sample.txt",
            "run claimed            wordcount  run landing-text-",
            "job launched           wordcount  Dataflow job ",
            "completion published   wordcount SUCCEEDED",
            "chained launch         publish-counts  after wordcount SUCCEEDED, with counts=gs://demo-output/",
            f"job launched           publish-counts  {'Data Fusion run' if chained == 'Data Fusion' else 'Dataflow job'} ",
            "completion published   publish-counts SUCCEEDED",
            "done                   wordcount -> publish-counts completed in ",
        ],
    )
    # every timeline line starts with its elapsed seconds, in order
    seconds = [float(line.split("s", 1)[0]) for line in _timeline_lines(out)]
    assert seconds == sorted(seconds)
    assert "error" not in timeline and "warning" not in timeline

    # the output object: the real word counts of the sample, written by the wordcount template
    expected = format_counts(count_words(DEMO_SAMPLE.read_text())).splitlines()
    assert "Output of wordcount: gs://demo-output/wordcount/sample/" in out
    _in_order(out, [f"    {line}\n" for line in expected[:12]])

    assert "Stopped every service in" in out
    _assert_nothing_left(pids)
    assert took < 90, f"the demo took {took:.0f}s"


def _up(*args: str) -> tuple[subprocess.Popen[str], list[str], threading.Event, threading.Thread]:
    """``up`` started with ``args``: its stdout lines as they come, and an event set at the timeline."""
    proc = subprocess.Popen(
        _stack("up", *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Timeline"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, lines, ready, reader


def test_up_streams_the_timeline_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    pids = tmp_path / "pids.json"
    proc, lines, ready, reader = _up("--pids-file", str(pids))
    try:
        assert ready.wait(60), "up never became ready:\n" + "".join(lines)
        out = "".join(lines)
        for needle in (
            "export STORAGE_EMULATOR_HOST=http://127.0.0.1:",
            "export PUBSUB_EMULATOR_HOST=127.0.0.1:",
            "export DATAFLOW_API_ENDPOINT=http://127.0.0.1:",
            "export PIPELINES_ANONYMOUS_AUTH=true",
            "upload_from_string",
            "publish(",
            "-m handlers runs",
        ):
            assert needle in out
        _use_it_as_printed(out)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    assert "Stopped every service in" in "".join(lines)
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    _assert_nothing_left(pids)


def _use_it_as_printed(out: str) -> None:
    """What a newcomer does with ``up``'s output: paste the ``export`` lines into a shell that has
    nothing else set, run the CLI and the first curl; both work."""
    exports = [line.strip() for line in out.splitlines() if line.strip().startswith("export ")]
    documented = (ROOT / "docs" / "local-stack.md").read_text().split("Use it from another shell:")[1]
    names = [line.split("=")[0] for line in exports]
    assert names == [
        line.strip().split("=")[0] for line in documented.splitlines() if line.startswith("  export ")
    ]
    shell = " && ".join([*exports, f"{shlex.quote(sys.executable)} -m handlers runs"])
    env = {k: v for k, v in _env().items() if k != "GOOGLE_CLOUD_PROJECT"}
    env["GOOGLE_APPLICATION_CREDENTIALS"] = "/nonexistent"  # no credentials to fall back on
    runs = subprocess.run(
        ["bash", "-c", shell], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert runs.returncode == 0, runs.stderr
    assert "no runs" in runs.stdout or "RUN KEY" in runs.stdout
    curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl -s http"))
    url = curl.split()[-1]
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert {p["name"] for p in json.load(answer)["pipelines"]} == {"wordcount", "publish-counts"}


def test_a_missing_pubsub_emulator_is_a_clear_message_and_starts_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        _stack("demo", "--pids-file", str(tmp_path / "pids.json")),
        cwd=ROOT,
        env=_env(PUBSUB_EMULATOR_BIN=str(tmp_path / "no-such-emulator")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "is not an executable file" in proc.stderr and "pubsub-emulator" in proc.stderr
    assert not (tmp_path / "pids.json").exists()  # nothing was started


def test_the_timeline_prints_in_time_order_once_per_key() -> None:
    out = io.StringIO()
    timeline = Timeline(out, origin=1000.0, window=0.0)
    timeline.add(1004.5, "completion published", "a SUCCEEDED", key="c1")
    timeline.add(1000.25, "run claimed", "a  run t-1", source="on_message")
    timeline.add(1004.5, "completion published", "a SUCCEEDED", key="c1")  # redelivered
    timeline.flush(everything=True)
    assert out.getvalue().splitlines() == [
        "   0.25s  run claimed            a  run t-1  (on_message)",
        "   4.50s  completion published   a SUCCEEDED",
    ]


def test_every_chain_variant_of_the_demo_is_a_valid_config_with_its_registrations(tmp_path: Path) -> None:
    from local import demo
    from local.kits import kit

    for backend in ("dataflow", "datafusion", "fabric"):
        if not emulator_available(backend):
            continue
        work = tmp_path / backend
        work.mkdir()
        plan = demo.make_plan(demo.DEMO_CONFIG, work, demo_variants=True, chain_backend=backend)
        assert plan.chain() == ["wordcount", "publish-counts"]
        assert plan.config.pipelines["publish-counts"].backend == backend
        assert set(plan.buckets) == {"demo-landing", "demo-ledger", "demo-output"}
        files, pipelines = demo.DEMO_FIXTURES, plan.config.pipelines.values()
        dataflow = kit("dataflow").fixtures(pipelines, files["dataflow"])
        assert "gs://demo-templates/wordcount" in {t["gcsPath"] for t in dataflow.registrations["templates"]}
        if backend == "datafusion":
            (app,) = kit("datafusion").fixtures(pipelines, files["datafusion"]).registrations["apps"]
            assert app["app"] == plan.config.pipelines["publish-counts"].options["app"]
        if backend == "fabric":
            fabric = kit("fabric").fixtures(pipelines, files["fabric"])
            items, clients = fabric.registrations["items"], fabric.registrations["clients"]
            assert [i["item"] for i in items] == [plan.config.pipelines["publish-counts"].options["item"]]
            assert fabric.env["FABRIC_CLIENT_ID"] == clients[0]["client_id"]


def test_the_demo_chains_into_a_dataproc_batch_when_asked(tmp_path: Path) -> None:
    """The documented variant: ``make demo DEMO_ARGS="--chain-backend dataproc"``."""
    proc = subprocess.run(
        _stack(
            "demo", "--chain-backend", "dataproc", "--timeout", "60", "--pids-file", str(tmp_path / "p.json")
        ),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "chain: wordcount (Dataflow) -> publish-counts (Dataproc)" in proc.stdout
    _in_order(
        "\n".join(_timeline_lines(proc.stdout)),
        [
            "completion published   wordcount SUCCEEDED",
            "job launched           publish-counts  Dataproc batch ",
            "run finished           publish-counts SUCCEEDED",
            "completion published   publish-counts SUCCEEDED",
        ],
    )
    _assert_nothing_left(tmp_path / "p.json")


def test_up_syncs_the_pipelines_kept_in_the_repo_before_the_functions_start(tmp_path: Path) -> None:
    # examples/pipelines.yaml keeps a Data Fusion pipeline's exported JSON beside it: `up` runs
    # `python -m handlers sync` first, which deploys it to the CDAP emulator (PUT .../apps/NAME).
    proc, lines, ready, _ = _up("--config", "examples/pipelines.yaml")
    try:
        assert ready.wait(90), "up never became ready:\n" + "".join(lines)
        out = "".join(lines)
        assert "Pipelines kept in the repo (python -m handlers sync):" in out
        (line,) = [x for x in lines if x.strip().startswith("enrich-counts:")]
        assert "default/enrich-word-counts" in line and ("created" in line or "updated" in line)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_the_timeline_escapes_control_characters_from_outside() -> None:
    out = io.StringIO()
    timeline = Timeline(out, origin=1000.0, window=0.0)
    timeline.add(1001.0, "storage notification", "OBJECT_FINALIZE gs://b/x\x1b[31mred\u202e.txt\nfake line")
    timeline.flush(everything=True)
    assert out.getvalue() == (
        "   1.00s  storage notification   OBJECT_FINALIZE gs://b/x\\x1b[31mred\\u202e.txt\\nfake line\n"
    )


def _prereqs_with_java(tmp_path: Path, version_line: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    env = {k: v for k, v in _env().items() if k != "JAVA_HOME"}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", PUBSUB_EMULATOR_BIN=str(java))  # any executable will do
    return subprocess.run(
        ["bash", "local/prereqs.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def test_prereqs_refuses_a_java_too_old_for_the_emulator_and_says_what_to_do(tmp_path: Path) -> None:
    old = _prereqs_with_java(tmp_path, 'java version "1.8.0_292"')
    assert old.returncode == 1
    assert "is Java 8; the Pub/Sub emulator needs Java 11+" in old.stderr
    assert "sudo apt-get install default-jre-headless" in old.stderr


def test_prereqs_accepts_a_current_java_silently(tmp_path: Path) -> None:
    current = _prereqs_with_java(tmp_path, 'openjdk version "17.0.15" 2025-04-15')
    assert (current.returncode, current.stderr) == (0, "")


def test_prereqs_says_what_it_will_install_before_sudo_asks(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # no java here; a sudo and an apt-get that only record their call
    bin_dir.mkdir()
    for tool in ("sed", "head", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    for fake in ("sudo", "apt-get"):
        (bin_dir / fake).write_text(f'#!/bin/sh\necho "{fake} called: $*" >&2\nexit 1\n')
        (bin_dir / fake).chmod(0o755)
    env = {k: v for k, v in _env().items() if k != "JAVA_HOME"}
    env["PATH"] = str(bin_dir)
    proc = subprocess.run(
        ["/bin/bash", "local/prereqs.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    _in_order(
        proc.stderr,
        [
            "Java not found; the Pub/Sub emulator needs Java 11+",
            "will install the Debian/Ubuntu package default-jre-headless",
            "apt-get update",  # the sudo line (not root) or apt-get itself (root): after the announcement
            "the install failed; install Java 11 or newer",
        ],
    )


def test_up_prints_a_post_runs_curl_for_a_pipeline_launchable_by_hand() -> None:
    from types import SimpleNamespace

    from handlers.model.config import build_config
    from local.stack import print_curl

    config = build_config(
        {
            "settings": {"project": "p", "region": "r", "ledger": {"bucket": "l"}},
            "pipelines": {
                "backfill": {
                    "backend": "dataflow",
                    "template": "gs://t/backfill",
                    "parameters": {"day": "{input.day}", "table": "{input.table}"},
                    "inputs": {
                        "day": {"pattern": "[0-9]{4}-[0-9]{2}-[0-9]{2}", "description": "YYYY-MM-DD"},
                        "table": {"required": False, "default": "sales"},
                    },
                }
            },
        }
    )
    stack = SimpleNamespace(
        functions={"api": SimpleNamespace(url="http://127.0.0.1:9")}, plan=SimpleNamespace(config=config)
    )
    out = io.StringIO()
    print_curl(stack, out)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "",
        "The REST API (no token needed locally):",
        "  curl -s http://127.0.0.1:9/pipelines",
        "  curl -s http://127.0.0.1:9/runs/RUN_KEY        # a run key from `runs` above",
        "  curl -s -X POST http://127.0.0.1:9/runs -H 'Content-Type: application/json' -H 'Idempotency-Key: "
        """try-1' -d '{"pipeline": "backfill", "parameters": {"day": "DAY", "table": "sales"}}'  """
        "# replace DAY (YYYY-MM-DD) first",
    ]
