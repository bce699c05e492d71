"""LLM and grounding metrics of an evaluation, from each request's trace and answer.

Per case (stored with the case, so a resumed run aggregates the same numbers):

- ``llm``: LLM node runs, runs answered from a cache, LLM calls (sum of attempts: re-asks and retries
  included; 0 for a cache hit), prompt/completion tokens, cost (USD) and the ids of nodes that fell back;
- ``grounding``: of the ids the spec answered (before eval drops excluded ids and duplicates), how many are
  hallucinated (not in the catalog), duplicates (an id repeated), and already seen (in the user's training
  history, or the case's excluded ids when the case has no user).

Per spec (:func:`summarize_llm`, :func:`summarize_grounding`): the sums, plus

- cache hit rate = LLM node runs answered from a cache / LLM node runs (None when no LLM node ran);
- fallback rate = requests where any node fell back / requests, and fallbacks per node;
- each grounding count as a rate of the answered items, and the share of answers with any violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..llm.provider import Provider

#: statuses of a node record that did not run the node
_NOT_RUN = frozenset({"pending", "skipped", "cancelled"})


def llm_node_ids(graph: Any) -> frozenset[str]:
    """Ids of the graph's LLM nodes: node types that declare ``Reports(model_usage=True)`` and any node that
    takes a language model (a :class:`~llmrec.llm.provider.Provider` input)."""
    ids = set()
    for node_id, node in graph.nodes.items():
        if node.cls.reports.model_usage:
            ids.add(node_id)
            continue
        for param in node.signature.params.values():
            if param.type is Provider:
                ids.add(node_id)
                break
    return frozenset(ids)


def case_llm(trace: Any, llm_nodes: frozenset[str]) -> dict[str, Any]:
    """One request's LLM usage and fallbacks from its trace (None trace: nothing ran)."""
    out: dict[str, Any] = {"runs": 0, "cached": 0, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                           "cost": 0.0, "fallbacks": []}
    if trace is None:
        return out
    for rec in trace.nodes:
        if rec.fallback is not None:
            out["fallbacks"].append(rec.node_id)
        if rec.node_id not in llm_nodes or rec.status in _NOT_RUN:
            continue
        out["runs"] += 1
        if rec.cache_hit or rec.cache is not None:
            out["cached"] += 1
        u = rec.usage
        if u is not None:
            out["calls"] += u.calls
            out["prompt_tokens"] += u.prompt_tokens
            out["completion_tokens"] += u.completion_tokens
            out["cost"] += u.cost
    out["fallbacks"].sort()
    return out


def case_grounding(raw_ids: Sequence[str], catalog: Any, seen: Iterable[str]) -> dict[str, int]:
    """Counts of grounding violations in one answer: hallucinated, duplicate and already-seen ids."""
    seen = frozenset(seen)
    known = [i for i in raw_ids if i in catalog]
    return {
        "items": len(raw_ids),
        "hallucinated": len(raw_ids) - len(known),
        "duplicate": len(raw_ids) - len(set(raw_ids)),
        "seen": sum(1 for i in raw_ids if i in seen),
    }


def summarize_llm(cases: Sequence[Mapping[str, Any]], n_llm_nodes: int) -> dict[str, Any]:
    """A spec's LLM metrics from its cases' ``llm`` records."""
    n = len(cases)
    runs = sum(c["runs"] for c in cases)
    cached = sum(c["cached"] for c in cases)
    per_node: dict[str, int] = {}
    degraded = 0
    for c in cases:
        if c["fallbacks"]:
            degraded += 1
        for node_id in c["fallbacks"]:
            per_node[node_id] = per_node.get(node_id, 0) + 1
    return {
        "llm_nodes": n_llm_nodes,
        "node_runs": runs,
        "calls": sum(c["calls"] for c in cases),
        "prompt_tokens": sum(c["prompt_tokens"] for c in cases),
        "completion_tokens": sum(c["completion_tokens"] for c in cases),
        "cost": sum(c["cost"] for c in cases),
        "cache_hits": cached,
        "cache_hit_rate": cached / runs if runs else None,
        "fallback_requests": degraded,
        "fallback_rate": degraded / n if n else 0.0,
        "fallbacks_by_node": dict(sorted(per_node.items())),
    }


def summarize_grounding(cases: Sequence[Mapping[str, int]]) -> dict[str, Any]:
    """A spec's grounding violations from its cases' ``grounding`` records: counts and rates."""
    items = sum(c["items"] for c in cases)
    out: dict[str, Any] = {"items": items}
    for kind in ("hallucinated", "duplicate", "seen"):
        count = sum(c[kind] for c in cases)
        out[kind] = count
        out[f"{kind}_rate"] = count / items if items else 0.0
    bad = sum(1 for c in cases if c["hallucinated"] or c["duplicate"] or c["seen"])
    out["answers_with_violations"] = bad
    out["violation_rate"] = bad / len(cases) if cases else 0.0
    return out


__all__ = ["case_grounding", "case_llm", "llm_node_ids", "summarize_grounding", "summarize_llm"]
