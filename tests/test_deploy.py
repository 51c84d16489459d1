"""Specification: the deployment derived from the routing config (deploy/, deploy/terraform).

Nothing here talks to Google Cloud: the gcloud plan is checked as printed by ``--dry-run`` (the
module run as a subprocess) and as built by :func:`deploy.build.build_plan`, and executed against
a fake ``gcloud`` that keeps the state of what exists. The Terraform module is parse-checked with
python-hcl2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from deploy import build, functions, names, render, run
from deploy import deploy as d
from deploy.options import DeployOptions
from deploy.plan import PlanError
from handlers.backends import registry
from handlers.model.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipelines.yaml"
TERRAFORM = ROOT / "deploy" / "terraform"

RICH = textwrap.dedent(
    """
    settings:
      project: acme-data
      region: europe-west1
      ledger: {bucket: acme-ledger, prefix: runs-ledger/}
      completion_topic: pipeline-completions
      max_event_age: 2h
    pipelines:
      ingest:
        backend: dataflow
        template: gs://acme-templates/ingest
        environment:
          serviceAccountEmail: df-worker@acme-data.iam.gserviceaccount.com
          tempLocation: gs://acme-tmp/tmp
        parameters: {input: "gs://{bucket}/{name}"}
      enrich:
        backend: dataflow-flex
        region: us-central1
        template: gs://acme-flex/enrich.json
      load:
        backend: datafusion
        instance: acme-cdf
        namespace: sales
        app: load_sales
      load-finance:
        backend: datafusion
        instance: acme-cdf
        namespace: finance
        app: load_finance
      report:
        backend: fabric
        workspace: 11111111-2222-3333-4444-555555555555
        item: 66666666-7777-8888-9999-000000000000
        job_type: Pipeline
      refresh:
        backend: fabric
        workspace: 11111111-2222-3333-4444-555555555555
        item: 66666666-7777-8888-9999-aaaaaaaaaaaa
        credentials: FABRIC_SALES
    triggers:
      landing-text:
        storage: {bucket: acme-landing, glob: "incoming/**/*.txt"}
        pipeline: ingest
      landing-csv:
        storage: {bucket: acme-landing, glob: "incoming/**/*.csv"}
        pipeline: ingest
      partner-drop:
        storage: {bucket: acme.partner.drop}
        pipeline: ingest
      orders:
        pubsub: {topic: orders}
        pipeline: report
      partner-events:
        pubsub: {topic: projects/acme-data/topics/partner_events}
        pipeline: refresh
      after-ingest:
        completion: {upstream: ingest}
        pipeline: load
      after-load:
        completion: {upstream: load}
        pipeline: enrich
    """
)
RICH_FLAGS = [
    "--env=FABRIC_TENANT_ID=tenant-1",
    "--env=FABRIC_CLIENT_ID=client-1",
    "--env=FABRIC_SALES_TENANT_ID=tenant-2",
    "--env=FABRIC_SALES_CLIENT_ID=client-2",
    "--fabric-secret=FABRIC_CLIENT_SECRET=fabric-sp-secret:3",
    "--api-invoker=group:data-eng@acme.example",
    "--datafusion-rbac",
]
# The example config has a Fabric pipeline (delegated auth): its ids and refresh-token secret.
EXAMPLE_FLAGS = [
    "--env=FABRIC_TENANT_ID=tenant-1",
    "--env=FABRIC_CLIENT_ID=client-1",
    "--fabric-secret=FABRIC_REFRESH_TOKEN=fabric-refresh-token",
]
EVENT_ENTRY_POINTS = ("on_object_finalized", "on_message", "on_job_status", "check_runs")
# Roles a project-level binding may carry, and why nothing narrower exists (docs/deploy.md).
PROJECT_LEVEL_ALLOWED = {
    "roles/dataflow.developer",  # Dataflow jobs have no IAM of their own
    "roles/eventarc.eventReceiver",  # granted per project for direct events
    "roles/pubsub.publisher",  # only for the Cloud Storage agent: Eventarc creates its topics
}
BROAD_ROLES = {
    "roles/owner",
    "roles/editor",
    "roles/viewer",
    "roles/storage.admin",
    "roles/storage.objectAdmin",
    "roles/pubsub.admin",
    "roles/pubsub.editor",
    "roles/dataflow.admin",
    "roles/iam.serviceAccountAdmin",
    "roles/secretmanager.admin",
    "roles/datafusion.admin",
    "roles/run.admin",
    "roles/cloudfunctions.admin",
}
NARROWEST_SCOPE = {
    "roles/storage.objectUser": "bucket",
    "roles/storage.objectViewer": "bucket",
    "roles/iam.serviceAccountUser": "service-account",
    "roles/iam.serviceAccountTokenCreator": "service-account",
    "roles/run.invoker": "function",
    "roles/pubsub.subscriber": "subscription",
    "roles/secretmanager.secretAccessor": "secret",
    "roles/datafusion.viewer": "datafusion-instance",
    "roles/datafusion.accessor": "datafusion-instance",
    "roles/datafusion.operator": "datafusion-namespace",
    "roles/dataflow.developer": "project",
    "roles/eventarc.eventReceiver": "project",
}


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def rich_config(tmp_path: Path) -> Path:
    path = tmp_path / "rich.yaml"
    path.write_text(RICH, encoding="utf-8")
    return path


def run_cli(args: Sequence[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m deploy.deploy ARGS`` in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "deploy.deploy", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def dry_run(config: Path, tmp_path: Path, *extra: str) -> str:
    done = run_cli(
        ["--config", str(config), "--dry-run", "--build-dir", str(tmp_path / "build"), *extra], tmp_path
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def commands(script: str) -> list[list[str]]:
    """The command lines of a dry-run script, split like bash would (comments dropped)."""
    return [shlex.split(line) for line in script.splitlines() if line and not line.startswith("#")]


def deploys(script: str) -> dict[str, list[str]]:
    """Function name -> argv of each ``gcloud functions deploy`` line."""
    out = {}
    for argv in commands(script):
        if argv[:3] == ["gcloud", "functions", "deploy"]:
            out[argv[3]] = argv
    return out


def flag(argv: Sequence[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]


def options(config: Path, tmp_path: Path, **kw: object) -> DeployOptions:
    cfg = load_config(config)
    base: dict[str, object] = {
        "project": cfg.settings.project,
        "region": cfg.settings.region,
        "config_path": str(config),
        "source": str(ROOT),
        "build_dir": str(tmp_path / "build"),
    }
    base.update(kw)
    return DeployOptions(**base)  # type: ignore[arg-type]


def example_options(tmp_path: Path, **kw: object) -> DeployOptions:
    return options(
        EXAMPLE,
        tmp_path,
        env={"FABRIC_TENANT_ID": "tenant-1", "FABRIC_CLIENT_ID": "client-1"},
        secrets={"FABRIC_REFRESH_TOKEN": "fabric-refresh-token"},
        **kw,
    )


def rich_options(config: Path, tmp_path: Path, **kw: object) -> DeployOptions:
    return options(
        config,
        tmp_path,
        env={
            "FABRIC_TENANT_ID": "tenant-1",
            "FABRIC_CLIENT_ID": "client-1",
            "FABRIC_SALES_TENANT_ID": "tenant-2",
            "FABRIC_SALES_CLIENT_ID": "client-2",
        },
        secrets={"FABRIC_CLIENT_SECRET": "fabric-sp-secret:3"},
        api_invokers=("group:data-eng@acme.example",),
        flags={"datafusion_rbac": True},
        **kw,
    )


class FakeCloud:
    """A fake ``gcloud``: remembers what was created; describe succeeds only for what exists.

    ``lying_describe``: every describe of a creatable resource fails (another deploy created it a
    moment ago), so creates meet ALREADY_EXISTS. ``fail_on``: argv prefix answered with an error.
    """

    def __init__(self, *, lying_describe: bool = False, fail_on: Sequence[str] | None = None) -> None:
        self.existing: set[tuple[str, str]] = set()
        self.calls: list[list[str]] = []
        self.lying_describe = lying_describe
        self.fail_on = list(fail_on or [])

    @staticmethod
    def _key(argv: Sequence[str], verb: str) -> tuple[str, str]:
        i = argv.index(verb)
        kind = " ".join(argv[1:i])
        name = argv[i + 2] if argv[i + 1] == "pubsub" else argv[i + 1]
        if kind == "iam service-accounts" and verb == "create":
            project = next(a.split("=", 1)[1] for a in argv if a.startswith("--project="))
            name = f"{name}@{project}.iam.gserviceaccount.com"
        return kind, name

    def run(self, argv: Sequence[str]) -> run.Result:
        argv = list(argv)
        self.calls.append(argv)
        if self.fail_on and argv[: len(self.fail_on)] == self.fail_on:
            return run.Result(1, "", "ERROR: (gcloud) PERMISSION_DENIED: caller lacks permission")
        if argv[:3] == ["gcloud", "projects", "describe"]:
            return run.Result(0, "123456789012\n")
        if argv[:3] == ["gcloud", "storage", "service-agent"]:
            return run.Result(0, "service-123456789012@gs-project-accounts.iam.gserviceaccount.com\n")
        if argv[:4] == ["gcloud", "storage", "buckets", "describe"] and "--format=value(location)" in argv:
            return run.Result(0, "EUROPE-WEST1\n")
        if argv[:3] == ["gcloud", "functions", "describe"]:
            return run.Result(0, f"projects/acme/locations/europe-west1/triggers/{argv[3]}-123\n")
        if argv[:4] == ["gcloud", "eventarc", "triggers", "describe"]:
            return run.Result(0, f"projects/acme/subscriptions/eventarc-{argv[4].rsplit('/', 1)[-1]}-sub\n")
        if "describe" in argv:
            exists = self._key(argv, "describe") in self.existing and not self.lying_describe
            return run.Result(0 if exists else 1, "", "" if exists else "ERROR: NOT_FOUND")
        if "create" in argv and argv[:3] != ["gcloud", "functions", "deploy"]:
            key = self._key(argv, "create")
            if key in self.existing:
                return run.Result(1, "", f"ERROR: (gcloud) ALREADY_EXISTS: Resource already exists: {key[1]}")
            self.existing.add(key)
        return run.Result(0, "")


def creates(calls: Sequence[Sequence[str]]) -> list[list[str]]:
    return [list(c) for c in calls if "create" in c]


# ---------------------------------------------------------------------------------------------
# The example config, printed by the module
# ---------------------------------------------------------------------------------------------
def test_dry_run_of_the_example_prints_a_complete_runnable_plan(tmp_path):
    # GIVEN the repository's example config WHEN the module prints its plan
    script = dry_run(EXAMPLE, tmp_path, *EXAMPLE_FLAGS)
    # THEN it is a bash script bash can parse, with a comment before every command
    assert script.startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    lines = script.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#") and line != "set -euo pipefail":
            assert lines[i - 1].startswith("# "), line
    fns = deploys(script)
    # an Eventarc storage-finalize trigger on the landing bucket
    storage = fns["on-object-finalized-demo-landing"]
    assert "--trigger-event-filters=type=google.cloud.storage.object.v1.finalized" in storage
    assert "--trigger-event-filters=bucket=demo-landing" in storage
    # on_message on the orders topic, and on the completion topic (the example chains pipelines)
    assert flag(fns["on-message-orders"], "trigger-topic") == ["orders"]
    assert any(flag(a, "trigger-topic") == ["pipeline-completions"] for a in fns.values())
    # Dataflow is used: the statusChanged trigger exists
    assert (
        "--trigger-event-filters=type=google.cloud.dataflow.job.v1beta3.statusChanged" in fns["on-job-status"]
    )
    # the sweep: check_runs on the sweep topic, and a scheduler job every minute publishing to it
    assert flag(fns["check-runs"], "trigger-topic") == ["pipeline-sweep"]
    assert "gcloud scheduler jobs create pubsub pipeline-sweep" in script
    assert "'--schedule=* * * * *'" in script and "--topic=pipeline-sweep" in script
    # the api: HTTP, authenticated only, never retried
    assert "--trigger-http" in fns["api"] and "--no-allow-unauthenticated" in fns["api"]
    assert "--retry" not in fns["api"] and "allUsers" not in script
    # every event function retries, runs as the runtime account and is delivered as the trigger account
    for name, argv in fns.items():
        ep = flag(argv, "entry-point")[0]
        # (the delegated Fabric pipeline's refresh token rotates: each new one is added to its secret)
        assert flag(argv, "set-env-vars") == [
            "PIPELINES_CONFIG=pipelines.yaml,"
            "FABRIC_REFRESH_TOKEN_SECRET=projects/demo-project/secrets/fabric-refresh-token,"
            "FABRIC_TENANT_ID=tenant-1,FABRIC_CLIENT_ID=client-1"
        ]
        assert flag(argv, "set-secrets") == ["FABRIC_REFRESH_TOKEN=fabric-refresh-token:latest"]
        assert flag(argv, "service-account") == ["pipelines-runtime@demo-project.iam.gserviceaccount.com"]
        assert flag(argv, "runtime") == ["python311"] and "--gen2" in argv
        if ep in EVENT_ENTRY_POINTS:
            assert "--retry" in argv, name
            assert flag(argv, "trigger-service-account") == [
                "pipelines-trigger@demo-project.iam.gserviceaccount.com"
            ]


def test_dry_run_of_the_example_creates_only_what_is_missing_and_grants_no_broad_role(tmp_path):
    script = dry_run(EXAMPLE, tmp_path, *EXAMPLE_FLAGS)
    for line in script.splitlines():
        if " create " in f" {line} " and not line.startswith("#"):
            # every create is guarded by a describe of the same resource
            assert " describe " in line and ("||" in line or line.startswith("if ")), line
    # the user's landing bucket is read (location), never created
    assert "buckets create gs://demo-landing" not in script
    assert "gcloud storage buckets create gs://demo-ledger" in script
    for role in BROAD_ROLES:
        assert f"--role={role}" not in script


# ---------------------------------------------------------------------------------------------
# A richer config: several buckets and topics, a completion chain, Data Fusion and Fabric
# ---------------------------------------------------------------------------------------------
def test_dry_run_of_a_rich_config_covers_every_trigger_source(tmp_path, rich_config):
    script = dry_run(rich_config, tmp_path, *RICH_FLAGS)
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    fns = deploys(script)
    buckets = {
        flag(a, "trigger-event-filters")[1].removeprefix("bucket=")
        for a in fns.values()
        if flag(a, "entry-point") == ["on_object_finalized"]
    }
    assert buckets == {"acme-landing", "acme.partner.drop"}  # one function per bucket, two triggers share one
    topics = {flag(a, "trigger-topic")[0] for a in fns.values() if flag(a, "entry-point") == ["on_message"]}
    # datafusion-status: the Data Fusion instance publishes its run status there (on_message completes)
    assert topics == {"orders", "partner_events", "pipeline-completions", "datafusion-status"}
    regions = {
        flag(a, "trigger-location")[0] for a in fns.values() if flag(a, "entry-point") == ["on_job_status"]
    }
    assert regions == {"europe-west1", "us-central1"}  # both Dataflow regions get the push path
    # each storage trigger lives in its bucket's location, looked up first
    assert (
        "BUCKET_LOCATION_ACME_PARTNER_DROP=$(gcloud storage buckets describe gs://acme.partner.drop" in script
    )
    # Fabric credentials come from Secret Manager only: defaults by name, overrides as given
    for argv in fns.values():
        assert flag(argv, "set-secrets") == [
            "FABRIC_CLIENT_SECRET=fabric-sp-secret:3,FABRIC_SALES_REFRESH_TOKEN=fabric-sales-refresh-token:latest"
        ]
        env = flag(argv, "set-env-vars")[0]
        # no credential travels as a plain env var; only the name of the secret a rotated token goes to
        names = [kv.split("=", 1)[0] for kv in env.split(",")]
        assert "FABRIC_CLIENT_SECRET" not in names and "FABRIC_SALES_REFRESH_TOKEN" not in names
        assert "FABRIC_SALES_CLIENT_ID=client-2" in env
        assert (
            "FABRIC_SALES_REFRESH_TOKEN_SECRET=projects/acme-data/secrets/fabric-sales-refresh-token" in env
        )
    # APIs: Dataflow, Data Fusion and Secret Manager are enabled because the config uses them
    enable = next(a for a in commands(script) if a[:3] == ["gcloud", "services", "enable"])
    assert {"dataflow.googleapis.com", "datafusion.googleapis.com", "secretmanager.googleapis.com"} <= set(
        enable
    )
    # every role is bound on its narrowest resource, never a broad one
    assert "gcloud secrets add-iam-policy-binding fabric-sp-secret --project=acme-data" in script
    assert (
        "gcloud beta data-fusion add-iam-policy-binding acme-cdf --location=europe-west1 --project=acme-data --namespace=sales"
        in script
    )
    for role in BROAD_ROLES:
        assert f"--role={role}" not in script


def test_the_plan_builder_lists_the_functions_the_rich_config_needs(tmp_path, rich_config):
    plan = build.build_plan(load_config(rich_config), rich_options(rich_config, tmp_path))
    got = {(f.entry_point, f.trigger, f.source): f.name for f in plan.functions}
    assert got == {
        ("on_object_finalized", "storage", "acme-landing"): "on-object-finalized-acme-landing",
        ("on_object_finalized", "storage", "acme.partner.drop"): names.service_name(
            "on-object-finalized", "acme.partner.drop"
        ),
        ("on_message", "pubsub", "orders"): "on-message-orders",
        ("on_message", "pubsub", "partner_events"): names.service_name("on-message", "partner_events"),
        ("on_message", "pubsub", "pipeline-completions"): "on-message-pipeline-completions",
        ("on_message", "pubsub", "datafusion-status"): "on-message-datafusion-status",  # pushed status
        ("on_job_status", "dataflow", "europe-west1"): "on-job-status",
        ("on_job_status", "dataflow", "us-central1"): "on-job-status-us-central1",
        ("check_runs", "pubsub", "pipeline-sweep"): "check-runs",
        ("api", "http", ""): "api",
    }
    assert all(f.retry for f in plan.functions if f.trigger != "http")
    # every event function gets its dead-letter policy, through the subscription Eventarc made
    updates = [s.argv for s in plan.steps if s.argv[:4] == ("gcloud", "pubsub", "subscriptions", "update")]
    assert len(updates) == len(plan.functions) - 1
    for argv in updates:
        assert "--dead-letter-topic=projects/acme-data/topics/pipeline-dead-letters" in argv
        assert "--max-delivery-attempts=20" in argv


def test_every_role_is_bound_on_the_narrowest_resource(tmp_path, rich_config):
    plan = build.build_plan(load_config(rich_config), rich_options(rich_config, tmp_path))
    runtime = "serviceAccount:pipelines-runtime@acme-data.iam.gserviceaccount.com"
    trigger = "serviceAccount:pipelines-trigger@acme-data.iam.gserviceaccount.com"
    for b in plan.bindings:
        assert b.role not in BROAD_ROLES, b
        if b.scope == "project":
            assert b.role in PROJECT_LEVEL_ALLOWED, b
        if b.role in NARROWEST_SCOPE:
            assert b.scope == NARROWEST_SCOPE[b.role], b
        assert b.why, b
    grants = {(b.member, b.role, b.scope, b.resource) for b in plan.bindings}
    assert (runtime, "roles/storage.objectUser", "bucket", "acme-ledger") in grants
    assert (runtime, "roles/pubsub.publisher", "topic", "pipeline-completions") in grants
    assert (
        runtime,
        "roles/iam.serviceAccountUser",
        "service-account",
        "df-worker@acme-data.iam.gserviceaccount.com",
    ) in grants
    assert (
        runtime,
        "roles/iam.serviceAccountUser",
        "service-account",
        "${PROJECT_NUMBER}-compute@developer.gserviceaccount.com",
    ) in grants
    # Data Fusion: instance roles once per instance, the operator role once per namespace
    fusion = sorted((b.role, b.resource) for b in plan.bindings if b.role.startswith("roles/datafusion."))
    assert fusion == [
        ("roles/datafusion.accessor", "acme-cdf"),
        ("roles/datafusion.operator", "acme-cdf/finance"),
        ("roles/datafusion.operator", "acme-cdf/sales"),
        ("roles/datafusion.viewer", "acme-cdf"),
    ]
    assert (
        runtime,
        "roles/secretmanager.secretAccessor",
        "secret",
        "acme-data/fabric-sales-refresh-token",
    ) in grants
    # Entra rotates a delegated pipeline's refresh token: the runtime adds versions to that secret only
    adders = {
        (b.member, b.resource) for b in plan.bindings if b.role == "roles/secretmanager.secretVersionAdder"
    }
    assert adders == {(runtime, "acme-data/fabric-sales-refresh-token")}
    # the only project-level publisher is the Cloud Storage service agent
    publishers = {
        b.member for b in plan.bindings if b.role == "roles/pubsub.publisher" and b.scope == "project"
    }
    assert publishers == {"serviceAccount:${GCS_SERVICE_AGENT}"}
    # the trigger account invokes exactly the event functions; the api only its configured caller
    invokers = {(b.member, b.resource) for b in plan.bindings if b.role == "roles/run.invoker"}
    event_names = {f.name for f in plan.functions if f.trigger != "http"}
    assert {r for m, r in invokers if m == trigger} == event_names
    assert {m for m, r in invokers if r == "api"} == {"group:data-eng@acme.example"}
    # the runtime account holds nothing on the trigger side and vice versa
    assert not any(
        b.member == runtime and b.role in ("roles/run.invoker", "roles/eventarc.eventReceiver")
        for b in plan.bindings
    )
    assert not any(
        b.member == trigger and b.role.startswith(("roles/storage", "roles/dataflow")) for b in plan.bindings
    )


def test_without_dataflow_there_is_no_status_trigger_and_no_dataflow_role(tmp_path):
    config = tmp_path / "cdf.yaml"
    config.write_text(
        textwrap.dedent(
            """
            settings: {project: p1, region: europe-west1, ledger: {bucket: p1-ledger}}
            pipelines:
              load: {backend: datafusion, instance: cdf, app: load}
            triggers:
              drop: {storage: {bucket: p1-drop}, pipeline: load}
            """
        ),
        encoding="utf-8",
    )
    plan = build.build_plan(load_config(config), options(config, tmp_path))
    # on_message: Data Fusion pushes run status through Pub/Sub (datafusion-status), not Eventarc
    assert {f.entry_point for f in plan.functions} == {
        "on_object_finalized",
        "on_message",
        "check_runs",
        "api",
    }
    assert not any(s.function and s.function.trigger == "dataflow" for s in plan.steps)
    script = render.render_plan(plan)
    for needle in ("statusChanged", "dataflow.googleapis.com", "roles/dataflow", "on-job-status"):
        assert needle not in script
    # no completion trigger: the completion topic exists (runs publish to it) but nothing listens
    assert "on-message-pipeline-completions" not in script
    assert "pubsub topics create pipeline-completions" in script
    assert any("completion_topic is not set" in w for w in plan.warnings)


# ---------------------------------------------------------------------------------------------
# Executing the plan
# ---------------------------------------------------------------------------------------------
def test_running_the_plan_twice_creates_nothing_the_second_time(tmp_path, rich_config):
    plan = build.build_plan(load_config(rich_config), rich_options(rich_config, tmp_path))
    cloud = FakeCloud()
    first = run.run_plan(plan, cloud, echo=lambda _: None, sleep=lambda _: None)
    made = creates(cloud.calls)
    assert {" ".join(c[:4]) for c in made} >= {
        "gcloud storage buckets create",
        "gcloud pubsub topics create",
        "gcloud pubsub subscriptions create",
        "gcloud iam service-accounts create",
    }
    # captured values flow into later commands
    assert first["PROJECT_NUMBER"] == "123456789012"
    assert any(
        "--member=serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com" in c
        for c in cloud.calls
    )
    assert not any("${" in a for c in cloud.calls for a in c)
    # WHEN the same plan runs again against the state the first run left
    cloud.calls.clear()
    second = run.run_plan(plan, cloud, echo=lambda _: None, sleep=lambda _: None)
    # THEN no create is issued at all: every describe found its resource (the scheduler job is updated)
    assert creates(cloud.calls) == []
    assert any(c[:5] == ["gcloud", "scheduler", "jobs", "update", "pubsub"] for c in cloud.calls)
    assert second == first
    # and the staged source is the project's code with the config beside it
    stage = Path(rich_options(rich_config, tmp_path).stage_dir)
    assert (stage / "main.py").is_file() and (stage / "handlers" / "model" / "config.py").is_file()
    assert (stage / "pipelines.yaml").read_text(encoding="utf-8") == RICH
    # with the config's compiled form (a cold start skips the YAML parse) ...
    compiled = json.loads((stage / "pipelines.yaml.compiled.json").read_text(encoding="utf-8"))
    assert compiled["source_sha256"] == hashlib.sha256(RICH.encode()).hexdigest()
    # ... and the sources' bytecode, fresh (no developer's cache) and never re-checked at start
    pycs = list(stage.rglob("*.pyc"))
    assert pycs and all(int.from_bytes(p.read_bytes()[4:8], "little") == 1 for p in pycs)  # unchecked hash


def test_a_create_that_loses_a_race_is_tolerated(tmp_path):
    plan = build.build_plan(load_config(EXAMPLE), example_options(tmp_path))
    cloud = FakeCloud()
    run.run_plan(plan, cloud, echo=lambda _: None, sleep=lambda _: None)
    # WHEN describes fail although everything exists (another deploy just created it)
    cloud.lying_describe = True
    cloud.calls.clear()
    run.run_plan(plan, cloud, echo=lambda _: None, sleep=lambda _: None)
    # THEN the creates answer ALREADY_EXISTS and the deploy goes on to the end
    assert creates(cloud.calls)
    assert cloud.calls[-1][:4] == ["gcloud", "pubsub", "subscriptions", "add-iam-policy-binding"]


def test_the_first_real_failure_stops_the_deploy_with_a_clear_message(tmp_path, capsys):
    cloud = FakeCloud(fail_on=["gcloud", "functions", "deploy", "on-message-orders"])
    args = ["--config", str(EXAMPLE), "--build-dir", str(tmp_path / "build"), *EXAMPLE_FLAGS]
    code = d.main(args, executor=cloud)
    err = capsys.readouterr().err
    assert code == 1
    assert "function on-message-orders (on_message) on pubsub orders" in err
    assert "gcloud functions deploy on-message-orders" in err and "PERMISSION_DENIED" in err
    assert "run the same command again" in err
    # nothing after the failing step ran
    assert cloud.calls[-1][:4] == ["gcloud", "functions", "deploy", "on-message-orders"]


def test_iam_bindings_are_retried_while_a_new_account_propagates(tmp_path):
    plan = build.build_plan(load_config(EXAMPLE), example_options(tmp_path))

    class Flaky(FakeCloud):
        failures = 2

        def run(self, argv: Sequence[str]) -> run.Result:
            if "add-iam-policy-binding" in argv and self.failures:
                self.failures -= 1
                self.calls.append(list(argv))
                return run.Result(
                    1, "", "ERROR: INVALID_ARGUMENT: Service account pipelines-runtime does not exist."
                )
            return super().run(argv)

    sleeps: list[float] = []
    run.run_plan(plan, Flaky(), echo=lambda _: None, sleep=sleeps.append)
    assert sleeps == [10.0, 10.0]


def test_a_usage_error_is_never_retried(tmp_path):
    # GIVEN a gcloud that rejects an IAM binding's command line (exit 2, like argparse)
    plan = build.build_plan(load_config(EXAMPLE), example_options(tmp_path))

    class Rejecting(FakeCloud):
        def run(self, argv: Sequence[str]) -> run.Result:
            if "add-iam-policy-binding" in argv:
                self.calls.append(list(argv))
                return run.Result(
                    2, "", "ERROR: (gcloud.projects.add-iam-policy-binding) unrecognized arguments"
                )
            return super().run(argv)

    cloud = Rejecting()
    sleeps: list[float] = []
    # WHEN the plan runs THEN the first binding fails at once: one attempt, no wait
    with pytest.raises(run.StepFailed) as failed:
        run.run_plan(plan, cloud, echo=lambda _: None, sleep=sleeps.append)
    assert sleeps == []
    assert sum("add-iam-policy-binding" in c for c in cloud.calls) == 1
    assert "exit code: 2 (gcloud rejected the command line: not retried)" in str(failed.value)
    assert "unrecognized arguments" in str(failed.value)


# ---------------------------------------------------------------------------------------------
# Refusals: exit 2 with every problem
# ---------------------------------------------------------------------------------------------
def test_an_invalid_config_exits_2_listing_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """
            settings: {project: p, region: europe-west1, ledger: {}}
            pipelines:
              wc: {backend: dataflw, template: gs://t/wc}
            triggers:
              landing: {storage: {bucket: in}, pipeline: wordcount}
            """
        ),
        encoding="utf-8",
    )
    done = run_cli(["--config", str(bad), "--dry-run"], tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""  # nothing printed to run
    assert "3 problem(s)" in done.stderr
    for problem in ("settings.ledger.bucket", "pipeline 'wc'.backend", "unknown pipeline 'wordcount'"):
        assert problem in done.stderr


def test_options_that_do_not_fit_the_config_exit_2_listing_every_problem(tmp_path, capsys):
    code = d.main(
        [
            "--config",
            str(EXAMPLE),
            "--dry-run",
            "--project=other-project",
            "--ledger-retention-days=1",
            "--max-delivery-attempts=3",
            "--api-invoker=allUsers",
            "--env=FABRIC_REFRESH_TOKEN=x",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    count = re.search(r"\((\d+) problem\(s\)\)", err)
    assert count and int(count.group(1)) >= 5  # the foreign --project also flags each Dataflow pipeline
    for needle in (
        "differs from settings.project",
        "--ledger-retention-days 1",
        "between 5 and 100",
        "'allUsers'",
        "FABRIC_TENANT_ID",
        "goes through Secret Manager only",
    ):
        assert needle in err


def test_fabric_ids_are_required_and_credentials_never_go_in_plain_env(tmp_path, rich_config):
    opts = options(rich_config, tmp_path, env={"FABRIC_CLIENT_SECRET": "s3cret"})
    with pytest.raises(PlanError) as err:
        build.build_plan(load_config(rich_config), opts)
    text = "\n".join(err.value.problems)
    assert "FABRIC_TENANT_ID" in text and "FABRIC_SALES_CLIENT_ID" in text
    assert "--env FABRIC_CLIENT_SECRET: a credential goes through Secret Manager only" in text


# ---------------------------------------------------------------------------------------------
# Small parts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("landing", "on-object-finalized-landing"),
        ("a.b", None),
        ("a_b", None),
        ("x" * 63, None),
    ],
)
def test_function_names_are_valid_short_and_distinct(key, expected):
    name = names.service_name("on-object-finalized", key)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 49
    if expected:
        assert name == expected
    else:
        assert name.endswith(hashlib.sha256(key.encode()).hexdigest()[:8])
    assert names.service_name("on-object-finalized", "a.b") != names.service_name(
        "on-object-finalized", "a_b"
    )


def test_shell_rendering_keeps_variables_expandable_and_everything_else_literal():
    line = render.shell_command(
        ["echo", "--member=serviceAccount:${GCS_SERVICE_AGENT}", "$HOME", "a b", "x$y${Z}"]
    )
    out = subprocess.run(
        ["bash", "-c", f"GCS_SERVICE_AGENT=agent@x Z=zz; {line}"], capture_output=True, text=True, check=True
    ).stdout
    assert out == "--member=serviceAccount:agent@x $HOME a b x$yzz\n"


def test_env_values_with_commas_switch_the_gcloud_delimiter():
    assert names.kv_flag({"A": "1", "B": "2"}) == "A=1,B=2"
    flagged = names.kv_flag({"API_ALLOWED_CALLERS": "a@x,b@y", "C": "3"})
    delim = flagged[1]
    assert delim not in "a@x,b@y"
    assert flagged == f"^{delim}^API_ALLOWED_CALLERS=a@x,b@y{delim}C=3"


def test_fabric_credential_names_follow_handlers_entra():
    entra = pytest.importorskip("handlers.backends.fabric.entra")
    envs = entra.env_names("FABRIC_SALES")
    assert names.default_secret_name(envs["refresh_token"]) == "fabric-sales-refresh-token"
    assert {envs["tenant"], envs["client_id"]} == {"FABRIC_SALES_TENANT_ID", "FABRIC_SALES_CLIENT_ID"}


# ---------------------------------------------------------------------------------------------
# The Terraform module
# ---------------------------------------------------------------------------------------------
def _tf_files() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(TERRAFORM.glob("*.tf"))}


def _unquote(key: str) -> str:
    return key.strip('"')


def _parsed() -> dict[str, dict]:
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 (requirements-dev.txt) parses the module")
    out = {}
    for name, text in _tf_files().items():
        out[name] = hcl2.loads(text)
    return out


def _resources(parsed: dict[str, dict], block: str = "resource") -> dict[tuple[str, str], dict]:
    found = {}
    for doc in parsed.values():
        for entry in doc.get(block, []):
            for rtype, named in entry.items():
                for rname, body in named.items():
                    found[(_unquote(rtype), _unquote(rname))] = body
    return found


def _code_without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_every_terraform_file_parses_and_declares_the_key_resources():
    parsed = _parsed()
    assert set(parsed) == {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}
    resources = _resources(parsed)
    for key in [
        ("google_project_service", "apis"),
        ("google_storage_bucket", "ledger"),
        ("google_pubsub_topic", "completion"),
        ("google_pubsub_topic", "dead_letter"),
        ("google_pubsub_subscription", "dead_letter"),
        ("google_pubsub_topic", "sweep"),
        ("google_pubsub_topic", "trigger"),
        ("google_service_account", "runtime"),
        ("google_service_account", "trigger"),
        ("google_storage_bucket_iam_member", "ledger_runtime"),
        ("google_pubsub_topic_iam_binding", "completion_runtime"),
        ("google_project_iam_member", "runtime_project"),
        ("google_storage_bucket_iam_member", "runtime_bucket"),
        ("google_service_account_iam_member", "runtime_service_account"),
        ("google_data_fusion_instance_iam_member", "runtime_instance"),
        ("terraform_data", "runtime_command"),
        ("google_secret_manager_secret_iam_member", "runtime_secret"),
        ("google_secret_manager_secret_iam_member", "runtime_secret_version_adder"),
        ("google_project_iam_member", "trigger_event_receiver"),
        ("google_project_iam_member", "gcs_pubsub_publisher"),
        ("google_pubsub_topic_iam_member", "dead_letter_publisher"),
        ("google_cloudfunctions2_function", "event"),
        ("google_cloudfunctions2_function", "api"),
        ("google_cloud_run_v2_service_iam_member", "trigger_invoker"),
        ("google_cloud_run_v2_service_iam_member", "api_invoker"),
        ("google_cloud_scheduler_job", "sweep"),
        ("terraform_data", "dead_letter_policy"),
    ]:
        assert key in resources, key
    # the completion topic's publishers are set whole: the runtime account and no one else
    completion = resources[("google_pubsub_topic_iam_binding", "completion_runtime")]
    assert completion["role"] == '"roles/pubsub.publisher"'
    assert completion["members"] == ["${local.runtime_member}"]
    # every event function (one resource over local.event_functions) retries and is delivered as
    # the trigger account; the api has no trigger
    event = resources[("google_cloudfunctions2_function", "event")]
    assert event["for_each"] == "${local.event_functions}"
    trig = event["event_trigger"][0]
    assert _unquote(trig["retry_policy"]) == "RETRY_POLICY_RETRY"
    assert "google_service_account.trigger.email" in trig["service_account_email"]
    assert trig["event_type"] == "${each.value.event_type}"
    assert event["build_config"][0]["entry_point"] == "${each.value.entry_point}"
    assert "event_trigger" not in resources[("google_cloudfunctions2_function", "api")]
    specs = next(e["event_functions"] for e in parsed["main.tf"]["locals"] if "event_functions" in e)
    event_types = dict(re.findall(r'entry_point = "(\w+)", event_type = "?([^",]+)"?', specs))
    assert event_types == {
        "on_object_finalized": functions.STORAGE_FINALIZED,
        "on_message": "google.cloud.pubsub.topic.v1.messagePublished",
        "on_job_status": "s.event_type",  # from var.status_triggers (the backends' declarations)
        "check_runs": "google.cloud.pubsub.topic.v1.messagePublished",
    }
    assert '{attribute = "bucket", value = b}' in specs  # storage triggers filter on their bucket
    job = resources[("google_cloud_scheduler_job", "sweep")]
    assert _unquote(job["schedule"]) == "${var.sweep_schedule}"
    versions = parsed["versions.tf"]["terraform"][0]["required_providers"][0]["google"]
    assert ">= 5" in versions["version"]


def test_terraform_uses_only_declared_variables_and_defined_locals():
    parsed = _parsed()
    declared = {_unquote(k) for entry in parsed["variables.tf"]["variable"] for k in entry}
    code = "\n".join(_code_without_comments(t) for t in _tf_files().values())
    used = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", code))
    assert used - declared == set(), "undeclared variables"
    assert declared - used == set(), "declared but unused variables"
    defined = {
        k
        for doc in parsed.values()
        for entry in doc.get("locals", [])
        for k in entry
        if not k.startswith("__")
    }
    used_locals = set(re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)", code))
    assert used_locals - defined == set(), "undefined locals"
    # every resource or data source referenced exists
    resources = set(_resources(parsed))
    data = set(_resources(parsed, "data"))
    for rtype, rname in re.findall(r"(?<![.\w])(google_[a-z0-9_]+|terraform_data)\.([a-z0-9_]+)", code):
        assert (rtype, rname) in resources, (rtype, rname)
    for rtype, rname in re.findall(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)", code):
        assert (rtype, rname) in data, (rtype, rname)


def test_terraform_grants_no_broad_role_and_matches_the_script():
    parsed = _parsed()
    resources = _resources(parsed)
    code = "\n".join(_code_without_comments(t) for t in _tf_files().values())
    for role in BROAD_ROLES:
        assert f'"{role}"' not in code
    members = [str(b.get("member", "")) for b in resources.values()]
    assert not any("allUsers" in m or "allAuthenticatedUsers" in m for m in members)
    project_roles = {
        _unquote(b["role"]) for (t, _), b in resources.items() if t == "google_project_iam_member"
    }
    # the backends' project roles come from var.backend_grants (checked with the gcloud plan's)
    assert project_roles - {"${each.value.role}"} <= PROJECT_LEVEL_ALLOWED
    # the same API list and function base names as deploy.py
    apis_expr = parsed["main.tf"]["locals"][0]["apis"]
    for api in build.BASE_APIS:
        assert f'"{api}"' in apis_expr
    for base in ("on-object-finalized", "on-message", "on-job-status", '"check-runs"', '"api"'):
        assert base in code
    assert names.MAX_SERVICE_NAME == 49 and "<= 49" in code and "substr(sha256(" in code


# ---------------------------------------------------------------------------------------------
# Backends are declared, never named, in what ships
# ---------------------------------------------------------------------------------------------
def test_no_backend_is_named_in_the_deploy_code_or_the_terraform_module():
    files = [*sorted((ROOT / "deploy").glob("*.py")), *sorted(TERRAFORM.glob("*.tf"))]
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        for name in registry.names():
            found = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w])", text, re.I)
            assert found is None, f"{path.relative_to(ROOT)} names backend {name!r}"


def test_the_generic_secret_flag_and_its_declared_alias_give_the_same_plan(tmp_path, rich_config):
    generic = [f.replace("--fabric-secret=", "--secret=") for f in RICH_FLAGS]
    assert generic != RICH_FLAGS
    assert dry_run(rich_config, tmp_path, *generic) == dry_run(rich_config, tmp_path, *RICH_FLAGS)


def test_the_terraform_variables_carry_the_same_backend_needs_as_the_gcloud_plan(tmp_path, rich_config):
    # GIVEN the rich config WHEN the module writes its Terraform variables
    out = tmp_path / "backends.auto.tfvars.json"
    done = run_cli(["--config", str(rich_config), "--terraform-vars", str(out), *RICH_FLAGS], tmp_path)
    assert done.returncode == 0, done.stderr
    tfvars = json.loads(out.read_text(encoding="utf-8"))
    plan = build.build_plan(load_config(rich_config), rich_options(rich_config, tmp_path))
    runtime = "serviceAccount:pipelines-runtime@acme-data.iam.gserviceaccount.com"
    # THEN the runtime account's grants besides the ledger and the completion topic (which the
    # module makes itself) are exactly the declared grants and the secret accessors
    own = {("roles/storage.objectUser", "acme-ledger"), ("roles/pubsub.publisher", "pipeline-completions")}
    planned = {
        (b.role, b.scope, b.resource)
        for b in plan.bindings
        if b.member == runtime and (b.role, b.resource) not in own
    }
    declared = {(g["role"], g["kind"], g["resource"]) for g in tfvars["backend_grants"]}
    secrets = {
        ("roles/secretmanager.secretAccessor", "secret", f"{s['project']}/{s['secret']}")
        for s in tfvars["backend_secrets"].values()
    }
    adders = {
        ("roles/secretmanager.secretVersionAdder", "secret", f"{s['project']}/{s['secret']}")
        for s in tfvars["backend_secrets"].values()
        if s["kept_as"]
    }
    assert adders  # the rich config's delegated Fabric pipelines rotate their refresh tokens
    assert declared | secrets | adders == planned
    assert len(tfvars["backend_grants"]) + len(secrets) + len(adders) == len(planned)  # nothing granted twice
    assert {"roles/datafusion.operator", "roles/dataflow.developer"} <= {r for r, _, _ in declared}
    # the same secrets mounted, the same APIs, the same status functions' regions and event types
    deploy_argv = next(s.argv for s in plan.steps if s.function and s.function.name == "api")
    mounted = flag(deploy_argv, "set-secrets")[0].split(",")
    assert sorted(
        f"{env}={s['secret']}:{s['version']}" for env, s in tfvars["backend_secrets"].items()
    ) == sorted(mounted)
    enabled = next(s.argv for s in plan.steps if s.argv[:3] == ("gcloud", "services", "enable"))
    assert set(tfvars["backend_apis"]) <= set(enabled)
    status = {(f.source, f.trigger) for f in plan.functions if f.entry_point == "on_job_status"}
    assert {(r, t["backend"]) for t in tfvars["status_triggers"] for r in t["regions"]} == status
    assert [t["event_type"] for t in tfvars["status_triggers"]] == [registry.spec("dataflow").push.event_type]


def test_only_the_runtime_account_may_publish_to_the_completion_topic(tmp_path, rich_config):
    # Chaining acts only on completions from this topic: its whole policy is set, naming one publisher
    # (an added binding would leave every earlier topic-level publisher in place).
    plan = build.build_plan(load_config(rich_config), rich_options(rich_config, tmp_path))
    (set_policy,) = [s for s in plan.steps if s.argv[:4] == ("gcloud", "pubsub", "topics", "set-iam-policy")]
    assert set_policy.argv[4] == "pipeline-completions"
    (write,) = [
        s for s in plan.steps if s.local is not None and getattr(s.local, "path", None) == set_policy.argv[5]
    ]
    assert json.loads(write.local.content) == {
        "bindings": [
            {
                "role": "roles/pubsub.publisher",
                "members": ["serviceAccount:pipelines-runtime@acme-data.iam.gserviceaccount.com"],
            }
        ]
    }
    assert plan.steps.index(write) < plan.steps.index(set_policy)
    assert not [
        s
        for s in plan.steps
        if s.argv[:4] == ("gcloud", "pubsub", "topics", "add-iam-policy-binding")
        and s.argv[4] == "pipeline-completions"
    ]
