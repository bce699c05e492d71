"""Configuration of a rec-LM and the errors the package raises (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmrec.errors import LlmrecError

SizeName = Literal["tiny", "small", "medium"]

#: Size presets: (n_layer, n_embd, n_head).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (1, 32, 1),
    "small": (2, 64, 2),
    "medium": (4, 128, 4),
}


class RecLMError(LlmrecError, ValueError):
    """Bad input to a rec-LM (empty log, empty catalog, no validation cases) or a missing/corrupt model folder."""


class RecLMConfig(BaseModel):
    """How to build and train a rec-LM; embeddable in a spec's ``config`` (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: SizeName = Field("small", description="Preset: tiny 1x32 (1 head), small 2x64 (2 heads), medium 4x128 (4 heads).")
    n_layer: int | None = Field(None, ge=1, le=48, description="Override the preset's number of layers.")
    n_embd: int | None = Field(None, ge=8, le=4096, description="Override the preset's embedding width.")
    n_head: int | None = Field(None, ge=1, le=64, description="Override the preset's number of attention heads.")
    max_events: int = Field(100, ge=1, le=4096, description="Keep only each user's last N events (2N+1 tokens).")
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(3, ge=1, description="Stop after this many epochs without a better validation NDCG@10.")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while training (None: torch's default).")
    validation_users: int | None = Field(
        None, ge=1, description="Score at most this many validation cases per epoch (a fixed seeded sample).")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> RecLMConfig:
        _, n_embd, n_head = self.dimensions
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        return self

    @property
    def dimensions(self) -> tuple[int, int, int]:
        """``(n_layer, n_embd, n_head)`` after applying overrides to the preset."""
        layers, width, heads = SIZES[self.size]
        return (self.n_layer or layers, self.n_embd or width, self.n_head or heads)


__all__ = ["SIZES", "RecLMConfig", "RecLMError", "SizeName"]
