"""Impression logging in `llmrec serve`: the quickstart with logging on (the file store) vs off.

Two servers of specs/quickstart.yaml run side by side as subprocesses, the same spec and options but for
`--log-dir` (the JSONL file store in a temporary folder) on one of them. Every request is valid (the request mix
of benchmarks/executor_overhead.py: known and unknown users, with and without a query), so every answer of the
logging server is an impression: the worst case for logging. Rounds alternate the two contenders, the order
shifting each round, each giving both the saturation load (N keep-alive clients back to back, the load generator
of benchmarks/serve_load.py) for D seconds. Reported per contender, as the median over the rounds and the spread
(min-max): the server's CPU time per request (user + system of the server process, psutil), throughput, p50/p99
latency; then the ratios on / off (goal: throughput >= 0.95x) and how many impressions the log holds against the
answers the logging server gave (all of them, written by the time it shut down).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_logging.py            # 9 rounds x 6 s (about 2.5 min)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_logging.py --quick    # 2 rounds x 3 s
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_logging.py --write    # also write RESULTS.md's section
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from executor_overhead import requests  # noqa: E402
from results_md import write_section  # noqa: E402
from serve_load import QUICKSTART, Server, _free_port, _median_range, _stop, _wait_ready  # noqa: E402

HEADING = "## Serve logging on vs off (benchmarks/serve_logging.py)"
GOAL = 0.95


class Contender(Server):
    """`llmrec serve` of the quickstart with ``extra`` options, started once and kept up."""

    def __init__(self, label: str, extra: list[str], max_concurrency: int) -> None:
        self.name, self.workers, self.port, self._label = "llmrec", 1, _free_port(), label
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMREC_LOAD_PLUGINS": ""}
        cmd = [str(Path(sys.executable).with_name("llmrec")), "serve", str(QUICKSTART), "--port", str(self.port),
               "--log-level", "warning", "--max-concurrency", str(max_concurrency), "--reload-interval", "0",
               *extra]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            self.ready_s = _wait_ready(self.port, self.proc) - t0
        except BaseException:
            _stop(self.proc)
            raise

    @property
    def label(self) -> str:
        return self._label


def bodies(n: int, salt: int) -> list[tuple[bytes, bool]]:
    reqs = requests(n + salt)[salt:]
    return [(json.dumps(r).encode(), True) for r in reqs]


def logged_impressions(folder: Path) -> int:
    total = 0
    for path in folder.glob("impressions-*.jsonl"):
        with path.open("rb") as fh:
            total += sum(1 for line in fh if line.endswith(b"\n"))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="clients of the saturation load")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of each load round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds; each runs both contenders once")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 3.0
    logs = Path(tempfile.mkdtemp(prefix="llmrec-serve-logging-"))
    options = {"logging off": [], "logging on (file store)": ["--log-dir", str(logs)]}
    names = list(options)
    servers: dict[str, Contender] = {}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    answered = 0
    try:
        for name in names:
            servers[name] = Contender(name, options[name], max(64, args.clients * 2))
            print(f"{name}: ready after {servers[name].ready_s:.1f} s", flush=True)
        for name in names:  # warm-up: first requests, lazy imports, caches
            m = servers[name].measure(args.clients, 2.0, bodies=bodies(2000, 0))
            if name != names[0]:
                answered += m["valid_ok"]
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                m = servers[name].measure(args.clients, args.seconds, bodies=bodies(4000, 17 * (r + 1)))
                rows[name].append(m)
                if name != names[0]:
                    answered += m["valid_ok"]
                print(f"round {r + 1}/{args.rounds} {name}: {m['throughput']:.1f} req/s, {m['cpu_ms']:.2f} ms "
                      f"CPU/request, p50 {m['p50']:.0f} ms, p99 {m['p99']:.0f} ms, 5xx {m['5xx']}", flush=True)
    finally:
        for s in servers.values():
            s.stop()  # SIGTERM: the logging server writes what is queued and fsyncs
    impressions = logged_impressions(logs)
    shutil.rmtree(logs, ignore_errors=True)
    med = {name: {k: statistics.median(m[k] for m in ms) for k in ("cpu_ms", "throughput", "p50", "p99")}
           for name, ms in rows.items()}
    off, on = med[names[0]], med[names[1]]
    per_round = [b["throughput"] / a["throughput"] for a, b in zip(rows[names[0]], rows[names[1]])]
    cpu_round = [b["cpu_ms"] / a["cpu_ms"] for a, b in zip(rows[names[0]], rows[names[1]])]
    ratio = on["throughput"] / off["throughput"]
    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_logging.py" + (
        " --quick" if args.quick else f" --rounds {args.rounds} --seconds {args.seconds:g} --clients {args.clients}"
    ) + (" --write" if args.write else "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        HEADING,
        "",
        f"`{command}` on {platform.machine()}, {cores} cores shared with the load generator; specs/quickstart.yaml, "
        f"one worker each, {args.rounds} rounds x {args.seconds:g} s alternating the two servers, {args.clients} "
        "clients back to back, every request valid (every answer of the logging server an impression); medians "
        "(min-max).",
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
        f"On / off: throughput {ratio:.3f}x (per round {min(per_round):.3f}-{max(per_round):.3f}; goal >= {GOAL}: "
        f"{'met' if ratio >= GOAL else 'NOT met'}), CPU per request {on['cpu_ms'] / off['cpu_ms']:.3f}x (per round "
        f"{min(cpu_round):.3f}-{max(cpu_round):.3f}), p99 {on['p99'] / off['p99']:.2f}x. The log holds "
        f"{impressions} impressions for the {answered} answers the logging server gave (warm-up included).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(HEADING, text)
        print("wrote benchmarks/RESULTS.md")
    return 0 if impressions == answered else 1


if __name__ == "__main__":
    raise SystemExit(main())
