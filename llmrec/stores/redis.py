"""Redis-backed stores shared by every worker and host: the ``redis`` session store and the ``redis`` cache backend.

Both talk to Redis through redis-py's asyncio client (``redis.asyncio``), one client per event loop, with no
client-side retries and a short socket timeout: a Redis that is down costs a request milliseconds, not seconds.
After a connection failure a store does not try again for ``retry_after`` seconds (each call in between fails at
once), so an outage does not make every request wait for a timeout.

- :class:`RedisSessionStore` keeps each session as compact JSON (what the memory store keeps) under
  ``PREFIX NAMESPACE : SESSION_ID`` with the session TTL as Redis expiry (``SET ... PX``); one session's JSON is
  at most ``max_session_bytes`` (a larger one is not kept: its key is deleted). All sessions together are bounded
  by the Redis server's ``maxmemory`` (docs/serving.md). Store failures raise :class:`RedisUnavailable`, which the
  server turns into an answer that says the session was not kept.
- :class:`RedisCache` keeps node outputs and prompt responses as :mod:`llmrec.caches.codec` tagged JSON behind the
  disk cache's format header (never pickle: whoever can write to the Redis could otherwise run code in every
  worker), with the entry's TTL as Redis expiry. It is bounded by ``maxmemory`` with an LRU eviction policy, not
  by ``max_entries``. A Redis that cannot be reached is a miss with a :class:`~llmrec.caches.CacheWarning`.

The URL is ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (``rediss://`` for TLS, ``unix://PATH``), by default
``$LLMREC_REDIS_URL``, else ``redis://127.0.0.1:6379/0``. A password in it is a secret: every message shows the
URL through :func:`mask_url`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic_core import to_json

from ..caches import codec
from ..caches.backends import CacheWarning

#: the environment variable both stores read their URL from when none is given
URL_ENV = "LLMREC_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: the disk cache's header: a Redis entry is the same bytes as a disk entry (anything else reads as a miss)
CACHE_FORMAT = b"llmrec-cache/2\n"
#: the largest session kept, by default (the server trims turns to its --session-max-bytes before saving)
MAX_SESSION_BYTES = 4 * 1024 * 1024


class RedisUnavailable(ConnectionError):
    """Redis could not be reached or answered with an error; the message names the URL with its password masked."""


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$LLMREC_REDIS_URL``, else :data:`DEFAULT_URL`."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*)(?P<password>:[^/\s]*)?@")
_PASSWORD_PARAM = re.compile(r"(?P<name>[?&]password=)[^&#\s]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it (and a ``?password=`` query value) replaced by ``***``: safe
    to show. Works on a URL inside a longer text too (``redis:redis://:PW@host/0``). A user part without a password
    (``redis://SECRET@host``) is masked as well: older clients read it as the password."""
    def userinfo(m: re.Match[str]) -> str:
        return f"{m['scheme']}{m['user']}:***@" if m["password"] is not None else f"{m['scheme']}***@"

    return _PASSWORD_PARAM.sub(r"\g<name>***", _USERINFO.sub(userinfo, text))


def secrets_of(url: str) -> list[str]:
    """The secret parts of ``url`` (its password), to scrub from any text that might echo them."""
    try:
        parts = urlsplit(url)
        found = [parts.password if parts.password is not None else parts.username]
    except ValueError:
        return [url]
    found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    return sorted({v for s in found if s for v in (s, unquote(s))}, key=len, reverse=True)


def _describe(exc: BaseException, url: str) -> str:
    """``exc`` as one line with every secret of ``url`` scrubbed (a driver message could quote the URL)."""
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(".")
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return text


class _Connection:
    """One asyncio client per event loop over ``url``, with a fail-fast window after a connection failure."""

    def __init__(self, url: str | None, socket_timeout: float, retry_after: float) -> None:
        self.url = resolve_url(url)
        self.shown = mask_url(self.url)
        self.socket_timeout = socket_timeout
        self.retry_after = retry_after
        self.down_until = 0.0
        self.down_reason = ""
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._check_url()

    def _check_url(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"'{self.shown}' is not a Redis URL: use redis://HOST:PORT/DB, rediss://... or "
                             "unix://PATH")

    def _options(self) -> dict[str, Any]:
        return {"socket_timeout": self.socket_timeout, "socket_connect_timeout": self.socket_timeout,
                "health_check_interval": 0}

    def client(self) -> Any:
        """The client of the running loop (a new one when the loop changed: a client's connections belong to
        the loop they were opened in)."""
        redis = redis_module()
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)  # no retries: fail fast, see above
            self._client = redis.asyncio.Redis.from_url(self.url, retry=retry, **self._options())
            self._loop = loop
        return self._client

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args, **kwargs)``; Redis trouble raises :class:`RedisUnavailable` (at once while
        the fail-fast window after the last failure is open)."""
        redis = redis_module()
        if self.down_until and time.monotonic() < self.down_until:
            raise RedisUnavailable(f"Redis at {self.shown} is unreachable ({self.down_reason})")
        try:
            result = await getattr(self.client(), method)(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            self.down_reason = _describe(exc, self.url)
            self.down_until = time.monotonic() + self.retry_after
            raise RedisUnavailable(f"Redis at {self.shown} is unreachable ({self.down_reason})") from None
        self.down_until = 0.0
        return result

    def ping(self) -> None:
        """A synchronous PING (for startup checks, outside any event loop)."""
        redis = redis_module()
        try:
            client = redis.Redis.from_url(self.url, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                                          **self._options())
            try:
                client.ping()
            finally:
                client.close()
        except (redis.RedisError, OSError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {self.shown} ({_describe(exc, self.url)}): start "
                                   f"Redis there, or point --session-url or ${URL_ENV} at a running one") from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


def redis_module() -> Any:
    """redis-py, or a :class:`RedisUnavailable` saying how to install it."""
    try:
        import redis  # lazy: redis-py, only once a Redis store is used
        import redis.asyncio.retry  # noqa: F401
        import redis.backoff  # noqa: F401
        import redis.retry  # noqa: F401
    except ImportError:
        raise RedisUnavailable("the redis stores need redis-py: pip install 'llmrec[redis]'") from None
    return redis


def _ttl_ms(ttl: float | None) -> int | None:
    """A TTL in seconds as Redis ``PX`` milliseconds (None or 0: no expiry)."""
    return max(1, int(ttl * 1000)) if ttl else None


class RedisSessionStore:
    """Sessions in Redis, shared by every worker and host serving the same spec (see the module docstring).

    ``namespace`` (the server passes the spec's name) keeps two specs' sessions apart on one Redis; ``prefix``
    keeps llmrec's keys apart from other applications'. The TTL is refreshed by every save, as in the memory store.
    """

    def __init__(self, url: str | None = None, namespace: str = "default", prefix: str = "llmrec:session:",
                 max_session_bytes: int = MAX_SESSION_BYTES, socket_timeout: float = 1.0,
                 retry_after: float = 1.0, **_options: Any) -> None:
        if max_session_bytes < 1:
            raise ValueError("max_session_bytes must be at least 1")
        self.conn = _Connection(url, socket_timeout, retry_after)
        self.namespace = namespace
        self.prefix = prefix
        self.max_session_bytes = max_session_bytes

    @property
    def url(self) -> str:
        """The URL with its password masked."""
        return self.conn.shown

    def key(self, session_id: str) -> str:
        return f"{self.prefix}{self.namespace}:{session_id}"

    def prepare(self) -> None:
        """Check now that Redis answers (``llmrec serve`` calls this before it starts)."""
        self.conn.ping()

    async def load(self, session_id: str) -> dict[str, Any] | None:
        blob = await self.conn.call("get", self.key(session_id))
        if blob is None:
            return None
        try:
            state = json.loads(blob)
        except (UnicodeDecodeError, ValueError):  # not a session this store wrote: start afresh
            return None
        return state if isinstance(state, dict) else None

    async def save(self, session_id: str, state: dict[str, Any], ttl: float | None) -> None:
        blob = json.dumps(state, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
        key = self.key(session_id)
        if len(blob) > self.max_session_bytes:  # could never be kept: the session ends here
            await self.conn.call("delete", key)
            return
        await self.conn.call("set", key, blob, px=_ttl_ms(ttl))

    async def delete(self, session_id: str) -> None:
        await self.conn.call("delete", self.key(session_id))

    async def ttl(self, session_id: str) -> float | None:
        """Seconds left before the session expires; None when it does not exist or never expires."""
        ms = await self.conn.call("pttl", self.key(session_id))
        return ms / 1000 if ms is not None and ms >= 0 else None

    async def close(self) -> None:
        await self.conn.close()


class RedisCache:
    """A cache backend in Redis for ``cache: {backend: redis}`` and ``prompt_cache: {backend: redis}``, shared
    by every runtime, worker and host that reaches the same Redis (see the module docstring).

    Keys are ``prefix`` + the executor's key (node id, a hash of its version, a hash of its inputs), so a changed
    node never reads an older version's entries. ``max_entries`` is not applied: bound the cache with the Redis
    server's ``maxmemory`` and ``maxmemory-policy allkeys-lru`` (or ``volatile-lru`` when every entry has a TTL).
    """

    def __init__(self, max_entries: int = 10_000, path: str | None = None, url: str | None = None,
                 prefix: str = "llmrec:cache:", socket_timeout: float = 0.5, retry_after: float = 1.0) -> None:
        self.max_entries = max_entries  # kept for the interface; Redis's maxmemory bounds the cache
        if path is not None:
            warnings.warn(f"cache path '{path}' is not used by the redis backend (its URL is ${URL_ENV})",
                          CacheWarning, stacklevel=2)
        self.conn = _Connection(url, socket_timeout, retry_after)
        self.prefix = prefix
        self._warned_down = False

    @property
    def url(self) -> str:
        """The URL with its password masked."""
        return self.conn.shown

    def _unavailable(self, exc: RedisUnavailable) -> None:
        if not self._warned_down:  # once per outage: a warning per lookup would flood the log
            self._warned_down = True
            warnings.warn(f"cache: {exc}; lookups are misses and nothing is stored until it answers again",
                          CacheWarning, stacklevel=3)

    async def get(self, key: str) -> tuple[bool, Any]:
        try:
            blob = await self.conn.call("get", self.prefix + key)
        except RedisUnavailable as exc:
            self._unavailable(exc)
            return False, None
        self._warned_down = False
        if blob is None:
            return False, None
        try:
            if bytes(blob[:len(CACHE_FORMAT)]) != CACHE_FORMAT:
                raise codec.CodecError("unknown format (another llmrec version, or not a cache entry)")
            value = codec.decode(bytes(blob[len(CACHE_FORMAT):]))
        except Exception as exc:  # another version's entry, a class that moved: drop it and miss
            warnings.warn(f"cache {self.url}: unreadable entry dropped ({type(exc).__name__}: {exc})", CacheWarning,
                          stacklevel=2)
            try:
                await self.conn.call("delete", self.prefix + key)
            except RedisUnavailable:
                pass
            return False, None
        return True, value

    async def set(self, key: str, value: Any, ttl: float | None) -> None:
        try:
            blob = CACHE_FORMAT + codec.encode(value)
        except Exception as exc:
            warnings.warn(f"cache {self.url}: cannot store a {type(value).__name__} ({type(exc).__name__}: {exc}); "
                          "not cached", CacheWarning, stacklevel=2)
            return
        try:
            await self.conn.call("set", self.prefix + key, blob, px=_ttl_ms(ttl))
        except RedisUnavailable as exc:
            self._unavailable(exc)
            return
        self._warned_down = False

    async def close(self) -> None:
        await self.conn.close()


class RedisLogStore:
    """Impressions and feedback in two Redis streams (``PREFIX impressions`` and ``PREFIX feedback``), one JSON
    record per entry, appended by every worker and host: ``llmrec serve --log-store redis:`` (the URL from
    ``$LLMREC_REDIS_URL``) or ``--log-store redis:redis://HOST:6379/0``. Each stream keeps about ``max_records``
    entries (``XADD ... MAXLEN ~``: the oldest are trimmed). Called from the log writer's thread, so it uses
    redis-py's synchronous client; a failure raises :class:`RedisUnavailable` (masked URL), which the writer counts
    and logs. It has no folder on disk, so provenance stamps are not kept beside it."""

    PAGE = 1000  # entries read per XRANGE

    def __init__(self, location: str | None = None, *, prefix: str = "llmrec:log:", max_records: int = 1_000_000,
                 socket_timeout: float = 2.0) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.url = resolve_url(location or None)
        self.shown = mask_url(self.url)
        if urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"'{self.shown}' is not a Redis URL: use redis:redis://HOST:PORT/DB, or redis: with "
                             f"${URL_ENV} set")
        self.prefix = prefix
        self.max_records = max_records
        self.socket_timeout = socket_timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _redis(self) -> Any:
        if self._client is None:
            redis = redis_module()
            self._client = redis.Redis.from_url(
                self.url, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout)
        return self._client

    def _call(self, fn: Any) -> Any:
        redis = redis_module()
        try:
            with self._lock:
                return fn(self._redis())
        except (redis.RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis log store at {self.shown}: {_describe(exc, self.url)}") from None

    def prepare(self) -> None:
        self._call(lambda r: r.ping())

    def _append(self, kind: str, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        key = self.prefix + kind
        blobs = [to_json(r, fallback=str, inf_nan_mode="null") for r in records]

        def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for blob in blobs:
                pipe.xadd(key, {"r": blob}, maxlen=self.max_records, approximate=True)
            pipe.execute()

        self._call(write)

    def append_impressions(self, records: Sequence[dict[str, Any]]) -> None:
        self._append("impressions", records)

    def append_feedback(self, records: Sequence[dict[str, Any]]) -> None:
        self._append("feedback", records)

    def _read(self, kind: str) -> Iterator[dict[str, Any]]:
        key, start = self.prefix + kind, "-"
        while True:
            page = self._call(lambda r, start=start: r.xrange(key, min=start, max="+", count=self.PAGE))
            for entry_id, fields in page:
                try:
                    record = json.loads(fields.get(b"r", b""))
                except (UnicodeDecodeError, ValueError):  # not a record this store wrote
                    continue
                if isinstance(record, dict):
                    yield record
            if len(page) < self.PAGE:
                return
            start = "(" + page[-1][0].decode()  # exclusive: after the last entry read

    def impressions(self) -> Iterator[dict[str, Any]]:
        return self._read("impressions")

    def feedback(self) -> Iterator[dict[str, Any]]:
        return self._read("feedback")

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


__all__ = ["CACHE_FORMAT", "DEFAULT_URL", "URL_ENV", "RedisCache", "RedisLogStore", "RedisSessionStore",
           "RedisUnavailable", "mask_url", "resolve_url", "secrets_of"]
