"""Local emulator of the Cloud Dataflow REST API v1b3 (regional forms), for tests and the local stack.

Protocol (base URL = server root; every path starts ``/v1b3/projects/{project}/locations/{location}``):

- ``POST .../templates:launch?gcsPath=gs://...&validateOnly=bool``, body ``LaunchTemplateParameters``
  -> ``{"job": Job}`` (``{}`` on a dry run). Labels come from ``environment.additionalUserLabels``.
- ``GET .../templates:get?gcsPath=gs://...&view=METADATA_ONLY`` -> ``{"metadata", "templateType",
  "status"}``; an unregistered path answers 404 NOT_FOUND.
- ``POST .../flexTemplates:launch``, body ``LaunchFlexTemplateRequest`` (``validateOnly`` is in the
  body) -> ``{"job": Job}``.
- ``GET .../jobs/{jobId}?view=...``; ``GET .../jobs?filter=ACTIVE|TERMINATED|ALL|UNKNOWN&name=
  &pageSize=&pageToken=`` (newest first, ``{}`` when nothing matches); ``PUT .../jobs/{jobId}`` with
  ``{"requestedState": "JOB_STATE_CANCELLED"|"JOB_STATE_DRAINED"}``; ``GET .../jobs/{jobId}/messages
  ?minimumImportance=&pageSize=&pageToken=``.

Follows the ``dataflow v1b3`` discovery document, revision 20261018, as bundled with
google-api-python-client; request bodies are checked against that document (unknown field at any depth or a wrongly typed value -> 400 INVALID_ARGUMENT
naming the field path, as Google's JSON transcoder words it). Job names must match
``[a-z]([-a-z0-9]{0,1022}[a-z0-9])?``; labels: keys ``[a-z][a-z0-9_-]{0,62}``, values
``[a-z0-9_-]{0,63}``, at most 64. Only one non-terminal job per name per project and location: a
second launch answers 409 ALREADY_EXISTS; once the first job is terminal its name can be reused.
Errors use Google's JSON shape ``{"error": {"code", "message", "status"[, "details"]}}``.

Jobs follow the emulator clock (see ``docs/emulators.md``): ``JOB_STATE_PENDING`` (classic) or
``JOB_STATE_QUEUED`` (flex) at launch, ``JOB_STATE_RUNNING`` after ``pending_seconds``, then
``JOB_STATE_DONE`` or ``JOB_STATE_FAILED`` (with ERROR job messages) after ``run_seconds`` more.
Streaming jobs run until cancelled or drained. Cancel: CANCELLING, then CANCELLED
``cancel_seconds`` later; drain (streaming only, 400 FAILED_PRECONDITION for batch): DRAINING then
DRAINED. Any update of a terminal job answers 400 FAILED_PRECONDITION. A launch with ``update: true``
replaces the active streaming job of that name (which becomes JOB_STATE_UPDATED).

Templates are registered per Cloud Storage path (``POST /_emulator/templates``, ``--templates FILE``
or ``create_app(templates=...)``)::

    {"gcsPath": "gs://bucket/templates/wordcount", "kind": "classic" | "flex", "name": "...",
     "description": "...", "parameters": [ParameterMetadata, ...],
     "behavior": {"pending_seconds": 1, "run_seconds": 3, "outcome": "DONE" | "FAILED",
                  "error_message": "...", "streaming": false, "implementation": null | "wordcount",
                  "outcome_param": null | "simulateOutcome", "cancel_seconds": 2, "drain_seconds": 2}}

Launching an unregistered path answers 400 INVALID_ARGUMENT ("Unable to open template file"). A
missing required parameter, a value failing the declared ``regexes`` (full match) or an undeclared
parameter answers 400 INVALID_ARGUMENT naming it. ``outcome_param`` names an (implicitly optional)
parameter whose value, ``DONE`` or ``FAILED``, overrides the outcome of that one job. A flex launch
with an inline ``containerSpec`` needs no registration: its ``metadata`` (if any) validates the
parameters and the default behavior applies. ``implementation: "wordcount"`` runs
:mod:`local.emulators.wordcount` at the success moment; if it raises, the job fails with its reason.

statusChanged push: with a notify URL (``--notify-url``, ``create_app(notify_url=...)`` or
``POST /_emulator/notify {"url": ...}``) every state transition (found by a background ticker every
``tick_interval`` seconds, so no read is needed) is POSTed as a binary-mode CloudEvent
(``ce-type: google.cloud.dataflow.job.v1beta3.statusChanged``, ``ce-source:
//dataflow.googleapis.com/projects/P/locations/L``, ``ce-subject: jobs/ID``, body ``{"payload": Job}``)
from a background worker that retries non-2xx answers a few times.

Control API (besides the common ``/_emulator/reset|requests|faults|clock``):
``GET|POST /_emulator/templates``, ``POST /_emulator/notify``, ``GET /_emulator/notifications``,
``GET /_emulator/jobs`` (every job with its private bookkeeping: template, parameters, timeline).
Fault operations: ``templates.launch``, ``templates.get``, ``flexTemplates.launch``, ``jobs.get``,
``jobs.list``, ``jobs.update``, ``jobs.messages.list`` or ``*``; ``match`` keys: ``project``,
``location``, ``jobName``, ``gcsPath``, ``parameters`` (subset), ``jobId``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, jsonify, request

from local.emulators.base import (
    BodiesSource,
    EmulatorState,
    FaultRule,
    Outbox,
    ProtocolError,
    ServerHandle,
    built_once,
    control_error,
    decode_page_token,
    emulator_app,
    encode_page_token,
    entry_at,
    google_error,
    google_route_error,
    google_unauthenticated,
    guarded,
    install_google_tokens,
    install_registry_routes,
    install_route_errors,
    json_body,
    load_bodies,
    peek_json_body,
    reject_unknown_fields,
    rfc3339,
    run_cli,
    serve_app,
    state_of,
)
from local.emulators.discovery import DiscoveryValidator, bundled_document, snake_case

API_PREFIX = "/v1b3/projects/<project>/locations/<location>"
PROTO_PACKAGE = "type.googleapis.com/google.dataflow.v1beta3"
STATUS_CHANGED_TYPE = "google.cloud.dataflow.job.v1beta3.statusChanged"

TERMINAL_STATES = frozenset(
    {"JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_UPDATED", "JOB_STATE_DRAINED"}
)
IMPORTANCE_ORDER = (
    "JOB_MESSAGE_DEBUG",
    "JOB_MESSAGE_DETAILED",
    "JOB_MESSAGE_BASIC",
    "JOB_MESSAGE_WARNING",
    "JOB_MESSAGE_ERROR",
)
JOB_NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,1022}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_LABELS = 64
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

FAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Quota exceeded for quota metric 'Job create requests' of service 'dataflow.googleapis.com'.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}


class ApiError(ProtocolError):
    """An error answered with Google's JSON error body."""

    def __init__(self, code: int, message: str, status: str | None = None, field_path: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.field_path = field_path

    def response(self) -> Response:
        details = None
        if self.field_path is not None:
            violation = {"field": self.field_path, "description": self.message}
            details = [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}]
        return google_error(self.code, self.message, self.status, details)


def invalid_argument(message: str, field_path: str | None = None) -> ApiError:
    return ApiError(400, message, "INVALID_ARGUMENT", field_path)


def failed_precondition(message: str) -> ApiError:
    return ApiError(400, message, "FAILED_PRECONDITION")


@built_once
def discovery_validator() -> DiscoveryValidator:
    """The validator over the bundled official ``dataflow v1b3`` discovery document (loaded once)."""
    return DiscoveryValidator(
        bundled_document("dataflow", "v1b3"), proto_package=PROTO_PACKAGE, invalid=invalid_argument
    )


# ============================================================================= templates


TemplatesSource = BodiesSource


@dataclass(frozen=True)
class Behavior:
    """How jobs launched from a template behave on the emulator clock."""

    pending_seconds: float = 1.0
    run_seconds: float = 3.0
    outcome: str = "DONE"
    error_message: str = "The pipeline failed."
    streaming: bool = False
    implementation: str | None = None
    outcome_param: str | None = None
    cancel_seconds: float = 2.0
    drain_seconds: float = 2.0

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> Behavior:
        body = dict(body or {})
        reject_unknown_fields(body, cls.__dataclass_fields__, "behavior")
        for name in ("pending_seconds", "run_seconds", "cancel_seconds", "drain_seconds"):
            if name in body and (isinstance(body[name], bool) or not isinstance(body[name], int | float)):
                raise ValueError(f"behavior.{name} must be a number of seconds")
        if not isinstance(body.get("streaming", False), bool):
            raise ValueError("behavior.streaming must be true or false")
        behavior = cls(**body)
        if not isinstance(behavior.outcome, str) or _outcome_state(behavior.outcome) is None:
            raise ValueError("behavior.outcome must be DONE or FAILED")
        if behavior.implementation is not None and behavior.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {behavior.implementation!r}; known: {sorted(IMPLEMENTATIONS)}"
            )
        for name in ("pending_seconds", "run_seconds", "cancel_seconds", "drain_seconds"):
            if getattr(behavior, name) < 0:
                raise ValueError(f"behavior.{name} must be >= 0")
        return behavior

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _outcome_state(value: str) -> str | None:
    normalized = value.upper().removeprefix("JOB_STATE_")
    return f"JOB_STATE_{normalized}" if normalized in ("DONE", "FAILED") else None


@dataclass(frozen=True)
class Template:
    """A registered classic template file or flex template spec file."""

    gcs_path: str
    kind: str
    name: str
    description: str
    parameters: tuple[dict[str, Any], ...]
    behavior: Behavior

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Template:
        known = {"gcsPath", "kind", "name", "description", "parameters", "behavior"}
        reject_unknown_fields(body, known, "template")
        gcs_path = body.get("gcsPath")
        if not isinstance(gcs_path, str) or not gcs_path.startswith("gs://"):
            raise ValueError("template 'gcsPath' must be a gs:// path")
        kind = body.get("kind", "classic")
        if kind not in ("classic", "flex"):
            raise ValueError("template 'kind' must be 'classic' or 'flex'")
        params = body.get("parameters") or []
        if not isinstance(params, list):
            raise ValueError("template 'parameters' must be a list")
        try:
            checked = [discovery_validator().validate(p, "ParameterMetadata", "parameters") for p in params]
        except ApiError as exc:
            raise ValueError(exc.message) from exc
        if any(not p.get("name") for p in checked):
            raise ValueError("every template parameter needs a 'name'")
        return cls(
            gcs_path=gcs_path,
            kind=kind,
            name=str(body.get("name") or gcs_path.rsplit("/", 1)[-1]),
            description=str(body.get("description") or ""),
            parameters=tuple(checked),
            behavior=Behavior.from_json(body.get("behavior")),
        )

    def metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "parameters": [dict(p) for p in self.parameters]}
        if self.description:
            metadata["description"] = self.description
        if self.behavior.streaming:
            metadata["streaming"] = True
        return metadata

    def to_json(self) -> dict[str, Any]:
        return {
            "gcsPath": self.gcs_path,
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "parameters": [dict(p) for p in self.parameters],
            "behavior": self.behavior.to_json(),
        }


def load_templates(source: TemplatesSource) -> list[Template]:
    """Templates from a YAML/JSON file path, a list of template bodies, or ``{"templates": [...]}``."""
    return [Template.from_json(item) for item in load_bodies(source, "templates")]


# ============================================================================= implementations


def _run_wordcount(parameters: Mapping[str, str]) -> str:
    from local.emulators import wordcount

    return wordcount.run(parameters)


IMPLEMENTATIONS: dict[str, Callable[[Mapping[str, str]], str]] = {"wordcount": _run_wordcount}


# ============================================================================= jobs


@dataclass
class StateEntry:
    """One point of a job's state timeline: ``state`` holds from ``at`` (emulator seconds)."""

    at: float
    state: str
    notified: bool = False


@dataclass
class Message:
    at: float
    importance: str
    text: str
    id: str = ""


@dataclass
class LaunchSpec:
    """A validated launch request (classic or flex), before the job exists."""

    project: str
    location: str
    kind: str
    template_path: str | None
    job_name: str
    parameters: dict[str, str]
    environment: dict[str, Any]
    labels: dict[str, str]
    behavior: Behavior
    outcome: str
    update: bool
    transform_name_mapping: dict[str, str]


@dataclass
class Job:
    """A job and its private bookkeeping (never returned as-is by the protocol)."""

    id: str
    seq: int
    spec: LaunchSpec
    created: float
    timeline: list[StateEntry]
    messages: list[Message] = field(default_factory=list)
    requested_state: str | None = None
    pending_implementation: tuple[float, str] | None = None
    implementation_lock: threading.Lock = field(default_factory=threading.Lock)
    replace_job_id: str | None = None
    replaced_by_job_id: str | None = None

    @property
    def streaming(self) -> bool:
        return self.spec.behavior.streaming

    def entry_at(self, now: float) -> StateEntry:
        return entry_at(self.timeline, now)

    def state_at(self, now: float) -> str:
        return self.entry_at(now).state

    def is_terminal(self, now: float) -> bool:
        return self.state_at(now) in TERMINAL_STATES

    def truncate_future(self, now: float) -> None:
        """Forget planned states and messages after ``now`` (a cancel, drain or update happened)."""
        self.timeline = [entry for entry in self.timeline if entry.at <= now]
        self.messages = [message for message in self.messages if message.at <= now]
        self.pending_implementation = None

    def add_message(self, at: float, importance: str, text: str) -> None:
        millis = int(at * 1000)
        self.messages.append(Message(at, importance, text, f"{millis}:{len(self.messages) + 1}"))
        self.messages.sort(key=lambda message: message.at)


def new_job_id(created: float) -> str:
    stamp = time.strftime("%Y-%m-%d_%H_%M_%S", time.gmtime(created))
    digits = str(random.randint(1, 9)) + "".join(str(random.randint(0, 9)) for _ in range(18))
    return f"{stamp}-{digits}"


def plan_job(job: Job) -> None:
    """Fill the timeline and messages of a just-created job from its behavior."""
    behavior, t0 = job.spec.behavior, job.created
    running_at = t0 + float(behavior.pending_seconds)
    job.timeline = [
        StateEntry(t0, "JOB_STATE_QUEUED" if job.spec.kind == "flex" else "JOB_STATE_PENDING"),
        StateEntry(running_at, "JOB_STATE_RUNNING"),
    ]
    template = job.spec.template_path or "inline container spec"
    job.add_message(t0, "JOB_MESSAGE_DEBUG", f"Job {job.id} launched from {template}.")
    job.add_message(t0, "JOB_MESSAGE_DETAILED", f"Autoscaling is enabled for job {job.id}.")
    job.add_message(running_at, "JOB_MESSAGE_BASIC", "Worker pool started.")
    if behavior.streaming:
        return
    end = running_at + float(behavior.run_seconds)
    if job.spec.outcome == "JOB_STATE_DONE" and behavior.implementation:
        job.pending_implementation = (end, behavior.implementation)
        return
    finish_job(job, end, job.spec.outcome, behavior.error_message)


def finish_job(job: Job, at: float, state: str, error: str | None = None, info: str | None = None) -> None:
    if state == "JOB_STATE_FAILED":
        job.add_message(at, "JOB_MESSAGE_ERROR", error or "The pipeline failed.")
        job.add_message(at, "JOB_MESSAGE_ERROR", f"Workflow failed. Causes: {error or 'unknown'}")
    elif info:
        job.add_message(at, "JOB_MESSAGE_BASIC", info)
    job.add_message(at, "JOB_MESSAGE_BASIC", "Worker pool stopped.")
    job.timeline.append(StateEntry(at, state))


def _environment_echo(environment: Mapping[str, Any]) -> dict[str, Any]:
    echo: dict[str, Any] = {}
    renames = {
        "serviceAccountEmail": "serviceAccountEmail",
        "tempLocation": "tempStoragePrefix",
        "workerRegion": "workerRegion",
        "workerZone": "workerZone",
        "kmsKeyName": "serviceKmsKeyName",
        "additionalExperiments": "experiments",
    }
    for source, target in renames.items():
        if environment.get(source):
            echo[target] = environment[source]
    if environment.get("ipConfiguration") in ("WORKER_IP_PUBLIC", "WORKER_IP_PRIVATE"):
        echo["usePublicIps"] = environment["ipConfiguration"] == "WORKER_IP_PUBLIC"
    return echo


def job_json(
    job: Job, now: float, view: str = "JOB_VIEW_SUMMARY", entry: StateEntry | None = None
) -> dict[str, Any]:
    """The protocol view of ``job`` at emulator time ``now`` (or at a given timeline ``entry``)."""
    entry = entry or job.entry_at(now)
    spec = job.spec
    body: dict[str, Any] = {
        "id": job.id,
        "projectId": spec.project,
        "name": spec.job_name,
        "type": "JOB_TYPE_STREAMING" if job.streaming else "JOB_TYPE_BATCH",
        "currentState": entry.state,
        "currentStateTime": rfc3339(entry.at),
        "createTime": rfc3339(job.created),
        "startTime": rfc3339(job.created),
        "location": spec.location,
        "jobMetadata": {
            "sdkVersion": {"version": "2.61.0", "versionDisplayName": "Apache Beam SDK for Java"}
        },
    }
    if spec.labels:
        body["labels"] = dict(spec.labels)
    if job.requested_state:
        body["requestedState"] = job.requested_state
    if job.replace_job_id:
        body["replaceJobId"] = job.replace_job_id
    if job.replaced_by_job_id:
        body["replacedByJobId"] = job.replaced_by_job_id
    if spec.transform_name_mapping:
        body["transformNameMapping"] = dict(spec.transform_name_mapping)
    environment = _environment_echo(spec.environment)
    if view == "JOB_VIEW_ALL":
        environment["sdkPipelineOptions"] = {"options": {**spec.parameters, "jobName": spec.job_name}}
    if environment:
        body["environment"] = environment
    return body


def private_job_json(job: Job, now: float) -> dict[str, Any]:
    return {
        "job": job_json(job, now, "JOB_VIEW_ALL"),
        "kind": job.spec.kind,
        "templatePath": job.spec.template_path,
        "parameters": dict(job.spec.parameters),
        "environment": dict(job.spec.environment),
        "behavior": job.spec.behavior.to_json(),
        "outcome": job.spec.outcome,
        "timeline": [{"state": e.state, "time": rfc3339(e.at), "reached": e.at <= now} for e in job.timeline],
        "pendingImplementation": job.pending_implementation[1] if job.pending_implementation else None,
    }


# ============================================================================= notifications


class Notifier(Outbox):
    """Posts statusChanged CloudEvents from one background worker, in order, with retries."""

    def __init__(
        self, url: str | None, attempts: int = 4, backoff: float = 0.1, timeout: float = 2.0
    ) -> None:
        self.url = url
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        super().__init__("dataflow-notifier")

    def publish(self, headers: dict[str, str], body: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "id": headers["ce-id"],
            "url": self.url,
            "headers": headers,
            "body": body,
            "attempts": 0,
            "status": None,
            "delivered": False,
            "error": None if self.url else "no notify url configured",
        }
        self._enqueue(record, deliverable=bool(self.url))

    def _deliver(self, record: dict[str, Any]) -> None:
        data = json.dumps(record["body"]).encode("utf-8")
        for attempt in range(1, self._attempts + 1):
            status, error = self._post(record["url"], record["headers"], data)
            with self._lock:
                record.update(attempts=attempt, status=status, error=error, delivered=error is None)
            if error is None:
                return
            time.sleep(self._backoff * 2 ** (attempt - 1))

    def _post(self, url: str, headers: Mapping[str, str], data: bytes) -> tuple[int | None, str | None]:
        req = urllib.request.Request(url, data=data, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return resp.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return None, str(exc)


def status_changed_event(job: Job, entry: StateEntry, now: float) -> tuple[dict[str, str], dict[str, Any]]:
    """Binary-mode CloudEvent headers and body for one state transition of ``job``."""
    headers = {
        "ce-specversion": "1.0",
        "ce-type": STATUS_CHANGED_TYPE,
        "ce-source": f"//dataflow.googleapis.com/projects/{job.spec.project}/locations/{job.spec.location}",
        "ce-subject": f"jobs/{job.id}",
        "ce-id": uuid.uuid4().hex,
        "ce-time": rfc3339(entry.at),
        "Content-Type": "application/json",
    }
    return headers, {"payload": job_json(job, now, entry=entry)}


# ============================================================================= state


class DataflowState(EmulatorState):
    """Jobs, templates and the notification machinery; every mutation happens under ``self.lock``."""

    def __init__(
        self,
        templates: Sequence[Template] = (),
        notify_url: str | None = None,
        speed: float = 1.0,
        tick_interval: float = 0.1,
    ) -> None:
        super().__init__(speed=speed)
        self.templates: dict[str, Template] = {t.gcs_path: t for t in templates}
        self.jobs: dict[str, Job] = {}
        self._seq = 0
        self.notifier = Notifier(notify_url)
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._ticker = threading.Thread(target=self._tick_loop, args=(tick_interval,), daemon=True)
        self._ticker.start()

    # -- lifecycle -----------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            super().reset()
            self.jobs.clear()
            self.notifier.clear()

    def register_template(self, template: Template) -> None:
        """Register ``template``, replacing the one with the same ``gcs_path``."""
        with self.lock:
            self.templates[template.gcs_path] = template

    def close(self) -> None:
        self._stop.set()
        self.notifier.close()

    def after_clock_change(self) -> None:
        self.tick()

    def _tick_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.tick()

    def tick(self) -> None:
        """Run due implementations, then announce every timeline entry the clock has reached."""
        with self._tick_lock:
            self.settle()
            with self.lock:
                now = self.clock.now()
                for job in self.jobs.values():
                    self._announce(job, now)

    def _announce(self, job: Job, now: float) -> None:
        for entry in job.timeline:
            if entry.at <= now and not entry.notified:
                entry.notified = True
                headers, body = status_changed_event(job, entry, now)
                self.notifier.publish(headers, body)

    # -- implementations -----------------------------------------------------------------------
    def settle(self) -> None:
        """Run the local implementation of every job whose success moment has passed (once each)."""
        with self.lock:
            now = self.clock.now()
            due = [
                j
                for j in self.jobs.values()
                if j.pending_implementation and j.pending_implementation[0] <= now
            ]
        for job in due:
            with job.implementation_lock:
                with self.lock:
                    pending = job.pending_implementation
                if pending is None:
                    continue
                at, name = pending
                state, error, info = self._run_implementation(name, job.spec.parameters)
                with self.lock:
                    if job.pending_implementation == pending:
                        job.pending_implementation = None
                        finish_job(job, at, state, error, info)

    @staticmethod
    def _run_implementation(name: str, parameters: Mapping[str, str]) -> tuple[str, str | None, str | None]:
        try:
            info = IMPLEMENTATIONS[name](parameters)
        except Exception as exc:  # any failure of the local pipeline fails the job, with its reason
            return "JOB_STATE_FAILED", f"{name}: {exc}", None
        return "JOB_STATE_DONE", None, f"{name}: {info}"

    # -- jobs ----------------------------------------------------------------------------------
    def find_job(self, project: str, location: str, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.spec.project != project or job.spec.location != location:
            raise ApiError(
                404,
                f"Information about job {job_id} could not be found in our system. Please double check that "
                f"the API being used is projects.locations.jobs.get (location {location}).",
                "NOT_FOUND",
            )
        return job

    def active_job_named(self, project: str, location: str, name: str, now: float) -> Job | None:
        for job in self.jobs.values():
            spec = job.spec
            if (spec.project, spec.location, spec.job_name) == (
                project,
                location,
                name,
            ) and not job.is_terminal(now):
                return job
        return None

    def create_job(self, spec: LaunchSpec) -> Job:
        self.settle()
        with self.lock:
            now = self.clock.now()
            active = self.active_job_named(spec.project, spec.location, spec.job_name, now)
            replaced = self._check_name(spec, active)
            self._seq += 1
            job = Job(id=new_job_id(now), seq=self._seq, spec=spec, created=now, timeline=[])
            plan_job(job)
            if replaced is not None:
                self._replace(replaced, job, now)
            self.jobs[job.id] = job
            return job

    @staticmethod
    def _check_name(spec: LaunchSpec, active: Job | None) -> Job | None:
        if spec.update:
            if active is None or not active.streaming:
                raise failed_precondition(
                    f"Could not find a running streaming job named {spec.job_name} to update in "
                    f"project {spec.project} location {spec.location}."
                )
            return active
        if active is not None:
            raise ApiError(
                409,
                f"There is already an active job named {spec.job_name} with id: {active.id}. If you want "
                "to submit a second job, try again by setting a different name.",
                "ALREADY_EXISTS",
            )
        return None

    @staticmethod
    def _replace(old: Job, new: Job, now: float) -> None:
        old.truncate_future(now)
        old.timeline.append(StateEntry(now, "JOB_STATE_UPDATED"))
        old.add_message(now, "JOB_MESSAGE_BASIC", f"Job was updated by job {new.id}.")
        old.replaced_by_job_id = new.id
        new.replace_job_id = old.id

    def request_state(self, job: Job, requested: str) -> None:
        self.settle()
        with self.lock:
            now = self.clock.now()
            current = job.state_at(now)
            if current in TERMINAL_STATES:
                raise failed_precondition(
                    f"Workflow modification failed. Causes: The job {job.id} is in terminal state {current} "
                    "and cannot be updated."
                )
            if requested == "JOB_STATE_CANCELLED":
                self._cancel(job, current, now)
            elif requested == "JOB_STATE_DRAINED":
                self._drain(job, current, now)
            else:
                raise invalid_argument(
                    f"Requested state {requested} is not supported: "
                    "use JOB_STATE_CANCELLED or JOB_STATE_DRAINED.",
                    "job.requested_state",
                )

    @staticmethod
    def _cancel(job: Job, current: str, now: float) -> None:
        if current == "JOB_STATE_CANCELLING":
            return
        job.truncate_future(now)
        job.requested_state = "JOB_STATE_CANCELLED"
        job.timeline.append(StateEntry(now, "JOB_STATE_CANCELLING"))
        job.add_message(now, "JOB_MESSAGE_BASIC", f"Cancel request is committed for workflow job: {job.id}.")
        end = now + float(job.spec.behavior.cancel_seconds)
        job.add_message(end, "JOB_MESSAGE_BASIC", "Worker pool stopped.")
        job.timeline.append(StateEntry(end, "JOB_STATE_CANCELLED"))

    @staticmethod
    def _drain(job: Job, current: str, now: float) -> None:
        if not job.streaming:
            raise failed_precondition(
                f"Workflow modification failed. Causes: Job {job.id} is a batch job: "
                "only streaming jobs can be drained."
            )
        if current == "JOB_STATE_DRAINING":
            return
        if current == "JOB_STATE_CANCELLING":
            raise failed_precondition(f"Job {job.id} is being cancelled and cannot be drained.")
        job.truncate_future(now)
        job.requested_state = "JOB_STATE_DRAINED"
        job.timeline.append(StateEntry(now, "JOB_STATE_DRAINING"))
        job.add_message(now, "JOB_MESSAGE_BASIC", f"Drain request is committed for workflow job: {job.id}.")
        end = now + float(job.spec.behavior.drain_seconds)
        job.add_message(end, "JOB_MESSAGE_BASIC", "Worker pool stopped.")
        job.timeline.append(StateEntry(end, "JOB_STATE_DRAINED"))

    def list_jobs(self, project: str, location: str, flt: str, name: str | None) -> list[Job]:
        self.settle()
        with self.lock:
            now = self.clock.now()
            jobs = [
                job
                for job in self.jobs.values()
                if job.spec.project == project
                and job.spec.location == location
                and (name is None or job.spec.job_name == name)
                and (flt in ("ALL", "UNKNOWN") or (flt == "ACTIVE") != job.is_terminal(now))
            ]
        return sorted(jobs, key=lambda job: job.seq, reverse=True)


# ============================================================================= launch validation


def check_job_name(name: Any) -> str:
    if not name:
        raise invalid_argument("The job name (jobName) must be set.", "job_name")
    if not isinstance(name, str) or not JOB_NAME_RE.fullmatch(name):
        raise invalid_argument(
            f"(jobName) Invalid job name {name!r}: job names must match the regular expression "
            "[a-z]([-a-z0-9]{0,1022}[a-z0-9])?",
            "job_name",
        )
    return name


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise invalid_argument(
            f"Too many labels: {len(labels)} (at most {MAX_LABELS}).", "environment.additional_user_labels"
        )
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise invalid_argument(
                f"Invalid label key {key!r}: keys must match [a-z][a-z0-9_-]{{0,62}}.",
                "environment.additional_user_labels",
            )
        if not LABEL_VALUE_RE.fullmatch(value):
            raise invalid_argument(
                f"Invalid value {value!r} for label {key!r}: values must match [a-z0-9_-]{{0,63}}.",
                "environment.additional_user_labels",
            )
    return dict(labels)


def check_parameters(
    parameters: Mapping[str, str], declared: Sequence[Mapping[str, Any]] | None, behavior: Behavior
) -> None:
    """Required/regex/unknown checks against template metadata (``None``: nothing declared)."""
    prefix = "The template parameters are invalid."
    if declared is None:
        return
    by_name = {p["name"]: p for p in declared}
    for name in parameters:
        if name not in by_name and name != behavior.outcome_param:
            raise invalid_argument(f"{prefix} Unrecognized parameter: {name}.", f"parameters.{name}")
    for name, meta in by_name.items():
        value = parameters.get(name)
        if value is None:
            if not meta.get("isOptional", False):
                raise invalid_argument(f"{prefix} Missing required parameter: {name}.", f"parameters.{name}")
            continue
        for regex in meta.get("regexes", []):
            if not re.fullmatch(regex, value):
                raise invalid_argument(
                    f"{prefix} Parameter {name} (value {value!r}) does not match the regex {regex}.",
                    f"parameters.{name}",
                )


def resolve_outcome(parameters: Mapping[str, str], behavior: Behavior) -> str:
    outcome = _outcome_state(behavior.outcome) or "JOB_STATE_DONE"
    if behavior.outcome_param and behavior.outcome_param in parameters:
        override = _outcome_state(parameters[behavior.outcome_param])
        if override is None:
            raise invalid_argument(
                f"The template parameters are invalid. Parameter {behavior.outcome_param} "
                "must be DONE or FAILED.",
                f"parameters.{behavior.outcome_param}",
            )
        outcome = override
    return outcome


def unknown_template(path: str) -> ApiError:
    return invalid_argument(f"({uuid.uuid4().hex[:16]}): Unable to open template file: {path}.", "gcs_path")


def build_spec(
    state: DataflowState,
    *,
    project: str,
    location: str,
    kind: str,
    body: Mapping[str, Any],
    template_path: str | None,
    inline_metadata: Mapping[str, Any] | None = None,
    mapping_field: str = "transformNameMapping",
) -> LaunchSpec:
    """Check a (schema-valid) launch body and turn it into a :class:`LaunchSpec`."""
    job_name = check_job_name(body.get("jobName"))
    environment = dict(body.get("environment") or {})
    labels = check_labels(environment.get("additionalUserLabels") or {})
    parameters = dict(body.get("parameters") or {})
    declared: Sequence[Mapping[str, Any]] | None
    if template_path is not None:
        with state.lock:
            template = state.templates.get(template_path)
        if template is None or template.kind != kind:
            raise unknown_template(template_path)
        behavior, declared = template.behavior, template.parameters
    else:
        behavior = Behavior()
        declared = (inline_metadata or {}).get("parameters") if inline_metadata else None
    check_parameters(parameters, declared, behavior)
    return LaunchSpec(
        project=project,
        location=location,
        kind=kind,
        template_path=template_path,
        job_name=job_name,
        parameters=parameters,
        environment=environment,
        labels=labels,
        behavior=behavior,
        outcome=resolve_outcome(parameters, behavior),
        update=bool(body.get("update", False)),
        transform_name_mapping=dict(body.get(mapping_field) or {}),
    )


# ============================================================================= HTTP layer


def _query_bool(name: str) -> bool:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise invalid_argument(f"Invalid value at '{snake_case(name)}' (TYPE_BOOL), \"{raw}\"", snake_case(name))


def _query_enum(name: str, allowed: Sequence[str], default: str, type_name: str) -> str:
    raw = request.args.get(name) or default
    if raw not in allowed:
        raise invalid_argument(
            f"Invalid value at '{snake_case(name)}' ({PROTO_PACKAGE}.{type_name}), \"{raw}\"",
            snake_case(name),
        )
    return raw


def _query_page_size(default: int) -> int:
    raw = request.args.get("pageSize")
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?\d+", raw):
        raise invalid_argument(f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"", "page_size")
    size = int(raw)
    return default if size <= 0 else min(size, MAX_PAGE_SIZE)


def _decode_token(token: str) -> int:
    position = decode_page_token(token)
    if position is None:
        raise invalid_argument(f"Invalid page token: {token!r}.", "page_token")
    return position


def _parse_body() -> Any:
    try:
        return json_body()
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc


def _fault_response(rule: FaultRule) -> Response:
    status = rule.status or 500
    return google_error(status, rule.message or FAULT_MESSAGES.get(status, "Injected fault."))


def _state() -> DataflowState:
    state: DataflowState = state_of(current_app)
    return state


def _run(operation: str, attrs: Mapping[str, Any], action: Callable[[], Any]) -> Response:
    return _state().faults.run(operation, attrs, lambda: guarded(action), _fault_response)


def _launch_attrs(
    project: str, location: str, body: Mapping[str, Any], gcs_path: str | None
) -> dict[str, Any]:
    params = body.get("parameters")
    return {
        "project": project,
        "location": location,
        "jobName": body.get("jobName"),
        "gcsPath": gcs_path,
        "parameters": params if isinstance(params, dict) else {},
    }


def _job_attrs(project: str, location: str, job_id: str) -> dict[str, Any]:
    with _state().lock:
        job = _state().jobs.get(job_id)
    attrs: dict[str, Any] = {"project": project, "location": location, "jobId": job_id}
    if job is not None:
        attrs["jobName"] = job.spec.job_name
        attrs["parameters"] = dict(job.spec.parameters)
        attrs["gcsPath"] = job.spec.template_path
    return attrs


def _launch_classic(project: str, location: str) -> dict[str, Any]:
    state = _state()
    body = discovery_validator().validate(_parse_body(), "LaunchTemplateParameters", "launch_parameters")
    gcs_path = request.args.get("gcsPath")
    if not gcs_path:
        raise invalid_argument("A template location (gcsPath) is required.", "gcs_path")
    validate_only = _query_bool("validateOnly")
    spec = build_spec(
        state, project=project, location=location, kind="classic", body=body, template_path=gcs_path
    )
    if validate_only:
        return {}
    job = state.create_job(spec)
    return {"job": job_json(job, state.clock.now())}


def _launch_flex(project: str, location: str) -> dict[str, Any]:
    state = _state()
    body = discovery_validator().validate(_parse_body(), "LaunchFlexTemplateRequest", "")
    param = body.get("launchParameter")
    if not param:
        raise invalid_argument("launch_parameter is required.", "launch_parameter")
    spec_path, inline = param.get("containerSpecGcsPath"), param.get("containerSpec")
    if bool(spec_path) == bool(inline):
        raise invalid_argument(
            "Exactly one of container_spec_gcs_path and container_spec must be set.", "launch_parameter"
        )
    if inline:
        default_env = inline.get("defaultEnvironment") or {}
        param = {**param, "environment": {**default_env, **(param.get("environment") or {})}}
    spec = build_spec(
        state,
        project=project,
        location=location,
        kind="flex",
        body=param,
        template_path=spec_path,
        inline_metadata=(inline or {}).get("metadata"),
        mapping_field="transformNameMappings",
    )
    if body.get("validateOnly"):
        return {}
    job = state.create_job(spec)
    return {"job": job_json(job, state.clock.now())}


def _get_template(project: str, location: str) -> dict[str, Any]:
    gcs_path = request.args.get("gcsPath")
    if not gcs_path:
        raise invalid_argument("A template location (gcsPath) is required.", "gcs_path")
    _query_enum("view", ("METADATA_ONLY",), "METADATA_ONLY", "GetTemplateRequest.TemplateView")
    with _state().lock:
        template = _state().templates.get(gcs_path)
    if template is None:
        raise ApiError(404, f"Unable to open template file: {gcs_path}.", "NOT_FOUND")
    return {
        "metadata": template.metadata(),
        "templateType": "FLEX" if template.kind == "flex" else "LEGACY",
        "status": {},
    }


def _get_job(project: str, location: str, job_id: str) -> dict[str, Any]:
    state = _state()
    view = _query_enum(
        "view",
        ("JOB_VIEW_UNKNOWN", "JOB_VIEW_SUMMARY", "JOB_VIEW_ALL", "JOB_VIEW_DESCRIPTION"),
        "JOB_VIEW_SUMMARY",
        "JobView",
    )
    state.settle()
    with state.lock:
        job = state.find_job(project, location, job_id)
        return job_json(job, state.clock.now(), view)


def _list_jobs(project: str, location: str) -> dict[str, Any]:
    state = _state()
    flt = _query_enum(
        "filter", ("UNKNOWN", "ALL", "TERMINATED", "ACTIVE"), "UNKNOWN", "ListJobsRequest.Filter"
    )
    size = _query_page_size(DEFAULT_PAGE_SIZE)
    token = request.args.get("pageToken")
    jobs = state.list_jobs(project, location, flt, request.args.get("name") or None)
    if token:
        cursor = _decode_token(token)
        jobs = [job for job in jobs if job.seq < cursor]
    page, rest = jobs[:size], jobs[size:]
    if not page:
        return {}
    with state.lock:
        now = state.clock.now()
        result: dict[str, Any] = {"jobs": [job_json(job, now) for job in page]}
    if rest:
        result["nextPageToken"] = encode_page_token(page[-1].seq)
    return result


def _update_job(project: str, location: str, job_id: str) -> dict[str, Any]:
    state = _state()
    body = discovery_validator().validate(_parse_body(), "Job", "job")
    with state.lock:
        job = state.find_job(project, location, job_id)
    requested = body.get("requestedState")
    if not requested:
        raise invalid_argument("The update must set requested_state.", "job.requested_state")
    state.request_state(job, requested)
    with state.lock:
        return job_json(job, state.clock.now())


def _list_messages(project: str, location: str, job_id: str) -> dict[str, Any]:
    state = _state()
    minimum = _query_enum(
        "minimumImportance",
        ("JOB_MESSAGE_IMPORTANCE_UNKNOWN", *IMPORTANCE_ORDER),
        "JOB_MESSAGE_IMPORTANCE_UNKNOWN",
        "JobMessageImportance",
    )
    floor = IMPORTANCE_ORDER.index(minimum) if minimum in IMPORTANCE_ORDER else 0
    size = _query_page_size(100)
    token = request.args.get("pageToken")
    offset = _decode_token(token) if token else 0
    state.settle()
    with state.lock:
        job = state.find_job(project, location, job_id)
        now = state.clock.now()
        messages = [m for m in job.messages if m.at <= now and IMPORTANCE_ORDER.index(m.importance) >= floor]
    page = messages[offset : offset + size]
    if not page:
        return {}
    result: dict[str, Any] = {
        "jobMessages": [
            {"id": m.id, "time": rfc3339(m.at), "messageText": m.text, "messageImportance": m.importance}
            for m in page
        ]
    }
    if offset + size < len(messages):
        result["nextPageToken"] = encode_page_token(offset + size)
    return result


def _register_protocol_routes(app: Flask) -> None:
    @app.post(f"{API_PREFIX}/templates:launch")
    def templates_launch(project: str, location: str) -> Response:
        attrs = _launch_attrs(project, location, peek_json_body(), request.args.get("gcsPath"))
        return _run("templates.launch", attrs, lambda: _launch_classic(project, location))

    @app.get(f"{API_PREFIX}/templates:get")
    def templates_get(project: str, location: str) -> Response:
        attrs = {"project": project, "location": location, "gcsPath": request.args.get("gcsPath")}
        return _run("templates.get", attrs, lambda: _get_template(project, location))

    @app.post(f"{API_PREFIX}/flexTemplates:launch")
    def flex_templates_launch(project: str, location: str) -> Response:
        param = peek_json_body().get("launchParameter")
        param = param if isinstance(param, dict) else {}
        attrs = _launch_attrs(project, location, param, param.get("containerSpecGcsPath"))
        return _run("flexTemplates.launch", attrs, lambda: _launch_flex(project, location))

    @app.get(f"{API_PREFIX}/jobs")
    def jobs_list(project: str, location: str) -> Response:
        attrs = {"project": project, "location": location, "jobName": request.args.get("name")}
        return _run("jobs.list", attrs, lambda: _list_jobs(project, location))

    @app.get(f"{API_PREFIX}/jobs/<job_id>")
    def jobs_get(project: str, location: str, job_id: str) -> Response:
        return _run(
            "jobs.get", _job_attrs(project, location, job_id), lambda: _get_job(project, location, job_id)
        )

    @app.put(f"{API_PREFIX}/jobs/<job_id>")
    def jobs_update(project: str, location: str, job_id: str) -> Response:
        attrs = _job_attrs(project, location, job_id)
        return _run("jobs.update", attrs, lambda: _update_job(project, location, job_id))

    @app.get(f"{API_PREFIX}/jobs/<job_id>/messages")
    def jobs_messages(project: str, location: str, job_id: str) -> Response:
        attrs = _job_attrs(project, location, job_id)
        return _run("jobs.messages.list", attrs, lambda: _list_messages(project, location, job_id))

    install_route_errors(app, google_route_error)


def _register_control_routes(app: Flask, state: DataflowState) -> None:
    install_registry_routes(
        app,
        state,
        "templates",
        load=load_templates,
        store=state.register_template,
        registered=state.templates.values,
        body_noun="template",
        errors=(ValueError, TypeError, KeyError),
    )

    @app.post("/_emulator/notify")
    def notify_set() -> Response:
        try:
            body = json_body()
        except ValueError as exc:
            return control_error(str(exc))
        url = body.get("url") if isinstance(body, dict) else None
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            return control_error('notify body must be {"url": "http://..."} or {"url": null}')
        state.notifier.url = url
        return jsonify({"url": url})

    @app.get("/_emulator/notifications")
    def notifications() -> Response:
        return jsonify({"notifications": state.notifier.records()})

    @app.get("/_emulator/jobs")
    def jobs_private() -> Response:
        state.settle()
        with state.lock:
            now = state.clock.now()
            return jsonify({"jobs": [private_job_json(job, now) for job in state.jobs.values()]})


def create_app(
    *,
    templates: TemplatesSource | None = None,
    notify_url: str | None = None,
    speed: float = 1.0,
    tick_interval: float = 0.1,
) -> Flask:
    """Build the emulator app; its :class:`DataflowState` is ``app.extensions["emulator_state"]``."""
    discovery_validator()  # fail fast if the discovery document is missing
    state = DataflowState(
        templates=load_templates(templates) if templates is not None else (),
        notify_url=notify_url,
        speed=speed,
        tick_interval=tick_interval,
    )
    app = emulator_app("dataflow_emulator", state, _register_protocol_routes, _register_control_routes)
    install_google_tokens(app, state, google_unauthenticated)
    return app


def serve(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ServerHandle:
    """Start the emulator in a daemon thread (``port=0``: a free port); ``kwargs`` go to create_app."""
    return serve_app(create_app, host, port, **kwargs)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--templates", help="YAML or JSON file of templates to register at start")
    parser.add_argument("--notify-url", help="URL receiving statusChanged CloudEvents")
    parser.add_argument(
        "--tick-interval",
        type=float,
        default=0.1,
        help="seconds between job-state announcements (raise it when holding many thousands of jobs)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        argv,
        "Local emulator of the Cloud Dataflow REST API v1b3.",
        lambda args: create_app(
            templates=args.templates,
            notify_url=args.notify_url,
            speed=args.speed,
            tick_interval=args.tick_interval,
        ),
        _add_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(main())
