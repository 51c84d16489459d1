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

``DATAFUSION_API_ENDPOINT`` overrides ``https://datafusion.googleapis.com`` (the local emulator).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    RunState,
)
from handlers.core import clients, http, logs
from handlers.core.clients import is_loopback
from handlers.core.errors import AlreadyExists, BackendRejected, BackendUnavailable, NotFound
from handlers.core.times import from_epoch

DEFAULT_ENDPOINT = "https://datafusion.googleapis.com"
ENDPOINT_ENV = "DATAFUSION_API_ENDPOINT"
OPTION_KEYS = ("instance", "namespace", "app", "api_endpoint")
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


def deploy_warnings(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[str]:
    return [
        f"pipeline '{p.name}' reaches Data Fusion through api_endpoint: grant the runtime account "
        "access to that instance yourself (no instance name to bind roles on)"
        for p in pipelines
        if not p.options.get("instance")
    ]


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
        ),
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
