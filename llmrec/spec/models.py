"""The spec language as pydantic models (extra="forbid" everywhere, so unknown keys are errors).

Shorthands are normalised in ``mode="before"`` validators rather than with unions, so that a mistake produces
one precise error instead of one per union member.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_IDS = frozenset({"inputs", "resources", "env", "state", "session", "error"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``250ms``, ``2s``, ``1.5m``, ``1h``, ``1d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2, 2.5, '250ms', '2s' or '1m'")
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ValueError(f"expected a duration such as 2, 2.5, '250ms', '2s' or '1m', got {shown}")
    except OverflowError:
        raise ValueError("the duration is too large") from None
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds) or seconds > 10 * 365 * 86400:
        raise ValueError("the duration is too large (at most 10 years)")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


InputTypeName = Literal["string", "integer", "number", "boolean", "array", "object"]


class InputSpec(_Strict):
    """One typed field of a request. ``user_id: string`` is shorthand for ``{type: string}``."""

    type: InputTypeName = "string"
    description: str = ""
    default: Any = None
    required: bool | None = Field(None, description="Defaults to true when no default is given.")
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=0)
    items: InputTypeName | None = Field(None, description="Element type of an array input.")
    examples: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"type": data}
        return data

    @property
    def is_required(self) -> bool:
        if self.required is not None:
            return self.required
        return "default" not in self.model_fields_set


class RetrySpec(_Strict):
    """Retry a failing node. ``retries: 2`` is shorthand for ``{attempts: 2}`` (two more tries)."""

    attempts: int = Field(0, ge=0, le=100, description="Extra attempts after the first one fails.")
    backoff: float = Field(0.1, description="Seconds before the first retry; doubles each time.")
    max_backoff: float = Field(10.0, description="Upper bound on the wait between retries.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"attempts": data}
        if not isinstance(data, dict):
            raise ValueError("expected a number of extra attempts, or a mapping {attempts, backoff, max_backoff}")
        return data

    @field_validator("backoff", "max_backoff", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> float:
        return parse_duration(v)


class CacheSpec(_Strict):
    """Cache a node's result. ``cache: true`` keys on the node's resolved inputs with no expiry."""

    enabled: bool = True
    key: str | None = Field(None, description="A template such as '${inputs.user_id}'; default: the inputs.")
    ttl: float | None = Field(None, description="Seconds (or '10m') before an entry expires.")
    backend: str = "memory"
    max_entries: int = Field(10_000, ge=1)
    path: str | None = Field(
        None, description="Folder of a persistent backend such as 'disk' (relative to the spec's folder); default: "
                          "$LLMREC_CACHE_DIR/nodecache.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, bool):
            return {"enabled": data}
        if not isinstance(data, dict):
            raise ValueError("expected true/false, or a mapping {key, ttl, backend, max_entries, path}")
        return data

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)


class FallbackSpec(_Strict):
    """What a node yields when it fails after its retries: another node, a literal value, or a template."""

    node: str | None = None
    value: Any = None
    template: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FallbackSpec:
        given = [k for k in ("node", "value", "template") if k in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of 'node', 'value' or 'template'")
        return self


class NodeSpec(_Strict):
    """One node of the graph."""

    type: str = Field(description="A registered node type, e.g. 'retrieve.popular'. See `llmrec plugins`.")
    description: str = ""
    config: dict[str, Any] = Field(default_factory=dict, description="Settings of the node type.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Values or ${...} references.")
    timeout: float | None = Field(None, description="Seconds (or '500ms', '2s') before the node is abandoned.")
    retries: RetrySpec = Field(default_factory=RetrySpec)
    cache: CacheSpec | None = None
    fallback: FallbackSpec | None = None
    when: str | None = Field(None, description="A condition such as 'inputs.query' or 'inputs.k > 5'.")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)


class ResourceSpec(_Strict):
    """Something loaded once and shared by nodes: a catalog, an index, a model, a provider."""

    type: str
    description: str = ""
    config: dict[str, Any] = Field(default_factory=dict)


class BudgetSpec(_Strict):
    """What one request may spend. A node with a fallback whose request budget is spent skips straight to it."""

    latency: float | None = Field(None, description="Seconds (or '800ms') the whole request may take.")
    cost: float | None = Field(None, ge=0, description="US dollars of LLM calls the whole request may spend.")

    @field_validator("latency", mode="before")
    @classmethod
    def _latency(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)


class StateSpec(_Strict):
    """What a session keeps between turns: its schema, and the node output that is the next state.

    ``schema`` is a mapping of typed fields like ``inputs:`` (each with a default: a new session starts from them)
    or a reference to a pydantic model (``package.module:Model``, ``file.py:Model``); ``update`` a reference such
    as ``${track.state}``. Nodes read the current state as ``${state}`` or ``${state.FIELD}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: str | dict[str, InputSpec] = Field(
        alias="schema", description="Fields with types and defaults (like 'inputs:'), or 'package.module:Model'.")
    update: str = Field(description="The node output that is the next state, e.g. '${track.state}'.")
    description: str = ""


#: the most Ray Serve replicas a spec's `serving:` block may ask for
MAX_SPEC_REPLICAS = 64


class ServingSpec(_Strict):
    """How ``llmrec serve`` runs this spec when its command line does not say: the engine and, for Ray Serve, the
    replicas (docs/scaling.md). The command's ``--engine``, ``--replicas``, ... win over these."""

    engine: Literal["local", "ray"] | None = Field(
        None, description="local (uvicorn on this machine, the default) or ray (Ray Serve replicas).")
    # bounded: a spec is data, and must not make a server start thousands of processes (the command's flags, the
    # operator's own choice, are not bounded)
    replicas: int | None = Field(None, ge=1, le=MAX_SPEC_REPLICAS,
                                 description="--engine ray: how many replicas (default 1).")
    min_replicas: int | None = Field(None, ge=0, le=MAX_SPEC_REPLICAS,
                                     description="--engine ray: autoscale from this many replicas ...")
    max_replicas: int | None = Field(None, ge=1, le=MAX_SPEC_REPLICAS, description="... to this many (give both).")
    num_cpus_per_replica: float | None = Field(None, ge=0.25, le=1024,
                                               description="--engine ray: CPUs each replica reserves.")

    @model_validator(mode="after")
    def _bounds(self) -> ServingSpec:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("give min_replicas and max_replicas together (autoscaling between them)")
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not be above max_replicas")
        return self


class Spec(_Strict):
    """A whole spec after includes are merged."""

    version: Literal[1] = 1
    name: str = Field(min_length=1)
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    resources: dict[str, ResourceSpec] = Field(default_factory=dict)
    nodes: dict[str, NodeSpec] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="Per-request latency and cost budget.")
    state: StateSpec | None = Field(None, description="Typed session state: its schema and the next state's node.")
    serving: ServingSpec | None = Field(
        None, description="How `llmrec serve` runs the spec unless its options say otherwise: engine, replicas.")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named alternatives compared by `llmrec eval`: each maps dotted paths such as "
                    "'nodes.rank.config.weight' to the value that replaces it.")
