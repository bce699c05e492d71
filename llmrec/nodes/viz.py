"""``viz.embedding_map``: a 2-D map (t-SNE) of a catalog's embeddings, coloured by category, written as a PNG.

The book's first tutorial plots the article embeddings to show that topics form clusters. The map depends only
on the catalog and the model (both resources), so it is drawn once when the runtime starts (``warm``) and again
only when they change: a fingerprint of the item ids, the model version and the settings sits beside the PNG.
Each request just returns the path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..data import Catalog
from ..hookspecs import hookimpl
from ..node import NodeType, SpecPath


class EmbeddingMapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: SpecPath = Field(description="Where to write the PNG (relative paths resolve from the spec's folder).")
    method: Literal["tsne"] = Field("tsne", description="Projection to 2-D (scikit-learn's t-SNE).")
    perplexity: float = Field(30.0, gt=1.0, description="t-SNE perplexity (roughly: neighbours per point).")
    seed: int = Field(0, description="Random seed; the same seed and data give the same picture.")
    title: str = Field("", description="Plot title; default: '<n> items, t-SNE of <model>'.")


class EmbeddingMap(NodeType):
    """Project every item's embedding to 2-D and plot it coloured by category; returns the PNG's path."""

    name = "viz.embedding_map"
    description = "t-SNE map of the catalog's embeddings coloured by category, written as a PNG (drawn once)."
    Config = EmbeddingMapConfig

    def __init__(self, config: EmbeddingMapConfig) -> None:
        super().__init__(config)
        self._drawn: str | None = None
        self._lock = asyncio.Lock()

    def _fingerprint(self, ids: list[str], version: str) -> str:
        c = self.config
        raw = json.dumps([ids, version, c.method, c.perplexity, c.seed, c.title])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def _draw(self, catalog: Catalog, model: Any) -> str:
        out = Path(self.config.path)
        ids, matrix = model.embed_items(catalog)
        stamp = out.with_name(out.name + ".fingerprint")
        fingerprint = self._fingerprint(list(ids), str(model.version))
        if out.exists() and stamp.exists() and stamp.read_text().strip() == fingerprint:
            return str(out)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from sklearn.manifold import TSNE

        n = len(ids)
        if n < 3:
            raise ValueError(f"a t-SNE map needs at least 3 items, the catalog has {n}")
        perplexity = min(self.config.perplexity, (n - 1) / 3)
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=self.config.seed,
                      metric="cosine").fit_transform(np.asarray(matrix, dtype=np.float32))
        categories = [catalog[i].category or "(none)" for i in ids]
        names = sorted(set(categories))
        fig, ax = plt.subplots(figsize=(8, 6.5), dpi=110)
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for j, name in enumerate(names):
            mask = np.array([c == name for c in categories])
            ax.scatter(points[mask, 0], points[mask, 1], s=9, alpha=0.75, color=cmap(j % cmap.N),
                       label=f"{name} ({int(mask.sum())})")
        ax.set_title(self.config.title or f"{n} items, t-SNE of {getattr(model, 'name', 'embeddings')}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=8, markerscale=2, frameon=False)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".png", dir=out.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, out)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
        stamp.write_text(fingerprint + "\n")
        return str(out)

    async def _ensure(self, catalog: Catalog, model: Any) -> str:
        async with self._lock:
            if self._drawn is None:
                self._drawn = await asyncio.to_thread(self._draw, catalog, model)
            return self._drawn

    async def warm(self, catalog: Catalog | None = None, model: Any = None, **_: Any) -> None:
        if catalog is not None and model is not None:
            await self._ensure(catalog, model)

    async def run(self, catalog: Catalog, model: Any) -> str:
        return await self._ensure(catalog, model)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    register(EmbeddingMap)


__all__ = ["EmbeddingMap"]
