"""OpenTelemetry tracing in `llmrec serve`: CPU per request with tracing off vs on.

Three apps of specs/quickstart.yaml live in one process (`create_app`, lifespan run, resources loaded), the same
spec and options but for tracing: off (``tracing=None``, as without ``--otel`` and ``OTEL_TRACES_EXPORTER``); on
with the SDK's BatchSpanProcessor (what ``--otel`` uses) feeding an exporter that drops every batch (the server's
cost without a collector to send to: encoding and sending are the exporter's own); and on with the
SimpleSpanProcessor (each span exported as it ends, what ``llmrec run`` uses). Each request goes through the whole
HTTP path (httpx's ASGI transport, no sockets): the request span with the caller's ``traceparent`` continued, the
run and node spans built from the trace, the ``X-Trace-Id`` header. Rounds alternate the contenders, the order
rotating each round; each answers the same N requests one after another (the request mix of
benchmarks/executor_overhead.py: known and unknown users, with and without a query) and, when tracing, waits
until their spans are exported. Reported per contender: process CPU time per request (user + system of the whole
process, the export thread included; ``time.process_time``), median over rounds and the spread (min-max); the
ratios on / off; and the spans alone: ``Tracing.record_run`` of one quickstart trace, over and over.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/otel_overhead.py            # 9 rounds x 400 requests
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/otel_overhead.py --quick    # 3 rounds x 100
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/otel_overhead.py --write    # also write RESULTS.md's section
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from executor_overhead import QUICKSTART, requests  # noqa: E402
from results_md import write_section  # noqa: E402

HEADING = "## OpenTelemetry tracing on vs off (benchmarks/otel_overhead.py)"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def dropping_exporter() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        """Counts the spans it is handed and drops them."""

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    return Drop()


async def answer_all(client: Any, bodies: list[dict[str, Any]], tracing: Any = None) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) to answer ``bodies`` one after another; with ``tracing``, until their
    spans have been exported too (so that the export thread's work is counted in its round)."""
    cpu, wall = time.process_time(), time.perf_counter()
    for body in bodies:
        r = await client.post("/v1/recommend", json=body, headers={"traceparent": TRACEPARENT})
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
    if tracing is not None:
        tracing.flush()
    return time.process_time() - cpu, time.perf_counter() - wall


async def bench(rounds: int, n: int) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    import httpx

    from llmrec import telemetry
    from llmrec.serve.app import ServeOptions, create_app

    exporter, simple_exporter = dropping_exporter(), dropping_exporter()
    tracing = telemetry.configure([exporter])
    simple = telemetry.configure([simple_exporter], simple=True)
    options = ServeOptions(spec=str(QUICKSTART), reload_interval=0, log_level="warning")
    contenders = {"tracing off": None, "tracing on (batch processor, dropping exporter)": tracing,
                  "tracing on (simple processor, dropping exporter)": simple}
    rows: dict[str, list[float]] = {name: [] for name in contenders}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, tr in contenders.items():
            app = create_app(options, tracing=tr)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bench"))
            for _ in range(600):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            clients[name] = client
        names = list(contenders)
        for name in names:  # warm-up: lazy imports, caches, the first spans
            await answer_all(clients[name], requests(n))
        assert tracing is not None
        tracing.flush()
        before = exporter.spans
        traced = 0
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                bodies = requests(n + 7 * r)[7 * r:]
                cpu, wall = await answer_all(clients[name], bodies, contenders[name])
                if contenders[name] is tracing:
                    traced += n
                rows[name].append(cpu / n * 1000)
                print(f"round {r + 1}/{rounds} {name}: {cpu / n * 1000:.3f} ms CPU/request, "
                      f"{n / wall:.0f} req/s", flush=True)
        tracing.flush()
        spans_per_request = (exporter.spans - before) / traced
        # the spans alone: one quickstart run's trace turned into spans (and exported) over and over
        svc = next(iter(contenders))  # any app: the trace is the same shape
        server = clients[svc]._transport.app.state.server  # noqa: SLF001
        result = await server.current.runtime.run(requests(1)[0])
        spans_alone = []
        for _ in range(rounds):
            cpu = time.process_time()
            for _ in range(n):
                tracing.record_run(result.trace)
            tracing.flush()
            spans_alone.append((time.process_time() - cpu) / n * 1e6)
    tracing.shutdown()
    simple.shutdown()
    return {"rows": rows, "spans_per_request": spans_per_request, "record_run_us": spans_alone,
            "run_spans": 1 + sum(1 for r in result.trace.nodes if r.status != "pending")}


def median_range(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="rounds; each runs every contender once")
    parser.add_argument("--requests", type=int, default=400, help="requests per contender and round")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 requests")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests = 3, 100
    os.environ.setdefault("LLMREC_LOAD_PLUGINS", "")
    result = asyncio.run(bench(args.rounds, args.requests))
    rows = result["rows"]
    off_name, on_name, simple_name = list(rows)
    off, on = statistics.median(rows[off_name]), statistics.median(rows[on_name])
    per_round = [b / a for a, b in zip(rows[off_name], rows[on_name])]
    simple_round = [b / a for a, b in zip(rows[off_name], rows[simple_name])]
    alone, run_spans = result["record_run_us"], result["run_spans"]
    spans = result["spans_per_request"]
    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/otel_overhead.py" + (
        " --quick" if args.quick else f" --rounds {args.rounds} --requests {args.requests}") + (
        " --write" if args.write else "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        HEADING,
        "",
        f"`{command}` on {platform.machine()}, Python {platform.python_version()}, {cores} cores shared with other "
        f"work; specs/quickstart.yaml served in process (httpx ASGI transport), {args.rounds} rounds x "
        f"{args.requests} requests one after another, the apps alternating (the order rotating each round); "
        "process CPU time per request (the span processor's thread included), medians (min-max).",
        "",
        "| contender | CPU ms/request |",
        "|---|---|",
        f"| {off_name} | {median_range(rows[off_name], '.3f')} |",
        f"| {on_name} | {median_range(rows[on_name], '.3f')} |",
        f"| {simple_name} | {median_range(rows[simple_name], '.3f')} |",
        "",
        f"On / off: CPU per request {on / off:.3f}x of the medians, {statistics.median(per_round):.3f}x the median "
        f"of the rounds' ratios (per round {min(per_round):.3f}-{max(per_round):.3f}); {spans:.1f} spans per "
        "request (the request span, the run span and one per node that ran). The simple processor (each span "
        f"exported as it ends, on the request's thread): {statistics.median(simple_round):.3f}x the median of the "
        f"rounds' ratios (per round {min(simple_round):.3f}-{max(simple_round):.3f}).",
        "",
        f"The spans alone (`Tracing.record_run` of one quickstart trace, {run_spans} spans, built and exported, "
        f"{args.requests} calls per round, {args.rounds} rounds): {median_range(alone, '.0f')} us CPU per run, "
        f"{statistics.median(alone) / run_spans:.1f} us per span. With tracing off the request path pays a few "
        "`is None` checks and imports nothing of OpenTelemetry (tests/serve/test_otel.py checks the import).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(HEADING, text)
        print("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
