"""Top-k vector search over item embeddings: exact in memory, FAISS IVF in memory, or LanceDB on disk.

``VectorIndex.build(ids, matrix, kind=...)`` returns an index whose ``search(queries, k, exclude)`` gives, per
query, the ids and cosine similarities of the k nearest items, best first (rows are L2-normalised at build, so
every kind scores the same way). Kinds:

- ``exact``: one matrix product in memory and ``argpartition``; nothing on disk.
- ``faiss-ivf``: a FAISS ``IndexIVFFlat`` (inner product) in memory, see :class:`IvfParams`; about 1-4 ms per
  query at 1M vectors on 2 CPUs, where LanceDB costs 7-9 ms per query whatever the table size
  (benchmarks/results/dense_scale.md). With a ``path`` the vectors are also written to a LanceDB table beside
  the saved FAISS index, so a restart reopens both instead of training again.
- ``lancedb-flat``: a LanceDB table searched by brute force.
- ``lancedb-ann``: a LanceDB table with an IVF index (IVF_FLAT by default, see :class:`AnnParams`).
- ``auto``: ``exact`` up to ``AUTO_EXACT_MAX`` vectors, ``faiss-ivf`` above; ``lancedb-ann`` (with a logged
  warning) if faiss cannot be imported.

On-disk layout (every kind but ``exact``, and ``faiss-ivf`` only when given a ``path``) under ``path``::

    CURRENT.json            {"folder": "v-<fingerprint>-<random>", "fingerprint": ..., "kind": ..., "n": ..., "dim": ...}
    v-<fingerprint>-<random>/vectors.lance/   one LanceDB database per build: (id, vector) rows
    v-<fingerprint>-<random>/ivf.faiss        faiss-ivf only: the trained FAISS index (faiss.write_index)

A build writes a new folder and only then replaces ``CURRENT.json`` (``os.replace``), so an interrupted build
leaves the previous index usable; older folders are removed after the switch. The fingerprint covers the kind,
the ANN (or IVF build) parameters, the ids and ``key`` (what the vectors came from, e.g. the model version and item
texts; the matrix bytes when no key is given), so building again for the same data reopens the index instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import progress
from .encoders import threads

IndexKind = Literal["auto", "exact", "faiss-ivf", "lancedb-flat", "lancedb-ann"]
KINDS: tuple[str, ...] = ("auto", "exact", "faiss-ivf", "lancedb-flat", "lancedb-ann")
#: ``auto`` uses ``exact`` up to this many vectors (about 3 ms a query, and exact) and ``faiss-ivf`` above
#: (benchmarks/results/dense_scale.md)
AUTO_EXACT_MAX = 20_000
POINTER = "CURRENT.json"
_TABLE = "vectors"
_FAISS_FILE = "ivf.faiss"
_BATCH = 65_536

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnParams:
    """LanceDB ANN settings. ``partitions=None`` picks about one IVF partition per 1,024 vectors.

    IVF_FLAT (k-means partitions, full vectors inside them) gave the best build time / latency / recall trade-off
    on 2 CPUs (benchmarks/results/dense_scale.md); the quantised types build much more slowly there.
    """

    index_type: Literal["IVF_FLAT", "IVF_HNSW_SQ", "IVF_PQ"] = "IVF_FLAT"
    partitions: int | None = None
    nprobes: int = 8  # partitions searched per query
    max_iterations: int = 10  # k-means iterations when building
    sample_rate: int = 64  # k-means training vectors per partition
    ef: int = 64  # HNSW search breadth (IVF_HNSW_SQ)
    sub_vectors: int | None = None  # IVF_PQ: dim / 8 when None
    refine_factor: int = 5  # IVF_PQ: re-rank refine_factor * k candidates with the full vectors

    def num_partitions(self, n: int) -> int:
        return self.partitions or max(1, min(4096, n // 1024))


@dataclass(frozen=True)
class IvfParams:
    """FAISS ``IndexIVFFlat`` settings. ``lists=None`` picks about ``sqrt(n)`` inverted lists (k-means cells).

    Measured on 2 CPUs (benchmarks/results/dense_scale.md): at 1M vectors sqrt(n) = 1,000 lists build in about
    26 s and answer in about 3 ms with nprobe 16; 2,000 lists (``--ivf-lists 2000``) halve the search time but
    double the build (about 62 s), and 4 * sqrt(n) would take minutes, for a latency already far under 10 ms.
    nprobe 16 keeps recall@10 >= 0.95 on the Gaussian mixture and on the BBC MiniLM vectors (where 4 * sqrt(n)
    lists with nprobe 8 fell to 0.93). One OpenMP thread per single-query search is as fast as two.
    """

    lists: int | None = None
    nprobe: int = 16  # lists searched per query
    train_per_list: int = 50  # k-means training vectors per list, a seeded sample (FAISS wants >= 39)
    max_iterations: int = 10  # k-means iterations
    seed: int = 0
    threads: int = 1  # OpenMP threads for a one-query search (FAISS's own runtime); batches and builds use all

    def num_lists(self, n: int) -> int:
        if self.lists:
            return max(1, min(n, self.lists))
        return max(1, min(n // 39, round(math.sqrt(n))))

    def build_settings(self) -> dict[str, Any]:
        """What the trained index depends on (nprobe and threads are search settings)."""
        return {"lists": self.lists, "train_per_list": self.train_per_list,
                "max_iterations": self.max_iterations, "seed": self.seed}


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return m / norms


def resolve_kind(kind: str, n: int) -> str:
    """The concrete kind ``kind`` means for ``n`` vectors."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        if n <= AUTO_EXACT_MAX:
            return "exact"
        if faiss_available():
            return "faiss-ivf"
        log.warning("faiss cannot be imported: index 'auto' uses lancedb-ann for %d vectors (slower per query); "
                    "install faiss-cpu for the in-memory ANN index", n)
        return "lancedb-ann"
    return kind


def faiss_available() -> bool:
    """Whether ``import faiss`` works."""
    try:
        _faiss()
    except ImportError:
        return False
    return True


def fingerprint(
    kind: str, ids: Sequence[str], matrix: np.ndarray, key: str | None, ann: AnnParams, ivf: IvfParams | None = None
) -> str:
    """What an on-disk index is built from; equal fingerprints mean the existing index can be reused."""
    digest = hashlib.sha256(f"{kind}\0{matrix.shape}\0".encode())
    if kind == "lancedb-ann":
        digest.update(json.dumps(asdict(ann), sort_keys=True).encode())
    if kind == "faiss-ivf":
        digest.update(json.dumps((ivf or IvfParams()).build_settings(), sort_keys=True).encode())
    for item_id in ids:
        digest.update(item_id.encode("utf-8") + b"\0")
    digest.update(key.encode() if key is not None else np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
    return digest.hexdigest()[:20]


Hits = tuple[list[str], np.ndarray]


class VectorIndex:
    """Cosine top-k search over a fixed set of id'd vectors; build with :meth:`build`, reopen with :meth:`open`."""

    def __init__(self, ids: list[str], dim: int, kind: str) -> None:
        self.kind = kind  # the concrete kind: exact, faiss-ivf, lancedb-flat or lancedb-ann
        self.ids = ids
        self.dim = dim
        self.path: Path | None = None
        self.reused = False  # True when build() found this index on disk and did not rebuild it
        self.build_seconds = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        where = f", {self.path}" if self.path else ""
        return f"{type(self).__name__}({self.kind}, {len(self)} x {self.dim}{where})"

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        matrix: np.ndarray,
        *,
        path: str | os.PathLike[str] | None = None,
        kind: str = "auto",
        key: str | None = None,
        ann: AnnParams | None = None,
        ivf: IvfParams | None = None,
    ) -> VectorIndex:
        """An index over ``matrix`` rows named by ``ids``.

        ``path``: folder for the on-disk kinds (LanceDB: a temporary folder, removed with the index, when None;
        ``faiss-ivf``: saved there when given, in memory only when None; ignored by ``exact``). ``key``:
        identifies where the vectors came from, so an unchanged index is reopened without hashing the matrix.
        ``ann`` / ``ivf``: settings of ``lancedb-ann`` / ``faiss-ivf``.
        """
        ids = [str(i) for i in ids]
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(f"matrix of shape {matrix.shape} does not match {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        concrete = resolve_kind(kind, len(ids))
        if not ids:
            concrete = "exact"  # nothing to put on disk
        if concrete == "faiss-ivf":
            _faiss()  # missing: fail now, before anything is written
        started = time.perf_counter()
        index: VectorIndex
        if concrete == "exact":
            index = ExactIndex(ids, normalise(matrix) if len(ids) else matrix.astype(np.float32))
        elif concrete == "faiss-ivf" and path is None:
            with progress.step(f"building index faiss-ivf of {len(ids)} vectors"):
                index = FaissIndex.in_memory(ids, normalise(matrix), ivf or IvfParams())
        else:
            index = _build_on_disk(ids, matrix, path=path, kind=concrete, key=key, ann=ann or AnnParams(),
                                   ivf=ivf or IvfParams())
        if not index.reused:
            index.build_seconds = time.perf_counter() - started
        return index

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """The index ``path``'s pointer names (the last completed build); FileNotFoundError if none."""
        return _open_current(Path(path))

    def search(self, query_vectors: np.ndarray, k: int, exclude: Iterable[str] | None = None) -> list[Hits]:
        """Per query row: (ids, cosine scores) of the ``k`` best items not in ``exclude``, best first."""
        queries = normalise(np.asarray(query_vectors, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} dimensions, the index {self.dim}")
        excluded = set(exclude or ())
        if k <= 0 or not self.ids:
            return [([], np.zeros(0, dtype=np.float32)) for _ in range(len(queries))]
        return self._search(queries, k, excluded)

    def _search(self, queries: np.ndarray, k: int, exclude: set[str]) -> list[Hits]:  # pragma: no cover
        raise NotImplementedError


class ExactIndex(VectorIndex):
    """All vectors in one in-memory matrix; a search is a matrix product and a partial sort."""

    def __init__(self, ids: list[str], matrix: np.ndarray) -> None:
        super().__init__(ids, matrix.shape[1], "exact")
        self.matrix = matrix
        self._position = {item_id: i for i, item_id in enumerate(ids)}

    def _search(self, queries: np.ndarray, k: int, exclude: set[str]) -> list[Hits]:
        scores = queries @ self.matrix.T
        if exclude:
            rows = [self._position[i] for i in exclude if i in self._position]
            scores[:, rows] = -np.inf
        n = min(k, len(self.ids))
        out: list[Hits] = []
        for row in scores:
            top = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
            top = top[np.lexsort((top, -row[top]))]  # best first, ties by position: deterministic
            top = top[np.isfinite(row[top])]
            out.append(([self.ids[i] for i in top.tolist()], row[top].astype(np.float32)))
        return out


class LanceIndex(VectorIndex):
    """A LanceDB table of (id, vector) on disk, searched by brute force or through an ANN index."""

    def __init__(self, ids: list[str], dim: int, table: Any, kind: str, ann: AnnParams) -> None:
        super().__init__(ids, dim, kind)
        self.table = table
        self.ann = ann

    @classmethod
    def open_folder(cls, folder: Path, current: dict[str, Any], ivf: IvfParams | None = None) -> LanceIndex:
        table = _open_table(folder)
        ids = table.search().select(["id"]).limit(None).to_arrow()["id"].to_pylist()
        return cls(ids, int(current["dim"]), table, current["kind"], AnnParams(**current.get("ann", {})))

    def _search(self, queries: np.ndarray, k: int, exclude: set[str]) -> list[Hits]:
        # ask for enough extra rows that dropping excluded ids still leaves k
        limit = min(len(self.ids), k + len(exclude))
        out: list[Hits] = []
        for q in queries:
            # rows and queries are unit vectors: dot (distance 1 - dot) is cosine, and cheaper
            query = self.table.search(q, vector_column_name="vector").distance_type("dot").select(["id", "_distance"])
            if self.kind == "lancedb-ann":
                query = query.nprobes(self.ann.nprobes)
                if self.ann.index_type == "IVF_PQ":
                    query = query.refine_factor(self.ann.refine_factor)
                elif self.ann.index_type == "IVF_HNSW_SQ":
                    query = query.ef(max(self.ann.ef, limit))
            result = query.limit(limit).to_arrow()
            found = result["id"].to_pylist()
            scores = 1.0 - result["_distance"].to_numpy().astype(np.float32)
            keep = [i for i, item_id in enumerate(found) if item_id not in exclude][:k]
            out.append(([found[i] for i in keep], scores[keep]))
        return out


class FaissIndex(VectorIndex):
    """A FAISS ``IndexIVFFlat`` over the unit vectors, in memory: inner product is cosine."""

    def __init__(self, ids: list[str], dim: int, ivf_index: Any, params: IvfParams) -> None:
        super().__init__(ids, dim, "faiss-ivf")
        self.faiss_index = ivf_index
        self.params = params
        self.faiss_index.nprobe = max(1, min(params.nprobe, self.faiss_index.nlist))

    @property
    def nprobe(self) -> int:
        return int(self.faiss_index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        """Lists searched per query (a search setting: no rebuild)."""
        self.faiss_index.nprobe = max(1, min(int(value), self.faiss_index.nlist))

    @classmethod
    def in_memory(cls, ids: list[str], unit: np.ndarray, params: IvfParams) -> FaissIndex:
        return cls(ids, int(unit.shape[1]), _train_ivf(unit, params), params)

    @classmethod
    def open_folder(cls, folder: Path, current: dict[str, Any], ivf: IvfParams | None = None) -> FaissIndex:
        faiss = _faiss()
        ivf_index = faiss.read_index(str(folder / _FAISS_FILE))
        ids = _open_table(folder).search().select(["id"]).limit(None).to_arrow()["id"].to_pylist()
        if ivf_index.ntotal != len(ids) or ivf_index.d != int(current["dim"]):
            raise ValueError(f"{folder}: the FAISS index and the vectors table do not match")
        return cls(ids, int(current["dim"]), ivf_index, ivf or IvfParams(**current.get("ivf", {})))

    def _search(self, queries: np.ndarray, k: int, exclude: set[str]) -> list[Hits]:
        faiss = _faiss()
        # a thread count is per calling thread in OpenMP: set it for this search, in this thread
        faiss.omp_set_num_threads(min(self.params.threads, _all_threads()) if len(queries) == 1 else _all_threads())
        limit = min(len(self.ids), k + len(exclude))  # over-fetch so that dropping excluded ids still leaves k
        scores, rows = self.faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), limit)
        out: list[Hits] = []
        for row_scores, row_ids in zip(scores, rows):
            keep = [i for i, r in enumerate(row_ids.tolist()) if r >= 0 and self.ids[r] not in exclude][:k]
            out.append(([self.ids[row_ids[i]] for i in keep], row_scores[keep].astype(np.float32)))
        return out


def _train_ivf(unit: np.ndarray, params: IvfParams) -> Any:
    """A trained and filled ``IndexIVFFlat`` (inner product) over the rows of ``unit``."""
    faiss = _faiss()
    n, dim = unit.shape
    lists = params.num_lists(n)
    quantizer = faiss.IndexFlatIP(dim)
    ivf_index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    ivf_index.cp.niter = params.max_iterations
    ivf_index.cp.seed = params.seed
    ivf_index.cp.max_points_per_centroid = max(params.train_per_list, 39)
    sample_size = min(n, max(lists, params.train_per_list * lists))
    if sample_size < n:
        sample = unit[np.sort(np.random.default_rng(params.seed).choice(n, sample_size, replace=False))]
    else:
        sample = unit
    faiss.omp_set_num_threads(_all_threads())
    ivf_index.train(sample)
    ivf_index.add(unit)
    return ivf_index


def _build_on_disk(
    ids: list[str], matrix: np.ndarray, *, path: Any, kind: str, key: str | None, ann: AnnParams, ivf: IvfParams
) -> VectorIndex:
    """Build into a new versioned folder under ``path`` and switch the pointer, or reopen an unchanged build."""
    temporary = path is None
    root = Path(tempfile.mkdtemp(prefix="llmrec-index-")) if temporary else Path(path)
    fp = fingerprint(kind, ids, matrix, key, ann, ivf)
    if not temporary:
        current = _read_pointer(root)
        if current is not None and current.get("fingerprint") == fp:
            try:
                index = _open_current(root, ivf)
            except Exception:  # damaged: build again below
                pass
            else:
                index.reused = True
                return index
    root.mkdir(parents=True, exist_ok=True)
    folder = f"v-{fp}-{uuid.uuid4().hex[:8]}"
    unit = normalise(matrix) if len(ids) else matrix
    index: VectorIndex
    with progress.step(f"building index {kind} of {len(ids)} vectors"):
        table = _write_table(root / folder, ids, unit, kind, ann)
        if kind == "faiss-ivf":
            index = FaissIndex(ids, int(matrix.shape[1]), _train_ivf(unit, ivf), ivf)
            _write_faiss(root / folder, index.faiss_index)
        else:
            index = LanceIndex(ids, int(matrix.shape[1]), table, kind, ann)
    _write_pointer(root, {
        "folder": folder, "fingerprint": fp, "kind": kind, "n": len(ids), "dim": int(matrix.shape[1]),
        "ann": asdict(ann), "ivf": asdict(ivf), "created": time.time(),
    })
    for old in root.glob("v-*"):  # earlier builds, and leftovers of interrupted ones
        if old.name != folder:
            shutil.rmtree(old, ignore_errors=True)
    index.path = root
    if temporary:
        weakref.finalize(index, shutil.rmtree, root, True)
    return index


def _open_current(root: Path, ivf: IvfParams | None = None) -> VectorIndex:
    current = _read_pointer(root)
    if current is None:
        raise FileNotFoundError(f"no completed index under {root} (no {POINTER})")
    cls = FaissIndex if current.get("kind") == "faiss-ivf" else LanceIndex
    index = cls.open_folder(root / current["folder"], current, ivf)
    index.path = root
    return index


def _open_table(folder: Path) -> Any:
    return _lancedb().connect(str(folder)).open_table(_TABLE)


def _write_faiss(folder: Path, ivf_index: Any) -> None:
    """Save the FAISS index in ``folder`` under a temporary name, then rename it (never a half-written file)."""
    faiss = _faiss()
    tmp = folder / f".{_FAISS_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    faiss.write_index(ivf_index, str(tmp))
    os.replace(tmp, folder / _FAISS_FILE)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(f"index 'faiss-ivf' needs the faiss-cpu package ({exc}); install it with "
                          "'pip install faiss-cpu', or use index 'lancedb-ann'") from exc
    return faiss


def _all_threads() -> int:
    """OpenMP threads for batch searches and builds: ``$LLMREC_THREADS`` when set (``llmrec serve --workers N``
    sets it to the cores per worker), else every core this process may run on."""
    if threads():
        return threads()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _write_table(folder: Path, ids: list[str], matrix: np.ndarray, kind: str, ann: AnnParams) -> Any:
    import pyarrow as pa

    lancedb = _lancedb()

    dim = int(matrix.shape[1])
    schema = pa.schema([pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))])

    def batches() -> Iterable[pa.RecordBatch]:
        for start in range(0, len(ids), _BATCH):
            block = np.ascontiguousarray(matrix[start:start + _BATCH], dtype=np.float32)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), dim)
            yield pa.RecordBatch.from_arrays([pa.array(ids[start:start + _BATCH]), vectors], schema=schema)

    table = lancedb.connect(str(folder)).create_table(_TABLE, data=batches(), schema=schema)
    if kind == "lancedb-ann" and len(ids) >= 256:  # too few rows to train partitions: brute force is exact anyway
        from lancedb.index import HnswSq, IvfFlat, IvfPq

        common = {"distance_type": "dot", "num_partitions": ann.num_partitions(len(ids)),
                  "max_iterations": ann.max_iterations, "sample_rate": ann.sample_rate}
        config: Any
        if ann.index_type == "IVF_PQ":
            config = IvfPq(num_sub_vectors=ann.sub_vectors or max(1, dim // 8), **common)
        elif ann.index_type == "IVF_HNSW_SQ":
            config = HnswSq(**common)
        else:
            config = IvfFlat(**common)
        table.create_index("vector", config=config)
    return table


def _lancedb() -> Any:
    os.environ.setdefault("LANCE_LOG", "error")  # lance logs routine notes ("will be created") as warnings
    import lancedb

    return lancedb


def _read_pointer(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / POINTER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not (root / str(data.get("folder", ""))).is_dir():
        return None
    return data


def _write_pointer(root: Path, data: dict[str, Any]) -> None:
    tmp = root / f".{POINTER}.{uuid.uuid4().hex[:8]}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / POINTER)


__all__ = [
    "AUTO_EXACT_MAX", "AnnParams", "ExactIndex", "FaissIndex", "IndexKind", "IvfParams", "KINDS", "LanceIndex",
    "VectorIndex", "faiss_available", "fingerprint", "normalise", "resolve_kind",
]
