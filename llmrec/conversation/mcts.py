"""Monte Carlo tree search for bundles: choose ``k`` complementary items under a total budget.

A bundle is built one item at a time; the tree's children of a node are the items not yet in it (a later
candidate index than the last one chosen, so each set is reached once) whose price still fits the budget left,
which makes the budget a hard constraint: no bundle MCTS returns ever costs more. Selection is UCT
(``value + c * sqrt(ln N / n)``), expansion adds one untried child, the rollout completes the bundle with random
affordable items (seeded), and the bundle's value is backed up. The best bundle seen in any rollout is returned,
with the iterations spent.

:func:`coverage_value` is the default objective for the headphones domain: the share of the wanted use cases and
of the wanted features that *some* item of the bundle covers (so two items that each cover a different need beat
two copies of the best single one), plus a small bonus for distinct types, and a little for leaving budget unspent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.catalog import Item
from .catalog import as_set, item_features, item_type, item_use_cases

Value = Callable[[Sequence[Item]], float]


def coverage_value(use_cases: Iterable[str] = (), features: Iterable[str] = (), *, budget: float | None = None,
                   type_bonus: float = 0.1, thrift: float = 0.05) -> Value:
    """The default bundle objective (see the module docstring), in [0, 1 + type_bonus + thrift]."""
    wanted_uses, wanted_feats = as_set(list(use_cases)), as_set(list(features))

    def value(items: Sequence[Item]) -> float:
        if not items:
            return 0.0
        uses = set().union(*(item_use_cases(i) for i in items))
        feats = set().union(*(item_features(i) for i in items))
        parts = []
        if wanted_uses:
            parts.append(len(wanted_uses & uses) / len(wanted_uses))
        if wanted_feats:
            parts.append(len(wanted_feats & feats) / len(wanted_feats))
        base = sum(parts) / len(parts) if parts else 0.0
        types = len({item_type(i) for i in items})
        spent = sum(i.price or 0.0 for i in items)
        left = max(0.0, 1.0 - spent / budget) if budget else 0.0
        return base + type_bonus * (types - 1) / max(1, len(items) - 1) + thrift * left

    return value


@dataclass
class _Node:
    chosen: tuple[int, ...]
    spent: float
    untried: list[int]
    children: list[_Node] = field(default_factory=list)
    visits: int = 0
    total: float = 0.0


@dataclass(frozen=True)
class Bundle:
    items: tuple[Item, ...]
    value: float
    price: float
    iterations: int

    @property
    def ids(self) -> list[str]:
        return [i.id for i in self.items]


def shortlist(candidates: Sequence[Item], value: Value, n: int, budget: float | None = None) -> list[Item]:
    """The ``n`` affordable candidates worth most on their own (ties: input order): the tree's branching."""
    limit = math.inf if budget is None else float(budget)
    ok = [(i, it) for i, it in enumerate(candidates) if float(it.price or 0.0) <= limit + 1e-9]
    ok.sort(key=lambda pair: (-value([pair[1]]), pair[0]))
    return [it for _, it in ok[:n]]


def bundle_mcts(candidates: Sequence[Item], k: int, value: Value, *, budget: float | None = None,
                iterations: int = 500, seed: int = 0, c: float = 1.0, pool: int | None = 30) -> Bundle:
    """The best bundle of up to ``k`` of ``candidates`` whose total price is at most ``budget`` (see the module
    docstring); the search runs over the ``pool`` candidates worth most on their own (None: all). Items without
    a price count as free."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if pool is not None and len(candidates) > pool:
        candidates = shortlist(candidates, value, pool, budget)
    rng = random.Random(seed)
    prices = [float(it.price or 0.0) for it in candidates]
    limit = math.inf if budget is None else float(budget)

    def options(chosen: tuple[int, ...], spent: float) -> list[int]:
        if len(chosen) >= k:
            return []
        start = chosen[-1] + 1 if chosen else 0
        return [j for j in range(start, len(candidates)) if spent + prices[j] <= limit + 1e-9]

    root = _Node((), 0.0, options((), 0.0))
    best: tuple[float, tuple[int, ...]] = (-math.inf, ())

    def score(chosen: tuple[int, ...]) -> float:
        nonlocal best
        v = value([candidates[j] for j in chosen])
        if v > best[0] or (v == best[0] and sum(prices[j] for j in chosen) < sum(prices[j] for j in best[1])):
            best = (v, chosen)
        return v

    for _ in range(iterations):
        node, path = root, [root]
        while not node.untried and node.children:  # selection
            log_n = math.log(node.visits)
            node = max(node.children, key=lambda ch: ch.total / ch.visits + c * math.sqrt(log_n / ch.visits))
            path.append(node)
        if node.untried:  # expansion
            j = node.untried.pop(rng.randrange(len(node.untried)))
            chosen, spent = (*node.chosen, j), node.spent + prices[j]
            child = _Node(chosen, spent, options(chosen, spent))
            node.children.append(child)
            node, path = child, [*path, child]
        chosen, spent = node.chosen, node.spent  # rollout
        while True:
            opts = options(chosen, spent)
            if not opts:
                break
            j = rng.choice(opts)
            chosen, spent = (*chosen, j), spent + prices[j]
        v = score(chosen)
        for n in path:  # backup
            n.visits += 1
            n.total += v
        if not root.untried and not root.children:
            break
    chosen = best[1]
    return Bundle(tuple(candidates[j] for j in chosen), best[0] if chosen else 0.0,
                  round(sum(prices[j] for j in chosen), 2), iterations)


def greedy_bundle(candidates: Sequence[Item], k: int, value: Value, *, budget: float | None = None) -> Bundle:
    """The baseline: add the item that raises the value most while it fits the budget, ``k`` times."""
    limit = math.inf if budget is None else float(budget)
    chosen: list[Item] = []
    spent = 0.0
    for _ in range(k):
        best: tuple[float, Any] = (-math.inf, None)
        for it in candidates:
            if it in chosen or spent + float(it.price or 0.0) > limit + 1e-9:
                continue
            v = value([*chosen, it])
            if v > best[0]:
                best = (v, it)
        if best[1] is None:
            break
        chosen.append(best[1])
        spent += float(best[1].price or 0.0)
    return Bundle(tuple(chosen), value(chosen) if chosen else 0.0, round(spent, 2), 0)


__all__ = ["Bundle", "bundle_mcts", "coverage_value", "greedy_bundle", "shortlist"]
