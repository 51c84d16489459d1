"""What every section of the plan reads and writes: the config, the options, the names derived
from them, and the plan being built."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy import backends
from deploy.names import topic_id
from deploy.options import DeployOptions
from deploy.plan import CONFIG_IN_SOURCE, FunctionSpec, Plan, Step
from deploy.secrets import SecretRef
from handlers.model.config import Config

DEFAULT_COMPLETION_TOPIC = "pipeline-completions"


class Deployment:
    """A validated config and its options, the names they imply, and the :class:`Plan` so far."""

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
        self.backend_ctx = backends.context(self.p, opts.flags)
        # topics backends publish run status to: on_message receives them like trigger topics
        self.status_topics = backends.status_topics(cfg, self.backend_ctx)
        topics = set(self.pubsub_topics) | ({self.completion_topic} if self.has_completion else set())
        topics |= {t.topic for t in self.status_topics}
        self.message_topics = sorted(topics)
        self.status_triggers = backends.status_triggers(cfg, self.p)
        self.secrets: list[SecretRef] = backends.secret_refs(cfg, self.p, opts.secrets)
        self.event_functions: list[FunctionSpec] = []
        # The functions learn their project from the config; only a config without one needs the env var.
        self.base_env = {"PIPELINES_CONFIG": CONFIG_IN_SOURCE}
        if not config_names_project(opts.config_path):
            self.base_env["GOOGLE_CLOUD_PROJECT"] = self.p
        # Credentials a backend rotates go back to the secret they were mounted from (its name here).
        self.kept_secrets = backends.kept_secrets(cfg, self.secrets)
        for ref, env in self.kept_secrets:
            self.base_env[env] = f"projects/{ref.project}/secrets/{ref.secret}"

    def add(self, argv: Sequence[str], comment: str, **kw: Any) -> None:
        self.plan.steps.append(Step(argv=tuple(argv), comment=comment, **kw))

    def ensure(self, describe: Sequence[str], create: Sequence[str], comment: str) -> None:
        """Create only when ``describe`` fails (``describe || create``)."""
        self.add(create, comment, check=tuple(describe))


def config_names_project(path: str) -> bool:
    """Whether the YAML at ``path`` sets ``settings.project`` itself (else it comes from the env)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    settings = raw.get("settings") if isinstance(raw, dict) else None
    return isinstance(settings, dict) and bool(settings.get("project"))
