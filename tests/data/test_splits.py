"""Deterministic train/test splits (llmrec/data/splits.py) on hand-made logs and the demo shop."""

from __future__ import annotations

import os
import random
from operator import attrgetter
from pathlib import Path

import pytest

from llmrec.data import Interaction, Interactions, generate_demo, split_interactions


def _log(counts: dict[str, int], shuffle_seed: int | None = None) -> Interactions:
    """``counts[user]`` events per user on items i0, i1, ... at increasing timestamps, optionally shuffled."""
    events = [Interaction(user_id=user, item_id=f"i{n}", event="rating", rating=float(1 + n % 5), timestamp=1000 + n)
              for user, count in counts.items() for n in range(count)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(events)
    return Interactions(events)


@pytest.fixture(scope="module")
def demo_log() -> Interactions:
    return generate_demo(seed=3, n_items=120, n_users=40).interactions


@pytest.mark.parametrize("split", ["temporal", "leave-last", "user"])
def test_same_log_same_split_whatever_the_file_order(split: str) -> None:
    a = split_interactions(_log({"u1": 12, "u2": 7, "u3": 30}, shuffle_seed=1), split, seed=5)
    b = split_interactions(_log({"u1": 12, "u2": 7, "u3": 30}, shuffle_seed=2), split, seed=5)
    assert list(a[0]) == list(b[0]) and list(a[1]) == list(b[1])
    assert a[2] == b[2] and a[3] == b[3]


@pytest.mark.parametrize("split", ["temporal", "leave-last", "user"])
def test_no_held_out_event_in_train(demo_log: Interactions, split: str) -> None:
    train, test, test_cases, train_cases = split_interactions(demo_log, split, seed=1)
    held_per_user = {u: len(demo_log.history(u)) - len(train.history(u)) for u in demo_log.users()}
    # every event is in train, in test, or held out of a training user (user split: train_cases' answers)
    assert len(test) == sum(held_per_user[c.id] for c in test_cases)
    assert sum(held_per_user.values()) == len(test) + sum(held_per_user[c.id] for c in train_cases)
    for case in (*test_cases, *train_cases):
        history = {it.item_id for it in train.history(case.id)}
        held = {it.item_id for it in demo_log.history(case.id)} - history
        assert case.relevant <= held, "a relevant item is in the user's training history"
        assert case.exclude == history
    # nothing in test is also in train for the same user and time
    train_keys = {(it.user_id, it.item_id, it.timestamp) for it in train}
    assert not any((it.user_id, it.item_id, it.timestamp) in train_keys for it in test)


@pytest.mark.parametrize(("n", "held"), [(1, 0), (2, 1), (5, 1), (15, 2), (25, 2), (35, 4), (100, 10)])
def test_temporal_uses_python_round_at_least_one(n: int, held: int) -> None:
    # round(): 1.5 -> 2, 2.5 -> 2, 3.5 -> 4 (halves to the even neighbour); 0.5 -> 0 becomes the minimum of 1
    train, test, cases, _ = split_interactions(_log({"u": n}), "temporal")
    assert len(test) == held and len(train) == n - held
    assert [it.item_id for it in test] == [f"i{k}" for k in range(n - held, n)]  # the latest events
    assert len(cases) == (1 if held else 0)


def test_relevant_are_held_out_items_rated_at_least_four() -> None:
    # ratings cycle 1..5 by position, so of the last 3 of 30 events (i27, i28, i29: 3, 4, 5 stars) two pass
    _, _, cases, _ = split_interactions(_log({"u": 30}), "temporal")
    assert cases[0].relevant == {"i28", "i29"}
    _, _, cases, _ = split_interactions(_log({"u": 30}), "temporal", relevant_rating=None)
    assert cases[0].relevant == {"i27", "i28", "i29"}


def test_leave_last() -> None:
    train, test, cases, train_cases = split_interactions(_log({"a": 4, "b": 1, "c": 2}), "leave-last")
    assert sorted((it.user_id, it.item_id) for it in test) == [("a", "i3"), ("c", "i1")]
    assert [c.id for c in cases] == ["a", "c"] and train_cases == ()
    assert [it.item_id for it in train.history("b")] == ["i0"]  # a single event stays in training


def test_user_split_is_disjoint_seeded_and_sized(demo_log: Interactions) -> None:
    _, _, test_cases, train_cases = split_interactions(demo_log, "user", seed=4)
    test_users = {c.id for c in test_cases}
    train_users = {c.id for c in train_cases}
    assert not test_users & train_users
    assert test_users | train_users == set(demo_log.users())
    assert len(test_users) == round(len(demo_log.users()) * 0.2)
    again = split_interactions(demo_log, "user", seed=4)[2]
    other = split_interactions(demo_log, "user", seed=5)[2]
    assert {c.id for c in again} == test_users
    assert {c.id for c in other} != test_users


def test_none_keeps_everything() -> None:
    log = _log({"u": 5})
    train, test, cases, train_cases = split_interactions(log, "none")
    assert train is log and len(test) == 0 and cases == () and train_cases == ()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown split 'random'"):
        split_interactions(_log({"u": 3}), "random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
        split_interactions(_log({"u": 3, "v": 3}), "user", test_fraction=1.5)


# -- the (timestamp, item id) tie-break: item ids in natural order (PROTOCOLS.md: 2 before 1000) -----------------


def _rated(user: str, item: str, timestamp: int, rating: float = 5.0) -> Interaction:
    return Interaction(user_id=user, item_id=item, event="rating", rating=rating, timestamp=timestamp)


def test_same_second_items_compare_as_numbers() -> None:
    # as text "1000" < "2", which would hold out item 2; as numbers 2 < 1000, so 1000 is the last event
    for events in ([_rated("u", "2", 50), _rated("u", "1000", 50)], [_rated("u", "1000", 50), _rated("u", "2", 50)]):
        log = Interactions(events)
        assert [it.item_id for it in log.history("u")] == ["2", "1000"]
        for split in ("temporal", "leave-last"):
            train, test, cases, _ = split_interactions(log, split)
            assert [it.item_id for it in test] == ["1000"] and [it.item_id for it in train] == ["2"]
            assert cases[0].relevant == {"1000"} and cases[0].exclude == {"2"}


def test_tie_break_is_natural_for_mixed_ids_and_stable_for_equal_keys() -> None:
    log = Interactions([_rated("u", i, 7) for i in ("i10", "i2", "10", "9", "01", "1", "b")] + [_rated("u", "0", 3)])
    # the earlier timestamp first; then natural order ("01" and "1" have the same natural key: the text decides)
    assert [it.item_id for it in log.history("u")] == ["0", "01", "1", "9", "10", "b", "i2", "i10"]
    numeric = Interactions([_rated("u", i, 7) for i in ("10", "01", "9", "1")])
    assert [it.item_id for it in numeric.history("u")] == ["01", "1", "9", "10"]


def test_movielens_100k_users_moved_by_the_tie_break() -> None:
    """On the real u.data, ordering same-second ratings by the id's text instead of its number changes the held-out
    set of 212 users and the relevant set (held-out items rated >= 4, what the metrics score) of 169."""
    data = os.environ.get("LLMREC_DATA_DIR")
    if not data or not (Path(data) / "ml-100k" / "u.data").is_file():
        pytest.skip("LLMREC_DATA_DIR does not hold ml-100k/u.data")
    rows = [line.split("\t") for line in (Path(data) / "ml-100k" / "u.data").read_text().splitlines()]
    log = Interactions([_rated(u, i, int(t), float(r)) for u, i, r, t in rows])
    _, test, cases, _ = split_interactions(log, "temporal")
    relevant = {c.id: c.relevant for c in cases}
    held_changed = relevant_changed = 0
    for user in log.users():
        as_text = sorted(log.history(user), key=attrgetter("timestamp", "item_id"))
        held = as_text[len(as_text) - len(test.history(user)):]
        held_ids = {it.item_id for it in held}
        held_changed += held_ids != {it.item_id for it in test.history(user)}
        relevant_changed += relevant[user] != ({it.item_id for it in held if it.rating >= 4} or held_ids)
    assert (held_changed, relevant_changed) == (212, 169)
