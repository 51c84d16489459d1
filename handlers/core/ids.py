"""The one recipe for the ids this project derives: a truncated SHA-256 of its parts.

``digest("a", "b", length=20)`` is the first 20 hex characters of ``sha256("a\\nb")``. Every derived
id goes through it: run hashes (20), completion event ids (32), fan-in join documents (24), manual
request hashes (32). Parts are joined with a newline, which no trigger or pipeline name can hold.
"""

from __future__ import annotations

import hashlib


def digest(*parts: str, length: int = 32) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:length]
