"""The models behind :class:`llmrec.embed.Embedder`: a sentence-transformers model, or the same model run by
ONNX Runtime.

``import sentence_transformers`` costs seconds of CPU (it pulls in torch, transformers and scikit-learn) on every
process that embeds anything. A sentence-transformers folder whose pipeline is a transformer, mean or CLS pooling
and (optionally) normalisation is run instead by ONNX Runtime with the folder's own ``tokenizers`` tokenizer:
a fraction of a second to import, and less CPU per query. The vectors are those of sentence-transformers to
within :data:`ONNX_TOLERANCE` per component (``tests/embed/test_encoders.py`` checks it on MiniLM).

Where the ONNX file comes from:

- ``onnx/model.onnx`` inside the model folder, when the folder ships one (many Hugging Face repositories do);
- otherwise the model is converted once (torch's ONNX exporter; this is the only time torch is imported) into
  ``<llmrec cache dir>/onnx/<model version>/model.onnx``, written atomically, and reused by every later process.

``backend="onnx-int8"`` runs a dynamically int8-quantized copy (``model-int8.onnx``, made once by ONNX
Runtime's quantizer). Its vectors differ from the float model's (benchmarks/encoder_quality.py measures what
that costs on BBC retrieval), so they are cached under their own key.

An ONNX file is a protobuf graph of standard operators: loading one runs no code from it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from .errors import DataError

Backend = Literal["auto", "onnx", "onnx-int8", "sentence-transformers"]
BACKENDS: tuple[str, ...] = ("auto", "onnx", "onnx-int8", "sentence-transformers")
#: the largest difference, per vector component, between the ONNX and sentence-transformers vectors of a model
ONNX_TOLERANCE = 1e-5
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
#: ONNX input names a BERT-like model takes
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

OnBatch = Callable[[int], None]


class Encoder(Protocol):
    """What the Embedder calls: texts in, a float32 ``(n, dim)`` array out, ``on_batch(rows)`` after each batch."""

    dim: int
    backend: str

    def encode(self, texts: list[str], batch_size: int, normalize: bool,
               on_batch: OnBatch | None = None) -> np.ndarray: ...


#: an encode of at most this many texts (a query, a coalesced batch of queries) runs on one thread
SMALL = 64


def threads() -> int:
    """Threads a model may use in this process: ``$LLMREC_THREADS`` (``llmrec serve --workers N`` sets it to the
    cores per worker), else 0, meaning the library's own default (all cores)."""
    try:
        return max(int(os.environ.get("LLMREC_THREADS", "0")), 0)
    except ValueError:
        return 0


# -- the sentence-transformers pipeline ------------------------------------------------------------------------


class Pipeline:
    """What a sentence-transformers folder says it does, read from its JSON files (no library imported)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reason = ""  # why ONNX Runtime cannot run it; "" when it can
        self.pooling = "mean"
        self.normalized = False
        self.max_length = 512
        modules = _json(path / "modules.json")
        if not isinstance(modules, list) or not modules:
            self.reason = "it has no modules.json naming its modules"
            return
        kinds = [m.get("type", "") if isinstance(m, dict) else "" for m in modules]
        if kinds[:2] != [_TRANSFORMER, _POOLING] or any(k != _NORMALIZE for k in kinds[2:]):
            self.reason = f"its modules are {', '.join(k.rsplit('.', 1)[-1] for k in kinds)}"
            return
        if str(modules[0].get("path", "")) not in ("", "."):
            self.reason = "its transformer is not at the top of the folder"
            return
        self.normalized = len(kinds) > 2
        pooling_dir = (path / str(modules[1].get("path", "1_Pooling"))).resolve()
        if not pooling_dir.is_relative_to(path.resolve()):  # a folder is data: it never points outside itself
            self.reason = "its pooling module lies outside the model folder"
            return
        pooling = _json(pooling_dir / "config.json")
        if not isinstance(pooling, dict):
            self.reason = "its pooling configuration is missing"
            return
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True]
        if modes == ["pooling_mode_mean_tokens"]:
            self.pooling = "mean"
        elif modes == ["pooling_mode_cls_token"]:
            self.pooling = "cls"
        else:
            self.reason = f"it pools by {', '.join(modes) or 'nothing'}"
            return
        if not (path / "tokenizer.json").is_file():
            self.reason = "it has no tokenizer.json"
            return
        config = _json(path / "sentence_bert_config.json")
        limit = config.get("max_seq_length") if isinstance(config, dict) else None
        tokenizer_config = _json(path / "tokenizer_config.json")
        model_max = tokenizer_config.get("model_max_length") if isinstance(tokenizer_config, dict) else None
        limits = [int(v) for v in (limit, model_max) if isinstance(v, int) and v > 0]
        self.max_length = min(limits) if limits else 512


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class SentenceTransformersEncoder:
    """The model through sentence-transformers (and torch): any pipeline, any device."""

    backend = "sentence-transformers"

    def __init__(self, path: Path, device: str) -> None:
        from sentence_transformers import SentenceTransformer  # lazy: seconds to import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar, on every load
        if threads():
            import torch  # lazy: comes with sentence-transformers

            torch.set_num_threads(threads())
        self.model = SentenceTransformer(str(path), device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:  # some models only say so after encoding something
            dim = int(self.model.encode(["x"], convert_to_numpy=True).shape[1])
        self.dim = int(dim)
        self._thread = threading.local()

    def encode(self, texts: list[str], batch_size: int, normalize: bool,
               on_batch: OnBatch | None = None) -> np.ndarray:
        handle = None
        if on_batch is not None:  # a forward hook sees each batch of this call (this thread's only)
            me = threading.get_ident()

            def hook(module: Any, args: Any, output: Any) -> None:
                if threading.get_ident() == me:
                    on_batch(len(output["sentence_embedding"]))

            handle = self.model.register_forward_hook(hook)
        try:
            vectors = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                        normalize_embeddings=normalize, show_progress_bar=False)
        finally:
            if handle is not None:
                handle.remove()
        return np.ascontiguousarray(vectors, dtype=np.float32)


# -- ONNX Runtime ----------------------------------------------------------------------------------------------


class OnnxEncoder:
    """The same pipeline as sentence-transformers, run by ONNX Runtime with the folder's ``tokenizers``
    tokenizer: tokenise (truncating to the model's limit, padding to the longest text of the batch), run the
    transformer, pool, normalise."""

    def __init__(self, pipeline: Pipeline, model_file: Path, backend: str) -> None:
        import onnxruntime as ort  # lazy: only for the ONNX backends
        from tokenizers import Tokenizer

        self.backend = backend
        self.pipeline = pipeline
        self.tokenizer = Tokenizer.from_file(str(pipeline.path / "tokenizer.json"))
        self.tokenizer.enable_truncation(pipeline.max_length)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        pad = _json(pipeline.path / "special_tokens_map.json")
        pad_token = pad.get("pad_token") if isinstance(pad, dict) else None
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        if isinstance(pad_token, str) and self.tokenizer.token_to_id(pad_token) is not None:
            pad_id = self.tokenizer.token_to_id(pad_token)
        else:
            pad_token = "[PAD]"
        self.tokenizer.enable_padding(pad_id=pad_id or 0, pad_token=pad_token)
        self._ort, self._model_file = ort, model_file
        # Queries (a few short texts at a time) run on one thread: splitting a 10-token query over 2 cores costs
        # 1.6x the CPU for no gain under load (measured: 1.2 vs 1.9 ms int8). Catalogs (more than SMALL texts)
        # get a session with every thread the process may use, made when first needed (at most once per
        # model; with vectors cached on disk a server never makes it).
        self.session = self._session(1)
        self._wide: Any = self.session if threads() == 1 else None
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = [name for name in self.inputs if name not in _INPUTS]
        if unknown:
            raise DataError(f"the ONNX model {model_file} takes inputs llmrec does not know: {unknown}",
                            path=model_file, hint="use backend: sentence-transformers for this model")
        shape = self.session.get_outputs()[0].shape
        self.dim = int(shape[-1]) if isinstance(shape[-1], int) else int(self.encode(["x"], 1, False).shape[1])

    def _session(self, n_threads: int) -> Any:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ONNX Runtime's own warnings go to stderr otherwise
        # idle threads sleep instead of spinning: the same latency, about a tenth less CPU per query (measured on
        # 2 cores), and no cores burnt that other requests or workers could use
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return self._ort.InferenceSession(str(self._model_file), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int, normalize: bool,
               on_batch: OnBatch | None = None) -> np.ndarray:
        if len(texts) <= 1:
            return self._batch(texts, normalize) if texts else np.zeros((0, self.dim), dtype=np.float32)
        session = self.session
        if len(texts) > SMALL:
            if self._wide is None:
                self._wide = self._session(threads())
            session = self._wide
        # longest first, as sentence-transformers does, so a batch's texts pad to about the same length (padding
        # never changes a vector: tests/embed/test_encoders.py)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._batch([texts[i] for i in rows], normalize, session)
            if on_batch is not None:
                on_batch(len(rows))
        return out

    def _batch(self, texts: list[str], normalize: bool, session: Any = None) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden = (session or self.session).run(None, {name: feed[name] for name in self.inputs})[0]
        if self.pipeline.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            weights = mask[..., None].astype(hidden.dtype)
            vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if normalize or self.pipeline.normalized:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def onnx_file(pipeline: Pipeline, version: str, cache: Path, *, int8: bool) -> Path:
    """The model's ONNX file: shipped in its folder, or converted (and quantized) once into ``cache``."""
    shipped = pipeline.path / "onnx" / "model.onnx"
    folder = cache / "onnx" / version
    source = shipped if shipped.is_file() else folder / "model.onnx"
    if not source.is_file():
        _export(pipeline.path, source)
    if not int8:
        return source
    quantized = folder / "model-int8.onnx"
    if not quantized.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: imports onnx, once

        quantized.parent.mkdir(parents=True, exist_ok=True)
        partial = quantized.with_name(f".{quantized.name}.{os.getpid()}.partial")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quiet = logging.getLogger()
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # "consider pre-processing before quantization"
            try:
                quantize_dynamic(str(source), str(partial), weight_type=QuantType.QInt8)
            finally:
                quiet.setLevel(level)
        os.replace(partial, quantized)
    return quantized


def _export(model_dir: Path, target: Path) -> None:
    """Convert the transformer in ``model_dir`` to ONNX at ``target`` (atomically: a reader never sees half)."""
    import torch  # lazy: the one time the ONNX backend needs torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in _INPUTS if name in accepted]

    class Hidden(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(names, args))).last_hidden_state

    sample = torch.ones(2, 8, dtype=torch.long)
    args = tuple(sample if name != "token_type_ids" else torch.zeros_like(sample) for name in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Hidden(model), args, str(partial), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def load_encoder(path: Path, version: str, *, backend: str, device: str, cache: Path) -> Encoder:
    """The encoder for the model folder ``path``. ``auto`` takes ONNX Runtime where it can run the model (on CPU,
    with onnxruntime installed, a pipeline it knows) and sentence-transformers otherwise, or when converting
    fails (with a warning); ``onnx``/``onnx-int8`` fail with the reason instead."""
    if backend == "sentence-transformers":
        return SentenceTransformersEncoder(path, device)
    pipeline = Pipeline(path)
    reason = pipeline.reason
    if not reason and device != "cpu":
        reason = f"the ONNX backend runs on CPU only (device is {device!r})"
    if not reason and importlib.util.find_spec("onnxruntime") is None:
        reason = "onnxruntime is not installed"
    if not reason:
        try:
            return OnnxEncoder(pipeline, onnx_file(pipeline, version, cache, int8=backend == "onnx-int8"),
                               "onnx-int8" if backend == "onnx-int8" else "onnx")
        except DataError:
            raise
        except Exception as exc:
            reason = f"converting or loading it failed ({type(exc).__name__}: {exc})"
            if backend == "auto":
                warnings.warn(f"embedding model {path}: ONNX Runtime cannot run it, {reason}; using "
                              "sentence-transformers", stacklevel=3)
    if backend == "auto":
        return SentenceTransformersEncoder(path, device)
    raise DataError(f"the embedding model in {path} cannot run on ONNX Runtime: {reason}", path=path,
                    hint="set the embedder's backend to 'sentence-transformers' (or 'auto')")


__all__ = ["BACKENDS", "Backend", "Encoder", "ONNX_TOLERANCE", "OnnxEncoder", "Pipeline",
           "SentenceTransformersEncoder", "load_encoder", "onnx_file", "threads"]
