"""The ``redis`` log store against a real redis-server: impressions and feedback appended as stream entries and
read back in order (across pages), trimmed to about ``max_records``, a served spec's answers and feedback joined by
``read_logs("redis:URL")``, and Redis down as a RedisUnavailable with the password masked."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis

from llmrec.serve.app import ServeOptions, create_app
from llmrec.serve.logs import read_logs
from llmrec.stores import RedisLogStore, RedisUnavailable
from llmrec.testing import write_spec

from .conftest import PASSWORD, free_port

SHOP = """
name: small
inputs:
  user_id: {type: string}
  k: {type: integer, default: 3}
resources:
  shop:
    type: dataset
    config: {name: demo, seed: 7, split: user}
nodes:
  profile:
    type: user.profile
    inputs:
      catalog: ${resources.shop.catalog}
      interactions: ${resources.shop.train}
      user_id: ${inputs.user_id}
  popular:
    type: retrieve.popular
    config: {k: 20}
    inputs: {interactions: "${resources.shop.train}"}
  result:
    type: present.items
    inputs: {candidates: "${popular}", catalog: "${resources.shop.catalog}", profile: "${profile}", k: "${inputs.k}"}
outputs:
  recommendations: ${result}
"""


def test_records_round_trip_in_order_across_pages_and_are_trimmed(redis_server) -> None:
    store = RedisLogStore(redis_server.url, prefix="llmrec:test-log:")
    store.PAGE = 7  # several XRANGE pages
    try:
        store.prepare()
        records = [{"kind": "impression", "request_id": f"r{i}", "ts": i + 0.5, "items": [{"id": "m1"}],
                    "score": float("nan") if i == 3 else i} for i in range(20)]
        store.append_impressions(records[:12])
        store.append_impressions(records[12:])
        store.append_feedback([{"kind": "feedback", "request_id": "r1", "item_id": "m1", "type": "click"}])
        back = list(store.impressions())
        assert [r["request_id"] for r in back] == [f"r{i}" for i in range(20)]
        assert back[3]["score"] is None and back[5]["score"] == 5 and back[0]["items"] == [{"id": "m1"}]
        assert [r["type"] for r in store.feedback()] == ["click"]
    finally:
        store.close()
    small = RedisLogStore(redis_server.url, prefix="llmrec:test-trim:", max_records=10)
    try:
        for i in range(30):
            small.append_feedback([{"request_id": f"r{i}-{j}"} for j in range(20)])
        kept = list(small.feedback())
        assert 10 <= len(kept) <= 200 and kept[-1]["request_id"] == "r29-19"  # about max_records: oldest trimmed
    finally:
        small.close()


def test_a_log_store_that_cannot_reach_redis_says_where_with_the_password_masked() -> None:
    store = RedisLogStore(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")
    for call in (store.prepare, lambda: store.append_impressions([{"request_id": "r"}]),
                 lambda: list(store.feedback())):
        with pytest.raises(RedisUnavailable) as exc:
            call()
        assert PASSWORD not in str(exc.value) and ":***@" in str(exc.value)
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisLogStore("logs/serve.db")


async def test_served_answers_and_feedback_are_logged_to_redis_and_read_back(redis_server, tmp_path,
                                                                            monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_REDIS_URL", redis_server.url)  # --log-store redis: reads the URL there
    redis.Redis.from_url(redis_server.url).delete("llmrec:log:impressions", "llmrec:log:feedback")
    spec = write_spec(tmp_path, SHOP)
    app = create_app(ServeOptions(spec=str(spec), reload_interval=0, log_store="redis", log_location=""))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            for _ in range(200):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            r = await client.post("/v1/recommend", json={"user_id": "u1", "k": 3})
            assert r.status_code == 200
            rid = r.headers["X-Request-Id"]
            shown = [i["id"] for i in r.json()["outputs"]["recommendations"]["items"]]
            fb = await client.post("/v1/feedback", json={"request_id": rid, "item_id": shown[1], "type": "click"})
            assert fb.status_code == 202
            assert app.state.server.logs.flush()
    logged = {imp.request_id: imp for imp in read_logs("redis:")}
    assert set(logged) == {rid}
    imp = logged[rid]
    assert imp.ids == shown and imp.user_id == "u1" and imp.spec == "small"
    assert [(f.type, f.item_id, f.shown) for f in imp.feedback] == [("click", shown[1], True)]
