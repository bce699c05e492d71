"""verify.schema, verify.grounded, verify.constraints and verify.accept, directly and through specs; and the repair
loop: plan -> verify -> re-ask with the violations (only when there are some) -> verify -> accept or fall back."""

from __future__ import annotations

import asyncio

import pytest

from llmrec.data import Catalog, Item
from llmrec.errors import RunError
from llmrec.nodes.verify import VerifyConstraints, VerifyGrounded
from llmrec.testing import FakeProvider, errors_of, run_with, write_spec
from llmrec.types import Candidates, Recommendation, Recommendations, ScoredItem, UserProfile

CATALOG = Catalog([
    Item(id="b1", title="Adjustable Dumbbells", category="weights", price=250.0),
    Item(id="b2", title="Kettlebell 16 kg", category="weights", price=60.0),
    Item(id="b3", title="Yoga Mat", category="mats", price=25.0),
    Item(id="b4", title="Pull-up Bar", category="bars", price=40.0),
    Item(id="b5", title="Olympic Barbell Set", category="weights", price=400.0),
])


def run(node, **inputs):
    return asyncio.run(node.run(**inputs))


# -- verify.grounded ---------------------------------------------------------------------------------------------


def test_grounded_drops_repairs_and_counts() -> None:
    cands = Candidates(items=[ScoredItem(id=i, score=s) for i, s in
                              [("b3", 0.9), ("yoga mat!", 0.8), ("Kettlebel 16kg", 0.7), ("Treadmill", 0.6),
                               ("b2", 0.5)]], source="llm")
    out = run(VerifyGrounded(VerifyGrounded.Config()), items=cands, catalog=CATALOG)
    assert out.items == ["b3", "b2"] and out.candidates.ids == ["b3", "b2"]
    assert (out.dropped, out.repaired, out.duplicates) == (1, 2, 2)  # both repairs land on items already there
    assert out.fixes == {"yoga mat!": "b3", "Kettlebel 16kg": "b2"} and out.dropped_entries == ["Treadmill"]
    assert out.candidates.items[0].score == 0.9 and out.candidates.source == "llm"
    strict = run(VerifyGrounded(VerifyGrounded.Config(repair=False)), items=["b4", "Pull-up bar", "b4"],
                 catalog=CATALOG)
    assert strict.items == ["b4"] and (strict.dropped, strict.repaired, strict.duplicates) == (1, 0, 1)


def test_grounded_repairs_recommendations_by_title() -> None:
    recs = Recommendations(user_id="u1", items=[
        Recommendation(rank=1, id="made-up-7", title="Pull up bar", score=1.0, reason="you like bars"),
        Recommendation(rank=2, id="b3", title="Yoga Mat", score=0.5),
        Recommendation(rank=3, id="x", title="Rowing machine", score=0.2),
    ])
    out = run(VerifyGrounded(VerifyGrounded.Config()), items=recs, catalog=CATALOG)
    fixed = out.recommendations
    assert [(r.rank, r.id, r.title, r.price) for r in fixed.items] == [(1, "b4", "Pull-up Bar", 40.0),
                                                                       (2, "b3", "Yoga Mat", None)]
    assert fixed.items[0].reason == "you like bars" and out.repaired == 1 and out.dropped == 1


# -- verify.constraints ------------------------------------------------------------------------------------------


def test_constraints_list_every_violation() -> None:
    cfg = VerifyConstraints.Config(budget=300, exclude_ids=["b5"], no_seen=True, max_per_category=1,
                                   quotas={"mats": 0})
    profile = UserProfile(user_id="u1", known=True, history_size=1, seen=["b3"])
    out = run(VerifyConstraints(cfg), value=Candidates(items=[ScoredItem(id=i, score=1) for i in
                                                             ["b1", "b2", "b3", "b5"]]),
              catalog=CATALOG, profile=profile)
    rules = sorted(v.rule for v in out.violations)
    assert rules == ["already_seen", "budget", "exclusions", "quota", "quota"] and not out.ok
    assert out.total == 735.0
    assert any("over the budget of 300" in v.message for v in out.violations)
    assert {v.item_id for v in out.violations if v.rule != "quota"} == {None, "b3", "b5"}
    # a plan carries its own prices and quantities; catalog items take the catalog's price
    plan = {"items": [{"name": "Kettlebell", "item_id": "b2", "price": 1, "quantity": 2}, {"name": "Chalk"}]}
    out = run(VerifyConstraints(VerifyConstraints.Config(budget=200)), value=plan, catalog=CATALOG)
    assert out.total == 120.0 and [v.message for v in out.violations] == [
        "'Chalk' has no price, so the budget cannot be checked"]
    ok = run(VerifyConstraints(VerifyConstraints.Config(budget=200, unpriced="ignore")), value=plan, catalog=CATALOG,
             budget=500)
    assert ok.ok and ok.value is plan and ok.violations == []


SPEC_HEAD = """
name: verify
inputs:
  budget: {type: number, default: 500}
resources:
  model: {type: llm, config: {provider: litellm, model: openai/stub}}
nodes:
"""


def test_constraints_config_errors_point_at_their_keys(tmp_path) -> None:
    (tmp_path / "rules.py").write_text("def fits(value, entries):\n    return []\n", encoding="utf-8")
    nodes = """
  a:
    type: verify.constraints
    config: {no_seen: true}
    inputs: {value: [b1]}
  c:
    type: verify.constraints
    config: {check: rules.py:fist}
    inputs: {value: [b1]}
  b:
    type: verify.constraints
    config: {check: [rules.py:fits, nowhere.py:x]}
    inputs: {value: [b1]}
"""
    path = write_spec(tmp_path, SPEC_HEAD + nodes + "outputs:\n  a: ${a}\n  b: ${b}\n  c: ${c}\n")
    errors = errors_of(path)
    text = "\n".join(errors)
    assert "'no_seen' needs the 'profile' input" in text
    assert "check 'fist' is not a function of 'rules.py' (it defines: fits)" in text
    assert "check module 'nowhere.py' not found" in text
    assert all(":" in e.split(" ", 1)[0] for e in errors)  # every one with file:line:col


# -- verify.schema -----------------------------------------------------------------------------------------------


async def test_schema_checks_and_reports(tmp_path) -> None:
    (tmp_path / "shape.py").write_text(
        "from pydantic import BaseModel\n\nclass Shape(BaseModel):\n    name: str\n    sides: int\n", encoding="utf-8")
    nodes = """
  strict:
    type: verify.schema
    config: {schema: shape.py:Shape}
    inputs: {value: {name: square, sides: four}}
    fallback: {value: {name: unknown, sides: 0}}
  report:
    type: verify.schema
    config: {schema: shape.py:Shape, on_error: report}
    inputs: {value: '{"name": "triangle", "sides": 3}'}
"""
    path = write_spec(tmp_path, SPEC_HEAD + nodes + "outputs:\n  s: ${strict.name}\n  r: ${report}\n")
    result = await run_with(path, {}, {"model": FakeProvider([])})
    assert result.outputs["s"] == "unknown"
    assert "sides: Input should be a valid integer" in result.trace.node("strict").fallback_reason
    report = result.outputs["r"]
    assert report.valid and report.value.sides == 3 and report.errors == []
    bad = write_spec(tmp_path, SPEC_HEAD + nodes.replace("shape.py:Shape", "shape.py:Shap", 1)
                     + "outputs:\n  s: ${strict}\n")
    assert "schema 'Shap' not found" in "\n".join(errors_of(bad))


# -- the repair loop ---------------------------------------------------------------------------------------------

RULES = """
def fits_the_room(value, entries):
    # the user's own rule: nothing over 300 (too big for the room)
    return [f"{e['title']} does not fit the room" for e in entries if (e['price'] or 0) > 300]
"""

LOOP = """
  draft:
    type: llm.plan
    inputs: {model: "${resources.model}", constraints: {budget: "${inputs.budget}", space: "2 x 3 m"}}
  check:
    type: verify.constraints
    config: {check: rules.py:fits_the_room}
    inputs: {value: "${draft}", budget: "${inputs.budget}"}
  repair:
    type: llm.plan
    when: check.violations
    inputs:
      model: ${resources.model}
      constraints: {budget: "${inputs.budget}", space: "2 x 3 m"}
      previous: ${draft}
      feedback: ${check.violations}
  recheck:
    type: verify.constraints
    when: check.violations
    config: {check: rules.py:fits_the_room}
    inputs: {value: "${repair}", budget: "${inputs.budget}"}
  final:
    type: verify.accept
    inputs:
      checks: ["${check}", "${recheck}"]
    fallback: {value: {value: {steps: [ask a trainer]}, ok: false, attempts: 0, repaired: false}}
"""


def _plan(*priced: tuple[str, float]) -> dict:
    return {"steps": ["clear the corner", "set up"], "notes": "",
            "items": [{"name": name, "price": price} for name, price in priced]}


def _loop_spec(tmp_path) -> str:
    (tmp_path / "rules.py").write_text(RULES, encoding="utf-8")
    return str(write_spec(tmp_path, SPEC_HEAD + LOOP + "outputs:\n  plan: ${final}\n"))


async def test_repair_loop_re_asks_once_with_the_violations(tmp_path) -> None:
    path = _loop_spec(tmp_path)
    assert errors_of(path) == []
    fake = FakeProvider([_plan(("Barbell set", 400.0), ("Rack", 250.0)), _plan(("Kettlebell", 60.0), ("Mat", 25.0))])
    result = await run_with(path, {"budget": 500}, {"model": fake})
    final = result.outputs["plan"]
    assert final.ok and final.repaired and final.attempts == 2
    assert [i.name for i in final.value.items] == ["Kettlebell", "Mat"]
    assert fake.calls == 2
    again = fake.requests[1].messages[-1].content
    assert "the total 650 is over the budget of 500" in again and "Barbell set does not fit the room" in again
    assert '"Barbell set"' in again  # the previous plan is shown too


async def test_repair_loop_skips_the_repair_when_the_first_plan_passes(tmp_path) -> None:
    fake = FakeProvider([_plan(("Kettlebell", 60.0))])
    result = await run_with(_loop_spec(tmp_path), {"budget": 500}, {"model": fake})
    final = result.outputs["plan"]
    assert final.ok and not final.repaired and final.attempts == 1 and fake.calls == 1
    assert result.trace.node("repair").status == "skipped"


async def test_repair_loop_falls_back_when_the_repair_still_fails(tmp_path) -> None:
    fake = FakeProvider([_plan(("Barbell set", 400.0)), _plan(("Treadmill", 900.0))])
    result = await run_with(_loop_spec(tmp_path), {"budget": 500}, {"model": fake})
    final = result.outputs["plan"]
    assert not final.ok and final.value == {"steps": ["ask a trainer"]} and result.degraded
    reason = result.trace.node("final").fallback_reason
    assert "still breaks 2 rules after 2 attempts" in reason and "over the budget of 500" in reason


async def test_custom_check_that_raises_is_a_run_error_naming_it(tmp_path) -> None:
    (tmp_path / "rules.py").write_text("def broken(value, entries):\n    return 1 / 0\n", encoding="utf-8")
    nodes = """
  check:
    type: verify.constraints
    config: {check: rules.py:broken}
    inputs: {value: [b1]}
"""
    path = write_spec(tmp_path, SPEC_HEAD + nodes + "outputs:\n  c: ${check}\n")
    with pytest.raises(RunError, match="check '.*rules.py:broken' failed: ZeroDivisionError"):
        await run_with(path, {}, {"model": FakeProvider([])})
