"""Separate virtualenvs for the cold-start comparison, each holding exactly what its side deploys.

A cold start pays for what is *installed* as well as what is imported: google-api-core imports grpc
whenever grpcio is installed, for instance. So each side is measured in a venv built from its own
requirements, as Cloud Functions builds it, never in the development venv (which holds both sides
and the test tools):

- ``ours``: ``requirements.txt``;
- ``sample``: what Google's sample lists: functions-framework, google-api-python-client,
  google-cloud-pubsub.

They live under ``.local/bench-venvs/`` and are rebuilt when their requirement list changes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / ".local" / "bench-venvs"
SAMPLE_REQUIREMENTS = (
    "functions-framework>=3.8,<4",
    "google-api-python-client>=2.120",
    "google-cloud-pubsub>=2.21,<3",
)


def requirements(side: str) -> list[str]:
    if side == "ours":
        return [
            line.split("#", 1)[0].strip()
            for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.split("#", 1)[0].strip()
        ]
    if side == "sample":
        return list(SAMPLE_REQUIREMENTS)
    raise ValueError(side)


def python(side: str, log: Callable[[str], object] = print) -> str:
    """The interpreter of ``side``'s venv, built (or rebuilt) first when needed."""
    reqs = requirements(side)
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    home = HOME / side
    exe = home / "bin" / "python"
    stamp = home / ".requirements"
    if exe.exists() and stamp.exists() and stamp.read_text() == digest:
        return str(exe)
    log(f"building the {side!r} venv for the cold-start benchmark ({len(reqs)} requirements)...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
    subprocess.run(
        [str(exe), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *reqs],
        check=True,
    )
    stamp.write_text(digest)
    return str(exe)
