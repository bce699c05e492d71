"""Draw a graph as Mermaid or Graphviz DOT."""

from __future__ import annotations

from ..spec.refs import Expr
from .build import Graph


def _output_sources(graph: Graph) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, expr in graph.outputs.items():
        out[name] = {r.root for r in expr.refs() if r.node}
    return out


def _input_users(graph: Graph) -> set[str]:
    users = set()
    for node in graph.nodes.values():
        exprs: list[Expr] = list(node.bindings.values())
        if any(r.root == "inputs" for e in exprs for r in e.refs()) or node.spec.when:
            users.add(node.id)
    return users


def mermaid(graph: Graph) -> str:
    lines = ["flowchart LR", "  inputs([inputs])"]
    for node_id in graph.order:
        node = graph.nodes.get(node_id)
        label = f"{node_id}<br/><small>{node.cls.name}</small>" if node else node_id
        extras = []
        if node and node.spec.when:
            extras.append("when")
        if node and node.spec.cache:
            extras.append("cache")
        if node and node.spec.fallback:
            extras.append("fallback")
        if extras:
            label += f"<br/><small>{', '.join(extras)}</small>"
        lines.append(f'  {node_id}["{label}"]')
    for node_id in sorted(_input_users(graph)):
        lines.append(f"  inputs --> {node_id}")
    for src, dst, kind in graph.dag.edges(data="kind"):
        lines.append(f"  {src} -.->|fallback| {dst}" if kind == "fallback" else f"  {src} --> {dst}")
    for name, sources in _output_sources(graph).items():
        lines.append(f"  out_{name}[/{name}/]")
        for s in sorted(sources):
            lines.append(f"  {s} --> out_{name}")
    return "\n".join(lines) + "\n"


def dot(graph: Graph) -> str:
    lines = [f'digraph "{graph.name}" {{', "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];',
             '  inputs [shape=oval];']
    for node_id in graph.order:
        node = graph.nodes.get(node_id)
        label = f"{node_id}\\n{node.cls.name}" if node else node_id
        lines.append(f'  "{node_id}" [label="{label}"];')
    for node_id in sorted(_input_users(graph)):
        lines.append(f'  inputs -> "{node_id}";')
    for src, dst, kind in graph.dag.edges(data="kind"):
        style = ' [style=dashed, label="fallback"]' if kind == "fallback" else ""
        lines.append(f'  "{src}" -> "{dst}"{style};')
    for name, sources in _output_sources(graph).items():
        lines.append(f'  "out:{name}" [shape=parallelogram, label="{name}"];')
        for s in sorted(sources):
            lines.append(f'  "{s}" -> "out:{name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
