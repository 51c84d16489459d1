"""Which triggers an event matches, and why the others did not.

Every trigger of the event's kind is evaluated (objects, messages, and completions against the
``completion`` triggers); the result keeps the reasons of a near miss, which the functions log and
``explain`` shows. One event may match several triggers: each launches its own pipeline once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.model.completions import Completion
from handlers.model.config import Condition, Config, Trigger, TriggerKind
from handlers.model.events import MessageEvent, ObjectEvent
from handlers.model.templates import dotted


@dataclass(frozen=True)
class Match:
    trigger: Trigger
    reasons: tuple[str, ...] = field(default_factory=tuple)  # empty = matched

    @property
    def matched(self) -> bool:
        return not self.reasons


def object_reasons(trigger: Trigger, event: ObjectEvent) -> list[str]:
    """Why ``trigger`` does not match this object (empty when it does)."""
    m = trigger.storage
    assert m is not None
    obj = event.object
    if obj.bucket != m.bucket:  # nothing else is evaluated: a name costs work only in its own bucket
        return [f"bucket is {obj.bucket!r}, trigger wants {m.bucket!r}"]
    reasons = []
    if m.prefix and not obj.name.startswith(m.prefix):
        reasons.append(f"name does not start with {m.prefix!r}")
    if m.suffix and not obj.name.endswith(m.suffix):
        reasons.append(f"name does not end with {m.suffix!r}")
    if m.glob_matcher is not None and not m.glob_matcher.match(obj.name):
        reasons.append(f"name does not match glob {m.glob!r}")
    if m.regex is not None and not m.regex.search(obj.name):
        reasons.append(f"name does not match regex {m.regex.pattern!r}")
    if m.content_types:
        ct = (obj.content_type or "").split(";", 1)[0].strip().lower()
        if not any(
            ct == c.lower() or (c.endswith("/*") and ct.startswith(c[:-1].lower())) for c in m.content_types
        ):
            reasons.append(f"content type {obj.content_type!r} is not one of {list(m.content_types)}")
    if m.min_size is not None and (obj.size is None or obj.size < m.min_size):
        reasons.append(f"size {obj.size} is below min_size {m.min_size}")
    if m.max_size is not None and (obj.size is None or obj.size > m.max_size):
        reasons.append(f"size {obj.size} is above max_size {m.max_size}")
    return reasons


def _condition_reason(cond: Condition, found: bool, value: Any, where: str) -> str | None:
    label = f"{where}.{cond.path}"
    if cond.exists is not None and found != cond.exists:
        return f"{label} {'is missing' if cond.exists else 'is present'}"
    if not found:
        if cond.exists is None:
            return f"{label} is missing"
        return None
    text = (
        value
        if isinstance(value, str)
        else ("true" if value is True else "false" if value is False else str(value))
    )
    if cond.equals is not None and text != cond.equals:
        return f"{label} is {text!r}, wants {cond.equals!r}"
    if cond.one_of is not None and text not in cond.one_of:
        return f"{label} is {text!r}, wants one of {list(cond.one_of)}"
    if cond.regex is not None and not cond.regex.search(text):
        return f"{label} {text!r} does not match {cond.regex.pattern!r}"
    if cond.prefix is not None and not text.startswith(cond.prefix):
        return f"{label} does not start with {cond.prefix!r}"
    if cond.suffix is not None and not text.endswith(cond.suffix):
        return f"{label} does not end with {cond.suffix!r}"
    return None


def message_reasons(trigger: Trigger, event: MessageEvent) -> list[str]:
    """Why ``trigger`` does not match this message (empty when it does)."""
    m = trigger.pubsub
    assert m is not None
    reasons = []
    if event.topic != m.topic:
        reasons.append(f"topic is {event.topic!r}, trigger wants {m.topic!r}")
    for cond in m.attributes:
        found = cond.path in event.attributes
        why = _condition_reason(cond, found, event.attributes.get(cond.path), "attributes")
        if why:
            reasons.append(why)
    if m.data:
        payload = event.json
        for cond in m.data:
            try:
                value, found = dotted(payload, cond.path), True
            except KeyError:
                value, found = None, False
            why = _condition_reason(cond, found, value, "data")
            if why:
                reasons.append(
                    why + ("" if isinstance(payload, Mapping) else " (message data is not a JSON object)")
                )
    return reasons


def match_object(config: Config, event: ObjectEvent) -> list[Match]:
    return [Match(t, tuple(object_reasons(t, event))) for t in config.triggers_of(TriggerKind.STORAGE)]


def match_message(config: Config, event: MessageEvent) -> list[Match]:
    return [Match(t, tuple(message_reasons(t, event))) for t in config.triggers_of(TriggerKind.PUBSUB)]


def completion_reasons(trigger: Trigger, comp: Completion) -> list[str]:
    """Why ``trigger`` does not act on this completion (empty when it does). A fan-in acts on every
    state of its upstreams: a failure abandons the join."""
    spec = trigger.completion
    assert spec is not None
    if comp.pipeline not in spec.upstream:
        return [f"upstream pipeline is {comp.pipeline!r}, trigger waits for {list(spec.upstream)}"]
    if not spec.is_fan_in and comp.state not in spec.states:
        return [f"upstream state is {comp.state!r}, trigger wants one of {list(spec.states)}"]
    return []


def match_completion(config: Config, comp: Completion) -> list[Match]:
    return [Match(t, tuple(completion_reasons(t, comp))) for t in config.triggers_of(TriggerKind.COMPLETION)]
