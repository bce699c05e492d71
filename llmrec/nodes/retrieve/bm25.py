"""``retrieve.bm25``: sparse lexical retrieval over the catalog's text with bm25s (index built once per catalog)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ...data import Catalog
from ...node import NoConfig, NodeType
from ...types import Candidates, ScoredItem
from ..common import PerObjects, count_or

if TYPE_CHECKING:  # pragma: no cover
    import bm25s


class BM25Config(NoConfig):
    k: int = Field(50, ge=1, description="How many items at most, unless the 'k' input says otherwise.")
    k1: float = Field(1.5, ge=0.0, description="BM25 term-frequency saturation.")
    b: float = Field(0.75, ge=0.0, le=1.0, description="BM25 length normalisation.")
    stopwords: str = Field("en", description="bm25s stopword list ('en', or '' for none).")
    source: str = Field("bm25", min_length=1, description="Name of this list in ScoredItem.sources.")


class _BM25Index:
    def __init__(self, retriever: bm25s.BM25, ids: list[str]) -> None:
        self.retriever = retriever
        self.ids = ids
        self.vocab: dict[str, int] = retriever.vocab_dict


class BM25(NodeType):
    """Keyword search over the catalog's ``title. description`` text with bm25s."""

    name = "retrieve.bm25"
    inline = True
    description = "Retrieve catalog items matching a text query with BM25 (empty query: no items)."
    Config = BM25Config

    def __init__(self, config: BM25Config) -> None:
        super().__init__(config)
        self._indexes: PerObjects[_BM25Index] = PerObjects()

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(  # type: ignore[no-any-return]
            texts, stopwords=self.config.stopwords or None, return_ids=False, show_progress=False
        )

    def _build(self, catalog: Catalog) -> _BM25Index:
        import bm25s

        retriever = bm25s.BM25(k1=self.config.k1, b=self.config.b)
        items = list(catalog)
        if items:
            retriever.index(self._tokenize([item.text for item in items]), show_progress=False)
        return _BM25Index(retriever, [item.id for item in items])

    def index_for(self, catalog: Catalog) -> _BM25Index:
        """The index of ``catalog``, built on first use."""
        return self._indexes.get((catalog,), lambda: self._build(catalog))

    async def warm(self, catalog: Catalog | None = None, **_: Any) -> None:
        if catalog is not None:
            await asyncio.to_thread(self.index_for, catalog)

    async def run(self, catalog: Catalog, query: str | None = None, k: int | None = None) -> Candidates:
        source = self.config.source
        n = count_or(k, self.config.k)
        if not query or not query.strip() or n == 0 or len(catalog) == 0:
            return Candidates(source=source)
        index = self.index_for(catalog)
        tokens = [t for t in self._tokenize([query])[0] if t in index.vocab]
        if not tokens:
            return Candidates(source=source)
        import numpy as np

        scores = index.retriever.get_scores(tokens)
        hits = np.flatnonzero(scores > 0)
        # best score first; equal scores keep catalog order, so results never depend on sort internals
        order = hits[np.lexsort((hits, -scores[hits]))][:n]
        items = []
        for i in order.tolist():
            score = round(float(scores[i]), 6)
            items.append(ScoredItem.trusted(index.ids[i], score, {source: score}))
        return Candidates(items=items, source=source)


__all__ = ["BM25"]
