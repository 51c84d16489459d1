"""Secret Manager secrets the functions mount as environment variables (``--set-secrets``)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SecretRef:
    """A Secret Manager secret mounted as an env var."""

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
