"""``rank.blend``: a score-level blend of candidate lists, with weights fitted by ``llmrec train``.

::

    blend:
      type: rank.blend
      config: {method: zscore, model_path: ../runs/NAME/models, k: 10}   # weights fitted on validation
      inputs: {lists: ["${ease}", "${recency}", "${reclm}"]}

Every input list is normalised on its own, then the lists are summed with one weight each:

- ``zscore``: each list's scores become z-scores (its mean and standard deviation); an item a list does not
  hold gets that list's lowest z-score, so only the lists that know an item lift it;
- ``rrf``: weighted reciprocal rank fusion, ``weight / (rrf_k + rank)``; an item a list does not hold gets 0.

``weights`` fixes the weights in the config. Without it the node is trainable (``trains_on: cases``, the training
contract of :mod:`llmrec.training`): ``llmrec train`` collects the input lists for each validation case (carved
from the training events, never test) and picks the weights with the best mean NDCG@``fit_k`` by coordinate ascent
over a grid (started from equal weights or the best list alone; the largest weight is then 1); the artifact (weights.json) records the validation NDCG of
the blend and of each list alone.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...artifacts import ArtifactError, digest
from ...node import NodeType, SpecPath, StartContext
from ...training import Target, TrainContext, TrainingError, TrainOutput
from ...types import Candidates, ScoredItem

WEIGHTS_FILE = "weights.json"
#: the weights coordinate ascent tries for each list
GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class BlendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["zscore", "rrf"] = Field("zscore", description="How each list is normalised before the sum.")
    weights: list[float] | None = Field(
        None, description="One weight per input list; leave out to fit them with `llmrec train`.")
    model_path: SpecPath | None = Field(None, description="Folder of fitted weights (when 'weights' is left out).")
    train_on_first_use: bool = Field(False, description="Fit the weights at start when none are fitted yet.")
    rrf_k: int = Field(60, ge=0, description="rrf: score = weight / (rrf_k + rank).")
    k: int | None = Field(None, ge=1, description="Keep this many items (default: all), unless the 'k' input says.")
    fit_k: int = Field(10, ge=1, description="Weights are fitted for NDCG at this cut-off.")
    source: str = Field("blend", min_length=1, description="Name of the blended list.")

    @model_validator(mode="after")
    def _where(self) -> BlendConfig:
        if self.weights is None and self.model_path is None:
            raise ValueError("give 'weights' (one per list), or 'model_path' to fit them with `llmrec train`")
        if self.weights is not None and any(w < 0 or not math.isfinite(w) for w in self.weights):
            raise ValueError("weights must be finite and not negative")
        return self


def _as_candidates(value: Any) -> Candidates | None:
    if value is None or isinstance(value, Candidates):
        return value
    return Candidates.model_validate(value)


def normalised(lists: list[Candidates | None], method: str, rrf_k: int) -> tuple[list[str], np.ndarray]:
    """The union of the lists' ids (first seen first) and an ``[items, lists]`` matrix of normalised scores."""
    ids: dict[str, int] = {}
    for cands in lists:
        for item in cands.items if cands is not None else ():
            ids.setdefault(item.id, len(ids))
    matrix = np.zeros((len(ids), len(lists)), dtype=np.float64)
    for j, cands in enumerate(lists):
        if cands is None or not cands.items:
            continue
        first: dict[str, int] = {}
        for rank, item in enumerate(cands.items):
            first.setdefault(item.id, rank)
        rows = np.fromiter((ids[i] for i in first), dtype=np.int64, count=len(first))
        if method == "rrf":
            matrix[rows, j] = [1.0 / (rrf_k + 1 + r) for r in first.values()]
            continue
        by_id = {}
        for item in cands.items:
            by_id.setdefault(item.id, item.score)
        raw = np.array([by_id[i] for i in first], dtype=np.float64)
        raw = np.where(np.isfinite(raw), raw, np.nan)
        if np.isnan(raw).all():
            continue
        raw = np.where(np.isnan(raw), np.nanmin(raw), raw)
        std = raw.std()
        z = (raw - raw.mean()) / std if std > 0 else np.zeros_like(raw)
        column = np.full(len(ids), z.min())
        column[rows] = z
        matrix[:, j] = column
    return list(ids), matrix


class Blend(NodeType):
    """Blend candidate lists by normalised score with one weight per list (fixed, or fitted on validation)."""

    name = "rank.blend"
    inline = True
    description = "Blend candidate lists by z-scored or rank-fused scores, with weights fitted by `llmrec train`."
    Config = BlendConfig
    #: the training contract: fit gets the node's input lists per validation case
    trains_on: ClassVar[str] = "cases"

    def __init__(self, config: BlendConfig) -> None:
        super().__init__(config)
        self.weights: list[float] | None = list(config.weights) if config.weights is not None else None

    # -- the training contract -------------------------------------------------------------------------------
    @classmethod
    def is_trainable(cls, config: BlendConfig, target: Target) -> bool:
        return config.weights is None

    @classmethod
    def training_params(cls, config: BlendConfig, target: Target) -> dict[str, Any]:
        return {"method": config.method, "rrf_k": config.rrf_k, "fit_k": config.fit_k, "grid": list(GRID)}

    @classmethod
    def fit(cls, config: BlendConfig, ctx: TrainContext) -> TrainOutput:
        cases = []
        width = None
        for ex in ctx.examples:
            lists = [_as_candidates(v) for v in ex.inputs.get("lists") or []]
            if width is None:
                width = len(lists)
            if not lists or not ex.relevant:
                continue
            ids, matrix = normalised(lists, config.method, config.rrf_k)
            if not ids:
                continue
            gains = np.array([float(ex.gains.get(i, 1.0)) if ex.gains else 1.0 if i in ex.relevant else 0.0
                              for i in ids]) * np.array([i in ex.relevant for i in ids])
            ideal = _dcg(np.sort(np.array([float(ex.gains.get(i, 1.0)) if ex.gains else 1.0
                                           for i in ex.relevant]))[::-1], config.fit_k)
            cases.append((matrix, gains, ideal, ex.case_id))
        if not width:
            raise TrainingError(f"node '{ctx.name}': no training case gave it any lists to blend")
        if not cases:
            raise TrainingError(f"node '{ctx.name}': no training case has a relevant item; nothing to fit")

        def score(w: np.ndarray) -> float:
            return float(np.mean([_ndcg(m @ w, g, ideal, config.fit_k) for m, g, ideal, _ in cases]))

        singles = [score(np.eye(width)[j]) for j in range(width)]
        starts = [np.ones(width), *np.eye(width)]  # all lists equal, or each list alone: the best start
        start_scores = [score(w) for w in starts]
        best_w = starts[int(np.argmax(start_scores))].copy()
        best = max(start_scores)
        for _ in range(4):  # coordinate ascent over the grid, one list's weight at a time
            improved = False
            for j in range(width):
                for value in GRID:
                    trial = best_w.copy()
                    trial[j] = value
                    if not trial.any():
                        continue
                    s = score(trial)
                    if s > best + 1e-12:
                        best, best_w, improved = s, trial, True
            ctx.progress(f"blend weights {[round(float(w), 3) for w in best_w / best_w.max()]}: validation "
                         f"NDCG@{config.fit_k} {best:.4f}")
            if not improved:
                break
        best_w = best_w / best_w.max()  # only ratios matter: the largest weight is 1
        weights = [float(w) for w in best_w]
        ctx.staging.write(WEIGHTS_FILE, json.dumps({"weights": weights}))
        metrics = {f"ndcg@{config.fit_k}": round(best, 6),
                   **{f"list{j}_ndcg@{config.fit_k}": round(s, 6) for j, s in enumerate(singles)}}
        data = digest(json.dumps([[c[3], c[0].tolist(), c[1].tolist()] for c in cases]).encode(), 16)
        return TrainOutput(data_hash=data, metrics=metrics, meta={"weights": weights}, rows=len(cases))

    async def start(self, ctx: StartContext) -> None:
        if self.config.weights is not None:
            return
        artifact = await ctx.artifact()
        try:
            weights = json.loads(artifact.path(WEIGHTS_FILE).read_text(encoding="utf-8"))["weights"]
            if not isinstance(weights, list) or not all(isinstance(w, (int, float)) for w in weights):
                raise ValueError("not a list of numbers")
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"weights.json is not valid ({exc})", artifact.folder, ctx.node_id,
                                "Refit it with `llmrec train SPEC --force`.") from None
        self.weights = [float(w) for w in weights]

    # -- blending --------------------------------------------------------------------------------------------
    async def run(self, lists: list[Candidates | None], k: int | None = None) -> Candidates:
        cfg = self.config
        weights = self.weights
        if weights is None:
            raise ArtifactError("the blend weights are not loaded (the node was not started)", None)
        if len(weights) != len(lists):
            raise ValueError(f"rank.blend got {len(lists)} lists but has {len(weights)} weights; give one weight per "
                             "list (refit with `llmrec train SPEC --force` after changing the lists)")
        cands = [_as_candidates(v) for v in lists]
        ids, matrix = normalised(cands, cfg.method, cfg.rrf_k)
        scores = matrix @ np.asarray(weights, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")  # ties keep first-seen order
        keep = k if k is not None else cfg.k
        order = order[:keep] if keep is not None else order
        sources: dict[str, dict[str, float]] = {i: {} for i in (ids[o] for o in order)}
        for j, c in enumerate(cands):
            if c is None:
                continue
            name = c.source or f"list{j}"
            for item in c.items:
                if item.id in sources:
                    merged = sources[item.id]
                    for key, value in item.sources.items():
                        merged.setdefault(key, value)
                    merged.setdefault(name, item.score)
        return Candidates(items=[ScoredItem.trusted(ids[o], round(float(scores[o]), 8), sources[ids[o]])
                                 for o in order], source=cfg.source)


def _dcg(gains: np.ndarray, k: int) -> float:
    top = gains[:k]
    return float(np.sum(top / np.log2(np.arange(2, len(top) + 2))))


def _ndcg(scores: np.ndarray, gains: np.ndarray, ideal: float, k: int) -> float:
    if ideal <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")[:k]
    return _dcg(gains[order], k) / ideal


__all__ = ["Blend", "BlendConfig", "normalised"]
