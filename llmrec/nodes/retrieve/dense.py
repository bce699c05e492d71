"""``retrieve.dense``: nearest neighbours in embedding space, from an ``embedder`` resource's catalog vectors.

::

    resources:
      minilm: {type: embedder, config: {model: all-MiniLM-L6-v2}}
    nodes:
      dense:
        type: retrieve.dense
        config: {k: 50, index: auto}
        inputs: {catalog: ${resources.demo.catalog}, model: ${resources.minilm}, query: ${inputs.query},
                 like: ${profile.seen}, exclude: ${profile.seen}}

The catalog's vectors come from the embedder's persisted cache (:mod:`llmrec.embed`) and the index
(:mod:`llmrec.index`) is built once per (catalog, model) at start (``warm``), so a request embeds only its query.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ...data import Catalog
from ...embed import Embedder
from ...index import AUTO_EXACT_MAX, VectorIndex
from ...node import NoConfig, CheckContext, NodeType, Problem, SpecPath
from ...types import Candidates, ScoredItem
from ..common import PerObjects, count_or
from ..embed import CatalogVectors, catalog_vectors, mean_of


class DenseConfig(NoConfig):
    k: int = Field(50, ge=1, description="How many items, unless the 'k' input says otherwise.")
    index: Literal["auto", "exact", "faiss-ivf", "lancedb-flat", "lancedb-ann"] = Field(
        "auto", description="Vector index: exact (in memory), faiss-ivf (in-memory FAISS ANN), lancedb-flat or "
                            "lancedb-ann (LanceDB on disk), or auto (exact up to "
                            f"{AUTO_EXACT_MAX:,} items, faiss-ivf above; lancedb-ann if faiss is not installed).",
    )
    index_dir: SpecPath | None = Field(
        None, description="Folder where on-disk indexes (LanceDB, and faiss-ivf with its vectors) are saved and "
                          "reopened when the catalog and model are unchanged (default: LanceDB in a temporary "
                          "folder, faiss-ivf in memory only).",
    )
    source: str = Field("dense", min_length=1, description="Name of this list in ScoredItem.sources.")


class _State:
    def __init__(self, vectors: CatalogVectors, index: VectorIndex) -> None:
        self.vectors = vectors
        self.index = index


#: an exact index of at most this many vectors is searched on the event loop (well under a millisecond: one
#: matrix-vector product); larger or on-disk indexes are searched in a worker thread
INLINE_SEARCH = 10_000


class Dense(NodeType):
    """Nearest catalog items to a query text and/or to the mean vector of items a user liked (cosine)."""

    name = "retrieve.dense"
    description = "Retrieve the catalog items most similar (cosine) to a query text and/or to liked items' vectors."
    Config = DenseConfig
    # async: a query's encode waits (without a thread) to share a model call with the queries of concurrent
    # requests (Embedder.aencode_query); the search runs in a worker thread

    def __init__(self, config: DenseConfig) -> None:
        super().__init__(config)
        self._states: PerObjects[_State] = PerObjects()
        self._lock = threading.Lock()

    @classmethod
    def check(cls, config: DenseConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        d = config.index_dir
        if config.index == "faiss-ivf":
            import importlib.util

            if importlib.util.find_spec("faiss") is None:
                return [Problem("index 'faiss-ivf' needs the faiss package, which is not installed", field="index",
                                hint="pip install faiss-cpu, or use index: lancedb-ann")]
        if d is not None and d.exists() and not d.is_dir():
            return [("index_dir", f"index_dir {str(d)!r} is a file; give a folder (it is created if missing)")]
        if d is not None and config.index == "exact":
            return [Problem("index_dir is not used by the 'exact' index, which lives in memory",
                            field="index_dir", warning=True)]
        return []

    def state_for(self, catalog: Catalog, model: Embedder) -> _State:
        """The catalog's vectors and index under ``model``, built on first use (thread-safe)."""
        with self._lock:
            return self._states.get((catalog, model), lambda: self._build(catalog, model))

    def _build(self, catalog: Catalog, model: Embedder) -> _State:
        vectors = catalog_vectors(catalog, model)
        c = self.config
        path = None
        if c.index_dir is not None:  # one subfolder per model, so two embedders never fight over a pointer
            path = c.index_dir / model.cache_key
        index = VectorIndex.build(vectors.ids, vectors.matrix, kind=c.index, path=path, key=vectors.key)
        return _State(vectors, index)

    async def warm(self, catalog: Catalog | None = None, model: Embedder | None = None, **_: Any) -> None:
        if catalog is not None and model is not None:
            await asyncio.to_thread(self.state_for, catalog, model)

    async def run(
        self,
        catalog: Catalog,
        model: Embedder,
        query: str | None = None,
        like: list[str] | None = None,
        exclude: list[str] | None = None,
        k: int | None = None,
    ) -> Candidates:
        source = self.config.source
        n = count_or(k, self.config.k)
        has_query = bool(query and query.strip())
        if n == 0 or len(catalog) == 0 or (not has_query and not like):
            return Candidates(source=source)  # nothing to search with: a cold start, not an error
        asked = await model.aencode_query(query.strip()) if has_query else None  # type: ignore[union-attr]
        state = self._states.peek((catalog, model))
        if state is not None and state.index.kind == "exact" and len(state.index) <= INLINE_SEARCH:
            return self._search(catalog, model, asked, like, exclude, n)  # microseconds: no thread hop
        return await asyncio.to_thread(self._search, catalog, model, asked, like, exclude, n)

    def _search(self, catalog: Catalog, model: Embedder, asked: np.ndarray | None, like: list[str] | None,
                exclude: list[str] | None, n: int) -> Candidates:
        source = self.config.source
        state = self.state_for(catalog, model)
        parts = [] if asked is None else [asked]
        liked = mean_of(state.vectors, like)
        if liked is not None:
            parts.append(liked)
        if not parts:  # only unknown liked ids
            return Candidates(source=source)
        vector = np.mean(parts, axis=0)  # query and taste weigh the same
        ids, scores = state.index.search(vector[None, :], n, exclude=exclude)[0]
        items = []
        for item_id, score in zip(ids, scores.tolist()):
            score = round(float(score), 6)
            items.append(ScoredItem.trusted(item_id, score, {source: score}))
        return Candidates(items=items, source=source)


__all__ = ["Dense"]
