"""Trust boundary: paths a spec names for reading (issue 11). A template file and an include are part of the
spec: they must be inside the spec's folder (templates may also be llmrec's built-ins), so a spec cannot turn
/etc/passwd or a file beside it into a prompt, an output or error text. The attacks are the tests."""

from __future__ import annotations

import pytest

from llmrec.api import check
from llmrec.cli import main
from llmrec.testing import write_spec

TEMPLATE = """
    name: read
    inputs: {}
    resources:
      model: {type: llm, config: {}}
    nodes:
      leak:
        type: llm.prompt
        config: {template_file: WHERE}
        inputs: {model: "${resources.model}"}
        fallback: {value: "none"}
    outputs: {leak: "${leak}"}
"""


@pytest.mark.parametrize("where", ["/etc/passwd", "../outside.j2", "prompts/../../outside.j2"])
def test_a_template_file_outside_the_spec_folder_is_refused(tmp_path, capsys, where) -> None:
    (tmp_path / "outside.j2").write_text("SECRET-CONTENT {{ x }}")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec = write_spec(spec_dir, TEMPLATE.replace("WHERE", where))
    _, errors, _ = check(spec)
    assert any("outside the spec's folder" in e.message and e.location.line for e in errors), errors
    assert main(["run", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert "SECRET-CONTENT" not in out + err and "root:" not in out + err


def test_templates_inside_the_spec_folder_and_built_ins_are_fine(tmp_path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "mine.j2").write_text("hello")
    for where in ("prompts/mine.j2", "mine.j2", "recommend.j2", str(tmp_path / "prompts" / "mine.j2")):
        spec = write_spec(tmp_path, TEMPLATE.replace("WHERE", where))
        _, errors, _ = check(spec)
        assert not [e for e in errors if "template" in e.message], (where, errors)


@pytest.mark.parametrize("include", ["../outside.yaml", "OUTSIDE_ABS"])
def test_an_include_outside_the_spec_folder_is_refused_without_reading_it(tmp_path, include) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("nodes:\n  x: {type: text.template, config: {template: SECRET-VALUE}, bogus: SECRET-VALUE}\n")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec = write_spec(spec_dir, f"""
        name: inc
        include: [{include.replace("OUTSIDE_ABS", str(outside))}]
        inputs: {{}}
        nodes:
          t: {{type: text.template, config: {{template: hi}}}}
        outputs: {{t: "${{t}}"}}
    """)
    _, errors, _ = check(spec)
    text = " ".join(e.format() for e in errors)
    assert "'include' may only name files inside the spec's folder" in text and "SECRET-VALUE" not in text
    assert all(e.location is not None and e.location.line for e in errors)
