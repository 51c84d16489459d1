"""Local emulator of Cloud Data Fusion's instance lookup and the CDAP REST API v3, for tests and the local stack.

One server plays both parts (point ``DATAFUSION_API_ENDPOINT`` at its root). It follows the
``datafusion v1`` discovery document, revision 20260811 (bundled with google-api-python-client), and, for
CDAP, the sources of ``cdapio/cdap``: ``BatchProgram``/``BatchProgramResult`` (cdap-proto, commits
2fd8cba2 and 163ade54) for the batch start, ``ProgramLifecycleHttpHandler`` and
``ProgramLifecycleService.issueStop`` (cdap-app-fabric) for the run stop:

- Data Fusion API v1: ``GET /v1/projects/{p}/locations/{l}/instances/{i}`` -> an ``Instance`` shaped
  by the bundled ``datafusion v1`` discovery document, ``state: ACTIVE``, ``apiEndpoint`` =
  ``<server root>/api`` and ``serviceEndpoint`` = ``<server root>`` (the UI). An unknown instance
  answers 404 with Google's JSON error. With ``auto_instances`` (the default) every name exists.
- CDAP v3 under ``/api/v3/namespaces/{ns}``:

  ========================================================  ================================================
  ``POST .../start`` body ``[{appId, programType,           HTTP 200 and one result per item:
  programId, runtimeargs}]`` (batch start)                   ``{appId, programType, programId, appVersion,
                                                             statusCode, runId}`` or ``{..., statusCode: 404|400, error}``
  ``POST .../apps/{app}/{category}/{program}/start``         200, empty body, no run id (single-program start)
  ``GET  .../apps/{app}/{category}/{program}/runs/{run}``    a run record; 404 for ``visible_after_seconds``
  ``GET  .../apps/{app}/{category}/{program}/runs``          run records, newest first; ``status``, ``start``,
                                                             ``end`` (epoch seconds, on ``starting``), ``limit``
  ``POST .../apps/{app}/{category}/{program}/runs/{run}/stop``      200; 400 when the run already ended or
                                                             is unknown (CDAP's issueStop), 404 for an
                                                             unknown app or program
  ``POST .../apps/{app}/{category}/{program}/runs/{run}/classify``  error classification of a FAILED run
  ``PUT  .../apps/{app}`` body an ``AppRequest`` (an        200 ``Deploy Complete`` (a new app version);
  exported pipeline: ``artifact``, ``config``)               404 unknown namespace or artifact, 400 bad config
  ``GET  .../apps/{app}``                                    ``ApplicationDetail`` (``configuration``: JSON text)
  ========================================================  ================================================

  PUT and GET follow ``AppLifecycleHttpHandler`` (cdap-app-fabric) and ``AppRequest`` /
  ``ApplicationDetail`` (cdap-proto). ``PATCH /v1/.../instances/{i}?updateMask=eventPublishConfig``
  sets the instance's ``eventPublishConfig {enabled, topic}`` and answers a done ``Operation``.

  ``category`` is ``workflows`` (batch pipelines: ``DataPipelineWorkflow``) or ``spark`` (streaming
  pipelines: ``DataStreamsSparkStreaming``). Errors are plain text (``text/plain``): 404 for an
  unknown namespace, app, program or run; 400 for a malformed request; 401 without an
  ``Authorization: Bearer ...`` header (Data Fusion fronts CDAP with Google auth); 409 / 503 through
  faults.

A run record is ``{runid, starting, start, end, stopping, status, properties: {runtimeArgs: "<JSON
text>"}, cluster: {status, numNodes, end}, profile: {namespace, profile, entity}}`` with epoch
seconds, null fields left out (as CDAP's Gson does). Runs follow the emulator clock: PENDING ->
STARTING after ``pending_seconds`` -> RUNNING after ``starting_seconds`` -> COMPLETED or FAILED after
``run_seconds`` (streaming pipelines stay RUNNING). Stop: a PENDING run is KILLED at once; a starting
or running one is STOPPING, then KILLED ``stop_seconds`` later.

Pipelines (CDAP apps) are registered with ``POST /_emulator/apps``, ``--apps FILE`` or
``create_app(apps=...)``::

    {"namespace": "default", "app": "ingest", "mode": "batch" | "streaming",
     "behavior": {"pending_seconds": 1, "starting_seconds": 1, "run_seconds": 3,
                  "outcome": "COMPLETED" | "FAILED", "failure_message": "...", "failure_stage": "...",
                  "outcome_arg": null | "simulate.outcome", "stop_seconds": 1}}

Pushed status: an instance with ``eventPublishConfig`` enabled publishes every run status change to
its topic on the Pub/Sub emulator (``pubsub_emulator_host``, default ``$PUBSUB_EMULATOR_HOST``), one
message each, its data CDAP's ``ProgramStatusEvent`` as ``ProgramStatusEventPublisher`` builds it
(cdap-app-fabric ``internal/events``; cdap-event-reader-ext ``spi/events``) and Gson writes it, no
attributes; a batch pipeline's inner Spark program (``phase-1``, ``workflowId`` = the workflow's run)
reports its own status between the workflow's RUNNING and its end. ``GET /_emulator/events`` lists them; ``GET /_emulator/deploys`` lists the PUTs.

``outcome_arg`` names a runtime argument whose value (COMPLETED or FAILED) overrides the outcome of
that one run. A FAILED run's ``failure_message`` is served by ``classify`` (the run record itself
carries no error text, as in CDAP).

Control API (besides the common ``/_emulator/reset|requests|faults|clock``): ``GET|POST
/_emulator/apps``, ``GET|POST /_emulator/instances`` (``{"instance", "project"?, "location"?,
"state"?, "version"?, "type"?}``), ``GET|POST /_emulator/settings`` (``visible_after_seconds``,
``auto_instances``, ``require_auth``), ``GET /_emulator/runs`` (every run with its bookkeeping) and
``GET /_emulator/starts`` (every start item received, with the status it was answered). Reset forgets
runs, starts, deploys, events, faults and requests, and undoes PUT deploys and instance patches; it
keeps registered apps and instances, settings and the clock.

Fault operations: ``instances.get``, ``start`` (the whole batch start request), ``start.item`` (one
item: its ``statusCode`` and ``error`` replace the result while HTTP stays 200), ``program.start``,
``runs.get``, ``runs.list``, ``runs.stop``, ``runs.classify``, ``apps.deploy``, ``apps.get``,
``instances.patch`` or ``*``. ``match`` keys: ``namespace``,
``app``, ``programType``, ``programId``, ``runId``, ``runtimeargs`` (a subset), ``instance``,
``project``, ``location``. ``after_effect: true`` starts the run (or stops it) and then answers the
error: the lost-response case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import threading
import time
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
    control_error,
    emulator_app,
    entry_at,
    google_error,
    google_route_error,
    guarded,
    install_google_tokens,
    install_registry_routes,
    install_route_errors,
    json_body,
    load_bodies,
    reject_unknown_fields,
    rfc3339,
    run_cli,
    serve_app,
    state_of,
)

CDAP_PREFIX = "/api/v3/namespaces/<namespace>"
PROGRAM_PREFIX = f"{CDAP_PREFIX}/apps/<app>/<category>/<program>"
INSTANCE_PATH = "/v1/projects/<project>/locations/<location>/instances/<instance>"
APP_VERSION = "-SNAPSHOT"
RUN_STATUSES = (
    "PENDING",
    "STARTING",
    "RUNNING",
    "SUSPENDED",
    "RESUMING",
    "STOPPING",
    "COMPLETED",
    "FAILED",
    "KILLED",
    "REJECTED",
)
TERMINAL = frozenset({"COMPLETED", "FAILED", "KILLED", "REJECTED"})
DEFAULT_LIMIT = 100
# Run ids are time-based UUIDs, as CDAP's; a random node id (multicast bit set) instead of the host's MAC.
_UUID_NODE = random.getrandbits(48) | (1 << 40)
APP_RE = re.compile(r"[A-Za-z0-9_-]+")  # CDAP application ids
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_]+")  # CDAP namespace ids (no hyphen)

# programType values (case-insensitive in requests) -> (name echoed in results, URL category).
PROGRAM_TYPES: dict[str, tuple[str, str]] = {
    "mapreduce": ("Mapreduce", "mapreduce"),
    "workflow": ("Workflow", "workflows"),
    "service": ("Service", "services"),
    "spark": ("Spark", "spark"),
    "worker": ("Worker", "workers"),
}
CATEGORIES = {category: name for name, (_, category) in PROGRAM_TYPES.items()}
# What a deployed pipeline of each mode contains: (programType, programId).
MODE_PROGRAMS = {
    "batch": ("workflow", "DataPipelineWorkflow"),
    "streaming": ("spark", "DataStreamsSparkStreaming"),
}
INSTANCE_STATES = (
    "STATE_UNSPECIFIED",
    "CREATING",
    "ACTIVE",
    "FAILED",
    "DELETING",
    "UPGRADING",
    "RESTARTING",
    "UPDATING",
    "AUTO_UPDATING",
    "AUTO_UPGRADING",
    "DISABLED",
    "ENABLING",
)

FAULT_TEXT = {
    400: "Bad request.",
    401: "Unauthorized: the request carries no valid credentials.",
    403: "Forbidden: the caller does not have permission.",
    404: "Not found.",
    409: "Conflict: the program is already running.",
    429: "Too many requests.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service 'appfabric' is not available. Please wait until it is up and running.",
    504: "Gateway timeout.",
}


class CdapError(ProtocolError):
    """An error CDAP answers with a plain-text body."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def response(self) -> Response:
        return text_response(self.code, self.message)


def text_response(code: int, message: str) -> Response:
    return Response(message, status=code, mimetype="text/plain")


# ============================================================================== apps and instances


@dataclass(frozen=True)
class Behavior:
    """How the runs of a registered app behave on the emulator clock."""

    pending_seconds: float = 1.0
    starting_seconds: float = 1.0
    run_seconds: float = 3.0
    outcome: str = "COMPLETED"
    failure_message: str = "The pipeline failed."
    failure_stage: str = ""
    outcome_arg: str | None = None
    stop_seconds: float = 1.0

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> Behavior:
        body = dict(body or {})
        reject_unknown_fields(body, cls.__dataclass_fields__, "behavior")
        for name in ("pending_seconds", "starting_seconds", "run_seconds", "stop_seconds"):
            value = body.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"behavior.{name} must be a number of seconds >= 0")
        if "outcome" in body:
            body["outcome"] = _outcome(body["outcome"])
            if body["outcome"] is None:
                raise ValueError("behavior.outcome must be COMPLETED or FAILED")
        for name in ("failure_message", "failure_stage"):
            if name in body and not isinstance(body[name], str):
                raise ValueError(f"behavior.{name} must be text")
        if body.get("outcome_arg") is not None and not isinstance(body["outcome_arg"], str):
            raise ValueError("behavior.outcome_arg must be a runtime argument name")
        return cls(**body)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _outcome(value: Any) -> str | None:
    text = str(value).upper() if isinstance(value, str) else ""
    return text if text in ("COMPLETED", "FAILED") else None


@dataclass(frozen=True)
class App:
    """A deployed pipeline: one CDAP application with the program its mode implies.

    ``deployed`` holds what ``PUT .../apps/{app}`` stored (``artifact``, ``config``, ``description``,
    ``appVersion``); an app registered through the control API has none (``GET`` shows an empty
    configuration for it)."""

    namespace: str
    app: str
    mode: str
    behavior: Behavior
    deployed: Mapping[str, Any] | None = None

    @property
    def program(self) -> tuple[str, str]:
        return MODE_PROGRAMS[self.mode]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> App:
        reject_unknown_fields(body, {"namespace", "app", "mode", "behavior"}, "app")
        namespace = body.get("namespace", "default")
        app = body.get("app")
        if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
            raise ValueError("app 'namespace' must match [a-zA-Z0-9_]+")
        if not isinstance(app, str) or not APP_RE.fullmatch(app):
            raise ValueError("app 'app' must match [a-zA-Z0-9_-]+")
        mode = body.get("mode", "batch")
        if mode not in MODE_PROGRAMS:
            raise ValueError("app 'mode' must be batch or streaming")
        return cls(namespace, app, mode, Behavior.from_json(body.get("behavior")))

    def to_json(self) -> dict[str, Any]:
        program_type, program_id = self.program
        return {
            "namespace": self.namespace,
            "app": self.app,
            "mode": self.mode,
            "programType": program_type,
            "programId": program_id,
            "behavior": self.behavior.to_json(),
        }


AppsSource = BodiesSource


def load_apps(source: AppsSource) -> list[App]:
    """Apps from a YAML/JSON file path, a list of app bodies, one body, or ``{"apps": [...]}``."""
    return [App.from_json(item) for item in load_bodies(source, "apps")]


@dataclass(frozen=True)
class Instance:
    """A registered Data Fusion instance (``project``/``location`` None: any)."""

    name: str
    project: str | None = None
    location: str | None = None
    state: str = "ACTIVE"
    version: str = "6.10.1"
    type: str = "BASIC"
    event_publish_config: Mapping[str, Any] | None = None  # {"enabled": bool, "topic": "projects/P/topics/T"}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Instance:
        known = {"instance", "project", "location", "state", "version", "type", "eventPublishConfig"}
        reject_unknown_fields(body, known, "instance")
        name = body.get("instance")
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError("instance needs an 'instance' name")
        state = body.get("state", "ACTIVE")
        if state not in INSTANCE_STATES:
            raise ValueError(f"instance 'state' must be one of {', '.join(INSTANCE_STATES)}")
        kind = body.get("type", "BASIC")
        if kind not in ("BASIC", "ENTERPRISE", "DEVELOPER"):
            raise ValueError("instance 'type' must be BASIC, ENTERPRISE or DEVELOPER")
        publish = body.get("eventPublishConfig")
        return cls(
            name=name,
            project=body.get("project"),
            location=body.get("location"),
            state=state,
            version=str(body.get("version", "6.10.1")),
            type=kind,
            event_publish_config=None if publish is None else event_publish_config(publish),
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "instance": self.name,
            "project": self.project,
            "location": self.location,
            "state": self.state,
            "version": self.version,
            "type": self.type,
        }
        if self.event_publish_config is not None:
            body["eventPublishConfig"] = dict(self.event_publish_config)
        return body

    @property
    def publish_topic(self) -> str | None:
        """The topic its pipeline run events go to, when event publishing is enabled."""
        config = self.event_publish_config or {}
        return str(config["topic"]) if config.get("enabled") and config.get("topic") else None


TOPIC_RE = re.compile(r"projects/[^/]+/topics/[A-Za-z][A-Za-z0-9._~+%-]{2,254}")


def event_publish_config(body: Any) -> dict[str, Any]:
    """An ``EventPublishConfig`` (datafusion v1: ``enabled`` required, ``topic`` required when
    enabled, as ``projects/{project}/topics/{topic}``); raises ValueError naming the field."""
    if not isinstance(body, Mapping):
        raise ValueError("eventPublishConfig must be an object")
    reject_unknown_fields(body, {"enabled", "topic"}, "eventPublishConfig")
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise ValueError("eventPublishConfig.enabled is required (true or false)")
    topic = body.get("topic")
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        raise ValueError("eventPublishConfig.topic is required: projects/{project_id}/topics/{topic_id}")
    return {"enabled": enabled, "topic": topic}


def load_instances(source: Any) -> list[Instance]:
    """Instances from names, bodies, or ``{"instances": [...]}``."""
    if isinstance(source, Mapping):
        source = source.get("instances", [source])
    if isinstance(source, str):
        source = [source]
    if not isinstance(source, list | tuple):
        raise ValueError("instances must be a list of names or instance objects")
    return [Instance(name=item) if isinstance(item, str) else Instance.from_json(item) for item in source]


def instance_json(
    instance: Instance, project: str, location: str, root: str, created: float
) -> dict[str, Any]:
    """The Data Fusion v1 ``Instance`` resource (field names from the discovery document)."""
    return {
        "name": f"projects/{project}/locations/{location}/instances/{instance.name}",
        "type": instance.type,
        "enableStackdriverLogging": True,
        "enableStackdriverMonitoring": True,
        "privateInstance": False,
        "labels": {},
        "options": {},
        "createTime": rfc3339(created),
        "updateTime": rfc3339(created),
        "state": instance.state,
        "serviceEndpoint": root,
        "version": instance.version,
        "displayName": instance.name,
        "availableVersion": [],
        "apiEndpoint": f"{root}/api",
        "gcsBucket": f"gs-{uuid.uuid5(uuid.NAMESPACE_URL, project + instance.name).hex[:24]}",
        "p4ServiceAccount": "service-000000000000@gcp-sa-datafusion.iam.gserviceaccount.com",
        "tenantProjectId": f"{instance.name[:20]}-tp",
        "dataprocServiceAccount": "000000000000-compute@developer.gserviceaccount.com",
        "satisfiesPzs": False,
        **(
            {"eventPublishConfig": dict(instance.event_publish_config)}
            if instance.event_publish_config is not None
            else {}
        ),
    }


# ============================================================================== runs


@dataclass
class Entry:
    """``status`` holds from ``at`` (emulator seconds)."""

    at: float
    status: str


@dataclass
class Run:
    """One program run and its private bookkeeping (the protocol sees :meth:`record`)."""

    runid: str
    seq: int
    app: App
    program_type: str
    program_id: str
    runtime_args: dict[str, str]
    outcome: str
    created: float
    timeline: list[Entry] = field(default_factory=list)
    running_at: float | None = None
    stopping_at: float | None = None
    published: int = 0  # timeline entries already announced as program status events
    # A batch pipeline's workflow runs its stages as an inner Spark program, whose run reports its
    # own status too (``workflowId`` = the workflow's run): its run id and timeline.
    phase_id: str | None = None
    phases: list[Entry] = field(default_factory=list)
    phases_published: int = 0

    def entry_at(self, now: float) -> Entry:
        return entry_at(self.timeline, now)

    def status_at(self, now: float) -> str:
        return self.entry_at(now).status

    def record(self, now: float) -> dict[str, Any]:
        """The CDAP ``RunRecord`` JSON at emulator time ``now`` (null fields omitted)."""
        entry = self.entry_at(now)
        status = entry.status
        record: dict[str, Any] = {"runid": self.runid, "starting": int(self.created)}
        if self.running_at is not None and self.running_at <= now:
            record["start"] = int(self.running_at)
        if self.stopping_at is not None and self.stopping_at <= now:
            record["stopping"] = int(self.stopping_at)
        if status in TERMINAL:
            record["end"] = int(entry.at)
        record["status"] = status
        args = {
            "logical.start.time": str(int(self.created * 1000)),
            "system.profile.name": "SYSTEM:dataproc",
            **self.runtime_args,
        }
        record["properties"] = {"runtimeArgs": json.dumps(args, separators=(",", ":"))}
        if status == "PENDING":
            cluster: dict[str, Any] = {"status": "PROVISIONING"}
        elif status in TERMINAL:
            cluster = {"status": "DEPROVISIONED", "end": int(entry.at), "numNodes": 2}
        else:
            cluster = {"status": "PROVISIONED", "numNodes": 2}
        record["cluster"] = cluster
        record["profile"] = {"namespace": "system", "profile": "dataproc", "entity": "PROFILE"}
        return record

    def private_json(self, now: float, visible: bool) -> dict[str, Any]:
        return {
            "record": self.record(now),
            "namespace": self.app.namespace,
            "app": self.app.app,
            "programType": self.program_type,
            "programId": self.program_id,
            "runtimeargs": dict(self.runtime_args),
            "outcome": self.outcome,
            "visible": visible,
            "timeline": [{"status": e.status, "at": e.at, "reached": e.at <= now} for e in self.timeline],
        }


def plan_run(run: Run) -> None:
    behavior, t0 = run.app.behavior, run.created
    starting_at = t0 + float(behavior.pending_seconds)
    running_at = starting_at + float(behavior.starting_seconds)
    run.running_at = running_at
    run.timeline = [Entry(t0, "PENDING"), Entry(starting_at, "STARTING"), Entry(running_at, "RUNNING")]
    if run.app.mode == "batch":
        end = running_at + float(behavior.run_seconds)
        run.timeline.append(Entry(end, run.outcome))
        run.phase_id = str(uuid.uuid1(node=_UUID_NODE))
        run.phases = [Entry(running_at, "STARTING"), Entry(running_at, "RUNNING"), Entry(end, run.outcome)]


def run_id_string(run: Run) -> str:
    program_type = run.program_type
    return f"program_run:{run.app.namespace}.{run.app.app}.{APP_VERSION}.{program_type}.{run.program_id}.{run.runid}"


# ============================================================================== deployed pipelines

# The pipeline artifacts a Data Fusion instance carries (scope SYSTEM), and the mode each implies.
ARTIFACT_MODES = {"cdap-data-pipeline": "batch", "cdap-data-streams": "streaming"}
VERSION_RE = re.compile(r"\d+\.\d+\.\d+(-SNAPSHOT)?")
DEFAULT_DESCRIPTION = "Data Pipeline Application"


def parse_app_request(raw: bytes) -> dict[str, Any]:
    """The body of ``PUT .../apps/{app}``: an ``AppRequest`` (cdap-proto ``io.cdap.cdap.proto.artifact.
    AppRequest``: ``artifact {name, version, scope}``, ``config``, ``principal``, ``change``, ...),
    which is what a pipeline exported from Data Fusion is. Gson ignores the fields it does not know
    (an export's ``name`` and ``description``). Raises :class:`CdapError` as CDAP answers."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # AppLifecycleHttpHandler.deployAppFromArtifact: a Gson failure is a 400 with its message
        raise CdapError(400, f"com.google.gson.JsonSyntaxException: {exc}") from exc
    if not isinstance(body, dict):
        raise CdapError(400, "Request body is invalid json: expected an AppRequest object")
    artifact = body.get("artifact")
    if not isinstance(artifact, dict):
        raise CdapError(400, "Artifact must be provided in the request body.")
    name, version, scope = artifact.get("name"), artifact.get("version"), artifact.get("scope", "USER")
    if not isinstance(name, str) or not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise CdapError(400, "Artifact name and a version like 6.10.1 must be given.")
    if not isinstance(scope, str) or scope.upper() not in ("SYSTEM", "USER"):
        raise CdapError(400, f"Invalid scope '{scope}'. Must be 'system' or 'user'.")
    if name not in ARTIFACT_MODES or scope.upper() != "SYSTEM":
        # ArtifactNotFoundException -> 404 with its message
        raise CdapError(404, f"Artifact '{scope.lower()}:{name}:{version}' was not found.")
    config = body.get("config")
    if not isinstance(config, dict):
        raise CdapError(400, "Invalid pipeline config: 'config' must be an object.")
    stages = config.get("stages")
    if not isinstance(stages, list) or not stages:
        raise CdapError(400, "Invalid pipeline config: there must be at least one stage.")
    names = [stage.get("name") if isinstance(stage, dict) else None for stage in stages]
    if not all(isinstance(n, str) and n for n in names):
        raise CdapError(400, "Invalid pipeline config: every stage needs a name.")
    if len(set(names)) != len(names):
        raise CdapError(400, "Invalid pipeline config: stage names must be unique.")
    return {
        "artifact": {"name": name, "version": version, "scope": scope.upper()},
        "config": config,
        "description": str(config.get("description") or body.get("description") or DEFAULT_DESCRIPTION),
    }


def application_detail(app: App) -> dict[str, Any]:
    """``GET .../apps/{app}``: CDAP's ``ApplicationDetail`` (cdap-proto ``io.cdap.cdap.proto.
    ApplicationDetail``): ``configuration`` is the config as JSON *text*."""
    program_type, program_id = app.program
    deployed = app.deployed or {}
    artifact = deployed.get("artifact") or {
        "name": "cdap-data-streams" if app.mode == "streaming" else "cdap-data-pipeline",
        "version": "6.10.1",
        "scope": "SYSTEM",
    }
    config = deployed.get("config")
    return {
        "name": app.app,
        "appVersion": deployed.get("appVersion", APP_VERSION),
        "description": deployed.get("description", DEFAULT_DESCRIPTION),
        "configuration": json.dumps(config, separators=(",", ":")) if config is not None else "",
        "datasets": [],
        "programs": [
            {
                "type": PROGRAM_TYPES[program_type][0],
                "app": app.app,
                "name": program_id,
                "description": "",
            }
        ],
        "plugins": [],
        "artifact": dict(artifact),
    }


# ============================================================================== status events


PHASE_PROGRAM = "phase-1"  # the Spark program a batch pipeline's workflow runs its stages in


def program_status_event(
    run: Run, entry: Entry, instance: Instance, project: str, publish_ms: int, *, phase: bool = False
) -> dict[str, Any]:
    """What Data Fusion's Pub/Sub event writer publishes for one status change: Gson of CDAP's
    ``ProgramStatusEvent`` (cdap-event-reader-ext ``io.cdap.cdap.spi.events``), built by
    ``ProgramStatusEventPublisher`` (cdap-app-fabric ``internal/events``): null fields left out;
    ``eventTime`` is the run id's time (``RunIds.getTime``), i.e. when the run was created, in ms;
    an end state carries ``error`` (the program's error, FAILED) or ``pipelineMetrics``. ``phase``:
    the event of the workflow's inner program, whose ``workflowId`` (the system argument
    ``workflowRunId``) is the workflow's run id."""
    system_args = {
        "logical.start.time": str(int(run.created * 1000)),
        "system.profile.name": "SYSTEM:dataproc",
    }
    if phase:
        system_args["workflowRunId"] = run.runid
    details: dict[str, Any] = {
        "runID": run.phase_id if phase else run.runid,
        "programName": PHASE_PROGRAM if phase else run.program_id,
        "applicationName": run.app.app,
        "namespace": run.app.namespace,
        "status": entry.status,
        "eventTime": int(run.created * 1000),
        "userArgs": dict(run.runtime_args),
        "systemArgs": system_args,
        "workflowId": run.runid if phase else "",
        "startMetadata": {"type": "MANUAL"},
    }
    if entry.status == "FAILED":
        details["error"] = json.dumps(
            {
                "className": "java.lang.Exception",
                "message": run.app.behavior.failure_message,
                "stackTraces": [],
            },
            separators=(",", ":"),
        )
    elif entry.status in TERMINAL:
        details["pipelineMetrics"] = []
    return {
        "publishTime": publish_ms,
        "version": "v1",
        "instanceName": instance.name,
        "projectName": project,
        "programStatusEventDetails": details,
    }


class EventPublisher(Outbox):
    """Publishes program status events to the Pub/Sub emulator from one background worker, in order,
    as Data Fusion's ``PubSubEventWriter`` does (JSON data, no attributes). Every event is kept, with
    whether it reached the emulator, for ``GET /_emulator/events``."""

    def __init__(self, host: str | None) -> None:
        self.host = host
        super().__init__("cdap-event-publisher")

    def publish(self, topic: str, event: Mapping[str, Any]) -> None:
        record: dict[str, Any] = {
            "topic": topic,
            "event": dict(event),
            "published": False,
            "message_id": None,
            "error": None if self.host else "no Pub/Sub emulator host configured",
        }
        self._enqueue(record, deliverable=bool(self.host))

    def _deliver(self, record: dict[str, Any]) -> None:
        from local.services import publish  # the Pub/Sub client: imported by the publishing thread only

        _, project, _, topic = str(record["topic"]).split("/", 3)
        data = json.dumps(record["event"], separators=(",", ":"))
        for attempt in range(4):
            try:
                message_id = publish(project, topic, data, emulator_host=self.host)
            except Exception as exc:  # recorded for the control API; the next attempt may succeed
                with self._lock:
                    record["error"] = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1 * 2**attempt)
                continue
            with self._lock:
                record.update(published=True, message_id=message_id, error=None)
            return


# ============================================================================== state


class CdapState(EmulatorState):
    """Apps, instances and runs; every mutation happens under ``self.lock``."""

    def __init__(
        self,
        apps: Sequence[App] = (),
        instances: Sequence[Instance] = (),
        *,
        auto_instances: bool = True,
        visible_after_seconds: float = 0.0,
        require_auth: bool = True,
        speed: float = 1.0,
        pubsub_emulator_host: str | None = None,
        tick_interval: float = 0.1,
    ) -> None:
        super().__init__(speed=speed)
        self.apps: dict[tuple[str, str], App] = {(a.namespace, a.app): a for a in apps}
        self.namespaces: set[str] = {"default"} | {a.namespace for a in apps}
        self.instances: dict[str, Instance] = {i.name: i for i in instances}
        # what the control API registered: a reset goes back to it (undoing PUT deploys and PATCHes)
        self.registered_apps = dict(self.apps)
        self.registered_instances = dict(self.instances)
        self.instance_created = self.clock.now()
        self.auto_instances = auto_instances
        self.visible_after_seconds = float(visible_after_seconds)
        self.require_auth = require_auth
        self.runs: dict[str, Run] = {}
        self.starts: list[dict[str, Any]] = []
        self.deploys: list[dict[str, Any]] = []  # every PUT .../apps/{app} received and its answer
        self.deploy_behavior = Behavior()  # how the runs of an app first deployed by PUT behave
        self._seq = 0
        self.publisher = EventPublisher(pubsub_emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST"))
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._ticker = threading.Thread(target=self._tick_loop, args=(tick_interval,), daemon=True)
        self._ticker.start()

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self.runs.clear()
            self.starts.clear()
            self.deploys.clear()
            self.publisher.clear()
            self.apps.clear()
            self.apps.update(self.registered_apps)
            self.instances.clear()
            self.instances.update(self.registered_instances)

    def close(self) -> None:
        self._stop.set()
        self.publisher.close()

    def after_clock_change(self) -> None:
        self.tick()

    def settings(self) -> dict[str, Any]:
        return {
            "visible_after_seconds": self.visible_after_seconds,
            "auto_instances": self.auto_instances,
            "require_auth": self.require_auth,
            "pubsub_emulator_host": self.publisher.host,
            "deploy_behavior": self.deploy_behavior.to_json(),
        }

    # -- status events -----------------------------------------------------------------------------
    def _tick_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.tick()

    def tick(self) -> None:
        """Announce every run status the clock has reached to each instance publishing events (one
        CDAP API plays every instance here, so each enabled instance announces every run)."""
        with self._tick_lock, self.lock:
            now = self.clock.now()
            topics = [(i, i.publish_topic) for i in self.instances.values() if i.publish_topic]
            for run in sorted(self.runs.values(), key=lambda r: r.seq):
                due: list[tuple[float, int, bool, Entry]] = []
                while run.published < len(run.timeline) and run.timeline[run.published].at <= now:
                    entry = run.timeline[run.published]
                    due.append((entry.at, 2 if entry.status in TERMINAL else 0, False, entry))
                    run.published += 1
                while run.phases_published < len(run.phases) and run.phases[run.phases_published].at <= now:
                    entry = run.phases[run.phases_published]
                    due.append((entry.at, 1, True, entry))
                    run.phases_published += 1
                # the workflow starts before its inner program and ends after it
                for _, _, phase, entry in sorted(due, key=lambda d: (d[0], d[1])):
                    for instance, topic in topics:
                        project = instance.project or str(topic).split("/")[1]
                        event = program_status_event(
                            run, entry, instance, project, int(now * 1000), phase=phase
                        )
                        self.publisher.publish(str(topic), event)

    # -- deployed pipelines ------------------------------------------------------------------------
    def deploy_app(self, namespace: str, name: str, request_body: Mapping[str, Any]) -> App:
        """Create the app or replace its definition: a new app version each time, as CDAP's PUT."""
        mode = ARTIFACT_MODES[request_body["artifact"]["name"]]
        with self.lock:
            if namespace not in self.namespaces:
                raise CdapError(404, f"'namespace:{namespace}' was not found.")
            before = self.apps.get((namespace, name))
            behavior = before.behavior if before is not None else self.deploy_behavior
            deployed = {**request_body, "appVersion": str(uuid.uuid1(node=_UUID_NODE))}
            app = App(namespace, name, mode, behavior, deployed)
            self.apps[(namespace, name)] = app
            return app

    def patch_instance(self, name: str, changes: Mapping[str, Any]) -> Instance:
        with self.lock:
            current = self.instances.get(name) or Instance(name=name)  # an auto instance: any project
            updated = dataclasses.replace(current, **changes)
            self.instances[name] = updated
            return updated

    def register_app(self, app: App) -> None:
        with self.lock:
            self.apps[(app.namespace, app.app)] = app
            self.registered_apps[(app.namespace, app.app)] = app
            self.namespaces.add(app.namespace)

    def register_instance(self, instance: Instance) -> None:
        with self.lock:
            self.instances[instance.name] = instance
            self.registered_instances[instance.name] = instance

    # -- lookups (raise CdapError) ------------------------------------------------------------------
    def find_app(self, namespace: str, app_name: str) -> App:
        if namespace not in self.namespaces:
            raise CdapError(404, f"'namespace:{namespace}' was not found.")
        app = self.apps.get((namespace, app_name))
        if app is None:
            raise CdapError(404, f"'application:{namespace}.{app_name}.{APP_VERSION}' was not found.")
        return app

    def find_program(self, namespace: str, app_name: str, program_type: str, program_id: str) -> App:
        app = self.find_app(namespace, app_name)
        if app.program != (program_type, program_id):
            raise CdapError(
                404,
                f"'program:{namespace}.{app_name}.{APP_VERSION}.{program_type}.{program_id}' was not found.",
            )
        return app

    def visible(self, run: Run, now: float) -> bool:
        return now >= run.created + self.visible_after_seconds

    def find_run(self, app: App, program_type: str, program_id: str, run_id: str, now: float) -> Run:
        run = self.runs.get(run_id)
        if (
            run is None
            or run.app.namespace != app.namespace
            or run.app.app != app.app
            or (run.program_type, run.program_id) != (program_type, program_id)
            or not self.visible(run, now)
        ):
            raise CdapError(
                404,
                f"'program_run:{app.namespace}.{app.app}.{APP_VERSION}.{program_type}.{program_id}.{run_id}' "
                "was not found.",
            )
        return run

    # -- mutations ---------------------------------------------------------------------------------
    def start_run(self, app: App, program_type: str, program_id: str, args: dict[str, str]) -> Run:
        outcome = app.behavior.outcome
        if app.behavior.outcome_arg and app.behavior.outcome_arg in args:
            override = _outcome(args[app.behavior.outcome_arg])
            if override is None:
                raise CdapError(
                    400, f"Runtime argument {app.behavior.outcome_arg} must be COMPLETED or FAILED."
                )
            outcome = override
        with self.lock:
            now = self.clock.now()
            self._seq += 1
            run = Run(
                runid=str(uuid.uuid1(node=_UUID_NODE)),
                seq=self._seq,
                app=app,
                program_type=program_type,
                program_id=program_id,
                runtime_args=dict(args),
                outcome=outcome,
                created=now,
            )
            plan_run(run)
            self.runs[run.runid] = run
            return run

    def stop_run(self, run: Run) -> None:
        with self.lock:
            now = self.clock.now()
            status = run.status_at(now)
            if status in TERMINAL:
                raise CdapError(400, f"Program run '{run_id_string(run)}' is not running: it is {status}.")
            if status == "STOPPING":
                return
            run.timeline = [e for e in run.timeline if e.at <= now]
            run.phases = [e for e in run.phases if e.at <= now]
            run.stopping_at = now
            if run.running_at is not None and run.running_at > now:
                run.running_at = None
            if status == "PENDING":
                run.timeline.append(Entry(now, "KILLED"))
                return
            killed = now + float(run.app.behavior.stop_seconds)
            run.timeline.append(Entry(now, "STOPPING"))
            run.timeline.append(Entry(killed, "KILLED"))
            if run.phases:  # the inner program was started: it is killed with its workflow
                run.phases.append(Entry(killed, "KILLED"))


# ============================================================================== HTTP layer


def _state() -> CdapState:
    state: CdapState = state_of(current_app)
    return state


def _has_bearer() -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _cdap_fault(rule: FaultRule) -> Response:
    status = rule.status or 500
    return text_response(status, rule.message or FAULT_TEXT.get(status, "Injected fault."))


def _cdap(operation: str, attrs: Mapping[str, Any], action: Callable[[], Any]) -> Response:
    """Answer one CDAP call: credentials first (as the Data Fusion proxy does), then faults, then ``action``."""
    state = _state()
    if state.require_auth and not _has_bearer():
        return text_response(401, "Unauthorized: an 'Authorization: Bearer <token>' header is required.")
    return state.faults.run(operation, attrs, lambda: guarded(action), _cdap_fault)


def _program_type(category: str) -> str:
    name = CATEGORIES.get(category)
    if name is None:
        raise CdapError(400, f"Invalid program type '{category}'")
    return name


def _run_attrs(
    namespace: str, app: str, category: str, program: str, run_id: str | None = None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "namespace": namespace,
        "app": app,
        "programType": CATEGORIES.get(category, category),
        "programId": program,
    }
    if run_id is not None:
        attrs["runId"] = run_id
        with _state().lock:
            run = _state().runs.get(run_id)
            if run is not None:
                attrs["runtimeargs"] = dict(run.runtime_args)
    return attrs


def _string_args(raw: Any, where: str) -> dict[str, str]:
    """Runtime arguments as CDAP's Gson reads a ``Map<String, String>``: scalars become text."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CdapError(400, f"Request body is invalid json: {where} must be a JSON object of strings")
    args = {}
    for key, value in raw.items():
        if isinstance(value, dict | list):
            raise CdapError(
                400, f"Request body is invalid json: Expected a string but was {type(value).__name__}"
            )
        if value is None:
            continue
        args[str(key)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return args


@dataclass
class StartItem:
    """One validated item of a batch start request, and what became of it."""

    app: str
    program_type: str  # lowercase key of PROGRAM_TYPES
    program_id: str
    runtime_args: dict[str, str]
    status: int | None = None
    run_id: str | None = None
    error: str | None = None

    def result(self) -> dict[str, Any]:
        # BatchProgramResult extends BatchProgram (cdap-proto, cdapio/cdap commit 2fd8cba2): appId,
        # programType, programId, appVersion ("-SNAPSHOT" when the request names none), then
        # statusCode, error and runId.
        body: dict[str, Any] = {
            "appId": self.app,
            "programType": PROGRAM_TYPES[self.program_type][0],
            "programId": self.program_id,
            "appVersion": "-SNAPSHOT",
            "statusCode": self.status,
        }
        if self.error is not None:
            body["error"] = self.error
        if self.run_id is not None:
            body["runId"] = self.run_id
        return body


def _parse_start_items() -> list[StartItem]:
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CdapError(400, f"Request body is invalid json: {exc}") from exc
    if not isinstance(body, list):
        raise CdapError(400, "Request body is invalid json, please check that it is a json array.")
    items = []
    for entry in body:
        entry = entry if isinstance(entry, dict) else {}
        app, ptype, pid = entry.get("appId"), entry.get("programType"), entry.get("programId")
        ptype_key = ptype.lower() if isinstance(ptype, str) else ""
        if (
            not (isinstance(app, str) and app)
            or ptype_key not in PROGRAM_TYPES
            or not (isinstance(pid, str) and pid)
        ):
            missing = "appId" if not app else "programType" if ptype_key not in PROGRAM_TYPES else "programId"
            raise CdapError(
                400,
                f"Must provide valid appId, programType, and programId for each object: {missing} is invalid",
            )
        items.append(StartItem(app, ptype_key, pid, _string_args(entry.get("runtimeargs"), "runtimeargs")))
    return items


def _start_one(state: CdapState, namespace: str, item: StartItem) -> None:
    """Start one item, filling its status / runId / error (never raises)."""
    try:
        app = state.find_program(namespace, item.app, item.program_type, item.program_id)
        run = state.start_run(app, item.program_type, item.program_id, item.runtime_args)
    except CdapError as exc:
        item.status, item.error = exc.code, exc.message
        return
    item.status, item.run_id = 200, run.runid


def _batch_start(namespace: str) -> Response:
    state = _state()
    items: list[StartItem] = []
    try:
        items = _parse_start_items()
    except CdapError:
        pass  # answered below, after credentials and faults, by the effect
    first = items[0] if items else None
    attrs: dict[str, Any] = {"namespace": namespace}
    if first is not None:
        attrs.update(
            app=first.app,
            programType=first.program_type,
            programId=first.program_id,
            runtimeargs=first.runtime_args,
        )

    def effect() -> Any:
        parsed = _parse_start_items()
        items[:] = parsed
        for item in parsed:
            item_attrs = {
                "namespace": namespace,
                "app": item.app,
                "programType": item.program_type,
                "programId": item.program_id,
                "runtimeargs": item.runtime_args,
            }
            rule = state.faults.take("start.item", item_attrs)
            if rule is not None and rule.status is not None:
                if rule.after_effect:
                    _start_one(state, namespace, item)
                item.status = rule.status
                item.error = rule.message or FAULT_TEXT.get(rule.status, "Injected fault.")
                continue
            _start_one(state, namespace, item)
        return jsonify([item.result() for item in parsed])

    response = _cdap("start", attrs, effect)
    entries = [
        {
            "namespace": namespace,
            "app": item.app,
            "programType": item.program_type,
            "programId": item.program_id,
            "runtimeargs": dict(item.runtime_args),
            "httpStatus": response.status_code,
            "statusCode": item.status,
            "status": response.status_code if response.status_code != 200 else item.status,
            "runId": item.run_id,
            "error": item.error,
        }
        for item in items
    ]
    if not entries:  # a malformed request is still a start request received
        entries = [
            {
                "namespace": namespace,
                "app": None,
                "programType": None,
                "programId": None,
                "runtimeargs": {},
                "httpStatus": response.status_code,
                "statusCode": None,
                "status": response.status_code,
                "runId": None,
                "error": response.get_data(as_text=True)[:500],
            }
        ]
    with state.lock:
        state.starts.extend(entries)
    return response


def _program_start(namespace: str, app_name: str, category: str, program: str) -> Response:
    def action() -> Response:
        state = _state()
        program_type = _program_type(category)
        app = state.find_program(namespace, app_name, program_type, program)
        try:
            body = json_body()
        except ValueError as exc:
            raise CdapError(400, f"Request body is invalid json: {exc}") from exc
        state.start_run(app, program_type, program, _string_args(body or None, "body"))
        return Response(status=200)  # CDAP answers the single-program start without any body: no run id

    return _cdap("program.start", _run_attrs(namespace, app_name, category, program), action)


def _get_run(namespace: str, app_name: str, category: str, program: str, run_id: str) -> dict[str, Any]:
    state = _state()
    program_type = _program_type(category)
    app = state.find_program(namespace, app_name, program_type, program)
    with state.lock:
        now = state.clock.now()
        return state.find_run(app, program_type, program, run_id, now).record(now)


def _int_arg(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CdapError(400, f"Invalid value for '{name}': {raw!r} is not a number") from None


def _list_runs(namespace: str, app_name: str, category: str, program: str) -> Response:
    state = _state()
    program_type = _program_type(category)
    app = state.find_program(namespace, app_name, program_type, program)
    status = (request.args.get("status") or "ALL").upper()
    if status != "ALL" and status not in RUN_STATUSES:
        raise CdapError(400, f"No enum constant io.cdap.cdap.proto.ProgramRunStatus.{status}")
    start = _int_arg("start", 0) or 0
    end = _int_arg("end", None)
    limit = _int_arg("limit", DEFAULT_LIMIT) or 0
    if limit <= 0:
        raise CdapError(400, "limit must be a positive number")
    with state.lock:
        now = state.clock.now()
        runs = [
            run
            for run in state.runs.values()
            if run.app.namespace == app.namespace
            and run.app.app == app.app
            and (run.program_type, run.program_id) == (program_type, program)
            and state.visible(run, now)
            and start <= int(run.created)
            and (end is None or int(run.created) < end)
            and (status == "ALL" or run.status_at(now) == status)
        ]
        runs.sort(key=lambda run: (run.created, run.seq), reverse=True)
        return jsonify([run.record(now) for run in runs[:limit]])


def _stop_run(namespace: str, app_name: str, category: str, program: str, run_id: str) -> Response:
    state = _state()
    program_type = _program_type(category)
    app = state.find_program(namespace, app_name, program_type, program)
    try:
        uuid.UUID(run_id)
    except ValueError:
        raise CdapError(400, f"Invalid run id '{run_id}'.") from None
    with state.lock:
        try:
            run = state.find_run(app, program_type, program, run_id, state.clock.now())
        except CdapError as exc:
            # ProgramLifecycleService.issueStop (cdapio/cdap): a run with no active run record is a
            # BadRequestException "Program '...' is not running." once the program itself exists.
            if exc.code != 404:
                raise
            raise CdapError(
                400, f"Program '{app.namespace}.{app.app}.{program_type}.{program}' is not running."
            ) from None
    state.stop_run(run)
    return Response(status=200)


def _classify_run(namespace: str, app_name: str, category: str, program: str, run_id: str) -> Any:
    state = _state()
    program_type = _program_type(category)
    app = state.find_program(namespace, app_name, program_type, program)
    with state.lock:
        now = state.clock.now()
        run = state.find_run(app, program_type, program, run_id, now)
        if run.status_at(now) != "FAILED":
            raise CdapError(400, "Classification is only supported for failed runs")
    behavior = run.app.behavior
    return [
        {
            "stageName": behavior.failure_stage,
            "errorCategory": f"Plugin-'{behavior.failure_stage}'" if behavior.failure_stage else "Others",
            "errorReason": behavior.failure_message,
            "errorMessage": behavior.failure_message,
            "errorType": "UNKNOWN",
            "dependency": "false",
            "errorCodeType": "",
            "errorCode": "",
            "supportedDocumentationUrl": "",
        }
    ]


def _get_instance(project: str, location: str, name: str) -> Response:
    state = _state()
    if state.require_auth and not _has_bearer():
        return google_error(
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie "
            "or other valid authentication credential.",
        )

    def action() -> Response:
        with state.lock:
            instance = state.instances.get(name)
            if instance is None and state.auto_instances:
                instance = Instance(name=name)
        if (
            instance is None
            or (instance.project is not None and instance.project != project)
            or (instance.location is not None and instance.location != location)
        ):
            return google_error(
                404, f"Resource 'projects/{project}/locations/{location}/instances/{name}' was not found"
            )
        root = request.url_root.rstrip("/")
        return jsonify(instance_json(instance, project, location, root, state.instance_created))

    def fault(rule: FaultRule) -> Response:
        return google_error(
            rule.status or 500, rule.message or FAULT_TEXT.get(rule.status or 500, "Injected fault.")
        )

    attrs = {"project": project, "location": location, "instance": name}
    return state.faults.run("instances.get", attrs, action, fault)


def _deploy_app(namespace: str, app_name: str) -> Response:
    state = _state()
    raw = request.get_data(cache=True)

    def action() -> Response:
        if not APP_RE.fullmatch(app_name):
            raise CdapError(400, f"Invalid app name '{app_name}'")
        if not NAMESPACE_RE.fullmatch(namespace):
            raise CdapError(400, f"Invalid namespace '{namespace}'")
        body = parse_app_request(raw)
        state.deploy_app(namespace, app_name, body)
        return text_response(200, "Deploy Complete")

    response = _cdap("apps.deploy", {"namespace": namespace, "app": app_name}, action)
    with state.lock:
        state.deploys.append(
            {
                "namespace": namespace,
                "app": app_name,
                "status": response.status_code,
                "answer": response.get_data(as_text=True)[:500],
                "body": _json_or_text(raw),
            }
        )
    return response


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return raw.decode("utf-8", errors="replace")[:500]


def _get_app(namespace: str, app_name: str) -> Response:
    def action() -> Response:
        state = _state()
        with state.lock:
            if namespace not in state.namespaces:
                raise CdapError(404, f"Namespace '{namespace}' was not found.")
            app = state.apps.get((namespace, app_name))
            if app is None:
                # ApplicationNotFoundException (cdap-common)
                raise CdapError(404, f"Application '{app_name}' was not found.")
            return jsonify(application_detail(app))

    return _cdap("apps.get", {"namespace": namespace, "app": app_name}, action)


def _patch_instance(project: str, location: str, name: str) -> Response:
    """``instances.patch``: only the fields named by ``updateMask`` change (without a mask, only
    ``labels``); answers a finished long-running ``Operation`` whose response is the instance."""
    state = _state()
    if state.require_auth and not _has_bearer():
        return google_error(401, "Request is missing required authentication credential.")

    def action() -> Response:
        with state.lock:
            known = state.instances.get(name)
            exists = known is not None or state.auto_instances
        if not exists:
            return google_error(
                404, f"Resource 'projects/{project}/locations/{location}/instances/{name}' was not found"
            )
        try:
            body = json_body()
        except ValueError as exc:
            return google_error(400, f"Invalid JSON payload received. {exc}", "INVALID_ARGUMENT")
        if not isinstance(body, dict):
            return google_error(
                400, "Invalid JSON payload received: expected an Instance", "INVALID_ARGUMENT"
            )
        mask = [m.strip() for m in (request.args.get("updateMask") or "labels").split(",") if m.strip()]
        changes: dict[str, Any] = {}
        for path in mask:
            if path in ("eventPublishConfig", "event_publish_config"):
                raw = body.get("eventPublishConfig", body.get("event_publish_config"))
                try:
                    changes["event_publish_config"] = None if raw is None else event_publish_config(raw)
                except ValueError as exc:
                    return google_error(400, str(exc), "INVALID_ARGUMENT")
            elif path != "labels":
                return google_error(
                    400, f"updateMask path '{path}' is not supported by this emulator", "INVALID_ARGUMENT"
                )
        instance = state.patch_instance(name, changes)
        root = request.url_root.rstrip("/")
        return jsonify(
            {
                "name": f"projects/{project}/locations/{location}/operations/operation-{uuid.uuid4().hex}",
                "metadata": {
                    "@type": "type.googleapis.com/google.cloud.datafusion.v1.OperationMetadata",
                    "createTime": rfc3339(state.clock.now()),
                    "endTime": rfc3339(state.clock.now()),
                    "target": f"projects/{project}/locations/{location}/instances/{name}",
                    "verb": "update",
                    "apiVersion": "v1",
                },
                "done": True,
                "response": {
                    "@type": "type.googleapis.com/google.cloud.datafusion.v1.Instance",
                    **instance_json(instance, project, location, root, state.instance_created),
                },
            }
        )

    def fault(rule: FaultRule) -> Response:
        return google_error(
            rule.status or 500, rule.message or FAULT_TEXT.get(rule.status or 500, "Injected fault.")
        )

    return state.faults.run(
        "instances.patch", {"project": project, "location": location, "instance": name}, action, fault
    )


def _register_protocol_routes(app: Flask) -> None:
    @app.get(INSTANCE_PATH)
    def instances_get(project: str, location: str, instance: str) -> Response:
        return _get_instance(project, location, instance)

    @app.patch(INSTANCE_PATH)
    def instances_patch(project: str, location: str, instance: str) -> Response:
        return _patch_instance(project, location, instance)

    @app.put(f"{CDAP_PREFIX}/apps/<app>")
    def apps_deploy(namespace: str, app: str) -> Response:
        return _deploy_app(namespace, app)

    @app.get(f"{CDAP_PREFIX}/apps/<app>")
    def apps_get(namespace: str, app: str) -> Response:
        return _get_app(namespace, app)

    @app.post(f"{CDAP_PREFIX}/start")
    def batch_start(namespace: str) -> Response:
        return _batch_start(namespace)

    @app.post(f"{PROGRAM_PREFIX}/start")
    def program_start(namespace: str, app: str, category: str, program: str) -> Response:
        return _program_start(namespace, app, category, program)

    @app.get(f"{PROGRAM_PREFIX}/runs")
    def runs_list(namespace: str, app: str, category: str, program: str) -> Response:
        attrs = _run_attrs(namespace, app, category, program)
        return _cdap("runs.list", attrs, lambda: _list_runs(namespace, app, category, program))

    @app.get(f"{PROGRAM_PREFIX}/runs/<run_id>")
    def runs_get(namespace: str, app: str, category: str, program: str, run_id: str) -> Response:
        attrs = _run_attrs(namespace, app, category, program, run_id)
        return _cdap("runs.get", attrs, lambda: _get_run(namespace, app, category, program, run_id))

    @app.post(f"{PROGRAM_PREFIX}/runs/<run_id>/stop")
    def runs_stop(namespace: str, app: str, category: str, program: str, run_id: str) -> Response:
        attrs = _run_attrs(namespace, app, category, program, run_id)
        return _cdap("runs.stop", attrs, lambda: _stop_run(namespace, app, category, program, run_id))

    @app.post(f"{PROGRAM_PREFIX}/runs/<run_id>/classify")
    def runs_classify(namespace: str, app: str, category: str, program: str, run_id: str) -> Response:
        attrs = _run_attrs(namespace, app, category, program, run_id)
        return _cdap("runs.classify", attrs, lambda: _classify_run(namespace, app, category, program, run_id))

    install_route_errors(app, _route_error)


def _route_error(code: int) -> Response:
    """404/405 outside any route: plain text under ``/api/`` (CDAP), Google JSON elsewhere (Data Fusion)."""
    if not request.path.startswith("/api/"):
        return google_route_error(code)
    if code == 404:
        return text_response(404, f"Problem accessing: {request.path}. Reason: Not Found")
    return text_response(405, f"Method {request.method} is not allowed for {request.path}.")


def _register_control_routes(app: Flask, state: CdapState) -> None:
    install_registry_routes(
        app,
        state,
        "apps",
        load=load_apps,
        store=state.register_app,
        registered=state.apps.values,
        body_noun="app",
    )
    install_registry_routes(
        app,
        state,
        "instances",
        load=load_instances,
        store=state.register_instance,
        registered=state.instances.values,
    )

    @app.route("/_emulator/settings", methods=["GET", "POST"])
    def settings() -> Response:
        if request.method == "POST":
            try:
                body = json_body()
                if not isinstance(body, dict) or not set(body) <= set(state.settings()):
                    raise ValueError(f"settings body takes only {', '.join(state.settings())}")
                visible = body.get("visible_after_seconds", state.visible_after_seconds)
                if isinstance(visible, bool) or not isinstance(visible, int | float) or visible < 0:
                    raise ValueError("visible_after_seconds must be a number >= 0")
                for flag in ("auto_instances", "require_auth"):
                    if not isinstance(body.get(flag, False), bool):
                        raise ValueError(f"{flag} must be true or false")
                host = body.get("pubsub_emulator_host", state.publisher.host)
                if host is not None and not isinstance(host, str):
                    raise ValueError("pubsub_emulator_host must be host:port")
                deploy_behavior = (
                    Behavior.from_json(body["deploy_behavior"]) if "deploy_behavior" in body else None
                )
            except ValueError as exc:
                return control_error(str(exc))
            with state.lock:
                state.visible_after_seconds = float(visible)
                state.auto_instances = bool(body.get("auto_instances", state.auto_instances))
                state.require_auth = bool(body.get("require_auth", state.require_auth))
                state.publisher.host = host or None
                if deploy_behavior is not None:
                    state.deploy_behavior = deploy_behavior
        return jsonify(state.settings())

    @app.get("/_emulator/events")
    def events() -> Response:
        """Every program status event published (``topic``, ``event``, ``published``, ``error``)."""
        return jsonify({"events": state.publisher.records()})

    @app.get("/_emulator/deploys")
    def deploys() -> Response:
        with state.lock:
            return jsonify({"deploys": [dict(d) for d in state.deploys]})

    @app.get("/_emulator/runs")
    def runs_private() -> Response:
        with state.lock:
            now = state.clock.now()
            runs = sorted(state.runs.values(), key=lambda run: run.seq)
            return jsonify({"runs": [run.private_json(now, state.visible(run, now)) for run in runs]})

    @app.get("/_emulator/starts")
    def starts() -> Response:
        with state.lock:
            return jsonify({"starts": [dict(s) for s in state.starts]})


def create_app(
    *,
    apps: AppsSource | None = None,
    instances: Any = None,
    auto_instances: bool = True,
    visible_after_seconds: float = 0.0,
    require_auth: bool = True,
    speed: float = 1.0,
    pubsub_emulator_host: str | None = None,
) -> Flask:
    """Build the emulator app; its :class:`CdapState` is ``app.extensions["emulator_state"]``.
    ``pubsub_emulator_host`` (default ``$PUBSUB_EMULATOR_HOST``): where instances with event
    publishing enabled publish their program status events."""
    state = CdapState(
        apps=load_apps(apps) if apps is not None else (),
        instances=load_instances(instances) if instances is not None else (),
        auto_instances=auto_instances,
        visible_after_seconds=visible_after_seconds,
        require_auth=require_auth,
        speed=speed,
        pubsub_emulator_host=pubsub_emulator_host,
    )
    app = emulator_app("cdap_emulator", state, _register_protocol_routes, _register_control_routes)
    install_google_tokens(
        app, state, lambda: text_response(401, "Unauthorized: the access token is invalid or expired.")
    )
    return app


def serve(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ServerHandle:
    """Start the emulator in a daemon thread (``port=0``: a free port); ``kwargs`` go to create_app."""
    return serve_app(create_app, host, port, **kwargs)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apps", help="YAML or JSON file of apps (deployed pipelines) to register at start")
    parser.add_argument(
        "--instance", action="append", default=[], help="register an instance name (repeatable)"
    )
    parser.add_argument(
        "--no-auto-instances", action="store_true", help="answer 404 for instances not registered"
    )
    parser.add_argument(
        "--visible-after", type=float, default=0.0, help="seconds a new run answers 404 before it is visible"
    )
    parser.add_argument(
        "--no-require-auth",
        action="store_true",
        help="accept calls without an Authorization header (clients with anonymous credentials)",
    )
    parser.add_argument(
        "--pubsub-emulator-host",
        default=None,
        help="host:port of the Pub/Sub emulator status events go to (default: $PUBSUB_EMULATOR_HOST)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        argv,
        "Local emulator of Cloud Data Fusion (instances.get) and the CDAP REST API v3.",
        lambda args: create_app(
            apps=args.apps,
            instances=args.instance,
            auto_instances=not args.no_auto_instances,
            visible_after_seconds=args.visible_after,
            require_auth=not args.no_require_auth,
            speed=args.speed,
            pubsub_emulator_host=args.pubsub_emulator_host,
        ),
        _add_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(main())
