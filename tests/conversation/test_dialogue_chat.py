"""specs/headphones_chat.yaml: it validates, runs turn after turn with the state threaded through, and `llmrec run`
answers a message with the next state (issue 15). Without a model, as in CI: degraded, and it says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmrec.plugins import get_registry
from llmrec.cli import main
from llmrec.graph.build import check_graph
from llmrec.runtime.executor import Runtime
from llmrec.spec.loader import load_spec
from llmrec.testing import FakeProvider

SPEC = Path(__file__).resolve().parents[2] / "specs" / "headphones_chat.yaml"


@pytest.fixture(scope="module")
def chat() -> tuple[Runtime, object]:
    graph, errors, warnings = check_graph(load_spec(SPEC), get_registry(SPEC.parent))
    assert not errors, [e.format() for e in errors]
    assert [w.message.split(":")[0] for w in warnings] == ["no model configured (neither 'model' nor $LLMREC_MODEL "
                                                           "is set)"]
    return Runtime(graph), graph


def test_a_conversation_asks_then_recommends_what_fits_and_keeps_the_state(chat) -> None:
    rt, graph = chat
    first = rt.run_sync({"message": "Hi, I need new headphones"})
    out = first.outputs
    assert out["action"] == "ask" and out["message"].endswith("?") and not out["items"]
    assert first.state.turn == 1 and len(first.state.asked) == 1  # the slot asked is remembered
    degraded = {f["node"]: f["to"] for f in first.to_dict()["fallbacks"]}
    assert degraded == {"understand": "rules", "ask": "template"} and first.degraded
    second = rt.run_sync({"message": "wireless earbuds for the gym, under $80"}, state=first.state)
    assert second.state.slots == {"features": ["wireless"], "type": "earbuds", "use_case": ["gym"], "budget": 80.0}
    assert second.outputs["action"] == "recommend" and second.outputs["items"]
    shop = rt.resources["shop"].catalog
    for rec in second.outputs["items"]:
        item = shop.get(rec.id)
        assert item.price <= 80 and item.attributes["wireless"] is True
    brands = {shop.get(r.id).attributes["brand"] for r in second.outputs["items"]}
    third = rt.run_sync({"message": f"not {sorted(brands)[0]}"}, state=second.state.model_dump(mode="json"))
    assert third.state.negated == {"brand": [sorted(brands)[0]]} and third.state.turn == 3
    assert sorted(brands)[0] not in {shop.get(r.id).attributes["brand"] for r in third.outputs["items"]}


def test_contradictory_constraints_get_a_clarifying_question(chat) -> None:
    rt, _ = chat
    result = rt.run_sync({"message": "premium noise cancelling headphones under $50"})
    conflict = result.state.conflicts[-1]
    assert conflict.rule == "constraint" and conflict.slot == "budget"
    assert result.outputs["action"] == "ask" and "budget" in result.outputs["message"]
    assert "$50" in result.outputs["message"]


def test_llmrec_run_answers_a_message_with_the_next_state(chat, tmp_path, capsys) -> None:
    _, graph = chat
    shutil.copy(SPEC, tmp_path / SPEC.name)
    spec = tmp_path / SPEC.name
    code = main(["run", str(spec), "--trust", "-q", "-i", "message=wireless earbuds for the gym under 80 dollars"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["degraded"] is True and data["state"]["slots"]["budget"] == 80.0
    state = tmp_path / "state.json"
    state.write_text(json.dumps(data["state"]), encoding="utf-8")
    assert main(["run", str(spec), "--trust", "-q", "-i", "message=actually over-ear", "--state", f"@{state}"]) == 0
    after = json.loads(capsys.readouterr().out)["state"]
    assert after["turn"] == 2 and after["slots"]["type"] == "over-ear"
    assert any(c["slot"] == "type" and c["old"] == "earbuds" and c["rule"] == "overwrite" for c in after["conflicts"])


def test_with_a_model_every_llm_step_runs_and_the_answer_is_not_degraded(chat) -> None:
    _, graph = chat

    def reply(request):
        if request.schema is not None and request.schema.__name__ == "ExtractAnswer":
            return {"intent": "refine", "features": ["noise_cancelling"], "type": "over-ear", "price_max": None}
        text = request.messages[-1].content
        if "Summarise" in text:
            return "Wants over-ear headphones."
        return "Which will you use them for most: travel, office or the gym?"

    fake = FakeProvider(reply)
    rt = Runtime(graph, resources={"model": fake})
    first = rt.run_sync({"message": "over-ear with ANC"})
    assert not first.degraded and first.outputs["understood"].by == "model"
    assert first.state.slots == {"type": "over-ear", "features": ["noise_cancelling"]}
    assert first.state.confidence == {"type": 1.0, "features": 1.0}  # a model's values start fully confident
    assert first.outputs["action"] == "ask" and first.outputs["message"].startswith("Which will you use")
    second = rt.run_sync({"message": "mostly on flights", "history": [
        {"inputs": {"message": "over-ear with ANC"}, "outputs": {"message": first.outputs["message"]}}]},
        state=first.state)
    prompts = [r.messages[-1].content for r in fake.requests]
    assert any("Summarise" in p and "over-ear with ANC" in p for p in prompts)  # the history processor ran
    assert any("Wants over-ear headphones." in p and "mostly on flights" in p for p in prompts)
    assert second.state.turn == 2 and not second.degraded
