"""Every command's --help shows examples, and the shell completion typer provides works for `llmrec`."""

from __future__ import annotations

import pytest
import typer

from llmrec import cli
from llmrec.cli import main


def _commands() -> list[list[str]]:
    """Every command path of the app, plugin-registered ones included (eval, serve, train, finetune, distill):
    the root, groups and their commands. typer 0.29 vendors its own click: walk what get_command builds."""
    cli._register_plugin_commands()
    paths: list[list[str]] = []

    def walk(command, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, path + [name])

    walk(typer.main.get_command(cli.app), [])
    return paths


COMMANDS = _commands()


def test_every_builtin_command_is_walked() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"run", "validate", "graph", "schema", "eval", "serve", "train", "finetune", "distill", "trust", "init",
            "plugin", "plugin new", "plugins", "version"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "llmrec")
def test_help_has_examples(path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no wrapped example lines
    assert main([*path, "--help"]) == 0
    out, _ = capsys.readouterr()
    assert "Examples:" in out, path
    examples = [line.strip() for line in out.splitlines() if line.strip().startswith("llmrec ")]
    assert examples, path
    if path:  # a command's examples use that command
        assert any(line.startswith("llmrec " + " ".join(path)) for line in examples), (path, examples)


def test_show_completion_prints_a_script_for_llmrec(capsys, monkeypatch) -> None:
    # typer detects the shell from the process tree (shellingham), and then --show-completion takes no value;
    # this switch (typer's own, for tests) makes it take the shell as its argument instead
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    monkeypatch.setenv("SHELL", "/bin/bash")
    assert main(["--show-completion", "bash"]) == 0
    out = capsys.readouterr().out
    assert "_LLMREC_COMPLETE=complete_bash" in out and "complete -o default -F _llmrec_completion llmrec" in out
    assert main(["--show-completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert "#compdef llmrec" in out and "_LLMREC_COMPLETE=complete_zsh" in out


def test_completion_completes_commands_and_options(capsys, monkeypatch) -> None:
    monkeypatch.setenv("_LLMREC_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "llmrec tr")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert main([]) == 0
    assert capsys.readouterr().out.split() == ["trust", "train"]
    monkeypatch.setenv("COMP_WORDS", "llmrec run --qu")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert main([]) == 0
    assert capsys.readouterr().out.split() == ["--quiet"]


def test_root_help_lists_completion_options(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--install-completion" in out and "--show-completion" in out and "<bool>" not in out
