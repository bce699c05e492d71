"""llmrec: declarative recommender systems with large language models.

    import llmrec
    graph = llmrec.validate("specs/quickstart.yaml")      # every spec error at once, or a Graph
    result = llmrec.Runtime(graph).run_sync({"user_id": "u1"})
    result.outputs, result.trace

Importing this package is cheap: each public name is imported from its module on first use (PEP 562), so
``import llmrec`` loads neither pydantic models, Jinja, asyncio nor the plugins until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .api import arun, build, check, open_runtime, run, validate
    from .data.catalog import Catalog, Interaction, Interactions, Item
    from .errors import (
        InputError,
        LlmrecError,
        PluginError,
        RunError,
        SpecError,
        SpecErrors,
    )
    from .graph.build import Graph
    from .hookspecs import hookimpl
    from .node import (
        CheckContext,
        LoadContext,
        NodeType,
        OutputSchemaProblem,
        Problem,
        Reports,
        ResourceType,
        RunContext,
        SpecPath,
        StartContext,
    )
    from .runtime.executor import Runtime
    from .runtime.trace import ModelUsage, NodeRecord, RunResult, Trace
    from .spec.loader import SpecDocument, load_spec
    from .types import Candidates, Recommendation, Recommendations, ScoredItem, UserProfile

#: public name -> the module it lives in (relative to this package)
_WHERE = {
    "arun": "api",
    "build": "api",
    "Candidates": "types",
    "Catalog": "data.catalog",
    "check": "api",
    "CheckContext": "node",
    "Graph": "graph.build",
    "hookimpl": "hookspecs",
    "InputError": "errors",
    "Interaction": "data.catalog",
    "Interactions": "data.catalog",
    "Item": "data.catalog",
    "LlmrecError": "errors",
    "load_spec": "spec.loader",
    "LoadContext": "node",
    "ModelUsage": "runtime.trace",
    "NodeRecord": "runtime.trace",
    "NodeType": "node",
    "open_runtime": "api",
    "OutputSchemaProblem": "node",
    "PluginError": "errors",
    "Problem": "node",
    "Recommendation": "types",
    "Recommendations": "types",
    "Reports": "node",
    "ResourceType": "node",
    "run": "api",
    "RunContext": "node",
    "RunError": "errors",
    "RunResult": "runtime.trace",
    "Runtime": "runtime.executor",
    "ScoredItem": "types",
    "SpecDocument": "spec.loader",
    "SpecError": "errors",
    "SpecErrors": "errors",
    "SpecPath": "node",
    "StartContext": "node",
    "Trace": "runtime.trace",
    "UserProfile": "types",
    "validate": "api",
}

__all__ = [
    # the values node types pass each other: what a plugin's run() takes and returns
    "Candidates",
    "Catalog",
    "Interaction",
    "Interactions",
    "Item",
    "Recommendation",
    "Recommendations",
    "ScoredItem",
    "UserProfile",
    # writing node and resource types, and running specs
    "CheckContext",
    "Graph",
    "InputError",
    "LlmrecError",
    "LoadContext",
    "ModelUsage",
    "NodeRecord",
    "NodeType",
    "OutputSchemaProblem",
    "Problem",
    "PluginError",
    "Reports",
    "ResourceType",
    "RunContext",
    "RunError",
    "RunResult",
    "Runtime",
    "SpecDocument",
    "SpecError",
    "SpecErrors",
    "SpecPath",
    "StartContext",
    "Trace",
    "arun",
    "build",
    "check",
    "hookimpl",
    "load_spec",
    "run",
    "open_runtime",
    "validate",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'llmrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
