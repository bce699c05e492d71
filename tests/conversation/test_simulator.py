"""Simulated users: seeded answers, noise, acceptance by hidden utility, patience, the LLM-backed path, the
headphones dataset (issue 15)."""

from __future__ import annotations

import asyncio

import pytest

from llmrec.conversation.catalog import FEATURES, generate_headphones, item_features
from llmrec.conversation.dataset import HEADPHONES, load_headphones, write_headphones
from llmrec.conversation.policies import RulePolicy
from llmrec.conversation.simulator import (
    LLMUser, Persona, SimulatedUser, arun_dialogue, make_personas, run_dialogue, success_summary,
)
from llmrec.conversation.types import Decision
from llmrec.data.catalog import Catalog, Item
from llmrec.llm.provider import Completion, CompletionRequest


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return generate_headphones(seed=5, n_items=120)


def _item(id: str, price: float, feats: set[str], kind: str = "over-ear", uses: str = "") -> Item:
    attrs: dict = {f: f in feats for f in FEATURES}
    attrs.update(type=kind, brand="Pulse", use_cases=uses)
    return Item(id=id, title=id, category=kind, price=price, attributes=attrs)


PERSONA = Persona("p", wants={"type": "earbuds", "features": frozenset({"wireless", "waterproof"}), "use_case": "gym"},
                  budget=100.0, patience=4, noise=0.0, accept_threshold=0.8)


def test_truthful_answers_and_acceptance_by_hidden_utility() -> None:
    good = _item("good", 90, {"wireless", "waterproof"}, "earbuds", "gym")
    pricey = _item("pricey", 200, {"wireless", "waterproof"}, "earbuds", "gym")
    half = _item("half", 90, {"wireless"}, "earbuds", "commute")
    user = SimulatedUser(PERSONA, Catalog([good, pricey, half]), seed=3)
    assert user.answer("type") == "earbuds" and user.answer("features") == ["waterproof", "wireless"]
    assert user.answer("budget") == 100.0 and user.answer("brand") is None  # no preference
    assert PERSONA.utility(good) == 1.0
    assert PERSONA.utility(half) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert PERSONA.utility(pricey) == pytest.approx(0.75)  # price reward floored at 0
    assert user.judge(good) and not user.judge(pricey) and not user.judge(half)
    assert Persona.from_dict(PERSONA.to_dict()) == PERSONA


def test_noise_is_seeded_and_changes_answers(catalog: Catalog) -> None:
    noisy = Persona("n", wants=dict(PERSONA.wants), budget=100.0, noise=1.0)
    a = [SimulatedUser(noisy, catalog, seed=7).answer(s) for s in ("type", "features", "budget", "use_case")]
    b = [SimulatedUser(noisy, catalog, seed=7).answer(s) for s in ("type", "features", "budget", "use_case")]
    assert a == b  # the same seed replays the same wrong answers
    assert a[0] != "earbuds" and a[1] != ["waterproof", "wireless"] and a[2] != 100.0 and a[3] != "gym"
    assert 70.0 <= a[2] <= 130.0


def test_dialogue_ends_on_acceptance_or_patience(catalog: Catalog) -> None:
    good = _item("good", 90, {"wireless", "waterproof"}, "earbuds", "gym")
    bad = _item("bad", 20, set(), "over-ear")
    small = Catalog([good, bad])
    result = run_dialogue(RulePolicy(catalog=small, min_known=2), SimulatedUser(PERSONA, small, seed=0))
    assert result.success and result.accepted == "good" and result.turns == 3  # two questions, one recommendation
    assert result.decisions[-1] == "recommend" and result.reward > 0
    never = Persona("x", wants={"type": "on-ear"}, budget=5.0, patience=3)  # nothing fits: leaves after 3 turns
    always_ask = lambda state: Decision(action="ask", slot="type")  # noqa: E731
    left = run_dialogue(always_ask, SimulatedUser(never, small, seed=0), max_turns=10)
    assert not left.success and left.left and left.turns == 3


def test_personas_are_satisfiable_and_simulation_is_reproducible(catalog: Catalog) -> None:
    personas = make_personas(catalog, 30, seed=2)
    assert personas == make_personas(catalog, 30, seed=2)
    assert all(any(p.utility(it) >= p.accept_threshold for it in catalog) for p in personas)
    policy = RulePolicy(catalog=catalog)
    runs = [[run_dialogue(policy, SimulatedUser(p, catalog, seed=1)) for p in personas] for _ in range(2)]
    assert [r.decisions for r in runs[0]] == [r.decisions for r in runs[1]]
    summary = success_summary(runs[0])
    assert summary["dialogues"] == 30 and 0.3 < summary["success_rate"] <= 1.0


class StubProvider:
    """A provider that answers from a script (the test's stand-in for an LLM)."""

    name, model = "stub", "stub"

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.requests: list[CompletionRequest] = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        question = request.messages[-1].content
        text = next((v for k, v in self.replies.items() if k in question.lower()), "hmm, not sure")
        return Completion(text=text)

    async def close(self) -> None:
        pass


def test_llm_backed_user_parses_replies_and_falls_back(catalog: Catalog) -> None:
    provider = StubProvider({"over-ear, on-ear": "I'd like earbuds please", "spend": "About $120, tops",
                             "features": "noise cancelling and wireless", "brand": "No preference"})
    user = LLMUser(PERSONA, catalog, provider, seed=0)
    assert asyncio.run(user.aanswer("type")) == "earbuds"
    assert asyncio.run(user.aanswer("budget")) == 120.0
    assert asyncio.run(user.aanswer("features")) == ["noise_cancelling", "wireless"]
    assert asyncio.run(user.aanswer("brand")) is None
    assert asyncio.run(user.aanswer("use_case")) == "gym" and user.fallbacks == 1  # unparseable: the rule answer
    system = provider.requests[0].messages[0].content
    assert "earbuds" in system and "100.0 USD" in system  # the persona is the system prompt
    result = asyncio.run(arun_dialogue(RulePolicy(catalog=catalog), LLMUser(PERSONA, catalog, provider, seed=0)))
    assert result.turns >= 1 and len(provider.requests) > 5


def test_headphones_dataset() -> None:
    ds = load_headphones(None, n_items=80, n_personas=40)
    assert ds.name == "headphones" and len(ds.catalog) == 80 and len(ds.extra["personas"]) == 40
    assert ds.train_cases and ds.test_cases and len(ds.train)
    # personas rate what they like: their rated items fit their features better than random items
    persona = {p.id: p for p in ds.extra["personas"]}
    rated = [persona[it.user_id].utility(ds.catalog.get(it.item_id)) for it in ds.train if it.rating is not None]
    overall = [persona["p1"].utility(it) for it in ds.catalog]
    assert sum(rated) / len(rated) > sum(overall) / len(overall)
    assert HEADPHONES.options == ("n_items", "n_personas", "noise", "holdout_fraction")
    assert all(item_features(it) <= set(FEATURES) for it in ds.catalog)


def test_write_headphones(tmp_path) -> None:
    paths = write_headphones(tmp_path, n_items=20, n_personas=5)
    assert len(paths["catalog"].read_text().splitlines()) == 20
    assert len(paths["personas"].read_text().splitlines()) == 5
