"""``llmrec finetune``: LoRA fine-tuning of a local causal LM for recommendations (book section 4.5).

Instruction pairs come from a dataset's training interactions (:mod:`.data`), the adapter is trained with peft
(:mod:`.lora`), and the adapter plus a merged model folder are stored as a versioned artifact
(:mod:`.artifact`) that an ``llm`` resource with ``provider: transformers`` loads unchanged. The command is in
:mod:`.cli`. Importing this package does not import torch or transformers.
"""

from __future__ import annotations

from .artifact import FinetuneReport, finetune, load_adapter, open_finetuned
from .base import BaseInfo, check_base
from .data import FinetuneError, InstructionPair, PairConfig, build_pairs, finetune_pairs, render_prompt
from .lora import FinetuneInterrupted, LoraRun, LoraTrainConfig, answer_nll, pair_nlls, train_lora

__all__ = [
    "BaseInfo",
    "FinetuneError",
    "FinetuneInterrupted",
    "FinetuneReport",
    "InstructionPair",
    "LoraRun",
    "LoraTrainConfig",
    "PairConfig",
    "answer_nll",
    "build_pairs",
    "check_base",
    "finetune",
    "finetune_pairs",
    "load_adapter",
    "open_finetuned",
    "pair_nlls",
    "render_prompt",
    "train_lora",
]
