"""`llmrec serve --engine ray` (Ray Serve) vs the local FastAPI server at equal cores: 1 replica vs 1 worker and
2 replicas vs 2 workers, on the quickstart mix of benchmarks/serve_load.py.

The servers, the load generator (keep-alive HTTP/1.1 clients on asyncio streams, every 10th request malformed),
the per-round measurement (server CPU per request from psutil over the server's whole process tree: for Ray, the
driver, GCS, raylet, the Serve controller, the HTTP proxy and the replicas, all started under the command) and the
readiness wait all come from benchmarks/serve_load.py, imported, not copied. Every contender is started once and
kept up; then each round runs every contender under every load, starting one contender further along each round,
so that other work on the machine falls on all of them. Reported: medians over rounds (min-max), and per pair
(Ray / local at the same cores) the ratio of the medians of throughput, p99 and CPU per request.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_serve.py                 # 5 rounds x 8 s per cell
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_serve.py --quick         # 2 rounds x 3 s
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_serve.py --write         # also write results/ray_serve.md
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_load  # noqa: E402 - benchmarks/ is not a package
from serve_load import QUICKSTART, ROOT, Server, _free_port, _median_range, _stop, _wait_ready  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "ray_serve.md"


class RayServer(Server):
    """`llmrec serve --engine ray --replicas N`, on a Ray of its own (its temp folder under a fresh tmp dir)."""

    def __init__(self, replicas: int, max_concurrency: int, spec: Path = QUICKSTART) -> None:
        self.name, self.workers, self.port = "ray", replicas, _free_port()
        self.tmp = tempfile.mkdtemp(prefix="llmrec-bench-ray-")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMREC_LOAD_PLUGINS": "", "RAY_TMPDIR": self.tmp}
        cmd = [str(Path(sys.executable).with_name("llmrec")), "serve", str(spec), "--engine", "ray", "--port",
               str(self.port), "--replicas", str(replicas), "--log-level", "warning", "--max-concurrency",
               str(max_concurrency)]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        try:
            self.ready_s = _wait_ready(self.port, self.proc) - t0
        except BaseException:
            _stop(self.proc)
            raise

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def label(self) -> str:
        return f"llmrec serve --engine ray, {self.workers} replica{'s' if self.workers > 1 else ''}"


def rotations(cells: list[Any], rounds: int) -> list[list[Any]]:
    """Each round's order of the cells: every cell once, starting one further along each round."""
    return [cells[r % len(cells):] + cells[:r % len(cells)] for r in range(rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="clients of the saturation load")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of each load round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every contender once")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s of the fixed offered load (0: none)")
    parser.add_argument("--rate-clients", type=int, default=20, help="connections the offered load is spread on")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="replica = worker counts to compare (default: 1 2)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/ray_serve.md")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    rounds = 2 if args.quick else args.rounds
    warmup = 1.0 if args.quick else 3.0
    loads = [("saturation", args.clients, 0.0)] + ([("offered", args.rate_clients, args.rate)] if args.rate else [])
    limit = max(64, args.clients * 2)
    servers: list[Server] = []
    try:
        for n in args.cores:  # one at a time: clean startup times
            for server in (lambda: Server("llmrec", n, limit), lambda: RayServer(n, limit)):
                servers.append(server())
                print(f"{servers[-1].label}: ready after {servers[-1].ready_s:.1f} s", flush=True)
        for server in servers:
            server.measure(args.clients, warmup)  # warm-up: first requests, lazy imports, caches
        bodies = serve_load.request_bodies(240)
        cells = [(s, ld) for ld in loads for s in servers]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {(s.label, ld[0]): [] for s, ld in cells}
        for r, order in enumerate(rotations(cells, rounds)):
            for server, (load_name, clients, rate) in order:
                row = server.measure(clients, seconds, rate, bodies)
                runs[(server.label, load_name)].append(row)
                print(f"round {r + 1}/{rounds} {server.label}, {load_name}: {row['throughput']:.1f} req/s, "
                      f"{row['cpu_ms']:.1f} ms CPU/req, p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms", flush=True)
        rss = {s.label: serve_load._rss_mb(s.proc.pid) for s in servers}
    finally:
        for server in servers:
            server.stop()
    text = report(args, servers, loads, runs, rss, seconds, rounds, warmup)
    print(text)
    if args.write:
        RESULT_FILE.parent.mkdir(parents=True, exist_ok=True)
        RESULT_FILE.write_text(text)
        print(f"wrote {RESULT_FILE.relative_to(ROOT)}")
    return 0


def report(args: argparse.Namespace, servers: list[Server], loads: list[tuple[str, int, float]],
           runs: dict[tuple[str, str], list[dict[str, Any]]], rss: dict[str, float], seconds: float, rounds: int,
           warmup: float) -> str:
    given = [a for a in sys.argv[1:] if a != "--write"]
    command = " ".join(["HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_serve.py", *given, "--write"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Serving on Ray Serve vs the local server (issue 16)",
        "",
        f"`{command}`",
        "",
        f"Contenders: {', '.join(s.label for s in servers)}, started one after the other and kept up; {rounds} "
        f"rounds, each running every contender under every load for {seconds:g} s, starting one further along "
        f"each round (after {warmup:g} s of warm-up each). Saturation = {args.clients} keep-alive clients back to "
        "back" + (f"; offered = {args.rate:g} requests/s over {args.rate_clients} connections, latency from each "
                  "request's scheduled time" if args.rate else "")
        + "; every 10th request malformed (benchmarks/serve_load.py's mix and load generator). "
        f"Python {platform.python_version()}, {platform.machine()}, {cores} cores shared with other work, loopback.",
        "",
        "CPU per request: user + system time of the server's whole process tree (for Ray: driver, GCS, raylet, "
        "Serve controller, HTTP proxy, replicas) over the round / requests answered.",
        "",
    ]

    def values(label: str, load_name: str, key: str) -> list[float]:
        return [r[key] for r in runs[(label, load_name)]]

    for load_name, clients, rate in loads:
        lines += [f"### {'Saturation: %d clients' % clients if not rate else 'Offered load: %g requests/s' % rate}",
                  "", "| server | CPU ms / request | req/s | p50 ms | p99 ms | valid answered | 5xx | no answer |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s in servers:
            rs = runs[(s.label, load_name)]
            lines.append(f"| {s.label} | {_median_range(values(s.label, load_name, 'cpu_ms'), '.1f')} | "
                         f"{_median_range(values(s.label, load_name, 'throughput'), '.1f')} | "
                         f"{_median_range(values(s.label, load_name, 'p50'), '.0f')} | "
                         f"{_median_range(values(s.label, load_name, 'p99'), '.0f')} | "
                         f"{sum(r['valid_ok'] for r in rs)}/{sum(r['valid'] for r in rs)} | "
                         f"{sum(r['5xx'] for r in rs)} | {sum(r['no_answer'] for r in rs)} |")
        lines.append("")
    lines += ["| server | ready after s | RSS after the load MB (all processes) |", "|---|---:|---:|",
              *[f"| {s.label} | {s.ready_s:.1f} | {rss[s.label]:.0f} |" for s in servers], "",
              "### Ratios Ray / local at equal cores (median of the rounds; in brackets the lowest and highest ratio "
              "of one round's pair)", ""]
    for local, ray in zip(servers[0::2], servers[1::2]):
        for load_name, _, _ in loads:
            parts = []
            for key, name in (("throughput", "throughput"), ("p99", "p99"), ("cpu_ms", "CPU per request")):
                a, b = values(ray.label, load_name, key), values(local.label, load_name, key)
                per = [x / y for x, y in zip(a, b)]
                parts.append(f"{name} **{statistics.median(a) / statistics.median(b):.3f}** "
                             f"[{min(per):.3f}-{max(per):.3f}]")
            lines.append(f"- {ray.workers} replica(s) / {local.workers} worker(s), {load_name}: " + ", ".join(parts))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
