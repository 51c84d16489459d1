"""``graph``: the config as a Mermaid ``flowchart LR`` (or nodes and edges with ``--json``)."""

from __future__ import annotations

import argparse
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from handlers.entry.cli.args import EXIT_OK, _load
from handlers.entry.cli.output import Output
from handlers.model.config import Config, Pipeline, Trigger


# ---------------------------------------------------------------------------------------------
# graph
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # storage | pubsub | pipeline | join
    name: str
    lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "label": list(self.lines)}


@dataclass(frozen=True, order=True)
class Edge:
    source: str
    target: str
    label: str = ""
    kind: str = "trigger"  # trigger | completion | fan-in | join

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target, "label": self.label, "kind": self.kind}


_MERMAID_ESCAPES = {
    "#": "#35;",
    '"': "#quot;",
    "<": "#lt;",
    ">": "#gt;",
    "&": "#amp;",
    "`": "#96;",
    "|": "#124;",
    "\\": "#92;",
    "%": "#37;",
}


def mermaid_text(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label: characters Mermaid parses are entity codes,
    control characters become spaces."""
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)
    return "".join(_MERMAID_ESCAPES.get(ch, ch) for ch in text)


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _storage_lines(trigger: Trigger) -> tuple[str, ...]:
    m = trigger.storage
    assert m is not None
    if m.glob:
        pattern = m.glob
    elif m.prefix or m.suffix:
        pattern = f"{m.prefix or ''}*{m.suffix or ''}"
    else:
        pattern = "**"
    lines = [trigger.name, f"gs://{m.bucket}/{pattern}"]
    if m.glob and (m.prefix or m.suffix):
        lines.append(f"name {m.prefix or ''}*{m.suffix or ''}")
    if m.regex is not None:
        lines.append(f"regex {m.regex.pattern}")
    if m.content_types:
        lines.append("type " + ", ".join(m.content_types))
    if m.min_size is not None and m.max_size is not None:
        lines.append(f"size {_size(m.min_size)} to {_size(m.max_size)}")
    elif m.min_size is not None:
        lines.append(f"size >= {_size(m.min_size)}")
    elif m.max_size is not None:
        lines.append(f"size <= {_size(m.max_size)}")
    return tuple(lines)


def _condition_text(where: str, cond: Any) -> str:
    label = f"{where}.{cond.path}"
    if cond.exists is not None:
        return f"{label} {'exists' if cond.exists else 'absent'}"
    if cond.equals is not None:
        return f"{label} = {cond.equals}"
    if cond.one_of is not None:
        return f"{label} in {', '.join(cond.one_of)}"
    if cond.regex is not None:
        return f"{label} ~ {cond.regex.pattern}"
    if cond.prefix is not None or cond.suffix is not None:
        return f"{label} = {cond.prefix or ''}*{cond.suffix or ''}"
    return label


def _pubsub_lines(trigger: Trigger) -> tuple[str, ...]:
    m = trigger.pubsub
    assert m is not None
    lines = [trigger.name, f"topic {m.topic}"]
    lines += [_condition_text("attributes", c) for c in m.attributes]
    lines += [_condition_text("data", c) for c in m.data]
    return tuple(lines)


def graph_model(config: Config) -> tuple[list[Node], list[Edge]]:
    """Nodes (storage/pubsub triggers, pipelines, fan-in joins) and edges, sorted and stable."""
    used: set[str] = set()

    def node_id(prefix: str, name: str) -> str:
        base = prefix + re.sub(r"[^A-Za-z0-9_]", "_", name)
        candidate, n = base, 2
        while candidate in used:
            candidate, n = f"{base}_{n}", n + 1
        used.add(candidate)
        return candidate

    nodes: list[Node] = []
    edges: list[Edge] = []
    pipeline_ids: dict[str, str] = {}
    for name in sorted(config.pipelines):
        p: Pipeline = config.pipelines[name]
        detail = p.backend + (" · streaming" if p.mode == "streaming" else "")
        pipeline_ids[name] = node_id("p_", name)
        nodes.append(Node(pipeline_ids[name], "pipeline", name, (name, detail)))
    for name in sorted(config.triggers):
        trig = config.triggers[name]
        target = pipeline_ids.get(trig.pipeline)
        if target is None:
            continue
        if trig.storage is not None:
            tid = node_id("t_", name)
            nodes.append(Node(tid, "storage", name, _storage_lines(trig)))
            edges.append(Edge(tid, target))
        elif trig.pubsub is not None:
            tid = node_id("t_", name)
            nodes.append(Node(tid, "pubsub", name, _pubsub_lines(trig)))
            edges.append(Edge(tid, target))
        elif trig.completion is not None:
            spec = trig.completion
            if spec.is_fan_in:
                jid = node_id("j_", name)
                key = spec.join_key.source if spec.join_key is not None else ""
                nodes.append(Node(jid, "join", name, (name, f"join on {key}")))
                for up in sorted(spec.upstream):
                    if up in pipeline_ids:
                        edges.append(Edge(pipeline_ids[up], jid, ", ".join(spec.states), "fan-in"))
                edges.append(Edge(jid, target, "", "join"))
            else:
                for up in spec.upstream:
                    if up in pipeline_ids:
                        edges.append(
                            Edge(pipeline_ids[up], target, f"{name}: {', '.join(spec.states)}", "completion")
                        )
    order = {"storage": 0, "pubsub": 1, "pipeline": 2, "join": 3}
    nodes.sort(key=lambda n: (order[n.kind], n.name))
    edges.sort()
    return nodes, edges


_SHAPES = {
    "storage": ('[("', '")]'),
    "pubsub": ('>"', '"]'),
    "pipeline": ('["', '"]'),
    "join": ('{{"', '"}}'),
}


def graph_mermaid(config: Config) -> str:
    """The config as a Mermaid ``flowchart LR``: storage triggers (cylinders) and pubsub triggers
    (flags) point at pipelines (boxes, with their backend); completion triggers are edges labelled
    with the trigger and the states; fan-ins go through a join node (hexagon) naming the join key.
    Deterministic (sorted) so it can be committed and diffed."""
    nodes, edges = graph_model(config)
    lines = ["flowchart LR"]
    for n in nodes:
        left, right = _SHAPES[n.kind]
        label = "<br/>".join(mermaid_text(line) for line in n.lines)
        lines.append(f"    {n.id}{left}{label}{right}")
    for e in edges:
        arrow = f' -->|"{mermaid_text(e.label)}"| ' if e.label else " --> "
        lines.append(f"    {e.source}{arrow}{e.target}")
    return "\n".join(lines) + "\n"


def cmd_graph(args: argparse.Namespace, out: Output) -> int:
    config = _load(args)
    if out.json:
        nodes, edges = graph_model(config)
        out.emit({"nodes": [n.to_json() for n in nodes], "edges": [e.to_json() for e in edges]})
    else:
        out.stdout.write(graph_mermaid(config))
    return EXIT_OK
