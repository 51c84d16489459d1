"""The Pub/Sub topics: completions, dead letters (with a subscription that keeps them), the sweep
tick, the topics backends publish run status to, and every pubsub trigger's topic."""

from __future__ import annotations

from deploy.context import Deployment


def topic(d: Deployment, name: str, why: str) -> None:
    d.ensure(
        ["gcloud", "pubsub", "topics", "describe", name, f"--project={d.p}"],
        ["gcloud", "pubsub", "topics", "create", name, f"--project={d.p}"],
        f"topic {name}: {why}",
    )


def section_topics(d: Deployment) -> None:
    topic(d, d.completion_topic, "completion events (and chaining through them)")
    topic(d, d.o.dead_letter_topic, "events the functions failed to handle after every retry")
    sub = f"{d.o.dead_letter_topic}-sub"
    d.ensure(
        ["gcloud", "pubsub", "subscriptions", "describe", sub, f"--project={d.p}"],
        [
            "gcloud",
            "pubsub",
            "subscriptions",
            "create",
            sub,
            f"--topic={d.o.dead_letter_topic}",
            "--message-retention-duration=7d",
            f"--project={d.p}",
        ],
        f"subscription {sub}: keeps dead letters 7 days to inspect and replay (a topic alone drops them)",
    )
    topic(d, d.o.sweep_topic, "the scheduler's tick for check_runs")
    for status in d.status_topics:
        topic(d, status.topic, status.why)
    if d.o.create_user_topics:
        for t in d.pubsub_topics:
            if t not in (d.completion_topic, d.o.sweep_topic, d.o.dead_letter_topic):
                topic(d, t, "a pubsub trigger's topic (created only if absent)")
