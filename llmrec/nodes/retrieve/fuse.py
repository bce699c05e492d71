"""``fuse``: hybrid retrieval's merge step (reciprocal rank fusion or a weighted sum of normalised scores)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...node import NoConfig, NodeType
from ...types import Candidates, ScoredItem
from ..common import as_candidates


class FuseConfig(NoConfig):
    method: Literal["rrf", "weighted"] = Field(
        "rrf", description="'rrf': reciprocal rank fusion; 'weighted': min-max normalise each list, then weighted sum."
    )
    weights: list[float] | None = Field(
        None, description="One weight per input list, by position (skipped lists included); default: all 1."
    )
    rrf_k: int = Field(60, ge=0, description="RRF damping constant: score = weight / (rrf_k + rank).")
    k: int = Field(100, ge=1, description="How many fused items to keep.")
    source: str = Field("fuse", min_length=1, description="Name of the fused list.")

    @model_validator(mode="after")
    def _weights(self) -> FuseConfig:
        if self.weights is not None and any(w < 0 for w in self.weights):
            raise ValueError("weights cannot be negative")
        return self


class Fuse(NodeType):
    """Merge several candidate lists into one, keeping each item's per-source scores."""

    name = "fuse"
    inline = True
    description = "Fuse candidate lists (RRF or weighted sum); skipped (null) lists are ignored."
    Config = FuseConfig

    async def run(self, lists: list[Candidates | None]) -> Candidates:
        cfg = self.config
        if cfg.weights is not None and len(cfg.weights) != len(lists):
            raise ValueError(f"fuse got {len(lists)} lists but {len(cfg.weights)} weights; give one weight per list")
        fused: dict[str, float] = {}
        sources: dict[str, dict[str, float]] = {}
        best: dict[str, tuple[int, int]] = {}  # id -> (best rank, first list index): tie-break
        used_names: set[str] = set()
        for i, raw in enumerate(lists):
            cands = as_candidates(raw)
            if cands is None:
                continue
            name = cands.source or f"list{i}"
            if name in used_names:
                name = f"{name}_{i}"
            used_names.add(name)
            weight = 1.0 if cfg.weights is None else cfg.weights[i]
            contributions = self._contributions(cands.items, weight)
            in_list: set[str] = set()
            for rank, (item, contribution) in enumerate(zip(cands.items, contributions), start=1):
                item_id = item.id
                if item_id in in_list:
                    continue  # a duplicate within one list counts once
                in_list.add(item_id)
                merged = sources.get(item_id)
                if merged is None:  # first seen here: its sources as they are (most items are in one list)
                    merged = sources[item_id] = dict(item.sources)
                    fused[item_id] = contribution
                    best[item_id] = (rank, i)
                else:  # an earlier list's scores win, this list's own score is added
                    for key, value in item.sources.items():
                        merged.setdefault(key, value)
                    fused[item_id] += contribution
                    prior = best[item_id]
                    if rank < prior[0]:
                        best[item_id] = (rank, prior[1])
                merged[name] = item.score
        order = sorted(fused, key=lambda item_id: (-fused[item_id], best[item_id]))[: cfg.k]
        return Candidates(
            items=[
                ScoredItem.trusted(item_id, round(fused[item_id], 8), sources[item_id]) for item_id in order
            ],
            source=cfg.source,
        )

    def _contributions(self, items: list[ScoredItem], weight: float) -> list[float]:
        if self.config.method == "rrf":
            rrf_k = self.config.rrf_k
            return [weight / (rrf_k + rank) for rank in range(1, len(items) + 1)]
        if not items:
            return []
        scores = [item.score for item in items]
        lo, hi = min(scores), max(scores)
        if hi <= lo:
            return [weight] * len(items)
        return [weight * (s - lo) / (hi - lo) for s in scores]


__all__ = ["Fuse"]
