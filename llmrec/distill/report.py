"""The distillation report: teacher, student from scratch and distilled student on held-out pairs.

Per model: pairwise accuracy on the test pairs (:func:`llmrec.distill.pairs.accuracy`), agreement with the
teacher, milliseconds per sample, parameters and training time. A *sample* is one pair scored alone (batch of
one: encode the history, one forward pass, two logits), the way a request would score it. Latency is measured
in rounds; in each round every model scores the same ``samples`` pairs, the order of the models rotating from
round to round so that none always runs first, with torch limited to ``threads`` threads. Both process CPU time
(``time.process_time``, the figure to compare on a shared machine) and wall time are recorded; the medians over
rounds are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Scorer = Callable[[Sequence[Any], Sequence[tuple[str, str]]], Any]


@dataclass
class ReportRow:
    """One model of the report. ``role``: teacher, from scratch (same size as the student, no teacher), distilled."""

    role: str
    name: str
    accuracy: float
    agreement: float | None = None  # with the teacher's preferences on the same pairs
    cpu_ms: float | None = None
    wall_ms: float | None = None
    parameters: int | None = None
    train_seconds: float | None = None


@dataclass
class DistillReport:
    rows: list[ReportRow]
    pairs: int
    users: int
    latency: dict[str, Any] = field(default_factory=dict)

    def row(self, role: str) -> ReportRow | None:
        return next((r for r in self.rows if r.role == role), None)

    @property
    def accuracy_ratio(self) -> float | None:
        """Distilled student's accuracy / the teacher's."""
        t, s = self.row("teacher"), self.row("distilled")
        return None if t is None or s is None or not t.accuracy else s.accuracy / t.accuracy

    @property
    def speedup(self) -> float | None:
        """Teacher's CPU ms per sample / the distilled student's."""
        t, s = self.row("teacher"), self.row("distilled")
        if t is None or s is None or not t.cpu_ms or not s.cpu_ms:
            return None
        return t.cpu_ms / s.cpu_ms

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "pairs": self.pairs, "users": self.users,
                "latency": self.latency, "accuracy_ratio": self.accuracy_ratio, "speedup": self.speedup}

    def markdown(self) -> str:
        def num(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        lines = ["| model | name | pairwise accuracy | agreement with teacher | CPU ms/sample | wall ms/sample "
                 "| parameters | training s |", "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.role} | {r.name} | {r.accuracy:.4f} | {num(r.agreement, '.4f')} | "
                         f"{num(r.cpu_ms, '.3f')} | {num(r.wall_ms, '.3f')} | {num(r.parameters, ',')} | "
                         f"{num(r.train_seconds, '.1f')} |")
        tail = []
        if self.accuracy_ratio is not None:
            tail.append(f"distilled/teacher accuracy {self.accuracy_ratio:.3f}")
        if self.speedup is not None:
            tail.append(f"teacher/distilled CPU time per sample {self.speedup:.2f}x")
        lines.append("")
        lines.append(f"{self.pairs} test pairs of {self.users} users" + (f"; {'; '.join(tail)}" if tail else ""))
        return "\n".join(lines)


def measure_latency(scorers: Mapping[str, Scorer], histories: Sequence[Any], pairs: Sequence[tuple[str, str]],
                    rounds: int = 5, threads: int | None = 1, batch: int = 1) -> dict[str, dict[str, Any]]:
    """Per model ``{cpu_ms, wall_ms, cpu_rounds, wall_rounds}``: milliseconds per sample (one pair at a time,
    or ``batch`` pairs per call), medians over ``rounds`` rounds with the models' order rotating."""
    import torch

    names = list(scorers)
    n = len(pairs)
    out: dict[str, dict[str, Any]] = {name: {"cpu_rounds": [], "wall_rounds": []} for name in names}
    if not n or not names:
        return out
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for name in names:  # warm-up: first-call allocations and lazy imports are not latency
            scorers[name]([histories[0]], [pairs[0]])
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                score = scorers[name]
                c0, w0 = time.process_time(), time.perf_counter()
                for i in range(0, n, batch):
                    score(histories[i:i + batch], pairs[i:i + batch])
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                out[name]["cpu_rounds"].append(1000.0 * cpu / n)
                out[name]["wall_rounds"].append(1000.0 * wall / n)
    finally:
        torch.set_num_threads(before)
    for name in names:
        out[name]["cpu_ms"] = statistics.median(out[name]["cpu_rounds"])
        out[name]["wall_ms"] = statistics.median(out[name]["wall_rounds"])
    return out


def latency_sample(n_pairs: int, samples: int, seed: int = 0) -> np.ndarray:
    """Which test pairs latency is measured on: ``samples`` of them, drawn without replacement, in order."""
    if n_pairs <= samples:
        return np.arange(n_pairs)
    return np.sort(np.random.default_rng(seed).choice(n_pairs, size=samples, replace=False))


__all__ = ["DistillReport", "ReportRow", "latency_sample", "measure_latency"]
