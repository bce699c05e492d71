"""Pairwise preference examples: "which of these two movies will this user prefer?"

A pair is a user's history (``(item_id, rating)`` events, oldest first), two item ids in the order they are
shown (``first``, ``second``) and the truth: ``label`` is 1.0 when ``first`` is the item the user preferred.
The preferred item is always a liked item the user went on to have; the other is an item the user never had,
drawn uniformly from the catalog; which of the two is shown first is a seeded coin flip, so always answering
"the first" scores 0.5.

Two ways to draw pairs, both with one ``numpy.random.default_rng(seed)`` consumed in a fixed order:

- :func:`case_pairs` (validation and test pairs, ../shared/PROTOCOLS.md "Pairwise preference"): for each case in
  order, ``n`` pairs, each drawing (in this order) the relevant item (uniformly from ``case.relevant`` sorted by
  natural id order), the never-rated item (uniformly from the catalog's ids, in catalog order, minus every item
  the user has in ``log`` or ``held``, in ``case.exclude`` or in ``case.relevant``) and the coin flip. The
  history is the user's events in ``log``.
- :func:`transfer_pairs` (the examples the student learns from): for each user of ``log``, the last ``window``
  events; every liked event ``t`` with at least ``min_context`` events before it in the window is a cut point
  (or a seeded sample of ``per_user`` of them, kept in time order); the history is the window's events before
  ``t``, the preferred item is event ``t``'s item ("the user's next liked item") and ``negatives`` pairs pair it
  with items the user never has in ``log`` or ``rated``. Every history of one user is a prefix of that user's
  window, which lets a causal model score all of a user's pairs in one forward pass.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llmrec.data.catalog import natural_key

if TYPE_CHECKING:
    from llmrec.data.catalog import Catalog, Interaction, Interactions
    from llmrec.data.dataset import EvalCase

History = tuple[tuple[str, "float | None"], ...]


@dataclass(frozen=True)
class PairSet:
    """Pairs stored compactly: pair ``i`` uses the first ``lengths[i]`` events of ``contexts[context[i]]``."""

    contexts: tuple[History, ...]
    context: np.ndarray  # int64 per pair
    lengths: np.ndarray  # int64 per pair
    first: tuple[str, ...]
    second: tuple[str, ...]
    label: np.ndarray  # float32 per pair: 1.0 when ``first`` is the preferred item
    users: tuple[str, ...]  # per pair

    def __len__(self) -> int:
        return len(self.first)

    def history(self, i: int) -> History:
        return self.contexts[int(self.context[i])][: int(self.lengths[i])]

    @property
    def histories(self) -> list[History]:
        """Each pair's history (slices of the shared contexts)."""
        return [self.history(i) for i in range(len(self))]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """``(first, second)`` per pair, in the order shown."""
        return list(zip(self.first, self.second))

    @property
    def preferred(self) -> list[str]:
        return [f if y > 0.5 else s for f, s, y in zip(self.first, self.second, self.label)]

    def subset(self, indices: Iterable[int]) -> PairSet:
        """The pairs at ``indices`` (in that order), sharing this set's contexts."""
        idx = np.asarray(list(indices), dtype=np.int64)
        return PairSet(self.contexts, self.context[idx], self.lengths[idx], tuple(self.first[i] for i in idx),
                       tuple(self.second[i] for i in idx), self.label[idx], tuple(self.users[i] for i in idx))

    @property
    def n_users(self) -> int:
        return len(set(self.users))


class _Builder:
    def __init__(self) -> None:
        self.contexts: list[History] = []
        self.context: list[int] = []
        self.lengths: list[int] = []
        self.first: list[str] = []
        self.second: list[str] = []
        self.label: list[float] = []
        self.users: list[str] = []

    def add_context(self, events: History) -> int:
        self.contexts.append(events)
        return len(self.contexts) - 1

    def add(self, rng: np.random.Generator, context: int, length: int, user: str, liked: str, other: str) -> None:
        swap = bool(rng.random() < 0.5)
        self.context.append(context)
        self.lengths.append(length)
        self.first.append(other if swap else liked)
        self.second.append(liked if swap else other)
        self.label.append(0.0 if swap else 1.0)
        self.users.append(user)

    def build(self) -> PairSet:
        return PairSet(tuple(self.contexts), np.asarray(self.context, dtype=np.int64),
                       np.asarray(self.lengths, dtype=np.int64), tuple(self.first), tuple(self.second),
                       np.asarray(self.label, dtype=np.float32), tuple(self.users))


def _events(history: Sequence[Interaction]) -> History:
    return tuple((it.item_id, it.rating) for it in history)


def _pool(ids: Sequence[str], taken: set[str]) -> list[str]:
    return [i for i in ids if i not in taken]


def case_pairs(catalog: Catalog, log: Interactions, cases: Sequence[EvalCase], n: int = 5, seed: int = 0,
               held: Interactions | None = None) -> PairSet:
    """``n`` pairs per case: a relevant (held-out liked) item against an item the user never rated.

    ``log`` gives each user's history (the training events); ``held`` the held-out events (so that an item
    the user rated there is never drawn as the unseen one). Cases whose relevant items are not in the catalog,
    or whose user has rated everything, give no pairs."""
    rng = np.random.default_rng(seed)
    ids = catalog.ids
    out = _Builder()
    for case in cases:
        user = str(case.inputs.get("user_id", case.id))
        relevant = sorted((i for i in case.relevant if i in catalog), key=natural_key)
        taken = set(log.seen(user)) | set(case.exclude) | set(case.relevant)
        if held is not None:
            taken |= held.seen(user)
        pool = _pool(ids, taken)
        if not relevant or not pool:
            continue
        events = _events(log.history(user))
        context = out.add_context(events)
        for _ in range(n):
            liked = relevant[int(rng.integers(len(relevant)))]
            other = pool[int(rng.integers(len(pool)))]
            out.add(rng, context, len(events), user, liked, other)
    return out.build()


def is_liked(rating: float | None, liked_rating: float | None) -> bool:
    return liked_rating is None or rating is None or rating >= liked_rating


def transfer_pairs(catalog: Catalog, log: Interactions, *, window: int = 100, min_context: int = 1,
                   per_user: int | None = None, negatives: int = 1, liked_rating: float | None = 4.0,
                   seed: int = 0, rated: Interactions | None = None) -> PairSet:
    """Pairs from each user's own training events: the history up to a liked event against an unseen item.

    ``rated`` holds more of each user's events that must never be drawn as the unseen item (e.g. the
    validation split's held-out events)."""
    rng = np.random.default_rng(seed)
    ids = catalog.ids
    out = _Builder()
    for user in log.users():
        events = tuple(e for e in _events(log.history(user))[-window:] if e[0] in catalog)
        cuts = [t for t in range(min_context, len(events)) if is_liked(events[t][1], liked_rating)]
        if not cuts:
            continue
        if per_user is not None and len(cuts) > per_user:
            cuts = sorted(int(c) for c in rng.choice(cuts, size=per_user, replace=False))
        taken = set(log.seen(user)) | (set(rated.seen(user)) if rated is not None else set())
        pool = _pool(ids, taken)
        if not pool:
            continue
        context = out.add_context(events)
        for t in cuts:
            for _ in range(negatives):
                out.add(rng, context, t, user, events[t][0], pool[int(rng.integers(len(pool)))])
    return out.build()


def accuracy(p_first: np.ndarray, label: np.ndarray) -> float:
    """Share of pairs whose preferred side gets ``p_first`` on the right side of 0.5 (exactly 0.5: half)."""
    p = np.asarray(p_first, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    if not len(p):
        return 0.0
    right = np.where(p == 0.5, 0.5, ((p > 0.5) == (y > 0.5)).astype(np.float64))
    return float(right.mean())


def agreement(p: np.ndarray, q: np.ndarray) -> float:
    """Share of pairs on which two models prefer the same item (a tie on either side: half)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if not len(p):
        return 0.0
    same = np.where((p == 0.5) | (q == 0.5), 0.5, ((p > 0.5) == (q > 0.5)).astype(np.float64))
    return float(same.mean())


__all__ = ["History", "PairSet", "accuracy", "agreement", "case_pairs", "is_liked", "transfer_pairs"]
