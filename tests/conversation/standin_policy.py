"""Test-only stand-ins for what another part of issue 15 provides (the ``policy.rule`` node and the ``headphones``
dataset): registered only when the registry lacks them, so the chat spec's tests run before those land and use the
real ones after. Never shipped: the spec names ``policy.rule`` itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from llmrec import NodeType, hookimpl
from llmrec.conversation.catalog import generate_headphones
from llmrec.conversation.types import Decision, DialogueState
from llmrec.data.catalog import Catalog, Interactions
from llmrec.data.datasets import DatasetInfo
from llmrec.data.splits import make_dataset
from llmrec.plugins import get_registry, make_registry

SLOTS = ("type", "use_case", "features", "budget")


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_known: int = 3


class StandInRule(NodeType):
    """Ask the first unknown, unasked slot until ``min_known`` are known; then recommend."""

    name = "policy.rule"
    Config = RuleConfig
    inline = True

    async def run(self, state: DialogueState, catalog: Catalog | None = None) -> Decision:
        known = [s for s in SLOTS if s in state.slots]
        left = [s for s in SLOTS if s not in state.slots and s not in state.asked]
        if len(known) >= self.config.min_known or not left:
            return Decision(action="recommend", policy="rule")
        return Decision(action="ask", slot=left[0], policy="rule")


def _load(root: Path, *, split: str = "user", seed: int = 0, test_fraction: float | None = None) -> Any:
    return make_dataset("headphones", generate_headphones(seed=seed + 5), Interactions([]), split,  # type: ignore[arg-type]
                        test_fraction=test_fraction, seed=seed)


class StandIns:
    def __init__(self, policy: bool, dataset: bool) -> None:
        self.policy, self.dataset = policy, dataset

    @hookimpl
    def llmrec_register_node_types(self, register: Any) -> None:
        if self.policy:
            register(StandInRule)

    @hookimpl
    def llmrec_register_datasets(self, register: Any) -> None:
        if self.dataset:
            register(DatasetInfo("headphones", "the headphones shop (test stand-in)", _load))


def registry() -> Any:
    """The process registry when it has policy.rule and the headphones dataset, else one with the stand-ins."""
    reg = get_registry(None)
    policy = reg.node_types.get("policy.rule") is None
    dataset = "headphones" not in reg.datasets
    return make_registry(StandIns(policy, dataset)) if policy or dataset else reg
