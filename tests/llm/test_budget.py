"""Request budgets: the spec's `budget` (latency and cost) propagates through the graph; a node with a fallback
whose request budget is spent goes straight to its fallback without calling the model."""

from __future__ import annotations

import asyncio

from llmrec.api import validate
from llmrec.runtime.executor import Runtime
from llmrec.testing import FakeProvider, errors_of, write_spec

SCHEMA = """
from pydantic import BaseModel

class Recs(BaseModel):
    items: list[str]
"""


def _spec(tmp_path, budget: str) -> str:
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "recs.py").write_text(SCHEMA, encoding="utf-8")
    return str(write_spec(tmp_path, f"""
name: budget-test
inputs:
  liked: {{type: array, items: string}}
resources:
  model: {{type: llm, config: {{provider: litellm, model: openai/stub}}}}
budget: {budget}
nodes:
  first:
    type: llm.prompt
    config: {{template: "I liked {{{{ liked | join(', ') }}}}.", schema: schemas/recs.py:Recs}}
    inputs: {{model: "${{resources.model}}", liked: "${{inputs.liked}}"}}
  second:
    type: llm.prompt
    config: {{template: "Explain {{{{ liked | join(', ') }}}}.", schema: schemas/recs.py:Recs}}
    inputs: {{model: "${{resources.model}}", liked: "${{first.items}}"}}
    fallback: {{value: {{items: []}}}}
outputs:
  first: ${{first.items}}
  second: ${{second.items}}
"""))


def _run(path: str, fake: FakeProvider, **kwargs):
    rt = Runtime(validate(path), resources={"model": fake})
    return asyncio.run(rt.run({"liked": ["Alien", "Heat"]}, **kwargs))


def test_spent_cost_budget_sends_the_next_llm_node_to_its_fallback(tmp_path) -> None:
    path = _spec(tmp_path, "{cost: 0.001}")
    fake = FakeProvider(lambda r: {"items": ["Aliens"]}, cost_per_token=0.01)
    result = _run(path, fake)
    assert fake.calls == 1  # the second node never reached the model
    assert result.outputs == {"first": ["Aliens"], "second": []}
    rec = result.trace.node("second")
    assert rec.status == "fallback" and "cost budget spent" in rec.fallback_reason
    assert result.degraded


def test_within_the_cost_budget_every_node_calls_the_model(tmp_path) -> None:
    path = _spec(tmp_path, "{cost: 10}")
    fake = FakeProvider(lambda r: {"items": ["Aliens"]}, cost_per_token=0.01)
    result = _run(path, fake)
    assert fake.calls == 2 and not result.degraded


def test_run_argument_overrides_the_spec_budget(tmp_path) -> None:
    path = _spec(tmp_path, "{cost: 10}")
    fake = FakeProvider(lambda r: {"items": ["Aliens"]}, cost_per_token=0.01)
    result = _run(path, fake, max_cost=0.0)
    assert fake.calls == 0 or result.trace.node("second").status == "fallback"
    assert result.trace.node("second").status == "fallback"


def test_latency_budget_from_the_spec_cuts_llm_calls_and_fallbacks_still_answer(tmp_path) -> None:
    path = _spec(tmp_path, "{latency: 500ms}")

    async def reply(request):
        if "Explain" in request.messages[-1].content:
            await asyncio.sleep(5)  # the second call hangs: it is cut at the request deadline
        return {"items": ["Aliens"]}

    fake = FakeProvider(reply)
    result = _run(path, fake)
    assert result.outputs == {"first": ["Aliens"], "second": []}
    rec = result.trace.node("second")
    assert rec.status == "fallback" and result.trace.wall_ms < 1000


def test_budget_is_validated_with_a_position(tmp_path) -> None:
    errors = errors_of(_spec(tmp_path, "{cost: -1}"))
    assert len(errors) == 1 and "budget" in errors[0] and "cost" in errors[0]


def test_on_node_reports_each_node_as_it_finishes(tmp_path) -> None:
    path = _spec(tmp_path, "{}")
    fake = FakeProvider(lambda r: {"items": ["Aliens"]})
    seen = []
    _run(path, fake, on_node=lambda rec, value: seen.append((rec.node_id, rec.status)))
    assert seen == [("first", "ok"), ("second", "ok")]
