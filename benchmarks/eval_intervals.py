"""How sure the book's comparisons are: `llmrec eval`'s 95% bootstrap intervals and paired tests on them.

MovieLens 100K (temporal split, 943 users; PROTOCOLS.md): specs/movielens_ease.yaml vs specs/movielens_cf.yaml
(PureSVD). BBC News head queries (200 queries): the four retrievers of specs/news_retrieval.yaml (BM25, dense,
hybrid, RRF), each read as the spec's answer (temporary copies of the spec under runs/ whose `results` output is
that retriever's list; the t-SNE map left out). Reported: each metric with its interval, and every pair's paired
difference, interval, randomization p and Holm-adjusted p (llmrec/eval/stats.py).

    LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_intervals.py [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_md import write_section  # noqa: E402

from llmrec.eval.report import EvalReport  # noqa: E402
from llmrec.eval.runner import evaluate  # noqa: E402

HEADING = "## Intervals and paired tests (benchmarks/eval_intervals.py)"
RETRIEVERS = ("bm25", "dense", "hybrid", "rrf")


def news_specs(folder: Path) -> list[Path]:
    data = yaml.safe_load((ROOT / "specs" / "news_retrieval.yaml").read_text(encoding="utf-8"))
    data["nodes"].pop("embedding_map")
    out = []
    for name in RETRIEVERS:
        spec = {**data, "name": f"news-{name}", "nodes": dict(data["nodes"]), "outputs": {"results": f"${{{name}}}"}}
        spec["nodes"].pop("results")
        path = folder / f"news_{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        out.append(path)
    return out


def section(title: str, report: EvalReport, metrics: tuple[str, ...]) -> list[str]:
    lines = [f"**{title}** ({report.describe()})", "", "| spec | " + " | ".join(metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for label, r in zip(report.labels(), report.results):
        cells = [f"{r.metrics[m]:.4f} [{r.intervals[m][0]:.4f}, {r.intervals[m][1]:.4f}]" for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| first - second | metric | difference | 95% CI | p | Holm p | significant |",
              "|---|---|---:|---:|---:|---:|---|"]
    for c in report.comparisons():
        if c.metric in metrics:
            lines.append(f"| {c.a} - {c.b} | {c.metric} | {c.diff:+.4f} | {c.lo:+.4f} to {c.hi:+.4f} | {c.p:.4f} | "
                         f"{c.p_adjusted:.4f} | {'yes' if c.significant else 'no'} |")
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    folder = ROOT / "runs" / "bench_eval_intervals"
    folder.mkdir(parents=True, exist_ok=True)
    ml = evaluate([ROOT / "specs" / "movielens_ease.yaml", ROOT / "specs" / "movielens_cf.yaml"], ks=(10, 20),
                  progress=False, variants=False)
    news = evaluate(news_specs(folder), ks=(10,), progress=False, variants=False)
    zeros = ml.results[0].protocol["zero_cases"]["ndcg@10"]
    lines = [HEADING, "", "`LLMREC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python "
             "benchmarks/eval_intervals.py --write`: 95% percentile bootstrap over cases (1,000 resamples, seed 0), "
             "paired randomization test (10,000 sign flips, seed 0), Holm over each metric's pairs; significant = "
             "Holm p < 0.05 and the interval excludes 0.", ""]
    lines += section("MovieLens 100K", ml, ("ndcg@10", "precision@10", "recall@10", "ndcg@20"))
    lines += [f"Protocol: {ml.results[0].protocol['relevance_fallback_cases']} of 943 users used the fallback "
              f"relevance rule; {zeros} of 943 score 0 on EASE's NDCG@10; "
              f"{ml.results[0].protocol['items_without_training_interactions']} items have no training "
              "interactions.", ""]
    lines += section("BBC News head queries", news, ("ndcg@10", "precision@10"))
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
