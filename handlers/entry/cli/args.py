"""What every command shares: exit codes, usage errors, argument types, loading the config and a runtime."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handlers.core.errors import (
    EventError,
)
from handlers.core.times import parse_time
from handlers.model.config import CONFIG_ENV, DEFAULT_CONFIG, Config, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command line the tool cannot act on (exit 2); ``hint`` says what to do instead."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Missing(UsageError):
    """Something named on the command line does not exist (exit 1, reported as a NotFound)."""

    type_name = "NotFound"


# ---------------------------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------------------------
def key_value(text: str) -> tuple[str, str]:
    """``k=v`` -> ``("k", "v")`` (argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _time_arg(text: str) -> dt.datetime:
    try:
        parsed = parse_time(text, "--time")
    except EventError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc
    if parsed is None:
        raise argparse.ArgumentTypeError("--time needs an RFC 3339 timestamp")
    return parsed


def _read_arg(value: str, what: str) -> bytes:
    """``@file`` / ``@-`` (stdin) / literal text."""
    if value == "@-" or value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"{what}: cannot read {value[1:]}: {exc.strerror or exc}") from exc
    return value.encode()


def config_path(explicit: str | None) -> str:
    """The config a command reads (``explicit``, else ``$PIPELINES_CONFIG``, else pipelines.yaml);
    a UsageError saying where the name came from and what to do when there is no such file."""
    env = os.environ.get(CONFIG_ENV)
    path = explicit or env or DEFAULT_CONFIG
    if Path(path).exists():
        return path
    if explicit:
        raise UsageError(f"config file {path} does not exist")
    if env:
        raise UsageError(
            f"{CONFIG_ENV}={path} does not exist",
            hint="the local stack that printed it has stopped? start `make up` again and paste its export lines",
        )
    raise UsageError(
        f"no config: {DEFAULT_CONFIG} is not in {Path.cwd()}",
        hint=f"pass --config FILE (e.g. --config examples/pipelines.yaml), or set {CONFIG_ENV} "
        "(`make up` prints it)",
    )


def _load(args: argparse.Namespace) -> Config:
    return load_config(config_path(getattr(args, "config", None)))


def _runtime(config: Config) -> Any:
    # Only the commands that read the ledger or call a backend load the launch stack.
    from handlers.launch.runtime import make_runtime

    return make_runtime(config)


def _age(created: str | None, now: dt.datetime) -> tuple[str, float | None]:
    """Human age (``45s``, ``3m``, ``2h``, ``5d``) and seconds since ``created``."""
    when = parse_time(created) if created else None
    if when is None:
        return "-", None
    seconds = max(0.0, (now - when).total_seconds())
    return _human_seconds(seconds), seconds


def _human_seconds(seconds: float) -> str:
    """``45s``, ``3m``, ``2h``, ``5d``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _kv(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(mapping.items()))
