"""News learning to rank (the book's tutorial 3.7): cosine order vs LambdaMART, through specs/news_ltr.yaml.

Protocol (../shared/PROTOCOLS.md, "News learning-to-rank"): the `bbc-news-profiles` readers (seed 0, 1,000 users,
2 planted interests, 8 clicked articles each), an 80/20 user split; candidates are the top 50 articles by cosine
to the reader's clicked articles; labels come from the planted interests (no LLM judge configured). Two
labellings are reported:

- ``subtopic`` (the spec as written): interests are sub-topics of two different topics (TF-IDF + k-means
  clusters, 4 per topic), relevant = unread articles of those sub-topics;
- ``topic`` (the first labelling, dataset option ``granularity: topic``): 1-2 whole topics, relevant = every
  unread article of them. Nearly all top-50 cosine candidates are relevant, so there is little left to learn.

For each, the model is trained on the training users with `llmrec train`'s code (llmrec.training.atrain), then
both orders are scored on the held-out test users: Precision, Recall and NDCG at 1, 5 and 10 (binary gains, read
articles excluded), with the paired 95% interval of the NDCG@10 gain. The ``topic`` variant is the same spec
with the dataset option set and its own model folder (runs/news_ltr/models-topic), so the spec's artifact stays
the ``subtopic`` one.

    LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/news_ltr.py [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import llmrec
from llmrec.metrics import ndcg_at_k, precision_at_k, recall_at_k
from llmrec.training import atrain

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "news_ltr.yaml"
OUT = ROOT / "benchmarks" / "results" / "news_ltr.md"
KS = (1, 5, 10)
METRICS = {"P": precision_at_k, "R": recall_at_k, "NDCG": ndcg_at_k}
GOAL = 0.1
COLS = [f"{n}@{k}" for n in METRICS for k in KS]


def variant_spec(folder: Path, granularity: str) -> Path:
    """The spec itself for ``subtopic``; for ``topic`` a copy with the dataset option and its own model folder."""
    if granularity == "subtopic":
        return SPEC
    data = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    news = data["resources"]["news"]["config"]
    news["options"] = {**news.get("options", {}), "granularity": granularity}
    ranked = data["nodes"]["ranked"]["config"]
    ranked["model_path"] = str((SPEC.parent / ranked["model_path"]).resolve().with_name(f"models-{granularity}"))
    path = folder / f"news_ltr_{granularity}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def evaluate(spec: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Train the spec's ranker on its training users, then score cosine and LambdaMART on its test users."""
    graph = llmrec.validate(spec)
    started = time.perf_counter()
    # the dataset (and the embedder, the first time) load once; training and the runtime reuse them
    for name in ("news", "minilm"):
        if name not in shared or name == "news":
            res = graph.resources[name]
            shared[name] = await res.cls(res.config).load()
    loaded = {"news": shared["news"], "minilm": shared["minilm"]}
    reports = await atrain(graph, resources=loaded, force=False, log=lambda s: print(s, file=sys.stderr))
    trained = time.perf_counter() - started
    rt = llmrec.Runtime(graph, resources=loaded)  # starts with the artifact just written
    await rt.start()
    dataset = loaded["news"]
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in ("cosine", "lambdamart")}
    for case in dataset.test_cases:
        out = (await rt.run(case.inputs)).outputs
        for method, value in (("cosine", out["cosine"]), ("lambdamart", out["ranked"])):
            ranked = [c.id for c in value.items if c.id not in case.exclude]
            for name, fn in METRICS.items():
                for k in KS:
                    scores[method].setdefault(f"{name}@{k}", []).append(fn(ranked, case.relevant, k))
    await rt.close()
    gains = [b - a for a, b in zip(scores["cosine"]["NDCG@10"], scores["lambdamart"]["NDCG@10"])]
    half = 1.96 * statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else math.nan
    relevant = [len(c.relevant) for c in dataset.test_cases]
    candidates_relevant = statistics.fmean(scores["cosine"]["P@10"])
    return {
        "dataset": dataset, "report": reports[0], "seconds": trained, "gain": statistics.fmean(gains), "half": half,
        "mean": {m: {key: statistics.fmean(v) for key, v in s.items()} for m, s in scores.items()},
        "relevant": statistics.fmean(relevant), "p10": candidates_relevant,
    }


async def main(write: bool) -> int:
    started = time.perf_counter()
    shared: dict[str, Any] = {}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for granularity in ("subtopic", "topic"):
            results[granularity] = await evaluate(variant_spec(Path(tmp), granularity), shared)
    total = time.perf_counter() - started
    sub = results["subtopic"]
    ds = sub["dataset"]
    lines = [
        "# News learning to rank: cosine vs LambdaMART (specs/news_ltr.yaml)",
        "",
        "Command: `LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/news_ltr.py --write`",
        "",
        f"Protocol: ../shared/PROTOCOLS.md \"News learning-to-rank\". bbc-news-profiles (seed 0): "
        f"{len(ds.train_cases)} training users, {len(ds.test_cases)} held-out test users; candidates = top 50 by "
        "cosine (all-MiniLM-L6-v2) to the mean of the reader's 8 clicked articles, read ones excluded; labels = the "
        "planted interests (no LLM judge configured); binary gains. LambdaMART is trained by `llmrec train`'s code "
        "(llmrec.training.atrain) on the training users, with the base features plus the embedding features "
        "(cosine to each read article: max, second, mean, close count; nearest read article's support; "
        "topic-centroid cosines); the `subtopic` item attribute (the label) is not a feature.",
        "",
        "- **subtopic** (the spec's default): 2 interests per reader, sub-topics of two different topics "
        "(TF-IDF + LSA + k-means, 4 per topic, e.g. \"sport: chelsea/club/league\"); relevant = unread articles "
        "of them.",
        "- **topic** (the first labelling, option `granularity: topic`): 1-2 whole topics per reader; relevant = "
        "every unread article of them.",
        "",
    ]
    for granularity, r in results.items():
        rep, mean = r["report"], r["mean"]
        lines += [
            f"## {granularity}",
            "",
            f"Relevant articles per test reader: {r['relevant']:.0f} on average. Training: {rep.cases} cases, "
            f"{rep.rows} rows, validation NDCG@10 {rep.metrics.get('ndcg@10', float('nan')):.4f} (input order "
            f"{rep.metrics.get('input_order_ndcg@10', float('nan')):.4f}); artifact `{Path(rep.folder).name}`; "
            f"load + train {r['seconds']:.1f}s.",
            "",
            "| method | " + " | ".join(COLS) + " |",
            "|---|" + "---|" * len(COLS),
        ]
        for m in ("cosine", "lambdamart"):
            lines.append(f"| {m} | " + " | ".join(f"{mean[m][c]:.4f}" for c in COLS) + " |")
        gain = r["gain"]
        lines += ["", f"NDCG@10 gain of LambdaMART over cosine on the held-out users: {gain:+.4f} "
                  f"(paired 95% interval ±{r['half']:.4f}); goal >= +{GOAL}: "
                  f"**{'met' if gain >= GOAL else f'NOT met, short by {GOAL - gain:.4f}'}**.", ""]
    if sub["gain"] < GOAL:
        lines += [
            "Why the subtopic goal is missed: the labels are TF-IDF clusters while features come from MiniLM vectors, "
            "whose nearest neighbours follow those clusters only in part, so even a perfect ranker of these features "
            "cannot separate neighbouring sub-topics of one topic (e.g. two politics clusters); 8 clicks with 20% "
            "noise give ~3 articles per interest to locate it; and 40 test readers leave about ±0.05 of noise on the "
            "gain. The topic labelling cannot reach it at all: cosine is already near the ceiling.",
            "",
        ]
    lines += [f"Total time {total:.0f}s (embedding cache warm). Machine: {platform.machine()}, "
              f"Python {platform.python_version()}, CPU only."]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    sys.exit(asyncio.run(main(parser.parse_args().write)))
