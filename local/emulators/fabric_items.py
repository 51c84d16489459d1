"""The Fabric emulator's item management: workspaces, items, definitions, long-running operations
and a dataflow's parameters (routes added to :mod:`local.emulators.fabric`'s app).

Paths (prefix ``/v1``), as ``microsoft/fabric-rest-api-specs`` documents them::

    GET  /workspaces                                          Workspaces (paginated)
    GET  /workspaces/{ws}/items[?type=]                       Items (paginated)
    GET  /workspaces/{ws}/items/{id}                          Item
    POST /workspaces/{ws}/items                               CreateItemRequest -> 201 Item | 202 LRO
    GET  /workspaces/{ws}/{dataflows|dataPipelines|notebooks} the items of that type (paginated)
    POST /workspaces/{ws}/{dataflows|dataPipelines|notebooks} Create<Type>Request -> 201 | 202 LRO
    GET  /workspaces/{ws}/{collection}/{id}                   the item
    POST .../{collection or items}/{id}/getDefinition         202 LRO -> <Type>DefinitionResponse
    POST .../{collection or items}/{id}/updateDefinition      Update<Type>DefinitionRequest -> 202 LRO
    GET  /workspaces/{ws}/dataflows/{id}/parameters           DataflowParameters (from mashup.pq)
    GET  /operations/{id}                                     OperationState (Location: .../result when done)
    GET  /operations/{id}/result                              the operation's result

A create with a definition, getDefinition and updateDefinition always answer 202 with
``x-ms-operation-id``, ``Location`` and ``Retry-After``; the operation is ``Running`` for the
setting ``lro_seconds`` of emulator time (default 0), then ``Succeeded``. The change itself is made
at once. A new or updated dataflow definition is not run by Execute until it is applied
(``jobs/applyChanges`` or ``executeOption: ApplyChangesIfNeeded``); the emulator's instance records
carry the ``definitionVersion`` they ran. Request and response bodies are checked against the
spec's definitions (``fabric_schemas.json``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request

from local.emulators.base import decode_page_token, encode_page_token
from local.emulators.fabric import (
    API_PREFIX,
    COLLECTION_TYPES,
    ITEM_JOB_TYPES,
    Behavior,
    FabricError,
    FabricState,
    Item,
    _authenticate,
    _declared_parameters,
    _invalid,
    _item,
    _parse_body,
    _run,
    _state,
    fabric_time,
    schema_book,
)

COLLECTIONS = "<any(dataflows, dataPipelines, notebooks):collection>"
TYPE_NAMES = {"Dataflow": "Dataflow", "DataPipeline": "DataPipeline", "Notebook": "Notebook"}
REQUIRED_PARTS = {"Dataflow": ("queryMetadata.json", "mashup.pq"), "DataPipeline": ("pipeline-content.json",)}


@dataclass
class Operation:
    id: str
    created: float
    done_at: float
    result: Any = None


def _page(entries: list[dict[str, Any]], state: FabricState, url: str) -> dict[str, Any]:
    token = request.args.get("continuationToken")
    start = 0
    if token:
        position = decode_page_token(token)
        if position is None:
            raise _invalid("The continuationToken is not valid.")
        start = position
    page = entries[start : start + state.page_size]
    body: dict[str, Any] = {"value": page}
    if start + state.page_size < len(entries):
        next_token = encode_page_token(start + state.page_size)
        body["continuationToken"] = next_token
        body["continuationUri"] = f"{request.host_url}{url.lstrip('/')}?continuationToken={next_token}"
    return body


def _answer(doc: Any, definition: str, status: int = 200) -> Response:
    response = jsonify(schema_book().check_response(doc, definition))
    response.status_code = status
    return response


def _checked(body: Any, definition: str) -> Mapping[str, Any]:
    problems = schema_book().problems(body, definition)
    if problems:
        raise _invalid(
            "Invalid request payload " + problems[0],
            [{"errorCode": "InvalidInput", "message": p} for p in problems],
        )
    return dict(body)


def _definition_parts(definition: Mapping[str, Any], item_type: str) -> dict[str, bytes]:
    import base64
    import binascii

    parts: dict[str, bytes] = {}
    for part in definition.get("parts") or []:
        path = part.get("path")
        if not isinstance(path, str) or not path or path in parts:
            raise _invalid("Each definition part needs a unique path.")
        if part.get("payloadType", "InlineBase64") != "InlineBase64":
            raise _invalid(f"Part '{path}': payloadType must be InlineBase64.")
        try:
            parts[path] = base64.b64decode(str(part.get("payload") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise FabricError(400, "InvalidDefinitionParts", f"Part '{path}' is not valid base64.") from None
    missing = [p for p in REQUIRED_PARTS.get(item_type, ()) if p not in parts]
    if missing:
        raise FabricError(400, "InvalidDefinitionParts", f"The definition lacks {', '.join(missing)}.")
    return parts


def _encode(parts: Mapping[str, bytes]) -> dict[str, Any]:
    import base64

    return {
        "parts": [
            {"path": p, "payload": base64.b64encode(d).decode("ascii"), "payloadType": "InlineBase64"}
            for p, d in sorted(parts.items())
        ]
    }


def _operation(state: FabricState, result: Any) -> Response:
    with state.lock:
        now = state.clock.now()
        operation = Operation(str(uuid.uuid4()), now, now + state.lro_seconds, result)
        state.operations[operation.id] = operation
    response = Response(status=202)
    response.headers["Location"] = f"{request.host_url}v1/operations/{operation.id}"
    response.headers["x-ms-operation-id"] = operation.id
    response.headers["Retry-After"] = str(max(0, round(state.lro_seconds)))
    return response


def _workspace_known(state: FabricState, workspace: str) -> str:
    ws = workspace.lower()
    with state.lock:
        known = ws in state.workspaces or any(w == ws for w, _ in state.items)
    if not known:
        raise FabricError(404, "WorkspaceNotFound", "The requested workspace was not found.")
    return ws


def _items_of(state: FabricState, workspace: str, item_type: str | None) -> list[dict[str, Any]]:
    with state.lock:
        chosen = [i for (w, _), i in state.items.items() if w == workspace and (item_type in (None, i.type))]
        return [i.public_json() for i in sorted(chosen, key=lambda i: (i.display_name, i.item))]


def _create(workspace: str, collection: str | None) -> Response:
    state = _state()
    _authenticate(state)
    ws = _workspace_known(state, workspace)
    body = _parse_body()
    if collection is None:
        body = _checked(body, "CreateItemRequest")
        item_type = str(body["type"])
        if item_type not in ITEM_JOB_TYPES:
            raise FabricError(400, "UnsupportedItemType", f"The emulator does not create {item_type} items.")
    else:
        item_type = COLLECTION_TYPES[collection]
        body = _checked(body, f"Create{item_type}Request")
    name = str(body["displayName"])
    parts = _definition_parts(body["definition"], item_type) if body.get("definition") else None
    with state.lock:
        if any(
            w == ws and i.display_name == name and i.type == item_type for (w, _), i in state.items.items()
        ):
            raise FabricError(400, "ItemDisplayNameAlreadyInUse", f"Requested '{name}' is already in use.")
        item = Item(
            workspace=ws,
            item=str(uuid.uuid4()),
            type=item_type,
            display_name=name,
            behavior=Behavior(),
            description=str(body.get("description") or ""),
            definition=parts,
            version=1 if parts else 0,
        )
        state.items[(ws, item.item)] = item
    doc = schema_book().check_response(item.public_json(), "Item")
    if parts is not None:
        return _operation(state, doc)
    return _answer(doc, "Item", 201)


def _typed_item(state: FabricState, workspace: str, item_id: str, collection: str | None) -> Item:
    item = _item(state, workspace, item_id)
    if collection is not None and item.type != COLLECTION_TYPES[collection]:
        raise FabricError(404, "ItemNotFound", f"Requested {COLLECTION_TYPES[collection]} ID not found.")
    return item


def _get_definition(workspace: str, item_id: str, collection: str | None) -> Response:
    state = _state()
    _authenticate(state)
    item = _typed_item(state, workspace, item_id, collection)
    with state.lock:
        parts = dict(item.definition or {})
    definition = "ItemDefinitionResponse" if collection is None else f"{item.type}DefinitionResponse"
    return _operation(state, schema_book().check_response({"definition": _encode(parts)}, definition))


def _update_definition(workspace: str, item_id: str, collection: str | None) -> Response:
    state = _state()
    _authenticate(state)
    item = _typed_item(state, workspace, item_id, collection)
    definition = (
        "UpdateItemDefinitionRequest" if collection is None else f"Update{item.type}DefinitionRequest"
    )
    body = _checked(_parse_body(), definition)
    parts = _definition_parts(body["definition"], item.type)
    with state.lock:
        item.definition = parts
        item.version += 1
    return _operation(state, None)


def _parameters(workspace: str, item_id: str) -> Response:
    state = _state()
    _authenticate(state)
    item = _typed_item(state, workspace, item_id, "dataflows")
    declared = _declared_parameters(item)
    if declared is None:  # no definition: the names an item fixture declares, as optional text
        declared = [
            {"name": n, "description": "", "isRequired": False, "type": "String", "defaultValue": ""}
            for n in [*(item.behavior.parameters or []), *filter(None, [item.behavior.outcome_param])]
        ]
    url = f"/v1/workspaces/{item.workspace}/dataflows/{item.item}/parameters"
    return _answer(_page(declared, state, url), "DataflowParameters")


def _operation_state(operation_id: str) -> Response:
    state = _state()
    _authenticate(state)
    with state.lock:
        operation = state.operations.get(operation_id.lower())
        now = state.clock.now()
    if operation is None:
        raise FabricError(404, "OperationNotFound", "The requested operation was not found.")
    done = now >= operation.done_at
    doc = {
        "status": "Succeeded" if done else "Running",
        "createdTimeUtc": fabric_time(operation.created),
        "lastUpdatedTimeUtc": fabric_time(min(now, operation.done_at)),
        "percentComplete": 100 if done else 50,
    }
    response = _answer(doc, "OperationState")
    response.headers["x-ms-operation-id"] = operation.id
    if done and operation.result is not None:
        response.headers["Location"] = f"{request.host_url}v1/operations/{operation.id}/result"
    elif not done:
        response.headers["Retry-After"] = "1"
    return response


def _operation_result(operation_id: str) -> Response:
    state = _state()
    _authenticate(state)
    with state.lock:
        operation = state.operations.get(operation_id.lower())
        now = state.clock.now()
    if operation is None:
        raise FabricError(404, "OperationNotFound", "The requested operation was not found.")
    if now < operation.done_at:
        raise FabricError(400, "OperationNotCompleted", "The operation has not completed yet.")
    if operation.result is None:
        raise FabricError(400, "OperationHasNoResult", "The operation has no result.")
    return jsonify(operation.result)


def register_routes(app: Flask) -> None:
    """Add the item-management routes to the emulator app."""

    @app.get("/v1/workspaces")
    def list_workspaces() -> Response:
        def action() -> Response:
            state = _state()
            _authenticate(state)
            with state.lock:
                ids = sorted(set(state.workspaces) | {w for w, _ in state.items})
                entries = [
                    {
                        "id": w,
                        "displayName": state.workspaces.get(w, w),
                        "description": "",
                        "type": "Workspace",
                    }
                    for w in ids
                ]
            entries.sort(key=lambda e: (e["displayName"], e["id"]))
            return _answer(_page(entries, state, "/v1/workspaces"), "Workspaces")

        return _run("workspaces.list", {}, action)

    def list_of(workspace: str, item_type: str | None, collection: str) -> Response:
        """Items.ListItems (``?type=``) and the typed lists (ListDataflows, ...): one page of a workspace's items."""

        def action() -> Response:
            state = _state()
            _authenticate(state)
            ws = _workspace_known(state, workspace)
            entries = _items_of(state, ws, item_type)
            return _answer(_page(entries, state, f"/v1/workspaces/{ws}/{collection}"), "Items")

        return _run("items.list", {"workspace": workspace}, action)

    @app.get(f"{API_PREFIX}/items")
    def list_items(workspace: str) -> Response:
        return list_of(workspace, request.args.get("type"), "items")

    @app.get(f"{API_PREFIX}/{COLLECTIONS}")
    def list_typed(workspace: str, collection: str) -> Response:
        return list_of(workspace, COLLECTION_TYPES[collection], collection)

    @app.get(f"{API_PREFIX}/items/<item>")
    def get_item(workspace: str, item: str) -> Response:
        def action() -> Response:
            state = _state()
            _authenticate(state)
            return _answer(_item(state, workspace, item).public_json(), "Item")

        return _run("items.get", {"workspace": workspace, "item": item}, action)

    @app.get(f"{API_PREFIX}/{COLLECTIONS}/<item>")
    def get_typed(workspace: str, collection: str, item: str) -> Response:
        def action() -> Response:
            state = _state()
            _authenticate(state)
            return _answer(_typed_item(state, workspace, item, collection).public_json(), "Item")

        return _run("items.get", {"workspace": workspace, "item": item}, action)

    @app.post(f"{API_PREFIX}/items")
    def create_item(workspace: str) -> Response:
        return _run("items.create", {"workspace": workspace}, lambda: _create(workspace, None))

    @app.post(f"{API_PREFIX}/{COLLECTIONS}")
    def create_typed(workspace: str, collection: str) -> Response:
        return _run("items.create", {"workspace": workspace}, lambda: _create(workspace, collection))

    for collection in (None, "dataflows", "dataPipelines", "notebooks"):
        _add_definition_routes(app, collection)

    @app.get(f"{API_PREFIX}/dataflows/<item>/parameters")
    def dataflow_parameters(workspace: str, item: str) -> Response:
        return _run(
            "dataflows.parameters",
            {"workspace": workspace, "item": item},
            lambda: _parameters(workspace, item),
        )

    @app.get("/v1/operations/<operation_id>")
    def operation_state(operation_id: str) -> Response:
        return _run("operations.get", {"operation": operation_id}, lambda: _operation_state(operation_id))

    @app.get("/v1/operations/<operation_id>/result")
    def operation_result(operation_id: str) -> Response:
        return _run("operations.result", {"operation": operation_id}, lambda: _operation_result(operation_id))


def _add_definition_routes(app: Flask, collection: str | None) -> None:
    base = f"{API_PREFIX}/{collection or 'items'}/<item>"

    def get_definition(workspace: str, item: str) -> Response:
        attrs = {"workspace": workspace, "item": item}
        return _run("items.getDefinition", attrs, lambda: _get_definition(workspace, item, collection))

    def update_definition(workspace: str, item: str) -> Response:
        attrs = {"workspace": workspace, "item": item}
        return _run("items.updateDefinition", attrs, lambda: _update_definition(workspace, item, collection))

    name = collection or "items"
    app.add_url_rule(f"{base}/getDefinition", f"get_definition_{name}", get_definition, methods=["POST"])
    app.add_url_rule(
        f"{base}/updateDefinition", f"update_definition_{name}", update_definition, methods=["POST"]
    )
