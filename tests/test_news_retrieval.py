"""specs/news_retrieval.yaml answers a person: a short ranked list of BBC articles with titles and snippets, not
the retrievers' lists of ids (those stay node values, which benchmarks/news_retrieval.py reads with on_node)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import llmrec
from llmrec.cli import main
from llmrec.data.catalog import Catalog, Item
from llmrec.testing import run_spec
from llmrec.types import Candidates, ScoredItem

SPEC = Path(__file__).resolve().parents[1] / "specs" / "news_retrieval.yaml"
QUERY = "interest rates rise again as inflation fears grow"
FIELDS = {"rank", "id", "title", "snippet", "topic", "score", "ranks"}


def _need_bbc() -> None:
    data = os.environ.get("LLMREC_DATA_DIR")
    if not data or not (Path(data) / "bbc-news" / "bbc-text.csv").is_file():
        pytest.skip("needs LLMREC_DATA_DIR with bbc-news/bbc-text.csv")


def _lists(*ids: str, source: str) -> Candidates:
    return Candidates(items=[ScoredItem(id=i, score=1.0 - n / 10, sources={source: 1.0}) for n, i in enumerate(ids)],
                      source=source)


async def test_results_node_renders_titles_snippets_and_ranks_without_the_data() -> None:
    graph = llmrec.validate(SPEC)
    assert set(graph.outputs) == {"results", "embedding_map"}  # the 100-item retriever lists are not outputs
    node = graph.nodes["results"]
    text = 'he said "no" \\ twice. ' + " ".join(f"word{i}" for i in range(100))
    catalog = Catalog([
        Item(id="a0", title="short first sentence", description="short first sentence. and then more", category="tech"),
        Item(id="a1", title=text.split(".")[0] + " …", description=text, category="sport"),
        Item(id="a2", title="not shown", description="not shown", category="business"),
    ])
    hybrid = _lists("a1", "a0", "a2", source="hybrid")
    value = await node.cls(node.config).run(
        candidates=hybrid, catalog=catalog, query='rates "up"', k=2,
        bm25=_lists("a0", source="bm25"), dense=_lists("a2", "a1", source="dense"),
        rrf=_lists("a1", "a0", source="rrf"))
    assert value["query"] == 'rates "up"'
    first, second = value["items"]
    assert set(first) == FIELDS and (first["rank"], first["id"], first["topic"]) == (1, "a1", "sport")
    assert first["title"] == 'he said "no" \\ twice …'
    assert first["snippet"].startswith("word0 word1 ") and first["snippet"].endswith("…")
    assert len(first["snippet"]) <= 160
    assert first["ranks"] == {"bm25": None, "dense": 2, "rrf": 1}
    assert (second["id"], second["snippet"], second["ranks"]) == ("a0", "and then more", {"bm25": 1, "dense": None,
                                                                                          "rrf": 2})


def test_llmrec_run_prints_a_short_list_with_titles(capsys: pytest.CaptureFixture[str]) -> None:
    _need_bbc()
    assert main(["run", str(SPEC), "--input", json.dumps({"query": QUERY})]) == 0
    printed = capsys.readouterr().out
    assert len(printed.splitlines()) < 200  # it printed about 1,700 lines of ids before
    outputs = json.loads(printed)
    assert set(outputs) == {"results", "embedding_map"}
    items = outputs["results"]["items"]
    assert [it["rank"] for it in items] == list(range(1, 11))
    ds = llmrec.data.datasets.load_dataset("bbc-news")
    for it in items:
        assert set(it) == FIELDS
        article = ds.catalog[it["id"]]
        assert it["title"] == article.title and it["title"].strip()
        assert 0 < len(it["snippet"]) <= 160 and it["snippet"].rstrip("…").split()[0] in article.description
        assert it["topic"] == article.category
    assert items[0]["title"].startswith("us interest rates")
    assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)


async def test_results_are_the_hybrid_lists_head_and_the_retriever_lists_are_node_values() -> None:
    _need_bbc()
    values: dict[str, Any] = {}
    result = await run_spec(SPEC, {"query": QUERY, "k": 3},
                            on_node=lambda record, value: values.__setitem__(record.node_id, value))
    items = result.outputs["results"]["items"]
    assert [it["id"] for it in items] == values["hybrid"].ids[:3]
    assert len(values["bm25"].items) == len(values["dense"].items) == 100 and len(values["rrf"].items) == 20
    for it in items:
        assert it["ranks"]["rrf"] == values["rrf"].ids.index(it["id"]) + 1
