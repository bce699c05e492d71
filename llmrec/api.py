"""The public Python API: load a spec, validate it, run it (sync and async)."""

from __future__ import annotations

import os
from typing import Any

from .errors import SpecError, SpecErrors
from .graph.build import Graph, build as _build, check_graph
from .plugins import get_registry
from .runtime.executor import Runtime
from .runtime.trace import RunResult
from .spec.loader import SpecDocument, load_spec


def check(path: str | os.PathLike[str], display: str | None = None) -> tuple[Graph | None, list[SpecError], list[SpecError]]:
    """Load and check a spec without running anything: (graph or None, errors, warnings)."""
    doc = load_spec(path, display)
    if doc.spec is None:
        return None, list(doc.errors), []
    registry = get_registry(doc.base_dir)
    graph, errors, warnings = check_graph(doc, registry)
    errors = list(errors)
    if graph is not None and doc.spec.variants:  # every variant must build too (`llmrec eval` runs them)
        from .spec.variants import apply_variant

        seen = {e.format() for e in errors}
        for name in doc.spec.variants:
            varied = apply_variant(doc, name)
            found = list(varied.errors) if varied.spec is None else list(check_graph(varied, registry)[1])
            for e in found:
                if not e.message.startswith("variant "):
                    e.message = f"in variant '{name}': {e.message}"
                if e.format() not in seen:
                    seen.add(e.format())
                    errors.append(e)
        if errors:
            graph = None
    return graph, errors, list(warnings)


def validate(path: str | os.PathLike[str], display: str | None = None) -> Graph:
    """Load, build and check a spec; raises :class:`SpecErrors` listing every problem."""
    graph, errors, _ = check(path, display)
    if errors or graph is None:
        raise SpecErrors(errors)
    return graph


def build(doc: SpecDocument) -> Graph:
    """Build a graph from an already loaded spec document."""
    if doc.spec is None:
        raise SpecErrors(doc.errors)
    return _build(doc, get_registry(doc.base_dir))


def open_runtime(path: str | os.PathLike[str]) -> Runtime:
    """Validate a spec and return a Runtime for it (resources load on first run or ``await rt.start()``)."""
    return Runtime(validate(path))


async def arun(path: str | os.PathLike[str], inputs: dict[str, Any] | None = None, **kwargs: Any) -> RunResult:
    """Validate and run a spec once, asynchronously."""
    rt = open_runtime(path)
    try:
        return await rt.run(inputs, **kwargs)
    finally:
        await rt.close()


def run(path: str | os.PathLike[str], inputs: dict[str, Any] | None = None, **kwargs: Any) -> RunResult:
    """Validate and run a spec once (synchronous convenience wrapper around :func:`arun`)."""
    import asyncio

    return asyncio.run(arun(path, inputs, **kwargs))
