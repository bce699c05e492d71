"""plan: each node of a built :class:`~llmrec.graph.build.Graph`, made ready to run.

A :class:`NodePlan` holds everything about one node that can be decided before any request: its node type
instance, its bindings, its policies as configured in the spec, its cache backend and key prefix, and (once
the resources are loaded, :func:`bind_static`) the inputs that depend only on resources. The per-request work
left is :func:`node_inputs` and, for cached nodes, :func:`fingerprint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import pickle
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter

from ..graph.build import BuiltNode, Graph
from ..node import NodeType
from ..spec.refs import RefExpr, get_attr
from .batch import Batcher, is_batchable


@dataclass(slots=True)
class NodePlan:
    """One node, ready to run."""

    id: str
    type: str
    built: BuiltNode
    instance: NodeType
    call: Any
    is_async: bool
    offload: bool
    bindings: tuple[tuple[str, Any], ...]
    deps: tuple[str, ...]
    when: Any
    when_deps: tuple[str, ...]
    timeout: float | None
    attempts: int
    backoff: float
    max_backoff: float
    cache: Any
    cache_ttl: float | None
    cache_prefix: str
    fallback: Any
    wants_context: bool
    eager: bool
    #: no policy applies (llmrec.runtime.policies): the scheduler runs the node on its short path
    plain: bool = False
    #: the node's full path: its applicable policies around the call (set when the Runtime starts)
    run: Callable[[Any], Awaitable[Any]] | None = None
    static_kwargs: dict[str, Any] = field(default_factory=dict)  # inputs bound to resources/literals: at start
    #: the other inputs, evaluated per request: (name, root, attrs, expr), root None when not a plain reference
    dynamic: tuple[tuple[str, str | None, tuple[str, ...], Any], ...] = ()
    cache_peek: Any = None  # a cache backend's synchronous lookup, when it has one
    static_key: str | None = None  # the cache key of a cached node whose inputs are all static
    #: resource values (and attributes bound to inputs) by id -> the name a cache key gives them
    tokens: dict[int, str] = field(default_factory=dict)


def build_plan(graph: Graph, node: BuiltNode) -> NodePlan:
    """The plan of one built node: its node type instantiated, its cache backend created, its fallback value
    validated against the node's output type."""
    instance = node.cls(node.config)
    call = instance.run
    spec = node.spec
    cache = None
    if spec.cache is not None and spec.cache.enabled:
        factory = graph.registry.cache_backends[spec.cache.backend]
        options: dict[str, Any] = {"max_entries": spec.cache.max_entries}
        if spec.cache.path:
            options["path"] = spec.cache.path
        cache = factory(**options)
    version = json.dumps([node.cls.name, node.config.model_dump(mode="json"), node.spec.model_dump(mode="json"),
                          instance.cache_version() if cache is not None else ""], sort_keys=True, default=str)
    prefix = f"{node.id}:{hashlib.sha256(version.encode()).hexdigest()[:16]}:"
    fallback = spec.fallback
    if fallback is not None and "value" in fallback.model_fields_set:
        # consumers get the node's declared output type, not the raw YAML mapping
        try:
            value = TypeAdapter(node.output_type).validate_python(fallback.value)
        except Exception:  # an output type pydantic cannot validate: pass the value as written
            value = fallback.value
        fallback = fallback.model_copy(update={"value": value})
    is_async = inspect.iscoroutinefunction(call)
    if is_batchable(instance):  # inside batching(), concurrent requests' calls go to run_batch together
        call = Batcher(instance)
    return NodePlan(
        id=node.id,
        type=node.cls.name,
        built=node,
        instance=instance,
        call=call,
        is_async=is_async,
        offload=node.cls.offload,
        bindings=tuple(node.bindings.items()),
        deps=tuple(sorted(node.deps)),
        when=node.when,
        when_deps=tuple(sorted(node.when_deps)),
        timeout=spec.timeout,
        attempts=1 + spec.retries.attempts,
        backoff=spec.retries.backoff,
        max_backoff=spec.retries.max_backoff,
        cache=cache,
        cache_ttl=spec.cache.ttl if spec.cache is not None else None,
        cache_prefix=prefix,
        fallback=fallback,
        wants_context=node.signature.wants_context,
        # inline nodes cannot be interrupted anyway (they never yield to the loop), so their timeout is
        # checked when they return and they can always start eagerly
        eager=(is_async and node.cls.inline) or (spec.timeout is None and not is_async and not node.cls.offload),
    )


def static_inputs(plan: NodePlan, resources: dict[str, Any]) -> dict[str, Any]:
    """Inputs known before any request: those that reference only resources (or nothing)."""
    env = {"resources": resources}
    out = {}
    for name, expr in plan.bindings:
        if all(r.root == "resources" for r in expr.refs()):
            out[name] = expr.evaluate(env)
    return out


def bind_static(plans: dict[str, NodePlan], resources: dict[str, Any]) -> None:
    """Once the resources are loaded: fill each plan's static inputs, the per-request rest, its cache lookup
    and (inputs all static) its one cache key."""
    static = {node_id: static_inputs(p, resources) for node_id, p in plans.items()}
    # cache keys name resource values (and their attributes) instead of hashing them
    tokens = {id(v): f"resource:{n}" for n, v in resources.items()}
    for p in plans.values():
        for name, expr in p.bindings:
            if name in static[p.id] and isinstance(expr, RefExpr):
                tokens.setdefault(id(static[p.id][name]), expr.ref.text)
    for p in plans.values():
        p.static_kwargs = static[p.id]
        p.tokens = tokens
        p.dynamic = tuple(
            (n, e.ref.root, e.ref.attrs, e) if isinstance(e, RefExpr) else (n, None, (), e)
            for n, e in p.bindings if n not in static[p.id]
        )
        p.cache_peek = getattr(p.cache, "peek", None)  # in-process backends answer without a coroutine
        if p.cache is not None and p.built.cache_key is None and len(static[p.id]) == len(p.bindings):
            p.static_key = p.cache_prefix + fingerprint(static[p.id], tokens)


def node_inputs(plan: NodePlan, env: dict[str, Any]) -> dict[str, Any]:
    """A node's keyword arguments: its static inputs plus the per-request ones, references resolved inline."""
    kwargs = plan.static_kwargs.copy()
    for name, root, attrs, expr in plan.dynamic:
        if root is None:
            kwargs[name] = expr.evaluate(env)
            continue
        value = env[root]
        for a in attrs:
            value = None if value is None else get_attr(value, a)
        kwargs[name] = value
    return kwargs


def fingerprint(value: Any, tokens: dict[int, str]) -> str:
    """A content hash of a node's inputs for its cache key; objects in ``tokens`` count by their name."""
    def default(o: Any) -> Any:
        token = tokens.get(id(o))
        if token is not None:
            return token
        if isinstance(o, BaseModel):
            return o.model_dump(mode="json")
        if isinstance(o, (set, frozenset)):
            return sorted(map(str, o))
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {"<dataclass>": type(o).__qualname__, **{f.name: getattr(o, f.name) for f in dataclasses.fields(o)}}
        tobytes = getattr(o, "tobytes", None)  # numpy arrays: by content, shape and dtype
        if callable(tobytes) and hasattr(o, "shape") and hasattr(o, "dtype"):
            return f"<array {o.dtype} {tuple(o.shape)} {hashlib.sha256(tobytes()).hexdigest()}>"
        try:  # anything else by content, so a key never depends on where an object happens to live
            return f"<{type(o).__qualname__} {hashlib.sha256(pickle.dumps(o, protocol=5)).hexdigest()}>"
        except Exception:
            return f"<{type(o).__qualname__}:{id(o)}>"  # unpicklable: stable within this process only

    data = json.dumps(value, sort_keys=True, default=default, ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()
