"""The `llmrec` command as a user meets it: outputs, exit codes, and no tracebacks for mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.testing import write_spec

SPEC = """
    name: greet
    inputs:
      user: {type: string}
      k: {type: integer, default: 2, minimum: 1}
    nodes:
      hello:
        type: text.template
        config: {template: "hello {{ who }} x{{ n }}"}
        inputs: {who: "${inputs.user}", n: "${inputs.k}"}
      shout:
        type: core.identity
        inputs: {value: "${hello}"}
    outputs:
      text: ${shout}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path, SPEC)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_run_prints_outputs_as_json(spec, capsys) -> None:
    code, out, _ = run_cli(capsys, "run", str(spec), "--input", '{"user": "ann"}')
    assert code == 0 and json.loads(out) == {"text": "hello ann x2"}


def test_run_with_input_file_and_trace(spec, tmp_path, capsys) -> None:
    (tmp_path / "req.json").write_text('{"user": "bo", "k": 3}')
    code, out, _ = run_cli(capsys, "run", str(spec), "--input", f"@{tmp_path / 'req.json'}", "--trace")
    data = json.loads(out)
    assert code == 0 and data["outputs"] == {"text": "hello bo x3"}
    assert [n["node_id"] for n in data["trace"]["nodes"]] == ["hello", "shout"]
    assert all(n["status"] == "ok" and "wall_ms" in n for n in data["trace"]["nodes"])


@pytest.mark.parametrize("payload, message", [
    ('{"k": 3}', "error: input 'user': Field required"),
    ('{"user": "a", "k": 0}', "error: input 'k': Input should be greater than or equal to 1"),
    ('{"user": "a", "kk": 1}', "error: input 'kk': unknown field (this spec's inputs are: user, k)"),
    ('{"user": ', "error: --input is not valid JSON"),
    ('[1, 2]', "error: --input must be a JSON object"),
])
def test_bad_input_is_a_clear_error(spec, capsys, payload, message) -> None:
    code, _, err = run_cli(capsys, "run", str(spec), "--input", payload)
    assert code == 3 and message in err


def test_inputs_as_key_value_pairs_merge_in_order(spec, tmp_path, capsys) -> None:
    """-i key=text gives a string, -i key:=json a JSON value (httpie's convention); JSON objects and files mix in."""
    (tmp_path / "req.json").write_text('{"user": "file", "k": 5}')
    code, out, _ = run_cli(capsys, "run", str(spec), "-i", "user=ann", "-i", "k:=3")
    assert code == 0 and json.loads(out) == {"text": "hello ann x3"}
    code, out, _ = run_cli(capsys, "run", str(spec), "-i", f"@{tmp_path / 'req.json'}", "-i", "user=a=b c")
    assert code == 0 and json.loads(out) == {"text": "hello a=b c x5"}
    code, out, _ = run_cli(capsys, "run", str(spec), "-i", "user=ann", "-i", "k=4")  # numeric text, as over HTTP
    assert code == 0 and json.loads(out) == {"text": "hello ann x4"}
    code, _, err = run_cli(capsys, "run", str(spec), "-i", "user=ann", "-i", "k=four")
    assert code == 3 and "error: input 'k'" in err
    code, _, err = run_cli(capsys, "run", str(spec), "-i", "user=ann", "-i", "k:=three")
    assert code == 3 and "--input k:= is not valid JSON" in err


def test_missing_input_file(spec, capsys) -> None:
    code, _, err = run_cli(capsys, "run", str(spec), "--input", "@/no/such.json")
    assert code == 3 and "cannot read input file" in err


def test_run_refuses_an_invalid_spec_with_validate_messages(tmp_path, capsys) -> None:
    bad = write_spec(tmp_path, SPEC.replace("core.identity", "core.identy"))
    code, out, err = run_cli(capsys, "run", str(bad), "--input", '{"user": "a"}')
    assert code == 1 and out == ""
    assert "unknown node type 'core.identy'. Did you mean 'core.identity'" in err
    assert "1 error; nothing was run" in err


def test_validate_ok_and_exit_codes(spec, tmp_path, capsys) -> None:
    code, out, _ = run_cli(capsys, "validate", str(spec))
    assert code == 0 and out.strip().endswith("ok (2 nodes, 0 resources, 1 output)")
    code, out, _ = run_cli(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert code == 1 and "missing.yaml: file not found" in out


def test_graph_mermaid_and_dot(spec, capsys) -> None:
    code, out, _ = run_cli(capsys, "graph", str(spec))
    assert code == 0 and out.startswith("flowchart LR") and "hello --> shout" in out and "shout --> out_text" in out
    code, out, _ = run_cli(capsys, "graph", str(spec), "--format", "dot")
    assert code == 0 and out.startswith('digraph "greet"') and '"hello" -> "shout";' in out
    code, _, err = run_cli(capsys, "graph", str(spec), "--format", "svg")
    assert code == 2 and "unknown format" in err


def test_node_failure_is_reported_without_traceback(tmp_path, capsys) -> None:
    failing = write_spec(tmp_path, """
        name: fails
        nodes:
          t: {type: text.template, config: {template: "{{ x.y }}"}, inputs: {x: null}}
        outputs: {v: "${t}"}
    """)
    code, out, err = run_cli(capsys, "run", str(failing), "--trace")
    assert code == 4 and err.startswith("error: node 't': UndefinedError")
    assert '"status": "error"' in err


def test_usage_errors_exit_2(capsys) -> None:
    code, _, err = run_cli(capsys, "no-such-command")
    assert code == 2 and "No such command" in err


def test_console_script_runs_as_a_module(spec) -> None:
    proc = subprocess.run([sys.executable, "-m", "llmrec.cli", "run", str(spec), "-i", '{"user": "z"}'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"text": "hello z x2"}


def test_version_flag_and_flags_shown_as_flags(capsys) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("llmrec ")
    for command in ("run", "eval", "serve", "validate"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and "--trust" in out and "<bool>" not in out, command


def test_trace_as_a_table_on_stderr(spec, capsys) -> None:
    code, out, err = run_cli(capsys, "run", str(spec), "-i", "user=ann", "--trace", "--format", "table")
    assert code == 0 and json.loads(out) == {"text": "hello ann x2"}  # stdout stays the outputs alone
    rows = [line for line in err.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["hello", "shout"]
    assert all("ok" in row and "text.template" in rows[0] for row in rows)
    code, out, _ = run_cli(capsys, "run", str(spec), "-i", "user=ann", "--trace", "--format", "json")
    assert code == 0 and [n["node_id"] for n in json.loads(out)["trace"]["nodes"]] == ["hello", "shout"]
    code, _, err = run_cli(capsys, "run", str(spec), "-i", "user=ann", "--trace", "--format", "yaml")
    assert code == 2 and "unknown format 'yaml'" in err


def test_llmrec_commands_is_what_a_command_plugin_uses(spec, tmp_path, capsys) -> None:
    from llmrec import commands

    assert commands.load_graph(spec).spec.name == "greet"
    bad = write_spec(tmp_path, SPEC.replace("core.identity", "core.identy"), "bad.yaml")
    with pytest.raises(commands.Exit) as raised:
        commands.load_graph(bad)  # prints every error, as `llmrec validate` does, then exits 1
    assert raised.value.code == commands.EXIT_SPEC == 1
    assert "unknown node type 'core.identy'" in capsys.readouterr().err
    assert (commands.EXIT_INPUT, commands.EXIT_FAILED, commands.EXIT_INTERRUPTED) == (3, 4, 130)


BUGGY_PLUGIN = '''
from llmrec import NodeType, hookimpl


class Buggy(NodeType):
    name = "buggy.lookup"

    async def run(self, key: str) -> str:
        return {"a": "found"}[key]


@hookimpl
def llmrec_register_node_types(register):
    register(Buggy)
'''


def test_a_plugin_nodes_bug_points_at_the_plugin_and_llmrec_debug(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "buggy.py").write_text(BUGGY_PLUGIN)
    spec = write_spec(tmp_path, """
        name: buggy
        inputs: {key: {type: string}}
        nodes:
          look: {type: buggy.lookup, inputs: {key: "${inputs.key}"}}
        outputs: {v: "${look}"}
    """)
    monkeypatch.delenv("LLMREC_DEBUG", raising=False)
    code, _, err = run_cli(capsys, "run", str(spec), "-i", "key=b")
    assert code == 4 and err.startswith("error: node 'look': KeyError")
    assert "hint: node type 'buggy.lookup' (from plugins/buggy.py) raised KeyError" in err and "LLMREC_DEBUG=1" in err
    monkeypatch.setenv("LLMREC_DEBUG", "1")
    assert main(["run", str(spec), "-i", "key=b"]) == 4
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'return {"a": "found"}[key]' in err
