"""A trained rec-LM for inference: GPT-2 over semantic item tokens, stored as safetensors + JSON.

A model folder holds ``model.safetensors`` (the GPT-2 weights, read with safetensors: never pickle),
``vocab.json`` (:class:`~llmrec.reclm.tokens.Vocab`) and ``config.json`` (the GPT-2 architecture, the
:class:`~llmrec.reclm.config.RecLMConfig` it was trained with, and training metrics). :meth:`RecLM.load` checks
every file and raises :class:`RecLMError` naming the file that is missing or corrupt.

Scores are log-probabilities of each item as the *next item token* after a history, from a softmax over item
tokens only (rating, side and special tokens are left out). The input embedding of every token is composed
once, at load time, from ``wte`` and the vocabulary's composition matrix (see :mod:`llmrec.reclm.tokens`), so
calls only read shared tensors: one ``RecLM`` may be used from several threads at once.

torch and transformers are imported inside functions; importing this module is cheap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrec.reclm.config import RecLMConfig, RecLMError
from llmrec.reclm.tokens import BOS_ID, PAD_ID, Vocab

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

MODEL_FILE, VOCAB_FILE, CONFIG_FILE = "model.safetensors", "vocab.json", "config.json"
CONFIG_FORMAT = "llmrec.reclm/1"
#: GPT-2 config keys stored in config.json (the rest are transformers' defaults).
_GPT2_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
              "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
              "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
#: Rows scored per forward pass in batch scoring (bounds memory for long candidate lists of many users).
SCORE_CHUNK = 128
History = Sequence[tuple[str, "float | None"]]


# -- building blocks shared with training -----------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RecLMError("device 'cuda' was asked for but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise RecLMError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def gpt2_config(vocab: Vocab, config: RecLMConfig) -> GPT2Config:
    """The GPT-2 architecture for ``vocab`` and ``config``: positions for ``<bos>`` + 2 tokens per event."""
    from transformers import GPT2Config

    n_layer, n_embd, n_head = config.dimensions
    return GPT2Config(
        vocab_size=len(vocab), n_positions=2 * config.max_events + 1, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        bos_token_id=BOS_ID, eos_token_id=None, pad_token_id=PAD_ID, tie_word_embeddings=True,
    )


def new_model(gpt2: GPT2Config, seed: int | None = None) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 (seeded when ``seed`` is given), with transformers' noise silenced."""
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    if seed is not None:
        torch.manual_seed(seed)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return GPT2LMHeadModel(gpt2)
    finally:
        hf_logging.set_verbosity(previous)


def composition_tensors(vocab: Vocab, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    idx, weight = vocab.composition()
    return torch.from_numpy(idx).to(device), torch.from_numpy(weight).to(device)


def input_table(wte: torch.Tensor, comp_idx: torch.Tensor, comp_w: torch.Tensor) -> torch.Tensor:
    """Composed input embeddings ``C @ wte`` ([V, D]): item rows add mean genre and decade rows."""
    return (wte[comp_idx] * comp_w.unsqueeze(-1)).sum(dim=1)


def pad_right(sequences: Sequence[Sequence[int]], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids [B, L], attention_mask [B, L], lengths [B])``, right-padded with ``<pad>``. With causal attention
    the padding never influences real positions, so GPT-2's absolute positions need no shifting."""
    import torch

    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return ids.to(device), mask.to(device), lengths.to(device)


def next_item_logprobs(model: GPT2LMHeadModel, table: torch.Tensor, sequences: Sequence[Sequence[int]],
                       item_slice: slice, device: str) -> torch.Tensor:
    """Log-softmax over item tokens at each sequence's last position: ``[B, n_items]`` (call under no-grad)."""
    import torch

    ids, mask, lengths = pad_right(sequences, device)
    hidden = model.transformer(inputs_embeds=table[ids], attention_mask=mask).last_hidden_state
    last = hidden[torch.arange(len(sequences), device=hidden.device), lengths - 1]
    logits = model.lm_head(last)[:, item_slice]
    return torch.log_softmax(logits.float(), dim=-1)


def state_for_saving(model: GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    """The float state dict without the tied ``lm_head.weight`` (it is ``transformer.wte.weight``)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def model_bytes(model: Any) -> int:
    """Bytes of the model's tensors as stored in memory (int8 weights count 1 byte; tied tensors once)."""
    import torch

    seen: set[int] = set()
    total = 0

    def add(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            if value.is_quantized:
                key = id(value)
            else:
                key = value.untyped_storage().data_ptr() if value.numel() else id(value)
            if key in seen:
                return
            seen.add(key)
            total += value.numel() * value.element_size()
        elif isinstance(value, (tuple, list)):
            for v in value:
                add(v)

    for value in model.state_dict().values():
        add(value)
    return total


def atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; model files are meant to be shared like any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the inference object ---------------------------------------------------------------------------------------


class RecLM:
    """A GPT-2 rec-LM ready to score and recommend. Build with :meth:`load` or :func:`~llmrec.reclm.train_reclm`."""

    def __init__(self, model: GPT2LMHeadModel, vocab: Vocab, config: RecLMConfig, *, device: str = "cpu",
                 metrics: dict[str, Any] | None = None, quantization: dict[str, Any] | None = None,
                 digest: str | None = None) -> None:
        import torch

        self._device = resolve_device(device)
        self._model = model.to(self._device).eval() if quantization is None else model.eval()
        self.vocab = vocab
        self.config = config
        self.metrics: dict[str, Any] = dict(metrics or {})
        #: None for a float model; for :meth:`quantized` copies, what was quantized and the bytes saved
        self.quantization = quantization
        self._digest = digest or weights_digest(state_for_saving(model))
        comp_idx, comp_w = composition_tensors(vocab, self._device)
        with torch.inference_mode():
            wte = self._model.transformer.wte.weight
            self._table = input_table(wte, comp_idx, comp_w).detach()

    # -- facts -------------------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self._device

    @property
    def model(self) -> GPT2LMHeadModel:
        return self._model

    @property
    def gpt2_config(self) -> GPT2Config:
        return self._model.config

    @property
    def item_ids(self) -> list[str]:
        """Every item the model can score, in catalog order (the columns of :meth:`all_scores`)."""
        return list(self.vocab.item_ids)

    @property
    def parameters(self) -> int:
        """Number of parameters (the tied output head counted once)."""
        return count_parameters(self._model)

    @property
    def name(self) -> str:
        """``reclm-<size>-<10 hex of the weights' hash>`` (``-int8`` for a quantized copy)."""
        suffix = "-int8" if self.quantization is not None else ""
        return f"reclm-{self.config.size}-{self._digest[:10]}{suffix}"

    @property
    def nbytes(self) -> int:
        return model_bytes(self._model)

    def __repr__(self) -> str:
        return (f"RecLM({self.name!r}, {self.parameters} parameters, {self.vocab.n_items} items, "
                f"device={self._device!r})")

    # -- scoring -----------------------------------------------------------------------------------------------

    def encode(self, history: History) -> list[int]:
        """The token ids the model reads for a history (unknown items skipped, last ``max_events`` kept)."""
        return self.vocab.encode_events(history, self.config.max_events)

    def all_scores(self, histories: Sequence[History]) -> np.ndarray:
        """``[len(histories), n_items]`` float32 log-probabilities of every item (columns = :attr:`item_ids`)
        as the next item after each history."""
        import numpy as np
        import torch

        if not histories:
            return np.zeros((0, self.vocab.n_items), dtype=np.float32)
        sequences = [self.encode(h) for h in histories]
        out = []
        with torch.inference_mode():
            for start in range(0, len(sequences), SCORE_CHUNK):
                chunk = sequences[start:start + SCORE_CHUNK]
                logp = next_item_logprobs(self._model, self._table, chunk, self.vocab.item_slice, self._device)
                out.append(logp.cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    def _pick(self, row: np.ndarray, candidates: Sequence[str]) -> np.ndarray:
        import numpy as np

        positions = [self.vocab.item_position(c) for c in candidates]
        scores = np.full(len(candidates), -np.inf, dtype=np.float32)
        known = [i for i, p in enumerate(positions) if p is not None]
        if known:
            scores[known] = row[[positions[i] for i in known]]
        return scores

    def score(self, history: History, candidates: Sequence[str]) -> np.ndarray:
        """Log-probability of each candidate as the next item after ``history`` ((item_id, rating) pairs,
        oldest first); candidates the model does not know get ``-inf``."""
        return self._pick(self.all_scores([history])[0], candidates)

    def score_batch(self, histories: Sequence[History], candidates_list: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """:meth:`score` for several users, batched into as few forward passes as possible."""
        if len(histories) != len(candidates_list):
            raise ValueError(f"{len(histories)} histories but {len(candidates_list)} candidate lists")
        rows = self.all_scores(histories)
        return [self._pick(row, cands) for row, cands in zip(rows, candidates_list)]

    def recommend(self, history: History, n: int, allowed: Sequence[str], *,
                  exclude_seen: bool = True) -> list[tuple[str, float]]:
        """The ``n`` best next items among ``allowed``, best first, with their log-probabilities.

        Constrained decoding: every item token that is not allowed, not known to the model or (with
        ``exclude_seen``) already in ``history`` is masked, so the answer holds exactly
        ``min(n, number of distinct allowed, known, unseen ids)`` distinct ids. Ties keep ``allowed``'s order.
        """
        import numpy as np

        if n <= 0:
            return []
        seen = {item for item, _ in history} if exclude_seen else set()
        pool = [c for c in dict.fromkeys(allowed) if c not in seen and self.vocab.item_position(c) is not None]
        if not pool:
            return []
        scores = self.score(history, pool)
        order = np.argsort(-scores, kind="stable")[:n]
        return [(pool[i], float(scores[i])) for i in order]

    # -- quantization ------------------------------------------------------------------------------------------

    def quantized(self) -> RecLM:
        """A CPU copy with int8 dynamic quantization of every linear layer
        (``torch.ao.quantization.quantize_dynamic``).

        transformers' GPT-2 uses ``Conv1D`` (``x @ W + b``) for attention and MLP projections, which
        ``quantize_dynamic`` does not know and would leave in float; each is first converted to an equivalent
        ``nn.Linear`` (``weight = W.T``). The output head (tied to ``wte``) is quantized as its own int8 copy; the
        input embedding table, position embeddings and layer norms stay float32. ``.quantization`` reports
        the quantized layers and the bytes before and after. Quantized kernels run on CPU only.
        """
        import torch
        from torch import nn
        from transformers.pytorch_utils import Conv1D

        if self.quantization is not None:
            return self
        model = copy.deepcopy(self._model).cpu().eval()
        before = model_bytes(model)
        converted = []
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, Conv1D):
                    nx, nf = child.weight.shape
                    linear = nn.Linear(nx, nf)
                    with torch.no_grad():
                        linear.weight.copy_(child.weight.T)
                        linear.bias.copy_(child.bias)
                    setattr(module, child_name, linear)
                    converted.append(f"{name}.{child_name}" if name else child_name)
        linear_names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
            from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

            quantized_names = [name for name, m in model.named_modules() if isinstance(m, DynamicQuantizedLinear)]
        after = model_bytes(model)
        report = {
            "method": "torch.ao.quantization.quantize_dynamic",
            "dtype": "qint8",
            "conv1d_converted_to_linear": len(converted),
            "quantized_layers": quantized_names,
            "linear_layers_before": linear_names,
            "float_kept": ["transformer.wte (input embeddings)", "transformer.wpe", "layer norms", "biases"],
            "bytes_before": before,
            "bytes_after": after,
        }
        return RecLM(model, self.vocab, self.config, device="cpu", metrics=self.metrics, quantization=report,
                     digest=self._digest)

    # -- storage -----------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        gpt2 = self._model.config.to_dict()
        return {
            "format": CONFIG_FORMAT,
            "name": self.name,
            "gpt2": {key: gpt2.get(key) for key in _GPT2_KEYS},
            "reclm": self.config.model_dump(mode="json"),
            "metrics": _json_safe(self.metrics),
            "weights_sha256": self._digest,
        }

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors``, ``vocab.json`` and ``config.json`` into ``folder`` (created; each file
        written atomically). Quantized copies are not saved: save the float model and quantize after loading."""
        from safetensors.torch import save_file

        if self.quantization is not None:
            raise RecLMError("a quantized rec-LM cannot be saved: save the float model and call quantized() "
                             "after loading it")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = state_for_saving(self._model)
        atomic_write(folder / MODEL_FILE, lambda tmp: save_file(state, tmp, metadata={"format": CONFIG_FORMAT}))
        atomic_write(folder / VOCAB_FILE, lambda tmp: Path(tmp).write_text(self.vocab.to_json(), encoding="utf-8"))
        text = json.dumps(self.config_dict(), indent=2)
        atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> RecLM:
        """Load a saved model folder. Missing, truncated or garbage files raise :class:`RecLMError` naming the
        file; weights are read with safetensors (no pickle), shapes checked before any tensor is loaded."""
        folder = Path(folder)
        if not folder.is_dir():
            raise RecLMError(f"{folder} is not a folder: not a rec-LM model")
        for name in (MODEL_FILE, VOCAB_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                raise RecLMError(f"{folder / name} is missing: not a rec-LM model folder")
        vocab = Vocab.load(folder / VOCAB_FILE)
        gpt2, reclm_config, metrics, digest = _read_config(folder / CONFIG_FILE, vocab)
        state = _read_weights(folder / MODEL_FILE, gpt2)
        model = new_model(gpt2)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise RecLMError(f"{folder / MODEL_FILE} is corrupt: "
                             f"missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
        model.tie_weights()
        actual = weights_digest(state_for_saving(model))
        if digest is not None and digest != actual:
            raise RecLMError(f"{folder / MODEL_FILE} is corrupt: its weights do not match the hash in {CONFIG_FILE}")
        return cls(model, vocab, reclm_config, device=device, metrics=metrics, digest=actual)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def _read_config(path: Path, vocab: Vocab) -> tuple[GPT2Config, RecLMConfig, dict[str, Any], str | None]:
    from pydantic import ValidationError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecLMError(f"{path} is corrupt: not JSON ({exc})") from None
    try:
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
            raise ValueError(f"not a rec-LM config (expected format {CONFIG_FORMAT!r})")
        reclm_config = RecLMConfig.model_validate(data["reclm"])
        raw = data["gpt2"]
        if not isinstance(raw, dict):
            raise ValueError("'gpt2' must be an object")
        for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if not isinstance(raw.get(key), int) or isinstance(raw.get(key), bool) or raw[key] < 1:
                raise ValueError(f"gpt2.{key} must be a positive integer")
        if raw["vocab_size"] != len(vocab):
            raise ValueError(f"gpt2.vocab_size is {raw['vocab_size']} but {VOCAB_FILE} has {len(vocab)} tokens")
        if raw["n_positions"] < 2 * reclm_config.max_events + 1:
            raise ValueError("gpt2.n_positions is too small for reclm.max_events")
        if raw["n_embd"] % raw["n_head"]:
            raise ValueError("gpt2.n_embd must be a multiple of gpt2.n_head")
        metrics = data.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ValueError("'metrics' must be an object")
        digest = data.get("weights_sha256")
        if digest is not None and not isinstance(digest, str):
            raise ValueError("'weights_sha256' must be a string")
        from transformers import GPT2Config

        gpt2 = GPT2Config(**{k: raw[k] for k in _GPT2_KEYS if k in raw})
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise RecLMError(f"{path} is corrupt: {exc}") from None
    return gpt2, reclm_config, metrics, digest


def _read_weights(path: Path, gpt2: GPT2Config) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in _expected_shapes(gpt2).items()}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = set(handle.keys())
            if keys != set(expected):
                raise ValueError(f"tensors {sorted(keys ^ set(expected))[:5]} missing or unexpected")
            for key in keys:
                shape = tuple(handle.get_slice(key).get_shape())
                if shape != expected[key]:
                    raise ValueError(f"tensor {key} has shape {shape}, config.json implies {expected[key]}")
            return {key: handle.get_tensor(key) for key in keys}
    except RecLMError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on damaged files
        raise RecLMError(f"{path} is corrupt: {exc}") from None


def _expected_shapes(gpt2: GPT2Config) -> dict[str, Any]:
    """Names and shapes of a GPT-2 state dict for this config, without allocating it (meta device)."""
    import torch

    with torch.device("meta"):
        model = new_model(gpt2)
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


__all__ = ["CONFIG_FILE", "MODEL_FILE", "VOCAB_FILE", "RecLM"]
