"""`llmrec validate` checks every declared variant too, pointing at the variant's line."""

from __future__ import annotations

from llmrec.testing import errors_of, write_spec

SPEC = """
name: v
inputs: {user_id: string}
resources:
  data: {type: dataset, config: {name: demo, split: user}}
variants:
  more: {nodes.pop.config.k: 100}
  VARIANT
nodes:
  pop:
    type: retrieve.popular
    config: {k: 10}
    inputs: {interactions: "${resources.data.train}"}
outputs:
  items: ${pop}
"""


def test_good_variants_validate(tmp_path) -> None:
    assert errors_of(write_spec(tmp_path, SPEC.replace("VARIANT", "fewer: {nodes.pop.config.k: 3}"))) == []


def test_a_variant_path_not_in_the_spec_is_an_error_at_its_line(tmp_path) -> None:
    errors = errors_of(write_spec(tmp_path, SPEC.replace("VARIANT", "typo: {nodes.popp.config.k: 5}")))
    assert len(errors) == 1 and ":7:10: variant 'typo': path 'nodes.popp.config.k' does not exist" in errors[0]


def test_a_variant_value_the_node_refuses_is_an_error_naming_the_variant(tmp_path) -> None:
    errors = errors_of(write_spec(tmp_path, SPEC.replace("VARIANT", "bad: {nodes.pop.config.k: -5}")))
    assert len(errors) == 1 and ":7:29: node 'pop': in variant 'bad': invalid 'k'" in errors[0]
