"""What the configured backends need from the deploy, as they declare it.

The only module of ``deploy/`` that reads :mod:`handlers.backends.registry`: every backend-specific
API, IAM grant, credential, problem, warning, flag and status trigger comes from a backend's
:class:`~handlers.backends.contract.DeployNeeds` and :class:`~handlers.backends.contract.StatusPush`,
so the gcloud plan and the Terraform variables never name a backend.

Backends that share one declaration (two flavours of one service) form one :class:`Group`: their
pipelines are declared together, so a grant common to both is made once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploy.names import default_secret_name
from deploy.secrets import SecretRef
from handlers.backends import registry
from handlers.backends.contract import (
    Credentials,
    DeployContext,
    DeployFlag,
    DeployNeeds,
    Grant,
    StatusTopic,
)
from handlers.model.config import Config, Pipeline


@dataclass(frozen=True)
class Group:
    """The config's pipelines of the backends that share one deploy declaration."""

    names: tuple[str, ...]
    needs: DeployNeeds
    pipelines: tuple[Pipeline, ...]

    @property
    def label(self) -> str:
        return "/".join(self.names)


@dataclass(frozen=True)
class StatusTrigger:
    """An Eventarc event type some backends push their job status as, and the regions (of the
    deploy project: Eventarc delivers there only) where the config runs such pipelines."""

    backend: str  # the first backend declaring the event type, to tell the functions apart
    event_type: str
    regions: tuple[str, ...]


def flags() -> list[DeployFlag]:
    """Every deploy flag the backends declare, once each (for the command line)."""
    return list({f.flag: f for s in registry.specs() for f in s.deploy.flags}.values())


def context(project: str, flags: Mapping[str, Any]) -> DeployContext:
    """What the declarations may read (the project number is looked up by the plan first)."""
    return DeployContext(project=project, flags=flags)


def groups(cfg: Config) -> list[Group]:
    """The config's pipelines (in config order) grouped by deploy declaration, in registry order."""
    order = registry.names()
    found: dict[DeployNeeds, tuple[list[str], list[Pipeline]]] = {}
    for p in cfg.pipelines.values():
        names, members = found.setdefault(registry.spec(p.backend).deploy, ([], []))
        if p.backend not in names:
            names.append(p.backend)
        members.append(p)
    out = [
        Group(tuple(sorted(names, key=order.index)), needs, tuple(members))
        for needs, (names, members) in found.items()
    ]
    return sorted(out, key=lambda g: order.index(g.names[0]))


def apis(cfg: Config) -> list[str]:
    """The services the configured backends need enabled."""
    return list(dict.fromkeys(api for g in groups(cfg) for api in g.needs.apis))


def grants(cfg: Config, ctx: DeployContext) -> list[Grant]:
    """The runtime account's grants the configured backends need (secrets apart: :func:`secret_refs`)."""
    return [grant for g in groups(cfg) for grant in g.needs.grants(g.pipelines, ctx)]


def status_topics(cfg: Config, ctx: DeployContext) -> list[StatusTopic]:
    """The Pub/Sub topics the configured backends publish run status to (for ``on_message``)."""
    return [topic for g in groups(cfg) for topic in g.needs.status_topics(g.pipelines, ctx)]


def credentials(cfg: Config) -> Credentials:
    """The credential env vars the configured pipelines read, merged over every backend."""
    creds = [g.needs.credentials(g.pipelines) for g in groups(cfg)]
    secrets = {env for c in creds for env in c.secrets}
    optional = {env for c in creds for env in c.optional_secrets} - secrets
    plain = {env for c in creds for env in c.plain}
    kept = {pair for c in creds for pair in c.kept}
    return Credentials(
        tuple(sorted(secrets)), tuple(sorted(optional)), tuple(sorted(plain)), tuple(sorted(kept))
    )


def kept_secrets(cfg: Config, refs: list[SecretRef]) -> list[tuple[SecretRef, str]]:
    """The mounted secrets a backend keeps rotated values in, each with the env var that names it."""
    kept = dict(credentials(cfg).kept)
    return [(ref, kept[ref.env]) for ref in refs if ref.env in kept]


def secret_refs(cfg: Config, project: str, chosen: Mapping[str, str]) -> list[SecretRef]:
    """The secrets to mount: each required credential from its default secret, unless ``chosen``
    (``--secret ENV=SECRET[:VERSION]``) names another, plus whatever else ``chosen`` names."""
    refs = {env: default_secret_name(env) for env in credentials(cfg).secrets}
    refs.update(chosen)
    return [SecretRef.parse(env, ref, project) for env, ref in sorted(refs.items())]


def problems(
    cfg: Config, ctx: DeployContext, env: Mapping[str, str], secrets: Mapping[str, str]
) -> list[str]:
    """Every reason the options do not fit the configured backends."""
    out: list[str] = []
    for g in groups(cfg):
        out += g.needs.problems(g.pipelines, ctx)
    for g in groups(cfg):
        creds = g.needs.credentials(g.pipelines)
        out += [
            f"{g.label} pipelines read {name}: pass --env {name}=... (or --secret {name}=SECRET)"
            for name in creds.plain
            if name not in env and name not in secrets
        ]
        out += [
            f"--env {name}: a credential goes through Secret Manager only (--secret {name}=SECRET)"
            for name in (*creds.secrets, *creds.optional_secrets)
            if name in env
        ]
    c = credentials(cfg)
    if secrets and not (c.secrets or c.optional_secrets or c.plain):
        out.append("--secret given but no pipeline of the config reads a credential")
    return out


def warnings(cfg: Config, ctx: DeployContext) -> list[str]:
    """What the deploy cannot do for the configured backends, for people to do by hand."""
    return [w for g in groups(cfg) for w in g.needs.warnings(g.pipelines, ctx)]


def status_triggers(cfg: Config, project: str) -> list[StatusTrigger]:
    """One :class:`StatusTrigger` per event type the config's backends push through Eventarc."""
    first: dict[str, str] = {}
    for s in registry.specs():
        if s.push is not None and s.push.event_type is not None:
            first.setdefault(s.push.event_type, s.name)
    regions: dict[str, set[str]] = {}
    for p in cfg.pipelines.values():
        push = registry.spec(p.backend).push
        if push is not None and push.event_type is not None and p.project == project:
            regions.setdefault(push.event_type, set()).add(p.region)
    return [
        StatusTrigger(first[event_type], event_type, tuple(sorted(regions[event_type])))
        for event_type in first
        if event_type in regions
    ]
