"""``llmrec embed``: a catalog's item vectors and a vector index over them, on this machine or on Ray.

    llmrec embed specs/quickstart.yaml --output runs/embed/shop
    llmrec embed items.csv --text "{{title}}. {{summary}}" --output runs/embed/items --engine ray --workers 4

The source is a spec (its catalog: the one ``dataset`` or ``catalog`` resource; its model: the ``embedder``
resource's, else ``--model``) or a catalog file (CSV, JSONL, Parquet, read by :func:`llmrec.data.files.read_catalog`
with ``--id``/``--title``/``--text`` naming columns). DIR receives:

- ``ids.json``: the item ids, in catalog order;
- ``vectors.npy``: a float32 ``(n, dim)`` array, row i the vector of ``ids[i]`` (L2-normalised; plain NumPy,
  ``np.load(path)``, no pickle);
- ``meta.json``: model name, version and backend, dimension, item count, the content key of the texts, index
  kind, engine, seconds;
- ``index/``: a :class:`llmrec.index.VectorIndex` built over them (``VectorIndex.open(DIR / "index")``) for the
  on-disk kinds (``--index lancedb-flat``, ``lancedb-ann``, ``faiss-ivf``); ``exact`` needs no files.

Both engines cut the texts into the same batches of ``--batch-size`` and encode each with
:class:`EmbedWorker` (its model loaded once per process or Ray actor), so their vectors are identical.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LlmrecError

SPEC_SUFFIXES = (".yaml", ".yml")
DEFAULT_BATCH = 1024
DEFAULT_INDEX = "exact"


class EmbedError(LlmrecError):
    """The job cannot run as asked; ``option`` names the option (or argument) at fault."""

    def __init__(self, message: str, option: str | None = None) -> None:
        self.option = option
        super().__init__(message)


@dataclass
class EmbedSource:
    """What to embed: ids and texts in catalog order, and the embedder's settings."""

    ids: list[str]
    texts: list[str]
    model: str
    backend: str = "auto"
    model_batch: int = 64
    device: str = "cpu"


def _embedder_settings(graph: Any) -> dict[str, Any] | None:
    found = [r for r in graph.resources.values() if r.cls.name == "embedder"]
    if len(found) > 1:
        names = ", ".join(n for n, r in graph.resources.items() if r.cls.name == "embedder")
        raise EmbedError(f"the spec has {len(found)} embedder resources ({names}); pass --model to choose",
                         "--model")
    if not found:
        return None
    c = found[0].config
    return {"model": c.model, "backend": c.backend, "model_batch": c.batch_size, "device": c.device}


def source_from_spec(graph: Any, model: str | None = None) -> EmbedSource:
    """The catalog of the spec's one dataset or catalog resource (loaded), and its embedder's settings."""
    from ..data import Catalog  # lazy: the data layer, once a job runs
    from ..data.dataset import Dataset  # lazy: the data layer, once a job runs
    from ..runtime.executor import load_resource  # lazy: the runtime, once a job runs

    names = [n for n, r in graph.resources.items()
             if isinstance(getattr(r.cls, "provides", None), type) and issubclass(r.cls.provides, (Catalog, Dataset))]
    if len(names) != 1:
        what = f"{len(names)} ({', '.join(names)})" if names else "none"
        raise EmbedError(f"spec '{graph.name}' needs exactly one dataset or catalog resource to embed, and has "
                         f"{what}; give a catalog file instead", "SOURCE")
    value = asyncio.run(load_resource(graph, names[0]))
    catalog = value.catalog if isinstance(value, Dataset) else value
    settings = _embedder_settings(graph) or {}
    if model is not None:
        settings = {"model": model}
    items = list(catalog)
    from ..embed import DEFAULT_MODEL  # lazy: numpy and the encoders, once a job runs

    return EmbedSource([it.id for it in items], [it.text for it in items], **{"model": DEFAULT_MODEL, **settings})


def source_from_file(path: Path, *, model: str | None, id: str = "id", title: str = "title",
                     text: str | None = None) -> EmbedSource:
    """A catalog file's items (:func:`~llmrec.data.files.read_catalog`)."""
    from ..data.files import read_catalog  # lazy: the data layer, once a job runs
    from ..embed import DEFAULT_MODEL  # lazy: numpy and the encoders, once a job runs

    catalog = read_catalog(path, id=id, title=title, text=text)
    items = list(catalog)
    return EmbedSource([it.id for it in items], [it.text for it in items], model or DEFAULT_MODEL)


class EmbedWorker:
    """Encodes batches of texts with one loaded :class:`~llmrec.embed.Embedder` (its model loads in
    ``__init__``: once per process or Ray actor)."""

    def __init__(self, model: str, backend: str = "auto", model_batch: int = 64, device: str = "cpu") -> None:
        from ..embed import Embedder  # lazy: numpy and the encoders, once a worker starts

        self.embedder = Embedder(model, backend=backend, batch_size=model_batch, device=device).load()

    def encode(self, texts: list[str]) -> Any:
        return self.embedder.encode(texts)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Ray Data's ``map_batches`` call: ``group`` JSON texts (``{"start", "texts"}``, one batch of the local
        engine each) in, a ``position`` and a ``vector`` per text out."""
        import numpy as np

        positions, parts = [], []
        for text in batch["group"]:
            group = json.loads(text)
            parts.append(self.encode(group["texts"]))
            positions.extend(range(group["start"], group["start"] + len(group["texts"])))
        return {"position": np.asarray(positions, dtype=np.int64), "vector": np.concatenate(parts)}


def embed_catalog(source: EmbedSource, output: str | os.PathLike[str], *, engine: str = "local",
                  batch_size: int = DEFAULT_BATCH, index: str = DEFAULT_INDEX, address: str | None = None,
                  num_cpus: int | None = None, workers: int | None = None, progress: bool = False,
                  ) -> dict[str, Any]:
    """Embed ``source`` into ``output`` (module docstring) and return what meta.json says."""
    import numpy as np

    from ..index import KINDS, VectorIndex  # lazy: LanceDB and faiss, once a job runs

    if index not in KINDS:
        raise EmbedError(f"'{index}' is not one of {', '.join(KINDS)}", "--index")
    if batch_size < 1:
        raise EmbedError("must be at least 1", "--batch-size")
    if engine not in ("local", "ray"):
        raise EmbedError(f"'{engine}' is not one of local, ray", "--engine")
    if not source.ids:
        raise EmbedError("the catalog has no items to embed", "SOURCE")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise EmbedError(f"{out} is a file, not a folder", "--output")
    started = time.perf_counter()
    settings = {"model": source.model, "backend": source.backend, "model_batch": source.model_batch,
                "device": source.device}
    extra: dict[str, Any] = {}
    if engine == "ray":
        from .engine import connect, map_in_order, pool_size  # lazy: Ray, only with --engine ray

        ray = connect(address, num_cpus)
        matrix: Any = None
        groups = [json.dumps({"start": i, "texts": source.texts[i:i + batch_size]}, ensure_ascii=False)
                  for i in range(0, len(source.texts), batch_size)]
        size = min(pool_size(ray, workers), len(groups))
        extra["workers"] = size
        for batch in map_in_order(ray, groups, EmbedWorker, settings, workers=size, progress=progress):
            vectors = np.asarray(batch["vector"], dtype=np.float32)
            if matrix is None:
                matrix = np.zeros((len(source.texts), vectors.shape[1]), dtype=np.float32)
            matrix[np.asarray(batch["position"], dtype=np.int64)] = vectors
        worker = None
    else:
        worker = EmbedWorker(**settings)
        parts = [worker.encode(source.texts[i:i + batch_size]) for i in range(0, len(source.texts), batch_size)]
        matrix = np.concatenate(parts).astype(np.float32, copy=False)
    seconds = time.perf_counter() - started
    from ..embed import model_version, resolve_model_path  # lazy: numpy and the encoders, once a job runs

    version = worker.embedder.version if worker is not None else model_version(resolve_model_path(source.model))
    key = content_key(version, source.texts)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".vectors.npy.tmp"
    with staging.open("wb") as f:
        np.save(f, matrix, allow_pickle=False)
    staging.replace(out / "vectors.npy")
    (out / "ids.json").write_text(json.dumps(source.ids, ensure_ascii=False) + "\n", encoding="utf-8")
    built = VectorIndex.build(source.ids, matrix, path=out / "index", kind=index, key=key)
    meta = {"model": source.model, "version": version, "backend": source.backend,
            "dim": int(matrix.shape[1]), "items": len(source.ids), "content_key": key,
            "index": built.kind, "engine": engine, "batch_size": batch_size, "embed_seconds": round(seconds, 3),
            **extra}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def content_key(version: str, texts: list[str]) -> str:
    """A digest of the model version and the texts in order: what the index over their vectors depends on."""
    import hashlib

    from ..caches.embeddings import text_key  # lazy: the cache's text digest, once a job runs

    digest = hashlib.sha256(version.encode())
    for text in texts:
        digest.update(text_key(text))
    return digest.hexdigest()[:16]


def is_spec(path: Path) -> bool:
    return path.suffix.lower() in SPEC_SUFFIXES


__all__ = ["DEFAULT_BATCH", "DEFAULT_INDEX", "EmbedError", "EmbedSource", "EmbedWorker", "content_key",
           "embed_catalog", "is_spec", "source_from_file", "source_from_spec"]
