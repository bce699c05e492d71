"""run: the :class:`Runtime`, which runs a validated :class:`~llmrec.graph.build.Graph`, and resource loading.

A Runtime is three parts: the node plans (:mod:`llmrec.runtime.plan`: bindings, static inputs, cache keys,
decided once), the per-node policies (:mod:`llmrec.runtime.policies`: ``when``, cache, context, lifecycle hooks,
fallback, retries, budget, timeout, each applied only to the plans it applies to) and the scheduler
(:mod:`llmrec.runtime.scheduler`: the request-time loop that runs the plans concurrently in dependency order
and records the trace). Everything that can be decided once is decided when the Runtime is created or
started, so the per-request path stays short.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import InputError
from ..graph.build import Graph
from ..node import LoadContext, NodeType, StartContext, wants_context
from .batch import batching
from .plan import NodePlan, bind_static, build_plan
from .policies import attach
from .scheduler import Scheduler
from ..graph.state import validate_state
from .trace import NodeRecord, RunResult

logger = logging.getLogger("llmrec.runtime")


def _artifact_loader(graph: Graph, name: str, resource: Callable[[str], Awaitable[Any]]) -> Any:
    async def artifact() -> Any:
        from ..training import ensure_artifact  # lazy: cycle (training imports the executor)

        return await ensure_artifact(graph, name, resource=resource)

    return artifact


async def _load(graph: Graph, name: str, instance: Any, resource: Callable[[str], Awaitable[Any]],
                artifact: Callable[[], Awaitable[Any]]) -> Any:
    if not wants_context(instance.load):
        return await instance.load()
    base = graph.document.base_dir if graph.document is not None else None
    return await instance.load(LoadContext(name=name, graph=graph, base_dir=base, resource=resource,
                                           artifact=artifact, registry=graph.registry))


async def load_resource(graph: Graph, name: str, loaded: dict[str, Any] | None = None) -> Any:
    """The value of resource ``name`` of a built graph, loaded as a :class:`Runtime` loads it (a LoadContext with
    the graph, its base dir and registry, other resources and the trained artifact), for tools that need one
    resource without starting the spec. ``loaded`` memoises values by name across calls (and may be preset)."""
    memo = loaded if loaded is not None else {}

    async def resource(n: str) -> Any:
        if n not in memo:
            if n not in graph.resources:
                raise KeyError(f"no resource named '{n}' in spec '{graph.name}'")
            memo[n] = await load_resource(graph, n, memo)
        return memo[n]

    if name in memo:
        return memo[name]
    res = graph.resources[name]
    memo[name] = await _load(graph, name, res.cls(res.config), resource, _artifact_loader(graph, name, resource))
    return memo[name]


#: requests per wave when a spec of inline nodes only runs many (Runtime.run_many, llmrec eval): large enough
#: that a batchable node's batch pays, small enough that a wave's objects stay young (benchmarks/eval_speed.py)
WAVE = 32


class Runtime:
    """Runs a validated graph. Create once (resources and node types load once), run many times.

    >>> rt = Runtime(graph)
    >>> result = rt.run_sync({"user_id": "u1"})
    """

    def __init__(self, graph: Graph, resources: dict[str, Any] | None = None) -> None:
        """``resources`` supplies already-loaded values for some of the spec's resources (by name), which are
        then not loaded again: ``llmrec eval`` loads a dataset once and hands it to every spec it compares."""
        self.graph = graph
        unknown = set(resources or ()) - set(graph.resources)
        if unknown:
            raise ValueError(f"no resource named {', '.join(sorted(unknown))} in spec '{graph.name}'")
        self._preset = dict(resources or {})
        hook = graph.registry.hook
        self._hooks = {
            name: getattr(hook, name)
            for name in ("llmrec_before_node_run", "llmrec_after_node_run", "llmrec_on_node_error", "llmrec_after_run")
            if getattr(hook, name).get_hookimpls()
        }
        self.resources: dict[str, Any] = {}
        self.warm_errors: dict[str, Exception] = {}
        self._run_prefix = uuid.uuid4().hex[:8]  # run ids: unique per runtime, cheap per request
        self._run_counter = itertools.count(1)
        self._name = graph.name
        self._resource_types = {name: r.cls(r.config) for name, r in graph.resources.items()}
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._plans = {node_id: build_plan(graph, node) for node_id, node in graph.nodes.items()}
        self._inline_only = all(node.cls.inline for node in graph.nodes.values())
        self._learners = tuple(p.id for p in self._plans.values() if type(p.instance).learns_from_feedback)
        self._scheduler = Scheduler(graph, self._plans, self.resources, self._hooks.get("llmrec_after_run"))

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every resource and start every node type, once. Safe to call many times."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            names = [n for n in self._resource_types if n not in self._preset]
            loading: dict[str, asyncio.Future[Any]] = {}

            async def resource(name: str) -> Any:  # a resource's value for another resource's load(ctx)
                if name in self._preset:
                    return self._preset[name]
                if name not in loading:
                    raise KeyError(f"no resource named '{name}' in spec '{self._name}'")
                return await asyncio.shield(loading[name])

            for n in names:
                loading[n] = asyncio.ensure_future(self._load_resource(n, resource))
            try:
                loaded = await asyncio.gather(*(loading[n] for n in names))
            except BaseException:
                for fut in loading.values():
                    fut.cancel()
                raise
            self.resources.update(self._preset)
            self.resources.update(zip(names, loaded))
            await asyncio.gather(*(self._start_node(p) for p in self._plans.values()))
            bind_static(self._plans, self.resources)
            for p in self._plans.values():
                attach(p, self._hooks)  # which policies apply; a plan none applies to runs on the short path
            warming = [p for p in self._plans.values() if type(p.instance).warm is not NodeType.warm]
            results = await asyncio.gather(*(p.instance.warm(**p.static_kwargs) for p in warming),
                                           return_exceptions=True)
            # warming is an optimisation: a node that cannot warm up fails (or falls back) when it runs
            self.warm_errors = {p.id: r for p, r in zip(warming, results) if isinstance(r, Exception)}
            self._started = True

    def _artifact(self, name: str, resource: Any = None) -> Any:
        async def value(n: str) -> Any:
            return self.resources[n] if n in self.resources else await resource(n)

        return _artifact_loader(self.graph, name, value)

    async def _load_resource(self, name: str, resource: Any) -> Any:
        return await _load(self.graph, name, self._resource_types[name], resource, self._artifact(name, resource))

    async def _start_node(self, p: NodePlan) -> None:
        if not wants_context(p.instance.start):
            await p.instance.start()
            return
        base = self.graph.document.base_dir if self.graph.document is not None else None
        await p.instance.start(StartContext(node_id=p.id, graph=self.graph, base_dir=base,
                                            artifact=self._artifact(p.id), registry=self.graph.registry))

    async def close(self) -> None:
        await asyncio.gather(*(p.instance.close() for p in self._plans.values()), return_exceptions=True)
        for p in self._plans.values():  # a `cache:` backend with a connection (redis) closes it too
            closer = getattr(p.cache, "close", None)
            if callable(closer):
                try:
                    done = closer()
                    if inspect.isawaitable(done):
                        await done
                except Exception:  # noqa: BLE001 - closing is best effort; the runtime is going away
                    logger.warning("node %s: closing its cache failed", p.id, exc_info=True)

    @property
    def learners(self) -> list[str]:
        """Ids of the nodes whose type learns from feedback (``NodeType.learns_from_feedback``)."""
        return list(self._learners)

    async def feedback(self, events: Sequence[Any]) -> dict[str, int]:
        """Hand feedback events to every node that learns from them, in order; returns, per node, how many it
        took. A node that raises is logged and skipped: feedback never fails the caller."""
        told: dict[str, int] = {}
        for node_id in self._learners:
            instance = self._plans[node_id].instance
            told[node_id] = 0
            for event in events:
                try:
                    await instance.feedback(event)
                    told[node_id] += 1
                except Exception:  # noqa: BLE001 - a learner's bug must not lose the caller's feedback
                    logger.exception("node %s failed to learn from feedback for request %s", node_id,
                                     getattr(event, "request_id", "?"))
        return told

    @property
    def ready(self) -> bool:
        return self._started

    @property
    def plans(self) -> Mapping[str, NodePlan]:
        """Each node's plan by id; once started, ``plan.plain`` says which run on the short path."""
        return MappingProxyType(self._plans)

    # -- requests ----------------------------------------------------------------------------------------
    def validate_inputs(self, inputs: dict[str, Any] | BaseModel | None) -> dict[str, Any]:
        """Check a request against the spec's inputs; raises InputError naming the first bad field."""
        if isinstance(inputs, self.graph.request_model):
            return inputs.model_dump()
        if inputs is None:
            inputs = {}
        if isinstance(inputs, BaseModel):
            inputs = inputs.model_dump()
        if not isinstance(inputs, dict):
            raise InputError("the request must be a JSON object", field=None)
        try:
            # inputs are flat JSON scalars and lists: the model's own field dict is the dump
            return dict(self.graph.request_model.model_validate(inputs).__dict__)
        except ValidationError as exc:
            errors = []
            for e in exc.errors(include_url=False):
                field = ".".join(str(p) for p in e["loc"]) or None
                msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
                if e["type"] == "extra_forbidden":
                    allowed = ", ".join(self.graph.spec.inputs) or "none"
                    msg = f"unknown field (this spec's inputs are: {allowed})"
                errors.append({"field": field, "message": msg})
            first = errors[0]
            raise InputError(f"input '{first['field']}': {first['message']}", first["field"], errors) from None

    async def run(
        self,
        inputs: dict[str, Any] | BaseModel | None = None,
        *,
        run_id: str | None = None,
        deadline: float | None = None,
        max_cost: float | None = None,
        on_node: Callable[[NodeRecord, Any], None] | None = None,
        state: Any = None,
    ) -> RunResult:
        """Run the graph for one request.

        ``state`` (a spec with a ``state:`` block): the session's current state, a mapping or the state model's
        instance (None: a new session, the schema's defaults); the result's ``state`` is the next one.

        ``deadline`` is seconds for the whole request and ``max_cost`` US dollars of LLM calls (defaults: the
        spec's ``budget``); a node with a fallback whose budget is spent goes straight to its fallback.
        ``on_node(record, value)`` is called as each node finishes (for streaming).
        Raises InputError for a bad request and RunError (with ``.trace``) when a node fails without fallback.
        """
        request = self.validate_inputs(inputs)
        current = self.validate_state(state) if self.graph.state_model is not None else None
        if not self._started:
            await self.start()
        budget = self.graph.spec.budget
        return await self._scheduler.run(
            request,
            run_id or f"{self._run_prefix}-{next(self._run_counter)}",
            budget.latency if deadline is None else deadline,
            budget.cost if max_cost is None else max_cost,
            on_node,
            current,
        )

    def validate_state(self, state: Any) -> Any:
        """A session state as the spec's state model (None: its defaults); raises InputError naming the field
        (``state.FIELD``) that does not fit. A spec without a ``state:`` block takes no state."""
        model = self.graph.state_model
        if model is None:
            if state is not None:
                raise InputError("this spec keeps no state (it has no 'state:' block)", "state")
            return None
        return validate_state(model, state)

    async def run_many(
        self,
        requests: list[dict[str, Any] | BaseModel | None],
        *,
        concurrency: int | None = None,
        **kwargs: Any,
    ) -> list[RunResult | Exception]:
        """:meth:`run` for each of ``requests``, concurrently and batched: the calls that many requests make to a
        batchable node go to its ``run_batch`` together (llmrec/runtime/batch.py). Each result is what ``run``
        would give, or the exception it would raise (InputError, RunError), in order.

        ``concurrency`` bounds the requests in flight. A spec of inline nodes only (no I/O) runs in waves of
        that many (default :data:`WAVE`), each wave's calls batched together; any other spec keeps that many
        running (default 8), each starting as another finishes."""
        if not self._started:
            await self.start()
        results: list[Any] = []
        with batching():
            if self.inline_only:
                wave = concurrency or WAVE
                for start in range(0, len(requests), wave):
                    chunk = requests[start:start + wave]
                    results += await asyncio.gather(*(self.run(r, **kwargs) for r in chunk), return_exceptions=True)
            else:
                gate = asyncio.Semaphore(concurrency or 8)

                async def one(request: Any) -> RunResult:
                    async with gate:
                        return await self.run(request, **kwargs)

                results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # Ctrl-C, cancellation: not a request's own failure
        return results

    @property
    def inline_only(self) -> bool:
        """Every node is pure computation (``inline``): running more requests at once costs no more I/O, so batch
        runners let a whole wave in, and batchable nodes get large batches."""
        return self._inline_only

    def run_sync(self, inputs: dict[str, Any] | BaseModel | None = None, **kwargs: Any) -> RunResult:
        """:meth:`run` from synchronous code (not from inside a running event loop)."""
        return asyncio.run(self.run(inputs, **kwargs))
