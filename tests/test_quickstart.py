"""specs/quickstart.yaml end to end: it validates cleanly and recommends sensibly on the demo dataset."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from pathlib import Path

import jsonschema
import pytest
import yaml

import llmrec
from llmrec.errors import InputError
from llmrec.nodes.retrieve import BM25
from llmrec.plugins import get_registry
from llmrec.spec.jsonschema import spec_json_schema
from llmrec.types import Recommendations

SPEC = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"
MAX_PER_CATEGORY = 3


@pytest.fixture(scope="module")
def runtime() -> llmrec.Runtime:
    return llmrec.open_runtime(SPEC)


@pytest.fixture(scope="module")
def demo(runtime):
    """The demo shop as the spec sees it: the training part of its split is what a user has "seen"."""
    runtime.run_sync({"user_id": "u1"})  # starts the runtime: loads the dataset, trains the ranker if needed
    shop = runtime.resources["shop"]
    return SimpleNamespace(catalog=shop.catalog, interactions=shop.train, users=shop.extra["users"])


def recommend(rt: llmrec.Runtime, **inputs) -> Recommendations:
    out = rt.run_sync(inputs).outputs["recommendations"]
    assert isinstance(out, Recommendations)
    return out


def test_the_spec_validates_without_errors_or_warnings() -> None:
    graph, errors, warnings = llmrec.check(SPEC)
    assert [e.format() for e in errors] == []
    assert [w.format() for w in warnings] == []
    assert graph is not None and graph.name == "quickstart"
    assert SPEC.read_text().splitlines()[0] == "# yaml-language-server: $schema=../schemas/llmrec-spec.schema.json"
    jsonschema.Draft202012Validator(spec_json_schema(get_registry(None))).validate(yaml.safe_load(SPEC.read_text()))
    # the policies the quickstart shows off
    nodes = graph.spec.nodes
    assert nodes["popular"].cache is not None and nodes["popular"].cache.ttl == 60
    assert nodes["keyword"].timeout == 2 and nodes["keyword"].when == "inputs.query"
    assert nodes["keyword"].fallback is not None and nodes["keyword"].fallback.value == {"items": [], "source": "bm25"}


def test_u1_gets_k_fresh_distinct_diverse_items(runtime, demo) -> None:
    recs = recommend(runtime, user_id="u1")
    assert recs.user_id == "u1" and recs.cold_start is False
    ids = [r.id for r in recs.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert [r.rank for r in recs.items] == list(range(1, 11))
    assert all(i in demo.catalog for i in ids)
    assert not set(ids) & demo.interactions.seen("u1")
    per_category = Counter(r.category for r in recs.items)
    assert max(per_category.values()) <= MAX_PER_CATEGORY
    for r in recs.items:
        item = demo.catalog[r.id]
        assert (r.title, r.category, r.price) == (item.title, item.category, item.price)
        assert r.reason
    assert [r.score for r in recs.items[:6]] == sorted((r.score for r in recs.items[:6]), reverse=True)


def test_u1_leans_toward_the_planted_tastes(runtime, demo) -> None:
    preferred = set(demo.users[0].preferred_categories)  # u1
    recs = recommend(runtime, user_id="u1")
    categories = [r.category for r in recs.items]
    # each liked category fills its diversity cap before anything else is shown
    best = min(MAX_PER_CATEGORY * len(preferred), len(categories))
    assert set(categories[:best]) <= preferred
    assert all("which you like" in r.reason for r in recs.items[:best])


def test_users_lean_toward_their_planted_tastes(runtime, demo) -> None:
    """Across users whose liked categories still hold unseen items, most recommendations come from them."""
    hits = total = users = 0
    for user in demo.users[:40]:
        seen = demo.interactions.seen(user.id)
        if any(sum(i.id not in seen for i in demo.catalog.by_category(c)) < MAX_PER_CATEGORY
               for c in user.preferred_categories):
            continue  # the user has already seen (nearly) everything they like
        recs = recommend(runtime, user_id=user.id)
        users += 1
        hits += sum(r.category in user.preferred_categories for r in recs.items)
        total += len(recs.items)
        assert recs.items[0].category in user.preferred_categories, user
    assert users >= 20
    assert hits / total > 0.5  # vs. ~0.26 if categories were picked at random


def test_an_unknown_user_gets_popular_items(runtime, demo) -> None:
    recs = recommend(runtime, user_id="nobody")
    assert recs.cold_start is True and recs.user_id == "nobody"
    assert len(recs.items) == 10
    popular = list(demo.interactions.popularity())
    # a cold start gets only the popular candidates (the 50 most popular), in the learned ranker's order: which
    # of them lead is the ranker's call (it was trained on known users) and moves with LightGBM's numerics
    assert {r.id for r in recs.items} <= set(popular[:50])
    assert all(r.reason == "popular right now" for r in recs.items)
    assert max(Counter(r.category for r in recs.items).values()) <= MAX_PER_CATEGORY


def test_a_query_puts_matching_items_first_for_an_unknown_user(runtime) -> None:
    recs = recommend(runtime, user_id="nobody", query="hiking boots")
    assert recs.cold_start is True
    top = recs.items[:MAX_PER_CATEGORY]
    assert [r.category for r in top] == ["outdoor"] * MAX_PER_CATEGORY
    assert "Hiking Boots" in recs.items[0].title
    assert all(r.reason == 'matches your search "hiking boots"' for r in top)
    recs = recommend(runtime, user_id="newcomer", query="espresso")
    assert recs.items[0].category == "kitchen"


@pytest.mark.parametrize("k", [1, 3, 10, 25])
def test_k_is_respected(runtime, demo, k) -> None:
    recs = recommend(runtime, user_id="u1", k=k)
    assert len(recs.items) == k
    assert len({r.id for r in recs.items}) == k
    assert not {r.id for r in recs.items} & demo.interactions.seen("u1")


@pytest.mark.parametrize("request_", [
    {"user_id": "u1", "k": 0}, {"user_id": "u1", "k": 101}, {"user_id": "u1", "limit": 3}, {"query": "tent"},
])
def test_bad_requests_are_refused(runtime, request_) -> None:
    with pytest.raises(InputError):
        runtime.run_sync(request_)


def test_runs_are_deterministic(runtime) -> None:
    request = {"user_id": "u7", "query": "wireless headphones", "k": 12}
    first = runtime.run_sync(request).outputs_json()
    second = runtime.run_sync(request).outputs_json()
    fresh = llmrec.run(SPEC, request).outputs_json()  # a new runtime regenerates the dataset from the seed
    assert first == second == fresh


def test_the_trace_shows_keyword_skipped_without_a_query(runtime) -> None:
    trace = runtime.run_sync({"user_id": "u1"}).trace
    assert trace.node("keyword").status == "skipped"
    assert trace.node("result").status == "ok"
    assert not trace.degraded
    trace = runtime.run_sync({"user_id": "u1", "query": "yoga mat"}).trace
    assert trace.node("keyword").status == "ok"


def test_a_second_run_hits_the_popular_cache() -> None:
    rt = llmrec.open_runtime(SPEC)
    first = rt.run_sync({"user_id": "u1"})
    assert first.trace.node("popular").status == "ok" and not first.trace.node("popular").cache_hit
    second = rt.run_sync({"user_id": "u2"})
    record = second.trace.node("popular")
    assert record.status == "cached" and record.cache_hit
    assert second.outputs["recommendations"].user_id == "u2"


def test_a_failing_keyword_search_falls_back_to_no_matches(monkeypatch) -> None:
    def broken(self, texts):
        raise RuntimeError("index unavailable")

    monkeypatch.setattr(BM25, "_tokenize", broken)
    result = llmrec.run(SPEC, {"user_id": "nobody", "query": "hiking boots"})
    record = result.trace.node("keyword")
    assert record.status == "fallback" and record.fallback == "value"
    assert "index unavailable" in (record.fallback_reason or "")
    assert result.degraded
    recs = result.outputs["recommendations"]
    # semantic search still finds the boots without keyword matches
    assert len(recs.items) == 10 and "Hiking Boots" in recs.items[0].title
    assert "bm25" not in result.outputs["recommendations"].items[0].reason


def test_semantic_search_finds_items_that_share_no_keyword_with_the_query(runtime, demo) -> None:
    """all-MiniLM-L6-v2 at work: no item text contains "caffeine" or "fix", yet coffee things come first.

    What the spec promises (its `blend` comment) is that with a query the semantic matches lead and the ranker
    orders them. The semantic list itself is asserted, then that the recommendations are drawn from it. Not
    asserted: that all three are kitchen items, or which match comes first. An electronics item among the ten matches (8th-10th,
    cosine ~0.21 vs ~0.28 for coffee) that the ranker also puts first for a newcomer gains 0.3/61 = 0.0049 in the
    fusion, more than the 0.0042 between the 3rd kitchen match and it, so it can rightly come third. Which item
    the ranker puts first depends on its trained model, whose features use cached catalog embeddings; those
    differ by ~1e-7 with how the texts were first batched (single vs batch encode, measured), i.e. with which
    test embedded them first on a fresh HOME. That was the fresh-clone failure ("an electronics item at #3")."""
    query = "caffeine fix"
    assert not any(word in item.text.lower() for item in demo.catalog for word in ("caffeine", "fix"))
    result = runtime.run_sync({"user_id": "newcomer", "query": query, "k": 3})
    assert result.trace.node("semantic").status == "ok", result.trace.node("semantic")
    assert result.trace.node("keyword").status == "ok"  # it ran, and found nothing to match
    model = runtime.resources["minilm"]
    items = list(demo.catalog)
    cosine = model.encode([item.text for item in items]) @ model.encode([query])[0]
    matches = [items[i] for i in sorted(range(len(items)), key=lambda i: -cosine[i])[:10]]
    assert all(m.category == "kitchen" and "Coffee" in m.title for m in matches[:3])
    recs = result.outputs["recommendations"]
    match_ids = [m.id for m in matches]
    # any of the ten matches outscores an item only the ranker found (1/70 > 0.3/61), so all three are matches
    assert all(r.id in match_ids for r in recs.items)
    assert any("Coffee" in r.title for r in recs.items)
    assert recs.items[0].reason == f'matches your search "{query}"'


