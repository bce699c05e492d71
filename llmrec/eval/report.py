"""What ``llmrec eval`` produces: an :class:`EvalReport` (one :class:`SpecResult` per spec), as JSON or a table.

The table puts metrics in rows and specs in columns, so systems compare side by side; with two or more specs
the best value of each row is bold (the largest, or the smallest for latency, failures and metrics whose
lower values are better, such as ``popularity_bias``). Each per-case metric carries its 95% bootstrap interval,
and every pair of specs scored on the same cases gets a paired test per metric (:mod:`llmrec.eval.stats`); the
report says which differences are significant. Usage rows (LLM calls, tokens, cost) are not ranked, and a spec
that answered mostly from a fallback is marked as such and left out of the best-value marks: its numbers are the
fallback's. A protocol section says how the cases were made and what limits the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import ALPHA, Paired, holm, paired

#: the order rows appear in; metrics not listed follow, sorted by name
METRIC_ORDER = (
    "precision", "recall", "ndcg", "map", "mrr", "hit_rate",
    "coverage", "entropy", "entropy_norm", "ild", "novelty", "popularity_bias",
)
MAX_FAILURE_MESSAGES = 5
#: a spec whose share of answers from a fallback reaches this is left out of the best-value marks
DEGRADED = 0.5


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
    # per case, in the order of ``case_ids`` (not in the JSON): the statistics and the TREC export read them
    case_ids: list[str] = field(default_factory=list)
    case_values: dict[str, list[float]] = field(default_factory=dict)  # "ndcg@10" -> one value per case
    answers: list[list[str]] = field(default_factory=list)  # the answer's top ids, best first
    qrels: dict[str, dict[str, float]] = field(default_factory=dict)  # case id -> relevant id -> gain
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95% bootstrap interval per metric
    protocol: dict[str, Any] = field(default_factory=dict)  # how the cases were made and what to watch for
    not_run: str | None = None  # why this column was not evaluated (its runtime could not start)
    # the provenance stamp of what produced the answers (llmrec.serve.logs.Stamp.to_dict(): its id, then the
    # spec, files, plugins, versions, models and datasets); every per-case record carries its id
    provenance: dict[str, Any] = field(default_factory=dict)

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
            "intervals": {name: [_json_number(lo), _json_number(hi)] for name, (lo, hi) in self.intervals.items()},
            "protocol": _json_clean(self.protocol),
            "latency_ms": {name: round(v, 3) for name, v in self.latency_ms.items()},
            "failures": {"count": self.failures, "first": list(self.failure_messages)},
            "wall_s": round(self.wall_s, 3),
            "warnings": list(self.warnings),
            "llm": _json_clean(self.llm),
            "grounding": _json_clean(self.grounding),
            "judge": _json_clean(self.judge),
            "reused_cases": self.reused,
            "cases_file": self.store,
            "not_run": self.not_run,
            "provenance": _json_clean(self.provenance) or None,
        }


@dataclass
class EvalReport:
    """Every spec's :class:`SpecResult`, in the order the specs were given."""

    results: list[SpecResult]
    ks: tuple[int, ...]
    _comparisons: list[Paired] | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        results = []
        for label, r, share in zip(self.labels(), self.results, self.fallback_shares()):
            results.append({**r.to_dict(), "label": label, "fallback_share": share,
                            "degraded": share >= DEGRADED})
        return {"ks": list(self.ks), "results": results,
                "comparisons": [_json_clean(c.to_dict()) for c in self.comparisons()],
                "significance": {"alpha": ALPHA, "test": "paired randomization (10,000 sign flips, seed 0), "
                                 "Holm-adjusted over each metric's pairs; interval: 95% paired bootstrap over "
                                 "cases (1,000 resamples, seed 0)"}}

    def fallback_shares(self) -> list[float]:
        """Per spec: the share of its answers that came (at least partly) from a fallback."""
        return [float(_num(r.llm.get("fallback_rate")) or 0.0) for r in self.results]

    def rankable(self) -> list[bool]:
        """Per spec: whether its values may be marked best (not mostly a fallback's answers)."""
        return [share < DEGRADED and r.not_run is None for share, r in zip(self.fallback_shares(), self.results)]

    def headers(self) -> list[str]:
        """Column headers: the labels, with the fallback share where a spec answered from fallbacks."""
        return [f"{label} [not run]" if r.not_run is not None else
                label if share == 0 else f"{label} [fallback {share:.0%}]"
                for label, share, r in zip(self.labels(), self.fallback_shares(), self.results)]

    def comparisons(self) -> list[Paired]:
        """Every pair of specs scored on the same cases, for every per-case metric: the paired difference
        (first minus second, in report order), its interval and p-value, Holm-adjusted over each metric's
        pairs. Computed once."""
        if self._comparisons is None:
            labels = self.labels()
            out: list[Paired] = []
            for name in self.metric_names():
                group = []
                for i, a in enumerate(self.results):
                    for j in range(i + 1, len(self.results)):
                        b = self.results[j]
                        if (name in a.case_values and name in b.case_values and a.case_ids
                                and a.case_ids == b.case_ids):
                            group.append(paired(name, labels[i], a.case_values[name], labels[j], b.case_values[name]))
                out += holm(group)
            self._comparisons = out
        return self._comparisons

    def protocol_lines(self) -> list[str]:
        """How the cases were made and what limits the numbers, per dataset (and per spec where it differs)."""
        lines: list[str] = []
        seen: set[str] = set()
        labels = self.labels()
        for r in self.results:
            p = r.protocol
            key = f"{r.dataset}/{r.split}"
            if not p or key in seen:
                continue
            seen.add(key)
            relevance = p.get("relevance", "as the dataset defines")
            candidates = p.get("candidates", "as the spec retrieves")
            lines.append(f"{r.dataset}: split {p.get('split', r.split)}; relevant: {relevance}; "
                         f"candidates: {candidates}")
            n = p.get("cases", r.n_cases)
            if p.get("relevance_fallback_cases"):
                lines.append(f"{r.dataset}: {p['relevance_fallback_cases']} of {n} cases used the fallback "
                             "relevance rule (nothing passed the main rule)")
            if p.get("no_relevant_cases"):
                lines.append(f"{r.dataset}: {p['no_relevant_cases']} of {n} cases have no relevant item; "
                             f"{p.get('no_relevant_treatment', '')}")
            if p.get("items_without_training_interactions"):
                lines.append(f"{r.dataset}: {p['items_without_training_interactions']} of {p.get('items')} "
                             "catalog items have no training interactions: a spec that learns from interactions "
                             "alone (CF) cannot recommend them")
        for label, r in zip(labels, self.results):
            p = r.protocol
            for k, short in (p.get("short_answers") or {}).items():
                if short:
                    lines.append(f"{label}: k={k} is longer than {short} of its {r.n_cases} answers; their "
                                 "missing slots count as misses (precision@k falls with k by construction)")
            cov = p.get("coverage_of_recommendable")
            if isinstance(cov, float):
                lines.append(f"{label}: recommended {cov:.1%} of the items that have training interactions "
                             f"(in its top {max(self.ks)})")
            zeros = p.get("zero_cases") or {}
            headline = next((m for m in (f"ndcg@{k}" for k in sorted(self.ks, key=lambda k: (k != 10, k)))
                             if m in zeros), None)
            if headline is not None and r.n_cases:
                lines.append(f"{label}: {zeros[headline]} of {len(r.case_ids) or r.n_cases} cases score 0 on "
                             f"{headline}")
        return lines

    def significance_lines(self) -> list[str]:
        """One line per pair and metric whose difference is significant, then how many were not."""
        comps = self.comparisons()
        lines = [f"{c.a} - {c.b}: {c.metric} {c.diff:+.4f} (95% CI {c.lo:+.4f} to {c.hi:+.4f}), p = "
                 f"{_p(c.p)}, Holm p = {_p(c.p_adjusted)}" for c in comps if c.significant]
        rest = sum(1 for c in comps if not c.significant)
        if rest:
            lines.append(f"{rest} other differences are not significant at {ALPHA:g} (Holm-adjusted, interval "
                         "containing 0)")
        return lines

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

    def rows(self) -> list[tuple[str, list[float | None], bool | None, str]]:
        """Every row of the comparison as (label, value per spec, lower is better (None: not ranked), format):
        metrics, latency and failures. None where a value does not apply (n/a)."""
        results = self.results
        out: list[tuple[str, list[float | None], bool | None, str]] = []
        for name in self.metric_names():
            base = name.split("@", 1)[0]
            lower = any(base in r.lower_is_better for r in results)
            out.append((name, [r.metrics.get(name) for r in results], lower, ".4f"))
        for q in ("p50", "p95", "p99"):
            out.append((f"latency {q} (ms)", [r.latency_ms.get(q) for r in results], True, ".2f"))
        out.append(("failures", [float(r.failures) for r in results], True, ".0f"))
        return out

    def llm_rows(self) -> list[tuple[str, list[float | None], bool | None, str]]:
        """LLM usage, grounding and judge rows; empty when no spec has LLM nodes, violations or a judge."""
        results = self.results
        out: list[tuple[str, list[float | None], bool | None, str]] = []

        def llm(key: str) -> list[float | None]:
            return [None if not r.llm.get("llm_nodes") else _num(r.llm.get(key)) for r in results]

        if any(r.llm.get("llm_nodes") for r in results):
            # usage, not quality: never ranked (0 LLM calls is no achievement when every answer was a fallback's)
            out += [("LLM calls", llm("calls"), None, ".0f"),
                    ("prompt tokens", llm("prompt_tokens"), None, ".0f"),
                    ("completion tokens", llm("completion_tokens"), None, ".0f"),
                    ("cost (USD)", llm("cost"), None, ".4f"),
                    ("cache hit rate", llm("cache_hit_rate"), None, ".3f")]
        if any(r.llm.get("fallback_requests") for r in results) or out:
            out.append(("fallback rate", [_num(r.llm.get("fallback_rate")) for r in results], None, ".3f"))
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
        ran = [r for r in self.results if r.not_run is None]
        reasons = {r.judge.get("reason") for r in ran if r.judge and not r.judge.get("run")}
        single = len(reasons) == 1 and all(r.judge and not r.judge.get("run") for r in ran)
        if single:
            lines.append(f"judge not run: {reasons.pop()}")
        for label, r, share in zip(self.labels(), self.results, self.fallback_shares()):
            if r.not_run is not None:
                lines.append(f"{label}: not evaluated: {r.not_run}")
                continue
            if share:
                n = r.llm.get("fallback_requests", 0)
                lines.append(f"{label}: {share:.0%} of its answers ({n} of {r.n_cases}) came from a fallback"
                             + (": its numbers are the fallback's, not this spec's, and it is left out of the "
                                "best-value marks" if share >= DEGRADED else ""))
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
        datasets = sorted({f"{r.dataset} (split {r.split}, {r.n_cases} cases)" for r in self.results
                           if r.not_run is None})
        return "; ".join(datasets) + f"; k = {', '.join(map(str, self.ks))}"

    def cells(self, name: str, values: list[float | None], lower: bool | None, fmt: str, start: str,
              end: str) -> list[str]:
        """A row's formatted cells: the value, its 95% interval where the metric has one, the best value of
        the specs that may rank wrapped in ``start``/``end``."""
        out = best_cells(values, lower, fmt, start, end, self.rankable())
        for i, r in enumerate(self.results):
            ci = r.intervals.get(name)
            if ci is not None and out[i] != "n/a" and not any(math.isnan(x) for x in ci):
                out[i] += f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"
        return out

    def table(self, title: str | None = None) -> Any:
        """A rich Table: metrics as rows (with intervals), specs as columns, the best value of each row bold."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        table.add_column("metric", no_wrap=True)
        for header in self.headers():
            table.add_column(escape(header), justify="right", no_wrap=True)

        def row(label: str, values: list[float | None], lower: bool | None, fmt: str) -> None:
            table.add_row(escape(label), *(escape(c).replace("\0", "[bold]", 1).replace("\0", "[/bold]", 1)
                                           for c in self.cells(label, values, lower, fmt, "\0", "\0")))

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

    def significance_table(self) -> Any:
        """A rich Table of every paired comparison, or None with fewer than two comparable specs."""
        from rich.markup import escape
        from rich.table import Table

        comps = self.comparisons()
        if not comps:
            return None
        table = Table(title="paired differences (first - second), 95% bootstrap CI, randomization p (Holm)")
        for col in ("metric", "first", "second", "difference", "95% CI", "p", "Holm p", "significant"):
            table.add_column(col, justify="left" if col in ("metric", "first", "second") else "right")
        for c in comps:
            table.add_row(escape(c.metric), escape(c.a), escape(c.b), f"{c.diff:+.4f}",
                          f"{c.lo:+.4f} to {c.hi:+.4f}", _p(c.p), _p(c.p_adjusted),
                          "[bold]yes[/bold]" if c.significant else "no")
        return table

    def to_markdown(self, images: dict[str, str] | None = None) -> str:
        """The comparison as Markdown: what was run, the protocol, a metrics table (intervals; best value of each
        row bold), the paired comparisons, the LLM, grounding and judge table, notes; ``images`` (caption ->
        relative file) are linked below."""
        headers = self.headers()
        lines = ["# llmrec eval report", "", self.describe(), ""]

        def table(rows: list[tuple[str, list[float | None], bool | None, str]]) -> None:
            lines.append("| metric | " + " | ".join(_md(h) for h in headers) + " |")
            lines.append("|---|" + "---:|" * len(headers))
            for label, values, lower, fmt in rows:
                lines.append(f"| {_md(label)} | " + " | ".join(self.cells(label, values, lower, fmt, "**", "**"))
                             + " |")
            lines.append("")

        protocol = self.protocol_lines()
        if protocol:
            lines += ["## Protocol", ""] + [f"- {_md(p)}" for p in protocol] + [""]
        lines += ["## Metrics", "", "Each per-case metric: mean [95% bootstrap interval over cases].", ""]
        table(self.rows())
        comps = self.comparisons()
        if comps:
            lines += ["## Paired comparisons", "",
                      f"First minus second, on the same cases; significant: Holm-adjusted p < {ALPHA:g} and the "
                      "interval excludes 0.", "",
                      "| metric | first | second | difference | 95% CI | p | Holm p | significant |",
                      "|---|---|---|---:|---:|---:|---:|---|"]
            for c in comps:
                lines.append(f"| {_md(c.metric)} | {_md(c.a)} | {_md(c.b)} | {c.diff:+.4f} | {c.lo:+.4f} to "
                             f"{c.hi:+.4f} | {_p(c.p)} | {_p(c.p_adjusted)} | {'**yes**' if c.significant else 'no'} |")
            lines.append("")
        extra = self.llm_rows()
        if extra:
            lines += ["## LLM usage, grounding and judge", ""]
            table(extra)
        lines += ["## Specs", ""]
        for label, r in zip(self.labels(), self.results):
            where = f" ({r.path})" if r.path else ""
            lines.append(f"- **{_md(label)}**{_md(where)}: {r.n_cases} cases, output '{r.output}', "
                         f"{r.wall_s:.1f} s" + (f", {r.reused} reused" if r.reused else "")
                         + (f", provenance `{_md(r.provenance['id'])}`" if r.provenance.get("id") else ""))
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
        for line in self.protocol_lines():
            console.print(f"protocol: {line}", markup=False, highlight=False)
        console.print(self.table())
        sig = self.significance_table()
        if sig is not None:
            console.print(sig)
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


def best_cells(values: list[float | None], lower: bool | None, fmt: str, start: str, end: str,
               rankable: list[bool] | None = None) -> list[str]:
    """Formatted cells, the best of two or more values wrapped in ``start``/``end``; n/a where absent. ``lower``
    None: a row that is not ranked. ``rankable``: which columns may be marked (not a degraded spec's)."""
    ok = rankable if rankable is not None else [True] * len(values)
    present = [v for v, r in zip(values, ok) if r and v is not None and not math.isnan(v)]
    best = (min(present) if lower else max(present)) if present and len(values) > 1 and lower is not None else None
    out = []
    for v, r in zip(values, ok):
        if v is None or math.isnan(v):
            out.append("n/a")
            continue
        text = format(v, fmt)
        out.append(f"{start}{text}{end}" if best is not None and r and v == best else text)
    return out


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


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


__all__ = ["DEGRADED", "EvalReport", "METRIC_ORDER", "SpecResult", "best_cells"]
