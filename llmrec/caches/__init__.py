"""Every cache llmrec keeps, in one package, registered as a default plugin (the cache backends):

- :mod:`.backends`: the ``memory`` and ``disk`` (sqlite) backends behind a node's ``cache:`` policy and
  ``llm.prompt``'s ``prompt_cache``; a plugin adds its own through ``llmrec_register_cache_backends``;
- :mod:`.codec`: the tagged-JSON format disk caches store values in (never pickle: a cache file is untrusted);
- :mod:`.prompt`: the prompt-response cache of ``llm.prompt`` (exact and semantic keys) over a backend;
- :mod:`.embeddings`: the embedder's segment files of item vectors, keyed by model version and text digest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hookspecs import hookimpl
from .backends import CacheWarning, DiskCache, MemoryCache, default_cache_root


@hookimpl
def llmrec_register_cache_backends(register: Callable[[str, Any], None]) -> None:
    register("memory", MemoryCache)
    register("disk", DiskCache)


__all__ = ["CacheWarning", "DiskCache", "MemoryCache", "default_cache_root"]
