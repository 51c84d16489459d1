"""The demo's choices: which config the local stack serves and what ``make demo`` waits for.

:func:`make_plan` validates a config, puts the demo's chained pipeline on the backend whose
emulator this checkout has (``examples/demo/chain-variants.yaml``, :func:`choose_chain_variant`)
and writes the copy the functions load; :class:`Plan` says what the stack has to create for it.
:func:`wait_for_chain` follows the demo's chain to its end on the timeline's findings, and
:func:`show_output` prints the first pipeline's output. :func:`example_message` is the Pub/Sub
message ``up`` prints for a trigger.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from handlers.core.errors import ConfigError
from handlers.entry.cli.output import clean
from handlers.model.config import Config, Trigger, build_config
from local.kits import kit
from local.timeline import CHAIN_END_LOG, Completion, Observer, Timeline

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "examples" / "demo"
DEMO_CONFIG = DEMO_DIR / "pipelines.yaml"
DEMO_VARIANTS = DEMO_DIR / "chain-variants.yaml"
# The fixtures files of the demo config, by backend (for the backends' kits).
DEMO_FIXTURES = {
    "dataflow": (DEMO_DIR / "emulator-templates.yaml",),
    "datafusion": (DEMO_DIR / "cdap-apps.yaml",),
    "fabric": (DEMO_DIR / "fabric-items.yaml",),
}
DEMO_SAMPLE = DEMO_DIR / "sample.txt"
DEMO_OBJECT = "incoming/sample.txt"
# The backends the demo prefers for its chained step, in order.
CHAIN_PREFERENCE = ("datafusion", "fabric", "dataflow", "dataproc")
_LITERAL_BUCKET = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/")


class StackError(Exception):
    """The stack or the demo could not do its job; the message is the one-line reason."""


def title(backend: str) -> str:
    """A backend's short name for people (the name itself when no kit knows it)."""
    try:
        return kit(backend).title(backend)
    except KeyError:
        return backend


def emulator_available(backend: str) -> bool:
    """Whether this checkout has the emulator of ``backend``."""
    try:
        return kit(backend).available()
    except KeyError:
        return False


def literal_buckets(config: Config) -> set[str]:
    """Buckets named literally in parameter or output templates (``gs://demo-output/...``)."""
    found: set[str] = set()
    for pipeline in config.pipelines.values():
        for template in (*pipeline.parameters.values(), *pipeline.outputs.values()):
            m = _LITERAL_BUCKET.match(template.source)
            if m and "{" not in m.group(1):
                found.add(m.group(1))
    for trigger in config.triggers.values():
        for template in trigger.parameters.values():
            m = _LITERAL_BUCKET.match(template.source)
            if m and "{" not in m.group(1):
                found.add(m.group(1))
    return found


@dataclass
class Plan:
    """The config the stack serves (a validated generated copy) and what it has to create."""

    config: Config
    doc: dict[str, Any]
    source: Path
    note: str = ""
    chain_backend: str | None = None

    @property
    def project(self) -> str:
        return self.config.settings.project

    @property
    def storage_buckets(self) -> list[str]:
        return sorted({t.storage.bucket for t in self.config.triggers_of("storage") if t.storage})

    @property
    def buckets(self) -> list[str]:
        return sorted(
            {*self.storage_buckets, self.config.settings.ledger_bucket, *literal_buckets(self.config)}
        )

    @property
    def trigger_topics(self) -> list[str]:
        return sorted({t.pubsub.topic for t in self.config.triggers_of("pubsub") if t.pubsub})

    @property
    def completion_topic(self) -> str | None:
        path = self.config.settings.completion_topic_path
        return path.rsplit("/", 1)[-1] if path else None

    @property
    def backends(self) -> set[str]:
        return {p.backend for p in self.config.pipelines.values()}

    def chain(self, trigger: str | None = None) -> list[str]:
        """The pipelines a storage trigger starts, following single-upstream completion triggers."""
        starts = [t for t in self.config.triggers_of("storage") if trigger is None or t.name == trigger]
        if not starts:
            return []
        names = [starts[0].pipeline]
        while True:
            nxt = [
                t.pipeline
                for t in self.config.triggers_of("completion")
                if t.completion
                and t.completion.upstream == (names[-1],)
                and "SUCCEEDED" in t.completion.states
                and t.pipeline not in names
            ]
            if not nxt:
                return names
            names.append(nxt[0])


def load_doc(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StackError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise StackError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise StackError(f"{path} is not a YAML mapping")
    return doc


def choose_chain_variant(doc: dict[str, Any], requested: str) -> tuple[str | None, str]:
    """Put the demo's chained pipeline on the backend whose emulator is available (in ``doc``).

    ``examples/demo/chain-variants.yaml`` holds ``{pipeline: NAME, variants: {backend: definition}}``;
    the config's own definition of NAME counts as the variant for its backend. ``requested`` is a
    backend or ``auto`` (the first available of :data:`CHAIN_PREFERENCE`). Returns the backend and
    a note for the output.
    """
    spec = load_doc(DEMO_VARIANTS) if DEMO_VARIANTS.is_file() else {}
    name = spec.get("pipeline")
    pipelines = doc.get("pipelines") or {}
    if not isinstance(name, str) or not isinstance(pipelines.get(name), dict):
        return None, ""
    variants: dict[str, Any] = {
        pipelines[name].get("backend"): pipelines[name],
        **(spec.get("variants") or {}),
    }
    available = [b for b in CHAIN_PREFERENCE if b in variants and emulator_available(b)]
    if requested != "auto":
        if requested not in variants:
            raise StackError(f"--chain-backend {requested}: {DEMO_VARIANTS.name} has no such variant")
        if requested not in available:
            raise StackError(f"--chain-backend {requested}: its emulator is not available in this checkout")
        choice = requested
    elif available:
        choice = available[0]
    else:
        return pipelines[name].get("backend"), ""
    pipelines[name] = variants[choice]
    if choice == "dataflow" and requested == "auto":
        missing = [title(b) for b in variants if b != "dataflow"]
        reason = f"no {' or '.join(missing)} emulator in this checkout" if missing else "no other variant"
        return choice, f"{name} runs on a second Dataflow template: {reason}"
    note = f"{name} runs on {title(choice)}"
    others = [title(b) for b in available if b != choice]
    if others:
        note += f" (also available: {', '.join(others)}; pick with --chain-backend)"
    return choice, note


def make_plan(config_path: Path, work_dir: Path, *, demo_variants: bool, chain_backend: str = "auto") -> Plan:
    """Validate the config, apply the demo's chain variant, write the copy the functions load."""
    doc = load_doc(config_path)
    chosen, note = (None, "")
    if demo_variants:
        chosen, note = choose_chain_variant(doc, chain_backend)
    target = work_dir / "pipelines.yaml"
    try:
        config = build_config(doc, source=str(config_path))
    except ConfigError as exc:
        raise StackError(f"the config is not valid: {exc}") from exc
    # The copy lives in the work folder: definitions kept in the repo (relative to the config) go
    # beside it, so `python -m handlers sync` finds them as it would beside the original.
    for pipeline in (doc.get("pipelines") or {}).values():
        definition = pipeline.get("definition") if isinstance(pipeline, dict) else None
        if isinstance(definition, str) and not Path(definition).is_absolute():
            source, copy = Path(config_path).resolve().parent / definition, work_dir / definition
            copy.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, copy, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copyfile(source, copy)
    header = f"# Generated by local/stack.py from {config_path}; edit that file instead.\n"
    target.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return Plan(config=config, doc=doc, source=target, note=note, chain_backend=chosen)


def example_message(config: Config, trigger: Trigger) -> tuple[dict[str, Any], dict[str, str]]:
    """A JSON body and attributes that ``trigger`` accepts and its parameters can render from:
    its ``equals``/``in`` conditions, and ``"example"`` for other ``data.*``/``attributes.*`` fields."""
    assert trigger.pubsub is not None
    body: dict[str, Any] = {}
    attributes: dict[str, str] = {}

    def put(path: str, value: str) -> None:
        head, _, rest = path.partition(".")
        if head == "attributes" and rest:
            attributes.setdefault(rest, value)
        elif head == "data" and rest:
            node = body
            *parents, leaf = rest.split(".")
            for part in parents:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    return
                node = child
            node.setdefault(leaf, value)

    for section, conditions in (("attributes", trigger.pubsub.attributes), ("data", trigger.pubsub.data)):
        for cond in conditions:
            value = cond.equals if cond.equals is not None else (cond.one_of or [None])[0]
            value = value if value is not None else (cond.prefix or "") + "example" + (cond.suffix or "")
            put(cond.path if cond.path.startswith(section + ".") else f"{section}.{cond.path}", value)
    for template in config.templates_for(trigger).values():
        for fld in template.fields:
            if fld.default is None:
                put(fld.path, "example")
    if trigger.pubsub.dedupe_by:
        put(trigger.pubsub.dedupe_by, "example-1")
    return body, attributes


def example_object(pattern: str) -> str:
    """An object name a storage trigger's glob or prefix accepts, for the printed example."""
    name = pattern.replace("**/", "").replace("**", "x").replace("*", "hello").replace("?", "x")
    name = re.sub(r"\[[^\]]*\]", "x", name)
    if not name or name.endswith("/"):
        name += "hello.txt"
    return name


@dataclass
class DemoResult:
    """The demo's chain once its last pipeline published SUCCEEDED."""

    chain: list[str]
    completions: list[Completion]
    chain_seconds: float
    output_uri: str | None = None

    def summary(self) -> str:
        return f"{' -> '.join(self.chain)} completed in {self.chain_seconds:.1f}s"


def wait_for_chain(
    observer: Observer, timeline: Timeline, plan: Plan, chain: list[str], timeout: float
) -> DemoResult:
    """Wait until the chain's last pipeline published SUCCEEDED; StackError with the reason otherwise."""
    deadline = timeline.origin + timeout
    while True:
        done = {c.pipeline: c for c in observer.completions()}
        for name in chain:
            comp = done.get(name)
            if comp is not None and comp.state != "SUCCEEDED":
                reason = f": {comp.data.get('reason')}" if comp.data.get("reason") else ""
                raise StackError(f"pipeline {name} ended {comp.state}{reason}")
        last = done.get(chain[-1])
        if last is not None:
            # A moment for the last completion's own delivery to on_message to show ("chain end").
            settle = time.time() + 1.5
            while time.time() < settle and not observer.seen_log(CHAIN_END_LOG):
                time.sleep(0.1)
            return DemoResult(
                chain,
                [done[n] for n in chain],
                chain_seconds=last.at - timeline.origin,
                output_uri=_output_uri(done[chain[0]]),
            )
        if time.time() > deadline:
            pending = next(n for n in chain if n not in done)
            runs = [r for r in observer.runs() if r.pipeline == pending]
            state = max(runs, key=lambda r: str(r.record.get("updated_at"))).state if runs else "not launched"
            who = title(plan.config.pipelines[pending].backend)
            extra = f" ({'; '.join(observer.failures)})" if observer.failures else ""
            raise StackError(
                f"pipeline {pending} ({who}) did not complete within {timeout:g}s: last state {state}{extra}"
            )
        time.sleep(0.1)


def _output_uri(comp: Completion) -> str | None:
    """The first gs:// object among a completion's declared outputs."""
    outputs = comp.data.get("outputs") or {}
    for value in outputs.values():
        if isinstance(value, str) and value.startswith("gs://") and not value.endswith("/"):
            return value
    return None


def show_output(result: DemoResult, client: Any, out: TextIO, lines: int = 12) -> None:
    """Print the first pipeline's output object: its gs:// path and first lines."""
    if not result.output_uri:
        print(f"\n({result.chain[0]} declares no gs:// output object)", file=out)
        return
    bucket, _, name = result.output_uri[len("gs://") :].partition("/")
    try:
        text = client.bucket(bucket).blob(name).download_as_text()
    except Exception as exc:
        raise StackError(f"the output {result.output_uri} cannot be read: {exc}") from exc
    rows = text.splitlines()
    print(f"\nOutput of {result.chain[0]}: {clean(result.output_uri)} ({len(rows)} lines)", file=out)
    for row in rows[:lines]:
        print(f"    {clean(row)}", file=out)  # the words of an uploaded file: escaped, never sent raw
    if len(rows) > lines:
        print(f"    ... {len(rows) - lines} more", file=out)
    out.flush()
