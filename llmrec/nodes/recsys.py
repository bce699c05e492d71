"""Built-in recommender node types and the demo dataset resource, registered as a default plugin.

A typical pipeline (``specs/quickstart.yaml``)::

    user.profile ──> retrieve.category_affinity ──┐
                     retrieve.bm25 (a query) ─────┼──> fuse ──> rerank.filter_seen ──> rerank.diversify
                     retrieve.popular ────────────┘                                     ──> present.items

Retrievers return :class:`~llmrec.types.Candidates` whose items carry their score under the retriever's
``source`` name in ``ScoredItem.sources``; ``fuse`` keeps those per-source scores, and ``present.items`` turns
them into a human-readable reason. Everything derivable from the catalog or the interaction log (popularity
rankings, per-category rankings, the BM25 index) is computed once per dataset object and kept on the node
instance, so per-request work grows with the number of candidates, not with the catalog.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data import Catalog, DemoDataset, Interactions, generate_demo
from ..hookspecs import hookimpl
from ..node import NoConfig, NodeType, ResourceType
from ..types import Candidates, Recommendation, Recommendations, ScoredItem, UserProfile

if TYPE_CHECKING:  # pragma: no cover
    import bm25s

V = TypeVar("V")


# -- helpers ---------------------------------------------------------------------------------------------------


class PerObjects(Generic[V]):
    """Values derived from (immutable) dataset objects, computed once per combination of objects.

    Keyed by the objects' ids; the objects themselves are kept alongside, so an id reused after garbage
    collection can never return a stale value. Holds a handful of entries (one per dataset a runtime uses).
    """

    def __init__(self, max_entries: int = 4) -> None:
        self._entries: dict[tuple[int, ...], tuple[tuple[Any, ...], V]] = {}
        self._max = max_entries

    def peek(self, objects: tuple[Any, ...]) -> V | None:
        """The value already built for these objects, or None (never builds)."""
        hit = self._entries.get(tuple(id(o) for o in objects))
        if hit is not None and all(a is b for a, b in zip(hit[0], objects)):
            return hit[1]
        return None

    def get(self, objects: tuple[Any, ...], build: Callable[[], V]) -> V:
        key = tuple(id(o) for o in objects)
        hit = self._entries.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], objects)):
            return hit[1]
        value = build()
        if len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (objects, value)
        return value


def as_candidates(value: Any) -> Candidates | None:
    """A Candidates from a node's output; accepts the plain mapping a ``fallback: {value: ...}`` yields."""
    if value is None or isinstance(value, Candidates):
        return value
    return Candidates.model_validate(value)


def count_or(k: int | None, default: int) -> int:
    return default if k is None else max(int(k), 0)


def _normalised_popularity(interactions: Interactions) -> dict[str, float]:
    """Popularity divided by the top item's, most popular first (ties in natural id order)."""
    popularity = interactions.popularity()
    top = max(popularity.values(), default=0.0)
    if top <= 0:
        return {}
    return {item_id: value / top for item_id, value in popularity.items()}


# -- resources -------------------------------------------------------------------------------------------------


class DemoDatasetConfig(NoConfig):
    seed: int = Field(7, description="Random seed; the same seed always gives the same data.")
    n_items: int = Field(300, ge=1, le=1_000_000, description="Catalog size.")
    n_users: int = Field(120, ge=1, le=1_000_000, description="Number of users u1..uN.")


class DemoDatasetResource(ResourceType):
    """The seeded synthetic shop of :mod:`llmrec.data.demo`, generated in memory (no files, no download)."""

    name = "demo.dataset"
    description = "Seeded demo shop (catalog, interactions, users with planted tastes), generated in memory."
    Config = DemoDatasetConfig
    provides = DemoDataset

    async def load(self) -> DemoDataset:
        c = self.config
        return await asyncio.to_thread(generate_demo, seed=c.seed, n_items=c.n_items, n_users=c.n_users)


# -- user profile ----------------------------------------------------------------------------------------------


class ProfileConfig(NoConfig):
    max_top_categories: int = Field(3, ge=0, description="At most this many categories in top_categories.")
    min_share: float = Field(
        0.1, ge=0.0, le=1.0,
        description="A category needs this share of the user's weighted interactions to count as liked "
                    "(the largest one always counts).",
    )
    like_at: float = Field(4.0, description="A rating at or above this puts the item in 'liked' (MovieLens: 4-5).")
    dislike_at: float = Field(2.0, description="A rating at or below this puts the item in 'disliked'.")


class Profile(NodeType):
    """What the interaction log says about one user; unknown users are cold starts, never errors."""

    name = "user.profile"
    inline = True  # pure computation: no I/O in run()
    description = "Build a user's profile (history, seen items, category affinity); unknown users are cold starts."
    Config = ProfileConfig

    async def run(self, catalog: Catalog, interactions: Interactions, user_id: str) -> UserProfile:
        history = interactions.history(user_id)
        if not history:
            return UserProfile(user_id=user_id, known=False)
        affinity = interactions.category_affinity(user_id, catalog)
        cfg = self.config
        top = [cat for cat, share in affinity.items() if share >= cfg.min_share][: cfg.max_top_categories]
        if not top and affinity and cfg.max_top_categories:
            top = [next(iter(affinity))]
        rated = sorted((it for it in history if it.rating is not None), key=lambda it: it.timestamp)
        return UserProfile(
            user_id=user_id,
            known=True,
            history_size=len(history),
            seen=list(dict.fromkeys(it.item_id for it in history)),  # first interaction first
            category_affinity=affinity,
            top_categories=top,
            liked=list(dict.fromkeys(it.item_id for it in rated if it.rating >= cfg.like_at)),
            disliked=list(dict.fromkeys(it.item_id for it in rated if it.rating <= cfg.dislike_at)),
            ratings={it.item_id: float(it.rating) for it in rated},
        )


# -- retrievers ------------------------------------------------------------------------------------------------


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
            ScoredItem(id=item_id, score=score, sources={source: score})
            for item_id, score in _normalised_popularity(interactions).items()
        ]

    async def warm(self, interactions: Interactions | None = None, **_: Any) -> None:
        if interactions is not None:
            self._ranked.get((interactions,), lambda: self._rank(interactions))

    async def run(self, interactions: Interactions, k: int | None = None) -> Candidates:
        ranked = self._ranked.get((interactions,), lambda: self._rank(interactions))
        return Candidates(items=ranked[: count_or(k, self.config.k)], source=self.config.source)


class BM25Config(NoConfig):
    k: int = Field(50, ge=1, description="How many items at most, unless the 'k' input says otherwise.")
    k1: float = Field(1.5, ge=0.0, description="BM25 term-frequency saturation.")
    b: float = Field(0.75, ge=0.0, le=1.0, description="BM25 length normalisation.")
    stopwords: str = Field("en", description="bm25s stopword list ('en', or '' for none).")
    source: str = Field("bm25", min_length=1, description="Name of this list in ScoredItem.sources.")


class _BM25Index:
    def __init__(self, retriever: bm25s.BM25, ids: list[str]) -> None:
        self.retriever = retriever
        self.ids = ids
        self.vocab: dict[str, int] = retriever.vocab_dict


class BM25(NodeType):
    """Keyword search over the catalog's ``title. description`` text with bm25s."""

    name = "retrieve.bm25"
    inline = True
    description = "Retrieve catalog items matching a text query with BM25 (empty query: no items)."
    Config = BM25Config

    def __init__(self, config: BM25Config) -> None:
        super().__init__(config)
        self._indexes: PerObjects[_BM25Index] = PerObjects()

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(  # type: ignore[no-any-return]
            texts, stopwords=self.config.stopwords or None, return_ids=False, show_progress=False
        )

    def _build(self, catalog: Catalog) -> _BM25Index:
        import bm25s

        retriever = bm25s.BM25(k1=self.config.k1, b=self.config.b)
        items = list(catalog)
        if items:
            retriever.index(self._tokenize([item.text for item in items]), show_progress=False)
        return _BM25Index(retriever, [item.id for item in items])

    def index_for(self, catalog: Catalog) -> _BM25Index:
        """The index of ``catalog``, built on first use."""
        return self._indexes.get((catalog,), lambda: self._build(catalog))

    async def warm(self, catalog: Catalog | None = None, **_: Any) -> None:
        if catalog is not None:
            await asyncio.to_thread(self.index_for, catalog)

    async def run(self, catalog: Catalog, query: str | None = None, k: int | None = None) -> Candidates:
        source = self.config.source
        n = count_or(k, self.config.k)
        if not query or not query.strip() or n == 0 or len(catalog) == 0:
            return Candidates(source=source)
        index = self.index_for(catalog)
        tokens = [t for t in self._tokenize([query])[0] if t in index.vocab]
        if not tokens:
            return Candidates(source=source)
        import numpy as np

        scores = index.retriever.get_scores(tokens)
        hits = np.flatnonzero(scores > 0)
        # best score first; equal scores keep catalog order, so results never depend on sort internals
        order = hits[np.lexsort((hits, -scores[hits]))][:n]
        items = []
        for i in order.tolist():
            score = round(float(scores[i]), 6)
            items.append(ScoredItem(id=index.ids[i], score=score, sources={source: score}))
        return Candidates(items=items, source=source)


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
            items.append(ScoredItem(id=item_id, score=score, sources={source: score}))
        return Candidates(items=items, source=source)


# -- fusion ----------------------------------------------------------------------------------------------------


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
                if item.id in in_list:
                    continue  # a duplicate within one list counts once
                in_list.add(item.id)
                fused[item.id] = fused.get(item.id, 0.0) + contribution
                merged = sources.setdefault(item.id, {})
                for key, value in item.sources.items():
                    merged.setdefault(key, value)
                merged[name] = item.score
                prior = best.get(item.id)
                if prior is None or rank < prior[0]:
                    best[item.id] = (rank, prior[1] if prior else i)
        order = sorted(fused, key=lambda item_id: (-fused[item_id], best[item_id]))[: cfg.k]
        return Candidates(
            items=[
                ScoredItem(id=item_id, score=round(fused[item_id], 8), sources=sources[item_id]) for item_id in order
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


# -- rerankers -------------------------------------------------------------------------------------------------


class FilterSeenConfig(NoConfig):
    pass


class FilterSeen(NodeType):
    """Drop the items the user has already interacted with."""

    name = "rerank.filter_seen"
    inline = True
    description = "Remove items the user has already seen from the candidates."
    Config = FilterSeenConfig

    async def run(self, candidates: Candidates, profile: UserProfile) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        if not profile.seen:
            return cands
        seen = set(profile.seen)
        return cands.model_copy(update={"items": [c for c in cands.items if c.id not in seen]})


class DiversifyConfig(NoConfig):
    max_per_category: int = Field(3, ge=1, description="At most this many items of one category, while others remain.")
    k: int = Field(10, ge=1, description="How many items, unless the 'k' input says otherwise.")


class Diversify(NodeType):
    """Greedy diversification: take candidates in score order, capping how many come from one category."""

    name = "rerank.diversify"
    inline = True
    description = "Pick k candidates in score order with at most max_per_category per category (filled if short)."
    Config = DiversifyConfig

    async def run(self, candidates: Candidates, catalog: Catalog, k: int | None = None) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        n = count_or(k, self.config.k)
        cap = self.config.max_per_category
        picked: list[ScoredItem] = []
        overflow: list[ScoredItem] = []
        per_category: dict[str, int] = {}
        for c in cands.items:
            if len(picked) >= n:
                break
            item = catalog.get(c.id)
            category = item.category if item is not None else ""
            if category:
                if per_category.get(category, 0) >= cap:
                    overflow.append(c)
                    continue
                per_category[category] = per_category.get(category, 0) + 1
            picked.append(c)
        if len(picked) < n:  # the cap left too few: fill with the best of what it held back
            picked.extend(overflow[: n - len(picked)])
        return cands.model_copy(update={"items": picked})


# -- presentation ----------------------------------------------------------------------------------------------


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
            items.append(
                Recommendation(
                    rank=len(items) + 1,
                    id=item.id,
                    title=item.title,
                    category=item.category,
                    price=item.price,
                    score=round(c.score, 6),
                    reason=self.reason(c.sources, item.category, liked, query, best),
                )
            )
        return Recommendations(user_id=profile.user_id, cold_start=not profile.known, items=items)

    def reason(self, sources: dict[str, float], category: str, liked: set[str], query: str,
               best: dict[str, float] | None = None) -> str:
        """A few words on why an item is recommended, from the sources that put it forward."""
        cfg = self.config
        best = best or {}
        if any(s in sources and sources[s] >= best.get(s, float("-inf")) for s in cfg.query_sources):
            return f'matches your search "{query}"' if query else "matches your search"
        if category and category in liked:
            if any(s in sources for s in (*cfg.affinity_sources, *cfg.popular_sources)):
                return f"popular in {category}, which you like"
            return f"in {category}, which you like"
        if any(s in sources for s in cfg.popular_sources):
            return "popular right now"
        return "recommended for you"


NODE_TYPES: tuple[type[NodeType], ...] = (
    Profile, Popular, BM25, CategoryAffinity, Fuse, FilterSeen, Diversify, Present,
)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in NODE_TYPES:
        register(cls)


@hookimpl
def llmrec_register_resource_types(register: Any) -> None:
    register(DemoDatasetResource)


__all__ = [
    "BM25",
    "CategoryAffinity",
    "DemoDatasetResource",
    "Diversify",
    "FilterSeen",
    "Fuse",
    "NODE_TYPES",
    "Popular",
    "Present",
    "Profile",
]
