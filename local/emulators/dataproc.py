"""Local emulator of the Dataproc Serverless batches REST API v1, for tests and the local stack.

It follows the ``dataproc v1`` discovery document bundled with google-api-python-client, revision
20261023 (``googleapiclient.discovery_cache.get_static_doc("dataproc", "v1")``), which also
validates every request body. Base URL = server root:

- ``POST /v1/projects/{p}/locations/{l}/batches?batchId=&requestId=`` body ``Batch`` -> an
  ``Operation`` ``{name: projects/p/regions/l/operations/ID, metadata: {@type: ...BatchOperationMetadata,
  batch, batchUuid, createTime, description, operationType: BATCH, labels}}``. ``batchId``: 4 to 63
  of ``[a-z0-9-]`` (a generated one when absent); a batch id already used in that project and
  location, in any state, answers 409 ALREADY_EXISTS; a repeated ``requestId`` (letters, digits, ``_``,
  ``-``, at most 40) answers the first create's operation again. The batch must set exactly one of
  ``pysparkBatch``, ``sparkBatch``, ``sparkRBatch``, ``sparkSqlBatch`` with its required main field.
  Labels: at most 32, keys ``[a-z][a-z0-9_-]{0,62}``, values ``[a-z0-9_-]{0,63}``.
- ``GET .../batches/{id}`` -> ``Batch`` (404 NOT_FOUND when absent); ``GET .../batches?pageSize=
  &pageToken=`` newest first (``filter`` and ``orderBy`` other than ``create_time desc`` are refused
  with 400: the emulator does not evaluate them); ``DELETE .../batches/{id}`` -> ``{}`` for a
  finished batch, 400 FAILED_PRECONDITION for one still pending or running.
- ``GET /v1/projects/{p}/regions/{l}/operations/{op}`` -> the ``Operation`` (``done`` once the batch
  finished: ``response`` the Batch when it SUCCEEDED, ``error`` otherwise);
  ``POST .../operations/{op}:cancel`` -> ``{}``: the batch goes CANCELLING, then CANCELLED
  ``cancel_seconds`` later; a finished batch answers 400 FAILED_PRECONDITION.

Unknown fields at any depth, or wrongly typed values, answer 400 INVALID_ARGUMENT naming the field
path as Google's JSON transcoder does; output-only fields (``state``, ``name``...) sent by a client are
ignored, as the service does. Errors use Google's JSON shape ``{"error": {"code", "message", "status"}}``.

Batches follow the emulator clock: PENDING at create, RUNNING after ``pending_seconds``, then SUCCEEDED
or FAILED (``stateMessage`` = ``state_message``) after ``run_seconds`` more. How a batch behaves is
registered per *main file* (``mainPythonFileUri``, ``mainJarFileUri``, ``mainClass``, ``mainRFileUri``
or ``queryFileUri``) with ``POST /_emulator/mains``, ``--mains FILE`` or ``create_app(mains=...)``::

    {"main": "gs://bucket/jobs/etl.py",
     "behavior": {"pending_seconds": 1, "run_seconds": 3, "outcome": "SUCCEEDED" | "FAILED",
                  "state_message": "...", "cancel_seconds": 2, "outcome_arg": null | "--simulateOutcome"}}

``outcome_arg`` names a driver argument (``--simulateOutcome=FAILED``) that overrides the outcome of
that one batch. A batch whose main file is not registered is accepted and then FAILS once it would
run, with a "not found" ``stateMessage`` (as the service does when the driver cannot be read).

Control API (besides the common ``/_emulator/reset|requests|faults|clock|google-tokens``):
``GET|POST /_emulator/mains``, ``GET /_emulator/batches`` (every batch with its bookkeeping: request
id, behavior, timeline). Reset forgets batches, faults, requests and tokens; it keeps the mains.
Fault operations: ``batches.create``, ``batches.get``, ``batches.list``, ``batches.delete``,
``operations.get``, ``operations.cancel`` or ``*``; ``match`` keys: ``project``, ``location``,
``batchId``, ``main``.
"""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, jsonify, request

from local.emulators.base import (
    BodiesSource,
    EmulatorState,
    FaultRule,
    ProtocolError,
    ServerHandle,
    built_once,
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

DISCOVERY_REVISION = "20261023"
PROTO_PACKAGE = "type.googleapis.com/google.cloud.dataproc.v1"
BATCHES = "/v1/projects/<project>/locations/<location>/batches"
OPERATIONS = "/v1/projects/<project>/regions/<region>/operations"

WORKLOAD_FIELDS = {
    "pysparkBatch": "mainPythonFileUri",
    "sparkBatch": None,  # mainJarFileUri or mainClass
    "sparkRBatch": "mainRFileUri",
    "sparkSqlBatch": "queryFileUri",
}
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
BATCH_ID_RE = re.compile(r"[a-z0-9-]{4,63}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_LABELS = 32
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 1000

FAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    409: "Entity already exists.",
    429: "Quota exceeded for quota metric 'Batch create requests' of service 'dataproc.googleapis.com'.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}


class ApiError(ProtocolError):
    """An error answered with Google's JSON error body (``field_path`` adds a BadRequest detail)."""

    def __init__(self, code: int, message: str, status: str | None = None, field_path: str | None = None):
        super().__init__(message)
        self.code, self.message, self.status, self.field_path = code, message, status, field_path

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
def validator() -> DiscoveryValidator:
    """The validator over the bundled official ``dataproc v1`` discovery document (loaded once);
    output-only fields a client echoes back are left out, as the service ignores them."""
    return DiscoveryValidator(
        bundled_document("dataproc", "v1"),
        proto_package=PROTO_PACKAGE,
        invalid=invalid_argument,
        drop_read_only=True,
    )


# ============================================================================= main files


@dataclass(frozen=True)
class Behavior:
    """How batches running one main file behave on the emulator clock."""

    pending_seconds: float = 1.0
    run_seconds: float = 3.0
    outcome: str = "SUCCEEDED"
    state_message: str = "Job failed with message [The driver exited with a non-zero status]."
    cancel_seconds: float = 2.0
    outcome_arg: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> Behavior:
        body = dict(body or {})
        reject_unknown_fields(body, cls.__dataclass_fields__, "behavior")
        for name in ("pending_seconds", "run_seconds", "cancel_seconds"):
            value = body.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"behavior.{name} must be a number of seconds >= 0")
        behavior = cls(**body)
        if behavior.outcome not in ("SUCCEEDED", "FAILED"):
            raise ValueError("behavior.outcome must be SUCCEEDED or FAILED")
        return behavior

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class MainFile:
    """A registered main file (or Spark main class) and the behavior of batches that run it."""

    main: str
    behavior: Behavior

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> MainFile:
        if not isinstance(body, Mapping):
            raise ValueError("a main entry must be an object")
        reject_unknown_fields(body, ("main", "behavior"), "main")
        main = body.get("main")
        if not isinstance(main, str) or not main:
            raise ValueError("main: a gs:// URI (or a Spark main class) is required")
        return cls(main, Behavior.from_json(body.get("behavior")))

    def to_json(self) -> dict[str, Any]:
        return {"main": self.main, "behavior": self.behavior.to_json()}


def load_mains(source: BodiesSource) -> list[MainFile]:
    return [MainFile.from_json(body) for body in load_bodies(source, "mains")]


# ============================================================================= batches


@dataclass
class StateEntry:
    """One point of a batch's timeline: ``state`` holds from ``at`` (emulator seconds)."""

    at: float
    state: str
    message: str = ""


@dataclass
class Batch:
    """A batch and its private bookkeeping (never returned as-is by the protocol)."""

    project: str
    location: str
    batch_id: str
    uuid: str
    operation_id: str
    request_id: str | None
    body: dict[str, Any]
    main: str
    behavior: Behavior
    created: float
    seq: int
    timeline: list[StateEntry] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/batches/{self.batch_id}"

    @property
    def operation(self) -> str:
        return f"projects/{self.project}/regions/{self.location}/operations/{self.operation_id}"

    def entry_at(self, now: float) -> StateEntry:
        return entry_at(self.timeline, now)


def _workload(body: Mapping[str, Any]) -> tuple[str, str]:
    """(workload field, main) of a create body; raises 400 unless exactly one workload is set."""
    given = [name for name in (*WORKLOAD_FIELDS, "pysparkNotebookBatch") if body.get(name) is not None]
    if len(given) != 1:
        raise invalid_argument(
            "Exactly one of pyspark_batch, spark_batch, spark_r_batch or spark_sql_batch must be set.",
            "batch",
        )
    (kind,) = given
    if kind == "pysparkNotebookBatch":
        raise ApiError(501, "The emulator does not run notebook batches.", "UNIMPLEMENTED")
    config = body[kind]
    required = WORKLOAD_FIELDS[kind]
    if required is None:
        mains = [k for k in ("mainJarFileUri", "mainClass") if config.get(k)]
        if len(mains) != 1:
            raise invalid_argument(
                "Exactly one of main_jar_file_uri and main_class must be set.", "batch.spark_batch"
            )
        return kind, str(config[mains[0]])
    if not config.get(required):
        path = f"batch.{snake_case(kind)}.{snake_case(required)}"
        raise invalid_argument(f"{path} is required.", path)
    return kind, str(config[required])


def check_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise invalid_argument(f"Too many labels: {len(labels)} (at most {MAX_LABELS}).", "batch.labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise invalid_argument(f"Invalid label key {key!r}.", "batch.labels")
        if not LABEL_VALUE_RE.fullmatch(value):
            raise invalid_argument(f"Invalid value {value!r} for label {key!r}.", "batch.labels")


def _outcome(behavior: Behavior, body: Mapping[str, Any], kind: str) -> str:
    if behavior.outcome_arg:
        prefix = f"{behavior.outcome_arg}="
        for arg in body[kind].get("args") or []:
            if (
                isinstance(arg, str)
                and arg.startswith(prefix)
                and arg[len(prefix) :] in ("SUCCEEDED", "FAILED")
            ):
                return arg[len(prefix) :]
    return behavior.outcome


class DataprocState(EmulatorState):
    """Mains and batches; every mutation happens under ``self.lock``."""

    def __init__(self, mains: Sequence[MainFile] = (), *, speed: float = 1.0) -> None:
        super().__init__(speed=speed)
        self.mains: dict[str, MainFile] = {m.main: m for m in mains}
        self.batches: dict[tuple[str, str, str], Batch] = {}
        self.operations: dict[tuple[str, str, str], Batch] = {}
        self.request_ids: dict[tuple[str, str, str], Batch] = {}
        self._seq = 0

    def reset(self) -> None:
        with self.lock:
            super().reset()
            self.batches.clear()
            self.operations.clear()
            self.request_ids.clear()

    def register_main(self, main: MainFile) -> None:
        with self.lock:
            self.mains[main.main] = main

    def create(
        self, project: str, location: str, batch_id: str, request_id: str | None, body: dict[str, Any]
    ) -> Batch:
        kind, main = _workload(body)
        check_labels(body.get("labels") or {})
        with self.lock:
            if request_id and (earlier := self.request_ids.get((project, location, request_id))):
                return earlier
            if (project, location, batch_id) in self.batches:
                raise ApiError(
                    409,
                    f"Batch projects/{project}/locations/{location}/batches/{batch_id} already exists",
                    "ALREADY_EXISTS",
                )
            registered = self.mains.get(main)
            behavior = registered.behavior if registered else Behavior()
            now = self.clock.now()
            self._seq += 1
            batch = Batch(
                project, location, batch_id, str(uuid.uuid4()), uuid.uuid4().hex, request_id,
                body, main, behavior, now, self._seq,
            )  # fmt: skip
            running = now + behavior.pending_seconds
            batch.timeline = [StateEntry(now, "PENDING"), StateEntry(running, "RUNNING")]
            end = running + behavior.run_seconds
            if registered is None:
                batch.timeline[1:] = [StateEntry(running, "FAILED", f"Main file not found: {main}")]
            elif _outcome(behavior, body, kind) == "FAILED":
                batch.timeline.append(StateEntry(end, "FAILED", behavior.state_message))
            else:
                batch.timeline.append(StateEntry(end, "SUCCEEDED"))
            self.batches[(project, location, batch_id)] = batch
            self.operations[(project, location, batch.operation_id)] = batch
            if request_id:
                self.request_ids[(project, location, request_id)] = batch
            return batch

    def find(self, project: str, location: str, batch_id: str) -> Batch:
        with self.lock:
            batch = self.batches.get((project, location, batch_id))
        if batch is None:
            raise ApiError(
                404,
                f"Not found: Batch projects/{project}/locations/{location}/batches/{batch_id}",
                "NOT_FOUND",
            )
        return batch

    def find_operation(self, project: str, region: str, operation_id: str) -> Batch:
        with self.lock:
            batch = self.operations.get((project, region, operation_id))
        if batch is None:
            raise ApiError(
                404,
                f"Not found: Operation projects/{project}/regions/{region}/operations/{operation_id}",
                "NOT_FOUND",
            )
        return batch

    def cancel(self, batch: Batch) -> None:
        with self.lock:
            now = self.clock.now()
            current = batch.entry_at(now)
            if current.state in TERMINAL_STATES or current.state == "CANCELLING":
                raise failed_precondition(f"Cannot cancel batch {batch.name} in state {current.state}.")
            cancelled = now + batch.behavior.cancel_seconds
            batch.timeline = [e for e in batch.timeline if e.at <= now]
            batch.timeline += [StateEntry(now, "CANCELLING"), StateEntry(cancelled, "CANCELLED")]

    def delete(self, batch: Batch) -> None:
        with self.lock:
            state = batch.entry_at(self.clock.now()).state
            if state not in TERMINAL_STATES:
                raise failed_precondition(f"Cannot delete batch {batch.name} in state {state}.")
            del self.batches[(batch.project, batch.location, batch.batch_id)]


def batch_json(batch: Batch, now: float) -> dict[str, Any]:
    """The protocol view of ``batch`` at emulator time ``now``."""
    current = batch.entry_at(now)
    reached = [e for e in batch.timeline if e.at <= now]
    body: dict[str, Any] = {
        "name": batch.name,
        "uuid": batch.uuid,
        "createTime": rfc3339(batch.created),
        **{k: v for k, v in batch.body.items() if k != "runtimeConfig"},
        "runtimeConfig": {"version": "2.2", **(batch.body.get("runtimeConfig") or {})},
        "state": current.state,
        "stateTime": rfc3339(current.at),
        "creator": "local-user@emulator.local",
        "operation": batch.operation,
    }
    if current.message:
        body["stateMessage"] = current.message
    history = [
        {
            "state": e.state,
            "stateStartTime": rfc3339(e.at),
            **({"stateMessage": e.message} if e.message else {}),
        }
        for e in reached[:-1]
    ]
    if history:
        body["stateHistory"] = history
    if current.state != "PENDING":
        body["runtimeInfo"] = {
            "outputUri": f"gs://dataproc-staging-{batch.location}/{batch.uuid}/driveroutput"
        }
    return body


def operation_json(batch: Batch, now: float) -> dict[str, Any]:
    current = batch.entry_at(now)
    metadata: dict[str, Any] = {
        "@type": f"{PROTO_PACKAGE}.BatchOperationMetadata",
        "batch": batch.name,
        "batchUuid": batch.uuid,
        "createTime": rfc3339(batch.created),
        "description": "Batch",
        "operationType": "BATCH",
    }
    if batch.body.get("labels"):
        metadata["labels"] = dict(batch.body["labels"])
    body: dict[str, Any] = {"name": batch.operation, "metadata": metadata}
    if current.state in TERMINAL_STATES:
        metadata["doneTime"] = rfc3339(current.at)
        body["done"] = True
        if current.state == "SUCCEEDED":
            body["response"] = {"@type": f"{PROTO_PACKAGE}.Batch", **batch_json(batch, now)}
        elif current.state == "CANCELLED":
            body["error"] = {"code": 1, "message": "Operation was cancelled"}
        else:
            body["error"] = {"code": 9, "message": current.message}
    return body


def private_batch_json(batch: Batch, now: float) -> dict[str, Any]:
    return {
        "batch": batch_json(batch, now),
        "requestId": batch.request_id,
        "main": batch.main,
        "behavior": batch.behavior.to_json(),
        "timeline": [
            {"state": e.state, "time": rfc3339(e.at), "reached": e.at <= now, "message": e.message}
            for e in batch.timeline
        ],
    }


# ============================================================================= HTTP layer


def _state() -> DataprocState:
    state: DataprocState = state_of(current_app)
    return state


def _fault_response(rule: FaultRule) -> Response:
    status = rule.status or 500
    return google_error(status, rule.message or FAULT_MESSAGES.get(status, "Injected fault."))


def _run(operation: str, attrs: Mapping[str, Any], action: Callable[[], Any]) -> Response:
    return _state().faults.run(operation, attrs, lambda: guarded(action), _fault_response)


def _parse_body() -> Any:
    try:
        return json_body()
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc


def _main_of(body: Mapping[str, Any]) -> str | None:
    for kind, required in WORKLOAD_FIELDS.items():
        config = body.get(kind)
        if isinstance(config, dict):
            for key in (required,) if required else ("mainJarFileUri", "mainClass"):
                if isinstance(config.get(key), str):
                    return str(config[key])
    return None


def _batch_attrs(project: str, location: str, batch_id: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"project": project, "location": location, "batchId": batch_id}
    with _state().lock:
        batch = _state().batches.get((project, location, batch_id or ""))
    if batch is not None:
        attrs["main"] = batch.main
    return attrs


def _create(project: str, location: str) -> dict[str, Any]:
    state = _state()
    body = validator().validate(_parse_body(), "Batch", "batch")
    batch_id = request.args.get("batchId") or f"b{uuid.uuid4().hex[:30]}"
    if not BATCH_ID_RE.fullmatch(batch_id):
        raise invalid_argument(
            "Batch ID must be 4-63 characters; valid characters are lowercase letters, digits and hyphens.",
            "batch_id",
        )
    request_id = request.args.get("requestId") or None
    if request_id is not None and not REQUEST_ID_RE.fullmatch(request_id):
        raise invalid_argument("request_id must be at most 40 letters, digits, _ or -.", "request_id")
    batch = state.create(project, location, batch_id, request_id, body)
    return operation_json(batch, state.clock.now())


def _get(project: str, location: str, batch_id: str) -> dict[str, Any]:
    state = _state()
    batch = state.find(project, location, batch_id)
    with state.lock:
        return batch_json(batch, state.clock.now())


def _list(project: str, location: str) -> dict[str, Any]:
    state = _state()
    if request.args.get("filter"):
        raise invalid_argument("The emulator does not evaluate list filters.", "filter")
    if request.args.get("orderBy", "create_time desc").strip() not in ("", "create_time desc"):
        raise invalid_argument("Only 'create_time desc' ordering is supported.", "order_by")
    raw = request.args.get("pageSize") or ""
    if raw and not re.fullmatch(r"-?\d+", raw):
        raise invalid_argument(f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"", "page_size")
    size = min(int(raw), MAX_PAGE_SIZE) if raw and int(raw) > 0 else DEFAULT_PAGE_SIZE
    token = request.args.get("pageToken")
    cursor = decode_page_token(token) if token else None
    if token and cursor is None:
        raise invalid_argument(f"Invalid page token: {token!r}.", "page_token")
    with state.lock:
        now = state.clock.now()
        batches = sorted(
            (b for b in state.batches.values() if (b.project, b.location) == (project, location)),
            key=lambda b: -b.seq,
        )
        if cursor is not None:
            batches = [b for b in batches if b.seq < cursor]
        page, rest = batches[:size], batches[size:]
        result: dict[str, Any] = {"batches": [batch_json(b, now) for b in page]} if page else {}
    if rest:
        result["nextPageToken"] = encode_page_token(page[-1].seq)
    return result


def _delete(project: str, location: str, batch_id: str) -> dict[str, Any]:
    state = _state()
    state.delete(state.find(project, location, batch_id))
    return {}


def _get_operation(project: str, region: str, operation_id: str) -> dict[str, Any]:
    state = _state()
    batch = state.find_operation(project, region, operation_id)
    with state.lock:
        return operation_json(batch, state.clock.now())


def _cancel_operation(project: str, region: str, operation_id: str) -> dict[str, Any]:
    state = _state()
    _parse_body()  # CancelOperationRequest has no fields; a malformed body is still refused
    state.cancel(state.find_operation(project, region, operation_id))
    return {}


def _register_protocol_routes(app: Flask) -> None:
    @app.post(BATCHES)
    def batches_create(project: str, location: str) -> Response:
        attrs = {
            "project": project,
            "location": location,
            "batchId": request.args.get("batchId"),
            "main": _main_of(peek_json_body()),
        }
        return _run("batches.create", attrs, lambda: _create(project, location))

    @app.get(BATCHES)
    def batches_list(project: str, location: str) -> Response:
        return _run(
            "batches.list", {"project": project, "location": location}, lambda: _list(project, location)
        )

    @app.get(f"{BATCHES}/<batch_id>")
    def batches_get(project: str, location: str, batch_id: str) -> Response:
        attrs = _batch_attrs(project, location, batch_id)
        return _run("batches.get", attrs, lambda: _get(project, location, batch_id))

    @app.delete(f"{BATCHES}/<batch_id>")
    def batches_delete(project: str, location: str, batch_id: str) -> Response:
        attrs = _batch_attrs(project, location, batch_id)
        return _run("batches.delete", attrs, lambda: _delete(project, location, batch_id))

    @app.get(f"{OPERATIONS}/<operation_id>")
    def operations_get(project: str, region: str, operation_id: str) -> Response:
        attrs = {"project": project, "location": region}
        return _run("operations.get", attrs, lambda: _get_operation(project, region, operation_id))

    @app.post(f"{OPERATIONS}/<operation_id>:cancel")
    def operations_cancel(project: str, region: str, operation_id: str) -> Response:
        attrs: dict[str, Any] = {"project": project, "location": region}
        with _state().lock:
            batch = _state().operations.get((project, region, operation_id))
        if batch is not None:
            attrs.update(batchId=batch.batch_id, main=batch.main)
        return _run("operations.cancel", attrs, lambda: _cancel_operation(project, region, operation_id))

    install_route_errors(app, google_route_error)


def _register_control_routes(app: Flask, state: DataprocState) -> None:
    install_registry_routes(
        app,
        state,
        "mains",
        load=load_mains,
        store=state.register_main,
        registered=state.mains.values,
        body_noun="main",
    )

    @app.get("/_emulator/batches")
    def batches_private() -> Response:
        with state.lock:
            now = state.clock.now()
            return jsonify({"batches": [private_batch_json(b, now) for b in state.batches.values()]})


def create_app(*, mains: BodiesSource | None = None, speed: float = 1.0) -> Flask:
    """Build the emulator app; its :class:`DataprocState` is ``app.extensions["emulator_state"]``."""
    validator()  # fail fast if the discovery document is missing
    state = DataprocState(load_mains(mains) if mains is not None else (), speed=speed)
    app = emulator_app("dataproc_emulator", state, _register_protocol_routes, _register_control_routes)
    install_google_tokens(app, state, google_unauthenticated)
    return app


def serve(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ServerHandle:
    """Start the emulator in a daemon thread (``port=0``: a free port); ``kwargs`` go to create_app."""
    return serve_app(create_app, host, port, **kwargs)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mains", help="YAML or JSON file of main files (and their behavior) to register")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        argv,
        "Local emulator of the Dataproc Serverless batches REST API v1.",
        lambda args: create_app(mains=args.mains, speed=args.speed),
        _add_arguments,
    )


if __name__ == "__main__":
    raise SystemExit(main())
