"""A small causal language model over semantic item tokens (a "rec-LM"; book 3.2 and 4.1-4.3).

A user's history becomes ``<bos> item rating item rating ...``; a GPT-2 (``transformers.GPT2LMHeadModel``,
randomly initialised from a ``GPT2Config`` sized by :class:`RecLMConfig`) learns next-token prediction over
those sequences, and recommends by scoring the next *item* token. Items carry their genres and decade as
additive side-token embeddings (see :mod:`llmrec.reclm.tokens`).

::

    rec = train_reclm(catalog, train, validation_cases, RecLMConfig(size="small"))
    rec.save("models/reclm")
    rec = RecLM.load("models/reclm")
    rec.recommend([("50", 5.0), ("172", 4.0)], n=10, allowed=catalog.ids)

This package is a library: it never imports ``llmrec.nodes`` or ``llmrec.training``, and importing it does not
import torch or transformers (they load on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmrec.reclm.config import SIZES, RecLMConfig, RecLMError
from llmrec.reclm.tokens import Vocab

if TYPE_CHECKING:
    from llmrec.reclm.model import RecLM
    from llmrec.reclm.train import TrainedRecLM, TrainingInterrupted, evaluate_ndcg, train_reclm

_LAZY = {
    "RecLM": "llmrec.reclm.model",
    "TrainedRecLM": "llmrec.reclm.train",
    "TrainingInterrupted": "llmrec.reclm.train",
    "evaluate_ndcg": "llmrec.reclm.train",
    "train_reclm": "llmrec.reclm.train",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmrec.reclm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["SIZES", "RecLM", "RecLMConfig", "RecLMError", "TrainedRecLM", "TrainingInterrupted", "Vocab",
           "evaluate_ndcg", "train_reclm"]
