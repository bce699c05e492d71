"""Executor overhead: llmrec's runtime vs a handwritten asyncio chain calling the same functions, in one run.

1. no-op: the quickstart's graph with every node replaced by an async no-op (same edges, same `when`):
   what the executor itself costs per node, as (llmrec - handwritten) / nodes. Goal: <= 30 us per node.
2. quickstart: the real quickstart nodes (same instances, same warmed indexes, same requests) driven by
   llmrec vs by a handwritten function that applies the same policies (when, timeout, cache, fallback).
   Goal: ratio llmrec / handwritten <= 1.05.

Rounds alternate between the two contenders (and which goes first) so that drift on a shared machine hits
both; times are CPU time (time.process_time). Noise on a shared VM only adds time, so each contender's fastest
round is reported, with the median of the per-round ratios beside it.

    .venv/bin/python benchmarks/executor_overhead.py            # print
    .venv/bin/python benchmarks/executor_overhead.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import llmrec
from llmrec import trust
from results_md import write_section

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


def requests(n: int) -> list[dict[str, Any]]:
    """A fixed mix: known users, unknown users, with and without a query."""
    queries = ["", "", "hiking boots", "", "espresso", "", "wireless headphones", ""]
    out = []
    for i in range(n):
        user = f"u{i % 120 + 1}" if i % 5 else f"guest{i}"
        out.append({"user_id": user, "query": queries[i % len(queries)], "k": 10})
    return out


def noop_spec(folder: Path) -> Path:
    """The quickstart's graph with the same edges and `when`, every node a no-op, no other policies."""
    data = yaml.safe_load(QUICKSTART.read_text())
    for node in data["nodes"].values():
        node["type"] = "bench.noop"
        for key in ("config", "cache", "timeout", "fallback", "retries"):
            node.pop(key, None)
    (folder / "plugins").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "_noop_plugin.py", folder / "plugins" / "noop.py")
    path = folder / "quickstart_noop.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def handwritten(runtime: llmrec.Runtime, with_policies: bool) -> Any:
    """The quickstart written by hand against the same node instances (what a user would write without llmrec):
    the same calls in dependency order, blocking nodes in a worker thread as llmrec runs them, and (with
    policies) the same cache, `when`, timeouts and fallbacks."""
    n = {node_id: plan.instance for node_id, plan in runtime._plans.items()}
    fallbacks = {node_id: plan.fallback.value for node_id, plan in runtime._plans.items() if plan.fallback}
    shop = runtime.resources.get("shop")
    catalog, train = (shop.catalog, shop.train) if shop is not None else (None, None)
    model = runtime.resources.get("minilm")
    popular_cache: dict[str, tuple[float, Any]] = {}
    loop_time = time.monotonic
    to_thread = asyncio.to_thread

    async def call(node_id: str, **kwargs: Any) -> Any:
        run = n[node_id].run
        if asyncio.iscoroutinefunction(run):
            return await run(**kwargs)
        return await to_thread(run, **kwargs)

    async def popular() -> Any:
        if not with_policies:
            return await call("popular", interactions=train)
        hit = popular_cache.get("k")
        if hit is not None and loop_time() < hit[0]:
            return hit[1]
        value = await call("popular", interactions=train)
        popular_cache["k"] = (loop_time() + 60.0, value)
        return value

    async def search(node_id: str, **kwargs: Any) -> Any:
        if not with_policies:
            return await call(node_id, **kwargs)
        try:
            async with asyncio.timeout(2.0):
                return await call(node_id, **kwargs)
        except Exception:
            return fallbacks[node_id]

    async def recommend(req: dict[str, Any]) -> dict[str, Any]:
        user_id, query, k = req["user_id"], req.get("query", ""), req.get("k", 10)
        profile = await call("profile", catalog=catalog, interactions=train, user_id=user_id)
        seen = getattr(profile, "seen", None)  # what ${profile.seen} gives (None from a no-op node)
        taste = await call("taste", catalog=catalog, model=model, like=seen, exclude=seen)
        aff = await call("affinity", catalog=catalog, interactions=train, profile=profile)
        pop = await popular()
        personal = await call("personal", lists=[taste, aff, pop])
        ranked = await call("ranked", candidates=personal, catalog=catalog, profile=profile, interactions=train)
        kw = await search("keyword", catalog=catalog, query=query) if query else None
        sem = await search("semantic", catalog=catalog, model=model, query=query) if query else None
        blend = await call("blend", lists=[ranked, kw, sem])
        unseen = await call("unseen", candidates=blend, profile=profile)
        diverse = await call("diverse", candidates=unseen, catalog=catalog, k=k)
        result = await call("result", candidates=diverse, catalog=catalog, profile=profile, query=query, k=k)
        return {"recommendations": result}

    return recommend


async def compare(runtime: llmrec.Runtime, with_policies: bool, reqs: list[dict[str, Any]], rounds: int
                  ) -> dict[str, float]:
    await runtime.start()
    hand = handwritten(runtime, with_policies)
    if with_policies:
        await check_same_outputs(runtime, hand, reqs)
    for r in reqs[:50]:  # warm both paths
        await runtime.run(r)
        await hand(r)
    per_round: dict[str, list[float]] = {"llmrec": [], "handwritten": []}
    for i in range(rounds):
        for name in ("llmrec", "handwritten") if i % 2 == 0 else ("handwritten", "llmrec"):
            fn = runtime.run if name == "llmrec" else hand
            t0 = time.process_time()
            for r in reqs:
                await fn(r)
            per_round[name].append((time.process_time() - t0) / len(reqs))
    if "-v" in sys.argv:
        print([f"{a / b:.3f}" for a, b in zip(per_round["llmrec"], per_round["handwritten"])], file=sys.stderr)
    # On a shared VM noise only ever adds time, so each contender's fastest round is its truest cost;
    # the median is reported beside it.
    llm, hw = min(per_round["llmrec"]), min(per_round["handwritten"])
    med = statistics.median(a / b for a, b in zip(per_round["llmrec"], per_round["handwritten"]))
    return {"llmrec_us": llm * 1e6, "handwritten_us": hw * 1e6, "ratio": llm / hw, "median_ratio": med}


async def check_same_outputs(runtime: llmrec.Runtime, hand: Any, reqs: list[dict[str, Any]]) -> None:
    for r in reqs[:40]:
        a = (await runtime.run(r)).outputs_json()
        b = llmrec.RunResult(await hand(r), None).outputs_json()  # type: ignore[arg-type]
        assert a == b, f"outputs differ for {r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("-v", action="store_true", help="print each round's ratio")
    args = parser.parse_args()
    reqs = requests(args.requests)

    with tempfile.TemporaryDirectory() as tmp:
        trust.grant(Path(tmp))  # the no-op plugin beside the spec is this script's own, written just now
        noop_rt = llmrec.Runtime(llmrec.validate(noop_spec(Path(tmp))))
        noop = asyncio.run(compare(noop_rt, False, reqs, args.rounds))
    nodes = len(noop_rt.graph.nodes)
    ran = sum(1 for r in reqs if r["query"]) / len(reqs)
    mean_nodes = nodes - 2 * (1 - ran)  # `keyword` and `semantic` are skipped (still scheduled) without a query
    noop["per_node_us"] = (noop["llmrec_us"] - noop["handwritten_us"]) / mean_nodes

    real_rt = llmrec.Runtime(llmrec.validate(QUICKSTART))
    real = asyncio.run(compare(real_rt, True, reqs, args.rounds))

    lines = [
        "## Executor overhead (issue 2)",
        "",
        f"`.venv/bin/python benchmarks/executor_overhead.py` ({args.requests} requests x {args.rounds} rounds, "
        f"CPU time, fastest round; Python {platform.python_version()}, {platform.machine()}, 2 cores, no GPU)",
        "",
        "| graph | llmrec us/request | handwritten us/request | ratio | median ratio | overhead us/node |",
        "|---|---:|---:|---:|---:|---:|",
        f"| quickstart, {nodes} no-op nodes | {noop['llmrec_us']:.1f} | {noop['handwritten_us']:.1f} | "
        f"{noop['ratio']:.2f} | {noop['median_ratio']:.2f} | {noop['per_node_us']:.1f} |",
        f"| quickstart, real nodes | {real['llmrec_us']:.1f} | {real['handwritten_us']:.1f} | "
        f"{real['ratio']:.3f} | {real['median_ratio']:.3f} | "
        f"{(real['llmrec_us'] - real['handwritten_us']) / mean_nodes:.1f} |",
        "",
        "Goals: <= 30 us per node; ratio <= 1.05 on the real quickstart. The handwritten chain calls the same node "
        "instances in the same order with the same policies (when, timeout, cache, fallback); the benchmark "
        "first checks that both produce identical outputs.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    ok = noop["per_node_us"] <= 30 and real["ratio"] <= 1.05
    print("goals met" if ok else "GOALS NOT MET")
    if args.write:
        write_section("## Executor overhead (issue 2)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
