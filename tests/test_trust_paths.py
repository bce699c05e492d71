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


# -- paths a spec reads data from and writes to: the spec's folder, the data dir, the cache dir, run dirs ----------

CATALOG_SPEC = """
    name: read-data
    inputs: {}
    resources:
      items: {type: catalog, config: {path: WHERE}}
    nodes:
      top: {type: retrieve.popular, inputs: {catalog: "${resources.items}", interactions: []}}
    outputs: {top: "${top}"}
"""

WRITE_SPECS = {
    "viz.embedding_map path": """
        name: write
        inputs: {}
        nodes:
          plot:
            type: viz.embedding_map
            config: {path: WHERE}
            inputs: {vectors: [[0.0, 1.0]]}
        outputs: {plot: "${plot}"}
    """,
    "rank.lambdamart model_path": """
        name: write
        inputs: {}
        nodes:
          ranked:
            type: rank.lambdamart
            config: {model_path: WHERE}
            inputs: {candidates: []}
        outputs: {ranked: "${ranked}"}
    """,
    "node cache.path": """
        name: write
        inputs: {}
        nodes:
          t:
            type: text.template
            config: {template: hi}
            cache: {backend: disk, path: WHERE}
        outputs: {t: "${t}"}
    """,
}


@pytest.fixture
def untrusted(monkeypatch):
    """The suite trusts its temporary folders (tests/conftest.py); these tests are about a spec nobody trusts."""
    monkeypatch.delenv("LLMREC_TRUST", raising=False)


def _messages(spec) -> list[tuple[int, str]]:
    return [(e.location.line if e.location else 0, e.message) for e in check(spec)[1]]


@pytest.mark.parametrize("where", ["/etc/passwd", "../outside.csv", "link.csv"])
def test_a_catalog_outside_the_allowed_folders_is_refused(tmp_path, capsys, untrusted, where) -> None:
    (tmp_path / "outside.csv").write_text("id,title\nSECRET-ROW,SECRET-TITLE\n")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "link.csv").symlink_to(tmp_path / "outside.csv")  # a link inside cannot lead out
    spec = write_spec(spec_dir, CATALOG_SPEC.replace("WHERE", where))
    found = _messages(spec)
    assert any(line == 4 and "outside the folders a spec may use" in m for line, m in found), found
    assert main(["run", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert "SECRET-" not in out + err and "root:" not in out + err


@pytest.mark.parametrize("what", sorted(WRITE_SPECS))
@pytest.mark.parametrize("where", ["/tmp/llmrec-attack/out", "../../elsewhere/out", "~/.ssh/out"])
def test_a_path_a_spec_writes_outside_the_allowed_folders_is_refused(tmp_path, untrusted, what, where) -> None:
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec = write_spec(spec_dir, WRITE_SPECS[what].replace("WHERE", where))
    found = _messages(spec)
    assert any(line in (6, 7) and "outside the folders a spec may use" in m for line, m in found), (what, found)


def test_the_allowed_folders_are_fine(tmp_path, untrusted, monkeypatch) -> None:
    project = tmp_path / "project"
    (project / "specs" / "data").mkdir(parents=True)
    (project / "specs" / "data" / "items.csv").write_text("id,title\na,A\n")
    data = tmp_path / "datasets"
    data.mkdir()
    (data / "items.csv").write_text("id,title\na,A\n")
    monkeypatch.setenv("LLMREC_DATA_DIR", str(data))
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(project)
    for where in ("data/items.csv", str(data / "items.csv")):
        spec = write_spec(project / "specs", CATALOG_SPEC.replace("WHERE", where))
        assert not [m for _, m in _messages(spec) if "path" in m], where
    for what, text in WRITE_SPECS.items():  # the spec's folder, runs/ beside it, the cache dir
        for where in ("out", "../runs/write/out", str(tmp_path / "cache" / "mine"), "runs/x"):
            spec = write_spec(project / "specs", text.replace("WHERE", where))
            assert not [m for _, m in _messages(spec) if "outside the folders" in m], (what, where)


def test_a_trusted_spec_may_name_any_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_TRUST", str(tmp_path / "spec"))
    (tmp_path / "outside.csv").write_text("id,title\na,A\n")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec = write_spec(spec_dir, CATALOG_SPEC.replace("WHERE", "../outside.csv"))
    assert not [m for _, m in _messages(spec) if "path" in m]
