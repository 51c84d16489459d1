"""Local emulator of Microsoft Fabric's Job Scheduler REST API and of the Entra ID token endpoint.

One Flask app serves both, so ``FABRIC_API_ENDPOINT`` and ``FABRIC_TOKEN_ENDPOINT`` can point at
the same base URL (see ``docs/emulators.md``, section "Fabric emulator").

Fabric (every call needs ``Authorization: Bearer <token issued below>``; prefix ``/v1/workspaces/{ws}``)::

    POST .../items/{item}/jobs/{jobType}/instances          run on demand -> 202, Location, Retry-After
    POST .../items/{item}/jobs/instances?jobType=X           the older form of the same call
    POST .../dataflows/{item}/jobs/execute/instances         the dataflow-specific form (Execute)
    POST .../dataflows/{item}/jobs/instances?jobType=Execute
    GET  .../items/{item}/jobs/instances[?continuationToken] ItemJobInstances, newest first, paginated
    GET  .../items/{item}/jobs/instances/{id}                ItemJobInstance
    POST .../items/{item}/jobs/instances/{id}/cancel          202; a finished instance: 400 JobAlreadyCompleted
    POST .../{dataPipelines|notebooks}/{item}/jobs/execute/instances   the item-type forms (Pipeline, RunNotebook)
    POST .../dataflows/{item}/jobs/applyChanges/instances    publish the dataflow's latest definition

Workspaces, items, definitions, long-running operations and a dataflow's parameters are served by
:mod:`local.emulators.fabric_items` (its docstring lists them). On the generic item path a
dataflow's Execute runs with its default parameters: the spec documents ``executionData.parameters``
only on the dataflow path.

Request and response bodies are validated against ``local/emulators/fabric_schemas.json``, generated
from Microsoft's OpenAPI specs by :mod:`local.emulators.fabric_spec` (it names the spec commit); an
unknown or invalid request field answers 400 ``InvalidRequest``.
Errors are Fabric's ErrorResponse JSON ``{"requestId", "errorCode", "message", "isRetriable"
[, "moreDetails"]}``. Missing/unknown token: 401 ``Unauthorized``; expired: 401 ``TokenExpired``.
An app-only (service principal) token running a Dataflow's Execute job: 403
``PrincipalTypeNotSupported`` (the spec marks that API as not supporting service principals),
unless the client was registered with ``service_principal_allowed_for_dataflows``.

Job instances follow the emulator clock: ``NotStarted`` for ``not_started_seconds``, then
``InProgress`` for ``run_seconds``, then ``Completed`` or ``Failed`` (with ``failureReason``). A run
of an item while another instance of the same item and job type is still NotStarted/InProgress
becomes ``Deduped`` at once ("a job instance of the same job type is already running and this job
instance is skipped"), unless dedupe is off (item behavior ``dedupe: false`` or the setting).
Cancel makes an active instance ``Cancelled`` ``cancel_seconds`` later (default at once).

Entra stand-in: ``POST /{tenant}/oauth2/v2.0/token`` (form-encoded) with ``grant_type=
client_credentials`` (app-only token) or ``grant_type=refresh_token`` (delegated token; the answer
carries a new refresh token), scope ``https://api.fabric.microsoft.com/.default``. Tokens are
opaque and live ``token_lifetime_seconds`` of emulator time. Wrong secret: 401 ``invalid_client``;
unknown or revoked refresh token: 400 ``invalid_grant``; unknown app: 400 ``unauthorized_client``.

Control API (besides the common ``/_emulator/reset|requests|faults|clock``)::

    GET|POST /_emulator/items      {"workspace", "item", "type": "Dataflow|DataPipeline|Notebook",
                                    "displayName", "behavior": {"not_started_seconds": 1, "run_seconds": 3,
                                    "outcome": "Completed|Failed", "failure_reason", "failure_code",
                                    "parameters": [declared names] | null, "outcome_param": null,
                                    "dedupe": true, "poll_after_seconds": 1, "cancel_seconds": 0}}
    GET|POST /_emulator/clients    {"tenant", "client_id", "client_secret", "refresh_tokens": [...],
                                    "service_principal_allowed_for_dataflows": false,
                                    "revoke_used_refresh_tokens": false}
    POST /_emulator/tokens/expire  every issued token expires now;  GET /_emulator/tokens
    GET /_emulator/instances       every instance with its bookkeeping (parameters, body, principal)
    GET|POST /_emulator/settings   {"token_lifetime_seconds", "dedupe", "page_size"}

Reset forgets instances, faults and recorded requests; items, clients, tokens, settings and the
clock stay. Fault operations: ``jobs.run``, ``jobs.get``, ``jobs.list``, ``jobs.cancel``, ``token``
or ``*``; ``match`` keys: ``workspace``, ``item``, ``jobType``, ``instanceId``, ``parameters``
(subset), ``tenant``, ``client_id``, ``grant_type``. Fabric faults answer ErrorResponse JSON
(``isRetriable`` true for 429 and 5xx), token faults Entra's ``{"error", "error_description"}`` (a
fault ``message`` of the form ``"<error>: <description>"`` sets the error code, e.g.
``"temporarily_unavailable: AADSTS50196: ..."`` with status 400, as Entra sends it). The refresh-token
grant returns a new refresh token only when the scope includes ``offline_access``, as Entra does.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import jsonschema
from flask import Flask, Response, current_app, jsonify, request

from handlers.backends.fabric import mashup as fabric_mashup
from local.emulators.base import (
    EmulatorState,
    FaultRule,
    ProtocolError,
    ServerHandle,
    built_once,
    control_error,
    decode_page_token,
    emulator_app,
    encode_page_token,
    guarded,
    install_registry_routes,
    install_route_errors,
    json_body,
    peek_json_body,
    reject_unknown_fields,
    run_cli,
    serve_app,
    state_of,
    utc_timestamp,
)

SCHEMAS_PATH = Path(__file__).with_name("fabric_schemas.json")
FABRIC_SCOPE = "https://api.fabric.microsoft.com/.default"
API_PREFIX = "/v1/workspaces/<workspace>"

ITEM_JOB_TYPES: Mapping[str, tuple[str, ...]] = {
    "Dataflow": ("Execute", "ApplyChanges"),
    "DataPipeline": ("Pipeline",),
    "Notebook": ("RunNotebook",),
}
JOB_TYPE_ALIASES = {"execute": "Execute", "refresh": "Execute", "applychanges": "ApplyChanges"}
# The item-type paths' execute job, and the request body definition of each run path.
COLLECTION_TYPES = {"dataflows": "Dataflow", "dataPipelines": "DataPipeline", "notebooks": "Notebook"}
EXECUTE_JOB = {"dataflows": "Execute", "dataPipelines": "Pipeline", "notebooks": "RunNotebook"}
RUN_REQUESTS = {
    "dataflows": "RunOnDemandDataflowExecuteJobRequest",
    "notebooks": "RunNotebookRequest",
}  # Refresh is Fabric's alias for Execute
OUTCOMES = ("Completed", "Failed")
ACTIVE = frozenset({"NotStarted", "InProgress"})
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

FAULT_CODES = {
    400: ("InvalidRequest", "The request is invalid."),
    401: ("Unauthorized", "The caller is not authenticated."),
    403: ("InsufficientPrivileges", "The caller does not have sufficient permissions to run job instance."),
    404: ("ItemNotFound", "Requested item ID not found."),
    409: ("Conflict", "The request conflicts with the current state."),
    429: ("TooManyRequests", "The service rate limit was exceeded. Retry after the given number of seconds."),
    500: ("InternalServerError", "An internal error occurred."),
    502: ("BadGateway", "The service received an invalid response."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable."),
    504: ("GatewayTimeout", "The service did not answer in time."),
}
RUN_FAULT_CODES = {429: ("TooManyRequestsForJobs", "The caller requests too many on-demand job requests.")}
ENTRA_FAULTS = {
    400: ("invalid_request", "AADSTS900144: The request is invalid."),
    401: ("invalid_client", "AADSTS7000215: Invalid client secret provided."),
    429: ("temporarily_unavailable", "AADSTS50196: The server is temporarily too busy."),
    500: ("server_error", "AADSTS90015: An internal server error occurred."),
    503: ("temporarily_unavailable", "AADSTS90033: A transient error has occurred. Please try again."),
}


# ============================================================================================ errors


class FabricError(ProtocolError):
    """An error answered with Fabric's ErrorResponse JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retriable: bool = False,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retriable = retriable
        self.details = details
        self.headers = dict(headers or {})

    def response(self) -> Response:
        request_id = str(uuid.uuid4())
        body: dict[str, Any] = {
            "requestId": request_id,
            "errorCode": self.code,
            "message": self.message,
            "isRetriable": self.retriable,
        }
        if self.details:
            body["moreDetails"] = self.details
        response = jsonify(body)
        response.status_code = self.status
        response.headers["RequestId"] = request_id
        response.headers["x-ms-public-api-error-code"] = self.code
        for name, value in self.headers.items():
            response.headers[name] = value
        return response


class EntraError(ProtocolError):
    """An error answered with Entra ID's OAuth error JSON."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> Response:
        match = re.match(r"AADSTS(\d+)", self.description)
        response = jsonify(
            {
                "error": self.error,
                "error_description": self.description,
                "error_codes": [int(match.group(1))] if match else [],
                "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
            }
        )
        response.status_code = self.status
        response.headers["Cache-Control"] = "no-store"
        return response


def _invalid(message: str, details: list[dict[str, Any]] | None = None) -> FabricError:
    return FabricError(400, "InvalidRequest", message, details=details)


# ========================================================================================== schemas


class SchemaBook:
    """The bundled schema fragments, one compiled validator per definition."""

    def __init__(self, path: Path = SCHEMAS_PATH) -> None:
        self.document: dict[str, Any] = json.loads(path.read_text())
        self._validators: dict[str, jsonschema.Draft7Validator] = {}
        self._lock = threading.Lock()

    def validator(self, definition: str) -> jsonschema.Draft7Validator:
        with self._lock:
            found = self._validators.get(definition)
            if found is None:
                schema = {"$ref": f"#/definitions/{definition}", "definitions": self.document["definitions"]}
                found = self._validators[definition] = jsonschema.Draft7Validator(schema)
            return found

    def request_definition(self, collection: str) -> str:
        """The run-on-demand body's definition for the path it was posted to."""
        return RUN_REQUESTS.get(collection, "RunOnDemandItemJobRequest")

    def check_response(self, value: Any, definition: str) -> Any:
        """``value`` when it matches ``definition``; an emulator bug (500) otherwise."""
        problems = self.problems(value, definition)
        if problems:
            raise FabricError(500, "EmulatorResponseInvalid", f"{definition}: " + "; ".join(problems[:3]))
        return value

    def problems(self, value: Any, definition: str) -> list[str]:
        """Every violation as ``at 'path': message`` (path ``executionData.parameters[0].type``)."""
        errors = sorted(self.validator(definition).iter_errors(value), key=lambda e: list(e.absolute_path))
        return [f"at '{_path(e.absolute_path) or '(body)'}': {e.message}" for e in errors]


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@built_once
def schema_book() -> SchemaBook:
    return SchemaBook()


# ============================================================================================ model


@dataclass
class Behavior:
    """How the instances of one item behave (all times in emulator seconds)."""

    not_started_seconds: float = 1.0
    run_seconds: float = 3.0
    outcome: str = "Completed"
    failure_reason: str = "The job instance failed."
    failure_code: str = "JobInstanceFailed"
    parameters: list[str] | None = None  # declared parameter names; None accepts any
    outcome_param: str | None = None  # a parameter whose value (Completed|Failed) overrides outcome
    dedupe: bool = True
    poll_after_seconds: int = 1
    cancel_seconds: float = 0.0

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Behavior:
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        reject_unknown_fields(raw, known, "behavior")
        behavior = cls(**raw)
        if behavior.outcome not in OUTCOMES:
            raise ValueError(f"behavior.outcome must be one of {', '.join(OUTCOMES)}")
        for name in ("not_started_seconds", "run_seconds", "cancel_seconds", "poll_after_seconds"):
            value = getattr(behavior, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"behavior.{name} must be a non-negative number")
        if behavior.parameters is not None and (
            not isinstance(behavior.parameters, list)
            or not all(isinstance(p, str) for p in behavior.parameters)
        ):
            raise ValueError("behavior.parameters must be a list of parameter names")
        return behavior


@dataclass
class Item:
    workspace: str
    item: str
    type: str
    display_name: str
    behavior: Behavior
    description: str = ""
    definition: dict[str, bytes] | None = None  # path -> bytes; None: never given one
    version: int = 0  # bumped by each definition update
    applied_version: int = 0  # the version an ApplyChanges (or ApplyChangesIfNeeded) published

    def public_json(self) -> dict[str, Any]:
        """The Item view of the REST API."""
        return {
            "id": self.item,
            "type": self.type,
            "displayName": self.display_name,
            "description": self.description,
            "workspaceId": self.workspace,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Item:
        reject_unknown_fields(raw, {"workspace", "item", "type", "displayName", "behavior"}, "item")
        workspace, item = raw.get("workspace"), raw.get("item")
        for name, value in (("workspace", workspace), ("item", item)):
            if not isinstance(value, str) or not GUID_RE.match(value):
                raise ValueError(f"item '{name}' must be a GUID (Fabric ids are UUIDs)")
        kind = raw.get("type")
        if kind not in ITEM_JOB_TYPES:
            raise ValueError(f"item 'type' must be one of {', '.join(ITEM_JOB_TYPES)}")
        return cls(
            workspace=str(workspace).lower(),
            item=str(item).lower(),
            type=str(kind),
            display_name=str(raw.get("displayName") or item),
            behavior=Behavior.from_json(raw.get("behavior")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "item": self.item,
            "type": self.type,
            "displayName": self.display_name,
            "behavior": asdict(self.behavior),
            "definitionParts": sorted(self.definition or {}),
            "version": self.version,
            "appliedVersion": self.applied_version,
        }


@dataclass
class Client:
    tenant: str
    client_id: str
    client_secret: str
    refresh_tokens: set[str] = field(default_factory=set)
    service_principal_allowed_for_dataflows: bool = False
    revoke_used_refresh_tokens: bool = False

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Client:
        known = {
            "tenant",
            "client_id",
            "client_secret",
            "refresh_tokens",
            "service_principal_allowed_for_dataflows",
            "revoke_used_refresh_tokens",
        }
        reject_unknown_fields(raw, known, "client")
        for name in ("tenant", "client_id", "client_secret"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise ValueError(f"client '{name}' is required")
        tokens = raw.get("refresh_tokens") or []
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("client 'refresh_tokens' must be a list of strings")
        return cls(
            tenant=raw["tenant"],
            client_id=raw["client_id"],
            client_secret=raw["client_secret"],
            refresh_tokens=set(tokens),
            service_principal_allowed_for_dataflows=bool(raw.get("service_principal_allowed_for_dataflows")),
            revoke_used_refresh_tokens=bool(raw.get("revoke_used_refresh_tokens")),
        )

    def to_json(self) -> dict[str, Any]:
        """Public view: secrets are not listed back."""
        return {
            "tenant": self.tenant,
            "client_id": self.client_id,
            "refresh_tokens": len(self.refresh_tokens),
            "service_principal_allowed_for_dataflows": self.service_principal_allowed_for_dataflows,
            "revoke_used_refresh_tokens": self.revoke_used_refresh_tokens,
        }


@dataclass
class Token:
    value: str
    tenant: str
    client_id: str
    app_only: bool
    issued_at: float
    expires_at: float


@dataclass
class Instance:
    id: str
    seq: int
    workspace: str
    item: str
    job_type: str  # canonical (Refresh -> Execute)
    requested_job_type: str
    created: float
    behavior: Behavior
    outcome: str
    parameters: dict[str, Any]
    body: Any
    client_id: str
    app_only: bool
    deduped: bool = False
    cancel_at: float | None = None
    definition_version: int = 0  # the item's applied definition version this run executes
    root_activity_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    failure_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def state_at(self, now: float) -> tuple[str, float | None]:
        """(status, end time or None) at emulator time ``now``."""
        if self.deduped:
            return "Deduped", self.created
        running_at = self.created + self.behavior.not_started_seconds
        ends_at = running_at + self.behavior.run_seconds
        if self.cancel_at is not None and self.cancel_at < ends_at and now >= self.cancel_at:
            return "Cancelled", self.cancel_at
        if now < running_at:
            return "NotStarted", None
        if now < ends_at:
            return "InProgress", None
        return self.outcome, ends_at

    def to_json(self, now: float) -> dict[str, Any]:
        """The ItemJobInstance view."""
        status, ended = self.state_at(now)
        failure = None
        if status == "Failed":
            failure = {
                "requestId": self.failure_request_id,
                "errorCode": self.behavior.failure_code,
                "message": self.behavior.failure_reason,
            }
        return {
            "id": self.id,
            "itemId": self.item,
            "jobType": self.requested_job_type,
            "invokeType": "Manual",
            "status": status,
            "rootActivityId": self.root_activity_id,
            "startTimeUtc": fabric_time(self.created),
            "endTimeUtc": fabric_time(ended) if ended is not None else None,
            "failureReason": failure,
        }

    def private_json(self, now: float) -> dict[str, Any]:
        return {
            **self.to_json(now),
            "workspace": self.workspace,
            "parameters": self.parameters,
            "body": self.body,
            "principal": {"client_id": self.client_id, "app_only": self.app_only},
            "behavior": asdict(self.behavior),
            "outcome": self.outcome,
            "deduped": self.deduped,
            "cancel_requested": self.cancel_at is not None,
            "definitionVersion": self.definition_version,
        }


def fabric_time(epoch_seconds: float) -> str:
    """Fabric's UTC timestamp form: ``2026-03-13T10:00:00.1234567`` (100 ns digits, no offset)."""
    return utc_timestamp(epoch_seconds, digits=7, suffix="")


# ============================================================================================ state


class FabricState(EmulatorState):
    """Items, job instances, app registrations and issued tokens, all guarded by ``lock``."""

    def __init__(
        self,
        *,
        items: Sequence[Item] = (),
        clients: Sequence[Client] = (),
        token_lifetime_seconds: float = 3600.0,
        dedupe: bool = True,
        page_size: int = 50,
        speed: float = 1.0,
    ) -> None:
        super().__init__(speed=speed)
        self.items: dict[tuple[str, str], Item] = {(i.workspace, i.item): i for i in items}
        self.clients: dict[tuple[str, str], Client] = {(c.tenant, c.client_id): c for c in clients}
        self.instances: dict[str, Instance] = {}
        self.tokens: dict[str, Token] = {}
        self.workspaces: dict[str, str] = {}  # id -> display name (others: named by their id)
        self.operations: dict[str, Any] = {}  # id -> fabric_items.Operation
        self.lro_seconds = 0.0
        self.token_lifetime_seconds = float(token_lifetime_seconds)
        self.dedupe = dedupe
        self.page_size = page_size
        self._seq = 0

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.instances.clear()

    def settings_json(self) -> dict[str, Any]:
        return {
            "token_lifetime_seconds": self.token_lifetime_seconds,
            "dedupe": self.dedupe,
            "page_size": self.page_size,
            "lro_seconds": self.lro_seconds,
        }

    def apply_settings(self, body: Any) -> None:
        known = {"token_lifetime_seconds", "dedupe", "page_size", "lro_seconds"}
        if not isinstance(body, dict) or not set(body) <= known:
            raise ValueError(f"settings body takes {', '.join(sorted(known))}")
        lro = body.get("lro_seconds", self.lro_seconds)
        if isinstance(lro, bool) or not isinstance(lro, int | float) or lro < 0:
            raise ValueError("lro_seconds must be a non-negative number")
        with self.lock:
            self.lro_seconds = float(lro)
        lifetime = body.get("token_lifetime_seconds", self.token_lifetime_seconds)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime < 0:
            raise ValueError("token_lifetime_seconds must be a non-negative number")
        page_size = body.get("page_size", self.page_size)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError("page_size must be a positive integer")
        dedupe = body.get("dedupe", self.dedupe)
        if not isinstance(dedupe, bool):
            raise ValueError("dedupe must be true or false")
        with self.lock:
            self.token_lifetime_seconds, self.page_size, self.dedupe = float(lifetime), page_size, dedupe

    # -- registrations -------------------------------------------------------------------------
    def register_item(self, item: Item) -> None:
        with self.lock:
            self.items[(item.workspace, item.item)] = item

    def register_client(self, client: Client) -> None:
        with self.lock:
            self.clients[(client.tenant, client.client_id)] = client

    # -- tokens --------------------------------------------------------------------------------
    def issue_token(self, client: Client, *, app_only: bool) -> Token:
        with self.lock:
            now = self.clock.now()
            token = Token(
                value="emu-at-" + secrets.token_urlsafe(24),
                tenant=client.tenant,
                client_id=client.client_id,
                app_only=app_only,
                issued_at=now,
                expires_at=now + self.token_lifetime_seconds,
            )
            self.tokens[token.value] = token
            return token

    def expire_tokens(self) -> int:
        with self.lock:
            now = self.clock.now()
            for token in self.tokens.values():
                token.expires_at = min(token.expires_at, now)
            return len(self.tokens)

    # -- instances -----------------------------------------------------------------------------
    def create_instance(self, item: Item, job_type: str, requested: str, **spec: Any) -> Instance:
        """A new instance; Deduped at once while another of the same item and job type is active."""
        with self.lock:
            now = self.clock.now()
            self._seq += 1
            active = any(
                other.workspace == item.workspace
                and other.item == item.item
                and other.job_type == job_type
                and other.state_at(now)[0] in ACTIVE
                for other in self.instances.values()
            )
            instance = Instance(
                id=str(uuid.uuid4()),
                seq=self._seq,
                workspace=item.workspace,
                item=item.item,
                job_type=job_type,
                requested_job_type=requested,
                created=now,
                behavior=Behavior(**asdict(item.behavior)),
                deduped=active and self.dedupe and item.behavior.dedupe,
                **spec,
            )
            self.instances[instance.id] = instance
            return instance

    def instance(self, workspace: str, item: str, instance_id: str) -> Instance:
        with self.lock:
            found = self.instances.get(instance_id.lower())
        if found is None or found.workspace != workspace or found.item != item:
            raise FabricError(404, "ItemJobInstanceNotFound", "The requested job instance was not found.")
        return found


# ======================================================================================= loading


def _load_list(source: Any, key: str) -> list[Mapping[str, Any]]:
    """A list of objects from a path (JSON or YAML), a list, ``{key: [...]}`` or one object."""
    if isinstance(source, str | Path):
        text = Path(source).read_text()
        try:
            source = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            source = yaml.safe_load(text)
    if isinstance(source, Mapping) and key in source:
        source = source[key]
    if isinstance(source, Mapping):
        source = [source]
    if not isinstance(source, list) or not all(isinstance(x, Mapping) for x in source):
        raise ValueError(f"expected a {key[:-1]} object, a list of them or {{'{key}': [...]}}")
    return list(source)


def load_items(source: Any) -> list[Item]:
    return [Item.from_json(raw) for raw in _load_list(source, "items")]


def load_clients(source: Any) -> list[Client]:
    return [Client.from_json(raw) for raw in _load_list(source, "clients")]


# ========================================================================================= helpers


def _state() -> FabricState:
    state: FabricState = state_of(current_app)
    return state


def _fabric_fault(operation: str) -> Callable[[FaultRule], Response]:
    def render(rule: FaultRule) -> Response:
        status = rule.status or 500
        table = RUN_FAULT_CODES if operation == "jobs.run" and status in RUN_FAULT_CODES else FAULT_CODES
        code, message = table.get(status, ("UnknownError", "An error occurred."))
        retriable = status == 429 or status >= 500
        return FabricError(status, code, rule.message or message, retriable=retriable).response()

    return render


def _entra_fault(rule: FaultRule) -> Response:
    status = rule.status or 500
    error, description = ENTRA_FAULTS.get(status, ("server_error", "AADSTS90015: An error occurred."))
    code, sep, rest = (rule.message or "").partition(": ")
    if sep and re.fullmatch(r"[a-z_]+", code):  # "temporarily_unavailable: AADSTS50196: ..." sets the error
        return EntraError(status, code, rest).response()
    return EntraError(status, error, rule.message or description).response()


def _run(operation: str, attrs: Mapping[str, Any], action: Callable[[], Any]) -> Response:
    render = _entra_fault if operation == "token" else _fabric_fault(operation)
    return _state().faults.run(operation, attrs, lambda: guarded(action), render)


def _authenticate(state: FabricState) -> Token:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common"'}
    if scheme.lower() != "bearer" or not value.strip():
        raise FabricError(401, "Unauthorized", "The request has no bearer access token.", headers=challenge)
    with state.lock:
        token = state.tokens.get(value.strip())
        now = state.clock.now()
    if token is None:
        raise FabricError(401, "Unauthorized", "The access token is not valid.", headers=challenge)
    if now >= token.expires_at:
        raise FabricError(
            401,
            "TokenExpired",
            "Access token has expired, resubmit with a new access token.",
            headers=challenge,
        )
    return token


def _item(state: FabricState, workspace: str, item_id: str) -> Item:
    with state.lock:
        item = state.items.get((workspace.lower(), item_id.lower()))
    if item is None:
        raise FabricError(404, "ItemNotFound", "Requested item ID not found.")
    return item


def _canonical_job_type(job_type: str) -> str:
    return JOB_TYPE_ALIASES.get(job_type.lower(), job_type)


def _parse_body() -> Any:
    try:
        return json_body()
    except ValueError as exc:
        raise _invalid(f"The request body is not valid JSON: {exc}") from exc


def run_parameters(job_type: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The name -> value parameters of a run request body, whatever its job type's shape."""
    top = body.get("parameters")
    if isinstance(top, list):  # today's Parameter list: {name, type, value}
        return {str(p.get("name")): p.get("value") for p in top if isinstance(p, Mapping)}
    data = body.get("executionData") or {}
    raw = data.get("parameters") if isinstance(data, Mapping) else None
    if isinstance(raw, list):
        return {str(p.get("parameterName")): p.get("value") for p in raw if isinstance(p, Mapping)}
    if isinstance(raw, Mapping):
        if job_type == "RunNotebook":
            return {str(k): (v.get("value") if isinstance(v, Mapping) else v) for k, v in raw.items()}
        return {str(k): v for k, v in raw.items()}
    return {}


def _declared_parameters(item: Item) -> list[dict[str, Any]] | None:
    """A dataflow's public parameters, from its definition's mashup.pq (None: no definition)."""
    if item.type != "Dataflow" or not item.definition or "mashup.pq" not in item.definition:
        return None
    return fabric_mashup.parameters(item.definition["mashup.pq"].decode("utf-8", errors="replace"))


_JSON_TYPES: Mapping[str, tuple[type, ...]] = {
    "Boolean": (bool,),
    "Integer": (int,),
    "Number": (int, float),
}


def _check_typed(declared: list[dict[str, Any]], parameters: Mapping[str, Any]) -> None:
    """400 InvalidParameter for a name the dataflow does not declare or a value not of its type."""
    by_name = {d["name"]: d for d in declared}
    problems = []
    for name, value in parameters.items():
        found = by_name.get(name)
        if found is None:
            problems.append(f"unknown parameter '{name}'")
            continue
        kinds = _JSON_TYPES.get(found["type"], (str,))
        if not isinstance(value, kinds) or (found["type"] != "Boolean" and isinstance(value, bool)):
            problems.append(f"parameter '{name}' must be a {found['type']} value")
    if problems:
        raise FabricError(
            400,
            "InvalidParameter",
            "; ".join(problems) + ".",
            details=[{"errorCode": "InvalidParameter", "message": p} for p in problems],
        )


def _location(workspace: str, item: str, instance_id: str) -> str:
    return f"{request.host_url}v1/workspaces/{workspace}/items/{item}/jobs/instances/{instance_id}"


# ====================================================================================== protocol


def _run_job(
    workspace: str, item_id: str, job_type_raw: str | None, *, collection: str = "items"
) -> Response:
    state = _state()
    token = _authenticate(state)
    item = _item(state, workspace, item_id)
    if collection != "items" and item.type != COLLECTION_TYPES[collection]:
        raise FabricError(404, "ItemNotFound", f"Requested {COLLECTION_TYPES[collection]} ID not found.")
    if not job_type_raw:
        raise _invalid("The jobType is required.")
    job_type = _canonical_job_type(job_type_raw)
    if job_type not in ITEM_JOB_TYPES[item.type]:
        raise FabricError(400, "InvalidJobType", f"The requested job type '{job_type_raw}' is invalid.")
    if item.type == "Dataflow" and token.app_only:
        with state.lock:
            client = state.clients.get((token.tenant, token.client_id))
        if client is None or not client.service_principal_allowed_for_dataflows:
            raise FabricError(
                403,
                "PrincipalTypeNotSupported",
                "The caller identity type is not supported: service principals and managed identities "
                "cannot execute dataflows; use a delegated user token.",
            )
    body = _parse_body()
    book = schema_book()
    # executionData: null is what clients send (and the spec's examples show) for "none"
    checked = body
    if isinstance(body, dict) and "executionData" in body and body["executionData"] is None:
        checked = {k: v for k, v in body.items() if k != "executionData"}
    problems = book.problems(checked, book.request_definition(collection))
    if problems:
        raise _invalid(
            "Invalid request payload " + problems[0],
            [{"errorCode": "InvalidInput", "message": p} for p in problems],
        )
    if body.get("parameters") is not None and (item.type == "Dataflow" or job_type == "ApplyChanges"):
        raise FabricError(
            400, "FeatureNotAvailable", "Parameter is not allowed for this item type or this item job type"
        )
    parameters = run_parameters(job_type, body)
    if job_type == "Execute" and collection == "items":
        # The spec documents executionData.parameters only on the dataflow path: the generic path
        # runs the dataflow with its default parameters.
        parameters = {}
    behavior = item.behavior
    typed = _declared_parameters(item)
    if typed is not None and job_type == "Execute":
        _check_typed(typed, parameters)
    elif behavior.parameters is not None:
        names = set(behavior.parameters) | ({behavior.outcome_param} if behavior.outcome_param else set())
        unknown = sorted(set(parameters) - names)
        if unknown:
            raise FabricError(
                400,
                "InvalidParameter",
                f"Parameter(s) not defined in the item: {', '.join(unknown)}.",
                details=[
                    {"errorCode": "InvalidParameter", "message": f"unknown parameter '{n}'"} for n in unknown
                ],
            )
    outcome = behavior.outcome
    if behavior.outcome_param and behavior.outcome_param in parameters:
        wanted = str(parameters[behavior.outcome_param])
        if wanted not in OUTCOMES:
            raise FabricError(
                400, "InvalidParameter", f"{behavior.outcome_param} must be one of {', '.join(OUTCOMES)}."
            )
        outcome = wanted
    data = body.get("executionData") if isinstance(body.get("executionData"), Mapping) else {}
    with state.lock:
        if job_type == "ApplyChanges" or (
            job_type == "Execute" and data.get("executeOption") == "ApplyChangesIfNeeded"
        ):
            item.applied_version = item.version
        version = item.applied_version
    instance = state.create_instance(
        item,
        job_type,
        job_type_raw,
        definition_version=version,
        outcome=outcome,
        parameters=parameters,
        body=body,
        client_id=token.client_id,
        app_only=token.app_only,
    )
    if job_type == "ApplyChanges":  # publishing a definition is instant here: done at once
        with state.lock:
            instance.behavior = Behavior(
                not_started_seconds=0, run_seconds=0, poll_after_seconds=0, dedupe=False
            )
            instance.outcome = "Completed"
    response = Response(status=202)
    response.headers["Location"] = _location(item.workspace, item.item, instance.id)
    response.headers["Retry-After"] = str(int(instance.behavior.poll_after_seconds))
    return response


def _get_instance(workspace: str, item_id: str, instance_id: str) -> Response:
    state = _state()
    _authenticate(state)
    item = _item(state, workspace, item_id)
    instance = state.instance(item.workspace, item.item, instance_id)
    with state.lock:
        doc = instance.to_json(state.clock.now())
    response = jsonify(schema_book().check_response(doc, "ItemJobInstance"))
    if doc["status"] in ACTIVE:
        response.headers["Retry-After"] = str(int(instance.behavior.poll_after_seconds))
    return response


def _decode_token(token: str) -> int:
    position = decode_page_token(token)
    if position is None:
        raise _invalid("The continuationToken is not valid.")
    return position


def _list_instances(workspace: str, item_id: str) -> dict[str, Any]:
    state = _state()
    _authenticate(state)
    item = _item(state, workspace, item_id)
    token = request.args.get("continuationToken")
    cursor = _decode_token(token) if token else None
    with state.lock:
        now = state.clock.now()
        mine = sorted(
            (i for i in state.instances.values() if i.workspace == item.workspace and i.item == item.item),
            key=lambda i: i.seq,
            reverse=True,
        )
        if cursor is not None:
            mine = [i for i in mine if i.seq < cursor]
        page, rest = mine[: state.page_size], mine[state.page_size :]
        result: dict[str, Any] = {"value": [i.to_json(now) for i in page]}
    if rest:
        next_token = encode_page_token(page[-1].seq)
        result["continuationToken"] = next_token
        result["continuationUri"] = (
            f"{request.host_url}v1/workspaces/{item.workspace}/items/{item.item}/jobs/instances"
            f"?continuationToken={quote(next_token)}"
        )
    return dict(schema_book().check_response(result, "ItemJobInstances"))


def _cancel_instance(workspace: str, item_id: str, instance_id: str) -> Response:
    state = _state()
    _authenticate(state)
    item = _item(state, workspace, item_id)
    instance = state.instance(item.workspace, item.item, instance_id)
    with state.lock:
        now = state.clock.now()
        status, _ = instance.state_at(now)
        if status not in ACTIVE:
            raise FabricError(
                400,
                "JobAlreadyCompleted",
                "Requested cancellation can not be processed as job instance run has completed.",
            )
        if instance.cancel_at is None:
            instance.cancel_at = now + instance.behavior.cancel_seconds
    response = Response(status=202)
    response.headers["Location"] = _location(item.workspace, item.item, instance.id)
    response.headers["Retry-After"] = str(int(instance.behavior.poll_after_seconds))
    return response


def _form() -> dict[str, str]:
    raw = request.get_data(cache=True).decode("utf-8", errors="replace")
    return dict(parse_qsl(raw, keep_blank_values=True))


def _issue_token(tenant: str) -> Response:
    state = _state()
    form = _form()
    grant = form.get("grant_type")
    client_id = form.get("client_id")
    if not grant:
        raise EntraError(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
        )
    if grant not in ("client_credentials", "refresh_token"):
        raise EntraError(
            400,
            "unsupported_grant_type",
            f"AADSTS70003: The app requested an unsupported grant type '{grant}'.",
        )
    if not client_id:
        raise EntraError(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        )
    if FABRIC_SCOPE not in form.get("scope", "").split():
        raise EntraError(
            400,
            "invalid_scope",
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
        )
    with state.lock:
        client = state.clients.get((tenant, client_id))
    if client is None:
        raise EntraError(
            400,
            "unauthorized_client",
            f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
        )
    secret = form.get("client_secret")
    bad_secret = EntraError(
        401,
        "invalid_client",
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the "
        f"client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
    )
    new_refresh: str | None = None
    if grant == "client_credentials":
        if not secret:
            raise EntraError(
                401,
                "invalid_client",
                "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if secret != client.client_secret:
            raise bad_secret
        token = state.issue_token(client, app_only=True)
    else:
        refresh = form.get("refresh_token")
        if not refresh:
            raise EntraError(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'refresh_token'.",
            )
        if secret is not None and secret != client.client_secret:
            raise bad_secret
        with state.lock:
            if refresh not in client.refresh_tokens:
                raise EntraError(
                    400,
                    "invalid_grant",
                    "AADSTS70000: The provided value for the 'refresh_token' is not valid or has been revoked.",
                )
            if "offline_access" in form.get("scope", "").split():  # Entra returns one only then
                new_refresh = "emu-rt-" + secrets.token_urlsafe(24)
                client.refresh_tokens.add(new_refresh)
                if client.revoke_used_refresh_tokens:
                    client.refresh_tokens.discard(refresh)
        token = state.issue_token(client, app_only=False)
    lifetime = round(token.expires_at - token.issued_at)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": FABRIC_SCOPE,
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token.value,
    }
    if new_refresh:
        body["refresh_token"] = new_refresh
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _register_protocol_routes(app: Flask) -> None:
    def run_attrs(workspace: str, item: str, job_type: str | None) -> dict[str, Any]:
        parameters = run_parameters(_canonical_job_type(job_type or ""), peek_json_body())
        return {"workspace": workspace, "item": item, "jobType": job_type, "parameters": parameters}

    def instance_attrs(workspace: str, item: str, instance_id: str) -> dict[str, Any]:
        return {"workspace": workspace, "item": item, "instanceId": instance_id}

    @app.post(f"{API_PREFIX}/items/<item>/jobs/<job_type>/instances")
    def run_path_form(workspace: str, item: str, job_type: str) -> Response:
        return _run(
            "jobs.run", run_attrs(workspace, item, job_type), lambda: _run_job(workspace, item, job_type)
        )

    @app.post(f"{API_PREFIX}/items/<item>/jobs/instances")
    def run_query_form(workspace: str, item: str) -> Response:
        job_type = request.args.get("jobType")
        return _run(
            "jobs.run", run_attrs(workspace, item, job_type), lambda: _run_job(workspace, item, job_type)
        )

    @app.post(
        f"{API_PREFIX}/<any(dataflows, dataPipelines, notebooks):collection>/<item>/jobs/execute/instances"
    )
    def run_execute(workspace: str, collection: str, item: str) -> Response:
        job_type = EXECUTE_JOB[collection]
        return _run(
            "jobs.run",
            run_attrs(workspace, item, job_type),
            lambda: _run_job(workspace, item, job_type, collection=collection),
        )

    @app.post(f"{API_PREFIX}/dataflows/<item>/jobs/applyChanges/instances")
    def run_apply_changes(workspace: str, item: str) -> Response:
        return _run(
            "jobs.run",
            run_attrs(workspace, item, "ApplyChanges"),
            lambda: _run_job(workspace, item, "ApplyChanges", collection="dataflows"),
        )

    @app.post(f"{API_PREFIX}/dataflows/<item>/jobs/instances")
    def run_dataflow_query_form(workspace: str, item: str) -> Response:
        job_type = request.args.get("jobType")
        return _run(
            "jobs.run",
            run_attrs(workspace, item, job_type),
            lambda: _run_job(workspace, item, job_type, collection="dataflows"),
        )

    @app.get(f"{API_PREFIX}/items/<item>/jobs/instances")
    def list_instances(workspace: str, item: str) -> Response:
        return _run(
            "jobs.list", {"workspace": workspace, "item": item}, lambda: _list_instances(workspace, item)
        )

    @app.get(f"{API_PREFIX}/items/<item>/jobs/instances/<instance_id>")
    def get_instance(workspace: str, item: str, instance_id: str) -> Response:
        return _run(
            "jobs.get",
            instance_attrs(workspace, item, instance_id),
            lambda: _get_instance(workspace, item, instance_id),
        )

    @app.post(f"{API_PREFIX}/items/<item>/jobs/instances/<instance_id>/cancel")
    def cancel_instance(workspace: str, item: str, instance_id: str) -> Response:
        return _run(
            "jobs.cancel",
            instance_attrs(workspace, item, instance_id),
            lambda: _cancel_instance(workspace, item, instance_id),
        )

    @app.post("/<tenant>/oauth2/v2.0/token")
    def token(tenant: str) -> Response:
        form = _form()
        attrs = {"tenant": tenant, "client_id": form.get("client_id"), "grant_type": form.get("grant_type")}
        return _run("token", attrs, lambda: _issue_token(tenant))

    # Function-local: fabric_items builds on this module's helpers (it imports this module).
    from local.emulators import fabric_items

    fabric_items.register_routes(app)
    install_route_errors(app, _route_error)


def _route_error(code: int) -> Response:
    """404/405 outside any route, as Fabric's ErrorResponse."""
    if code == 404:
        return FabricError(
            404, "EntityNotFound", f"The requested URL {request.path} was not found."
        ).response()
    return FabricError(
        405, "MethodNotAllowed", f"Method {request.method} is not allowed for {request.path}."
    ).response()


def _register_control_routes(app: Flask, state: FabricState) -> None:
    install_registry_routes(
        app, state, "items", load=load_items, store=state.register_item, registered=state.items.values
    )
    install_registry_routes(
        app, state, "clients", load=load_clients, store=state.register_client, registered=state.clients.values
    )

    @app.post("/_emulator/workspaces")
    def workspaces_register() -> Response:
        body = json_body()
        entries = body if isinstance(body, list) else [body]
        for entry in entries:
            if (
                not isinstance(entry, dict)
                or set(entry) != {"id", "displayName"}
                or not GUID_RE.match(str(entry["id"]))
                or not isinstance(entry["displayName"], str)
            ):
                return control_error('a workspace is {"id": GUID, "displayName": name}')
        with state.lock:
            for entry in entries:
                state.workspaces[str(entry["id"]).lower()] = entry["displayName"]
            return jsonify({"workspaces": dict(state.workspaces)})

    @app.post("/_emulator/tokens/expire")
    def tokens_expire() -> Response:
        return jsonify({"expired": state.expire_tokens()})

    @app.get("/_emulator/tokens")
    def tokens_list() -> Response:
        with state.lock:
            now = state.clock.now()
            listed = [
                {
                    "tenant": t.tenant,
                    "client_id": t.client_id,
                    "app_only": t.app_only,
                    "expires_in": round(t.expires_at - now, 3),
                    "expired": now >= t.expires_at,
                }
                for t in state.tokens.values()
            ]
        return jsonify({"tokens": listed})

    @app.get("/_emulator/instances")
    def instances() -> Response:
        with state.lock:
            now = state.clock.now()
            ordered = sorted(state.instances.values(), key=lambda i: i.seq)
            return jsonify({"instances": [i.private_json(now) for i in ordered]})

    @app.route("/_emulator/settings", methods=["GET", "POST"])
    def settings() -> Response:
        if request.method == "POST":
            try:
                state.apply_settings(json_body())
            except ValueError as exc:
                return control_error(str(exc))
        return jsonify(state.settings_json())


# ======================================================================================== serving


def create_app(
    *,
    items: Any = None,
    clients: Any = None,
    workspaces: Any = None,
    token_lifetime_seconds: float = 3600.0,
    dedupe: bool = True,
    page_size: int = 50,
    speed: float = 1.0,
) -> Flask:
    """Build the emulator app; its :class:`FabricState` is ``app.extensions["emulator_state"]``."""
    schema_book()  # fail fast if the bundled schemas are missing or broken
    state = FabricState(
        items=load_items(items) if items is not None else (),
        clients=load_clients(clients) if clients is not None else (),
        token_lifetime_seconds=token_lifetime_seconds,
        dedupe=dedupe,
        page_size=page_size,
        speed=speed,
    )
    for entry in workspaces or ():
        state.workspaces[str(entry["id"]).lower()] = str(entry["displayName"])
    return emulator_app("fabric_emulator", state, _register_protocol_routes, _register_control_routes)


def serve(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ServerHandle:
    """Start the emulator in a daemon thread (``port=0``: a free port); ``kwargs`` go to create_app."""
    return serve_app(create_app, host, port, **kwargs)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", help="JSON or YAML file of items to register at start")
    parser.add_argument("--clients", help="JSON or YAML file of app registrations (clients) to register")
    parser.add_argument("--token-lifetime", type=float, default=3600.0, help="token lifetime in seconds")
    parser.add_argument("--no-dedupe", action="store_true", help="let runs of a busy item run concurrently")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        argv,
        "Local emulator of the Microsoft Fabric job scheduler API and the Entra ID token endpoint.",
        lambda args: create_app(
            items=args.items,
            clients=args.clients,
            token_lifetime_seconds=args.token_lifetime,
            dedupe=not args.no_dedupe,
            speed=args.speed,
        ),
        _add_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(main())
