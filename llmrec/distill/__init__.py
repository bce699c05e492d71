"""Distilling a recommender's pairwise preferences into a small rec-LM (book 4.6): ``llmrec distill``.

The task: "which of these two items will this user prefer?" A *teacher* (a larger rec-LM, or any llmrec
Provider: a LoRA model on the transformers provider, a hosted model through litellm) gives the probability that
the user prefers the first; a small *student* rec-LM learns those soft labels (KL, or KL plus cross-entropy on
the true label, at a temperature) and is saved as an ordinary rec-LM folder through
:mod:`llmrec.artifacts`, usable wherever a rec-LM folder is.

::

    from llmrec.data.datasets import load_dataset
    from llmrec.distill import DistillConfig, RecLMTeacher, distill, save_student

    ds = load_dataset("movielens-100k", "temporal")
    result = distill(ds, RecLMTeacher("models/teacher"), "tiny", DistillConfig(loss="kl+ce", temperature=2))
    print(result.report.markdown())        # teacher / from scratch / distilled: accuracy, ms per sample, ...
    folder, _ = save_student(result, "models/distilled")

Modules: :mod:`~llmrec.distill.pairs` (the examples), :mod:`~llmrec.distill.teachers`,
:mod:`~llmrec.distill.scoring` (pair logits of a rec-LM), :mod:`~llmrec.distill.student` (training),
:mod:`~llmrec.distill.report`, :mod:`~llmrec.distill.pipeline` and :mod:`~llmrec.distill.cli` (the command).
Importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llmrec.distill.config import DistillConfig, DistillError, PairConfig

if TYPE_CHECKING:
    from llmrec.distill.pairs import PairSet, accuracy, agreement, case_pairs, transfer_pairs
    from llmrec.distill.pipeline import DistillResult, Prepared, distill, prepare, save_student
    from llmrec.distill.report import DistillReport, ReportRow, measure_latency
    from llmrec.distill.scoring import PairScorer
    from llmrec.distill.student import StudentResult, hard_subset, train_student
    from llmrec.distill.teachers import ProviderTeacher, RecLMTeacher, Teacher, rec_lm_folder

_LAZY = {
    "PairSet": "pairs", "accuracy": "pairs", "agreement": "pairs", "case_pairs": "pairs", "transfer_pairs": "pairs",
    "DistillResult": "pipeline", "Prepared": "pipeline", "distill": "pipeline", "prepare": "pipeline",
    "save_student": "pipeline",
    "DistillReport": "report", "ReportRow": "report", "measure_latency": "report",
    "PairScorer": "scoring",
    "StudentResult": "student", "hard_subset": "student", "train_student": "student",
    "ProviderTeacher": "teachers", "RecLMTeacher": "teachers", "Teacher": "teachers", "rec_lm_folder": "teachers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmrec.distill' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llmrec.distill.{module}"), name)


__all__ = ["DistillConfig", "DistillError", "DistillReport", "DistillResult", "PairConfig", "PairScorer", "PairSet",
           "Prepared", "ProviderTeacher", "RecLMTeacher", "ReportRow", "StudentResult", "Teacher", "accuracy",
           "agreement", "case_pairs", "distill", "hard_subset", "measure_latency", "prepare", "rec_lm_folder",
           "save_student", "train_student", "transfer_pairs"]
