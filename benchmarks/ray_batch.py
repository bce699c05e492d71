"""Ray as the batch engine, measured on this machine: local vs Ray with 1 and 2 workers (actors).

Two workloads, each run by ``llmrec batch`` / ``llmrec embed``'s own functions
(:func:`llmrec.distributed.batch.run_batch`, :func:`llmrec.distributed.embedding.embed_catalog`):

- **eval**: ``llmrec eval specs/movielens_cf.yaml`` (PureSVD) over the 943 MovieLens 100K test users of the
  temporal split, through :func:`llmrec.eval.runner.evaluate`, the function the command calls, with the engine
  ``--engine`` picks (local: :class:`~llmrec.eval.runner.LocalEngine`; ray:
  :class:`~llmrec.distributed.eval_engine.RayEvalEngine`, its default batches of 64 cases), each job into a fresh
  ``--out`` folder (nothing resumed); the driver loads the dataset and fits the SVD once (for the provenance
  stamp and the local engine's runtime), and each Ray worker once more;
- **catalog embedding**: a synthetic catalog (seeded titles, e.g. "compact walnut desk lamp 8812"), all-MiniLM-L6-v2
  through llmrec's Embedder; ``--embed-items`` of it (default 4,000: 100K would take some 10 minutes per job on
  2 shared cores), extrapolated to 100K as ``fixed + 100000 / rate`` (below).

Contenders alternate within each round (the order rotated every round, so that a burst of other work on the
machine falls on each). Per job: wall seconds and CPU seconds of this process and every process under it (Ray's
raylet, GCS and workers included), sampled every 0.1 s with psutil (a process that exits between samples loses
at most its last 0.1 s). Reported: medians over the rounds, throughput ratios against the local engine, and
outputs compared exactly with the local engine's (eval: every metric, interval and answer of the report;
vectors: every float).

Ray's overhead: a job of one batch measures each contender's fixed cost (local: loading the spec or model once;
Ray: Ray Data's plan, the actor pool starting, each actor importing llmrec and loading the spec or model). The
per-batch overhead is ``((T_ray1 - fixed_ray1) - (T_local - fixed_local)) / batches``. ``ray.init`` (once per
cluster, not per job) is reported apart. The projection to N nodes assumes what the docs/scaling.md section
says: uniform rows, one worker per core, the driver's reading and writing not the bottleneck.

    LLMREC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_batch.py [--rounds 3] \
        [--embed-items 4000] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "movielens_cf.yaml"
OUT = ROOT / "benchmarks" / "results" / "ray_batch.md"
CONTENDERS = ("local", "ray-1", "ray-2")
FULL_CATALOG = 100_000
EVAL_CASES = 943  # the temporal split's test users
EVAL_BATCH = 64  # llmrec.distributed.eval_engine.DEFAULT_EVAL_BATCH (checked in run_eval_job)
EMBED_BATCH = 256

ADJ = ["compact", "rugged", "classic", "modern", "vintage", "slim", "deluxe", "portable", "quiet", "smart", "bright",
       "soft", "heavy-duty", "eco", "premium", "mini", "wide", "foldable", "wireless", "handmade"]
MATERIAL = ["walnut", "steel", "cotton", "bamboo", "leather", "ceramic", "glass", "wool", "carbon", "linen", "oak",
            "copper", "nylon", "marble", "silicone"]
NOUN = ["desk lamp", "water bottle", "running shoe", "backpack", "coffee grinder", "yoga mat", "headphones",
        "cookbook", "tent", "kettle", "notebook", "office chair", "rain jacket", "blender", "board game", "camera",
        "sofa cushion", "bike helmet", "frying pan", "wall clock", "sunglasses", "keyboard", "plant pot", "scarf"]


def titles(n: int, seed: int = 16) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(ADJ)} {rng.choice(MATERIAL)} {rng.choice(NOUN)} {rng.randrange(10_000)}" for _ in range(n)]


class TreeCPU:
    """CPU seconds of this process and its descendants over a block, sampled every 0.1 s (psutil)."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self.stop = threading.Event()

    def _sample(self, into: dict[int, float]) -> None:
        import psutil

        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                into[p.pid] = t.user + t.system
            except psutil.Error:
                pass

    def __enter__(self) -> TreeCPU:
        self._sample(self.base)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(0.1):
            self._sample(self.seen)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._sample(self.seen)
        self.cpu = sum(v - self.base.get(pid, 0.0) for pid, v in self.seen.items())


def run_eval_job(contender: str, users: int | None, out: Path) -> None:
    from llmrec.distributed.eval_engine import DEFAULT_EVAL_BATCH, RayEvalEngine
    from llmrec.eval.runner import LocalEngine, evaluate

    assert DEFAULT_EVAL_BATCH == EVAL_BATCH

    engine = LocalEngine() if contender == "local" else RayEvalEngine(workers=int(contender.split("-")[1]))
    report = evaluate([SPEC], users=users, progress=False, out=out, engine=engine)
    (result,) = report.results
    assert result.not_run is None and result.reused == 0, result.not_run
    data = {"metrics": result.metrics, "intervals": result.intervals, "answers": result.answers,
            "n_cases": result.n_cases}
    (out / "report.json").write_text(json.dumps(data, sort_keys=True, default=str), encoding="utf-8")


def run_embed_job(contender: str, texts: list[str], out: Path) -> None:
    from llmrec.distributed.embedding import EmbedSource, embed_catalog

    engine, workers = ("local", None) if contender == "local" else ("ray", int(contender.split("-")[1]))
    source = EmbedSource([f"i{i}" for i in range(len(texts))], texts, "all-MiniLM-L6-v2")
    embed_catalog(source, out, engine=engine, workers=workers, batch_size=EMBED_BATCH, index="exact")


def timed(fn, *args) -> tuple[float, float]:
    with TreeCPU() as cpu:
        t0 = time.perf_counter()
        fn(*args)
        wall = time.perf_counter() - t0
    return wall, cpu.cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--embed-items", type=int, default=4000)
    ap.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import numpy as np
    import ray

    work = Path(tempfile.mkdtemp(prefix="ray-batch-"))
    texts = titles(args.embed_items)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(work / "ray"))
    ray_init = time.perf_counter() - t0

    jobs = {"eval": (run_eval_job, None, EVAL_CASES, EVAL_BATCH),
            "eval-fixed": (run_eval_job, EVAL_BATCH, EVAL_BATCH, EVAL_BATCH),
            "embed": (run_embed_job, texts, len(texts), EMBED_BATCH),
            "embed-fixed": (run_embed_job, texts[:EMBED_BATCH], EMBED_BATCH, EMBED_BATCH)}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    same: dict[str, bool] = {}
    for rnd in range(args.rounds):
        order = CONTENDERS[rnd % 3:] + CONTENDERS[:rnd % 3]
        for job, (fn, data, _, _) in jobs.items():
            for contender in order:
                folder = work / f"{job}-{contender}-{rnd}"
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / ("out" if job.startswith("eval") else "emb")
                times.setdefault((job, contender), []).append(timed(fn, contender, data, target))
                print(f"round {rnd + 1} {job:12s} {contender:6s} wall {times[(job, contender)][-1][0]:7.2f} s  "
                      f"cpu {times[(job, contender)][-1][1]:7.2f} s", file=sys.stderr, flush=True)
            for contender in CONTENDERS[1:]:  # every contender's output against the local engine's
                a, b = work / f"{job}-local-{rnd}", work / f"{job}-{contender}-{rnd}"
                if job.startswith("eval"):
                    ok = (a / "out" / "report.json").read_bytes() == (b / "out" / "report.json").read_bytes()
                else:
                    ok = np.array_equal(np.load(a / "emb" / "vectors.npy"), np.load(b / "emb" / "vectors.npy"))
                same[job] = same.get(job, True) and ok
    ray.shutdown()

    def med(job: str, contender: str, what: int = 0) -> float:
        return statistics.median(t[what] for t in times[(job, contender)])

    lines = [f"# Ray batch engine: local vs Ray with 1 and 2 workers ({platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, shared; Ray {ray.__version__})", "",
             f"Command: `LLMREC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_batch.py "
             f"--rounds {args.rounds} --embed-items {args.embed_items}`", "",
             f"`ray.init(num_cpus=2)` (once per cluster, not per job): {ray_init:.1f} s.", ""]
    for job, unit, what in (("eval", "cases", f"llmrec eval movielens_cf, {EVAL_CASES} test users, batches of "
                             f"{EVAL_BATCH} (--engine ray's default)"),
                            ("embed", "items", f"{len(texts)} synthetic titles, MiniLM, batches of {EMBED_BATCH}")):
        n, batches = jobs[job][2], -(-jobs[job][2] // jobs[job][3])
        lines += [f"## {what}", "", f"Outputs identical to the local engine's: {same[job]}.", "",
                  f"| engine | wall s (median) | {unit}/s | throughput vs local | CPU s | CPU s per 1k {unit} | "
                  "fixed cost s (one-batch job) |", "|---|---|---|---|---|---|---|"]
        base = n / med(job, "local")
        for c in CONTENDERS:
            wall, cpu = med(job, c), med(job, c, 1)
            lines.append(f"| {c} | {wall:.2f} | {n / wall:,.0f} | {n / wall / base:.2f}x | {cpu:.1f} | "
                         f"{1000 * cpu / n:.2f} | {med(job + '-fixed', c):.2f} |")
        fixed_l, fixed_1, fixed_2 = (med(job + "-fixed", c) for c in CONTENDERS)
        var_l, var_1, var_2 = med(job, "local") - fixed_l, med(job, "ray-1") - fixed_1, med(job, "ray-2") - fixed_2
        per_batch = (var_1 - var_l) / max(batches - 1, 1)
        rate_1 = n / max(var_1, 1e-9)  # one Ray worker's rows/s once running
        lines += ["", f"Ray's overhead: fixed per job {fixed_1 - fixed_l:+.2f} s over the local engine's "
                  f"({fixed_1:.2f} vs {fixed_l:.2f} s); per batch of {jobs[job][3]} {1000 * per_batch:+.1f} ms "
                  f"({1e6 * per_batch / jobs[job][3]:+.0f} us per {unit[:-1]}); the second worker's speed-up once "
                  f"running {var_1 / max(var_2, 1e-9):.2f}x (2 workers on 2 shared cores)."]
        if job == "embed":
            for c, var, fixed in (("local", var_l, fixed_l), ("ray-1", var_1, fixed_1), ("ray-2", var_2, fixed_2)):
                lines.append(f"- {c}: {FULL_CATALOG:,} items extrapolated: {fixed + FULL_CATALOG * var / n:,.0f} s "
                             f"(fixed {fixed:.1f} s + {FULL_CATALOG:,} / {n / max(var, 1e-9):,.0f} items/s)")
        lines += ["", f"Projection to N nodes of c cores each (one worker per core, rate {rate_1:,.0f} {unit}/s per "
                  f"worker as measured with 1 worker): T(N) = {fixed_1:.1f} s + rows / (N x c x {rate_1:,.0f}); e.g. "
                  f"1M {unit} on 4 nodes x 16 cores: {fixed_1 + 1e6 / (64 * rate_1):,.0f} s, on 1 such node "
                  f"{fixed_1 + 1e6 / (16 * rate_1):,.0f} s.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        OUT.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
