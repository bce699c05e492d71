"""Does `llmrec eval` interrupted by Ctrl-C and resumed report exactly what an uninterrupted run reports?

Every run is the real command, ``python -m llmrec eval SPEC --out DIR --json FILE`` (FILE holds what
``--report``'s report.json holds), in its own process, over the spec's full protocol (specs/movielens_cf.yaml:
all 943 MovieLens 100K test users, temporal split, k = 5, 10, 20, every registered metric). An interrupt is a
real SIGINT, sent once the run folder's per-case file holds the wanted number of cases (polled every 2 ms).

- uninterrupted: twice, each into a fresh --out folder (the second shows the spec itself is deterministic);
- interrupted once at about 25%, 50% and 75% of the cases, then the same command again to the end;
- interrupted three times in a row (about 25%, then resumed and interrupted at 50%, then at 75%), then resumed.

Reported: the metrics of the uninterrupted run; for each scenario the largest absolute difference of every
metric from it (goal: 0.0 exactly; report metrics are written unrounded), whether everything else of the report
but latency/wall time/reuse (case count, failures, grounding, LLM and judge sections) and every stored per-case
result but its latency are equal; and the wall time of the uninterrupted run against the interrupted runs plus
the resume, all processes together (start-up and the model's fit are paid again by every process).

    LLMREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/eval_resume.py [--write] [--spec SPEC]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "movielens_cf.yaml"
OUT = ROOT / "benchmarks" / "results" / "eval_resume.md"
POINTS = (0.25, 0.5, 0.75)
#: report fields that differ by nature between an uninterrupted and a resumed run
VOLATILE = ("latency_ms", "wall_s", "reused_cases", "cases_file")


def stored(out: Path) -> int:
    """Complete case lines in the run folder's per-case files (the header line left out)."""
    n = 0
    for file in out.glob("*.jsonl") if out.is_dir() else ():
        n += max(file.read_bytes().count(b"\n") - 1, 0)
    return n


def cases(out: Path) -> dict[str, dict[str, Any]]:
    """Case id -> stored record, latency left out."""
    records = {}
    for file in out.glob("*.jsonl"):
        for line in file.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "header" in rec:
                continue
            rec.pop("latency_ms")
            if rec["case"] in records:
                raise AssertionError(f"case {rec['case']} stored twice in {file}")
            records[rec["case"]] = rec
    return records


class Runner:
    def __init__(self, spec: Path, work: Path) -> None:
        self.spec, self.work = spec, work
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("LLMREC_MODEL", None)  # no judge: the spec's own metrics

    def command(self, out: Path) -> list[str]:
        return [sys.executable, "-m", "llmrec", "eval", str(self.spec), "--out", str(out),
                "--json", str(out.with_suffix(".json"))]

    def full(self, out: Path) -> tuple[float, str]:
        """Run to the end; (seconds, stderr)."""
        t0 = time.perf_counter()
        proc = subprocess.run(self.command(out), capture_output=True, text=True, env=self.env, cwd=self.work)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"llmrec eval exited {proc.returncode}:\n{proc.stderr}")
        return seconds, proc.stderr

    def interrupted(self, out: Path, after: int) -> tuple[float, int]:
        """Run, SIGINT once ``after`` cases are stored; (seconds, cases kept)."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(self.command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, cwd=self.work)
        while stored(out) < after:
            if proc.poll() is not None:
                raise RuntimeError(f"finished before {after} cases were stored: {proc.communicate()[1]}")
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        seconds = time.perf_counter() - t0
        kept = stored(out)
        hint = (f"interrupted: {kept} case results kept in {out}; run the same command again (without --fresh) "
                "to resume from them")
        if proc.returncode != 130 or hint not in err or "Traceback" in err:
            raise RuntimeError(f"unexpected interrupt (exit {proc.returncode}):\n{err}")
        return seconds, kept


def result(out: Path) -> dict[str, Any]:
    (r,) = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["results"]
    return r


def compare(r: dict[str, Any], ref: dict[str, Any], out: Path, ref_cases: dict[str, Any]) -> dict[str, Any]:
    diffs = {}
    for name, value in ref["metrics"].items():
        other = r["metrics"].get(name)
        if value is None or other is None:
            diffs[name] = 0.0 if value is other else float("inf")
        else:
            diffs[name] = abs(other - value)
    rest = {k: v for k, v in r.items() if k not in VOLATILE and k != "metrics"}
    ref_rest = {k: v for k, v in ref.items() if k not in VOLATILE and k != "metrics"}
    return {"diffs": diffs, "rest_equal": rest == ref_rest, "cases_equal": cases(out) == ref_cases,
            "metrics_equal": r["metrics"] == ref["metrics"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC, help="the spec to evaluate (default: %(default)s)")
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    root = os.environ.get("LLMREC_DATA_DIR")
    if args.spec == SPEC and (not root or not (Path(root) / "ml-100k" / "u.data").is_file()):
        print("MovieLens 100K not found: set LLMREC_DATA_DIR to the folder holding ml-100k/", file=sys.stderr)
        return 2
    spec = args.spec.resolve()
    load_before = os.getloadavg()[0]
    scenarios: list[tuple[str, float, list[int], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = Runner(spec, work)
        base_s, _ = run.full(work / "uninterrupted")
        ref = result(work / "uninterrupted")
        ref_cases = cases(work / "uninterrupted")
        n = ref["n_cases"]
        if ref["reused_cases"] != 0 or len(ref_cases) != n:
            raise RuntimeError("the uninterrupted run did not run every case")
        again_s, _ = run.full(work / "again")
        scenarios.append(("uninterrupted, second run", again_s, [],
                          compare(result(work / "again"), ref, work / "again", ref_cases)))
        plans = [[p] for p in POINTS] + [list(POINTS)]
        for i, plan in enumerate(plans):
            out = work / f"resumed{i}"
            seconds, kept = 0.0, []
            for p in plan:
                s, k = run.interrupted(out, round(p * n))
                seconds += s
                kept.append(k)
            s, err = run.full(out)
            seconds += s
            if f"resumed {kept[-1]} of {n} cases" not in err:
                raise RuntimeError(f"the resume did not reuse the {kept[-1]} kept cases:\n{err}")
            r = result(out)
            name = (f"interrupted at {round(plan[0] * 100)}%, resumed" if len(plan) == 1 else
                    "interrupted at " + ", ".join(f"{round(p * 100)}%" for p in plan) + ", each time resumed")
            scenarios.append((name, seconds, kept, compare(r, ref, out, ref_cases)))
            print(f"{name}: kept {kept}, {seconds:.2f} s, metrics equal: {scenarios[-1][3]['metrics_equal']}",
                  file=sys.stderr)

    try:
        shown = spec.relative_to(ROOT)
    except ValueError:
        shown = spec
    metric_names = list(ref["metrics"])
    lines = [
        "# Evaluation resumed after Ctrl-C: identical metrics",
        "",
        f"`llmrec eval {shown}` over its full protocol ({ref['dataset']}, split {ref['split']}, {n} cases, "
        "k = 5, 10, 20, every registered metric), each run its own process with a fresh `--out` folder per "
        "scenario; an interrupt is a real SIGINT sent once the wanted number of cases is stored, then the same "
        "command runs again to the end (benchmarks/eval_resume.py).",
        "",
        "| scenario | cases kept at each interrupt | wall s (all processes) | metrics bit-identical "
        "| rest of report equal | per-case results equal |",
        "|---|---|---:|---|---|---|",
        f"| uninterrupted | - | {base_s:.2f} | (reference) | | |",
    ]
    best = min(base_s, scenarios[0][1])
    for name, seconds, kept, c in scenarios:
        lines.append(f"| {name} | {', '.join(f'{k} ({k / n:.0%})' for k in kept) or '-'} | {seconds:.2f} | "
                     f"{'yes' if c['metrics_equal'] else 'NO'} | {'yes' if c['rest_equal'] else 'NO'} | "
                     f"{'yes' if c['cases_equal'] else 'NO'} |")
    short = ["again"] + [f"{round(p * 100)}%" for p in POINTS] + ["3 interrupts"]
    lines += [
        "",
        "Largest absolute difference of each metric from the uninterrupted run (the goal is 0.0 exactly):",
        "",
        "| metric | uninterrupted | " + " | ".join(short) + " |",
        "|---|---:|" + "---:|" * len(short),
    ]
    for m in metric_names:
        value = ref["metrics"][m]
        cells = [f"{c['diffs'][m]:.1e}" if c["diffs"][m] else "0.0" for *_, c in scenarios]
        lines.append(f"| {m} | {'n/a' if value is None else f'{value:.6f}'} | " + " | ".join(cells) + " |")
    worst = max(d for *_, c in scenarios for d in c["diffs"].values())
    all_equal = all(c["metrics_equal"] and c["rest_equal"] and c["cases_equal"] for *_, c in scenarios)
    lines += [
        "",
        f"Largest difference of any metric in any scenario: **{worst:.1e}**"
        + (" (bit-identical)" if worst == 0 else "") + "; everything but latency, wall time and reuse equal: "
        f"**{'yes' if all_equal else 'NO'}**. Latency percentiles and wall time differ by nature (each process "
        "times its own requests; a resumed report's latency covers the kept cases' stored times and the new "
        "ones') and are not compared. Wall time: each interrupted process pays start-up and the model's fit "
        f"again, and the cases in flight at the interrupt run again: against the better uninterrupted run "
        f"({best:.2f} s), one interrupt and the resume took "
        + ", ".join(f"{seconds / best:.2f}x" for name, seconds, kept, _ in scenarios if len(kept) == 1)
        + f" (at 25%, 50%, 75%), three interrupts and the resume {scenarios[-1][1] / best:.2f}x. "
        f"1-minute load average before and after: {load_before:.1f}, {os.getloadavg()[0]:.1f} (on 2 CPUs; "
        "wall times are only as steady as the machine).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        "Reproduce: `LLMREC_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/eval_resume.py --write`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        OUT.write_text(text, encoding="utf-8")
        print(f"written: {OUT.relative_to(ROOT)}")
    return 0 if all_equal and worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
