"""Fuzz the validator: N seeded mutants of the shipped specs (bytes and structure, as tests/spec/fuzzing.py makes
them), each validated as `llmrec validate` does; counts of passes, positioned errors, errors without a position
and crashes, and the slowest validations. Goal (issue 11): 0 crashes and 0 unpositioned errors, none over 1 s.

    LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/fuzz_specs.py --mutants 20000 [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "spec"))
from fuzzing import HOSTILE, SPECS, TOKENS, mutate_bytes, mutate_structure, outcome, spec_texts  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "fuzz_specs.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    texts = spec_texts()
    names = sorted(texts)
    counts: Counter[str] = Counter()
    times: list[float] = []
    slowest: list[tuple[float, str]] = []
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "specs"
        shutil.copytree(SPECS, folder)
        outcome(folder / "quickstart.yaml")  # warm-up: imports and plugins
        path = folder / "mutant.yaml"
        for i in range(args.mutants):
            name = rng.choice(names)
            if rng.random() < 0.5:
                edits = [(rng.random(), rng.randrange(3), rng.randrange(len(TOKENS) * 8))
                         for _ in range(rng.randint(1, 4))]
                kind, data = "bytes", mutate_bytes(texts[name], edits)
            else:
                edits2 = [(rng.random(), rng.randrange(len(HOSTILE)), rng.random() < 0.3)
                          for _ in range(rng.randint(1, 3))]
                kind, data = "structure", mutate_structure(texts[name], edits2)
            path.write_bytes(data)
            result = outcome(path)
            counts[result.kind] += 1
            counts[f"{kind}:{result.kind}"] += 1
            times.append(result.seconds)
            slowest = sorted(slowest + [(result.seconds, f"{name} {kind} mutant #{i}")], reverse=True)[:5]
            if result.kind in ("crash", "unpositioned") and len(failures) < 10:
                failures.append(f"{name} {kind} mutant #{i}: {result.kind}: {result.detail[-600:]}")
            if (i + 1) % 2000 == 0:
                print(f"  {i + 1} mutants: {dict(counts)}", flush=True)
    elapsed = time.perf_counter() - started
    over = sum(1 for t in times if t >= 1.0)
    lines = [
        "# Validator fuzzing",
        "",
        f"Reproduce: `LLMREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/fuzz_specs.py --mutants "
        f"{args.mutants} --seed {args.seed} --write`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {elapsed:.0f} s for {args.mutants:,} mutants of the {len(names)} shipped specs "
        "(half byte-level edits, half structural; tests/spec/fuzzing.py).",
        "",
        "| outcome | mutants |",
        "|---|---|",
        *[f"| {k} | {counts.get(k, 0):,} |" for k in ("pass", "errors", "unpositioned", "crash")],
        "",
        f"- By kind: {', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()) if ':' in k)}.",
        f"- Validation CPU time (the validating thread's): median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.0f} ms; "
        f"{over} over 1 s. Slowest: " + "; ".join(f"{t * 1000:.0f} ms ({what})" for t, what in slowest) + ".",
        f"- Goal: 0 crashes and 0 errors without a position, none over 1 s: "
        f"{'met' if not counts['crash'] and not counts['unpositioned'] and not over else 'NOT met'} over "
        f"{args.mutants:,} mutants (the issue asks for >= 100,000).",
    ]
    if failures:
        lines += ["", "First failures:", "", *[f"- {f}" for f in failures]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
