"""Regenerate ``local/emulators/fabric_schemas.json`` from Microsoft's Fabric REST API specs.

The Fabric emulator validates request and response bodies against JSON Schema definitions extracted
from the Swagger 2.0 files of ``microsoft/fabric-rest-api-specs``: every definition listed in
:data:`ROOTS` plus everything it references, across files, converted to draft 7 (``x-ms-*``,
``discriminator``, ``readOnly`` and ``example`` dropped). Then the emulator's deliberate overlay
(:data:`OVERLAY`, each with its reason) is applied. Run it against a checkout or a bare git mirror::

    python -m local.emulators.fabric_spec --git-dir /path/to/fabric-rest-api-specs.git --commit SHA
    python -m local.emulators.fabric_spec --spec-dir /path/to/checkout

and commit the result; ``--check`` exits 1 when the committed file differs from what it would write.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("fabric_schemas.json")
COMMIT = "4a7d6e4a6ba3dd80ceacb0fae614a1df58262251"  # the spec commit the committed file came from
DROP = ("discriminator", "readOnly", "example", "x-ms-enum", "x-ms-discriminator-value", "x-ms-client-name")

# (file, definition) the emulator validates; their references come along.
ROOTS: tuple[tuple[str, str], ...] = (
    ("common/definitions.json", "ErrorResponse"),
    ("platform/definitions/platform.json", "Workspaces"),
    ("platform/definitions/platform.json", "Items"),
    ("common/definitions.json", "Item"),
    ("platform/definitions/platform.json", "CreateItemRequest"),
    ("platform/definitions/platform.json", "UpdateItemDefinitionRequest"),
    ("platform/definitions/platform.json", "ItemDefinitionResponse"),
    ("platform/definitions/platform.json", "OperationState"),
    ("platform/definitions/platform.json", "RunOnDemandItemJobRequest"),
    ("platform/definitions/platform.json", "ItemJobInstance"),
    ("platform/definitions/platform.json", "ItemJobInstances"),
    ("dataflow/definitions.json", "Dataflow"),
    ("dataflow/definitions.json", "Dataflows"),
    ("dataflow/definitions.json", "CreateDataflowRequest"),
    ("dataflow/definitions.json", "UpdateDataflowDefinitionRequest"),
    ("dataflow/definitions.json", "DataflowDefinitionResponse"),
    ("dataflow/definitions.json", "RunOnDemandDataflowExecuteJobRequest"),
    ("dataflow/definitions.json", "DataflowParameters"),
    ("dataPipeline/definitions.json", "CreateDataPipelineRequest"),
    ("dataPipeline/definitions.json", "UpdateDataPipelineDefinitionRequest"),
    ("dataPipeline/definitions.json", "DataPipelineDefinitionResponse"),
    ("notebook/definitions.json", "CreateNotebookRequest"),
    ("notebook/definitions.json", "UpdateNotebookDefinitionRequest"),
    ("notebook/definitions.json", "NotebookDefinitionResponse"),
    ("notebook/definitions.json", "RunNotebookRequest"),
)

# Deliberate changes, applied after extraction: (definition, JSON path inside it, new value, why).
OVERLAY: tuple[tuple[str, tuple[str, ...], Any, str], ...] = (
    (
        "ItemJobParameter",
        ("properties", "value"),
        {"description": "any JSON value"},
        "Swagger 'type: object' means any value here: the spec's own examples send strings and booleans",
    ),
    (
        "Parameter",
        ("properties", "value"),
        {"description": "any JSON value"},
        "as ItemJobParameter.value",
    ),
    (
        "ItemJobInstance",
        ("properties", "endTimeUtc"),
        {"type": ["string", "null"]},
        "the service sends null while a job runs",
    ),
    (
        "ItemJobInstance",
        ("properties", "startTimeUtc"),
        {"type": ["string", "null"]},
        "the service sends null before a job starts",
    ),
    (
        "ItemJobInstance",
        ("properties", "failureReason"),
        {"oneOf": [{"type": "null"}, {"$ref": "#/definitions/ErrorResponse"}]},
        "the service sends null unless the job failed",
    ),
    (
        "ErrorResponse",
        ("properties", "isRetriable"),
        {"type": "boolean"},
        "sent by the service in error answers, not declared by the common definition",
    ),
)

# Request bodies refuse unknown fields in the emulator (the real service may ignore them).
CLOSED_REQUESTS = (
    "CreateItemRequest",
    "UpdateItemDefinitionRequest",
    "CreateDataflowRequest",
    "UpdateDataflowDefinitionRequest",
    "RunOnDemandDataflowExecuteJobRequest",
    "DataflowExecutionPayload",
    "ItemJobParameter",
    "RunOnDemandItemJobRequest",
    "Parameter",
    "CreateDataPipelineRequest",
    "CreateNotebookRequest",
    "RunNotebookRequest",
)

Reader = Callable[[str], Mapping[str, Any]]


def git_reader(git_dir: str, commit: str) -> Reader:
    def read(path: str) -> Mapping[str, Any]:
        text = subprocess.run(
            ["git", "--git-dir", git_dir, "show", f"{commit}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        doc: Mapping[str, Any] = json.loads(text)
        return doc

    return read


def dir_reader(root: str) -> Reader:
    def read(path: str) -> Mapping[str, Any]:
        doc: Mapping[str, Any] = json.loads((Path(root) / path).read_text())
        return doc

    return read


def extract(read: Reader) -> dict[str, Any]:
    """Every root definition and what it references, under unique names, refs rewritten."""
    files: dict[str, Mapping[str, Any]] = {}
    names: dict[tuple[str, str], str] = {}
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def definition(file: str, name: str) -> Mapping[str, Any]:
        if file not in files:
            files[file] = read(file)
        found: Mapping[str, Any] = files[file]["definitions"][name]
        return found

    def name_of(file: str, name: str) -> str:
        key = (file, name)
        if key not in names:
            unique = name if name not in sources else f"{file.split('/')[0]}.{name}"
            names[key] = unique
            sources[unique] = f"{file}#/definitions/{name}"
            out[unique] = convert(file, definition(file, name))
        return names[key]

    def convert(file: str, node: Any) -> Any:
        if isinstance(node, list):
            return [convert(file, x) for x in node]
        if not isinstance(node, Mapping):
            return node
        result: dict[str, Any] = {}
        for key, value in node.items():
            if key in DROP or key.startswith("x-ms-"):
                continue
            if key == "$ref":
                target, _, pointer = str(value).partition("#/definitions/")
                ref_file = (
                    posixpath.normpath(posixpath.join(posixpath.dirname(file), target)) if target else file
                )
                result["$ref"] = f"#/definitions/{name_of(ref_file, pointer)}"
            else:
                result[key] = convert(file, value)
        return result

    for file, name in ROOTS:
        name_of(file, name)
    return {"definitions": dict(sorted(out.items())), "sources": dict(sorted(sources.items()))}


def build(read: Reader, commit: str) -> dict[str, Any]:
    extracted = extract(read)
    definitions = extracted["definitions"]
    changes = []
    for name, path, value, why in OVERLAY:
        node = definitions[name]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        changes.append(f"{name}.{'.'.join(path)}: {why}")
    for name in CLOSED_REQUESTS:
        definitions[name]["additionalProperties"] = False
        if "allOf" in definitions[name]:
            raise ValueError(f"{name}: cannot close a definition built with allOf")
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": "GENERATED by python -m local.emulators.fabric_spec from microsoft/fabric-rest-api-specs; "
        "do not edit by hand: change ROOTS/OVERLAY there and regenerate.",
        "commit": commit,
        "overlay": changes
        + [f"{n}: additionalProperties false (the emulator refuses unknown fields)" for n in CLOSED_REQUESTS],
        "sources": extracted["sources"],
        "definitions": definitions,
    }


def render(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--git-dir", help="a (bare) git repository of microsoft/fabric-rest-api-specs")
    source.add_argument("--spec-dir", help="a checkout of microsoft/fabric-rest-api-specs")
    parser.add_argument("--commit", default=COMMIT, help=f"the spec commit (default {COMMIT[:12]})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is not up to date")
    args = parser.parse_args(argv)
    read = git_reader(args.git_dir, args.commit) if args.git_dir else dir_reader(args.spec_dir)
    text = render(build(read, args.commit))
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'differs from the spec; regenerate'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} from commit {args.commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
