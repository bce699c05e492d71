"""News learning to rank (the book's tutorial 3.7): cosine order vs LambdaMART, through specs/news_ltr.yaml.

Protocol (../shared/PROTOCOLS.md, "News learning-to-rank"): the `bbc-news-profiles` readers (seeded, 1-2 planted
interest topics, 8 clicked articles each), an 80/20 user split; candidates are the top 50 articles by cosine to
the reader's clicked articles; labels come from the planted interests (no LLM judge configured). The model is
trained on the training users with `llmrec train`'s code (llmrec.training.atrain), then both orders are scored
on the held-out test users: Precision, Recall and NDCG at 1, 5 and 10 (binary gains, read articles excluded).

    LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/news_ltr.py [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path

import llmrec
from llmrec.eval.metrics import ndcg_at_k, precision_at_k, recall_at_k
from llmrec.training import atrain

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "news_ltr.yaml"
OUT = ROOT / "benchmarks" / "results" / "news_ltr.md"
KS = (1, 5, 10)
METRICS = {"P": precision_at_k, "R": recall_at_k, "NDCG": ndcg_at_k}


async def main(write: bool) -> int:
    graph = llmrec.validate(SPEC)
    rt = llmrec.Runtime(graph)
    started = time.perf_counter()
    await rt.start()  # loads the dataset and the embedder once; training reuses them
    reports = await atrain(graph, resources=rt.resources, force=False, log=lambda s: print(s, file=sys.stderr))
    trained = time.perf_counter() - started
    # a fresh runtime picks up the artifact just written
    rt2 = llmrec.Runtime(graph, resources=rt.resources)
    await rt2.start()
    dataset = rt.resources["news"]
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in ("cosine", "lambdamart")}
    for case in dataset.test_cases:
        out = (await rt2.run(case.inputs)).outputs
        for method, value in (("cosine", out["cosine"]), ("lambdamart", out["ranked"])):
            ranked = [c.id for c in value.items if c.id not in case.exclude]
            for name, fn in METRICS.items():
                for k in KS:
                    scores[method].setdefault(f"{name}@{k}", []).append(fn(ranked, case.relevant, k))
    mean = {m: {key: statistics.fmean(v) for key, v in s.items()} for m, s in scores.items()}
    r = reports[0]
    cols = [f"{n}@{k}" for n in METRICS for k in KS]
    lines = [
        "# News learning to rank: cosine vs LambdaMART (specs/news_ltr.yaml)",
        "",
        "Command: `LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/news_ltr.py --write`",
        "",
        f"Protocol: ../shared/PROTOCOLS.md \"News learning-to-rank\". bbc-news-profiles (seed 0): {len(dataset.train_cases)} "
        f"training users, {len(dataset.test_cases)} held-out test users; candidates = top 50 by cosine "
        "(all-MiniLM-L6-v2) to the reader's clicked articles, read ones excluded; labels = the planted interest "
        "topics (no LLM judge configured). Binary gains.",
        "",
        f"Training: {r.cases} cases, {r.rows} rows, validation NDCG@10 {r.metrics.get('ndcg@10', float('nan')):.4f} "
        f"(input order {r.metrics.get('input_order_ndcg@10', float('nan')):.4f}); artifact `{Path(r.folder).name}`; "
        f"load + train {trained:.1f}s.",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in ("cosine", "lambdamart"):
        lines.append(f"| {m} | " + " | ".join(f"{mean[m][c]:.4f}" for c in cols) + " |")
    gain = mean["lambdamart"]["NDCG@10"] - mean["cosine"]["NDCG@10"]
    lines += ["", f"NDCG@10 gain of LambdaMART over cosine on held-out users: {gain:+.4f} "
              f"(goal: >= +0.1; {'met' if gain >= 0.1 else 'NOT met'}).", "",
              f"Machine: {platform.machine()}, Python {platform.python_version()}, CPU only."]
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, encoding="utf-8")
    await rt.close()
    await rt2.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    sys.exit(asyncio.run(main(parser.parse_args().write)))
