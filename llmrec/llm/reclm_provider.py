"""The ``reclm`` provider: an ``llm`` resource answered by a rec-LM (:mod:`llmrec.reclm`) that llmrec trains.

A rec-LM reads item ids, not text. It answers the requests that say which items they are about
(:class:`~llmrec.llm.provider.ItemContext`: the user's history and the item behind each allowed value), which
``llm.recommend`` and ``llm.rank`` (listwise and pairwise) send: the answer's list is the allowed values ordered
by the model's log-probability of each item as the user's next one (decoding constrained to those items, each
once, exactly as many as the schema asks for), and ``Completion.scores`` carries those log-probabilities. A
request with no item context (free text, labels, plans) is a :class:`~llmrec.errors.ProviderError`, so the node
takes its fallback and the response says it is degraded.

::

    resources:
      model:
        type: llm
        config:
          provider: reclm
          model: ../runs/movielens/reclm        # the artifact folder `llmrec train` writes (or a rec-LM folder)
          extra: {size: small, max_epochs: 40}   # RecLMConfig: what the model is trained with
          train_on_first_use: true

Training follows llmrec's one training contract (:mod:`llmrec.training`): the ``llm`` resource delegates
``fit`` / ``training_params`` to this provider class, which learns from the dataset split (``trains_on:
dataset``) and writes a versioned artifact. Early stopping picks the epoch count on the validation split carved
from training; with ``refit: true`` the model is then trained again for that many epochs on every training event,
the carved validation events included (as the CF benchmarks refit their picks). It is off by default: on
MovieLens 100K the refit cost a second training and did not help (benchmarks/RESULTS.md, rec-LM section). ``model`` may instead name a saved rec-LM folder (``RecLM.save`` or
a distilled student): then nothing is trained.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from ..errors import ProviderError
from ..reclm import RecLM, RecLMConfig, RecLMError, train_reclm
from ..training import TrainingError, TrainOutput, data_hash
from .provider import Choices, Completion, CompletionRequest, Usage

#: files that make a folder a saved rec-LM (rather than the root of versioned artifacts)
_MODEL_FILES = ("model.safetensors", "vocab.json", "config.json")
#: provider options that are not RecLMConfig training fields
_RUNTIME_KEYS = frozenset({"model", "timeout", "max_retries", "temperature", "max_tokens", "quantize", "api_base",
                           "api_key", "refit"})


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a saved rec-LM (its weights, vocabulary and config), not an artifact root."""
    folder = Path(path)
    try:
        return all((folder / name).is_file() for name in _MODEL_FILES)
    except (OSError, ValueError):  # a path too long for the file system, a NUL byte: not a model folder
        return False


def training_config(options: dict[str, Any]) -> Any:
    """The :class:`~llmrec.reclm.RecLMConfig` a route's options describe (its training keys; the rest are the
    provider's runtime options)."""
    return RecLMConfig.model_validate({k: v for k, v in options.items() if k not in _RUNTIME_KEYS})


class RecLMProvider:
    """A trained rec-LM behind the Provider protocol; see the module docstring."""

    name = "reclm"
    #: the training contract (llmrec.training): learns from the dataset split itself
    trains_on: ClassVar[str] = "dataset"
    #: ``model`` is a path: a relative one is relative to the spec's folder
    model_is_path: ClassVar[bool] = True

    def __init__(self, model: str, quantize: str | None = None, timeout: float | None = None,
                 max_retries: int = 0, **options: Any) -> None:
        if quantize not in (None, "int8"):
            raise ProviderError(f"reclm: quantize must be 'int8' or absent, got {quantize!r}")
        training_config({k: v for k, v in options.items() if k not in _RUNTIME_KEYS})  # a typo fails here
        try:
            rec = RecLM.load(model)
        except RecLMError as exc:
            raise ProviderError(f"reclm: {exc}") from None
        self.rec = rec.quantized() if quantize == "int8" else rec
        self.model = self.rec.name
        self.folder = str(model)
        self.timeout = timeout
        self.max_retries = max_retries

    # -- the training contract (called through the llm resource) ------------------------------------------------
    @classmethod
    def is_trainable(cls, options: dict[str, Any]) -> bool:
        """Trained by llmrec unless ``model`` already names a saved rec-LM folder."""
        return not is_model_folder(options["model"])

    @classmethod
    def training_params(cls, options: dict[str, Any]) -> dict[str, Any]:
        """What the artifact depends on: the training config (device and threads change nothing learned)."""
        cfg = training_config(options).model_dump(exclude={"device", "threads"})
        return {"provider": cls.name, **cfg, **({"refit": True} if _refit(options) else {})}

    @classmethod
    def fit(cls, options: dict[str, Any], ctx: Any) -> Any:
        """Train a rec-LM on the context's dataset split and write it into ``ctx.staging``."""
        cfg = training_config(options)
        if cfg.device == "auto" and ctx.device != "cpu":
            cfg = cfg.model_copy(update={"device": ctx.device})
        data = ctx.dataset
        users = len(set(data.train.users())) if len(data.train) else 0
        if users < 2:
            raise TrainingError(f"a rec-LM needs the histories of at least 2 users; dataset '{data.name}' has "
                                f"{users}. Point the spec's dataset resource at a log with more users.")

        def progress(info: dict[str, Any]) -> None:
            eta = info.get("eta_seconds")
            val = info.get("val_ndcg10")
            shown = (f", validation NDCG@10 {val:.4f} (best epoch {info['best_epoch']})"
                     if val is not None and math.isfinite(val) else "")
            ctx.progress(f"rec-LM epoch {info['epoch']}/{info['max_epochs']}: loss {info['train_loss']:.3f}{shown}, "
                         f"{info['seconds']:.0f} s" + (f", at most {eta:.0f} s left" if eta else ""))

        ctx.progress(f"training a rec-LM ({cfg.size}: layers/width/heads {cfg.dimensions}) on "
                     f"{len(data.train)} events of {users} users, validated on {len(ctx.validation)} cases")
        try:
            rec = train_reclm(data.catalog, data.train, ctx.validation, cfg, progress=progress,
                              should_stop=ctx.should_stop, checkpoint_dir=ctx.checkpoint_dir)
            m = rec.metrics
            metrics = {"val_ndcg10": round(float(m.get("val_ndcg10", 0.0)), 4), "best_epoch": m.get("best_epoch"),
                       "epochs": m.get("epochs_run"), "parameters": rec.parameters}
            full = ctx.refit_train
            if _refit(options) and full is not None and len(full) > len(data.train):
                epochs = int(m.get("best_epoch") or 1)
                ctx.progress(f"refitting the rec-LM on all {len(full)} training events for {epochs} epochs (the "
                             "best validation epoch), so that it also learns from each user's latest ratings")
                rec = train_reclm(data.catalog, full, (), cfg, progress=progress, should_stop=ctx.should_stop,
                                  checkpoint_dir=ctx.checkpoint_dir / "refit", epochs=epochs)
                metrics["refit_events"] = len(full)
        except RecLMError as exc:
            raise TrainingError(str(exc)) from None
        rec.save(ctx.staging.folder)
        return TrainOutput(data_hash=data_hash(data), metrics=metrics, meta={"model": rec.name},
                           rows=len(data.train))

    # -- answering -------------------------------------------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> Completion:
        items = request.items
        if items is None:
            raise ProviderError(
                f"the reclm provider ({self.model}) recommends item ids and cannot answer free text: it answers "
                "llm.recommend and llm.rank (listwise, pairwise). Give this node an llm resource with a text "
                "model (a litellm model or a local model folder).")
        choice = next((c for c in request.choices if c.path == items.path), None)
        if choice is None or len(choice.values) != len(items.ids):
            raise ProviderError(f"reclm: the request's item context names choices '{items.path}' that it does not "
                                "carry (or with another number of values)")
        return await asyncio.to_thread(self._answer, request, choice, items.history, items.ids)

    def _answer(self, request: CompletionRequest, choice: Choices, history: Any, ids: tuple[str, ...]) -> Completion:
        import numpy as np

        field, is_list = _field(choice.path)
        schema = request.schema
        scores = self.rec.score(list(history), list(ids))
        order = np.argsort(-scores, kind="stable")  # ties (and unknown items, -inf) keep the request's order
        values = [choice.values[i] for i in order]
        if is_list:
            n = _max_items(schema, field)
            answer: Any = values[:n] if n is not None else values
        else:
            answer = values[0]
        data = {field: answer}
        parsed = None
        if schema is not None:
            try:
                parsed = schema.model_validate(data)
            except Exception as exc:
                raise ProviderError(f"reclm: cannot answer schema {schema.__name__} (only its '{field}' choices "
                                    f"are known to an item model): {exc}") from None
        chosen = answer if is_list else [answer]
        known = {choice.values[i]: float(scores[i]) for i in order if math.isfinite(float(scores[i]))}
        return Completion(
            text=json.dumps(data, ensure_ascii=False), parsed=parsed,
            usage=Usage(prompt_tokens=len(self.rec.encode(list(history))), completion_tokens=len(chosen)),
            attempts=1, model=self.model, provider=self.name,
            scores={v: known[v] for v in chosen if v in known},
        )

    def count_tokens(self, text: str) -> int:
        """A rec-LM reads no text; prompts are not what it is charged for (item tokens are, in usage)."""
        return 0

    async def close(self) -> None:
        return None


def _refit(options: dict[str, Any]) -> bool:
    value = options.get("refit", False)
    if not isinstance(value, bool):
        raise ProviderError(f"reclm: 'refit' must be true or false, got {value!r}")
    return value


def _field(path: str) -> tuple[str, bool]:
    is_list = path.endswith("[]")
    name = path[:-2] if is_list else path
    if not name or "." in name or "[" in name:
        raise ProviderError(f"reclm: can only fill a top-level field of the answer, not '{path}'")
    return name, is_list


def _max_items(schema: type[BaseModel] | None, field: str) -> int | None:
    if schema is None:
        return None
    prop = schema.model_json_schema().get("properties", {}).get(field, {})
    value = prop.get("maxItems")
    return int(value) if value is not None else None


__all__ = ["RecLMProvider", "is_model_folder", "training_config"]
