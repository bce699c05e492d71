"""How fast `llmrec eval` scores a spec: users/second over all MovieLens 100K test users, against a handwritten loop.

Both sides run specs/movielens_cf.yaml (PureSVD) on the same, already loaded temporal split and compute the same
metrics (P/R/NDCG/MAP/MRR/HitRate at 5, 10, 20 per case; coverage, entropy, ILD, novelty, popularity bias over all
answers), in the same process:

- eval: :func:`llmrec.eval.runner.evaluate` as ``llmrec eval`` calls it: concurrent requests, traces read for LLM
  metrics, grounding checks, every case appended to a JSONL file (resume), the report built;
- loop: the same Runtime (the same node functions: the SVD fitted once at start, one request per user), run one
  request at a time, answer ids read, excluded ids dropped, the metric functions called directly.

Both include the runtime's start (the SVD fit). The ratio loop/eval is the cost of the evaluation machinery.

    LLMREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/eval_speed.py [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "movielens_cf.yaml"
OUT = ROOT / "benchmarks" / "results" / "eval_speed.md"
KS = (5, 10, 20)


async def handwritten(graph: object, ds: object) -> tuple[float, dict[str, float]]:
    """Seconds for the plain loop, and its metrics."""
    from llmrec.metrics import LIST_METRICS, RANKING_METRICS, ListContext
    from llmrec.eval.runner import answer_ids, dataset_resources
    from llmrec.runtime.executor import Runtime

    t0 = time.perf_counter()
    runtime = Runtime(graph, resources={dataset_resources(graph)[0]: ds})  # type: ignore[arg-type]
    await runtime.start()
    sums: dict[str, float] = {}
    lists = []
    cases = ds.test_cases  # type: ignore[attr-defined]
    for case in cases:
        result = await runtime.run({"user_id": case.inputs["user_id"], "k": max(KS)})
        ids = [i for i in dict.fromkeys(answer_ids(result.outputs["recommendations"]) or []) if i not in case.exclude]
        lists.append(ids)
        for name, fn in RANKING_METRICS.items():
            for k in KS:
                sums[f"{name}@{k}"] = sums.get(f"{name}@{k}", 0.0) + fn(ids, case.relevant, k)
    scores = {key: v / len(cases) for key, v in sums.items()}
    context = ListContext(catalog=ds.catalog, train=ds.train)  # type: ignore[attr-defined]
    for name, fn in LIST_METRICS.items():
        for k in KS:
            scores[f"{name}@{k}"] = fn(lists, k, context)
    await runtime.close()
    return time.perf_counter() - t0, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side; the best is kept")
    args = parser.parse_args()
    root = os.environ.get("LLMREC_DATA_DIR")
    if not root or not (Path(root) / "ml-100k" / "u.data").is_file():
        print("MovieLens 100K not found: set LLMREC_DATA_DIR to the folder holding ml-100k/", file=sys.stderr)
        return 2
    from llmrec.api import validate
    from llmrec.data.datasets import load_dataset
    from llmrec.eval.runner import evaluate

    ds = load_dataset("movielens-100k", split="temporal")
    graph = validate(SPEC)
    n = len(ds.test_cases)
    evals, loops = [], []
    eval_metrics: dict[str, float] = {}
    loop_metrics: dict[str, float] = {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            report = evaluate([graph], ds, ks=KS, progress=False, out=out)
            evals.append(time.perf_counter() - t0)
        eval_metrics = report.results[0].metrics
        seconds, loop_metrics = asyncio.run(handwritten(graph, ds))
        loops.append(seconds)
    diff = max(abs(eval_metrics[key] - loop_metrics[key]) for key in loop_metrics)
    e, lp = min(evals), min(loops)
    rows = [
        ("llmrec eval (evaluate(), concurrency 8, JSONL store)", e, n / e),
        ("handwritten loop (same Runtime + metric functions)", lp, n / lp),
    ]
    lines = [
        "# Evaluation speed: `llmrec eval` vs a handwritten loop",
        "",
        f"specs/movielens_cf.yaml (PureSVD, 64 factors) over all {n} test users of MovieLens 100K (temporal split), "
        f"k = 5, 10, 20, every registered metric; best of {args.repeats} runs each, same process, the SVD fit at "
        "start included in both.",
        "",
        "| runner | seconds | users/s |",
        "|---|---:|---:|",
        *[f"| {name} | {s:.2f} | {u:.0f} |" for name, s, u in rows],
        "",
        f"Ratio eval / handwritten loop (users/s): **{lp / e:.2f}**. Largest metric difference between the two: "
        f"{diff:.1e} (ndcg@10 = {eval_metrics['ndcg@10']:.4f}).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        "Reproduce: `LLMREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/eval_speed.py --write`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        OUT.write_text(text, encoding="utf-8")
        print(f"written: {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
