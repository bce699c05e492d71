"""MCTS bundles: never over budget, seeded, and better than greedy where greedy's first pick blocks the best
pair (issue 15)."""

from __future__ import annotations

import pytest

from llmrec.conversation.catalog import FEATURES, generate_headphones, item_use_cases
from llmrec.conversation.mcts import bundle_mcts, coverage_value, greedy_bundle
from llmrec.data.catalog import Item


def _item(id: str, price: float, uses: str, kind: str = "over-ear") -> Item:
    attrs: dict = {f: False for f in FEATURES}
    attrs.update(type=kind, brand="Pulse", use_cases=uses)
    return Item(id=id, title=id, category=kind, price=price, attributes=attrs)


def test_mcts_finds_the_complementary_pair_greedy_misses() -> None:
    a = _item("a", 150, "gym,travel")  # the best single item: 2 of 3 needs, but then nothing else fits
    b = _item("b", 100, "gym", "earbuds")
    c = _item("c", 100, "studio,travel")
    d = _item("d", 60, "office")
    value = coverage_value(["gym", "travel", "studio"], type_bonus=0.0, thrift=0.0)
    greedy = greedy_bundle([a, b, c, d], 2, value, budget=200)
    assert greedy.ids[0] == "a" and greedy.value == pytest.approx(2 / 3)
    found = bundle_mcts([a, b, c, d], 2, value, budget=200, iterations=60, seed=0)
    assert sorted(found.ids) == ["b", "c"] and found.value == pytest.approx(1.0) and found.price == 200
    with pytest.raises(ValueError, match="k must be"):
        bundle_mcts([a], 0, value)


def test_mcts_respects_the_budget_and_is_seeded() -> None:
    catalog = list(generate_headphones(seed=5, n_items=80))
    value = coverage_value(["gym", "office", "studio"], ["noise_cancelling", "microphone"], budget=250)
    for budget in (40.0, 120.0, 250.0):
        for seed in range(3):
            bundle = bundle_mcts(catalog, 3, value, budget=budget, iterations=150, seed=seed)
            assert sum(i.price for i in bundle.items) <= budget + 1e-9 and len(bundle.items) <= 3
            assert len(set(bundle.ids)) == len(bundle.ids)
    one = bundle_mcts(catalog, 3, value, budget=250, iterations=150, seed=4)
    assert one == bundle_mcts(catalog, 3, value, budget=250, iterations=150, seed=4)
    uses = set().union(*(item_use_cases(i) for i in one.items))
    assert len(uses & {"gym", "office", "studio"}) >= 2
    assert one.value >= greedy_bundle(catalog, 3, value, budget=250).value - 0.05
    assert bundle_mcts(catalog, 2, value, budget=1.0, iterations=20).items == ()  # nothing affordable
