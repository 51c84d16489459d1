"""Deploy the event pipelines to Google Cloud with gcloud, derived from the routing config.

Usage::

    python -m deploy.deploy --config pipelines.yaml [--project P] [--region R] [--dry-run]
        [--terraform-vars FILE] [--source DIR] [--build-dir DIR] [--api-invoker MEMBER ...]
        [--no-api] [--secret ENV=SECRET[:VERSION] ...] [--env KEY=VALUE ...]
        [--bucket-location BUCKET=LOCATION ...] [--no-create-topics] [--max-delivery-attempts N]
        [--ledger-retention-days N] [--pubsub-token-creator] [the backends' own flags] ...

The config is validated first (:func:`handlers.model.config.load_config`); an invalid config, or options
that do not fit it, exit 2 listing every problem. Then a :class:`~deploy.plan.Plan` is built
(:func:`deploy.build.build_plan`): an ordered list of steps (an argv list plus a human comment).
``--dry-run`` prints the plan as a bash script and runs nothing; ``--terraform-vars FILE`` writes
what the configured backends need as Terraform variables (:mod:`deploy.tfvars`) and runs nothing;
otherwise each step runs with :mod:`subprocess` and the first real failure stops the deploy with
the step, the command and gcloud's error (exit 1).

What the plan creates, in order (``docs/deploy.md`` explains every choice and role)::

    APIs           cloudfunctions run eventarc pubsub storage cloudscheduler cloudbuild artifactregistry
                   iam (+ the configured backends' APIs, secretmanager when secrets are mounted)
    bucket         the run ledger (deploy/ledger.py)
    topics         completion, dead-letter (+ a subscription keeping dead letters 7 days), sweep,
                   every pubsub-trigger topic unless --no-create-topics (deploy/topics.py)
    accounts       pipelines-runtime and pipelines-trigger, each role on the narrowest resource
                   (deploy/accounts.py, deploy/iam.py; backends' grants from deploy/backends.py)
    functions      triggers, invokers, the scheduler and dead letters (deploy/functions.py)

Idempotent: creates run only when ``describe`` fails and tolerate an ALREADY_EXISTS race;
deploys, ``services enable`` and ``add-iam-policy-binding`` converge by themselves. Values only
known in the cloud are captured from a ``describe`` step (``NAME=$(gcloud ...)``) and used as
``${NAME}`` by later steps.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from deploy import tfvars
from deploy.build import build_plan
from deploy.options import options_from_args, parse_args
from deploy.plan import PlanError
from deploy.render import render_plan
from deploy.run import Executor, StepFailed, SubprocessExecutor, run_plan
from handlers.core.errors import ConfigError
from handlers.model.config import Config, load_config


def _load(args: argparse.Namespace) -> Config:
    """Load the config; a config without settings.project takes --project (as the functions will)."""
    if args.project and not os.environ.get("GOOGLE_CLOUD_PROJECT"):
        os.environ["GOOGLE_CLOUD_PROJECT"] = args.project
    return load_config(args.config)


def _print_problems(title: str, problems: Sequence[str]) -> None:
    print(f"error: {title} ({len(problems)} problem(s)):", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, executor: Executor | None = None) -> int:
    """CLI entry point: 0 deployed (or printed), 1 a step failed, 2 invalid config or options."""
    args = parse_args(argv)
    try:
        cfg = _load(args)
    except ConfigError as exc:
        _print_problems(f"{args.config} is not a valid routing config", exc.problems)
        return 2
    opts = options_from_args(args, cfg)
    try:
        plan = build_plan(cfg, opts)
    except PlanError as exc:
        _print_problems(f"cannot deploy {args.config}", exc.problems)
        return 2
    if args.terraform_vars:
        tfvars.write(args.terraform_vars, cfg, opts)
        print(f"wrote {args.terraform_vars}")
        return 0
    if args.dry_run:
        sys.stdout.write(render_plan(plan))
        return 0
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    try:
        run_plan(plan, executor or SubprocessExecutor())
    except StepFailed as exc:
        print(f"error: deploy stopped.\n{exc}", file=sys.stderr)
        print(
            "Fix the cause and run the same command again: finished steps are skipped or converge.",
            file=sys.stderr,
        )
        return 1
    print(f"deployed {len(plan.functions)} functions to {plan.project}/{plan.region}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
