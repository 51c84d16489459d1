"""``sync``: keep the pipelines whose definitions live in the repo in step with their backends.

For every pipeline of the config whose backend can keep definitions (the ``Syncable`` protocol of
:mod:`handlers.backends.contract`) and that names a definition, the backend plans one step::

    create      missing in the backend: created from the repo's files
    update      present but different (the summary says which parts): replaced
    unchanged   present and equal: left alone

then carries it out, unless ``--dry-run``; a pipeline that exists then has its configured
parameters checked against it when its backend can (``OnlineCheckable``). Paths in the config are
relative to its folder. One pipeline's failure does not stop the others; the exit code is 1 if any
failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

from handlers.backends import registry
from handlers.backends.contract import OnlineCheckable, Syncable, SyncChange
from handlers.core.errors import PipelineError
from handlers.entry.cli.args import EXIT_FAILURE, EXIT_OK, _load
from handlers.entry.cli.output import Output, clean

PLANNED = {
    SyncChange.CREATE: "would create",
    SyncChange.UPDATE: "would update",
    SyncChange.UNCHANGED: "unchanged",
}
DONE = {SyncChange.CREATE: "created", SyncChange.UPDATE: "updated", SyncChange.UNCHANGED: "unchanged"}
COLOURS = {SyncChange.CREATE: "green", SyncChange.UPDATE: "yellow", SyncChange.UNCHANGED: None}


def syncable(backend: Any) -> Syncable | None:
    """``backend`` as a :class:`Syncable`, or None when it does not keep definitions."""
    if callable(getattr(backend, "plan_sync", None)) and callable(getattr(backend, "apply_sync", None)):
        return cast(Syncable, backend)
    return None


def configured(pipeline: Any) -> dict[str, str | None]:
    """The pipeline's configured parameters: literal values, ``None`` for those rendered from an event."""
    return {name: (None if t.fields else t.source) for name, t in pipeline.parameters.items()}


def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    config = _load(args)
    base_dir = str(Path(config.source).resolve().parent)
    built: dict[str, Syncable | None] = {}
    results: list[dict[str, Any]] = []
    failed = False
    for pipeline in sorted(config.pipelines.values(), key=lambda p: p.name):
        if pipeline.backend not in built:
            built[pipeline.backend] = syncable(registry.spec(pipeline.backend).build())
        backend = built[pipeline.backend]
        if backend is None:
            continue
        doc: dict[str, Any] = {"pipeline": pipeline.name, "backend": pipeline.backend}
        try:
            step = backend.plan_sync(pipeline, base_dir)
            if step is None:
                continue
            doc.update(target=step.target, change=str(step.change), summary=step.summary, id=step.found)
            if not args.dry_run and step.change != SyncChange.UNCHANGED:
                doc["id"] = backend.apply_sync(step)
                doc["applied"] = True
            if doc.get("id") and callable(getattr(backend, "check_online", None)):
                # the configured parameters against the pipeline as it now is in the backend
                problems = cast(OnlineCheckable, backend).check_online(pipeline, configured(pipeline))
                if problems:
                    failed = True
                    doc.update(error="; ".join(problems), retryable=False)
        except PipelineError as exc:
            failed = True
            doc.update(error=exc.message, retryable=exc.retryable)
        results.append(doc)
        if not out.json:
            _print(out, doc, args.dry_run)
    if out.json:
        out.emit({"dry_run": bool(args.dry_run), "pipelines": results})
    elif not results:
        out.note("no pipeline keeps its definition in the repo (a backend's `definition` option)")
    return EXIT_FAILURE if failed else EXIT_OK


def _print(out: Output, doc: dict[str, Any], dry_run: bool) -> None:
    if "error" in doc:
        out.line(f"{clean(doc['pipeline'])}: {out.paint('FAILED', 'red')}: {clean(doc['error'])}")
        return
    change = SyncChange(doc["change"])
    verb = (PLANNED if dry_run else DONE)[change]
    text = f"{clean(doc['pipeline'])}: {out.paint(verb, COLOURS[change])} {clean(doc['target'])}"
    if doc.get("summary"):
        text += f" ({clean(doc['summary'])})"
    if doc.get("id"):
        text += f" id {doc['id']}"
    out.line(text)
