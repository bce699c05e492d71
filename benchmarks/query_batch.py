"""Coalesced query encodes in `llmrec serve`: the quickstart with every request's query new, batching on vs off.

Two servers of the quickstart run side by side, the same spec but for the embedder's `query_batch` (32, the
default, vs 1: each query encoded alone) and with the query LRU off in both, so that every request encodes its
query (the worst case for the LRU, the best for batching). Every request is a known user with a query no other
request asks (``"<word> <word> <n>"``). Rounds alternate the two contenders, the order shifting each round, each
giving both the saturation load (N clients back to back) for D seconds. Reported: the server's CPU time per
request (user + system, psutil: the headline), throughput and p50/p99 latency, medians over the rounds with
their spread, and the ratio batched / alone; then the floor: one query encoded alone vs in a batch of 8 by the
same Embedder in this process (CPU per query).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/query_batch.py            # 5 rounds x 10 s
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/query_batch.py --quick    # 2 rounds x 3 s
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/query_batch.py --write    # also write RESULTS.md's section
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_md import write_section  # noqa: E402
from serve_load import QUICKSTART, Server, _median_range  # noqa: E402

WORDS = ["quiet", "rugged", "compact", "vintage", "wireless", "waterproof", "leather", "ceramic", "folding",
         "electric", "boots", "kettle", "lamp", "backpack", "speaker", "jacket", "grinder", "tent", "mug", "desk"]


def variant(folder: Path, query_batch: int) -> Path:
    """The quickstart with the query LRU off and ``query_batch`` set; its ranker shared with the quickstart's."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["resources"]["minilm"]["config"].update(query_cache=0, query_batch=query_batch)
    text = yaml.safe_dump(data, sort_keys=False).replace("../runs/quickstart/models", "../quickstart/models")
    path = folder / f"quickstart_query_batch_{query_batch}.yaml"
    path.write_text(text)
    return path


def bodies(n: int, salt: int) -> list[tuple[bytes, bool]]:
    out = []
    for i in range(n):
        query = f"{WORDS[(i * 7 + salt) % len(WORDS)]} {WORDS[(i * 3 + 10) % len(WORDS)]} {salt}-{i}"
        out.append((json.dumps({"user_id": f"u{i % 120 + 1}", "query": query, "k": 10}).encode(), True))
    return out


def floor(rounds: int = 5) -> dict[str, float]:
    """CPU ms per query: encoded alone vs 8 at a time, by one Embedder in this process."""
    from llmrec.embed import Embedder

    e = Embedder(query_cache=0, query_batch=1).load()
    texts = [json.loads(b)["query"] for b, _ in bodies(64, 99)]
    e.encode(texts[:8])
    alone, batched = [], []
    for _ in range(rounds):
        t = time.process_time()
        for q in texts:
            e.encode([q])
        alone.append(1000 * (time.process_time() - t) / len(texts))
        t = time.process_time()
        for i in range(0, len(texts), 8):
            e.encode(texts[i:i + 8])
        batched.append(1000 * (time.process_time() - t) / len(texts))
    return {"alone": statistics.median(alone), "batch8": statistics.median(batched)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 3.0
    folder = ROOT / "runs" / "bench_query_batch"
    folder.mkdir(parents=True, exist_ok=True)
    contenders = {"batched (query_batch 32)": 32, "alone (query_batch 1)": 1}
    servers = {name: Server("llmrec", 1, 256, spec=variant(folder, qb)) for name, qb in contenders.items()}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        names = list(servers)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                m = servers[name].measure(args.clients, args.seconds, bodies=bodies(4000, r * 10 + len(name)))
                rows[name].append(m)
                print(f"round {r + 1} {name}: {m['cpu_ms']:.2f} ms CPU/request, {m['throughput']:.1f} req/s, "
                      f"p50 {m['p50']:.0f} ms, p99 {m['p99']:.0f} ms, 5xx {m['5xx']}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    f = floor()
    med = {name: {k: statistics.median(m[k] for m in ms) for k in ("cpu_ms", "throughput", "p50", "p99")}
           for name, ms in rows.items()}
    b, a = med["batched (query_batch 32)"], med["alone (query_batch 1)"]
    heading = "## Coalesced query encodes in serve (benchmarks/query_batch.py)"
    lines = [
        heading,
        "",
        f"`{' '.join(['benchmarks/query_batch.py', *sys.argv[1:]])}` on {platform.machine()}, "
        f"{args.rounds} rounds x {args.seconds:g} s, {args.clients} clients back to back, every request a known "
        "user with a query no other request asks, query LRU off; medians (min-max).",
        "",
        "| contender | CPU ms/request | req/s | p50 ms | p99 ms | 5xx |",
        "|---|---|---|---|---|---|",
    ]
    for name, ms in rows.items():
        lines.append(f"| {name} | {_median_range([m['cpu_ms'] for m in ms], '.2f')} | "
                     f"{_median_range([m['throughput'] for m in ms], '.1f')} | "
                     f"{_median_range([m['p50'] for m in ms], '.0f')} | {_median_range([m['p99'] for m in ms], '.0f')}"
                     f" | {sum(m['5xx'] for m in ms)} |")
    lines += [
        "",
        f"Batched / alone: CPU per request {b['cpu_ms'] / a['cpu_ms']:.2f}x, throughput "
        f"{b['throughput'] / a['throughput']:.2f}x, p99 {b['p99'] / a['p99']:.2f}x. Floor (one Embedder, this "
        f"process): {f['alone']:.2f} ms CPU per query alone, {f['batch8']:.2f} ms in batches of 8 "
        f"({f['batch8'] / f['alone']:.2f}x).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(heading, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
