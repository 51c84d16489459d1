"""Run identity: which deliveries are the same run, and the one type that names a run.

- the **identity** of an event for a trigger (:func:`identity_of`): ``bucket/name#generation`` for
  objects; the message id, or the configured ``dedupe_by`` field, for messages; the upstream
  completion id for chains; the join key for a fan-in; pipeline and idempotency key for the API;
- a replay's **rerun generation** (``--rerun``): ``#rerun=<n>`` after the identity, so a deliberate
  rerun is another run (another key), and the live run (generation 0) is never touched;
- the **run key** (:class:`RunKey`) ``<trigger>-<hash>``: the trigger's name and 20 hex characters
  of a hash of trigger and identity (:func:`handlers.core.ids.digest`), stable across redeliveries.
  :class:`RunKey` is the only code that formats, parses and validates run keys: from ledger text,
  from the job labels a launch writes (:meth:`RunKey.from_labels`), from REST paths
  (:data:`RunKey.PATTERN`);
- the **job name** ``<pipeline>-<hash>``, valid for Dataflow (``[a-z]([-a-z0-9]{0,1022}[a-z0-9])?``)
  whatever the object name holds (spaces, unicode, ``#``, ``%``, newlines, 1024 bytes);
- the **labels** on every job (trigger, pipeline, run hash).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from handlers.core.errors import ParameterError
from handlers.core.ids import digest
from handlers.model.config import Trigger
from handlers.model.events import MessageEvent, ObjectEvent, message_lookup

HASH_CHARS = 20
LABEL_TRIGGER = "pipeline-trigger"
LABEL_PIPELINE = "pipeline"
LABEL_RUN_HASH = "run-key-hash"
_TRIGGER = r"[a-z][a-z0-9_-]{0,62}"  # the config's trigger names (and the reserved "api")
_HASH = rf"[0-9a-f]{{{HASH_CHARS}}}"


class InvalidRunKey(ValueError):
    """Text that is not a run key this project could have made."""


@dataclass(frozen=True, order=True)
class RunKey:
    """One run: its trigger and the hash of (trigger, identity)."""

    trigger: str
    hash: str

    PATTERN: ClassVar[str] = rf"(?P<trigger>{_TRIGGER})-(?P<hash>{_HASH})"
    _RE: ClassVar[re.Pattern[str]] = re.compile(PATTERN)

    @classmethod
    def of(cls, trigger: str, identity: str) -> RunKey:
        """The run key of ``identity`` delivered to ``trigger``."""
        return cls(trigger, digest(trigger, identity, length=HASH_CHARS))

    @classmethod
    def parse(cls, text: Any) -> RunKey:
        """Validate and split ``<trigger>-<hash>``; raises :class:`InvalidRunKey`."""
        m = cls._RE.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise InvalidRunKey(f"not a run key: {text!r}"[:200])
        return cls(m.group("trigger"), m.group("hash"))

    @classmethod
    def from_labels(cls, labels: Mapping[str, Any]) -> RunKey | None:
        """The run named by the labels :meth:`labels` wrote on a job; ``None`` for any other labels
        (a job this project did not launch, or forged ones)."""
        trigger, run_hash = labels.get(LABEL_TRIGGER), labels.get(LABEL_RUN_HASH)
        try:
            return cls.parse(f"{trigger}-{run_hash}") if isinstance(trigger, str) else None
        except InvalidRunKey:
            return None

    def __str__(self) -> str:
        return f"{self.trigger}-{self.hash}"

    def job_name(self, pipeline: str) -> str:
        """A valid, deterministic job name for this run of ``pipeline``."""
        return f"{slug(pipeline)[:60]}-{self.hash}"

    def labels(self, pipeline: str) -> dict[str, str]:
        """The labels every job of this run carries (Dataflow, Dataproc...)."""
        return {
            LABEL_TRIGGER: label_value(self.trigger),
            LABEL_PIPELINE: label_value(pipeline),
            LABEL_RUN_HASH: self.hash,
        }


def slug(text: str) -> str:
    """Lowercase ``[-a-z0-9]``, no leading digit or dash, no double dashes."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not s or not s[0].isalpha():
        s = "p-" + s
    return s.strip("-")


def label_value(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def identity_of(trigger: Trigger, event: Any) -> str:
    """The part of the event that makes a delivery the same run as another delivery; a replay's
    rerun generation ``n`` (``--rerun``) adds ``#rerun=n``: another run key, never the live run's."""
    base = _base_identity(trigger, event)
    rerun = getattr(event, "rerun", 0)
    return f"{base}#rerun={rerun}" if rerun else base


def _base_identity(trigger: Trigger, event: Any) -> str:
    if isinstance(event, ObjectEvent):
        return event.identity
    if isinstance(event, MessageEvent):
        dedupe = trigger.pubsub.dedupe_by if trigger.pubsub else None
        if dedupe:
            try:
                value = message_lookup(event)(dedupe)
            except KeyError:
                value = None
            if value in (None, ""):
                raise ParameterError(
                    f"dedupe_by {dedupe}: the message has no value there", trigger=trigger.name, field=dedupe
                )
            return f"{dedupe}={value if isinstance(value, str) else repr(value)}"
        return f"message:{event.message_id}"
    identity = getattr(event, "identity", None)
    if not identity:
        raise ParameterError("event has no identity", trigger=trigger.name)
    return str(identity)


def run_key_of(trigger: Trigger, event: Any) -> RunKey:
    """The run ``event`` means for ``trigger``; a :class:`ParameterError` when it has no identity."""
    return RunKey.of(trigger.key_name, identity_of(trigger, event))
