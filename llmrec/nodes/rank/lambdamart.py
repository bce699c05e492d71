"""Learning to rank: ``rank.lambdamart`` re-scores candidates with a LightGBM LambdaMART model.

The node is *trainable* (see :mod:`llmrec.training`): ``llmrec train SPEC`` collects the node's inputs for every
training case of the spec's dataset, builds one feature row per (user, candidate), labels it 1 when the candidate
is one of the case's relevant ids, and fits a LambdaMART model (``objective="lambdarank"`` with the parameters
``lightgbm.LGBMRanker`` would pass, through the native ``lightgbm.train``, which needs no scikit-learn: see
:func:`import_lightgbm`) with one query group per case. The artifact (``model.txt`` + ``meta.json`` with the
feature list and its order) lives under ``model_path``; ``llmrec validate`` warns while it is missing or stale,
and the spec refuses to run without it unless ``train_on_first_use`` is set.

Features (:data:`BASE_FEATURES`, plus three per retriever source seen in training):

- ``rank``, ``reciprocal_rank``, ``input_score``, ``input_score_gap`` (top input score minus this one);
- ``source:S`` (the score S gave, 0 when S did not retrieve it), ``retrieved:S`` (1/0), ``source_gap:S``
  (S's best score in this list minus this one; missing when not retrieved);
- ``popularity`` (event-weighted, top item = 1), ``log_popularity``, ``recency_days`` (days between the log's
  last event and the item's last event; missing when never seen);
- ``category_affinity`` (the user's share for the item's category), ``in_top_categories``, ``category_share``
  (share of this list in the item's category), ``history_size``, ``seen``;
- ``price`` and ``price_gap`` (|log price - mean log price of the user's history|; missing when unknown).

With the optional ``model`` input (an ``embedder`` resource), :data:`EMBEDDING_FEATURES` compare the candidate's
vector with the vectors of what the user read (``profile.seen``, the latest :data:`MAX_HISTORY`), which is what a
reader with several interests needs and one cosine to the mean profile misses (the mean of two interests is
close to neither):

- ``history_max_cosine``, ``history_second_cosine`` (two history items close to it: an interest, not a stray
  click), ``history_mean_cosine``, ``history_close_count`` (history items with cosine >= :data:`CLOSE_COSINE`),
  ``profile_cosine`` (to the normalised mean of the history);
- ``nearest_support``: mean cosine of the nearest history item to the rest of the history (low for noise);
- ``category_centroid_cosine`` (to the mean of the history items in the candidate's category; missing when none)
  and ``nearest_category_centroid_cosine`` (to the mean of the history items in the nearest one's category).

Vectors come from the embedder's cache (``Embedder.embed_items``), once per (catalog, model); all are missing
(NaN) for users without history. Item attributes are never features (a dataset may keep its labels there).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...artifacts import Artifact, ArtifactError, digest
from ...data import Catalog, Interactions
from ...embed import Embedder
from ...errors import RunError
from ...metrics import ndcg_at_k
from ...node import CheckContext, NodeType, Problem, SpecPath, StartContext
from ...training import Target, TrainContext, TrainingError, TrainingExample, TrainOutput
from ...types import Candidates, ScoredItem, UserProfile
from ..common import PerObjects, as_candidates, count_or

if TYPE_CHECKING:  # pragma: no cover
    import lightgbm


def import_lightgbm() -> Any:
    """``import lightgbm`` without importing scikit-learn (issue 13: 1.3 of the quickstart's 3.3 s cold start).

    lightgbm imports scikit-learn (and through it scipy.stats) whenever it is installed, for its optional
    ``lightgbm.sklearn`` estimators; this node uses only ``Booster`` and ``lightgbm.train``. So when neither
    lightgbm nor scikit-learn is loaded yet, lightgbm is imported with scikit-learn hidden, and scikit-learn
    stays importable afterwards for everyone else. The one cost: in that process ``lightgbm.LGBMRanker`` and the
    other scikit-learn estimators say scikit-learn is missing; ``LLMREC_LIGHTGBM_SKLEARN=1`` (or importing
    scikit-learn or lightgbm first) keeps them.
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules or os.environ.get("LLMREC_LIGHTGBM_SKLEARN") == "1":
        import lightgbm
        return lightgbm
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError meanwhile
    try:
        import lightgbm
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
    return lightgbm


def lambdarank_params(config: Any) -> dict[str, Any]:
    """The parameters ``lightgbm.LGBMRanker(objective="lambdarank", ...)`` passes to ``lightgbm.train`` for this
    node's settings (LightGBM 4's scikit-learn defaults spelled out), so the native API trains the same model."""
    return {
        "objective": "lambdarank", "boosting_type": "gbdt", "num_leaves": config.num_leaves, "max_depth": -1,
        "learning_rate": config.learning_rate, "subsample_for_bin": 200000, "min_split_gain": 0.0,
        "min_child_weight": 1e-3, "min_child_samples": config.min_data_in_leaf, "subsample": 1.0,
        "subsample_freq": 0, "colsample_bytree": 1.0, "reg_alpha": 0.0, "reg_lambda": 0.0,
        "random_state": config.seed, "n_jobs": 1, "deterministic": True, "force_row_wise": True, "verbose": -1,
    }

BASE_FEATURES: tuple[str, ...] = (
    "rank", "reciprocal_rank", "input_score", "input_score_gap",
    "popularity", "log_popularity", "recency_days",
    "category_affinity", "in_top_categories", "category_share", "history_size", "seen",
    "price", "price_gap",
)
#: features computed from the ``model`` input's vectors; used by default when the node is given a model
EMBEDDING_FEATURES: tuple[str, ...] = (
    "history_max_cosine", "history_second_cosine", "history_mean_cosine", "history_close_count", "profile_cosine",
    "nearest_support", "category_centroid_cosine", "nearest_category_centroid_cosine",
)
#: a history item this close (cosine) to a candidate counts in ``history_close_count``
CLOSE_COSINE = 0.4
#: the embedding features look at the latest this many seen items
MAX_HISTORY = 256
SOURCE_FEATURES: tuple[str, ...] = ("source", "retrieved", "source_gap")
_SOURCE_FEATURE = re.compile(r"^(source|retrieved|source_gap):(.+)$")
#: config fields that change the trained model (the rest only change how it is used)
TRAINING_FIELDS = ("features", "n_estimators", "learning_rate", "num_leaves", "min_data_in_leaf", "seed",
                   "validation_fraction")
MODEL_FILE = "model.txt"


class LambdaMARTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: SpecPath = Field(description="Folder of trained artifacts (relative to the spec's folder).")
    features: list[str] | None = Field(
        None, description="Feature names, in order (default: all base features plus the sources seen in training)."
    )
    n_estimators: int = Field(200, ge=1, le=10_000, description="Boosting rounds.")
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_leaves: int = Field(15, ge=2, le=1024)
    min_data_in_leaf: int = Field(20, ge=1)
    seed: int = Field(0, description="Seed of LightGBM and of the validation split.")
    validation_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of training cases held out to report validation metrics."
    )
    train_on_first_use: bool = Field(False, description="Train at start when no current artifact exists.")
    labels: str | None = Field(
        None, description="A node of the spec whose output labels each training case (e.g. an llm.relevance node); "
                          "a case it gives no labels for (null: say, its fallback with no model) keeps the "
                          "dataset's own.")
    k: int | None = Field(None, ge=1, description="Keep this many items (default: all), unless the 'k' input says.")
    source: str = Field("lambdamart", min_length=1, description="Name of the model's score in ScoredItem.sources.")


def training_config(config: LambdaMARTConfig) -> dict[str, Any]:
    """The config fields that shape the model (model_path, k and the rest do not)."""
    return {name: getattr(config, name) for name in TRAINING_FIELDS}


# -- features ----------------------------------------------------------------------------------------------------


class _LogStats:
    """Per-item popularity and last-event time of an interaction log, computed once per log."""

    def __init__(self, interactions: Interactions) -> None:
        raw = interactions.popularity()
        top = max(raw.values(), default=0.0)
        self.raw = raw
        self.normalised = {i: v / top for i, v in raw.items()} if top > 0 else {}
        last: dict[str, int] = {}
        for it in interactions:
            if it.timestamp > last.get(it.item_id, -1):
                last[it.item_id] = it.timestamp
        self.last = last
        self.max_ts = max(last.values(), default=0)


class _ItemVectors:
    """A catalog's item vectors under one model, and each item's row."""

    def __init__(self, catalog: Catalog, model: Embedder) -> None:
        ids, matrix = model.embed_items(catalog)
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.rows = {item_id: i for i, item_id in enumerate(ids)}


class Featurizer:
    """Feature rows for (user, candidate) pairs; deterministic, per-log statistics and vectors computed once."""

    def __init__(self) -> None:
        self._stats: PerObjects[_LogStats] = PerObjects()
        self._vectors: PerObjects[_ItemVectors] = PerObjects()

    def stats(self, interactions: Interactions) -> _LogStats:
        return self._stats.get((interactions,), lambda: _LogStats(interactions))

    def vectors(self, catalog: Catalog, model: Embedder) -> _ItemVectors:
        return self._vectors.get((catalog, model), lambda: _ItemVectors(catalog, model))

    def embedding_columns(
        self, candidates: Candidates, catalog: Catalog, profile: UserProfile | None, model: Embedder | None
    ) -> dict[str, np.ndarray]:
        """Every :data:`EMBEDDING_FEATURES` column (NaN without a model, a history or a candidate's vector)."""
        items = candidates.items
        n = len(items)
        out = {name: np.full(n, np.nan) for name in EMBEDDING_FEATURES}
        if model is None or profile is None or not profile.seen or n == 0:
            return out
        vectors = self.vectors(catalog, model)
        history = [i for i in profile.seen[-MAX_HISTORY:] if i in vectors.rows]
        rows = [vectors.rows.get(c.id) for c in items]
        known = np.array([r is not None for r in rows])
        if not history or not known.any():
            return out
        h = vectors.matrix[[vectors.rows[i] for i in history]]  # (history, dim)
        c = vectors.matrix[[r for r in rows if r is not None]]  # (known candidates, dim)
        sims = c @ h.T
        ordered = -np.sort(-sims, axis=1)
        near = sims.argmax(axis=1)
        cols: dict[str, np.ndarray] = {
            "history_max_cosine": ordered[:, 0],
            "history_mean_cosine": sims.mean(axis=1),
            "history_close_count": (sims >= CLOSE_COSINE).sum(axis=1).astype(np.float64),
        }
        if len(history) > 1:
            cols["history_second_cosine"] = ordered[:, 1]
            within = h @ h.T
            support = (within.sum(axis=1) - np.diag(within)) / (len(history) - 1)
            cols["nearest_support"] = support[near]
        mean = h.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm > 0:
            cols["profile_cosine"] = c @ (mean / norm)
        history_categories = [item.category if (item := catalog.get(i)) is not None else "" for i in history]
        centroids: dict[str, np.ndarray] = {}
        for category in set(history_categories):
            centroid = h[[k for k, cat in enumerate(history_categories) if cat == category]].mean(axis=0)
            centroids[category] = centroid / (np.linalg.norm(centroid) or 1.0)
        categories = [item.category if (item := catalog.get(cand.id)) is not None else ""
                      for cand, r in zip(items, rows) if r is not None]
        cols["category_centroid_cosine"] = np.array(
            [float(c[k] @ centroids[cat]) if cat in centroids else np.nan for k, cat in enumerate(categories)])
        cols["nearest_category_centroid_cosine"] = np.array(
            [float(c[k] @ centroids[history_categories[near[k]]]) for k in range(len(c))])
        for name, values in cols.items():
            out[name][known] = values
        return out

    def matrix(
        self,
        features: list[str],
        candidates: Candidates,
        catalog: Catalog,
        profile: UserProfile | None = None,
        interactions: Interactions | None = None,
        model: Embedder | None = None,
    ) -> np.ndarray:
        """One row per candidate, one column per feature name (NaN = missing, LightGBM's convention)."""
        items = candidates.items
        n = len(items)
        out = np.zeros((n, len(features)), dtype=np.float64)
        if n == 0:
            return out
        cat_items = [catalog.get(c.id) for c in items]
        categories = [it.category if it is not None else "" for it in cat_items]
        stats = self.stats(interactions) if interactions is not None else None
        scores = np.array([c.score for c in items], dtype=np.float64)
        cache: dict[str, np.ndarray] = {}
        by_source: dict[str, tuple[list[bool], np.ndarray]] = {}
        if any(name in EMBEDDING_FEATURES for name in features):
            cache.update(self.embedding_columns(candidates, catalog, profile, model))

        def user_log_price() -> float:
            if profile is None or interactions is None:
                return math.nan
            logs = [math.log1p(p) for it in interactions.history(profile.user_id)
                    if (item := catalog.get(it.item_id)) is not None and (p := item.price) is not None]
            return sum(logs) / len(logs) if logs else math.nan

        def column(name: str) -> np.ndarray:
            if name in cache:
                return cache[name]
            m = _SOURCE_FEATURE.match(name)
            if m:
                kind, source = m.groups()
                got = by_source.get(source)
                if got is None:  # the three columns of a source share one pass over the items
                    present = [source in c.sources for c in items]
                    got = by_source[source] = (present, np.array([c.sources.get(source, 0.0) for c in items],
                                                                 dtype=np.float64))
                present, values = got
                if kind == "source":
                    col = values
                elif kind == "retrieved":
                    col = np.array(present, dtype=np.float64)
                else:
                    best = max((v for v, p in zip(values, present) if p), default=0.0)
                    col = np.where(present, best - values, np.nan)
            elif name == "rank":
                col = np.arange(1, n + 1, dtype=np.float64)
            elif name == "reciprocal_rank":
                col = 1.0 / np.arange(1, n + 1, dtype=np.float64)
            elif name == "input_score":
                col = scores
            elif name == "input_score_gap":
                col = scores.max() - scores
            elif name in ("popularity", "log_popularity", "recency_days"):
                if stats is None:
                    col = np.full(n, np.nan)
                elif name == "popularity":
                    col = np.array([stats.normalised.get(c.id, 0.0) for c in items])
                elif name == "log_popularity":
                    col = np.array([math.log1p(stats.raw.get(c.id, 0.0)) for c in items])
                else:
                    col = np.array([(stats.max_ts - stats.last[c.id]) / 86400.0 if c.id in stats.last else np.nan
                                    for c in items])
            elif name == "category_affinity":
                affinity = profile.category_affinity if profile is not None else {}
                col = np.array([affinity.get(cat, 0.0) if cat else 0.0 for cat in categories])
            elif name == "in_top_categories":
                top = set(profile.top_categories) if profile is not None else set()
                col = np.array([1.0 if cat and cat in top else 0.0 for cat in categories])
            elif name == "category_share":
                counts: dict[str, int] = {}
                for cat in categories:
                    counts[cat] = counts.get(cat, 0) + 1
                col = np.array([counts[cat] / n if cat else 0.0 for cat in categories])
            elif name == "history_size":
                col = np.full(n, float(profile.history_size if profile is not None else 0))
            elif name == "seen":
                seen = set(profile.seen) if profile is not None else set()
                col = np.array([1.0 if c.id in seen else 0.0 for c in items])
            elif name == "price":
                col = np.array([it.price if it is not None and it.price is not None else np.nan for it in cat_items])
            elif name == "price_gap":
                mean = user_log_price()
                col = np.array([abs(math.log1p(it.price) - mean)
                                if it is not None and it.price is not None and not math.isnan(mean) else np.nan
                                for it in cat_items])
            else:  # checked at validation and load time; reaching here is a bug
                raise ValueError(f"unknown feature {name!r}")
            cache[name] = col
            return col

        for j, name in enumerate(features):
            out[:, j] = column(name)
        return out


def unknown_features(names: list[str]) -> list[str]:
    return [n for n in names if n not in BASE_FEATURES and n not in EMBEDDING_FEATURES
            and not _SOURCE_FEATURE.match(n)]


def uses_model(features: list[str]) -> bool:
    """Whether a feature list needs the ``model`` input."""
    return any(name in EMBEDDING_FEATURES for name in features)


def default_features(examples: list[TrainingExample]) -> list[str]:
    """Every base feature, the embedding features when the examples have a model, then three per source name
    seen in the examples' candidates (sorted)."""
    sources: set[str] = set()
    with_model = False
    for ex in examples:
        with_model = with_model or ex.inputs.get("model") is not None
        cands = as_candidates(ex.inputs.get("candidates"))
        for c in cands.items if cands is not None else ():
            sources.update(c.sources)
    return [*BASE_FEATURES, *(EMBEDDING_FEATURES if with_model else ()),
            *(f"{kind}:{s}" for s in sorted(sources) for kind in SOURCE_FEATURES)]


# -- the node ----------------------------------------------------------------------------------------------------


class LambdaMART(NodeType):
    """Re-score candidates with a trained LambdaMART model (see the module docstring for the features)."""

    name = "rank.lambdamart"
    inline = True  # a LightGBM prediction over tens of rows: quick, pure computation
    description = "Re-rank candidates with a LightGBM LambdaMART model trained by `llmrec train`."
    Config = LambdaMARTConfig

    def __init__(self, config: LambdaMARTConfig) -> None:
        super().__init__(config)
        self._featurizer = Featurizer()
        self._booster: lightgbm.Booster | None = None
        self._features: list[str] = []
        self.artifact: Path | None = None

    # -- validation and artifacts ----------------------------------------------------------------------------
    #: what ``llmrec train`` hands to fit: the node's collected inputs per training case
    trains_on = "cases"

    @classmethod
    def check(cls, config: LambdaMARTConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        problems: list[str | tuple[str, str] | Problem] = []
        if config.features is not None:
            if not config.features:
                problems.append(("features", "'features' is empty; leave it out to use every feature"))
            bad = unknown_features(config.features)
            if bad:
                problems.append(Problem(
                    f"unknown feature{'s' if len(bad) > 1 else ''} {', '.join(repr(b) for b in bad)}",
                    field="features",
                    hint=f"Use {', '.join(BASE_FEATURES + EMBEDDING_FEATURES)}, or source:NAME / retrieved:NAME / "
                         "source_gap:NAME.",
                ))
            if uses_model(config.features) and "model" not in ctx.declared_inputs:
                needing = [f for f in config.features if f in EMBEDDING_FEATURES]
                problems.append(Problem(
                    f"feature{'s' if len(needing) > 1 else ''} {', '.join(repr(f) for f in needing)} need the "
                    "'model' input", field="features",
                    hint="Give the node an embedder: inputs: {model: ${resources.NAME}} (a resource of type embedder)",
                ))
            dupes = sorted({f for f in config.features if config.features.count(f) > 1})
            if dupes:
                problems.append(("features", f"feature {', '.join(repr(d) for d in dupes)} listed twice"))
        if config.model_path.exists() and not config.model_path.is_dir():
            problems.append(("model_path", f"model_path '{config.model_path}' is a file; it must be a folder"))
        # the missing/stale artifact warning comes from llmrec.training's validate hook, which knows the spec file
        return problems

    @classmethod
    def training_params(cls, config: LambdaMARTConfig, target: Target) -> dict[str, Any]:
        """What the model depends on: the training fields, and (default features) whether the node has a
        'model' input, since that decides whether embedding features are learned."""
        params = training_config(config)
        if config.features is None:
            params["embedding_features"] = "model" in target.inputs
        return params

    async def start(self, ctx: StartContext) -> None:
        self.load(await ctx.artifact(), ctx.node_id)

    def load(self, artifact: Artifact, node_id: str | None = None) -> None:
        """Load a verified artifact (model.txt + meta.json)."""
        lightgbm = import_lightgbm()

        hint = "Retrain it with `llmrec train SPEC --force`."
        features = artifact.meta.get("features")
        if not isinstance(features, list) or unknown_features(features):
            raise ArtifactError("meta.json has no valid feature list", artifact.folder, node_id, hint)
        try:
            self._booster = lightgbm.Booster(model_file=str(artifact.path(MODEL_FILE)))
        except lightgbm.basic.LightGBMError as exc:
            raise ArtifactError(f"LightGBM cannot read the model: {exc}", artifact.path(MODEL_FILE), node_id,
                                hint) from None
        self._features = list(features)
        self.artifact = artifact.folder

    # -- prediction ------------------------------------------------------------------------------------------
    def predict(
        self,
        candidates: Candidates,
        catalog: Catalog,
        profile: UserProfile | None = None,
        interactions: Interactions | None = None,
        model: Embedder | None = None,
    ) -> np.ndarray:
        """The model's score of every candidate, in input order."""
        if self._booster is None:
            raise RunError("the model is not loaded (the node was not started)")
        if model is None and uses_model(self._features):
            raise RunError(f"the model in {self.artifact} was trained with embedding features, but the "
                                    "node was given no 'model' input; give it the same embedder, or retrain")
        if not candidates.items:
            return np.zeros(0)
        x = self._featurizer.matrix(self._features, candidates, catalog, profile, interactions, model)
        return np.asarray(self._booster.predict(x, num_threads=1), dtype=np.float64)

    async def warm(self, interactions: Interactions | None = None, catalog: Catalog | None = None,
                   model: Embedder | None = None, **_: Any) -> None:
        if interactions is not None:
            self._featurizer.stats(interactions)
        if catalog is not None and model is not None:  # reads the embedding cache: off the event loop
            await asyncio.to_thread(self._featurizer.vectors, catalog, model)

    async def run(
        self,
        candidates: Candidates,
        catalog: Catalog,
        profile: UserProfile | None = None,
        interactions: Interactions | None = None,
        model: Embedder | None = None,
        k: int | None = None,
    ) -> Candidates:
        cands = as_candidates(candidates)
        assert cands is not None
        source = self.config.source
        n = count_or(k, self.config.k if self.config.k is not None else len(cands.items))
        scores = self.predict(cands, catalog, profile, interactions, model)
        order = sorted(range(len(cands.items)), key=lambda i: (-scores[i], i))[:n]
        items = []
        for i in order:
            c = cands.items[i]
            score = round(float(scores[i]), 6)
            items.append(ScoredItem.trusted(c.id, score, {**c.sources, source: score}))
        return Candidates(items=items, source=source)

    # -- training --------------------------------------------------------------------------------------------
    @classmethod
    def referenced_nodes(cls, config: LambdaMARTConfig) -> list[str]:  # type: ignore[override]
        return [config.labels] if config.labels else []

    @classmethod
    def fit(cls, config: LambdaMARTConfig, ctx: TrainContext) -> TrainOutput:
        """Train on the collected examples (one query group per case); writes model.txt into the staging folder."""
        lightgbm = import_lightgbm()

        examples, node_id = ctx.examples, ctx.name
        features = list(config.features) if config.features else default_features(examples)
        featurizer = Featurizer()
        groups = []
        for ex in examples:
            cands = as_candidates(ex.inputs.get("candidates"))
            if cands is None or not cands.items:
                continue
            x = featurizer.matrix(features, cands, ex.inputs["catalog"], ex.inputs.get("profile"),
                                  ex.inputs.get("interactions"), ex.inputs.get("model"))
            y = np.array([_label(c.id, ex) for c in cands.items], dtype=np.int32)
            groups.append((ex, cands, x, y))
        if not groups:
            raise TrainingError(f"node '{node_id}': no training case has any candidates")
        if uses_model(features) and not any(ex.inputs.get("model") is not None for ex, *_ in groups):
            needing = ", ".join(f for f in features if f in EMBEDDING_FEATURES)
            raise TrainingError(f"node '{node_id}': features {needing} need the 'model' input (an embedder), "
                                "which the node was not given")
        if not any(g[3].any() for g in groups):
            raise TrainingError(f"node '{node_id}': no training case has a relevant item among its candidates, "
                                "so there is nothing to learn; retrieve more candidates (a larger k) first")
        x_all = np.vstack([g[2] for g in groups])
        y_all = np.concatenate([g[3] for g in groups])
        sizes = [len(g[3]) for g in groups]
        data_fp = digest(x_all.tobytes() + y_all.tobytes() + np.array(sizes).tobytes()
                         + json.dumps([g[0].case_id for g in groups]).encode(), 16)

        def train(part: list[Any]) -> Any:
            data = lightgbm.Dataset(np.vstack([g[2] for g in part]), np.concatenate([g[3] for g in part]),
                                    group=[len(g[3]) for g in part])
            return lightgbm.train(lambdarank_params(config), data, num_boost_round=config.n_estimators)

        metrics: dict[str, float] = {}
        order = sorted(range(len(groups)), key=lambda i: groups[i][0].case_id)
        random.Random(config.seed).shuffle(order)
        n_val = round(len(groups) * config.validation_fraction) if len(groups) >= 5 else 0
        if n_val:
            val = [groups[i] for i in order[:n_val]]
            booster = train([groups[i] for i in order[n_val:]])
            metrics = _validation_metrics(booster, val)
        booster = train(groups)  # the model to keep sees every case
        ctx.staging.write(MODEL_FILE, booster.model_to_string())
        meta = {"features": features, "uses_model": uses_model(features), "positives": int(y_all.sum()),
                "validation_cases": n_val, "lightgbm_version": lightgbm.__version__}
        return TrainOutput(data_hash=data_fp, metrics=metrics, meta=meta, rows=int(len(y_all)))


def _label(item_id: str, ex: TrainingExample) -> int:
    if item_id not in ex.relevant:
        return 0
    if ex.gains is None:
        return 1
    return int(min(max(round(ex.gains.get(item_id, 1.0)), 0), 30))


def _validation_metrics(booster: Any, val: list[Any]) -> dict[str, float]:
    """NDCG@10 of the model's order and of the input order, averaged over the validation cases."""

    model, baseline = [], []
    for ex, cands, x, _ in val:
        scores = booster.predict(x, num_threads=1)
        ranked = [cands.items[i].id for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i))]
        model.append(ndcg_at_k(ranked, ex.relevant, 10))
        baseline.append(ndcg_at_k(cands.ids, ex.relevant, 10))
    return {"ndcg@10": round(sum(model) / len(model), 6), "input_order_ndcg@10": round(sum(baseline) / len(baseline), 6)}


NODE_TYPES: tuple[type[NodeType], ...] = (LambdaMART,)


__all__ = ["BASE_FEATURES", "EMBEDDING_FEATURES", "Featurizer", "LambdaMART", "LambdaMARTConfig", "default_features",
           "import_lightgbm", "lambdarank_params",
           "training_config", "uses_model"]
