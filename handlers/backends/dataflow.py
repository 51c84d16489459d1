"""Google Cloud Dataflow: classic templates and Flex Templates over REST v1b3.

Regional endpoints only (the non-regional ones silently run in us-central1)::

    POST {api}/v1b3/projects/P/locations/L/templates:launch?gcsPath=gs://...   classic launch
    GET  {api}/v1b3/projects/P/locations/L/templates:get?gcsPath=...&view=METADATA_ONLY
    POST {api}/v1b3/projects/P/locations/L/flexTemplates:launch                 flex launch
    GET  {api}/v1b3/projects/P/locations/L/jobs?filter=ALL&name=NAME            find by name
    GET  {api}/v1b3/projects/P/locations/L/jobs/ID                              status
    GET  {api}/v1b3/projects/P/locations/L/jobs/ID/messages?minimumImportance=JOB_MESSAGE_ERROR
    PUT  {api}/v1b3/projects/P/locations/L/jobs/ID  {"requestedState": "JOB_STATE_CANCELLED"|"..._DRAINED"}

Idempotency rests on the job name: one ACTIVE job per name per project and region, so a repeated
launch answers 409 ALREADY_EXISTS, which :mod:`handlers.launch.service` treats as "already launched".

``DATAFLOW_API_ENDPOINT`` overrides ``https://dataflow.googleapis.com`` (the local emulator).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote

from handlers.backends.contract import (
    BackendSpec,
    DeployContext,
    DeployFlag,
    DeployNeeds,
    Grant,
    JobRef,
    JobStatus,
    LaunchRequest,
    PipelineTarget,
    PushedStatus,
    RunState,
    StatusPush,
)
from handlers.core import clients, http
from handlers.core.errors import EventError, ParameterError
from handlers.core.times import parse_time

DEFAULT_ENDPOINT = "https://dataflow.googleapis.com"
ENDPOINT_ENV = "DATAFLOW_API_ENDPOINT"
STATUS_CHANGED = "google.cloud.dataflow.job.v1beta3.statusChanged"  # Eventarc's Job status event
OPTION_KEYS = ("template", "environment", "validate_parameters", "launch_options")

# RuntimeEnvironment (classic) and FlexTemplateRuntimeEnvironment fields, from the v1b3 discovery document.
CLASSIC_ENVIRONMENT = frozenset(
    {
        "additionalExperiments",
        "additionalPipelineOptions",
        "additionalUserLabels",
        "bypassTempDirValidation",
        "diskSizeGb",
        "enableStreamingEngine",
        "ipConfiguration",
        "kmsKeyName",
        "machineType",
        "maxWorkers",
        "network",
        "numWorkers",
        "serviceAccountEmail",
        "streamingMode",
        "subnetwork",
        "tempLocation",
        "workerRegion",
        "workerZone",
        "zone",
    }
)
FLEX_ENVIRONMENT = CLASSIC_ENVIRONMENT - {"bypassTempDirValidation"} | {
    "autoscalingAlgorithm",
    "dumpHeapOnOom",
    "enableLauncherVmSerialPortLogging",
    "flexrsGoal",
    "launcherMachineType",
    "saveHeapDumpsToGcsPath",
    "sdkContainerImage",
    "stagingLocation",
}
_INT_FIELDS = frozenset({"maxWorkers", "numWorkers", "diskSizeGb"})

# Job states -> normalized states. Anything not listed (STOPPED = not yet started, UNKNOWN, new
# values) is not terminal and maps to PENDING.
STATE_MAP: Mapping[str, RunState] = {
    "JOB_STATE_PENDING": RunState.PENDING,
    "JOB_STATE_QUEUED": RunState.PENDING,
    "JOB_STATE_STOPPED": RunState.PENDING,
    "JOB_STATE_RUNNING": RunState.RUNNING,
    "JOB_STATE_DRAINING": RunState.RUNNING,
    "JOB_STATE_CANCELLING": RunState.RUNNING,
    "JOB_STATE_RESOURCE_CLEANING_UP": RunState.RUNNING,
    "JOB_STATE_PAUSING": RunState.RUNNING,
    "JOB_STATE_PAUSED": RunState.RUNNING,
    "JOB_STATE_DONE": RunState.SUCCEEDED,
    "JOB_STATE_FAILED": RunState.FAILED,
    "JOB_STATE_CANCELLED": RunState.CANCELLED,
    "JOB_STATE_UPDATED": RunState.SUCCEEDED,  # replaced by a newer job: this one's work is handed over
    "JOB_STATE_DRAINED": RunState.SUCCEEDED,  # a streaming job drained on request finished cleanly
}


def normalize_state(raw: str | None) -> RunState:
    return STATE_MAP.get(raw or "", RunState.PENDING)


def check_classic_options(options: Mapping[str, Any]) -> list[str]:
    return check_options(options, flex=False)


def check_flex_options(options: Mapping[str, Any]) -> list[str]:
    return check_options(options, flex=True)


def check_options(options: Mapping[str, Any], *, flex: bool = False) -> list[str]:
    """Config problems of a Dataflow pipeline's backend-specific fields."""
    problems = []
    template = options.get("template")
    if not isinstance(template, str) or not template.startswith("gs://") or len(template) <= 5:
        problems.append("template: is required and must be a gs:// path")
    env = options.get("environment") or {}
    if not isinstance(env, Mapping):
        problems.append("environment: must be a mapping")
        env = {}
    allowed = FLEX_ENVIRONMENT if flex else CLASSIC_ENVIRONMENT
    for key, value in env.items():
        if key not in allowed:
            problems.append(f"environment.{key}: not a Dataflow runtime environment field")
        elif key in _INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"environment.{key}: must be an integer")
    if flex and "validate_parameters" in options:
        problems.append("validate_parameters: only classic templates publish parameter metadata")
    if "validate_parameters" in options and not isinstance(options["validate_parameters"], bool):
        problems.append("validate_parameters: must be true or false")
    if not flex and "launch_options" in options:
        problems.append("launch_options: only Flex Templates take launch options")
    if options.get("launch_options") is not None and not isinstance(options["launch_options"], Mapping):
        problems.append("launch_options: must be a mapping of strings")
    return problems


# ---------------------------------------------------------------------------------------------
# What Dataflow declares (handlers.backends.contract)
# ---------------------------------------------------------------------------------------------
def parse_status_changed(attributes: Mapping[str, Any], data: Any) -> PushedStatus | None:
    """Eventarc's ``statusChanged``: ``{"payload": Job}``; the run is named by the labels the launch
    wrote on the job (``additionalUserLabels``)."""
    job = data.get("payload") if isinstance(data, Mapping) else None
    if not isinstance(job, Mapping):
        raise EventError("statusChanged event without a Job payload", field="data.payload")
    labels = job.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    mine = {str(k): v for k, v in labels.items() if isinstance(v, str)}
    job_id = job.get("id")
    state = job.get("currentState")
    return PushedStatus(
        labels=mine,
        job_id=job_id if isinstance(job_id, str) else None,
        raw_state=state if isinstance(state, str) else None,
    )


def _worker_accounts(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[tuple[str, str]]:
    """(project, email) of every worker service account the runtime must act as."""
    out: set[tuple[str, str]] = set()
    for p in pipelines:
        env = p.options.get("environment") or {}
        email = env.get("serviceAccountEmail") if isinstance(env, Mapping) else None
        email = email or ctx.flags.get("dataflow_worker_sa") or ctx.default_compute_account
        out.add((p.project, str(email)))
    return sorted(out)


def _template_bucket(template: Any) -> str | None:
    if isinstance(template, str) and template.startswith("gs://"):
        return template[5:].split("/", 1)[0] or None
    return None


def deploy_grants(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[Grant]:
    grants = [
        Grant(
            "roles/dataflow.developer",
            "project",
            project,
            "launch, read and cancel Dataflow jobs (no finer resource exists)",
        )
        for project in sorted({p.project for p in pipelines})
    ]
    grants += [
        Grant(
            "roles/iam.serviceAccountUser",
            "service-account",
            email,
            "run Dataflow jobs as this worker account",
            project=project,
        )
        for project, email in _worker_accounts(pipelines, ctx)
    ]
    buckets = {b for p in pipelines if (b := _template_bucket(p.options.get("template")))}
    grants += [
        Grant("roles/storage.objectViewer", "bucket", bucket, "read the Dataflow template files it launches")
        for bucket in sorted(buckets)
    ]
    return grants


def deploy_problems(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[str]:
    problems = []
    for p in pipelines:
        if p.project == ctx.project:
            continue
        env = p.options.get("environment") or {}
        if not (isinstance(env, Mapping) and env.get("serviceAccountEmail")) and not ctx.flags.get(
            "dataflow_worker_sa"
        ):
            problems.append(
                f"pipeline '{p.name}' runs in project {p.project}: name its worker account "
                "(environment.serviceAccountEmail or --dataflow-worker-sa), the default one is that project's"
            )
    return problems


def deploy_warnings(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[str]:
    return [
        f"pipeline '{p.name}' runs in project {p.project}: Eventarc cannot deliver its job status "
        "changes to this project, so the sweep (check_runs) completes its runs"
        for p in pipelines
        if p.project != ctx.project
    ]


_DEPLOY = DeployNeeds(
    apis=("dataflow.googleapis.com",),
    grants=deploy_grants,
    problems=deploy_problems,
    warnings=deploy_warnings,
    flags=(
        DeployFlag(
            "--dataflow-worker-sa",
            "dataflow_worker_sa",
            "worker account of Dataflow pipelines that name none",
            metavar="EMAIL",
        ),
    ),
)
CLASSIC = BackendSpec(
    name="dataflow",
    title="Dataflow classic template",
    implementation="handlers.backends.dataflow:ClassicTemplate",
    option_keys=OPTION_KEYS,
    check_options=check_classic_options,
    endpoint_envs=(ENDPOINT_ENV,),
    push=StatusPush(parse=parse_status_changed, event_type=STATUS_CHANGED),
    deploy=_DEPLOY,
)
FLEX = replace(
    CLASSIC,
    name="dataflow-flex",
    title="Dataflow Flex Template",
    implementation="handlers.backends.dataflow:FlexTemplate",
    check_options=check_flex_options,
)
SPECS = (CLASSIC, FLEX)


class _Dataflow:
    """What classic and flex templates share: jobs API, state mapping, cancel."""

    spec: ClassVar[BackendSpec]
    name = "dataflow"
    flex = False

    def __init__(self, session: Any = None, endpoint: str | None = None, timeout: Any = None):
        self.find_semantics = self.spec.find
        self._session = session
        self.endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        self.timeout = timeout or http.default_timeout()
        self._metadata: dict[tuple[str, str, str], Any] = {}
        self._metadata_lock = threading.Lock()

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = clients.google_session()
        return self._session

    def _base(self, project: str, region: str) -> str:
        return f"{self.endpoint}/v1b3/projects/{quote(project, safe='')}/locations/{quote(region, safe='')}"

    def _environment(self, request: LaunchRequest) -> dict[str, Any]:
        env = dict(request.pipeline.options.get("environment") or {})
        labels = {**(env.get("additionalUserLabels") or {}), **request.pipeline.labels, **request.labels}
        env["additionalUserLabels"] = labels
        return env

    def _ref(self, job: Mapping[str, Any], request_or_ref: Any) -> JobRef:
        project = job.get("projectId") or request_or_ref.pipeline.project
        region = job.get("location") or request_or_ref.pipeline.region
        return JobRef(
            backend=self.name,
            job_id=str(job["id"]),
            job_name=str(job.get("name", "")),
            project=project,
            region=region,
            url=f"https://console.cloud.google.com/dataflow/jobs/{region}/{job['id']}?project={project}",
        )

    def _ctx(self, request: LaunchRequest) -> dict[str, Any]:
        return {"pipeline": request.pipeline.name, "run_key": request.run_key}

    def find(self, request: LaunchRequest, exclude: frozenset[str] = frozenset()) -> JobRef | None:
        """The newest job with this run's name, in any state (a short job may be done already)."""
        p = request.pipeline
        url = f"{self._base(p.project, p.region)}/jobs"
        params: dict[str, Any] = {"filter": "ALL", "name": request.job_name, "pageSize": 50}
        best: Mapping[str, Any] | None = None
        for _ in range(20):  # pages
            body = http.send_json(
                self.session,
                "GET",
                url,
                params=params,
                what="dataflow jobs.list",
                timeout=self.timeout,
                ctx=self._ctx(request),
            )
            for job in body.get("jobs", []):
                if job.get("name") != request.job_name:
                    continue
                if best is None or str(job.get("createTime", "")) > str(best.get("createTime", "")):
                    best = job
            token = body.get("nextPageToken")
            if not token:
                break
            params["pageToken"] = token
        return self._ref(best, request) if best else None

    def status(self, ref: JobRef) -> JobStatus:
        url = f"{self._base(ref.project, ref.region)}/jobs/{quote(ref.job_id, safe='')}"
        job = http.send_json(
            self.session,
            "GET",
            url,
            params={"view": "JOB_VIEW_SUMMARY"},
            what="dataflow jobs.get",
            timeout=self.timeout,
        )
        raw = str(job.get("currentState") or "JOB_STATE_UNKNOWN")
        state = normalize_state(raw)
        reason = self.failure_reason(ref) if state is RunState.FAILED else None
        return JobStatus(
            state=state,
            raw_state=raw,
            reason=reason,
            start_time=parse_time(job.get("startTime") or job.get("createTime")),
            end_time=parse_time(job.get("currentStateTime")) if state.terminal else None,
            state_time=parse_time(job.get("currentStateTime")),
        )

    def failure_reason(self, ref: JobRef, limit: int = 5) -> str | None:
        """The job's ERROR-importance messages, newest last, joined."""
        url = f"{self._base(ref.project, ref.region)}/jobs/{quote(ref.job_id, safe='')}/messages"
        try:
            body = http.send_json(
                self.session,
                "GET",
                url,
                params={"minimumImportance": "JOB_MESSAGE_ERROR"},
                what="dataflow jobs.messages.list",
                timeout=self.timeout,
            )
        except Exception:  # the reason is best effort: the state itself is known
            return None
        texts = [
            m.get("messageText", "")
            for m in body.get("jobMessages", [])
            if m.get("messageImportance") == "JOB_MESSAGE_ERROR"
        ]
        return "\n".join(t for t in texts[-limit:] if t) or None

    def cancel(self, ref: JobRef, *, drain: bool = False) -> None:
        url = f"{self._base(ref.project, ref.region)}/jobs/{quote(ref.job_id, safe='')}"
        state = "JOB_STATE_DRAINED" if drain else "JOB_STATE_CANCELLED"
        http.send_json(
            self.session,
            "PUT",
            url,
            json={"requestedState": state},
            what="dataflow jobs.update",
            timeout=self.timeout,
        )

    def template_parameters(self, project: str, region: str, gcs_path: str) -> list[Mapping[str, Any]]:
        """The template's declared parameters (``templates:get``), cached per process."""
        key = (project, region, gcs_path)
        with self._metadata_lock:
            if key in self._metadata:
                return list(self._metadata[key])
        body = http.send_json(
            self.session,
            "GET",
            f"{self._base(project, region)}/templates:get",
            params={"gcsPath": gcs_path, "view": "METADATA_ONLY"},
            what="dataflow templates.get",
            timeout=self.timeout,
        )
        params = list((body.get("metadata") or {}).get("parameters") or [])
        with self._metadata_lock:
            self._metadata[key] = params
        return params


def check_against_metadata(
    parameters: Mapping[str, str], declared: list[Mapping[str, Any]], pipeline: str
) -> None:
    """Raise one :class:`ParameterError` naming every missing, unknown or malformed parameter."""
    import re

    problems = []
    names = {d.get("name") for d in declared}
    for d in declared:
        name = str(d.get("name"))
        if name not in parameters:
            if not d.get("isOptional"):
                problems.append(f"{name}: required by the template but not set")
            continue
        for rx in d.get("regexes") or []:
            if not re.fullmatch(rx, parameters[name], flags=re.DOTALL):
                problems.append(f"{name}: value does not match the template's pattern {rx}")
    for name in parameters:
        if name not in names:
            problems.append(f"{name}: not a parameter of this template")
    if problems:
        raise ParameterError(
            "; ".join(problems), pipeline=pipeline, field=",".join(p.split(":", 1)[0] for p in problems)
        )


class ClassicTemplate(_Dataflow):
    """``templates:launch`` of a classic template stored at ``gs://...``."""

    spec = CLASSIC
    name = CLASSIC.name

    def launch(self, request: LaunchRequest) -> JobRef:
        p = request.pipeline
        gcs_path = p.options["template"]
        if p.options.get("validate_parameters"):
            check_against_metadata(
                request.parameters, self.template_parameters(p.project, p.region, gcs_path), p.name
            )
        body = {
            "jobName": request.job_name,
            "parameters": dict(request.parameters),
            "environment": self._environment(request),
        }
        answer = http.send_json(
            self.session,
            "POST",
            f"{self._base(p.project, p.region)}/templates:launch",
            params={"gcsPath": gcs_path},
            json=body,
            what="dataflow templates.launch",
            timeout=self.timeout,
            ctx=self._ctx(request),
        )
        return self._ref(answer["job"], request)


class FlexTemplate(_Dataflow):
    """``flexTemplates:launch`` of a Flex Template spec file at ``gs://...``."""

    spec = FLEX
    name = FLEX.name
    flex = True

    def launch(self, request: LaunchRequest) -> JobRef:
        p = request.pipeline
        launch_parameter: dict[str, Any] = {
            "jobName": request.job_name,
            "containerSpecGcsPath": p.options["template"],
            "parameters": dict(request.parameters),
            "environment": self._environment(request),
        }
        if p.options.get("launch_options"):
            launch_parameter["launchOptions"] = {k: str(v) for k, v in p.options["launch_options"].items()}
        answer = http.send_json(
            self.session,
            "POST",
            f"{self._base(p.project, p.region)}/flexTemplates:launch",
            json={"launchParameter": launch_parameter},
            what="dataflow flexTemplates.launch",
            timeout=self.timeout,
            ctx=self._ctx(request),
        )
        return self._ref(answer["job"], request)
