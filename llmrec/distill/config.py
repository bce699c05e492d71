"""What distillation is configured by, and the error it raises (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmrec.errors import LlmrecError


class DistillError(LlmrecError, ValueError):
    """Distillation cannot start: no teacher, no dataset, a dataset with nothing to learn or judge from."""


class PairConfig(BaseModel):
    """How pairwise preference examples are drawn (see :mod:`llmrec.distill.pairs`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_pairs_per_user: int = Field(5, ge=1, description="Pairs per validation/test case (PROTOCOLS.md: 5).")
    transfer_pairs_per_user: int | None = Field(
        None, ge=1, description="Transfer pairs per training user, drawn from the user's liked events (None: one "
                                "per liked event of the window).")
    negatives: int = Field(1, ge=1, le=64, description="Unseen items paired with each liked event (transfer set).")
    window: int = Field(100, ge=2, description="Transfer pairs come from the user's last this many training events.")
    min_context: int = Field(1, ge=0, description="A transfer pair needs at least this many earlier events.")
    liked_rating: float | None = Field(
        4.0, description="An event is liked when rated at least this (every event when ratings are absent).")
    seed: int = Field(0, description="Seed of every draw (numpy default_rng).")


class DistillConfig(BaseModel):
    """How the student learns from the teacher's pairwise preferences.

    Loss on a pair with teacher probability ``p`` and student pair logit ``z`` (the difference of the student's
    next-item log-probabilities of the two items), at temperature ``T``:

    - ``kl``:    ``T**2 * KL(Bernoulli(sigmoid(logit(p) / T)) || Bernoulli(sigmoid(z / T)))``
    - ``kl+ce``: ``alpha * (the kl term) + (1 - alpha) * BCE(sigmoid(z), y)``, ``y`` = 1 when the first item is
      the truly preferred one (``alpha = 0`` is plain pairwise training on the true labels: no teacher).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: Literal["kl", "kl+ce"] = Field("kl+ce", description="kl: teacher soft labels only; kl+ce: plus the truth.")
    temperature: float = Field(2.0, gt=0, le=100, description="Softens teacher and student pair logits in the KL term.")
    alpha: float = Field(0.5, ge=0, le=1, description="kl+ce: weight of the KL term (1 - alpha on the CE term).")
    init: Literal["next-item", "scratch"] = Field(
        "scratch", description="scratch: the pairwise loss from random weights (best on MovieLens 100K, "
                               "benchmarks/distill.py); next-item: start from a rec-LM trained on next-item loss "
                               "(no teacher), then fine-tune on the pairwise loss.")
    epochs: int = Field(12, ge=1, description="Most pairwise epochs (the best on validation pairs is kept).")
    patience: int = Field(3, ge=1, description="Stop after this many epochs without a better validation accuracy.")
    init_epochs: int = Field(20, ge=1, description="next-item init (and the from-scratch baseline): most epochs.")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the pairwise epochs.")
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, ge=1, description="Training users (contexts) per step; all their pairs together.")
    seed: int = 0
    hard_examples: float = Field(
        1.0, gt=0, le=1, description="Keep only this fraction of transfer pairs: those where the teacher gives the "
                                     "true answer the lowest probability (confident-and-correct pairs go first).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while training (None: torch's default).")
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    pairs: PairConfig = Field(default_factory=PairConfig)


__all__ = ["DistillConfig", "DistillError", "PairConfig"]
