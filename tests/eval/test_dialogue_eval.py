"""`llmrec eval` of a conversational spec: simulated users play whole dialogues against specs/headphones_chat.yaml
through the real CLI (llmrec/eval/dialogues.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.conversation.simulator import Persona
from llmrec.data.datasets import load_dataset
from llmrec.eval.dialogues import NO_PREFERENCE, REJECT, opening, say, wish_list
from llmrec.testing import write_spec

ROOT = Path(__file__).resolve().parents[2]
CHAT = str(ROOT / "specs" / "headphones_chat.yaml")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("dialogues")
    path = folder / "report.json"
    code = main(["eval", CHAT, "--dialogues", "8", "--seed", "3", "--json", str(path), "--report", str(folder),
                 "--variants", "none", "--quiet"])
    assert code == 0
    data = json.loads(path.read_text(encoding="utf-8"))
    data["_folder"] = str(folder)
    return data


def test_the_report_has_success_turns_reward_with_intervals_and_says_it_is_degraded(report) -> None:
    assert report["dialogues"] == 8 and report["failed"] == 0
    for name in ("success_rate", "turns_to_success", "cumulative_reward", "left_rate", "questions_per_dialogue"):
        stat = report[name]
        if stat["mean"] is not None:
            assert stat["low"] <= stat["mean"] <= stat["high"]
    assert report["turns"] == sum(len(r["turns"]) for r in report["records"])
    assert report["degraded_turns"] == report["turns"]  # no model configured: every turn says so
    assert len(report["reward_curve"]) == report["settings"]["max_turns"]
    wins = [r for r in report["records"] if r["success"]]
    assert report["success_rate"]["mean"] == pytest.approx(len(wins) / 8)
    assert report["simulated_users"] == "rules"  # no model configured
    regrets = [r["oracle"] - r["reward"] for r in report["records"]]
    assert report["cumulative_regret"] == pytest.approx(list(__import__("itertools").accumulate(regrets)))
    assert report["regret"]["mean"] == pytest.approx(sum(regrets) / 8)


def test_an_accepted_item_is_one_the_hidden_persona_likes_and_was_shown(report) -> None:
    catalog = load_dataset("headphones").catalog
    for record in report["records"]:
        persona = Persona.from_dict(record["persona"])
        accepted = [t for t in record["turns"] if t["accepted"]]
        assert len(accepted) == (1 if record["success"] else 0)
        for turn in accepted:
            assert turn["action"] == "recommend" and turn["accepted"] in turn["items"]
            assert persona.utility(catalog.get(turn["accepted"])) >= persona.accept_threshold


def test_the_user_says_only_what_it_was_asked(report) -> None:
    """Nothing of the persona reaches the spec but its opening, answers to the slot asked, or a rejection."""
    for record in report["records"]:
        persona = Persona.from_dict(record["persona"])
        turns = record["turns"]
        assert turns[0]["said"] == opening(persona)
        for before, turn in zip(turns, turns[1:]):
            if before["action"] == "recommend":
                assert turn["said"] == REJECT
            elif before["slot"] is not None:
                assert turn["said"] == say(before["slot"], persona.value_of(before["slot"]))
            else:
                assert turn["said"] == wish_list(persona)


def test_the_html_report_embeds_the_reward_curve(report) -> None:
    html = (Path(report["_folder"]) / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "simulated dialogues" in html
    assert (Path(report["_folder"]) / "reward_curve.png").stat().st_size > 1000


def test_the_same_seed_plays_the_same_dialogues(capsys) -> None:
    runs = []
    for _ in range(2):
        code, out, _ = run_cli(capsys, "eval", CHAT, "--dialogues", "3", "--seed", "5", "--max-turns", "4",
                               "--json", "-", "--variants", "none", "--quiet")
        assert code == 0
        runs.append([[(t["said"], t["action"], t["items"], t["accepted"]) for t in r["turns"]]
                     for r in json.loads(out)["records"]])
    assert runs[0] == runs[1]


def test_a_spec_with_state_is_evaluated_in_dialogues_by_default(capsys) -> None:
    code, out, _ = run_cli(capsys, "eval", CHAT, "--max-turns", "1", "--json", "-", "--variants", "none", "--quiet")
    assert code == 0
    data = json.loads(out)
    assert data["dialogues"] == 50 and all(len(r["turns"]) == 1 for r in data["records"])


def test_a_spec_without_state_is_refused_with_what_to_change(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path, """
        name: plain
        inputs: {message: string}
        nodes:
          a: {type: core.identity, inputs: {value: "${inputs.message}"}}
        outputs: {v: "${a}"}
    """)
    code, _, err = run_cli(capsys, "eval", str(spec), "--dialogues", "2")
    assert code == 2 and "simulated dialogues need a spec that keeps state" in err


def test_a_bad_reward_is_a_clear_error(capsys) -> None:
    code, _, err = run_cli(capsys, "eval", CHAT, "--dialogues", "2", "--reward", "sparkle=1")
    assert code == 2 and "--reward" in err and "unknown reward component 'sparkle'" in err


def test_what_the_user_says_reads_as_slot_values() -> None:
    assert say("budget", 74.5) == "under $74" or say("budget", 74.5) == "under $75"
    assert say("features", ["noise_cancelling", "wireless"]) == "noise cancelling and wireless"
    assert say("use_case", "gym") == "for gym"
    assert say("type", None) == NO_PREFERENCE


def test_items_turned_down_are_never_shown_again(report) -> None:
    for record in report["records"]:
        turned_down: set[str] = set()
        for turn in record["turns"]:
            assert not turned_down & set(turn["items"])
            if turn["action"] == "recommend" and not turn["accepted"]:
                turned_down |= set(turn["items"])


def test_variants_play_the_same_users_and_an_online_learner_meets_them_in_order(capsys) -> None:
    code, out, _ = run_cli(capsys, "eval", CHAT, "--dialogues", "12", "--seed", "2", "--json", "-", "--quiet")
    assert code == 0
    data = json.loads(out)
    base, bandit = data["reports"]
    assert (base["label"], bandit["label"]) == ("headphones-chat", "headphones-chat:bandit")
    assert [r["persona"] for r in base["records"]] == [r["persona"] for r in bandit["records"]]
    assert base["learners"] == [] and bandit["learners"] == ["decide"]
    assert bandit["settings"]["concurrency"] == 1  # a learner meets the users one after the other
    metrics = {(c["metric"], c["a"], c["b"]) for c in data["comparisons"]}
    assert metrics == {("success", "headphones-chat:bandit", "headphones-chat"),
                       ("reward", "headphones-chat:bandit", "headphones-chat")}
    for c in data["comparisons"]:
        assert c["lo"] <= c["diff"] <= c["hi"] and 0 <= c["p"] <= c["p_adjusted"] <= 1 and c["n"] == 12


def test_with_a_model_configured_the_simulated_users_answer_through_it() -> None:
    """The spec's llm resource has a model (a scripted one here): the users' answers come from it (parsed back to
    the slot's values), acceptance stays their hidden utility, and no turn is degraded."""
    import asyncio

    from llmrec.api import validate
    from llmrec.eval.dialogues import DialogueSettings, evaluate_dialogues
    from llmrec.testing import FakeProvider

    asked_users = []

    def reply(request):
        if request.schema is not None and request.schema.__name__ == "ExtractAnswer":
            text = request.messages[-1].content.lower()
            return {"intent": "refine", "features": ["wireless"] if "wireless" in text else [],
                    "type": "earbuds" if "earbuds" in text else None, "price_max": None}
        if request.messages[0].role == "system" and "You are a shopper" in request.messages[0].content:
            asked_users.append(request.messages[-1].content)
            return "earbuds, wireless, no preference otherwise"
        return "Which type do you prefer: over-ear, on-ear, in-ear or earbuds?"

    graph = validate(CHAT)
    report = asyncio.run(evaluate_dialogues(graph, DialogueSettings(dialogues=3, seed=4, max_turns=4),
                                            resources={"model": FakeProvider(reply)}))
    assert report["simulated_users"] == "llm" and report["failed"] == 0
    assert report["degraded_turns"] == 0
    assert asked_users  # the shoppers were asked through the model
