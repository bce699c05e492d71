"""llm.extract, dst.merge, clarify, dst.candidates and dialogue.answer on a small hand-made shop (issue 15)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest

from llmrec.conversation.types import Decision, DialogueState, SlotConflict
from llmrec.data.catalog import Catalog, Item
from llmrec.nodes.dialogue import (
    Clarify,
    ClarifyConfig,
    Extract,
    ExtractConfig,
    Merge,
    MergeConfig,
    SlotDef,
    information_gain,
    merge,
    parse_price,
)
from llmrec.node import RunContext
from llmrec.runtime.trace import NodeRecord
from llmrec.testing import FakeProvider

FEATURES = ["noise_cancelling", "wireless", "waterproof"]


def _item(i: int, brand: str, kind: str, price: float, feats: set[str], uses: str) -> Item:
    attrs = {"brand": brand, "type": kind, "use_cases": uses, **{f: f in feats for f in FEATURES}}
    return Item(id=f"h{i}", title=f"{brand} {i}", category=kind, price=price, attributes=attrs)


SHOP = Catalog([
    _item(1, "Auralite", "earbuds", 30.0, {"wireless", "waterproof"}, "gym"),
    _item(2, "Auralite", "earbuds", 45.0, {"wireless"}, "commute"),
    _item(3, "Voltix", "in-ear", 25.0, {"waterproof"}, "gym"),
    _item(4, "Voltix", "over-ear", 120.0, {"noise_cancelling", "wireless"}, "travel,commute"),
    _item(5, "Harmonia", "over-ear", 260.0, {"noise_cancelling", "wireless"}, "travel"),
    _item(6, "Harmonia", "over-ear", 90.0, set(), "studio"),
    _item(7, "Pulse", "earbuds", 150.0, {"noise_cancelling", "wireless", "waterproof"}, "gym,commute"),
    _item(8, "Pulse", "on-ear", 60.0, {"wireless"}, "office"),
])
SLOTS = {
    "type": SlotDef(values=["over-ear", "on-ear", "in-ear", "earbuds"], synonyms={"earbuds": ["buds"]},
                    question="Which type?"),
    "use_case": SlotDef(kind="multi", attribute="use_cases", rule="overwrite", synonyms={"gym": ["running"]},
                        question="What for?"),
    "features": SlotDef(kind="multi", flags=True, values=FEATURES,
                        synonyms={"noise_cancelling": ["noise cancelling", "anc"], "wireless": ["bluetooth"]},
                        question="Which features?"),
    "budget": SlotDef(kind="numeric", question="How much?"),
    "brand": SlotDef(question="Which brand?"),
}


def context() -> RunContext:
    return RunContext(run_id="r", node_id="n", inputs={}, record=NodeRecord("n", "t"))


@pytest.mark.parametrize("text, expected", [
    ("under $50", (None, 50.0, "USD")),
    ("between 100 and 200", (100.0, 200.0, None)),
    ("€80", (None, 80.0, "EUR")),
    ("something from 1k to 1.5k dollars", (1000.0, 1500.0, "USD")),
    ("$100-150 please", (100.0, 150.0, "USD")),
    ("at least 60 euros", (60.0, None, "EUR")),
    ("two pairs for my kids", (None, None, None)),
    ("about 2 pairs, under 90", (None, 90.0, None)),
    ("around €120", (None, 120.0, "EUR")),
    ("over 50 and under 100", (50.0, 100.0, None)),
])
def test_prices_by_rule(text, expected) -> None:
    assert parse_price(text) == expected


def test_extract_degrades_to_rules_and_says_so() -> None:
    node = Extract(ExtractConfig(slots=SLOTS))
    ctx = context()
    out = asyncio.run(node.run("wireless buds for running under $50, not Voltix", catalog=SHOP, context=ctx))
    assert out.degraded and "no model configured" in out.reason and out.by == "rules"
    assert out.slots == {"features": ["wireless"], "type": "earbuds", "use_case": ["gym"], "budget": 50.0}
    assert [(n.slot, n.value) for n in out.negations] == [("brand", "Voltix")]
    assert ctx.record.fallback == "rules" and "no model" in ctx.record.fallback_reason  # the trace says degraded
    foreign = asyncio.run(node.run("hola, quiero unos auriculares baratos", catalog=SHOP, context=context()))
    assert not foreign.understood and not foreign.slots
    empty = asyncio.run(node.run("   ", catalog=SHOP, context=context()))
    assert not empty.understood and empty.reason == "the message is empty"


def test_extract_asks_the_model_with_the_history_and_keeps_to_known_values() -> None:
    fake = FakeProvider(["Wants wireless earbuds, not Voltix.",
                         {"intent": "refine", "features": ["wireless", "teleportation"], "price_max": 80,
                          "brand": "Sony", "type": "earbuds", "negations": [{"slot": "brand", "value": "voltix"}]}])
    node = Extract(ExtractConfig(slots=SLOTS))
    history = [{"inputs": {"message": "I need earbuds"}, "outputs": {"message": "What for?"}}]
    out = asyncio.run(node.run("cheaper than 80 please", model=fake, catalog=SHOP, history=history,
                               context=context()))
    assert not out.degraded and out.by == "model"
    assert out.slots == {"type": "earbuds", "features": ["wireless"], "budget": 80.0}  # unknown values dropped
    assert [(n.slot, n.value) for n in out.negations] == [("brand", "Voltix")]
    summary, intent = fake.requests
    assert "I need earbuds" in summary.messages[-1].content and "What for?" in summary.messages[-1].content
    assert "Wants wireless earbuds" in intent.messages[-1].content and intent.schema.__name__ == "ExtractAnswer"


def test_merge_rules_overwrite_accumulate_negate_decay() -> None:
    node = Extract(ExtractConfig(slots=SLOTS))
    cfg = MergeConfig(slots=SLOTS, decay=0.5, forget_below=0.3)
    vocab = node.vocabulary(SHOP)

    def turn(state: DialogueState, text: str) -> DialogueState:
        return merge(state, node.by_rules(text, vocab, None), cfg, vocab, SHOP)

    s1 = turn(DialogueState(), "Pulse earbuds, wireless")
    assert s1.slots == {"brand": "Pulse", "type": "earbuds", "features": ["wireless"]} and s1.turn == 1
    s2 = turn(s1, "with noise cancelling too, actually Harmonia")  # accumulate features, overwrite the brand
    assert s2.slots["features"] == ["wireless", "noise_cancelling"] and s2.slots["brand"] == "Harmonia"
    assert SlotConflict(slot="brand", old="Pulse", new="Harmonia", rule="overwrite", turn=2) in s2.conflicts
    s3 = turn(s2, "not Harmonia")  # negate: the value is dropped and ruled out
    assert "brand" not in s3.slots and s3.negated == {"brand": ["Harmonia"]}
    assert any(c.rule == "negate" and c.slot == "brand" for c in s3.conflicts)
    assert s2.confidence["type"] == 0.5 and s2.confidence["features"] == 1.0  # decays unless said again
    assert "type" not in s3.slots  # 1 x 0.5 x 0.5 = 0.25 < 0.3: forgotten, and said so
    assert any(c.rule == "decay" and c.slot == "type" and c.old == "earbuds" for c in s3.conflicts)


def test_contradictory_constraints_become_a_conflict_and_a_question() -> None:
    node = Extract(ExtractConfig(slots=SLOTS))
    vocab = node.vocabulary(SHOP)
    ex = node.by_rules("under $50, premium noise cancelling", vocab, None)
    state = asyncio.run(Merge(MergeConfig(slots=SLOTS)).run(DialogueState(), ex, SHOP))
    conflict = state.conflicts[-1]
    assert conflict.rule == "constraint" and conflict.slot == "budget" and conflict.new == 50.0
    assert conflict.old == {"features": ["noise_cancelling"], "tier": "premium"}
    q = asyncio.run(Clarify(ClarifyConfig(slots=SLOTS)).run(state, SHOP, extraction=ex, context=context()))
    assert q.conflict == conflict and q.slot == "budget" and q.degraded
    cheapest_premium_anc = min(i.price for i in SHOP if i.attributes["noise_cancelling"] and i.price >= 150.0)
    assert f"${cheapest_premium_anc:,.0f}" in q.question and "raise your budget" in q.question


def _entropy(values) -> float:
    counts = Counter(values)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def test_clarify_asks_the_slot_of_highest_information_gain_among_matching_items() -> None:
    node = Clarify(ClarifyConfig(slots=SLOTS, ask=["type", "brand", "use_case"]))
    state = DialogueState(slots={"features": ["wireless"]}, turn=1)
    wireless = [i for i in SHOP if i.attributes["wireless"]]
    by_hand = {"type": _entropy(i.attributes["type"] for i in wireless),
               "brand": _entropy(i.attributes["brand"] for i in wireless)}
    q = asyncio.run(node.run(state, SHOP, context=context()))
    assert q.candidates == len(wireless) == 6
    assert q.gains["type"] == pytest.approx(by_hand["type"], abs=1e-4)
    assert q.gains["brand"] == pytest.approx(by_hand["brand"], abs=1e-4)
    best = max(q.gains, key=q.gains.get)
    assert q.slot == best and q.question == SLOTS[best].question and q.degraded
    assert information_gain(wireless, "type", node.vocabulary(SHOP)) == pytest.approx(by_hand["type"])
    named = asyncio.run(node.run(state, SHOP, decision=Decision(action="ask", slot="use_case"), context=context()))
    assert named.slot == "use_case" and named.question == "What for?"
    fake = FakeProvider(["Which brand do you like best?"])
    worded = asyncio.run(node.run(state, SHOP, context=context(), model=fake))
    assert worded.question == "Which brand do you like best?" and not worded.degraded
    assert "wireless" in fake.requests[0].messages[-1].content


def test_a_custom_template_may_only_use_what_the_node_provides(tmp_path) -> None:
    from llmrec.testing import errors_of, write_spec

    spec = write_spec(tmp_path, """
    name: t
    inputs: {message: {type: string, default: ""}}
    nodes:
      understand:
        type: llm.extract
        config: {template: "{{ message }} {{ mood }}"}
        inputs: {message: "${inputs.message}"}
      ask:
        type: clarify
        config: {ask: [colour]}
        inputs: {state: null}
    outputs: {e: "${understand}", q: "${ask}"}
    """)
    errors = errors_of(spec)
    assert any("spec.yaml:6:" in e and "uses 'mood', which llm.extract does not provide" in e for e in errors), errors
    assert any("spec.yaml:10:" in e and "unknown: colour" in e for e in errors), errors
