"""The functions and what drives them: one ``on_object_finalized`` per storage-trigger bucket, one
``on_message`` per message topic, one ``on_job_status`` per region per status event type the
backends push, ``check_runs`` on the sweep topic and the HTTP ``api``; then who may invoke them,
the scheduler's tick, and each Eventarc subscription's dead-letter policy."""

from __future__ import annotations

from collections.abc import Sequence

from deploy import iam
from deploy.context import Deployment
from deploy.names import kv_flag, service_name, shell_var
from deploy.plan import CONFIG_IN_SOURCE, SOURCE_ITEMS, Binding, FunctionSpec, StageSource

RUNTIME = "python311"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
STATUS_FUNCTION = "on-job-status"


def deploy_function(d: Deployment, spec: FunctionSpec, trigger_flags: Sequence[str]) -> None:
    env = {**d.base_env, **d.o.env}
    argv = [
        "gcloud",
        "functions",
        "deploy",
        spec.name,
        "--gen2",
        f"--project={d.p}",
        f"--region={d.o.region}",
        f"--runtime={RUNTIME}",
        f"--source={d.o.stage_dir}",
        f"--entry-point={spec.entry_point}",
        f"--service-account={d.runtime_sa}",
        f"--memory={d.o.memory}",
        f"--timeout={d.o.timeout}",
        f"--set-env-vars={kv_flag(env)}",
    ]
    if d.secrets:
        argv.append("--set-secrets=" + ",".join(r.flag(d.p) for r in d.secrets))
    if d.o.max_instances:
        argv.append(f"--max-instances={d.o.max_instances}")
    if d.o.build_service_account:
        argv.append(f"--build-service-account={d.o.build_service_account}")
    if spec.trigger != "http":
        argv += [*trigger_flags, f"--trigger-service-account={d.trigger_sa}", "--retry"]
        d.event_functions.append(spec)
    else:
        argv += [*trigger_flags]
    argv.append("--quiet")
    what = f"{spec.trigger} {spec.source}".strip()
    d.add(argv, f"function {spec.name} ({spec.entry_point}) on {what}", function=spec)


def status_function_name(d: Deployment, index: int, backend: str, region: str) -> str:
    """``on-job-status`` in the deploy region, ``on-job-status-<region>`` elsewhere; a second
    status event type's functions add its first backend's name."""
    base = STATUS_FUNCTION if index == 0 else service_name(STATUS_FUNCTION, backend)
    return base if region == d.o.region else service_name(base, region)


def section_functions(d: Deployment) -> None:
    d.add(
        (),
        f"stage the function source: {', '.join(SOURCE_ITEMS)} and the config as {CONFIG_IN_SOURCE}",
        local=StageSource(d.o.source, d.o.config_path, d.o.stage_dir),
    )
    for bucket in d.buckets:
        location = d.o.bucket_locations.get(bucket) or "${" + shell_var("BUCKET_LOCATION", bucket) + "}"
        deploy_function(
            d,
            FunctionSpec(
                service_name("on-object-finalized", bucket), "on_object_finalized", "storage", bucket
            ),
            [
                f"--trigger-event-filters=type={STORAGE_FINALIZED}",
                f"--trigger-event-filters=bucket={bucket}",
                f"--trigger-location={location}",
            ],
        )
    for topic in d.message_topics:
        deploy_function(
            d,
            FunctionSpec(service_name("on-message", topic), "on_message", "pubsub", topic),
            [f"--trigger-topic={topic}"],
        )
    for index, status in enumerate(d.status_triggers):
        for region in status.regions:
            deploy_function(
                d,
                FunctionSpec(
                    status_function_name(d, index, status.backend, region),
                    "on_job_status",
                    status.backend,
                    region,
                ),
                [f"--trigger-event-filters=type={status.event_type}", f"--trigger-location={region}"],
            )
    deploy_function(
        d,
        FunctionSpec("check-runs", "check_runs", "pubsub", d.o.sweep_topic),
        [f"--trigger-topic={d.o.sweep_topic}"],
    )
    if d.o.include_api:
        deploy_function(
            d,
            FunctionSpec("api", "api", "http", retry=False),
            ["--trigger-http", "--no-allow-unauthenticated"],
        )


def section_invokers(d: Deployment) -> None:
    for spec in d.event_functions:
        why = "Eventarc delivers events to this function only"
        iam.grant(d, Binding(d.trigger, "roles/run.invoker", "function", spec.name, why))
    if d.o.include_api:
        for member in d.o.api_invokers:
            iam.grant(d, Binding(member, "roles/run.invoker", "function", "api", "call the REST trigger API"))


def section_scheduler(d: Deployment) -> None:
    job = d.o.scheduler_job
    where = [f"--location={d.o.region}", f"--project={d.p}"]
    flags = [
        f"--schedule={d.o.sweep_schedule}",
        f"--topic={d.o.sweep_topic}",
        "--message-body={}",
        "--time-zone=Etc/UTC",
    ]
    d.add(
        ["gcloud", "scheduler", "jobs", "create", "pubsub", job, *where, *flags],
        f"scheduler job {job}: publish to {d.o.sweep_topic} on '{d.o.sweep_schedule}' (update if present)",
        check=("gcloud", "scheduler", "jobs", "describe", job, *where),
        update=("gcloud", "scheduler", "jobs", "update", "pubsub", job, *where, *flags),
    )


def section_dead_letters(d: Deployment) -> None:
    dlq = f"projects/{d.p}/topics/{d.o.dead_letter_topic}"
    for spec in d.event_functions:
        trig = shell_var("TRIGGER", spec.name)
        sub = shell_var("SUBSCRIPTION", spec.name)
        d.add(
            [
                "gcloud",
                "functions",
                "describe",
                spec.name,
                "--gen2",
                f"--region={d.o.region}",
                f"--project={d.p}",
                "--format=value(eventTrigger.trigger)",
            ],
            f"the Eventarc trigger GCF created for {spec.name}",
            capture=trig,
        )
        d.add(
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
        d.add(
            [
                "gcloud",
                "pubsub",
                "subscriptions",
                "update",
                "${" + sub + "}",
                f"--dead-letter-topic={dlq}",
                f"--max-delivery-attempts={d.o.max_delivery_attempts}",
            ],
            f"dead letters for {spec.name}: after {d.o.max_delivery_attempts} attempts to {d.o.dead_letter_topic}",
        )
        iam.grant(
            d,
            Binding(
                d.pubsub_agent,
                "roles/pubsub.subscriber",
                "subscription",
                "${" + sub + "}",
                "acknowledge messages it moves to the dead-letter topic",
            ),
        )
