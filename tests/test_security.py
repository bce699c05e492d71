"""The trust model of docs/security.md, enforced."""

from __future__ import annotations

import pytest

import llmrec
from llmrec.testing import errors_of, write_spec


def test_object_constructing_tags_are_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = write_spec(tmp_path, f"""
        name: evil
        nodes:
          n: !!python/object/apply:os.system ["touch {marker}"]
        outputs: {{v: "${{n}}"}}
    """)
    errors = errors_of(path)
    assert len(errors) == 1 and "YAML tag '!!python/object/apply:os.system' is not allowed" in errors[0]
    assert not marker.exists()


def test_billion_laughs_fails_fast(tmp_path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "lol.yaml"
    path.write_text("\n".join(levels) + "\nname: lol\n", encoding="utf-8")
    errors = errors_of(path)
    assert len(errors) == 1 and "expands to more than 100,000 values" in errors[0]


def test_template_sandbox_blocks_python_internals(tmp_path) -> None:
    path = write_spec(tmp_path, """
        name: escape
        inputs: {x: {type: string, default: ""}}
        nodes:
          t:
            type: text.template
            config: {template: "{{ x.__class__.__mro__[1].__subclasses__() }}"}
            inputs: {x: "${inputs.x}"}
        outputs: {v: "${t}"}
    """)
    with pytest.raises(llmrec.RunError, match="SecurityError"):
        llmrec.run(path, {})


def test_untrusted_text_is_never_rendered_as_a_template(tmp_path) -> None:
    path = write_spec(tmp_path, """
        name: echo
        inputs: {q: string}
        nodes:
          t:
            type: text.template
            config: {template: "you asked: {{ q }}"}
            inputs: {q: "${inputs.q}"}
        outputs: {v: "${t}"}
    """)
    result = llmrec.run(path, {"q": "{{ 7 * 7 }} ${inputs.q}"})
    assert result.outputs["v"] == "you asked: {{ 7 * 7 }} ${inputs.q}"


def test_requests_with_unknown_or_wrong_fields_are_refused_before_running(tmp_path) -> None:
    path = write_spec(tmp_path, """
        name: strict
        inputs: {k: {type: integer, default: 5, maximum: 50}}
        nodes:
          n: {type: core.identity, inputs: {value: "${inputs.k}"}}
        outputs: {v: "${n}"}
    """)
    rt = llmrec.open_runtime(path)
    with pytest.raises(llmrec.InputError) as info:
        rt.run_sync({"k": 10**9})
    assert info.value.field == "k"
    with pytest.raises(llmrec.InputError) as info:
        rt.run_sync({"__class__": "x"})
    assert info.value.field == "__class__"
