"""Batched decoding on the transformers provider: calls that arrive together share forward passes, and each one's
output is exactly what it gets alone (greedy, and seeded sampling too); deadlines, cancellation and errors stay
per call."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmrec.errors import NodeTimeoutError, ProviderError
from llmrec.llm.local import TransformersProvider, transformers_provider
from llmrec.llm.provider import Choices, CompletionRequest, Message

from .test_local import CATALOG, Ids, Plan


def _requests(temperature: float, n: int = 12) -> list[CompletionRequest]:
    """Prompts of different lengths; structured (unique choices, nested objects) and free text of different
    lengths, so that rows are padded differently and stop at different steps."""
    out = []
    for i in range(n):
        msgs = (Message("system", "Answer in JSON."), Message("user", "Recommend films " * (1 + i % 5) + str(i)))
        kw = {"temperature": temperature, "seed": i}
        if i % 3 == 0:
            out.append(CompletionRequest(msgs, schema=Plan, choices=(Choices("picks[].id", CATALOG),),
                                         max_tokens=400, **kw))
        elif i % 3 == 1:
            out.append(CompletionRequest(msgs, schema=Ids, choices=(Choices("ids[]", CATALOG[:3]),),
                                         max_tokens=120, **kw))
        else:
            out.append(CompletionRequest(msgs, max_tokens=5 + 6 * i, extra={"ignore_eos": i % 2 == 0}, **kw))
    return out


@pytest.fixture(scope="module")
def single(tiny_model_dir):
    p = TransformersProvider(str(tiny_model_dir), max_batch=1)
    p.load()
    return p


@pytest.fixture(scope="module")
def batched(tiny_model_dir):
    p = TransformersProvider(str(tiny_model_dir), max_batch=8, batch_window=0.05)
    p.load()
    return p


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_outputs_are_the_unbatched_ones(single, batched, temperature):
    async def one_by_one():
        return [await single.complete(r) for r in _requests(temperature)]

    async def together():
        return await asyncio.gather(*(batched.complete(r) for r in _requests(temperature)))

    before = (batched.stats.batches, batched.stats.forward_passes, single.stats.forward_passes)
    alone, joint = asyncio.run(one_by_one()), asyncio.run(together())
    assert [c.text for c in joint] == [c.text for c in alone]
    assert [c.usage.completion_tokens for c in joint] == [c.usage.completion_tokens for c in alone]
    assert [c.usage.prompt_tokens for c in joint] == [c.usage.prompt_tokens for c in alone]
    assert all(c.parsed is not None for c in joint[::3])
    # 12 calls: 8 + 4 when all arrive within the batching window; a loaded machine may spread them over 3
    assert 2 <= batched.stats.batches - before[0] <= 3 and batched.stats.largest_batch == 8
    passes_joint = batched.stats.forward_passes - before[1]
    passes_alone = single.stats.forward_passes - before[2]
    assert passes_joint < passes_alone / 2  # the rows shared their forward passes


def test_greedy_batched_is_deterministic_and_a_lone_call_is_not_batched(batched):
    req = _requests(0.0, 1)[0]

    async def twice():
        return await asyncio.gather(batched.complete(req), batched.complete(req))

    a, b = asyncio.run(twice())
    assert a.text == b.text
    calls = batched.stats.batched_calls
    lone = asyncio.run(batched.complete(req))
    assert lone.text == a.text and batched.stats.batched_calls == calls


def test_a_timeout_in_a_batch_stops_that_call_only(single, batched):
    slow = CompletionRequest((Message("user", "go"),), temperature=1.0, seed=1, max_tokens=1500, timeout=0.3,
                             extra={"ignore_eos": True})
    quick = _requests(0.0, 4)

    async def main():
        start = time.monotonic()
        results = await asyncio.gather(batched.complete(slow), *(batched.complete(r) for r in quick),
                                       return_exceptions=True)
        return results, time.monotonic() - start

    results, elapsed = asyncio.run(main())
    assert isinstance(results[0], NodeTimeoutError) and "did not finish within 0.3 s" in str(results[0])
    assert elapsed < 10  # the quick rows finished without waiting for the slow one's 1500 tokens
    alone = asyncio.run(_each(single, quick))
    assert [r.text for r in results[1:]] == [c.text for c in alone]


async def _each(provider, requests):
    return [await provider.complete(r) for r in requests]


def test_cancelling_one_call_leaves_the_others(single, batched):
    long = CompletionRequest((Message("user", "go"),), temperature=1.0, seed=1, max_tokens=1500,
                             extra={"ignore_eos": True})
    quick = _requests(0.0, 3)

    async def main():
        doomed = asyncio.ensure_future(batched.complete(long))
        others = [asyncio.ensure_future(batched.complete(r)) for r in quick]
        await asyncio.sleep(0.2)
        doomed.cancel()
        start = time.monotonic()
        done = await asyncio.gather(*others)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return done, time.monotonic() - start

    done, _ = asyncio.run(main())
    assert [c.text for c in done] == [c.text for c in asyncio.run(_each(single, quick))]

    async def after():  # the long row left the batch: the next call does not wait for its 1500 tokens
        start = time.monotonic()
        await batched.complete(CompletionRequest((Message("user", "hi"),), max_tokens=3))
        return time.monotonic() - start

    assert asyncio.run(after()) < 2.0


def test_an_error_in_one_call_fails_that_call_only(batched):
    bad_choices = CompletionRequest((Message("user", "x"),), choices=(Choices("ids[]", ("a",)),))
    too_long = CompletionRequest((Message("user", "film " * 3000),), max_tokens=10)
    good = _requests(0.0, 2)

    async def main():
        return await asyncio.gather(batched.complete(bad_choices), batched.complete(too_long),
                                    *(batched.complete(r) for r in good), return_exceptions=True)

    out = asyncio.run(main())
    assert isinstance(out[0], ProviderError) and "choices need an output schema" in str(out[0])
    assert isinstance(out[1], ProviderError) and "exceeds the context" in str(out[1])
    assert all(not isinstance(c, BaseException) for c in out[2:])


def test_a_waiting_call_times_out_while_another_batch_decodes(tiny_model_dir):
    p = TransformersProvider(str(tiny_model_dir), max_batch=1)
    long = CompletionRequest((Message("user", "go"),), temperature=1.0, seed=1, max_tokens=1500,
                             extra={"ignore_eos": True})
    waiting = CompletionRequest((Message("user", "hi"),), max_tokens=3, timeout=0.3)

    async def main():
        first = asyncio.ensure_future(p.complete(long))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(NodeTimeoutError, match="0 tokens generated"):
            await p.complete(waiting)
        elapsed = time.monotonic() - start
        first.cancel()
        return elapsed

    assert asyncio.run(main()) < 1.5


def test_batching_options(tiny_model_dir):
    p = transformers_provider(model=str(tiny_model_dir), max_batch=4, batch_window=0.01)
    assert (p.max_batch, p.batch_window) == (4, 0.01)
    assert transformers_provider(model=str(tiny_model_dir)).max_batch == 8
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        TransformersProvider(str(tiny_model_dir), max_batch=0)
