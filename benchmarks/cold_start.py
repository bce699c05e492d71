"""Cold start (issue 13): what each CLI call costs before it does anything, this tree against a baseline commit,
in one run.

The baseline is checked out with ``git worktree`` into a temporary folder and run from there (its llmrec
first on PYTHONPATH, the same venv and dependencies), so both contenders run on the same machine at the same
time. Each round runs every command for both, the order alternating by round; a command's CPU time is the
child's (resource.getrusage), wall time is the parent's clock. Warm: every contender runs each command once
before the measured rounds (files in the page cache, the quickstart ranker trained, the ONNX file converted).

- ``import llmrec``; ``llmrec version``; ``llmrec validate specs/quickstart.yaml``;
- ``llmrec run specs/quickstart.yaml`` with a query (the model loaded, the query encoded, the ranker run);
- ``llmrec serve specs/quickstart.yaml``: seconds until ``/readyz`` answers 200.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cold_start.py [--baseline c0bd9b0] [--rounds 3] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
MARKER = "## Cold start (issue 13)"
QUERY = '{"user_id": "u1", "query": "alpine fox"}'
COMMANDS = {
    "import llmrec": ["-c", "import llmrec"],
    "llmrec version": ["-m", "llmrec", "version"],
    "llmrec validate quickstart": ["-m", "llmrec", "validate", "specs/quickstart.yaml"],
    "llmrec run quickstart (with a query)": ["-m", "llmrec", "run", "specs/quickstart.yaml", "--input", QUERY],
}
SERVE = "llmrec serve quickstart: ready"
BYTECODE = ("bytecode not written: PYTHONDONTWRITEBYTECODE is set, so every run compiles llmrec from source"
            if os.environ.get("PYTHONDONTWRITEBYTECODE") else "bytecode cached")


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def timed(tree: Path, args: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env_for(tree), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def serve_ready(tree: Path) -> tuple[float, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llmrec", "serve", "specs/quickstart.yaml", "--port", str(port),
                             "--log-level", "warning"], cwd=tree, env=env_for(tree),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llmrec serve exited with {proc.returncode} in {tree}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.02)
        wall = time.perf_counter() - start
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")  # utime and stime of the running server, in clock ticks
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        return cpu, wall
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="c0bd9b0", help="the commit to compare with (default: before "
                                                                "issue 13's cold-start work)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            trees = {"this tree": ROOT, f"baseline {rev}": base}
            measures = {**{name: (lambda t, a=a: timed(t, a)) for name, a in COMMANDS.items()}, SERVE: serve_ready}
            for tree in trees.values():  # warm: caches, the trained ranker, the converted ONNX file
                for fn in measures.values():
                    fn(tree)
            cpu: dict[tuple[str, str], list[float]] = {}
            wall: dict[tuple[str, str], list[float]] = {}
            names = list(trees)
            for r in range(args.rounds):
                for who in (names if r % 2 == 0 else names[::-1]):
                    for what, fn in measures.items():
                        c, w = fn(trees[who])
                        cpu.setdefault((what, who), []).append(c)
                        wall.setdefault((what, who), []).append(w)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [
        MARKER, "",
        f"`HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cold_start.py --baseline {rev} --rounds {args.rounds}` "
        f"(Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, no GPU, shared; "
        f"{BYTECODE}; warm files; median of {args.rounds} alternating rounds, spread min-max)", "",
        f"| command | this tree CPU | wall | baseline {rev} CPU | wall | ratio (CPU) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for what in measures:
        a, b = cpu[(what, names[0])], cpu[(what, names[1])]
        wa, wb = wall[(what, names[0])], wall[(what, names[1])]
        lines.append(f"| {what} | {statistics.median(a):.2f} s ({min(a):.2f}-{max(a):.2f}) | "
                     f"{statistics.median(wa):.2f} s | {statistics.median(b):.2f} s ({min(b):.2f}-{max(b):.2f}) | "
                     f"{statistics.median(wb):.2f} s | {statistics.median(a) / statistics.median(b):.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(MARKER, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
