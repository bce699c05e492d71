"""run: the async executor over a validated :class:`~llmrec.graph.build.Graph`.

Every node becomes one asyncio task that awaits the tasks of the nodes it reads, so independent branches run
concurrently and a node starts as soon as its inputs exist. The runtime, not the node types, applies the
per-node policies, in this order: ``when`` -> cache lookup -> (timeout + retries around ``run``) -> fallback
-> cache store. Everything that can be decided once (bindings, which hooks exist, cache key prefixes) is
decided when the Runtime is created, so the per-request path stays short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import itertools
import json
import pickle
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import DeadlineExceededError, FallbackExhaustedError, InputError, NodeTimeoutError, RunError
from ..graph.build import BuiltNode, Graph
from ..node import LoadContext, NodeType, RunContext, StartContext, wants_context
from ..spec.refs import RefExpr, get_attr
from .trace import NodeRecord, RunResult, Trace


@dataclass(slots=True)
class _Plan:
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
    plain: bool = False  # no when/cache/retries/timeout/fallback/context/hooks: the short path
    static_kwargs: dict[str, Any] = field(default_factory=dict)  # inputs bound to resources/literals: at start
    #: the other inputs, evaluated per request: (name, root, attrs, expr), root None when not a plain reference
    dynamic: tuple[tuple[str, str | None, tuple[str, ...], Any], ...] = ()
    cache_peek: Any = None  # a cache backend's synchronous lookup, when it has one


_MAX_EAGER_DEPTH = 64


class _Continue:
    """Awaitable that carries on a coroutine which was started outside any task and then suspended:
    it hands the task the future the coroutine is waiting on, and forwards results and exceptions."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Any:
        coro, value = self.coro, self.pending
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and errors go to the coroutine, as `await` would
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _resume(coro: Any, pending: Any) -> Any:
    return await _Continue(coro, pending)


class _RunState:
    __slots__ = ("env", "records", "tasks", "runtime", "run_id", "t0", "deadline", "request", "counts", "waiters",
                 "lazy", "depth", "max_cost", "spent", "on_node")

    def __init__(self, runtime: Runtime, request: dict[str, Any], run_id: str, deadline: float | None) -> None:
        self.runtime = runtime
        self.request = request
        self.env: dict[str, Any] = {"inputs": request, "resources": runtime.resources}
        self.records: dict[str, NodeRecord] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.run_id = run_id
        self.t0 = time.perf_counter()
        self.deadline = deadline
        self.counts = dict(runtime._ndeps)  # unfinished inputs per node; 0 means ready
        self.waiters: dict[str, asyncio.Future[Any]] = {}  # nodes someone off the main path awaits
        self.lazy: dict[str, asyncio.Task[Any]] = {}  # fallback-only nodes started on demand
        self.depth = 0
        self.max_cost: float | None = None  # USD the request may spend on LLM calls
        self.spent = 0.0
        self.on_node: Callable[[NodeRecord, Any], None] | None = None

    def spawn(self, node_id: str) -> None:
        """Start driving a ready node *eagerly*: run it right here until it first suspends, and only then give
        it a task. Nodes that never wait on I/O finish without the cost of a task; those that do wait still
        run concurrently. (Python 3.12's eager task factory does the same; this runs on 3.11.)"""
        coro = self.runtime._drive(node_id, self)
        # Only nodes declared `inline` (no I/O, nothing bound to the current task such as asyncio.timeout or
        # an anyio cancel scope) and without a timeout start eagerly, and nodes that `when` will skip (they
        # await nothing); deep fan-outs stop nesting on the stack.
        plan = self.runtime._plans[node_id]
        eager = plan.eager or (plan.when is not None and self.runtime._skips(plan, self))
        if not eager or self.depth > _MAX_EAGER_DEPTH:
            self.tasks.add(asyncio.get_running_loop().create_task(coro))
            return
        self.depth += 1
        try:
            pending = coro.send(None)
        except StopIteration:
            return
        finally:
            self.depth -= 1
        self.tasks.add(asyncio.get_running_loop().create_task(_resume(coro, pending)))

    async def value_of(self, node_id: str) -> Any:
        """The value of any node, waiting for it (and starting it, if it is fallback-only) as needed."""
        env = self.env
        if node_id in env:
            return env[node_id]
        if node_id in self.runtime._needed:
            fut = self.waiters.get(node_id)
            if fut is None:
                fut = self.waiters[node_id] = asyncio.get_running_loop().create_future()
            return await fut
        t = self.lazy.get(node_id)
        if t is None:
            t = self.lazy[node_id] = asyncio.get_running_loop().create_task(self.runtime._run_lazy(node_id, self))
        return await asyncio.shield(t)


def _fingerprint(value: Any, tokens: dict[int, str]) -> str:
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


def _artifact_loader(graph: Graph, name: str, resource: Callable[[str], Awaitable[Any]]) -> Any:
    async def artifact() -> Any:
        from ..training import ensure_artifact  # trainable types only: the training module loads lazily

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
        self._static_keys: dict[str, str] = {}  # cached nodes whose inputs are all static: one key forever
        self._resource_types = {name: r.cls(r.config) for name, r in graph.resources.items()}
        self._tokens: dict[int, str] = {}
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._plans = {node_id: self._plan(node) for node_id, node in graph.nodes.items()}
        # the nodes every request runs, and who waits on whom among them (fallback-only nodes run on demand)
        needed = [n for n in graph.order if n in graph.nodes and not graph.nodes[n].fallback_only]
        self._needed = frozenset(needed)
        self._ndeps = {n: len(graph.nodes[n].deps) for n in needed}
        self._dependents = {n: tuple(d for d in needed if n in graph.nodes[d].deps) for n in needed}
        self._ready = tuple(n for n in needed if self._ndeps[n] == 0)
        self._outputs = tuple(graph.outputs.items())

    def _plan(self, node: BuiltNode) -> _Plan:
        instance = node.cls(node.config)
        call = instance.run
        spec = node.spec
        cache = None
        if spec.cache is not None and spec.cache.enabled:
            factory = self.graph.registry.cache_backends[spec.cache.backend]
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
        return _Plan(
            id=node.id,
            type=node.cls.name,
            built=node,
            instance=instance,
            call=call,
            is_async=inspect.iscoroutinefunction(call),
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
            eager=(inspect.iscoroutinefunction(call) and node.cls.inline)
            or (spec.timeout is None and not inspect.iscoroutinefunction(call) and not node.cls.offload),
        )

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
            static = {node_id: self._static_inputs(p) for node_id, p in self._plans.items()}
            # cache keys name resource values (and their attributes) instead of hashing them
            self._tokens = {id(v): f"resource:{n}" for n, v in self.resources.items()}
            for p in self._plans.values():
                for name, expr in p.bindings:
                    if name in static[p.id] and isinstance(expr, RefExpr):
                        self._tokens.setdefault(id(static[p.id][name]), expr.ref.text)
            for p in self._plans.values():
                p.static_kwargs = static[p.id]
                p.dynamic = tuple(
                    (n, e.ref.root, e.ref.attrs, e) if isinstance(e, RefExpr) else (n, None, (), e)
                    for n, e in p.bindings if n not in static[p.id]
                )
                p.cache_peek = getattr(p.cache, "peek", None)  # in-process backends answer without a coroutine
                p.plain = (p.is_async and p.when is None and p.cache is None and p.attempts == 1 and p.timeout is None
                           and p.fallback is None and not p.wants_context and not self._hooks)
                if p.cache is not None and p.built.cache_key is None and len(static[p.id]) == len(p.bindings):
                    self._static_keys[p.id] = p.cache_prefix + _fingerprint(static[p.id], self._tokens)
            warming = [p for p in self._plans.values() if type(p.instance).warm is not NodeType.warm]
            results = await asyncio.gather(*(p.instance.warm(**static[p.id]) for p in warming),
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

    async def _start_node(self, p: _Plan) -> None:
        if not wants_context(p.instance.start):
            await p.instance.start()
            return
        base = self.graph.document.base_dir if self.graph.document is not None else None
        await p.instance.start(StartContext(node_id=p.id, graph=self.graph, base_dir=base,
                                            artifact=self._artifact(p.id), registry=self.graph.registry))

    def _static_inputs(self, p: _Plan) -> dict[str, Any]:
        """Inputs known before any request: those that reference only resources (or nothing)."""
        env = {"resources": self.resources}
        out = {}
        for name, expr in p.bindings:
            if all(r.root == "resources" for r in expr.refs()):
                out[name] = expr.evaluate(env)
        return out

    async def close(self) -> None:
        await asyncio.gather(*(p.instance.close() for p in self._plans.values()), return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self._started

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
    ) -> RunResult:
        """Run the graph for one request.

        ``deadline`` is seconds for the whole request and ``max_cost`` US dollars of LLM calls (defaults: the
        spec's ``budget``); a node with a fallback whose budget is spent goes straight to its fallback.
        ``on_node(record, value)`` is called as each node finishes (for streaming).
        Raises InputError for a bad request and RunError (with ``.trace``) when a node fails without fallback.
        """
        request = self.validate_inputs(inputs)
        if not self._started:
            await self.start()
        budget = self.graph.spec.budget
        if deadline is None:
            deadline = budget.latency
        state = _RunState(self, request, run_id or f"{self._run_prefix}-{next(self._run_counter)}", None)
        state.max_cost = budget.cost if max_cost is None else max_cost
        state.on_node = on_node
        if deadline is not None:
            # nodes see the deadline (LLM calls are cut to it; past it, nodes with a fallback take it); the
            # request itself is cancelled a grace period later, so that those fallbacks can still answer
            state.deadline = asyncio.get_running_loop().time() + deadline
        trace = Trace(state.run_id, self._name, time.time())
        try:
            if deadline is not None:
                async with asyncio.timeout(deadline + _grace(deadline)):
                    outputs = await self._collect(state)
            else:
                outputs = await self._collect(state)
        except TimeoutError:
            self._cancel(state)
            err = DeadlineExceededError(f"request deadline of {deadline:g}s exceeded", None, state.run_id)
            err.trace = self._finish(state, trace)
            raise err from None
        except RunError as err:
            self._cancel(state)
            err.run_id = state.run_id
            err.trace = self._finish(state, trace)
            if "llmrec_after_run" in self._hooks:
                self._hooks["llmrec_after_run"](result=err.trace)
            raise
        result = RunResult(outputs, self._finish(state, trace))
        if "llmrec_after_run" in self._hooks:
            self._hooks["llmrec_after_run"](result=result)
        return result

    def run_sync(self, inputs: dict[str, Any] | BaseModel | None = None, **kwargs: Any) -> RunResult:
        """:meth:`run` from synchronous code (not from inside a running event loop)."""
        return asyncio.run(self.run(inputs, **kwargs))

    async def _collect(self, state: _RunState) -> dict[str, Any]:
        for node_id in self._ready:
            state.spawn(node_id)
        while state.tasks:
            done, _ = await asyncio.wait(state.tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                state.tasks.discard(t)
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        env = state.env
        return {name: expr.evaluate(env) for name, expr in self._outputs}

    def _cancel(self, state: _RunState) -> None:
        for t in (*state.tasks, *state.lazy.values()):
            if not t.done():
                t.cancel()
        for fut in state.waiters.values():
            if not fut.done():
                fut.cancel()
        for r in state.records.values():
            if r.status == "pending":
                r.status = "cancelled"

    def _finish(self, state: _RunState, trace: Trace) -> Trace:
        trace.wall_ms = (time.perf_counter() - state.t0) * 1000
        trace.nodes = list(state.records.values())
        return trace

    # -- scheduling ----------------------------------------------------------------------------------------
    async def _drive(self, node_id: str, state: _RunState) -> None:
        """Run a ready node, then carry on inline with the first dependent it made ready; spawn tasks for the
        others. Chains run without a task per node; independent branches still run concurrently."""
        counts, dependents, plans, env = state.counts, self._dependents, self._plans, state.env
        perf_counter = time.perf_counter
        while True:
            p = plans[node_id]
            try:
                if p.plain:
                    # no policy and no hook: the common case, written out here to keep it short
                    rec = NodeRecord(node_id, p.type)
                    state.records[node_id] = rec
                    start = perf_counter()
                    rec.start_ms = (start - state.t0) * 1000
                    try:
                        value = await p.call(**_inputs(p, env))
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        rec.status, rec.error = "error", _describe(exc)
                        rec.wall_ms = (perf_counter() - start) * 1000
                        raise RunError(rec.error, node_id, state.run_id) from exc
                    rec.status = "ok"
                    rec.wall_ms = (perf_counter() - start) * 1000
                    env[node_id] = value
                elif p.when is not None and self._skips(p, state):
                    rec = NodeRecord(node_id, p.type, "skipped", (perf_counter() - state.t0) * 1000)
                    state.records[node_id] = rec
                    value = env[node_id] = None
                else:
                    value = await self._run_node(p, state)
            except BaseException as exc:
                fut = state.waiters.get(node_id)
                if fut is not None and not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RunError("cancelled", node_id))
                raise
            fut = state.waiters.get(node_id)
            if fut is not None and not fut.done():
                fut.set_result(value)
            if state.on_node is not None:
                state.on_node(state.records[node_id], value)
            following = None
            for d in dependents[node_id]:
                c = counts[d] = counts[d] - 1
                if c == 0:
                    # carry on in this coroutine, unless it is still being started eagerly (no task of its
                    # own yet) and the next node is not safe to run that way
                    if following is None and (state.depth == 0 or plans[d].eager):
                        following = d
                    else:
                        state.spawn(d)
            if following is None:
                return
            node_id = following

    async def _run_lazy(self, node_id: str, state: _RunState) -> Any:
        p = self._plans[node_id]
        for d in p.deps:
            await state.value_of(d)
        return await self._run_node(p, state)

    # -- one node ----------------------------------------------------------------------------------------
    async def _run_node(self, p: _Plan, state: _RunState) -> Any:
        rec = NodeRecord(p.id, p.type)
        state.records[p.id] = rec
        start = time.perf_counter()
        rec.start_ms = (start - state.t0) * 1000
        env = state.env
        try:
            value = await self._apply_policies(p, state, rec, env)
        except (RunError, asyncio.CancelledError):
            raise
        except Exception as exc:  # evaluating a condition or an input failed: the node's fault, not a crash
            rec.status, rec.error = "error", _describe(exc)
            raise RunError(f"could not prepare the node: {_describe(exc)}", p.id, state.run_id) from exc
        finally:
            rec.wall_ms = (time.perf_counter() - start) * 1000
            if rec.cost:
                state.spent += rec.cost
        env[p.id] = value
        return value

    async def _apply_policies(self, p: _Plan, state: _RunState, rec: NodeRecord, env: dict[str, Any]) -> Any:
        if p.when is not None and not self._condition(p, state):
            rec.status = "skipped"
            return None
        kwargs = _inputs(p, env)
        key = None
        if p.cache is not None:
            if p.built.cache_key is not None:
                key = p.cache_prefix + p.built.cache_key.evaluate(env)
            else:
                key = self._static_keys.get(p.id) or p.cache_prefix + _fingerprint(kwargs, self._tokens)
            hit, value = p.cache_peek(key) if p.cache_peek is not None else await p.cache.get(key)
            if hit:
                rec.status, rec.cache_hit = "cached", True
                if "llmrec_after_node_run" in self._hooks:
                    self._hooks["llmrec_after_node_run"](node_id=p.id, output=value, record=rec)
                return value
        if p.wants_context:
            kwargs["context"] = RunContext(state.run_id, p.id, state.request, state.deadline, record=rec,
                                           cost_left=None if state.max_cost is None else state.max_cost - state.spent)
        if "llmrec_before_node_run" in self._hooks:
            self._hooks["llmrec_before_node_run"](
                node_id=p.id, inputs=kwargs, context=RunContext(state.run_id, p.id, state.request, state.deadline)
            )
        error: BaseException | None = None
        for attempt in range(p.attempts):
            if p.fallback is not None:
                if state.deadline is not None and asyncio.get_running_loop().time() >= state.deadline:
                    error = RunError("request latency budget spent before the node started", p.id)
                    break
                if state.max_cost is not None and state.spent >= state.max_cost:
                    error = RunError(f"request cost budget spent (${state.spent:.6f} of ${state.max_cost:g}) "
                                     "before the node started", p.id)
                    break
            try:
                value = await self._call(p, kwargs)
                error = None
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a node failing is data for the retry/fallback policy, not a crash
                error = exc
                if "llmrec_on_node_error" in self._hooks:
                    self._hooks["llmrec_on_node_error"](node_id=p.id, error=exc, record=rec)
                if attempt + 1 < p.attempts:
                    rec.retries += 1
                    await asyncio.sleep(min(p.backoff * (2**attempt), p.max_backoff))
        if error is not None:
            reason = _describe(error)
            if p.fallback is None:
                rec.status, rec.error = "error", reason
                if isinstance(error, RunError):
                    raise error
                raise RunError(reason, p.id, state.run_id) from error
            rec.fallback_reason = reason
            value = await self._fallback(p, state, rec, kwargs, error)
            rec.status = "fallback"
        else:
            rec.status = "ok"
        if key is not None and rec.status == "ok":
            await p.cache.set(key, value, p.cache_ttl)
        if "llmrec_after_node_run" in self._hooks:
            self._hooks["llmrec_after_node_run"](node_id=p.id, output=value, record=rec)
        return value

    def _skips(self, p: _Plan, state: _RunState) -> bool:
        """Whether `when` skips the node; a condition that fails to evaluate is left to the node's full path,
        which reports it."""
        try:
            return not self._condition(p, state)
        except Exception:
            return False

    @staticmethod
    def _condition(p: _Plan, state: _RunState) -> bool:
        if p.when_deps:
            scope = {"inputs": state.request}
            env = state.env
            for d in p.when_deps:
                scope[d] = env[d]
            return bool(p.when(**scope))
        return bool(p.when(inputs=state.request))

    async def _call(self, p: _Plan, kwargs: dict[str, Any]) -> Any:
        if p.is_async:
            if p.timeout is None:
                return await p.call(**kwargs)
            if p.eager:
                started = time.perf_counter()
                value = await p.call(**kwargs)
                took = time.perf_counter() - started
                if took > p.timeout:
                    raise NodeTimeoutError(f"took {took:.3g}s, over its timeout of {p.timeout:g}s", p.id)
                return value
            try:
                async with asyncio.timeout(p.timeout):
                    return await p.call(**kwargs)
            except TimeoutError:
                raise NodeTimeoutError(f"timed out after {p.timeout:g}s", p.id) from None
        if p.offload or p.timeout is not None:
            coro = asyncio.to_thread(p.call, **kwargs)
            if p.timeout is None:
                return await coro
            try:
                async with asyncio.timeout(p.timeout):
                    return await coro
            except TimeoutError:
                raise NodeTimeoutError(f"timed out after {p.timeout:g}s", p.id) from None
        return p.call(**kwargs)

    async def _fallback(
        self, p: _Plan, state: _RunState, rec: NodeRecord, kwargs: dict[str, Any], error: BaseException
    ) -> Any:
        fb = p.fallback
        fields = fb.model_fields_set
        if "node" in fields:
            rec.fallback = f"node:{fb.node}"
            try:
                return await state.value_of(fb.node)
            except RunError as exc:
                raise FallbackExhaustedError(
                    f"failed ({rec.fallback_reason}) and its fallback node '{fb.node}' failed too: {exc}", p.id
                ) from exc
        if "template" in fields:
            rec.fallback = "template"
            scope = {**kwargs, "inputs": state.request, "error": _describe(error)}
            scope.pop("context", None)
            try:
                return p.built.fallback_template.render(scope)
            except Exception as exc:
                raise FallbackExhaustedError(f"fallback template failed: {exc}", p.id) from exc
        rec.fallback = "value"
        return fb.value


def _grace(deadline: float) -> float:
    """Time past a request's deadline left to fallbacks before the request is cancelled."""
    return min(max(0.1 * deadline, 0.05), 1.0)


def _inputs(p: _Plan, env: dict[str, Any]) -> dict[str, Any]:
    """A node's keyword arguments: its static inputs plus the per-request ones, references resolved inline."""
    kwargs = p.static_kwargs.copy()
    for name, root, attrs, expr in p.dynamic:
        if root is None:
            kwargs[name] = expr.evaluate(env)
            continue
        value = env[root]
        for a in attrs:
            value = None if value is None else get_attr(value, a)
        kwargs[name] = value
    return kwargs


def _describe(error: BaseException) -> str:
    if isinstance(error, RunError):
        text = str(error)
        prefix = f"node '{error.node_id}': "
        return text[len(prefix):] if error.node_id and text.startswith(prefix) else text
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
