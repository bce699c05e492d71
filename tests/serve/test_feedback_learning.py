"""Nodes that learn from feedback (``NodeType.learns_from_feedback``): ``POST /v1/feedback`` hands each event to
them (``Runtime.feedback``), with or without a log store, and a learner's failure never fails the request."""

from __future__ import annotations

from pathlib import Path

from .conftest import write

LEARNER = '''
from typing import Any
import llmrec


class Counter(llmrec.NodeType):
    """Answers the items it was asked to rank, ordered by the clicks they got so far."""
    name = "learntest.counter"
    learns_from_feedback = True

    def __init__(self, config):
        super().__init__(config)
        self.clicks = {}
        self.answered = set()

    async def run(self, items: list, context: llmrec.RunContext) -> list:
        self.answered.add(context.run_id)
        return sorted(items, key=lambda i: (-self.clicks.get(i, 0), i))

    async def feedback(self, event):
        if event.request_id in self.answered and event.type == "click":
            self.clicks[event.item_id] = self.clicks.get(event.item_id, 0) + 1
        if event.item_id == "explode":
            raise RuntimeError("a learner bug")


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(Counter)
'''

SPEC = """
name: learning
inputs:
  items: {type: array, items: string, default: [a, b, c]}
nodes:
  rank:
    type: learntest.counter
    inputs: {items: "${inputs.items}"}
outputs:
  items: ${rank}
"""


def _plugin(tmp_path: Path) -> None:
    write(tmp_path, SPEC)  # makes plugins/ (and the suite's servetest.py) beside the spec
    (tmp_path / "plugins" / "learner.py").write_text(LEARNER, encoding="utf-8")


async def test_feedback_reaches_the_learning_node_without_a_log_store(serve, tmp_path, caplog) -> None:
    _plugin(tmp_path)
    async with serve(SPEC) as client:
        assert client.server.current.runtime.learners == ["rank"]
        first = await client.post("/v1/recommend", json={})
        assert first.json()["outputs"]["items"] == ["a", "b", "c"]
        rid = first.headers["x-request-id"]
        events = [{"request_id": rid, "item_id": "c", "type": "click"}] * 2 + [
            {"request_id": rid, "item_id": "b", "type": "click"},
            {"request_id": "not-ours", "item_id": "a", "type": "click"},  # another server's answer: ignored
            {"request_id": rid, "item_id": "explode", "type": "dismissal"}]  # the learner raises: logged only
        r = await client.post("/v1/feedback", json=events)
        assert r.status_code == 202 and r.json() == {"accepted": 5}
        assert "failed to learn from feedback" in caplog.text
        again = await client.post("/v1/recommend", json={})
        assert again.json()["outputs"]["items"] == ["c", "b", "a"]  # what it learned


async def test_bad_feedback_teaches_nothing(serve, tmp_path) -> None:
    _plugin(tmp_path)
    async with serve(SPEC) as client:
        rid = (await client.post("/v1/recommend", json={})).headers["x-request-id"]
        r = await client.post("/v1/feedback", json=[{"request_id": rid, "item_id": "c", "type": "rating"}])
        assert r.status_code == 422 and r.json()["error"]["field"] == "0.value"
        assert (await client.post("/v1/recommend", json={})).json()["outputs"]["items"] == ["a", "b", "c"]
