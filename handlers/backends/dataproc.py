"""Dataproc Serverless for Apache Spark: batch workloads over REST v1.

Paths and fields follow the ``dataproc v1`` discovery document bundled with google-api-python-client,
revision 20261023 (``googleapiclient.discovery_cache.get_static_doc("dataproc", "v1")``)::

    POST {api}/v1/projects/P/locations/L/batches?batchId=ID&requestId=R   create -> Operation
    GET  {api}/v1/projects/P/locations/L/batches/ID                       Batch (404 when absent)
    POST {api}/v1/projects/P/regions/L/operations/OP:cancel               cancel the batch's operation

Idempotency rests on the client-chosen ``batchId``: a batch id is unique in its project and location
for as long as the batch exists, whatever its state, so a second create answers 409 ALREADY_EXISTS
(:class:`AlreadyExists`) and ``find`` is one exact ``batches.get``. The id is derived from the run's
job name (:func:`batch_id`), keeping its run hash. Each create also sends a fresh ``requestId``, so a
transport-level resend of that one request answers its operation; it is deliberately not derived
from the run: a second launch of a run must answer 409, which the launch service records as
"already launched" and follows with ``find``, rather than pass for a first launch.

Run parameters reach the batch as driver arguments ``--NAME=VALUE`` appended, in name order, to the
configured ``args`` (PySpark, Spark, SparkR), or as ``queryVariables`` of a Spark SQL batch (its
``SET NAME="VALUE"``). Run labels become ``Batch.labels``.

Batch states: PENDING -> PENDING; RUNNING, CANCELLING -> RUNNING; SUCCEEDED; FAILED (reason:
``stateMessage``); CANCELLED; STATE_UNSPECIFIED and anything new -> PENDING (not terminal).
Cancel goes through the batch's creating operation (``Batch.operation``); cancelling a batch that is
already finished answers FAILED_PRECONDITION, which counts as done.

``DATAPROC_API_ENDPOINT`` overrides ``https://dataproc.googleapis.com`` (the local emulator).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from handlers.backends.contract import (
    BackendSpec,
    DeployContext,
    DeployNeeds,
    FindSemantics,
    Grant,
    JobRef,
    JobStatus,
    LaunchRequest,
    PipelineTarget,
    RunState,
)
from handlers.core import clients, http
from handlers.core.errors import BackendRejected, BackendUnavailable, NotFound
from handlers.core.times import parse_time

DISCOVERY_REVISION = "20261023"
DEFAULT_ENDPOINT = "https://dataproc.googleapis.com"
ENDPOINT_ENV = "DATAPROC_API_ENDPOINT"

# One of these says what the batch runs; runtime and environment are optional.
WORKLOADS = ("pyspark", "spark", "spark_r", "spark_sql")
OPTION_KEYS = (*WORKLOADS, "runtime", "environment")

# Each workload's fields: config key -> (Batch JSON field, kind). Kinds: "uri" (one gs:// URI),
# "uris" (a list of them), "args" (a list of strings), "vars" (a mapping of strings), "text".
_FIELDS: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "pyspark": {
        "main": ("mainPythonFileUri", "uri"),
        "args": ("args", "args"),
        "python_files": ("pythonFileUris", "uris"),
        "jar_files": ("jarFileUris", "uris"),
        "files": ("fileUris", "uris"),
        "archives": ("archiveUris", "uris"),
    },
    "spark": {
        "main_class": ("mainClass", "text"),
        "main_jar": ("mainJarFileUri", "uri"),
        "args": ("args", "args"),
        "jar_files": ("jarFileUris", "uris"),
        "files": ("fileUris", "uris"),
        "archives": ("archiveUris", "uris"),
    },
    "spark_r": {
        "main": ("mainRFileUri", "uri"),
        "args": ("args", "args"),
        "files": ("fileUris", "uris"),
        "archives": ("archiveUris", "uris"),
    },
    "spark_sql": {
        "query_file": ("queryFileUri", "uri"),
        "jar_files": ("jarFileUris", "uris"),
        "variables": ("queryVariables", "vars"),
    },
}
_BATCH_FIELD = {
    "pyspark": "pysparkBatch",
    "spark": "sparkBatch",
    "spark_r": "sparkRBatch",
    "spark_sql": "sparkSqlBatch",
}
_MAIN_KEYS = {
    "pyspark": ("main",),
    "spark": ("main_class", "main_jar"),
    "spark_r": ("main",),
    "spark_sql": ("query_file",),
}
_MAIN_SUFFIX = {"pyspark": (".py",), "spark_r": (".r", ".R")}

RUNTIME_FIELDS = {"version": "version", "properties": "properties", "container_image": "containerImage"}
# environment key -> (ExecutionConfig field, kind)
ENVIRONMENT_FIELDS: Mapping[str, tuple[str, str]] = {
    "service_account": ("serviceAccount", "text"),
    "network": ("networkUri", "text"),
    "subnetwork": ("subnetworkUri", "text"),
    "network_tags": ("networkTags", "args"),
    "kms_key": ("kmsKey", "text"),
    "ttl": ("ttl", "duration"),
    "staging_bucket": ("stagingBucket", "bucket"),
}
# ExecutionConfig.ttl: at least 10 minutes, at most 14 days (discovery document).
TTL_MIN_SECONDS, TTL_MAX_SECONDS = 600, 14 * 24 * 3600
_DURATION_RE = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")

# batchId: "4-63 characters. Valid characters are /[a-z][0-9]-/" (discovery document).
BATCH_ID_MAX = 63

# Batch states -> normalized states. Anything not listed (STATE_UNSPECIFIED, new values) is not
# terminal and maps to PENDING.
STATE_MAP: Mapping[str, RunState] = {
    "PENDING": RunState.PENDING,
    "RUNNING": RunState.RUNNING,
    "CANCELLING": RunState.RUNNING,
    "SUCCEEDED": RunState.SUCCEEDED,
    "FAILED": RunState.FAILED,
    "CANCELLED": RunState.CANCELLED,
}


def normalize_state(raw: str | None) -> RunState:
    return STATE_MAP.get(raw or "", RunState.PENDING)


def batch_id(job_name: str) -> str:
    """The batch id of a run: its job name (``<slug>-<20 hex run hash>``), cut to 63 characters by
    shortening the slug, never the hash, so the id stays unique per run and ``find`` stays exact."""
    name = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")
    if len(name) <= BATCH_ID_MAX:
        return name.ljust(4, "0")
    head, sep, tail = name.rpartition("-")
    if not sep or len(tail) >= BATCH_ID_MAX - 1:
        return name[-BATCH_ID_MAX:].lstrip("-")
    return f"{head[: BATCH_ID_MAX - len(tail) - 1].rstrip('-')}-{tail}"


def request_id() -> str:
    """A create's ``requestId``: new for every create call (32 hex digits; the API allows 40)."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------------------------
# Config checks
# ---------------------------------------------------------------------------------------------
def _is_gcs_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("gs://") and len(value) > 5 and "/" in value[5:]


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_string_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def duration_seconds(value: Any) -> int | None:
    """``"90m"``, ``"2h"``, ``"1d"``, ``"3600s"`` (or a whole number of seconds) as seconds; None if not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return None


def _check_kind(where: str, kind: str, value: Any) -> str | None:
    if kind == "uri" and not _is_gcs_uri(value):
        return f"{where}: must be a gs://bucket/path URI"
    if kind == "uris" and not (_is_strings(value) and all(_is_gcs_uri(v) for v in value)):
        return f"{where}: must be a list of gs://bucket/path URIs"
    if kind == "args" and not _is_strings(value):
        return f"{where}: must be a list of strings"
    if kind == "vars" and not _is_string_map(value):
        return f"{where}: must be a mapping of strings"
    if kind == "text" and not (isinstance(value, str) and value):
        return f"{where}: must be a non-empty string"
    if kind == "bucket" and not (isinstance(value, str) and _BUCKET_RE.fullmatch(value)):
        return f"{where}: must be a bucket name (no gs://)"
    if kind == "duration":
        seconds = duration_seconds(value)
        if seconds is None:
            return f"{where}: must be a duration like 90m, 4h or 1d"
        if not TTL_MIN_SECONDS <= seconds <= TTL_MAX_SECONDS:
            return f"{where}: must be between 10m and 14d"
    return None


def _check_workload(kind: str, body: Any, problems: list[str]) -> None:
    if not isinstance(body, Mapping):
        problems.append(f"{kind}: must be a mapping")
        return
    fields = _FIELDS[kind]
    for key in sorted(set(body) - set(fields)):
        problems.append(f"{kind}.{key}: unknown field (known: {', '.join(fields)})")
    mains = [k for k in _MAIN_KEYS[kind] if body.get(k) is not None]
    if len(mains) != 1:
        wanted = " or ".join(_MAIN_KEYS[kind])
        problems.append(
            f"{kind}: give exactly one of {wanted}" if len(mains) > 1 else f"{kind}.{wanted}: is required"
        )
    for key, (_, field_kind) in fields.items():
        if key in body and (problem := _check_kind(f"{kind}.{key}", field_kind, body[key])):
            problems.append(problem)
    main = body.get("main")
    suffixes = _MAIN_SUFFIX.get(kind)
    if suffixes and _is_gcs_uri(main) and not str(main).endswith(suffixes):
        problems.append(f"{kind}.main: must be a {' or '.join(suffixes)} file")


def check_options(options: Mapping[str, Any]) -> list[str]:
    """Config problems of a Dataproc batch pipeline's fields, every one listed."""
    problems: list[str] = []
    workloads = [k for k in WORKLOADS if options.get(k) is not None]
    if len(workloads) != 1:
        given = ", ".join(workloads) if workloads else "none"
        problems.append(f"{' | '.join(WORKLOADS)}: give exactly one batch workload (given: {given})")
    for kind in workloads:
        _check_workload(kind, options[kind], problems)
    runtime = options.get("runtime")
    if runtime is not None:
        if not isinstance(runtime, Mapping):
            problems.append("runtime: must be a mapping")
        else:
            for key in sorted(set(runtime) - set(RUNTIME_FIELDS)):
                problems.append(f"runtime.{key}: unknown field (known: {', '.join(RUNTIME_FIELDS)})")
            for key in ("version", "container_image"):
                if key in runtime and not (isinstance(runtime[key], str) and runtime[key]):
                    problems.append(f"runtime.{key}: must be a non-empty string")
            if "properties" in runtime and not _is_string_map(runtime["properties"]):
                problems.append("runtime.properties: must be a mapping of strings (Spark properties)")
    env = options.get("environment")
    if env is not None:
        if not isinstance(env, Mapping):
            problems.append("environment: must be a mapping")
        else:
            for key in sorted(set(env) - set(ENVIRONMENT_FIELDS)):
                problems.append(f"environment.{key}: unknown field (known: {', '.join(ENVIRONMENT_FIELDS)})")
            for key, (_, kind) in ENVIRONMENT_FIELDS.items():
                if key in env and (problem := _check_kind(f"environment.{key}", kind, env[key])):
                    problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------------
# The batch body
# ---------------------------------------------------------------------------------------------
def _workload(options: Mapping[str, Any]) -> str:
    return next(k for k in WORKLOADS if options.get(k) is not None)


def parameter_args(parameters: Mapping[str, str]) -> list[str]:
    """Run parameters as driver arguments: ``--NAME=VALUE``, in name order."""
    return [f"--{name}={parameters[name]}" for name in sorted(parameters)]


def batch_body(request: LaunchRequest) -> dict[str, Any]:
    """The ``Batch`` a run creates (see the module docstring for where parameters and labels go)."""
    options = request.pipeline.options
    kind = _workload(options)
    config = options[kind]
    workload: dict[str, Any] = {}
    for key, (json_field, _) in _FIELDS[kind].items():
        if config.get(key) is not None:
            value = config[key]
            workload[json_field] = (
                dict(value)
                if isinstance(value, Mapping)
                else (list(value) if isinstance(value, list) else value)
            )
    if kind == "spark_sql":
        workload["queryVariables"] = {**workload.get("queryVariables", {}), **request.parameters}
    else:
        workload["args"] = [*workload.get("args", []), *parameter_args(request.parameters)]
    body: dict[str, Any] = {_BATCH_FIELD[kind]: workload}
    runtime = options.get("runtime") or {}
    if runtime:
        body["runtimeConfig"] = {
            RUNTIME_FIELDS[k]: dict(v) if isinstance(v, Mapping) else v for k, v in runtime.items()
        }
    env = options.get("environment") or {}
    if env:
        execution: dict[str, Any] = {}
        for key, value in env.items():
            json_field, kind_ = ENVIRONMENT_FIELDS[key]
            if kind_ == "duration":
                value = f"{duration_seconds(value)}s"
            elif isinstance(value, list):
                value = list(value)
            execution[json_field] = value
        body["environmentConfig"] = {"executionConfig": execution}
    labels = {**request.pipeline.labels, **request.labels}
    if labels:
        body["labels"] = labels
    return body


# ---------------------------------------------------------------------------------------------
# What Dataproc declares (handlers.backends.contract)
# ---------------------------------------------------------------------------------------------
def _execution_accounts(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[tuple[str, str]]:
    """(project, email) of every account the batches run as (the project's default compute
    account when a pipeline names none)."""
    out: set[tuple[str, str]] = set()
    for p in pipelines:
        env = p.options.get("environment") or {}
        email = env.get("service_account") if isinstance(env, Mapping) else None
        out.add((p.project, str(email or ctx.default_compute_account)))
    return sorted(out)


def deploy_grants(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[Grant]:
    grants = [
        Grant(
            "roles/dataproc.serverlessEditor",
            "project",
            project,
            "create, read and cancel Dataproc batches (no finer resource exists; the narrowest "
            "predefined role with batches.create and operations.cancel)",
        )
        for project in sorted({p.project for p in pipelines})
    ]
    grants += [
        Grant(
            "roles/iam.serviceAccountUser",
            "service-account",
            email,
            "run Dataproc batches as this execution account",
            project=project,
        )
        for project, email in _execution_accounts(pipelines, ctx)
    ]
    # No grant on the main files' buckets: the batch reads them as its execution account, not the
    # account that submits it (least privilege: the launcher never needs to read Spark code).
    return grants


def deploy_problems(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[str]:
    problems = []
    for p in pipelines:
        if p.project == ctx.project:
            continue
        env = p.options.get("environment") or {}
        if not (isinstance(env, Mapping) and env.get("service_account")):
            problems.append(
                f"pipeline '{p.name}' runs in project {p.project}: name its execution account "
                "(environment.service_account), the default one is that project's"
            )
    return problems


SPEC = BackendSpec(
    name="dataproc",
    title="Dataproc Serverless Spark batch",
    implementation="handlers.backends.dataproc:DataprocBatches",
    option_keys=OPTION_KEYS,
    check_options=check_options,
    endpoint_envs=(ENDPOINT_ENV,),
    # batches.get by the client-chosen id: exact, and a created batch is readable at once.
    find=FindSemantics(exact=True, settle_seconds=0.0),
    deploy=DeployNeeds(apis=("dataproc.googleapis.com",), grants=deploy_grants, problems=deploy_problems),
    job_noun="batch",
)
SPECS = (SPEC,)


class DataprocBatches:
    """Dataproc Serverless batch workloads (PySpark, Spark, SparkR, Spark SQL)."""

    spec = SPEC
    name = SPEC.name

    def __init__(self, session: Any = None, endpoint: str | None = None, timeout: Any = None) -> None:
        self.find_semantics = self.spec.find
        self._session = session
        self.endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        self.timeout = timeout or http.default_timeout()

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = clients.google_session()
        return self._session

    def _parent(self, project: str, region: str) -> str:
        return f"projects/{quote(project, safe='')}/locations/{quote(region, safe='')}"

    def _batch_url(self, project: str, region: str, batch: str) -> str:
        return f"{self.endpoint}/v1/{self._parent(project, region)}/batches/{quote(batch, safe='')}"

    @staticmethod
    def _ctx(request: LaunchRequest) -> dict[str, Any]:
        return {"pipeline": request.pipeline.name, "run_key": request.run_key}

    def _ref(self, batch: str, project: str, region: str, job_name: str, operation: str) -> JobRef:
        return JobRef(
            backend=self.name,
            job_id=batch,
            job_name=job_name,
            project=project,
            region=region,
            url=f"https://console.cloud.google.com/dataproc/batches/{region}/{batch}?project={project}",
            extra={"operation": operation} if operation else {},
        )

    # -- the backend contract -------------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> JobRef:
        """Create the run's batch under its derived id; a batch of that id already answers 409."""
        p = request.pipeline
        bid = batch_id(request.job_name)
        operation = http.send_json(
            self.session,
            "POST",
            f"{self.endpoint}/v1/{self._parent(p.project, p.region)}/batches",
            params={"batchId": bid, "requestId": request_id()},
            json=batch_body(request),
            what=f"dataproc batches.create {bid}",
            timeout=self.timeout,
            ctx=self._ctx(request),
        )
        name = operation.get("name") if isinstance(operation, Mapping) else None
        if not isinstance(name, str) or not name:
            # The batch may exist: retryable, so the launch service looks (find) before relaunching.
            raise BackendUnavailable(
                f"dataproc batches.create {bid}: answer is not an Operation", **self._ctx(request)
            )
        return self._ref(bid, p.project, p.region, request.job_name, name)

    def find(self, request: LaunchRequest, exclude: frozenset[str] = frozenset()) -> JobRef | None:
        """The run's batch, by its derived id, in any state; None when there is none."""
        p = request.pipeline
        bid = batch_id(request.job_name)
        if bid in exclude:
            return None
        try:
            batch = http.send_json(
                self.session,
                "GET",
                self._batch_url(p.project, p.region, bid),
                what=f"dataproc batches.get {bid}",
                timeout=self.timeout,
                ctx=self._ctx(request),
            )
        except NotFound:
            return None
        return self._ref(bid, p.project, p.region, request.job_name, str(batch.get("operation") or ""))

    def _get(self, ref: JobRef) -> Mapping[str, Any]:
        batch = http.send_json(
            self.session,
            "GET",
            self._batch_url(ref.project, ref.region, ref.job_id),
            what=f"dataproc batches.get {ref.job_id}",
            timeout=self.timeout,
        )
        if not isinstance(batch, Mapping):
            raise BackendUnavailable(f"dataproc batches.get {ref.job_id}: answer is not a Batch")
        return batch

    def status(self, ref: JobRef) -> JobStatus:
        batch = self._get(ref)
        raw = str(batch.get("state") or "STATE_UNSPECIFIED")
        state = normalize_state(raw)
        reason = None
        if state is RunState.FAILED:
            reason = str(batch.get("stateMessage") or "") or "Dataproc batch FAILED"
        state_time = parse_time(batch.get("stateTime"), "stateTime")
        started = None
        for entry in batch.get("stateHistory") or []:
            if isinstance(entry, Mapping) and entry.get("state") == "RUNNING":
                started = parse_time(entry.get("stateStartTime"), "stateHistory.stateStartTime")
                break
        if started is None and raw == "RUNNING":
            started = state_time
        return JobStatus(
            state=state,
            raw_state=raw,
            reason=reason,
            start_time=started or parse_time(batch.get("createTime"), "createTime"),
            end_time=state_time if state.terminal else None,
            state_time=state_time,
        )

    def cancel(self, ref: JobRef, *, drain: bool = False) -> None:
        """Cancel the batch's operation (``drain`` has no meaning for a batch). A finished batch
        answers FAILED_PRECONDITION: nothing is left to stop."""
        operation = str(ref.extra.get("operation") or "") or str(self._get(ref).get("operation") or "")
        if not operation.startswith("projects/"):
            raise BackendRejected(
                f"dataproc batch {ref.job_id} has no operation to cancel", reason="NO_OPERATION"
            )
        try:
            http.send_json(
                self.session,
                "POST",
                f"{self.endpoint}/v1/{quote(operation, safe='/')}:cancel",
                json={},
                what=f"dataproc operations.cancel {ref.job_id}",
                timeout=self.timeout,
            )
        except BackendRejected as exc:
            if exc.reason != "FAILED_PRECONDITION":
                raise
