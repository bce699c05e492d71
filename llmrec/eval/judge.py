"""LLM-as-judge scores for ``llmrec eval``: each answer scored 1-5 per rubric criterion by the ``llm.judge`` node.

The judge sees the user's recent training history (titles and categories: what was asked) and the answer's top
items (titles and categories), and scores each criterion of the rubric; the report gives the mean per criterion
and of the overall score. The rubric defaults to :data:`DEFAULT_RUBRIC`; ``--judge-rubric FILE.yaml`` replaces it
with a mapping ``criterion: what a 5 means`` (or ``{criteria: {...}}``).

The judge model comes from ``--judge-model MODEL`` (default ``$LLMREC_MODEL``), built through the registry's
``llm`` resource type (``{provider: litellm, model: MODEL}``, or ``transformers`` for a local folder), or is a
provider object handed to :func:`llmrec.eval.runner.evaluate` (``judge=provider``). A case the judge fails on is
counted and left out of the means; it never fails the evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import LlmrecError

DEFAULT_RUBRIC: dict[str, str] = {
    "relevance": "every recommended item fits what this user has liked; nothing looks out of place",
    "diversity": "the list covers several different kinds of item instead of near-copies of one",
    "personalisation": "the list is clearly made for this user's history, not a generic best-seller list",
}
MODEL_ENV = "LLMREC_MODEL"
#: items of the answer and of the user's history the judge is shown
ANSWER_ITEMS = 10
HISTORY_ITEMS = 20


class JudgeError(LlmrecError):
    """A judge that cannot be set up: a bad rubric file or a model that cannot be built."""


def load_rubric(path: str | os.PathLike[str]) -> dict[str, str]:
    """Criteria from a YAML file: ``name: what a 5 means`` per line, or the same under ``criteria:``."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JudgeError(f"judge rubric '{p}' not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise JudgeError(f"judge rubric '{p}' cannot be read: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and isinstance(data.get("criteria"), dict):
        data = data["criteria"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, str) for v in data.values()):
        raise JudgeError(f"judge rubric '{p}' must map criterion names to what a 5 means, e.g. "
                         "'relevance: the items fit the user'")
    return check_rubric({str(k): v for k, v in data.items()}, str(p))


def check_rubric(criteria: Mapping[str, str], where: str = "the rubric") -> dict[str, str]:
    """The criteria, validated as ``llm.judge`` validates them (plain identifiers)."""
    from pydantic import ValidationError

    from ..nodes.llm_tasks import JudgeConfig

    try:
        JudgeConfig.model_validate({"criteria": dict(criteria)})
    except ValidationError as exc:
        msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise JudgeError(f"{where}: {msg}") from None
    return dict(criteria)


async def build_provider(model: str, base_dir: Path | None = None) -> Any:
    """A provider for ``model`` through the registry's ``llm`` resource type (litellm; transformers for a folder)."""
    from pydantic import ValidationError

    from ..plugins import get_registry

    cls = get_registry(base_dir).resource_types.get("llm")
    if cls is None:  # pragma: no cover - the built-in plugin is always registered
        raise JudgeError("no 'llm' resource type is registered to build the judge model with")
    provider = "transformers" if Path(model).expanduser().is_dir() else "litellm"
    try:
        config = cls.Config.model_validate({"provider": provider, "model": model},
                                           context={"base_dir": str(base_dir or Path.cwd())})
    except ValidationError as exc:
        raise JudgeError(f"judge model '{model}': {exc.errors(include_url=False)[0]['msg']}") from None
    try:
        return await cls(config).load()
    except LlmrecError as exc:
        raise JudgeError(f"judge model '{model}' cannot be used: {exc}") from None


def _item(catalog: Any, item_id: str) -> dict[str, Any]:
    item = catalog.get(item_id) if catalog is not None else None
    if item is None:
        return {"id": item_id, "title": "(not in the catalog)"}
    view = {"title": item.title}
    if item.category:
        view["category"] = item.category
    return view


class EvalJudge:
    """Scores answers with ``llm.judge`` through one provider; thread the same instance through every spec."""

    def __init__(self, provider: Any, criteria: Mapping[str, str] | None = None) -> None:
        from ..nodes.llm_tasks import Judge, JudgeConfig

        self.provider = provider
        self.criteria = check_rubric(criteria or DEFAULT_RUBRIC)
        self.model = str(getattr(provider, "model", "") or type(provider).__name__)
        self._node = Judge(JudgeConfig.model_validate({"criteria": self.criteria}))

    def key(self) -> dict[str, Any]:
        """What identifies this judge in a run's fingerprint."""
        return {"model": self.model, "criteria": self.criteria}

    async def score(self, ids: Sequence[str], catalog: Any, history: Sequence[str]) -> dict[str, Any]:
        """``{"scores": {criterion: 1-5}, "overall", "tokens", "cost"}``, or ``{"error": message}``."""
        from ..node import RunContext

        subject = {"recommendations": [_item(catalog, i) for i in ids[:ANSWER_ITEMS]]}
        request = {"user_history": [_item(catalog, i) for i in list(history)[-HISTORY_ITEMS:]]}
        context = RunContext(run_id="eval-judge", node_id="judge", inputs={})
        try:
            judgement = await self._node.run(model=self.provider, subject=subject, request=request, context=context)
        except Exception as exc:  # one judge failure must not stop the evaluation
            return {"error": str(exc) or type(exc).__name__}
        info = context.extra.get("llm", {})
        return {"scores": dict(judgement.scores), "overall": judgement.overall,
                "tokens": sum((info.get("tokens") or {}).values()), "cost": float(info.get("cost") or 0.0)}


def summarize_judge(cases: Sequence[Mapping[str, Any] | None], judge: EvalJudge | None,
                    reason: str | None = None) -> dict[str, Any]:
    """A spec's judge section: mean per criterion and overall, how many cases were judged or failed."""
    if judge is None:
        return {"run": False, "reason": reason or f"no judge model: pass --judge-model MODEL or set ${MODEL_ENV}"}
    scored = [c for c in cases if c is not None and "scores" in c]
    failed = [c for c in cases if c is not None and "error" in c]
    means = {name: (sum(c["scores"][name] for c in scored) / len(scored) if scored else None)
             for name in judge.criteria}
    return {
        "run": True,
        "model": judge.model,
        "criteria": dict(judge.criteria),
        "judged": len(scored),
        "failed": len(failed),
        "first_error": failed[0]["error"] if failed else None,
        "means": means,
        "overall": sum(c["overall"] for c in scored) / len(scored) if scored else None,
        "tokens": sum(c.get("tokens", 0) for c in scored),
        "cost": sum(c.get("cost", 0.0) for c in scored),
    }


__all__ = ["DEFAULT_RUBRIC", "EvalJudge", "JudgeError", "build_provider", "check_rubric", "load_rubric",
           "summarize_judge"]
