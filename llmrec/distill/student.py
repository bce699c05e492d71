"""Training the student: a rec-LM fitted to the teacher's pairwise preferences.

The student is a :mod:`llmrec.reclm` GPT-2 (any size; ``tiny`` in the benchmark). Its pair logit is the
difference of its next-item log-probabilities of the two items (:mod:`llmrec.distill.scoring`), so a distilled
student is an ordinary rec-LM folder, used wherever one is. It starts either from a rec-LM trained on next-item
loss without the teacher (``init: next-item``; :func:`llmrec.reclm.train_reclm` with ``init_epochs``, early
stopping on validation NDCG@10) or from random weights (``init: scratch``), then learns on the transfer pairs
with the loss of :class:`~llmrec.distill.config.DistillConfig`. After every epoch the student's accuracy on the
*validation* pairs (true labels; test is never looked at) decides which epoch is kept; epoch 0, the starting
point, competes too, so fine-tuning is only kept when it helped on validation. Training stops after
``patience`` epochs that did not beat the best fine-tuned epoch (or after ``epochs``).

Hard examples (``hard_examples = f < 1``): the teacher's probability of the true answer is computed for every
transfer pair; pairs are sorted by it, lowest first (ties by position), and only the first ``ceil(f * n)`` are
kept. Pairs where the teacher is confident and correct are dropped first; pairs it gets wrong are kept.

Deterministic on CPU for a seed: the student is initialised after ``torch.manual_seed(seed)`` (or is the seeded
next-item model), each epoch's user order comes from ``numpy.random.default_rng([seed, epoch])`` and its dropout
from ``torch.manual_seed`` of a value derived from (seed, epoch), with ``torch.use_deterministic_algorithms`` on.
A checkpoint (``checkpoint_dir/finetune.safetensors``: current and best weights, AdamW state, and JSON scalars
in its metadata; nothing pickled) is written after every epoch, so a stopped run resumes where it stopped and
ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.distill.config import DistillConfig, DistillError
from llmrec.distill.pairs import PairSet, accuracy
from llmrec.distill.scoring import Plan, composed_table, group_logits, make_plan, plan_logits, sigmoid
from llmrec.reclm import RecLM, Vocab, train_reclm
from llmrec.reclm.config import RecLMConfig
from llmrec.reclm.model import gpt2_config, new_model, resolve_device, state_for_saving
from llmrec.reclm.train import load_checkpoint, save_checkpoint
from llmrec.training import TrainingInterrupted

if TYPE_CHECKING:
    from llmrec.data.catalog import Catalog, Interactions
    from llmrec.data.dataset import EvalCase
    from llmrec.reclm import RecLM

CHECKPOINT_FILE = "finetune.safetensors"
CHECKPOINT_FORMAT = "llmrec.distill.checkpoint/1"
#: Config fields that may change between a checkpoint and the run resuming it.
_RESUMABLE = frozenset({"epochs", "patience", "threads", "device"})


@dataclass
class StudentResult:
    """The distilled student (best validation epoch), the next-item model it started from (None for
    ``init: scratch``), one dict per epoch (epoch 0: the starting point) and summary metrics."""

    rec: RecLM
    init: RecLM | None
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def hard_subset(label: np.ndarray, teacher_z: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the pairs to keep: the ``ceil(fraction * n)`` pairs whose true answer the teacher gives the
    lowest probability, in their original order."""
    n = len(label)
    if fraction >= 1.0 or n == 0:
        return np.arange(n)
    p_first = sigmoid(teacher_z)
    p_true = np.where(np.asarray(label) > 0.5, p_first, 1.0 - p_first)
    keep = max(1, math.ceil(fraction * n))
    return np.sort(np.argsort(p_true, kind="stable")[:keep])


def student_config(student: RecLMConfig | str, config: DistillConfig) -> RecLMConfig:
    """The rec-LM config of the student: its size (or a full RecLMConfig) with the distillation's seed, device,
    threads and ``init_epochs``."""
    base = RecLMConfig(size=student) if isinstance(student, str) else student  # type: ignore[arg-type]
    return base.model_copy(update={"seed": config.seed, "device": config.device, "threads": config.threads,
                                   "max_epochs": config.init_epochs})


def train_next_item(catalog: Catalog, train: Interactions, validation: list[EvalCase], student: RecLMConfig,
                    *, progress: Callable[[str], None], should_stop: Callable[[], bool] | None,
                    checkpoint_dir: Path | None, label: str) -> RecLM:
    """A rec-LM trained on next-item loss only (the no-teacher baseline and the ``next-item`` init)."""
    def epoch(info: dict[str, Any]) -> None:
        progress(f"{label}: epoch {info['epoch']}/{info['max_epochs']}, loss {info['train_loss']:.4f}, "
                 f"validation NDCG@10 {info['val_ndcg10']:.4f} ({info['epoch_seconds']:.1f}s)")

    return train_reclm(catalog, train, validation, student, progress=epoch, should_stop=should_stop,
                       checkpoint_dir=checkpoint_dir)


def _fingerprint(student: RecLMConfig, config: DistillConfig, vocab_fp: str, transfer: PairSet,
                 teacher_z: np.ndarray, validation: PairSet, start: str) -> str:
    h = hashlib.sha256()
    kept = {k: v for k, v in config.model_dump(mode="json").items() if k not in _RESUMABLE}
    h.update(json.dumps([student.model_dump(mode="json"), kept, vocab_fp, start], sort_keys=True).encode())
    for pairs in (transfer, validation):
        h.update(pairs_digest(pairs).encode())
    h.update(np.ascontiguousarray(teacher_z, dtype=np.float64).tobytes())
    return h.hexdigest()


def pairs_digest(pairs: PairSet) -> str:
    """A content hash of a pair set (histories, items, labels)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(c) for c in pairs.contexts], separators=(",", ":")).encode())
    for arr in (pairs.context, pairs.lengths, pairs.label):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\x1f".join(pairs.first).encode())
    h.update("\x1e".join(pairs.second).encode())
    return h.hexdigest()[:16]


def _pair_losses(z: Any, target_z: Any, y: Any, config: DistillConfig) -> tuple[Any, Any, Any]:
    """``(loss, mean KL, mean CE)`` of student logits ``z`` against teacher logits ``target_z`` and labels ``y``."""
    import torch.nn.functional as F

    t = config.temperature
    log_q, log_1q = F.logsigmoid(target_z / t), F.logsigmoid(-target_z / t)
    log_p, log_1p = F.logsigmoid(z / t), F.logsigmoid(-z / t)
    kl = (log_q.exp() * (log_q - log_p) + log_1q.exp() * (log_1q - log_1p)).mean()
    ce = F.binary_cross_entropy_with_logits(z, y)
    loss = t * t * kl if config.loss == "kl" else config.alpha * t * t * kl + (1 - config.alpha) * ce
    return loss, kl, ce


def _epoch_zero(model: Any, vocab: Any, device: str, plan: Plan, target: np.ndarray, label: np.ndarray,
                val_plan: Plan, val_label: np.ndarray, config: DistillConfig) -> dict[str, Any]:
    import torch

    model.eval()
    with torch.inference_mode():
        table = composed_table(model, vocab, device)
    z = plan_logits(model, table, plan, device)
    loss, kl, ce = _pair_losses(torch.as_tensor(np.clip(z, -50, 50)), torch.as_tensor(target),
                                torch.as_tensor(label, dtype=torch.float64), config)
    val = accuracy(sigmoid(plan_logits(model, table, val_plan, device)), val_label) if len(val_plan) else 0.0
    return {"epoch": 0, "loss": float(loss), "kl": float(kl), "ce": float(ce), "val_accuracy": val,
            "seconds": 0.0}


def train_student(
    catalog: Catalog,
    transfer: PairSet,
    teacher_z: np.ndarray,
    validation: PairSet,
    student: RecLMConfig | str = "tiny",
    config: DistillConfig | Mapping[str, Any] | None = None,
    *,
    init_data: tuple[Interactions, list[EvalCase]] | None = None,
    init_model: RecLM | None = None,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> StudentResult:
    """Fit a student rec-LM to ``teacher_z`` (the teacher's pair logits on ``transfer``), keeping the epoch
    with the best accuracy on ``validation`` pairs.

    ``init: next-item`` starts from ``init_model`` when given, else trains one on ``init_data`` (the training
    log and validation cases for early stopping). Raises :class:`~llmrec.training.TrainingInterrupted` when
    ``should_stop()`` turns true (after the current batch; the last finished epoch's checkpoint is kept)."""
    import torch


    config = DistillConfig() if config is None else (
        config if isinstance(config, DistillConfig) else DistillConfig.model_validate(dict(config)))
    s_config = student_config(student, config)
    say = progress or (lambda _: None)
    stop = should_stop or (lambda: False)
    if len(transfer) == 0:
        raise DistillError("no transfer pairs to learn from (no user has a liked event after an earlier one)")
    teacher_z = np.asarray(teacher_z, dtype=np.float64)
    if teacher_z.shape != (len(transfer),):
        raise ValueError(f"{teacher_z.shape[0]} teacher logits for {len(transfer)} transfer pairs")
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    vocab = Vocab.from_catalog(catalog)
    device = resolve_device(config.device)

    threads_before = torch.get_num_threads()
    det_before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    started = time.perf_counter()
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if device == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        init_seconds = 0.0
        if config.init == "next-item":
            if init_model is None:
                if init_data is None:
                    raise ValueError("init 'next-item' needs init_model or init_data (training log, validation cases)")
                say(f"student init: a {s_config.size} rec-LM on next-item loss (no teacher), "
                    f"at most {s_config.max_epochs} epochs")
                init_model = train_next_item(catalog, init_data[0], list(init_data[1]), s_config, progress=say,
                                             should_stop=stop, checkpoint_dir=None if ckpt_dir is None else ckpt_dir / "init",
                                             label="student init")
                init_seconds = float(init_model.metrics.get("seconds", 0.0) or 0.0)
            if init_model.vocab.fingerprint() != vocab.fingerprint():
                raise DistillError("the init model's vocabulary is not the catalog's")
            model = copy.deepcopy(init_model.model).to(device)
            start = init_model.name
        else:
            model = new_model(gpt2_config(vocab, s_config), seed=config.seed).to(device)
            start = f"scratch-{config.seed}"
        keep = hard_subset(transfer.label, teacher_z, config.hard_examples)
        kept = transfer.subset(keep) if len(keep) < len(transfer) else transfer
        kept_z = teacher_z[keep]
        plan = make_plan(vocab, s_config.max_events, kept.histories, kept.pairs)
        val_plan = make_plan(vocab, s_config.max_events, validation.histories, validation.pairs)
        result = _fit(model, vocab, device, plan, kept_z, kept.label, val_plan, validation.label, config, s_config,
                      say, stop, ckpt_dir, _fingerprint(s_config, config, vocab.fingerprint(), kept, kept_z,
                                                         validation, start))
        history, best_state, best_epoch, fit_seconds, stopped = result
        if stopped is not None:
            where = (f"; the checkpoint {ckpt_dir / CHECKPOINT_FILE} resumes it" if ckpt_dir is not None
                     else " (no checkpoint folder: nothing to resume)")
            raise TrainingInterrupted(f"distillation stopped {stopped}{where}")
        final = new_model(gpt2_config(vocab, s_config))
        final.load_state_dict(best_state, strict=False)
        final.tie_weights()
        best = history[best_epoch]
        metrics = {
            "best_epoch": best_epoch, "epochs_run": len(history) - 1, "val_accuracy": best["val_accuracy"],
            "val_accuracy_start": history[0]["val_accuracy"], "kl_start": history[0]["kl"],
            "kl_end": history[-1]["kl"], "transfer_pairs": len(kept), "transfer_pairs_offered": len(transfer),
            "init": config.init, "init_seconds": round(init_seconds, 3), "finetune_seconds": round(fit_seconds, 3),
            "seconds": round(time.perf_counter() - started, 3), "parameters": sum(p.numel() for p in final.parameters()),
        }
        rec = RecLM(final, vocab, s_config, device=device, metrics=metrics)
        return StudentResult(rec=rec, init=init_model if config.init == "next-item" else None, history=history,
                             metrics=metrics)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before[0], warn_only=det_before[1])


def _fit(model: Any, vocab: Any, device: str, plan: Plan, target_np: np.ndarray, label_np: np.ndarray,
         val_plan: Plan, val_label: np.ndarray, config: DistillConfig, s_config: RecLMConfig,
         say: Callable[[str], None], stop: Callable[[], bool], ckpt_dir: Path | None,
         fingerprint: str) -> tuple[list[dict[str, Any]], dict[str, Any], int, float, str | None]:
    import torch


    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    target = torch.as_tensor(target_np, dtype=torch.float32, device=device)
    label = torch.as_tensor(label_np, dtype=torch.float32, device=device)
    checkpoint = ckpt_dir / CHECKPOINT_FILE if ckpt_dir is not None else None
    loaded = load_checkpoint(checkpoint, fingerprint, CHECKPOINT_FORMAT) if checkpoint is not None else None
    if loaded is not None:
        scalars, model_state, best_state, optim_state = loaded
        model.load_state_dict(model_state, strict=False)
        model.tie_weights()
        fresh = optimizer.state_dict()
        optimizer.load_state_dict({"state": optim_state, "param_groups": fresh["param_groups"]})
        epoch, best_epoch, best_score, stale = scalars["epoch"], scalars["best_epoch"], scalars["best_score"], scalars["stale"]
        tuned, history, elapsed = scalars["tuned"], scalars["history"], scalars["seconds"]
        say(f"distillation: resuming after epoch {epoch} from {checkpoint}")
    else:
        history = [_epoch_zero(model, vocab, device, plan, target_np, label_np, val_plan, val_label, config)]
        epoch, best_epoch, best_score, stale, elapsed = 0, 0, history[0]["val_accuracy"], 0, 0.0
        tuned = -1.0  # the best validation accuracy of a fine-tuned epoch: patience counts against it
        best_state = {k: v.clone() for k, v in state_for_saving(model).items()}
        say(f"distillation: {len(plan)} transfer pairs of {len(plan.leaders)} histories; start: KL "
            f"{history[0]['kl']:.4f}, validation accuracy {best_score:.4f}")
    n_groups = len(plan.leaders)
    while epoch < config.epochs and stale < config.patience:
        epoch += 1
        t0 = time.perf_counter()
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(n_groups)
        model.train()
        sums = np.zeros(3)
        count = 0
        for start in range(0, n_groups, config.batch_size):
            groups = [int(g) for g in order[start:start + config.batch_size]]
            table = composed_table(model, vocab, device)
            idx, z = group_logits(model, table, plan, groups, device)
            if not len(idx):
                continue
            sel = torch.as_tensor(idx, device=device)
            loss, kl, ce = _pair_losses(z, target[sel], label[sel], config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            sums += np.array([float(loss.detach()), float(kl.detach()), float(ce.detach())]) * len(idx)
            count += len(idx)
            if stop():
                return (history, best_state, best_epoch, elapsed + time.perf_counter() - t0,
                        f"during epoch {epoch} (a rerun starts that epoch again)")
        model.eval()
        with torch.inference_mode():
            table = composed_table(model, vocab, device)
        val = accuracy(sigmoid(plan_logits(model, table, val_plan, device)), val_label) if len(val_plan) else 0.0
        if val > best_score:  # epoch 0 (the starting point) competes: fine-tuning is kept only when it helped
            best_score, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in state_for_saving(model).items()}
        if val > tuned:
            tuned, stale = val, 0
        else:
            stale += 1
        seconds = time.perf_counter() - t0
        elapsed += seconds
        loss_m, kl_m, ce_m = (sums / max(count, 1)).tolist()
        history.append({"epoch": epoch, "loss": loss_m, "kl": kl_m, "ce": ce_m, "val_accuracy": val,
                        "seconds": seconds})
        say(f"distillation: epoch {epoch}/{config.epochs}, loss {loss_m:.4f} (KL {kl_m:.4f}, CE {ce_m:.4f}), "
            f"validation accuracy {val:.4f}{' (best)' if best_epoch == epoch else ''} ({seconds:.1f}s)")
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, best_state, optimizer, fmt=CHECKPOINT_FORMAT, scalars={
                "fingerprint": fingerprint, "epoch": epoch, "best_epoch": best_epoch, "best_score": best_score,
                "stale": stale, "tuned": tuned, "seconds": elapsed, "history": history})
        if stop() and epoch < config.epochs and stale < config.patience:
            return history, best_state, best_epoch, elapsed, f"after epoch {epoch}"
    return history, best_state, best_epoch, elapsed, None


__all__ = ["StudentResult", "hard_subset", "pairs_digest", "student_config", "train_next_item", "train_student"]
