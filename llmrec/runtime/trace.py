"""What a run returns besides its outputs: a trace of every node."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic_core import to_jsonable_python


@dataclass(slots=True)
class ModelUsage:
    """What a node's model calls used, filled by node types that declare ``Reports(model_usage=True)``."""

    model: str | None = None
    calls: int = 0  # model calls made (re-asks and retries included); 0 when a cache inside the node answered
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # USD, every call included

    def add(self, other: ModelUsage) -> None:
        """Sum another call's usage into this one (a node making several calls)."""
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.model = self.model or other.model


@dataclass(slots=True)
class NodeRecord:
    """One node's part of a run."""

    node_id: str
    type: str
    status: str = "pending"  # ok | cached | skipped | fallback | error | cancelled
    start_ms: float = 0.0  # since the run started
    wall_ms: float = 0.0
    cache_hit: bool = False
    retries: int = 0
    fallback: str | None = None  # what the node fell back to: "node:<id>", "value" or "template"
    fallback_reason: str | None = None
    error: str | None = None
    usage: ModelUsage | None = None  # model calls, tokens and cost (node types that call a model)
    cache: str | None = None  # which cache answered inside the node, e.g. "prompt" (exact) or "semantic"
    #: anything else a node type reports about its run (JSON-compatible values; shown in the trace)
    extra: dict[str, Any] | None = None

    @property
    def cost(self) -> float:
        """USD spent by this node's model calls (0 when it made none)."""
        return self.usage.cost if self.usage is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if v is None:
                continue
            if isinstance(v, float):
                v = round(v, 3)
            elif k == "usage":
                v = {**v, "cost": round(v["cost"], 8)}
            out[k] = v
        return out


@dataclass(slots=True)
class Trace:
    run_id: str
    spec: str
    started_at: float  # unix seconds
    wall_ms: float = 0.0
    nodes: list[NodeRecord] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        """True when any node fell back."""
        return any(r.fallback is not None for r in self.nodes)

    def node(self, node_id: str) -> NodeRecord | None:
        for r in self.nodes:
            if r.node_id == node_id:
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "spec": self.spec,
            "started_at": self.started_at,
            "wall_ms": round(self.wall_ms, 3),
            "degraded": self.degraded,
            "nodes": [r.to_dict() for r in sorted(self.nodes, key=lambda r: r.start_ms)],
        }


@dataclass(slots=True)
class RunResult:
    """The outputs of one run and its trace."""

    outputs: dict[str, Any]
    trace: Trace
    #: the next session state, for a spec with a ``state:`` block (its model's instance); None otherwise
    state: Any = None

    @property
    def degraded(self) -> bool:
        return self.trace.degraded

    def outputs_json(self) -> dict[str, Any]:
        """The outputs as JSON-compatible data (pydantic models dumped)."""
        return to_jsonable_python(self.outputs)  # type: ignore[no-any-return]

    def fallbacks(self) -> list[dict[str, Any]]:
        """Each node that fell back: which node, what it fell back to, and why."""
        return [{"node": r.node_id, "to": r.fallback, "reason": r.fallback_reason}
                for r in sorted(self.trace.nodes, key=lambda r: r.start_ms) if r.fallback is not None]

    def to_dict(self, trace: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"outputs": self.outputs_json(), "degraded": self.degraded}
        if data["degraded"]:
            data["fallbacks"] = self.fallbacks()
        if self.state is not None:
            data["state"] = to_jsonable_python(self.state)
        if trace:
            data["trace"] = self.trace.to_dict()
        return data
