"""Trust boundary: code a spec names (issue 11). plugins/*.py, schema and check files beside a spec, and modules
outside llmrec and its plugins, are imported only when the user trusts the spec's folder (--trust, `llmrec trust`,
$LLMREC_TRUST); validating an untrusted spec imports nothing and says what it skipped, with positions. A file
outside the spec's folder is refused whatever the trust. The attacks are the tests: each planted module writes a
marker file when imported, so "not imported" is observed, not assumed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmrec import trust
from llmrec.api import check
from llmrec.cli import main
from llmrec.errors import UntrustedCodeError
from llmrec.testing import write_spec


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch, tmp_path):
    """Nothing trusted: not the suite's folders (tests/conftest.py), not a config file of the user's."""
    monkeypatch.delenv("LLMREC_TRUST", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    yield
    for folder in list(trust._granted):
        trust.revoke(folder)


def _evil(path: Path, marker: Path, body: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n{body}", encoding="utf-8")
    return path


PLUGIN = """
from pydantic import BaseModel
from llmrec import NodeType, hookimpl


class Shout(NodeType):
    name = "demo.shout"

    async def run(self, text: str) -> str:
        return text.upper()


class Shape(BaseModel):
    name: str


def fits(value, entries):
    return []


@hookimpl
def llmrec_register_node_types(register):
    register(Shout)
"""

SCHEMA_SPEC = """
    name: code
    inputs: {}
    nodes:
      parse:
        type: text.template
        config: {template: '{"name": "x"}', parse: json, output_schema: WHERE}
    outputs: {shape: "${parse}"}
"""

CHECK_SPEC = """
    name: code
    inputs: {}
    nodes:
      rules:
        type: verify.constraints
        config: {check: WHERE}
        inputs: {value: ["echo pwned"]}
    outputs: {ok: "${rules.ok}"}
"""


def _spec_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "theirs"
    folder.mkdir(exist_ok=True)
    return folder


def test_a_local_plugin_of_an_untrusted_folder_is_not_imported(tmp_path, capsys) -> None:
    folder = _spec_dir(tmp_path)
    marker = tmp_path / "plugin-ran"
    _evil(folder / "plugins" / "shout.py", marker, PLUGIN)
    spec = write_spec(folder, """
        name: code
        inputs: {q: {type: string}}
        nodes:
          loud: {type: demo.shout, inputs: {text: "${inputs.q}"}}
        outputs: {loud: "${loud}"}
    """)
    assert main(["validate", str(spec)]) == 1
    err = "".join(capsys.readouterr())
    assert not marker.exists()
    assert f"{spec}:1:1: plugins/shout.py beside the spec is code" in err and "not imported" in err
    assert "--trust" in err and "llmrec trust" in err
    assert "unknown node type 'demo.shout'" in err and "the folder is not trusted" in err
    assert main(["run", str(spec), "--input", '{"q": "hi"}']) == 1  # nor when running it
    assert not marker.exists()
    assert main(["run", str(spec), "--input", '{"q": "hi"}', "--trust"]) == 0
    assert marker.exists() and json.loads(capsys.readouterr().out) == {"loud": "HI"}


@pytest.mark.parametrize("where", ["shape.py:Shape", "schemas/shape.py:Shape"])
def test_a_schema_file_of_an_untrusted_folder_is_not_imported(tmp_path, capsys, where) -> None:
    folder = _spec_dir(tmp_path)
    marker = tmp_path / "schema-ran"
    _evil(folder / where.split(":")[0], marker, PLUGIN)
    spec = write_spec(folder, SCHEMA_SPEC.replace("WHERE", where))
    _, errors, _ = check(spec)
    assert not marker.exists()
    [error] = errors
    assert isinstance(error, UntrustedCodeError) and error.node_id == "parse"
    assert (error.location.line, error.location.col) == (6, 69)  # at the value of output_schema
    assert "is code beside the spec" in error.message and "not imported" in error.message
    assert "--trust" in error.hint
    graph, errors, _ = check(spec, trust=True)  # the user read it and trusts it
    assert errors == [] and marker.exists()
    assert main(["run", str(spec)]) == 0  # trusted for the rest of this process
    assert json.loads(capsys.readouterr().out) == {"shape": {"name": "x"}}


def test_a_check_naming_any_installed_module_is_refused_untrusted(tmp_path, capsys) -> None:
    """`check: os:system` would call os.system(value, entries): a shell command the spec chose."""
    spec = write_spec(_spec_dir(tmp_path), CHECK_SPEC.replace("WHERE", "os:system"))
    assert main(["validate", str(spec)]) == 1
    err = "".join(capsys.readouterr())
    assert "spec.yaml:6:21: node 'rules': 'check.0': module 'os' is not part of llmrec or of an installed llmrec " \
           "plugin" in err
    assert main(["run", str(spec)]) == 1


def test_a_check_file_of_an_untrusted_folder_is_not_imported(tmp_path) -> None:
    folder = _spec_dir(tmp_path)
    marker = tmp_path / "check-ran"
    _evil(folder / "rules.py", marker, PLUGIN)
    spec = write_spec(folder, CHECK_SPEC.replace("WHERE", "rules.py:fits"))
    _, errors, _ = check(spec)
    assert [type(e) for e in errors] == [UntrustedCodeError] and not marker.exists()
    _, errors, _ = check(spec, trust=True)
    assert errors == [] and marker.exists()


def test_llmrec_modules_need_no_trust(tmp_path) -> None:
    spec = write_spec(_spec_dir(tmp_path), SCHEMA_SPEC.replace("WHERE", "llmrec.types:Recommendation"))
    assert check(spec)[1] == []


@pytest.mark.parametrize("where", ["ABS", "../outside.py:Shape", "schemas/../../outside.py:Shape", "link.py:Shape"])
def test_code_outside_the_spec_folder_is_refused_even_when_trusted(tmp_path, where) -> None:
    marker = tmp_path / "outside-ran"
    outside = _evil(tmp_path / "outside.py", marker, PLUGIN)
    folder = _spec_dir(tmp_path)
    (folder / "link.py").symlink_to(outside)
    where = where.replace("ABS", f"{outside}:Shape")
    spec = write_spec(folder, SCHEMA_SPEC.replace("WHERE", where))
    for trusted in (False, True):
        _, errors, _ = check(spec, trust=trusted)
        assert any("outside the spec's folder" in e.message and e.location.line == 6 for e in errors), errors
        assert not marker.exists()


def test_trust_from_the_config_file_and_the_environment(tmp_path, capsys, monkeypatch) -> None:
    folder = _spec_dir(tmp_path)
    marker = tmp_path / "ran"
    _evil(folder / "shape.py", marker, PLUGIN)
    spec = write_spec(folder, SCHEMA_SPEC.replace("WHERE", "shape.py:Shape"))
    assert main(["trust", str(folder)]) == 0
    assert str(folder.resolve()) in trust.config_file().read_text()
    assert main(["trust", "--list"]) == 0 and str(folder.resolve()) in capsys.readouterr().out
    assert check(spec)[1] == [] and marker.exists()
    assert main(["trust", "--remove", str(folder)]) == 0
    marker.unlink()
    (folder / "shape.py").touch()  # a new mtime, so the module is imported again if it may be
    assert [type(e) for e in check(spec)[1]] == [UntrustedCodeError] and not marker.exists()
    monkeypatch.setenv("LLMREC_TRUST", os.pathsep.join(["/nonexistent", str(tmp_path)]))  # a parent folder
    assert check(spec)[1] == [] and marker.exists()


def test_a_spec_cannot_trust_itself(tmp_path) -> None:
    """Only the command line, the user's config file and the user's environment grant trust: a spec's own
    ${env:...} or a trust file in its folder do not."""
    folder = _spec_dir(tmp_path)
    marker = tmp_path / "ran"
    _evil(folder / "shape.py", marker, PLUGIN)
    (folder / "llmrec").mkdir()
    (folder / "llmrec" / "trusted").write_text(f"{folder}\n")
    (folder / ".llmrec-trust").write_text(f"{folder}\n")
    spec = write_spec(folder, SCHEMA_SPEC.replace("WHERE", "shape.py:Shape"))
    assert [type(e) for e in check(spec)[1]] == [UntrustedCodeError] and not marker.exists()


def test_trust_remote_code_needs_the_users_trust(tmp_path) -> None:
    """transformers' trust_remote_code imports the model folder's Python files: code, under the same rule."""
    folder = _spec_dir(tmp_path)
    (folder / "m").mkdir()
    spec = write_spec(folder, """
        name: remote
        inputs: {q: {type: string}}
        resources:
          model: {type: llm, config: {provider: transformers, model: m, extra: {trust_remote_code: true}}}
        nodes:
          answer:
            type: llm.prompt
            config: {template: "{{ q }}"}
            inputs: {model: "${resources.model}", q: "${inputs.q}"}
        outputs: {answer: "${answer}"}
    """)
    errors = check(spec)[1]
    assert [type(e) for e in errors] == [UntrustedCodeError], errors
    assert errors[0].location.line == 4 and "trust_remote_code" in errors[0].message
    assert not [e for e in check(spec, trust=True)[1] if isinstance(e, UntrustedCodeError)]


@pytest.mark.parametrize("command", ["validate", "run", "graph", "eval", "serve", "train", "finetune", "distill",
                                     "plugins", "schema"])
def test_every_command_that_loads_a_spec_takes_trust(command, capsys) -> None:
    assert main([command, "--help"]) == 0
    assert "--trust" in capsys.readouterr().out


def test_serve_workers_inherit_the_trust(tmp_path) -> None:
    from llmrec.serve.app import ServeOptions, Server

    folder = _spec_dir(tmp_path)
    spec = write_spec(folder, SCHEMA_SPEC.replace("WHERE", "llmrec.types:Recommendation"))
    sent = ServeOptions(spec=str(spec), trust=True).to_env()  # what `serve --workers N` hands each worker
    assert json.loads(sent)["trust"] is True
    assert not trust.is_trusted(folder)
    Server(ServeOptions(**json.loads(sent)))  # a worker builds its server from it
    assert trust.is_trusted(folder)
