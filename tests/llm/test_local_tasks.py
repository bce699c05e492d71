"""Every llm.* task node on the transformers provider with a tiny random-weight model: the content is garbage, but
each answer is constrained, schema-valid and used by the node as it is (no fallback, no error)."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from llmrec.errors import ProviderError
from llmrec.llm.local import TransformersProvider, compile_constraints
from llmrec.llm.provider import Choices, CompletionRequest, Message
from llmrec.testing import run_with, write_spec
from llmrec.types import Candidates

ITEMS = [
    {"id": "m1", "title": "Alien", "description": "A crew meets a deadly creature in space.", "category": "scifi",
     "price": 10.0},
    {"id": "m2", "title": "Heat", "description": "A detective hunts a crew of thieves.", "category": "crime",
     "price": 12.0},
    {"id": "m3", "title": "Solaris", "description": "A psychologist is sent to a station.", "category": "scifi",
     "price": 8.0},
    {"id": "m4", "title": "Amelie", "description": "A shy waitress helps others in Paris.", "category": "comedy",
     "price": 9.0},
    {"id": "m5", "title": "Dune", "description": "A noble family on a desert planet.", "category": "scifi",
     "price": 15.0},
]
IDS = {i["id"] for i in ITEMS}
TITLES = {i["title"] for i in ITEMS}
LOG = ["a1,m1", "a2,m1", "a3,m1", "u1,m1", "b1,m2", "b2,m2", "c1,m3", "d1,m4"]
LABELS = ["scifi", "crime", "comedy"]

SCHEMA = '''
from typing import Literal
from pydantic import BaseModel, Field

class Mood(BaseModel):
    mood: Literal["calm", "tense", "funny"]
    intensity: int = Field(ge=1, le=5)
    words: list[str] = Field(max_length=3)
'''

NODES = """
  popular:
    type: retrieve.popular
    config: {k: 4}
    inputs: {interactions: "${resources.log}"}
  profile:
    type: user.profile
    inputs: {catalog: "${resources.items}", interactions: "${resources.log}", user_id: u1}
  prompt:
    type: llm.prompt
    config: {template: "The mood of {{ query }}?", schema: "mood.py:Mood"}
    inputs: {model: "${resources.model}", query: "${inputs.query}"}
  rewrite:
    type: llm.rewrite_query
    config: {max_keywords: 3}
    inputs: {model: "${resources.model}", query: "${inputs.query}"}
  listwise:
    type: llm.rank
    inputs: {model: "${resources.model}", catalog: "${resources.items}", candidates: "${popular}",
             query: "${inputs.query}"}
  pointwise:
    type: llm.rank
    config: {mode: pointwise, k: 3}
    inputs: {model: "${resources.model}", catalog: "${resources.items}", candidates: "${popular}"}
  pairwise:
    type: llm.rank
    config: {mode: pairwise, k: 3}
    inputs: {model: "${resources.model}", catalog: "${resources.items}", candidates: "${popular}"}
  recommend:
    type: llm.recommend
    config: {n: 2}
    inputs: {model: "${resources.model}", catalog: "${resources.items}", profile: "${profile}"}
  explain:
    type: llm.explain
    inputs: {model: "${resources.model}", catalog: "${resources.items}", items: "${popular}"}
  label:
    type: llm.label
    config: {labels: [scifi, crime, comedy], top: 2}
    inputs: {model: "${resources.model}", text: "${inputs.query}"}
  relevance:
    type: llm.relevance
    config: {k: 3}
    inputs: {model: "${resources.model}", catalog: "${resources.items}", candidates: "${popular}",
             query: "${inputs.query}"}
  judge:
    type: llm.judge
    config: {criteria: {relevance: "fits the query", variety: "not all alike"}}
    inputs: {model: "${resources.model}", subject: "${listwise}", request: "${inputs.query}"}
  plan:
    type: llm.plan
    inputs: {model: "${resources.model}", catalog: "${resources.items}", constraints: {budget: 30}}
"""

TASKS = ["prompt", "rewrite", "listwise", "pointwise", "pairwise", "recommend", "explain", "label", "relevance",
         "judge", "plan"]


def _spec(tmp_path) -> str:
    with open(tmp_path / "items.jsonl", "w", encoding="utf-8") as f:
        for item in ITEMS:
            f.write(json.dumps(item) + "\n")
    rows = [f"{row},{t}" for t, row in enumerate(LOG)]
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "mood.py").write_text(SCHEMA, encoding="utf-8")
    outputs = "\n".join(f"  {n}: ${{{n}}}" for n in TASKS)
    text = f"""
name: local-tasks
inputs:
  query: {{type: string, default: "space films"}}
resources:
  model: {{type: llm, config: {{provider: litellm, model: openai/stub}}}}
  items: {{type: catalog, config: {{path: items.jsonl, description: description, category: category, price: price}}}}
  log: {{type: interactions, config: {{path: log.csv}}}}
nodes:{NODES}
outputs:
{outputs}
"""
    return str(write_spec(tmp_path, text))


@pytest.fixture(scope="module")
def provider(tiny_model_dir):
    p = TransformersProvider(str(tiny_model_dir), seed=0)
    p.load()
    return p


async def test_every_task_node_answers_through_constrained_decoding(tmp_path, provider) -> None:
    calls = provider.stats.calls
    result = await run_with(_spec(tmp_path), {"query": "space films"}, {"model": provider})
    for name in TASKS:
        rec = result.trace.node(name)
        assert rec.status == "ok", (name, rec.status, rec.error, rec.fallback_reason)
        assert rec.fallback is None and rec.error is None, name
        assert rec.usage and rec.usage.completion_tokens > 0, name
    # 1 + 1 + 1 + 3 (pointwise) + 3 (pairwise) + 1 + 1 + 1 + 1 + 1 + 1 model calls
    assert provider.stats.calls - calls == 15
    out = result.outputs
    mood = out["prompt"]
    assert mood.mood in ("calm", "tense", "funny") and 1 <= mood.intensity <= 5 and len(mood.words) <= 3
    assert out["rewrite"].original == "space films" and len(out["rewrite"].keywords) <= 3
    popular = ["m1", "m2", "m3", "m4"]
    for mode in ("listwise", "pointwise", "pairwise"):
        ranked = out[mode]
        assert isinstance(ranked, Candidates) and sorted(ranked.ids) == sorted(popular), mode
    assert all("llm" in c.sources for c in out["pointwise"].items[:3])
    assert all(0.0 <= c.sources["llm"] <= 10.0 for c in out["pointwise"].items[:3])
    assert sum(c.sources.get("llm", 0.0) for c in out["pairwise"].items) == 3.0  # 3 pairs, each won by one side
    rec = out["recommend"]
    assert len(rec.ids) == 2 and set(rec.ids) <= IDS and "m1" not in rec.ids  # u1 has seen m1
    assert result.trace.node("recommend").status == "ok"
    assert [e.id for e in out["explain"].items] == popular
    label = out["label"]
    assert label.label in LABELS and all(s.label in LABELS for s in label.top) and len(label.top) <= 2
    assert len({s.label for s in label.top}) == len(label.top)
    grades = out["relevance"].grades
    assert set(grades) == {"m1", "m2", "m3"} and all(0 <= g <= 3 for g in grades.values())
    judge = out["judge"]
    assert set(judge.scores) == {"relevance", "variety"} and all(1 <= s <= 5 for s in judge.scores.values())
    plan = out["plan"]
    assert all(i.item_id is None or i.item_id in IDS for i in plan.items)


async def test_the_answers_come_from_the_grammar_not_from_repairs(tmp_path, provider) -> None:
    """The nodes re-check answers and repair what a provider got wrong; constrained decoding needs none of it:
    the raw answers already keep every choice."""
    seen = []
    real = provider.complete

    async def spy(request):
        done = await real(request)
        seen.append((request, done))
        return done

    provider.complete = spy  # type: ignore[method-assign]
    try:
        await run_with(_spec(tmp_path), {"query": "space films"}, {"model": provider})
    finally:
        del provider.complete
    assert len(seen) == 15
    from llmrec.llm.remote import choice_problems

    for request, done in seen:
        assert done.parsed is not None and type(done.parsed) is request.schema
        request.schema.model_validate_json(done.text)
        assert choice_problems(done.parsed, request.choices) == [], (request.schema.__name__, done.text)
    by_schema = {r.schema.__name__: d.parsed for r, d in seen}
    assert set(by_schema["RecommendAnswer"].items) <= TITLES - {"Alien"}
    assert len(by_schema["RankAnswer"].ranking) == len(set(by_schema["RankAnswer"].ranking))


# -- choices on a field that is already an enum ------------------------------------------------------------------


class Labelled(BaseModel):
    label: Literal["a", "b", "c"]
    many: list[Literal["a", "b", "c"]] = Field(max_length=3)


def test_choices_on_an_enum_field_narrow_it() -> None:
    plan = compile_constraints(Labelled, (Choices("label", ("a", "b", "c")), Choices("many[]", ("c", "a"))), 100)
    props = plan.json_schema["properties"]
    assert props["label"]["enum"] == ["a", "b", "c"]
    assert props["many"]["items"]["enum"] == ["a", "c"]  # the schema's order, only what both allow
    assert props["many"]["maxItems"] == 2  # unique, and two values left
    assert [u.decoded for u in plan.unique] == [("a", "c")]
    with pytest.raises(ProviderError, match="share no value with the field's enum"):
        compile_constraints(Labelled, (Choices("label", ("x", "y")),), 100)

    class Stars(BaseModel):
        stars: Literal[1, 2, 3]

    assert compile_constraints(Stars, (Choices("stars", ("3", "1", "9")),), 50).json_schema[
        "properties"]["stars"]["enum"] == [1, 3]


# -- a schema whose own bounds need more than the default max_tokens ------------------------------------------------


class Essay(BaseModel):
    text: str = Field(max_length=300)  # up to 4 bytes a character: more than the default 256 tokens


def test_the_schema_bounds_decide_when_no_max_tokens_is_set(tiny_model_dir, provider) -> None:
    """llm.explain's reasons may be 400 characters: with no max_tokens anywhere the schema gets the room it
    needs; a max_tokens set on the request or the resource is a limit, and a schema that cannot fit is refused."""
    req = CompletionRequest((Message("user", "Write."),), schema=Essay, temperature=1.0, seed=1)
    done = asyncio.run(provider.complete(req))
    assert isinstance(done.parsed, Essay) and done.usage.completion_tokens > 0
    with pytest.raises(ProviderError, match="max_tokens is 256"):
        asyncio.run(provider.complete(CompletionRequest(req.messages, schema=Essay, max_tokens=256)))
    limited = TransformersProvider(str(tiny_model_dir), max_new_tokens=256)
    with pytest.raises(ProviderError, match="max_tokens is 256"):
        asyncio.run(limited.complete(req))
