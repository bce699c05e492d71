"""Collaborative-filtering retrievers: ``retrieve.cf`` and ``retrieve.item_knn``.

``retrieve.cf`` learns from the user-item matrix of an :class:`~llmrec.data.Interactions` log with one of

- ``svd``: PureSVD (Cremonesi et al. 2010): truncated SVD ``X ~ U S V^T``; a user's scores are ``x_u V V^T``;
- ``ease``: EASE (Steck 2019): ``P = (X^T X + lambda I)^-1``, ``B = I - P / diag(P)`` (zero diagonal); scores
  ``x_u B``;
- ``als``: implicit ALS (Hu, Koren, Volinsky 2008; the `implicit` library): preference 1 on observed cells with
  confidence ``alpha * r`` (implicit 0.7's convention; 1 on unobserved cells), alternating least-squares solves;
  scores ``p_u Q^T``;

and ``retrieve.item_knn`` scores items by their summed cosine similarity (top ``neighbours`` per item) to the
user's items. Models are fitted once per interaction log (in ``warm``, or on first use), so a request costs one
vector-matrix product and an ``argpartition``. Users the log does not know are cold starts: empty Candidates.
Only items that occur in the log can be recommended.

``decay`` (both node types) weights each cell by how recent it is in the user's history: ``0.5 ** (age /
half_life)``, the age counted in events (0 = the user's latest) and/or in days before the user's latest event.
``apply_to: query`` (the default) fits on the plain matrix and decays only the user's row that a request scores
(``x_u B`` with a decayed ``x_u``; PureSVD ``x_u V V^T``; ALS re-solves the user's factors against the fitted
item factors); ``fit`` fits the item model on the decayed matrix and scores plain rows; ``both`` does both.
On MovieLens 100K (benchmarks/results/movielens_cf.md) decaying the query row helped EASE, decaying the fit did
not.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from ...data import EVENT_WEIGHTS, Interactions
from ...data.catalog import natural_key
from ...node import CheckContext, NoConfig, NodeType, Problem
from ...types import Candidates, ScoredItem
from ..common import PerObjects, count_or

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse

log = logging.getLogger(__name__)

#: EASE's lambda and ALS's lambda when the config leaves ``regularization`` out (they live on different scales)
DEFAULT_REGULARIZATION = {"ease": 500.0, "als": 10.0, "svd": 0.0}


# -- the user-item matrix --------------------------------------------------------------------------------------


@dataclass
class _Matrix:
    """A log as a sparse user x item matrix; users and items in natural id order."""

    users: dict[str, int]  # user id -> row
    items: list[str]  # column -> item id
    item_index: dict[str, int]  # item id -> column
    X: scipy.sparse.csr_matrix  # float64, users x items
    #: per stored cell of X (aligned with X.data): how many of the user's events have a later timestamp than the
    #: cell's latest event (0: the user's most recent second), and how many seconds before the user's latest event
    #: it happened
    age_events: np.ndarray | None = None
    age_seconds: np.ndarray | None = None

    def decayed(self, decay: DecayConfig) -> scipy.sparse.csr_matrix:
        """X with every cell multiplied by its recency weight (same sparsity pattern)."""
        X = self.X.copy()
        X.data = X.data * recency_weights(self, decay)
        return X


SECONDS_PER_DAY = 86_400.0


def recency_weights(matrix: _Matrix, decay: DecayConfig) -> np.ndarray:
    """``0.5 ** (age_events / half_life) * 0.5 ** (age_days / half_life_days)`` per stored cell of X."""
    assert matrix.age_events is not None and matrix.age_seconds is not None
    exponent = np.zeros(len(matrix.age_events))
    if decay.half_life is not None:
        exponent += matrix.age_events / decay.half_life
    if decay.half_life_days is not None:
        exponent += matrix.age_seconds / (SECONDS_PER_DAY * decay.half_life_days)
    return np.exp2(-exponent)


def _matrix(interactions: Interactions, weighting: str) -> _Matrix:
    """``binary``: 1 per (user, item) pair; ``rating``: the user's latest rating of the item (an event without a
    rating counts its EVENT_WEIGHTS weight). Each cell's age is that of the user's latest event on the item."""
    import scipy.sparse

    users = interactions.users()
    user_index = {u: i for i, u in enumerate(users)}
    item_ids = sorted({it.item_id for it in interactions}, key=natural_key)
    item_index = {item_id: j for j, item_id in enumerate(item_ids)}
    cells: dict[tuple[int, int], tuple[float, int]] = {}  # -> (value, timestamp)
    event_rows: list[int] = []
    event_stamps: list[int] = []
    for it in interactions:  # user by user in row order, each history oldest first: later events overwrite
        value = 1.0
        if weighting == "rating":
            value = float(it.rating) if it.rating is not None else EVENT_WEIGHTS[it.event]
        row = user_index[it.user_id]
        cells[(row, item_index[it.item_id])] = (value, it.timestamp)
        event_rows.append(row)
        event_stamps.append(it.timestamp)
    n = len(cells)
    rows = np.fromiter((r for r, _ in cells), dtype=np.int64, count=n)
    cols = np.fromiter((c for _, c in cells), dtype=np.int64, count=n)
    vals = np.fromiter((v for v, _ in cells.values()), dtype=np.float64, count=n)
    stamps = np.fromiter((t for _, t in cells.values()), dtype=np.int64, count=n)
    order = np.lexsort((cols, rows))  # CSR order: by row, then column (the cells are distinct)
    rows, cols, vals, stamps = rows[order], cols[order], vals[order], stamps[order]
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(users)), out=indptr[1:])
    X = scipy.sparse.csr_matrix((vals, cols, indptr), shape=(len(users), len(item_ids)))
    # ages: events sorted by (row, timestamp) already, so one searchsorted over row * T + rank(timestamp) counts,
    # for each cell, the user's events up to its second; ties share an age (the order of events within one second
    # is the item id's, not time's; most of MovieLens's ratings share their second with another)
    age_events = np.zeros(n)
    age_seconds = np.zeros(n)
    if n:
        distinct, event_rank = np.unique(np.asarray(event_stamps, dtype=np.int64), return_inverse=True)
        span = len(distinct)
        event_rows_a = np.asarray(event_rows, dtype=np.int64)
        keys = event_rows_a * span + event_rank
        per_row = np.bincount(event_rows_a, minlength=len(users))
        starts = np.concatenate(([0], np.cumsum(per_row)))
        cell_keys = rows * span + np.searchsorted(distinct, stamps)
        up_to = np.searchsorted(keys, cell_keys, side="right") - starts[rows]
        age_events = (per_row[rows] - up_to).astype(np.float64)
        last_seen = distinct[event_rank[starts[1:][per_row > 0] - 1]]  # each user's latest timestamp
        last = np.zeros(len(users), dtype=np.int64)
        last[per_row > 0] = last_seen
        age_seconds = (last[rows] - stamps).astype(np.float64)
    return _Matrix(user_index, item_ids, item_index, X, age_events, age_seconds)


# -- models: each one maps a user's row to a score per item -----------------------------------------------------


class _Model:
    def __init__(self, matrix: _Matrix, fit_seconds: float) -> None:
        self.matrix = matrix
        self.fit_seconds = fit_seconds
        #: the rows a request scores: the fitted matrix's, or recency-weighted ones (``decay``)
        self.query = matrix.X

    def scores(self, row: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def scores_many(self, rows: np.ndarray) -> np.ndarray:
        """``scores`` of each of ``rows``, as a ``(len(rows), items)`` array."""
        return np.stack([self.scores(int(r)) for r in rows]) if len(rows) else np.zeros((0, self.matrix.X.shape[1]))


class _FactorModel(_Model):
    """Scores ``user_factors[u] @ item_factors.T`` (PureSVD, ALS)."""

    def __init__(self, matrix: _Matrix, fit_seconds: float, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        super().__init__(matrix, fit_seconds)
        # row-major copies: an SVD's factors are often strided views, and one user's scores from a strided
        # (1644, 64) view cost 119 us instead of 14 (MovieLens 100K, PureSVD; issue 13)
        self.user_factors = np.ascontiguousarray(user_factors)
        self.item_factors = np.ascontiguousarray(item_factors)

    def scores(self, row: int) -> np.ndarray:
        return self.item_factors @ self.user_factors[row]

    def scores_many(self, rows: np.ndarray) -> np.ndarray:
        # one matrix product; each score agrees with scores(row) to the last bits of a float64 sum. On one BLAS
        # thread: for a batch this size the other threads mostly spin (measured: 4.6x the CPU for 16 users)
        with blas_controller().limit(limits=1, user_api="blas"):
            return self.user_factors[rows] @ self.item_factors.T


class _ItemItemModel(_Model):
    """Scores ``x_u @ W`` for an item x item weight matrix W, dense (EASE) or sparse (item-kNN)."""

    def __init__(self, matrix: _Matrix, fit_seconds: float, weights: Any) -> None:
        super().__init__(matrix, fit_seconds)
        self.weights = weights

    def scores(self, row: int) -> np.ndarray:
        X = self.query
        start, end = X.indptr[row], X.indptr[row + 1]
        cols, vals = X.indices[start:end], X.data[start:end]
        if isinstance(self.weights, np.ndarray):
            return vals @ self.weights[cols]
        return np.asarray((self.weights[cols].T @ vals)).ravel()


@functools.cache
def blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded (made once: finding them costs milliseconds)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def fit_svd(matrix: _Matrix, factors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PureSVD: ``(user factors U S, item factors V)`` of the rank-``factors`` truncated SVD of X."""
    from scipy.sparse.linalg import svds

    X = matrix.X
    k = min(factors, min(X.shape) - 1)
    if k < 1:  # a single user or item: nothing to factorise, every score is the row itself
        return X.toarray(), np.eye(X.shape[1])
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, min(X.shape))
    u, s, vt = svds(X, k=k, v0=v0)
    return u * s, vt.T


def fit_ease(matrix: _Matrix, regularization: float) -> np.ndarray:
    """EASE's item x item weights ``B = I - P / diag(P)`` with ``P = (X^T X + lambda I)^-1``, zero diagonal."""
    X = matrix.X
    gram = (X.T @ X).toarray()
    gram[np.diag_indices_from(gram)] += regularization
    P = np.linalg.inv(gram)
    B = P / (-np.diag(P))
    B[np.diag_indices_from(B)] = 0.0
    return B


def fit_als(
    matrix: _Matrix, factors: int, regularization: float, alpha: float, iterations: int, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Implicit ALS (Hu, Koren, Volinsky 2008) with the `implicit` library: minimises
    ``sum c_ui (p_ui - x_u . y_i)^2 + lambda (|x|^2 + |y|^2)`` with ``p_ui = 1`` and ``c_ui = alpha r_ui`` on
    observed cells (implicit 0.7 scales the cells by alpha and uses them as the confidence; 1 on unobserved ones),
    conjugate-gradient solves, compiled. Returns (user factors, item factors) as float64."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    # implicit parallelises itself; a multi-threaded BLAS underneath only fights it (its own advice, checked
    # when the model is created)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations, random_state=seed,
            calculate_training_loss=False,
        )
        model.fit(matrix.X.tocsr().astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors, dtype=np.float64), np.asarray(model.item_factors, dtype=np.float64)


def als_user_factors(
    item_factors: np.ndarray, X: scipy.sparse.csr_matrix, regularization: float, alpha: float,
) -> np.ndarray:
    """Each user's exact least-squares factors against fixed item factors Y, as implicit's ALS solves them
    (confidence ``c = alpha * x_ui`` on stored cells, 1 elsewhere): ``(Y^T Y + lambda I + Y^T (C_u - I) Y)^-1
    Y^T C_u p_u``. Used to score recency-weighted rows with a model fitted on plain ones."""
    Y = np.asarray(item_factors, dtype=np.float64)
    k = Y.shape[1]
    base = Y.T @ Y + regularization * np.eye(k)
    out = np.zeros((X.shape[0], k))
    for u in range(X.shape[0]):
        start, end = X.indptr[u], X.indptr[u + 1]
        if start == end:
            continue
        Yu = Y[X.indices[start:end]]
        c = alpha * X.data[start:end]
        out[u] = np.linalg.solve(base + (Yu.T * (c - 1.0)) @ Yu, Yu.T @ c)
    return out


def fit_item_knn(matrix: _Matrix, neighbours: int, block: int = 1024) -> scipy.sparse.csr_matrix:
    """Cosine similarity between item columns of X, keeping each item's ``neighbours`` most similar items.

    Returns W with ``W[i, j] = sim(i, j)`` when i is among j's neighbours, so ``x_u @ W`` sums, for each item j,
    the similarities of the user's items within j's neighbourhood.
    """
    import scipy.sparse

    X = matrix.X
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0))).ravel()
    norms[norms == 0] = 1.0
    Xn = (X @ scipy.sparse.diags(1.0 / norms)).tocsc()
    n_items = X.shape[1]
    keep = min(neighbours, max(n_items - 1, 0))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for start in range(0, n_items, block):  # similarity rows a block at a time: memory ~ block x items
        stop = min(start + block, n_items)
        sim = (Xn[:, start:stop].T @ Xn).toarray()
        sim[np.arange(stop - start), np.arange(start, stop)] = 0.0
        if keep < 1:
            continue
        top = np.argpartition(-sim, keep - 1, axis=1)[:, :keep]
        top_vals = np.take_along_axis(sim, top, axis=1)
        nonzero = top_vals > 0
        j = np.repeat(np.arange(start, stop), keep).reshape(-1, keep)
        rows.append(top[nonzero])  # neighbour i ...
        cols.append(j[nonzero])  # ... of item j
        vals.append(top_vals[nonzero])
    if rows:
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        r = c = np.zeros(0, dtype=np.int64)
        v = np.zeros(0)
    return scipy.sparse.csr_matrix((v, (r, c)), shape=(n_items, n_items))


def top_k(scores: np.ndarray, n: int, blocked: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``n`` best scores, best first (ties: lower index first), skipping ``blocked`` indices."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if blocked is not None and len(blocked):
        scores[blocked] = -np.inf
    allowed = np.flatnonzero(np.isfinite(scores))
    n = min(n, len(allowed))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    values = scores[allowed]
    if n < len(allowed):
        # the n-th best value, then everything at least that good: ties at the boundary resolved by index
        threshold = np.partition(values, len(values) - n)[len(values) - n]
        allowed = allowed[values >= threshold]
        values = scores[allowed]
    order = np.lexsort((allowed, -values))[:n]
    return allowed[order]


class _Models(PerObjects[_Model]):
    """Fitted models per Interactions object; ``peek`` looks without fitting."""

    def peek(self, interactions: Interactions) -> _Model | None:  # type: ignore[override]
        return super().peek((interactions,))

    def get(self, interactions: Interactions, build: Any) -> _Model:  # type: ignore[override]
        return super().get((interactions,), build)


# -- node types ------------------------------------------------------------------------------------------------


class _Retriever(NodeType):
    """Shared by the CF retrievers: one fitted model per Interactions object, cold starts, top-k with exclusions."""

    inline = True  # a request is one vector-matrix product; fitting happens in warm() (or once, in a thread)
    batchable = True  # many requests: one matrix-matrix product (factor models), when the config's `batch` says so
    Config: Any

    def __init__(self, config: BaseModel) -> None:
        super().__init__(config)
        self.batchable = bool(getattr(config, "batch", False))
        self._models = _Models()
        self._lock = asyncio.Lock()
        #: seconds the most recent fit took (None before the first fit)
        self.last_fit_seconds: float | None = None

    def _fit(self, matrix: _Matrix) -> _Model:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_query(self, model: _Model, rows: scipy.sparse.csr_matrix) -> None:
        """Score ``rows`` (recency-weighted) instead of the matrix the model was fitted on."""
        model.query = rows

    def model_for(self, interactions: Interactions) -> _Model:
        """The model fitted on ``interactions``, fitted now if needed (blocking)."""
        return self._models.get(interactions, lambda: self._fit_timed(interactions))

    def _fit_timed(self, interactions: Interactions) -> _Model:
        started = time.perf_counter()
        matrix = _matrix(interactions, self.config.weighting)
        decay: DecayConfig | None = self.config.decay
        if decay is None:
            model = self._fit(matrix)
        else:
            weighted = matrix.decayed(decay)
            if decay.apply_to == "query":
                model = self._fit(matrix)
                self._set_query(model, weighted)
            else:  # fit, both: the model learns from recency-weighted cells (and 'both' scores those rows)
                model = self._fit(replace(matrix, X=weighted))
                model.matrix = matrix  # the plain matrix: ids, seen items
                if decay.apply_to == "fit":
                    self._set_query(model, matrix.X)
        model.fit_seconds = time.perf_counter() - started
        self.last_fit_seconds = model.fit_seconds
        X = model.matrix.X
        log.debug("%s fitted on %d users x %d items (%d cells) in %.3fs", self._label(), X.shape[0], X.shape[1],
                  X.nnz, model.fit_seconds)
        return model

    def _label(self) -> str:
        return self.name

    async def _model(self, interactions: Interactions) -> _Model:
        async with self._lock:  # concurrent first requests fit once
            return await asyncio.to_thread(self.model_for, interactions)

    async def warm(self, interactions: Interactions | None = None, **_: Any) -> None:
        if interactions is not None:
            await self._model(interactions)

    async def run(
        self, interactions: Interactions, user_id: str, exclude: list[str] | None = None, k: int | None = None
    ) -> Candidates:
        source = self.config.source
        n = count_or(k, self.config.k)
        if n == 0 or not interactions.seen(user_id):  # cold start: nothing to go on
            return Candidates(source=source)
        model = self._models.peek(interactions)
        if model is None:
            model = await self._model(interactions)
        return self.recommend(model, user_id, n, exclude)

    async def run_batch(self, calls: list[dict[str, Any]]) -> list[Candidates]:
        """Many requests' ``run``: the known users of one model scored by one matrix product."""
        source = self.config.source
        out: list[Candidates | None] = [None] * len(calls)
        groups: dict[int, tuple[_Model, list[tuple[int, int, int]]]] = {}
        for i, kwargs in enumerate(calls):
            interactions, user_id = kwargs["interactions"], kwargs["user_id"]
            n = count_or(kwargs.get("k"), self.config.k)
            model = None
            if n and interactions.seen(user_id):
                model = self._models.peek(interactions) or await self._model(interactions)
            row = model.matrix.users.get(user_id) if model is not None else None
            if model is None or row is None:  # cold start: nothing to go on
                out[i] = Candidates(source=source)
                continue
            groups.setdefault(id(model), (model, []))[1].append((i, row, n))
        for model, members in groups.values():
            scores = model.scores_many(np.fromiter((row for _, row, _ in members), dtype=np.int64))
            for (i, row, n), row_scores in zip(members, scores):
                out[i] = self._answer(model, row, n, calls[i].get("exclude"), row_scores)
        return out  # type: ignore[return-value]

    def recommend(self, model: _Model, user_id: str, n: int, exclude: list[str] | None = None) -> Candidates:
        """The top ``n`` items for a known user of ``model`` (the synchronous core of ``run``)."""
        row = model.matrix.users.get(user_id)
        if row is None:
            return Candidates(source=self.config.source)
        return self._answer(model, row, n, exclude, model.scores(row))

    def _answer(self, model: _Model, row: int, n: int, exclude: list[str] | None, scores: np.ndarray) -> Candidates:
        source = self.config.source
        matrix = model.matrix
        X = matrix.X
        blocked: list[np.ndarray] = []
        if self.config.exclude_seen:
            blocked.append(X.indices[X.indptr[row]:X.indptr[row + 1]])
        if exclude:
            index = matrix.item_index
            blocked.append(np.fromiter((index[i] for i in exclude if i in index), dtype=np.int64))
        picked = top_k(scores, n, np.concatenate(blocked) if blocked else None)
        items = []
        for j in picked.tolist():
            score = round(float(scores[j]), 6)
            items.append(ScoredItem.trusted(matrix.items[j], score, {source: score}))
        return Candidates(items=items, source=source)


class DecayConfig(NoConfig):
    """``decay: {half_life: 20}``: recency weights ``0.5 ** (age / half-life)`` on the user-item matrix's cells."""

    half_life: float | None = Field(
        None, gt=0, description="Half-life in events: a cell's age is how many of the user's events came after it."
    )
    half_life_days: float | None = Field(
        None, gt=0, description="Half-life in days before the user's latest event (both set: the weights multiply)."
    )
    apply_to: Literal["query", "fit", "both"] = Field(
        "query", description="'query': weight the user's row a request scores (the model is fitted on plain "
        "cells); 'fit': fit on weighted cells, score plain rows; 'both'."
    )

    @model_validator(mode="after")
    def _a_half_life(self) -> DecayConfig:
        if self.half_life is None and self.half_life_days is None:
            raise ValueError("give half_life (events) and/or half_life_days")
        return self


_DECAY_DESCRIPTION = ("Recency weighting of the matrix cells, e.g. {half_life: 20} (events) or {half_life_days: 30}; "
                      "none: every cell counts fully.")


class CFConfig(NoConfig):
    algorithm: Literal["svd", "ease", "als"] = Field(
        "svd", description="'svd': PureSVD; 'ease': EASE (Steck 2019); 'als': implicit ALS (Hu, Koren, Volinsky)."
    )
    factors: int = Field(64, description="Latent factors (svd, als).")
    regularization: float | None = Field(
        None, description="EASE's lambda (default 500) or ALS's lambda (default 10); unused by svd."
    )
    iterations: int = Field(15, description="ALS sweeps (users then items).")
    alpha: float = Field(1.0, description="ALS confidence on observed cells: c = alpha * value (1 elsewhere).")
    weighting: Literal["binary", "rating"] = Field(
        "binary", description="Matrix cells: 'binary' 1 per user-item pair, or 'rating' (event weight if unrated)."
    )
    k: int = Field(50, ge=1, description="How many items, unless the 'k' input says otherwise.")
    exclude_seen: bool = Field(True, description="Leave out items the user has in the interaction log.")
    source: str = Field("cf", min_length=1, description="Name of this list in ScoredItem.sources.")
    seed: int = Field(0, description="Random seed (svd's starting vector, als's initial factors).")
    decay: DecayConfig | None = Field(None, description=_DECAY_DESCRIPTION)
    batch: bool = Field(
        False, description="Score the users of concurrent requests (llmrec eval, /v1/recommend/batch) with one "
                           "matrix product. Off by default: one user's scores take about 14 us (MovieLens 100K, 64 "
                           "factors), less than batching costs per request (benchmarks/eval_speed.py).",
    )


class CF(_Retriever):
    """Matrix-factorisation / linear-autoencoder retrieval over the user-item matrix (see the module docstring)."""

    name = "retrieve.cf"
    description = "Retrieve items by collaborative filtering (PureSVD, EASE or implicit ALS); cold start: no items."
    Config = CFConfig

    @property
    def regularization(self) -> float:
        """The lambda in use: the configured one, or the algorithm's default."""
        c = self.config
        return c.regularization if c.regularization is not None else DEFAULT_REGULARIZATION[c.algorithm]

    def _label(self) -> str:
        return f"{self.name} ({self.config.algorithm})"

    def _fit(self, matrix: _Matrix) -> _Model:
        c = self.config
        if c.algorithm == "ease":
            return _ItemItemModel(matrix, 0.0, fit_ease(matrix, self.regularization))
        if c.algorithm == "als":
            users, items = fit_als(matrix, c.factors, self.regularization, c.alpha, c.iterations, c.seed)
        else:
            users, items = fit_svd(matrix, c.factors, c.seed)
        return _FactorModel(matrix, 0.0, users, items)

    def _set_query(self, model: _Model, rows: scipy.sparse.csr_matrix) -> None:
        super()._set_query(model, rows)
        if isinstance(model, _FactorModel):  # user factors of the new rows, the item factors kept
            if self.config.algorithm == "als":
                model.user_factors = als_user_factors(model.item_factors, rows, self.regularization,
                                                      self.config.alpha)
            else:  # PureSVD: x_u V (= U S for the fitted rows)
                model.user_factors = np.asarray(rows @ model.item_factors)

    @classmethod
    def check(cls, config: BaseModel, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        assert isinstance(config, CFConfig)
        problems: list[str | tuple[str, str] | Problem] = []
        if config.factors < 1:
            problems.append(("factors", f"factors must be at least 1, got {config.factors}"))
        if config.regularization is not None and config.regularization <= 0:
            problems.append(("regularization", f"regularization must be positive, got {config.regularization}"))
        if config.iterations < 1:
            problems.append(("iterations", f"iterations must be at least 1, got {config.iterations}"))
        if config.alpha < 0:
            problems.append(("alpha", f"alpha cannot be negative, got {config.alpha}"))
        used = {"svd": {"factors"}, "ease": {"regularization"}, "als": {"factors", "regularization", "iterations",
                                                                        "alpha"}}[config.algorithm]
        for key in sorted({"factors", "regularization", "iterations", "alpha"} - used):
            if key in config.model_fields_set:
                problems.append(Problem(f"'{key}' is not used by algorithm '{config.algorithm}'", key,
                                        hint="remove it, or choose an algorithm that uses it", warning=True))
        return problems


class ItemKNNConfig(NoConfig):
    neighbours: int = Field(50, description="How many most similar items each item keeps.")
    similarity: Literal["cosine"] = Field("cosine", description="Item-item similarity on the user-item matrix.")
    weighting: Literal["binary", "rating"] = Field(
        "binary", description="Matrix cells: 'binary' 1 per user-item pair, or 'rating' (event weight if unrated)."
    )
    k: int = Field(50, ge=1, description="How many items, unless the 'k' input says otherwise.")
    exclude_seen: bool = Field(True, description="Leave out items the user has in the interaction log.")
    source: str = Field("item_knn", min_length=1, description="Name of this list in ScoredItem.sources.")
    decay: DecayConfig | None = Field(None, description=_DECAY_DESCRIPTION)
    batch: bool = Field(
        False, description="Score the users of concurrent requests (llmrec eval, /v1/recommend/batch) with one "
                           "matrix product. Off by default: one user's scores take about 14 us (MovieLens 100K, 64 "
                           "factors), less than batching costs per request (benchmarks/eval_speed.py).",
    )


class ItemKNN(_Retriever):
    """Item-based kNN: an item's score is the sum of its cosine similarities to the user's items, counting only
    the ``neighbours`` items most similar to it."""

    name = "retrieve.item_knn"
    description = "Retrieve items similar to the user's items (item-item cosine kNN); cold start: no items."
    Config = ItemKNNConfig

    def _fit(self, matrix: _Matrix) -> _Model:
        return _ItemItemModel(matrix, 0.0, fit_item_knn(matrix, self.config.neighbours))

    @classmethod
    def check(cls, config: BaseModel, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        assert isinstance(config, ItemKNNConfig)
        if config.neighbours < 1:
            return [("neighbours", f"neighbours must be at least 1, got {config.neighbours}")]
        return []


NODE_TYPES: tuple[type[NodeType], ...] = (CF, ItemKNN)


__all__ = ["CF", "DEFAULT_REGULARIZATION", "DecayConfig", "ItemKNN", "NODE_TYPES", "als_user_factors", "fit_als",
           "fit_ease", "fit_item_knn", "fit_svd", "recency_weights", "top_k"]
