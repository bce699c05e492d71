"""Declarative reward functions for conversational recommendation (book 5.4, 8.4).

A reward is built from a config dict, validated by pydantic (an unknown key or component is a clear error)::

    build_reward({"acceptance": {"weight": 1.0, "reject": 0.3},
                  "feature_match": 0.5,                       # a bare number is the weight
                  "price": {"weight": 0.5, "tolerance": 0.1, "overshoot_penalty": 2.0},
                  "diversity": 0.1, "turn_penalty": {"per_turn": 0.05}})

Components, each a function of one :class:`Outcome` (what a turn or a dialogue ended with):

- ``feature_match`` (discrete): the share of the wanted features the recommended item has (1 when none is
  wanted); with several items, the mean.
- ``price`` (piecewise linear, the book's 5.4 reward): 1 at or under the budget; from the budget to
  ``budget * (1 + tolerance)`` it falls linearly to 0; beyond, ``-overshoot_penalty`` per budget-share of
  overshoot past the tolerance, floored at ``floor``. No budget: 0.
- ``acceptance``: ``accept`` when the user accepted, ``-reject`` when they turned it down, 0 otherwise.
- ``diversity``: mean pairwise Jaccard distance between the items' feature sets (type counted as a feature):
  0 for one item or identical items, 1 for disjoint ones.
- ``turn_penalty``: ``-per_turn * turns``.

:class:`Reward` is their weighted sum; ``reward(outcome)`` gives the total, ``reward.breakdown(outcome)`` each
component's weighted value. Two of them fit llmrec's metric contract and are registered as eval metrics by the
policy plugin (:func:`acceptance_metric`, per case; :func:`feature_diversity_metric`, over every answer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..data.catalog import Catalog, Item
from ..metrics import ListContext, list_metric
from .catalog import item_features, item_type


@dataclass(frozen=True)
class Outcome:
    """What a reward is computed on: the items recommended, what the user wanted, what they did."""

    items: Sequence[Item] = ()
    wanted_features: frozenset[str] = frozenset()
    budget: float | None = None
    accepted: bool | None = None  # None: no recommendation was answered this turn
    turns: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


class _Component(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = 1.0


class FeatureMatch(_Component):
    pass


class PriceReward(_Component):
    tolerance: float = Field(0.1, ge=0.0, description="Share of the budget over it before the reward turns negative.")
    overshoot_penalty: float = Field(2.0, ge=0.0, description="Penalty per budget-share of overshoot past tolerance.")
    floor: float = Field(-1.0, le=0.0, description="The lowest the price reward goes.")


class Acceptance(_Component):
    accept: float = 1.0
    reject: float = Field(0.3, ge=0.0, description="Subtracted when the user turns the item down.")


class Diversity(_Component):
    pass


class TurnPenalty(_Component):
    per_turn: float = Field(0.05, ge=0.0)


COMPONENTS: dict[str, type[_Component]] = {
    "feature_match": FeatureMatch, "price": PriceReward, "acceptance": Acceptance, "diversity": Diversity,
    "turn_penalty": TurnPenalty,
}


class RewardConfigError(ValueError):
    """A reward config that does not validate; the message names the component and key."""


def feature_match(items: Sequence[Item], wanted: frozenset[str]) -> float:
    """The share of ``wanted`` features each item has, averaged over items (1 when nothing is wanted)."""
    if not items:
        return 0.0
    if not wanted:
        return 1.0
    return sum(len(wanted & item_features(it)) / len(wanted) for it in items) / len(items)


def price_reward(price: float | None, budget: float | None, tolerance: float = 0.1, overshoot_penalty: float = 2.0,
                 floor: float = -1.0) -> float:
    """The piecewise-linear price reward of one price against a budget (see the module docstring)."""
    if budget is None or price is None or budget <= 0:
        return 0.0
    if price <= budget:
        return 1.0
    over = (price - budget) / budget
    if over <= tolerance:
        return 1.0 - over / tolerance if tolerance > 0 else 0.0
    return max(floor, -overshoot_penalty * (over - tolerance))


def feature_diversity(items: Sequence[Item]) -> float:
    """Mean pairwise Jaccard distance of the items' feature sets (with their type as one more feature)."""
    sets = [item_features(it) | {f"type:{item_type(it)}"} for it in items]
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]
    if not pairs:
        return 0.0
    return sum(1.0 - len(a & b) / len(a | b) for a, b in pairs) / len(pairs)


def _value(name: str, c: _Component, o: Outcome) -> float:
    if name == "feature_match":
        return feature_match(o.items, o.wanted_features)
    if name == "price":
        assert isinstance(c, PriceReward)
        if not o.items:
            return 0.0
        return sum(price_reward(it.price, o.budget, c.tolerance, c.overshoot_penalty, c.floor)
                   for it in o.items) / len(o.items)
    if name == "acceptance":
        assert isinstance(c, Acceptance)
        return c.accept if o.accepted is True else (-c.reject if o.accepted is False else 0.0)
    if name == "diversity":
        return feature_diversity(o.items)
    assert isinstance(c, TurnPenalty)
    return -c.per_turn * o.turns


@dataclass(frozen=True)
class Reward:
    """A weighted sum of reward components (build it with :func:`build_reward`)."""

    components: tuple[tuple[str, _Component], ...]

    def breakdown(self, outcome: Outcome) -> dict[str, float]:
        """Each component's weighted value."""
        return {name: c.weight * _value(name, c, outcome) for name, c in self.components}

    def __call__(self, outcome: Outcome) -> float:
        return float(sum(self.breakdown(outcome).values()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.components)

    def to_dict(self) -> dict[str, Any]:
        return {name: c.model_dump() for name, c in self.components}

    def component(self, name: str) -> Callable[[Outcome], float]:
        """One component's unweighted value as a function."""
        for n, c in self.components:
            if n == name:
                return lambda o, _n=n, _c=c: _value(_n, _c, o)
        raise KeyError(name)


def build_reward(config: Mapping[str, Any] | None) -> Reward:
    """A :class:`Reward` from ``{component: weight | {weight, ...params}}``; raises :class:`RewardConfigError`."""
    if config is None:
        config = DEFAULT_REWARD
    if not isinstance(config, Mapping) or not config:
        raise RewardConfigError(f"a reward config is a mapping of components ({', '.join(COMPONENTS)}) to a weight "
                                f"or settings, got {config!r}")
    out = []
    for name, value in config.items():
        cls = COMPONENTS.get(name)
        if cls is None:
            raise RewardConfigError(f"unknown reward component {name!r}; use {', '.join(COMPONENTS)}")
        data = {"weight": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(data, Mapping):
            raise RewardConfigError(f"reward component {name!r}: give a weight or a mapping, got {value!r}")
        try:
            out.append((name, cls(**data)))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}" for e in exc.errors())
            raise RewardConfigError(f"reward component {name!r}: {problems}") from None
    return Reward(tuple(out))


#: what the gymnasium environment and the benchmarks use unless told otherwise
DEFAULT_REWARD: dict[str, Any] = {"acceptance": {"weight": 1.0, "reject": 0.3}, "feature_match": 0.3,
                                  "price": 0.2, "turn_penalty": {"per_turn": 0.05}}


# -- as eval metrics ----------------------------------------------------------------------------------------------


def acceptance_metric(ranked: Sequence[str], relevant: Sequence[str] | frozenset[str], k: int) -> float:
    """Per case: +1 when one of the top ``k`` is one the user took (a relevant id), else -0.3 (the acceptance
    reward with its default rejection penalty), so its mean is the expected acceptance reward of one
    recommendation turn."""
    wanted = set(relevant)
    return 1.0 if any(i in wanted for i in list(ranked)[:k]) else -Acceptance().reject


@list_metric
def feature_diversity_metric(lists: Sequence[Sequence[str]], k: int, context: ListContext) -> float:
    """Over every answer: the mean feature diversity (:func:`feature_diversity`) of its top ``k``, for items of
    a catalog with headphone feature attributes (others count as featureless)."""
    catalog: Catalog | None = context.catalog
    if catalog is None or not lists:
        return 0.0
    values = []
    for ids in lists:
        items = [it for i in list(ids)[:k] if (it := catalog.get(i)) is not None]
        values.append(feature_diversity(items))
    return sum(values) / len(values)


__all__ = [
    "COMPONENTS", "DEFAULT_REWARD", "Outcome", "Reward", "RewardConfigError", "acceptance_metric", "build_reward",
    "feature_diversity", "feature_diversity_metric", "feature_match", "price_reward",
]
