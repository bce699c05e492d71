"""``llmrec eval --trec DIR``: the answers and relevance judgments of an :class:`EvalReport` as TREC files, so
that ranx, trec_eval (or pytrec_eval, ir-measures) can take them further (docs/evaluation.md, "TREC export").

- one run file per column, ``<slug(label)>.run``: ``qid Q0 docid rank score tag`` lines, ranks from 1 and the
  score ``len(answer) - rank + 1``, strictly decreasing, so that no tool reorders ties; ``tag`` is the label with
  whitespace replaced by ``_``;
- one qrels file per distinct (dataset, split), ``qrels-<dataset>-<split>.txt``: ``qid 0 docid relevance`` lines,
  each gain as given (whole gains as integers: binary relevance is ``1``).

A case with an empty answer has no line in the run file (TREC runs cannot hold an empty ranking); every case is
in the qrels, so a tool that averages over the qrels' queries (ranx with ``make_comparable=True``,
``trec_eval -c``) scores it 0, as llmrec does. A case with nothing relevant gets one judged non-relevant line,
``qid 0 NO_RELEVANT_DOC 0``, so that it stays in those averages too and scores 0.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import EvalReport, SpecResult
from .store import slug

#: the document of the one non-relevant judgment written for a case with nothing relevant
NO_RELEVANT_DOC = "llmrec.no-relevant-item"


class TrecError(ValueError):
    """The report cannot be written as TREC files (an id with whitespace, a gain that is not finite), or the
    folder cannot take them."""


def write_trec(report: EvalReport, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``report``'s run and qrels files into ``folder`` (created if missing) and return their paths: each
    qrels file first, then the run files scored against it, in column order.

    Every file is written whole to a temporary file beside it and renamed into place, so that a reader never sees
    half of one; nothing is written outside ``folder``, and nothing at all when any id cannot go into a TREC
    file (:class:`TrecError`)."""
    root = Path(folder)
    files = trec_files(report)
    check_folder(root)
    root.mkdir(parents=True, exist_ok=True)
    base = root.resolve()
    paths = []
    for name, text in files:
        path = base / name
        if path.parent != base:  # pragma: no cover - names are slugs, which hold no separator
            raise TrecError(f"'{name}' would be written outside {root}")
        _write_atomic(path, text)
        paths.append(root / name)
    return paths


def trec_files(report: EvalReport) -> list[tuple[str, str]]:
    """``(file name, text)`` of every file :func:`write_trec` writes, in its order, without writing them.

    Columns of one dataset and split share a qrels file. Columns whose cases differ (other cases, or other
    judgments) although dataset and split have the same names (each spec's own dataset resource, seeded
    differently) get one of their own, ``qrels-<dataset>-<split>-2.txt`` and so on: every run is scored against a
    qrels file of exactly its own cases, so that averaging over the qrels' queries averages over its cases."""
    labels = report.labels()
    groups: list[tuple[tuple[str, str], dict[str, dict[str, float]], list[int]]] = []
    for index, result in enumerate(report.results):
        key = (result.dataset, result.split)
        qrels = _result_qrels(result)
        for gkey, judged, members in groups:
            if gkey == key and judged == qrels:
                members.append(index)
                break
        else:
            groups.append((key, qrels, [index]))
    used: set[str] = set()
    out = []
    for (dataset, split), qrels, members in groups:
        name = _unique(f"qrels-{slug(dataset)}-{slug(split)}", ".txt", used)
        out.append((name, _qrels_text(qrels, [report.results[i] for i in members])))
        for i in members:
            label = labels[i]
            out.append((_unique(slug(label), ".run", used), run_text(report.results[i], label)))
    return out


def run_text(result: SpecResult, label: str | None = None) -> str:
    """The TREC run file of one column: its answers, best first, tagged with ``label`` (whitespace -> ``_``).
    Cases with an empty answer have no lines."""
    tag = re.sub(r"\s+", "_", (label or result.label or result.spec).strip()) or "llmrec"
    lines = []
    for qid, answer in zip(result.case_ids, result.answers):
        _check_id(qid, "case id")
        n = len(answer)
        for rank, doc in enumerate(answer, start=1):
            _check_id(doc, f"item id (case '{qid}')")
            lines.append(f"{qid} Q0 {doc} {rank} {n - rank + 1} {tag}\n")
    return "".join(lines)


def _result_qrels(result: SpecResult) -> dict[str, dict[str, float]]:
    """Case id -> relevant id -> gain, for every case of ``result`` in its order (an empty dict: none relevant)."""
    return {qid: dict(result.qrels.get(qid) or {}) for qid in result.case_ids}


def _qrels_text(qrels: Mapping[str, Mapping[str, float]], results: Sequence[SpecResult]) -> str:
    lines = []
    for qid, judged in qrels.items():
        _check_id(qid, "case id")
        if not judged:
            lines.append(f"{qid} 0 {_placeholder(qid, results)} 0\n")
            continue
        for doc, gain in judged.items():
            _check_id(doc, f"relevant id (case '{qid}')")
            lines.append(f"{qid} 0 {doc} {_gain(gain, qid, doc)}\n")
    return "".join(lines)


def _placeholder(qid: str, results: Sequence[SpecResult]) -> str:
    """:data:`NO_RELEVANT_DOC`, lengthened until no answer to case ``qid`` holds it."""
    answered = {doc for r in results for case, answer in zip(r.case_ids, r.answers) if case == qid for doc in answer}
    doc = NO_RELEVANT_DOC
    while doc in answered:
        doc += "_"
    return doc


def _gain(value: Any, qid: str, doc: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrecError(f"case '{qid}': the gain of '{doc}' is {value!r}; TREC relevance must be a finite number")
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _check_id(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise TrecError(f"{what} {value!r} cannot go into a TREC file: its fields are separated by whitespace, "
                        "so ids must be non-empty and hold none")


def check_folder(root: str | os.PathLike[str]) -> None:
    """:class:`TrecError` when ``root`` (or a folder above it) is a file: the check ``llmrec eval --trec`` makes
    before it evaluates anything."""
    root = Path(root)
    for part in (root, *root.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == root else f"is inside {part}, which is a file"
                raise TrecError(f"'{root}' {where}; give a folder for the TREC files (it is created if missing)")
            return


def _unique(stem: str, suffix: str, used: set[str]) -> str:
    name, n = stem + suffix, 1
    while name.lower() in used:  # case-insensitive: two labels must not share a file on macOS or Windows
        n += 1
        name = f"{stem}-{n}{suffix}"
    used.add(name.lower())
    return name


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # readable as a plain written file is, not mkstemp's owner-only 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


__all__ = ["NO_RELEVANT_DOC", "TrecError", "check_folder", "run_text", "trec_files", "write_trec"]
