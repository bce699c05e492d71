"""`llmrec schema` describes the spec language, including every registered node type's config."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from llmrec.cli import main
from llmrec.plugins import get_registry
from llmrec.spec.jsonschema import spec_json_schema

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "schemas" / "llmrec-spec.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return spec_json_schema(get_registry(None))


def test_committed_schema_is_current(schema) -> None:
    assert json.loads(COMMITTED.read_text()) == schema, "regenerate: llmrec schema -o schemas/llmrec-spec.schema.json"


def test_cli_writes_the_schema(tmp_path, capsys) -> None:
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "llmrec spec"


def test_every_registered_node_type_is_described(schema) -> None:
    names = schema["$defs"]["NodeSpec"]["properties"]["type"]["enum"]
    assert set(names) == set(get_registry(None).node_types)
    rules = {r["if"]["properties"]["type"]["const"]: r["then"] for r in schema["$defs"]["NodeSpec"]["allOf"]}
    assert set(rules) == set(names)


@pytest.mark.parametrize("spec", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_conform(schema, spec: Path) -> None:
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(spec.read_text()))


def test_schema_catches_what_validate_catches(schema) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    good = {"name": "x", "inputs": {"u": "string"}, "nodes": {"n": {"type": "core.identity", "inputs": {"value": 1},
            "timeout": "2s", "retries": 2, "cache": True}}, "outputs": {"v": "${n}"}}
    assert not list(validator.iter_errors(good))
    bad = json.loads(json.dumps(good))
    bad["nodes"]["n"]["tmeout"] = 1
    bad["nodes"]["n"]["type"] = "core.identiti"
    bad["nodes"]["n"]["config"] = {"nope": 1}
    assert len(list(validator.iter_errors(bad))) >= 2
