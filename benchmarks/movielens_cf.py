"""MovieLens 100K, temporal per-user split (the book's tutorial 2.4, CF half): baselines vs llmrec's CF specs.

Protocol (../shared/PROTOCOLS.md): each user's last round(10%) ratings (at least one) are the test set; relevant =
test items rated >= 4 (all test items when none is); every item the user did not rate in training is a
candidate; P/R/NDCG at 5, 10, 20 averaged over all 943 users, coverage@10 = distinct items in the top-10 lists /
1,682, and the Shannon entropy (bits) of how often each item appears across all top-10 lists.

Hyper-parameters are never picked on the test users' answers: a validation split is carved from the training
interactions the same temporal way (each user's last 10% of *training* ratings), every grid point is fitted on
the rest and scored by validation NDCG@10, and the pick is refitted on the whole training set.

Rows: popularity (training rating counts), item-kNN (cosine, binary matrix), PureSVD, EASE, recency-weighted
EASE (``retrieve.cf``'s ``decay: {half_life}``: EASE fitted on the binary matrix, each user's row weighted by
0.5 ** (age in events / half-life) when scored; lambda and half-life tuned together), implicit ALS, all
fitted with llmrec.nodes.retrieve.cf's functions and scored for all users at once (one matrix product, exclusions from
the eval cases), then specs/movielens_cf.yaml and specs/movielens_ease.yaml run through llmrec's Runtime, one
request per user, with the already-loaded dataset handed to the spec. The spec rows go through the node's own
request path (per-user scores, its own seen-item filter), so agreeing with the direct rows checks that path; the
recency row is checked the same way against a ``retrieve.cf`` node with its ``decay`` config.

Recency-weighted EASE vs EASE: the NDCG@10 difference with a paired bootstrap 95% interval (PROTOCOLS.md: 1,000
resamples of the 943 users with numpy default_rng(0), the same resampled users for both rows; percentile
interval).

    LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/movielens_cf.py [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.api import validate
from llmrec.data import Dataset, EvalCase, Interactions, split_interactions
from llmrec.data.datasets import load_dataset
from llmrec.metrics import ndcg_at_k, precision_at_k, recall_at_k
from llmrec.nodes.retrieve.cf import CF, DecayConfig, _matrix, _Matrix, fit_als, fit_ease, fit_item_knn, fit_svd, top_k
from llmrec.runtime.executor import Runtime

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "movielens_cf.md"
SPECS = {"spec: movielens_cf.yaml (PureSVD)": ROOT / "specs" / "movielens_cf.yaml",
         "spec: movielens_ease.yaml (EASE)": ROOT / "specs" / "movielens_ease.yaml"}
KS = (5, 10, 20)
N_ITEMS = 1682

RECENCY = "EASE + recency"
BOOTSTRAP_RESAMPLES = 1000

GRIDS: dict[str, list[dict[str, Any]]] = {
    "item-kNN": [{"neighbours": n} for n in (20, 50, 100, 200)],
    "PureSVD": [{"factors": f} for f in (10, 20, 32, 50, 64, 100)],
    "EASE": [{"regularization": lam} for lam in (50, 100, 200, 300, 500, 1000, 2000)],
    RECENCY: [{"regularization": lam, "half_life": h} for lam in (100, 300, 1000, 3000) for h in (2, 5, 10, 20, 50)],
    "ALS": [{"factors": 64, "regularization": lam, "alpha": 1.0} for lam in (1.0, 10.0, 50.0)],
}
ALS_ITERATIONS = 15
DECAY_PLACES = ("query", "fit", "both")
DECAY_PLACES_HALF_LIVES = (5, 10, 20, 50, 200)
DECAY_PLACES_LAMBDA = 100.0  # specs/movielens_ease.yaml


# -- direct baselines: a score matrix for every user at once ------------------------------------------------------


def popularity_scores(matrix: _Matrix, _: dict[str, Any]) -> np.ndarray:
    counts = np.asarray((matrix.X > 0).sum(axis=0), dtype=np.float64).ravel()
    return np.broadcast_to(counts, matrix.X.shape)


def knn_scores(matrix: _Matrix, p: dict[str, Any]) -> np.ndarray:
    return np.asarray((matrix.X @ fit_item_knn(matrix, p["neighbours"])).todense())


def svd_scores(matrix: _Matrix, p: dict[str, Any]) -> np.ndarray:
    users, items = fit_svd(matrix, p["factors"], seed=0)
    return users @ items.T


def ease_scores(matrix: _Matrix, p: dict[str, Any]) -> np.ndarray:
    return np.asarray(matrix.X @ fit_ease(matrix, p["regularization"]))


def ease_recency_scores(matrix: _Matrix, p: dict[str, Any]) -> np.ndarray:
    """EASE fitted on the binary matrix; the scored rows weighted by recency (decay apply_to: query)."""
    rows = matrix.decayed(DecayConfig(half_life=p["half_life"]))
    return np.asarray(rows @ fit_ease(matrix, p["regularization"]))


def als_scores(matrix: _Matrix, p: dict[str, Any]) -> np.ndarray:
    users, items = fit_als(matrix, p["factors"], p["regularization"], p["alpha"], ALS_ITERATIONS, seed=0)
    return users @ items.T


SCORERS: dict[str, Callable[[_Matrix, dict[str, Any]], np.ndarray]] = {
    "popularity": popularity_scores, "item-kNN": knn_scores, "PureSVD": svd_scores, "EASE": ease_scores,
    RECENCY: ease_recency_scores, "ALS": als_scores,
}


def rank_all(matrix: _Matrix, scores: np.ndarray, cases: Sequence[EvalCase], n: int) -> list[list[str]]:
    """Top ``n`` ids per case, the case's ``exclude`` ids left out (ties: lower item index first)."""
    index = {item_id: j for j, item_id in enumerate(matrix.items)}
    lists = []
    for case in cases:
        row = matrix.users[case.inputs["user_id"]]
        blocked = np.fromiter((index[i] for i in case.exclude if i in index), dtype=np.int64)
        lists.append([matrix.items[j] for j in top_k(scores[row], n, blocked)])
    return lists


# -- metrics -------------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    config: str
    lists: list[list[str]]
    train_s: float
    score_s: float
    metrics: dict[str, float] = field(default_factory=dict)


def measure(row: Row, cases: Sequence[EvalCase]) -> Row:
    for k in KS:
        row.metrics[f"P@{k}"] = float(np.mean([precision_at_k(r, c.relevant, k) for r, c in zip(row.lists, cases)]))
        row.metrics[f"R@{k}"] = float(np.mean([recall_at_k(r, c.relevant, k) for r, c in zip(row.lists, cases)]))
        row.metrics[f"NDCG@{k}"] = float(np.mean([ndcg_at_k(r, c.relevant, k) for r, c in zip(row.lists, cases)]))
    top10 = Counter(i for r in row.lists for i in r[:10])
    row.metrics["Cov@10"] = len(top10) / N_ITEMS
    total = sum(top10.values())
    row.metrics["Entropy@10"] = -sum(c / total * math.log2(c / total) for c in top10.values()) if total else 0.0
    return row


def ndcg10(lists: list[list[str]], cases: Sequence[EvalCase]) -> float:
    return float(np.mean([ndcg_at_k(r, c.relevant, 10) for r, c in zip(lists, cases)]))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` (per-user values of two rows) and its 95% percentile interval over ``resamples``
    resamples of the users with replacement (numpy default_rng(seed)), the same users for both rows."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


# -- tuning on a validation split carved from training ---------------------------------------------------------


def tune(train: Interactions, log: list[str]) -> dict[str, dict[str, Any]]:
    fit_part, _, val_cases, _ = split_interactions(train, "temporal")
    matrix = _matrix(fit_part, "binary")
    log.append(f"Validation split: {len(fit_part):,} fitting ratings, {len(val_cases)} validation users "
               f"(each user's last 10% of training ratings).\n")
    log.append("| method | setting | validation NDCG@10 |\n|---|---|---:|")
    picks: dict[str, dict[str, Any]] = {}
    for name, grid in GRIDS.items():
        best = (-1.0, grid[0])
        for params in grid:
            score = ndcg10(rank_all(matrix, SCORERS[name](matrix, params), val_cases, 10), val_cases)
            log.append(f"| {name} | {_fmt(params)} | {score:.4f} |")
            print(f"  validation {name} {_fmt(params)}: NDCG@10 {score:.4f}", flush=True)
            if score > best[0]:
                best = (score, params)
        picks[name] = best[1]
    log.append("")
    log.append("Picks: " + "; ".join(f"{n} {_fmt(p)}" for n, p in picks.items()) + ".")
    plain = ease_scores(matrix, {"regularization": DECAY_PLACES_LAMBDA})
    log += ["", f"Where to apply the decay (`retrieve.cf` nodes, EASE with the spec's lambda "
            f"{DECAY_PLACES_LAMBDA:g}; validation NDCG@10; no decay: "
            f"{ndcg10(rank_all(matrix, plain, val_cases, 10), val_cases):.4f}). 'query' (the default) weights the "
            "scored row only, 'fit' fits EASE on weighted cells and scores plain rows, 'both' does both:", "",
            "| half_life | " + " | ".join(f"apply_to: {m}" for m in DECAY_PLACES) + " |",
            "|---:|" + "---:|" * len(DECAY_PLACES)]
    for half_life in DECAY_PLACES_HALF_LIVES:
        cells = []
        for place in DECAY_PLACES:
            node = CF(CF.Config(algorithm="ease", regularization=DECAY_PLACES_LAMBDA,
                                decay={"half_life": half_life, "apply_to": place}))
            model = node.model_for(fit_part)
            scores = np.asarray(model.query @ model.weights)  # type: ignore[attr-defined]
            cells.append(f"{ndcg10(rank_all(model.matrix, scores, val_cases, 10), val_cases):.4f}")
        log.append(f"| {half_life:g} | " + " | ".join(cells) + " |")
        print(f"  validation decay half_life={half_life:g}: " + ", ".join(cells), flush=True)
    return picks


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


# -- the specs through the Runtime -------------------------------------------------------------------------------


async def run_spec(name: str, path: Path, dataset: Dataset) -> tuple[Row, dict[str, Any]]:
    graph = validate(path)
    node_config = next(n.config for n in graph.nodes.values() if n.cls.name == "retrieve.cf")
    runtime = Runtime(graph, resources={"ml": dataset})
    started = time.perf_counter()
    await runtime.start()  # warm(): the model is fitted here, once
    train_s = time.perf_counter() - started
    lists = []
    started = time.perf_counter()
    for case in dataset.test_cases:
        result = await runtime.run({"user_id": case.inputs["user_id"], "k": max(KS)})
        lists.append([item.id for item in result.outputs["recommendations"].items if item.id not in case.exclude])
    score_s = time.perf_counter() - started
    await runtime.close()
    config = node_config.model_dump(include={"algorithm", "factors", "regularization", "alpha", "iterations",
                                             "decay"})
    return Row(name, _fmt({k: v for k, v in config.items() if k in node_config.model_fields_set}), lists, train_s,
               score_s), config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    if not os.environ.get("LLMREC_DATA_DIR"):
        print("set LLMREC_DATA_DIR to the folder holding ml-100k/ (e.g. ../shared/data)", file=sys.stderr)
        return 2
    wall = time.perf_counter()
    dataset = load_dataset("movielens-100k", split="temporal")
    cases = dataset.test_cases
    print(f"{dataset!r}", flush=True)
    assert len(cases) == 943 and len(dataset.catalog) == N_ITEMS

    notes: list[str] = []
    picks = tune(dataset.train, notes)

    rows: list[Row] = []
    matrix = None
    for name in SCORERS:
        params = picks.get(name, {})
        started = time.perf_counter()
        matrix = _matrix(dataset.train, "binary")
        scores = SCORERS[name](matrix, params)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        lists = rank_all(matrix, scores, cases, max(KS))
        rows.append(measure(Row(name, _fmt(params), lists, train_s, time.perf_counter() - started), cases))
        print(f"  {name}: NDCG@10 {rows[-1].metrics['NDCG@10']:.4f}", flush=True)

    spec_configs = {}
    for name, path in SPECS.items():
        row, config = asyncio.run(run_spec(name, path, dataset))
        rows.append(measure(row, cases))
        spec_configs[name] = config
        print(f"  {name}: NDCG@10 {row.metrics['NDCG@10']:.4f}", flush=True)

    by_name = {r.name: r for r in rows}
    recency = by_name[RECENCY]
    per_user = {name: np.array([ndcg_at_k(r, c.relevant, 10) for r, c in zip(by_name[name].lists, cases)])
                for name in (RECENCY, "EASE")}
    diff, low, high = paired_bootstrap(per_user[RECENCY], per_user["EASE"])
    wins = int((per_user[RECENCY] > per_user["EASE"]).sum())
    losses = int((per_user[RECENCY] < per_user["EASE"]).sum())
    comparison = [
        f"- NDCG@10 {recency.metrics['NDCG@10']:.4f} vs {by_name['EASE'].metrics['NDCG@10']:.4f}: difference "
        f"{diff:+.4f}, paired bootstrap 95% interval [{low:+.4f}, {high:+.4f}] ({BOOTSTRAP_RESAMPLES:,} resamples of "
        f"the {len(cases)} users, default_rng(0)); relative {diff / by_name['EASE'].metrics['NDCG@10']:+.1%}.",
        f"- Per user: higher for {wins}, lower for {losses}, equal for {len(cases) - wins - losses}.",
    ]
    node_row = node_recency_lists(picks[RECENCY], dataset)
    same = sum(a[:10] == b[:10] for a, b in zip(node_row, recency.lists))
    pop = by_name["popularity"].metrics["NDCG@10"]
    ease = by_name["EASE"].metrics["NDCG@10"]
    best_spec = max((r for r in rows if r.name.startswith("spec:")), key=lambda r: r.metrics["NDCG@10"])
    checks = []
    pairs = (("spec: movielens_cf.yaml (PureSVD)", "PureSVD"), ("spec: movielens_ease.yaml (EASE)", "EASE"))
    for spec_name, direct in pairs:
        s, d = by_name[spec_name], by_name[direct]
        same_lists = sum(a[:10] == b[:10] for a, b in zip(s.lists, d.lists))
        same_config = d.config == s.config.replace("algorithm=svd, ", "").replace("algorithm=ease, ", "")
        largest = max(abs(s.metrics[m] - d.metrics[m]) for m in d.metrics)
        checks.append(f"- {spec_name} vs direct {direct}: config {'the same' if same_config else 'DIFFERENT'} "
                      f"({s.config} / {d.config}); identical top-10 lists for {same_lists}/{len(cases)} users; "
                      f"largest metric difference {largest:.2g}.")
    checks.append(f"- retrieve.cf node (algorithm=ease, regularization={picks[RECENCY]['regularization']:g}, decay: "
                  f"{{half_life: {picks[RECENCY]['half_life']:g}}}) vs direct {RECENCY}: identical top-10 lists for "
                  f"{same}/{len(cases)} users.")
    goals = [
        f"- Best CF spec ({best_spec.name}) NDCG@10 {best_spec.metrics['NDCG@10']:.4f} vs direct EASE {ease:.4f}: "
        f"{'met' if best_spec.metrics['NDCG@10'] >= ease - 1e-12 else 'NOT met'}.",
        f"- Best CF spec vs popularity NDCG@10 {pop:.4f}: x{best_spec.metrics['NDCG@10'] / pop:.2f} "
        f"({'met' if best_spec.metrics['NDCG@10'] >= 1.5 * pop else 'NOT met'}; goal >= 1.5x).",
    ]
    elapsed = time.perf_counter() - wall
    text = report(rows, notes, checks, goals, comparison, elapsed)
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


def node_recency_lists(params: dict[str, Any], dataset: Dataset) -> list[list[str]]:
    """Top-20 lists of a ``retrieve.cf`` node with ``decay`` (its own request path), one user at a time."""
    node = CF(CF.Config(algorithm="ease", regularization=params["regularization"],
                        decay={"half_life": params["half_life"]}))
    model = node.model_for(dataset.train)
    return [[i for i in node.recommend(model, c.inputs["user_id"], max(KS)).ids if i not in c.exclude]
            for c in dataset.test_cases]


def report(rows: list[Row], notes: list[str], checks: list[str], goals: list[str], comparison: list[str],
           elapsed: float) -> str:
    cols = [f"{m}@{k}" for k in KS for m in ("P", "R", "NDCG")] + ["Cov@10", "Entropy@10"]
    lines = [
        "# MovieLens 100K, temporal per-user split: collaborative filtering",
        "",
        "Reproduce (from the repository root; about "
        f"{math.ceil(elapsed / 10) * 10:.0f} s on this machine):",
        "",
        "    LLMREC_DATA_DIR=/path/to/data .venv/bin/python benchmarks/movielens_cf.py --write",
        "",
        "Protocol: ../shared/PROTOCOLS.md \"MovieLens 100K, temporal per-user split\", exactly: each user's last "
        "round(10%) ratings by (timestamp, item id), at least one, are held out; relevant = held-out items rated "
        ">= 4, or all held-out items when none is; full ranking over every item the user did not rate in training; "
        "metrics averaged over all 943 users. Cov@10 = distinct items in the top-10 lists / 1,682; Entropy@10 = "
        "Shannon entropy (bits) of item frequencies across all top-10 lists (log2(1682) = 10.72 is the maximum). "
        "Train s = fitting on the training ratings (the spec rows: Runtime.start(), where the node's warm() fits); "
        "score s = top-20 lists for all 943 users (the spec rows: 943 Runtime.run requests, one at a time). "
        "All matrices are binary (rated = 1); the EASE + recency row scores each user's row weighted by "
        "0.5 ** (age / half_life), the age counted in the user's later training ratings (ratings in the same second "
        "share an age), the model fitted on the unweighted matrix (`retrieve.cf` with `decay: {half_life: ...}`, "
        "apply_to: query).",
        "",
        "Same-second ratings are ordered by the item id as a number (PROTOCOLS.md: 2 before 1000). Versions of this "
        "file before that fix ordered them by the id's text, which moved 212 users' held-out ratings (169 users' "
        "relevant sets), and every NDCG@10 there was 3-9% higher than the protocol's (benchmarks/RESULTS.md).",
        "",
        "| method | setting | " + " | ".join(cols) + " | train s | score s |",
        "|---|---|" + "---:|" * (len(cols) + 2),
    ]
    for r in rows:
        cells = [f"{r.metrics[c]:.4f}" if c != "Entropy@10" else f"{r.metrics[c]:.2f}" for c in cols]
        lines.append(f"| {r.name} | {r.config} | " + " | ".join(cells) + f" | {r.train_s:.2f} | {r.score_s:.2f} |")
    lines += ["", "## Goals", "", *goals, "", f"## {RECENCY} vs EASE", "", *comparison, "",
              "## Specs vs direct baselines", "",
              "The direct rows score every user with one matrix product and drop the eval case's `exclude` ids; the "
              "spec rows go through `retrieve.cf` one request at a time (its own seen-item filter, `k` from the "
              "request) inside the Runtime, with the loaded Dataset handed in as resource `ml`.", "", *checks,
              "", "## Tuning (validation split carved from training)", "", *notes, "",
              f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, Python "
              f"{platform.python_version()}, numpy {np.__version__}; wall time {elapsed:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
