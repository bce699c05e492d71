"""``retrieve.popular`` and ``retrieve.category_affinity``: rankings derived from the interaction log."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ...data import Catalog, Interactions
from ...node import NoConfig, NodeType
from ...types import Candidates, ScoredItem, UserProfile
from ..common import PerObjects, count_or


def _normalised_popularity(interactions: Interactions) -> dict[str, float]:
    """Popularity divided by the top item's, most popular first (ties in natural id order)."""
    popularity = interactions.popularity()
    top = max(popularity.values(), default=0.0)
    if top <= 0:
        return {}
    return {item_id: value / top for item_id, value in popularity.items()}



class PopularConfig(NoConfig):
    k: int = Field(50, ge=1, description="How many items, unless the 'k' input says otherwise.")
    source: str = Field("popular", min_length=1, description="Name of this list in ScoredItem.sources.")


class Popular(NodeType):
    """The most popular items by event-weighted interaction count, scores normalised so the top item has 1."""

    name = "retrieve.popular"
    inline = True
    description = "Retrieve the k most popular items (event-weighted interactions, scores normalised to 0..1)."
    Config = PopularConfig

    def __init__(self, config: PopularConfig) -> None:
        super().__init__(config)
        self._ranked: PerObjects[list[ScoredItem]] = PerObjects()

    def _rank(self, interactions: Interactions) -> list[ScoredItem]:
        source = self.config.source
        return [
            ScoredItem.trusted(item_id, score, {source: score})
            for item_id, score in _normalised_popularity(interactions).items()
        ]

    async def warm(self, interactions: Interactions | None = None, **_: Any) -> None:
        if interactions is not None:
            self._ranked.get((interactions,), lambda: self._rank(interactions))

    async def run(self, interactions: Interactions, k: int | None = None) -> Candidates:
        ranked = self._ranked.get((interactions,), lambda: self._rank(interactions))
        return Candidates(items=ranked[: count_or(k, self.config.k)], source=self.config.source)



class AffinityConfig(NoConfig):
    k: int = Field(50, ge=1, description="How many items, unless the 'k' input says otherwise.")
    exclude_seen: bool = Field(True, description="Leave out items in the profile's 'seen' list.")
    source: str = Field("affinity", min_length=1, description="Name of this list in ScoredItem.sources.")


class CategoryAffinity(NodeType):
    """Popular items of the categories the user likes, scored ``affinity share * popularity``, where popularity
    is normalised within the item's category (its most popular item has 1)."""

    name = "retrieve.category_affinity"
    inline = True
    description = "Retrieve popular items from the user's favourite categories (empty for cold-start users)."
    Config = AffinityConfig

    def __init__(self, config: AffinityConfig) -> None:
        super().__init__(config)
        self._tables: PerObjects[dict[str, list[tuple[str, float]]]] = PerObjects()

    @staticmethod
    def _table(catalog: Catalog, interactions: Interactions) -> dict[str, list[tuple[str, float]]]:
        """Per category: (item id, popularity / the category's top popularity), most popular first, ties in
        catalog order. Normalising within the category lets a liked but globally niche category compete."""
        popularity = interactions.popularity()
        table: dict[str, list[tuple[str, float]]] = {}
        for category in catalog.categories:
            members = [(item.id, popularity.get(item.id, 0.0)) for item in catalog.by_category(category)]
            members.sort(key=lambda m: -m[1])  # stable: ties keep catalog order
            top = members[0][1] if members else 0.0
            table[category] = [(item_id, pop / top if top > 0 else 0.0) for item_id, pop in members]
        return table

    async def warm(self, catalog: Catalog | None = None, interactions: Interactions | None = None, **_: Any) -> None:
        if catalog is not None and interactions is not None:
            self._tables.get((catalog, interactions), lambda: self._table(catalog, interactions))

    async def run(
        self, catalog: Catalog, interactions: Interactions, profile: UserProfile, k: int | None = None
    ) -> Candidates:
        source = self.config.source
        n = count_or(k, self.config.k)
        if not profile.known or not profile.top_categories or n == 0:
            return Candidates(source=source)
        table = self._tables.get((catalog, interactions), lambda: self._table(catalog, interactions))
        seen = set(profile.seen) if self.config.exclude_seen else set()
        scored: list[tuple[float, int, str]] = []
        position = 0
        for category in profile.top_categories:
            share = profile.category_affinity.get(category, 0.0)
            taken = 0
            for item_id, pop in table.get(category, ()):
                if taken >= n:
                    break
                if item_id in seen:
                    continue
                scored.append((share * pop, position, item_id))
                position += 1
                taken += 1
        scored.sort(key=lambda s: (-s[0], s[1]))
        items = []
        for score, _, item_id in scored[:n]:
            score = round(score, 6)
            items.append(ScoredItem.trusted(item_id, score, {source: score}))
        return Candidates(items=items, source=source)


__all__ = ["CategoryAffinity", "Popular"]
