"""The persisted embedding cache of :class:`~llmrec.embed.Embedder`: item vectors keyed by (model version, text).

Item vectors are cached on disk, keyed by (model version, sha256 of the text), so only new or changed texts are
ever embedded. ``version`` hashes the model folder (small files' contents; large files' sizes, mtimes and, for
safetensors, headers), so a changed model never reuses old vectors. Layout::

    <cache_dir>/embeddings/<version>[-raw]/seg-<time>-<random>.npz
        keys: (n, 32) uint8 digests, vectors: (n, d) float32

Segments are immutable. New vectors are appended by writing a new segment to ``tmp-*.npz`` and renaming it with
``os.replace``, so an interrupted run leaves every earlier segment intact (a stray ``tmp-*`` file is ignored
and removed later). When a folder holds more than ``COMPACT_AFTER`` segments they are merged into one the same
way, and only then are the old ones deleted (a duplicate key is harmless: the first one read wins). An
unreadable segment is skipped with a warning. ``cache_dir`` defaults to ``$LLMREC_CACHE_DIR`` or
``~/.cache/llmrec``.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

COMPACT_AFTER = 16


def text_key(text: str) -> bytes:
    """The cache key of one text: its sha256 digest."""
    return hashlib.sha256(text.encode("utf-8")).digest()



class EmbeddingCache:
    """The segments of one cache folder (one model version), loaded into a key -> vector table.

    ``refresh`` picks up segments other processes wrote since; ``add`` writes a new segment atomically.
    """

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = folder
        self.dim = dim
        self._rows: dict[bytes, int] = {}
        self._blocks: list[np.ndarray] = []
        self._offsets: list[int] = []
        self._size = 0
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self._rows)

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("seg-*.npz")) if self.folder.is_dir() else []

    def refresh(self) -> None:
        """Read segments not read yet; unreadable ones are skipped with a warning."""
        for seg in self.segments():
            if seg.name in self._seen:
                continue
            self._seen.add(seg.name)
            try:
                with np.load(seg, allow_pickle=False) as data:
                    keys = np.asarray(data["keys"], dtype=np.uint8)
                    vectors = np.asarray(data["vectors"], dtype=np.float32)
            except Exception as exc:  # truncated or foreign file: never fatal, the texts are embedded again
                warnings.warn(f"skipping unreadable embedding cache file {seg}: {exc}", stacklevel=2)
                continue
            if keys.ndim != 2 or keys.shape[1] != 32 or vectors.shape != (len(keys), self.dim):
                warnings.warn(f"skipping embedding cache file {seg}: unexpected shape", stacklevel=2)
                continue
            self._append(keys, vectors)

    def _append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        start = self._size
        self._blocks.append(vectors)
        self._offsets.append(start)
        for i, key in enumerate(keys):
            self._rows.setdefault(key.tobytes(), start + i)
        self._size += len(vectors)

    def lookup(self, keys: Sequence[bytes]) -> tuple[np.ndarray, list[int]]:
        """Vectors for the keys present (rows in key order; missing rows zero) and the positions of missing keys."""
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        missing: list[int] = []
        if self._blocks:
            flat = self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks)
            if len(self._blocks) > 1:  # keep one block from now on
                self._blocks, self._offsets = [flat], [0]
            rows = [self._rows.get(key, -1) for key in keys]
            idx = np.asarray(rows, dtype=np.int64)
            hit = idx >= 0
            out[hit] = flat[idx[hit]]
            missing = np.flatnonzero(~hit).tolist()
        else:
            missing = list(range(len(keys)))
        return out, missing

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Persist ``vectors`` under ``keys`` as a new segment (atomic), then keep them in memory too."""
        if not len(keys):
            return
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        name = self._write(key_array, vectors)
        self._seen.add(name)
        self._append(key_array, vectors)
        if len(self._seen) > COMPACT_AFTER:
            self.compact()

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.folder / f"tmp-{stem}.npz"
        final = self.folder / f"seg-{stem}.npz"
        try:
            with tmp.open("wb") as fh:
                np.savez(fh, keys=keys, vectors=vectors)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            if tmp.exists() and not final.exists():
                # best effort: a leftover tmp file is ignored by readers and removed by the next compaction
                try:
                    tmp.unlink()
                except OSError:
                    pass
            raise
        return final.name

    def compact(self) -> None:
        """Merge this folder's segments into one (written atomically before the old ones are removed)."""
        self.refresh()
        old = self.segments()
        if len(old) <= 1:
            return
        keys = list(self._rows)
        rows = np.fromiter(self._rows.values(), dtype=np.int64, count=len(keys))
        flat = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        name = self._write(key_array, flat[rows])
        for seg in old:
            seg.unlink(missing_ok=True)
        for tmp in self.folder.glob("tmp-*.npz"):
            if time.time() - tmp.stat().st_mtime > 3600:  # an interrupted writer's leftover
                tmp.unlink(missing_ok=True)
        self._seen = {name}


__all__ = ["COMPACT_AFTER", "EmbeddingCache", "text_key"]
