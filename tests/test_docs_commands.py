"""Specification: every command the docs show is run by a test, or marked illustrative.

A shell block (```bash, ```sh, ```console with ``$ `` prompts) in README.md, docs/, the benchmark
and Terraform READMEs is one of:

- **run here**: the CLI commands on the example config (``python -m handlers validate|explain|graph
  ... examples/pipelines.yaml``) run in this test, and must exit as the docs say;
- **run by another test**, named in :data:`RUN_ELSEWHERE` (``make demo`` by tests/test_stack.py,
  ``make test`` by CI itself, ...);
- **illustrative**, with an ``<!-- illustrative: why -->`` comment right above the block: commands
  against a real cloud project, system installs, or files a reader brings.

A new block that is none of these fails, so a command cannot be added to the docs untried.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    ROOT / "evidence" / "bench" / "README.md",
    ROOT / "deploy" / "terraform" / "README.md",
]
BLOCK = re.compile(r"```(bash|sh|shell|console)\n(.*?)```", re.DOTALL)

# First command of a block -> the test that runs it.
RUN_ELSEWHERE = {
    "make demo": "tests/test_stack.py (the demo chain to its end; CI runs make test, which needs make's venv)",
    "make test": ".ci/run runs make test",
    "python -m handlers runs": "tests/test_cli.py (the ledger of a local world)",
    "python -m handlers launch": "tests/test_cli.py (launch --wait against the emulators)",
    "python -m handlers cancel": "tests/test_cli.py (cancel against the emulators)",
    "python -m handlers replay": "tests/test_replay.py (replay, --dry-run, --rerun against fake-gcs-server and the emulators)",
}


def _commands(kind: str, body: str) -> list[str]:
    """The block's commands, continuation lines joined (``console``: the ``$`` lines only)."""
    out: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = raw.rstrip()
        if kind == "console":
            if not (line.startswith("$ ") or pending):
                continue
            line = line[2:] if line.startswith("$ ") and not pending else line
        if not line.strip() or (not pending and line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            out.append(pending.strip())
            pending = ""
    return out


def _blocks() -> list[object]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            above = text[: m.start()].rstrip().splitlines()[-1:] or [""]
            line = text[: m.start()].count("\n") + 1
            found.append(
                pytest.param(
                    m.group(1),
                    _commands(m.group(1), m.group(2)),
                    above[0].strip().startswith("<!-- illustrative"),
                    id=f"{path.relative_to(ROOT)}:{line}",
                )
            )
    return found


def _runnable(command: str) -> bool:
    return command.startswith("python -m handlers ") and "examples/pipelines.yaml" in command


@pytest.mark.parametrize(("kind", "commands", "illustrative"), _blocks())
def test_every_documented_command_is_run_by_a_test_or_marked_illustrative(kind, commands, illustrative):
    if illustrative:
        return
    assert commands, "a shell block with no command"
    first = commands[0].split("#", 1)[0].strip()
    if any(first == known or first.startswith(known + " ") for known in RUN_ELSEWHERE):
        return
    assert all(_runnable(c) for c in commands), (
        f"{commands[0]!r}: not run by a test; run it here (a CLI command on examples/pipelines.yaml), "
        "name the test that runs it in RUN_ELSEWHERE, or mark the block <!-- illustrative: why -->"
    )
    for command in commands:
        argv = [sys.executable, *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        # explain exits 1 when no trigger would act (a documented near miss); anything else is 0
        allowed = (0, 1) if " explain " in f" {command} " else (0,)
        assert done.returncode in allowed, f"{command}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
