"""The ``redis`` session store and cache backend against a real redis-server: the store contract (load, save,
delete, TTL as Redis expiry, the size bound, namespaces), the cache (hit, miss, TTL, the codec round trip of node
output types, never pickle), a spec's ``cache: {backend: redis}`` shared by two runtimes, and Redis down (a miss
with a CacheWarning; a RedisUnavailable naming the URL with its password masked)."""

from __future__ import annotations

import asyncio
import pickle
import warnings

import numpy as np
import pytest
import redis

from llmrec import Runtime, validate
from llmrec.caches import CacheWarning
from llmrec.plugins import get_registry
from llmrec.stores import RedisCache, RedisSessionStore, RedisUnavailable, mask_url
from llmrec.testing import write_spec
from llmrec.types import Candidates, Recommendation, ScoredItem, UserProfile

from .conftest import PASSWORD, free_port


def raw(server) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_both_register_through_the_plugin_hooks() -> None:
    registry = get_registry(None)
    assert registry.session_stores["redis"] is RedisSessionStore
    assert registry.cache_backends["redis"] is RedisCache
    assert registry.session_stores.entry("redis").plugin.name == "llmrec.stores"  # a default plugin like any other


async def test_session_store_contract(redis_server) -> None:
    store = RedisSessionStore(url=redis_server.url, namespace="shop", max_session_bytes=2000)
    other = RedisSessionStore(url=redis_server.url, namespace="news")
    try:
        assert await store.load("s1") is None
        state = {"turns": [{"inputs": {"q": "héllo"}, "outputs": {"n": 1}, "at": 1.5}], "turn_count": 1}
        await store.save("s1", state, ttl=30)
        assert await store.load("s1") == state
        assert 29 < await store.ttl("s1") <= 30  # the session TTL is the key's Redis expiry
        assert raw(redis_server).get("llmrec:session:shop:s1") is not None  # prefix + namespace + id
        assert await other.load("s1") is None  # another spec's namespace
        await store.save("s1", {**state, "turn_count": 2}, ttl=30)  # a save replaces and refreshes
        assert (await store.load("s1"))["turn_count"] == 2
        await store.save("forever", {"a": 1}, ttl=0)  # 0: no expiry
        assert await store.ttl("forever") is None and await store.load("forever") == {"a": 1}
        await store.save("brief", {"a": 1}, ttl=0.05)
        await asyncio.sleep(0.12)
        assert await store.load("brief") is None  # expired by Redis
        await store.save("s1", {"big": "x" * 5000}, ttl=30)  # over max_session_bytes: not kept, the old one gone
        assert await store.load("s1") is None
        await store.save("s2", {"a": 1}, ttl=30)
        await store.delete("s2")
        assert await store.load("s2") is None
        raw(redis_server).set("llmrec:session:shop:bad", b"\x80not json")
        assert await store.load("bad") is None  # what this store did not write starts afresh
    finally:
        await store.close()
        await other.close()


async def test_session_store_down_raises_with_the_password_masked() -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisSessionStore(url=url, retry_after=5)
    with pytest.raises(RedisUnavailable) as first:
        await store.load("s1")
    with pytest.raises(RedisUnavailable) as second:  # within retry_after: fails at once, same message
        await store.save("s1", {"a": 1}, ttl=10)
    for exc in (first.value, second.value):
        assert PASSWORD not in str(exc) and mask_url(url) in str(exc) and ":***@" in str(exc)
    with pytest.raises(RedisUnavailable) as startup:
        store.prepare()
    assert PASSWORD not in str(startup.value) and "start Redis there" in str(startup.value)
    assert mask_url(f"redis://user:{PASSWORD}@h:1/2?password={PASSWORD}&db=2") == \
        "redis://user:***@h:1/2?password=***&db=2"


async def test_a_wrong_password_is_refused_without_echoing_it(redis_server) -> None:
    url = redis_server.url.replace(PASSWORD, "not-the-pw")
    with pytest.raises(RedisUnavailable) as exc:
        RedisSessionStore(url=url).prepare()
    assert "not-the-pw" not in str(exc.value) and PASSWORD not in str(exc.value)


async def test_cache_hit_miss_ttl_and_codec_round_trip(redis_server) -> None:
    cache = RedisCache(url=redis_server.url, prefix="llmrec:test-cache:")
    try:
        assert await cache.get("n:v:1") == (False, None)
        values = {
            "candidates": Candidates(items=[ScoredItem(id="m1", score=0.5, sources={"bm25": 1.25})], source="bm25"),
            "recommendations": [Recommendation(rank=1, id="m1", title="Alien", score=0.9, reason="sci-fi")],
            "profile": UserProfile(user_id="u1", known=True, history_size=2, seen=["m1", "m2"]),
            "vectors": np.arange(6, dtype=np.float32).reshape(2, 3),
            "mixed": {"t": (1, 2.5, None), 3: {"s"}, "nan": float("nan"), "b": b"\x00\x01"},
            "text": "plain",
        }
        for name, value in values.items():
            await cache.set(f"n:v:{name}", value, ttl=60)
        for name, value in values.items():
            hit, got = await cache.get(f"n:v:{name}")
            assert hit, name
            if name == "vectors":
                assert got.dtype == value.dtype and np.array_equal(got, value)
            elif name == "mixed":
                assert got["t"] == (1, 2.5, None) and got[3] == {"s"} and got["nan"] != got["nan"]
                assert got["b"] == b"\x00\x01"
            else:
                assert got == value and type(got) is type(value), name
        assert 59 < raw(redis_server).pttl("llmrec:test-cache:n:v:text") / 1000 <= 60  # TTL as Redis expiry
        await cache.set("n:v:brief", 1, ttl=0.05)
        await asyncio.sleep(0.12)
        assert await cache.get("n:v:brief") == (False, None)
        await cache.set("n:v:none", None, ttl=None)
        assert await cache.get("n:v:none") == (True, None)  # a cached None is a hit
        assert raw(redis_server).pttl("llmrec:test-cache:n:v:none") == -1  # no TTL: no expiry
    finally:
        await cache.close()


async def test_cache_never_unpickles_and_refuses_what_the_codec_cannot_hold(redis_server) -> None:
    cache = RedisCache(url=redis_server.url, prefix="llmrec:test-cache:")
    try:
        raw(redis_server).set("llmrec:test-cache:n:v:evil", pickle.dumps({"a": 1}))
        with pytest.warns(CacheWarning, match="unreadable entry dropped"):
            assert await cache.get("n:v:evil") == (False, None)
        assert raw(redis_server).exists("llmrec:test-cache:n:v:evil") == 0
        with pytest.warns(CacheWarning, match="not cached"):
            await cache.set("n:v:obj", object(), ttl=10)
        assert await cache.get("n:v:obj") == (False, None)
    finally:
        await cache.close()


async def test_cache_down_is_a_miss_with_one_warning_and_comes_back() -> None:
    port = free_port()
    cache = RedisCache(url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0", retry_after=0)
    with pytest.warns(CacheWarning) as caught:
        assert await cache.get("n:v:1") == (False, None)
        await cache.set("n:v:1", 1, ttl=10)  # nothing stored, no error
        assert await cache.get("n:v:1") == (False, None)
    assert len(caught) == 1 and PASSWORD not in str(caught[0].message) and ":***@" in str(caught[0].message)


SPEC = """
name: cached-shop
inputs:
  k: {type: integer, default: 3}
resources:
  shop:
    type: dataset
    config: {name: demo, seed: 7, split: user}
nodes:
  popular:
    type: retrieve.popular
    config: {k: 5}
    inputs: {interactions: "${resources.shop.train}"}
    cache: {backend: redis, ttl: 60s}
outputs:
  items: ${popular}
"""


async def test_a_spec_cache_on_redis_is_shared_by_two_runtimes(redis_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_REDIS_URL", redis_server.url)
    graph = validate(str(write_spec(tmp_path, SPEC)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        first = await Runtime(graph).run({})
        second = await Runtime(validate(str(tmp_path / "spec.yaml"))).run({})
    assert first.trace.node("popular").status == "ok"
    rec = second.trace.node("popular")
    assert rec.status == "cached" and rec.cache_hit
    assert second.outputs["items"] == first.outputs["items"] and isinstance(second.outputs["items"], Candidates)
    assert any(k.startswith(b"llmrec:cache:popular:") for k in raw(redis_server).keys("llmrec:cache:*"))


PROMPT_SPEC = """
name: cached-llm
inputs:
  liked: {type: array, items: string}
resources:
  model: {type: llm, config: {provider: litellm, model: openai/stub}}
nodes:
  pick:
    type: llm.prompt
    config:
      template: "I liked {{ liked | join(', ') }}."
      prompt_cache: {backend: redis, ttl: 1h}
    inputs: {model: "${resources.model}", liked: "${inputs.liked}"}
outputs:
  text: ${pick}
"""


async def test_a_prompt_cache_on_redis_answers_another_worker_without_a_model_call(redis_server, tmp_path,
                                                                                  monkeypatch) -> None:
    """Two runtimes (two workers, or two hosts) with one Redis: the second answers the same prompt from the first
    one's cached response, costing no call; another prompt is a miss."""
    from llmrec.testing import FakeProvider

    monkeypatch.setenv("LLMREC_REDIS_URL", redis_server.url)
    path = str(write_spec(tmp_path, PROMPT_SPEC))
    first_model = FakeProvider(lambda request: f"answer to {request.messages[-1].content}")
    second_model = FakeProvider(lambda request: "a second model that should not be asked")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        one = Runtime(validate(path), resources={"model": first_model})
        first = await one.run({"liked": ["Alien"]})
        two = Runtime(validate(path), resources={"model": second_model})
        second = await two.run({"liked": ["Alien"]})
        other = await two.run({"liked": ["Heat"]})
        await one.close()
        await two.close()
    assert first_model.calls == 1 and not first.trace.node("pick").cache_hit
    assert second.outputs == first.outputs and second.trace.node("pick").cache == "prompt"
    assert second_model.calls == 1 and other.outputs["text"] == "a second model that should not be asked"
    assert raw(redis_server).keys("llmrec:cache:*")
