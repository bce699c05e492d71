"""The headphones catalog, its slot schema and dataset, and the declarative reward functions (issue 15)."""

from __future__ import annotations

import pytest

from llmrec.conversation.catalog import (
    FEATURES, HEADPHONE_SLOTS, TYPES, USE_CASES, SlotSchema, generate_headphones, item_features, item_use_cases,
    matching_items, slot_entropy, slot_match,
)
from llmrec.conversation.rewards import (
    Outcome, RewardConfigError, acceptance_metric, build_reward, feature_diversity, feature_diversity_metric,
    feature_match, price_reward,
)
from llmrec.data.catalog import Catalog, Item
from llmrec.metrics import ListContext


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return generate_headphones(seed=5, n_items=200)


def _item(id: str, price: float, feats: set[str], kind: str = "over-ear", uses: str = "") -> Item:
    attrs: dict = {f: f in feats for f in FEATURES}
    attrs.update(type=kind, brand="Pulse", use_cases=uses)
    return Item(id=id, title=id, category=kind, price=price, attributes=attrs)


def test_catalog_is_seeded_and_covers_the_domain(catalog: Catalog) -> None:
    again = generate_headphones(seed=5, n_items=200)
    assert [i.model_dump() for i in catalog] == [i.model_dump() for i in again]
    assert [i.model_dump() for i in generate_headphones(seed=6, n_items=200)] != [i.model_dump() for i in catalog]
    assert {i.category for i in catalog} == set(TYPES)
    assert set().union(*(item_use_cases(i) for i in catalog)) == set(USE_CASES)
    assert set().union(*(item_features(i) for i in catalog)) == set(FEATURES)
    # use cases follow from features: every gym pair is a waterproof in-ear or earbud
    gym = [i for i in catalog if "gym" in item_use_cases(i)]
    assert gym and all("waterproof" in item_features(i) and i.category in ("in-ear", "earbuds") for i in gym)
    # features cost money: noise cancelling items are dearer on average
    nc = [i.price for i in catalog if "noise_cancelling" in item_features(i)]
    plain = [i.price for i in catalog if "noise_cancelling" not in item_features(i)]
    assert sum(nc) / len(nc) > sum(plain) / len(plain)
    with pytest.raises(ValueError, match="n_items"):
        generate_headphones(n_items=0)


def test_slot_schema_is_data_and_round_trips() -> None:
    assert HEADPHONE_SLOTS.names == ("type", "use_case", "features", "budget", "brand")
    assert HEADPHONE_SLOTS["budget"].kind == "numeric" and HEADPHONE_SLOTS["features"].kind == "multi"
    assert SlotSchema.from_dict(HEADPHONE_SLOTS.to_dict()) == HEADPHONE_SLOTS
    with pytest.raises(KeyError, match="no slot 'colour'"):
        HEADPHONE_SLOTS["colour"]


def test_matching_ranks_by_known_slots(catalog: Catalog) -> None:
    a = _item("a", 100, {"wireless", "noise_cancelling"}, uses="commute,travel")
    b = _item("b", 300, {"wireless", "noise_cancelling"}, uses="commute")
    c = _item("c", 50, {"wireless"}, kind="earbuds")
    small = Catalog([a, b, c])
    assert slot_match(a, {"features": ["wireless", "noise_cancelling"], "budget": 150}) == 1.0
    assert slot_match(b, {"budget": 150}) == 0.0  # twice the budget: 1 - 100% over
    assert slot_match(c, {"features": ["wireless", "noise_cancelling"]}) == 0.5
    ranked = [i.id for i, _ in matching_items(small, {"features": ["noise_cancelling"], "budget": 200})]
    assert ranked == ["a", "b", "c"]
    assert [i.id for i, _ in matching_items(small, {"type": "earbuds"}, exclude=["c"])][:1] == ["a"]  # tie: cheaper
    # a negated value costs a whole slot
    assert slot_match(c, {"type": "earbuds"}, negated={"features": ["wireless"]}) == 0.5
    found = matching_items(catalog, {"use_case": "gym", "budget": 80}, k=5)
    assert all(s == 1.0 for _, s in found) and all("gym" in item_use_cases(i) for i, _ in found)
    assert slot_entropy(small, "type") == pytest.approx(0.9183, abs=1e-3)  # 2 over-ear, 1 earbuds
    assert slot_entropy([a, b], "type") == 0.0


def test_rewards_on_hand_computed_cases() -> None:
    a = _item("a", 100, {"wireless", "noise_cancelling"})
    b = _item("b", 100, {"wireless"}, kind="earbuds")
    wanted = frozenset({"wireless", "noise_cancelling", "waterproof", "microphone"})
    assert feature_match([a], wanted) == 0.5 and feature_match([a, b], wanted) == pytest.approx(0.375)
    assert feature_match([a], frozenset()) == 1.0 and feature_match([], wanted) == 0.0
    # piecewise-linear price: flat 1 to the budget, to 0 at +10%, then -2 per budget share, floored at -1
    assert price_reward(90, 100) == 1.0 and price_reward(100, 100) == 1.0
    assert price_reward(105, 100) == pytest.approx(0.5)
    assert price_reward(110, 100) == pytest.approx(0.0)
    assert price_reward(130, 100) == pytest.approx(-0.4)
    assert price_reward(500, 100) == -1.0 and price_reward(50, None) == 0.0
    # diversity: {nc, wireless, type:over-ear} vs {wireless, type:earbuds}: 1 shared of 4
    assert feature_diversity([a, b]) == pytest.approx(0.75) and feature_diversity([a, a]) == 0.0
    reward = build_reward({"acceptance": {"weight": 1.0, "reject": 0.5}, "feature_match": 2.0,
                           "price": {"weight": 1.0, "tolerance": 0.2, "overshoot_penalty": 1.0},
                           "diversity": 0.5, "turn_penalty": {"per_turn": 0.1}})
    out = Outcome(items=[a, b], wanted_features=wanted, budget=90, accepted=False, turns=3)
    parts = reward.breakdown(out)
    # price: 100 vs 90 is 11.1% over, tolerance 20%: 1 - 0.111/0.2 = 0.444 for both
    assert parts == pytest.approx({"acceptance": -0.5, "feature_match": 0.75, "price": 1 - (10 / 90) / 0.2,
                                   "diversity": 0.375, "turn_penalty": -0.3})
    assert reward(out) == pytest.approx(sum(parts.values()))
    assert build_reward({"acceptance": 1})(Outcome(accepted=True)) == 1.0
    assert build_reward({"acceptance": 1})(Outcome()) == 0.0


def test_reward_config_errors_name_the_component_and_key() -> None:
    with pytest.raises(RewardConfigError, match="unknown reward component 'pricey'"):
        build_reward({"pricey": 1})
    with pytest.raises(RewardConfigError, match="'price': overshot: Extra inputs"):
        build_reward({"price": {"overshot": 2}})
    with pytest.raises(RewardConfigError, match="'acceptance': reject"):
        build_reward({"acceptance": {"reject": -1}})
    with pytest.raises(RewardConfigError, match="mapping of components"):
        build_reward({})


def test_rewards_as_metrics(catalog: Catalog) -> None:
    assert acceptance_metric(["x", "y"], {"y"}, 2) == 1.0
    assert acceptance_metric(["x", "y"], {"y"}, 1) == -0.3
    ids = [i.id for i in catalog][:4]
    same = [ids[0], ids[0]]
    ctx = ListContext(catalog=catalog)
    assert feature_diversity_metric([same], 2, ctx) == 0.0
    assert 0.0 < feature_diversity_metric([ids], 4, ctx) <= 1.0
    assert feature_diversity_metric.scope == "list"
