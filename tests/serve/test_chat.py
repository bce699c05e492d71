"""llmrec serve as a multi-turn chat (specs/headphones_chat.yaml): the session keeps the typed state, every answer
carries it, and bad input gets a clear answer or a clarifying question, never a 500 or a lost session (issue 15)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from llmrec.plugins import get_registry
from llmrec.graph.build import build
from llmrec.serve.app import ServeOptions, create_app
from llmrec.spec.loader import load_spec

SPEC = Path(__file__).resolve().parents[2] / "specs" / "headphones_chat.yaml"
GRAPH = build(load_spec(SPEC), get_registry(SPEC.parent))


@asynccontextmanager
async def chat(**options: Any) -> Any:
    app = create_app(ServeOptions(spec=str(SPEC), reload_interval=0, **options), GRAPH)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            client.server = app.state.server  # type: ignore[attr-defined]
            for _ in range(1500):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            yield client


async def say(client: httpx.AsyncClient, message: Any, sid: str | None = "s1", **body: Any) -> httpx.Response:
    headers = {"X-Session-Id": sid} if sid else {}
    return await client.post("/v1/recommend", json={"message": message, **body}, headers=headers)


async def test_a_served_chat_keeps_its_state_across_turns_and_says_when_it_starts_over() -> None:
    async with chat() as client:
        first = (await say(client, "Hi! I am looking for headphones")).json()
        assert first["outputs"]["action"] == "ask" and first["turn"] == 1 and first["degraded"] is True
        assert "new conversation" in first["notice"] and first["state"]["turn"] == 1
        asked = first["state"]["asked"]
        second = (await say(client, "earbuds, wireless, for running")).json()
        assert "notice" not in second and second["turn"] == 2
        assert second["state"]["slots"] == {"type": "earbuds", "features": ["wireless"], "use_case": ["gym"]}
        assert second["state"]["asked"][: len(asked)] == asked and second["state"]["turn"] == 2
        assert second["outputs"]["action"] == "recommend"
        shown = [i["id"] for i in second["outputs"]["items"]]
        third = (await say(client, "none of these, something else please")).json()  # the shown items rejected
        assert third["state"]["rejected"] == shown and third["outputs"]["understood"]["intent"] == "reject"
        assert not set(shown) & {i["id"] for i in third["outputs"]["items"]}
        saved = await client.server.sessions.load("s1")
        assert saved["state"] == third["state"] and len(saved["turns"]) == 3
        # the state the spec no longer accepts: reset to the defaults, said so, the turns kept
        await client.server.sessions.save("s1", {**saved, "state": {"slots": "not a mapping"}}, 60)
        reset = (await say(client, "under $60")).json()
        assert "no longer fits the spec's state schema" in reset["notice"] and "state.slots" in reset["notice"]
        assert reset["state"]["turn"] == 1 and reset["state"]["slots"] == {"budget": 60.0} and reset["turn"] == 4
        # an expired session starts fresh, and says so
        store = client.server.sessions
        store.clock = lambda: 1e12
        expired = (await say(client, "over-ear please")).json()
        assert "it is new, or it expired" in expired["notice"] and expired["state"]["turn"] == 1
        assert expired["turn"] == 1
        # without a session id the client carries the state itself
        carried = (await say(client, "noise cancelling", sid=None, state=second["state"])).json()
        assert carried["state"]["turn"] == 3 and "noise_cancelling" in carried["state"]["slots"]["features"]


async def test_bad_input_gets_a_clear_answer_or_a_question_never_a_500() -> None:
    async with chat() as client:
        empty = await say(client, "", sid="e")
        assert empty.status_code == 200 and empty.json()["outputs"]["action"] == "ask"
        assert empty.json()["outputs"]["understood"]["reason"] == "the message is empty"
        foreign = (await say(client, "Bonjour, je cherche un casque pas cher", sid="f")).json()
        assert foreign["outputs"]["action"] == "ask" and foreign["outputs"]["understood"]["understood"] is False
        assert foreign["outputs"]["message"].startswith("Sorry, I did not catch that (I understand English).")
        clash = (await say(client, "premium noise cancelling under $50", sid="c")).json()
        assert clash["outputs"]["action"] == "ask" and "raise your budget" in clash["outputs"]["message"]
        assert clash["state"]["conflicts"][-1]["rule"] == "constraint"
        wrong = await say(client, "hi", sid=None, state={"turn": "soon"})
        assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "state.turn"
        not_text = await say(client, {"text": "hi"}, sid="n")
        assert not_text.status_code == 422 and not_text.json()["error"]["field"] == "message"
        long = await say(client, "x" * 2001, sid="n")
        assert long.status_code == 422 and long.json()["error"]["field"] == "message"
        bad_sid = await say(client, "hi", sid="no spaces allowed")
        assert bad_sid.status_code == 400 and bad_sid.json()["error"]["field"] == "session_id"
        openapi = (await client.get("/openapi.json")).json()
        ref = openapi["paths"]["/v1/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert "state" in openapi["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
        # none of it lost the sessions that were fine
        assert (await client.server.sessions.load("c"))["state"]["conflicts"]
