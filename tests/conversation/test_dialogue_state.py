"""A spec's typed ``state:`` block: checked references, the runtime's state in and next state out, the CLI's
--state (issue 15)."""

from __future__ import annotations

import json

import pytest
from llmrec.api import validate
from llmrec.cli import main
from llmrec.errors import InputError
from llmrec.runtime.executor import Runtime
from llmrec.testing import errors_of, write_spec

PLUGIN = """
from typing import Any
from llmrec import NodeType, hookimpl


class Count(NodeType):
    name = "test.count"

    async def run(self, state: Any, word: str = "") -> dict[str, Any]:
        return {"turns": state.turns + 1, "words": [*state.words, word], "mood": state.mood}


@hookimpl
def llmrec_register_node_types(register):
    register(Count)
"""

SPEC = """
name: counter
inputs:
  word: {type: string, default: ""}
state:
  schema:
    turns: {type: integer, default: 0, minimum: 0}
    words: {type: array, items: string}
    mood: {type: string, default: calm, enum: [calm, busy]}
  update: ${count}
nodes:
  count:
    type: test.count
    inputs: {state: "${state}", word: "${inputs.word}"}
  echo:
    type: core.identity
    inputs: {value: "${state.turns}"}
outputs:
  before: ${echo}
  after: ${count.turns}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("state")
    (d / "plugins").mkdir()
    (d / "plugins" / "count.py").write_text(PLUGIN)
    return d


def _spec(folder, text: str, name: str = "spec.yaml"):
    return write_spec(folder, text, name)


def test_state_in_and_next_state_out(folder) -> None:
    graph = validate(_spec(folder, SPEC), trust=True)
    assert sorted(graph.state_model.model_fields) == ["mood", "turns", "words"]
    rt = Runtime(graph)
    first = rt.run_sync({"word": "hi"})  # no state: a new session from the defaults
    assert first.outputs == {"before": 0, "after": 1}
    assert first.state.model_dump() == {"turns": 1, "words": ["hi"], "mood": "calm"}
    second = rt.run_sync({"word": "again"}, state=first.state.model_dump())
    assert second.outputs == {"before": 1, "after": 2}
    assert second.to_dict()["state"] == {"turns": 2, "words": ["hi", "again"], "mood": "calm"}
    with pytest.raises(InputError) as bad:
        rt.run_sync({}, state={"turns": -1})
    assert bad.value.field == "state.turns"
    with pytest.raises(InputError) as unknown:
        rt.run_sync({}, state={"colour": "red"})
    assert unknown.value.field == "state.colour"


def test_wrong_state_references_point_at_their_place(folder) -> None:
    text = SPEC.replace("${state.turns}", "${state.turn}").replace("update: ${count}", "update: ${cont}")
    errors = errors_of(_spec(folder, text, "bad.yaml"), trust=True)
    assert any("bad.yaml:16:21" in e and "'${state.turn}'" in e and "has no field 'turn'" in e
               and "Did you mean 'turns'" in e for e in errors), errors
    assert any("bad.yaml:9:11" in e and "unknown node 'cont'" in e for e in errors), errors
    stateless = "name: s\nnodes:\n  e: {type: core.identity, inputs: {value: '${state.slots}'}}\noutputs: {v: '${e}'}\n"
    errors = errors_of(write_spec(folder, stateless, "stateless.yaml"))
    assert any("stateless.yaml:3:44" in e and "no 'state:' block" in e for e in errors), errors
    required = SPEC.replace("turns: {type: integer, default: 0, minimum: 0}", "turns: {type: integer, required: true}")
    errors = errors_of(_spec(folder, required, "required.yaml"), trust=True)
    assert any("state field 'turns' cannot be required" in e for e in errors), errors


def test_state_from_a_pydantic_model_is_type_checked(folder) -> None:
    text = """
    name: typed
    inputs: {}
    state:
      schema: llmrec.conversation.types:DialogueState
      update: ${keep}
    nodes:
      keep: {type: core.identity, inputs: {value: "${state}"}}
      slots: {type: core.identity, inputs: {value: "${state.slots}"}}
      nope: {type: core.identity, inputs: {value: "${state.slot}"}}
    outputs: {slots: "${slots}", nope: "${nope}"}
    """
    errors = errors_of(write_spec(folder, text, "typed.yaml"))
    assert len(errors) == 1 and "DialogueState" in errors[0] and "has no field 'slot'" in errors[0], errors
    ok = text.replace('      nope: {type: core.identity, inputs: {value: "${state.slot}"}}\n', "")
    graph = validate(write_spec(folder, ok.replace(', nope: "${nope}"', ""), "typed_ok.yaml"))
    result = Runtime(graph).run_sync({}, state={"slots": {"brand": "sony"}, "turn": 2})
    assert result.outputs == {"slots": {"brand": "sony"}}
    assert result.state.slots == {"brand": "sony"} and result.state.turn == 2


def test_cli_run_takes_and_prints_the_state(folder, tmp_path, capsys) -> None:
    spec = _spec(folder, SPEC, "cli.yaml")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"turns": 4, "words": ["a"]}))
    assert main(["run", str(spec), "--trust", "-i", "word=b", "--state", f"@{state}"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["outputs"] == {"before": 4, "after": 5}
    assert data["state"] == {"turns": 5, "words": ["a", "b"], "mood": "calm"}
    assert main(["run", str(spec), "--trust", "--state", '{"mood": "angry"}']) == 3
    err = capsys.readouterr().err
    assert "state.mood" in err and "hint: --state must fit the state schema" in err and "turns, words, mood" in err
    assert main(["run", str(spec), "--trust", "--state", "[1]"]) == 3
    err = capsys.readouterr().err
    assert "--state must be a JSON object" in err and "Traceback" not in err


def test_a_when_condition_may_read_the_state(folder) -> None:
    text = SPEC.replace("""  echo:
    type: core.identity
""", """  echo:
    type: core.identity
    when: "state.turns >= 1 and inputs.word"
""")
    graph = validate(_spec(folder, text, "when.yaml"), trust=True)
    rt = Runtime(graph)
    assert rt.run_sync({"word": "a"}).outputs["before"] is None  # turn 0: skipped
    assert rt.run_sync({"word": "a"}, state={"turns": 2}).outputs["before"] == 2
    assert rt.run_sync({}, state={"turns": 2}).outputs["before"] is None
    wrong = errors_of(_spec(folder, text.replace("state.turns >= 1", "stat.turns >= 1"), "when_bad.yaml"), trust=True)
    assert any("uses 'stat'" in e and "Did you mean 'state'?" in e for e in wrong), wrong
