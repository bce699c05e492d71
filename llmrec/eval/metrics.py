"""Ranking metrics at k, as ../shared/PROTOCOLS.md defines them.

Per-case metrics take the ranked ids (best first, already stripped of excluded ids), the relevant set and k,
and return a float; averages over cases are the caller's. Binary gains unless ``gains`` is given.

- Precision@k = hits in the top k / k
- Recall@k = hits in the top k / |relevant|
- NDCG@k: DCG = sum gain_i / log2(i + 1) over ranks i = 1..k; IDCG over the best min(k, |relevant|) gains
- AP@k (MAP when averaged): sum of precision@i at each hit i <= k, / min(k, |relevant|)
- RR@k (MRR when averaged): 1 / rank of the first hit within k, else 0
- HitRate@k: 1 if any hit in the top k
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set


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

__all__ = [
    "RANKING_METRICS",
    "average_precision_at_k",
    "hit_rate_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank_at_k",
]
