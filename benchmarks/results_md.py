"""benchmarks/RESULTS.md, one section per benchmark: a benchmark's ``--write`` replaces its own section (from its
``## `` heading to the next) or appends it. Imported by the benchmark scripts (run as ``benchmarks/X.py``, so this
folder is on sys.path)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEAD = "# Benchmark results\n\nEvery number here comes from a command in benchmarks/ that anyone can rerun.\n"


def write_section(marker: str, text: str) -> None:
    """Put ``text``, a section whose first line is the heading ``marker``, into RESULTS.md: in place of the
    section with that heading, else at the end; one blank line before the next section."""
    body = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else _HEAD
    section = text.rstrip("\n") + "\n"
    if marker in body:
        start = body.index(marker)
        end = body.find("\n## ", start + len(marker))
        body = body[:start] + section + (body[end:] if end != -1 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(body, encoding="utf-8")
