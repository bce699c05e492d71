"""llm.prompt's prompt_cache: exact and semantic hits cost no provider call and no tokens, version keys never
serve a stale answer, TTL, the disk backend across runtimes, and a corrupt cache that is only a miss."""

from __future__ import annotations

import asyncio
import re
import zlib

import numpy as np
import pytest

from llmrec.api import validate
from llmrec.caches import CacheWarning, DiskCache
from llmrec.runtime.executor import Runtime
from llmrec.testing import FakeProvider, errors_of, write_spec

SCHEMA = """
from pydantic import BaseModel

class Recs(BaseModel):
    thinking: str = ""
    items: list[str]
"""


class WordsEmbedder:
    """A stand-in for Embedder with the same ``encode``: hashed bag of words, so similarity is predictable."""

    name = "words-256"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % 256] += 1.0
        return out


def _spec(tmp_path, cache: str = "true", template: str = "I liked {{ liked | join(', ') }}.",
          system: str = "You recommend films.", extra_inputs: str = "", name: str = "spec.yaml") -> str:
    (tmp_path / "schemas").mkdir(exist_ok=True)
    if not (tmp_path / "schemas" / "recs.py").exists():
        (tmp_path / "schemas" / "recs.py").write_text(SCHEMA, encoding="utf-8")
    text = f"""
name: cached-llm
inputs:
  liked: {{type: array, items: string}}
resources:
  model: {{type: llm, config: {{provider: litellm, model: openai/stub}}}}
  minilm: {{type: embedder, config: {{model: all-MiniLM-L6-v2}}}}
nodes:
  pick:
    type: llm.prompt
    config:
      system: "{system}"
      template: "{template}"
      schema: schemas/recs.py:Recs
      reasoning_field: thinking
      prompt_cache: {cache}
    inputs: {{model: "${{resources.model}}", liked: "${{inputs.liked}}"{extra_inputs}}}
outputs:
  items: ${{pick.items}}
"""
    return str(write_spec(tmp_path, text, name))


def _answer(request) -> dict:
    """A reply that depends on the prompt, so a wrong cache hit would show."""
    return {"thinking": "hmm", "items": [f"for:{request.messages[-1].content}"]}


async def _run(path: str, fake, liked: list[str], embedder=None):
    resources = {"model": fake, "minilm": embedder or WordsEmbedder()}
    rt = Runtime(validate(path), resources=resources)
    try:
        return await rt.run({"liked": liked})
    finally:
        await rt.close()


# -- exact cache -------------------------------------------------------------------------------------------------


async def test_repeated_request_makes_no_provider_call_and_charges_nothing(tmp_path) -> None:
    fake = FakeProvider(_answer, cost_per_token=0.001)
    rt = Runtime(validate(_spec(tmp_path)), resources={"model": fake, "minilm": WordsEmbedder()})
    first = await rt.run({"liked": ["Alien"]})
    r1 = first.trace.node("pick")
    assert fake.calls == 1 and r1.usage.prompt_tokens > 0 and r1.cost > 0 and not r1.cache_hit and r1.cache is None
    second = await rt.run({"liked": ["Alien"]})
    r2 = second.trace.node("pick")
    assert fake.calls == 1  # the provider was not asked again
    assert second.outputs == first.outputs
    assert r2.cache_hit and r2.cache == "prompt" and r2.status == "ok"
    assert (r2.usage.prompt_tokens, r2.usage.completion_tokens, r2.usage.calls) == (0, 0, 0) and r2.cost == 0.0
    assert second.trace.to_dict()["nodes"][0]["cache"] == "prompt"
    third = await rt.run({"liked": ["Heat"]})
    assert fake.calls == 2 and not third.trace.node("pick").cache_hit
    assert third.outputs["items"] == ["for:I liked Heat."]


async def test_failed_answers_are_not_cached(tmp_path) -> None:
    fake = FakeProvider(["not json", {"items": ["ok"]}])
    rt = Runtime(validate(_spec(tmp_path)), resources={"model": fake, "minilm": WordsEmbedder()})
    with pytest.raises(Exception):
        await rt.run({"liked": ["Alien"]})
    again = await rt.run({"liked": ["Alien"]})
    assert again.outputs["items"] == ["ok"] and fake.calls == 2


async def test_ttl_expires_answers(tmp_path) -> None:
    fake = FakeProvider(_answer)
    rt = Runtime(validate(_spec(tmp_path, "{ttl: 0.15}")), resources={"model": fake, "minilm": WordsEmbedder()})
    await rt.run({"liked": ["Alien"]})
    await rt.run({"liked": ["Alien"]})
    assert fake.calls == 1
    await asyncio.sleep(0.2)
    late = await rt.run({"liked": ["Alien"]})
    assert fake.calls == 2 and not late.trace.node("pick").cache_hit


async def test_disk_cache_survives_a_new_runtime(tmp_path) -> None:
    path = _spec(tmp_path, "{backend: disk, path: llm-cache, ttl: 1h}")
    fake = FakeProvider(_answer)
    first = await _run(path, fake, ["Alien"])
    second = await _run(path, fake, ["Alien"])
    assert fake.calls == 1 and second.outputs == first.outputs
    assert second.trace.node("pick").cache == "prompt"
    assert (tmp_path / "llm-cache" / DiskCache.FILENAME).is_file()  # `path` is relative to the spec


async def test_changed_template_schema_or_model_never_serves_a_stale_answer(tmp_path) -> None:
    cache = "{backend: disk, path: llm-cache}"
    fake = FakeProvider(_answer)
    await _run(_spec(tmp_path, cache), fake, ["Alien"])
    await _run(_spec(tmp_path, cache), fake, ["Alien"])
    assert fake.calls == 1
    # a template edit that renders the very same text still changes the version key
    edited = _spec(tmp_path, cache, template="I liked {{ liked | join(', ') }}.{# v2 #}", name="v2.yaml")
    await _run(edited, fake, ["Alien"])
    assert fake.calls == 2
    # another model behind the same spec
    other = FakeProvider(_answer, model="other-model")
    await _run(_spec(tmp_path, cache), other, ["Alien"])
    assert other.calls == 1
    # another schema: same class name and prompt, one more field
    (tmp_path / "schemas" / "recs2.py").write_text(SCHEMA + "    why: str = ''\n", encoding="utf-8")
    changed = _spec(tmp_path, cache, name="v3.yaml")
    text = open(changed, encoding="utf-8").read().replace("schemas/recs.py:Recs", "schemas/recs2.py:Recs")
    await _run(str(write_spec(tmp_path, text, "v3.yaml")), fake, ["Alien"])
    assert fake.calls == 3
    await _run(_spec(tmp_path, cache), fake, ["Alien"])
    assert fake.calls == 3  # the original entry is still there for the original spec


# -- semantic cache ----------------------------------------------------------------------------------------------


async def test_semantic_hit_above_threshold_and_miss_below(tmp_path) -> None:
    path = _spec(tmp_path, "{semantic: {threshold: 0.9}}", extra_inputs=', cache_model: "${resources.minilm}"')
    fake = FakeProvider(_answer)
    embedder = WordsEmbedder()
    rt = Runtime(validate(path), resources={"model": fake, "minilm": embedder})
    first = await rt.run({"liked": ["Alien", "Heat", "Ran", "Up"]})
    near = await rt.run({"liked": ["Alien", "Heat", "Ran and Up"]})  # cosine 6/sqrt(42) = 0.93
    rec = near.trace.node("pick")
    assert fake.calls == 1 and rec.cache_hit and rec.cache == "semantic" and rec.usage.prompt_tokens == 0
    assert near.outputs == first.outputs
    far = await rt.run({"liked": ["Amelie"]})  # cosine 0.47
    assert fake.calls == 2 and not far.trace.node("pick").cache_hit
    assert far.outputs["items"] == ["for:I liked Amelie."]
    exact = await rt.run({"liked": ["Amelie"]})
    assert exact.trace.node("pick").cache == "prompt"  # exact hits come first


async def test_semantic_hit_needs_the_same_system_prompt_and_model(tmp_path) -> None:
    cache = "{backend: disk, path: llm-cache, semantic: {threshold: 0.5}}"
    inputs = ', cache_model: "${resources.minilm}"'
    fake = FakeProvider(_answer)
    await _run(_spec(tmp_path, cache, extra_inputs=inputs), fake, ["Alien", "Heat"])
    again = await _run(_spec(tmp_path, cache, extra_inputs=inputs), fake, ["Alien", "Heat", "Up"])
    assert fake.calls == 1 and again.trace.node("pick").cache == "semantic"  # index read back from disk
    other_system = _spec(tmp_path, cache, system="You recommend books.", extra_inputs=inputs, name="books.yaml")
    await _run(other_system, fake, ["Alien", "Heat", "Up"])
    assert fake.calls == 2
    other = FakeProvider(_answer, model="other-model")
    await _run(_spec(tmp_path, cache, extra_inputs=inputs), other, ["Alien", "Heat", "Up"])
    assert other.calls == 1


def test_semantic_cache_needs_an_embedder_input(tmp_path) -> None:
    errors = errors_of(_spec(tmp_path, "{semantic: {threshold: 0.9}}"))
    assert len(errors) == 1 and "missing required input 'cache_model'" in errors[0]


def test_unknown_backend_is_a_validation_error(tmp_path) -> None:
    errors = errors_of(_spec(tmp_path, "{backend: dsik}"))
    assert len(errors) == 1 and "unknown cache backend 'dsik'" in errors[0] and "Did you mean 'disk'" in errors[0]


# -- failure is a miss --------------------------------------------------------------------------------------------


async def test_corrupt_cache_file_is_a_miss_with_a_warning(tmp_path) -> None:
    path = _spec(tmp_path, "{backend: disk, path: llm-cache}")
    (tmp_path / "llm-cache").mkdir()
    (tmp_path / "llm-cache" / DiskCache.FILENAME).write_bytes(b"garbage" * 500)
    fake = FakeProvider(_answer)
    with pytest.warns(CacheWarning, match="corrupt"):
        result = await _run(path, fake, ["Alien"])
    assert result.trace.node("pick").status == "ok" and fake.calls == 1
    await _run(path, fake, ["Alien"])
    assert fake.calls == 1  # the fresh cache works


async def test_failing_embedder_is_a_miss_with_a_warning(tmp_path) -> None:
    class Broken:
        name = "broken"

        def encode(self, texts):
            raise RuntimeError("no model")

    path = _spec(tmp_path, "{semantic: {threshold: 0.9}}", extra_inputs=', cache_model: "${resources.minilm}"')
    fake = FakeProvider(_answer)
    with pytest.warns(UserWarning, match="could not embed"):
        result = await _run(path, fake, ["Alien"], embedder=Broken())
    assert result.outputs["items"] == ["for:I liked Alien."]


async def test_node_level_disk_cache_restores_the_output_without_its_reasoning_field(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    path = _spec(tmp_path, "false")
    text = open(path, encoding="utf-8").read().replace("outputs:", "    cache: {backend: disk}\noutputs:")
    path = str(write_spec(tmp_path, text, "node-cache.yaml"))
    fake = FakeProvider(_answer)
    first = await _run(path, fake, ["Alien"])
    second = await _run(path, fake, ["Alien"])
    assert fake.calls == 1 and second.trace.node("pick").status == "cached"
    assert second.outputs == first.outputs
