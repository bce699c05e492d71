"""Report files of ``llmrec eval --report DIR``: report.json, report.md (+ its PNG plots) and report.html.

The HTML file is self-contained: inline CSS and the plots as base64 PNG ``data:`` URIs, no external assets, so it
can be mailed or archived as one file. Plots (matplotlib, Agg backend, imported only when a report is written):
each ranking metric against k, one line per spec; and the per-case latency distribution of each spec.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from .report import EvalReport

#: ranking metrics drawn against k, when present
CURVE_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; } th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.best { font-weight: bold; background: #eef7ee; }
td.na { color: #999; text-align: right; }
.meta { color: #555; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
ul.notes li { margin: 0.2em 0; }
"""


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(report: EvalReport) -> dict[str, bytes]:
    """PNG images by caption: metric@k curves (when there are ranking metrics) and latency distribution."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = report.labels()
    out: dict[str, bytes] = {}
    present = [m for m in CURVE_METRICS if any(f"{m}@{k}" in r.metrics for r in report.results for k in report.ks)]
    if present:
        cols = min(3, len(present))
        rows = math.ceil(len(present) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        styles = ["-", "--", ":", "-."]
        markers = ["o", "s", "^", "D", "v", "P"]
        shares = report.fallback_shares()
        for ax, metric in zip(axes.flat, present):
            for n, (label, r) in enumerate(zip(labels, report.results)):
                ks = [k for k in report.ks if f"{metric}@{k}" in r.metrics]
                # a line style, marker and size per spec, the later ones smaller: two specs with the same
                # numbers (a spec answering from its fallback, say) stay visible one inside the other
                name = label if not shares[n] else f"{label} (fallback {shares[n]:.0%})"
                ax.plot(ks, [r.metrics[f"{metric}@{k}"] for k in ks], linestyle=styles[n % len(styles)],
                        marker=markers[n % len(markers)], markersize=max(3.0, 8.0 - 1.5 * n), label=name,
                        alpha=0.5 if shares[n] >= 0.5 else 1.0)
            ax.set_title(f"{metric}@k")
            ax.set_xlabel("k")
            ax.set_xticks(list(report.ks))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(present):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.tight_layout()
        out["Ranking metrics at each cutoff k"] = _png(fig)
        plt.close(fig)
    lat = [(label, r.latencies) for label, r in zip(labels, report.results) if r.latencies]
    if lat:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(lat) + 2), 3.6))
        ax.boxplot([v for _, v in lat], showfliers=True)
        ax.set_xticks(range(1, len(lat) + 1), [label for label, _ in lat], rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("latency per request (ms)")
        if max(max(v) for _, v in lat) > 20 * max(min(v) for _, v in lat if min(v) > 0):
            ax.set_yscale("log")
        ax.set_title("Latency distribution")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        out["Latency distribution per spec"] = _png(fig)
        plt.close(fig)
    return out


def _table(report: EvalReport, rows: list[tuple[str, list[float | None], bool | None, str]]) -> str:
    head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(h)}</th>" for h in report.headers()) + "</tr>"
    body = []
    for name, values, lower, fmt in rows:
        cells = []
        for text in report.cells(name, values, lower, fmt, "\0", "\0"):
            if text == "n/a":
                cells.append('<td class="na">n/a</td>')
            elif text.startswith("\0"):
                cells.append(f'<td class="num best">{html.escape(text.replace(chr(0), ""))}</td>')
            else:
                cells.append(f'<td class="num">{html.escape(text)}</td>')
        body.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def to_html(report: EvalReport, images: dict[str, bytes] | None = None) -> str:
    """The whole report as one HTML page, plots inlined as base64 PNG."""
    labels = report.labels()
    images = plots(report) if images is None else images
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>llmrec eval report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>llmrec eval report</h1>", f'<p class="meta">{html.escape(report.describe())}</p>',
    ]
    protocol = report.protocol_lines()
    if protocol:
        parts.append("<h2>Protocol</h2><ul class=\"notes\">" + "".join(f"<li>{html.escape(p)}</li>" for p in protocol)
                     + "</ul>")
    parts += ["<h2>Metrics</h2>", "<p class=\"meta\">Each per-case metric: mean [95% bootstrap interval over "
              "cases]. Usage rows are not ranked; a spec answering mostly from a fallback is not marked best.</p>",
              _table(report, report.rows())]
    comps = report.comparisons()
    if comps:
        rows = "".join(
            f"<tr><td>{html.escape(c.metric)}</td><td>{html.escape(c.a)}</td><td>{html.escape(c.b)}</td>"
            f'<td class="num">{c.diff:+.4f}</td><td class="num">{c.lo:+.4f} to {c.hi:+.4f}</td>'
            f'<td class="num">{c.p:.4f}</td><td class="num">{c.p_adjusted:.4f}</td>'
            f'<td{" class=best" if c.significant else ""}>{"yes" if c.significant else "no"}</td></tr>'
            for c in comps)
        parts += ["<h2>Paired comparisons</h2>", "<p class=\"meta\">First minus second on the same cases; "
                  "significant: Holm-adjusted randomization p &lt; 0.05 and the 95% bootstrap interval excludes "
                  "0.</p>", "<table><tr><th>metric</th><th>first</th><th>second</th><th>difference</th>"
                  "<th>95% CI</th><th>p</th><th>Holm p</th><th>significant</th></tr>" + rows + "</table>"]
    extra = report.llm_rows()
    if extra:
        parts += ["<h2>LLM usage, grounding and judge</h2>", _table(report, extra)]
    if images:
        parts.append("<h2>Plots</h2>")
        for caption, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Specs</h2><ul>")
    for label, r in zip(labels, report.results):
        where = f" ({r.path})" if r.path else ""
        parts.append(f"<li><b>{html.escape(label)}</b>{html.escape(where)}: {r.n_cases} cases, output "
                     f"'{html.escape(str(r.output))}', {r.wall_s:.1f} s"
                     + (f", provenance <code>{html.escape(str(r.provenance['id']))}</code>"
                        if r.provenance.get("id") else "") + "</li>")
    parts.append("</ul>")
    notes = report.notes()
    if notes:
        parts.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_reports(report: EvalReport, folder: str | Path) -> dict[str, Path]:
    """Write report.json, report.md (with its plots as PNG files beside it) and report.html into ``folder``."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    images = plots(report)
    files = {}
    linked = {}
    for i, (caption, png) in enumerate(images.items(), start=1):
        name = f"plot{i}.png"
        (target / name).write_bytes(png)
        linked[caption] = name
    files["json"] = target / "report.json"
    files["json"].write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    files["markdown"] = target / "report.md"
    files["markdown"].write_text(report.to_markdown(linked), encoding="utf-8")
    files["html"] = target / "report.html"
    files["html"].write_text(to_html(report, images), encoding="utf-8")
    return files


__all__ = ["plots", "to_html", "write_reports"]
