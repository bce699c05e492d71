"""The fast path is derived: a plan runs on the scheduler's short path exactly when no policy applies to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmrec.errors import ProviderError
from llmrec.runtime import policies
from llmrec.runtime.plan import NodePlan
from llmrec.runtime.policies import Hooks, NodeCall, Stage, Step

HERE = Path(__file__).parent


class Doubling:
    """A policy for the test: applies to the nodes named in ``targets`` and doubles their value."""

    name = "doubling"
    stage: Stage = "outcome"

    def __init__(self, targets: set[str]) -> None:
        self.targets = targets
        self.calls: list[str] = []

    def applies(self, plan: NodePlan, hooks: Hooks) -> bool:
        return plan.id in self.targets

    def wrap(self, plan: NodePlan, hooks: Hooks, step: Step) -> Step:
        async def doubling(call: NodeCall) -> Any:
            self.calls.append(call.plan.id)
            return 2 * await step(call)

        return doubling


@pytest.fixture
def doubling() -> Iterator[Doubling]:
    policy = Doubling({"b"})
    policies.register(policy, before="fallback")
    try:
        yield policy
    finally:
        policies.unregister(policy.name)


CHAIN = """
    name: chain
    nodes:
      a: {type: core.identity, inputs: {value: "${inputs.n}"}}
      b: {type: core.identity, inputs: {value: "${a}"}}
      c: {type: core.identity, inputs: {value: "${b}"}}
    inputs: {n: {type: integer}}
    outputs: {a: "${a}", c: "${c}"}
"""


async def test_plans_without_policies_are_plain(spec) -> None:
    rt = spec(CHAIN)
    await rt.start()
    assert all(p.plain for p in rt.plans.values())
    result = await rt.run({"n": 3})
    assert result.outputs == {"a": 3, "c": 3}
    assert [r.status for r in result.trace.nodes] == ["ok", "ok", "ok"]


async def test_a_registered_policy_takes_the_plans_it_applies_to_off_the_fast_path(spec, doubling) -> None:
    rt = spec(CHAIN)
    await rt.start()
    assert {i: p.plain for i, p in rt.plans.items()} == {"a": True, "b": False, "c": True}
    result = await rt.run({"n": 3})
    assert result.outputs == {"a": 3, "c": 6}  # b's value doubled, and c reads it
    assert doubling.calls == ["b"]
    assert {r.node_id: r.status for r in result.trace.nodes} == {"a": "ok", "b": "ok", "c": "ok"}


async def test_every_configured_policy_takes_its_node_off_the_fast_path(spec) -> None:
    rt = spec("""
        name: each
        nodes:
          plain: {type: core.identity, inputs: {value: 1}}
          gated: {type: core.identity, inputs: {value: 2}, when: "inputs.go"}
          cached: {type: core.identity, inputs: {value: 3}, cache: {backend: memory}}
          timed: {type: core.identity, inputs: {value: 4}, timeout: 1.0}
          retried: {type: core.identity, inputs: {value: 5}, retries: {attempts: 2}}
          guarded: {type: core.identity, inputs: {value: 6}, fallback: {value: 0}}
          contextual: {type: test.sleep, inputs: {value: 7}}
          blocking: {type: test.blocking, inputs: {value: 8}}
        inputs: {go: {type: boolean}}
        outputs:
          all: ["${plain}", "${gated}", "${cached}", "${timed}", "${retried}", "${guarded}", "${contextual}",
                "${blocking}"]
    """)
    await rt.start()
    assert [i for i, p in rt.plans.items() if p.plain] == ["plain"]
    names = {i: [p.name for p in policies.applicable(plan, {})] for i, plan in rt.plans.items()}
    assert names == {"plain": [], "gated": ["when"], "cached": ["cache"], "timed": ["timeout"],
                     "retried": ["retry"], "guarded": ["fallback", "budget"], "contextual": ["context"],
                     "blocking": ["blocking"]}
    assert (await rt.run({"go": True})).outputs == {"all": [1, 2, 3, 4, 5, 6, 7, 8]}
    assert (await rt.run({"go": False})).outputs == {"all": [1, None, 3, 4, 5, 6, 7, 8]}


def test_lifecycle_hooks_apply_to_every_node_that_a_plugin_hooks(spec) -> None:
    rt = spec(CHAIN)
    plan = rt.plans["a"]
    hook = {"llmrec_after_node_run": print}
    assert [p.name for p in policies.applicable(plan, hook)] == ["after_hook"]
    assert policies.applicable(plan, {"llmrec_after_run": print}) == []  # a per-run hook: nodes stay plain


def test_registering_needs_a_new_name_and_a_known_place() -> None:
    with pytest.raises(ValueError, match="no policy named 'nope'"):
        policies.register(Doubling(set()), before="nope")
    policies.register(Doubling(set()), before="when")
    try:
        with pytest.raises(ValueError, match="already registered"):
            policies.register(Doubling(set()), before="when")
    finally:
        policies.unregister("doubling")
    assert "doubling" not in [p.name for p in policies.POLICIES]


@pytest.mark.parametrize("policy", ["", "timeout: 5.0"])
async def test_a_nodes_own_run_error_kind_reaches_the_caller_on_both_paths(spec, policy) -> None:
    rt = spec(f"""
        name: down
        nodes:
          ask: {{type: test.provider_down, inputs: {{value: 1}}, {policy}}}
        outputs: {{a: "${{ask}}"}}
    """.replace(", }", "}"))
    await rt.start()
    assert rt.plans["ask"].plain is (policy == "")
    with pytest.raises(ProviderError, match="503") as info:
        await rt.run({})
    assert info.value.node_id == "ask"
