"""Trust boundary: templates are time-bounded (issue 11). A spec's template renders untrusted data, but the
template itself may be hostile too: nested loops, huge repetitions and huge outputs hit a render budget in well
under a second, so a node's timeout holds and `llmrec serve`'s event loop is never blocked for long."""

from __future__ import annotations

import time

import pytest

import llmrec
from llmrec.errors import RunError
from llmrec.templates import TemplateLimitError, compile_expression, compile_template
from llmrec.testing import write_spec
from llmrec.api import check

ATTACKS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'a' * 1000000000 }}",
    "{{ ([1] * 100000) * 100000 }}",
    "{{ 9 ** 99999999 }}",
    "{% for i in range(100000) %}{{ 'x' * 50 }}{% endfor %}",
    "{% for i in range(99999) %}{% for j in range(99999) %}{{ j }}{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("source", ATTACKS)
def test_a_cpu_or_memory_bound_template_hits_its_budget_fast(source) -> None:
    started = time.process_time()  # this process's CPU: other work on the machine does not count
    with pytest.raises(TemplateLimitError):
        compile_template(source).render()
    assert time.process_time() - started < 1.0


def test_ordinary_templates_and_conditions_are_unaffected() -> None:
    t = compile_template("{% for i in range(3) %}{{ i }}{% endfor %} {{ 'ab' * 3 }} {{ 2 ** 10 }} {{ xs | length }}")
    assert t.render(xs=list(range(50_000))) == "012 ababab 1024 50000"
    condition = compile_expression("range(10) | list | length > 5")
    for _ in range(200_000 // 10):  # many evaluations never add up to one budget
        assert condition() is True


def test_a_node_with_a_hostile_template_fails_within_its_timeout(tmp_path) -> None:
    spec = write_spec(tmp_path, """
        name: hostile
        inputs: {}
        nodes:
          t:
            type: text.template
            config: {template: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"}
            timeout: 1s
        outputs: {t: "${t}"}
    """)
    started = time.perf_counter()
    with pytest.raises(RunError, match="loops more than"):
        llmrec.run(spec, {})
    assert time.perf_counter() - started < 3.0


@pytest.mark.parametrize("where", ["template", "when"])
def test_a_template_nested_past_the_parsers_stack_is_a_positioned_error(tmp_path, where) -> None:
    """Jinja's parser recurses per bracket: 100 nested parentheses exhausted Python's stack (RecursionError, a
    crash of the validator found by benchmarks/fuzz_specs.py); now it is the spec's error, at its position."""
    deep = "(" * 150 + "1" + ")" * 150
    text = f"""
        name: deep
        inputs: {{}}
        nodes:
          t:
            type: text.template
            config: {{template: "{{{{ {deep} }}}}"}}
        outputs: {{t: "${{t}}"}}
    """ if where == "template" else f"""
        name: deep
        inputs: {{}}
        nodes:
          t:
            type: text.template
            config: {{template: "hi"}}
            when: "{deep}"
        outputs: {{t: "${{t}}"}}
    """
    errors = check(write_spec(tmp_path, text))[1]
    line = 6 if where == "template" else 7
    assert [e.location.line for e in errors] == [line] and "nests too deeply" in errors[0].message, errors
