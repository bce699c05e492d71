"""Session stores for multi-turn serving, registered through ``llmrec_register_session_stores``.

A store keeps one JSON-compatible dict per session id for a time-to-live. The server keeps each turn's inputs
and outputs there (see docs/serving.md); a Redis store would implement the same three coroutines.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from typing import Any


class MemorySessionStore:
    """In-process sessions with a TTL (refreshed by every save), at most ``max_sessions`` (least recently
    used dropped first). Per worker process: with ``--workers N`` a session only lives in one worker."""

    def __init__(self, max_sessions: int = 10_000, **_options: Any) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._data: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self.clock = time.monotonic

    async def load(self, session_id: str) -> dict[str, Any] | None:
        entry = self._data.get(session_id)
        if entry is None:
            return None
        expires, state = entry
        if self.clock() >= expires:
            self._data.pop(session_id, None)
            return None
        self._data.move_to_end(session_id)
        return copy.deepcopy(state)

    async def save(self, session_id: str, state: dict[str, Any], ttl: float | None) -> None:
        expires = self.clock() + ttl if ttl else float("inf")
        self._data[session_id] = (expires, copy.deepcopy(state))
        self._data.move_to_end(session_id)
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)

    async def delete(self, session_id: str) -> None:
        self._data.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._data)
