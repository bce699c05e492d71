"""LoRA training of a Hugging Face causal LM on instruction pairs (peft), seeded and resumable.

- The prompt goes through the tokenizer's chat template when it has one (a user turn, then the assistant's
  answer), else prompt, a newline and the answer; the loss counts only the answer's tokens (and the end of
  turn), never the prompt's.
- Deterministic by seed: the adapter's initial weights, each epoch's order of pairs and each step's dropout
  all derive from ``seed`` (the step's random state is re-seeded from ``seed`` and the step number), so a run
  resumed from a checkpoint takes exactly the steps an uninterrupted one would.
- Checkpoints (every ``checkpoint_every`` steps, and when ``should_stop()`` turns true between two steps) are
  the trainable weights as safetensors, the optimizer state as a tensors-only ``torch.save`` file loaded back
  with ``torch.load(..., weights_only=True)``, and a JSON state; a checkpoint folder is replaced atomically.
  Nothing pickled is ever read from disk.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..training import TrainingInterrupted
from .data import FinetuneError, InstructionPair

IGNORE = -100
CHECKPOINT = "checkpoint"
CHECKPOINT_FORMAT = 1


class FinetuneInterrupted(TrainingInterrupted):
    """Fine-tuning stopped at a safe point; ``checkpoint`` is where it resumes from (None: nothing saved)."""

    def __init__(self, message: str, checkpoint: Path | None = None, step: int = 0) -> None:
        self.checkpoint = checkpoint
        self.step = step
        super().__init__(message)


class LoraTrainConfig(BaseModel):
    """The adapter and how it is trained."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        None, description="Names of the linear layers to adapt; default: every linear projection but the LM head.")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear"] = Field("linear", description="Learning rate after warmup.")
    warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (overrides epochs).")
    batch_size: int = Field(4, ge=1)
    max_length: int = Field(512, ge=16, description="Tokens per pair; longer prompts lose their oldest lines.")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="The dtype weights are trained in (bfloat16 halves the memory).")
    checkpoint_every: int = Field(50, ge=1, description="Save a resumable checkpoint every N steps.")

    def training_params(self) -> dict[str, Any]:
        """What the trained weights depend on (not where they were trained, nor how often saved)."""
        return self.model_dump(mode="json", exclude={"device", "checkpoint_every"})


def resolve_device(wanted: str) -> str:
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise FinetuneError("--device cuda was asked for, but torch sees no GPU; use --device cpu or auto", 2)
    return wanted


# -- loading ---------------------------------------------------------------------------------------------------


def load_base(path: str | os.PathLike[str], dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """The base model and its tokenizer from a local folder (never the network)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=getattr(torch, dtype))
    model.to(device)
    return model, tokenizer


def find_target_modules(model: Any) -> list[str]:
    """The names (last dotted part) of the model's linear projections, without the LM head: what LoRA adapts
    by default (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj for a Llama; c_attn, c_proj, c_fc
    for a GPT-2)."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
        kinds: tuple[type, ...] = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        kinds = (torch.nn.Linear,)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, kinds) and module is not head and "." in name}
    names.discard("lm_head")
    if not names:
        raise FinetuneError(f"found no linear layers to adapt in {type(model).__name__}; name them with "
                            "target_modules", 2)
    return sorted(names)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers a deprecated question (is_gradient_checkpointing); nothing for the user to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_adapter(model: Any, config: LoraTrainConfig) -> Any:
    """``model`` wrapped with a fresh LoRA adapter (its initial weights drawn from ``config.seed``)."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = config.target_modules or find_target_modules(model)
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    with quiet_peft():
        return get_peft_model(model, lora)


# -- tokenizing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt's tokens


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """The text the model sees before its answer (the chat template's user turn when there is one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def encode(tokenizer: Any, prompt: str, answer: str, max_length: int) -> Encoded:
    """Token ids of prompt + answer with labels on the answer only. With a chat template the answer is the
    assistant's turn (its end-of-turn tokens learned too); without one it ends with the EOS token. A prompt too
    long for ``max_length`` loses tokens from its start (the oldest history lines)."""
    head_text = prompt_text(tokenizer, prompt)
    head = tokenizer(head_text, add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"]
    tail: list[int] | None = None
    if getattr(tokenizer, "chat_template", None):
        full_text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False)
        if full_text.startswith(head_text):
            full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
            if full[:len(head)] == head:
                tail = full[len(head):]
    if tail is None:
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            tail = tail + [tokenizer.eos_token_id]
    tail = tail[:max(1, max_length - 8)]
    room = max_length - len(tail)
    if len(head) > room:
        head = head[len(head) - room:]
    return Encoded(input_ids=list(head) + list(tail), labels=[IGNORE] * len(head) + list(tail))


def collate(batch: Sequence[Encoded], pad_id: int, device: str) -> dict[str, Any]:
    """Right-padded tensors: input ids, attention mask, labels (IGNORE on padding)."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def answer_loss(model: Any, batch: dict[str, Any], reduction: str = "mean") -> Any:
    """Cross-entropy of the next token over labelled (answer) positions only: the mean over the batch
    (``"mean"``), its sum and count (``"sum"``), or each row's sum and count (``"none"``)."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1),
                                               ignore_index=IGNORE, reduction="none").view(target.shape)
    counts = (target != IGNORE).sum(dim=1)
    if reduction == "none":
        return losses.sum(dim=1), counts
    total, count = losses.sum(), counts.sum()
    if reduction == "sum":
        return total, count
    return total / count.clamp(min=1)


def pair_nlls(model: Any, tokenizer: Any, pairs: Sequence[InstructionPair], max_length: int = 512,
              batch_size: int = 8) -> list[float]:
    """Each pair's mean negative log-likelihood per answer token given its prompt (lower: likelier); e.g. to
    compare candidate answers to one prompt."""
    import torch

    device = str(next(model.parameters()).device)
    encoded = [encode(tokenizer, p.prompt, p.answer, max_length) for p in pairs]
    was_training = model.training
    model.eval()
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start:start + batch_size], tokenizer.pad_token_id, device)
            sums, counts = answer_loss(model, batch, reduction="none")
            out.extend((sums / counts.clamp(min=1)).tolist())
    model.train(was_training)
    return out


def answer_nll(model: Any, tokenizer: Any, pairs: Sequence[InstructionPair], max_length: int = 512,
               batch_size: int = 8) -> float:
    """Mean negative log-likelihood per answer token of ``pairs``' answers given their prompts (lower is
    better; every answer token weighs the same); what validation reports before and after fine-tuning."""
    import torch

    if not pairs:
        return float("nan")
    device = str(next(model.parameters()).device)
    encoded = [encode(tokenizer, p.prompt, p.answer, max_length) for p in pairs]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start:start + batch_size], tokenizer.pad_token_id, device)
            s, c = answer_loss(model, batch, reduction="sum")
            total += float(s)
            count += int(c)
    model.train(was_training)
    return total / max(count, 1)


# -- checkpoints -----------------------------------------------------------------------------------------------


def trainable_state(model: Any) -> dict[str, Any]:
    return {name: p.detach().to("cpu").contiguous().clone() for name, p in model.named_parameters()
            if p.requires_grad}


def save_checkpoint(folder: Path, model: Any, optimizer: Any, state: dict[str, Any]) -> Path:
    """Write a checkpoint into ``folder/checkpoint``, replacing the previous one atomically."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    work = folder / f".{CHECKPOINT}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        save_file(trainable_state(model), str(work / "adapter.safetensors"))
        torch.save(optimizer.state_dict(), work / "optimizer.pt")  # tensors, numbers and tuples only
        (work / "state.json").write_text(json.dumps({**state, "format": CHECKPOINT_FORMAT}), encoding="utf-8")
        target = folder / CHECKPOINT
        if target.exists():
            old = folder / f".old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(work, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder / CHECKPOINT


def read_checkpoint_state(folder: Path) -> dict[str, Any] | None:
    """The state of the checkpoint in ``folder``, or None when there is none or it is unreadable."""
    try:
        state = json.loads((folder / CHECKPOINT / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or not isinstance(state.get("step"), int):
        return None
    return state


def load_checkpoint(folder: Path, model: Any, optimizer: Any, device: str) -> None:
    """Restore the trainable weights (safetensors) and the optimizer state (``weights_only=True``)."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(folder / CHECKPOINT / "adapter.safetensors"))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError("the checkpoint's adapter does not match this model's")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(folder / CHECKPOINT / "optimizer.pt", map_location=device,
                                         weights_only=True))


# -- training --------------------------------------------------------------------------------------------------


@dataclass
class LoraRun:
    """A trained adapter in memory and how training went."""

    model: Any  # the peft model (base + adapter)
    tokenizer: Any
    losses: list[float]  # one per step, the whole run's (resumed steps included)
    steps: int
    resumed_from: int  # the step a checkpoint resumed at (0: from scratch)
    seconds: float
    device: str
    target_modules: list[str] = field(default_factory=list)


def _lr(config: LoraTrainConfig, step: int, total: int) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "linear":
        span = max(1, total - config.warmup_steps)
        return config.lr * max(0.0, 1.0 - (step - config.warmup_steps) / span)
    return config.lr


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def total_steps(config: LoraTrainConfig, n_pairs: int) -> int:
    per_epoch = math.ceil(n_pairs / config.batch_size)
    return config.max_steps if config.max_steps is not None else per_epoch * config.epochs


def train_lora(
    base: str | os.PathLike[str],
    pairs: Sequence[InstructionPair],
    config: LoraTrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    data_hash: str = "",
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[str], None] = lambda _: None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> LoraRun:
    """Train a LoRA adapter for the causal LM in folder ``base`` on ``pairs``.

    With ``checkpoint_dir`` a checkpoint there (same ``data_hash``) is resumed, one is saved every
    ``config.checkpoint_every`` steps and when ``should_stop()`` turns true (then :class:`FinetuneInterrupted`
    is raised), and it is removed by the caller once the result is safely stored."""
    import torch

    config = config or LoraTrainConfig()
    if not pairs:
        raise ValueError("no instruction pairs to train on")
    device = resolve_device(config.device)
    started = time.perf_counter()
    model, tokenizer = model_and_tokenizer or load_base(base, config.dtype, device)
    model.config.use_cache = False
    model = add_adapter(model, config)
    targets = list(model.peft_config["default"].target_modules or ())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    encoded = [encode(tokenizer, p.prompt, p.answer, config.max_length) for p in pairs]
    per_epoch = math.ceil(len(encoded) / config.batch_size)
    total = total_steps(config, len(encoded))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    losses: list[float] = []
    step = 0
    if folder is not None:
        state = read_checkpoint_state(folder)
        if state is not None and state.get("data_hash") == data_hash and state.get("total") == total:
            try:
                load_checkpoint(folder, model, optimizer, device)
            except (OSError, ValueError, RuntimeError) as exc:
                progress(f"ignoring an unusable checkpoint in {os.path.normpath(folder)} ({exc}); starting over")
            else:
                step = int(state["step"])
                losses = [float(v) for v in state.get("losses", [])][:step]
                progress(f"resuming from the checkpoint at step {step}/{total} in {os.path.normpath(folder)}")
        elif state is not None:
            progress("a checkpoint from other training data is ignored; starting over")
    resumed_from = step

    def checkpoint() -> Path | None:
        if folder is None:
            return None
        return save_checkpoint(folder, model, optimizer, {"step": step, "total": total, "losses": losses,
                                                          "data_hash": data_hash})

    every = max(1, total // 20)
    session_start = time.perf_counter()
    model.train()
    order: list[int] = []
    order_epoch = -1
    while step < total:
        if should_stop():
            saved = checkpoint() if step > 0 else None
            raise FinetuneInterrupted(f"after step {step}/{total}" + (
                f"; checkpoint in {os.path.normpath(saved)}" if saved else ""), saved, step)
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)).tolist()
            order_epoch = epoch
        batch = collate([encoded[i] for i in order[position * config.batch_size:(position + 1) * config.batch_size]],
                        tokenizer.pad_token_id, device)
        torch.manual_seed(config.seed * 1_000_003 + step)  # the step's dropout, the same on a resumed run
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, step, total)
        loss = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % every == 0 or step == total:
            done = step - resumed_from
            rate = done / max(time.perf_counter() - session_start, 1e-9)
            recent = losses[-every:]
            progress(f"step {step}/{total} (epoch {epoch + 1}) loss {sum(recent) / len(recent):.4f} · "
                     f"{rate:.2f} steps/s · ETA {_eta((total - step) / rate)}")
        if folder is not None and step % config.checkpoint_every == 0 and step < total:
            checkpoint()
    model.eval()
    return LoraRun(model=model, tokenizer=tokenizer, losses=losses, steps=total, resumed_from=resumed_from,
                   seconds=time.perf_counter() - started, device=device, target_modules=sorted(targets))


__all__ = ["FinetuneInterrupted", "LoraRun", "LoraTrainConfig", "add_adapter", "answer_loss", "answer_nll",
           "collate", "encode", "find_target_modules", "load_base", "load_checkpoint", "pair_nlls", "prompt_text",
           "read_checkpoint_state", "save_checkpoint", "total_steps", "train_lora"]
