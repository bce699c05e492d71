"""The JSON Schema of the spec language, including the Config of every registered node and resource type."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from ..registry import Registry
from .models import NodeSpec, ResourceSpec, Spec

SCHEMA_ID = "https://llmrec.dev/schemas/llmrec-spec.schema.json"


def spec_json_schema(registry: Registry) -> dict[str, Any]:
    """A draft 2020-12 schema; node and resource ``config`` blocks are checked per ``type`` with if/then."""
    node_types = [registry.node_types.entries[n] for n in registry.node_types]
    resource_types = [registry.resource_types.entries[n] for n in registry.resource_types]
    models: list[tuple[Any, str]] = [(Spec, "validation")]
    models += [(e.value.Config, "validation") for e in node_types]
    models += [(e.value.Config, "validation") for e in resource_types]
    keys, top = models_json_schema(models, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    root_ref = keys[(Spec, "validation")]["$ref"].split("/")[-1]
    schema: dict[str, Any] = dict(defs.pop(root_ref))
    node_def = NodeSpec.__name__
    res_def = ResourceSpec.__name__

    def typed(def_name: str, entries: list[Any]) -> None:
        if def_name not in defs:
            return
        d = defs[def_name]
        d["properties"]["type"] = {
            "type": "string",
            "description": d["properties"]["type"].get("description", ""),
            "enum": [e.name for e in entries],
        }
        rules = []
        for e in entries:
            cls = e.value
            ref = keys[(cls.Config, "validation")]
            then: dict[str, Any] = {"properties": {"config": ref}}
            params = _params(cls)
            if params is not None:
                then["properties"]["inputs"] = {
                    "type": "object",
                    "properties": {p: {"description": f"input '{p}'"} for p in params},
                    "additionalProperties": False,
                }
            rules.append({"if": {"properties": {"type": {"const": e.name}}, "required": ["type"]}, "then": then})
        if rules:
            d["allOf"] = rules

    typed(node_def, node_types)
    typed(res_def, resource_types)
    schema["$defs"] = defs
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "llmrec spec",
        **{k: v for k, v in schema.items() if k != "title"},
    }
    schema.setdefault("properties", {})["include"] = {
        "description": "Spec fragments (inputs, resources, nodes, outputs) merged into this spec.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    return schema


def _params(cls: Any) -> list[str] | None:
    from ..node import NodeType, read_signature

    if not issubclass(cls, NodeType):
        return None
    if cls.signature.__func__ is not NodeType.signature.__func__:  # type: ignore[attr-defined]
        return None  # inputs depend on the config
    sig = read_signature(cls.run)
    return None if sig.variadic else list(sig.params)
