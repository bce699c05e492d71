"""The serving app in-process (httpx over ASGI): answers, errors, limits, sessions, streaming, metrics, reload."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from pathlib import Path

import pytest

from .conftest import FAILING, SHOP, TOOLS, wait_ready

pytestmark = pytest.mark.asyncio

GROUNDED = """
name: grounded
inputs:
  items: {type: array, items: string}
resources:
  shop:
    type: dataset
    config: {name: demo, seed: 7, split: user}
nodes:
  check:
    type: verify.grounded
    inputs: {items: "${inputs.items}", catalog: "${resources.shop.catalog}"}
outputs:
  items: ${check.items}
"""


def _error(response, status: int, type_: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == type_
    assert body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field
    assert "Traceback" not in response.text
    return body["error"]


async def test_recommend_answers_outputs_and_optionally_the_trace(serve) -> None:
    async with serve() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.post("/v1/recommend", json={"user_id": "u1", "k": 2})
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"outputs", "degraded"} and body["degraded"] is False
        items = body["outputs"]["recommendations"]["items"]
        assert [i["rank"] for i in items] == [1, 2]
        assert body["outputs"]["earlier_turns"] == "0"
        traced = (await client.post("/v1/recommend?trace=true", json={"user_id": "u1", "k": 2})).json()
        assert traced["outputs"] == body["outputs"]
        nodes = {n["node_id"]: n for n in traced["trace"]["nodes"]}
        assert set(nodes) == {"profile", "popular", "unseen", "result", "turns"}
        assert nodes["popular"]["cache_hit"] is True  # the first request filled the node cache
        assert all(n["wall_ms"] >= 0 for n in nodes.values())


async def test_readyz_is_503_until_resources_are_loaded(serve) -> None:
    async with serve(ready=False) as client:
        first = await client.get("/readyz")
        assert first.status_code == 503 and first.json()["ready"] is False
        _error(await client.post("/v1/recommend", json={"user_id": "u1"}), 503, "not_ready")
        await wait_ready(client)
        assert (await client.get("/readyz")).json() == {"ready": True, "spec": "small"}
        assert (await client.post("/v1/recommend", json={"user_id": "u1"})).status_code == 200


BAD_REQUESTS = [
    (b'{"user_id": "u1",', 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_body", None),
    (b'"u1"', 400, "invalid_body", None),
    (b"null", 400, "invalid_body", None),
    (b'{"user_id": 7}', 422, "invalid_input", "user_id"),
    (b'{"k": 3}', 422, "invalid_input", "user_id"),
    (b'{"user_id": "u1", "k": "many"}', 422, "invalid_input", "k"),
    (b'{"user_id": "u1", "k": 0}', 422, "invalid_input", "k"),
    (b'{"user_id": "u1", "color": "red"}', 422, "invalid_input", "color"),
    (b'{"user_id": "u1", "k": 1e999}', 422, "invalid_input", "k"),
    (b'\xff\xfe\x00garbage', 400, "invalid_encoding", None),
    (b'{"user_id": "\\udc80"}', 400, "invalid_unicode", "user_id"),
    (b"[" * 100_000, 400, "invalid_json", None),
    (b'{"user_id": "u1", "k": ' + b"9" * 5000 + b"}", 400, "invalid_json", None),
]


async def test_bad_requests_get_a_4xx_naming_the_field(serve) -> None:
    async with serve() as client:
        for body, status, type_, field in BAD_REQUESTS:
            error = _error(await client.post("/v1/recommend", content=body), status, type_, field)
            if field == "color":
                assert "user_id, k, history" in error["message"]  # says what the spec accepts
            for endpoint in ("/v1/recommend/stream", "/v1/recommend/batch"):  # same checks on every endpoint
                r = await client.post(endpoint, content=body)
                assert 400 <= r.status_code < 500 or (endpoint.endswith("batch") and r.status_code == 200), r.text


async def test_unicode_that_is_valid_is_answered(serve) -> None:
    async with serve() as client:
        r = await client.post("/v1/recommend", json={"user_id": "ユーザー\u0000😀", "k": 1})
        assert r.status_code == 200
        assert r.json()["outputs"]["recommendations"]["user_id"] == "ユーザー\u0000😀"


async def test_random_junk_never_gets_a_5xx_and_the_server_keeps_serving(serve) -> None:
    rng = random.Random(5)
    pieces = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"user_id", b"k", b"null", b"1e9", b"-", b"\\u", b"\xff",
              b"\x00", b"true", b'"u1"', b" ", "é".encode(), b"\\ud800"]
    async with serve() as client:
        for i in range(300):
            if i % 3 == 0:
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
            elif i % 3 == 1:
                body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 25)))
            else:
                value = rng.choice([None, 1, -1.5, "x", [], [1, "a"], {"a": {}}, True, "u1" * 50])
                body = json.dumps({rng.choice(["user_id", "k", "history", "zz"]): value}).encode()
            r = await client.post("/v1/recommend", content=body)
            assert 400 <= r.status_code < 500 or r.status_code == 200, (body, r.status_code, r.text)
            assert "error" in r.json() or r.status_code == 200
        assert (await client.post("/v1/recommend", json={"user_id": "u1"})).status_code == 200


async def test_not_found_and_wrong_method_are_json_errors(serve) -> None:
    async with serve() as client:
        _error(await client.get("/v1/nothing"), 404, "not_found")
        _error(await client.get("/v1/recommend"), 405, "method_not_allowed")


async def test_batch_answers_each_request_or_gives_it_its_own_error(serve) -> None:
    async with serve() as client:
        r = await client.post("/v1/recommend/batch", json={"requests": [
            {"user_id": "u1", "k": 1}, {"k": 2}, "not an object", {"user_id": "u2", "k": 2, "extra": 1},
            {"user_id": "u3", "k": 2}]})
        assert r.status_code == 200
        body = r.json()
        assert body["count"] == 5 and body["ok"] == 2
        results = body["results"]
        assert [x["status"] for x in results] == [200, 422, 400, 422, 200]
        assert len(results[0]["outputs"]["recommendations"]["items"]) == 1
        assert results[1]["error"]["field"] == "user_id" and results[3]["error"]["field"] == "extra"
        assert results[4]["outputs"]["recommendations"]["user_id"] == "u3"
        _error(await client.post("/v1/recommend/batch", json={"user_id": "u1"}), 400, "invalid_body", "requests")
        too_many = {"requests": [{"user_id": "u1"}] * 101}
        _error(await client.post("/v1/recommend/batch", json=too_many), 413, "batch_too_large", "requests")


async def test_stream_sends_one_event_per_node_then_the_result(serve) -> None:
    async with serve() as client:
        async with client.stream("POST", "/v1/recommend/stream", json={"user_id": "u4", "k": 2}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            text = (await r.aread()).decode()
        events = [block.split("\n") for block in text.strip().split("\n\n")]
        kinds = [e[0].removeprefix("event: ") for e in events]
        payloads = [json.loads(e[1].removeprefix("data: ")) for e in events]
        assert kinds == ["node"] * 5 + ["result"]
        assert {p["node_id"] for p in payloads[:-1]} == {"profile", "popular", "unseen", "result", "turns"}
        assert payloads[-1]["outputs"]["recommendations"]["user_id"] == "u4"
        # a bad request is refused before the stream starts
        _error(await client.post("/v1/recommend/stream", json={"user_id": 1}), 422, "invalid_input", "user_id")


async def test_a_two_turn_session_fills_history_from_the_previous_turn(serve) -> None:
    async with serve() as client:
        first = await client.post("/v1/recommend", json={"user_id": "u1", "k": 2}, headers={"X-Session-Id": "chat-1"})
        assert first.status_code == 200
        assert first.json()["turn"] == 1 and first.json()["session_id"] == "chat-1"
        assert first.json()["outputs"]["earlier_turns"] == "0"
        second = await client.post("/v1/recommend?session_id=chat-1&trace=true", json={"user_id": "u1", "k": 1})
        assert second.json()["turn"] == 2
        assert second.json()["outputs"]["earlier_turns"] == "1"
        state = await client.server.sessions.load("chat-1")
        assert [t["inputs"] for t in state["turns"]] == [{"user_id": "u1", "k": 2}, {"user_id": "u1", "k": 1}]
        assert state["turns"][0]["outputs"] == first.json()["outputs"]
        # another session, and a request without one, start from nothing
        other = await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Session-Id": "chat-2"})
        assert other.json()["outputs"]["earlier_turns"] == "0" and other.json()["turn"] == 1
        alone = await client.post("/v1/recommend", json={"user_id": "u1"})
        assert "turn" not in alone.json() and alone.json()["outputs"]["earlier_turns"] == "0"
        # a client that sends history itself wins
        sent = await client.post("/v1/recommend", json={"user_id": "u1", "history": [{}, {}, {}]},
                                 headers={"X-Session-Id": "chat-1"})
        assert sent.json()["outputs"]["earlier_turns"] == "3"
        _error(await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Session-Id": "bad id!"}),
               400, "invalid_session_id", "session_id")


async def test_sessions_expire_after_their_ttl(serve) -> None:
    async with serve(session_ttl=60) as client:
        store = client.server.sessions
        now = [1000.0]
        store.clock = lambda: now[0]
        await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Session-Id": "s"})
        now[0] += 59
        assert (await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Session-Id": "s"})
                ).json()["turn"] == 2
        now[0] += 61
        assert (await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Session-Id": "s"})
                ).json()["turn"] == 1


async def test_the_memory_store_is_bounded_by_the_bytes_it_holds_dropping_the_least_recently_used() -> None:
    from llmrec.serve.sessions import MemorySessionStore

    store = MemorySessionStore(max_sessions=100, max_bytes=1000)
    state = {"turns": [{"inputs": {"user_id": "u1"}, "outputs": {"text": "x" * 150}}], "turn_count": 1}
    size = len(json.dumps(state, separators=(",", ":")))
    for i in range(10):
        await store.save(f"s{i}", state, None)
        assert store.nbytes <= 1000
    assert len(store) == 1000 // size and store.nbytes == len(store) * size
    assert await store.load("s0") is None  # the first ones went first
    await store.load(f"s{10 - len(store)}")  # read: now the most recently used
    await store.save("new", state, None)
    assert await store.load(f"s{10 - len(store)}") == state  # a copy of what was saved, kept
    assert await store.load(f"s{11 - len(store)}") is None  # the least recently used one went instead
    await store.save("huge", {"text": "y" * 2000}, None)  # over the bound on its own: never kept
    assert await store.load("huge") is None and store.nbytes <= 1000
    await store.delete("new")
    assert store.nbytes == len(store) * size
    # values JSON cannot hold are kept as text; what is loaded is a new object each time
    await store.save("odd", {"when": 3.5, "path": Path("/x")}, None)
    loaded = await store.load("odd")
    assert loaded == {"when": 3.5, "path": "/x"} and loaded is not await store.load("odd")


async def test_the_memory_store_drops_expired_sessions_when_saving_not_only_when_reading() -> None:
    from llmrec.serve.sessions import MemorySessionStore

    store = MemorySessionStore()
    now = [0.0]
    store.clock = lambda: now[0]
    for i in range(50):
        await store.save(f"s{i}", {"turn_count": i}, 10)
    now[0] = 11.0
    await store.save("fresh", {"turn_count": 1}, 10)
    assert len(store) == 1 and store.nbytes == len(b'{"turn_count":1}')


async def test_a_turn_over_the_session_limit_is_kept_without_its_data_and_earlier_turns_stay(serve) -> None:
    async with serve(session_max_bytes=20_000) as client:
        hdrs = {"X-Session-Id": "big"}
        assert (await client.post("/v1/recommend", json={"user_id": "u1", "k": 1}, headers=hdrs)).json()["turn"] == 1
        huge = "guest-" + "y" * 30_000  # echoed in the outputs too: the turn alone is over 20,000 bytes
        assert (await client.post("/v1/recommend", json={"user_id": huge, "k": 1}, headers=hdrs)).json()["turn"] == 2
        third = await client.post("/v1/recommend", json={"user_id": "u2", "k": 1}, headers=hdrs)
        assert third.json()["turn"] == 3 and third.json()["outputs"]["earlier_turns"] == "2"
        state = await client.server.sessions.load("big")
        assert [t.get("inputs") for t in state["turns"]] == [{"user_id": "u1", "k": 1}, None,
                                                            {"user_id": "u2", "k": 1}]
        assert "over the session limit" in state["turns"][1]["omitted"]
        assert len(json.dumps(state["turns"], separators=(",", ":"))) <= 20_000
        assert state["turn_count"] == 3
        # /metrics says how much the store holds
        text = (await client.get("/metrics")).text
        assert "llmrec_sessions 1.0" in text
        assert f"llmrec_session_bytes {float(client.server.sessions.nbytes)}" in text


async def test_series_come_from_fixed_label_values_not_from_what_clients_send(serve) -> None:
    def series(text: str) -> set[str]:
        return {line.rpartition(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}

    async with serve() as client:
        text = (await client.get("/metrics")).text
        assert 'llmrec_spec_reloads_total{outcome="invalid"} 0.0' in text  # outcomes are there before they happen
        assert 'llmrec_runs_total{outcome="degraded"} 0.0' in text
        rng = random.Random(3)
        for _ in range(3):  # each kind of answer once, so that its series exist
            await client.post("/v1/recommend", json={"user_id": "u1"})
            await client.post("/v1/recommend", content=b"{nope")
            await client.get(f"/no/such/{rng.random()}")
            await client.post("/v1/recommend", json={"user_id": "u1", "colour": "red"})
            await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Session-Id": "bad id!"})
        before = series((await client.get("/metrics")).text)
        for i in range(50):  # new paths, session ids, query strings, fields, error messages: no new series
            await client.get(f"/no/such/{rng.random()}?{rng.random()}={i}")
            await client.post(f"/v1/recommend?x{i}={rng.random()}", json={"user_id": f"guest{i}"},
                              headers={"X-Session-Id": f"s{i}-{rng.random()}"})
            await client.post("/v1/recommend", content=b'{"user_id": "u1", "f%d": 1}' % i)
            await client.post("/v1/recommend", content=b"{nope %d" % i)
            await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-Session-Id": f"bad id {i}"})
        assert series((await client.get("/metrics")).text) == before


async def test_llmrec_serve_runs_uvicorn_with_the_lingering_protocol_and_a_long_keep_alive(tmp_path,
                                                                                           monkeypatch) -> None:
    import uvicorn

    from llmrec.serve.commands import KEEP_ALIVE_SECONDS, serve_command
    from llmrec.serve.protocol import LingeringHTTPProtocol

    from .conftest import write

    seen = {}

    class FakeServer:
        started = True

        def __init__(self, config) -> None:
            seen["config"] = config

        def run(self) -> None:
            pass

    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    serve_command(write(tmp_path, SHOP))
    config = seen["config"]
    assert config.http is LingeringHTTPProtocol
    assert config.timeout_keep_alive == KEEP_ALIVE_SECONDS > 5.0  # longer than httpx's 5 s keep-alive expiry
    serve_command(write(tmp_path, SHOP), timeout_keep_alive=2.5)
    assert seen["config"].timeout_keep_alive == 2.5


async def test_api_key_is_required_except_for_health_checks(serve, monkeypatch) -> None:
    async with serve(api_key="s3cret") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        _error(await client.post("/v1/recommend", json={"user_id": "u1"}), 401, "unauthorized")
        _error(await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"X-API-Key": "wrong"}),
               401, "unauthorized")
        _error(await client.get("/metrics"), 401, "unauthorized")
        ok = await client.post("/v1/recommend", json={"user_id": "u1"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await client.get("/metrics", headers={"X-API-Key": "s3cret"})).status_code == 200


async def test_oversized_bodies_get_413_with_or_without_a_content_length(serve) -> None:
    async with serve(max_body_bytes=200) as client:
        big = {"user_id": "u1", "history": [{"text": "x" * 300}]}
        _error(await client.post("/v1/recommend", json=big), 413, "body_too_large")

        async def chunks():
            for _ in range(10):
                yield b" " * 50
            yield b'{"user_id": "u1"}'

        _error(await client.post("/v1/recommend", content=chunks()), 413, "body_too_large")
        assert (await client.post("/v1/recommend", json={"user_id": "u1"})).status_code == 200


async def test_past_max_concurrency_requests_get_429(serve) -> None:
    async with serve(TOOLS % {"seconds": 0.3}, max_concurrency=2) as client:
        rs = await asyncio.gather(*(client.post("/v1/recommend", json={"items": ["a"]}) for _ in range(5)))
        codes = sorted(r.status_code for r in rs)
        assert codes == [200, 200, 429, 429, 429]
        assert next(r for r in rs if r.status_code == 429).headers["retry-after"] == "1"
        assert client.server.in_flight == 0
        assert (await client.post("/v1/recommend", json={"items": ["a"]})).status_code == 200


async def test_a_failing_node_is_a_424_and_a_fallback_is_degraded(serve) -> None:
    async with serve(TOOLS % {"seconds": 0}) as client:
        r = await client.post("/v1/recommend", json={"items": ["a", "b"]})
        assert r.status_code == 200
        body = r.json()
        assert body["outputs"] == {"items": ["a", "b"], "fallback": []} and body["degraded"] is True
        (fell,) = body["fallbacks"]  # which node fell back, to what, and why
        assert fell["to"] == "value" and fell["reason"]
    async with serve(FAILING) as client:
        error = _error(await client.post("/v1/recommend?trace=true", json={"items": ["a"]}), 424, "node_failed")
        assert error["node"] == "broken" and "boom" in error["message"]
        assert error["trace"]["nodes"][0]["status"] == "error"
        assert (await client.post("/v1/recommend", json={"items": []})).status_code == 424  # still serving


async def test_the_deadline_cuts_a_slow_request_with_503(serve) -> None:
    async with serve(TOOLS % {"seconds": 1.0}, deadline=0.1) as client:
        error = _error(await client.post("/v1/recommend", json={"items": ["a"]}), 503, "deadline_exceeded")
        assert "0.1" in error["message"]


async def test_metrics_count_requests_nodes_cache_fallbacks_llm_usage_and_errors(serve) -> None:
    async with serve(TOOLS % {"seconds": 0}) as client:
        for _ in range(3):
            await client.post("/v1/recommend", json={"items": ["a"]})
        await client.post("/v1/recommend", content=b"{")
        text = (await client.get("/metrics")).text
    assert 'llmrec_request_duration_seconds_count{endpoint="recommend"} 4.0' in text
    assert 'llmrec_requests_total{code="200",endpoint="recommend"} 3.0' in text
    assert 'llmrec_node_duration_seconds_count{node="slow",status="ok",type="servetest.sleep"} 3.0' in text
    assert 'llmrec_fallbacks_total{fallback="value",node="broken"} 3.0' in text
    assert 'llmrec_llm_calls_total{model="fake-model",node="llm"} 3.0' in text
    assert 'llmrec_llm_tokens_total{kind="prompt",model="fake-model",node="llm"} 36.0' in text
    assert 'llmrec_llm_cost_usd_total{model="fake-model",node="llm"} 0.003' in text
    assert 'llmrec_errors_total{kind="invalid_json"} 1.0' in text
    assert 'llmrec_runs_total{outcome="degraded"} 3.0' in text
    async with serve() as client:
        for _ in range(2):
            await client.post("/v1/recommend", json={"user_id": "u1"})
        text = (await client.get("/metrics")).text
    assert 'llmrec_cache_hits_total{cache="node",node="popular"} 1.0' in text
    assert "llmrec_ready 1.0" in text


async def test_metrics_count_grounding_violations(serve) -> None:
    async with serve(GROUNDED) as client:
        r = await client.post("/v1/recommend", json={"items": ["i001", "no-such-item", "i001"]})
        assert r.json()["outputs"]["items"] == ["i001"]
        text = (await client.get("/metrics")).text
    assert 'llmrec_grounding_violations_total{kind="dropped",node="check"} 1.0' in text
    assert 'llmrec_grounding_violations_total{kind="duplicates",node="check"} 1.0' in text


async def test_openapi_describes_this_specs_inputs_and_outputs(serve) -> None:
    async with serve() as client:
        schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/v1/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(request["properties"]) == {"user_id", "k", "history"}
    assert request["required"] == ["user_id"] and request["additionalProperties"] is False
    assert request["properties"]["k"]["maximum"] == 50
    response = schema["components"]["schemas"]["SmallResponse"]
    outputs = schema["components"]["schemas"][response["properties"]["outputs"]["$ref"].rsplit("/", 1)[1]]
    assert set(outputs["properties"]) == {"recommendations", "earlier_turns"}
    assert "Recommendations" in schema["components"]["schemas"]


async def test_playground_page_and_spec_description(serve) -> None:
    async with serve() as client:
        page = await client.get("/")
        assert page.status_code == 200 and "<form" in page.text and "http" not in page.text.split("<script>")[0]
        info = (await client.get("/v1/spec")).json()
    assert info["name"] == "small" and info["inputs"]["user_id"]["required"] is True
    assert {n["id"] for n in info["graph"]["nodes"]} == {"profile", "popular", "unseen", "result", "turns"}
    layers = {n["id"]: n["layer"] for n in info["graph"]["nodes"]}
    assert layers["profile"] < layers["unseen"] < layers["result"]
    assert info["mermaid"].startswith("flowchart LR")


async def test_a_broken_edit_keeps_the_old_spec_serving_and_a_valid_one_replaces_it(serve, caplog) -> None:
    async with serve(reload_interval=0.05) as client:
        path = client.spec_path
        caplog.set_level(logging.INFO, logger="llmrec.serve")
        path.write_text(SHOP.replace("type: rerank.filter_seen", "type: rerank.filter_sene"), encoding="utf-8")
        os.utime(path, ns=(1, 1))
        for _ in range(100):
            if client.server.reload_errors:
                break
            await asyncio.sleep(0.02)
        assert any("filter_sene" in e for e in client.server.reload_errors)
        assert "still serving the previous version" in caplog.text and "filter_sene" in caplog.text
        r = await client.post("/v1/recommend", json={"user_id": "u1"})
        assert r.status_code == 200 and "earlier_turns" in r.json()["outputs"]
        assert (await client.get("/readyz")).json()["reload_errors"]

        path.write_text(SHOP.replace("earlier_turns: ${turns}", "previous: ${turns}"), encoding="utf-8")
        os.utime(path, ns=(2, 2))
        for _ in range(200):
            if "previous" in (await client.post("/v1/recommend", json={"user_id": "u1"})).json()["outputs"]:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the valid edit was never served")
        assert "reloaded" in caplog.text
        text = (await client.get("/metrics")).text
        assert 'llmrec_spec_reloads_total{outcome="invalid"} 1.0' in text
        assert 'llmrec_spec_reloads_total{outcome="ok"} 1.0' in text


async def test_reload_on_demand_refuses_an_invalid_spec(serve) -> None:
    async with serve() as client:
        server = client.server
        client.spec_path.write_text("name: [unclosed", encoding="utf-8")
        assert await server.reload(force=True) is False
        assert server.current.name == "small" and server.ready
        client.spec_path.write_text(SHOP.replace("name: small", "name: renamed"), encoding="utf-8")
        assert await server.reload(force=True) is True
        assert (await client.get("/readyz")).json()["spec"] == "renamed"


async def test_docs_page_works_offline(serve) -> None:
    async with serve(TOOLS % {"seconds": 0}) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and "/static/docs/swagger-ui-bundle.js" in page.text
        assert "https://" not in page.text  # every asset is served by the app itself
        js = await client.get("/static/docs/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000
        redoc = await client.get("/redoc")
        assert redoc.status_code == 200 and "https://" not in redoc.text


async def test_what_a_loaded_spec_holds_is_frozen_out_of_the_collector_and_a_reload_refreezes(serve) -> None:
    """Once ready, the long-lived heap is gc.freeze()d (collections that requests trigger do not walk it); after a
    reload the retired version is closed, its cycles collected and the new heap frozen (docs/serving.md)."""
    import gc
    import weakref

    gc.unfreeze()
    try:
        async with serve() as client:
            assert gc.get_freeze_count() > 0
            old = client.server.current
            runtime = weakref.ref(old.runtime)
            assert (await client.post("/v1/recommend", json={"user_id": "u1"})).status_code == 200
            assert await client.server.reload(force=True)
            del old
            for _ in range(100):  # the retired version is closed once its requests finish
                await asyncio.sleep(0.02)
                if runtime() is None:
                    break
            assert runtime() is None  # nothing frozen keeps the retired runtime alive
            assert gc.get_freeze_count() > 0
            assert (await client.post("/v1/recommend", json={"user_id": "u1"})).status_code == 200
    finally:
        gc.unfreeze()
