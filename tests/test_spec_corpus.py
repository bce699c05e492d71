"""The spec corpus, through the real ``llmrec validate`` (in-process: ``llmrec.cli.main``).

tests/specs/broken/NN_short_name.yaml
    One mistake each (the file's first line is a comment saying which). ``llmrec validate NN_short_name.yaml``,
    run with the current directory = tests/specs/broken, must exit 1 and print exactly the diagnostic lines of
    NN_short_name.expected (``file:line:col: ...``; the summary line is not part of it), sorted by position,
    and never a traceback. Fragments (fragments/), schema modules (schemas/) and the typed test node types
    (plugins/typed.py, loaded automatically because it sits in plugins/ beside the specs) serve those cases.
tests/specs/valid/*.yaml
    Valid specs that together use every feature; they must validate with exit 0 and no warnings.

Two things in the output are normalised before comparing, so that expectations do not depend on where the
checkout lives or on the release: the absolute path of the corpus folder is written ``$CORPUS``, and
``(from llmrec X.Y.Z)`` is written ``(from llmrec VERSION)``.

Known core issues: cases listed in KNOWN_ISSUES hold the output the core *should* print; they are strict
xfails, so when the core is fixed they XPASS, fail, and the entry must be removed from KNOWN_ISSUES.

Regenerating expectations after the core's messages change::

    LLMREC_REGEN_CORPUS=1 .venv/bin/python -m pytest tests/test_spec_corpus.py

writes the current diagnostics into every .expected file instead of asserting (known-issue cases too).
Review every changed line before keeping it: ``file:line:col`` must point at the offending key or value, the
node must be named when there is one, and the hint must tell the user what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from pathlib import Path

import pytest

import llmrec.plugins
from llmrec.cli import main

SPECS_DIR = Path(__file__).resolve().parent / "specs"
CORPUS_DIR = SPECS_DIR / "broken"
VALID_DIR = SPECS_DIR / "valid"
BROKEN = sorted(CORPUS_DIR.glob("[0-9][0-9]_*.yaml"))
VALID = sorted(VALID_DIR.glob("*.yaml"))
REGEN = os.environ.get("LLMREC_REGEN_CORPUS") == "1"

#: environment variables the specs read: unset, so that ${env:...} cases see their defaults / errors
CORPUS_ENV_VARS = ("LLMREC_CORPUS_UNSET", "LLMREC_CORPUS_GREETING", "LLMREC_CORPUS_SCORE")

#: stem -> what the core gets wrong today (the .expected file holds what it should print)
KNOWN_ISSUES: dict[str, str] = {}

DIAGNOSTIC = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<col>\d+): ")
WARNING = re.compile(r"^[^\s:][^:]*:\d+:\d+: (node '[^']*': )?warning: ")
SUMMARY = re.compile(r"^(?P<file>\S+): (?P<n>\d+) errors?$")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "")
    for name in CORPUS_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def normalise(text: str) -> str:
    text = text.replace(str(CORPUS_DIR), "$CORPUS").replace(str(VALID_DIR), "$VALID")
    return re.sub(r"\(from llmrec [^)\s]+\)", "(from llmrec VERSION)", text)


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    assert "internal error" not in out + err, out + err
    return code, normalise(out)


def diagnostics(out: str) -> list[str]:
    return [line for line in out.splitlines() if DIAGNOSTIC.match(line)]


def _case(path: Path) -> object:
    reason = KNOWN_ISSUES.get(path.stem)
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason and not REGEN else []
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("spec", [_case(p) for p in BROKEN])
def test_broken_spec(spec: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(CORPUS_DIR)
    code, out = validate(capsys, spec.name)
    got = diagnostics(out)
    expected_file = spec.with_suffix(".expected")
    if REGEN:
        expected_file.write_text("".join(line + "\n" for line in got), encoding="utf-8")
        return
    assert code == 1, out
    expected = expected_file.read_text(encoding="utf-8").splitlines()
    assert got == expected
    # nothing else is printed but the summary: a diagnostic without line:col would land here
    others = [line for line in out.splitlines() if line not in got]
    n_errors = sum(1 for line in got if not WARNING.match(line))
    assert others == [f"{spec.name}: {n_errors} error{'s' if n_errors != 1 else ''}"], out
    # sorted by position (per file)
    keys = [(m["file"], int(m["line"]), int(m["col"])) for m in map(DIAGNOSTIC.match, got)]
    assert keys == sorted(keys)


@pytest.mark.parametrize("spec", VALID, ids=lambda p: p.stem)
def test_valid_spec(spec: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(VALID_DIR)
    code, out = validate(capsys, spec.name)
    assert code == 0, out
    assert out.splitlines()[-1].startswith(f"{spec.name}: ok (")
    assert out.rstrip().endswith(")")
    assert not [line for line in out.splitlines() if "warning" in line], out
    assert diagnostics(out) == []


def test_corpus_is_complete() -> None:
    assert len(BROKEN) >= 35
    numbers = [p.name[:2] for p in BROKEN]
    assert len(set(numbers)) == len(numbers), "two cases share a number"
    for spec in BROKEN + VALID:
        assert spec.read_bytes().startswith(b"# "), f"{spec.name}: first line must be a comment saying what it shows"
    for spec in BROKEN:
        expected = spec.with_suffix(".expected")
        assert expected.is_file(), f"{expected.name} is missing"
        if not REGEN:
            assert expected.read_text(encoding="utf-8").strip(), f"{expected.name} is empty"
    orphans = {p.stem for p in CORPUS_DIR.glob("*.expected")} - {p.stem for p in BROKEN}
    assert not orphans
    assert set(KNOWN_ISSUES) <= {p.stem for p in BROKEN}


def test_several_valid_specs_at_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(VALID_DIR)
    code, out = validate(capsys, *(p.name for p in VALID))
    assert code == 0, out
    assert out.splitlines() == [line for line in out.splitlines() if ": ok (" in line]
    assert [line.split(":")[0] for line in out.splitlines()] == [p.name for p in VALID]


def test_valid_and_broken_together(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(SPECS_DIR)
    broken = ["broken/26_type_mismatch.yaml", "broken/44_no_outputs.yaml"]
    valid = [f"valid/{p.name}" for p in VALID[:2]]
    code, out = validate(capsys, valid[0], *broken, valid[1])
    assert code == 1, out
    lines = out.splitlines()
    for name in valid:
        assert f"{name}: ok (" in out
        assert not [line for line in lines if line.startswith(name + ":") and ": ok (" not in line]
    assert f"{broken[0]}: 2 errors" in lines
    assert f"{broken[1]}: 1 error" in lines
    reported = {DIAGNOSTIC.match(line)["file"] for line in diagnostics(out) if not WARNING.match(line)}
    assert reported == set(broken)


def test_json_format(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(CORPUS_DIR)
    code, out = validate(capsys, "--format", "json", "26_type_mismatch.yaml")
    assert code == 1
    report = json.loads(out)
    assert isinstance(report, list) and len(report) == 1
    entry = report[0]
    assert entry["spec"] == "26_type_mismatch.yaml" and entry["valid"] is False
    errors = entry["errors"]
    assert [(e["file"], e["line"], e["col"], e["node"]) for e in errors] == [
        ("26_type_mismatch.yaml", 9, 14, "count"),
        ("26_type_mismatch.yaml", 13, 13, "greet"),
    ]
    assert errors[0]["message"] == "input 'items' expects list[str], but ${numbers} is list[int]"
    assert errors[0]["kind"] == "TypeMismatchError"
    expected = (CORPUS_DIR / "26_type_mismatch.expected").read_text(encoding="utf-8").splitlines()
    assert [e["text"] for e in errors] == expected


def test_json_format_valid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(VALID_DIR)
    code, out = validate(capsys, "--format", "json", VALID[0].name)
    assert code == 0
    assert json.loads(out) == [{"spec": VALID[0].name, "valid": True, "errors": [], "warnings": []}]


def test_env_default_is_overridden(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The env-var cases depend on the variable being unset; once set, the spec is valid."""
    monkeypatch.chdir(CORPUS_DIR)
    monkeypatch.setenv("LLMREC_CORPUS_UNSET", "now set")
    code, out = validate(capsys, "41_env_unset.yaml")
    assert code == 0, out


def test_typed_plugin_nodes_wire_correctly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The typed test node types accept correct wiring, so the broken cases fail for the reason they show."""
    (tmp_path / "plugins").mkdir()
    shutil.copy(CORPUS_DIR / "plugins" / "typed.py", tmp_path / "plugins" / "typed.py")
    (tmp_path / "typed_ok.yaml").write_text(textwrap.dedent("""\
        # correct use of every typed test node type
        name: typed_ok
        nodes:
          numbers: {type: test.numbers, config: {n: 4}}
          pair: {type: test.pair, inputs: {left: x, right: 2}}
          count:
            type: test.count
            inputs: {items: ["${pair.left}", b]}
            fallback: {value: 0}
          greet:
            type: test.greet
            inputs: {name: "${pair.left}", times: "${pair.right}"}
        outputs:
          numbers: ${numbers}
          n: ${count}
          text: ${greet}
        """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, out = validate(capsys, "typed_ok.yaml")
    assert code == 0, out
    assert out.strip() == "typed_ok.yaml: ok (4 nodes, 0 resources, 3 outputs)"


def test_registry_is_hermetic() -> None:
    reg = llmrec.plugins.get_registry(CORPUS_DIR)
    assert {"test.numbers", "test.count", "test.pair", "test.greet"} <= set(reg.node_types)
    assert all(p.source != "entry point" for p in reg.plugins)
