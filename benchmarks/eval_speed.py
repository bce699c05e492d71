"""How fast `llmrec eval` scores a spec: users/second over all MovieLens 100K test users, against a handwritten loop.

Both sides run specs/movielens_cf.yaml (PureSVD) on the same, already loaded temporal split and compute the same
metrics (P/R/NDCG/MAP/MRR/HitRate at 5, 10, 20 per case; coverage, entropy, ILD, novelty, popularity bias over all
answers), in the same process:

- eval: :func:`llmrec.eval.runner.evaluate` as ``llmrec eval`` calls it: concurrent requests, traces read for LLM
  metrics, grounding checks, every case appended to a JSONL file (resume), the report built;
- loop: the same Runtime (the same node functions: the SVD fitted once at start, one request per user), run one
  request at a time, answer ids read, excluded ids dropped, the metric functions called directly.

Both include the runtime's start (the SVD fit). The ratio loop/eval is the cost of the evaluation machinery.
The two alternate over ``--rounds`` rounds (the order swapped every round, so that a burst of other work on the
machine falls on both); reported are the median and the spread (min-max) of users/s over the rounds and the CPU
time per user (``time.process_time``: every thread of this process, robust to other work on the cores).

    LLMREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/eval_speed.py [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
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


async def prediction(graph: object, ds: object, rounds: int) -> dict[str, list[float]]:
    """CPU seconds to answer every test user once the runtime has started (the SVD fitted), per round, for: one
    request after another (Runtime.run), all at once through the batch path (Runtime.run_many, as llmrec eval
    runs them), and the floor (the SVD's user x item product for all users, seen items blocked, top k per row:
    numpy alone, no answer objects)."""
    import numpy as np

    from llmrec.eval.runner import dataset_resources
    from llmrec.runtime.executor import Runtime

    runtime = Runtime(graph, resources={dataset_resources(graph)[0]: ds})  # type: ignore[arg-type]
    await runtime.start()
    requests = [{"user_id": case.inputs["user_id"], "k": max(KS)} for case in ds.test_cases]  # type: ignore
    cf = runtime.plans["cf"].instance
    model = cf.model_for(runtime.plans["cf"].static_kwargs["interactions"])  # type: ignore[attr-defined]
    rows = np.array([model.matrix.users[r["user_id"]] for r in requests])
    X = model.matrix.X

    def floor() -> None:
        scores = model.user_factors[rows] @ model.item_factors.T
        for i, row in enumerate(rows):
            scores[i, X.indices[X.indptr[row]:X.indptr[row + 1]]] = -np.inf
        top = np.argpartition(-scores, max(KS), axis=1)[:, :max(KS)]
        np.take_along_axis(scores, top, axis=1).argsort(axis=1)

    one = [await runtime.run(r) for r in requests]
    many = await runtime.run_many(requests)
    assert all(a.outputs == b.outputs for a, b in zip(one, many)), "batched answers differ from single ones"
    out: dict[str, list[float]] = {"single": [], "batched": [], "floor": []}
    order = list(out)
    for r in range(rounds):
        for side in (order if r % 2 == 0 else order[::-1]):
            c0 = time.process_time()
            if side == "single":
                for request in requests:
                    await runtime.run(request)
            elif side == "batched":
                await runtime.run_many(requests)
            else:
                floor()
            out[side].append(time.process_time() - c0)
    await runtime.close()
    return out


def _median_range(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    parser.add_argument("--rounds", "--repeats", type=int, default=5, dest="rounds",
                        help="rounds, each running both sides once (alternating which goes first)")
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
    wall: dict[str, list[float]] = {"eval": [], "loop": []}
    cpu: dict[str, list[float]] = {"eval": [], "loop": []}
    metrics: dict[str, dict[str, float]] = {}

    def run_eval() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as out:
            report = evaluate([graph], ds, ks=KS, progress=False, out=out)
        return report.results[0].metrics

    def run_loop() -> dict[str, float]:
        return asyncio.run(handwritten(graph, ds))[1]

    for r in range(args.rounds):
        for side in (("eval", "loop") if r % 2 == 0 else ("loop", "eval")):
            t0, c0 = time.perf_counter(), time.process_time()
            metrics[side] = run_eval() if side == "eval" else run_loop()
            wall[side].append(time.perf_counter() - t0)
            cpu[side].append(time.process_time() - c0)
            print(f"round {r + 1}/{args.rounds} {side}: {n / wall[side][-1]:.0f} users/s, "
                  f"{1000 * cpu[side][-1] / n:.2f} ms CPU/user", flush=True)
    predicted = asyncio.run(prediction(graph, ds, args.rounds))
    diff = max(abs(metrics["eval"][key] - metrics["loop"][key]) for key in metrics["loop"])
    speed = {side: [n / w for w in wall[side]] for side in wall}
    cpu_ms = {side: [1000 * c / n for c in cpu[side]] for side in cpu}
    ratio = statistics.median(speed["eval"]) / statistics.median(speed["loop"])
    per_round = [e / lp for e, lp in zip(speed["eval"], speed["loop"])]
    cpu_ratio = statistics.median(cpu_ms["eval"]) / statistics.median(cpu_ms["loop"])
    cpu_per_round = [e / lp for e, lp in zip(cpu_ms["eval"], cpu_ms["loop"])]
    names = {"eval": "llmrec eval (evaluate(), concurrency 8, JSONL store)",
             "loop": "handwritten loop (same Runtime + metric functions)"}
    command = ("LLMREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/eval_speed.py"
               + (f" --rounds {args.rounds}" if args.rounds != 5 else "") + " --write")
    lines = [
        "# Evaluation speed: `llmrec eval` vs a handwritten loop",
        "",
        f"`{command}`",
        "",
        f"specs/movielens_cf.yaml (PureSVD, 64 factors) over all {n} test users of MovieLens 100K (temporal split), "
        f"k = 5, 10, 20, every registered metric; {args.rounds} rounds, each running both sides once in the same "
        "process (which goes first alternates), the SVD fit at start included in both. Median over the rounds, "
        "spread (min-max) in brackets. CPU is `time.process_time()` (every thread of the process) per user; "
        "users/s is wall time and depends on what else runs on the machine (it is shared with other work).",
        "",
        "| runner | CPU ms / user | users/s | seconds |",
        "|---|---:|---:|---:|",
        *[f"| {names[side]} | {_median_range(cpu_ms[side], '.2f')} | {_median_range(speed[side], '.0f')} | "
          f"{_median_range(wall[side], '.2f')} |" for side in ("eval", "loop")],
        "",
        f"Ratio eval / handwritten loop: users/s **{ratio:.2f}** (per round {min(per_round):.2f}-"
        f"{max(per_round):.2f}); CPU per user **{cpu_ratio:.2f}** (per round {min(cpu_per_round):.2f}-"
        f"{max(cpu_per_round):.2f}). Largest metric difference between the two: {diff:.1e} "
        f"(ndcg@10 = {metrics['eval']['ndcg@10']:.4f}).",
        "",
        "## Prediction alone (the runtime started)",
        "",
        f"Every test user answered once (k = {max(KS)}), CPU time per round, median of {args.rounds} alternating "
        "rounds; the batched answers are checked identical to the single ones first.",
        "",
        "| how | users/s (CPU) | CPU ms / user | vs one by one | vs the floor |",
        "|---|---:|---:|---:|---:|",
        *[f"| {label} | {n / statistics.median(predicted[side]):.0f} | "
          f"{_median_range([1000 * c / n for c in predicted[side]], '.3f')} | "
          f"{statistics.median(predicted['single']) / statistics.median(predicted[side]):.2f}x | "
          f"{statistics.median(predicted['floor']) / statistics.median(predicted[side]):.3f}x |"
          for side, label in (("single", "one request after another (Runtime.run)"),
                              ("batched", "batched (Runtime.run_many, as llmrec eval runs them)"),
                              ("floor", "floor: one matrix product + top-k (numpy)"))],
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        OUT.write_text(text, encoding="utf-8")
        print(f"written: {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
