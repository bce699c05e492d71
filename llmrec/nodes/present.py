"""The ``present.items`` node type: the final, human-readable recommendations (titles, reasons from sources)."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import Field

from ..data import Catalog
from ..hookspecs import hookimpl
from ..node import NoConfig, NodeType
from ..types import Candidates, Recommendation, Recommendations, UserProfile
from .common import as_candidates, count_or


class PresentConfig(NoConfig):
    k: int = Field(10, ge=1, description="How many items, unless the 'k' input says otherwise.")
    query_sources: list[str] = Field(["bm25"], description="Source names that mean 'matched the query'.")
    affinity_sources: list[str] = Field(["affinity"], description="Source names that mean 'from a liked category'.")
    popular_sources: list[str] = Field(["popular"], description="Source names that mean 'popular overall'.")
    query_match: dict[str, float] = Field(
        default_factory=dict,
        description="Per query source, the share of the best score among the presented items that an item needs "
                    "to 'match your search' (semantic search scores every item a little), e.g. {semantic: 0.8}; "
                    "sources not listed match whenever they list the item.",
    )


class Present(NodeType):
    """Turn candidates into the answer a user sees: titles, categories, prices and a reason per item."""

    name = "present.items"
    inline = True
    description = "Present the top k candidates with title, category, price and a short reason."
    Config = PresentConfig

    async def run(
        self,
        candidates: Candidates,
        catalog: Catalog,
        profile: UserProfile,
        query: str | None = None,
        k: int | None = None,
    ) -> Recommendations:
        cands = as_candidates(candidates)
        assert cands is not None
        n = count_or(k, self.config.k)
        query = (query or "").strip()
        liked = set(profile.top_categories)
        shown = list(itertools.islice(((c, item) for c in cands.items if (item := catalog.get(c.id)) is not None), n))
        best = {s: share * max((c.sources[s] for c, _ in shown if s in c.sources), default=0.0)
                for s, share in self.config.query_match.items()}
        items: list[Recommendation] = []
        for c, item in shown:
            items.append(Recommendation.trusted(  # catalog items are valid: no re-validation (issue 13)
                len(items) + 1, item.id, item.title, item.category, item.price, round(c.score, 6),
                self.reason(c.sources, item.category, liked, query, best)))
        return Recommendations(user_id=profile.user_id, cold_start=not profile.known, items=items)

    def __init__(self, config: PresentConfig) -> None:
        super().__init__(config)
        self._query = frozenset(config.query_sources)
        self._popular = frozenset(config.popular_sources)
        self._liked = frozenset(config.affinity_sources) | self._popular

    def reason(self, sources: dict[str, float], category: str, liked: set[str], query: str,
               best: dict[str, float] | None = None) -> str:
        """A few words on why an item is recommended, from the sources that put it forward."""
        keys = sources.keys()
        matched = keys & self._query  # set operations on the dict's keys: no Python loop per source
        if matched and any(sources[s] >= (best or {}).get(s, float("-inf")) for s in matched):
            return f'matches your search "{query}"' if query else "matches your search"
        if category and category in liked:
            if not keys.isdisjoint(self._liked):
                return f"popular in {category}, which you like"
            return f"in {category}, which you like"
        if not keys.isdisjoint(self._popular):
            return "popular right now"
        return "recommended for you"


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    register(Present)


__all__ = ["Present"]
