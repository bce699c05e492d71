"""The public Python API: load a spec, validate it, run it (sync and async)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import Location, SpecError, SpecErrors, UntrustedCodeError
from .graph.build import Graph, check_graph
from .graph.build import build as _build
from .plugins import get_registry
from .runtime.executor import Runtime
from .runtime.trace import RunResult
from .spec.loader import SpecDocument, load_spec
from .spec.variants import apply_variant
from .trust import grant, hint


def _trust(path: str | os.PathLike[str], trust: bool) -> None:
    if trust:
        grant(Path(path).expanduser().resolve().parent)


def _skipped_plugins(doc: SpecDocument, registry: Any) -> list[SpecError]:
    where = Location(next(iter(doc.base_dirs), str(doc.path)), 1, 1)
    return [UntrustedCodeError(f"plugins/{p.name} beside the spec is code, and the spec's folder is not trusted, "
                               "so it was not imported", where, None, hint(doc.base_dir))
            for p in registry.skipped_plugins]


def check(path: str | os.PathLike[str], display: str | None = None,
          trust: bool = False) -> tuple[Graph | None, list[SpecError], list[SpecError]]:
    """Load and check a spec without running anything: (graph or None, errors, warnings).

    Code the spec names (plugins/*.py, schema and check files, modules outside llmrec and its plugins) is
    imported only when its folder is trusted; ``trust=True`` trusts it for this process (llmrec/trust.py)."""
    _trust(path, trust)
    doc = load_spec(path, display)
    if doc.spec is None:
        return None, list(doc.errors), []
    registry = get_registry(doc.base_dir)
    graph, errors, warnings = check_graph(doc, registry)
    errors = sorted(list(errors) + _skipped_plugins(doc, registry), key=SpecError.sort_key)
    if errors:
        graph = None
    if graph is not None and doc.spec.variants:  # every variant must build too (`llmrec eval` runs them)

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


def validate(path: str | os.PathLike[str], display: str | None = None, trust: bool = False) -> Graph:
    """Load, build and check a spec; raises :class:`SpecErrors` listing every problem."""
    graph, errors, _ = check(path, display, trust)
    if errors or graph is None:
        raise SpecErrors(errors)
    return graph


def build(doc: SpecDocument) -> Graph:
    """Build a graph from an already loaded spec document."""
    if doc.spec is None:
        raise SpecErrors(doc.errors)
    return _build(doc, get_registry(doc.base_dir))


def open_runtime(path: str | os.PathLike[str], trust: bool = False) -> Runtime:
    """Validate a spec and return a Runtime for it (resources load on first run or ``await rt.start()``)."""
    return Runtime(validate(path, trust=trust))


async def arun(path: str | os.PathLike[str], inputs: dict[str, Any] | None = None, trust: bool = False,
               **kwargs: Any) -> RunResult:
    """Validate and run a spec once, asynchronously."""
    rt = open_runtime(path, trust)
    try:
        return await rt.run(inputs, **kwargs)
    finally:
        await rt.close()


def run(path: str | os.PathLike[str], inputs: dict[str, Any] | None = None, trust: bool = False,
        **kwargs: Any) -> RunResult:
    """Validate and run a spec once (synchronous convenience wrapper around :func:`arun`)."""
    import asyncio

    return asyncio.run(arun(path, inputs, trust, **kwargs))
