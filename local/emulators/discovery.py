"""Request bodies checked against a Google discovery document, as Google's JSON transcoder checks them.

The Google API emulators (:mod:`local.emulators.dataflow`, :mod:`local.emulators.dataproc`) validate
every request body with one :class:`DiscoveryValidator` over the discovery document bundled with
google-api-python-client (:func:`bundled_document`): unknown fields at any depth, wrongly typed
values, out-of-range integers and malformed timestamps or durations are a 400 INVALID_ARGUMENT whose
message names the field path the way Google words it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_SCALAR_TYPE_NAMES = {
    ("string", None): "TYPE_STRING",
    ("string", "byte"): "TYPE_BYTES",
    ("string", "int64"): "TYPE_INT64",
    ("string", "uint64"): "TYPE_UINT64",
    ("string", "google-datetime"): "type.googleapis.com/google.protobuf.Timestamp",
    ("string", "google-duration"): "type.googleapis.com/google.protobuf.Duration",
    ("integer", "int32"): "TYPE_INT32",
    ("integer", "uint32"): "TYPE_UINT32",
    ("number", "float"): "TYPE_FLOAT",
    ("number", "double"): "TYPE_DOUBLE",
    ("boolean", None): "TYPE_BOOL",
}
_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_DURATION_RE = re.compile(r"-?\d+(\.\d{1,9})?s")


class DiscoveryValidator:
    """Checks JSON request bodies against the ``schemas`` of a Google discovery document.

    ``validate(value, schema_name, root)`` returns the body with snake_case field names rewritten to
    their JSON (lowerCamel) names, or raises the ``invalid`` error (400 INVALID_ARGUMENT) whose
    message names the offending field path the way Google's JSON transcoder does (snake_case, ``[i]``
    for list and map entries). ``root`` is the request field the body binds to (``""`` for
    ``body: *``). ``proto_package`` names the API's messages in those errors; ``drop_read_only``
    leaves out the output-only fields a client may echo back (Google ignores them).
    """

    def __init__(
        self,
        discovery: Mapping[str, Any],
        *,
        proto_package: str,
        invalid: Callable[[str, str | None], Exception],
        drop_read_only: bool = False,
    ) -> None:
        self.schemas: Mapping[str, Any] = discovery["schemas"]
        self.proto_package = proto_package
        self.invalid = invalid
        self.drop_read_only = drop_read_only

    def validate(self, value: Any, schema_name: str, root: str = "") -> Any:
        return self._message(value, schema_name, root)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _join(path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    def _unknown(self, name: str, path: str, reason: str) -> Exception:
        where = f" at '{path}'" if path else ""
        return self.invalid(f'Invalid JSON payload received. Unknown name "{name}"{where}: {reason}', path)

    def _bad_value(self, path: str, type_name: str, value: Any) -> Exception:
        return self.invalid(f"Invalid value at '{path}' ({type_name}), {json.dumps(value)}", path)

    # -- walkers -------------------------------------------------------------------------------
    def _message(self, value: Any, schema_name: str, path: str) -> Any:
        if not isinstance(value, dict):
            raise self._bad_value(path or "(root)", f"{self.proto_package}.{schema_name}", value)
        properties: Mapping[str, Any] = self.schemas[schema_name].get("properties", {})
        result: dict[str, Any] = {}
        for key, item in value.items():
            name = key if key in properties else camel_case(key)
            if name not in properties:
                raise self._unknown(key, path, "Cannot find field.")
            if item is None or (self.drop_read_only and properties[name].get("readOnly")):
                continue
            result[name] = self._field(item, properties[name], key, path)
        return result

    def _field(self, value: Any, spec: Mapping[str, Any], key: str, parent: str) -> Any:
        path = self._join(parent, snake_case(key))
        if spec.get("type") == "array":
            if not isinstance(value, list):
                raise self._bad_value(path, self._type_name(spec["items"]), value)
            return [self._value(item, spec["items"], f"{path}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, list):
            raise self._unknown(key, parent, "Proto field is not repeating, cannot start list.")
        return self._value(value, spec, path)

    def _value(self, value: Any, spec: Mapping[str, Any], path: str) -> Any:
        if "$ref" in spec:
            return self._message(value, spec["$ref"], path)
        kind = spec.get("type")
        if kind == "any":
            return value
        if kind == "object":
            return self._map(value, spec, path)
        if kind == "array":  # a list nested in a list
            if not isinstance(value, list):
                raise self._bad_value(path, "TYPE_MESSAGE", value)
            return [self._value(item, spec["items"], f"{path}[{i}]") for i, item in enumerate(value)]
        self._scalar(value, spec, path)
        return value

    def _map(self, value: Any, spec: Mapping[str, Any], path: str) -> Any:
        if not isinstance(value, dict):
            raise self._bad_value(path, "type.googleapis.com/google.protobuf.Struct", value)
        entry_spec = spec.get("additionalProperties")
        if entry_spec is None:
            if "properties" in spec:  # inline message
                return {k: self._field(v, spec["properties"][k], k, path) for k, v in value.items()}
            return value
        return {
            key: self._value(item, entry_spec, f"{path}[{index}].value")
            for index, (key, item) in enumerate(value.items())
        }

    def _type_name(self, spec: Mapping[str, Any]) -> str:
        if "$ref" in spec:
            return f"{self.proto_package}.{spec['$ref']}"
        if "enum" in spec:
            return "TYPE_ENUM"
        return _SCALAR_TYPE_NAMES.get((spec.get("type", ""), spec.get("format")), "TYPE_MESSAGE")

    def _scalar(self, value: Any, spec: Mapping[str, Any], path: str) -> None:
        if not self._scalar_ok(value, spec):
            raise self._bad_value(path, self._type_name(spec), value)

    @staticmethod
    def _scalar_ok(value: Any, spec: Mapping[str, Any]) -> bool:
        kind, fmt = spec.get("type"), spec.get("format")
        if isinstance(value, dict | list):
            return False
        if "enum" in spec:
            if isinstance(value, int) and not isinstance(value, bool):
                return 0 <= value < len(spec["enum"])
            return value in spec["enum"]
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "number":
            if isinstance(value, bool):
                return False
            if isinstance(value, int | float):
                return True
            return isinstance(value, str) and _is_float(value)
        if kind == "integer" or fmt in _INT_RANGES:
            return _int_in_range(value, fmt or "int32")
        if not isinstance(value, str):
            return False
        if fmt == "google-datetime":
            return bool(_TIMESTAMP_RE.fullmatch(value))
        if fmt == "google-duration":
            return bool(_DURATION_RE.fullmatch(value))
        return True


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _int_in_range(value: Any, fmt: str) -> bool:
    if isinstance(value, bool):
        return False
    integral_float = isinstance(value, float) and value.is_integer()
    if integral_float or (isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip())):
        value = int(value)
    if not isinstance(value, int):
        return False
    low, high = _INT_RANGES.get(fmt, _INT_RANGES["int64"])
    return low <= value <= high


def bundled_document(api: str, version: str) -> Mapping[str, Any]:
    """The official discovery document google-api-python-client bundles for ``api`` ``version``."""
    from googleapiclient.discovery_cache import get_static_doc

    doc = get_static_doc(api, version)
    if doc is None:
        raise RuntimeError(f"google-api-python-client does not bundle the {api} {version} document")
    parsed: Mapping[str, Any] = json.loads(doc)
    return parsed
