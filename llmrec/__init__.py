"""llmrec: declarative recommender systems with large language models.

    import llmrec
    graph = llmrec.validate("specs/quickstart.yaml")      # every spec error at once, or a Graph
    result = llmrec.Runtime(graph).run_sync({"user_id": "u1"})
    result.outputs, result.trace
"""

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
