"""The transformers provider with a tiny random-weight model: constrained output always parses and validates."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from llmrec.errors import DataError, NodeTimeoutError, ProviderError
from llmrec.llm.local import TransformersProvider, UniqueTracker, compile_constraints, render_prompt, \
    transformers_provider
from llmrec.llm.provider import Choices, CompletionRequest, Message

CATALOG = ("m1", "m12", 'Amélie "the" film', "Zoë")
MAX_TOKENS = 400


class Pick(BaseModel):
    id: str
    stars: int = Field(ge=1, le=5)


class Meta(BaseModel):
    lang: Literal["en", "fr"]
    year: int = Field(ge=1900, le=2030)


class Plan(BaseModel):
    title: str = Field(max_length=6)
    score: float = Field(ge=0, le=10)
    genre: Literal["drama", "comedy", "war"]
    meta: Meta
    note: Optional[str] = Field(default=None, max_length=4)
    picks: list[Pick] = Field(min_length=1, max_length=6)  # more slots than CATALOG has values


class Ids(BaseModel):
    ids: list[str] = Field(max_length=6)


def _request(seed: int, schema=Plan, choices=(Choices("picks[].id", CATALOG),), **kw) -> CompletionRequest:
    kw.setdefault("max_tokens", MAX_TOKENS)
    return CompletionRequest((Message("system", "Answer in JSON."), Message("user", "Recommend films.")),
                             schema=schema, choices=choices, temperature=1.0, seed=seed, **kw)


@pytest.fixture(scope="module")
def provider(tiny_model_dir):
    p = TransformersProvider(str(tiny_model_dir))
    p.load()
    return p


def test_constrained_generations_always_parse_validate_and_stay_in_catalog(provider):
    async def many():
        return [await provider.complete(_request(seed)) for seed in range(50)]

    completions = asyncio.run(many())
    lengths = []
    for c in completions:
        data = json.loads(c.text)  # strict: raw control characters in strings would fail here
        Plan.model_validate(data)
        ids = [p["id"] for p in data["picks"]]
        assert set(ids) <= set(CATALOG)
        assert len(ids) == len(set(ids)), ids
        assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', "", c.text))  # no whitespace outside strings
        assert 0 < c.usage.completion_tokens <= MAX_TOKENS
        assert isinstance(c.parsed, Plan) and c.provider == "transformers" and c.attempts == 1
        lengths.append(len(ids))
    assert len({c.text for c in completions}) == 50  # the seeds really sample different outputs
    assert max(lengths) == len(CATALOG)  # lists ran into "no value left", and stopped there


def test_uniqueness_is_what_removes_duplicates(provider):
    """Same model, same seeds: with unique=False the random model repeats ids; with unique=True it never does."""

    async def run(unique: bool):
        return [await provider.complete(_request(s, Ids, (Choices("ids[]", CATALOG[:3], unique=unique),)))
                for s in range(12)]

    loose = [c.parsed.ids for c in asyncio.run(run(False))]
    strict = [c.parsed.ids for c in asyncio.run(run(True))]
    assert any(len(ids) != len(set(ids)) for ids in loose)
    assert all(len(ids) == len(set(ids)) and set(ids) <= set(CATALOG[:3]) for ids in strict)
    assert all(len(ids) <= 3 for ids in strict)


def test_integer_choices_are_unique_too(provider):
    class Numbers(BaseModel):
        ids: list[int] = Field(max_length=5)

    async def run():
        return [await provider.complete(_request(s, Numbers, (Choices("ids[]", ("1", "12", "123")),)))
                for s in range(10)]

    lists = [c.parsed.ids for c in asyncio.run(run())]
    assert all(len(ids) == len(set(ids)) and set(ids) <= {1, 12, 123} for ids in lists)
    assert any(1 in ids for ids in lists) and any(len(ids) == 3 for ids in lists)


def test_seeded_sampling_is_reproducible_and_greedy_is_deterministic(provider):
    a, b = (asyncio.run(provider.complete(_request(7))) for _ in range(2))
    assert a.text == b.text
    free = CompletionRequest((Message("user", "hello"),), max_tokens=20)
    x, y = (asyncio.run(provider.complete(free)) for _ in range(2))
    assert x.text == y.text and x.parsed is None


def test_free_text_is_plain_sampling_within_max_tokens(provider):
    req = CompletionRequest((Message("user", "Tell me about films."),), temperature=1.0, seed=3, max_tokens=40)
    c = asyncio.run(provider.complete(req))
    assert isinstance(c.text, str) and c.parsed is None
    assert 0 < c.usage.completion_tokens <= 40 and c.usage.prompt_tokens > 0


def test_timeout_stops_generation_without_blocking_the_loop(provider):
    req = CompletionRequest((Message("user", "go"),), temperature=1.0, seed=1, max_tokens=1500, timeout=0.3)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        start = time.monotonic()
        with pytest.raises(NodeTimeoutError, match="did not finish within 0.3 s"):
            await provider.complete(req)
        elapsed = time.monotonic() - start
        task.cancel()
        return elapsed, ticks

    elapsed, ticks = asyncio.run(main())
    assert elapsed < 1.5
    assert ticks >= 10  # the event loop kept running while the model generated


def test_cancelled_call_releases_the_model(provider):
    async def main():
        long = CompletionRequest((Message("user", "go"),), temperature=1.0, seed=1, max_tokens=1500)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(provider.complete(long), 0.2)
        start = time.monotonic()  # the worker stops at its next token, so the next call is not stuck behind it
        await provider.complete(CompletionRequest((Message("user", "hi"),), max_tokens=3))
        return time.monotonic() - start

    assert asyncio.run(main()) < 2.0


def test_missing_model_says_where_to_put_it(tmp_path):
    missing = tmp_path / "models" / "tiny"
    with pytest.raises(DataError) as err:
        asyncio.run(TransformersProvider(str(missing)).complete(_request(0)))
    assert str(missing) in str(err.value) and "config.json" in str(err.value)
    with pytest.raises(DataError, match="Hugging Face cache"):
        asyncio.run(TransformersProvider("nobody-here/no-such-model").complete(_request(0)))


def test_budget_is_checked_before_generating():
    class Long(BaseModel):
        text: str = Field(max_length=500)

    with pytest.raises(ProviderError, match=r"up to \d+ tokens.*max_tokens is 100"):
        compile_constraints(Long, (), 100)
    plan = compile_constraints(Plan, (Choices("picks[].id", CATALOG),), MAX_TOKENS)
    assert plan.max_bytes < MAX_TOKENS
    # unbounded fields got caps, and the caps shrink as the budget does
    assert plan.json_schema["properties"]["picks"]["maxItems"] == len(CATALOG)  # one distinct id each
    small = compile_constraints(Ids, (), 60)
    assert small.json_schema["properties"]["ids"]["maxItems"] == 6
    assert small.string_cap < compile_constraints(Ids, (), 2000).string_cap
    assert small.json_schema["additionalProperties"] is False

    class Loose(BaseModel):
        x: float
        n: int

    props = compile_constraints(Loose, (), 200).json_schema["properties"]
    assert props["x"]["minimum"] < 0 < props["x"]["maximum"] and props["x"]["multipleOf"] == 1e-4
    assert props["n"]["minimum"] < 0 < props["n"]["maximum"]  # else a random model writes digits forever


def test_bad_choices_and_schemas_are_refused():
    with pytest.raises(ProviderError, match="'picks\\[\\].nope' names no"):
        compile_constraints(Plan, (Choices("picks[].nope", CATALOG),), MAX_TOKENS)
    with pytest.raises(ProviderError, match="are empty"):
        compile_constraints(Plan, (Choices("picks[].id", ()),), MAX_TOKENS)

    class Three(BaseModel):
        ids: list[str] = Field(min_length=3, max_length=4)  # needs 3 distinct ids

    with pytest.raises(ProviderError, match="at least 3 distinct values but only 2"):
        compile_constraints(Three, (Choices("ids[]", ("a", "b")),), MAX_TOKENS)

    class Node(BaseModel):
        children: list[Node] = Field(default_factory=list)

    with pytest.raises(ProviderError, match="recursive"):
        compile_constraints(Node, (), MAX_TOKENS)

    class Free(BaseModel):
        attrs: dict[str, str]

    with pytest.raises(ProviderError, match="free-form mapping"):
        compile_constraints(Free, (), MAX_TOKENS)


def test_tracker_follows_values_split_across_tokens():
    plan = compile_constraints(Plan, (Choices("picks[].id", ("a", "ab", "b")),), MAX_TOKENS)
    t = UniqueTracker(plan.unique)
    assert t.feed(b'{"title":"x","picks":[{"id":"a') and t.feed(b'b","stars":1},{"id":"')
    assert t.clone().feed(b'a"')  # "a" is still free
    assert not t.clone().feed(b'ab"')  # "ab" was used
    assert t.feed(b'b"},{"id":"a"}')
    assert not t.clone().feed(b",")  # three values, three elements: no fourth
    assert t.feed(b"]}")


def test_prompt_uses_the_chat_template_when_there_is_one(provider):
    tok = provider._loaded.tokenizer
    msgs = (Message("system", "be brief"), Message("user", "hi"))
    text, templated = render_prompt(tok, msgs)
    assert templated and text == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    saved, tok.chat_template = tok.chat_template, None
    try:
        assert render_prompt(tok, msgs) == ("system: be brief\nuser: hi\nassistant:", False)
    finally:
        tok.chat_template = saved


def test_factory_takes_the_llm_resource_config(tiny_model_dir, tmp_path):
    p = transformers_provider(provider="transformers", model=str(tiny_model_dir), max_tokens=64, timeout=5.0,
                              temperature=0.7, max_retries=2, seed=3, dtype="float32")
    assert (p.max_new_tokens, p.timeout, p.temperature, p.seed, p.name) == (64, 5.0, 0.7, 3, "transformers")
    with pytest.raises(ValueError, match="unknown transformers provider option"):
        transformers_provider(model=str(tiny_model_dir), temprature=0.2)
    with pytest.raises(ValueError, match="api_key .* remote providers"):
        transformers_provider(model=str(tiny_model_dir), api_key="sk-x")
    with pytest.raises(DataError, match="not found"):  # checked when the resource is built, nothing loaded
        transformers_provider(model=str(tmp_path / "nowhere"))
