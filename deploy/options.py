"""The deploy's options: :class:`DeployOptions`, the command line that fills them, and the checks
that they fit the config.

Backend-specific flags are not written here: each backend declares its own
(:class:`~handlers.backends.contract.DeployFlag`, read through :mod:`deploy.backends`) and their
values reach the backends' declarations as ``DeployOptions.flags``.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import backends
from deploy.names import topic_project
from deploy.plan import SOURCE_ITEMS
from handlers.model.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
# How long the platform keeps retrying one event (events.md: --retry retries for up to 24 h).
RETRY_WINDOW_SECONDS = 86400
MEMBER_PREFIXES = ("user:", "group:", "serviceAccount:", "domain:", "principal:", "principalSet:")


@dataclass(frozen=True)
class DeployOptions:
    """Everything the plan needs besides the config (the CLI flags, resolved)."""

    project: str
    region: str
    config_path: str
    source: str = str(REPO_ROOT)
    build_dir: str = ""
    runtime_sa_name: str = "pipelines-runtime"
    trigger_sa_name: str = "pipelines-trigger"
    api_invokers: tuple[str, ...] = ()
    include_api: bool = True
    create_user_topics: bool = True
    dead_letter_topic: str = "pipeline-dead-letters"
    sweep_topic: str = "pipeline-sweep"
    sweep_schedule: str = "* * * * *"
    scheduler_job: str = "pipeline-sweep"
    max_delivery_attempts: int = 20
    ledger_retention_days: int = 30
    ledger_location: str | None = None
    bucket_locations: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)  # ENV -> SECRET[:VERSION]
    env: Mapping[str, str] = field(default_factory=dict)
    memory: str = "512Mi"
    timeout: str = "300s"
    max_instances: int | None = None
    build_service_account: str | None = None
    pubsub_token_creator: bool = False
    flags: Mapping[str, Any] = field(default_factory=dict)  # the backends' own flags, by dest

    @property
    def stage_dir(self) -> str:
        return f"{self.build_dir or default_build_dir(self.project)}/source"

    @property
    def lifecycle_file(self) -> str:
        return f"{self.build_dir or default_build_dir(self.project)}/ledger-lifecycle.json"

    @property
    def completion_policy_file(self) -> str:
        return f"{self.build_dir or default_build_dir(self.project)}/completion-topic-policy.json"


def default_build_dir(project: str) -> str:
    return f"{tempfile.gettempdir()}/event-pipelines-deploy/{project}"


def check_options(cfg: Config, opts: DeployOptions) -> list[str]:
    """Every reason the options do not fit this config (empty when they do)."""
    problems: list[str] = []
    s = cfg.settings
    if s.project != opts.project:
        problems.append(
            f"--project {opts.project} differs from settings.project {s.project} in the config: the functions "
            "would keep runs and publish completions for the config's project"
        )
    if s.completion_topic and topic_project(s.completion_topic, opts.project) != opts.project:
        problems.append(
            f"settings.completion_topic {s.completion_topic} must be in project {opts.project} (Eventarc triggers on it)"
        )
    if not 5 <= opts.max_delivery_attempts <= 100:
        problems.append(
            f"--max-delivery-attempts must be between 5 and 100 (Pub/Sub's limits), got {opts.max_delivery_attempts}"
        )
    days = opts.ledger_retention_days
    keep = RETRY_WINDOW_SECONDS + s.max_event_age_seconds
    if days < 0 or (days > 0 and days * 86400 <= keep):
        problems.append(
            f"--ledger-retention-days {days} would delete run records of events that can still be redelivered "
            f"(retries for 24 h + max_event_age): use 0 (keep forever) or more than {keep / 86400:.2f} days"
        )
    for member in opts.api_invokers:
        if member in ("allUsers", "allAuthenticatedUsers") or not member.startswith(MEMBER_PREFIXES):
            problems.append(
                f"--api-invoker {member!r}: the api is authenticated only; give a principal like "
                "user:a@example.com, group:..., serviceAccount:..."
            )
    if opts.api_invokers and not opts.include_api:
        problems.append("--api-invoker makes no sense with --no-api")
    for key in opts.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            problems.append(f"--env {key!r}: not an environment variable name")
    problems += _source_problems(opts)
    ctx = backends.context(opts.project, opts.flags)
    problems += backends.problems(cfg, ctx, opts.env, opts.secrets)
    return problems


def _source_problems(opts: DeployOptions) -> list[str]:
    src = Path(opts.source)
    problems = [f"--source {src}: no {item} there" for item in SOURCE_ITEMS if not (src / item).exists()]
    main = src / "main.py"
    if (
        opts.include_api
        and main.is_file()
        and not re.search(r"^def api\(", main.read_text(encoding="utf-8"), re.M)
    ):
        problems.append(f"{main} defines no `api` entry point yet: deploy with --no-api until it does")
    return problems


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _add_backend_flags(ap: argparse.ArgumentParser) -> None:
    """The flags the backends declare: a switch, a value, or a hidden alias of a repeatable
    ``KEY=VALUE`` flag of the deploy (an older spelling kept working)."""
    for f in backends.flags():
        if f.alias:
            ap.add_argument(f.flag, dest=f.dest, action="append", type=_pair, help=argparse.SUPPRESS)
        elif f.boolean:
            ap.add_argument(f.flag, dest=f.dest, action="store_true", help=f.help)
        else:
            ap.add_argument(f.flag, dest=f.dest, metavar=f.metavar, help=f.help)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m deploy.deploy",
        description="Deploy the event pipeline functions, their triggers and IAM with gcloud, from the routing config.",
    )
    ap.add_argument("--config", required=True, help="the routing YAML (deployed as pipelines.yaml)")
    ap.add_argument("--project", help="target project (default: settings.project of the config)")
    ap.add_argument("--region", help="functions' region (default: settings.region of the config)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument(
        "--terraform-vars",
        metavar="FILE",
        help="write the backends' APIs, grants, secrets and status triggers as Terraform variables "
        "(JSON, a .tfvars.json file) and run nothing",
    )
    ap.add_argument(
        "--source", default=str(REPO_ROOT), help="directory with main.py, handlers/, requirements.txt"
    )
    ap.add_argument(
        "--build-dir", default="", help="where the source is staged (default: a temp dir per project)"
    )
    ap.add_argument(
        "--api-invoker",
        action="append",
        default=[],
        metavar="MEMBER",
        help="principal allowed to call the api (repeatable)",
    )
    ap.add_argument("--no-api", action="store_true", help="do not deploy the HTTP api function")
    ap.add_argument(
        "--secret",
        action="append",
        default=[],
        type=_pair,
        metavar="ENV=SECRET[:VERSION]",
        help="Secret Manager secret mounted as ENV (repeatable; default for a credential: its name in kebab case)",
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        type=_pair,
        metavar="KEY=VALUE",
        help="extra plain env var for every function (repeatable)",
    )
    ap.add_argument(
        "--bucket-location",
        action="append",
        default=[],
        type=_pair,
        metavar="BUCKET=LOCATION",
        help="skip looking up a trigger bucket's location",
    )
    ap.add_argument(
        "--no-create-topics",
        action="store_true",
        help="do not create pubsub-trigger topics (they must exist)",
    )
    ap.add_argument("--runtime-sa-name", default="pipelines-runtime")
    ap.add_argument("--trigger-sa-name", default="pipelines-trigger")
    ap.add_argument("--dead-letter-topic", default="pipeline-dead-letters")
    ap.add_argument("--sweep-topic", default="pipeline-sweep")
    ap.add_argument("--sweep-schedule", default="* * * * *")
    ap.add_argument("--scheduler-job", default="pipeline-sweep")
    ap.add_argument("--max-delivery-attempts", type=int, default=20)
    ap.add_argument("--ledger-retention-days", type=int, default=30, help="0 keeps run records forever")
    ap.add_argument("--ledger-location", help="ledger bucket location (default: --region)")
    ap.add_argument("--memory", default="512Mi")
    ap.add_argument("--timeout", default="300s")
    ap.add_argument("--max-instances", type=int)
    ap.add_argument("--build-service-account", help="projects/P/serviceAccounts/EMAIL used by Cloud Build")
    ap.add_argument(
        "--pubsub-token-creator",
        action="store_true",
        help="Pub/Sub agent older than 2021-04-08: token creator on the trigger account",
    )
    _add_backend_flags(ap)
    return ap.parse_args(argv)


def options_from_args(args: argparse.Namespace, cfg: Config) -> DeployOptions:
    project = args.project or cfg.settings.project
    return DeployOptions(
        project=project,
        region=args.region or cfg.settings.region,
        config_path=str(Path(args.config).resolve()),
        source=str(Path(args.source).resolve()),
        build_dir=args.build_dir or default_build_dir(project),
        runtime_sa_name=args.runtime_sa_name,
        trigger_sa_name=args.trigger_sa_name,
        api_invokers=tuple(args.api_invoker),
        include_api=not args.no_api,
        create_user_topics=not args.no_create_topics,
        dead_letter_topic=args.dead_letter_topic,
        sweep_topic=args.sweep_topic,
        sweep_schedule=args.sweep_schedule,
        scheduler_job=args.scheduler_job,
        max_delivery_attempts=args.max_delivery_attempts,
        ledger_retention_days=args.ledger_retention_days,
        ledger_location=args.ledger_location,
        bucket_locations=dict(args.bucket_location),
        secrets=dict(args.secret),
        env=dict(args.env),
        memory=args.memory,
        timeout=args.timeout,
        max_instances=args.max_instances,
        build_service_account=args.build_service_account,
        pubsub_token_creator=args.pubsub_token_creator,
        flags={f.dest: getattr(args, f.dest) for f in backends.flags() if not f.alias},
    )
