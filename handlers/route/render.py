"""Parameters: what one event renders into one pipeline's launch.

:func:`render` fills the pipeline's parameter templates (with the trigger's overrides) and then its
declared outputs from the event's template values (``event.lookup``, see
:mod:`handlers.model.events`) and the values every run has (event id and time, trigger, pipeline, run
key, project, region), and names the job and its labels from the run key (:mod:`.identity`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.backends import registry
from handlers.core.errors import ParameterError
from handlers.model.config import Config, Pipeline, Trigger
from handlers.model.templates import render_all
from handlers.route.identity import RunKey


def _within_limit(parameters: Mapping[str, str], limit: int) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in parameters.items())
    if size > limit:
        largest = max(parameters, key=lambda k: len(parameters[k].encode()))
        raise ParameterError(
            f"the rendered parameters are {size} bytes, over the {limit} bytes one launch may carry "
            f"(largest: {largest}, {len(parameters[largest].encode())} bytes)",
            field=largest,
        )


@dataclass(frozen=True)
class Rendered:
    """A run's rendered launch: its key, job name and labels, parameters and outputs."""

    run_key: str
    job_name: str
    parameters: Mapping[str, str]
    outputs: Mapping[str, str]
    labels: Mapping[str, str]


def run_values(
    event: Any, trigger: Trigger, pipeline: Pipeline | None = None, **more: Any
) -> Callable[[str], Any]:
    """A template lookup: the values every run has (event id and time, trigger, pipeline and, given
    the pipeline, its project and region; ``more``), then the event's own (``event.lookup``)."""
    common: dict[str, Any] = {
        "event_id": event.event_id,
        "event_time": event.event_time,
        "trigger": trigger.name,
        "pipeline": trigger.pipeline if pipeline is None else pipeline.name,
        **({} if pipeline is None else {"project": pipeline.project, "region": pipeline.region}),
        **more,
    }
    scoped = event.lookup

    def lookup(path: str) -> Any:
        return common[path] if path in common else scoped(path)

    return lookup


def render(config: Config, trigger: Trigger, pipeline: Pipeline, event: Any, key: RunKey) -> Rendered:
    """Render parameters then outputs; raises one ParameterError naming every missing value."""
    lookup = run_values(event, trigger, pipeline, run_key=str(key))
    try:
        parameters = render_all(config.templates_for(trigger), lookup)
        _within_limit(parameters, registry.spec(pipeline.backend).parameter_limit_bytes)

        def output_lookup(path: str) -> Any:
            if path.startswith("params."):
                return parameters[path[len("params.") :]]
            return lookup(path)

        outputs = render_all(pipeline.outputs, output_lookup)
    except ParameterError as exc:
        exc.trigger, exc.pipeline, exc.run_key = trigger.name, pipeline.name, str(key)
        raise
    return Rendered(
        run_key=str(key),
        job_name=key.job_name(pipeline.name),
        parameters=parameters,
        outputs=outputs,
        labels=key.labels(pipeline.name),
    )
