"""LLM prompt cache: provider calls and latency, uncached vs cached (memory, disk, semantic, node-level disk).

A FakeProvider that sleeps a realistic latency (300 ms by default) stands in for the model. Each scenario runs
N distinct requests once (uncached: every one calls the provider) and then again (cached), one at a time, and
reports provider calls and the median request latency of both passes:

- memory: ``prompt_cache: true`` (same runtime);
- disk: ``prompt_cache: {backend: disk}``, the cached pass in a *new* Runtime (a restarted process);
- semantic: ``prompt_cache: {semantic: {threshold: T}}`` with the real all-MiniLM-L6-v2 embedder; the second pass
  sends *reworded* prompts (same liked titles in reverse order, with "and" before the last one), which an exact
  cache would miss; a third pass sends prompts about *other* titles, where any hit is a wrong answer;
- node: the executor's node-level ``cache: {backend: disk}`` (keyed on the node's inputs), new Runtime.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/llm_cache.py [--n 10] [--latency 0.3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "llm_cache.md"

TITLES = ["Alien", "Heat", "Ran", "Up", "Amelie", "Brazil", "Casablanca", "Dune", "Fargo", "Gattaca", "Hugo",
          "Inception", "Jaws", "Kes", "Laura", "Memento", "Network", "Oldboy", "Psycho", "Rocky", "Seven", "Tron",
          "Vertigo", "Wall-E", "Zodiac", "Ikiru", "Stalker", "Solaris", "Persona", "Metropolis"]

SCHEMA = "from pydantic import BaseModel\n\nclass Recs(BaseModel):\n    items: list[str]\n"


def spec_text(prompt_cache: str, node_cache: str = "", semantic: bool = False) -> str:
    inputs = '{model: "${resources.model}", liked: "${inputs.liked}"'
    inputs += ', cache_model: "${resources.minilm}"}' if semantic else "}"
    return f"""
name: llm-cache-bench
inputs:
  liked: {{type: array, items: string}}
resources:
  model: {{type: llm, config: {{provider: litellm, model: openai/bench}}}}
  minilm: {{type: embedder, config: {{model: all-MiniLM-L6-v2}}}}
nodes:
  pick:
    type: llm.prompt
    config:
      system: "You recommend films. Answer with JSON."
      template: "I liked {{{{ liked | join(', ') }}}}. Suggest three films."
      schema: schemas/recs.py:Recs
      prompt_cache: {prompt_cache}
    inputs: {inputs}
{node_cache}
outputs:
  items: ${{pick.items}}
"""


def requests(n: int, offset: int = 0) -> list[list[str]]:
    """N distinct liked lists of 3 titles."""
    out = []
    for i in range(n):
        j = (offset + 3 * i) % len(TITLES)
        out.append([TITLES[j], TITLES[(j + 1) % len(TITLES)], TITLES[(j + 2) % len(TITLES)]])
    return out


def reworded(liked: list[str]) -> list[str]:
    """The same titles, reversed, with 'and' before the last one: a different prompt, the same request."""
    r = list(reversed(liked))
    return [*r[:-2], f"{r[-2]} and {r[-1]}"]


async def timed_pass(rt: Any, batch: list[list[str]]) -> tuple[list[float], list[Any]]:
    times, results = [], []
    for liked in batch:
        t0 = time.perf_counter()
        results.append(await rt.run({"liked": liked}))
        times.append((time.perf_counter() - t0) * 1000)
    return times, results


async def main(n: int, latency: float, threshold: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from llmrec.api import validate
    from llmrec.embed import Embedder
    from llmrec.runtime.executor import Runtime
    from llmrec.testing import FakeProvider, write_spec

    def answer(request: Any) -> dict[str, Any]:
        return {"items": [f"film for <{request.messages[-1].content}>"]}

    t0 = time.perf_counter()
    embedder = Embedder("all-MiniLM-L6-v2").load()
    load_s = time.perf_counter() - t0
    embedder.encode(["warm-up", "warm-up again"])  # the first encodes are slow (lazy init): not the cache's cost
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"embedder_load_s": load_s}
    batch = requests(n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["LLMREC_CACHE_DIR"] = str(folder / "llmrec-cache")
        (folder / "schemas").mkdir()
        (folder / "schemas" / "recs.py").write_text(SCHEMA, encoding="utf-8")

        def runtime(name: str, text: str, fake: Any) -> Runtime:
            path = write_spec(folder, text, name)
            return Runtime(validate(path), resources={"model": fake, "minilm": embedder})

        def row(name: str, fake: Any, cold: list[float], warm: list[float], calls_cold: int, hits: int,
                note: str = "") -> None:
            rows.append({"scenario": name, "n": len(cold), "calls_cold": calls_cold,
                         "calls_warm": fake.calls - calls_cold, "hits": hits,
                         "cold_ms": statistics.median(cold), "warm_ms": statistics.median(warm), "note": note})

        # memory
        fake = FakeProvider(answer, delay=latency)
        rt = runtime("memory.yaml", spec_text("true"), fake)
        cold, _ = await timed_pass(rt, batch)
        calls = fake.calls
        warm, res = await timed_pass(rt, batch)
        row("memory (same runtime)", fake, cold, warm, calls, sum(r.trace.node("pick").cache == "prompt" for r in res))

        # disk, cached pass in a new runtime
        fake = FakeProvider(answer, delay=latency)
        text = spec_text("{backend: disk, path: prompt-cache}")
        cold, _ = await timed_pass(runtime("disk.yaml", text, fake), batch)
        calls = fake.calls
        warm, res = await timed_pass(runtime("disk.yaml", text, fake), batch)
        row("disk (new runtime)", fake, cold, warm, calls, sum(r.trace.node("pick").cache == "prompt" for r in res))

        # semantic, reworded prompts
        fake = FakeProvider(answer, delay=latency)
        rt = runtime("semantic.yaml", spec_text(f"{{semantic: {{threshold: {threshold}}}}}", semantic=True), fake)
        cold, first = await timed_pass(rt, batch)
        calls = fake.calls
        warm, res = await timed_pass(rt, [reworded(b) for b in batch])
        hits = [r.trace.node("pick").cache == "semantic" for r in res]
        same = sum(r.outputs == f.outputs for r, f in zip(res, first))
        row(f"semantic (reworded, threshold {threshold})", fake, cold, warm, calls, sum(hits),
            f"{same}/{n} answers equal the original prompt's")
        before = fake.calls
        far, res_far = await timed_pass(rt, requests(n, offset=1))
        wrong = sum(r.trace.node("pick").cache_hit for r in res_far)
        extra["semantic_far"] = {"n": n, "calls": fake.calls - before, "wrong_hits": wrong,
                                 "median_ms": statistics.median(far)}
        extra["semantic_example"] = (", ".join(batch[0]), ", ".join(reworded(batch[0])))
        # where the threshold has to sit: similarity of reworded prompts vs of prompts about other titles
        import numpy as np

        def prompts(lists: list[list[str]]) -> Any:
            return embedder.encode([f"I liked {', '.join(x)}. Suggest three films." for x in lists])

        base, again, other = prompts(batch), prompts([reworded(b) for b in batch]), prompts(requests(n, offset=1))
        same_sim = np.sum(base * again, axis=1)
        other_sim = (other @ base.T).max(axis=1)
        extra["similarity"] = {"reworded_min": float(same_sim.min()), "other_max": float(other_sim.max()),
                               "sweep": {t: (int((same_sim >= t).sum()), int((other_sim >= t).sum()))
                                         for t in (0.85, 0.9, 0.93, 0.95, 0.97)}}

        # node-level disk cache through the executor
        fake = FakeProvider(answer, delay=latency)
        text = spec_text("false", node_cache="    cache: {backend: disk}")
        cold, _ = await timed_pass(runtime("node.yaml", text, fake), batch)
        calls = fake.calls
        warm, res = await timed_pass(runtime("node.yaml", text, fake), batch)
        row("node-level cache: {backend: disk} (new runtime)", fake, cold, warm, calls,
            sum(r.trace.node("pick").status == "cached" for r in res))
    return rows, extra


def report(rows: list[dict[str, Any]], extra: dict[str, Any], args: argparse.Namespace, took: float) -> str:
    cmd = f"HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/llm_cache.py --n {args.n} --latency {args.latency} " \
          f"--threshold {args.threshold} --write"
    lines = [
        "# LLM prompt cache: provider calls and latency",
        "",
        f"Reproduce (from the repository root; about {took:.0f} s on this machine, {platform.machine()}, "
        f"Python {sys.version.split()[0]}):",
        "",
        f"    {cmd}",
        "",
        f"A FakeProvider sleeping {args.latency * 1000:.0f} ms per call stands in for the model. Each scenario sends "
        f"{args.n} distinct requests (cold pass: every one calls the provider), then the same requests again "
        "(warm pass), one at a time; latencies are medians of whole `Runtime.run` requests. The semantic warm pass "
        "sends reworded prompts (titles reversed, 'and' before the last), which the exact key misses; embeddings by "
        f"all-MiniLM-L6-v2 on CPU (model load {extra['embedder_load_s']:.1f} s, once).",
        "",
        "| scenario | requests | provider calls cold | provider calls warm | cache hits | cold ms (median) | "
        "warm ms (median) | warm/cold | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['n']} | {r['calls_cold']} | {r['calls_warm']} | {r['hits']} | "
                     f"{r['cold_ms']:.1f} | {r['warm_ms']:.2f} | {r['warm_ms'] / r['cold_ms']:.4f} | {r['note']} |")
    far = extra["semantic_far"]
    lines += [
        "",
        f"Semantic cache, prompts about other titles (any hit serves a wrong answer): {far['n']} requests, {far['calls']} provider "
        f"calls, {far['wrong_hits']} wrong hits, median {far['median_ms']:.1f} ms (provider latency plus one "
        "embedding).",
        f"Example rewording: '{extra['semantic_example'][0]}' -> '{extra['semantic_example'][1]}'. The 'other "
        "titles' prompts share two of their three titles with one of the cached prompts (the list shifted by one "
        "title), the hardest case for a semantic cache: they ask for something else in nearly the same words.",
        "",
        f"Cosine similarity (MiniLM): reworded vs original, lowest {extra['similarity']['reworded_min']:.3f}; other "
        f"titles vs the closest cached prompt, highest {extra['similarity']['other_max']:.3f}. Hits at each "
        "threshold (reworded hits wanted / other-title hits wrong):",
        "",
        "| threshold | reworded hits | wrong hits |",
        "|---:|---:|---:|",
        *[f"| {t} | {a}/{args.n} | {b}/{args.n} |" for t, (a, b) in extra["similarity"]["sweep"].items()],
        "",
        "So the threshold is a trade: a semantic cache over short, list-like prompts cannot both catch every "
        "rewording and never confuse two lists that differ by one title. Keep it off (exact cache only) for "
        "prompts whose meaning lives in ids or titles, or set it high and accept fewer hits.",
        "",
        "Cache hits are in the trace: `llm.prompt` hits set `cache_hit: true`, `cache: prompt|semantic` and zero "
        "tokens and cost on the node's record; node-level hits have status `cached`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--write", action="store_true", help=f"write {RESULT.relative_to(ROOT)}")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    rows, extra = asyncio.run(main(args.n, args.latency, args.threshold))
    text = report(rows, extra, args, time.perf_counter() - start)
    print(text)
    if args.write:
        RESULT.write_text(text, encoding="utf-8")
