"""Helpers the built-in node types share, public for plugin authors writing their own.

- :class:`PerObjects`: values derived once per (immutable) dataset object, e.g. an index per catalog;
- :func:`as_candidates`: a ``Candidates`` from a node's output, including a fallback's plain mapping;
- :func:`count_or`: the ``k`` input if given, else the config's default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..types import Candidates

V = TypeVar("V")


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


__all__ = ["PerObjects", "as_candidates", "count_or"]
