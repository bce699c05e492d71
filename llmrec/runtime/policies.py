"""policies: what the runtime does around a node's call, one small object per policy.

Each policy says whether it applies to a plan (``applies(plan, hooks)``: the spec configured it, or a plugin
implements the lifecycle hook it calls) and wraps a step of the node's run (``wrap(plan, hooks, step)``). When
a Runtime starts, :func:`attach` composes, for each plan, the policies that apply into the plan's full path;
a plan that none applies to is *plain*, and the scheduler runs it on its short path. Nothing else decides
that, so a policy added to :data:`POLICIES` takes its plans off the short path by saying it applies.

A full path, outermost first (``stage`` says where a policy goes; within a stage, the order of POLICIES)::

    gate:     when                               may skip the node before its inputs are evaluated
              (the node's inputs are evaluated)
    outcome:  after-hook, cache, context,        see (and may replace) the node's value
              before-hook, fallback
              (the call's outcome: the node is "ok", or NodeFailed carries why not)
    attempt:  retry, budget, on-error-hook,      each attempt of the call
              timeout, blocking
              (the call: ``await run(**inputs)``; ``blocking`` calls a synchronous ``run`` instead)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import FallbackExhaustedError, NodeTimeoutError, RunError
from ..node import RunContext
from .plan import NodePlan, fingerprint, node_inputs
from .trace import NodeRecord

if TYPE_CHECKING:
    from .scheduler import RunState

#: lifecycle hooks some plugin implements, by hook name (a Runtime looks them up once)
Hooks = Mapping[str, Callable[..., Any]]
Stage = Literal["gate", "outcome", "attempt"]
STAGES: tuple[Stage, ...] = ("gate", "outcome", "attempt")


class NodeCall:
    """One run of one node: what its policies read and change."""

    __slots__ = ("plan", "state", "record", "kwargs")

    def __init__(self, plan: NodePlan, state: RunState, record: NodeRecord) -> None:
        self.plan = plan
        self.state = state
        self.record = record
        self.kwargs: dict[str, Any] = {}  # the node's inputs, once evaluated


Step = Callable[[NodeCall], Awaitable[Any]]


class Policy(Protocol):
    """A policy: where it goes in a node's run, whether it applies to a plan, and what it does there."""

    name: str
    stage: Stage

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool: ...

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step: ...


class NodeFailed(Exception):
    """A node's call failed (after any retries); ``error`` is why. A fallback answers it; otherwise the node
    fails with it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Stop(Exception):
    """Ends a node's attempts at once (no retry): with ``fallback`` the node fails with ``error`` (or falls
    back), otherwise ``error`` propagates as it is."""

    def __init__(self, error: BaseException, fallback: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.fallback = fallback


def describe(error: BaseException) -> str:
    """A node error for a trace record: its message without the ``node '<id>': `` prefix."""
    if isinstance(error, RunError):
        text = str(error)
        prefix = f"node '{error.node_id}': "
        return text[len(prefix):] if error.node_id and text.startswith(prefix) else text
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def condition(plan: NodePlan, state: RunState) -> bool:
    """The value of the node's ``when`` for this request."""
    if plan.when_deps:
        scope = {"inputs": state.request}
        env = state.env
        for d in plan.when_deps:
            scope[d] = env[d]
        return bool(plan.when(**scope))
    return bool(plan.when(inputs=state.request))


def skips(plan: NodePlan, state: RunState) -> bool:
    """Whether ``when`` skips the node; a condition that fails to evaluate is left to the node's full path,
    which reports it."""
    try:
        return not condition(plan, state)
    except Exception:
        return False


# -- the policies -----------------------------------------------------------------------------------------
class When:
    """``when``: a node whose condition is false is skipped (its value is None)."""

    name = "when"
    stage: Stage = "gate"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.when is not None

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        async def when(call: NodeCall) -> Any:
            if not condition(plan, call.state):
                call.record.status = "skipped"
                return None
            return await step(call)

        return when


class AfterHook:
    """``llmrec_after_node_run``: told each value the node gives (cached, computed or fallback)."""

    name = "after_hook"
    stage: Stage = "outcome"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return "llmrec_after_node_run" in hooks

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        hook = hooks["llmrec_after_node_run"]

        async def after_hook(call: NodeCall) -> Any:
            value = await step(call)
            hook(node_id=plan.id, output=value, record=call.record)
            return value

        return after_hook


class Cache:
    """``cache``: a value stored under the node's inputs (or its ``key``) answers without a call; a value the
    node computes ("ok", not a fallback) is stored."""

    name = "cache"
    stage: Stage = "outcome"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.cache is not None

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        backend, key_expr, prefix = plan.cache, plan.built.cache_key, plan.cache_prefix

        async def cache(call: NodeCall) -> Any:
            if key_expr is not None:
                key = prefix + key_expr.evaluate(call.state.env)
            else:
                key = plan.static_key or prefix + fingerprint(call.kwargs, plan.tokens)
            peek = plan.cache_peek
            hit, value = peek(key) if peek is not None else await backend.get(key)
            rec = call.record
            if hit:
                rec.status, rec.cache_hit = "cached", True
                return value
            value = await step(call)
            if rec.status == "ok":
                await backend.set(key, value, plan.cache_ttl)
            return value

        return cache


class Context:
    """A node that declares a ``context`` parameter gets the request's :class:`~llmrec.node.RunContext`."""

    name = "context"
    stage: Stage = "outcome"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.wants_context

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        async def context(call: NodeCall) -> Any:
            state = call.state
            cost_left = None if state.max_cost is None else state.max_cost - state.spent
            call.kwargs["context"] = RunContext(state.run_id, plan.id, state.request, state.deadline,
                                                record=call.record, cost_left=cost_left)
            return await step(call)

        return context


class BeforeHook:
    """``llmrec_before_node_run``: told the inputs of each call the node is about to make."""

    name = "before_hook"
    stage: Stage = "outcome"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return "llmrec_before_node_run" in hooks

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        hook = hooks["llmrec_before_node_run"]

        async def before_hook(call: NodeCall) -> Any:
            state = call.state
            hook(node_id=plan.id, inputs=call.kwargs, context=RunContext(state.run_id, plan.id, state.request,
                                                                         state.deadline))
            return await step(call)

        return before_hook


class Fallback:
    """``fallback``: a node whose call failed gives another node's value, a template or a fixed value."""

    name = "fallback"
    stage: Stage = "outcome"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.fallback is not None

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        async def fallback(call: NodeCall) -> Any:
            try:
                return await step(call)
            except NodeFailed as failed:
                error = failed.error
            rec = call.record
            rec.fallback_reason = describe(error)
            value = await _fallback_value(plan, call, error)
            rec.status = "fallback"
            return value

        return fallback


async def _fallback_value(plan: NodePlan, call: NodeCall, error: BaseException) -> Any:
    fb, rec, state = plan.fallback, call.record, call.state
    fields = fb.model_fields_set
    if "node" in fields:
        rec.fallback = f"node:{fb.node}"
        try:
            return await state.value_of(fb.node)
        except RunError as exc:
            raise FallbackExhaustedError(
                f"failed ({rec.fallback_reason}) and its fallback node '{fb.node}' failed too: {exc}", plan.id
            ) from exc
    if "template" in fields:
        rec.fallback = "template"
        scope = {**call.kwargs, "inputs": state.request, "error": describe(error)}
        scope.pop("context", None)
        try:
            return plan.built.fallback_template.render(scope)
        except Exception as exc:
            raise FallbackExhaustedError(f"fallback template failed: {exc}", plan.id) from exc
    rec.fallback = "value"
    return fb.value


class Retry:
    """``retries``: a failed attempt is tried again after an exponential backoff, up to ``attempts`` more."""

    name = "retry"
    stage: Stage = "attempt"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.attempts > 1

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        async def retry(call: NodeCall) -> Any:
            for attempt in range(plan.attempts - 1):
                try:
                    return await step(call)
                except _Stop:
                    raise
                except Exception:  # a node failing is data for the retry policy, not a crash
                    call.record.retries += 1
                    await asyncio.sleep(min(plan.backoff * (2**attempt), plan.max_backoff))
            return await step(call)

        return retry


class Budget:
    """A node with a fallback whose request has spent its latency or cost budget goes straight to it."""

    name = "budget"
    stage: Stage = "attempt"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.fallback is not None

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        async def budget(call: NodeCall) -> Any:
            state = call.state
            if state.deadline is not None and asyncio.get_running_loop().time() >= state.deadline:
                raise _Stop(RunError("request latency budget spent before the node started", plan.id), True)
            if state.max_cost is not None and state.spent >= state.max_cost:
                raise _Stop(RunError(f"request cost budget spent (${state.spent:.6f} of ${state.max_cost:g}) "
                                     "before the node started", plan.id), True)
            return await step(call)

        return budget


class ErrorHook:
    """``llmrec_on_node_error``: told each failed attempt; an error of the hook itself ends the node's run."""

    name = "error_hook"
    stage: Stage = "attempt"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return "llmrec_on_node_error" in hooks

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        hook = hooks["llmrec_on_node_error"]

        async def error_hook(call: NodeCall) -> Any:
            try:
                return await step(call)
            except Exception as exc:
                try:
                    hook(node_id=plan.id, error=exc, record=call.record)
                except Exception as hook_error:
                    raise _Stop(hook_error, False) from None
                raise

        return error_hook


class Timeout:
    """``timeout``: an attempt that runs longer fails with NodeTimeoutError. Inline nodes cannot be
    interrupted (they never yield to the loop), so theirs is checked when they return."""

    name = "timeout"
    stage: Stage = "attempt"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.timeout is not None

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        limit: float = plan.timeout  # type: ignore[assignment]
        if plan.is_async and plan.eager:
            async def checked(call: NodeCall) -> Any:
                started = time.perf_counter()
                value = await step(call)
                took = time.perf_counter() - started
                if took > limit:
                    raise NodeTimeoutError(f"took {took:.3g}s, over its timeout of {limit:g}s", plan.id)
                return value

            return checked

        async def timeout(call: NodeCall) -> Any:
            try:
                async with asyncio.timeout(limit):
                    return await step(call)
            except TimeoutError:
                raise NodeTimeoutError(f"timed out after {limit:g}s", plan.id) from None

        return timeout


class Blocking:
    """A synchronous ``run``: called in a worker thread when the type offloads or has a timeout, else directly.
    It takes the place of the await of an async ``run``, so it is the innermost policy."""

    name = "blocking"
    stage: Stage = "attempt"

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return not plan.is_async

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        run = plan.call
        if plan.offload or plan.timeout is not None:
            async def in_thread(call: NodeCall) -> Any:
                return await asyncio.to_thread(run, **call.kwargs)

            return in_thread

        async def direct(call: NodeCall) -> Any:
            return run(**call.kwargs)

        return direct


#: every policy, outermost first within each stage
POLICIES: list[Policy] = [When(), AfterHook(), Cache(), Context(), BeforeHook(), Fallback(), Retry(), Budget(),
                          ErrorHook(), Timeout(), Blocking()]


def register(policy: Policy, before: str) -> None:
    """Add a policy to every Runtime started from now on, just outside the policy named ``before``."""
    names = [p.name for p in POLICIES]
    if policy.name in names:
        raise ValueError(f"a policy named '{policy.name}' is already registered")
    if before not in names:
        raise ValueError(f"no policy named '{before}' (policies: {', '.join(names)})")
    POLICIES.insert(names.index(before), policy)


def unregister(name: str) -> None:
    """Remove the policy named ``name``."""
    POLICIES[:] = [p for p in POLICIES if p.name != name]


def applicable(plan: NodePlan, hooks: Hooks) -> list[Policy]:
    """The policies that apply to ``plan``, outermost first."""
    chosen = [p for p in POLICIES if p.applies(plan, hooks)]
    return sorted(chosen, key=lambda p: STAGES.index(p.stage))


def attach(plan: NodePlan, hooks: Hooks) -> None:
    """Compose ``plan``'s full path from the policies that apply to it; a plan none applies to is plain."""
    chosen = applicable(plan, hooks)
    plan.plain = not chosen
    plan.run = compose(plan, hooks, chosen)


def compose(plan: NodePlan, hooks: Hooks, chosen: list[Policy]) -> Step:
    """``plan``'s full path: the ``chosen`` policies around the call, the inputs evaluated after the gates and
    the call's outcome settled inside the outcome policies."""
    step: Step = _awaited(plan)
    for stage, around in (("attempt", _settled), ("outcome", _prepared), ("gate", None)):
        for policy in reversed([p for p in chosen if p.stage == stage]):
            step = policy.wrap(plan, hooks, step)
        if around is not None:
            step = around(step)
    return step


def _awaited(plan: NodePlan) -> Step:
    run = plan.call

    async def call_node(call: NodeCall) -> Any:
        return await run(**call.kwargs)

    return call_node


def _prepared(step: Step) -> Step:
    async def prepare(call: NodeCall) -> Any:
        call.kwargs = node_inputs(call.plan, call.state.env)
        return await step(call)

    return prepare


def _settled(step: Step) -> Step:
    async def settle(call: NodeCall) -> Any:
        try:
            value = await step(call)
        except _Stop as stop:
            stopped = stop
        except Exception as exc:  # a node failing is data for its fallback, or the node's error
            raise NodeFailed(exc) from None
        else:
            call.record.status = "ok"
            return value
        if stopped.fallback:
            raise NodeFailed(stopped.error) from None
        raise stopped.error

    return settle
