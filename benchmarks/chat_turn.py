"""One conversational turn of specs/headphones_chat.yaml without a model: served (`llmrec serve`, the session
keeping the typed state) vs the same turns through `Runtime.run` in this process (the state passed by hand).

No model is configured, so every turn takes the degraded path the spec ships with: rules and MiniLM zero-shot
intents for understanding, the rule policy, the template question or the fitting items. A conversation is the
same four messages (a greeting, the type and use, a budget, a brand ruled out); each round plays C conversations,
each under a new session id, one request at a time (a user waits for each reply), on each contender in turn (the
order alternating per round). Reported per contender: the latency of a turn (p50, p99 over the round's turns; the
served one as the client sees it, HTTP included), the CPU time per turn (the server process's user + system for
`llmrec serve`, this process's for the Runtime), as medians over the rounds with the spread (min-max), and the
ratios served / in process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/chat_turn.py              # 5 rounds x 25 conversations
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/chat_turn.py --quick      # 2 rounds x 5 conversations
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/chat_turn.py --write      # also write RESULTS.md's section
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_md import write_section  # noqa: E402
from serve_load import Server, _median_range, _stop, cpu_seconds, cpu_used  # noqa: E402

SPEC = ROOT / "specs" / "headphones_chat.yaml"
HEADING = "## A chat turn without a model: served vs in process (benchmarks/chat_turn.py)"
CONVERSATION = ("Hi, I need new headphones", "wireless earbuds for the gym", "under $80 please", "not Voltix")


def quantiles(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) >= 2 else [ms[0]] * 99
    return q[49], q[98]


def served_round(port: int, pid: int, conversations: int) -> dict[str, Any]:
    lat: list[float] = []
    statuses: set[int] = set()
    before = cpu_seconds(pid)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(conversations):
            sid = "bench-" + uuid.uuid4().hex[:12]
            for message in CONVERSATION:
                t0 = time.perf_counter()
                r = client.post("/v1/recommend", json={"message": message}, headers={"X-Session-Id": sid})
                lat.append((time.perf_counter() - t0) * 1000)
                statuses.add(r.status_code)
                assert r.status_code == 200 and r.json()["state"]["turn"] >= 1, r.text
    cpu = cpu_used(before, cpu_seconds(pid))
    p50, p99 = quantiles(lat)
    return {"p50": p50, "p99": p99, "cpu_ms": 1000 * cpu / len(lat), "turns": len(lat), "statuses": statuses}


def runtime_round(rt: Any, conversations: int) -> dict[str, Any]:
    lat: list[float] = []

    async def play() -> None:
        for _ in range(conversations):
            state = None
            for message in CONVERSATION:
                t0 = time.perf_counter()
                result = await rt.run({"message": message}, state=state)
                lat.append((time.perf_counter() - t0) * 1000)
                state = result.state

    cpu0 = time.process_time()
    asyncio.run(play())
    cpu = time.process_time() - cpu0
    p50, p99 = quantiles(lat)
    return {"p50": p50, "p99": p99, "cpu_ms": 1000 * cpu / len(lat), "turns": len(lat), "statuses": {200}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=25, help="conversations (4 turns each) per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds x 5 conversations")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.conversations = 2, 5
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("LLMREC_MODEL", None)

    from llmrec.api import open_runtime

    server = Server("llmrec", 1, 64, spec=SPEC)
    rt = open_runtime(SPEC)
    try:
        asyncio.run(rt.start())
        served_round(server.port, server.proc.pid, 2)  # warm-up: both paths once
        runtime_round(rt, 2)
        rows: dict[str, list[dict[str, Any]]] = {"served": [], "runtime": []}
        for i in range(args.rounds):
            order = ("served", "runtime") if i % 2 == 0 else ("runtime", "served")
            for name in order:
                if name == "served":
                    rows[name].append(served_round(server.port, server.proc.pid, args.conversations))
                else:
                    rows[name].append(runtime_round(rt, args.conversations))
            print(f"round {i + 1}: " + ", ".join(f"{n} p50 {rows[n][-1]['p50']:.2f} ms p99 {rows[n][-1]['p99']:.2f} "
                                                  f"ms cpu {rows[n][-1]['cpu_ms']:.2f} ms" for n in order), flush=True)
    finally:
        _stop(server.proc)
    labels = {"served": "llmrec serve, 1 worker (session store, HTTP)", "runtime": "Runtime.run in process"}
    lines = [HEADING, "",
             f"`HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/chat_turn.py --rounds {args.rounds} --conversations "
             f"{args.conversations}{' --write' if args.write else ''}` (Python {platform.python_version()}, "
             f"{platform.machine()}, {os.cpu_count()} cores, shared, no model: the degraded path); "
             f"{args.rounds} alternating rounds of {args.conversations} four-turn conversations, one request at a "
             "time; medians over the rounds (min-max).", "",
             "| contender | turn p50 ms | turn p99 ms | CPU ms/turn | non-200 |", "|---|---:|---:|---:|---:|"]
    for name in ("served", "runtime"):
        r = rows[name]
        lines.append(f"| {labels[name]} | {_median_range([x['p50'] for x in r], '.2f')} | "
                     f"{_median_range([x['p99'] for x in r], '.2f')} | {_median_range([x['cpu_ms'] for x in r], '.2f')}"
                     f" | {sum(1 for x in r for s in x['statuses'] if s != 200)} |")
    ratio = {k: [s[k] / q[k] for s, q in zip(rows["served"], rows["runtime"])] for k in ("p50", "p99", "cpu_ms")}
    lines += ["", "Served / in process, per round: " + ", ".join(
        f"{k.replace('cpu_ms', 'CPU per turn')} {statistics.median(v):.2f}x ({min(v):.2f}-{max(v):.2f})"
        for k, v in ratio.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
