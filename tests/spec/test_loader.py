"""Unit tests of llmrec/spec/yamlpos.py (safe YAML with positions) and llmrec/spec/loader.py (includes, env, ids)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from llmrec.errors import Location, SpecSyntaxError
from llmrec.spec import yamlpos
from llmrec.spec.loader import load_spec, suggest
from llmrec.spec.yamlpos import Positions, load_yaml_file, load_yaml_text


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(y(text), encoding="utf-8")
    return path


def messages(doc) -> list[str]:
    return [e.format() for e in doc.errors]


# --------------------------------------------------------------------------------------------------------------
# yamlpos: values and positions
# --------------------------------------------------------------------------------------------------------------

DOC = y("""
    name: demo
    nodes:
      greet:
        type: text.template
        inputs: {who: "${inputs.user}", n: 3}
      list:
        - first
        - 'second'
    """)


def test_values_are_plain_python() -> None:
    data, _ = load_yaml_text(DOC, "d.yaml")
    assert data == {
        "name": "demo",
        "nodes": {
            "greet": {"type": "text.template", "inputs": {"who": "${inputs.user}", "n": 3}},
            "list": ["first", "second"],
        },
    }


def test_positions_of_keys_and_values_are_one_based() -> None:
    _, pos = load_yaml_text(DOC, "d.yaml")
    assert pos.keys[("name",)] == Location("d.yaml", 1, 1)
    assert pos.values[("name",)] == Location("d.yaml", 1, 7)
    assert pos.keys[("nodes", "greet")] == Location("d.yaml", 3, 3)
    assert pos.values[("nodes", "greet", "type")] == Location("d.yaml", 4, 11)
    # flow mapping: keys and values inside the braces
    assert pos.keys[("nodes", "greet", "inputs", "who")] == Location("d.yaml", 5, 14)
    assert pos.values[("nodes", "greet", "inputs", "who")] == Location("d.yaml", 5, 19)
    assert pos.values[("nodes", "greet", "inputs", "n")] == Location("d.yaml", 5, 40)
    # sequence items are addressed by index
    assert pos.values[("nodes", "list", 0)] == Location("d.yaml", 7, 7)
    assert pos.values[("nodes", "list", 1)] == Location("d.yaml", 8, 7)
    # the root
    assert pos.values[()] == Location("d.yaml", 1, 1)


def test_plain_single_line_strings_are_marked() -> None:
    _, pos = load_yaml_text(DOC, "d.yaml")
    assert ("name",) in pos.plain
    assert ("nodes", "list", 0) in pos.plain
    assert ("nodes", "list", 1) not in pos.plain  # quoted
    assert ("nodes", "greet", "inputs", "who") not in pos.plain  # quoted
    assert ("nodes", "greet", "inputs", "n") not in pos.plain  # not a string


def test_position_lookup_falls_back_to_the_nearest_ancestor() -> None:
    _, pos = load_yaml_text(DOC, "d.yaml")
    assert pos.value(("nodes", "greet", "config", "template")) == Location("d.yaml", 4, 5)  # greet's mapping
    assert pos.key(("nodes", "greet", "config", "template")) == Location("d.yaml", 3, 3)  # the key 'greet'
    assert pos.value(("nope",)) == Location("d.yaml", 1, 1)
    assert Positions().value(("x",)) is None


def test_scalars_keep_yaml_types_but_dates_stay_text() -> None:
    data, _ = load_yaml_text("a: 1\nb: 2.5\nc: true\nd: null\ne: 2024-01-02\nf: 2024-01-02T03:04:05Z\n", "d")
    assert data == {"a": 1, "b": 2.5, "c": True, "d": None, "e": "2024-01-02", "f": "2024-01-02T03:04:05Z"}


def test_non_string_scalar_keys_become_strings() -> None:
    data, _ = load_yaml_text("1: one\ntrue: yes\n", "d")
    assert data == {"1": "one", "True": True}


@pytest.mark.parametrize("text", ["[a]: b\n", "? {a: 1}\n: b\n", "~: x\n"])
def test_complex_or_null_keys_are_refused(text: str) -> None:
    with pytest.raises(SpecSyntaxError, match="mapping keys must be plain strings"):
        load_yaml_text(text, "d")


def test_empty_document() -> None:
    assert load_yaml_text("", "d") == (None, Positions())
    data, _ = load_yaml_text("# only a comment\n", "d")
    assert data is None


def test_syntax_error_has_a_position() -> None:
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_text("a: [1, 2\nb: 3\n", "d.yaml")
    assert info.value.location is not None and info.value.location.line >= 1
    assert info.value.message.startswith("YAML syntax error:")


@pytest.mark.parametrize("text", ["a: [1, 2\n", "a: {x: 1\n", "nodes:\n  a: [\n"])
def test_unclosed_flow_collection_at_end_of_file(text: str) -> None:
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_text(text, "d.yaml")
    assert info.value.message.startswith("YAML syntax error:")
    assert info.value.location is not None and info.value.location.line >= 1


def test_unclosed_flow_collection_on_the_last_line_without_newline() -> None:
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_text("a: [1, 2", "d.yaml")
    assert info.value.location == Location("d.yaml", 1, 9)


def test_unquoted_reference_in_flow_mapping_gets_a_hint() -> None:
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_text("inputs: {value: ${greet}}\n", "d.yaml")
    assert info.value.hint == 'Inside [...] or {...}, quote references: "${node}".'
    assert info.value.location == Location("d.yaml", 1, 18)


# --------------------------------------------------------------------------------------------------------------
# yamlpos: guards (tags, duplicates, aliases)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, tag", [
    ("a: !!python/object/apply:os.system ['echo hi']\n", "!!python/object/apply:os.system"),
    ("a: !!python/name:os.system\n", "!!python/name:os.system"),
    ("a: !custom 1\n", "!custom"),
    ("a: !!binary aGVsbG8=\n", "!!binary"),
    ("a: !!set {x, y}\n", "!!set"),
    ("a: !!omap [x: 1]\n", "!!omap"),
])
def test_tags_are_refused(text: str, tag: str) -> None:
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_text(text, "d.yaml")
    assert info.value.message == f"YAML tag '{tag}' is not allowed"
    assert info.value.location == Location("d.yaml", 1, 4)


def test_standard_tags_on_plain_values_are_allowed() -> None:
    data, _ = load_yaml_text("a: !!str 12\nb: !!int '7'\nc: !!map {x: 1}\nd: !!seq [1]\n", "d")
    assert data == {"a": "12", "b": 7, "c": {"x": 1}, "d": [1]}


def test_duplicate_keys_are_errors() -> None:
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_text("nodes:\n  a: 1\n  b: 2\n  a: 3\n", "d.yaml")
    err = info.value
    assert err.message == "duplicate key 'a' (first defined at line 2)"
    assert err.location == Location("d.yaml", 4, 3)
    assert err.hint and "last" in err.hint


def test_duplicate_keys_in_flow_mappings_are_errors() -> None:
    with pytest.raises(SpecSyntaxError, match="duplicate key 'x' .first defined at line 1."):
        load_yaml_text("a: {x: 1, x: 2}\n", "d")


def test_same_key_in_different_mappings_is_fine() -> None:
    data, _ = load_yaml_text("a: {x: 1}\nb: {x: 2}\n", "d")
    assert data == {"a": {"x": 1}, "b": {"x": 2}}


def test_merge_keys_work() -> None:
    text = y("""
        nodes:
          a: &base
            type: text.template
            config: {template: hi}
          b:
            <<: *base
            description: copy of a
        """)
    data, pos = load_yaml_text(text, "d.yaml")
    assert data["nodes"]["b"] == {"type": "text.template", "config": {"template": "hi"}, "description": "copy of a"}
    assert "<<" not in data["nodes"]["b"]
    # merged values keep the position where they are written: in the anchored mapping
    assert pos.values[("nodes", "b", "type")] == Location("d.yaml", 3, 11)
    assert pos.values[("nodes", "b", "description")] == Location("d.yaml", 7, 18)


def test_merge_of_a_list_of_mappings() -> None:
    text = "x: &x {a: 1}\ny: &y {b: 2}\nz:\n  <<: [*x, *y]\n  c: 3\n"
    data, _ = load_yaml_text(text, "d")
    assert data["z"] == {"a": 1, "b": 2, "c": 3}


def test_merge_keys_can_be_overridden() -> None:
    text = y("""
        nodes:
          a: &base
            type: text.template
            config: {template: hi}
          b:
            <<: *base
            config: {template: bye}
        """)
    data, _ = load_yaml_text(text, "d.yaml")
    assert data["nodes"]["b"] == {"type": "text.template", "config": {"template": "bye"}}


def test_merge_of_a_non_mapping_is_an_error() -> None:
    with pytest.raises(SpecSyntaxError):
        load_yaml_text("x: &x [1]\ny:\n  <<: *x\n", "d")


def test_aliases_are_expanded_as_copies() -> None:
    data, pos = load_yaml_text("a: &v {x: [1, 2]}\nb: *v\n", "d.yaml")
    assert data["a"] == data["b"] == {"x": [1, 2]}
    assert data["a"] is not data["b"]  # mutating one (e.g. env expansion) cannot change the other
    assert pos.values[("b", "x", 1)] == pos.values[("a", "x", 1)]


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(SpecSyntaxError, match="an alias refers to a value that contains it"):
        load_yaml_text("a: &a [1, *a]\n", "d")
    with pytest.raises(SpecSyntaxError, match="an alias refers to a value that contains it"):
        load_yaml_text("a: &a {b: {c: *a}}\n", "d")


def _bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_text(_bomb(9), "bomb.yaml")  # 10**9 strings if expanded
    assert time.perf_counter() - start < 5  # generous: the budget stops it after MAX_VALUES values
    assert info.value.message == f"the document expands to more than {yamlpos.MAX_VALUES:,} values"
    assert info.value.hint and "aliases" in info.value.hint


def test_alias_budget_counts_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a: &a [1, 2, 3]\nb: *a\n"  # root + a + 3 items + b + 3 items = 9 values
    monkeypatch.setattr(yamlpos, "MAX_VALUES", 9)
    data, _ = load_yaml_text(text, "d")
    assert data == {"a": [1, 2, 3], "b": [1, 2, 3]}
    monkeypatch.setattr(yamlpos, "MAX_VALUES", 8)
    with pytest.raises(SpecSyntaxError, match="more than 8 values"):
        load_yaml_text(text, "d")


# --------------------------------------------------------------------------------------------------------------
# yamlpos: files
# --------------------------------------------------------------------------------------------------------------


def test_load_yaml_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "name: x\n")
    data, pos = load_yaml_file(path, "shown.yaml")
    assert data == {"name": "x"} and pos.values[("name",)] == Location("shown.yaml", 1, 7)


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(SpecSyntaxError, match="file not found"):
        load_yaml_file(tmp_path / "nope.yaml", "nope.yaml")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecSyntaxError, match="is a directory"):
        load_yaml_file(tmp_path, "dir")


def test_file_not_utf8_points_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: x\ndescription: caf\xe9\n")
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_file(path, "latin.yaml")
    assert info.value.message == "file is not valid UTF-8"
    assert info.value.location == Location("latin.yaml", 2, 17)


def test_file_too_big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlpos, "MAX_FILE_BYTES", 10)
    path = write(tmp_path / "big.yaml", "name: a rather long name\n")
    with pytest.raises(SpecSyntaxError, match="specs are limited to 10"):
        load_yaml_file(path, "big.yaml")


# --------------------------------------------------------------------------------------------------------------
# loader: load_spec
# --------------------------------------------------------------------------------------------------------------

SPEC = """
    name: demo
    inputs:
      user: string
    nodes:
      greet:
        type: text.template
        config: {template: "hi {{ who }}"}
        inputs: {who: "${inputs.user}"}
    outputs:
      text: ${greet}
    """


def test_load_spec(tmp_path: Path) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", SPEC), "s.yaml")
    assert doc.errors == []
    assert doc.spec is not None and doc.spec.name == "demo"
    assert set(doc.spec.nodes) == {"greet"} and doc.spec.inputs["user"].type == "string"
    assert doc.at(("nodes", "greet"), key=True) == Location("s.yaml", 5, 3)
    assert doc.at(("nodes", "greet", "type")) == Location("s.yaml", 6, 11)
    assert doc.declared["nodes"] == {"greet"}


def test_display_defaults_to_the_path_as_given(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", "name: a: b\n")
    doc = load_spec(path)
    assert doc.errors[0].location.file == str(path)


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    doc = load_spec(write(tmp_path / "my_spec.yaml", SPEC.replace("name: demo", "")), "my_spec.yaml")
    assert doc.errors == [] and doc.spec is not None and doc.spec.name == "my_spec"


def test_load_spec_never_raises(tmp_path: Path) -> None:
    doc = load_spec(tmp_path / "missing.yaml", "missing.yaml")
    assert doc.spec is None and messages(doc) == ["missing.yaml: file not found"]
    doc = load_spec(write(tmp_path / "list.yaml", "- a\n- b\n"), "list.yaml")
    assert doc.spec is None
    assert messages(doc) == ["list.yaml:1:1: a spec must be a mapping with 'name', 'inputs', 'nodes' and 'outputs'"]


def test_one_bad_node_does_not_hide_the_others(tmp_path: Path) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", """
        name: demo
        nodes:
          a: {type: core.identity, timeout: soon}
          b: {timeout: 2}
          c: {type: core.identity, retries: -1}
          d: {type: core.identity}
        outputs: {x: "${d}"}
        """), "s.yaml")
    assert [(e.node_id, e.location.line) for e in doc.errors] == [("a", 3), ("b", 4), ("c", 5)]
    assert doc.spec is not None
    # an entry without a valid 'type' is left out of the model; the others keep their valid keys;
    # every name stays declared, so references to them are not reported as dangling too
    assert set(doc.spec.nodes) == {"a", "c", "d"}
    assert doc.spec.nodes["a"].timeout is None and doc.spec.nodes["c"].retries.attempts == 0
    assert doc.declared["nodes"] == {"a", "b", "c", "d"}


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", SPEC.replace("inputs: {who", "inptus: {who")), "s.yaml")
    assert messages(doc) == ["s.yaml:8:5: node 'greet': unknown key 'inptus'. Did you mean 'inputs'?"]


@pytest.mark.parametrize("node_id, message", [
    ("say-hi", "invalid node id 'say-hi'"),
    ("9lives", "invalid node id '9lives'"),
    ("inputs", "'inputs' is reserved and cannot be a node id"),
    ("error", "'error' is reserved and cannot be a node id"),
])
def test_node_ids(tmp_path: Path, node_id: str, message: str) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", SPEC.replace("  greet:", f"  {node_id}:")), "s.yaml")
    assert [(e.message, e.location) for e in doc.errors] == [(message, Location("s.yaml", 5, 3))]


def test_invalid_input_name(tmp_path: Path) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", SPEC.replace("  user: string", "  user-id: string")), "s.yaml")
    assert messages(doc)[0].startswith("s.yaml:3:3: invalid input name 'user-id'.")


# --------------------------------------------------------------------------------------------------------------
# loader: ${env:...}
# --------------------------------------------------------------------------------------------------------------

ENV_SPEC = """
    name: env
    nodes:
      greet:
        type: text.template
        config:
          template: hi ${env:LLMREC_T_NAME:-world} from ${env:LLMREC_T_PLACE:-here}
        inputs:
          tags: ["${env:LLMREC_T_TAG:-none}", plain]
          empty: ${env:LLMREC_T_EMPTY:-}
    outputs:
      text: ${greet}
    """


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("LLMREC_T_NAME", "LLMREC_T_PLACE", "LLMREC_T_TAG", "LLMREC_T_EMPTY", "LLMREC_T_UNSET"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_env_defaults(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", ENV_SPEC), "s.yaml")
    assert doc.errors == []
    node = doc.data["nodes"]["greet"]
    assert node["config"]["template"] == "hi world from here"
    assert node["inputs"] == {"tags": ["none", "plain"], "empty": ""}


def test_env_values_win_over_defaults(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LLMREC_T_NAME", "ann")
    clean_env.setenv("LLMREC_T_TAG", "t1")
    doc = load_spec(write(tmp_path / "s.yaml", ENV_SPEC), "s.yaml")
    node = doc.data["nodes"]["greet"]
    assert node["config"]["template"] == "hi ann from here"
    assert node["inputs"]["tags"] == ["t1", "plain"]


def test_env_set_to_empty_string_is_used(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LLMREC_T_NAME", "")
    doc = load_spec(write(tmp_path / "s.yaml", ENV_SPEC), "s.yaml")
    assert doc.data["nodes"]["greet"]["config"]["template"] == "hi  from here"


def test_env_unset_without_default_points_into_the_string(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    text = ENV_SPEC.replace("LLMREC_T_PLACE:-here", "LLMREC_T_UNSET")
    doc = load_spec(write(tmp_path / "s.yaml", text), "s.yaml")
    assert [e.format() for e in doc.errors] == [
        "s.yaml:6:53: node 'greet': environment variable 'LLMREC_T_UNSET' is not set. "
        "Export it, or give a default: '${env:LLMREC_T_UNSET:-value}'."
    ]
    line = y(text).splitlines()[5]
    assert line[52:].startswith("${env:LLMREC_T_UNSET}")


def test_env_unset_in_a_quoted_string_points_at_the_string(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", ENV_SPEC.replace("LLMREC_T_TAG:-none", "LLMREC_T_UNSET")), "s.yaml")
    assert [(e.location, e.node_id) for e in doc.errors] == [(Location("s.yaml", 8, 14), "greet")]


def test_env_outside_nodes_has_no_node(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", SPEC.replace("name: demo", "name: ${env:LLMREC_T_UNSET}")), "s.yaml")
    assert [(e.location, e.node_id) for e in doc.errors][0] == (Location("s.yaml", 1, 7), None)


def test_env_invalid_name(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", ENV_SPEC.replace("LLMREC_T_NAME", "9-X")), "s.yaml")
    assert [e.message for e in doc.errors] == ["invalid environment variable name '9-X'"]


def test_env_is_expanded_in_included_files(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    write(tmp_path / "frag.yaml", """
        nodes:
          other:
            type: text.template
            config: {template: "${env:LLMREC_T_NAME:-fragment}"}
        """)
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: frag.yaml\n"), "s.yaml")
    assert doc.errors == []
    assert doc.data["nodes"]["other"]["config"]["template"] == "fragment"


# --------------------------------------------------------------------------------------------------------------
# loader: includes
# --------------------------------------------------------------------------------------------------------------

MAIN = """
    name: main
    include: parts/frag.yaml
    inputs:
      user: string
    nodes:
      greet:
        type: text.template
        config: {template: "hi {{ who }}"}
        inputs: {who: "${inputs.user}"}
    outputs:
      text: ${greet}
    """

FRAG = """
    # a fragment
    inputs:
      k: {type: integer, default: 3}
    nodes:
      other:
        type: text.template
        config:
          template_file: prompts/p.j2
    outputs:
      other: ${other}
    """


def test_includes_merge_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "parts" / "frag.yaml", FRAG)
    doc = load_spec(write(tmp_path / "main.yaml", MAIN), "main.yaml")
    assert doc.errors == []
    assert doc.spec is not None
    assert set(doc.spec.inputs) == {"user", "k"}
    assert set(doc.spec.nodes) == {"greet", "other"}
    assert set(doc.spec.outputs) == {"text", "other"}
    assert "include" not in doc.data


def test_included_positions_keep_the_fragment_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "parts" / "frag.yaml", FRAG)
    doc = load_spec(write(tmp_path / "main.yaml", MAIN), "main.yaml")
    frag = str(Path("parts") / "frag.yaml")
    assert doc.at(("nodes", "other"), key=True) == Location(frag, 5, 3)
    assert doc.at(("nodes", "other", "config", "template_file")) == Location(frag, 8, 22)
    assert doc.at(("inputs", "k", "default")) == Location(frag, 3, 31)
    assert doc.at(("outputs", "other")) == Location(frag, 10, 10)
    # the main file's entries keep theirs
    assert doc.at(("nodes", "greet"), key=True) == Location("main.yaml", 6, 3)
    assert doc.at(("outputs", "text")) == Location("main.yaml", 11, 9)


def test_relative_paths_resolve_against_the_including_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """include paths resolve from the file that writes them, whatever the current directory is."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(tmp_path / "spec" / "parts" / "frag.yaml", FRAG + "include: ../more/deeper.yaml\n")
    write(tmp_path / "spec" / "more" / "deeper.yaml", """
        nodes:
          deep:
            type: core.identity
            inputs: {value: 1}
        """)
    main = write(tmp_path / "spec" / "main.yaml", MAIN)
    doc = load_spec(main, "main.yaml")
    assert doc.errors == []
    assert set(doc.data["nodes"]) == {"greet", "other", "deep"}
    # relative paths written in a fragment (template_file, ...) resolve against the fragment's folder
    assert doc.dir_for(("nodes", "other", "config", "template_file")) == (tmp_path / "spec" / "parts").resolve()
    assert doc.dir_for(("nodes", "deep", "inputs")) == (tmp_path / "spec" / "more").resolve()
    assert doc.dir_for(("nodes", "greet", "config")) == (tmp_path / "spec").resolve()


def test_include_list_and_string_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.yaml", "nodes:\n  a: {type: core.identity, inputs: {value: 1}}\n")
    write(tmp_path / "b.yaml", "nodes:\n  b: {type: core.identity, inputs: {value: 2}}\n")
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: [a.yaml, b.yaml]\n"), "s.yaml")
    assert doc.errors == [] and set(doc.data["nodes"]) == {"greet", "a", "b"}


def test_include_of_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    doc = load_spec(write(tmp_path / "s.yaml", "include:\n  - nope.yaml\n" + y(SPEC)), "s.yaml")
    assert [(e.message, e.location) for e in doc.errors] == [
        ("included file 'nope.yaml' not found", Location("s.yaml", 2, 5))
    ]


def test_include_that_redefines_a_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "frag.yaml", "nodes:\n  greet: {type: core.identity}\n")
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: frag.yaml\n"), "s.yaml")
    assert [e.format() for e in doc.errors] == [
        "frag.yaml:2:3: 'nodes.greet' is defined twice (also at s.yaml:5:3). Rename one of them."
    ]
    assert doc.data["nodes"]["greet"]["type"] == "text.template"  # the main file's definition is kept


def test_include_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "frag.yaml", "include: s.yaml\n")
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: frag.yaml\n"), "s.yaml")
    assert [(e.message, e.location) for e in doc.errors] == [
        ("'s.yaml' is included in a loop", Location("frag.yaml", 1, 10))
    ]


def test_include_must_be_paths(tmp_path: Path) -> None:
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: {a: 1}\n"), "s.yaml")
    assert [(e.message, e.location) for e in doc.errors] == [
        ("'include' must be a file path or a list of file paths", Location("s.yaml", 11, 10))
    ]


def test_included_file_may_only_hold_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "frag.yaml", "name: other\nnodes: {}\n")
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: frag.yaml\n"), "s.yaml")
    assert [(e.message, e.location) for e in doc.errors] == [
        ("an included file may only hold inputs, resources, nodes, outputs; found 'name'", Location("frag.yaml", 1, 1))
    ]
    assert doc.spec is not None and doc.spec.name == "demo"


def test_syntax_error_in_included_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "frag.yaml", "nodes:\n  a: b: c\n")
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: frag.yaml\n"), "s.yaml")
    assert len(doc.errors) == 1 and doc.errors[0].location.file == "frag.yaml"
    assert doc.errors[0].message.startswith("YAML syntax error")


def test_empty_included_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "frag.yaml", "# nothing yet\n")
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: frag.yaml\n"), "s.yaml")
    assert doc.errors == [] and doc.spec is not None


def test_error_in_included_node_is_reported_in_the_fragment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "frag.yaml", "nodes:\n  other:\n    type: core.identity\n    timeout: soon\n")
    doc = load_spec(write(tmp_path / "s.yaml", SPEC + "include: frag.yaml\n"), "s.yaml")
    assert [(e.node_id, e.location) for e in doc.errors] == [("other", Location("frag.yaml", 4, 14))]


# --------------------------------------------------------------------------------------------------------------
# loader: helpers
# --------------------------------------------------------------------------------------------------------------


def test_suggest() -> None:
    assert suggest("ouputs", ["inputs", "outputs", "nodes"]) == ["outputs"]
    assert suggest("zzz", ["inputs", "outputs"]) == []
