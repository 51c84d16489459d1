"""Microsoft Fabric: Dataflow Gen2, data pipelines, notebooks and other item jobs (Job Scheduler API).

Paths (``{api}/v1/workspaces/{ws}/items/{item}`` prefix), from the Fabric REST OpenAPI specs::

    POST .../jobs/{jobType}/instances            run on demand -> 202, Location: .../jobs/instances/{id},
                                                 Retry-After (the older ?jobType= form still works)
    GET  .../jobs/instances/{id}                 ItemJobInstance {id, jobType, invokeType, status,
                                                 startTimeUtc, endTimeUtc, failureReason}
    GET  .../jobs/instances[?continuationToken=] list (paginated; order not relied upon)
    POST .../jobs/instances/{id}/cancel          202

Request bodies per job type::

    Execute (Dataflow Gen2)  {"executionData": {"executeOption": "...",
                               "parameters": [{"parameterName": k, "type": "Automatic", "value": v}]}}
    Pipeline                 {"executionData": {"parameters": {k: v}}}
    RunNotebook              {"executionData": {"parameters": {k: {"value": v, "type": "string"}}}}
    any other job type       {"executionData": {"parameters": {k: v}}}  ({} without parameters)

Statuses: NotStarted -> PENDING, InProgress -> RUNNING, Completed -> SUCCEEDED, Failed -> FAILED
(reason from ``failureReason``), Cancelled -> CANCELLED, and Deduped -> CANCELLED with the reason
``deduped: ...``: Fabric skips a run of an item whose same job is already running, so that run did
no work of its own; it is terminal and not a success. Any other value ("more may be added") is
not terminal and maps to PENDING.

Idempotency: Fabric cannot carry our run key (no job name, no labels, no parameters in the
instance listing), so :meth:`Fabric.find` matches by time: the newest manually invoked instance of
the item's job type that started at or after the run's first claim time (``requested_at``) minus
a small clock skew (10 s). That is safe because the ledger gives each run key a single owner at a
time, so only that owner can have started an instance for it since the claim, and because Fabric
itself dedupes concurrent runs of one item (the second becomes ``Deduped``). Instances this process
launched for *another* run key are never adopted (a bounded in-memory map), ids another run owns are
skipped (``exclude``: the launch service claims each instance id in the ledger, see
``FindSemantics.exact``), and without ``requested_at`` only still-active instances are considered (never an
old finished run). The launch service starts one run of an item at a time (``FindSemantics.scope``:
the item, a launch slot in the ledger, :mod:`handlers.launch.slot`) and claims each instance before
it lets the next run start, so after a lost answer the newest instance no other run claimed is the
holder's own: two runs never follow each other's instance. What remains: an instance someone starts
*by hand* on the same item within the seconds of an uncertain start may be taken for it, and a Fabric
clock more than 10 s behind ours hides the run's own instance from ``find`` (a second start, which
Fabric's own dedupe of concurrent runs then marks ``Deduped``).

Auth: a bearer token from :mod:`handlers.backends.fabric.entra`. ``auth: delegated`` (default for Execute: the spec
marks the Dataflow execute endpoints as not supporting service principals) or
``service_principal`` (default otherwise). A 401 drops the cached token and retries the call once.
Errors map on ``errorCode`` (never on message text): ``isRetriable: true`` -> retryable,
``ItemNotFound`` -> NotFound, other 4xx -> BackendRejected, 429/5xx -> retryable (Retry-After kept).

``FABRIC_API_ENDPOINT`` overrides ``https://api.fabric.microsoft.com`` (the local emulator).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlparse

from handlers.backends.contract import (
    BackendSpec,
    Credentials,
    DeployFlag,
    DeployNeeds,
    FindSemantics,
    JobRef,
    JobStatus,
    LaunchRequest,
    PipelineTarget,
    RunState,
)
from handlers.backends.fabric import entra
from handlers.backends.fabric.entra import DEFAULT_PREFIX, DELEGATED, SERVICE_PRINCIPAL
from handlers.core import http, logs, retry
from handlers.core.errors import BackendRejected, BackendUnavailable, EventError, NotFound
from handlers.core.times import parse_time

DEFAULT_ENDPOINT = "https://api.fabric.microsoft.com"
ENDPOINT_ENV = "FABRIC_API_ENDPOINT"
OPTION_KEYS = ("workspace", "item", "job_type", "auth", "execute_option", "credentials")

DEFAULT_JOB_TYPE = "Execute"
EXECUTE_JOB_TYPES = frozenset({"execute", "refresh"})  # "Refresh" is Fabric's alias for a dataflow Execute
AUTH_MODES = (DELEGATED, SERVICE_PRINCIPAL)
EXECUTE_OPTIONS = ("SkipApplyChanges", "ApplyChangesIfNeeded")
FIND_SKEW_SECONDS = 10.0
MAX_LIST_PAGES = 20
PAGE_RETRY_SECONDS = 5.0  # per page of an instance listing
REMEMBERED_LAUNCHES = 4096

_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_JOB_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")

DEDUPED_REASON = "deduped: another instance of this job was already running"
STATE_MAP: Mapping[str, RunState] = {
    "NotStarted": RunState.PENDING,
    "InProgress": RunState.RUNNING,
    "Completed": RunState.SUCCEEDED,
    "Failed": RunState.FAILED,
    "Cancelled": RunState.CANCELLED,
    "Deduped": RunState.CANCELLED,
}
ACTIVE_STATUSES = frozenset({"NotStarted", "InProgress"})
# errorCode values that say "not there" whatever the HTTP status, and those that say "try later".
NOT_FOUND_CODES = frozenset({"ItemNotFound", "WorkspaceNotFound", "EntityNotFound"})
RETRYABLE_CODES = frozenset({"TooManyRequestsForJobs", "TooManyRequests", "ServiceUnavailable"})
ALREADY_DONE_CODES = frozenset({"JobAlreadyCompleted"})


def normalize_state(raw: str | None) -> RunState:
    return STATE_MAP.get(raw or "", RunState.PENDING)


def is_execute(job_type: str) -> bool:
    """Whether ``job_type`` is the Dataflow Gen2 run (``Execute`` or its alias ``Refresh``)."""
    return job_type.lower() in EXECUTE_JOB_TYPES


def auth_mode(options: Mapping[str, Any]) -> str:
    """The configured auth mode, or the default for the job type."""
    job_type = str(options.get("job_type") or DEFAULT_JOB_TYPE)
    return str(options.get("auth") or (DELEGATED if is_execute(job_type) else SERVICE_PRINCIPAL))


def check_options(options: Mapping[str, Any]) -> list[str]:
    """Config problems of a Fabric pipeline's backend-specific fields."""
    problems = []
    for key, what in (("workspace", "workspace"), ("item", "item (dataflow, pipeline, notebook...)")):
        value = options.get(key)
        if not isinstance(value, str) or not _GUID_RE.match(value):
            problems.append(f"{key}: is required and must be the Fabric {what} id (a GUID)")
    job_type = options.get("job_type", DEFAULT_JOB_TYPE)
    if not isinstance(job_type, str) or not _JOB_TYPE_RE.match(job_type):
        problems.append("job_type: must be a Fabric job type such as Execute, Pipeline or RunNotebook")
        job_type = DEFAULT_JOB_TYPE
    auth = options.get("auth")
    if auth is not None and auth not in AUTH_MODES:
        problems.append(f"auth: must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    if auth == SERVICE_PRINCIPAL and is_execute(job_type):
        problems.append(
            "auth: service_principal cannot run a Dataflow Gen2 (job_type Execute): Fabric's dataflow "
            "execute API does not support service principals; use auth: delegated"
        )
    if "execute_option" in options:
        if not is_execute(job_type):
            problems.append("execute_option: only a Dataflow Gen2 run (job_type Execute) takes it")
        elif options["execute_option"] not in EXECUTE_OPTIONS:
            problems.append(f"execute_option: must be one of {', '.join(EXECUTE_OPTIONS)}")
    prefix = options.get("credentials", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        problems.append(
            "credentials: must be an env var name prefix like FABRIC or FABRIC_SALES ([A-Z][A-Z0-9_]*)"
        )
    return problems


def execution_body(
    job_type: str, parameters: Mapping[str, Any], execute_option: str | None = None
) -> dict[str, Any]:
    """The RunOnDemandItemJob request body for ``job_type``."""
    data: dict[str, Any] = {}
    if is_execute(job_type):
        if execute_option:
            data["executeOption"] = execute_option
        if parameters:
            data["parameters"] = [
                {"parameterName": name, "type": "Automatic", "value": value}
                for name, value in parameters.items()
            ]
    elif parameters:
        if job_type == "RunNotebook":
            data["parameters"] = {
                name: {"value": value, "type": "string"} for name, value in parameters.items()
            }
        else:
            data["parameters"] = dict(parameters)
    return {"executionData": data} if data else {}


def _parse_time(value: Any) -> dt.datetime | None:
    """Fabric times (``2026-03-13T10:00:00.1234567``, UTC, usually without an offset) as aware UTC."""
    try:
        return parse_time(value, "startTimeUtc")
    except EventError:
        return None


def _failure_reason(instance: Mapping[str, Any]) -> str:
    failure = instance.get("failureReason")
    if isinstance(failure, Mapping):
        code, message = failure.get("errorCode"), failure.get("message")
        text = ": ".join(str(p) for p in (code, message) if p)
        if text:
            return text
    return "the Fabric job instance failed"


def fabric_error(response: Any, *, what: str, **ctx: Any) -> None:
    """Raise the project error for a non-2xx Fabric answer, deciding on ``errorCode``/``isRetriable``."""
    code = response.status_code
    if code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and "errorCode" in body:
        error_code = str(body.get("errorCode"))
        text = f"{what}: HTTP {code} {error_code}: {body.get('message') or response.reason}"
        if body.get("isRetriable") is True or error_code in RETRYABLE_CODES:
            retry_after = http.retry_after_seconds(response.headers)
            raise BackendUnavailable(text, status=code, retry_after=retry_after, **ctx)
        if error_code in NOT_FOUND_CODES:
            raise NotFound(text, **ctx)
    http.raise_for_status(response, what=what, **ctx)


def find_scope(options: Mapping[str, Any]) -> str:
    """What :meth:`Fabric.find` searches: the item's job instances (one launch slot per item)."""
    return f"{options.get('workspace')}/{options.get('item')}"


# ---------------------------------------------------------------------------------------------
# What Fabric declares (handlers.backends.contract)
# ---------------------------------------------------------------------------------------------
def credentials(pipelines: Sequence[PipelineTarget]) -> Credentials:
    """The Entra credential env vars the pipelines read (see :mod:`handlers.backends.fabric.entra`)."""
    secrets: set[str] = set()
    optional: set[str] = set()
    ids: set[str] = set()
    for p in pipelines:
        names = entra.env_names(str(p.options.get("credentials") or DEFAULT_PREFIX))
        ids |= {names["tenant"], names["client_id"]}
        if auth_mode(p.options) == DELEGATED:
            secrets.add(names["refresh_token"])
            optional.add(names["client_secret"])
        else:
            secrets.add(names["client_secret"])
    return Credentials(tuple(sorted(secrets)), tuple(sorted(optional - secrets)), tuple(sorted(ids)))


SPEC = BackendSpec(
    name="fabric",
    title="Microsoft Fabric item job (Dataflow Gen2, pipeline, notebook)",
    implementation="handlers.backends.fabric.jobs:Fabric",
    option_keys=OPTION_KEYS,
    check_options=check_options,
    endpoint_envs=(ENDPOINT_ENV, entra.ENDPOINT_ENV),
    auth="entra",
    # Instances carry no run key: find() matches by time (module docstring). After an uncertain
    # start the launch service waits a moment before trusting "not found", in case the instance
    # list lags the 202 (a relaunch would only be Deduped anyway).
    find=FindSemantics(exact=False, settle_seconds=1.0, scope=lambda p: find_scope(p.options)),
    deploy=DeployNeeds(
        credentials=credentials,
        # the deploy's --secret, under the name it had when only Fabric read secrets
        flags=(DeployFlag("--fabric-secret", "secret", "alias of --secret", alias=True),),
    ),
    job_noun="job instance",
)
SPECS = (SPEC,)


class Fabric:
    """Fabric item jobs through the Job Scheduler REST API."""

    spec = SPEC
    name = SPEC.name

    def __init__(
        self,
        session: Any = None,
        endpoint: str | None = None,
        tokens: Any = None,
        timeout: Any = None,
        *,
        find_skew_seconds: float = FIND_SKEW_SECONDS,
    ) -> None:
        self.find_semantics = self.spec.find
        self._session = session
        self.endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        self._tokens = tokens
        self.timeout = timeout or http.default_timeout()
        self.find_skew_seconds = find_skew_seconds
        self._lock = threading.Lock()
        self._launched: OrderedDict[str, str] = OrderedDict()  # instance id -> run key (this process)

    # -- clients -------------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import requests

                    self._session = requests.Session()
        return self._session

    @property
    def tokens(self) -> Any:
        if self._tokens is None:
            with self._lock:
                if self._tokens is None:
                    self._tokens = entra.TokenProvider()  # one per backend: the runtime keeps one per process
        return self._tokens

    # -- helpers -------------------------------------------------------------------------------
    def _item_url(self, workspace: str, item: str) -> str:
        return f"{self.endpoint}/v1/workspaces/{quote(workspace, safe='')}/items/{quote(item, safe='')}"

    def _instance_url(self, workspace: str, item: str, instance_id: str) -> str:
        return f"{self._item_url(workspace, item)}/jobs/instances/{quote(instance_id, safe='')}"

    @staticmethod
    def _auth(options: Mapping[str, Any]) -> tuple[str, str]:
        return str(options.get("credentials") or DEFAULT_PREFIX), auth_mode(options)

    def _call(
        self,
        method: str,
        url: str,
        *,
        auth: tuple[str, str],
        what: str,
        ctx: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One authenticated call; a 401 drops the cached token and retries once with a fresh one."""
        import requests

        context = dict(ctx or {})
        prefix, mode = auth
        extra_headers = dict(kwargs.pop("headers", None) or {})
        for attempt in (1, 2):
            token = self.tokens.token(prefix, mode)
            headers = {**extra_headers, "Authorization": f"Bearer {token}"}
            try:
                response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            except requests.Timeout as exc:
                raise BackendUnavailable(f"{what}: timed out ({exc.__class__.__name__})", **context) from exc
            except requests.ConnectionError as exc:
                raise BackendUnavailable(
                    f"{what}: connection failed ({exc.__class__.__name__})", **context
                ) from exc
            if response.status_code == 401 and attempt == 1:
                logs.warning(
                    f"{what}: 401 from Fabric, fetching a new token and retrying once",
                    prefix=prefix,
                    mode=mode,
                    error_code=_error_code(response),
                )
                self.tokens.invalidate(prefix, mode, token)
                continue
            fabric_error(response, what=what, **context)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _ref(
        self,
        workspace: str,
        item: str,
        job_type: str,
        instance_id: str,
        options: Mapping[str, Any],
        job_name: str,
        location: str | None = None,
    ) -> JobRef:
        prefix, mode = self._auth(options)
        location = location or self._instance_url(workspace, item, instance_id)
        return JobRef(
            backend=self.name,
            job_id=instance_id,
            job_name=job_name,
            url=location,
            extra={
                "workspace": workspace,
                "item": item,
                "job_type": job_type,
                "location": location,
                "auth": mode,
                "credentials": prefix,
            },
        )

    @staticmethod
    def _ctx(request: LaunchRequest) -> dict[str, Any]:
        return {"pipeline": request.pipeline.name, "run_key": request.run_key}

    # -- the backend contract ------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> JobRef:
        options = request.pipeline.options
        workspace, item = str(options["workspace"]), str(options["item"])
        job_type = str(options.get("job_type") or DEFAULT_JOB_TYPE)
        body = execution_body(job_type, request.parameters, options.get("execute_option"))
        what = "fabric jobs.runOnDemand"
        response = self._call(
            "POST",
            f"{self._item_url(workspace, item)}/jobs/{quote(job_type, safe='')}/instances",
            auth=self._auth(options),
            what=what,
            ctx=self._ctx(request),
            json=body,
        )
        location = response.headers.get("Location") or ""
        instance_id = urlparse(location).path.rstrip("/").rsplit("/", 1)[-1]
        if not instance_id or "/jobs/instances/" not in location:
            # Accepted, but we cannot tell which instance: let the launch service find it by time.
            raise BackendUnavailable(
                f"{what}: HTTP {response.status_code} without a job instance Location", **self._ctx(request)
            )
        self._remember(instance_id, request.run_key)
        return self._ref(workspace, item, job_type, instance_id, options, request.job_name, location)

    def _remember(self, instance_id: str, run_key: str) -> None:
        with self._lock:
            self._launched[instance_id] = run_key
            while len(self._launched) > REMEMBERED_LAUNCHES:
                self._launched.popitem(last=False)

    def _owner(self, instance_id: str) -> str | None:
        with self._lock:
            return self._launched.get(instance_id)

    def find(self, request: LaunchRequest, exclude: frozenset[str] = frozenset()) -> JobRef | None:
        """The instance this run started, matched by time (see the module docstring), or None;
        ``exclude``: instance ids other runs own (the launch service claims ids in the ledger)."""
        options = request.pipeline.options
        workspace, item = str(options["workspace"]), str(options["item"])
        job_type = str(options.get("job_type") or DEFAULT_JOB_TYPE)
        since = None
        if request.requested_at is not None:
            claimed = request.requested_at
            claimed = claimed if claimed.tzinfo else claimed.replace(tzinfo=dt.UTC)
            since = claimed - dt.timedelta(seconds=self.find_skew_seconds)
        best: tuple[dt.datetime, Mapping[str, Any]] | None = None
        for instance in self._list(workspace, item, options, self._ctx(request)):
            if str(instance.get("id")) in exclude:
                continue
            owner = self._owner(str(instance.get("id")))
            if owner == request.run_key:
                best = (dt.datetime.max.replace(tzinfo=dt.UTC), instance)  # certainly ours
                break
            if owner is not None:
                continue  # launched here for another run
            if not _same_job_type(str(instance.get("jobType") or job_type), job_type):
                continue
            if instance.get("invokeType") == "Scheduled":
                continue  # ours are always Manual
            started = _parse_time(instance.get("startTimeUtc"))
            if since is None:
                if instance.get("status") not in ACTIVE_STATUSES:
                    continue
            elif started is not None and started < since:
                continue
            key = started or dt.datetime.max.replace(tzinfo=dt.UTC)  # not started yet: the newest
            if best is None or key > best[0]:
                best = (key, instance)
        if best is None:
            return None
        return self._ref(workspace, item, job_type, str(best[1]["id"]), options, request.job_name)

    def _list(
        self, workspace: str, item: str, options: Mapping[str, Any], ctx: Mapping[str, Any]
    ) -> list[Any]:
        url = f"{self._item_url(workspace, item)}/jobs/instances"
        params: dict[str, str] = {}
        found: list[Any] = []
        for _ in range(MAX_LIST_PAGES):
            # Each page is retried on its own: a find reads every page, and failing the whole
            # listing on one page's transient error makes a busy item's find all but impossible.
            response = retry.call(
                functools.partial(
                    self._call,
                    "GET",
                    url,
                    auth=self._auth(options),
                    what="fabric jobs.listInstances",
                    ctx=ctx,
                    params=params,
                ),
                budget_seconds=PAGE_RETRY_SECONDS,
                initial=0.1,
                maximum=1.0,
                what="fabric jobs.listInstances",
            )
            body = response.json() if response.content else {}
            found.extend(body.get("value") or [])
            token = body.get("continuationToken")
            next_uri = body.get("continuationUri")
            if token:
                params = {
                    "continuationToken": token
                }  # our own URL: the bearer token never leaves the API host
            elif next_uri and str(next_uri).startswith(self.endpoint + "/"):
                url, params = str(next_uri), {}
            else:
                break
        return found

    def status(self, ref: JobRef) -> JobStatus:
        extra = ref.extra
        url = self._instance_url(str(extra["workspace"]), str(extra["item"]), ref.job_id)
        response = self._call("GET", url, auth=self._auth(extra), what="fabric jobs.getInstance")
        instance = response.json() if response.content else {}
        raw = str(instance.get("status") or "Unknown")
        state = normalize_state(raw)
        reason = None
        if raw == "Failed":
            reason = _failure_reason(instance)
        elif raw == "Deduped":
            reason = DEDUPED_REASON
        start = _parse_time(instance.get("startTimeUtc"))
        end = _parse_time(instance.get("endTimeUtc"))
        return JobStatus(
            state=state,
            raw_state=raw,
            reason=reason,
            start_time=start,
            end_time=end if state.terminal else None,
            state_time=end or start,
        )

    def cancel(self, ref: JobRef, *, drain: bool = False) -> None:
        """Cancel the instance (Fabric has no drain: ``drain`` cancels too). A finished one is left alone."""
        extra = ref.extra
        url = self._instance_url(str(extra["workspace"]), str(extra["item"]), ref.job_id) + "/cancel"
        try:
            self._call("POST", url, auth=self._auth(extra), what="fabric jobs.cancelInstance")
        except BackendRejected as exc:
            if exc.reason in ALREADY_DONE_CODES:
                return
            raise


def _same_job_type(a: str, b: str) -> bool:
    return a.lower() == b.lower() or (is_execute(a) and is_execute(b))


def _error_code(response: Any) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body.get("errorCode")) if isinstance(body, Mapping) and body.get("errorCode") else None
