"""What ``llmrec eval`` produces: an :class:`EvalReport` (one :class:`SpecResult` per spec), as JSON or a table.

The table puts metrics in rows and specs in columns, so systems compare side by side; with two or more specs
the best value of each row is bold (the largest, or the smallest for latency, failures and metrics whose
lower values are better, such as ``popularity_bias``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
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
    variant: str | None = None
    label: str | None = None  # the column label: the spec name, or 'file.yaml[variant]'
    llm: dict[str, Any] = field(default_factory=dict)  # llm_metrics.summarize_llm
    grounding: dict[str, Any] = field(default_factory=dict)  # llm_metrics.summarize_grounding
    judge: dict[str, Any] = field(default_factory=dict)  # judge.summarize_judge
    reused: int = 0  # cases taken from an earlier, interrupted run
    store: str | None = None  # the JSONL file of per-case results
    latencies: list[float] = field(default_factory=list)  # per case, ms (plots; not in the JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "label": self.label or self.spec,
            "variant": self.variant,
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
            "llm": _json_clean(self.llm),
            "grounding": _json_clean(self.grounding),
            "judge": _json_clean(self.judge),
            "reused_cases": self.reused,
            "cases_file": self.store,
        }


@dataclass
class EvalReport:
    """Every spec's :class:`SpecResult`, in the order the specs were given."""

    results: list[SpecResult]
    ks: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        results = []
        for label, r in zip(self.labels(), self.results):
            results.append({**r.to_dict(), "label": label})
        return {"ks": list(self.ks), "results": results}

    def metric_names(self) -> list[str]:
        """Every metric any spec reported, ordered by :data:`METRIC_ORDER`, then k."""
        names = {name for r in self.results for name in r.metrics}
        return sorted(names, key=_metric_sort_key)

    def labels(self) -> list[str]:
        """Column labels: spec names (``file.yaml[variant]`` for variants), with the file added where two
        columns would share a label."""
        files = any(r.variant is not None for r in self.results)
        names = [Path(r.path).name if files and r.variant is None and r.path else (r.label or r.spec)
                 for r in self.results]
        return [f"{n} ({r.path})" if names.count(n) > 1 and r.path and r.variant is None else n
                for n, r in zip(names, self.results)]

    def rows(self) -> list[tuple[str, list[float | None], bool, str]]:
        """Every row of the comparison as (label, value per spec, lower is better, format): metrics, latency,
        failures, LLM usage, grounding and judge scores. None where a value does not apply (n/a)."""
        results = self.results
        out: list[tuple[str, list[float | None], bool, str]] = []
        for name in self.metric_names():
            base = name.split("@", 1)[0]
            lower = any(base in r.lower_is_better for r in results)
            out.append((name, [r.metrics.get(name) for r in results], lower, ".4f"))
        for q in ("p50", "p95", "p99"):
            out.append((f"latency {q} (ms)", [r.latency_ms.get(q) for r in results], True, ".2f"))
        out.append(("failures", [float(r.failures) for r in results], True, ".0f"))
        return out

    def llm_rows(self) -> list[tuple[str, list[float | None], bool, str]]:
        """LLM usage, grounding and judge rows; empty when no spec has LLM nodes, violations or a judge."""
        results = self.results
        out: list[tuple[str, list[float | None], bool, str]] = []

        def llm(key: str) -> list[float | None]:
            return [None if not r.llm.get("llm_nodes") else _num(r.llm.get(key)) for r in results]

        if any(r.llm.get("llm_nodes") for r in results):
            out += [("LLM calls", llm("calls"), True, ".0f"),
                    ("prompt tokens", llm("prompt_tokens"), True, ".0f"),
                    ("completion tokens", llm("completion_tokens"), True, ".0f"),
                    ("cost (USD)", llm("cost"), True, ".4f"),
                    ("cache hit rate", llm("cache_hit_rate"), False, ".3f")]
        if any(r.llm.get("fallback_requests") for r in results) or out:
            out.append(("fallback rate", [_num(r.llm.get("fallback_rate")) for r in results], True, ".3f"))
        if any(r.grounding.get("items") for r in results):
            for kind, text in (("hallucinated", "hallucinated"), ("duplicate", "duplicates"),
                               ("seen", "already seen")):
                out.append((f"{text} (rate)", [_num(r.grounding.get(f"{kind}_rate")) for r in results], True,
                            ".4f"))
        if any(r.judge.get("run") for r in results):
            criteria = list(dict.fromkeys(c for r in results for c in (r.judge.get("means") or {})))
            for c in criteria:
                out.append((f"judge {c}", [_num((r.judge.get("means") or {}).get(c)) for r in results], False,
                            ".2f"))
            out.append(("judge overall", [_num(r.judge.get("overall")) for r in results], False, ".2f"))
        return out

    def notes(self) -> list[str]:
        """One-line notes for every spec: warnings, failures, resumed cases, fallbacks by node, the judge."""
        lines = []
        reasons = {r.judge.get("reason") for r in self.results if r.judge and not r.judge.get("run")}
        single = len(reasons) == 1 and all(r.judge and not r.judge.get("run") for r in self.results)
        if single:
            lines.append(f"judge not run: {reasons.pop()}")
        for label, r in zip(self.labels(), self.results):
            for w in r.warnings:
                lines.append(f"warning: {label}: {w}")
            if r.failures:
                lines.append(f"{label}: {r.failures} of {r.n_cases} cases failed (scored as empty answers); "
                             "first errors: " + " | ".join(r.failure_messages))
            if r.reused:
                lines.append(f"{label}: {r.reused} of {r.n_cases} cases reused from an earlier run ({r.store})")
            by_node = r.llm.get("fallbacks_by_node") or {}
            if by_node:
                lines.append(f"{label}: fallbacks by node: "
                             + ", ".join(f"{n} {c}" for n, c in by_node.items()))
            if r.judge and not r.judge.get("run") and not single:
                lines.append(f"{label}: judge not run: {r.judge.get('reason')}")
            elif r.judge.get("failed"):
                lines.append(f"{label}: the judge failed on {r.judge['failed']} cases: {r.judge.get('first_error')}")
        return lines

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
        from rich.markup import escape

        for label in self.labels():
            table.add_column(escape(label), justify="right", no_wrap=True)
        bold = len(results) > 1

        def row(label: str, values: list[float | None], lower: bool, fmt: str) -> None:
            present = [v for v in values if v is not None and not math.isnan(v)]
            best = (min(present) if lower else max(present)) if present and bold else None
            cells = []
            for v in values:
                if v is None or math.isnan(v):
                    cells.append("n/a")
                    continue
                text = format(v, fmt)
                cells.append(f"[bold]{text}[/bold]" if best is not None and v == best else text)
            table.add_row(label, *cells)

        rows = self.rows()
        for label, values, lower, fmt in rows[:-4]:
            row(label, values, lower, fmt)
        table.add_section()
        for label, values, lower, fmt in rows[-4:]:
            row(label, values, lower, fmt)
        extra = self.llm_rows()
        if extra:
            table.add_section()
            for label, values, lower, fmt in extra:
                row(label, values, lower, fmt)
        return table

    def to_markdown(self, images: dict[str, str] | None = None) -> str:
        """The comparison as Markdown: what was run, a metrics table (best value of each row bold), the LLM,
        grounding and judge table, notes; ``images`` (caption -> relative file) are linked below."""
        labels = self.labels()
        lines = ["# llmrec eval report", "", self.describe(), ""]

        def table(rows: list[tuple[str, list[float | None], bool, str]]) -> None:
            lines.append("| metric | " + " | ".join(_md(label) for label in labels) + " |")
            lines.append("|---|" + "---:|" * len(labels))
            for label, values, lower, fmt in rows:
                lines.append(f"| {_md(label)} | " + " | ".join(best_cells(values, lower, fmt, "**", "**")) + " |")
            lines.append("")

        lines += ["## Metrics", ""]
        table(self.rows())
        extra = self.llm_rows()
        if extra:
            lines += ["## LLM usage, grounding and judge", ""]
            table(extra)
        lines += ["## Specs", ""]
        for label, r in zip(labels, self.results):
            where = f" ({r.path})" if r.path else ""
            lines.append(f"- **{_md(label)}**{_md(where)}: {r.n_cases} cases, output '{r.output}', "
                         f"{r.wall_s:.1f} s" + (f", {r.reused} reused" if r.reused else ""))
        notes = self.notes()
        if notes:
            lines += ["", "## Notes", ""] + [f"- {_md(n)}" for n in notes]
        for caption, file in (images or {}).items():
            lines += ["", f"![{caption}]({file})"]
        return "\n".join(lines) + "\n"

    def render(self, console: Any | None = None) -> None:
        """Print the table (and any failure messages and warnings) to ``console`` (stdout by default)."""
        from rich.console import Console

        console = console or Console()
        console.print(f"llmrec eval: {self.describe()}", markup=False, highlight=False)
        console.print(self.table())
        for line in self.notes():
            console.print(line, markup=False, highlight=False)


def _metric_sort_key(name: str) -> tuple[int, str, int]:
    base, _, k = name.partition("@")
    rank = METRIC_ORDER.index(base) if base in METRIC_ORDER else len(METRIC_ORDER)
    return rank, base, int(k) if k.isdigit() else 0


def _json_number(value: float) -> float | None:
    """A metric as JSON: exact (Python writes the shortest text that reads back as the same float, so two
    reports compare number for number, e.g. a resumed run's and an uninterrupted one's); NaN as null."""
    return None if value is None or math.isnan(value) else value


def best_cells(values: list[float | None], lower: bool, fmt: str, start: str, end: str) -> list[str]:
    """Formatted cells, the best of two or more values wrapped in ``start``/``end``; n/a where absent."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    best = (min(present) if lower else max(present)) if present and len(values) > 1 else None
    out = []
    for v in values:
        if v is None or math.isnan(v):
            out.append("n/a")
            continue
        text = format(v, fmt)
        out.append(f"{start}{text}{end}" if best is not None and v == best else text)
    return out


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _json_clean(value: Any) -> Any:
    """Floats as :func:`_json_number` writes them (NaN -> None), recursively."""
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return value


__all__ = ["EvalReport", "METRIC_ORDER", "SpecResult"]
