"""The demo dataset is deterministic, sized as promised, and carries the structure recommenders should find."""

from __future__ import annotations

import csv
import json
import re

import pytest

from llmrec.data import Catalog, Interaction, Interactions, Item, generate_demo
from llmrec.data.demo import DemoUser, write_demo

KEYWORD_CATEGORIES = {
    "hiking": "outdoor",
    "espresso": "kitchen",
    "yoga": "fitness",
    "headphones": "electronics",
    "novel": "books",
    "vinyl": "music",
    "multiplayer": "games",
    "sofa": "home",
}


def _snapshot(seed: int) -> tuple[list[Item], list[Interaction]]:
    dataset = generate_demo(seed=seed)
    return list(dataset.catalog), list(dataset.interactions)


def test_same_seed_gives_identical_data_and_different_seeds_differ() -> None:
    assert _snapshot(7) == _snapshot(7)
    assert generate_demo(7).users == generate_demo(7).users
    other_items, other_interactions = _snapshot(8)
    items, interactions = _snapshot(7)
    assert items != other_items
    assert interactions != other_interactions


def test_sizes_and_ids() -> None:
    dataset = generate_demo()
    catalog, interactions = dataset.catalog, dataset.interactions

    assert len(dataset.users) >= 100
    assert [user.id for user in dataset.users] == [f"u{n}" for n in range(1, len(dataset.users) + 1)]
    assert interactions.users() == [user.id for user in dataset.users]

    assert 200 <= len(catalog) <= 1000
    assert catalog.ids == [f"i{n:03d}" for n in range(1, len(catalog) + 1)]
    assert len({item.title for item in catalog}) == len(catalog)
    assert len(catalog.categories) == 8

    for user in dataset.users:
        assert 1 <= len(user.preferred_categories) <= 3
        assert set(user.preferred_categories) <= set(catalog.categories)
        assert 10 <= len(interactions.history(user.id)) <= 60


def test_items_look_like_a_shop() -> None:
    catalog = generate_demo().catalog
    for item in catalog:
        assert item.price is not None and 1.0 <= item.price <= 1000.0
        assert round(item.price, 2) == item.price
        assert item.description and item.category
        assert isinstance(item.attributes["brand"], str)
        assert 1.0 <= float(item.attributes["rating"]) <= 5.0
        assert item.text == f"{item.title}. {item.description}"
    in_stock = sum(bool(item.attributes["in_stock"]) for item in catalog) / len(catalog)
    assert 0.8 <= in_stock <= 0.97


def test_planted_preferences_are_recoverable() -> None:
    dataset = generate_demo()
    recovered = 0
    for user in dataset.users:
        affinity = dataset.interactions.category_affinity(user.id, dataset.catalog)
        assert sum(affinity.values()) == pytest.approx(1.0)
        top = max(affinity, key=affinity.__getitem__)
        recovered += top in user.preferred_categories
    assert recovered >= 0.8 * len(dataset.users)


def test_keywords_land_in_their_category() -> None:
    catalog = generate_demo().catalog
    for keyword, category in KEYWORD_CATEGORIES.items():
        pattern = re.compile(rf"\b{keyword}\b", re.IGNORECASE)
        matches = [item for item in catalog if pattern.search(item.description)]
        assert len(matches) >= 3, keyword
        assert {item.category for item in matches} == {category}, keyword


def test_unknown_user_is_cold_start() -> None:
    dataset = generate_demo()
    assert dataset.interactions.history("nobody") == []
    assert dataset.interactions.seen("nobody") == frozenset()
    assert dataset.interactions.category_affinity("nobody", dataset.catalog) == {}


def test_popularity_is_skewed() -> None:
    dataset = generate_demo()
    weights = sorted(dataset.interactions.popularity().values(), reverse=True)
    top = weights[: len(dataset.catalog) // 10]
    assert sum(top) > 0.25 * sum(weights)


def test_no_user_interacts_twice_with_an_item_and_time_moves_forward() -> None:
    dataset = generate_demo()
    for user in dataset.interactions.users():
        history = dataset.interactions.history(user)
        item_ids = [it.item_id for it in history]
        assert len(item_ids) == len(set(item_ids)), user
        assert dataset.interactions.seen(user) == frozenset(item_ids)
        timestamps = [it.timestamp for it in history]
        assert timestamps == sorted(timestamps)
        assert 1_700_000_000 <= timestamps[0] and timestamps[-1] < 1_700_000_000 + 181 * 86400
        for it in history:
            assert it.item_id in dataset.catalog
            assert (it.rating is not None) == (it.event == "rating")
            assert it.rating is None or 1 <= it.rating <= 5



def test_catalog_rejects_duplicate_and_empty_ids() -> None:
    with pytest.raises(ValueError, match="i7"):
        Catalog([Item(id="i7", title="A"), Item(id="i8", title="B"), Item(id="i7", title="C")])
    with pytest.raises(ValueError, match="empty id"):
        Catalog([Item(id=" ", title="Blank")])


def test_catalog_lookups() -> None:
    catalog = Catalog(
        [
            Item(id="b", title="Boots", category="outdoor"),
            Item(id="a", title="Mixer", category="kitchen"),
            Item(id="c", title="Tent", category="outdoor"),
        ]
    )
    assert len(catalog) == 3 and "a" in catalog and "z" not in catalog
    assert [item.id for item in catalog] == ["b", "a", "c"] == catalog.ids
    assert catalog.get("z") is None and catalog["c"].title == "Tent"
    assert catalog.categories == ["kitchen", "outdoor"]
    assert [item.id for item in catalog.by_category("outdoor")] == ["b", "c"]
    assert catalog.by_category("music") == []
    with pytest.raises(KeyError, match="z"):
        catalog["z"]


def test_interactions_ordering_and_weights() -> None:
    catalog = Catalog([Item(id="x", title="X", category="books"), Item(id="y", title="Y", category="games")])
    log = Interactions(
        [
            Interaction(user_id="u10", item_id="y", event="purchase", timestamp=5),
            Interaction(user_id="u2", item_id="y", event="view", timestamp=9),
            Interaction(user_id="u2", item_id="x", event="click", timestamp=9),
            Interaction(user_id="u2", item_id="x", event="rating", rating=4.0, timestamp=1),
        ]
    )
    assert len(log) == 4
    assert log.users() == ["u2", "u10"]
    assert [(it.timestamp, it.item_id) for it in log.history("u2")] == [(1, "x"), (9, "x"), (9, "y")]
    assert log.popularity() == {"y": 5.0, "x": 5.0}
    assert log.popularity() is not log.popularity()
    assert log.category_affinity("u2", catalog) == pytest.approx({"books": 5 / 6, "games": 1 / 6})
    assert log.seen("u10") == frozenset({"y"})


def _read_back(paths: dict) -> tuple[list[Item], list[Interaction], list[DemoUser]]:
    with paths["catalog"].open(encoding="utf-8") as handle:
        items = [Item.model_validate_json(line) for line in handle]
    with paths["interactions"].open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["user_id", "item_id", "event", "rating", "timestamp"]
        interactions = [
            Interaction(
                user_id=row["user_id"],
                item_id=row["item_id"],
                event=row["event"],
                rating=float(row["rating"]) if row["rating"] else None,
                timestamp=int(row["timestamp"]),
            )
            for row in reader
        ]
    with paths["users"].open(encoding="utf-8") as handle:
        users = []
        for line in handle:
            record = json.loads(line)
            users.append(
                DemoUser(
                    id=record["id"],
                    preferred_categories=tuple(record["preferred_categories"]),
                    price_band=(record["price_band"][0], record["price_band"][1]),
                )
            )
    return items, interactions, users


def test_write_demo_round_trips(tmp_path) -> None:
    target = tmp_path / "nested" / "demo"
    paths = write_demo(target, seed=3)
    assert set(paths) == {"catalog", "interactions", "users"}
    assert all(path.parent == target and path.is_file() for path in paths.values())
    assert sorted(p.name for p in target.iterdir()) == ["catalog.jsonl", "interactions.csv", "users.jsonl"]

    items, interactions, users = _read_back(paths)
    dataset = generate_demo(seed=3)
    assert items == list(dataset.catalog)
    assert interactions == list(dataset.interactions)
    assert users == dataset.users
    assert ",," in paths["interactions"].read_text(encoding="utf-8")  # empty rating cells, not "None"

    write_demo(target, seed=3)  # overwriting in place is fine
    assert _read_back(paths)[0] == items
