"""Online experiments in `llmrec serve`: the quickstart served plain, as an A/B test, and interleaved.

Three servers of the quickstart run side by side as subprocesses, each logging to the file store: one without an
experiment, one with `--experiment ab:default,diverse2` (every request routed by the hash of its user to one of
two arms) and one with `--experiment interleave:default,diverse2` (both arms run for every request and their lists
are merged by team draft). The `diverse2` variant allows 2 items per category instead of 3, a change that costs
nothing, so the A/B server's cost is the routing and the interleaving server's the second arm plus the merge. The
spec is a copy of specs/quickstart.yaml in a temporary folder with that variant added (its ranker's model_path
made absolute, so the trained ranker is reused). Rounds alternate the contenders, the order shifting each round,
each giving the saturation load (N keep-alive clients back to back, the load generator of
benchmarks/serve_load.py, the request mix of benchmarks/executor_overhead.py, every request valid) for D
seconds. Reported per contender, as the median over the rounds and the spread (min-max): the server's CPU time
per request (user + system of the server process, psutil), throughput, p50/p99 latency; then the ratios to the
plain server (expected: A/B about 1x, interleaving about 0.5x, since it runs two arms per request), and whether
the log holds an impression for every answer.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_experiments.py            # 7 rounds x 6 s (about 3 min)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_experiments.py --quick    # 2 rounds x 3 s
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_experiments.py --write    # also write RESULTS.md's section
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_md import write_section  # noqa: E402
from serve_load import QUICKSTART, Server, _free_port, _median_range, _stop, _wait_ready  # noqa: E402
from serve_logging import bodies, logged_impressions  # noqa: E402

HEADING = "## Serve online experiments: A/B and interleaving vs none (benchmarks/serve_experiments.py)"
VARIANT = "\nvariants:\n  diverse2:\n    nodes.diverse.config.max_per_category: 2\n"


def bench_spec(folder: Path) -> Path:
    """The quickstart with the `diverse2` variant, in ``folder``, its ranker's model folder the original one."""
    text = QUICKSTART.read_text(encoding="utf-8")
    models = (QUICKSTART.parent / "../runs/quickstart/models").resolve()
    assert "model_path: ../runs/quickstart/models" in text, "the quickstart's ranker moved: update this benchmark"
    text = text.replace("model_path: ../runs/quickstart/models", f"model_path: {models}")
    text = text.replace("# yaml-language-server: $schema=../schemas/llmrec-spec.schema.json\n", "")
    path = folder / "quickstart_experiment.yaml"
    path.write_text(text.rstrip("\n") + "\n" + VARIANT, encoding="utf-8")
    return path


class Contender(Server):
    """`llmrec serve` of the spec with ``extra`` options, started once and kept up."""

    def __init__(self, label: str, spec: Path, extra: list[str], max_concurrency: int) -> None:
        self.name, self.workers, self.port, self._label = "llmrec", 1, _free_port(), label
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMREC_LOAD_PLUGINS": ""}
        cmd = [str(Path(sys.executable).with_name("llmrec")), "serve", str(spec), "--port", str(self.port),
               "--log-level", "warning", "--max-concurrency", str(max_concurrency), "--reload-interval", "0",
               *extra]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            self.ready_s = _wait_ready(self.port, self.proc, timeout=300) - t0
        except BaseException:
            _stop(self.proc)
            raise

    @property
    def label(self) -> str:
        return self._label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="clients of the saturation load")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of each load round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; each runs every contender once")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 3.0
    work = Path(tempfile.mkdtemp(prefix="llmrec-serve-experiments-"))
    spec = bench_spec(work)
    options = {"no experiment": [], "A/B (ab:default,diverse2)": ["--experiment", "ab:default,diverse2"],
               "interleaving (interleave:default,diverse2)": ["--experiment", "interleave:default,diverse2"]}
    names = list(options)
    logs = {name: work / f"logs{i}" for i, name in enumerate(names)}
    servers: dict[str, Contender] = {}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    answered = dict.fromkeys(names, 0)
    try:
        for name in names:
            servers[name] = Contender(name, spec, [*options[name], "--log-dir", str(logs[name])],
                                      max(64, args.clients * 2))
            print(f"{name}: ready after {servers[name].ready_s:.1f} s", flush=True)
        for name in names:  # warm-up: first requests, lazy imports, caches
            answered[name] += servers[name].measure(args.clients, 2.0, bodies=bodies(2000, 0))["valid_ok"]
        for r in range(args.rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                m = servers[name].measure(args.clients, args.seconds, bodies=bodies(4000, 17 * (r + 1)))
                rows[name].append(m)
                answered[name] += m["valid_ok"]
                print(f"round {r + 1}/{args.rounds} {name}: {m['throughput']:.1f} req/s, {m['cpu_ms']:.2f} ms "
                      f"CPU/request, p50 {m['p50']:.0f} ms, p99 {m['p99']:.0f} ms, 5xx {m['5xx']}", flush=True)
    finally:
        for s in servers.values():
            s.stop()  # SIGTERM: each server writes what is queued and fsyncs
    impressions = {name: logged_impressions(logs[name]) for name in names}
    shutil.rmtree(work, ignore_errors=True)
    base = rows[names[0]]
    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_experiments.py" + (
        " --quick" if args.quick else f" --rounds {args.rounds} --seconds {args.seconds:g} --clients {args.clients}"
    ) + (" --write" if args.write else "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        HEADING,
        "",
        f"`{command}` on {platform.machine()}, {cores} cores shared with the load generator; the quickstart with a "
        f"`diverse2` variant (max 2 items per category), one worker each, every server logging to the file store, "
        f"{args.rounds} rounds x {args.seconds:g} s alternating the three servers, {args.clients} clients back to "
        "back, every request valid; medians (min-max).",
        "",
        "| contender | CPU ms/request | req/s | p50 ms | p99 ms | 5xx | ready s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ms in rows.items():
        lines.append(f"| {name} | {_median_range([m['cpu_ms'] for m in ms], '.2f')} | "
                     f"{_median_range([m['throughput'] for m in ms], '.1f')} | "
                     f"{_median_range([m['p50'] for m in ms], '.0f')} | {_median_range([m['p99'] for m in ms], '.0f')}"
                     f" | {sum(m['5xx'] for m in ms)} | {servers[name].ready_s:.1f} |")
    lines.append("")
    for name in names[1:]:
        thr = [b["throughput"] / a["throughput"] for a, b in zip(base, rows[name])]
        cpu = [b["cpu_ms"] / a["cpu_ms"] for a, b in zip(base, rows[name])]
        lines.append(f"- {name} / no experiment: throughput {statistics.median(thr):.3f}x (per round "
                     f"{min(thr):.3f}-{max(thr):.3f}), CPU per request {statistics.median(cpu):.3f}x (per round "
                     f"{min(cpu):.3f}-{max(cpu):.3f}).")
    complete = all(impressions[n] == answered[n] for n in names)
    lines.append("- Impressions logged / answers given (warm-up included): " + ", ".join(
        f"{n}: {impressions[n]} / {answered[n]}" for n in names) + ".")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(HEADING, text)
        print("wrote benchmarks/RESULTS.md")
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
