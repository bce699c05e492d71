"""Query-vector LRU (issue 13): quickstart requests with a query, the embedder's LRU on vs off, in one run.

Both contenders are Runtimes of the same quickstart graph; the "off" one gets its own `all-MiniLM-L6-v2`
Embedder with ``query_cache=0`` as a preset resource, so every request encodes its query. The queries follow a
Zipf law (s = 1.1) over a vocabulary of shop searches built from the demo catalog's titles (two-word and
three-word prefixes, e.g. "Alpine Fox", "Alpine Fox Expedition"), so head searches repeat across requests
and the tail stays long, as search traffic does; each round draws fresh requests (users u1..u120 and guests).
The LRU lives as long as its runtime, as in `llmrec serve`, so later rounds see the hit rate a warm server
would. Rounds alternate which contender goes first; times are CPU time (time.process_time) per request; the
median of the per-round ratios is reported beside each contender's median round.

    .venv/bin/python benchmarks/query_cache.py            # print
    .venv/bin/python benchmarks/query_cache.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import llmrec
from llmrec.embed import Embedder
from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
MARKER = "## Query-vector LRU (issue 13)"


def vocabulary(catalog: Any) -> list[str]:
    """Distinct searches from the catalog's titles: each title's 2- and 3-word prefixes, lower-cased."""
    seen: dict[str, None] = {}
    for item in catalog:
        words = item.title.lower().split()
        for n in (2, 3):
            if len(words) >= n:
                seen.setdefault(" ".join(words[:n]))
    return list(seen)


def draw(vocab: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    picks = rng.choice(len(vocab), size=n, p=weights / weights.sum())
    return [{"user_id": f"u{int(rng.integers(1, 121))}" if i % 4 else f"guest{seed}-{i}", "query": vocab[q], "k": 10}
            for i, q in enumerate(picks)]


async def timed(rt: llmrec.Runtime, reqs: list[dict[str, Any]]) -> float:
    start = time.process_time()
    for r in reqs:
        await rt.run(r)
    return (time.process_time() - start) / len(reqs) * 1e6


async def bench(requests: int, rounds: int) -> dict[str, Any]:
    graph = llmrec.validate(QUICKSTART)
    on = llmrec.Runtime(graph)
    await on.start()
    embedder = on.resources["minilm"]
    off_model = await asyncio.to_thread(Embedder(embedder.name, query_cache=0).load)
    off = llmrec.Runtime(graph, resources={"minilm": off_model})
    await off.start()
    vocab = vocabulary(on.resources["shop"].catalog)
    warm = draw(vocab, 20, seed=10_000)  # loads models and indexes; not timed
    await timed(on, warm)
    await timed(off, warm)
    times: dict[str, list[float]] = {"on": [], "off": []}
    ratios = []
    for r in range(rounds):
        reqs = draw(vocab, requests, seed=r)
        order = [("on", on), ("off", off)] if r % 2 == 0 else [("off", off), ("on", on)]
        got = {name: await timed(rt, reqs) for name, rt in order}
        for name in got:
            times[name].append(got[name])
        ratios.append(got["on"] / got["off"])
    info = embedder.query_info()
    same = np.allclose(embedder.encode_query(vocab[0]), off_model.encode([vocab[0]])[0], atol=1e-6)
    await on.close()
    await off.close()
    return {"on": statistics.median(times["on"]), "off": statistics.median(times["off"]),
            "ratio": statistics.median(ratios), "spread": (min(ratios), max(ratios)), "info": info,
            "vocab": len(vocab), "same": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    res = asyncio.run(bench(args.requests, args.rounds))
    info = res["info"]
    hit = info["hits"] / max(info["hits"] + info["misses"], 1)
    lines = [
        MARKER,
        "",
        f"`.venv/bin/python benchmarks/query_cache.py` ({args.requests} requests with a query x {args.rounds} "
        f"rounds, Zipf s=1.1 over {res['vocab']} searches; CPU time per request, median round; Python "
        f"{platform.python_version()}, {platform.machine()}, 2 cores, no GPU)",
        "",
        "| query LRU | us/request (CPU) | ratio on/off (median, min-max of rounds) | hit rate |",
        "|---|---:|---:|---:|",
        f"| off (`query_cache: 0`) | {res['off']:.0f} | | |",
        f"| on (1024 entries, the default) | {res['on']:.0f} | {res['ratio']:.2f} ({res['spread'][0]:.2f}-"
        f"{res['spread'][1]:.2f}) | {hit:.0%} |",
        "",
        f"A cached vector is the one `encode` gives (checked: {'identical' if res['same'] else 'DIFFERENT'}). "
        "The saving is the query's MiniLM encode on a hit; a miss costs what it did before. Requests without a "
        "query do not touch the LRU.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(MARKER, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
