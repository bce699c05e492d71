"""What ``llmrec eval`` produces: an :class:`EvalReport` (one :class:`SpecResult` per spec), as JSON or a table.

The table puts metrics in rows and specs in columns, so systems compare side by side; with two or more specs
the best value of each row is bold (the largest, or the smallest for latency, failures and metrics whose
lower values are better, such as ``popularity_bias``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: the order rows appear in; metrics not listed follow, sorted by name
METRIC_ORDER = (
    "precision", "recall", "ndcg", "map", "mrr", "hit_rate",
    "coverage", "entropy", "entropy_norm", "ild", "novelty", "popularity_bias",
)
MAX_FAILURE_MESSAGES = 5


@dataclass
class SpecResult:
    """One spec's scores over one dataset's test cases."""

    spec: str  # the spec's name
    path: str | None
    dataset: str
    split: str
    n_cases: int
    metrics: dict[str, float]  # "ndcg@10" -> mean over cases (list-level metrics: over all answers)
    latency_ms: dict[str, float]  # p50, p95, p99, mean, max
    failures: int = 0
    failure_messages: list[str] = field(default_factory=list)  # the first few, "case id: message"
    output: str | None = None  # the output the answer lists were read from
    wall_s: float = 0.0
    lower_is_better: frozenset[str] = frozenset()  # metric names (without @k) where smaller is better
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "path": self.path,
            "dataset": self.dataset,
            "split": self.split,
            "n_cases": self.n_cases,
            "output": self.output,
            "metrics": {name: _json_number(v) for name, v in self.metrics.items()},
            "latency_ms": {name: round(v, 3) for name, v in self.latency_ms.items()},
            "failures": {"count": self.failures, "first": list(self.failure_messages)},
            "wall_s": round(self.wall_s, 3),
            "warnings": list(self.warnings),
        }


@dataclass
class EvalReport:
    """Every spec's :class:`SpecResult`, in the order the specs were given."""

    results: list[SpecResult]
    ks: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "results": [r.to_dict() for r in self.results]}

    def metric_names(self) -> list[str]:
        """Every metric any spec reported, ordered by :data:`METRIC_ORDER`, then k."""
        names = {name for r in self.results for name in r.metrics}
        return sorted(names, key=_metric_sort_key)

    def labels(self) -> list[str]:
        """Column labels: spec names, with the file added where two specs share a name."""
        names = [r.spec for r in self.results]
        return [f"{r.spec} ({r.path})" if names.count(r.spec) > 1 and r.path else r.spec for r in self.results]

    def describe(self) -> str:
        """What was evaluated, in one line: datasets, splits, case counts and cutoffs."""
        datasets = sorted({f"{r.dataset} (split {r.split}, {r.n_cases} cases)" for r in self.results})
        return "; ".join(datasets) + f"; k = {', '.join(map(str, self.ks))}"

    def table(self, title: str | None = None) -> Any:
        """A rich Table: metrics as rows, specs as columns, the best value of each row bold."""
        from rich.table import Table

        results = self.results
        table = Table(title=title)
        table.add_column("metric", no_wrap=True)
        for label in self.labels():
            table.add_column(label, justify="right", no_wrap=True)
        bold = len(results) > 1

        def row(label: str, values: list[float | None], lower: bool, fmt: str) -> None:
            present = [v for v in values if v is not None and not math.isnan(v)]
            best = (min(present) if lower else max(present)) if present and bold else None
            cells = []
            for v in values:
                if v is None or math.isnan(v):
                    cells.append("-")
                    continue
                text = format(v, fmt)
                cells.append(f"[bold]{text}[/bold]" if best is not None and v == best else text)
            table.add_row(label, *cells)

        for name in self.metric_names():
            base = name.split("@", 1)[0]
            lower = any(base in r.lower_is_better for r in results)
            row(name, [r.metrics.get(name) for r in results], lower, ".4f")
        table.add_section()
        for q in ("p50", "p95", "p99"):
            row(f"latency {q} (ms)", [r.latency_ms.get(q) for r in results], True, ".2f")
        row("failures", [float(r.failures) for r in results], True, ".0f")
        return table

    def render(self, console: Any | None = None) -> None:
        """Print the table (and any failure messages and warnings) to ``console`` (stdout by default)."""
        from rich.console import Console

        console = console or Console()
        console.print(f"llmrec eval: {self.describe()}", markup=False, highlight=False)
        console.print(self.table())
        for r in self.results:
            for w in r.warnings:
                console.print(f"warning: {r.spec}: {w}", markup=False, highlight=False)
            if r.failures:
                console.print(f"{r.spec}: {r.failures} of {r.n_cases} cases failed (scored as empty answers); "
                              "first errors:", markup=False, highlight=False)
                for m in r.failure_messages:
                    console.print(f"  {m}", markup=False, highlight=False)


def _metric_sort_key(name: str) -> tuple[int, str, int]:
    base, _, k = name.partition("@")
    rank = METRIC_ORDER.index(base) if base in METRIC_ORDER else len(METRIC_ORDER)
    return rank, base, int(k) if k.isdigit() else 0


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 6)


__all__ = ["EvalReport", "METRIC_ORDER", "SpecResult"]
