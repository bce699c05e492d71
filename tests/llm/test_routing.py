"""Provider routing: an llm resource with `fallbacks` tries its routes in order (and by prompt size)."""

from __future__ import annotations

import textwrap
import time

import pytest
from pydantic import BaseModel

import llmrec
from llmrec.errors import ProviderError
from llmrec.llm import CompletionRequest, Message
from llmrec.llm.routing import Route, RoutedProvider
from llmrec.testing import FakeProvider


class Pick(BaseModel):
    items: list[str]


def _request(text: str = "recommend", timeout: float | None = None) -> CompletionRequest:
    return CompletionRequest(messages=(Message("user", text),), schema=Pick, timeout=timeout)


async def test_a_failing_route_hands_over_to_the_next_and_usage_adds_up() -> None:
    cheap = FakeProvider([ProviderError("503 from the cheap model")], model="cheap")
    strong = FakeProvider([{"items": ["i1"]}], model="strong")
    done = await RoutedProvider([Route(cheap), Route(strong)]).complete(_request())
    assert done.parsed == Pick(items=["i1"]) and done.model == "strong"
    assert cheap.calls == 1 and strong.calls == 1 and done.attempts == 2


async def test_a_slow_route_times_out_on_its_own_timeout() -> None:
    async def hang(request):
        import asyncio

        await asyncio.sleep(5)

    slow = FakeProvider(hang, model="slow")
    fast = FakeProvider([{"items": ["i2"]}], model="fast")
    start = time.perf_counter()
    done = await RoutedProvider([Route(slow, timeout=0.2), Route(fast)]).complete(_request(timeout=3.0))
    assert done.model == "fast" and time.perf_counter() - start < 1.5


async def test_routes_by_prompt_size() -> None:
    small = FakeProvider(lambda r: {"items": ["small"]}, model="small")
    large = FakeProvider(lambda r: {"items": ["large"]}, model="large")
    routed = RoutedProvider([Route(small, max_input_chars=20), Route(large)])
    assert (await routed.complete(_request("short"))).parsed.items == ["small"]
    assert (await routed.complete(_request("a much longer prompt than twenty"))).parsed.items == ["large"]
    assert small.calls == 1 and large.calls == 1


async def test_every_route_failing_is_one_clear_error() -> None:
    a = FakeProvider([ProviderError("down")], model="a")
    b = FakeProvider(["not json"], model="b")
    with pytest.raises(ProviderError) as info:
        await RoutedProvider([Route(a), Route(b)]).complete(_request())
    assert "every route failed" in str(info.value) and "fake:a: " in str(info.value) and "fake:b: " in str(info.value)


PLUGIN = '''
import llmrec
from llmrec.testing import FakeProvider

@llmrec.hookimpl
def llmrec_register_providers(register):
    def scripted(model, reply=None, fail=False, **config):
        from llmrec.errors import ProviderError
        return FakeProvider(lambda r: ProviderError("down") if fail else {"items": [reply]}, model=model)
    register("scripted", scripted)
'''

SPEC = """
name: routed
resources:
  model:
    type: llm
    config:
      provider: scripted
      model: cheap
      extra: {fail: true}
      fallbacks:
        - {provider: scripted, model: strong, extra: {reply: from-strong}}
        - {provider: scriptd, model: typo}
nodes:
  pick:
    type: llm.prompt
    config: {template: "pick one", schema: "pick_schema.py:Pick"}
    inputs: {model: "${resources.model}"}
outputs: {items: "${pick.items}"}
"""


def _write(tmp_path, text: str):
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "scripted.py").write_text(PLUGIN, encoding="utf-8")
    (tmp_path / "pick_schema.py").write_text("from pydantic import BaseModel\n\nclass Pick(BaseModel):\n"
                                            "    items: list[str]\n", encoding="utf-8")
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_an_unknown_provider_in_fallbacks_is_a_validation_error(tmp_path) -> None:
    _, errors, _ = llmrec.check(_write(tmp_path, SPEC))
    assert [e.message for e in errors] == ["unknown provider 'scriptd' in fallbacks[1]"]
    assert "Did you mean 'scripted'?" in (errors[0].hint or "")


async def test_fallbacks_through_a_spec(tmp_path) -> None:
    path = _write(tmp_path, SPEC.replace("        - {provider: scriptd, model: typo}\n", ""))
    result = await llmrec.Runtime(llmrec.validate(path)).run({})
    assert result.outputs["items"] == ["from-strong"]
    rec = result.trace.node("pick")
    assert rec.usage.model == "strong" and rec.usage.calls == 2
