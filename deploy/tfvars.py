"""What the configured backends need, as Terraform variables (``--terraform-vars FILE``).

``deploy/terraform`` names no backend: it takes the APIs, the runtime account's grants, the
credential secrets to mount and the status event triggers from these variables, written from the
same declarations (:mod:`deploy.backends`) as the gcloud plan, so both deploy the same grants.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy import backends
from deploy.options import DeployOptions
from handlers.model.config import Config


def variables(cfg: Config, opts: DeployOptions) -> dict[str, Any]:
    """The ``backend_*`` variables of ``deploy/terraform/variables.tf``."""
    ctx = backends.context(opts.project, opts.flags)
    refs = backends.secret_refs(cfg, opts.project, opts.secrets)
    kept = {ref.env: env for ref, env in backends.kept_secrets(cfg, refs)}
    return {
        "backend_apis": backends.apis(cfg),
        "backend_grants": [
            {
                "role": g.role,
                "kind": g.kind,
                "resource": g.resource,
                "project": g.project or opts.project,
                "why": g.why,
                "terraform": g.terraform,
                "attributes": dict(g.attributes),
                "command": list(g.command),
            }
            for g in backends.grants(cfg, ctx)
        ],
        "backend_secrets": {
            ref.env: {
                "project": ref.project,
                "secret": ref.secret,
                "version": ref.version,
                "kept_as": kept.get(ref.env, ""),
            }
            for ref in refs
        },
        "status_triggers": [
            {"backend": t.backend, "event_type": t.event_type, "regions": list(t.regions)}
            for t in backends.status_triggers(cfg, opts.project)
        ],
        "status_topics": [
            {
                "topic": t.topic,
                "publisher": t.publisher,
                "why": t.why,
                "enable": [
                    {"method": c.method, "url": c.url, "body": json.dumps(dict(c.body), sort_keys=True)}
                    for c in t.enable
                ],
            }
            for t in backends.status_topics(cfg, ctx)
        ],
    }


def write(path: str, cfg: Config, opts: DeployOptions) -> None:
    Path(path).write_text(json.dumps(variables(cfg, opts), indent=2, sort_keys=True) + "\n", encoding="utf-8")
