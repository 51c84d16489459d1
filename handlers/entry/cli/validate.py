"""``validate``: check a routing config and list every problem."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

from handlers.backends import registry
from handlers.backends.contract import OnlineCheckable
from handlers.core.errors import ConfigError
from handlers.entry.cli.args import EXIT_OK, config_path
from handlers.entry.cli.output import Output, clean
from handlers.entry.cli.sync import configured
from handlers.model.config import Config, load_config


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
def summarize(config: Config) -> dict[str, Any]:
    """Counts of pipelines (by backend) and triggers (by kind; fan-ins counted apart)."""
    kinds: dict[str, int] = {}
    for trig in config.triggers.values():
        kind = "fan-in" if trig.scope == "fanin" else trig.kind
        kinds[kind] = kinds.get(kind, 0) + 1
    backends: dict[str, int] = {}
    for p in config.pipelines.values():
        backends[p.backend] = backends.get(p.backend, 0) + 1
    return {
        "pipelines": len(config.pipelines),
        "triggers": len(config.triggers),
        "triggers_by_kind": dict(sorted(kinds.items())),
        "pipelines_by_backend": dict(sorted(backends.items())),
    }


def check_definitions(config: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the pipelines kept as code: each backend that declares a
    ``check_definition`` reads the definition files (beside the config) offline."""
    base_dir = str(Path(config.source).parent)
    errors: list[str] = []
    warnings: list[str] = []
    for pipeline in config.pipelines.values():
        check = registry.spec(pipeline.backend).check_definition
        if check is not None:
            found, warned = check(pipeline, tuple(pipeline.parameters), base_dir)
            errors += found
            warnings += warned
    return errors, warnings


def online_problems(config: Config) -> list[str]:
    """What only the backends can tell (``validate --online``): each pipeline whose backend is
    :class:`~handlers.backends.contract.OnlineCheckable` is checked with its configured parameters
    (literal values, or ``None`` for those rendered from an event)."""
    problems: list[str] = []
    built: dict[str, Any] = {}
    for pipeline in sorted(config.pipelines.values(), key=lambda p: p.name):
        if pipeline.backend not in built:
            built[pipeline.backend] = registry.spec(pipeline.backend).build()
        check = getattr(built[pipeline.backend], "check_online", None)
        if not callable(check):
            continue
        problems.extend(
            cast(OnlineCheckable, built[pipeline.backend]).check_online(pipeline, configured(pipeline))
        )
    return problems


def cmd_validate(args: argparse.Namespace, out: Output) -> int:
    path = config_path(args.file or getattr(args, "config", None))
    config = load_config(path)  # a ConfigError is reported by main() with every problem
    errors, warnings = check_definitions(config)
    if errors:
        raise ConfigError(errors + [f"warning: {w}" for w in warnings], source=config.source)
    if getattr(args, "online", False):
        problems = online_problems(config)
        if problems:
            raise ConfigError(problems, source=f"{config.source} (online)")
    summary = summarize(config)
    if out.json:
        out.emit({"valid": True, "source": config.source, **summary, "warnings": warnings})
        return EXIT_OK
    for warning in warnings:
        out.line(f"{clean(config.source)}: {out.paint('warning', 'yellow')}: {clean(warning)}")
    by_kind = ", ".join(f"{n} {k}" for k, n in summary["triggers_by_kind"].items())
    out.line(
        f"{clean(config.source)}: {out.paint('OK', 'green')}: {summary['pipelines']} pipeline"
        f"{'' if summary['pipelines'] == 1 else 's'}, {summary['triggers']} trigger"
        f"{'' if summary['triggers'] == 1 else 's'}" + (f" ({by_kind})" if by_kind else "")
    )
    return EXIT_OK
