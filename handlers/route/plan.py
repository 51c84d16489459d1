"""The one decision path: what an event means, decided before anything is written or launched.

::

    event ──plan_event──> EventPlan
                          ├─ too old? (settings.max_event_age)
                          ├─ a storage notification: the object it carries, or ignored
                          ├─ a completion: every completion trigger (single chain or fan-in join)
                          └─ one TriggerDecision per trigger of the event's kind
                               ├─ its match, with the reasons of a near miss
                               ├─ plan_launch -> LaunchPlan: run key -> job name, labels ->
                               │                 rendered parameters and outputs (or why not)
                               ├─ plan_join   -> JoinPlan: the fan-in join key, wait or abandon
                               └─ plan_window -> WindowPlan: a batched trigger's window key and
                                                 the object's manifest line (the window, once
                                                 closed, is launched by plan_launch of a WindowEvent)

The functions (:mod:`handlers.entry.functions`) act on these plans: the launch service claims and
launches a :class:`LaunchPlan`, the fan-in records a :class:`JoinPlan`'s arrival, the windows
(:mod:`handlers.launch.windows`) add a :class:`WindowPlan`'s object to its window. ``explain`` and
every dry run render the very same plans, so what they show is what the live path does.
Nothing here reads or writes the ledger or calls a backend.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from handlers.core.errors import EventError, ParameterError
from handlers.core.times import age_seconds
from handlers.model.completions import Completion, FanInEvent, is_completion_message, parse_completion
from handlers.model.config import Config, Pipeline, Trigger
from handlers.model.events import MessageEvent, ObjectEvent, object_event_from_notification
from handlers.model.windows import Member
from handlers.route.identity import RunKey, run_key_of
from handlers.route.match import Match, match_completion, match_message, match_object
from handlers.route.render import Rendered, render, run_values


class Action(enum.StrEnum):
    """What one trigger does with one event."""

    LAUNCH = "launch"  # claim the run and launch its job (once, however often the event arrives)
    FAIL = "fail"  # record the run LAUNCH_FAILED with the reason (parameters could not be rendered)
    SKIP = "skip"  # the event has no identity for this trigger: acknowledged without a run
    WAIT = "wait"  # fan-in: record this upstream's arrival; launch once every upstream succeeded
    ABANDON = "abandon"  # fan-in: an upstream did not succeed: the join never launches
    JOIN = "join"  # batch: the object joins the open window of its key (the window launches once)


@dataclass(frozen=True)
class LaunchPlan:
    """What launching ``trigger``'s pipeline for ``event`` means: its run and rendered launch."""

    trigger: Trigger
    pipeline: Pipeline
    event: Any
    action: Action
    run_key: RunKey | None = None
    rendered: Rendered | None = None
    error: ParameterError | None = None

    @property
    def job_name(self) -> str | None:
        return self.run_key.job_name(self.pipeline.name) if self.run_key else None

    @property
    def labels(self) -> dict[str, str]:
        return self.run_key.labels(self.pipeline.name) if self.run_key else {}


def plan_launch(config: Config, trigger: Trigger, event: Any) -> LaunchPlan:
    """Identity -> run key -> rendered parameters and outputs, or the reason there is no launch."""
    pipeline = config.pipelines[trigger.pipeline]
    try:
        key = run_key_of(trigger, event)
    except ParameterError as exc:
        return LaunchPlan(trigger, pipeline, event, Action.SKIP, error=exc)
    try:
        rendered = render(config, trigger, pipeline, event, key)
    except ParameterError as exc:
        return LaunchPlan(trigger, pipeline, event, Action.FAIL, run_key=key, error=exc)
    return LaunchPlan(trigger, pipeline, event, Action.LAUNCH, run_key=key, rendered=rendered)


def join_key_for(trigger: Trigger, comp: Completion) -> str:
    """The fan-in join key ``comp`` brings to ``trigger`` (rendered from that one completion)."""
    assert trigger.completion is not None and trigger.completion.join_key is not None
    return trigger.completion.join_key.render(run_values(comp, trigger), name="join_key")


@dataclass(frozen=True)
class JoinPlan:
    """What one completion does to a fan-in: the join key it brings and wait or abandon.

    ``partial``: the launch as far as this one upstream can tell (the run key is the join's, final;
    parameters naming other upstreams are filled in when they arrive).
    """

    trigger: Trigger
    completion: Completion
    action: Action
    join_key: str | None = None
    waiting_for: tuple[str, ...] = ()
    partial: LaunchPlan | None = None
    error: ParameterError | None = None


def plan_join(config: Config, trigger: Trigger, comp: Completion) -> JoinPlan:
    spec = trigger.completion
    assert spec is not None
    try:
        key = join_key_for(trigger, comp)
    except ParameterError as exc:
        return JoinPlan(trigger, comp, Action.SKIP, error=exc)
    if comp.state != "SUCCEEDED":
        return JoinPlan(trigger, comp, Action.ABANDON, join_key=key)
    partial = plan_launch(
        config, trigger, FanInEvent(trigger.name, key, {comp.pipeline: dict(comp.data)}, comp.event_time)
    )
    others = tuple(u for u in spec.upstream if u != comp.pipeline)
    return JoinPlan(trigger, comp, Action.WAIT, join_key=key, waiting_for=others, partial=partial)


def window_key_for(config: Config, trigger: Trigger, event: ObjectEvent) -> str:
    """The window key ``event`` brings to a batched ``trigger`` (``""``: one window at a time)."""
    assert trigger.batch is not None
    if trigger.batch.key is None:
        return ""
    lookup = run_values(event, trigger, config.pipelines[trigger.pipeline])
    return trigger.batch.key.render(lookup, name="batch.key")


@dataclass(frozen=True)
class WindowPlan:
    """What one object does to a batched trigger: join the open window of its key."""

    trigger: Trigger
    event: ObjectEvent
    action: Action  # JOIN, or SKIP when the key cannot be rendered from this object
    key: str | None = None
    member: Member | None = None
    error: ParameterError | None = None


def plan_window(config: Config, trigger: Trigger, event: ObjectEvent) -> WindowPlan:
    try:
        key = window_key_for(config, trigger, event)
    except ParameterError as exc:
        exc.trigger = trigger.name
        return WindowPlan(trigger, event, Action.SKIP, error=exc)
    return WindowPlan(trigger, event, Action.JOIN, key=key, member=Member.of(event))


@dataclass(frozen=True)
class TriggerDecision:
    """One trigger against one event: matched or why not, and what it would do."""

    match: Match
    launch: LaunchPlan | None = None
    join: JoinPlan | None = None
    window: WindowPlan | None = None

    @property
    def trigger(self) -> Trigger:
        return self.match.trigger

    @property
    def action(self) -> Action | None:
        if self.window is not None:
            return self.window.action
        if self.join is not None:
            return self.join.action
        return self.launch.action if self.launch is not None else None


@dataclass
class EventPlan:
    """Everything one delivered event means for the config."""

    kind: str  # storage | pubsub | completion
    event: Any
    age_seconds: float
    max_age_seconds: float
    decisions: list[TriggerDecision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored: str | None = None  # why the event launches nothing at all (not a match question)
    refused: str | None = None  # why the event is distrusted and launches nothing (a warning)

    @property
    def too_old(self) -> bool:
        return self.age_seconds > self.max_age_seconds

    @property
    def matched(self) -> list[TriggerDecision]:
        return [d for d in self.decisions if d.match.matched]

    @property
    def acting(self) -> list[TriggerDecision]:
        """Decisions that would do something (launch, or record a fan-in arrival)."""
        if self.too_old or self.ignored or self.refused:
            return []
        acts = (Action.LAUNCH, Action.FAIL, Action.WAIT, Action.ABANDON, Action.JOIN)
        return [d for d in self.matched if d.action in acts]


def _decide_one(config: Config, m: Match, event: Any) -> TriggerDecision:
    if not m.matched:
        return TriggerDecision(m)
    if m.trigger.batch is not None and isinstance(event, ObjectEvent):
        return TriggerDecision(m, window=plan_window(config, m.trigger, event))
    return TriggerDecision(m, launch=plan_launch(config, m.trigger, event))


def _decide(config: Config, matches: list[Match], event: Any) -> list[TriggerDecision]:
    return [_decide_one(config, m, event) for m in matches]


def plan_object(config: Config, event: ObjectEvent, *, now: dt.datetime | None = None) -> EventPlan:
    plan = EventPlan(
        "storage", event, age_seconds(event.event_time, now), config.settings.max_event_age_seconds
    )
    plan.decisions = _decide(config, match_object(config, event), event)
    return plan


def plan_completion(
    config: Config,
    comp: Completion,
    *,
    delivered_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> EventPlan:
    """Every completion trigger against one completion: a single chain launches once per upstream
    run, a fan-in records the arrival (or abandons the join) for the completion's join key."""
    plan = EventPlan(
        "completion",
        comp,
        age_seconds(delivered_at or comp.event_time, now),
        config.settings.max_event_age_seconds,
    )
    for m in match_completion(config, comp):
        spec = m.trigger.completion
        if not m.matched:
            plan.decisions.append(TriggerDecision(m))
        elif spec is not None and spec.is_fan_in:
            plan.decisions.append(TriggerDecision(m, join=plan_join(config, m.trigger, comp)))
        else:
            plan.decisions.append(TriggerDecision(m, launch=plan_launch(config, m.trigger, comp)))
    return plan


def plan_message(config: Config, message: MessageEvent, *, now: dt.datetime | None = None) -> EventPlan:
    """A Pub/Sub message as ``on_message`` routes it: a storage notification is the object event it
    carries, a completion CloudEvent goes to the completion triggers, anything else to the pubsub
    triggers. Raises :class:`EventError` for a notification or completion that cannot be read."""
    if message.is_storage_notification():
        obj_event = object_event_from_notification(message)
        if obj_event is None:
            plan = EventPlan(
                "pubsub", message, age_seconds(message.event_time, now), config.settings.max_event_age_seconds
            )
            plan.ignored = (
                f"a storage notification of type {message.attributes.get('eventType')!r}: ignored "
                "(only OBJECT_FINALIZE launches)"
            )
            return plan
        plan = plan_object(config, obj_event, now=now)
        plan.notes.append("a Cloud Storage notification: routed as the object-finalize event it carries")
        return plan
    if is_completion_message(message):
        refused = completion_source_problem(config, message)
        if refused is not None:
            plan = EventPlan(
                "completion",
                message,
                age_seconds(message.event_time, now),
                config.settings.max_event_age_seconds,
            )
            plan.refused = refused
            return plan
        comp = parse_completion(message)
        if comp is None:
            plan = EventPlan(
                "completion",
                message,
                age_seconds(message.event_time, now),
                config.settings.max_event_age_seconds,
            )
            plan.ignored = "a join.abandoned notice: nothing launches from it"
            return plan
        plan = plan_completion(config, comp, delivered_at=message.event_time, now=now)
        # the message's own age decides (a completion may announce a run that ended long ago)
        plan.age_seconds = age_seconds(message.event_time, now)
        return plan
    plan = EventPlan(
        "pubsub", message, age_seconds(message.event_time, now), config.settings.max_event_age_seconds
    )
    plan.decisions = _decide(config, match_message(config, message), message)
    return plan


def completion_source_problem(config: Config, message: MessageEvent) -> str | None:
    """Why a completion-shaped message is not acted on because of where it came from (``None``:
    it arrived on the configured completion topic, which only the functions may publish to)."""
    expected = config.settings.completion_topic_path
    arrived = f"projects/{message.project}/topics/{message.topic}"
    if expected is None:
        return f"a completion event on {arrived}, but no completion_topic is configured: refused"
    if arrived != expected:
        return (
            f"a completion event on {arrived}, not on the completion topic {expected}: refused "
            "(completions are acted on only from the topic the functions publish them to)"
        )
    return None


PLANNERS: dict[type, Callable[..., EventPlan]] = {
    ObjectEvent: plan_object,
    MessageEvent: plan_message,
    Completion: plan_completion,
}


def plan_event(config: Config, event: Any, *, now: dt.datetime | None = None) -> EventPlan:
    """The plan of any event the functions receive."""
    try:
        planner = PLANNERS[type(event)]
    except KeyError:
        raise EventError(f"no plan for a {type(event).__name__}") from None
    return planner(config, event, now=now)
