"""One fine-tuning job, from a dataset to a versioned artifact that an ``llm`` resource loads as it is.

The artifact is written through :class:`llmrec.artifacts.ArtifactStore` (a hidden staging folder renamed into
place, ``latest`` replaced atomically, so a reader sees a whole artifact or none)::

    <output>/
      latest
      <name>-<digest>/          the merged model: config.json, model.safetensors, tokenizer files: point an
        meta.json               llm resource's `model` here (provider transformers, unchanged)
        train_log.json          the loss of every step
        adapter/                the LoRA adapter alone (peft save_pretrained), its checksums in meta.json
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import Artifact, ArtifactError, ArtifactStore, digest, file_digest, params_hash, read_meta
from ..data.dataset import Dataset
from .base import BaseInfo, check_base
from .data import InstructionPair, PairConfig, PairSplit, finetune_pairs
from .lora import LoraRun, LoraTrainConfig, answer_nll, load_base, quiet_peft, resolve_device, train_lora

TRAINER = "finetune.lora"
ADAPTER = "adapter"


@dataclass
class FinetuneReport:
    """What one fine-tuning job did."""

    folder: Path  # the artifact version: the merged model folder
    adapter: Path  # its LoRA adapter folder
    written: bool  # False: an artifact with the same parameters and data existed (no --force)
    metrics: dict[str, Any]
    pairs: int
    validation_pairs: int
    users: int
    steps: int
    resumed_from: int
    seconds: float
    base: BaseInfo


def pairs_hash(split: PairSplit) -> str:
    """The content hash of exactly what was learned from and validated on."""
    return digest([[p.prompt, p.answer] for p in split.train] + [["v", p.prompt, p.answer] for p in split.validation],
                  16)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _checksums(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in sorted(folder.iterdir())
            if p.is_file()}


def open_finetuned(folder: str | os.PathLike[str], hint: str | None = None) -> Artifact:
    """Verify a fine-tuning artifact (every file of the merged model and of its adapter against meta.json)."""
    folder = Path(folder)
    artifact = ArtifactStore(folder.parent, str(read_meta(folder).get("name", "model")), hint).open(folder)
    recorded = artifact.meta.get("adapter_files")
    if not isinstance(recorded, dict) or not recorded:
        raise ArtifactError("meta.json lists no adapter files; this is not a fine-tuning artifact", folder, hint=hint)
    adapter = folder / ADAPTER
    for name, info in recorded.items():
        path = adapter / str(name)
        if not isinstance(name, str) or name != Path(name).name or name.startswith(".") or not path.is_file():
            raise ArtifactError(f"adapter file '{name}' is missing", adapter, hint=hint)
        if not isinstance(info, dict) or path.stat().st_size != info.get("bytes") or file_digest(path) != info.get("sha256"):
            raise ArtifactError("the file is corrupt: it differs from the one recorded when it was written", path,
                                hint=hint)
    return artifact


def load_adapter(folder: str | os.PathLike[str], base: str | os.PathLike[str] | None = None,
                 device: str = "cpu") -> tuple[Any, Any]:
    """The base model with the artifact's LoRA adapter (a peft model) and the tokenizer, after verifying it.

    ``base`` defaults to the base folder the artifact was trained from (meta.json)."""
    from peft import PeftModel

    artifact = open_finetuned(folder)
    model, tokenizer = load_base(base or artifact.meta["base"], "float32", device)
    with quiet_peft():
        return PeftModel.from_pretrained(model, str(artifact.folder / ADAPTER)), tokenizer


def finetune(
    base: str | os.PathLike[str],
    dataset: Dataset,
    *,
    output: str | os.PathLike[str],
    name: str = "model",
    lora: LoraTrainConfig | None = None,
    pairs: PairConfig | None = None,
    max_users: int | None = None,
    eval_pairs: int = 64,
    force: bool = False,
    dataset_name: str = "dataset",
    retrain_hint: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> FinetuneReport:
    """LoRA-fine-tune the causal LM in ``base`` on instruction pairs from ``dataset``'s training interactions and
    store the adapter and the merged model as a versioned artifact under ``output``.

    A checkpoint of an interrupted job (:class:`~llmrec.finetune.lora.FinetuneInterrupted`) is resumed by the
    next call with the same arguments; an artifact already trained with them is returned without training
    unless ``force``."""
    import torch

    started = time.perf_counter()
    lora = lora or LoraTrainConfig()
    pairs = pairs or PairConfig()
    device = resolve_device(lora.device)
    info = check_base(base, device=device, dtype=lora.dtype)
    split = finetune_pairs(dataset, pairs, max_users, dataset_name)
    params = {"base": info.identity(), "lora": lora.training_params(), "pairs": pairs.model_dump(mode="json"),
              "max_users": max_users}
    data_hash = pairs_hash(split)
    store = ArtifactStore(output, name, retrain_hint)
    found = store.find(params_hash(params))
    if found is not None and not force and read_meta(found).get("data_hash") == data_hash:
        artifact = open_finetuned(found, retrain_hint)
        extra = artifact.meta
        return FinetuneReport(folder=found, adapter=found / ADAPTER, written=False, metrics=artifact.metrics,
                              pairs=len(split.train), validation_pairs=len(split.validation), users=split.users,
                              steps=int(extra.get("steps", 0)), resumed_from=0,
                              seconds=time.perf_counter() - started, base=info)
    held: list[InstructionPair] = split.validation[:eval_pairs]
    progress(f"{len(split.train)} instruction pairs from {split.events} training events of {split.users} users; "
             f"{len(held)} validation pairs; base {info.architecture} ({info.parameters / 1e6:.1f}M parameters) "
             f"on {device}")
    model, tokenizer = load_base(info.path, lora.dtype, device)
    before = answer_nll(model, tokenizer, held, lora.max_length, lora.batch_size) if held else None
    checkpoints = store.checkpoint_dir(params)
    run: LoraRun = train_lora(info.path, split.train, lora, checkpoint_dir=checkpoints, data_hash=data_hash,
                              should_stop=should_stop, progress=progress, model_and_tokenizer=(model, tokenizer))
    window = max(1, len(run.losses) // 10)
    metrics: dict[str, Any] = {"train_loss_first": round(_mean(run.losses[:window]), 6),
                               "train_loss_last": round(_mean(run.losses[-window:]), 6),
                               "steps": run.steps, "train_seconds": round(run.seconds, 3)}
    if before is not None:  # no validation cases (split none): no validation metrics
        metrics["val_answer_nll_base"] = round(before, 6)
        metrics["val_answer_nll"] = round(answer_nll(run.model, tokenizer, held, lora.max_length, lora.batch_size), 6)
    with store.staging() as staging:
        run.model.save_pretrained(str(staging.folder / ADAPTER))
        merged = run.model.merge_and_unload()
        if info.torch_dtype in ("bfloat16", "float16") and lora.dtype == "float32":
            merged = merged.to(getattr(torch, info.torch_dtype))  # saved as the base was
        merged.config.use_cache = True
        merged.save_pretrained(str(staging.folder))
        tokenizer.save_pretrained(str(staging.folder))
        staging.write("train_log.json", json.dumps({"losses": run.losses, "resumed_from": run.resumed_from}))
        folder, written = store.commit(
            staging, params=params, data_hash=data_hash, trainer=TRAINER, metrics=metrics, force=force,
            extra={"base": str(info.path), "adapter": ADAPTER, "adapter_files": _checksums(staging.folder / ADAPTER),
                   "pairs": len(split.train), "validation_pairs": len(held), "users": split.users,
                   "steps": run.steps, "target_modules": run.target_modules, "device": device})
    shutil.rmtree(checkpoints, ignore_errors=True)
    return FinetuneReport(folder=folder, adapter=folder / ADAPTER, written=written, metrics=metrics,
                          pairs=len(split.train), validation_pairs=len(held), users=split.users, steps=run.steps,
                          resumed_from=run.resumed_from, seconds=time.perf_counter() - started, base=info)


__all__ = ["ADAPTER", "FinetuneReport", "TRAINER", "finetune", "load_adapter", "open_finetuned", "pairs_hash"]
