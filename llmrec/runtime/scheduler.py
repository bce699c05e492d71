"""scheduler: runs a graph's node plans for one request, in dependency order and concurrently, into a trace.

A node starts as soon as its inputs exist, so independent branches run concurrently. A chain of nodes runs
in one coroutine (a node carries on with the first dependent it made ready), and nodes that never wait on I/O
start eagerly, without a task of their own. A plain node (no policy applies) runs on a short path written out
in :meth:`Scheduler.drive`; any other runs its full path (:func:`llmrec.runtime.policies.attach`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..errors import DeadlineExceededError, RunError
from ..graph.build import Graph
from .plan import NodePlan, node_inputs
from .policies import NodeCall, NodeFailed, describe, skips
from .trace import NodeRecord, RunResult, Trace

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


class RunState:
    """One request in flight: its values so far, trace records, tasks, deadline and budget."""

    __slots__ = ("env", "records", "tasks", "scheduler", "run_id", "t0", "deadline", "request", "counts",
                 "waiters", "lazy", "depth", "max_cost", "spent", "on_node")

    def __init__(self, scheduler: Scheduler, request: dict[str, Any], run_id: str) -> None:
        self.scheduler = scheduler
        self.request = request
        self.env: dict[str, Any] = {"inputs": request, "resources": scheduler.resources}
        self.records: dict[str, NodeRecord] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.run_id = run_id
        self.t0 = time.perf_counter()
        self.deadline: float | None = None  # loop.time() by which the request must finish
        self.counts = dict(scheduler.ndeps)  # unfinished inputs per node; 0 means ready
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
        coro = self.scheduler.drive(node_id, self)
        # Only nodes declared `inline` (no I/O, nothing bound to the current task such as asyncio.timeout or
        # an anyio cancel scope) and without a timeout start eagerly, and nodes that `when` will skip (they
        # await nothing); deep fan-outs stop nesting on the stack.
        plan = self.scheduler.plans[node_id]
        eager = plan.eager or (plan.when is not None and skips(plan, self))
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
        if node_id in self.scheduler.needed:
            fut = self.waiters.get(node_id)
            if fut is None:
                fut = self.waiters[node_id] = asyncio.get_running_loop().create_future()
            return await fut
        t = self.lazy.get(node_id)
        if t is None:
            t = self.lazy[node_id] = asyncio.get_running_loop().create_task(self.scheduler.run_lazy(node_id, self))
        return await asyncio.shield(t)


class Scheduler:
    """Runs the plans of one graph, one request per :meth:`run`; the plans are shared by every request."""

    def __init__(self, graph: Graph, plans: dict[str, NodePlan], resources: dict[str, Any],
                 after_run: Callable[..., Any] | None = None) -> None:
        """``resources`` is the loaded resources by name (filled when the Runtime starts); ``after_run`` the
        ``llmrec_after_run`` hook, when a plugin implements it."""
        self.name = graph.name
        self.plans = plans
        self.resources = resources
        self.after_run = after_run
        # the nodes every request runs, and who waits on whom among them (fallback-only nodes run on demand)
        needed = [n for n in graph.order if n in graph.nodes and not graph.nodes[n].fallback_only]
        self.needed = frozenset(needed)
        self.ndeps = {n: len(graph.nodes[n].deps) for n in needed}
        self.dependents = {n: tuple(d for d in needed if n in graph.nodes[d].deps) for n in needed}
        self.ready = tuple(n for n in needed if self.ndeps[n] == 0)
        self.outputs = tuple(graph.outputs.items())
        self.state_model = graph.state_model
        self.state_update = graph.state_update

    async def run(self, request: dict[str, Any], run_id: str, deadline: float | None, max_cost: float | None,
                  on_node: Callable[[NodeRecord, Any], None] | None, session_state: Any = None) -> RunResult:
        """Run every needed node for a validated ``request``; see :meth:`llmrec.runtime.executor.Runtime.run`.
        ``session_state``: the validated ``${state}`` of a spec with a ``state:`` block."""
        state = RunState(self, request, run_id)
        if self.state_model is not None:
            state.env["state"] = session_state
        state.max_cost = max_cost
        state.on_node = on_node
        if deadline is not None:
            # nodes see the deadline (LLM calls are cut to it; past it, nodes with a fallback take it); the
            # request itself is cancelled a grace period later, so that those fallbacks can still answer
            state.deadline = asyncio.get_running_loop().time() + deadline
        trace = Trace(state.run_id, self.name, time.time())
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
            if self.after_run is not None:
                self.after_run(result=err.trace)
            raise
        result = RunResult(outputs, self._finish(state, trace))
        if self.state_update is not None:
            try:
                result.state = self.next_state(state.env, session_state)
            except RunError as err:
                err.run_id, err.trace = state.run_id, result.trace
                raise
        if self.after_run is not None:
            self.after_run(result=result)
        return result

    async def _collect(self, state: RunState) -> dict[str, Any]:
        for node_id in self.ready:
            state.spawn(node_id)
        while state.tasks:
            done, _ = await asyncio.wait(state.tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                state.tasks.discard(t)
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        env = state.env
        return {name: expr.evaluate(env) for name, expr in self.outputs}

    def next_state(self, env: dict[str, Any], current: Any) -> Any:
        """The ``update`` reference's value as the state model (a skipped producer keeps the current state)."""
        assert self.state_update is not None and self.state_model is not None
        value = self.state_update.evaluate(env)
        if value is None:
            return current
        if isinstance(value, self.state_model):
            return value
        try:
            return self.state_model.model_validate(value.model_dump() if hasattr(value, "model_dump") else value)
        except Exception as exc:
            raise RunError(f"the next state ({self.state_update.ref.text}) does not fit the state's schema: "  # type: ignore[attr-defined]
                           f"{describe(exc)}", None) from exc

    def _cancel(self, state: RunState) -> None:
        for t in (*state.tasks, *state.lazy.values()):
            if not t.done():
                t.cancel()
        for fut in state.waiters.values():
            if not fut.done():
                fut.cancel()
        for r in state.records.values():
            if r.status == "pending":
                r.status = "cancelled"

    def _finish(self, state: RunState, trace: Trace) -> Trace:
        trace.wall_ms = (time.perf_counter() - state.t0) * 1000
        trace.nodes = list(state.records.values())
        return trace

    async def drive(self, node_id: str, state: RunState) -> None:
        """Run a ready node, then carry on inline with the first dependent it made ready; spawn tasks for the
        others. Chains run without a task per node; independent branches still run concurrently."""
        counts, dependents, plans, env = state.counts, self.dependents, self.plans, state.env
        perf_counter = time.perf_counter
        while True:
            p = plans[node_id]
            try:
                if p.plain:
                    # no policy applies: the common case, written out here to keep it short
                    rec = NodeRecord(node_id, p.type)
                    state.records[node_id] = rec
                    start = perf_counter()
                    rec.start_ms = (start - state.t0) * 1000
                    try:
                        value = await p.call(**node_inputs(p, env))
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        rec.status, rec.error = "error", describe(exc)
                        rec.wall_ms = (perf_counter() - start) * 1000
                        if isinstance(exc, RunError):  # as the full path: a node's own RunError kind goes through
                            raise exc.at(node_id, state.run_id)
                        raise RunError(rec.error, node_id, state.run_id) from exc
                    rec.status = "ok"
                    rec.wall_ms = (perf_counter() - start) * 1000
                    env[node_id] = value
                elif p.when is not None and skips(p, state):
                    rec = NodeRecord(node_id, p.type, "skipped", (perf_counter() - state.t0) * 1000)
                    state.records[node_id] = rec
                    value = env[node_id] = None
                else:
                    value = await self.run_node(p, state)
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

    async def run_lazy(self, node_id: str, state: RunState) -> Any:
        """Run a fallback-only node once its inputs exist."""
        p = self.plans[node_id]
        for d in p.deps:
            await state.value_of(d)
        return await self.run_node(p, state)

    async def run_node(self, p: NodePlan, state: RunState) -> Any:
        """Run a node on its full path into a trace record, and keep its value."""
        rec = NodeRecord(p.id, p.type)
        state.records[p.id] = rec
        start = time.perf_counter()
        rec.start_ms = (start - state.t0) * 1000
        failure: BaseException | None = None
        try:
            value = await p.run(NodeCall(p, state, rec))  # type: ignore[misc]
        except NodeFailed as failed:
            failure = failed.error
        except (RunError, asyncio.CancelledError):
            raise
        except Exception as exc:  # evaluating a condition or an input failed: the node's fault, not a crash
            rec.status, rec.error = "error", describe(exc)
            raise RunError(f"could not prepare the node: {describe(exc)}", p.id, state.run_id) from exc
        finally:
            rec.wall_ms = (time.perf_counter() - start) * 1000
            if rec.cost:
                state.spent += rec.cost
        if failure is not None:
            rec.status = "error"
            rec.error = reason = describe(failure)
            if isinstance(failure, RunError):
                raise failure.at(p.id, state.run_id)
            raise RunError(reason, p.id, state.run_id) from failure
        state.env[p.id] = value
        return value


def _grace(deadline: float) -> float:
    """Time past a request's deadline left to fallbacks before the request is cancelled."""
    return min(max(0.1 * deadline, 0.05), 1.0)
