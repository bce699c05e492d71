"""CPU per quickstart request (issue 13), this tree against a baseline commit, in one run, and against the floor.

Each contender is a fresh process per round (the baseline checked out with ``git worktree``, its llmrec first on
PYTHONPATH, the same venv) that starts the quickstart's Runtime in process, warms it with 50 requests, then
times ``Runtime.run`` over a fixed request mix with ``time.process_time`` (CPU of the whole process). The order of
the contenders alternates by round. Mixes:

- ``no query``: known demo users u1...u120 in a fixed shuffled order, no query;
- ``with a query``: the same users, each request a query no other request asks (so the query-vector LRU never
  hits and every request encodes its query with MiniLM).

The floor is the model work alone, measured in this tree's process: LightGBM predicting one request's candidate
matrix (no query), plus MiniLM encoding one new query (with a query).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/request_cost.py [--baseline 984c78b] [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
MARKER = "## Request CPU (issue 13)"
N = 400
CHILD = r"""
import asyncio, json, os, random, sys, time
from llmrec.api import open_runtime
mix, n, floor = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
users = [f"u{i}" for i in range(1, 121)]
random.Random(0).shuffle(users)
words = ["boots", "coffee", "tent", "lamp", "knife", "jacket", "mug", "stove", "pack", "glove"]

def request(i):
    r = {"user_id": users[i % len(users)]}
    if mix == "query":
        r["query"] = f"{words[i % 10]} {words[(i // 10) % 10]} {i}"
    return r

async def main():
    rt = open_runtime("specs/quickstart.yaml")
    await rt.start()
    for i in range(50):
        await rt.run(request(n + i))
    t = time.process_time()
    for i in range(n):
        await rt.run(request(i))
    out = {"us": (time.process_time() - t) / n * 1e6}
    if floor:
        ranker = rt.plans["ranked"].instance
        seen = {}
        result = await rt.run(request(0), on_node=lambda rec, v: seen.__setitem__(rec.node_id, v))
        x = ranker._featurizer.matrix(ranker._features, seen["personal"], rt.resources["shop"].catalog,
                                      seen["profile"], rt.resources["shop"].train, None)
        t = time.process_time()
        for _ in range(n):
            ranker._booster.predict(x, num_threads=1)
        out["lightgbm_us"] = (time.process_time() - t) / n * 1e6
        emb = rt.resources["minilm"]
        t = time.process_time()
        for i in range(n):
            emb.encode([f"floor query {i} {words[i % 10]}"])
        out["encode_us"] = (time.process_time() - t) / n * 1e6
    await rt.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def child(tree: Path, mix: str, floor: bool = False) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, mix, str(N), "1" if floor else "0"], cwd=tree, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="984c78b", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    mixes = {"no query": "plain", "with a query (every query new)": "query"}
    us: dict[tuple[str, str], list[float]] = {}
    floors: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            (base / "runs").symlink_to(ROOT / "runs")  # the same trained ranker and cached item vectors
            trees = {"this tree": ROOT, f"baseline {rev}": base}
            names = list(trees)
            for r in range(args.rounds):
                for who in (names if r % 2 == 0 else names[::-1]):
                    for label, mix in mixes.items():
                        got = child(trees[who], mix, floor=who == names[0] and mix == "plain")
                        us.setdefault((label, who), []).append(got["us"])
                        if "lightgbm_us" in got:
                            floors.append(got)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lgb = statistics.median(f["lightgbm_us"] for f in floors)
    enc = statistics.median(f["encode_us"] for f in floors)
    floor = {"no query": lgb, "with a query (every query new)": lgb + enc}
    lines = [
        MARKER, "",
        f"`HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/request_cost.py --baseline {rev} --rounds {args.rounds}` "
        f"(Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, no GPU, shared; "
        f"`Runtime.run` in process, {N} requests per round, CPU per request, median of {args.rounds} alternating "
        "rounds, spread min-max)", "",
        f"| request | this tree | baseline {rev} | ratio | floor (model calls alone) | ratio to floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in mixes:
        a, b = us[(label, names[0])], us[(label, names[1])]
        ma, mb = statistics.median(a), statistics.median(b)
        lines.append(f"| {label} | {ma / 1000:.2f} ms ({min(a) / 1000:.2f}-{max(a) / 1000:.2f}) | "
                     f"{mb / 1000:.2f} ms ({min(b) / 1000:.2f}-{max(b) / 1000:.2f}) | {ma / mb:.2f}x | "
                     f"{floor[label] / 1000:.2f} ms | {ma / floor[label]:.1f}x |")
    lines += ["", f"Floor: LightGBM on one request's 100-candidate matrix {lgb / 1000:.2f} ms; MiniLM (ONNX) "
              f"encoding one new query {enc / 1000:.2f} ms."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(MARKER, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
