"""Metric values on small examples computed by hand (llmrec/metrics.py)."""

from __future__ import annotations

import math

import pytest

from llmrec.data import Catalog, Interaction, Interactions, Item
from llmrec import metrics as m
from llmrec.plugins import get_registry


def log2(x: float) -> float:
    return math.log2(x)


# -- ranking metrics (PROTOCOLS.md) ----------------------------------------------------------------------------


def test_ndcg_ideal_uses_min_of_k_and_relevant() -> None:
    # hits at ranks 1 and 3 of 3 relevant: DCG = 1 + 1/log2(4); IDCG over min(3, 3) = 3 hits
    assert m.ndcg_at_k(["a", "x", "b"], {"a", "b", "c"}, 3) == pytest.approx(
        (1 + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4)))
    # k = 2 < |relevant|: IDCG over 2 hits only
    assert m.ndcg_at_k(["a", "x", "b"], {"a", "b", "c"}, 2) == pytest.approx(1 / (1 + 1 / log2(3)))
    # one relevant item at rank 2 with k = 10: IDCG is 1 (one hit), not the sum over 10 ranks
    assert m.ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(1 / log2(3))
    assert m.ndcg_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)
    assert m.ndcg_at_k(["x"], set(), 5) == 0.0


def test_ndcg_with_graded_gains() -> None:
    gains = {"a": 1.0, "b": 3.0}
    # ranked a, b: DCG = 1 + 3/log2(3); ideal order b, a: 3 + 1/log2(3)
    assert m.ndcg_at_k(["a", "b"], {"a", "b"}, 2, gains) == pytest.approx((1 + 3 / log2(3)) / (3 + 1 / log2(3)))


def test_precision_recall_map_mrr_hit_rate() -> None:
    ranked, relevant = ["x", "a", "y", "b"], {"a", "b", "c"}
    assert m.precision_at_k(ranked, relevant, 4) == pytest.approx(2 / 4)
    assert m.precision_at_k(ranked, relevant, 10) == pytest.approx(2 / 10)  # divides by k, not by list length
    assert m.recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert m.average_precision_at_k(ranked, relevant, 4) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert m.average_precision_at_k(ranked, relevant, 2) == pytest.approx((1 / 2) / 2)
    assert m.reciprocal_rank_at_k(ranked, relevant, 4) == pytest.approx(1 / 2)
    assert m.reciprocal_rank_at_k(ranked, relevant, 1) == 0.0
    assert m.hit_rate_at_k(ranked, relevant, 1) == 0.0
    assert m.hit_rate_at_k(ranked, relevant, 2) == 1.0
    with pytest.raises(ValueError, match="at least 1"):
        m.precision_at_k(ranked, relevant, 0)


# -- beyond accuracy -------------------------------------------------------------------------------------------


def test_catalog_coverage() -> None:
    lists = [["a", "b"], ["b", "c", "zz"]]  # zz is not in the catalog: ignored
    catalog = {"a", "b", "c", "d"}
    assert m.catalog_coverage_at_k(lists, catalog, 2) == pytest.approx(3 / 4)
    assert m.catalog_coverage_at_k(lists, catalog, 1) == pytest.approx(2 / 4)
    assert m.catalog_coverage_at_k([], catalog, 10) == 0.0


def test_entropy_and_normalised_entropy() -> None:
    # frequencies a: 2, b: 1, c: 1 -> p = 1/2, 1/4, 1/4 -> H = 1/2 + 1/2 + 1/2 = 1.5 bits
    assert m.entropy_at_k([["a", "b"], ["a", "c"]], 2) == pytest.approx(1.5)
    assert m.normalized_entropy_at_k([["a", "b"], ["a", "c"]], 2, catalog_size=4) == pytest.approx(1.5 / 2)
    # every catalog item exactly once: maximal
    assert m.normalized_entropy_at_k([["a", "b"], ["c", "d"]], 2, catalog_size=4) == pytest.approx(1.0)
    # everyone gets the same single item: no diversity
    assert m.entropy_at_k([["a"], ["a"], ["a"]], 5) == 0.0
    assert m.entropy_at_k([], 5) == 0.0


def test_intra_list_diversity_by_category_and_by_vector() -> None:
    categories = {"a": "x", "b": "x", "c": "y", "d": ""}
    # pairs: ab same (0), ac (1), bc (1) -> 2/3
    assert m.intra_list_diversity(["a", "b", "c"], 10, categories) == pytest.approx(2 / 3)
    assert m.intra_list_diversity(["a", "b", "c"], 2, categories) == pytest.approx(0.0)  # only a, b
    # an item without a category is unlike everything, even another one without a category
    assert m.intra_list_diversity(["d", "e"], 10, categories) == pytest.approx(1.0)
    assert m.intra_list_diversity(["a"], 10, categories) is None
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}
    # cosine distances: ab 1, ac and bc 1 - 1/sqrt(2)
    expected = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert m.intra_list_diversity(["a", "b", "c"], 10, vectors=vectors) == pytest.approx(expected)
    # items without a vector are left out
    assert m.intra_list_diversity(["a", "zz", "b"], 10, vectors=vectors) == pytest.approx(1.0)
    # the mean skips lists with no pair
    lists = [["a", "b", "c"], ["c"], ["a", "b"]]
    assert m.mean_intra_list_diversity_at_k(lists, 10, categories) == pytest.approx((2 / 3 + 0.0) / 2)


def test_novelty() -> None:
    counts = {"a": 3, "b": 1, "c": 0}  # 4 training interactions; c was never seen and counts as one
    expected = (-log2(3 / 4) + -log2(1 / 4) + -log2(1 / 4)) / 3
    assert m.novelty_at_k([["a", "b"], ["c"]], 2, counts) == pytest.approx(expected)
    assert m.novelty_at_k([["a", "b"], ["c"]], 1, counts) == pytest.approx((-log2(3 / 4) + 2) / 2)


def test_popularity_percentile_and_bias() -> None:
    counts = {"a": 3, "b": 1, "c": 0, "d": 1}  # sorted 0, 1, 1, 3
    ordered = sorted(counts.values())
    assert m.popularity_percentile(3, ordered) == pytest.approx(1.0)  # the most popular
    assert m.popularity_percentile(0, ordered) == pytest.approx(0.0)  # the least
    assert m.popularity_percentile(1, ordered) == pytest.approx((1 + 0.5) / 3)  # tied b and d share ranks 1, 2
    assert m.popularity_percentile(5, [5, 5, 5]) == pytest.approx(0.5)
    assert m.popularity_bias_at_k([["a", "b"], ["c", "zz"]], 2, counts) == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.fixture
def context() -> m.ListContext:
    catalog = Catalog([Item(id=i, title=i.upper(), category=c) for i, c in
                       [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]])
    events = [("u1", "a"), ("u2", "a"), ("u3", "a"), ("u1", "b"), ("u2", "d")]
    train = Interactions([Interaction(user_id=u, item_id=i, timestamp=n) for n, (u, i) in enumerate(events)])
    return m.ListContext(catalog=catalog, train=train)


def test_list_metrics_read_the_context(context: m.ListContext) -> None:
    assert context.counts == {"a": 3, "b": 1, "c": 0, "d": 1}
    lists = [["a", "b"], ["a", "c"]]
    assert m.coverage(lists, 2, context) == pytest.approx(3 / 4)
    assert m.entropy(lists, 2, context) == pytest.approx(1.5)
    assert m.entropy_norm(lists, 2, context) == pytest.approx(0.75)
    assert m.ild(lists, 2, context) == pytest.approx((0.0 + 1.0) / 2)  # a, b same category; a, c not
    assert m.novelty(lists, 2, context) == pytest.approx(
        (2 * -log2(3 / 5) + -log2(1 / 5) + -log2(1 / 5)) / 4)
    assert m.popularity_bias(lists, 2, context) == pytest.approx((2 * 1.0 + 0.5 + 0.0) / 4)
    with_vectors = m.ListContext(catalog=context.catalog, train=context.train,
                                 item_vectors={"a": [1, 0], "b": [1, 0], "c": [0, 1]})
    assert m.ild(lists, 2, with_vectors) == pytest.approx((0.0 + 1.0) / 2)


def test_every_metric_is_registered_with_its_kind() -> None:
    table = get_registry(None).metrics
    for name in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate"):
        assert name in table and not m.is_list_metric(table[name])
    for name in ("coverage", "entropy", "entropy_norm", "ild", "novelty", "popularity_bias"):
        assert name in table and m.is_list_metric(table[name])
    assert table.entry("ndcg").plugin.name == "llmrec.eval.commands"
    assert not m.higher_is_better(table["popularity_bias"])
    assert m.higher_is_better(table["novelty"]) and m.higher_is_better(table["ndcg"])
