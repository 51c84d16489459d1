"""The run ledger bucket: private, uniform access, no versioning, and a lifecycle rule that
deletes run records once no event can be redelivered for them."""

from __future__ import annotations

import json

from deploy.context import Deployment
from deploy.plan import WriteFile


def section_ledger(d: Deployment) -> None:
    s = d.cfg.settings
    url = f"gs://{s.ledger_bucket}"
    location = d.o.ledger_location or d.o.region
    d.ensure(
        ["gcloud", "storage", "buckets", "describe", url, f"--project={d.p}"],
        [
            "gcloud",
            "storage",
            "buckets",
            "create",
            url,
            f"--project={d.p}",
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
    days = d.o.ledger_retention_days
    if days > 0:
        rule = {
            "rule": [
                {
                    "action": {"type": "Delete"},
                    "condition": {"age": days, "matchesPrefix": [f"{s.ledger_prefix}runs/"]},
                }
            ]
        }
        d.add(
            (),
            f"lifecycle rule: delete run records ({s.ledger_prefix}runs/) not written for {days} days",
            local=WriteFile(d.o.lifecycle_file, json.dumps(rule, sort_keys=True)),
        )
        update.append(f"--lifecycle-file={d.o.lifecycle_file}")
    d.add(update, "ledger settings: private, uniform access, no versioning (+ lifecycle)")
