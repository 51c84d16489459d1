"""Cloud Data Fusion: deployed CDAP pipelines, started through the instance's CDAP REST API (v3).

A Data Fusion instance is looked up once per process to learn its CDAP API base URL; every other
call goes to that URL with the same Google bearer token (cloud-platform scope)::

    GET  {datafusion}/v1/projects/P/locations/L/instances/I          -> Instance {apiEndpoint, serviceEndpoint, state}
    POST {api}/v3/namespaces/NS/start                                 batch start (the only start that returns a run id)
         [{"appId": APP, "programType": "workflow", "programId": "DataPipelineWorkflow", "runtimeargs": {...}}]
         -> HTTP 200 *even when the start failed*: each item has its own "statusCode"
            (200 + "runId"; 400 / 404 / 409 + "error")
    GET  {api}/v3/namespaces/NS/apps/APP/workflows/DataPipelineWorkflow/runs/RUN      run record
    GET  {api}/v3/namespaces/NS/apps/APP/workflows/DataPipelineWorkflow/runs?limit=N  newest first
    POST {api}/v3/namespaces/NS/apps/APP/workflows/DataPipelineWorkflow/runs/RUN/stop
    POST {api}/v3/namespaces/NS/apps/APP/workflows/DataPipelineWorkflow/runs/RUN/classify  (CDAP 6.11+:
         the error classification of a FAILED run, read for the failure reason; best effort)

Streaming pipelines use ``spark/DataStreamsSparkStreaming`` instead of
``workflows/DataPipelineWorkflow`` (``programType: "spark"`` in the start body).

A run record is ``{runid, starting, start, end, stopping, status, properties: {runtimeArgs:
"<JSON text>"}, cluster, profile}`` with times in epoch seconds. Its status is one of PENDING,
STARTING, RUNNING, SUSPENDED, RESUMING, STOPPING (not terminal) or COMPLETED, FAILED, KILLED,
REJECTED (terminal). CDAP records a run asynchronously: a run started a moment ago may still answer
404, which :meth:`DataFusion.status` reports as PENDING while the run is young.

Idempotency: CDAP has no job names, so every start carries the runtime argument
``eventpipelines.run_key``. :meth:`DataFusion.find` lists the program's recent runs and matches that
argument inside ``properties.runtimeArgs``; the launch service calls it before any relaunch whose
first attempt may have reached CDAP (a lost answer). An item ``statusCode`` 409 (the program is
already running and does not allow concurrent runs) becomes :class:`AlreadyExists` only when one of
the active runs carries this run key, otherwise a permanent :class:`BackendRejected`.

CDAP error bodies are plain text; :mod:`handlers.core.http` maps statuses (404 -> NotFound, 429/5xx/504 ->
BackendUnavailable, other 4xx -> BackendRejected) without reading the text.

Pipelines kept as code (``definition``: the exported JSON, relative to the config's folder) follow
CDAP's ``AppLifecycleHttpHandler``::

    GET  {api}/v3/namespaces/NS/apps/APP   -> ApplicationDetail {name, appVersion, configuration: "<JSON text>", artifact}
    PUT  {api}/v3/namespaces/NS/apps/APP   body AppRequest {artifact, config} (the export) -> 200 "Deploy Complete"

:meth:`DataFusion.plan_sync` compares artifact and config (what the repo states; stages by name),
:meth:`DataFusion.apply_sync` PUTs; :func:`check_definition` checks the config's runtime arguments
against the pipeline's macros at ``validate``.

Pushed status (Data Fusion 6.7+, the instance's ``eventPublishConfig``): CDAP's
``ProgramStatusEventPublisher`` publishes a ``ProgramStatusEvent`` per run status change to Pub/Sub;
:func:`parse_status_event` names the run by the run key in its ``userArgs`` and ``on_message``
checks that run at once (:func:`recognises_status_event`); :func:`deploy_status_topics` declares the
topic, the service agent's publisher role and the ``instances.patch`` that turns it on.

``DATAFUSION_API_ENDPOINT`` overrides ``https://datafusion.googleapis.com`` (the local emulator).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from handlers.backends.contract import (
    BackendSpec,
    DeployContext,
    DeployFlag,
    DeployNeeds,
    FindSemantics,
    Grant,
    JobRef,
    JobStatus,
    LaunchRequest,
    PipelineTarget,
    PushedStatus,
    RestCall,
    RunState,
    StatusPush,
    StatusTopic,
    SyncChange,
    SyncStep,
)
from handlers.core import clients, http, logs, retry
from handlers.core.clients import is_loopback
from handlers.core.errors import (
    AlreadyExists,
    BackendRejected,
    BackendUnavailable,
    ConfigError,
    EventError,
    NotFound,
)
from handlers.core.times import from_epoch

DEFAULT_ENDPOINT = "https://datafusion.googleapis.com"
ENDPOINT_ENV = "DATAFUSION_API_ENDPOINT"
OPTION_KEYS = ("instance", "namespace", "app", "api_endpoint", "definition", "preset_arguments")
DEFAULT_NAMESPACE = "default"
RUN_KEY_ARG = "eventpipelines.run_key"

# A run may answer 404 for a while after its start was accepted (CDAP writes run records
# asynchronously). Until this much time has passed since the launch, a 404 means "not yet visible".
NOT_VISIBLE_GRACE_SECONDS = 120.0
FIND_LIMIT = 100
# find() asks only for runs that started after the run was first claimed, minus this much clock skew.
FIND_SKEW_SECONDS = 600

# CDAP ids: applications [a-zA-Z0-9_-]+, namespaces [a-zA-Z0-9_]+ (no hyphen).
APP_RE = re.compile(r"[A-Za-z0-9_-]+")
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_]+")
INSTANCE_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
# The pipeline artifacts (scope SYSTEM) and the mode each implies.
ARTIFACT_MODES = {"cdap-data-pipeline": "batch", "cdap-data-streams": "streaming"}
# Run statuses a program status event may carry (cdap-proto ProgramRunStatus).
RUN_STATUSES = frozenset(
    {
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
    }
)


@dataclass(frozen=True)
class Program:
    """The CDAP program a pipeline mode runs: the start body's type and the URL path's category."""

    program_type: str  # in the batch start body ("workflow", "spark")
    category: str  # in URL paths ("workflows", "spark")
    program_id: str


BATCH_PROGRAM = Program("workflow", "workflows", "DataPipelineWorkflow")
STREAMING_PROGRAM = Program("spark", "spark", "DataStreamsSparkStreaming")
_PROGRAMS = {p.program_type: p for p in (BATCH_PROGRAM, STREAMING_PROGRAM)}


def program_for(mode: str) -> Program:
    return STREAMING_PROGRAM if mode == "streaming" else BATCH_PROGRAM


# Run statuses -> normalized states. Anything not listed (a future status) is not terminal.
STATE_MAP: Mapping[str, RunState] = {
    "PENDING": RunState.PENDING,
    "STARTING": RunState.PENDING,
    "RUNNING": RunState.RUNNING,
    "SUSPENDED": RunState.RUNNING,
    "RESUMING": RunState.RUNNING,
    "STOPPING": RunState.RUNNING,
    "COMPLETED": RunState.SUCCEEDED,
    "FAILED": RunState.FAILED,
    "REJECTED": RunState.FAILED,
    "KILLED": RunState.CANCELLED,
}

# Instance states (datafusion v1) in which the CDAP API cannot take requests for now / for good.
_INSTANCE_BUSY = frozenset(
    {"CREATING", "UPGRADING", "RESTARTING", "UPDATING", "AUTO_UPDATING", "AUTO_UPGRADING", "ENABLING"}
)
_INSTANCE_GONE = frozenset({"FAILED", "DELETING", "DISABLED"})


def normalize_state(raw: str | None) -> RunState:
    return STATE_MAP.get(raw or "", RunState.PENDING)


def check_options(options: Mapping[str, Any]) -> list[str]:
    """Config problems of a Data Fusion pipeline's backend-specific fields."""
    problems = []
    app = options.get("app")
    if not isinstance(app, str) or not APP_RE.fullmatch(app):
        problems.append("app: is required: the deployed pipeline's name (letters, digits, _ or -)")
    namespace = options.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        problems.append("namespace: must be a CDAP namespace (letters, digits or _)")
    instance = options.get("instance")
    endpoint = options.get("api_endpoint")
    if instance is not None and endpoint is not None:
        problems.append("instance, api_endpoint: give one of them, not both")
    elif instance is None and endpoint is None:
        problems.append("instance: is required (the Data Fusion instance name), unless api_endpoint is given")
    if instance is not None and (not isinstance(instance, str) or not INSTANCE_RE.fullmatch(instance)):
        problems.append("instance: must be a Data Fusion instance name ([a-z][a-z0-9-]*)")
    if endpoint is not None:
        ok = isinstance(endpoint, str) and (
            endpoint.startswith("https://") or (endpoint.startswith("http://") and is_loopback(endpoint))
        )
        if not ok:
            problems.append("api_endpoint: must be an https:// URL (the instance's CDAP API base)")
    definition = options.get("definition")
    if definition is not None and (
        not isinstance(definition, str) or not definition.endswith(".json") or definition.startswith("/")
    ):
        problems.append(
            "definition: must be the pipeline's exported JSON file, relative to the config's folder (*.json)"
        )
    preset = options.get("preset_arguments")
    if preset is not None and (
        not isinstance(preset, list) or not all(isinstance(n, str) and n for n in preset)
    ):
        problems.append("preset_arguments: must be a list of runtime argument names")
    return problems


_epoch = from_epoch


def runtime_args(record: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime arguments a run was started with (``properties.runtimeArgs`` is JSON text)."""
    text = (record.get("properties") or {}).get("runtimeArgs")
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, str) or not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


# ---------------------------------------------------------------------------------------------
# Pipelines kept as code: the exported JSON, its macros, and sync (handlers.backends.contract.Syncable)
# ---------------------------------------------------------------------------------------------
# Runtime arguments CDAP and its engines read themselves: never reported as unread.
RESERVED_ARG_PREFIXES = (
    "system.",
    "spark.",
    "task.",
    "mapreduce.",
    "dataproc.",
    "logical.",
    "eventpipelines.",
)
_MACRO_FUNCTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\((.*)\)", re.DOTALL)
SYNC_BUDGET_SECONDS = 60.0


@dataclass(frozen=True)
class Macros:
    """The macros of a pipeline: ``arguments`` (``${name}``: a runtime argument it reads),
    ``functions`` (``${secure(x)}``, ``${logicalStartTime(...)}``: computed, not arguments) and
    ``dynamic`` (``${${env}.path}``: a name only known at run time)."""

    arguments: frozenset[str]
    functions: frozenset[str]
    dynamic: frozenset[str]


def _closing(text: str, start: int) -> int | None:
    """The index of the ``}`` closing the macro whose body starts at ``start`` (nesting counted)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("\\${", i):
            i += 3
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _scan(text: str, arguments: set[str], functions: set[str], dynamic: set[str]) -> None:
    i = 0
    while i < len(text):
        if text.startswith("\\${", i):  # an escaped macro is literal text
            i += 3
            continue
        if not text.startswith("${", i):
            i += 1
            continue
        end = _closing(text, i + 2)
        if end is None:  # unclosed: CDAP reads it as plain text
            return
        body = text[i + 2 : end]
        _scan(body, arguments, functions, dynamic)  # nested macros are read first
        function = _MACRO_FUNCTION_RE.fullmatch(body)
        if function is not None:
            functions.add(body.split("(", 1)[0])
        elif "${" in body:
            dynamic.add(body)
        elif body.strip():
            arguments.add(body.strip())
        i = end + 1


def macros(value: Any) -> Macros:
    """Every macro in a pipeline config (every string in it, keys excepted), CDAP's syntax."""
    arguments: set[str] = set()
    functions: set[str] = set()
    dynamic: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _scan(item, arguments, functions, dynamic)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return Macros(frozenset(arguments), frozenset(functions), frozenset(dynamic))


def definition_path(pipeline: PipelineTarget, base_dir: str) -> Path | None:
    definition = pipeline.options.get("definition")
    if not isinstance(definition, str) or not definition:
        return None
    return Path(base_dir) / definition


def load_definition(path: Path) -> dict[str, Any]:
    """The exported pipeline JSON at ``path``, checked as CDAP's ``AppRequest``: ``artifact`` (name,
    version, scope) and ``config`` with named ``stages``. Raises :class:`ConfigError`."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"], source=str(path)) from exc
    except ValueError as exc:
        raise ConfigError([f"{path} is not JSON: {exc}"], source=str(path)) from exc
    problems = []
    if not isinstance(doc, dict):
        raise ConfigError(
            [f"{path}: must be a pipeline exported from Data Fusion (a JSON object)"], source=str(path)
        )
    artifact = doc.get("artifact")
    if not isinstance(artifact, dict) or not all(
        isinstance(artifact.get(k), str) for k in ("name", "version")
    ):
        problems.append("artifact: must name the pipeline artifact (name, version, scope)")
    elif artifact["name"] not in ARTIFACT_MODES:
        problems.append(f"artifact.name: must be one of {', '.join(sorted(ARTIFACT_MODES))}")
    config = doc.get("config")
    stages = config.get("stages") if isinstance(config, dict) else None
    if not isinstance(stages, list) or not stages:
        problems.append("config.stages: the pipeline needs at least one stage")
    else:
        names = [s.get("name") if isinstance(s, dict) else None for s in stages]
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            problems.append("config.stages: every stage needs a unique name")
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems], source=str(path))
    return doc


def check_definition(
    pipeline: PipelineTarget, argument_names: Collection[str], base_dir: str
) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a pipeline kept as code, read offline at ``validate``.

    Errors: the definition cannot be read, is not an exported pipeline, its artifact does not match
    the pipeline's mode, or one of its macros has no runtime argument (neither in ``parameters`` nor
    in ``preset_arguments``, the arguments Data Fusion supplies itself as preferences): that run
    would fail at start. Warnings: an argument the config passes that no macro reads (CDAP ignores
    it: a typo, or an argument a plugin reads by code); arguments CDAP reads itself (``system.*``,
    ``spark.*``, ...) are exempt, and so is everything when a macro's name is built at run time."""
    path = definition_path(pipeline, base_dir)
    if path is None:
        return [], []
    where = f"pipeline '{pipeline.name}'"
    try:
        doc = load_definition(path)
    except ConfigError as exc:
        return [f"{where}: {p}" for p in exc.problems], []
    errors, warnings = [], []
    if ARTIFACT_MODES[doc["artifact"]["name"]] != pipeline.mode:
        errors.append(
            f"{where}: mode {pipeline.mode} but {path.name} is a {doc['artifact']['name']} pipeline"
        )
    found = macros(doc["config"])
    preset = {str(n) for n in pipeline.options.get("preset_arguments") or ()}
    given = set(argument_names)
    for name in sorted(found.arguments - given - preset):
        errors.append(
            f"{where}: macro ${{{name}}} in {path.name} has no runtime argument: add parameters.{name} "
            "or list it in preset_arguments"
        )
    if not found.dynamic:
        for name in sorted(given - found.arguments):
            if not name.startswith(RESERVED_ARG_PREFIXES):
                warnings.append(f"{where}: parameters.{name} is passed but {path.name} reads no ${{{name}}}")
    return errors, warnings


def config_differences(repo: Mapping[str, Any], deployed: Mapping[str, Any]) -> list[str]:
    """What differs between the repo's config and the deployed one, for people. Only what the repo
    states counts: CDAP fills in defaults (``resources``, ``stageLoggingEnabled``, ...) the export may
    leave out."""
    out = []
    repo_stages = {s.get("name"): s for s in repo.get("stages") or () if isinstance(s, Mapping)}
    live_stages = {s.get("name"): s for s in deployed.get("stages") or () if isinstance(s, Mapping)}
    added = sorted(str(n) for n in repo_stages.keys() - live_stages.keys())
    removed = sorted(str(n) for n in live_stages.keys() - repo_stages.keys())
    changed = sorted(
        str(n) for n in repo_stages.keys() & live_stages.keys() if repo_stages[n] != live_stages[n]
    )
    if changed:
        out.append(f"stages changed: {', '.join(changed)}")
    if added:
        out.append(f"stages added: {', '.join(added)}")
    if removed:
        out.append(f"stages removed: {', '.join(removed)}")
    fields = sorted(k for k in repo if k != "stages" and repo[k] != deployed.get(k))
    if fields:
        out.append(f"config fields changed: {', '.join(fields)}")
    return out


# ---------------------------------------------------------------------------------------------
# Pushed status: Data Fusion's program status events on Pub/Sub
# ---------------------------------------------------------------------------------------------
EVENT_KEY = "programStatusEventDetails"
PIPELINE_PROGRAMS = frozenset({BATCH_PROGRAM.program_id, STREAMING_PROGRAM.program_id})


def recognises_status_event(attributes: Mapping[str, str], data: Any) -> bool:
    """A Pub/Sub message is Data Fusion's program status event when its JSON data carries
    ``programStatusEventDetails`` (the writer sets no attributes: the data alone says so)."""
    return isinstance(data, Mapping) and EVENT_KEY in data


def parse_status_event(attributes: Mapping[str, Any], data: Any) -> PushedStatus | None:
    """CDAP's ``ProgramStatusEvent`` as Data Fusion publishes it (Gson, cdapio/cdap
    ``ProgramStatusEventPublisher``): ``{publishTime, version, instanceName, projectName,
    programStatusEventDetails: {runID, programName, applicationName, namespace, status, eventTime,
    userArgs, systemArgs, error?, pipelineMetrics?, workflowId, startMetadata}}``.

    The run is named by the ``eventpipelines.run_key`` runtime argument the launch passed (in
    ``userArgs``). ``None`` for an event about a program that is not a pipeline's own (the Spark or
    MapReduce phases a workflow runs report their status too) or a run started without our key;
    :class:`EventError` for an event that is not one (no details, no run id, a status CDAP does not
    have)."""
    if not isinstance(data, Mapping) or not isinstance(data.get(EVENT_KEY), Mapping):
        raise EventError(f"program status event without {EVENT_KEY}", field=f"data.{EVENT_KEY}")
    details = data[EVENT_KEY]
    run_id, status, program = details.get("runID"), details.get("status"), details.get("programName")
    if not isinstance(run_id, str) or not run_id:
        raise EventError("program status event without a runID", field=f"data.{EVENT_KEY}.runID")
    if not isinstance(status, str) or status not in RUN_STATUSES:
        raise EventError(
            f"program status event with status {str(status)[:40]!r}, not a CDAP run status",
            field=f"data.{EVENT_KEY}.status",
        )
    if program not in PIPELINE_PROGRAMS:
        return None
    user_args = details.get("userArgs")
    if user_args is not None and not isinstance(user_args, Mapping):
        raise EventError("userArgs must be an object", field=f"data.{EVENT_KEY}.userArgs")
    run_key = (user_args or {}).get(RUN_KEY_ARG)
    if not isinstance(run_key, str) or not run_key:
        return None
    return PushedStatus(run_key=run_key, job_id=run_id, raw_state=status)


# ---------------------------------------------------------------------------------------------
# What Data Fusion declares (handlers.backends.contract)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class _Target:
    project: str
    location: str
    instance: str
    namespace: str


def _targets(pipelines: Sequence[PipelineTarget]) -> list[_Target]:
    out = set()
    for p in pipelines:
        instance = p.options.get("instance")
        if isinstance(instance, str) and instance:
            out.add(
                _Target(p.project, p.region, instance, str(p.options.get("namespace") or DEFAULT_NAMESPACE))
            )
    return sorted(out)


def _instance_grant(role: str, t: _Target, why: str, namespace: str = "") -> Grant:
    command = (
        "gcloud",
        "beta",
        "data-fusion",
        "add-iam-policy-binding",
        t.instance,
        f"--location={t.location}",
        f"--project={t.project}",
    ) + ((f"--namespace={namespace}",) if namespace else ())
    resource = f"{t.instance}/{namespace}" if namespace else t.instance
    return Grant(
        role,
        "datafusion-namespace" if namespace else "datafusion-instance",
        resource,
        why,
        project=t.project,
        location=t.location,
        command=command,
        # the provider binds on an instance only: a namespace grant is made by its command
        terraform="" if namespace else "google_data_fusion_instance_iam_member",
        attributes={"name": t.instance, "region": t.location, "project": t.project},
    )


def deploy_grants(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[Grant]:
    rbac = bool(ctx.flags.get("datafusion_rbac"))
    grants = []
    instances = sorted({_Target(t.project, t.location, t.instance, "") for t in _targets(pipelines)})
    for t in instances:
        grants.append(
            _instance_grant(
                "roles/datafusion.viewer", t, "read the instance's CDAP endpoint and start its pipelines"
            )
        )
        if rbac:
            grants.append(
                _instance_grant(
                    "roles/datafusion.accessor", t, "RBAC: enter the instance (no namespace rights by itself)"
                )
            )
    if rbac:
        grants += [
            _instance_grant(
                "roles/datafusion.operator", t, "RBAC: run pipelines in this namespace only", t.namespace
            )
            for t in _targets(pipelines)
        ]
    return grants


STATUS_TOPIC = "datafusion-status"
SERVICE_AGENT = "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-datafusion.iam.gserviceaccount.com"


def _pushing_instances(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[_Target]:
    """The instances (of the deploy project) whose run status the deploy has them publish."""
    if ctx.flags.get("datafusion_no_push"):
        return []
    return sorted(
        {
            _Target(t.project, t.location, t.instance, "")
            for t in _targets(pipelines)
            if t.project == ctx.project
        }
    )


def deploy_status_topics(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[StatusTopic]:
    """Data Fusion 6.7+ publishes each run status change to the topic of the instance's
    ``eventPublishConfig`` (set by ``instances.patch``, no gcloud flag does it), as its service agent."""
    instances = _pushing_instances(pipelines, ctx)
    if not instances:
        return []
    topic = str(ctx.flags.get("datafusion_status_topic") or STATUS_TOPIC)
    config = {"eventPublishConfig": {"enabled": True, "topic": f"projects/{ctx.project}/topics/{topic}"}}
    calls = tuple(
        RestCall(
            "PATCH",
            f"{DEFAULT_ENDPOINT}/v1/projects/{t.project}/locations/{t.location}/instances/{t.instance}"
            "?updateMask=eventPublishConfig",
            config,
            f"Data Fusion instance {t.instance} publishes its pipeline run status to {topic}",
        )
        for t in instances
    )
    why = "Data Fusion pipeline run status events, completed at once by on_message (the sweep stays the fallback)"
    return [StatusTopic(topic, SERVICE_AGENT, why, calls)]


def deploy_warnings(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[str]:
    out = [
        f"pipeline '{p.name}' reaches Data Fusion through api_endpoint: grant the runtime account "
        "access to that instance yourself (no instance name to bind roles on)"
        for p in pipelines
        if not p.options.get("instance")
    ]
    if not ctx.flags.get("datafusion_no_push"):
        out += [
            f"Data Fusion instance {t.instance} is in project {t.project}: its run status is not pushed "
            "here, so the sweep (check_runs) completes its runs"
            for t in sorted({_Target(t.project, t.location, t.instance, "") for t in _targets(pipelines)})
            if t.project != ctx.project
        ]
    return out


SPEC = BackendSpec(
    name="datafusion",
    title="Cloud Data Fusion (CDAP) pipeline",
    implementation="handlers.backends.datafusion:DataFusion",
    option_keys=OPTION_KEYS,
    check_options=check_options,
    endpoint_envs=(ENDPOINT_ENV,),
    # CDAP records a run asynchronously: after a start whose answer was lost, the launch service
    # waits this long before a runs.list "not found" counts.
    find=FindSemantics(exact=True, settle_seconds=5.0),
    push=StatusPush(parse=parse_status_event, recognises=recognises_status_event),
    check_definition=check_definition,
    deploy=DeployNeeds(
        apis=("datafusion.googleapis.com",),
        grants=deploy_grants,
        warnings=deploy_warnings,
        flags=(
            DeployFlag(
                "--datafusion-rbac",
                "datafusion_rbac",
                "instances use RBAC: add accessor + namespace operator",
                boolean=True,
            ),
            DeployFlag(
                "--datafusion-status-topic",
                "datafusion_status_topic",
                f"topic Data Fusion instances publish run status to (default {STATUS_TOPIC})",
                metavar="TOPIC",
            ),
            DeployFlag(
                "--datafusion-no-push",
                "datafusion_no_push",
                "leave the instances' event publishing alone: the sweep completes Data Fusion runs",
                boolean=True,
            ),
        ),
        status_topics=deploy_status_topics,
    ),
    job_noun="run",
)
SPECS = (SPEC,)


@dataclass(frozen=True)
class InstanceEndpoints:
    """What the instance lookup yields: the CDAP API base URL and the UI base URL ("" if unknown)."""

    api: str
    ui: str = ""


class DataFusion:
    """Deployed Data Fusion (CDAP) pipelines: batch workflow or streaming Spark program."""

    spec = SPEC
    name = SPEC.name

    def __init__(
        self,
        session: Any = None,
        endpoint: str | None = None,
        timeout: Any = None,
        *,
        clock: Callable[[], float] = time.time,
        not_visible_grace_seconds: float = NOT_VISIBLE_GRACE_SECONDS,
    ) -> None:
        self.find_semantics = self.spec.find
        self._session = session
        chosen = endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        self.endpoint = chosen.rstrip("/")
        self.timeout = timeout or http.default_timeout()
        self.clock = clock
        self.not_visible_grace_seconds = not_visible_grace_seconds
        self._instances: dict[tuple[str, str, str], InstanceEndpoints] = {}
        self._instance_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = clients.google_session()
        return self._session

    # -- instance lookup ----------------------------------------------------------------------------
    def instance_endpoints(self, project: str, region: str, instance: str) -> InstanceEndpoints:
        """The instance's CDAP API and UI URLs (``instances.get``), cached per process once usable."""
        key = (project, region, instance)
        with self._lock:
            cached = self._instances.get(key)
            if cached is not None:
                return cached
            key_lock = self._instance_locks.setdefault(key, threading.Lock())
        with key_lock:  # one lookup per instance, however many launches start at once
            with self._lock:
                cached = self._instances.get(key)
            if cached is not None:
                return cached
            found = self._lookup_instance(project, region, instance)
            with self._lock:
                self._instances[key] = found
            return found

    def _lookup_instance(self, project: str, region: str, instance: str) -> InstanceEndpoints:
        name = "/".join(
            (
                "projects",
                quote(project, safe=""),
                "locations",
                quote(region, safe=""),
                "instances",
                quote(instance, safe=""),
            )
        )
        what = f"datafusion instances.get {instance}"
        body = http.send_json(
            self.session, "GET", f"{self.endpoint}/v1/{name}", what=what, timeout=self.timeout
        )
        state = str(body.get("state") or "")
        if state in _INSTANCE_GONE:
            raise BackendRejected(f"{what}: instance is {state}", reason=state)
        if state in _INSTANCE_BUSY:
            raise BackendUnavailable(f"{what}: instance is {state}, try again later", retry_after=60)
        api = body.get("apiEndpoint")
        if not isinstance(api, str) or not api:
            raise BackendUnavailable(f"{what}: the instance has no apiEndpoint yet (state {state or '?'})")
        ui = body.get("serviceEndpoint")
        return InstanceEndpoints(api=api.rstrip("/"), ui=ui.rstrip("/") if isinstance(ui, str) else "")

    def _endpoints(self, pipeline: Any) -> InstanceEndpoints:
        options = pipeline.options
        if options.get("api_endpoint"):
            return InstanceEndpoints(api=str(options["api_endpoint"]).rstrip("/"))
        return self.instance_endpoints(pipeline.project, pipeline.region, str(options["instance"]))

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _ctx(request: LaunchRequest) -> dict[str, Any]:
        return {"pipeline": request.pipeline.name, "run_key": request.run_key}

    @staticmethod
    def _program_url(api: str, namespace: str, app: str, program: Program) -> str:
        return (
            f"{api}/v3/namespaces/{quote(namespace, safe='')}/apps/{quote(app, safe='')}"
            f"/{program.category}/{program.program_id}"
        )

    def _run_url(self, ref: JobRef) -> str:
        extra = ref.extra
        program = _PROGRAMS.get(str(extra.get("program_type")), BATCH_PROGRAM)
        base = self._program_url(
            str(extra["api_endpoint"]), str(extra["namespace"]), str(extra["app"]), program
        )
        return f"{base}/runs/{quote(ref.job_id, safe='')}"

    def _ref(
        self,
        run_id: str,
        request: LaunchRequest,
        endpoints: InstanceEndpoints,
        program: Program,
        launched_at: float,
    ) -> JobRef:
        p = request.pipeline
        namespace = str(p.options.get("namespace") or DEFAULT_NAMESPACE)
        app = str(p.options["app"])
        url = ""
        if endpoints.ui:
            url = f"{endpoints.ui}/pipelines/ns/{quote(namespace, safe='')}/view/{quote(app, safe='')}"
        return JobRef(
            backend=self.name,
            job_id=run_id,
            job_name=request.job_name,
            project=p.project,
            region=p.region,
            url=url,
            extra={
                "namespace": namespace,
                "app": app,
                "program_type": program.program_type,
                "program_id": program.program_id,
                "api_endpoint": endpoints.api,
                "launched_at": launched_at,
            },
        )

    # -- the backend contract -------------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> JobRef:
        """Start one run with the batch start call; the run key travels as a runtime argument."""
        p = request.pipeline
        endpoints = self._endpoints(p)
        program = program_for(p.mode)
        namespace = str(p.options.get("namespace") or DEFAULT_NAMESPACE)
        app = str(p.options["app"])
        args = {str(k): str(v) for k, v in request.parameters.items()}
        args[RUN_KEY_ARG] = request.run_key
        body = [
            {
                "appId": app,
                "programType": program.program_type,
                "programId": program.program_id,
                "runtimeargs": args,
            }
        ]
        what = f"cdap start {namespace}/{app}"
        launched_at = self.clock()
        answer = http.send_json(
            self.session,
            "POST",
            f"{endpoints.api}/v3/namespaces/{quote(namespace, safe='')}/start",
            json=body,
            what=what,
            timeout=self.timeout,
            ctx=self._ctx(request),
        )
        if not isinstance(answer, list) or len(answer) != 1 or not isinstance(answer[0], Mapping):
            # The start may have happened: retryable, so the launch service looks (find) before relaunching.
            raise BackendUnavailable(f"{what}: unexpected answer (not one result item)", **self._ctx(request))
        item = answer[0]
        code = item.get("statusCode")
        run_id = item.get("runId")
        if code == 200 and isinstance(run_id, str) and run_id:
            return self._ref(run_id, request, endpoints, program, launched_at)
        self._raise_for_item(request, what, code, str(item.get("error") or ""))
        raise BackendUnavailable(f"{what}: item statusCode 200 without a runId", **self._ctx(request))

    def _raise_for_item(self, request: LaunchRequest, what: str, code: Any, error: str) -> None:
        """Raise the project error for a failed start item (the HTTP status itself was 200)."""
        ctx = self._ctx(request)
        text = f"{what}: item statusCode {code}: {error or 'no error text'}"
        if not isinstance(code, int) or isinstance(code, bool):
            raise BackendUnavailable(f"{what}: item has no statusCode", **ctx)
        if code == 200:
            return
        if code in http.RETRYABLE_STATUS or code >= 500:
            raise BackendUnavailable(text, status=code, **ctx)
        if code == 404:
            raise NotFound(text, **ctx)
        if code == 409:
            # The program is already running and takes no concurrent run: ours, or someone else's?
            if self.find(request) is not None:
                raise AlreadyExists(text, status=code, reason="ALREADY_EXISTS", **ctx)
            raise BackendRejected(text, status=code, reason="CONFLICT", **ctx)
        raise BackendRejected(text, status=code, **ctx)

    def find(self, request: LaunchRequest, exclude: frozenset[str] = frozenset()) -> JobRef | None:
        """The newest run of this pipeline started with this run key, in any state; None if none."""
        p = request.pipeline
        endpoints = self._endpoints(p)
        program = program_for(p.mode)
        namespace = str(p.options.get("namespace") or DEFAULT_NAMESPACE)
        app = str(p.options["app"])
        params: dict[str, Any] = {"limit": FIND_LIMIT}
        if request.requested_at is not None:
            params["start"] = max(0, int(request.requested_at.timestamp()) - FIND_SKEW_SECONDS)
        records = http.send_json(
            self.session,
            "GET",
            f"{self._program_url(endpoints.api, namespace, app, program)}/runs",
            params=params,
            what=f"cdap runs.list {namespace}/{app}",
            timeout=self.timeout,
            ctx=self._ctx(request),
        )
        if not isinstance(records, list):
            raise BackendUnavailable(f"cdap runs.list {namespace}/{app}: answer is not a list")
        best: Mapping[str, Any] | None = None
        for record in records:
            if not isinstance(record, Mapping) or not record.get("runid"):
                continue
            if runtime_args(record).get(RUN_KEY_ARG) != request.run_key:
                continue
            if best is None or (record.get("starting") or 0) > (best.get("starting") or 0):
                best = record
        if best is None:
            return None
        launched_at = float(best.get("starting") or self.clock())
        return self._ref(str(best["runid"]), request, endpoints, program, launched_at)

    def status(self, ref: JobRef) -> JobStatus:
        try:
            record = http.send_json(
                self.session, "GET", self._run_url(ref), what="cdap runs.get", timeout=self.timeout
            )
        except NotFound:
            launched_at = ref.extra.get("launched_at")
            young = (
                isinstance(launched_at, int | float)
                and self.clock() - float(launched_at) < self.not_visible_grace_seconds
            )
            if not young:
                raise
            # CDAP records runs asynchronously: a just-started run is not visible yet.
            return JobStatus(state=RunState.PENDING, raw_state="NOT_YET_VISIBLE")
        if not isinstance(record, Mapping):
            raise BackendUnavailable(f"cdap runs.get {ref.job_id}: answer is not a run record")
        raw = str(record.get("status") or "UNKNOWN")
        state = normalize_state(raw)
        reason = None
        if raw == "FAILED":
            reason = self.failure_reason(ref) or "CDAP run FAILED"
        elif raw == "REJECTED":
            reason = "CDAP rejected the run (REJECTED)"
        times = [record.get(k) for k in ("starting", "start", "suspend", "resume", "stopping", "end")]
        latest = max((t for t in times if isinstance(t, int | float) and not isinstance(t, bool)), default=0)
        return JobStatus(
            state=state,
            raw_state=raw,
            reason=reason,
            start_time=_epoch(record.get("start")) or _epoch(record.get("starting")),
            end_time=_epoch(record.get("end")) if state.terminal else None,
            state_time=_epoch(latest),
        )

    def failure_reason(self, ref: JobRef, limit: int = 5) -> str | None:
        """The error classification of a FAILED run (CDAP 6.11+), joined; None when unavailable."""
        try:
            body = http.send_json(
                self.session,
                "POST",
                f"{self._run_url(ref)}/classify",
                what="cdap runs.classify",
                timeout=self.timeout,
            )
        except Exception:  # best effort: older CDAP has no classify endpoint, and the state is known
            return None
        if not isinstance(body, list):
            return None
        texts = []
        for entry in body:
            if not isinstance(entry, Mapping):
                continue
            text = str(entry.get("errorMessage") or entry.get("errorReason") or "")
            stage = entry.get("stageName")
            if text:
                texts.append(f"{stage}: {text}" if stage else text)
        return "\n".join(texts[:limit]) or None

    def cancel(self, ref: JobRef, *, drain: bool = False) -> None:
        """Stop the run. CDAP has no drain: a drain request stops the run too."""
        if drain:
            logs.warning(
                "Data Fusion cannot drain a run: stopping it instead", job_id=ref.job_id, backend=self.name
            )
        http.send(
            self.session, "POST", f"{self._run_url(ref)}/stop", what="cdap runs.stop", timeout=self.timeout
        )

    # -- pipelines kept as code (handlers.backends.contract.Syncable) -------------------------------
    def _app_url(self, api: str, namespace: str, app: str) -> str:
        return f"{api}/v3/namespaces/{quote(namespace, safe='')}/apps/{quote(app, safe='')}"

    def plan_sync(self, pipeline: PipelineTarget, base_dir: str) -> SyncStep | None:
        """The sync of a pipeline with a ``definition``: ``GET .../apps/{app}`` (404: create), then
        the repo's artifact and config against the deployed ones (equal: unchanged, else update).
        ``None`` for a pipeline without a definition. The step's ``payload`` holds the CDAP API base,
        namespace, app and the ``AppRequest`` body (the exported JSON as it is in the repo)."""
        path = definition_path(pipeline, base_dir)
        if path is None:
            return None
        doc = load_definition(path)
        if ARTIFACT_MODES[doc["artifact"]["name"]] != pipeline.mode:
            raise ConfigError(
                [
                    f"pipeline '{pipeline.name}': mode {pipeline.mode} but {path.name} is {doc['artifact']['name']}"
                ],
                source=str(path),
            )
        namespace = str(pipeline.options.get("namespace") or DEFAULT_NAMESPACE)
        app = str(pipeline.options["app"])
        api = self._endpoints(pipeline).api
        payload = {"api_endpoint": api, "namespace": namespace, "app": app, "request": doc}
        step: dict[str, Any] = {
            "pipeline": pipeline.name,
            "backend": self.name,
            "target": f"{namespace}/{app}",
            "payload": payload,
        }
        what = f"cdap apps.get {namespace}/{app}"
        try:
            detail = retry.call(
                lambda: http.send_json(
                    self.session, "GET", self._app_url(api, namespace, app), what=what, timeout=self.timeout
                ),
                budget_seconds=SYNC_BUDGET_SECONDS,
                what=what,
            )
        except NotFound:
            return SyncStep(change=SyncChange.CREATE, summary=f"create from {path.name}", **step)
        if not isinstance(detail, Mapping):
            raise BackendUnavailable(f"{what}: answer is not an ApplicationDetail")
        found = str(detail.get("appVersion") or "") or None
        differences = []
        live_artifact = detail.get("artifact")
        live: Mapping[str, Any] = live_artifact if isinstance(live_artifact, Mapping) else {}
        mine = doc["artifact"]
        for key in ("name", "version", "scope"):
            ours, theirs = str(mine.get(key) or "").upper(), str(live.get(key) or "").upper()
            if key == "scope" and not ours:
                continue
            if ours != theirs:
                differences.append(f"artifact {key} {live.get(key)} -> {mine.get(key)}")
        text = detail.get("configuration")
        try:
            deployed = json.loads(text) if isinstance(text, str) and text else {}
        except ValueError:
            deployed = {}
        differences += config_differences(doc["config"], deployed if isinstance(deployed, Mapping) else {})
        if not differences:
            return SyncStep(change=SyncChange.UNCHANGED, summary="unchanged", found=found, **step)
        return SyncStep(change=SyncChange.UPDATE, summary="; ".join(differences), found=found, **step)

    def apply_sync(self, step: SyncStep) -> str:
        """Deploy the step's definition with ``PUT .../apps/{app}`` (CDAP answers once deployed: no
        operation to wait for) and return the new app version, read back; an unchanged step sends
        nothing and returns the version found."""
        payload = step.payload
        namespace, app = str(payload["namespace"]), str(payload["app"])
        if step.change == SyncChange.UNCHANGED:
            return step.found or f"{namespace}/{app}"
        url = self._app_url(str(payload["api_endpoint"]), namespace, app)
        what = f"cdap apps.get {namespace}/{app}"
        deploy = f"cdap apps.deploy {namespace}/{app}"
        retry.call(
            lambda: http.send(
                self.session, "PUT", url, json=payload["request"], what=deploy, timeout=self.timeout
            ),
            budget_seconds=SYNC_BUDGET_SECONDS,
            what=deploy,
        )
        detail = retry.call(
            lambda: http.send_json(self.session, "GET", url, what=what, timeout=self.timeout),
            budget_seconds=SYNC_BUDGET_SECONDS,
            what=what,
        )
        version = detail.get("appVersion") if isinstance(detail, Mapping) else None
        return str(version or step.found or f"{namespace}/{app}")
