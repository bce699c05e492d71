"""Ranking metrics at k, as ../shared/PROTOCOLS.md defines them, and beyond-accuracy metrics over all answers.

Per-case metrics take the ranked ids (best first, already stripped of excluded ids), the relevant set and k,
and return a float; averages over cases are the caller's. Binary gains unless ``gains`` is given.

- Precision@k = hits in the top k / k
- Recall@k = hits in the top k / |relevant|
- NDCG@k: DCG = sum gain_i / log2(i + 1) over ranks i = 1..k; IDCG over the best min(k, |relevant|) gains
- AP@k (MAP when averaged): sum of precision@i at each hit i <= k, / min(k, |relevant|)
- RR@k (MRR when averaged): 1 / rank of the first hit within k, else 0
- HitRate@k: 1 if any hit in the top k

List-level metrics look at every case's top k together (``lists``), with what they need about the data in a
:class:`ListContext` (catalog, training interactions, optional item vectors):

- coverage@k: distinct recommended catalog items / catalog size
- entropy@k: Shannon entropy (base 2) of how often each item appears across all top-k lists;
  entropy_norm@k divides it by log2(catalog size), so 1 means every catalog item equally often
- ild@k (intra-list diversity): mean pairwise dissimilarity within a list, averaged over lists with at least
  two items; dissimilarity is 1 - [same category] by default, the cosine distance of item vectors when given
- novelty@k: mean -log2(share of training interactions) of recommended items (an item never seen in training
  counts as seen once, so the value stays finite)
- popularity_bias@k: mean training-popularity percentile of recommended items, 0 (least popular) to 1 (most
  popular); ties share their mean rank. Lower is less biased towards the head.

Metrics are plugins: ``llmrec_register_metrics`` registers ``name -> fn``. A plain function is a per-case
metric, called as ``fn(ranked, relevant, k)`` (plus ``gains=`` when it accepts it) and averaged over cases; a
function marked with :func:`list_metric` is called once as ``fn(lists, k, context)``. A metric whose lower
values are better sets ``fn.higher_is_better = False`` (list_metric does it for you).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from llmrec.data.catalog import Catalog, Interactions


def _top(ranked: Sequence[str], k: int) -> Sequence[str]:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return ranked[:k]


def precision_at_k(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    top = _top(ranked, k)
    return sum(1 for r in top if r in relevant) / k


def recall_at_k(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    if not relevant:
        return 0.0
    return sum(1 for r in _top(ranked, k) if r in relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[str], relevant: Set[str], k: int, gains: Mapping[str, float] | None = None) -> float:
    top = _top(ranked, k)
    if gains is None:
        dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(top) if r in relevant)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    else:
        dcg = sum(gains.get(r, 0.0) / math.log2(i + 2) for i, r in enumerate(top) if r in relevant)
        best = sorted((gains.get(r, 0.0) for r in relevant), reverse=True)[:k]
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(best))
    return dcg / ideal if ideal > 0 else 0.0


def average_precision_at_k(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    if not relevant:
        return 0.0
    hits = 0
    total = 0.0
    for i, r in enumerate(_top(ranked, k), start=1):
        if r in relevant:
            hits += 1
            total += hits / i
    return total / min(k, len(relevant))


def reciprocal_rank_at_k(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    for i, r in enumerate(_top(ranked, k), start=1):
        if r in relevant:
            return 1.0 / i
    return 0.0


def hit_rate_at_k(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    return 1.0 if any(r in relevant for r in _top(ranked, k)) else 0.0


#: name -> per-case metric at k, the names ``llmrec eval`` reports (``ndcg@10``...)
RANKING_METRICS = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": average_precision_at_k,
    "mrr": reciprocal_rank_at_k,
    "hit_rate": hit_rate_at_k,
}

# -- list-level (beyond-accuracy) metrics -----------------------------------------------------------------------


def list_metric(fn: Callable[..., Any] | None = None, *, higher_is_better: bool = True) -> Any:
    """Mark ``fn(lists, k, context)`` as a list-level metric (computed once over every case's top k)."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.scope = "list"  # type: ignore[attr-defined]
        f.higher_is_better = higher_is_better  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def is_list_metric(fn: Callable[..., Any]) -> bool:
    """True for functions marked with :func:`list_metric`."""
    return getattr(fn, "scope", "case") == "list"


def higher_is_better(fn: Callable[..., Any]) -> bool:
    """Whether larger values of this metric are better (True unless the function says otherwise)."""
    return bool(getattr(fn, "higher_is_better", True))


@dataclass
class ListContext:
    """What list-level metrics may consult: the catalog, the training interactions, optional item vectors.

    Derived tables (interaction counts, the sorted popularity distribution) are computed once, on first use.
    """

    catalog: Catalog | None = None
    train: Interactions | None = None
    item_vectors: Mapping[str, Sequence[float]] | None = None
    _counts: dict[str, int] | None = field(default=None, init=False, repr=False)
    _sorted: list[int] | None = field(default=None, init=False, repr=False)

    @property
    def counts(self) -> dict[str, int]:
        """Training interactions per item (one per event), with 0 for catalog items never interacted with."""
        if self._counts is None:
            counts = {item_id: 0 for item_id in (self.catalog.ids if self.catalog is not None else ())}
            for it in self.train or ():
                counts[it.item_id] = counts.get(it.item_id, 0) + 1
            self._counts = counts
        return self._counts

    @property
    def sorted_counts(self) -> list[int]:
        if self._sorted is None:
            self._sorted = sorted(self.counts.values())
        return self._sorted


def _tops(lists: Iterable[Sequence[str]], k: int) -> list[Sequence[str]]:
    return [_top(ranked, k) for ranked in lists]


def catalog_coverage_at_k(lists: Iterable[Sequence[str]], catalog: Set[str] | Catalog, k: int) -> float:
    """Distinct items of ``catalog`` recommended in any top k / catalog size (ids not in it are ignored)."""
    if len(catalog) == 0:
        return 0.0
    distinct = {r for top in _tops(lists, k) for r in top if r in catalog}
    return len(distinct) / len(catalog)


def _frequencies(lists: Iterable[Sequence[str]], k: int) -> dict[str, int]:
    freq: dict[str, int] = {}
    for top in _tops(lists, k):
        for r in top:
            freq[r] = freq.get(r, 0) + 1
    return freq


def entropy_at_k(lists: Iterable[Sequence[str]], k: int) -> float:
    """Shannon entropy (bits) of item frequencies across all top-k lists; 0 when nothing was recommended."""
    freq = _frequencies(lists, k)
    total = sum(freq.values())
    if not total:
        return 0.0
    return max(0.0, -sum(c / total * math.log2(c / total) for c in freq.values()))


def normalized_entropy_at_k(lists: Iterable[Sequence[str]], k: int, catalog_size: int) -> float:
    """:func:`entropy_at_k` / log2(catalog size): 1 when every catalog item is recommended equally often."""
    if catalog_size < 2:
        return 0.0
    return entropy_at_k(lists, k) / math.log2(catalog_size)


def intra_list_diversity(
    ranked: Sequence[str],
    k: int,
    categories: Mapping[str, str] | None = None,
    vectors: Mapping[str, Sequence[float]] | None = None,
) -> float | None:
    """Mean pairwise dissimilarity of one top k, or None when it has fewer than two comparable items.

    With ``vectors``: cosine distance between the items that have a non-zero vector (the others are left
    out). Otherwise 1 - [same category], where an item without a (known) category is unlike every other item.
    """
    top = list(dict.fromkeys(_top(ranked, k)))
    if vectors is not None:
        rows = [np.asarray(v, dtype=float) for r in top if (v := vectors.get(r)) is not None]
        if len(rows) < 2:
            return None
        m = np.vstack(rows)
        norms = np.linalg.norm(m, axis=1)
        m = m[norms > 0] / norms[norms > 0, None]
        n = len(m)
        if n < 2:
            return None
        sims = m @ m.T
        return float((n * (n - 1) - (sims.sum() - np.trace(sims))) / (n * (n - 1)))
    cats = [(categories or {}).get(r) or None for r in top]
    n = len(cats)
    if n < 2:
        return None
    same = sum(1 for i in range(n) for j in range(i + 1, n) if cats[i] is not None and cats[i] == cats[j])
    pairs = n * (n - 1) // 2
    return 1.0 - same / pairs


def mean_intra_list_diversity_at_k(
    lists: Iterable[Sequence[str]],
    k: int,
    categories: Mapping[str, str] | None = None,
    vectors: Mapping[str, Sequence[float]] | None = None,
) -> float:
    """:func:`intra_list_diversity` averaged over the lists that have a value (0 when none has)."""
    values = [v for ranked in lists if (v := intra_list_diversity(ranked, k, categories, vectors)) is not None]
    return sum(values) / len(values) if values else 0.0


def novelty_at_k(lists: Iterable[Sequence[str]], k: int, counts: Mapping[str, int]) -> float:
    """Mean -log2(count / total training interactions) over every recommended item (counts of 0 become 1)."""
    total = sum(counts.values())
    values = [-math.log2(max(counts.get(r, 0), 1) / max(total, 1)) for top in _tops(lists, k) for r in top]
    return sum(values) / len(values) if values else 0.0


def popularity_percentile(count: int, sorted_counts: Sequence[int]) -> float:
    """Where an item with ``count`` interactions ranks among ``sorted_counts`` (which include it): 0 for the
    least popular, 1 for the most popular, the mean rank for ties (0.5 when all are equal)."""
    n = len(sorted_counts)
    if n < 2:
        return 0.5
    below = bisect.bisect_left(sorted_counts, count)
    equal = bisect.bisect_right(sorted_counts, count) - below
    return (below + (max(equal, 1) - 1) / 2) / (n - 1)


def popularity_bias_at_k(lists: Iterable[Sequence[str]], k: int, counts: Mapping[str, int]) -> float:
    """Mean :func:`popularity_percentile` of recommended items among ``counts``'s items (others are ignored)."""
    ordered = sorted(counts.values())
    values = [popularity_percentile(counts[r], ordered) for top in _tops(lists, k) for r in top if r in counts]
    return sum(values) / len(values) if values else 0.0


def _catalog_size(context: ListContext) -> int:
    return len(context.catalog) if context.catalog is not None else len(context.counts)


@list_metric
def coverage(lists: Sequence[Sequence[str]], k: int, context: ListContext) -> float:
    """Catalog coverage@k."""
    if context.catalog is None:
        return catalog_coverage_at_k(lists, set(context.counts), k)
    return catalog_coverage_at_k(lists, context.catalog, k)


@list_metric
def entropy(lists: Sequence[Sequence[str]], k: int, context: ListContext) -> float:
    """Entropy diversity@k in bits."""
    return entropy_at_k(lists, k)


@list_metric
def entropy_norm(lists: Sequence[Sequence[str]], k: int, context: ListContext) -> float:
    """Entropy diversity@k / log2(catalog size)."""
    return normalized_entropy_at_k(lists, k, _catalog_size(context))


@list_metric
def ild(lists: Sequence[Sequence[str]], k: int, context: ListContext) -> float:
    """Intra-list diversity@k: item vectors when the context has them, categories otherwise."""
    if context.item_vectors is not None:
        return mean_intra_list_diversity_at_k(lists, k, vectors=context.item_vectors)
    categories = {item.id: item.category for item in context.catalog} if context.catalog is not None else {}
    return mean_intra_list_diversity_at_k(lists, k, categories=categories)


@list_metric
def novelty(lists: Sequence[Sequence[str]], k: int, context: ListContext) -> float:
    """Novelty@k in bits; undefined (NaN, shown as n/a) without training interactions."""
    if not context.counts:
        return float("nan")
    return novelty_at_k(lists, k, context.counts)


@list_metric(higher_is_better=False)
def popularity_bias(lists: Sequence[Sequence[str]], k: int, context: ListContext) -> float:
    """Mean popularity percentile@k of recommended items; undefined (NaN) without training interactions."""
    counts = context.counts
    if not counts:
        return float("nan")
    ordered = context.sorted_counts
    values = [popularity_percentile(counts[r], ordered) for top in _tops(lists, k) for r in top if r in counts]
    return sum(values) / len(values) if values else 0.0


#: name -> list-level metric ``fn(lists, k, context)``, reported as ``coverage@10``...
LIST_METRICS = {
    "coverage": coverage,
    "entropy": entropy,
    "entropy_norm": entropy_norm,
    "ild": ild,
    "novelty": novelty,
    "popularity_bias": popularity_bias,
}

__all__ = [
    "LIST_METRICS",
    "ListContext",
    "RANKING_METRICS",
    "catalog_coverage_at_k",
    "entropy_at_k",
    "higher_is_better",
    "intra_list_diversity",
    "is_list_metric",
    "list_metric",
    "mean_intra_list_diversity_at_k",
    "normalized_entropy_at_k",
    "novelty_at_k",
    "popularity_bias_at_k",
    "popularity_percentile",
    "average_precision_at_k",
    "hit_rate_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank_at_k",
]
