"""Training a rec-LM: next-token loss over users' token sequences, early stopping on validation NDCG@10.

Deterministic on CPU for a given seed: the model is initialised after ``torch.manual_seed(seed)``, each epoch's
user order comes from ``numpy.random.default_rng([seed, epoch])`` and its dropout from
``torch.manual_seed`` of a value derived from (seed, epoch), and ``torch.use_deterministic_algorithms`` is on
while training (restored afterwards). Because every epoch's randomness depends only on (seed, epoch), a run
resumed from a checkpoint produces the same weights as one that was never interrupted.

Checkpoints (``checkpoint_dir/checkpoint.safetensors``, written atomically after every epoch) hold the current
weights, the best weights so far and AdamW's per-parameter state (``exp_avg``, ``exp_avg_sq``, ``step``) as
safetensors tensors; the scalars (epoch, best epoch and score, per-epoch history, elapsed seconds, and a
fingerprint of the config, vocabulary and data) are JSON in the file's safetensors metadata. Nothing is
pickled. A checkpoint is resumed only when its fingerprint matches the current run (the same config apart
from ``max_epochs``, ``patience``, ``threads`` and ``device``, the same vocabulary, training sequences and
validation cases); otherwise training starts afresh and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrec.metrics import ndcg_at_k
from llmrec.reclm.config import RecLMConfig, RecLMError
from llmrec.reclm.model import (
    RecLM,
    atomic_write,
    composition_tensors,
    count_parameters,
    gpt2_config,
    input_table,
    new_model,
    next_item_logprobs,
    pad_right,
    resolve_device,
    state_for_saving,
)
from llmrec.reclm.tokens import Vocab
from llmrec.training import TrainingInterrupted as _TrainingInterrupted

if TYPE_CHECKING:
    import numpy as np

    from llmrec.data.catalog import Catalog, Interactions
    from llmrec.data.dataset import EvalCase

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "llmrec.reclm.checkpoint/1"
#: Config fields that may change between a checkpoint and the run resuming it.
_RESUMABLE_CHANGES = frozenset({"max_epochs", "patience", "threads", "device"})
VALIDATION_K = 10


class TrainingInterrupted(_TrainingInterrupted):
    """``should_stop()`` asked training to stop; raised after the epoch finished and its checkpoint was written.

    ``checkpoint`` is the checkpoint file to resume from (None without a ``checkpoint_dir``), ``epoch`` the last
    finished epoch, ``result`` a :class:`TrainedRecLM` holding the best weights so far.
    """

    def __init__(self, epoch: int, checkpoint: Path | None, result: TrainedRecLM) -> None:
        self.epoch = epoch
        self.checkpoint = checkpoint
        self.result = result
        where = f"; resume from {checkpoint}" if checkpoint is not None else " (no checkpoint_dir: nothing to resume)"
        super().__init__(f"rec-LM training stopped on request after epoch {epoch}{where}")


class TrainedRecLM(RecLM):
    """A :class:`RecLM` fresh from training: ``metrics`` {best_epoch, epochs_run, val_ndcg10, train_loss,
    seconds, parameters} and ``history`` (one dict per epoch, as passed to ``progress``)."""

    def __init__(self, *args: Any, history: Sequence[Mapping[str, Any]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history = [dict(h) for h in history]


# -- validation -------------------------------------------------------------------------------------------------


class _Cases:
    """Validation cases prepared once: token sequences, excluded item positions, relevant ids."""

    def __init__(self, vocab: Vocab, log: Interactions, cases: Sequence[EvalCase], max_events: int) -> None:
        self.sequences: list[list[int]] = []
        self.excluded: list[list[int]] = []
        self.relevant: list[frozenset[str]] = []
        self.ids: list[str] = []
        for case in cases:
            user = str(case.inputs.get("user_id", case.id))
            self.sequences.append(vocab.encode_history(log.history(user), max_events))
            out = set(case.exclude) | set(log.seen(user))
            self.excluded.append(sorted(p for p in map(vocab.item_position, out) if p is not None))
            self.relevant.append(frozenset(case.relevant))
            self.ids.append(case.id)

    def __len__(self) -> int:
        return len(self.sequences)


def _ndcg(logp: np.ndarray, cases: _Cases, offset: int, item_ids: Sequence[str], k: int) -> list[float]:
    import numpy as np

    out = []
    for row in range(logp.shape[0]):
        scores = logp[row].copy()
        scores[cases.excluded[offset + row]] = -np.inf
        top = _top_k(scores, k)
        ranked = [item_ids[i] for i in top if np.isfinite(scores[i])]
        out.append(ndcg_at_k(ranked, cases.relevant[offset + row], k))
    return out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first; ties broken by index (stable)."""
    import numpy as np

    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    # Bring in every index tied with the k-th score so that the stable sort decides ties by index.
    kth = scores[part].min()
    pool = np.flatnonzero(scores >= kth)
    return pool[np.argsort(-scores[pool], kind="stable")][:k]


def _validate(model: Any, table: Any, cases: _Cases, vocab: Vocab, device: str, k: int = VALIDATION_K,
              batch: int = 128) -> float:
    import torch

    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(cases), batch):
            chunk = cases.sequences[start:start + batch]
            logp = next_item_logprobs(model, table, chunk, vocab.item_slice, device).cpu().numpy()
            scores.extend(_ndcg(logp, cases, start, vocab.item_ids, k))
    return float(sum(scores) / len(scores)) if scores else 0.0


def evaluate_ndcg(rec: RecLM, log: Interactions, cases: Sequence[EvalCase], k: int = 10,
                  batch_size: int = 128) -> float:
    """Mean NDCG@k of ``rec`` over ``cases`` with full ranking: each user's history in ``log`` is the context,
    every item the user has in ``log`` or in ``case.exclude`` is removed, ``case.relevant`` are the hits."""
    prepared = _Cases(rec.vocab, log, cases, rec.config.max_events)
    if not len(prepared):
        return 0.0
    scores: list[float] = []
    for start in range(0, len(prepared), batch_size):
        rows = prepared.sequences[start:start + batch_size]
        logp = _all_scores_from_tokens(rec, rows)
        scores.extend(_ndcg(logp, prepared, start, rec.vocab.item_ids, k))
    return float(sum(scores) / len(scores))


def _all_scores_from_tokens(rec: RecLM, sequences: list[list[int]]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return next_item_logprobs(rec.model, rec._table, sequences, rec.vocab.item_slice, rec.device).cpu().numpy()


# -- checkpoints ------------------------------------------------------------------------------------------------


def _fingerprint(config: RecLMConfig, vocab: Vocab, sequences: list[list[int]], cases: _Cases) -> str:
    h = hashlib.sha256()
    kept = {k: v for k, v in config.model_dump(mode="json").items() if k not in _RESUMABLE_CHANGES}
    h.update(json.dumps(kept, sort_keys=True).encode())
    h.update(vocab.fingerprint().encode())
    h.update(json.dumps(sequences, separators=(",", ":")).encode())
    h.update(json.dumps([cases.ids, cases.sequences, cases.excluded, [sorted(r) for r in cases.relevant]],
                        separators=(",", ":")).encode())
    return h.hexdigest()


def save_checkpoint(path: Path, model: Any, best: dict[str, Any], optimizer: Any, scalars: dict[str, Any],
                    fmt: str = CHECKPOINT_FORMAT) -> None:
    """A resumable training state in one safetensors file (no pickle): the model, the best state so far, the
    optimizer's tensors and JSON scalars under format ``fmt``. Also the distillation trainer's."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in state_for_saving(model).items()}
    tensors.update({f"best.{k}": v.contiguous() for k, v in best.items()})
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous().reshape(value.shape)
    metadata = {"format": fmt, "scalars": json.dumps(scalars)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: Path, fingerprint: str, fmt: str = CHECKPOINT_FORMAT) -> tuple[
        dict[str, Any], dict[str, Any], dict[str, Any], dict[int, dict[str, Any]]] | None:
    """``(scalars, model_state, best_state, optimizer_state)``, or None when absent, unreadable or from another
    run (different fingerprint)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != fmt:
                return None
            scalars = json.loads(metadata["scalars"])
            if scalars.get("fingerprint") != fingerprint:
                return None
            model_state: dict[str, Any] = {}
            best_state: dict[str, Any] = {}
            optim_state: dict[int, dict[str, Any]] = {}
            for key in handle.keys():
                kind, _, rest = key.partition(".")
                if kind == "model":
                    model_state[rest] = handle.get_tensor(key)
                elif kind == "best":
                    best_state[rest] = handle.get_tensor(key)
                elif kind == "optim":
                    index, _, name = rest.partition(".")
                    optim_state.setdefault(int(index), {})[name] = handle.get_tensor(key)
    except Exception:  # a damaged checkpoint is not fatal: start afresh
        return None
    return scalars, model_state, best_state, optim_state


# -- training ---------------------------------------------------------------------------------------------------


def _sequences(vocab: Vocab, log: Interactions, max_events: int) -> list[list[int]]:
    out = []
    for user in log.users():
        ids = vocab.encode_history(log.history(user), max_events)
        if len(ids) > 1:
            out.append(ids)
    return out


def _optimizer(model: Any, config: RecLMConfig) -> Any:
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)


def train_reclm(
    catalog: Catalog,
    train: Interactions,
    validation: Sequence[EvalCase],
    config: RecLMConfig | Mapping[str, Any] | None = None,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
) -> TrainedRecLM:
    """Train a GPT-2 rec-LM on ``train`` and keep the epoch with the best validation NDCG@10.

    Each validation case is scored with the user's history in ``train`` as context, by full ranking over every
    catalog item not in ``case.exclude`` or the user's ``train`` history; ``case.relevant`` are the hits.
    ``progress(info)`` is called after every epoch with {epoch, max_epochs, train_loss, val_ndcg10, best_epoch,
    seconds (elapsed in all), epoch_seconds, eta_seconds (upper bound: up to max_epochs)}. When ``should_stop()``
    returns True after an epoch, :class:`TrainingInterrupted` is raised (checkpoint written first).

    ``epochs`` trains exactly that many epochs and keeps the last one, with no early stopping; ``validation``
    may then be empty (the final refit on every training event, once validation has picked the epoch count).
    Raises :class:`RecLMError` for an empty catalog, an empty log (or one that names no catalog item) and no
    validation cases.
    """
    import numpy as np
    import torch

    if config is None:
        config = RecLMConfig()
    elif not isinstance(config, RecLMConfig):
        config = RecLMConfig.model_validate(dict(config))
    if len(catalog) == 0:
        raise RecLMError("cannot train a rec-LM on an empty catalog (no items to make tokens of)")
    if len(train) == 0:
        raise RecLMError("cannot train a rec-LM on an empty training log (no interactions)")
    validation = list(validation)
    if epochs is not None:
        if epochs < 1:
            raise RecLMError(f"epochs must be at least 1, got {epochs}")
        config = config.model_copy(update={"max_epochs": epochs, "patience": epochs + 1})
    elif not validation:
        raise RecLMError("a rec-LM needs validation cases for early stopping; none were given")
    vocab = Vocab.from_catalog(catalog)
    sequences = _sequences(vocab, train, config.max_events)
    if not sequences:
        raise RecLMError(f"none of the {len(train)} training interactions names an item of the catalog")
    if config.validation_users is not None and len(validation) > config.validation_users:
        validation = random.Random(config.seed).sample(validation, config.validation_users)
    cases = _Cases(vocab, train, validation, config.max_events)
    fingerprint = _fingerprint(config, vocab, sequences, cases)
    device = resolve_device(config.device)

    threads_before = torch.get_num_threads()
    deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if device == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _train(config, vocab, sequences, cases, fingerprint, device, progress, should_stop,
                      Path(checkpoint_dir) if checkpoint_dir is not None else None)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])


def _train(config: RecLMConfig, vocab: Vocab, sequences: list[list[int]], cases: _Cases, fingerprint: str,
           device: str, progress: Callable[[dict[str, Any]], None] | None, should_stop: Callable[[], bool] | None,
           checkpoint_dir: Path | None) -> TrainedRecLM:
    import numpy as np
    import torch

    gpt2 = gpt2_config(vocab, config)
    model = new_model(gpt2, seed=config.seed).to(device)
    comp_idx, comp_w = composition_tensors(vocab, device)
    optimizer = _optimizer(model, config)

    epoch, best_epoch, best_score, stale, elapsed = 0, 0, -math.inf, 0, 0.0
    history: list[dict[str, Any]] = []
    best_state = {k: v.clone() for k, v in state_for_saving(model).items()}
    checkpoint = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint, fingerprint)
        if loaded is not None:
            scalars, model_state, best_loaded, optim_state = loaded
            model.load_state_dict(model_state, strict=False)
            model.tie_weights()
            best_state = best_loaded
            fresh = optimizer.state_dict()
            optimizer.load_state_dict({"state": optim_state, "param_groups": fresh["param_groups"]})
            epoch, best_epoch, best_score = scalars["epoch"], scalars["best_epoch"], scalars["best_score"]
            stale, elapsed, history = scalars["stale"], scalars["seconds"], scalars["history"]

    parameters = count_parameters(model)
    n = len(sequences)
    while epoch < config.max_epochs and stale < config.patience:
        epoch += 1
        started = time.perf_counter()
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        model.train()
        loss_sum, token_count = 0.0, 0
        for start in range(0, n, config.batch_size):
            batch = [sequences[i] for i in order[start:start + config.batch_size]]
            ids, mask, _ = pad_right(batch, device)
            labels = ids.masked_fill(mask == 0, -100)
            table = input_table(model.transformer.wte.weight, comp_idx, comp_w)
            logits = model(inputs_embeds=table[ids], attention_mask=mask).logits
            # next-token loss: position t predicts token t+1; padding is ignored
            targets = labels[:, 1:].reshape(-1)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets,
                                                     ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            tokens = int((targets != -100).sum())
            loss_sum += float(loss.detach()) * tokens
            token_count += tokens
        model.eval()
        with torch.inference_mode():
            table = input_table(model.transformer.wte.weight, comp_idx, comp_w)
        score = _validate(model, table, cases, vocab, device) if len(cases) else math.nan
        if not len(cases):  # a fixed number of epochs: the last one is kept
            best_epoch, best_state = epoch, {k: v.clone() for k, v in state_for_saving(model).items()}
        elif score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = {k: v.clone() for k, v in state_for_saving(model).items()}
        else:
            stale += 1
        epoch_seconds = time.perf_counter() - started
        elapsed += epoch_seconds
        remaining = config.max_epochs - epoch if stale < config.patience else 0
        info = {"epoch": epoch, "max_epochs": config.max_epochs, "train_loss": loss_sum / max(token_count, 1),
                "val_ndcg10": score, "best_epoch": best_epoch, "seconds": elapsed, "epoch_seconds": epoch_seconds,
                "eta_seconds": elapsed / max(len(history) + 1, 1) * remaining}
        history.append(info)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, best_state, optimizer, {
                "fingerprint": fingerprint, "epoch": epoch, "best_epoch": best_epoch, "best_score": best_score,
                "stale": stale, "seconds": elapsed, "history": history})
        if progress is not None:
            progress(dict(info))
        if should_stop is not None and epoch < config.max_epochs and stale < config.patience and should_stop():
            raise TrainingInterrupted(epoch, checkpoint, _result(gpt2, best_state, vocab, config, device, history,
                                                                 best_epoch, best_score, elapsed, parameters))
    return _result(gpt2, best_state, vocab, config, device, history, best_epoch, best_score, elapsed, parameters)


def _result(gpt2: Any, best_state: dict[str, Any], vocab: Vocab, config: RecLMConfig, device: str,
            history: list[dict[str, Any]], best_epoch: int, best_score: float, elapsed: float,
            parameters: int) -> TrainedRecLM:
    model = new_model(gpt2)
    model.load_state_dict(best_state, strict=False)
    model.tie_weights()
    metrics = {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "val_ndcg10": best_score if math.isfinite(best_score) else 0.0,
        "train_loss": history[-1]["train_loss"] if history else None,
        "seconds": round(elapsed, 3),
        "parameters": parameters,
    }
    return TrainedRecLM(model, vocab, config, device=device, metrics=metrics, history=history)


__all__ = ["CHECKPOINT_FILE", "TrainedRecLM", "TrainingInterrupted", "evaluate_ndcg", "train_reclm"]
