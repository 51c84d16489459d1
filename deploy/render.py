"""The plan as a bash script (``--dry-run``): ``#`` comments, one shell-quoted command per line,
``${NAME}`` references to captured values left expandable."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from deploy.plan import Plan, Step

VAR_RE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def shell_arg(arg: str) -> str:
    """Quote one argument for bash, leaving ``${VAR}`` references expandable."""
    if not VAR_RE.search(arg):
        return shlex.quote(arg)
    escaped = re.sub(r'(["\\`])', r"\\\1", arg)
    escaped = re.sub(r"\$(?!\{[A-Z][A-Z0-9_]*\})", r"\\$", escaped)
    return f'"{escaped}"'


def shell_command(argv: Sequence[str]) -> str:
    return " ".join(shell_arg(a) for a in argv)


def render_step(step: Step) -> str:
    """The bash line equivalent to what :func:`run_plan` does for ``step``."""
    if step.local is not None:
        return step.local.shell()
    cmd = shell_command(step.argv)
    if step.capture:
        if step.lowercase:
            cmd += " | tr '[:upper:]' '[:lower:]'"
        return f"{step.capture}=$({cmd})"
    if step.check is None:
        return cmd
    check = shell_command(step.check) + " >/dev/null 2>&1"
    if step.update is not None:
        return f"if {check}; then {shell_command(step.update)}; else {cmd}; fi"
    return f"{check} || {cmd}"


def render_plan(plan: Plan) -> str:
    """The whole plan as a bash script: ``#`` comments, one command per line."""
    lines = [
        "#!/usr/bin/env bash",
        f"# Deployment plan for project {plan.project}, region {plan.region}, from {plan.config_path}",
        "# (printed by python -m deploy.deploy --dry-run; nothing was run).",
        "# Safe to run twice: creates run only when describe fails; deploys and IAM bindings converge.",
    ]
    lines += [f"# WARNING: {w}" for w in plan.warnings]
    lines.append("set -euo pipefail")
    for step in plan.steps:
        lines.append(f"# {step.comment}")
        lines.append(render_step(step))
    return "\n".join(lines) + "\n"
