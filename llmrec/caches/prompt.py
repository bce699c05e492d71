"""The prompt-response cache of ``llm.prompt``: exact (a hash of everything that shapes the answer) and
semantic (a near-identical user message, by embedding similarity, with every other part identical).

::

    nodes:
      pick:
        type: llm.prompt
        config:
          template: "Suggest films like {{ liked | join(', ') }}."
          prompt_cache: {ttl: 1d, backend: disk, semantic: {threshold: 0.95}}
        inputs: {model: "${resources.model}", liked: "${inputs.liked}", cache_model: "${resources.minilm}"}

The exact key is the sha256 of the rendered messages, the provider name and model, the output schema's JSON
Schema, the closed choices, the sampling parameters and a version tag (the template and system sources and
this module's format), so a changed template, schema or model never serves a stale answer. The semantic
cache embeds only the last user message; its index is keyed by all the other parts, so a semantic hit never
crosses a model, schema, system prompt or candidate set. A hit costs no tokens: the node's trace record says
``cache_hit`` with ``cache: "prompt"`` or ``"semantic"`` and zero tokens and cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..llm.provider import Completion, CompletionRequest, Usage

#: bump when what is stored, or how keys are made, changes
FORMAT = "llmrec-prompt-cache/1"


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def schema_json(schema: Any) -> Any:
    """What identifies an output schema in a key: its JSON Schema (and name); None for free text."""
    if schema is None:
        return None
    try:
        return [getattr(schema, "__name__", ""), schema.model_json_schema()]
    except Exception:  # a schema pydantic cannot describe: its qualified name is the best we have
        return f"{getattr(schema, '__module__', '')}.{getattr(schema, '__qualname__', repr(schema))}"


def request_parts(request: CompletionRequest, provider: Any, version: str) -> dict[str, Any]:
    """Everything but the messages that shapes an answer to ``request``."""
    parts = {
        "format": FORMAT,
        "version": version,
        "provider": str(getattr(provider, "name", type(provider).__qualname__)),
        "model": str(getattr(provider, "model", "")),
        "api_base": getattr(provider, "api_base", None),
        "schema": schema_json(request.schema),
        "choices": [[c.path, list(c.values), c.unique] for c in request.choices],
        "sampling": {"temperature": request.temperature, "max_tokens": request.max_tokens, "seed": request.seed},
        "extra": request.extra,
    }
    if request.items is not None:  # the history behind an item-id provider's answer (absent: keys unchanged)
        parts["items"] = [[list(e) for e in request.items.history], request.items.path, list(request.items.ids)]
    return parts


def exact_key(request: CompletionRequest, provider: Any, version: str) -> str:
    """The exact-match key of a request: sha256 of its messages and :func:`request_parts`."""
    parts = request_parts(request, provider, version)
    parts["messages"] = [[m.role, m.content] for m in request.messages]
    return _digest(parts)


def semantic_group(request: CompletionRequest, provider: Any, version: str, embedder: Any) -> str:
    """The key of the set of requests a semantic hit may come from: identical in everything but the last
    user message, embedded by the same model."""
    parts = request_parts(request, provider, version)
    parts["head"] = [[m.role, m.content] for m in request.messages[:-1]]
    parts["embedder"] = embedder_id(embedder)
    return _digest(parts)


def embedder_id(embedder: Any) -> str:
    """Which model made a vector: the Embedder's ``cache_key`` (model version), else its name."""
    for attr in ("cache_key", "name"):
        try:
            value = getattr(embedder, attr, None)
        except Exception:
            value = None
        if isinstance(value, str) and value:
            return value
    return type(embedder).__qualname__


@dataclass
class Hit:
    completion: Completion
    kind: str  # "prompt" (exact) or "semantic"
    similarity: float | None = None


@dataclass
class _Index:
    keys: list[str]
    vectors: np.ndarray  # (n, dim) float32, unit rows


class PromptCache:
    """Exact and (optionally) semantic lookups of completions over a cache backend (memory, disk or a
    plugin's). ``threshold`` None turns the semantic cache off."""

    def __init__(self, backend: Any, ttl: float | None = None, threshold: float | None = None) -> None:
        self.backend = backend
        self.ttl = ttl
        self.threshold = threshold
        self._indexes: dict[str, _Index] = {}
        self._lock = asyncio.Lock()

    async def _get(self, key: str) -> tuple[bool, Any]:
        try:
            peek = getattr(self.backend, "peek", None)
            return peek(key) if peek is not None else await self.backend.get(key)
        except Exception as exc:  # a backend plugin failing is a miss, not a failed node
            warnings.warn(f"prompt cache lookup failed ({type(exc).__name__}: {exc}); treated as a miss",
                          stacklevel=2)
            return False, None

    async def _set(self, key: str, value: Any) -> None:
        try:
            await self.backend.set(key, value, self.ttl)
        except Exception as exc:
            warnings.warn(f"prompt cache store failed ({type(exc).__name__}: {exc})", stacklevel=2)

    # -- lookups ---------------------------------------------------------------------------------------------
    async def lookup(self, request: CompletionRequest, provider: Any, version: str,
                     embedder: Any = None) -> tuple[Hit | None, Any]:
        """A cached completion for ``request`` (exact first, then semantic), and a token to hand to
        :meth:`store` after a miss (it carries the key and the query vector, so nothing is computed twice)."""
        key = exact_key(request, provider, version)
        hit, value = await self._get(key)
        if hit:
            completion = _completion(value, request)
            if completion is not None:
                return Hit(completion, "prompt"), None
        token: dict[str, Any] = {"key": key}
        if self.threshold is None or embedder is None or not request.messages:
            return None, token
        group = semantic_group(request, provider, version, embedder)
        vector = await _embed(embedder, request.messages[-1].content)
        token.update(group=group, vector=vector)
        if vector is None:
            return None, token
        index = await self._index(group)
        if not index.keys:
            return None, token
        sims = index.vectors @ vector
        best = int(np.argmax(sims))
        similarity = float(sims[best])
        if similarity < self.threshold:
            return None, token
        found, value = await self._get(index.keys[best])
        completion = _completion(value, request) if found else None
        if completion is None:  # expired or evicted since: forget it
            self._forget(group, best)
            return None, token
        return Hit(completion, "semantic", similarity), token

    async def store(self, token: Any, request: CompletionRequest, completion: Completion) -> None:
        """Remember ``completion`` under the key (and vector) :meth:`lookup` returned in ``token``."""
        if token is None:
            return
        parsed = completion.parsed.model_dump(mode="json") if completion.parsed is not None else None
        value = {"text": completion.text, "parsed": parsed, "model": completion.model,
                 "provider": completion.provider, "stored": time.time()}
        if completion.scores:
            value["scores"] = {str(k): float(v) for k, v in completion.scores.items()}
        key = token["key"]
        await self._set(key, value)
        vector = token.get("vector")
        if vector is None:
            return
        group = token["group"]
        index = await self._index(group)
        if key not in index.keys:
            index.keys.append(key)
            index.vectors = np.vstack([index.vectors, vector[None, :]]) if len(index.keys) > 1 else vector[None, :]
        if getattr(self.backend, "scan", None) is not None:  # persist the vector where it can be read back
            await self._set(f"sem:{group}:{key}", {"key": key, "vector": vector.tolist()})

    async def _index(self, group: str) -> _Index:
        index = self._indexes.get(group)
        if index is not None:
            return index
        async with self._lock:
            index = self._indexes.get(group)
            if index is not None:
                return index
            keys: list[str] = []
            rows: list[np.ndarray] = []
            scan = getattr(self.backend, "scan", None)
            if scan is not None:  # a persistent backend: vectors stored by earlier runtimes or processes
                try:
                    for _, entry in scan(f"sem:{group}:"):
                        keys.append(entry["key"])
                        rows.append(np.asarray(entry["vector"], dtype=np.float32))
                except Exception as exc:
                    warnings.warn(f"semantic cache index could not be read ({exc}); starting empty", stacklevel=2)
                    keys, rows = [], []
            vectors = np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
            index = self._indexes[group] = _Index(keys, vectors)
            return index

    def _forget(self, group: str, i: int) -> None:
        index = self._indexes[group]
        del index.keys[i]
        index.vectors = np.delete(index.vectors, i, axis=0)


async def _embed(embedder: Any, text: str) -> np.ndarray | None:
    """The unit vector of ``text`` (in a thread: a model call), or None with a warning if embedding fails."""
    try:
        raw = await asyncio.to_thread(embedder.encode, [text])
        vector = np.asarray(raw, dtype=np.float32).reshape(-1)
    except Exception as exc:
        warnings.warn(f"semantic cache: could not embed the prompt ({type(exc).__name__}: {exc})", stacklevel=2)
        return None
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else None


def _completion(value: Any, request: CompletionRequest) -> Completion | None:
    """A stored entry as a Completion that charged nothing; None when it no longer fits the request."""
    try:
        parsed = None
        if request.schema is not None:
            if value.get("parsed") is None:
                return None
            parsed = request.schema.model_validate(value["parsed"])
        scores = {str(k): float(v) for k, v in (value.get("scores") or {}).items()}
        return Completion(value["text"], parsed, Usage(), 0, value.get("model", ""), value.get("provider", ""),
                          cached=True, scores=scores)
    except Exception:
        return None


__all__ = ["FORMAT", "Hit", "PromptCache", "exact_key", "request_parts", "schema_json", "semantic_group"]
