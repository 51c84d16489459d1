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
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
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
    SyncChange,
    SyncStep,
)
from handlers.backends.fabric import definitions, entra, lookup, mashup
from handlers.backends.fabric import parameters as dataflow_parameters
from handlers.backends.fabric.entra import DEFAULT_PREFIX, DELEGATED, SERVICE_PRINCIPAL
from handlers.backends.fabric.secrets import SECRET_SUFFIX
from handlers.core import http, logs, retry
from handlers.core.errors import (
    BackendRejected,
    BackendUnavailable,
    ConfigError,
    EventError,
    NotFound,
    ParameterError,
)
from handlers.core.times import parse_time

DEFAULT_ENDPOINT = "https://api.fabric.microsoft.com"
ENDPOINT_ENV = "FABRIC_API_ENDPOINT"
OPTION_KEYS = (
    "workspace",
    "item",
    "item_type",
    "job_type",
    "auth",
    "execute_option",
    "credentials",
    "definition",
)

DEFAULT_JOB_TYPE = "Execute"
DEFAULT_ITEM_TYPE = "Dataflow"
# The job a run of each item type starts when the config names none.
JOB_TYPES_BY_ITEM: Mapping[str, str] = {
    "Dataflow": "Execute",
    "DataPipeline": "Pipeline",
    "Notebook": "RunNotebook",
}
PARAMETERS_TTL_SECONDS = 300.0
MAX_NAME_LENGTH = 256
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


def item_type_of(options: Mapping[str, Any]) -> str:
    """The configured item type (``Dataflow`` unless ``item_type`` says otherwise)."""
    return str(options.get("item_type") or DEFAULT_ITEM_TYPE)


def job_type_of(options: Mapping[str, Any]) -> str:
    """The configured job type, or the one the item type runs (Dataflow: Execute, DataPipeline:
    Pipeline, Notebook: RunNotebook)."""
    return str(options.get("job_type") or JOB_TYPES_BY_ITEM.get(item_type_of(options), DEFAULT_JOB_TYPE))


def auth_mode(options: Mapping[str, Any]) -> str:
    """The configured auth mode, or the default for the job type."""
    job_type = job_type_of(options)
    return str(options.get("auth") or (DELEGATED if is_execute(job_type) else SERVICE_PRINCIPAL))


def check_options(options: Mapping[str, Any]) -> list[str]:
    """Config problems of a Fabric pipeline's backend-specific fields."""
    problems = []
    for key, what in (("workspace", "workspace"), ("item", "item (dataflow, pipeline, notebook...)")):
        value = options.get(key)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
            problems.append(f"{key}: is required: the Fabric {what} id (a GUID) or display name")
    item_type = options.get("item_type", DEFAULT_ITEM_TYPE)
    if item_type not in JOB_TYPES_BY_ITEM:
        problems.append(f"item_type: must be one of {', '.join(JOB_TYPES_BY_ITEM)}, got {item_type!r}")
        item_type = DEFAULT_ITEM_TYPE
    definition = options.get("definition")
    if definition is not None and (
        not isinstance(definition, str) or not definition.strip() or definition.startswith("/")
    ):
        problems.append("definition: must be a folder path relative to the config file's folder")
    job_type = options.get("job_type", JOB_TYPES_BY_ITEM[str(item_type)])
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


def check_definition(
    pipeline: PipelineTarget, parameters: Collection[str], base_dir: str
) -> tuple[list[str], list[str]]:
    """``validate``, offline: the definition folder beside the config (its parts, its type), and the
    configured parameter names against the public parameters its ``mashup.pq`` declares."""
    options = pipeline.options
    if not options.get("definition"):
        return [], []
    where = f"pipeline '{pipeline.name}': definition"
    try:
        parts = definitions.read_folder(Path(base_dir) / str(options["definition"]))
        metadata = definitions.platform(parts, str(options["definition"]))
    except ConfigError as exc:
        return [f"pipeline '{pipeline.name}': {p}" for p in exc.problems], []
    if metadata["type"] != item_type_of(options):
        return [
            f"{where}: its .platform is a {metadata['type']}, the pipeline's item_type {item_type_of(options)}"
        ], []
    if metadata["type"] != "Dataflow":
        return [], []
    declared = {
        str(p["name"]): p for p in mashup.parameters(parts["mashup.pq"].decode("utf-8", errors="replace"))
    }
    errors = [
        f"pipeline '{pipeline.name}': parameter {name!r}: not a public parameter of the dataflow "
        f"(its mashup.pq declares: {', '.join(sorted(declared)) or 'none'})"
        for name in parameters
        if name not in declared
    ]
    errors += [
        f"pipeline '{pipeline.name}': parameter {name!r}: required by the dataflow but not configured"
        for name, p in declared.items()
        if p["isRequired"] and name not in parameters
    ]
    return errors, []


def execution_body(
    job_type: str, parameters: Mapping[str, Any], execute_option: str | None = None
) -> dict[str, Any]:
    """The run-on-demand request body for ``job_type``, in today's spec shapes: a dataflow's Execute
    takes ``executionData.parameters`` (ItemJobParameter: parameterName, type Automatic, value);
    every other job type the top-level ``parameters`` list (Parameter: name, type, value)."""
    if is_execute(job_type):
        data: dict[str, Any] = {}
        if execute_option:
            data["executeOption"] = execute_option
        if parameters:
            data["parameters"] = [
                {"parameterName": name, "type": "Automatic", "value": value}
                for name, value in parameters.items()
            ]
        return {"executionData": data} if data else {}
    if parameters:
        return {
            "parameters": [
                {"name": name, "type": "Text", "value": value} for name, value in parameters.items()
            ]
        }
    return {}


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
    if code < 300:  # a 3xx too is an error here: redirects are never followed (handlers.core.http)
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
    kept: set[tuple[str, str]] = set()
    for p in pipelines:
        prefix = str(p.options.get("credentials") or DEFAULT_PREFIX)
        names = entra.env_names(prefix)
        ids |= {names["tenant"], names["client_id"]}
        if auth_mode(p.options) == DELEGATED:
            secrets.add(names["refresh_token"])
            optional.add(names["client_secret"])
            # Entra rotates the refresh token: each new one is added to the secret it came from
            kept.add((names["refresh_token"], prefix + SECRET_SUFFIX))
        else:
            secrets.add(names["client_secret"])
    return Credentials(
        tuple(sorted(secrets)), tuple(sorted(optional - secrets)), tuple(sorted(ids)), tuple(sorted(kept))
    )


SPEC = BackendSpec(
    name="fabric",
    title="Microsoft Fabric item job (Dataflow Gen2, pipeline, notebook)",
    implementation="handlers.backends.fabric.jobs:Fabric",
    option_keys=OPTION_KEYS,
    check_options=check_options,
    check_definition=check_definition,
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
        page_retry_seconds: float = PAGE_RETRY_SECONDS,
    ) -> None:
        self.find_semantics = self.spec.find
        self._session = session
        self.endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
        self._tokens = tokens
        self.timeout = timeout or http.default_timeout()
        self.find_skew_seconds = find_skew_seconds
        self.page_retry_seconds = page_retry_seconds
        self._lock = threading.Lock()
        self._launched: OrderedDict[str, str] = OrderedDict()  # instance id -> run key (this process)
        self.names = lookup.NameCache()
        self._parameters = lookup.NameCache(PARAMETERS_TTL_SECONDS)  # (ws, dataflow) -> declared

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

    def _collection_url(self, workspace: str, collection: str, item: str | None = None) -> str:
        url = f"{self.endpoint}/v1/workspaces/{quote(workspace, safe='')}/{collection}"
        return url if item is None else f"{url}/{quote(item, safe='')}"

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
        context = dict(ctx or {})
        prefix, mode = auth
        extra_headers = dict(kwargs.pop("headers", None) or {})
        for attempt in (1, 2):
            token = self.tokens.token(prefix, mode)
            headers = {**extra_headers, "Authorization": f"Bearer {token}"}
            response = http.exchange(
                self.session,
                method,
                url,
                what=what,
                timeout=self.timeout,
                ctx=context,
                headers=headers,
                **kwargs,
            )
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

    # -- names, parameters ----------------------------------------------------------------------
    def _pages(self, auth: tuple[str, str], what: str, ctx: Mapping[str, Any] | None) -> lookup.PageGetter:
        def get(url: str, params: Mapping[str, str]) -> Mapping[str, Any]:
            response = self._call("GET", url, auth=auth, what=what, ctx=ctx, params=dict(params))
            try:
                body = response.json()
            except ValueError:
                body = None
            # A list page without its `value` list is a broken answer, not an empty list: read as
            # "none", it would refuse a dataflow's parameters or miss a name for good.
            if not isinstance(body, Mapping) or not isinstance(body.get("value"), list):
                raise BackendUnavailable(f"{what}: the answer is not a list page (no 'value' list)")
            return body

        return get

    def resolve(self, options: Mapping[str, Any], ctx: Mapping[str, Any] | None = None) -> tuple[str, str]:
        """(workspace id, item id) of a pipeline whose options name them by id or display name."""
        workspace = self.workspace_id(str(options["workspace"]), options, ctx)
        item = str(options["item"])
        if lookup.is_id(item):
            return workspace, item
        kind = item_type_of(options)
        entries = self._items(workspace, kind, options, ctx)
        found = lookup.pick(entries, item, kind, f" in workspace {options['workspace']}")
        return workspace, str(found["id"])

    def workspace_id(
        self, workspace: str, options: Mapping[str, Any], ctx: Mapping[str, Any] | None = None
    ) -> str:
        if lookup.is_id(workspace):
            return workspace
        auth = self._auth(options)
        entries = self.names.listing(
            ("workspaces", auth[0]),
            lambda: lookup.list_all(
                self._pages(auth, "fabric workspaces.list", ctx),
                f"{self.endpoint}/v1/workspaces",
                {},
                self.endpoint,
            ),
        )
        return str(lookup.pick(entries, workspace, "workspace")["id"])

    def _items(
        self, workspace: str, item_type: str, options: Mapping[str, Any], ctx: Mapping[str, Any] | None
    ) -> list[Mapping[str, Any]]:
        auth = self._auth(options)
        return self.names.listing(
            ("items", auth[0], workspace, item_type),
            lambda: lookup.list_all(
                self._pages(auth, "fabric items.list", ctx),
                self._collection_url(workspace, "items"),
                {"type": item_type},
                self.endpoint,
            ),
        )

    def _find_item(
        self,
        workspace: str,
        name: str,
        item_type: str,
        options: Mapping[str, Any],
        ctx: Mapping[str, Any] | None,
    ) -> Mapping[str, Any] | None:
        """The one item of that type and display name, ``None`` when absent (ambiguous: an error)."""
        entries = self._items(workspace, item_type, options, ctx)
        try:
            return lookup.pick(entries, name, item_type)
        except lookup.NameNotFound:
            return None

    def dataflow_parameters(
        self, workspace: str, dataflow: str, options: Mapping[str, Any], ctx: Mapping[str, Any] | None = None
    ) -> list[dataflow_parameters.Declared]:
        """The dataflow's public parameters (cached for a few minutes per process)."""
        auth = self._auth(options)

        def load() -> list[Mapping[str, Any]]:
            return lookup.list_all(
                self._pages(auth, "fabric dataflows.discoverParameters", ctx),
                f"{self._collection_url(workspace, 'dataflows', dataflow)}/parameters",
                {},
                self.endpoint,
            )

        entries = self._parameters.listing((workspace.lower(), dataflow.lower()), load)
        return [dataflow_parameters.Declared.from_json(e) for e in entries]

    def check_online(self, pipeline: PipelineTarget, parameters: Mapping[str, str | None]) -> list[str]:
        """Problems only Fabric can tell: names that resolve to nothing, and a dataflow's configured
        parameters (name -> literal value, ``None`` when rendered from an event) against its own."""
        options = pipeline.options
        try:
            workspace, item = self.resolve(options)
        except lookup.NameNotFound as exc:
            if options.get("definition"):
                return []  # sync creates it
            return [f"{pipeline.name}: {exc.message}"]
        except BackendRejected as exc:
            return [f"{pipeline.name}: {exc.message}"]
        if not is_execute(job_type_of(options)):
            return []
        declared = self.dataflow_parameters(workspace, item, options)
        return [f"{pipeline.name}: {p}" for p in dataflow_parameters.check(declared, parameters)]

    # -- sync: definitions kept in the repo ----------------------------------------------------
    def plan_sync(self, pipeline: PipelineTarget, base_dir: str) -> SyncStep | None:
        """Compare the repo's definition folder with Fabric's copy (nothing changes)."""
        options = pipeline.options
        if not options.get("definition"):
            return None
        folder = Path(base_dir) / str(options["definition"])
        parts = definitions.read_folder(folder)
        metadata = definitions.platform(parts, str(options["definition"]))
        item_type = str(metadata["type"])
        if item_type != item_type_of(options):
            raise ConfigError(
                [
                    f"definition: {folder}/.platform is a {item_type}, the pipeline's item_type is {item_type_of(options)}"
                ],
                source=f"pipeline {pipeline.name}",
            )
        item = str(options["item"])
        name = str(metadata.get("displayName") or item) if lookup.is_id(item) else item
        workspace = self.workspace_id(str(options["workspace"]), options)
        self.names.forget(("items", self._auth(options)[0], workspace, item_type))
        found = (
            {"id": item} if lookup.is_id(item) else self._find_item(workspace, name, item_type, options, None)
        )
        payload = {
            "workspace": workspace,
            "item_type": item_type,
            "display_name": name,
            "definition": definitions.encode(parts),
            "credentials": self._auth(options)[0],
            "auth": self._auth(options)[1],
        }
        target = f"{item_type} {name!r} in workspace {options['workspace']}"
        common: dict[str, Any] = {
            "pipeline": pipeline.name,
            "backend": self.name,
            "target": target,
            "payload": payload,
        }
        if found is None:
            return SyncStep(change=SyncChange.CREATE, summary=f"new: {', '.join(sorted(parts))}", **common)
        remote = self._get_definition(workspace, item_type, str(found["id"]), options)
        diff = definitions.differences(parts, remote)
        change = SyncChange.UPDATE if diff else SyncChange.UNCHANGED
        return SyncStep(change=change, summary=", ".join(diff), found=str(found["id"]), **common)

    def apply_sync(self, step: SyncStep) -> str:
        """Create or update the item (following Fabric's long-running operations); a dataflow's
        changes are then applied (its applyChanges job), so the next Execute runs them."""
        payload = step.payload
        options = {"credentials": payload["credentials"], "auth": payload["auth"]}
        auth = self._auth(options)
        workspace, item_type = str(payload["workspace"]), str(payload["item_type"])
        collection = definitions.COLLECTIONS[item_type]
        call = self._lro_call(auth)
        if step.change == SyncChange.UNCHANGED:
            return str(step.found)
        if step.change == SyncChange.CREATE:
            body = {"displayName": payload["display_name"], "definition": payload["definition"]}
            response = call(
                "POST",
                self._collection_url(workspace, collection),
                what=f"fabric {collection}.create",
                json=body,
            )
            created = definitions.wait(call, response, what=f"fabric {collection}.create", want_result=True)
            item = str((created or {}).get("id") or "")
            if not item:
                raise BackendUnavailable(f"fabric {collection}.create: the answer names no item id")
            self.names.forget(("items", auth[0], workspace, item_type))
        else:
            item = str(step.found)
            url = f"{self._collection_url(workspace, collection, item)}/updateDefinition"
            response = call(
                "POST",
                url,
                what=f"fabric {collection}.updateDefinition",
                json={"definition": payload["definition"]},
            )
            definitions.wait(call, response, what=f"fabric {collection}.updateDefinition", want_result=False)
        if item_type == "Dataflow":
            self._parameters.forget((workspace.lower(), item.lower()))
            self._apply_changes(workspace, item, auth)
        logs.info("fabric item synced", pipeline=step.pipeline, change=str(step.change), item=item)
        return item

    def _lro_call(self, auth: tuple[str, str]) -> definitions.Call:
        def call(method: str, url: str, *, what: str, **kwargs: Any) -> Any:
            if not url.startswith(self.endpoint + "/"):
                raise BackendUnavailable(f"{what}: Fabric pointed at another host; not following it")
            return self._call(method, url, auth=auth, what=what, **kwargs)

        return call

    def _get_definition(
        self, workspace: str, item_type: str, item: str, options: Mapping[str, Any]
    ) -> dict[str, bytes]:
        call = self._lro_call(self._auth(options))
        collection = definitions.COLLECTIONS[item_type]
        what = f"fabric {collection}.getDefinition"
        response = call(
            "POST", f"{self._collection_url(workspace, collection, item)}/getDefinition", what=what
        )
        result = definitions.wait(call, response, what=what, want_result=True)
        return definitions.decode((result or {}).get("definition"))

    def _apply_changes(self, workspace: str, dataflow: str, auth: tuple[str, str]) -> None:
        """Run the dataflow's ApplyChanges job and wait for it (a failure is a clear error)."""
        what = "fabric dataflows.applyChanges"
        url = f"{self._collection_url(workspace, 'dataflows', dataflow)}/jobs/applyChanges/instances"
        response = self._call("POST", url, auth=auth, what=what)
        location = response.headers.get("Location") or ""
        if "/jobs/instances/" not in location or not location.startswith(self.endpoint + "/"):
            raise BackendUnavailable(f"{what}: HTTP {response.status_code} without a job instance Location")
        deadline = time.monotonic() + definitions.LRO_BUDGET_SECONDS
        delay = http.retry_after_seconds(response.headers)
        while True:
            time.sleep(min(1.0 if delay is None else delay, definitions.LRO_MAX_WAIT_SECONDS))
            answer = self._call("GET", location, auth=auth, what=what)
            instance = answer.json() if answer.content else {}
            status = str(instance.get("status"))
            if status == "Completed":
                return
            if status in ("Failed", "Cancelled", "Deduped"):
                raise BackendRejected(f"{what}: {status}: {_failure_reason(instance)}", reason=status)
            if time.monotonic() >= deadline:
                raise BackendUnavailable(
                    f"{what}: still {status} after {definitions.LRO_BUDGET_SECONDS:.0f}s"
                )
            delay = http.retry_after_seconds(answer.headers)

    # -- the backend contract ------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> JobRef:
        options = request.pipeline.options
        workspace, item = self.resolve(options, self._ctx(request))
        job_type = job_type_of(options)
        run_parameters: Mapping[str, Any] = request.parameters
        if is_execute(job_type):
            # The dataflow-specific path: the only one the spec documents executionData.parameters for.
            declared = self.dataflow_parameters(workspace, item, options)
            problems = dataflow_parameters.check(declared, dict(request.parameters))
            if problems:
                raise ParameterError(
                    f"fabric: the dataflow refuses this run's parameters: {'; '.join(problems)}",
                    **self._ctx(request),
                )
            run_parameters = dataflow_parameters.typed(declared, request.parameters)
            url = f"{self._collection_url(workspace, 'dataflows', item)}/jobs/execute/instances"
        else:
            url = f"{self._item_url(workspace, item)}/jobs/{quote(job_type, safe='')}/instances"
        body = execution_body(job_type, run_parameters, options.get("execute_option"))
        what = "fabric jobs.runOnDemand"
        response = self._call(
            "POST",
            url,
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
        workspace, item = self.resolve(options, self._ctx(request))
        job_type = job_type_of(options)
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
                budget_seconds=self.page_retry_seconds,
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
