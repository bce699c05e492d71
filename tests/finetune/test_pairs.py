"""Instruction pairs: the book's prompt format, temporal cuts, seeded, learned from training events only."""

from __future__ import annotations

import json

import pytest

from llmrec.data import Catalog, Interaction, Interactions, Item
from llmrec.data.splits import make_dataset
from llmrec.finetune.data import FinetuneError, PairConfig, build_pairs, describe_item, finetune_pairs

from .conftest import synthetic_catalog, synthetic_dataset, synthetic_log


def test_the_prompt_lists_liked_and_disliked_titles_with_genres_and_year_and_the_answer_is_the_next_liked():
    catalog = Catalog([
        Item(id="1", title="Toy Story (1995)", category="Animation",
             attributes={"genres": "Animation|Children's|Comedy", "year": 1995}),
        Item(id="2", title="Heat", category="Action", attributes={"genres": "Action|Crime", "year": 1995}),
        Item(id="3", title="Jumanji", category="Adventure", attributes={"genres": "Adventure", "year": 1995}),
        Item(id="4", title="Casino", category="Crime", attributes={"year": 1995}),
        Item(id="5", title="Fargo", category="Crime"),
        Item(id="6", title="Nixon", category="Drama"),
    ])
    log = Interactions([Interaction(user_id="u", item_id=i, event="rating", rating=r, timestamp=t)
                        for t, (i, r) in enumerate([("1", 5), ("2", 4), ("3", 1), ("6", 3), ("4", 5), ("5", 4)])])
    first, second, third = build_pairs(log, catalog, PairConfig(n=5, min_history=3, pairs_per_user=3), users=["u"])
    # cuts need 3 liked/disliked events before them and a liked one after: before event 4 (twice: the 3 between
    # is neither liked nor disliked, so it is not shown) and before event 5
    assert first.prompt == (
        "I liked these movies:\n- Toy Story (1995) [Animation, Children's, Comedy]\n- Heat (1995) [Action, Crime]\n"
        "I did not like these movies:\n- Jumanji (1995) [Adventure]\n"
        "Recommend the next 2 movies I will like, named by their exact catalog titles.\n"
        'Answer as JSON: {"items": [2 titles]}.')
    assert json.loads(first.answer) == {"items": ["Casino", "Fargo"]} and first.targets == ("4", "5")
    assert second.prompt == first.prompt and "Nixon" not in first.prompt
    assert third.targets == ("5",) and "- Casino (1995) [Crime]" in third.prompt  # no genres: the category
    assert describe_item(catalog["1"]) == "Toy Story (1995) [Animation, Children's, Comedy]"  # no second year


def test_cuts_are_temporal_seeded_and_independent_of_user_order():
    ds = synthetic_dataset(12)
    config = PairConfig(n=3, pairs_per_user=3, seed=4)
    pairs = build_pairs(ds.train, ds.catalog, config)
    assert pairs == build_pairs(ds.train, ds.catalog, config)
    assert [p for p in pairs if p.user_id == "u3"] == build_pairs(ds.train, ds.catalog, config, users=["u3"])
    assert pairs != build_pairs(ds.train, ds.catalog, config.model_copy(update={"seed": 5}))
    for p in pairs:
        order = [it.item_id for it in ds.train.history(p.user_id)]
        last_shown = max(order.index(i) for i in p.history)
        assert all(order.index(t) > last_shown for t in p.targets)  # every target comes after every shown item
        assert 1 <= len(p.targets) <= 3


def test_pairs_come_from_training_events_only_never_the_test_split():
    ds = synthetic_dataset(16)
    split = finetune_pairs(ds, PairConfig(n=3, pairs_per_user=4))
    assert split.train and split.validation
    for p in split.train + split.validation:
        train_items = {it.item_id for it in ds.train.history(p.user_id)}
        test_items = {it.item_id for it in ds.test.history(p.user_id)} - train_items
        assert set(p.history) | set(p.targets) <= train_items
        assert not (set(p.history) | set(p.targets)) & test_items
    # validation answers are each user's carved-off last training events, which training pairs never show
    held = {p.user_id: set(p.targets) for p in split.validation}
    for p in split.train:
        assert not set(p.history) & held.get(p.user_id, set())


def test_max_users_draws_a_seeded_subset():
    ds = synthetic_dataset(20)
    a = finetune_pairs(ds, PairConfig(seed=1), max_users=5)
    assert a.users == 5 and len({p.user_id for p in a.train}) <= 5
    assert a == finetune_pairs(ds, PairConfig(seed=1), max_users=5)


def test_datasets_it_cannot_learn_from_are_one_clear_error():
    catalog = synthetic_catalog()
    empty = make_dataset("empty", catalog, Interactions([]), "temporal")
    with pytest.raises(FinetuneError, match="has no training interactions"):
        finetune_pairs(empty, name="data")
    single = make_dataset("one", catalog, synthetic_log(1), "temporal")
    with pytest.raises(FinetuneError, match="a single user"):
        finetune_pairs(single, name="data")
    short = make_dataset("short", catalog, synthetic_log(5, length=2), "none")
    with pytest.raises(FinetuneError, match="no user has a liked event after"):
        finetune_pairs(short, PairConfig(min_history=3), name="data")
