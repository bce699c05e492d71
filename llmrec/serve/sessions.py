"""Session stores for multi-turn serving, registered through ``llmrec_register_session_stores``.

A store keeps one JSON-compatible dict per session id for a time-to-live. The server keeps each turn's inputs
and outputs there (see docs/serving.md); a Redis store would implement the same three coroutines.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

#: the memory store's default bound on the JSON it holds, all sessions together
MAX_BYTES = 64 * 1024 * 1024


class MemorySessionStore:
    """In-process sessions with a TTL (refreshed by every save), at most ``max_sessions`` of them and at most
    ``max_bytes`` of JSON in all (least recently used dropped first). Per worker process: with ``--workers N``
    a session only lives in one worker.

    Each state is kept as its compact JSON (what a Redis store would keep), not as Python objects: a turn of
    the quickstart is about 3 KB that way and several times more as dicts and strings, and the bound on bytes
    is then the memory it takes. Values JSON cannot hold are stored as their ``str()``. Expired sessions are
    dropped when they are next read, and from the least recently used end on every save.
    """

    def __init__(self, max_sessions: int = 10_000, max_bytes: int = MAX_BYTES, **_options: Any) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.nbytes = 0  # JSON held, all sessions together
        self.clock = time.monotonic

    async def load(self, session_id: str) -> dict[str, Any] | None:
        entry = self._data.get(session_id)
        if entry is None:
            return None
        expires, blob = entry
        if self.clock() >= expires:
            self._drop(session_id)
            return None
        self._data.move_to_end(session_id)
        state: dict[str, Any] = json.loads(blob)
        return state

    async def save(self, session_id: str, state: dict[str, Any], ttl: float | None) -> None:
        now = self.clock()
        blob = json.dumps(state, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
        self._drop(session_id)
        if len(blob) > self.max_bytes:  # could never be kept: the session ends here
            return
        self._data[session_id] = (now + ttl if ttl else float("inf"), blob)
        self.nbytes += len(blob)
        data = self._data
        while len(data) > self.max_sessions or self.nbytes > self.max_bytes:
            self._drop(next(iter(data)))
        while data:  # the least recently saved first: drop those that have expired
            oldest = next(iter(data))
            if data[oldest][0] > now:
                break
            self._drop(oldest)

    async def delete(self, session_id: str) -> None:
        self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        entry = self._data.pop(session_id, None)
        if entry is not None:
            self.nbytes -= len(entry[1])

    def __len__(self) -> int:
        return len(self._data)
