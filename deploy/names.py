"""Names the plan derives: function (Cloud Run service) names, shell variables, topic ids,
secret names, and gcloud's ``K=V`` list syntax."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from deploy.plan import PlanError

# Cloud Run service names (a 2nd gen function is one) are at most 49 characters.
MAX_SERVICE_NAME = 49


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


def default_secret_name(env: str) -> str:
    """The Secret Manager secret a credential env var is read from by default (``A_B`` -> ``a-b``)."""
    return env.lower().replace("_", "-")


def kv_flag(values: Mapping[str, str]) -> str:
    """``K=V,K2=V2``, switching to gcloud's ``^D^`` delimiter syntax when a value holds a comma."""
    items = [f"{k}={v}" for k, v in values.items()]
    if not any("," in item for item in items):
        return ",".join(items)
    for delim in ("@", "|", ";", "#", "~"):
        if not any(delim in item for item in items):
            return f"^{delim}^" + delim.join(items)
    raise PlanError(["env values use every delimiter gcloud can switch to (, @ | ; # ~)"])
