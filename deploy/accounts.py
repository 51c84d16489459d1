"""The two service accounts and their IAM: ``pipelines-runtime`` (what the functions run as: the
ledger, the completion topic, and what the configured backends declare) and ``pipelines-trigger``
(what Eventarc delivers as), each role on the narrowest resource that works."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from deploy import backends, iam
from deploy.context import Deployment
from deploy.plan import Binding, WriteFile


def service_account(d: Deployment, name: str, email: str, display: str) -> None:
    d.ensure(
        ["gcloud", "iam", "service-accounts", "describe", email, f"--project={d.p}"],
        [
            "gcloud",
            "iam",
            "service-accounts",
            "create",
            name,
            f"--project={d.p}",
            f"--display-name={display}",
        ],
        f"service account {email}",
    )


def section_service_accounts(d: Deployment) -> None:
    service_account(d, d.o.runtime_sa_name, d.runtime_sa, "event pipelines: functions runtime")
    service_account(d, d.o.trigger_sa_name, d.trigger_sa, "event pipelines: Eventarc delivery")


def completion_publisher(d: Deployment) -> None:
    """The completion topic's IAM policy, set whole: the runtime account is its only publisher.

    Chaining acts only on completions from this topic (and checks each against the ledger), so no
    one else may publish to it; ``set-iam-policy`` replaces the topic's policy, removing any other
    topic-level grant. Subscribers need no grant on the topic: they read through their own
    subscriptions (roles/pubsub.subscriber on the subscription, or attach rights in the project)."""
    binding = Binding(
        d.runtime,
        "roles/pubsub.publisher",
        "topic",
        d.completion_topic,
        "publish completion events: the only publisher (the topic's policy is set whole)",
    )
    policy = {"bindings": [{"role": binding.role, "members": [binding.member]}]}
    d.add(
        (),
        f"completion topic policy: {binding.member} is the only publisher of {d.completion_topic}",
        local=WriteFile(d.o.completion_policy_file, json.dumps(policy, sort_keys=True)),
    )
    d.add(
        [
            "gcloud",
            "pubsub",
            "topics",
            "set-iam-policy",
            d.completion_topic,
            d.o.completion_policy_file,
            f"--project={d.p}",
        ],
        f"IAM: {binding.role} to {binding.member} on topic {d.completion_topic}, and to no one else: "
        f"{binding.why}",
        binding=binding,
        retries=5,
    )


def section_runtime_iam(d: Deployment) -> None:
    s = d.cfg.settings
    rt = d.runtime
    why = "read, create, replace, list and delete run records"
    iam.grant(d, Binding(rt, "roles/storage.objectUser", "bucket", s.ledger_bucket, why))
    completion_publisher(d)
    for g in backends.grants(d.cfg, d.backend_ctx):
        iam.grant_declared(d, g)
    for ref in d.secrets:
        resource = f"{ref.project}/{ref.secret}"
        binding = Binding(rt, "roles/secretmanager.secretAccessor", "secret", resource, f"read {ref.env}")
        iam.grant(d, binding, ref.project)
    for ref, env in d.kept_secrets:
        resource = f"{ref.project}/{ref.secret}"
        why = f"add each rotated {ref.env} as a new version ({env} names the secret)"
        iam.grant(
            d, Binding(rt, "roles/secretmanager.secretVersionAdder", "secret", resource, why), ref.project
        )


def section_event_iam(d: Deployment) -> None:
    if d.buckets or d.status_triggers:
        iam.grant(
            d,
            Binding(
                d.trigger,
                "roles/eventarc.eventReceiver",
                "project",
                d.p,
                "receive direct Cloud Storage and job status events (granted on the project only)",
            ),
        )
    if d.buckets:
        iam.grant(
            d,
            Binding(
                "serviceAccount:${GCS_SERVICE_AGENT}",
                "roles/pubsub.publisher",
                "project",
                d.p,
                "Cloud Storage publishes bucket events to the topics Eventarc creates",
            ),
        )
    iam.grant(
        d,
        Binding(
            d.pubsub_agent,
            "roles/pubsub.publisher",
            "topic",
            d.o.dead_letter_topic,
            "forward undeliverable events to the dead-letter topic",
        ),
    )
    for status in d.status_topics:
        iam.grant(d, Binding(status.publisher, "roles/pubsub.publisher", "topic", status.topic, status.why))
        for call in status.enable:
            d.add(rest_call_argv(call.method, call.url, call.body), f"{call.why} ({call.method} {call.url})")
    if d.o.pubsub_token_creator:
        iam.grant(
            d,
            Binding(
                d.pubsub_agent,
                "roles/iam.serviceAccountTokenCreator",
                "service-account",
                d.trigger_sa,
                "projects whose Pub/Sub agent predates 2021-04-08 mint push tokens",
            ),
        )


def rest_call_argv(method: str, url: str, body: Mapping[str, Any]) -> list[str]:
    """A Google REST call no gcloud command makes, as ``bash -c 'curl ...'``: the access token is
    fetched inside the shell, so it never appears in the plan, its output or an error message."""
    data = json.dumps(dict(body), separators=(",", ":"), sort_keys=True)
    script = (
        f"curl --fail-with-body -sS -X {shlex.quote(method)} "
        '-H "Authorization: Bearer $(gcloud auth print-access-token)" '
        "-H 'Content-Type: application/json' "
        f"{shlex.quote(url)} -d {shlex.quote(data)}"
    )
    return ["bash", "-c", script]
