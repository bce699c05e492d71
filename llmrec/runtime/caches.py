"""Built-in node-result cache backends, registered as a default plugin."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl

_MISS = (False, None)


class MemoryCache:
    """An LRU dict with per-entry expiry; one per cached node, living as long as the runtime."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[str, tuple[float | None, Any]] = OrderedDict()

    async def get(self, key: str) -> tuple[bool, Any]:
        return self.peek(key)

    def peek(self, key: str) -> tuple[bool, Any]:
        """The synchronous lookup behind ``get``: the executor calls it directly when a backend offers it."""
        item = self._data.get(key)
        if item is None:
            return _MISS
        expires, value = item
        if expires is not None and self.clock() >= expires:
            del self._data[key]
            return _MISS
        self._data.move_to_end(key)
        return True, value

    async def set(self, key: str, value: Any, ttl: float | None) -> None:
        self._data[key] = (None if ttl is None else self.clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@hookimpl
def llmrec_register_cache_backends(register: Callable[[str, Any], None]) -> None:
    register("memory", MemoryCache)
