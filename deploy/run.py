"""Running the plan: each step in order through an :class:`Executor`, creates only when their
``describe`` fails, captured values substituted into later steps, and the first real failure
stopping the deploy with the step, the command and gcloud's error."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from deploy.plan import Plan, Step
from deploy.render import VAR_RE, shell_command

# gcloud has no machine-readable error codes on its command line: a create that lost a race with
# another deploy is recognised by these markers (only ever after `describe` said "absent").
ALREADY_EXISTS_MARKERS = ("ALREADY_EXISTS", "already exists")
# gcloud exits 2 when it rejects the command line itself (its argparse parser: unrecognized
# arguments, an invalid choice, a missing required flag) and 1 for every error of the call. A
# usage error ran nothing and no retry can change it, so it stops the deploy at once.
USAGE_ERROR = 2


@dataclass(frozen=True)
class Result:
    """What one command did."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Executor(Protocol):
    """Runs one argv (tests hand in a fake that records it)."""

    def run(self, argv: Sequence[str]) -> Result: ...


class SubprocessExecutor:
    """Runs commands for real, capturing their output."""

    def run(self, argv: Sequence[str]) -> Result:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            return Result(127, "", f"{argv[0]}: not found ({exc})")
        return Result(done.returncode, done.stdout, done.stderr)


class StepFailed(Exception):
    """A step failed for real; the message names the step, the command and gcloud's error."""

    def __init__(self, index: int, step: Step, argv: Sequence[str], result: Result, why: str = "") -> None:
        self.step = step
        self.result = result
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        super().__init__(
            f"step {index} failed: {step.comment}\n  command: {shell_command(argv)}\n"
            f"  exit code: {result.returncode}{(' (' + why + ')') if why else ''}\n  output:\n{tail}"
        )


def _substitute(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    def one(arg: str) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(1) not in values:
                raise KeyError(m.group(1))
            return values[m.group(1)]

        return VAR_RE.sub(repl, arg)

    return [one(a) for a in argv]


def _already_exists(result: Result) -> bool:
    text = f"{result.stderr}\n{result.stdout}"
    return any(marker in text for marker in ALREADY_EXISTS_MARKERS)


def run_plan(
    plan: Plan,
    executor: Executor,
    *,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    retry_delay: float = 10.0,
) -> dict[str, str]:
    """Run every step in order; stop at the first real failure (:class:`StepFailed`).

    Returns the captured values (project number, subscriptions...).
    """
    values: dict[str, str] = {}
    total = len(plan.steps)
    for index, step in enumerate(plan.steps, 1):
        echo(f"[{index}/{total}] {step.comment}")
        if step.local is not None:
            step.local.apply()
            continue
        argv = _substitute(step.argv, values)
        if step.check is not None:
            if executor.run(_substitute(step.check, values)).ok:
                if step.update is None:
                    echo("  exists: nothing to create")
                    continue
                argv = _substitute(step.update, values)
        attempts = step.retries + 1
        for attempt in range(1, attempts + 1):
            result = executor.run(argv)
            if result.ok or result.returncode == USAGE_ERROR or attempt == attempts:
                break
            echo(
                f"  attempt {attempt} failed, retrying in {retry_delay:.0f}s (new accounts take a moment to appear)"
            )
            sleep(retry_delay)
        if result.returncode == USAGE_ERROR:
            raise StepFailed(index, step, argv, result, "gcloud rejected the command line: not retried")
        if not result.ok:
            if step.check is not None and _already_exists(result):
                echo("  already exists (created concurrently): fine")
                continue
            raise StepFailed(index, step, argv, result)
        if step.capture:
            value = result.stdout.strip()
            value = value.lower() if step.lowercase else value
            if not value:
                raise StepFailed(index, step, argv, result, "it printed nothing to capture")
            values[step.capture] = value
    return values
