"""Serving under load: `llmrec serve specs/quickstart.yaml` (1 and 2 workers) vs a handwritten FastAPI app.

The three servers run as subprocesses on loopback, started one after the other and kept up; the load generator
(a small keep-alive HTTP/1.1 client on asyncio streams, lighter than httpx, in this process) then runs rounds,
each giving every contender every load for D seconds, the order shifting by one each round, so that a burst of
other work on the machine falls on all of them. Loads: saturation (N clients back to back) and a fixed offered
load (R requests/s; latency counted from each request's scheduled time). The request mix is the one of
benchmarks/executor_overhead.py (known and unknown users, with and without a query) with every 10th request
malformed (bad JSON, a wrong type, an unknown field, a non-object). The handwritten app calls the same
quickstart node instances in the same order with the same policies (executor_overhead.handwritten) and
validates requests with a hand-written pydantic model.

Reported per contender and load, as the median over the rounds and the spread (min-max): the server's CPU time
per request (user + system of the server process and every process under it, from psutil: the headline, as it
holds up when other work shares the cores), throughput, p50/p99 latency of valid requests; then 5xx (goal 0),
valid requests answered (goal: all), time from process start to /readyz 200, RSS after the load, and the ratios
llmrec / handwritten (throughput goal >= 0.9, p99 goal <= 1.2) and 2 workers / 1 worker.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py            # 5 rounds x 10 s per cell
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py --quick    # 2 rounds x 3 s
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py --write    # also write results/serve_load.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from fastapi import FastAPI, Request  # module level: FastAPI resolves the endpoints' annotations here
from fastapi.responses import Response

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
RESULT_FILE = ROOT / "benchmarks" / "results" / "serve_load.md"
MALFORMED = [b'{"user_id": ', b'{"user_id": 5}', b'{"user_id": "u1", "colour": "red"}', b"[]",
             b'{"user_id": "u2", "k": "ten"}']


# -- the handwritten server ----------------------------------------------------------------------------------


def handwritten_app() -> Any:
    """What a user would write by hand: FastAPI, a pydantic request model, the same node calls in order."""
    from contextlib import asynccontextmanager

    from pydantic import BaseModel, ConfigDict, Field, ValidationError
    from pydantic_core import to_jsonable_python

    import llmrec

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from executor_overhead import handwritten

    class Req(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: str
        query: str = ""
        k: int = Field(10, ge=1, le=100)

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        runtime = llmrec.Runtime(llmrec.validate(QUICKSTART))
        await runtime.start()
        state["hand"] = handwritten(runtime, True)
        yield
        await runtime.close()

    app = FastAPI(lifespan=lifespan)

    def error(status: int, type_: str, message: str, field: str | None = None) -> Response:
        body = json.dumps({"error": {"type": type_, "message": message, "field": field}})
        return Response(body.encode(), status, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"ready":true}', 200 if "hand" in state else 503, media_type="application/json")

    @app.post("/v1/recommend")
    async def recommend(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except ValueError as exc:
            return error(400, "invalid_json", str(exc))
        try:
            req = Req.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            return error(422, "invalid_input", first["msg"], ".".join(map(str, first["loc"])) or None)
        outputs = await state["hand"](req.model_dump())
        text = json.dumps({"outputs": to_jsonable_python(outputs), "degraded": False}, ensure_ascii=False,
                          separators=(",", ":"))
        return Response(text.encode(), media_type="application/json")

    return app


def run_handwritten(port: int) -> None:
    import uvicorn

    uvicorn.run(handwritten_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the load generator ----------------------------------------------------------------------------------------


def request_bodies(n: int) -> list[tuple[bytes, bool]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from executor_overhead import requests

    out = []
    for i, r in enumerate(requests(n)):
        if i % 10 == 9:
            out.append((MALFORMED[(i // 10) % len(MALFORMED)], False))
        else:
            out.append((json.dumps(r).encode(), True))
    return out


async def _client(port: int, bodies: list[tuple[bytes, bool]], offset: int, until: float,
                  results: list[tuple[float, int, bool]], schedule: tuple[float, float] | None = None) -> None:
    """One keep-alive connection sending requests back to back, or, with ``schedule = (first, interval)``, one at
    each ``first + j * interval`` (an offered load); latency then counts from the scheduled time, so a server
    that falls behind shows its queueing in the latencies instead of slowing the clients down."""
    reader = writer = None
    i = offset
    j = 0
    while time.perf_counter() < until:
        body, valid = bodies[i % len(bodies)]
        i += 1
        head = (f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        if schedule is not None:
            started = schedule[0] + j * schedule[1]
            j += 1
            if started >= until:
                break
            await asyncio.sleep(max(0.0, started - time.perf_counter()))
        else:
            started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            status_line = await reader.readline()  # type: ignore[union-attr]
            status = int(status_line.split()[1])
            length = 0
            while True:
                line = await reader.readline()  # type: ignore[union-attr]
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)  # type: ignore[union-attr]
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = 0  # no answer: counted as a failure
            if writer is not None:
                writer.close()
            reader = writer = None
        results.append((time.perf_counter() - started, status, valid))
    if writer is not None:
        writer.close()


def load(port: int, clients: int, seconds: float, rate: float = 0.0,
         bodies: list[tuple[bytes, bool]] | None = None) -> dict[str, Any]:
    """``clients`` clients for ``seconds`` against ``port``: back to back, or ``rate`` requests/s in all; the
    request mix by default, else ``bodies`` in turn."""
    bodies = bodies or request_bodies(240)
    results: list[tuple[float, int, bool]] = []

    async def main() -> float:
        t0 = time.perf_counter()
        until = t0 + seconds
        tasks = []
        for c in range(clients):
            schedule = (t0 + c / rate, clients / rate) if rate > 0 else None
            tasks.append(_client(port, bodies, c * 7, until, results, schedule))
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    return {"wall": asyncio.run(main()), "results": results}


def run_load(port: int, clients: int, seconds: float, rate: float = 0.0) -> None:
    print(json.dumps(load(port, clients, seconds, rate)))


# -- the orchestrator ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[psutil.Process]:
    """The server process and every process under it (uvicorn's workers and their helpers)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live process of the server's tree, by pid."""
    out = {}
    for proc in _tree(pid):
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the tree spent between two snapshots (a process that started in between counts in full)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _rss_mb(pid: int) -> float:
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a graceful shutdown), then kill after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("server never became ready")


class Server:
    """One contender, started once and kept up while the rounds alternate between the contenders."""

    def __init__(self, name: str, workers: int, max_concurrency: int, spec: Path = QUICKSTART) -> None:
        self.name, self.workers, self.port = name, workers, _free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMREC_LOAD_PLUGINS": ""}
        if name == "handwritten":
            cmd = [sys.executable, __file__, "--handwritten-server", str(self.port)]
        else:
            cmd = [str(Path(sys.executable).with_name("llmrec")), "serve", str(spec), "--port", str(self.port),
                   "--workers", str(workers), "--log-level", "warning", "--max-concurrency", str(max_concurrency)]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            self.ready_s = _wait_ready(self.port, self.proc) - t0
        except BaseException:
            _stop(self.proc)
            raise

    @property
    def label(self) -> str:
        if self.name == "handwritten":
            return "handwritten FastAPI, same nodes"
        return f"llmrec serve, {self.workers} worker{'s' if self.workers > 1 else ''}"

    def measure(self, clients: int, seconds: float, rate: float = 0.0,
                bodies: list[tuple[bytes, bool]] | None = None) -> dict[str, Any]:
        """One load round: throughput, latency of the valid requests, and the server's CPU per request."""
        before, cpu0 = cpu_seconds(self.proc.pid), time.process_time()
        data = load(self.port, clients, seconds, rate, bodies)
        after, cpu1 = cpu_seconds(self.proc.pid), time.process_time()
        results = data["results"]
        valid = [r for r in results if r[2]]
        bad = [r for r in results if not r[2]]
        lat = sorted(r[0] * 1000 for r in valid if r[1] == 200)
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
        n = max(len(results), 1)
        return {
            "requests": len(results), "throughput": len(results) / data["wall"],
            "cpu_ms": 1000 * cpu_used(before, after) / n, "loadgen_cpu_ms": 1000 * (cpu1 - cpu0) / n,
            "valid": len(valid), "valid_ok": sum(1 for r in valid if r[1] == 200), "malformed": len(bad),
            "malformed_4xx": sum(1 for r in bad if 400 <= r[1] < 500),
            "5xx": sum(1 for r in results if r[1] >= 500), "no_answer": sum(1 for r in results if r[1] == 0),
            "p50": q[49], "p99": q[98],
        }

    def stop(self) -> None:
        _stop(self.proc)


def _median_range(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="clients of the saturation load")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each load round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every contender once")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s of the fixed offered load (0: none)")
    parser.add_argument("--rate-clients", type=int, default=20, help="connections the offered load is spread on")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="worker counts of llmrec serve to compare (default: 1 2)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s: about a minute after startup")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/serve_load.md")
    parser.add_argument("--handwritten-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.handwritten_server:
        run_handwritten(args.handwritten_server)
        return 0
    if args.load:
        run_load(args.load, args.clients, args.seconds, args.rate)
        return 0
    seconds = 3.0 if args.quick else args.seconds
    rounds = 2 if args.quick else args.rounds
    warmup = 1.0 if args.quick else 3.0
    loads = [("saturation", args.clients, 0.0)] + ([("offered", args.rate_clients, args.rate)] if args.rate else [])
    servers: list[Server] = []
    try:
        for name, workers in [("handwritten", 1)] + [("llmrec", w) for w in args.workers]:
            servers.append(Server(name, workers, max(64, args.clients * 2)))  # one at a time: clean startup times
            print(f"{servers[-1].label}: ready after {servers[-1].ready_s:.1f} s", flush=True)
        for server in servers:
            server.measure(args.clients, warmup)  # warm-up: first requests, lazy imports, caches
        cells = [(s, ld) for ld in loads for s in servers]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {(s.label, ld[0]): [] for s, ld in cells}
        for r in range(rounds):  # alternate: each round runs every cell once, starting one further along
            for server, (load_name, clients, rate) in cells[r % len(cells):] + cells[:r % len(cells)]:
                row = server.measure(clients, seconds, rate)
                runs[(server.label, load_name)].append(row)
                print(f"round {r + 1}/{rounds} {server.label}, {load_name}: {row['throughput']:.1f} req/s, "
                      f"{row['cpu_ms']:.1f} ms CPU/req, p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms", flush=True)
        rss = {s.label: _rss_mb(s.proc.pid) for s in servers}
    finally:
        for server in servers:
            server.stop()
    text, ok = report(args, servers, loads, runs, rss, seconds, rounds, warmup)
    print(text)
    if args.write:
        RESULT_FILE.parent.mkdir(parents=True, exist_ok=True)
        RESULT_FILE.write_text(text)
        print(f"wrote {RESULT_FILE.relative_to(ROOT)}")
    return 0 if ok else 1


def report(args: argparse.Namespace, servers: list[Server], loads: list[tuple[str, int, float]],
           runs: dict[tuple[str, str], list[dict[str, Any]]], rss: dict[str, float], seconds: float, rounds: int,
           warmup: float) -> tuple[str, bool]:
    hand, ours = servers[0].label, servers[1].label

    def values(label: str, load_name: str, key: str) -> list[float]:
        return [r[key] for r in runs[(label, load_name)]]

    def ratio(label: str, load_name: str, key: str) -> tuple[float, list[float]]:
        """Ratio of the medians, and the ratio in each round (the two ran back to back)."""
        a, b = values(label, load_name, key), values(hand if label != hand else ours, load_name, key)
        return statistics.median(a) / statistics.median(b), [x / y for x, y in zip(a, b)]

    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py" + (
        " --quick" if args.quick else f" --rounds {rounds} --seconds {seconds:g} --clients {args.clients}"
        + (f" --rate {args.rate:g}" if args.rate else "")) + (
        f" --workers {' '.join(map(str, args.workers))}" if args.workers != [1, 2] else "") + " --write"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Serving under load (issues 5 and 13)",
        "",
        f"`{command}`",
        "",
        f"Contenders: {', '.join(s.label for s in servers)}, all started once (one after the other, for clean "
        f"startup times) and kept up; then {rounds} rounds, each running every contender under every load for "
        f"{seconds:g} s, starting one contender further along each round (after {warmup:g} s of warm-up each). "
        f"Loads: saturation = {args.clients} keep-alive clients sending back to back"
        + (f"; offered = {args.rate:g} requests/s spread over {args.rate_clients} connections, latency counted "
           "from each request's scheduled time (a server that falls behind shows it as latency)" if args.rate else "")
        + ". Every 10th request is malformed (bad JSON, a wrong type, an unknown field, a non-object). "
        f"Python {platform.python_version()}, {platform.machine()}, {cores} cores, no GPU, loopback.",
        "",
        "**CPU per request** is the user + system CPU time of the server's processes (the server and every process "
        "under it: uvicorn's workers) over the round, from psutil, divided by the requests answered: it does not "
        "depend much on what else runs on the machine. **Throughput and latency do**: the load generator runs on "
        "the same cores as the server, and this machine is shared with other work (test suites of other "
        "sessions ran during the measurement), so they are medians over rounds with their spread (min-max).",
        "",
    ]
    for load_name, clients, rate in loads:
        title = (f"Saturation: {clients} clients back to back" if not rate
                 else f"Offered load: {rate:g} requests/s")
        lines += [
            f"### {title}",
            "",
            "| server | CPU ms / request | req/s | p50 ms | p99 ms | valid answered | malformed -> 4xx | 5xx | "
            "no answer |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in servers:
            rs = runs[(s.label, load_name)]
            lines.append(
                f"| {s.label} | {_median_range(values(s.label, load_name, 'cpu_ms'), '.1f')} | "
                f"{_median_range(values(s.label, load_name, 'throughput'), '.1f')} | "
                f"{_median_range(values(s.label, load_name, 'p50'), '.0f')} | "
                f"{_median_range(values(s.label, load_name, 'p99'), '.0f')} | "
                f"{sum(r['valid_ok'] for r in rs)}/{sum(r['valid'] for r in rs)} | "
                f"{sum(r['malformed_4xx'] for r in rs)}/{sum(r['malformed'] for r in rs)} | "
                f"{sum(r['5xx'] for r in rs)} | {sum(r['no_answer'] for r in rs)} |")
        lines.append("")
    lines += [
        "| server | ready after s | RSS after the load MB (all processes) |",
        "|---|---:|---:|",
        *[f"| {s.label} | {s.ready_s:.1f} | {rss[s.label]:.0f} |" for s in servers],
        "",
        "### Ratios (median of the rounds; in brackets the lowest and highest ratio of one round's pair)",
        "",
    ]
    sat = loads[0][0]
    cpu_r, cpu_rs = ratio(ours, sat, "cpu_ms")
    thr_r, thr_rs = ratio(ours, sat, "throughput")
    p99_r, p99_rs = ratio(ours, sat, "p99")

    def rng(xs: list[float]) -> str:
        return f"[{min(xs):.3f}-{max(xs):.3f}]"

    lines += [
        f"- llmrec serve (1 worker) / handwritten, saturation: CPU per request **{cpu_r:.3f}** {rng(cpu_rs)}, "
        f"throughput {thr_r:.3f} {rng(thr_rs)}, p99 {p99_r:.3f} {rng(p99_rs)}.",
    ]
    if len(loads) > 1:
        off = loads[1][0]
        c, cs = ratio(ours, off, "cpu_ms")
        p, ps = ratio(ours, off, "p99")
        lines.append(f"- llmrec serve (1 worker) / handwritten, offered load: CPU per request **{c:.3f}** {rng(cs)}, "
                     f"p99 {p:.3f} {rng(ps)}.")
    for s in servers[2:]:
        for load_name, _, _ in loads:
            a = {k: values(s.label, load_name, k) for k in ("cpu_ms", "throughput", "p50", "p99")}
            b = {k: values(ours, load_name, k) for k in a}
            per = {k: [x / y for x, y in zip(a[k], b[k])] for k in a}
            med = {k: statistics.median(a[k]) / statistics.median(b[k]) for k in a}
            lines.append(f"- {s.workers} workers / 1 worker, {load_name}: CPU per request **{med['cpu_ms']:.3f}** "
                         f"{rng(per['cpu_ms'])}, throughput {med['throughput']:.3f} {rng(per['throughput'])}, "
                         f"p50 {med['p50']:.3f} {rng(per['p50'])}, p99 {med['p99']:.3f} {rng(per['p99'])}.")
    every = [r for rs in runs.values() for r in rs]
    goals = {
        "throughput ratio >= 0.9": thr_r >= 0.9,
        "p99 ratio <= 1.2": p99_r <= 1.2,
        "zero 5xx": all(r["5xx"] == 0 for r in every),
        "every valid request answered": all(r["valid_ok"] == r["valid"] and r["no_answer"] == 0 for r in every),
    }
    lines += [
        "",
        "Goals (llmrec serve with 1 worker against the handwritten app, saturation): "
        + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()) + ".",
        "",
        "The startup time includes loading all-MiniLM-L6-v2 and the demo shop; llmrec's also validates the spec "
        "and builds the plugin registry. llmrec's answers additionally feed Prometheus metrics (per-node latency "
        "histograms; with several workers, in multiprocess files) and apply the admission limit, body limit and "
        "session lookup. With N workers `llmrec serve` gives each max(1, cores // N) threads (LLMREC_THREADS, "
        "OMP/MKL/OPENBLAS_NUM_THREADS; docs/serving.md), so 2 workers on 2 cores run one thread each.",
        "",
    ]
    return "\n".join(lines), all(goals.values())


if __name__ == "__main__":
    sys.exit(main())
