"""Local stand-in for Google Secret Manager's REST API (v1), enough to keep a rotated secret.

Paths, as the ``secretmanager v1`` discovery document names them (request bodies are checked
against that document, bundled with google-api-python-client, as :mod:`local.emulators.discovery`
checks Dataflow's and Dataproc's)::

    POST /v1/projects/{p}/secrets?secretId={s}              Secret -> the Secret (409 if it exists)
    POST /v1/projects/{p}/secrets/{s}:addVersion            AddSecretVersionRequest -> SecretVersion
    GET  /v1/projects/{p}/secrets/{s}/versions/{v}:access   AccessSecretVersionResponse ({v}: a number
                                                            or ``latest``)

``payload.data`` is base64 (at most 64 KiB decoded); a ``dataCrc32c`` that does not match the data
is refused (400 INVALID_ARGUMENT), as the service does. Every call needs a bearer token (any).
Errors are Google's JSON error body.

Control API (besides the common ``/_emulator/reset|requests|faults|clock``)::

    GET  /_emulator/secrets       every secret with its versions (payloads in clear: a test tool)
    POST /_emulator/secrets       {"name": "projects/P/secrets/S", "value": "..."}: seed a version
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, Response, current_app, jsonify, request

from local.emulators.base import (
    EmulatorState,
    ProtocolError,
    ServerHandle,
    built_once,
    control_error,
    emulator_app,
    google_error,
    google_route_error,
    guarded,
    install_route_errors,
    json_body,
    run_cli,
    serve_app,
    state_of,
)
from local.emulators.discovery import DiscoveryValidator, bundled_document

MAX_PAYLOAD_BYTES = 64 * 1024
PROTO_PACKAGE = "google.cloud.secretmanager.v1"


class ApiError(ProtocolError):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def response(self) -> Response:
        return google_error(self.code, self.message, self.status)


def invalid_argument(message: str, field_path: str | None = None) -> ApiError:
    return ApiError(400, message, "INVALID_ARGUMENT")


@built_once
def validator() -> DiscoveryValidator:
    return DiscoveryValidator(
        bundled_document("secretmanager", "v1"), proto_package=PROTO_PACKAGE, invalid=invalid_argument
    )


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as Secret Manager checks ``dataCrc32c``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


class SecretState(EmulatorState):
    """Secrets (name -> list of versions' payloads), guarded by ``lock``; reset keeps them."""

    def __init__(self, *, speed: float = 1.0) -> None:
        super().__init__(speed=speed)
        self.secrets: dict[str, list[tuple[bytes, str]]] = {}  # name -> [(data, create time)]

    def add(self, name: str, data: bytes) -> int:
        with self.lock:
            versions = self.secrets.setdefault(name, [])
            versions.append((data, dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")))
            return len(versions)


def _state() -> SecretState:
    state: SecretState = state_of(current_app)
    return state


def _authenticate() -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
            "other valid authentication credential.",
            "UNAUTHENTICATED",
        )


def _body(schema: str) -> Mapping[str, Any]:
    try:
        raw = json_body()
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    checked: Mapping[str, Any] = validator().validate(raw, schema)
    return checked


def _create(project: str) -> dict[str, Any]:
    _authenticate()
    _body("Secret")
    secret_id = request.args.get("secretId") or ""
    if not secret_id:
        raise invalid_argument("secretId is required")
    name = f"projects/{project}/secrets/{secret_id}"
    state = _state()
    with state.lock:
        if name in state.secrets:
            raise ApiError(409, f"Secret [{name}] already exists.", "ALREADY_EXISTS")
        state.secrets[name] = []
    return {"name": name, "replication": {"automatic": {}}}


def _add_version(project: str, secret: str) -> dict[str, Any]:
    _authenticate()
    body = _body("AddSecretVersionRequest")
    payload = body.get("payload") or {}
    try:
        data = base64.b64decode(str(payload.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Invalid value at 'payload.data' (TYPE_BYTES)") from None
    if len(data) > MAX_PAYLOAD_BYTES:
        raise invalid_argument(f"Secret Payload cannot be larger than {MAX_PAYLOAD_BYTES} bytes.")
    if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != crc32c(data):
        raise invalid_argument("Checksum mismatch: the data does not match the provided data_crc32c.")
    name = f"projects/{project}/secrets/{secret}"
    state = _state()
    with state.lock:
        if name not in state.secrets:
            raise ApiError(404, f"Secret [{name}] not found or has no versions.", "NOT_FOUND")
        number = state.add(name, data)
        created = state.secrets[name][-1][1]
    return {"name": f"{name}/versions/{number}", "createTime": created, "state": "ENABLED"}


def _access(project: str, secret: str, version: str) -> dict[str, Any]:
    _authenticate()
    name = f"projects/{project}/secrets/{secret}"
    state = _state()
    with state.lock:
        versions = list(state.secrets.get(name) or [])
    number = len(versions) if version == "latest" else int(version) if version.isdigit() else 0
    if not versions or not 1 <= number <= len(versions):
        raise ApiError(404, f"Secret Version [{name}/versions/{version}] not found.", "NOT_FOUND")
    data = versions[number - 1][0]
    return {
        "name": f"{name}/versions/{number}",
        "payload": {"data": base64.b64encode(data).decode("ascii"), "dataCrc32c": str(crc32c(data))},
    }


def _protocol_routes(app: Flask) -> None:
    def run(operation: str, attrs: Mapping[str, Any], action: Any) -> Response:
        def render(rule: Any) -> Response:
            return google_error(rule.status or 500, rule.message or "Internal error.")

        return _state().faults.run(operation, attrs, lambda: guarded(action), render)

    @app.post("/v1/projects/<project>/secrets")
    def create(project: str) -> Response:
        return run("secrets.create", {"project": project}, lambda: _create(project))

    @app.post("/v1/projects/<project>/secrets/<secret>:addVersion")
    def add_version(project: str, secret: str) -> Response:
        return run("secrets.addVersion", {"secret": secret}, lambda: _add_version(project, secret))

    @app.get("/v1/projects/<project>/secrets/<secret>/versions/<version>:access")
    def access(project: str, secret: str, version: str) -> Response:
        return run("versions.access", {"secret": secret}, lambda: _access(project, secret, version))

    install_route_errors(app, google_route_error)


def _control_routes(app: Flask, state: SecretState) -> None:
    @app.route("/_emulator/secrets", methods=["GET", "POST"])
    def secrets() -> Response:
        if request.method == "POST":
            body = json_body()
            if (
                not isinstance(body, dict)
                or set(body) != {"name", "value"}
                or str(body["name"]).count("/") != 3
            ):
                return control_error('a secret is {"name": "projects/P/secrets/S", "value": "..."}')
            state.add(str(body["name"]), str(body["value"]).encode())
        with state.lock:
            listed = {n: [d.decode(errors="replace") for d, _ in v] for n, v in state.secrets.items()}
        return jsonify({"secrets": listed})


def create_app(*, speed: float = 1.0) -> Flask:
    validator()  # fail fast if the bundled discovery document is missing
    return emulator_app("secretmanager_emulator", SecretState(speed=speed), _protocol_routes, _control_routes)


def serve(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ServerHandle:
    return serve_app(create_app, host, port, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        argv, "Local stand-in for Google Secret Manager (v1).", lambda args: create_app(speed=args.speed)
    )


if __name__ == "__main__":
    raise SystemExit(main())
