"""Deploy the event pipelines to Google Cloud with gcloud, derived from the routing config.

Usage::

    python -m deploy.deploy --config pipelines.yaml [--project P] [--region R] [--dry-run]
        [--source DIR] [--build-dir DIR] [--api-invoker MEMBER ...] [--no-api]
        [--dataflow-worker-sa EMAIL] [--fabric-secret ENV=SECRET[:VERSION] ...] [--env KEY=VALUE ...]
        [--bucket-location BUCKET=LOCATION ...] [--no-create-topics] [--max-delivery-attempts N]
        [--ledger-retention-days N] [--datafusion-rbac] [--pubsub-token-creator] ...

The config is validated first (:func:`handlers.model.config.load_config`); an invalid config, or options
that do not fit it, exit 2 listing every problem. Then a :class:`Plan` is built: an ordered list of
:class:`Step` (an argv list plus a human comment). ``--dry-run`` prints the plan as a bash script
(``#`` comments, one shell-quoted command per line) and runs nothing; otherwise each step runs with
:mod:`subprocess` and the first real failure stops the deploy with the step, the command and
gcloud's error (exit 1).

What the plan creates, in order (``docs/deploy.md`` explains every choice and role)::

    APIs           cloudfunctions run eventarc pubsub storage cloudscheduler cloudbuild artifactregistry
                   iam (+ dataflow, datafusion, secretmanager when the config uses them)
    bucket         the run ledger: uniform access, public access prevention, no versioning,
                   a lifecycle rule deleting <prefix>runs/ records older than --ledger-retention-days
    topics         completion topic, dead-letter topic (+ a pull subscription keeping dead letters
                   7 days), sweep topic, every pubsub-trigger topic (unless --no-create-topics)
    accounts       pipelines-runtime (what the functions run as), pipelines-trigger (what Eventarc
                   delivers as)
    IAM            each role on the narrowest resource that works (see ``Binding.scope``)
    functions      one ``on_object_finalized`` per storage-trigger bucket, one ``on_message`` per
                   pubsub-trigger topic (+ the completion topic when a completion trigger exists),
                   ``on_job_status`` per Dataflow region, ``check_runs`` on the sweep topic, ``api``
                   (HTTP, authenticated only); every event function with ``--retry``
    scheduler      a Cloud Scheduler job publishing to the sweep topic every minute
    dead letters   each Eventarc subscription gets the dead-letter topic and a max delivery count

Idempotent: creates run only when ``describe`` fails (``describe || create``) and tolerate an
ALREADY_EXISTS race; ``gcloud functions deploy``, ``services enable`` and ``add-iam-policy-binding``
converge by themselves. Running the script twice changes nothing the second time.

Values only known in the cloud (the project number, the Cloud Storage service agent, a bucket's
location, the subscription Eventarc created for a function) are captured from a ``describe`` step
into a shell variable (``NAME=$(gcloud ...)``) and used as ``${NAME}`` by later steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from handlers.core.errors import ConfigError
from handlers.model.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME = "python311"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
DATAFLOW_STATUS_CHANGED = "google.cloud.dataflow.job.v1beta3.statusChanged"
DATAFLOW_BACKENDS = ("dataflow", "dataflow-flex")
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
DEFAULT_COMPLETION_TOPIC = "pipeline-completions"
CONFIG_IN_SOURCE = "pipelines.yaml"
# Staged into the function source: everything main.py imports, nothing else.
SOURCE_ITEMS = ("main.py", "requirements.txt", "handlers")
# Cloud Run service names (a 2nd gen function is one) are at most 49 characters.
MAX_SERVICE_NAME = 49
# How long the platform keeps retrying one event (events.md: --retry retries for up to 24 h).
RETRY_WINDOW_SECONDS = 86400
# gcloud has no machine-readable error codes on its command line: a create that lost a race with
# another deploy is recognised by these markers (only ever after `describe` said "absent").
ALREADY_EXISTS_MARKERS = ("ALREADY_EXISTS", "already exists")
MEMBER_PREFIXES = ("user:", "group:", "serviceAccount:", "domain:", "principal:", "principalSet:")
# Fabric credentials (handlers/backends/fabric/entra.py): <PREFIX>_TENANT_ID, _CLIENT_ID, _CLIENT_SECRET, _REFRESH_TOKEN.
FABRIC_DEFAULT_PREFIX = "FABRIC"
FABRIC_EXECUTE_JOB_TYPES = ("execute", "refresh")


# ---------------------------------------------------------------------------------------------
# The plan model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Binding:
    """One IAM grant: ``member`` gets ``role`` on ``resource`` (of kind ``scope``), for ``why``."""

    member: str
    role: str
    scope: str  # project | bucket | topic | subscription | service-account | secret | function |
    # datafusion-instance | datafusion-namespace
    resource: str
    why: str


@dataclass(frozen=True)
class FunctionSpec:
    """One deployed function: its name, entry point and what triggers it."""

    name: str
    entry_point: str
    trigger: str  # storage | pubsub | dataflow | http
    source: str = ""  # the bucket, topic or region it listens to
    retry: bool = True


@dataclass(frozen=True)
class StageSource:
    """Copy ``main.py``, ``requirements.txt`` and ``handlers/`` to ``dest``, with the config as pipelines.yaml."""

    source: str
    config: str
    dest: str

    def shell(self) -> str:
        items = " ".join(shlex.quote(f"{self.source}/{item}") for item in SOURCE_ITEMS)
        dest = shlex.quote(self.dest)
        return (
            f"rm -rf {dest} && mkdir -p {dest} && cp -R {items} {dest}/ && "
            f"cp {shlex.quote(self.config)} {shlex.quote(self.dest + '/' + CONFIG_IN_SOURCE)}"
        )

    def apply(self) -> None:
        dest = Path(self.dest)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
        for item in SOURCE_ITEMS:
            src = Path(self.source) / item
            if src.is_dir():
                shutil.copytree(src, dest / item, ignore=ignore)
            else:
                shutil.copy2(src, dest / item)
        shutil.copy2(self.config, dest / CONFIG_IN_SOURCE)


@dataclass(frozen=True)
class WriteFile:
    """Write ``content`` (one line) to ``path``: a file a later gcloud flag reads."""

    path: str
    content: str

    def shell(self) -> str:
        parent = shlex.quote(str(Path(self.path).parent))
        return f"mkdir -p {parent} && printf '%s\\n' {shlex.quote(self.content)} > {shlex.quote(self.path)}"

    def apply(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path).write_text(self.content + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Step:
    """One command of the plan.

    ``check``: run first; when it succeeds the resource exists and ``argv`` (a create) is skipped,
    or ``update`` runs instead. ``capture``: keep the command's stdout (stripped) as a variable
    that later argv use as ``${NAME}``. ``local``: a file operation done in Python (shown as its
    shell equivalent in the dry run). ``retries``: IAM bindings on accounts created seconds ago
    may fail until IAM sees them.
    """

    argv: tuple[str, ...]
    comment: str
    check: tuple[str, ...] | None = None
    update: tuple[str, ...] | None = None
    capture: str | None = None
    lowercase: bool = False
    retries: int = 0
    binding: Binding | None = None
    function: FunctionSpec | None = None
    local: StageSource | WriteFile | None = None


@dataclass
class Plan:
    """Everything the deploy does, in order."""

    project: str
    region: str
    config_path: str
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def bindings(self) -> list[Binding]:
        return [s.binding for s in self.steps if s.binding is not None]

    @property
    def functions(self) -> list[FunctionSpec]:
        return [s.function for s in self.steps if s.function is not None]


class PlanError(Exception):
    """The options do not fit the config; ``problems`` lists every one of them."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class SecretRef:
    """A Secret Manager secret mounted as an env var (``--set-secrets``)."""

    env: str
    project: str
    secret: str
    version: str = "latest"

    @classmethod
    def parse(cls, env: str, ref: str, default_project: str) -> SecretRef:
        """``name``, ``name:version`` or ``projects/P/secrets/name[:version]``."""
        project = default_project
        rest = ref
        m = re.fullmatch(r"projects/([^/]+)/secrets/(.+)", ref)
        if m:
            project, rest = m.group(1), m.group(2)
        secret, _, version = rest.partition(":")
        return cls(env=env, project=project, secret=secret, version=version or "latest")

    def flag(self, deploy_project: str) -> str:
        where = (
            self.secret
            if self.project == deploy_project
            else f"projects/{self.project}/secrets/{self.secret}"
        )
        return f"{self.env}={where}:{self.version}"


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
    dataflow_worker_sa: str | None = None
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
    fabric_secrets: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    memory: str = "512Mi"
    timeout: str = "300s"
    max_instances: int | None = None
    build_service_account: str | None = None
    datafusion_rbac: bool = False
    pubsub_token_creator: bool = False

    @property
    def stage_dir(self) -> str:
        return f"{self.build_dir or default_build_dir(self.project)}/source"

    @property
    def lifecycle_file(self) -> str:
        return f"{self.build_dir or default_build_dir(self.project)}/ledger-lifecycle.json"


def default_build_dir(project: str) -> str:
    return f"{tempfile.gettempdir()}/event-pipelines-deploy/{project}"


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------
def service_name(base: str, key: str = "") -> str:
    """A function (Cloud Run service) name for ``base`` and a bucket/topic/region ``key``.

    ``base-key`` when ``key`` is already a valid name part and the result fits 49 characters;
    otherwise the slug is cut and an 8-hex sha256 of ``key`` keeps names distinct (``a.b`` and
    ``a_b`` never collide). ``deploy/terraform/main.tf`` computes the same names.
    """
    if not key:
        return base
    slug = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
    raw = f"{base}-{slug}"
    if slug == key and len(raw) <= MAX_SERVICE_NAME:
        return raw
    return f"{raw[:40].strip('-')}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def shell_var(prefix: str, key: str) -> str:
    """A shell variable name like ``SUBSCRIPTION_ON_MESSAGE_ORDERS``."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9]+', '_', key).strip('_').upper()}"


def topic_id(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


def topic_project(topic: str, default: str) -> str:
    m = re.fullmatch(r"projects/([^/]+)/topics/[^/]+", topic)
    return m.group(1) if m else default


def config_names_project(path: str) -> bool:
    """Whether the YAML at ``path`` sets ``settings.project`` itself (else it comes from the env)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    settings = raw.get("settings") if isinstance(raw, dict) else None
    return isinstance(settings, dict) and bool(settings.get("project"))


def gcs_bucket_of(url: object) -> str | None:
    if isinstance(url, str) and url.startswith("gs://") and len(url) > 5:
        return url[5:].split("/", 1)[0]
    return None


def _kv_flag(values: Mapping[str, str]) -> str:
    """``K=V,K2=V2``, switching to gcloud's ``^D^`` delimiter syntax when a value holds a comma."""
    items = [f"{k}={v}" for k, v in values.items()]
    if not any("," in item for item in items):
        return ",".join(items)
    for delim in ("@", "|", ";", "#", "~"):
        if not any(delim in item for item in items):
            return f"^{delim}^" + delim.join(items)
    raise PlanError(["env values use every delimiter gcloud can switch to (, @ | ; # ~)"])


# ---------------------------------------------------------------------------------------------
# What the config asks for
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FabricNeeds:
    """Env vars the Fabric pipelines read: secrets (Secret Manager only) and plain ids."""

    secrets: tuple[str, ...]  # required secret env vars
    optional_secrets: tuple[str, ...]  # read when present (a delegated confidential client's secret)
    ids: tuple[str, ...]  # tenant and client ids: --env or --fabric-secret


def fabric_needs(cfg: Config) -> FabricNeeds:
    """The credential env vars of the config's Fabric pipelines (see handlers/backends/fabric/entra.py)."""
    secrets: set[str] = set()
    optional: set[str] = set()
    ids: set[str] = set()
    for p in cfg.pipelines.values():
        if p.backend != "fabric":
            continue
        prefix = str(p.options.get("credentials") or FABRIC_DEFAULT_PREFIX)
        job_type = str(p.options.get("job_type") or "Execute")
        default_mode = "delegated" if job_type.lower() in FABRIC_EXECUTE_JOB_TYPES else "service_principal"
        mode = str(p.options.get("auth") or default_mode)
        ids |= {f"{prefix}_TENANT_ID", f"{prefix}_CLIENT_ID"}
        if mode == "delegated":
            secrets.add(f"{prefix}_REFRESH_TOKEN")
            optional.add(f"{prefix}_CLIENT_SECRET")
        else:
            secrets.add(f"{prefix}_CLIENT_SECRET")
    return FabricNeeds(tuple(sorted(secrets)), tuple(sorted(optional - secrets)), tuple(sorted(ids)))


def default_secret_name(env: str) -> str:
    """``FABRIC_CLIENT_SECRET`` -> ``fabric-client-secret``."""
    return env.lower().replace("_", "-")


@dataclass(frozen=True)
class DataFusionTarget:
    project: str
    location: str
    instance: str
    namespace: str


# ---------------------------------------------------------------------------------------------
# The plan builder
# ---------------------------------------------------------------------------------------------
class _Builder:
    """Turns a validated config and the options into an ordered :class:`Plan`."""

    def __init__(self, cfg: Config, opts: DeployOptions) -> None:
        self.cfg = cfg
        self.o = opts
        self.p = opts.project
        self.plan = Plan(project=opts.project, region=opts.region, config_path=opts.config_path)
        s = cfg.settings
        self.runtime_sa = f"{opts.runtime_sa_name}@{self.p}.iam.gserviceaccount.com"
        self.trigger_sa = f"{opts.trigger_sa_name}@{self.p}.iam.gserviceaccount.com"
        self.runtime = f"serviceAccount:{self.runtime_sa}"
        self.trigger = f"serviceAccount:{self.trigger_sa}"
        self.pubsub_agent = "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
        self.completion_topic = topic_id(s.completion_topic or DEFAULT_COMPLETION_TOPIC)
        self.buckets = sorted({t.storage.bucket for t in cfg.triggers_of("storage") if t.storage})
        self.pubsub_topics = sorted({t.pubsub.topic for t in cfg.triggers_of("pubsub") if t.pubsub})
        self.has_completion = bool(cfg.triggers_of("completion"))
        topics = set(self.pubsub_topics) | ({self.completion_topic} if self.has_completion else set())
        self.message_topics = sorted(topics)
        self.dataflow = [p for p in cfg.pipelines.values() if p.backend in DATAFLOW_BACKENDS]
        self.datafusion = [p for p in cfg.pipelines.values() if p.backend == "datafusion"]
        self.fabric = fabric_needs(cfg)
        self.uses_fabric = any(p.backend == "fabric" for p in cfg.pipelines.values())
        self.status_regions = sorted({p.region for p in self.dataflow if p.project == self.p})
        self.secrets = self._secret_refs()
        self.event_functions: list[FunctionSpec] = []
        # The functions learn their project from the config; only a config without one needs the env var.
        self.base_env = {"PIPELINES_CONFIG": CONFIG_IN_SOURCE}
        if not config_names_project(opts.config_path):
            self.base_env["GOOGLE_CLOUD_PROJECT"] = self.p

    # -- helpers -------------------------------------------------------------------------------
    def add(self, argv: Sequence[str], comment: str, **kw: Any) -> None:
        self.plan.steps.append(Step(argv=tuple(argv), comment=comment, **kw))

    def ensure(self, describe: Sequence[str], create: Sequence[str], comment: str) -> None:
        self.add(create, comment, check=tuple(describe))

    def grant(self, binding: Binding, argv: Sequence[str]) -> None:
        self.add(
            [*argv, f"--member={binding.member}", f"--role={binding.role}"],
            f"IAM: {binding.role} to {binding.member} on {binding.scope} {binding.resource}: {binding.why}",
            binding=binding,
            retries=5,
        )

    def _secret_refs(self) -> list[SecretRef]:
        chosen = {env: default_secret_name(env) for env in self.fabric.secrets} if self.uses_fabric else {}
        chosen.update(self.o.fabric_secrets)
        return [SecretRef.parse(env, ref, self.p) for env, ref in sorted(chosen.items())]

    def worker_accounts(self) -> list[tuple[str, str]]:
        """(project, email) of every Dataflow worker service account the runtime must act as."""
        out: set[tuple[str, str]] = set()
        for p in self.dataflow:
            env = p.options.get("environment") or {}
            email = env.get("serviceAccountEmail") if isinstance(env, Mapping) else None
            email = (
                email
                or self.o.dataflow_worker_sa
                or "${PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
            )
            out.add((p.project, str(email)))
        return sorted(out)

    def datafusion_targets(self) -> list[DataFusionTarget]:
        out: set[DataFusionTarget] = set()
        for p in self.datafusion:
            instance = p.options.get("instance")
            if isinstance(instance, str) and instance:
                namespace = str(p.options.get("namespace") or "default")
                out.add(DataFusionTarget(p.project, p.region, instance, namespace))
        return sorted(out, key=lambda t: (t.project, t.location, t.instance, t.namespace))

    def apis(self) -> list[str]:
        apis = list(BASE_APIS)
        if self.dataflow:
            apis.append("dataflow")
        if self.datafusion:
            apis.append("datafusion")
        if self.secrets:
            apis.append("secretmanager")
        return [f"{a}.googleapis.com" for a in apis]

    # -- the sections, in order ----------------------------------------------------------------
    def build(self) -> Plan:
        self.section_warnings()
        self.section_apis()
        self.section_lookups()
        self.section_ledger()
        self.section_topics()
        self.section_service_accounts()
        self.section_runtime_iam()
        self.section_event_iam()
        self.section_functions()
        self.section_invokers()
        self.section_scheduler()
        self.section_dead_letters()
        return self.plan

    def section_warnings(self) -> None:
        w = self.plan.warnings
        if not self.cfg.settings.completion_topic:
            w.append(
                f"settings.completion_topic is not set: topic '{self.completion_topic}' is created, but the "
                "functions publish no completion events until the config names it"
            )
        for p in self.datafusion:
            if not p.options.get("instance"):
                w.append(
                    f"pipeline '{p.name}' reaches Data Fusion through api_endpoint: grant the runtime account "
                    "access to that instance yourself (no instance name to bind roles on)"
                )
        for p in self.dataflow:
            if p.project != self.p:
                w.append(
                    f"pipeline '{p.name}' runs in project {p.project}: Eventarc cannot deliver its job status "
                    "changes to this project, so the sweep (check_runs) completes its runs"
                )

    def section_apis(self) -> None:
        self.add(
            ["gcloud", "services", "enable", *self.apis(), f"--project={self.p}"],
            "APIs the functions, their triggers, the build and the configured backends need",
        )

    def section_lookups(self) -> None:
        self.add(
            ["gcloud", "projects", "describe", self.p, "--format=value(projectNumber)"],
            "the project number names the Pub/Sub service agent (and the default Dataflow worker)",
            capture="PROJECT_NUMBER",
        )
        if not self.buckets:
            return
        self.add(
            ["gcloud", "storage", "service-agent", f"--project={self.p}"],
            "the Cloud Storage service agent publishes the bucket events Eventarc delivers",
            capture="GCS_SERVICE_AGENT",
        )
        for bucket in self.buckets:
            if bucket in self.o.bucket_locations:
                continue
            self.add(
                ["gcloud", "storage", "buckets", "describe", f"gs://{bucket}", "--format=value(location)"],
                f"an Eventarc storage trigger lives in its bucket's location (gs://{bucket})",
                capture=shell_var("BUCKET_LOCATION", bucket),
                lowercase=True,
            )

    def section_ledger(self) -> None:
        s = self.cfg.settings
        url = f"gs://{s.ledger_bucket}"
        location = self.o.ledger_location or self.o.region
        self.ensure(
            ["gcloud", "storage", "buckets", "describe", url, f"--project={self.p}"],
            [
                "gcloud",
                "storage",
                "buckets",
                "create",
                url,
                f"--project={self.p}",
                f"--location={location}",
                "--uniform-bucket-level-access",
                "--public-access-prevention",
            ],
            f"the run ledger bucket {url} (created only if absent)",
        )
        update = [
            "gcloud",
            "storage",
            "buckets",
            "update",
            url,
            "--uniform-bucket-level-access",
            "--public-access-prevention",
            "--no-versioning",
        ]
        days = self.o.ledger_retention_days
        if days > 0:
            rule = {
                "rule": [
                    {
                        "action": {"type": "Delete"},
                        "condition": {"age": days, "matchesPrefix": [f"{s.ledger_prefix}runs/"]},
                    }
                ]
            }
            self.add(
                (),
                f"lifecycle rule: delete run records ({s.ledger_prefix}runs/) not written for {days} days",
                local=WriteFile(self.o.lifecycle_file, json.dumps(rule, sort_keys=True)),
            )
            update.append(f"--lifecycle-file={self.o.lifecycle_file}")
        self.add(update, "ledger settings: private, uniform access, no versioning (+ lifecycle)")

    def topic(self, name: str, why: str, project: str | None = None) -> None:
        project = project or self.p
        self.ensure(
            ["gcloud", "pubsub", "topics", "describe", name, f"--project={project}"],
            ["gcloud", "pubsub", "topics", "create", name, f"--project={project}"],
            f"topic {name}: {why}",
        )

    def section_topics(self) -> None:
        self.topic(self.completion_topic, "completion events (and chaining through them)")
        self.topic(self.o.dead_letter_topic, "events the functions failed to handle after every retry")
        sub = f"{self.o.dead_letter_topic}-sub"
        self.ensure(
            ["gcloud", "pubsub", "subscriptions", "describe", sub, f"--project={self.p}"],
            [
                "gcloud",
                "pubsub",
                "subscriptions",
                "create",
                sub,
                f"--topic={self.o.dead_letter_topic}",
                "--message-retention-duration=7d",
                f"--project={self.p}",
            ],
            f"subscription {sub}: keeps dead letters 7 days to inspect and replay (a topic alone drops them)",
        )
        self.topic(self.o.sweep_topic, "the scheduler's tick for check_runs")
        if self.o.create_user_topics:
            for t in self.pubsub_topics:
                if t not in (self.completion_topic, self.o.sweep_topic, self.o.dead_letter_topic):
                    self.topic(t, "a pubsub trigger's topic (created only if absent)")

    def service_account(self, name: str, email: str, display: str) -> None:
        self.ensure(
            ["gcloud", "iam", "service-accounts", "describe", email, f"--project={self.p}"],
            [
                "gcloud",
                "iam",
                "service-accounts",
                "create",
                name,
                f"--project={self.p}",
                f"--display-name={display}",
            ],
            f"service account {email}",
        )

    def section_service_accounts(self) -> None:
        self.service_account(self.o.runtime_sa_name, self.runtime_sa, "event pipelines: functions runtime")
        self.service_account(self.o.trigger_sa_name, self.trigger_sa, "event pipelines: Eventarc delivery")

    def section_runtime_iam(self) -> None:
        s = self.cfg.settings
        rt = self.runtime
        self.grant(
            Binding(
                rt,
                "roles/storage.objectUser",
                "bucket",
                s.ledger_bucket,
                "read, create, replace, list and delete run records",
            ),
            ["gcloud", "storage", "buckets", "add-iam-policy-binding", f"gs://{s.ledger_bucket}"],
        )
        self.grant(
            Binding(
                rt, "roles/pubsub.publisher", "topic", self.completion_topic, "publish completion events"
            ),
            [
                "gcloud",
                "pubsub",
                "topics",
                "add-iam-policy-binding",
                self.completion_topic,
                f"--project={self.p}",
            ],
        )
        for project in sorted({p.project for p in self.dataflow}):
            self.grant(
                Binding(
                    rt,
                    "roles/dataflow.developer",
                    "project",
                    project,
                    "launch, read and cancel Dataflow jobs (no finer resource exists)",
                ),
                ["gcloud", "projects", "add-iam-policy-binding", project, "--condition=None"],
            )
        for project, email in self.worker_accounts():
            self.grant(
                Binding(
                    rt,
                    "roles/iam.serviceAccountUser",
                    "service-account",
                    email,
                    "run Dataflow jobs as this worker account",
                ),
                [
                    "gcloud",
                    "iam",
                    "service-accounts",
                    "add-iam-policy-binding",
                    email,
                    f"--project={project}",
                ],
            )
        for bucket in sorted({b for p in self.dataflow if (b := gcs_bucket_of(p.options.get("template")))}):
            self.grant(
                Binding(
                    rt,
                    "roles/storage.objectViewer",
                    "bucket",
                    bucket,
                    "read the Dataflow template files it launches",
                ),
                ["gcloud", "storage", "buckets", "add-iam-policy-binding", f"gs://{bucket}"],
            )
        targets = self.datafusion_targets()
        instance_roles = ["roles/datafusion.viewer"] + (
            ["roles/datafusion.accessor"] if self.o.datafusion_rbac else []
        )
        for project, location, instance in sorted({(t.project, t.location, t.instance) for t in targets}):
            for role in instance_roles:
                why = (
                    "read the instance's CDAP endpoint and start its pipelines"
                    if role == "roles/datafusion.viewer"
                    else "RBAC: enter the instance (no namespace rights by itself)"
                )
                self.grant(
                    Binding(rt, role, "datafusion-instance", instance, why),
                    [
                        "gcloud",
                        "beta",
                        "data-fusion",
                        "add-iam-policy-binding",
                        instance,
                        f"--location={location}",
                        f"--project={project}",
                    ],
                )
        for t in targets if self.o.datafusion_rbac else []:
            self.grant(
                Binding(
                    rt,
                    "roles/datafusion.operator",
                    "datafusion-namespace",
                    f"{t.instance}/{t.namespace}",
                    "RBAC: run pipelines in this namespace only",
                ),
                [
                    "gcloud",
                    "beta",
                    "data-fusion",
                    "add-iam-policy-binding",
                    t.instance,
                    f"--location={t.location}",
                    f"--project={t.project}",
                    f"--namespace={t.namespace}",
                ],
            )
        for ref in self.secrets:
            self.grant(
                Binding(
                    rt,
                    "roles/secretmanager.secretAccessor",
                    "secret",
                    f"{ref.project}/{ref.secret}",
                    f"read {ref.env} for Fabric",
                ),
                ["gcloud", "secrets", "add-iam-policy-binding", ref.secret, f"--project={ref.project}"],
            )

    def section_event_iam(self) -> None:
        if self.buckets or self.status_regions:
            self.grant(
                Binding(
                    self.trigger,
                    "roles/eventarc.eventReceiver",
                    "project",
                    self.p,
                    "receive direct Cloud Storage and Dataflow events (granted on the project only)",
                ),
                ["gcloud", "projects", "add-iam-policy-binding", self.p, "--condition=None"],
            )
        if self.buckets:
            self.grant(
                Binding(
                    "serviceAccount:${GCS_SERVICE_AGENT}",
                    "roles/pubsub.publisher",
                    "project",
                    self.p,
                    "Cloud Storage publishes bucket events to the topics Eventarc creates",
                ),
                ["gcloud", "projects", "add-iam-policy-binding", self.p, "--condition=None"],
            )
        self.grant(
            Binding(
                self.pubsub_agent,
                "roles/pubsub.publisher",
                "topic",
                self.o.dead_letter_topic,
                "forward undeliverable events to the dead-letter topic",
            ),
            [
                "gcloud",
                "pubsub",
                "topics",
                "add-iam-policy-binding",
                self.o.dead_letter_topic,
                f"--project={self.p}",
            ],
        )
        if self.o.pubsub_token_creator:
            self.grant(
                Binding(
                    self.pubsub_agent,
                    "roles/iam.serviceAccountTokenCreator",
                    "service-account",
                    self.trigger_sa,
                    "projects whose Pub/Sub agent predates 2021-04-08 mint push tokens",
                ),
                [
                    "gcloud",
                    "iam",
                    "service-accounts",
                    "add-iam-policy-binding",
                    self.trigger_sa,
                    f"--project={self.p}",
                ],
            )

    def deploy_function(self, spec: FunctionSpec, trigger_flags: Sequence[str]) -> None:
        env = {**self.base_env, **self.o.env}
        argv = [
            "gcloud",
            "functions",
            "deploy",
            spec.name,
            "--gen2",
            f"--project={self.p}",
            f"--region={self.o.region}",
            f"--runtime={RUNTIME}",
            f"--source={self.o.stage_dir}",
            f"--entry-point={spec.entry_point}",
            f"--service-account={self.runtime_sa}",
            f"--memory={self.o.memory}",
            f"--timeout={self.o.timeout}",
            f"--set-env-vars={_kv_flag(env)}",
        ]
        if self.secrets:
            argv.append("--set-secrets=" + ",".join(r.flag(self.p) for r in self.secrets))
        if self.o.max_instances:
            argv.append(f"--max-instances={self.o.max_instances}")
        if self.o.build_service_account:
            argv.append(f"--build-service-account={self.o.build_service_account}")
        if spec.trigger != "http":
            argv += [*trigger_flags, f"--trigger-service-account={self.trigger_sa}", "--retry"]
            self.event_functions.append(spec)
        else:
            argv += [*trigger_flags]
        argv.append("--quiet")
        what = f"{spec.trigger} {spec.source}".strip()
        self.add(argv, f"function {spec.name} ({spec.entry_point}) on {what}", function=spec)

    def section_functions(self) -> None:
        self.add(
            (),
            f"stage the function source: {', '.join(SOURCE_ITEMS)} and the config as {CONFIG_IN_SOURCE}",
            local=StageSource(self.o.source, self.o.config_path, self.o.stage_dir),
        )
        for bucket in self.buckets:
            location = (
                self.o.bucket_locations.get(bucket) or "${" + shell_var("BUCKET_LOCATION", bucket) + "}"
            )
            self.deploy_function(
                FunctionSpec(
                    service_name("on-object-finalized", bucket), "on_object_finalized", "storage", bucket
                ),
                [
                    f"--trigger-event-filters=type={STORAGE_FINALIZED}",
                    f"--trigger-event-filters=bucket={bucket}",
                    f"--trigger-location={location}",
                ],
            )
        for topic in self.message_topics:
            self.deploy_function(
                FunctionSpec(service_name("on-message", topic), "on_message", "pubsub", topic),
                [f"--trigger-topic={topic}"],
            )
        for region in self.status_regions:
            name = "on-job-status" if region == self.o.region else service_name("on-job-status", region)
            self.deploy_function(
                FunctionSpec(name, "on_job_status", "dataflow", region),
                [f"--trigger-event-filters=type={DATAFLOW_STATUS_CHANGED}", f"--trigger-location={region}"],
            )
        self.deploy_function(
            FunctionSpec("check-runs", "check_runs", "pubsub", self.o.sweep_topic),
            [f"--trigger-topic={self.o.sweep_topic}"],
        )
        if self.o.include_api:
            self.deploy_function(
                FunctionSpec("api", "api", "http", retry=False),
                ["--trigger-http", "--no-allow-unauthenticated"],
            )

    def section_invokers(self) -> None:
        where = [f"--region={self.o.region}", f"--project={self.p}"]
        for spec in self.event_functions:
            self.grant(
                Binding(
                    self.trigger,
                    "roles/run.invoker",
                    "function",
                    spec.name,
                    "Eventarc delivers events to this function only",
                ),
                ["gcloud", "functions", "add-invoker-policy-binding", spec.name, *where],
            )
        if self.o.include_api:
            for member in self.o.api_invokers:
                self.grant(
                    Binding(member, "roles/run.invoker", "function", "api", "call the REST trigger API"),
                    ["gcloud", "functions", "add-invoker-policy-binding", "api", *where],
                )

    def section_scheduler(self) -> None:
        job = self.o.scheduler_job
        where = [f"--location={self.o.region}", f"--project={self.p}"]
        flags = [
            f"--schedule={self.o.sweep_schedule}",
            f"--topic={self.o.sweep_topic}",
            "--message-body={}",
            "--time-zone=Etc/UTC",
        ]
        self.add(
            ["gcloud", "scheduler", "jobs", "create", "pubsub", job, *where, *flags],
            f"scheduler job {job}: publish to {self.o.sweep_topic} on '{self.o.sweep_schedule}' (update if present)",
            check=("gcloud", "scheduler", "jobs", "describe", job, *where),
            update=("gcloud", "scheduler", "jobs", "update", "pubsub", job, *where, *flags),
        )

    def section_dead_letters(self) -> None:
        dlq = f"projects/{self.p}/topics/{self.o.dead_letter_topic}"
        for spec in self.event_functions:
            trig = shell_var("TRIGGER", spec.name)
            sub = shell_var("SUBSCRIPTION", spec.name)
            self.add(
                [
                    "gcloud",
                    "functions",
                    "describe",
                    spec.name,
                    "--gen2",
                    f"--region={self.o.region}",
                    f"--project={self.p}",
                    "--format=value(eventTrigger.trigger)",
                ],
                f"the Eventarc trigger GCF created for {spec.name}",
                capture=trig,
            )
            self.add(
                [
                    "gcloud",
                    "eventarc",
                    "triggers",
                    "describe",
                    "${" + trig + "}",
                    "--format=value(transport.pubsub.subscription)",
                ],
                f"the Pub/Sub subscription Eventarc delivers {spec.name}'s events through",
                capture=sub,
            )
            self.add(
                [
                    "gcloud",
                    "pubsub",
                    "subscriptions",
                    "update",
                    "${" + sub + "}",
                    f"--dead-letter-topic={dlq}",
                    f"--max-delivery-attempts={self.o.max_delivery_attempts}",
                ],
                f"dead letters for {spec.name}: after {self.o.max_delivery_attempts} attempts to {self.o.dead_letter_topic}",
            )
            self.grant(
                Binding(
                    self.pubsub_agent,
                    "roles/pubsub.subscriber",
                    "subscription",
                    "${" + sub + "}",
                    "acknowledge messages it moves to the dead-letter topic",
                ),
                ["gcloud", "pubsub", "subscriptions", "add-iam-policy-binding", "${" + sub + "}"],
            )


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
    problems += _dataflow_problems(cfg, opts)
    problems += _fabric_problems(cfg, opts)
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


def _dataflow_problems(cfg: Config, opts: DeployOptions) -> list[str]:
    problems = []
    for p in cfg.pipelines.values():
        if p.backend not in DATAFLOW_BACKENDS or p.project == opts.project:
            continue
        env = p.options.get("environment") or {}
        if not (isinstance(env, Mapping) and env.get("serviceAccountEmail")) and not opts.dataflow_worker_sa:
            problems.append(
                f"pipeline '{p.name}' runs in project {p.project}: name its worker account "
                "(environment.serviceAccountEmail or --dataflow-worker-sa), the default one is that project's"
            )
    return problems


def _fabric_problems(cfg: Config, opts: DeployOptions) -> list[str]:
    needs = fabric_needs(cfg)
    problems = []
    for env in needs.ids:
        if env not in opts.env and env not in opts.fabric_secrets:
            problems.append(
                f"Fabric pipelines read {env}: pass --env {env}=... (or --fabric-secret {env}=SECRET)"
            )
    for env in (*needs.secrets, *needs.optional_secrets):
        if env in opts.env:
            problems.append(
                f"--env {env}: a credential goes through Secret Manager only (--fabric-secret {env}=SECRET)"
            )
    if opts.fabric_secrets and not any(p.backend == "fabric" for p in cfg.pipelines.values()):
        problems.append("--fabric-secret given but the config has no Fabric pipeline")
    return problems


def build_plan(cfg: Config, opts: DeployOptions) -> Plan:
    """The ordered deployment plan for ``cfg``; raises :class:`PlanError` listing every misfit."""
    problems = check_options(cfg, opts)
    if problems:
        raise PlanError(problems)
    return _Builder(cfg, opts).build()


# ---------------------------------------------------------------------------------------------
# Rendering (--dry-run)
# ---------------------------------------------------------------------------------------------
_VAR_RE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def shell_arg(arg: str) -> str:
    """Quote one argument for bash, leaving ``${VAR}`` references expandable."""
    if not _VAR_RE.search(arg):
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


# ---------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------
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

        return _VAR_RE.sub(repl, arg)

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
            if result.ok or attempt == attempts:
                break
            echo(
                f"  attempt {attempt} failed, retrying in {retry_delay:.0f}s (new accounts take a moment to appear)"
            )
            sleep(retry_delay)
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


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


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
        "--dataflow-worker-sa", metavar="EMAIL", help="worker account of Dataflow pipelines that name none"
    )
    ap.add_argument(
        "--fabric-secret",
        action="append",
        default=[],
        type=_pair,
        metavar="ENV=SECRET[:VERSION]",
        help="Secret Manager secret mounted as ENV (repeatable)",
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
        "--datafusion-rbac", action="store_true", help="instances use RBAC: add accessor + namespace operator"
    )
    ap.add_argument(
        "--pubsub-token-creator",
        action="store_true",
        help="Pub/Sub agent older than 2021-04-08: token creator on the trigger account",
    )
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
        dataflow_worker_sa=args.dataflow_worker_sa,
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
        fabric_secrets=dict(args.fabric_secret),
        env=dict(args.env),
        memory=args.memory,
        timeout=args.timeout,
        max_instances=args.max_instances,
        build_service_account=args.build_service_account,
        datafusion_rbac=args.datafusion_rbac,
        pubsub_token_creator=args.pubsub_token_creator,
    )


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
    try:
        plan = build_plan(cfg, options_from_args(args, cfg))
    except PlanError as exc:
        _print_problems(f"cannot deploy {args.config}", exc.problems)
        return 2
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
