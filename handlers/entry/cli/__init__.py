"""The command line for data engineers: ``python -m handlers COMMAND [options]``.

::

    validate [CONFIG]          check a routing config; list every problem
    explain  --bucket/--topic/--completion ...
                               which triggers an event matches, why the others do not, and what each
                               match would launch (run key, job name, labels, parameters, outputs);
                               reads the config only: no ledger, no backend, no network
    runs                       the runs in the ledger, newest first (--active: the active index only)
    launch   PIPELINE          start a run by hand through :mod:`handlers.entry.manual` (idempotent); --wait
    cancel   RUN_KEY           ask the backend to stop a run's job
    sync     [--dry-run]       create or update the pipelines whose definitions are kept in the repo
    graph                      the config as a Mermaid ``flowchart LR`` (or nodes/edges with --json)

Every command takes ``--config FILE`` (default ``$PIPELINES_CONFIG``, else ``pipelines.yaml``) and
``--json`` (one JSON document on stdout, also for errors). Human output goes to stdout in aligned
columns, coloured only when stdout is a terminal and ``NO_COLOR`` is unset; progress and, with
``--verbose``, the services' structured logs go to stderr.

Exit codes: ``0`` success, ``1`` a failure or something not found (including "no trigger would
launch" for ``explain`` and "did not succeed" for ``launch --wait``), ``2`` a usage error or an
invalid config. ``docs/cli.md`` is the user guide.

This module is a thin shell: matching comes from :mod:`handlers.route.match`, run keys and rendering
from :mod:`handlers.route.render`, chaining from :mod:`handlers.follow.completion` / :mod:`handlers.follow.chaining`,
and launch/status/cancel from :mod:`handlers.entry.manual` (shared with the REST API).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO, cast

from handlers.backends.contract import RunState
from handlers.core import logs
from handlers.core.errors import ConfigError, NotFound, ParameterError, PipelineError
from handlers.entry.cli.args import EXIT_FAILURE, EXIT_USAGE, Missing, UsageError, _time_arg, key_value
from handlers.entry.cli.explain import cmd_explain, explain_object
from handlers.entry.cli.graph import cmd_graph, graph_mermaid
from handlers.entry.cli.launch import cmd_cancel, cmd_launch
from handlers.entry.cli.output import Output, _isatty, clean
from handlers.entry.cli.runs import DEFAULT_RUNS_LIMIT, cmd_runs
from handlers.entry.cli.sync import cmd_sync
from handlers.entry.cli.validate import cmd_validate

__all__ = ["explain_object", "graph_mermaid", "main"]


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="routing config (default: $PIPELINES_CONFIG, else pipelines.yaml)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the services' structured logs on stderr",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="python -m handlers",
        description="Inspect, explain and operate the event-driven pipeline launcher.",
        epilog="exit codes: 0 ok, 1 failure or not found, 2 usage error or invalid config. See docs/cli.md.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", parents=[common], help="check a routing config, listing every problem")
    p.add_argument("file", nargs="?", metavar="CONFIG", help="the config to check (default: --config)")
    p.add_argument(
        "--online",
        action="store_true",
        help="also ask the backends (names resolve, parameters match what the pipelines declare)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "explain",
        parents=[common],
        help="which triggers an event matches and what they would launch (no side effects)",
        description="Explain an event against every trigger of its kind. Reads the config only: "
        "no ledger, no backend, no network.",
    )
    src = p.add_argument_group("event (one of)")
    src.add_argument("--bucket", help="storage event: the bucket")
    src.add_argument("--topic", help="pubsub event: the topic (name or projects/P/topics/T)")
    src.add_argument("--completion", metavar="FILE|JSON", help="a completion CloudEvent (JSON, a file, or -)")
    obj = p.add_argument_group("storage event")
    obj.add_argument("--name", help="the object name")
    obj.add_argument("--size", type=int, help="bytes (default 0)")
    obj.add_argument("--content-type", help="default: guessed from the name")
    obj.add_argument("--generation", type=int, help="default: the event time in microseconds, like GCS")
    obj.add_argument("--metadata", type=key_value, action="append", metavar="K=V", help="custom metadata")
    msg = p.add_argument_group("pubsub event")
    msg.add_argument("--data", metavar="TEXT|@FILE", help="message data (@file, @- for stdin)")
    msg.add_argument("--attribute", type=key_value, action="append", metavar="K=V", help="message attribute")
    msg.add_argument("--message-id", help="default: derived from topic, data and attributes")
    p.add_argument("--time", type=_time_arg, help="event time, RFC 3339 (default: now)")
    p.add_argument("--event-id", help="the CloudEvent id (default: as the function derives it)")
    p.add_argument(
        "--no-ledger",
        action="store_true",
        help="batch: triggers: do not read the ledger for the window the object would join",
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("runs", parents=[common], help="list runs from the ledger, newest first")
    p.add_argument("--pipeline", help="only this pipeline")
    p.add_argument(
        "--state",
        type=str.upper,
        choices=[str(s) for s in RunState],
        metavar="STATE",
        help="only this state (" + ", ".join(str(s) for s in RunState) + ")",
    )
    p.add_argument("--active", action="store_true", help="only runs in the active index (cheap)")
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_RUNS_LIMIT,
        help=f"at most N (default {DEFAULT_RUNS_LIMIT}; 0: all)",
    )
    p.add_argument("--progress", action="store_true", help="report reading progress on stderr")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("launch", parents=[common], help="start a run by hand (idempotent)")
    p.add_argument("pipeline", metavar="PIPELINE")
    p.add_argument("--param", type=key_value, action="append", metavar="K=V", help="a declared input")
    p.add_argument("--idempotency-key", metavar="K", help="same key, same run (default: a new uuid, printed)")
    p.add_argument(
        "--wait", action="store_true", help="follow the run until it ends; exit 0 only on SUCCEEDED"
    )
    p.add_argument(
        "--interval", type=float, default=5.0, help="seconds between polls with --wait (default 5)"
    )
    p.add_argument("--timeout", type=float, help="stop waiting after this many seconds (exit 1)")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser(
        "sync",
        parents=[common],
        help="create or update the pipelines whose definitions are kept in the repo",
        description="Plan, for every pipeline with a definition in the repo, create / update / "
        "unchanged (with what differs), and apply it unless --dry-run.",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("cancel", parents=[common], help="ask the backend to stop a run's job")
    p.add_argument("run_key", metavar="RUN_KEY")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "graph", parents=[common], help="the config as a Mermaid flowchart (--json: nodes/edges)"
    )
    p.set_defaults(func=cmd_graph)
    return parser


LOCAL_STACK_HINT = "for the local stack, paste the export lines `make up` prints"


def _caused_by(exc: BaseException, names: tuple[str, ...]) -> bool:
    """Whether ``exc`` or an exception it was raised from is one of the classes ``names``."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in names:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _problem_and_hint(exc: BaseException) -> tuple[str, str | None]:
    """What went wrong, said once, and what to do about it (None when the message says it all)."""
    message = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", None)
    if _caused_by(exc, ("DefaultCredentialsError",)):
        # google-auth's own text points at cloud docs only; say it once, with both ways out.
        message = "no Google credentials (Application Default Credentials) were found"
        hint = (
            f"{LOCAL_STACK_HINT} (they set PIPELINES_ANONYMOUS_AUTH=true); "
            "for Google Cloud run `gcloud auth application-default login`"
        )
    elif _caused_by(exc, ("ConnectionError", "ConnectTimeout")):
        if any(k.endswith("_EMULATOR_HOST") and "127.0.0.1" in v for k, v in os.environ.items()):
            hint = "is the local stack still running? start `make up` again and paste its new export lines (its ports change each time)"
    return message, hint


def _report_error(out: Output, exc: BaseException, code: int) -> int:
    message, hint = _problem_and_hint(exc)
    doc: dict[str, Any] = {"type": getattr(exc, "type_name", type(exc).__name__), "message": message}
    if hint:
        doc["hint"] = hint
    if isinstance(exc, ConfigError):
        doc.update(source=exc.source, problems=exc.problems)
    problems = getattr(exc, "problems", None)
    if isinstance(problems, dict):
        doc["problems"] = [f"{k}: {v}" for k, v in problems.items()]
    if isinstance(exc, PipelineError) and exc.run_key:
        doc["run_key"] = exc.run_key
    if isinstance(exc, PipelineError):
        doc["retryable"] = exc.retryable
    if out.json:
        out.emit({"error": doc, "exit_code": code})
        return code
    if isinstance(exc, ConfigError):
        n = len(exc.problems)
        out.line(f"{clean(exc.source)}: {out.paint('INVALID', 'red')}: {n} problem{'' if n == 1 else 's'}")
        for problem in exc.problems:
            out.line(f"  {clean(problem)}")
        return code
    out.note(f"error: {clean(doc['message'])}")
    for problem in doc.get("problems") or []:
        out.note(f"  {clean(problem)}")
    if hint:
        out.note(f"  what to do: {clean(hint)}")
    return code


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run one command; returns the exit code (never raises for expected failures)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    colour = _isatty(stdout) and not os.environ.get("NO_COLOR")
    out = Output(as_json=bool(getattr(args, "json", False)), stdout=stdout, stderr=stderr, colour=colour)
    previous = getattr(logs, "_stream", None)
    logs.set_stream(stderr if getattr(args, "verbose", False) else cast(TextIO, _Discard()))
    try:
        return int(args.func(args, out))
    except ConfigError as exc:
        return _report_error(out, exc, EXIT_USAGE)
    except Missing as exc:
        return _report_error(out, exc, EXIT_FAILURE)
    except UsageError as exc:
        return _report_error(out, exc, EXIT_USAGE)
    except ParameterError as exc:  # includes manual.InvalidRequest: bad --param values
        return _report_error(out, exc, EXIT_USAGE)
    except (NotFound, PipelineError) as exc:
        return _report_error(out, exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        out.note("interrupted")
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; stop quietly
        _silence(stdout)
        return EXIT_FAILURE
    except Exception as exc:
        # A Google API or HTTP error the services let through (a missing ledger bucket lists as
        # 404): report it as a failure; anything else is a bug and keeps its traceback.
        if not exc.__class__.__module__.startswith(("google.", "requests", "urllib3")):
            raise
        return _report_error(out, exc, EXIT_FAILURE)
    finally:
        logs.set_stream(previous)
        try:
            stdout.flush()
        except BrokenPipeError:
            _silence(stdout)


def _silence(stream: TextIO) -> None:
    """Point a closed pipe's file descriptor at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        pass


class _Discard:
    """A write-only sink for log lines nobody asked to see."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


__all__ = ["explain_completion", "explain_message", "explain_object", "graph_mermaid", "graph_model", "main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
