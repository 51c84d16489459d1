"""Runs started by hand: the REST API and the command line share this one service.

A manual run names a pipeline, gives its declared ``inputs`` (``{input.NAME}`` in the pipeline's
templates) and carries an idempotency key; the same key for the same pipeline is the same run, so a
retried request never launches twice. The run's trigger is the reserved name ``api``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.backends.contract import RunState
from handlers.core.errors import BackendRejected, NotFound, ParameterError, PipelineError
from handlers.core.ids import digest
from handlers.core.times import iso
from handlers.launch.ledger import Run
from handlers.launch.runtime import Runtime
from handlers.launch.service import LaunchService, Outcome
from handlers.model.config import Pipeline, Trigger, TriggerKind
from handlers.model.templates import placeholder_problem
from handlers.route.identity import RunKey

API_TRIGGER = "api"
MAX_KEY_LENGTH = 200


class InvalidRequest(ParameterError):
    """A manual run request with bad or missing inputs; ``problems`` maps each field to what is wrong."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__(
            "; ".join(f"{k}: {v}" for k, v in self.problems.items()), field=",".join(self.problems)
        )


class IdempotencyConflict(PipelineError):
    """The idempotency key was used before for a different request."""


@dataclass(frozen=True)
class ManualEvent:
    """The input of a manual run."""

    pipeline: str
    inputs: Mapping[str, str]
    idempotency_key: str
    received_at: dt.datetime
    caller: str | None = None
    kind = "api"

    @property
    def request_hash(self) -> str:
        body = json.dumps({"pipeline": self.pipeline, "inputs": dict(self.inputs)}, sort_keys=True)
        return digest(body, length=32)

    @property
    def identity(self) -> str:
        return f"{self.pipeline}\n{self.idempotency_key}"

    @property
    def event_id(self) -> str:
        return digest(self.pipeline, self.idempotency_key, length=32)

    @property
    def event_time(self) -> dt.datetime:
        return self.received_at

    def summary(self) -> dict[str, Any]:
        out = {
            "kind": "api",
            "idempotency_key": self.idempotency_key,
            "request_hash": self.request_hash,
            "event_id": self.event_id,
            "event_time": iso(self.received_at),
        }
        if self.caller:
            out["caller"] = self.caller
        return out

    @property
    def lookup(self) -> Callable[[str], Any]:
        def lookup(path: str) -> Any:
            if path.startswith("input."):
                return self.inputs[path[len("input.") :]]
            raise KeyError(path)

        return lookup


def launchable(pipeline: Pipeline) -> bool:
    """Whether every parameter of ``pipeline`` can be rendered from manual inputs."""
    return all(
        placeholder_problem(f.path, "api") is None or f.default is not None
        for t in (*pipeline.parameters.values(), *pipeline.outputs.values())
        for f in t.fields
        if not f.path.startswith("params.")
    )


def describe(pipeline: Pipeline) -> dict[str, Any]:
    return {
        "name": pipeline.name,
        "backend": pipeline.backend,
        "mode": pipeline.mode,
        "project": pipeline.project,
        "region": pipeline.region,
        "launchable": launchable(pipeline),
        "parameters": sorted(pipeline.parameters),
        "inputs": [
            {
                "name": i.name,
                "required": i.required,
                "pattern": i.pattern.pattern if i.pattern else None,
                "description": i.description,
                "default": i.default,
            }
            for i in pipeline.inputs.values()
        ],
        "timeout_seconds": pipeline.timeout_seconds,
    }


def _check_inputs(pipeline: Pipeline, given: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    values: dict[str, str] = {}
    for name, value in given.items():
        if name not in pipeline.inputs:
            known = ", ".join(sorted(pipeline.inputs)) or "none"
            problems[f"parameters.{name}"] = f"unknown parameter (this pipeline takes: {known})"
        elif isinstance(value, dict | list) or value is None:
            problems[f"parameters.{name}"] = "must be a string, number or boolean"
        else:
            values[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    for spec in pipeline.inputs.values():
        if spec.name not in values and f"parameters.{spec.name}" not in problems:
            if spec.default is not None:
                values[spec.name] = spec.default
            elif spec.required:
                problems[f"parameters.{spec.name}"] = "is required"
        elif (
            spec.name in values and spec.pattern is not None and not spec.pattern.fullmatch(values[spec.name])
        ):
            problems[f"parameters.{spec.name}"] = f"does not match the pattern {spec.pattern.pattern}"
    if problems:
        raise InvalidRequest(problems)
    return values


def start_run(
    runtime: Runtime,
    pipeline_name: str,
    inputs: Mapping[str, Any],
    idempotency_key: str,
    *,
    caller: str | None = None,
    service: LaunchService | None = None,
) -> tuple[Outcome, Run | None]:
    """Launch ``pipeline_name`` once per idempotency key; returns the outcome and the run record."""
    pipeline = runtime.config.pipelines.get(pipeline_name)
    if pipeline is None:
        raise NotFound(f"unknown pipeline {pipeline_name!r}", pipeline=pipeline_name)
    if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidRequest({"Idempotency-Key": f"header is required (1 to {MAX_KEY_LENGTH} characters)"})
    if not launchable(pipeline):
        raise BackendRejected(
            f"pipeline {pipeline_name!r} takes its parameters from events and cannot be "
            "launched by hand (declare inputs: and use {input.NAME})",
            pipeline=pipeline_name,
            status=409,
            reason="NOT_LAUNCHABLE",
        )
    values = _check_inputs(pipeline, inputs)
    event = ManualEvent(pipeline_name, values, idempotency_key, dt.datetime.now(dt.UTC), caller)
    trigger = Trigger(name=API_TRIGGER, kind=TriggerKind.API, pipeline=pipeline_name)
    key = str(RunKey.of(API_TRIGGER, event.identity))
    existing = runtime.ledger.get(key)
    if existing is not None and existing.event.get("request_hash") not in (None, event.request_hash):
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r} was already used for a different request", run_key=key
        )
    outcome = (service or LaunchService(runtime)).start(trigger, event, retry_failed=True)
    run = runtime.ledger.get(key)
    if run is not None and run.event.get("request_hash") not in (None, event.request_hash):
        # A concurrent request with this key and another body claimed the run first: it is that
        # request's run, never this one's answer.
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r} is in use by a different request", run_key=key
        )
    return outcome, run


def run_status(runtime: Runtime, key: str, *, live: bool = True) -> dict[str, Any]:
    """The ledger record and, for an unfinished run, the backend's live state."""
    run = runtime.ledger.require(key)
    result: dict[str, Any] = {"run": run.to_json(), "live": None}
    ref = run.job_ref
    if live and ref is not None and not run.terminal:
        try:
            status = runtime.backend(run.backend).status(ref)
            result["live"] = {
                "state": str(status.state),
                "backend_state": status.raw_state,
                "reason": status.reason,
            }
        except PipelineError as exc:
            result["live"] = {"error": exc.message, "retryable": exc.retryable}
    return result


def cancel_run(runtime: Runtime, key: str) -> Run:
    """Ask the backend to stop the run's job; the sweep records the final CANCELLED state."""
    run = runtime.ledger.require(key)
    if run.terminal:
        raise BackendRejected(
            f"run {key} already ended ({run.state})", run_key=key, status=409, reason="FAILED_PRECONDITION"
        )
    ref = run.job_ref
    if ref is None:
        raise BackendRejected(
            f"run {key} has no job yet ({run.state})", run_key=key, status=409, reason="FAILED_PRECONDITION"
        )
    runtime.backend(run.backend).cancel(ref, drain=False)

    def note(current: Run) -> Run | None:
        if current.terminal:
            return None
        return current.with_state(RunState(current.state), "cancel requested", raw_state=current.raw_state)

    updated = runtime.ledger.mutate(key, note)
    assert updated is not None
    return updated
