"""The values conversational node types pass between each other (issue 15).

``DialogueState`` is what a session keeps between turns (``dst.merge`` returns the next one); ``Decision`` is what
a ``policy.*`` node decides for this turn. Both are frozen pydantic models, like :mod:`llmrec.types`, so a spec
can reference them field by field (``${decide.action}``, ``${track.state.slots}``) and check them statically.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["ask", "recommend", "end"]
ACTIONS: tuple[Action, ...] = ("ask", "recommend", "end")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlotConflict(_Frozen):
    """Two values for one slot that an update rule had to settle (logged, never silent)."""

    slot: str
    old: Any = None
    new: Any = None
    rule: str = Field(description="The update rule that settled it: overwrite, accumulate, negate or decay.")
    turn: int = 0


class DialogueState(_Frozen):
    """What the user has told us so far, kept across turns."""

    slots: dict[str, Any] = Field(default_factory=dict, description="Slot name to its current value.")
    negated: dict[str, list[Any]] = Field(default_factory=dict, description="Values the user ruled out, per slot.")
    confidence: dict[str, float] = Field(default_factory=dict, description="Per slot, in [0, 1]; decays per turn.")
    asked: list[str] = Field(default_factory=list, description="Slots already asked about, in order.")
    rejected: list[str] = Field(default_factory=list, description="Item ids the user turned down.")
    conflicts: list[SlotConflict] = Field(default_factory=list)
    turn: int = 0


class Decision(_Frozen):
    """A policy's choice for this turn: ask about ``slot``, recommend, or end the conversation."""

    action: Action
    slot: str | None = Field(None, description="The slot to ask about when action is 'ask'.")
    policy: str = Field("", description="The policy that decided, e.g. 'rule', 'ucb', 'ppo'.")
    scores: dict[str, float] = Field(default_factory=dict, description="Per action: its value or probability.")
    explored: bool = Field(False, description="True when an exploring policy did not take its best action.")
    degraded: bool = False
    reason: str = ""
    items: list[str] = Field(default_factory=list, description="Item ids the policy chose itself (policy.mcts: a "
                                                               "bundle); empty when recommending is left to the spec.")
