"""Shared stores for serving on several workers or hosts, registered as a default plugin through the same hooks
as any third-party plugin's:

- the ``redis`` session store (``llmrec serve --session-store redis --session-url redis://HOST:6379/0``);
- the ``redis`` cache backend (``cache: {backend: redis}``, ``prompt_cache: {backend: redis}``), its URL from
  ``$LLMREC_REDIS_URL``;
- the ``redis`` log store (``llmrec serve --log-store redis:`` or ``redis:redis://HOST:6379/0``): impressions and
  feedback in two Redis streams.

redis-py is imported only once a Redis store is used (see :mod:`.redis`); docs/serving.md says how to run them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl
from .redis import RedisCache, RedisLogStore, RedisSessionStore, RedisUnavailable, mask_url, resolve_url


def accepts(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` takes a keyword argument ``name`` (by name, not through ``**options``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(name)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def session_store_options(factory: Callable[..., Any], url: str | None, namespace: str) -> dict[str, Any]:
    """The options ``llmrec serve`` gives a session store: ``url`` (refused with a ValueError when the store takes
    none) and ``namespace`` (the spec's name) when the store takes them."""
    options: dict[str, Any] = {}
    if url is not None:
        if not accepts(factory, "url"):
            raise ValueError("this session store takes no URL (use --session-store redis, or leave --session-url out)")
        options["url"] = url
    if accepts(factory, "namespace"):
        options["namespace"] = namespace
    return options


def prepare_session_store(factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Build the store once and let it check that it works (``prepare()``, e.g. a Redis PING), so that a store
    that cannot be reached is refused before the server starts; raises what the store raises."""
    store = factory(**options)
    prepare = getattr(store, "prepare", None)
    if callable(prepare):
        prepare()


@hookimpl
def llmrec_register_session_stores(register: Callable[[str, Any], None]) -> None:
    register("redis", RedisSessionStore)


@hookimpl
def llmrec_register_log_stores(register: Callable[[str, Any], None]) -> None:
    register("redis", RedisLogStore)


@hookimpl
def llmrec_register_cache_backends(register: Callable[[str, Any], None]) -> None:
    register("redis", RedisCache)


__all__ = ["RedisCache", "RedisLogStore", "RedisSessionStore", "RedisUnavailable", "accepts", "mask_url",
           "prepare_session_store", "resolve_url", "session_store_options"]
