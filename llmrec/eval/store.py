"""Per-case results of an evaluation, persisted as they complete so that an interrupted run resumes.

One JSONL file per evaluated spec (or variant) under the run folder, named ``<label>-<fingerprint>.jsonl``. The
fingerprint hashes everything the case results depend on: the spec as loaded (includes merged, the variant
applied), the variant, its provenance stamp (:func:`llmrec.serve.logs.provenance_stamp`: the files and artifacts
it names, its local plugins, llmrec's and the plugins' versions, model ids, its dataset resources), the dataset
(name, split, the test cases, a hash of its content), the cutoffs, ``--users``, the output read, the metrics and
the judge; so results of different runs never mix. The first line is a header; each further line one case,
with the id of that provenance stamp (``provenance``). A last line cut short (the process killed mid-write) is
dropped and the file truncated to the last complete line before appending.

:attr:`CaseStore.count` is how many cases the file holds (loaded plus written since), which is what a rerun of
the same evaluation reuses; ``llmrec eval`` prints it when interrupted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

FORMAT = 1


def fingerprint(parts: Mapping[str, Any]) -> str:
    """A stable hex digest of JSON-able ``parts``."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cases_digest(cases: Sequence[Any]) -> str:
    """A digest of test cases (ids, relevant and excluded ids): a changed split changes it."""
    h = hashlib.sha256()
    for c in cases:
        h.update(json.dumps([c.id, sorted(c.relevant), sorted(c.exclude)], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "spec"


class CaseStore:
    """The JSONL file of one spec's case results: :meth:`load` what earlier runs finished, :meth:`write` more."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path = path
        self.header = dict(header)
        self.count = 0  # cases in the file: loaded, plus written since
        self._handle: IO[str] | None = None

    def load(self) -> dict[str, dict[str, Any]]:
        """Case id -> record of every complete line; truncates a partial last line away."""
        if not self.path.is_file():
            return {}
        raw = self.path.read_bytes()
        records: dict[str, dict[str, Any]] = {}
        good = 0  # bytes up to the end of the last complete, readable line
        offset = 0
        for line in raw.splitlines(keepends=True):
            end = offset + len(line)
            offset = end
            if not line.endswith(b"\n"):
                break  # killed mid-write: the rest is dropped
            try:
                rec = json.loads(line)
            except ValueError:
                break
            good = end
            if not isinstance(rec, dict):
                continue
            if "header" in rec:
                if rec["header"].get("fingerprint") != self.header.get("fingerprint"):
                    self.reset()  # another run's file under this name: start over
                    return {}
                continue
            if isinstance(rec.get("case"), str):
                records[rec["case"]] = rec
        if good < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)
        self.count = len(records)
        return records

    def reset(self) -> None:
        """Forget every stored case (``--fresh``)."""
        self.path.unlink(missing_ok=True)
        self.count = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one case record and flush it to disk."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.is_file() or self.path.stat().st_size == 0
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if new:
                self._handle.write(json.dumps({"header": {**self.header, "format": FORMAT}}, default=str) + "\n")
        self._handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


__all__ = ["CaseStore", "cases_digest", "fingerprint", "slug"]
