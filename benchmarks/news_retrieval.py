"""BBC News head-query retrieval (the book's tutorial 1.9): BM25 vs dense vs hybrid, through specs/news_retrieval.yaml.

Protocol (../shared/PROTOCOLS.md): 200 articles drawn with numpy default_rng(0) without replacement; each query is
the article's first 12 whitespace tokens; the article itself is excluded; relevant = every other article of the
same topic. Precision@10 and NDCG@10 with binary gains, per method.

The hybrid weight is not tuned on those 200 queries: it is chosen on 200 *validation* queries drawn with
default_rng(1) from the articles that are not test queries, over a grid, and the test numbers are reported for
the spec's own weight and for the validation pick. The run also measures the embedding cache: the catalog is
embedded into a fresh cache folder, then again with a new embedder on the same folder (it must embed nothing).

    LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/news_retrieval.py [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import llmrec
from llmrec.data import EvalCase
from llmrec.data.datasets import load_dataset
from llmrec.embed import Embedder
from llmrec.eval.metrics import ndcg_at_k, precision_at_k

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "news_retrieval.yaml"
OUT = ROOT / "benchmarks" / "results" / "news_retrieval.md"
METHODS = ("bm25", "dense", "hybrid", "rrf")
K = 10


def ids_of(value: Any, exclude: frozenset[str]) -> list[str]:
    return [item.id for item in value.items if item.id not in exclude]


async def lists_of(runtime: llmrec.Runtime, inputs: dict[str, Any]) -> dict[str, Any]:
    """The four methods' lists for one request. They are node values, not outputs (the spec's output is the
    readable top k): ``on_node`` hands each node's value as it finishes."""
    values: dict[str, Any] = {}

    def keep(record: Any, value: Any) -> None:
        if record.node_id in METHODS:
            values[record.node_id] = value

    await runtime.run(inputs, on_node=keep)
    missing = set(METHODS) - set(values)
    assert not missing, f"{SPEC.name} ran no node named {', '.join(sorted(missing))}"
    return values


async def run_cases(runtime: llmrec.Runtime, cases: list[EvalCase]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {m: [] for m in METHODS}
    for case in cases:
        lists = await lists_of(runtime, case.inputs)
        for m in METHODS:
            out[m].append(ids_of(lists[m], case.exclude))
    return out


def weighted(bm25: list[tuple[str, float]], dense: list[tuple[str, float]], w_bm25: float) -> list[str]:
    """The `fuse` node's weighted method, for the validation grid (min-max per list, then weighted sum)."""
    total: dict[str, float] = {}
    for pairs, w in ((bm25, w_bm25), (dense, 1.0 - w_bm25)):
        if not pairs:
            continue
        scores = [s for _, s in pairs]
        lo, hi = min(scores), max(scores)
        for item_id, s in pairs:
            total[item_id] = total.get(item_id, 0.0) + w * ((s - lo) / (hi - lo) if hi > lo else 1.0)
    return sorted(total, key=lambda i: -total[i])


def score(lists: list[list[str]], cases: list[EvalCase]) -> tuple[float, float]:
    p = statistics.fmean(precision_at_k(r, c.relevant, K) for r, c in zip(lists, cases))
    n = statistics.fmean(ndcg_at_k(r, c.relevant, K) for r, c in zip(lists, cases))
    return p, n


async def main_async(args: argparse.Namespace) -> str:
    dataset = load_dataset("bbc-news")
    test_cases = list(dataset.test_cases)
    assert len(test_cases) == 200, len(test_cases)
    catalog = dataset.catalog

    # validation queries: other articles, same construction
    test_ids = {next(iter(c.exclude)) for c in test_cases}
    rest = [item for item in catalog if item.id not in test_ids]
    pick = np.random.default_rng(1).choice(len(rest), 200, replace=False)
    val_cases = []
    for j in pick:
        item = rest[int(j)]
        query = " ".join((item.description or item.title).split()[:12])
        relevant = frozenset(o.id for o in catalog if o.category == item.category and o.id != item.id)
        val_cases.append(EvalCase(id=item.id, inputs={"query": query}, relevant=relevant, exclude=frozenset({item.id})))

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cold = Embedder("all-MiniLM-L6-v2", cache_dir=cache)
        cold.embed_items(catalog)
        cold_s = time.perf_counter() - t0
        cold_stats = dataclasses.asdict(cold.stats)
        t0 = time.perf_counter()
        warm = Embedder("all-MiniLM-L6-v2", cache_dir=cache)
        warm.embed_items(catalog)
        warm_s = time.perf_counter() - t0
        warm_stats = dataclasses.asdict(warm.stats)

    graph = llmrec.validate(SPEC)
    runtime = llmrec.Runtime(graph, resources={"news": dataset})
    t0 = time.perf_counter()
    await runtime.start()
    start_s = time.perf_counter() - t0

    # validation grid over the bm25 weight, on the retrievers' own lists
    val = []
    for case in val_cases:
        r = await lists_of(runtime, case.inputs)
        val.append((case, [(i.id, i.score) for i in r["bm25"].items], [(i.id, i.score) for i in r["dense"].items]))
    grid = [round(w, 2) for w in np.arange(0.0, 1.01, 0.1)]
    val_ndcg = {}
    for w in grid:
        lists = [[i for i in weighted(b, d, w) if i not in c.exclude] for c, b, d in val]
        val_ndcg[w] = score(lists, [c for c, _, _ in val])[1]
    best_w = max(grid, key=lambda w: (val_ndcg[w], -abs(w - 0.5)))

    t0 = time.perf_counter()
    lists = await run_cases(runtime, test_cases)
    per_query_ms = (time.perf_counter() - t0) / len(test_cases) * 1e3
    rows = {m: score(lists[m], test_cases) for m in METHODS}

    # the validation pick, on the test queries (same retriever outputs)
    raw = []
    for case in test_cases:
        r = await lists_of(runtime, case.inputs)
        raw.append([i for i in weighted([(i.id, i.score) for i in r["bm25"].items],
                                        [(i.id, i.score) for i in r["dense"].items], best_w)
                    if i not in case.exclude])
    picked = score(raw, test_cases)
    spec_w = graph.nodes["hybrid"].config.weights
    await runtime.close()

    best_single = max(rows["bm25"][1], rows["dense"][1])
    lines = [
        "## BBC News retrieval: BM25, dense, hybrid (issue 3)",
        "",
        f"`LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/news_retrieval.py` "
        f"(Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, CPU only; "
        "protocol: PROTOCOLS.md, 200 head queries of 12 tokens, query article excluded, relevant = same topic)",
        "",
        "| method | P@10 | NDCG@10 |",
        "|---|---:|---:|",
    ]
    names = {"bm25": "BM25 (bm25s)", "dense": "dense (all-MiniLM-L6-v2, cosine)",
             "hybrid": f"hybrid, min-max weighted (bm25 {spec_w[0]}, dense {spec_w[1]}: the spec)",
             "rrf": "hybrid, reciprocal rank fusion (k = 60)"}
    for m in METHODS:
        lines.append(f"| {names[m]} | {rows[m][0]:.3f} | {rows[m][1]:.3f} |")
    lines.append(f"| hybrid, weighted with the validation pick (bm25 {best_w}) | {picked[0]:.3f} | {picked[1]:.3f} |")
    met = rows["hybrid"][1] >= best_single
    lines += [
        "",
        f"Goal: hybrid NDCG@10 >= max(BM25, dense) = {best_single:.3f}: "
        f"{'met' if met else 'NOT met'} ({rows['hybrid'][1]:.3f}).",
        f"Validation NDCG@10 by bm25 weight (200 other articles, default_rng(1)): "
        + ", ".join(f"{w}: {val_ndcg[w]:.3f}" for w in grid) + ".",
        f"One request (all four methods) takes {per_query_ms:.1f} ms; starting the spec (model, index, "
        f"t-SNE map) took {start_s:.1f} s.",
        f"Embedding cache: the first run embedded {cold_stats.get('embedded')} articles in {cold_s:.1f} s; "
        f"a second run on the same cache embedded {warm_stats.get('embedded')} "
        f"({warm_stats.get('cached')} from the cache) in {warm_s:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    text = asyncio.run(main_async(args))
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
