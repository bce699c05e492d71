"""The rerankers of llmrec/nodes/rerank.py, called directly, and their config errors through a spec."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from llmrec.data import Catalog, Item
from llmrec.nodes.rerank import MMR, Constraints, Dedupe, Quota, Rules, normalise_title
from llmrec.testing import errors_of, write_spec
from llmrec.types import Candidates, ScoredItem


def _item(id: str, category: str, price: float | None = 10.0, title: str | None = None, **attrs) -> Item:
    return Item(id=id, title=title or f"Item {id}", category=category, price=price, attributes=attrs)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog([
        _item("b1", "books", 12.0, "The Quiet Sea", in_stock=True, brand="Inkwell"),
        _item("b2", "books", 30.0, "The quiet  sea!", in_stock=False, brand="Inkwell"),
        _item("b3", "books", 8.0, in_stock=True, brand="Folio"),
        _item("o1", "outdoor", 80.0, in_stock=True, brand="Trail"),
        _item("o2", "outdoor", None, in_stock=True, brand="Trail"),
        _item("k1", "kitchen", 45.0, in_stock=True, brand="Crema"),
    ])


def _cands(*pairs: tuple[str, float]) -> Candidates:
    return Candidates(items=[ScoredItem(id=i, score=s, sources={"x": s}) for i, s in pairs], source="x")


CANDS = _cands(("b1", 1.0), ("b2", 0.95), ("b3", 0.9), ("o1", 0.6), ("k1", 0.5), ("o2", 0.4))


def run(node, **inputs) -> Candidates:
    return asyncio.run(node.run(**inputs))


def test_mmr_category_similarity_trades_relevance_for_variety(catalog):
    diverse = run(MMR(MMR.Config.model_validate({"lambda": 0.5, "k": 3})), candidates=CANDS, catalog=catalog)
    assert diverse.ids == ["b1", "o1", "k1"]
    relevance_only = run(MMR(MMR.Config.model_validate({"lambda": 1.0, "k": 4})), candidates=CANDS, catalog=catalog)
    assert relevance_only.ids == CANDS.ids[:4]
    assert diverse.items[0] == CANDS.items[0]  # items keep their scores and sources


def test_mmr_embeddings(catalog):
    vectors = {"b1": [1, 0], "b2": [1, 0.01], "b3": [0, 1], "o1": [1, 0], "k1": [0.7, 0.7], "o2": [0, 1]}
    out = run(MMR(MMR.Config.model_validate({"lambda": 0.5, "k": 2, "similarity": "embedding"})),
              candidates=CANDS, embeddings=vectors)
    assert out.ids == ["b1", "b3"]  # b2 and o1 point the same way as b1
    with pytest.raises(ValueError, match="no embedding"):
        run(MMR(MMR.Config(k=2)), candidates=CANDS, embeddings={"b1": [1, 0]})


def test_quota_counts_and_shares(catalog):
    cfg = Quota.Config.model_validate({"quotas": {"kitchen": {"min": 1}, "outdoor": {"min_share": 0.5}},
                                       "default": {"max": 1}, "k": 4})
    out = run(Quota(cfg), candidates=CANDS, catalog=catalog)
    assert out.ids == ["b1", "o1", "k1", "o2"]  # two outdoor (50% of 4), one kitchen, books capped at 1; input order
    capped = run(Quota(Quota.Config.model_validate({"default": {"max": 1}, "k": 5})), candidates=CANDS, catalog=catalog)
    assert capped.ids == ["b1", "o1", "k1"]  # maxima are hard: short rather than broken
    by_brand = run(Quota(Quota.Config.model_validate({"field": "brand", "default": {"max": 1}, "k": 6})),
                   candidates=CANDS, catalog=catalog)
    assert by_brand.ids == ["b1", "b3", "o1", "k1"]
    with pytest.raises(ValueError, match="no catalog item has field 'colour'"):
        run(Quota(Quota.Config(field="colour")), candidates=CANDS, catalog=catalog)


def test_rules_boost_and_multiply(catalog):
    cfg = Rules.Config.model_validate({"rules": [
        {"field": "category", "op": "eq", "value": "KITCHEN", "boost": 1.0},
        {"field": "in_stock", "op": "eq", "value": False, "multiply": 0.0},
        {"field": "price", "op": "gt", "value": 50, "boost": -0.5},
        {"field": "title", "op": "contains", "value": "quiet", "boost": 0.01},
        {"field": "attributes.brand", "op": "in", "value": ["Folio"], "boost": 0.2},
    ]})
    out = run(Rules(cfg), candidates=CANDS, catalog=catalog)
    scores = {c.id: c.score for c in out.items}
    assert out.ids[0] == "k1" and scores["k1"] == 1.5
    assert scores["b2"] == pytest.approx(0.01) and out.ids[-1] == "b2"  # rules apply in order: *0, then +0.01
    assert scores["o1"] == pytest.approx(0.1) and scores["b1"] == pytest.approx(1.01) and scores["b3"] == pytest.approx(1.1)
    assert out.items[0].sources == {"x": 0.5, "rules": 1.5}
    assert scores["o2"] == 0.4 and out.ids == sorted(scores, key=lambda i: -scores[i])
    with pytest.raises(ValueError, match="no catalog item has field 'colour'"):
        run(Rules(Rules.Config(rules=[{"field": "colour", "value": "red", "boost": 1}])), candidates=CANDS, catalog=catalog)


def test_rule_config_errors():
    with pytest.raises(ValidationError, match="exactly one of 'boost' or 'multiply'"):
        Rules.Config(rules=[{"field": "price", "op": "lt", "value": 3}])
    with pytest.raises(ValidationError, match="needs a list"):
        Rules.Config(rules=[{"field": "category", "op": "in", "value": "books", "boost": 1}])
    with pytest.raises(ValidationError, match="needs a number"):
        Rules.Config(rules=[{"field": "price", "op": "lt", "value": "cheap", "boost": 1}])
    with pytest.raises(ValidationError):
        Rules.Config(rules=[{"field": "price", "op": "le", "value": 3, "boost": 1}])


def test_dedupe(catalog):
    doubled = _cands(("b1", 1.0), ("b1", 0.9), ("b2", 0.8), ("b3", 0.7))
    assert run(Dedupe(Dedupe.Config()), candidates=doubled).ids == ["b1", "b2", "b3"]
    assert run(Dedupe(Dedupe.Config(by_title=True)), candidates=doubled, catalog=catalog).ids == ["b1", "b3"]
    assert normalise_title("  The Quiet  SEA!! ") == "the quiet sea"


def test_constraints(catalog):
    cfg = Constraints.Config(min_price=10, max_price=50, equals={"in_stock": True}, exclude_ids=["k1"])
    assert run(Constraints(cfg), candidates=CANDS, catalog=catalog).ids == ["b1"]
    loose = Constraints.Config(max_price=50, keep_unpriced=True)
    assert run(Constraints(loose), candidates=CANDS, catalog=catalog, exclude=["b3"]).ids == ["b1", "b2", "k1", "o2"]
    assert run(Constraints(Constraints.Config(exclude_ids=["b1"])), candidates=CANDS).ids == CANDS.ids[1:]
    with pytest.raises(ValidationError, match="above max_price"):
        Constraints.Config(min_price=5, max_price=1)


def test_config_errors_in_a_spec(tmp_path):
    spec = write_spec(tmp_path, """
        name: bad
        resources: {demo: {type: demo.dataset}}
        nodes:
          popular: {type: retrieve.popular, inputs: {interactions: "${resources.demo.interactions}"}}
          mmr:
            type: rerank.mmr
            config: {similarity: embedding}
            inputs: {candidates: "${popular}", catalog: "${resources.demo.catalog}"}
          quota:
            type: rerank.quota
            config: {k: 4, quotas: {books: {min: 3}, music: {min_share: 0.5}}}
            inputs: {candidates: "${mmr}", catalog: "${resources.demo.catalog}"}
          dedupe:
            type: rerank.dedupe
            config: {by_title: true}
            inputs: {candidates: "${quota}"}
          rules:
            type: rerank.rules
            config: {rules: [{field: price, op: between, value: 3, boost: 1}]}
            inputs: {candidates: "${dedupe}", catalog: "${resources.demo.catalog}"}
          limits:
            type: rerank.constraints
            config: {max_price: 20}
            inputs: {candidates: "${rules}"}
        outputs: {items: "${limits}"}
    """)
    errors = "\n".join(errors_of(spec))
    assert "node 'mmr': similarity 'embedding' needs the 'embeddings' or the 'model' input" in errors
    assert "node 'quota': the minimums add up to 5, more than k = 4" in errors
    assert "node 'dedupe': by_title needs the 'catalog' input" in errors
    assert "node 'rules'" in errors and "between" in errors
    assert "node 'limits': price and attribute constraints need the 'catalog' input" in errors
