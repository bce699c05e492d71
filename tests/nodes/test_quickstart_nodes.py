"""Unit tests of the node types the quickstart pipeline uses (profile, retrievers, fuse, rerankers, present),
called directly; and the rule that a node type lives in the module named by its role."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from llmrec.data import Catalog, DemoDataset, Interaction, Interactions, Item
from llmrec.node import read_signature
from llmrec.nodes.demo import DemoDatasetResource
from llmrec.nodes.present import Present
from llmrec.nodes.rerank import Diversify, FilterSeen
from llmrec.nodes.retrieve import BM25, CategoryAffinity, Fuse, Popular
from llmrec.nodes.user import Profile
from llmrec.plugins import get_registry
from llmrec.types import Candidates, Recommendations, ScoredItem, UserProfile


def _item(id: str, title: str, category: str, description: str = "", price: float | None = 10.0) -> Item:
    return Item(id=id, title=title, description=description, category=category, price=price)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog([
        _item("b1", "Mystery Novel", "books", "A page-turning read."),
        _item("b2", "Fantasy Novel", "books", "Dragons and a quest."),
        _item("b3", "Poetry Collection", "books", "Short poems for a quiet evening."),
        _item("o1", "Waterproof Hiking Boots", "outdoor", "Built for long hiking days on rocky trails."),
        _item("o2", "Camping Tent", "outdoor", "Packs down small for weekend camping."),
        _item("k1", "Espresso Machine", "kitchen", "Cafe-quality espresso at home.", price=None),
        _item("k2", "Chef's Knife", "kitchen", "A balanced knife for everyday cooking."),
    ])


def _events(user: str, *pairs: tuple[str, str]) -> list[Interaction]:
    return [Interaction(user_id=user, item_id=i, event=e, timestamp=100 + n) for n, (i, e) in enumerate(pairs)]


@pytest.fixture(scope="module")
def interactions() -> Interactions:
    # popularity (view 1, click 2, rating 3, purchase 4): b1 = 4+1+1 = 6, o1 = 1+4 = 5, b2 = 2+1 = 3, k1 = 1, o2 = 1
    return Interactions([
        *_events("alice", ("b1", "purchase"), ("b2", "click"), ("o1", "view")),
        *_events("bob", ("b1", "view"), ("o1", "purchase"), ("k1", "view")),
        *_events("carol", ("b1", "view"), ("b2", "view"), ("o2", "view")),
    ])


async def _profile(catalog: Catalog, interactions: Interactions, user: str) -> UserProfile:
    return await Profile(Profile.Config()).run(catalog=catalog, interactions=interactions, user_id=user)


def _cands(source: str, *pairs: tuple[str, float]) -> Candidates:
    return Candidates(items=[ScoredItem(id=i, score=s, sources={source: s}) for i, s in pairs], source=source)


# -- registration and declarations -----------------------------------------------------------------------------


NODE_TYPES = (Profile, Popular, BM25, CategoryAffinity, Fuse, FilterSeen, Diversify, Present)


def test_every_type_is_registered_with_a_description_and_a_strict_config() -> None:
    registry = get_registry(None)
    for cls in NODE_TYPES:
        assert registry.node_types.get(cls.name) is cls
        assert cls.description and "\n" not in cls.description
        with pytest.raises(ValidationError):
            cls.Config.model_validate({"no_such_key": 1})
    assert registry.resource_types.get("demo.dataset") is DemoDatasetResource
    assert {c.name for c in NODE_TYPES} == {
        "user.profile", "retrieve.popular", "retrieve.bm25", "retrieve.category_affinity", "fuse",
        "rerank.filter_seen", "rerank.diversify", "present.items",
    }


def test_signatures_declare_typed_inputs_and_outputs() -> None:
    sig = read_signature(Fuse.run)
    assert sig.params["lists"].type == list[Candidates | None] and sig.output is Candidates
    sig = read_signature(Present.run)
    assert sig.output is Recommendations
    assert {n for n, p in sig.params.items() if p.required} == {"candidates", "catalog", "profile"}
    sig = read_signature(Profile.run)
    assert sig.output is UserProfile and sig.params["user_id"].type is str
    assert DemoDatasetResource.provides is DemoDataset


def test_each_built_in_node_type_lives_in_the_module_of_its_role() -> None:
    """``retrieve.*`` in llmrec.nodes.retrieve, ``rerank.*`` in llmrec.nodes.rerank, ``rank.*`` in
    llmrec.nodes.rank: a newcomer finds a family in one place."""
    homes = {"retrieve": "llmrec.nodes.retrieve", "rerank": "llmrec.nodes.rerank", "rank": "llmrec.nodes.rank",
             "embed": "llmrec.nodes.embed", "verify": "llmrec.nodes.verify", "llm": "llmrec.nodes.llm"}
    registry = get_registry(None)
    checked = 0
    for name in registry.node_types:
        family = name.split(".")[0]
        entry = registry.node_types.entry(name)
        if family in homes and entry is not None and entry.plugin.name.startswith("llmrec."):
            module = entry.value.__module__
            assert module == homes[family] or module.startswith(homes[family] + ".") or (
                family == "llm" and module in ("llmrec.nodes.llm_tasks", "llmrec.nodes.dialogue")), (name, module)
            checked += 1
    assert checked >= 20


# -- demo.dataset ------------------------------------------------------------------------------------------------


async def test_demo_dataset_resource_generates_in_memory() -> None:
    data = await DemoDatasetResource(DemoDatasetResource.Config(n_items=40, n_users=5)).load()
    assert isinstance(data, DemoDataset)
    assert len(data.catalog) == 40 and [u.id for u in data.users] == ["u1", "u2", "u3", "u4", "u5"]
    again = await DemoDatasetResource(DemoDatasetResource.Config(n_items=40, n_users=5)).load()
    assert again.catalog.ids == data.catalog.ids and len(again.interactions) == len(data.interactions)
    with pytest.raises(ValidationError):
        DemoDatasetResource.Config(n_items=0)


# -- user.profile ------------------------------------------------------------------------------------------------


async def test_profile_of_a_known_user(catalog, interactions) -> None:
    p = await _profile(catalog, interactions, "alice")
    assert p.known and p.user_id == "alice" and p.history_size == 3
    assert p.seen == ["b1", "b2", "o1"]
    # books: purchase 4 + click 2 = 6 of 7; outdoor: view 1 of 7
    assert p.category_affinity == pytest.approx({"books": 6 / 7, "outdoor": 1 / 7})
    assert p.top_categories == ["books", "outdoor"]


async def test_profile_thresholds(catalog, interactions) -> None:
    strict = Profile(Profile.Config(min_share=0.5, max_top_categories=3))
    p = await strict.run(catalog=catalog, interactions=interactions, user_id="alice")
    assert p.top_categories == ["books"]
    # nothing reaches the threshold: the largest category still counts
    flat = Profile(Profile.Config(min_share=1.0))
    p = await flat.run(catalog=catalog, interactions=interactions, user_id="carol")
    assert p.top_categories == ["books"]


async def test_unknown_user_is_a_cold_start_not_an_error(catalog, interactions) -> None:
    p = await _profile(catalog, interactions, "nobody")
    assert p == UserProfile(user_id="nobody", known=False)
    assert p.seen == [] and p.top_categories == [] and p.history_size == 0


# -- retrieve.popular --------------------------------------------------------------------------------------------


async def test_popular_is_ranked_and_normalised(interactions) -> None:
    node = Popular(Popular.Config())
    out = await node.run(interactions=interactions)
    assert out.source == "popular"
    assert out.ids == ["b1", "o1", "b2", "k1", "o2"]  # ties (k1, o2) in natural id order
    assert out.items[0].score == 1.0 and out.items[1].score == pytest.approx(5 / 6)
    assert all(0 <= c.score <= 1 for c in out.items)
    assert [c.score for c in out.items] == sorted((c.score for c in out.items), reverse=True)
    assert out.items[1].sources == {"popular": pytest.approx(5 / 6)}


async def test_popular_k_from_input_or_config(interactions) -> None:
    assert len((await Popular(Popular.Config(k=2)).run(interactions=interactions)).items) == 2
    assert (await Popular(Popular.Config(k=2)).run(interactions=interactions, k=3)).ids == ["b1", "o1", "b2"]
    assert (await Popular(Popular.Config()).run(interactions=interactions, k=0)).items == []


async def test_popular_ranks_once_per_dataset(interactions) -> None:
    node = Popular(Popular.Config())
    first = await node.run(interactions=interactions)
    second = await node.run(interactions=interactions)
    assert first.items[0] is second.items[0]  # precomputed, not recomputed per request
    other = Interactions(_events("dave", ("k2", "view")))
    assert (await node.run(interactions=other)).ids == ["k2"]


# -- retrieve.bm25 ---------------------------------------------------------------------------------------------


async def test_bm25_finds_matching_items(catalog) -> None:
    node = BM25(BM25.Config())
    out = await node.run(catalog=catalog, query="hiking boots", k=5)
    assert out.source == "bm25"
    assert out.ids == ["o1"]  # only items sharing a word with the query
    assert out.items[0].score > 0 and out.items[0].sources == {"bm25": out.items[0].score}
    out = await node.run(catalog=catalog, query="Espresso at HOME")
    assert out.ids[0] == "k1"


@pytest.mark.parametrize("query", [None, "", "   ", "the and of", "zzzz unknownword"])
async def test_bm25_without_a_usable_query_returns_nothing(catalog, query) -> None:
    out = await BM25(BM25.Config()).run(catalog=catalog, query=query)
    assert out == Candidates(items=[], source="bm25")


async def test_bm25_respects_k_and_orders_ties_by_catalog(catalog) -> None:
    node = BM25(BM25.Config(k=1))
    assert len((await node.run(catalog=catalog, query="novel")).items) == 1
    out = await node.run(catalog=catalog, query="novel", k=10)
    assert set(out.ids) == {"b1", "b2"}
    twins = Catalog([_item("t2", "Blue Novel", "books"), _item("t1", "Red Novel", "books"), _item("t3", "Lamp", "x")])
    out = await node.run(catalog=twins, query="novel", k=10)
    assert out.ids == ["t2", "t1"]  # equal scores: catalog order
    assert out.items[0].score == out.items[1].score


async def test_bm25_indexes_each_catalog_once(catalog) -> None:
    node = BM25(BM25.Config())
    assert node.index_for(catalog) is node.index_for(catalog)
    other = Catalog([_item("x1", "Hiking Poles", "outdoor")])
    assert (await node.run(catalog=other, query="hiking")).ids == ["x1"]
    assert (await node.run(catalog=catalog, query="hiking")).ids == ["o1"]
    assert (await node.run(catalog=Catalog([]), query="hiking")).items == []


# -- retrieve.category_affinity ----------------------------------------------------------------------------------


async def test_affinity_scores_liked_categories(catalog, interactions) -> None:
    profile = await _profile(catalog, interactions, "alice")
    node = CategoryAffinity(CategoryAffinity.Config(exclude_seen=False))
    out = await node.run(catalog=catalog, interactions=interactions, profile=profile)
    assert out.source == "affinity"
    # share * popularity normalised within the category (books: b1 6, b2 3, b3 0; outdoor: o1 5, o2 1)
    books, outdoor = 6 / 7, 1 / 7
    expected = {"b1": books * 1.0, "b2": books * 3 / 6, "b3": 0.0, "o1": outdoor * 1.0, "o2": outdoor * 1 / 5}
    assert {c.id: c.score for c in out.items} == pytest.approx(expected, abs=1e-6)
    assert out.ids == ["b1", "b2", "o1", "o2", "b3"]
    assert {catalog[i].category for i in out.ids} <= set(profile.top_categories)
    assert out.items[0].sources == {"affinity": out.items[0].score}
    limited = await CategoryAffinity(CategoryAffinity.Config(k=2, exclude_seen=False)).run(
        catalog=catalog, interactions=interactions, profile=profile
    )
    assert limited.ids == ["b1", "b2"]


async def test_affinity_leaves_out_seen_items_by_default(catalog, interactions) -> None:
    profile = await _profile(catalog, interactions, "alice")  # seen: b1, b2, o1
    out = await CategoryAffinity(CategoryAffinity.Config()).run(
        catalog=catalog, interactions=interactions, profile=profile
    )
    assert out.ids == ["o2", "b3"]


async def test_affinity_is_empty_on_a_cold_start(catalog, interactions) -> None:
    profile = await _profile(catalog, interactions, "nobody")
    out = await CategoryAffinity(CategoryAffinity.Config()).run(
        catalog=catalog, interactions=interactions, profile=profile
    )
    assert out == Candidates(items=[], source="affinity")


# -- fuse -------------------------------------------------------------------------------------------------------


async def test_rrf_fusion_sums_reciprocal_ranks_and_keeps_sources() -> None:
    a = _cands("a", ("x", 9.0), ("y", 5.0))
    b = _cands("b", ("y", 0.7), ("z", 0.1))
    out = await Fuse(Fuse.Config()).run(lists=[a, b])
    assert out.source == "fuse"
    assert out.ids == ["y", "x", "z"]
    assert out.items[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert out.items[1].score == pytest.approx(1 / 61)
    assert out.items[0].sources == {"a": 5.0, "b": 0.7}
    assert out.items[2].sources == {"b": 0.1}


async def test_fuse_skips_none_and_weights_by_position() -> None:
    a = _cands("a", ("x", 1.0))
    c = _cands("c", ("z", 1.0))
    out = await Fuse(Fuse.Config(weights=[1.0, 5.0, 2.0], rrf_k=0)).run(lists=[a, None, c])
    assert out.ids == ["z", "x"]
    assert [i.score for i in out.items] == pytest.approx([2.0, 1.0])
    assert (await Fuse(Fuse.Config()).run(lists=[None, None])).items == []
    assert (await Fuse(Fuse.Config()).run(lists=[])).items == []


async def test_fuse_rejects_a_weight_count_that_does_not_match() -> None:
    with pytest.raises(ValueError, match="2 lists but 3 weights"):
        await Fuse(Fuse.Config(weights=[1, 1, 1])).run(lists=[_cands("a"), _cands("b")])
    with pytest.raises(ValidationError):
        Fuse.Config(weights=[-1.0])
    with pytest.raises(ValidationError):
        Fuse.Config(method="borda")


async def test_weighted_fusion_min_max_normalises_each_list() -> None:
    a = _cands("a", ("x", 10.0), ("y", 6.0), ("z", 2.0))  # -> 1, 0.5, 0
    b = _cands("b", ("z", 0.3), ("y", 0.3))  # all equal -> 1, 1
    out = await Fuse(Fuse.Config(method="weighted", weights=[1.0, 0.25])).run(lists=[a, b])
    scores = {i.id: i.score for i in out.items}
    assert scores == pytest.approx({"x": 1.0, "y": 0.75, "z": 0.25})
    assert out.ids == ["x", "y", "z"]


async def test_fuse_accepts_a_fallback_mapping_and_keeps_k() -> None:
    fallback = {"items": [], "source": "bm25"}  # what `fallback: {value: ...}` yields at run time
    many = _cands("p", *((f"i{n}", 1.0 / (n + 1)) for n in range(20)))
    out = await Fuse(Fuse.Config(k=5)).run(lists=[fallback, many])  # type: ignore[list-item]
    assert out.ids == ["i0", "i1", "i2", "i3", "i4"]


async def test_fuse_names_unnamed_and_duplicate_sources_apart() -> None:
    a = Candidates(items=[ScoredItem(id="x", score=1.0)])
    b = _cands("s", ("x", 2.0))
    c = _cands("s", ("x", 3.0), ("x", 3.0))  # a duplicate within one list counts once
    out = await Fuse(Fuse.Config(rrf_k=0)).run(lists=[a, b, c])
    assert out.items[0].sources == {"list0": 1.0, "s": 2.0, "s_2": 3.0}
    assert out.items[0].score == pytest.approx(3.0)


async def test_nested_fusion_keeps_inner_sources() -> None:
    inner = await Fuse(Fuse.Config()).run(lists=[_cands("a", ("x", 1.0)), _cands("b", ("x", 2.0))])
    outer = await Fuse(Fuse.Config()).run(lists=[inner, _cands("c", ("x", 3.0))])
    assert set(outer.items[0].sources) == {"a", "b", "fuse", "c"}


# -- rerank.filter_seen / rerank.diversify ----------------------------------------------------------------------


async def test_filter_seen(catalog, interactions) -> None:
    cands = _cands("p", ("b1", 1.0), ("k2", 0.9), ("o1", 0.8), ("b3", 0.7))
    alice = await _profile(catalog, interactions, "alice")
    out = await FilterSeen(FilterSeen.Config()).run(candidates=cands, profile=alice)
    assert out.ids == ["k2", "b3"] and out.source == "p"
    nobody = await _profile(catalog, interactions, "nobody")
    assert (await FilterSeen(FilterSeen.Config()).run(candidates=cands, profile=nobody)).ids == cands.ids


async def test_diversify_caps_categories_then_fills(catalog) -> None:
    cands = _cands("p", ("b1", 6.0), ("b2", 5.0), ("b3", 4.0), ("o1", 3.0), ("k1", 2.0), ("unknown", 1.0))
    node = Diversify(Diversify.Config(max_per_category=2))
    out = await node.run(candidates=cands, catalog=catalog, k=4)
    assert out.ids == ["b1", "b2", "o1", "k1"]
    # not enough other categories: the held-back book fills the list
    out = await node.run(candidates=cands, catalog=catalog, k=6)
    assert out.ids == ["b1", "b2", "o1", "k1", "unknown", "b3"]
    out = await node.run(candidates=cands, catalog=catalog, k=10)
    assert len(out.items) == 6
    assert (await Diversify(Diversify.Config(k=1)).run(candidates=cands, catalog=catalog)).ids == ["b1"]


# -- present.items ----------------------------------------------------------------------------------------------


async def test_present_builds_ranked_items_with_reasons(catalog, interactions) -> None:
    alice = await _profile(catalog, interactions, "alice")
    cands = Candidates(items=[
        ScoredItem(id="o2", score=0.9, sources={"bm25": 3.1, "popular": 0.1}),
        ScoredItem(id="b3", score=0.8, sources={"affinity": 0.0}),
        ScoredItem(id="gone", score=0.7, sources={"popular": 1.0}),  # not in the catalog: skipped
        ScoredItem(id="k1", score=0.6, sources={"popular": 0.5}),
        ScoredItem(id="b2", score=0.5, sources={"fuse": 1.0}),
        ScoredItem(id="k2", score=0.4, sources={}),
    ])
    out = await Present(Present.Config()).run(
        candidates=cands, catalog=catalog, profile=alice, query="camping tent"
    )
    assert out.user_id == "alice" and out.cold_start is False
    assert [(r.rank, r.id) for r in out.items] == [(1, "o2"), (2, "b3"), (3, "k1"), (4, "b2"), (5, "k2")]
    first = out.items[0]
    assert (first.title, first.category, first.price, first.score) == ("Camping Tent", "outdoor", 10.0, 0.9)
    assert out.items[2].price is None
    assert [r.reason for r in out.items] == [
        'matches your search "camping tent"',
        "popular in books, which you like",
        "popular right now",
        "in books, which you like",
        "recommended for you",
    ]
    short = await Present(Present.Config(k=2)).run(candidates=cands, catalog=catalog, profile=alice)
    assert [r.id for r in short.items] == ["o2", "b3"]
    assert short.items[0].reason == "matches your search"
    assert len((await Present(Present.Config()).run(candidates=cands, catalog=catalog, profile=alice, k=1)).items) == 1


async def test_present_marks_cold_starts(catalog, interactions) -> None:
    nobody = await _profile(catalog, interactions, "nobody")
    out = await Present(Present.Config()).run(candidates=_cands("popular", ("b1", 1.0)), catalog=catalog,
                                              profile=nobody)
    assert out.cold_start is True and out.items[0].reason == "popular right now"


# -- value types ------------------------------------------------------------------------------------------------


def test_value_types_are_strict_and_frozen() -> None:
    with pytest.raises(ValidationError):
        ScoredItem(id="x", score=1.0, extra=1)  # type: ignore[call-arg]
    item = ScoredItem(id="x", score=1.0)
    assert item.sources == {}
    with pytest.raises(ValidationError):
        item.score = 2.0  # type: ignore[misc]
    assert Candidates().items == [] and Candidates().source == ""
    assert issubclass(Recommendations, BaseModel)
