"""The plan, section by section, in the order the cloud needs them: warnings, APIs, look-ups,
ledger, topics, accounts, IAM, sync (pipelines kept in the repo), functions, invokers, scheduler,
dead letters."""

from __future__ import annotations

from deploy import backends
from deploy.accounts import section_event_iam, section_runtime_iam, section_service_accounts
from deploy.context import Deployment
from deploy.functions import (
    section_dead_letters,
    section_functions,
    section_invokers,
    section_scheduler,
)
from deploy.ledger import section_ledger
from deploy.names import shell_var
from deploy.options import DeployOptions, check_options
from deploy.plan import Plan, PlanError
from deploy.topics import section_topics
from handlers.model.config import Config

BASE_APIS = (
    "cloudfunctions",
    "run",
    "eventarc",
    "pubsub",
    "storage",
    "cloudscheduler",
    "cloudbuild",
    "artifactregistry",
    "iam",
)
SECRETS_API = "secretmanager.googleapis.com"


def build_plan(cfg: Config, opts: DeployOptions) -> Plan:
    """The ordered deployment plan for ``cfg``; raises :class:`PlanError` listing every misfit."""
    problems = check_options(cfg, opts)
    if problems:
        raise PlanError(problems)
    d = Deployment(cfg, opts)
    for section in (
        section_warnings,
        section_apis,
        section_lookups,
        section_ledger,
        section_topics,
        section_service_accounts,
        section_runtime_iam,
        section_event_iam,
        section_sync,
        section_functions,
        section_invokers,
        section_scheduler,
        section_dead_letters,
    ):
        section(d)
    return d.plan


def apis(d: Deployment) -> list[str]:
    """The base services, the backends' and Secret Manager's when secrets are mounted."""
    out = [f"{a}.googleapis.com" for a in BASE_APIS] + backends.apis(d.cfg)
    return out + ([SECRETS_API] if d.secrets else [])


def section_warnings(d: Deployment) -> None:
    if not d.cfg.settings.completion_topic:
        d.plan.warnings.append(
            f"settings.completion_topic is not set: topic '{d.completion_topic}' is created, but the "
            "functions publish no completion events until the config names it"
        )
    d.plan.warnings.extend(backends.warnings(d.cfg, d.backend_ctx))


def section_sync(d: Deployment) -> None:
    """Pipelines kept as code (a ``definition`` option) are created or updated in their backends
    before the functions that launch them are deployed (``python -m handlers sync``; it needs the
    backends' credentials in the deployer's environment, as for a launch by hand)."""
    if any(p.options.get("definition") for p in d.cfg.pipelines.values()):
        d.add(
            ["python", "-m", "handlers", "sync", "--config", d.o.config_path],
            "pipelines kept in the repo: create or update them in their backends (sync)",
        )


def section_apis(d: Deployment) -> None:
    d.add(
        ["gcloud", "services", "enable", *apis(d), f"--project={d.p}"],
        "APIs the functions, their triggers, the build and the configured backends need",
    )


def section_lookups(d: Deployment) -> None:
    d.add(
        ["gcloud", "projects", "describe", d.p, "--format=value(projectNumber)"],
        "the project number names the Pub/Sub service agent (and default accounts backends run as)",
        capture="PROJECT_NUMBER",
    )
    if not d.buckets:
        return
    d.add(
        ["gcloud", "storage", "service-agent", f"--project={d.p}"],
        "the Cloud Storage service agent publishes the bucket events Eventarc delivers",
        capture="GCS_SERVICE_AGENT",
    )
    for bucket in d.buckets:
        if bucket in d.o.bucket_locations:
            continue
        d.add(
            ["gcloud", "storage", "buckets", "describe", f"gs://{bucket}", "--format=value(location)"],
            f"an Eventarc storage trigger lives in its bucket's location (gs://{bucket})",
            capture=shell_var("BUCKET_LOCATION", bucket),
            lowercase=True,
        )
