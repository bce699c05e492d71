"""Simulated users for conversational recommendation (book 8.4): personas with hidden preferences.

A :class:`Persona` wants some slot values (a type, a use case, a few features, a brand or none), has a budget,
a patience (how many turns it stays) and a noise level (how often it answers a question wrongly). A
:class:`SimulatedUser` plays one persona against one catalog, seeded:

- ``answer(slot)``: the persona's value for that slot, truthfully, or with probability ``noise`` a wrong one
  (another value, a feature set with one feature changed, a budget off by up to 30%); ``None`` when it has no
  preference (the slot becomes known, as "any");
- ``judge(item)``: accepts an item when its hidden :meth:`Persona.utility` reaches ``accept_threshold``;
- patience: after ``patience`` turns without accepting it leaves.

Rule-backed by default. :class:`LLMUser` answers questions through any llmrec provider (the contract of
:mod:`llmrec.llm.provider`): the persona is the system prompt, the question the user message, and the reply is
parsed back into the slot's value set (unparseable replies fall back to the rule answer, counted in
``fallbacks``). Accepting stays the hidden utility's decision, so the ground truth never depends on a model.

:func:`run_dialogue` plays a policy (``state -> Decision``) against a user and returns a
:class:`DialogueResult` (success, turns, rewards); :func:`make_personas` draws personas that some catalog
item satisfies.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.catalog import Catalog, Item
from ..llm.provider import CompletionRequest, Message, Provider
from .catalog import HEADPHONE_SLOTS, SlotSchema, as_set, item_slot_values, matching_items
from .rewards import Outcome, Reward, build_reward, price_reward
from .types import Decision, DialogueState


@dataclass(frozen=True)
class Persona:
    """A simulated user's hidden preferences."""

    id: str
    wants: Mapping[str, Any]  # slot -> value (a set for multi slots); a slot absent or None: no preference
    budget: float | None = None
    patience: int = 6
    noise: float = 0.0
    accept_threshold: float = 0.8

    def utility(self, item: Item, values: Mapping[str, Any] | None = None) -> float:
        """How much the persona likes ``item``, in [0, 1]: the mean of its per-slot fits (type, use case,
        brand: 1 or 0; features: the share present; price: the piecewise price reward floored at 0).
        ``values``: the item's :func:`~llmrec.conversation.catalog.item_slot_values`, when already known."""
        have = values if values is not None else item_slot_values(item)
        parts = []
        for name, want in self.wants.items():
            if want is None or name == "budget":
                continue
            if name == "features":
                wanted = as_set(want)
                parts.append(len(wanted & have["features"]) / len(wanted) if wanted else 1.0)
            elif name == "use_case":
                parts.append(1.0 if as_set(want) & have["use_case"] else 0.0)
            else:
                parts.append(1.0 if str(have.get(name)) in as_set(want) else 0.0)
        if self.budget is not None:
            parts.append(max(0.0, price_reward(item.price, self.budget)))
        return sum(parts) / len(parts) if parts else 1.0

    def value_of(self, slot: str) -> Any:
        if slot == "budget":
            return self.budget
        return self.wants.get(slot)

    def to_dict(self) -> dict[str, Any]:
        wants = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in self.wants.items()}
        return {"id": self.id, "wants": wants, "budget": self.budget, "patience": self.patience,
                "noise": self.noise, "accept_threshold": self.accept_threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Persona:
        wants = {k: frozenset(v) if isinstance(v, list) else v for k, v in dict(data["wants"]).items()}
        return cls(id=str(data["id"]), wants=wants, budget=data.get("budget"), patience=int(data.get("patience", 6)),
                   noise=float(data.get("noise", 0.0)), accept_threshold=float(data.get("accept_threshold", 0.8)))


def make_personas(catalog: Catalog, n: int, *, seed: int = 0, noise: float = 0.0, patience: tuple[int, int] = (4, 8),
                  accept_threshold: float = 0.8, brand_share: float = 0.2) -> list[Persona]:
    """``n`` personas, each drawn from a random target item so that the catalog can satisfy it: the item's type
    (half of them), one of its use cases, one to three of its features, its brand (``brand_share`` of them),
    and a budget of 1.0-1.4 times its price."""
    rng = random.Random(seed)
    items = list(catalog)
    if not items:
        raise ValueError("make_personas needs a catalog with items")
    out = []
    for i in range(n):
        target = rng.choice(items)
        have = item_slot_values(target)
        wants: dict[str, Any] = {}
        if rng.random() < 0.5:
            wants["type"] = have["type"]
        if have["use_case"]:
            wants["use_case"] = rng.choice(sorted(have["use_case"]))
        feats = sorted(have["features"])
        if feats:
            wants["features"] = frozenset(rng.sample(feats, rng.randint(1, min(3, len(feats)))))
        if rng.random() < brand_share:
            wants["brand"] = have["brand"]
        budget = round((target.price or 50.0) * rng.uniform(1.0, 1.4), 2)
        out.append(Persona(id=f"p{i + 1}", wants=wants, budget=budget, patience=rng.randint(*patience), noise=noise,
                           accept_threshold=accept_threshold))
    return out


class SimulatedUser:
    """One persona against one catalog; seeded, so the same seed replays the same answers."""

    def __init__(self, persona: Persona, catalog: Catalog, *, seed: int = 0,
                 schema: SlotSchema = HEADPHONE_SLOTS) -> None:
        self.persona = persona
        self.catalog = catalog
        self.schema = schema
        self.rng = random.Random(f"{seed}:{persona.id}")
        self.turn = 0
        self.accepted: Item | None = None

    @property
    def left(self) -> bool:
        """True once patience ran out (and nothing was accepted)."""
        return self.accepted is None and self.turn >= self.persona.patience

    def answer(self, slot: str) -> Any:
        """The persona's answer about ``slot`` (see the module docstring)."""
        true = self.persona.value_of(slot)
        if true is None or self.rng.random() >= self.persona.noise:
            return sorted(true) if isinstance(true, (set, frozenset)) else true
        return self.noisy(slot, true)

    def noisy(self, slot: str, true: Any) -> Any:
        spec = self.schema[slot] if slot in self.schema else None
        if slot == "budget" or (spec is not None and spec.kind == "numeric"):
            return round(float(true) * self.rng.uniform(0.7, 1.3), 2)
        values = list(spec.values) if spec is not None else []
        if isinstance(true, (set, frozenset)):
            current = set(true)
            others = [v for v in values if v not in current]
            if current and (not others or self.rng.random() < 0.5):
                current.discard(self.rng.choice(sorted(current)))
            elif others:
                current.add(self.rng.choice(others))
            return sorted(current)
        others = [v for v in values if v != true]
        return self.rng.choice(others) if others else true

    def judge(self, item: Item) -> bool:
        """Whether the persona accepts ``item`` (its hidden utility reaches the threshold)."""
        return self.persona.utility(item) >= self.persona.accept_threshold - 1e-9

    async def aanswer(self, slot: str) -> Any:
        return self.answer(slot)


class LLMUser(SimulatedUser):
    """A simulated user whose answers come from a provider (see the module docstring)."""

    def __init__(self, persona: Persona, catalog: Catalog, provider: Provider, *, seed: int = 0,
                 schema: SlotSchema = HEADPHONE_SLOTS) -> None:
        super().__init__(persona, catalog, seed=seed, schema=schema)
        self.provider = provider
        self.fallbacks = 0
        self.calls = 0

    def prompt(self, slot: str) -> CompletionRequest:
        p = self.persona
        wants = "; ".join(f"{k}: {', '.join(sorted(v)) if isinstance(v, (set, frozenset)) else v}"
                          for k, v in p.wants.items() if v is not None) or "nothing in particular"
        spec = self.schema[slot] if slot in self.schema else None
        question = (spec.question if spec is not None and spec.question else f"What about {slot}?")
        options = f" Answer with one of: {', '.join(spec.values)}." if spec is not None and spec.values else ""
        system = (f"You are a shopper looking for headphones. You want {wants}; your budget is "
                  f"{p.budget if p.budget is not None else 'open'} USD. Answer the shop assistant briefly and "
                  "truthfully; say 'no preference' when you have none.")
        return CompletionRequest(messages=(Message("system", system), Message("user", question + options)),
                                 temperature=0.0, seed=self.rng.randrange(2**31))

    def parse(self, slot: str, text: str) -> tuple[bool, Any]:
        """(parsed, value) from a reply: a number for numeric slots, the values named for the others."""
        lowered = text.lower()
        if "no preference" in lowered or "don't mind" in lowered:
            return True, None
        spec = self.schema[slot] if slot in self.schema else None
        if spec is None:
            return False, None
        if spec.kind == "numeric":
            found = re.search(r"(\d+(?:\.\d+)?)", lowered.replace(",", ""))
            return (True, float(found.group(1))) if found else (False, None)
        named = [v for v in spec.values if v.lower().replace("_", " ") in lowered.replace("_", " ")]
        if not named:
            return False, None
        return True, (sorted(named) if spec.kind == "multi" else named[0])

    async def aanswer(self, slot: str) -> Any:
        self.calls += 1
        completion = await self.provider.complete(self.prompt(slot))
        ok, value = self.parse(slot, completion.text)
        if not ok:
            self.fallbacks += 1
            return self.answer(slot)
        return value


# -- dialogues ----------------------------------------------------------------------------------------------------


@dataclass
class DialogueResult:
    """What one simulated dialogue ended with."""

    persona: str
    success: bool
    turns: int
    reward: float
    rewards: list[float] = field(default_factory=list)
    accepted: str | None = None
    decisions: list[str] = field(default_factory=list)
    left: bool = False


Policy = Callable[[DialogueState], Decision]


@dataclass
class Dialogue:
    """One dialogue in progress: the state a policy sees and the step that applies its decision."""

    user: SimulatedUser
    reward: Reward
    max_turns: int = 10
    state: DialogueState = field(default_factory=DialogueState)
    done: bool = False
    last_feedback: float = 0.0  # +1 accepted, -1 rejected, 0 otherwise (the last recommend's)
    result: DialogueResult | None = None

    def __post_init__(self) -> None:
        self.result = DialogueResult(self.user.persona.id, False, 0, 0.0)

    def recommend_item(self) -> Item | None:
        found = matching_items(self.user.catalog, self.state.slots, k=1, exclude=self.state.rejected,
                               negated=self.state.negated)
        return found[0][0] if found else None

    def _outcome(self, item: Item | None, accepted: bool | None) -> Outcome:
        p = self.user.persona
        return Outcome(items=[item] if item is not None else [], wanted_features=as_set(p.wants.get("features")),
                       budget=p.budget, accepted=accepted, turns=1)

    def _finish(self, decision: Decision, answer: Any = None, answered: bool = False) -> float:
        assert self.result is not None
        user, state = self.user, self.state
        user.turn += 1
        item, accepted = None, None
        if decision.action == "ask" and decision.slot is not None:
            slots = {**state.slots, decision.slot: answer} if answered else dict(state.slots)
            self.state = state.model_copy(update={"slots": slots, "asked": [*state.asked, decision.slot],
                                                  "turn": state.turn + 1})
            self.last_feedback = 0.0
        elif decision.action == "recommend":
            item = self.recommend_item()
            if item is None:
                accepted = False
            else:
                accepted = user.judge(item)
                if accepted:
                    user.accepted = item
                    self.result.accepted = item.id
            rejected = state.rejected + ([item.id] if item is not None and not accepted else [])
            self.state = state.model_copy(update={"rejected": rejected, "turn": state.turn + 1})
            self.last_feedback = 1.0 if accepted else -1.0
        r = self.reward(self._outcome(item, accepted))
        self.result.rewards.append(r)
        self.result.reward += r
        self.result.turns = user.turn
        self.result.decisions.append(decision.action if decision.slot is None else f"ask:{decision.slot}")
        if decision.action == "end" or user.accepted is not None or user.left or user.turn >= self.max_turns:
            self.done = True
            self.result.success = user.accepted is not None
            self.result.left = user.left
        return r

    def step(self, decision: Decision) -> float:
        """Apply ``decision`` for one turn; returns its reward."""
        if decision.action == "ask" and decision.slot is not None:
            return self._finish(decision, self.user.answer(decision.slot), True)
        return self._finish(decision)

    async def astep(self, decision: Decision) -> float:
        """:meth:`step` with the user's answer awaited (an :class:`LLMUser`)."""
        if decision.action == "ask" and decision.slot is not None:
            return self._finish(decision, await self.user.aanswer(decision.slot), True)
        return self._finish(decision)


def run_dialogue(policy: Policy, user: SimulatedUser, *, reward: Reward | None = None,
                 max_turns: int = 10) -> DialogueResult:
    """Play ``policy`` against ``user`` until it accepts, leaves, the policy ends, or ``max_turns``."""
    d = Dialogue(user, reward or build_reward(None), max_turns)
    while not d.done:
        d.step(policy(d.state))
    assert d.result is not None
    return d.result


async def arun_dialogue(policy: Policy, user: SimulatedUser, *, reward: Reward | None = None,
                        max_turns: int = 10) -> DialogueResult:
    """:func:`run_dialogue` for users whose answers are awaited (:class:`LLMUser`)."""
    d = Dialogue(user, reward or build_reward(None), max_turns)
    while not d.done:
        await d.astep(policy(d.state))
    assert d.result is not None
    return d.result


def success_summary(results: Sequence[DialogueResult]) -> dict[str, float]:
    """Success rate, mean turns of the successful dialogues, mean reward."""
    n = len(results)
    wins = [r for r in results if r.success]
    return {"dialogues": n, "success_rate": len(wins) / n if n else math.nan,
            "turns_to_success": sum(r.turns for r in wins) / len(wins) if wins else math.nan,
            "mean_reward": sum(r.reward for r in results) / n if n else math.nan}


__all__ = [
    "Dialogue", "DialogueResult", "LLMUser", "Persona", "Policy", "SimulatedUser", "arun_dialogue", "make_personas",
    "run_dialogue", "success_summary",
]
