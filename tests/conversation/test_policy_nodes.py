"""policy.rule, policy.bandit, policy.ppo and policy.mcts through specs: validate, run, `llmrec train` the PPO
policy and serve its decision from the safetensors artifact (issue 15)."""

from __future__ import annotations

import asyncio
import json

import pytest

import llmrec
from llmrec.cli import main
from llmrec.conversation.bandits import bandit_from_json
from llmrec.conversation.types import Decision, DialogueState
from llmrec.nodes.policy import BanditConfig, BanditPolicyNode
from llmrec.plugins import get_registry
from llmrec.serve.logs import FeedbackEvent
from llmrec.testing import write_spec

DATA = "{type: dataset, config: {name: headphones, split: user, options: {n_items: 60, n_personas: 24}}}"

SPEC = f"""
    name: policies
    inputs:
      state: {{type: object, default: {{}}}}
      reward: {{type: number, default: null}}
      done: {{type: boolean, default: false}}
      session: {{type: string, default: "s1"}}
    resources:
      shop: {DATA}
    nodes:
      rule:
        type: policy.rule
        config: {{min_known: 2}}
        inputs: {{state: "${{inputs.state}}", catalog: "${{resources.shop.catalog}}"}}
      bandit:
        type: policy.bandit
        config: {{algorithm: linucb, seed: 1}}
        inputs: {{state: "${{inputs.state}}", reward: "${{inputs.reward}}", done: "${{inputs.done}}",
                 session: "${{inputs.session}}"}}
      bundle:
        type: policy.mcts
        config: {{k: 2, iterations: 120}}
        inputs: {{state: "${{inputs.state}}", catalog: "${{resources.shop.catalog}}"}}
    outputs: {{rule: "${{rule}}", bandit: "${{bandit}}", bundle: "${{bundle}}", action: "${{rule.action}}"}}
"""


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    spec = write_spec(tmp_path_factory.mktemp("policies"), SPEC)
    rt = llmrec.Runtime(llmrec.validate(spec))
    asyncio.run(rt.start())
    yield rt
    asyncio.run(rt.close())


def _run(rt, **inputs):
    return asyncio.run(rt.run(inputs)).outputs


def test_rule_policy_asks_then_recommends_then_ends(runtime) -> None:
    out = _run(runtime, state={})
    first = out["rule"]
    assert isinstance(first, Decision) and first.action == "ask" and first.policy == "rule"
    assert first.slot in ("type", "use_case", "features", "budget")
    assert first.scores[first.slot] == max(first.scores.values())
    state = {"slots": {first.slot: "earbuds" if first.slot == "type" else 100.0 if first.slot == "budget" else ["gym"]},
             "asked": [first.slot], "turn": 1}
    second = _run(runtime, state=state)["rule"]
    assert second.action == "ask" and second.slot != first.slot
    state["slots"][second.slot] = ["wireless"] if second.slot == "features" else "earbuds" if second.slot == "type" \
        else 90.0 if second.slot == "budget" else ["gym"]
    assert _run(runtime, state=state)["action"] == "recommend"  # min_known 2
    assert _run(runtime, state={**state, "turn": 10})["rule"].action == "end"  # the turn limit
    state["rejected"] = ["h001", "h002", "h003"]
    assert _run(runtime, state=state)["rule"].action == "end"


def test_bandit_learns_from_the_previous_turns_reward(runtime) -> None:
    node = runtime.plans["bandit"].instance
    first = _run(runtime, state={}, session="a")["bandit"]
    assert first.policy == "linucb" and set(first.scores) == {"ask:type", "ask:use_case", "ask:features",
                                                              "ask:budget", "recommend"}
    _run(runtime, state={"turn": 1}, reward=-0.05, session="a")
    third = _run(runtime, state={"turn": 2}, reward=0.2, session="a")["bandit"]
    assert third.action in ("ask", "recommend")
    assert sum(node.bandit.counts) == 0 and len(node.policy.pending["a"]) == 2  # credit "return": at the end
    _run(runtime, state={}, session="b")  # another dialogue meanwhile keeps its own decisions
    ended = _run(runtime, state={"turn": 3}, reward=1.0, done=True, session="a")["bandit"]
    assert ended.action == "end" and sum(node.bandit.counts) == 3 and "a" not in node.policy.pending
    assert sum(node.bandit.sums) == pytest.approx((-0.05 + 0.2 + 1.0) + (0.2 + 1.0) + 1.0)
    assert "b" in node.policy.last


def test_bandit_learns_from_served_feedback_events(runtime) -> None:
    node = runtime.plans["bandit"].instance
    before = sum(node.bandit.counts)
    first = asyncio.run(runtime.run({"state": {}, "session": "fb"}))
    rid = first.trace.run_id
    asked = first.outputs["bandit"]
    told = asyncio.run(runtime.feedback([FeedbackEvent(request_id=rid, item_id="h001", type="click"),
                                         FeedbackEvent(request_id="someone-else", item_id="h001", type="click")]))
    assert told["bandit"] == 2 and "fb" in node.policy.pending  # the click is the turn's reward (credit: return)
    second = asyncio.run(runtime.run({"state": {"turn": 1}, "session": "fb"}))
    asyncio.run(runtime.feedback([FeedbackEvent(request_id=second.trace.run_id, item_id="h002", type="purchase")]))
    assert sum(node.bandit.counts) == before + 2 and "fb" not in node.policy.pending  # a purchase ends it
    arm = node.policy.names.index("recommend" if asked.action == "recommend" else f"ask:{asked.slot}")
    assert node.bandit.counts[arm] >= 1
    stale = asyncio.run(runtime.run({"state": {}, "session": "fb2"})).trace.run_id
    asyncio.run(runtime.run({"state": {"turn": 1}, "session": "fb2"}))  # the session moved on
    asyncio.run(runtime.feedback([FeedbackEvent(request_id=stale, item_id="h003", type="rating", value=5)]))
    assert sum(node.bandit.counts) == before + 3  # credited to the stale decision's arm alone


def test_bandit_node_update_path_and_json_state() -> None:
    node = BanditPolicyNode(BanditConfig(algorithm="thompson", seed=0, credit="turn"))
    d = asyncio.run(node.run(DialogueState()))
    assert node.update(0.5, session="") and not node.update(0.5, session="")  # one decision, one credit
    assert sum(node.bandit.counts) == 1 and isinstance(d.explored, bool)
    copy = bandit_from_json(node.state_json())
    assert copy.counts == node.bandit.counts and copy.sums == node.bandit.sums
    done = asyncio.run(node.run(DialogueState(), reward=1.0, done=True))
    assert done.action == "end"


def test_mcts_bundle_fits_the_budget(runtime) -> None:
    state = {"slots": {"use_case": ["gym", "office"], "features": ["wireless", "microphone"], "budget": 250.0}}
    d = _run(runtime, state=state)["bundle"]
    assert d.action == "recommend" and d.policy == "mcts" and 1 <= len(d.items) <= 2
    catalog = runtime.resources["shop"].catalog
    assert sum(catalog.get(i).price for i in d.items) <= 250.0
    poor = _run(runtime, state={"slots": {"budget": 1.0}})["bundle"]
    assert poor.action == "ask" and poor.slot == "budget" and "budget of 1" in poor.reason


def test_node_configs_are_checked() -> None:
    bad = write_spec_text("""
        name: bad
        inputs: {state: {type: object, default: {}}}
        nodes:
          p:
            type: policy.bandit
            config: {algorithm: ucb2, slots: []}
            inputs: {state: "${inputs.state}"}
        outputs: {p: "${p}"}
    """)
    with pytest.raises(llmrec.SpecErrors) as err:
        llmrec.validate(bad)
    text = str(err.value)
    assert "ucb2" in text and "slots" in text
    assert {"conversation_acceptance", "feature_diversity"} <= set(get_registry().metrics)
    assert "headphones" in get_registry().datasets


_TMP: list = []


def write_spec_text(text: str):
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    _TMP.append(folder)
    return write_spec(folder, text)


PPO_SPEC = f"""
    name: ppo
    inputs:
      state: {{type: object, default: {{}}}}
    resources:
      shop: {DATA}
    nodes:
      decide:
        type: policy.ppo
        config: {{model_path: models, timesteps: 256, n_steps: 128, batch_size: 64, n_epochs: 2, net_arch: [16],
                 REWARD}}
        inputs: {{state: "${{inputs.state}}"}}
    outputs: {{decision: "${{decide}}"}}
"""


def test_ppo_policy_trains_with_llmrec_train_and_runs_from_its_artifact(tmp_path, capsys) -> None:
    bad = write_spec(tmp_path, PPO_SPEC.replace("REWARD", "reward: {pricey: 1}"), "bad.yaml")
    assert main(["validate", str(bad)]) == 1
    assert "unknown reward component 'pricey'" in capsys.readouterr().out
    spec = write_spec(tmp_path, PPO_SPEC.replace("REWARD", "reward: {acceptance: 1, turn_penalty: 0.05}"))
    assert main(["run", str(spec)]) == 4
    assert "llmrec train" in capsys.readouterr().err
    assert main(["train", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "trained node 'decide' (policy.ppo)" in out and "success_rate" in out
    folder = next((tmp_path / "models").glob("decide-*"))
    names = {p.name for p in folder.iterdir()}
    assert {"policy.safetensors", "policy.json", "curve.json", "curve.png", "meta.json"} <= names
    assert not any(n.endswith((".zip", ".pkl", ".pt")) for n in names)
    curve = json.loads((folder / "curve.json").read_text())
    assert curve["episodes"] > 10
    decision = llmrec.run(spec, {"state": {}}).outputs["decision"]
    assert decision.policy == "ppo" and decision.action in ("ask", "recommend", "end")
    assert sum(decision.scores.values()) == pytest.approx(1.0, abs=1e-3)
    assert main(["train", str(spec)]) == 0
    assert "up to date" in capsys.readouterr().out
