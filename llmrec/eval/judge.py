"""LLM-as-judge scores for ``llmrec eval``: each answer scored 1-5 per rubric criterion by a judge spec.

The judge is an ordinary spec run through a :class:`~llmrec.runtime.executor.Runtime`: by default
``llmrec/eval/judge.yaml`` (one ``llm.judge`` node and an ``llm`` resource named ``model``), or any spec with the
same contract given as ``--judge-spec FILE`` (inputs ``subject`` and ``request``, a resource ``model``, an output
``judge`` with ``scores`` and ``overall``). The judge sees the user's recent training history (titles and
categories: what was asked) and the answer's top items, and the report gives the mean per criterion and of the
overall score. ``--judge-rubric FILE.yaml`` sets the criteria (a mapping ``criterion: what a 5 means``, or
``{criteria: {...}}``); ``--judge-model MODEL`` the model (default ``$LLMREC_MODEL``), resolved by the ``llm``
resource type as in any spec. A provider object handed to :func:`llmrec.eval.runner.evaluate` (``judge=provider``)
is the ``model`` resource. A case the judge fails on (an error, or an answer from a fallback) is counted and left
out of the means; it never fails the evaluation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import LlmrecError, SpecError
from ..graph.build import check_graph
from ..plugins import get_registry
from ..runtime.executor import Runtime
from ..spec.loader import load_spec
from ..spec.variants import apply_overrides

#: the built-in judge spec (package data); ``--judge-spec`` replaces it
JUDGE_SPEC = Path(__file__).with_name("judge.yaml")
MODEL_ENV = "LLMREC_MODEL"
#: items of the answer and of the user's history the judge is shown
ANSWER_ITEMS = 10
HISTORY_ITEMS = 20
#: where the overrides go in a judge spec
MODEL_PATH = "resources.model.config.model"
CRITERIA_PATH = "nodes.judge.config.criteria"


def _default_rubric() -> dict[str, str]:
    node = yaml.safe_load(JUDGE_SPEC.read_text(encoding="utf-8"))["nodes"]["judge"]
    return dict(node["config"]["criteria"])


#: the built-in judge spec's criteria
DEFAULT_RUBRIC: dict[str, str] = _default_rubric()


class JudgeError(LlmrecError):
    """A judge that cannot be set up: a bad rubric file, an invalid judge spec or a model that cannot be built."""


def load_rubric(path: str | os.PathLike[str]) -> dict[str, str]:
    """Criteria from a YAML file: ``name: what a 5 means`` per line, or the same under ``criteria:``; the names
    are checked by the judge node's config when the judge spec is built."""
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
    return {str(k): v for k, v in data.items()}


def _item(catalog: Any, item_id: str) -> dict[str, Any]:
    item = catalog.get(item_id) if catalog is not None else None
    if item is None:
        return {"id": item_id, "title": "(not in the catalog)"}
    view = {"title": item.title}
    if item.category:
        view["category"] = item.category
    return view


def _problems(errors: Sequence[SpecError]) -> str:
    return "\n".join(f"  {e.format()}" for e in sorted(errors, key=SpecError.sort_key))


class EvalJudge:
    """Scores answers by running a judge spec; open with :meth:`open`, share one instance across specs, close."""

    def __init__(self, runtime: Runtime, spec: Path, criteria: Mapping[str, str], model: str) -> None:
        self.runtime = runtime
        self.spec = spec
        self.criteria = dict(criteria)
        self.model = model

    @classmethod
    async def open(cls, *, spec: str | os.PathLike[str] | None = None, model: str | None = None,
                   provider: Any = None, criteria: Mapping[str, str] | None = None) -> EvalJudge:
        """Build and start the judge spec (``spec``, default the built-in one) with ``model`` or a ready
        ``provider`` as its ``model`` resource and ``criteria`` as its rubric."""
        path = Path(spec) if spec is not None else JUDGE_SPEC
        doc = load_spec(path)
        overrides: dict[str, Any] = {}
        if model is not None and provider is None:
            overrides[MODEL_PATH] = model
        if criteria is not None:
            overrides[CRITERIA_PATH] = dict(criteria)
        flags = (("--judge-model", MODEL_PATH), ("--judge-rubric", CRITERIA_PATH))
        origin = " and ".join(flag for flag, at in flags if at in overrides) or "the judge"
        if doc.spec is not None and overrides:
            doc = apply_overrides(doc, overrides, origin)
        if doc.spec is None:
            raise JudgeError(f"judge spec '{doc.display}' is not valid:\n{_problems(doc.errors)}")
        graph, errors, _ = check_graph(doc, get_registry(doc.base_dir))
        if errors or graph is None:
            raise JudgeError(f"judge spec '{doc.display}' (with {origin}) is not valid:\n{_problems(errors)}")
        missing = [n for n in ("subject", "request") if n not in graph.spec.inputs]
        if missing or "judge" not in graph.spec.outputs or "model" not in graph.resources:
            raise JudgeError(f"judge spec '{doc.display}' must declare the inputs 'subject' and 'request', a "
                             "resource 'model' and an output 'judge' (see llmrec/eval/judge.yaml)")
        runtime = Runtime(graph, resources={"model": provider} if provider is not None else None)
        try:
            await runtime.start()
        except LlmrecError as exc:
            await runtime.close()
            shown = model or os.environ.get(MODEL_ENV, "").strip() or "(none configured)"
            raise JudgeError(f"judge model {shown} cannot be used: {exc}") from None
        loaded = runtime.resources["model"]
        name = str(getattr(loaded, "model", "") or model or type(loaded).__name__)
        written: Any = doc.data
        for key in CRITERIA_PATH.split("."):
            written = written.get(key) if isinstance(written, dict) else None
        return cls(runtime, path, dict(written) if isinstance(written, dict) else {}, name)

    async def close(self) -> None:
        await self.runtime.close()

    def key(self) -> dict[str, Any]:
        """What identifies this judge in a run's fingerprint."""
        key: dict[str, Any] = {"model": self.model, "criteria": self.criteria}
        if self.spec != JUDGE_SPEC:
            key["spec"] = hashlib.sha256(self.spec.read_bytes()).hexdigest()[:16]
        return key

    async def score(self, ids: Sequence[str], catalog: Any, history: Sequence[str]) -> dict[str, Any]:
        """``{"scores": {criterion: 1-5}, "overall", "tokens", "cost"}``, or ``{"error": message}``."""
        subject = {"recommendations": [_item(catalog, i) for i in ids[:ANSWER_ITEMS]]}
        request = {"user_history": [_item(catalog, i) for i in list(history)[-HISTORY_ITEMS:]]}
        try:
            result = await self.runtime.run({"subject": subject, "request": request})
        except Exception as exc:  # one judge failure must not stop the evaluation
            return {"error": str(exc) or type(exc).__name__}
        if result.degraded:
            why = "; ".join(f"{f['node']}: {f['reason']}" for f in result.fallbacks())
            return {"error": f"the judge answered from a fallback ({why})"}
        judgement = result.outputs.get("judge")
        scores = getattr(judgement, "scores", None)
        if scores is None and isinstance(judgement, Mapping):
            scores = judgement.get("scores")
        overall = getattr(judgement, "overall", None)
        if overall is None and isinstance(judgement, Mapping):
            overall = judgement.get("overall")
        if not isinstance(scores, Mapping) or overall is None:
            return {"error": "the judge spec's output 'judge' has no 'scores' and 'overall'"}
        usage = [r.usage for r in result.trace.nodes if r.usage is not None]
        return {"scores": dict(scores), "overall": float(overall),
                "tokens": sum(u.prompt_tokens + u.completion_tokens for u in usage),
                "cost": float(sum(u.cost for u in usage))}


def summarize_judge(cases: Sequence[Mapping[str, Any] | None], judge: EvalJudge | None,
                    reason: str | None = None) -> dict[str, Any]:
    """A spec's judge section: mean per criterion and overall, how many cases were judged or failed."""
    if judge is None:
        return {"run": False, "reason": reason or f"no judge model: pass --judge-model MODEL or set ${MODEL_ENV}"}
    scored = [c for c in cases if c is not None and "scores" in c]
    failed = [c for c in cases if c is not None and "error" in c]
    # a judge spec of one's own may name its criteria only in its node: take them from the scores
    criteria = judge.criteria or dict.fromkeys(k for c in scored for k in c["scores"])
    means = {name: (sum(c["scores"].get(name, 0) for c in scored) / len(scored) if scored else None)
             for name in criteria}
    return {
        "run": True,
        "model": judge.model,
        "criteria": dict(criteria),
        "judged": len(scored),
        "failed": len(failed),
        "first_error": failed[0]["error"] if failed else None,
        "means": means,
        "overall": sum(c["overall"] for c in scored) / len(scored) if scored else None,
        "tokens": sum(c.get("tokens", 0) for c in scored),
        "cost": sum(c.get("cost", 0.0) for c in scored),
    }


__all__ = ["DEFAULT_RUBRIC", "JUDGE_SPEC", "EvalJudge", "JudgeError", "load_rubric", "summarize_judge"]
