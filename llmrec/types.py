"""Value types that recommender node types pass between each other.

They are plain pydantic models (extra="forbid"), so a node's output can be referenced field by field in a spec
(``${blend.items}``, ``${profile.top_categories}``) and is checked statically against what the consumer
declares. They are frozen: a cached node output is shared by every request that hits the cache, so nodes
derive new values (``model_copy(update=...)``, or build new ones) instead of mutating what they were given.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_new = object.__new__
_set = object.__setattr__


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on first use (issue 13)


class ScoredItem(_Value):
    """One candidate: an item id, its score, and the per-source scores that produced it."""

    id: str
    score: float
    sources: dict[str, float] = Field(
        default_factory=dict,
        description="Score of this item in each source list, e.g. {'bm25': 7.1, 'popular': 0.4}.",
    )

    @classmethod
    def trusted(cls, id: str, score: float, sources: dict[str, float]) -> ScoredItem:
        """The item ``ScoredItem(id=id, score=score, sources=sources)`` gives, built without validating it: for
        hot paths that assemble an item from parts that are already valid (an id from a catalog or an input
        item, a float score, a dict of float scores), which is every retriever, fusion and ranker (issue 13).

        Validating costs about 2.1 us per item and pydantic's ``model_construct`` 2.3 us (it is pure Python);
        this is 0.6 us, and a request of the quickstart builds about 400 items. ``sources`` is kept, not copied:
        pass a dict nobody else changes. tests/test_types.py checks the result equals, dumps and serialises as
        the validated item and that pydantic's instance layout is still the one this relies on.
        """
        item = _new(cls)
        _set(item, "__dict__", {"id": id, "score": float(score), "sources": sources})
        _set(item, "__pydantic_fields_set__", {"id", "score", "sources"})
        _set(item, "__pydantic_extra__", None)
        _set(item, "__pydantic_private__", None)
        return item


class Candidates(_Value):
    """An ordered list of scored items, best first, from one source (a retriever, a fusion, a reranker)."""

    items: list[ScoredItem] = Field(default_factory=list)
    source: str = Field("", description="Who produced the list, e.g. 'popular', 'bm25', 'fuse'.")

    @property
    def ids(self) -> list[str]:
        """Item ids in order."""
        return [c.id for c in self.items]


class UserProfile(_Value):
    """What is known about a user at request time; ``known=False`` is a cold-start user."""

    user_id: str
    known: bool = Field(description="False for a user with no history (cold start).")
    history_size: int = Field(0, ge=0)
    seen: list[str] = Field(default_factory=list, description="Ids of items the user has interacted with.")
    category_affinity: dict[str, float] = Field(
        default_factory=dict, description="Share of the user's weighted interactions per category, largest first."
    )
    top_categories: list[str] = Field(default_factory=list, description="The categories the user likes most.")
    liked: list[str] = Field(default_factory=list,
                             description="Ids the user rated at or above the profile's like threshold, latest last.")
    disliked: list[str] = Field(default_factory=list,
                                description="Ids the user rated at or below the dislike threshold, latest last.")
    ratings: dict[str, float] = Field(default_factory=dict,
                                      description="The user's latest rating of each rated item of 'seen'.")

    def events(self) -> list[tuple[str, float | None]]:
        """The history as (item id, rating or None) pairs in the order of ``seen`` (first interaction first)."""
        return [(i, self.ratings.get(i)) for i in self.seen]


class Recommendation(_Value):
    """One recommended item as shown to a user."""

    rank: int = Field(ge=1)
    id: str
    title: str
    category: str = ""
    price: float | None = None
    score: float
    reason: str = Field("", description="Why it is recommended, in a few words.")

    @classmethod
    def trusted(cls, rank: int, id: str, title: str, category: str, price: float | None, score: float,
                reason: str) -> Recommendation:
        """``Recommendation(...)`` built without validation, from a catalog item (valid by construction) and a
        rank >= 1; see :meth:`ScoredItem.trusted`."""
        item = _new(cls)
        _set(item, "__dict__", {"rank": rank, "id": id, "title": title, "category": category,
                                "price": None if price is None else float(price), "score": float(score),
                                "reason": reason})
        _set(item, "__pydantic_fields_set__", {"rank", "id", "title", "category", "price", "score", "reason"})
        _set(item, "__pydantic_extra__", None)
        _set(item, "__pydantic_private__", None)
        return item


class Recommendations(_Value):
    """The answer to one recommendation request."""

    user_id: str
    cold_start: bool = False
    items: list[Recommendation] = Field(default_factory=list)


class LabelScore(_Value):
    label: str
    confidence: float = Field(ge=0.0, le=1.0)


class Labeled(_Value):
    """A classification: one label of a fixed set, and optionally the top labels with a confidence each
    (``llm.label``, ``label.embedding``)."""

    label: str
    top: list[LabelScore] = Field(default_factory=list)


__all__ = ["Candidates", "LabelScore", "Labeled", "Recommendation", "Recommendations", "ScoredItem", "UserProfile"]
