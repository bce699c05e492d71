"""The built-in cache backends: ``memory`` (per runtime) and ``disk`` (sqlite), registered by :mod:`llmrec.caches`.

A backend is a factory ``factory(max_entries=...)`` returning an object with ``async get(key) -> (hit, value)``
and ``async set(key, value, ttl)``; a synchronous ``peek(key)`` lets the executor skip a coroutine per lookup.
The node-level ``cache:`` policy and ``llm.prompt``'s ``prompt_cache`` both use them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..paths import cache_root
from . import codec

_MISS = (False, None)


class CacheWarning(UserWarning):
    """A cache could not be read or written: the lookup counted as a miss, the run went on."""


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


def default_cache_root() -> Path:
    """``$LLMREC_CACHE_DIR`` or ``~/.cache/llmrec`` (the same root the embedding cache uses)."""
    return cache_root()


#: every stored value starts with this; anything else (another version, a torn write) reads as a miss
#: (version 1 entries were pickles: they are never read)
_FORMAT = b"llmrec-cache/2\n"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    ns TEXT NOT NULL,
    expires REAL,
    accessed REAL NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_lru ON entries (ns, accessed);
"""


def _dumps(value: Any) -> bytes:
    return _FORMAT + codec.encode(value)


def _loads(blob: bytes) -> Any:
    """A stored value; anything but this version's tagged JSON raises (and reads as a miss). Never unpickles:
    the file lives where a spec says, so its bytes are not trusted (see :mod:`llmrec.caches.codec`)."""
    if bytes(blob[:len(_FORMAT)]) != _FORMAT:
        raise codec.CodecError("unknown format (another llmrec version, or not a cache entry)")
    return codec.decode(bytes(blob[len(_FORMAT):]))


def _namespace(key: str) -> str:
    """The part of a key entries are counted and evicted by: ``node:version`` for the executor's keys
    (``<node id>:<config hash>:<input hash>``), the text before the last ':' otherwise."""
    parts = key.split(":", 2)
    return ":".join(parts[:2]) if len(parts) == 3 else key.rpartition(":")[0]


class DiskCache:
    """A persistent cache in one sqlite3 file (WAL mode): shared by runtimes and processes, survives restarts.

    Values are stored as tagged JSON behind a format header (:mod:`llmrec.caches.codec`: data, numpy arrays and
    pydantic models; never pickle, so a cache file someone else wrote cannot run code); entries expire after their
    TTL (wall-clock time, so it holds across processes) and each namespace (one node's version, or one prompt cache) keeps at most
    ``max_entries``, the least recently read evicted first. A corrupt file is moved aside and started afresh;
    an unreadable entry or a file that cannot be opened is a miss with a :class:`CacheWarning`, never an error.

    ``path`` is a folder (default ``$LLMREC_CACHE_DIR/nodecache`` or ``~/.cache/llmrec/nodecache``).
    """

    FILENAME = "cache.sqlite3"

    def __init__(self, max_entries: int = 10_000, path: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.folder = Path(path).expanduser() if path is not None else default_cache_root() / "nodecache"
        self.file = self.folder / self.FILENAME
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._disabled = False

    # -- connection ----------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is not None or self._disabled:
            return self._conn
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.file, timeout=5.0, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                conn.execute("DELETE FROM entries WHERE expires IS NOT NULL AND expires <= ?", (self.clock(),))
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as exc:
            if not self._quarantine(exc):
                return None
            return self._connect()
        except OSError as exc:
            self._disabled = True
            warnings.warn(f"cache folder {self.folder} is not usable ({exc}): caching is off", CacheWarning,
                          stacklevel=4)
            return None
        self._conn = conn
        return conn

    def _quarantine(self, exc: sqlite3.DatabaseError) -> bool:
        """Deal with a database error: a corrupt file is renamed aside (True: try again with a fresh one);
        a busy or unopenable one is reported (False: this call misses)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
        if isinstance(exc, sqlite3.OperationalError):  # locked, busy, read-only, cannot open: not corruption
            warnings.warn(f"cache {self.file}: {exc} (treated as a miss)", CacheWarning, stacklevel=4)
            if "unable to open" in str(exc) or "readonly" in str(exc):
                self._disabled = True
            return False
        aside = self.file.with_name(f"{self.file.name}.corrupt-{int(time.time())}")
        warnings.warn(f"cache {self.file} is corrupt ({exc}): moved to {aside.name}, starting a new one",
                      CacheWarning, stacklevel=4)
        try:
            for suffix in ("-wal", "-shm"):
                Path(str(self.file) + suffix).unlink(missing_ok=True)
            os.replace(self.file, aside)
        except OSError:
            self._disabled = True
            return False
        return True

    def _run(self, fn: Callable[[sqlite3.Connection], Any], default: Any) -> Any:
        """``fn(connection)`` under the lock; database trouble is a warning and ``default``."""
        with self._lock:
            for _ in range(2):
                conn = self._connect()
                if conn is None:
                    return default
                try:
                    return fn(conn)
                except sqlite3.DatabaseError as exc:
                    if not self._quarantine(exc):
                        return default
            return default

    # -- the backend interface -------------------------------------------------------------------------------
    def peek(self, key: str) -> tuple[bool, Any]:
        """The synchronous lookup behind ``get`` (a local sqlite read takes microseconds)."""
        return self._run(lambda conn: self._peek(conn, key), _MISS)  # type: ignore[no-any-return]

    def _peek(self, conn: sqlite3.Connection, key: str) -> tuple[bool, Any]:
        row = conn.execute("SELECT expires, value FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return _MISS
        expires, blob = row
        now = self.clock()
        if expires is not None and now >= expires:
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            return _MISS
        try:
            value = _loads(blob)
        except Exception as exc:  # another version's entry, a class that moved: drop it and miss
            warnings.warn(f"cache {self.file}: unreadable entry dropped ({type(exc).__name__}: {exc})",
                          CacheWarning, stacklevel=5)
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            return _MISS
        conn.execute("UPDATE entries SET accessed = ? WHERE key = ?", (now, key))
        return True, value

    async def get(self, key: str) -> tuple[bool, Any]:
        return self.peek(key)

    async def set(self, key: str, value: Any, ttl: float | None) -> None:
        self.put(key, value, ttl)

    def put(self, key: str, value: Any, ttl: float | None) -> None:
        """The synchronous store behind ``set``; a value the codec cannot represent is skipped with a warning."""
        try:
            blob = _dumps(value)
        except Exception as exc:
            warnings.warn(f"cache {self.file}: cannot store a {type(value).__name__} "
                          f"({type(exc).__name__}: {exc}); not cached", CacheWarning, stacklevel=3)
            return
        now = self.clock()
        ns = _namespace(key)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR REPLACE INTO entries (key, ns, expires, accessed, value) VALUES (?,?,?,?,?)",
                             (key, ns, None if ttl is None else now + ttl, now, blob))
                (count,) = conn.execute("SELECT COUNT(*) FROM entries WHERE ns = ?", (ns,)).fetchone()
                if count > self.max_entries:
                    conn.execute("DELETE FROM entries WHERE key IN (SELECT key FROM entries WHERE ns = ? "
                                 "ORDER BY accessed LIMIT ?)", (ns, count - self.max_entries))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._run(write, None)

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every live entry whose key starts with ``prefix`` (unreadable ones skipped): for indexes built
        over entries, such as the semantic prompt cache."""
        now = self.clock()

        def rows(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            return conn.execute(
                "SELECT key, value FROM entries WHERE key >= ? AND key < ? AND (expires IS NULL OR expires > ?)",
                (prefix, prefix + "\U0010ffff", now)).fetchall()

        for key, blob in self._run(rows, []):
            try:
                value = _loads(blob)
            except Exception:
                continue
            yield key, value

    def __len__(self) -> int:
        return self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0], 0)  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
