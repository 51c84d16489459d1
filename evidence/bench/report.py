"""Results files shared by every evidence suite (benchmarks, fault injection, bad input).

Each suite writes ``results/<suite>.json`` (machine-readable: the machine, the command, the figures)
and ``results/<suite>.md`` (a markdown table), so a figure in ``docs/PERFORMANCE.md`` or
``docs/RELIABILITY.md`` can be traced to the file and the command that produced it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (every row a mapping; columns default to the first row's keys)."""
    if not rows:
        return "_no rows_\n"
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write(
    suite: str,
    figures: Mapping[str, Any],
    *,
    command: str,
    table: Sequence[Mapping[str, Any]] = (),
    title: str = "",
    notes: str = "",
    out_dir: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``<suite>.json`` and ``<suite>.md`` under ``out_dir`` (default ``results/``)."""
    folder = out_dir or Path(os.environ.get("EVIDENCE_RESULTS_DIR") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: dict[str, Any] = {
        "suite": suite,
        "measured_at": stamp,
        "command": command,
        "machine": machine(),
        "figures": figures,
    }
    json_path = folder / f"{suite}.json"
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    m = doc["machine"]
    md = [
        f"# {title or suite}",
        "",
        f"Measured {stamp} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}.",
        f"Reproduce: `{command}`",
        "",
    ]
    if table:
        md.append(markdown_table(table))
    if notes:
        md += ["", notes.strip(), ""]
    md_path = folder / f"{suite}.md"
    md_path.write_text("\n".join(md))
    print(
        f"wrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}",
        file=sys.stderr,
    )
    return json_path, md_path
