"""Checks on a base model folder that run before anything is loaded: it exists, holds a causal LM with a
tokenizer, and fits in memory (parameters from the safetensors headers or config.json, times bytes per weight,
against the memory available). Each failure is one :class:`FinetuneError` saying what to do."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import FinetuneError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "float16": 2}
#: training holds the weights plus activations, the adapter and its optimizer state: the weights times this,
#: plus a fixed allowance
MEMORY_FACTOR = 1.3
MEMORY_OVERHEAD = 512 * 2**20


@dataclass(frozen=True)
class BaseInfo:
    """What the checks found out about a base model folder."""

    path: Path  # resolved
    model_type: str
    architecture: str | None
    parameters: int  # estimated
    bytes_needed: int
    bytes_available: int | None
    torch_dtype: str | None  # the dtype the weights were saved in (config.json), if it says

    def identity(self) -> dict[str, Any]:
        """What an artifact trained on this base depends on: its path, config and weight files (names and
        sizes; hashing gigabytes of weights on every run would cost more than it guards)."""
        files = sorted((p.name, p.stat().st_size) for p in self.path.iterdir()
                       if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".model"))
        config = hashlib.sha256((self.path / "config.json").read_bytes()).hexdigest()[:16]
        return {"path": str(self.path), "config": config, "files": files}


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def available_memory(device: str = "cpu") -> int | None:
    """Bytes free for the model: GPU memory for ``cuda``, else available RAM (psutil, else sysconf)."""
    if device == "cuda":
        try:
            import torch

            return int(torch.cuda.mem_get_info()[0])
        except Exception:  # pragma: no cover - no GPU to ask
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil missing
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None


def _safetensors_parameters(folder: Path) -> int | None:
    """Parameter count from the safetensors headers (8 bytes of length, then JSON): nothing is loaded."""
    files = sorted(folder.glob("*.safetensors"))
    files = [f for f in files if not f.name.startswith("adapter_")]
    if not files:
        return None
    total = 0
    for path in files:
        try:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > 100 * 2**20:
                    return None
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            count = 1
            for dim in info.get("shape", ()):
                count *= int(dim)
            total += count
    return total


def _config_parameters(config: dict[str, Any]) -> int:
    """A decoder's parameter count estimated from its config (embeddings, attention, a gated MLP per layer)."""
    c = {**config, **(config.get("text_config") or {})}

    def first(*names: str, default: int = 0) -> int:
        for name in names:
            value = c.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return int(value)
        return default

    hidden = first("hidden_size", "n_embd", "d_model", "dim")
    layers = first("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    vocab = first("vocab_size", default=32000)
    inter = first("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", default=4 * hidden)
    heads = first("num_attention_heads", "n_head", default=1)
    kv = first("num_key_value_heads", default=heads)
    experts = first("num_local_experts", "num_experts", default=1)
    tied = bool(c.get("tie_word_embeddings", True))
    attention = 2 * hidden * hidden + 2 * hidden * (hidden * kv // max(heads, 1))
    mlp = 3 * hidden * inter * experts
    return vocab * hidden * (1 if tied else 2) + layers * (attention + mlp)


def _is_causal_lm(config: dict[str, Any]) -> tuple[bool, str | None]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    architectures = [a for a in config.get("architectures") or () if isinstance(a, str)]
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if architectures:
        found = next((a for a in architectures if a in causal), None)
        return found is not None, found or architectures[0]
    ok = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return ok, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if ok else None


def check_base(path: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "float32",
               available: int | None = None) -> BaseInfo:
    """Check a base model folder without loading its weights; raises :class:`FinetuneError` (exit code 2).

    ``available`` overrides the memory measured by :func:`available_memory`."""
    folder = Path(path).expanduser()
    shown = os.path.normpath(folder)
    if not folder.exists():
        raise FinetuneError(f"base model folder {shown} not found; --base takes a local folder with a Hugging "
                            "Face causal LM (config.json, weights, tokenizer), e.g. one saved with "
                            "save_pretrained() or downloaded with `hf download MODEL --local-dir DIR`", 2)
    if not folder.is_dir():
        raise FinetuneError(f"base model {shown} is a file; --base takes the folder that holds config.json, the "
                            "weights and the tokenizer", 2)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FinetuneError(f"{shown} is not a model folder: it has no config.json; --base takes a Hugging Face "
                            "causal LM folder (config.json, *.safetensors, tokenizer files)", 2)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise FinetuneError(f"{os.path.normpath(config_path)} is not valid JSON ({exc}); is the download "
                            "complete?", 2) from None
    ok, architecture = _is_causal_lm(config)
    model_type = str(config.get("model_type") or "unknown")
    if not ok:
        what = architecture or f"model type '{model_type}'"
        raise FinetuneError(f"{shown} holds {what}, not a causal (decoder) language model; LoRA fine-tuning for "
                            "recommendations needs one that generates text (e.g. Llama, Qwen, Mistral, GPT-2: "
                            "config.json 'architectures' ending in ForCausalLM or LMHeadModel)", 2)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FinetuneError(f"{shown} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer "
                            "beside the model (tokenizer.save_pretrained(folder))", 2)
    parameters = _safetensors_parameters(folder) or _config_parameters(config)
    needed = int(parameters * BYTES_PER_WEIGHT.get(dtype, 4) * MEMORY_FACTOR) + MEMORY_OVERHEAD
    free = available if available is not None else available_memory(device)
    if free is not None and needed > free:
        where = "of GPU memory is free" if device == "cuda" else "of memory is available"
        raise FinetuneError(
            f"{shown} is too large to fine-tune here: about {parameters / 1e9:.2f}B parameters need about "
            f"{_gib(needed)} in {dtype} ({_gib(parameters * BYTES_PER_WEIGHT.get(dtype, 4))} of weights), and "
            f"{_gib(free)} {where}; use a smaller base model"
            + (" or --dtype bfloat16" if dtype == "float32" else "")
            + (" or --device cuda on a machine with a GPU" if device == "cpu" else ""), 2)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise FinetuneError(f"{shown} has config.json but no weights (*.safetensors); is the download complete?", 2)
    torch_dtype = config.get("torch_dtype") or config.get("dtype")
    return BaseInfo(path=folder.resolve(), model_type=model_type, architecture=architecture, parameters=parameters,
                    bytes_needed=needed, bytes_available=free,
                    torch_dtype=torch_dtype if isinstance(torch_dtype, str) else None)


__all__ = ["BaseInfo", "available_memory", "check_base"]
