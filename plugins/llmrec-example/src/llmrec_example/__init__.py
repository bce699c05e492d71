"""llmrec-example: a small third-party llmrec plugin, written the way you would write your own.

It registers, through ``@llmrec.hookimpl`` functions that llmrec discovers via the ``llmrec`` entry-point group:

- node type ``example.sample``: a seeded random sample of ``k`` items that keeps their relative order
  (exploration: show a few items the ranking would not have put first);
- node type ``example.round_robin``: interleave several lists (first of each, then second of each, ...),
  dropping repeats;
- metric ``example.hit_rate_at_k``: 1.0 when any of the top ``k`` recommendations is relevant, else 0.0;
- a lifecycle hook, ``llmrec_after_node_run``, counting node runs per node type in :data:`NODE_RUNS`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import llmrec

#: the llmrec plugin API this plugin supports; an llmrec with another API refuses it with a warning
LLMREC_PLUGIN_API = ">=1,<2"

__version__ = "0.1.0"

__all__ = [
    "NODE_RUNS",
    "RoundRobin",
    "Sample",
    "hit_rate_at_k",
    "node_run_counts",
    "reset_node_run_counts",
]


# -- node types -------------------------------------------------------------------------------------------


class SampleConfig(BaseModel):
    # extra="forbid" is required by llmrec: a misspelt key in a spec (`sed: 3`) is an error, not ignored.
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Random seed: the same seed, items and k always give the same sample.")


class Sample(llmrec.NodeType):
    """A seeded random sample of ``k`` items, in their original relative order."""

    name = "example.sample"
    description = "Pick k items at random (seeded, so reproducible), keeping their relative order."
    Config = SampleConfig
    inline = True  # pure computation: never awaits, so the executor may run it without a task of its own

    # The signature *is* the declaration: inputs `items` and `k` (both required), output list[Any].
    async def run(self, items: list[Any], k: int) -> list[Any]:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if k >= len(items):
            return list(items)
        rng = random.Random(self.config.seed)
        picked = sorted(rng.sample(range(len(items)), k))
        return [items[i] for i in picked]


class RoundRobinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(None, ge=0, description="Stop after this many items (default: all of them).")


def _key(item: Any) -> Hashable:
    """A hashable identity for deduplication; dicts and lists (JSON-like items) compare by content."""
    try:
        hash(item)
        return (0, item)
    except TypeError:
        pass
    try:
        return (1, json.dumps(item, sort_keys=True, default=repr))
    except (TypeError, ValueError):  # pragma: no cover - exotic objects
        return (2, repr(item))


class RoundRobin(llmrec.NodeType):
    """Interleave several lists: the first item of each list, then the second of each, and so on."""

    name = "example.round_robin"
    description = "Interleave several lists in turn, keeping the first occurrence of each item."
    Config = RoundRobinConfig
    inline = True

    async def run(self, lists: list[list[Any]]) -> list[Any]:
        out: list[Any] = []
        seen: set[Hashable] = set()
        longest = max((len(lst) for lst in lists), default=0)
        for i in range(longest):
            for lst in lists:
                if i >= len(lst):
                    continue
                key = _key(lst[i])
                if key in seen:
                    continue
                seen.add(key)
                out.append(lst[i])
                if self.config.limit is not None and len(out) >= self.config.limit:
                    return out
        return out


@llmrec.hookimpl
def llmrec_register_node_types(register: Callable[[type], None]) -> None:
    register(Sample)
    register(RoundRobin)


# -- metrics ----------------------------------------------------------------------------------------------


def hit_rate_at_k(recommended: Iterable[Any], relevant: Collection[Any], k: int = 10) -> float:
    """1.0 if any of the first ``k`` recommended items is in ``relevant``, else 0.0 (average it over users)."""
    if k <= 0:
        return 0.0
    wanted = set(relevant)
    for i, item in enumerate(recommended):
        if i >= k:
            break
        if item in wanted:
            return 1.0
    return 0.0


@llmrec.hookimpl
def llmrec_register_metrics(register: Callable[[str, Callable[..., float]], None]) -> None:
    register("example.hit_rate_at_k", hit_rate_at_k)


# -- lifecycle hooks: a toy example of observability ------------------------------------------------------

#: Node runs per node type, counted by :func:`llmrec_after_node_run` for every node of every spec run in
#: this process (including cache hits and fallbacks). A toy: a real plugin would export metrics to
#: Prometheus or OpenTelemetry here, but the shape is the same. Lifecycle hooks run on the event loop, so
#: keep them quick; note that implementing any of them makes the executor take its slower per-node path.
NODE_RUNS: Counter[str] = Counter()


@llmrec.hookimpl
def llmrec_after_node_run(node_id: str, output: Any, record: Any) -> None:
    NODE_RUNS[record.type] += 1


def node_run_counts() -> dict[str, int]:
    """A snapshot of :data:`NODE_RUNS`."""
    return dict(NODE_RUNS)


def reset_node_run_counts() -> None:
    NODE_RUNS.clear()
