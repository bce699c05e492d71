"""Clarify-or-recommend policies as plain functions of a :class:`DialogueState` (the ``policy.*`` nodes wrap them).

- :class:`RulePolicy`: ask the most informative unknown slot (the entropy of its values over the items that
  still fit what is known) until ``min_known`` slots are known or ``max_turns`` is near; then recommend; end
  after ``max_rejections`` turned-down items or at ``max_turns``.
- :class:`BanditPolicy`: one arm per action (ask slot i, recommend); a :mod:`llmrec.conversation.bandits`
  algorithm picks it, from the state's feature vector when contextual (LinUCB), and learns from each turn's
  reward through ``update``.
- :func:`state_features`: the fixed-size vector of a dialogue state that the bandit, the gymnasium environment
  and the PPO policy see: one known/unknown flag per slot, the turn over the turn limit, the share of rejections,
  and the last recommendation's feedback (+1 accepted, -1 rejected, 0 none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.catalog import Catalog
from .bandits import Bandit, make_bandit
from .catalog import HEADPHONE_SLOTS, SlotSchema, matching_items, slot_entropy
from .types import Decision, DialogueState

#: the slots the policies ask about unless told otherwise (brand: few users care, so rarely worth a turn)
DEFAULT_SLOTS: tuple[str, ...] = ("type", "use_case", "features", "budget")


def state_features(state: DialogueState, slots: Sequence[str] = DEFAULT_SLOTS, max_turns: int = 10,
                   last_feedback: float = 0.0) -> np.ndarray:
    """The state as ``len(slots) + 3`` floats (see the module docstring)."""
    known = [1.0 if s in state.slots else 0.0 for s in slots]
    turn = min(1.0, state.turn / max(1, max_turns))
    rejected = min(1.0, len(state.rejected) / 3.0)
    return np.array([*known, turn, rejected, float(last_feedback)], dtype=np.float32)


def actions(slots: Sequence[str]) -> list[Decision]:
    """The action set of the learned policies: ask each slot, then recommend, then end."""
    return [*(Decision(action="ask", slot=s) for s in slots), Decision(action="recommend"), Decision(action="end")]


def action_names(slots: Sequence[str]) -> list[str]:
    return [*(f"ask:{s}" for s in slots), "recommend", "end"]


@dataclass
class RulePolicy:
    """See the module docstring."""

    catalog: Catalog | None = None
    slots: tuple[str, ...] = DEFAULT_SLOTS
    min_known: int = 3
    max_turns: int = 10
    max_rejections: int = 3
    pool: int = 60  # how many best-fitting items the informativeness is measured on
    schema: SlotSchema = HEADPHONE_SLOTS

    def scores(self, state: DialogueState) -> dict[str, float]:
        """Each unknown slot's informativeness (bits) over the items that still fit."""
        unknown = [s for s in self.slots if s not in state.slots and s not in state.asked]
        if self.catalog is None:  # no catalog: the schema order, first slot most
            return {s: float(len(unknown) - i) for i, s in enumerate(unknown)}
        fitting = [it for it, _ in matching_items(self.catalog, state.slots, k=self.pool, exclude=state.rejected,
                                                  negated=state.negated)]
        return {s: round(slot_entropy(fitting, s), 4) for s in unknown}

    def __call__(self, state: DialogueState) -> Decision:
        if len(state.rejected) >= self.max_rejections:
            return Decision(action="end", policy="rule", reason=f"{len(state.rejected)} items turned down")
        if state.turn >= self.max_turns:
            return Decision(action="end", policy="rule", reason=f"the turn limit ({self.max_turns}) is reached")
        known = sum(1 for s in self.slots if s in state.slots)
        scores = self.scores(state)
        turns_left = self.max_turns - state.turn
        if known >= self.min_known or not scores or turns_left <= 1:
            why = (f"{known} slots known" if known >= self.min_known else
                   "no slot left to ask" if not scores else "the turn limit is near")
            return Decision(action="recommend", policy="rule", scores=scores, reason=why)
        slot = max(scores, key=lambda s: (scores[s], -self.slots.index(s)))
        return Decision(action="ask", slot=slot, policy="rule", scores=scores,
                        reason=f"'{slot}' splits the fitting items most ({scores[slot]:.2f} bits)")


@dataclass
class BanditPolicy:
    """See the module docstring. ``update(reward)`` credits the arm of the last decision."""

    algorithm: str = "ucb"
    slots: tuple[str, ...] = DEFAULT_SLOTS
    max_turns: int = 10
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    #: "turn": each decision learns its own turn's reward; "return": the dialogue's rewards from that turn on,
    #: credited when it ends (asking pays later, when the recommendation it made possible is accepted)
    credit: str = "return"
    bandit: Bandit | None = None
    #: per dialogue (a session id; "" when there is one at a time): the last decision's arm and context, and
    #: the decisions waiting for the dialogue's end (credit "return"); the oldest are dropped past max_sessions
    last: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    pending: dict[str, list[tuple[int, np.ndarray, float]]] = field(default_factory=dict)
    max_sessions: int = 10_000

    def __post_init__(self) -> None:
        if self.bandit is None:
            self.bandit = make_bandit(self.algorithm, n_arms=len(self.slots) + 1,
                                      dim=len(self.slots) + 3, seed=self.seed, **self.params)
        self.names = [*(f"ask:{s}" for s in self.slots), "recommend"]

    def __call__(self, state: DialogueState, last_feedback: float = 0.0, session: str = "") -> Decision:
        assert self.bandit is not None
        x = state_features(state, self.slots, self.max_turns, last_feedback)
        # arms already used up (a slot asked) are masked: asking again teaches nothing
        allowed = [i for i, s in enumerate(self.slots) if s not in state.slots and s not in state.asked]
        allowed.append(len(self.slots))
        choice = self.bandit.select(x, allowed=allowed)
        self.last.pop(session, None)
        self.last[session] = (choice.arm, x)
        while len(self.last) > self.max_sessions:
            oldest = next(iter(self.last))
            self.last.pop(oldest)
            self.pending.pop(oldest, None)
        scores = {self.names[i]: round(float(v), 4) for i, v in enumerate(choice.values) if i in allowed}
        if choice.arm < len(self.slots):
            return Decision(action="ask", slot=self.slots[choice.arm], policy=self.bandit.name, scores=scores,
                            explored=choice.explored)
        return Decision(action="recommend", policy=self.bandit.name, scores=scores, explored=choice.explored)

    def update(self, reward: float, done: bool = False, session: str = "") -> bool:
        """Credit ``reward`` to ``session``'s last decision (no-op before its first decision); with
        ``credit="return"`` its arms learn when ``done`` says the dialogue ended. True when a decision took it."""
        if self.credit not in ("turn", "return"):
            raise ValueError(f"credit must be 'turn' or 'return', got {self.credit!r}")
        assert self.bandit is not None
        last = self.last.pop(session, None)
        if last is not None:
            arm, x = last
            if self.credit == "turn":
                self.bandit.update(arm, reward, x)
            else:
                self.pending.setdefault(session, []).append((arm, x, float(reward)))
        waiting = self.pending.pop(session, []) if done else []
        to_go = 0.0
        for arm, x, r in reversed(waiting):
            to_go += r
            self.bandit.update(arm, to_go, x)
        return last is not None


__all__ = ["BanditPolicy", "DEFAULT_SLOTS", "RulePolicy", "action_names", "actions", "state_features"]
