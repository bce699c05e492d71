"""A dataset as evaluation and training see it: a catalog, training interactions, and cases with answers.

Every dataset loader (MovieLens, BBC News, the demo shop, files on disk) returns a :class:`Dataset`. A spec
uses its parts through a ``dataset`` resource (``${resources.ml.catalog}``, ``${resources.ml.train}``);
``llmrec eval`` runs the spec once per *test* :class:`EvalCase` and compares the recommended ids with the
case's ``relevant`` set; ``llmrec train`` fits trainable nodes on the *train* cases. Splits
(:mod:`llmrec.data.splits`) decide which interactions are training data and which are cases.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrec.data.catalog import Catalog, Interactions


@dataclass(frozen=True)
class EvalCase:
    """One request to run and what a perfect answer contains.

    ``inputs`` are request fields (``{"user_id": "196"}`` or ``{"query": "..."}``); only those the spec
    declares are passed. ``relevant`` are the ids that count as hits. ``exclude`` are ids that must not count
    (the query article itself, items already seen in training) and are removed from the answer before scoring.
    ``gains`` optionally grades relevance (NDCG uses 1 for every relevant id when absent).
    ``relevance_fallback`` is True when the dataset's relevance rule found nothing and the case's ``relevant``
    comes from its fallback rule (MovieLens: no held-out rating >= 4, so every held-out item counts).
    """

    id: str
    inputs: dict[str, Any]
    relevant: frozenset[str]
    exclude: frozenset[str] = frozenset()
    gains: Mapping[str, float] | None = None
    relevance_fallback: bool = False


@dataclass(frozen=True)
class Dataset:
    """A catalog, the interactions a model may learn from, and the cases it is judged (or trained) on.

    ``train`` holds only training-side interactions: held-out test interactions never appear in it, so a spec
    that learns from ``train`` cannot see the answers. ``test`` holds the held-out interactions (empty for
    query datasets). ``test_cases`` are what ``llmrec eval`` scores; ``train_cases`` what ``llmrec train``
    fits on (for user splits: the training users' own held-out items; may be empty).
    """

    name: str
    catalog: Catalog
    train: Interactions
    test: Interactions
    test_cases: tuple[EvalCase, ...] = ()
    train_cases: tuple[EvalCase, ...] = ()
    split: str = "none"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def interactions(self) -> Interactions:
        """The training interactions (the name nodes written for the demo dataset expect)."""
        return self.train

    def cases(self, part: str = "test") -> tuple[EvalCase, ...]:
        """``test_cases`` or ``train_cases``."""
        if part == "test":
            return self.test_cases
        if part == "train":
            return self.train_cases
        raise ValueError(f"unknown part {part!r}: use 'test' or 'train'")

    def __iter__(self) -> Iterator[EvalCase]:
        return iter(self.test_cases)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, {len(self.catalog)} items, "
                f"{len(self.train)} training events, {len(self.test_cases)} test cases)")


__all__ = ["Dataset", "EvalCase"]
