"""Deterministic train/test splits of an interaction log, and the evaluation cases they produce.

The protocols are those of ../shared/PROTOCOLS.md (and the book): per-user temporal 90/10, user-wise 80/20,
leave-last-out. Every split orders each user's history by (timestamp, item id), the item ids in natural order
(``Interactions``; numbers compared as numbers, so MovieLens's item 2 comes before item 1000 at the same
second, as PROTOCOLS.md requires), so the same log and seed always give the same split, whatever order the file
listed the events in.

- ``temporal``: each user's last ``round(test_fraction * n)`` events (at least one, and never the user's only
  event) are held out; every user with a held-out event is a test case.
- ``leave-last``: each user's last event is held out (users with a single event stay in training).
- ``user``: a seeded ``test_fraction`` of users are test users, the rest training users. For *every* user the
  last ``holdout_fraction`` of their events is held out of training (test users: as test cases; training
  users: as ``train_cases``, which ``llmrec train`` fits trainable nodes on), so neither set of answers is
  ever in ``Dataset.train``.

A case's ``relevant`` set is the held-out items rated at least ``relevant_rating`` (when the events carry
ratings and at least one passes), otherwise every held-out item; its ``exclude`` set is what the user already
has in training (full ranking over everything else, no sampled negatives).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Literal

from llmrec.data.catalog import Catalog, Interaction, Interactions, natural_key
from llmrec.data.dataset import Dataset, EvalCase

SplitName = Literal["temporal", "user", "leave-last", "none"]
SPLITS: tuple[str, ...] = ("temporal", "user", "leave-last", "none")


def _held_out_count(n: int, fraction: float) -> int:
    if n < 2:
        return 0
    # round() as PROTOCOLS.md writes it (Python's: halves go to the even neighbour), at least one.
    return min(max(round(n * fraction), 1), n - 1)


def _split_history(history: list[Interaction], fraction: float) -> tuple[list[Interaction], list[Interaction]]:
    cut = len(history) - _held_out_count(len(history), fraction)
    return history[:cut], history[cut:]


def _case(user: str, kept: Iterable[Interaction], held: list[Interaction], relevant_rating: float | None) -> EvalCase:
    held_ids = [it.item_id for it in held]
    relevant = held_ids
    fallback = False
    if relevant_rating is not None:
        good = [it.item_id for it in held if it.rating is not None and it.rating >= relevant_rating]
        if good:
            relevant = good
        else:
            fallback = any(it.rating is not None for it in held)  # rated, none reaches the bar: all held out count
    return EvalCase(id=user, inputs={"user_id": user}, relevant=frozenset(relevant),
                    exclude=frozenset(it.item_id for it in kept), relevance_fallback=fallback)


def split_interactions(
    interactions: Interactions,
    split: SplitName = "temporal",
    *,
    test_fraction: float | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    relevant_rating: float | None = 4.0,
) -> tuple[Interactions, Interactions, tuple[EvalCase, ...], tuple[EvalCase, ...]]:
    """Split a log: returns ``(train, test, test_cases, train_cases)``.

    ``test_fraction`` defaults to 0.1 for ``temporal`` (events per user) and 0.2 for ``user`` (users).
    ``split="none"`` keeps everything in training and makes no cases.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if split == "none":
        return interactions, Interactions([]), (), ()
    users = interactions.users()
    train: list[Interaction] = []
    test: list[Interaction] = []
    test_cases: list[EvalCase] = []
    train_cases: list[EvalCase] = []
    if split in ("temporal", "leave-last"):
        fraction = test_fraction if test_fraction is not None else 0.1
        for user in users:
            history = interactions.history(user)
            if split == "leave-last":
                kept, held = (history[:-1], history[-1:]) if len(history) > 1 else (history, [])
            else:
                kept, held = _split_history(history, fraction)
            train.extend(kept)
            test.extend(held)
            if held:
                test_cases.append(_case(user, kept, held, relevant_rating))
    else:
        fraction = test_fraction if test_fraction is not None else 0.2
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {fraction}")
        shuffled = sorted(users, key=natural_key)
        random.Random(seed).shuffle(shuffled)
        n_test = max(1, int(len(shuffled) * fraction + 0.5)) if len(shuffled) > 1 else 0
        test_users = set(shuffled[:n_test])
        for user in users:
            kept, held = _split_history(interactions.history(user), holdout_fraction)
            train.extend(kept)
            if not held:
                continue
            if user in test_users:
                test.extend(held)
                test_cases.append(_case(user, kept, held, relevant_rating))
            else:
                train_cases.append(_case(user, kept, held, relevant_rating))
    return Interactions(train), Interactions(test), tuple(test_cases), tuple(train_cases)


def make_dataset(
    name: str,
    catalog: Catalog,
    interactions: Interactions,
    split: SplitName = "temporal",
    *,
    test_fraction: float | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    relevant_rating: float | None = 4.0,
    description: str = "",
) -> Dataset:
    """A :class:`Dataset` from a catalog and a whole log, split by ``split``."""
    train, test, test_cases, train_cases = split_interactions(
        interactions, split, test_fraction=test_fraction, holdout_fraction=holdout_fraction, seed=seed,
        relevant_rating=relevant_rating,
    )
    return Dataset(name=name, catalog=catalog, train=train, test=test, test_cases=test_cases,
                   train_cases=train_cases, split=split, description=description,
                   extra={"protocol": protocol(split, test_fraction, holdout_fraction, seed, relevant_rating)})


def protocol(split: SplitName, test_fraction: float | None, holdout_fraction: float, seed: int,
             relevant_rating: float | None) -> dict[str, str]:
    """How the cases were made, in words, for the eval report (split and relevance rule)."""
    if split in ("temporal", "leave-last"):
        held = ("each user's last event" if split == "leave-last" else
                f"each user's last {test_fraction if test_fraction is not None else 0.1:.0%} of events by "
                "(timestamp, item id), at least one")
        text = f"{split}: {held} held out; the rest is training"
    elif split == "user":
        text = (f"user: a seeded (seed {seed}) {test_fraction if test_fraction is not None else 0.2:.0%} of users "
                f"are test users; each test user's last {holdout_fraction:.0%} of events held out")
    else:
        text = split
    relevance = ("every held-out item" if relevant_rating is None else
                 f"held-out items rated >= {relevant_rating:g}; when a user has none, every held-out item "
                 "(the fallback rule); with no ratings at all (implicit feedback), every held-out item")
    return {"split": text, "relevance": relevance,
            "candidates": "every item the user has not interacted with in training (full ranking)"}


__all__ = ["SPLITS", "SplitName", "make_dataset", "split_interactions"]
