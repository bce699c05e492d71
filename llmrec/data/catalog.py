"""In-memory catalog and interaction log that recommender nodes read on every request.

Everything derivable is computed once, up front or on first use, so per-request calls are lookups rather than
scans. Unknown users are cold-start users, never errors: their history, seen set and affinities are empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["view", "click", "purchase", "rating"]

#: How much one event of each type says about interest; used by popularity and category affinity.
EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "rating": 3.0, "purchase": 4.0}

_DIGITS = re.compile(r"(\d+)")


def natural_key(value: str) -> tuple[str | int, ...]:
    """Sort key that orders embedded numbers numerically, so ``u2`` sorts before ``u10``."""
    # re.split with a capture group alternates text and digits, always starting with text, so tuples of
    # different ids compare str with str and int with int at every position.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(value)))


class Item(BaseModel):
    """One recommendable thing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str
    description: str = ""
    category: str = ""
    price: float | None = Field(default=None, ge=0)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    embed_text: str | None = Field(
        default=None, description="The text to embed and search, when a catalog's text template set one."
    )

    @property
    def text(self) -> str:
        """The text for keyword matching and embedding: ``embed_text`` when set, else title and description."""
        if self.embed_text is not None:
            return self.embed_text
        return f"{self.title}. {self.description}" if self.description else self.title


class Interaction(BaseModel):
    """One user event on one item."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str
    item_id: str
    event: EventType = "view"
    rating: float | None = None
    timestamp: int = Field(ge=0, description="Unix seconds.")


_INTERACTION_FIELDS = frozenset(Interaction.model_fields)


def construct_interactions(
    rows: Iterable[tuple[str, str, str, float | None, int]],
) -> list[Interaction]:
    """Interaction objects from ``(user_id, item_id, event, rating, timestamp)`` tuples that the caller has
    already validated, without pydantic validation (what ``model_construct`` does, several times faster):
    loaders use it to build logs of millions of events."""
    new = Interaction.__new__
    set_attribute = object.__setattr__
    fields = set(_INTERACTION_FIELDS)  # shared: pydantic copies it before any change (model_copy)
    out: list[Interaction] = []
    append = out.append
    for user_id, item_id, event, rating, timestamp in rows:
        obj = new(Interaction)
        set_attribute(obj, "__dict__", {"user_id": user_id, "item_id": item_id, "event": event, "rating": rating,
                                        "timestamp": timestamp})
        set_attribute(obj, "__pydantic_fields_set__", fields)
        set_attribute(obj, "__pydantic_extra__", None)
        set_attribute(obj, "__pydantic_private__", None)
        append(obj)
    return out


class Catalog:
    """An immutable, id-indexed collection of items that keeps insertion order."""

    def __init__(self, items: Iterable[Item]) -> None:
        """Index ``items``; raises ValueError on an empty or duplicate id."""
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        by_category: dict[str, list[Item]] = {}
        for position, item in enumerate(items):
            if not item.id.strip():
                raise ValueError(f"catalog item at position {position} has an empty id (title {item.title!r})")
            if item.id in self._by_id:
                raise ValueError(f"duplicate item id {item.id!r} in catalog (second occurrence at position {position})")
            self._items.append(item)
            self._by_id[item.id] = item
            by_category.setdefault(item.category, []).append(item)
        self._by_category = by_category
        self._ids = [item.id for item in self._items]
        self._categories = sorted(cat for cat in by_category if cat)
        #: item id -> its category, for items that have one (a user's category affinity reads it per event)
        self.category_of: dict[str, str] = {item.id: item.category for item in self._items if item.category}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __getitem__(self, item_id: str) -> Item:
        try:
            return self._by_id[item_id]
        except KeyError:
            raise KeyError(f"unknown item id {item_id!r} (catalog has {len(self)} items)") from None

    def __repr__(self) -> str:
        return f"Catalog({len(self)} items, {len(self._categories)} categories)"

    def get(self, item_id: str) -> Item | None:
        """The item with this id, or None."""
        return self._by_id.get(item_id)

    @property
    def ids(self) -> list[str]:
        """All item ids in insertion order."""
        return list(self._ids)

    @property
    def categories(self) -> list[str]:
        """Distinct non-empty categories, sorted."""
        return list(self._categories)

    def by_category(self, category: str) -> list[Item]:
        """Items of one category in insertion order; empty for an unknown category."""
        return list(self._by_category.get(category, ()))


class Interactions:
    """An immutable interaction log indexed by user."""

    def __init__(self, interactions: Iterable[Interaction]) -> None:
        """Group ``interactions`` by user and order each history by (timestamp, item id), the item id in natural
        order (``natural_key``: MovieLens's ``"2"`` before ``"1000"``, as ../shared/PROTOCOLS.md compares them)."""
        by_user: dict[str, list[Interaction]] = {}
        count = 0
        for interaction in interactions:
            by_user.setdefault(interaction.user_id, []).append(interaction)
            count += 1
        # one sort key per distinct item id, not per event (MovieLens 100K: 100k events, 1,682 items): the int
        # itself when every id is a plain number, else natural_key with the raw id last, so ids with the same
        # natural key ("01", "1") still have one order
        ids = {it.item_id for history in by_user.values() for it in history}
        item_keys: dict[str, Any]
        if all(item_id.isdigit() and item_id.isascii() and (item_id == "0" or item_id[0] != "0") for item_id in ids):
            item_keys = {item_id: int(item_id) for item_id in ids}
        else:
            item_keys = {item_id: (natural_key(item_id), item_id) for item_id in ids}
        for history in by_user.values():
            history.sort(key=lambda it: (it.timestamp, item_keys[it.item_id]))
        self._by_user = by_user
        self._count = count
        self._users = sorted(by_user, key=natural_key)
        item_of = attrgetter("item_id")
        self._seen = {user: frozenset(map(item_of, history)) for user, history in by_user.items()}
        self._popularity: dict[str, float] | None = None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Interaction]:
        """Every interaction, user by user in ``users()`` order, each user's in history order."""
        for user in self._users:
            yield from self._by_user[user]

    def __repr__(self) -> str:
        return f"Interactions({self._count} events, {len(self._users)} users)"

    def users(self) -> list[str]:
        """Ids of users with at least one interaction, in natural order (``u2`` before ``u10``)."""
        return list(self._users)

    def history(self, user_id: str) -> list[Interaction]:
        """The user's interactions, oldest first; empty for an unknown (cold-start) user."""
        return list(self._by_user.get(user_id, ()))

    def seen(self, user_id: str) -> frozenset[str]:
        """Ids of the items the user has interacted with; empty for an unknown user."""
        return self._seen.get(user_id, frozenset())

    def popularity(self) -> dict[str, float]:
        """Event-weighted interaction count per item (see EVENT_WEIGHTS), most popular first.

        Computed once; each call returns a fresh copy so callers may modify it freely.
        """
        if self._popularity is None:
            totals: dict[str, float] = {}
            for history in self._by_user.values():
                for it in history:
                    totals[it.item_id] = totals.get(it.item_id, 0.0) + EVENT_WEIGHTS[it.event]
            self._popularity = dict(sorted(totals.items(), key=lambda kv: (-kv[1], natural_key(kv[0]))))
        return dict(self._popularity)

    def category_affinity(self, user_id: str, catalog: Catalog) -> dict[str, float]:
        """Share of the user's event-weighted interactions per category, largest first, summing to 1.

        Items missing from ``catalog`` or without a category are ignored; an unknown user, or one with no
        categorised items, gets an empty dict.
        """
        totals: dict[str, float] = {}
        category_of = catalog.category_of
        for it in self._by_user.get(user_id, ()):
            category = category_of.get(it.item_id)
            if category is not None:
                totals[category] = totals.get(category, 0.0) + EVENT_WEIGHTS[it.event]
        grand_total = sum(totals.values())
        if not grand_total:
            return {}
        return {cat: w / grand_total for cat, w in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))}
