"""The JSON Schema of the spec language, including the Config of every registered node and resource type."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from ..node import NodeType, read_signature
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
    _shorthands(defs, schema)
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
    if not issubclass(cls, NodeType):
        return None
    if cls.signature.__func__ is not NodeType.signature.__func__:  # type: ignore[attr-defined]
        return None  # inputs depend on the config
    sig = read_signature(cls.run)
    return None if sig.variadic else list(sig.params)


_DURATION = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}]}


def _shorthands(defs: dict[str, Any], root: dict[str, Any]) -> None:
    """The models accept shorthands (``timeout: 2s``, ``retries: 2``, ``cache: true``, ``user_id: string``)
    through before-validators, which pydantic's schema cannot see; describe them here."""
    node = defs.get("NodeSpec", {}).get("properties", {})
    if "timeout" in node:
        node["timeout"] = {**_DURATION, "description": node["timeout"].get("description", "")}
        node["timeout"]["anyOf"] = [*_DURATION["anyOf"], {"type": "null"}]
    if "retries" in node:
        node["retries"] = {"anyOf": [{"type": "integer", "minimum": 0}, {"$ref": "#/$defs/RetrySpec"}]}
    if "cache" in node:
        node["cache"] = {"anyOf": [{"type": "boolean"}, {"$ref": "#/$defs/CacheSpec"}, {"type": "null"}]}
    for name in ("backoff", "max_backoff"):
        if name in defs.get("RetrySpec", {}).get("properties", {}):
            defs["RetrySpec"]["properties"][name] = dict(_DURATION)
    if "latency" in defs.get("BudgetSpec", {}).get("properties", {}):
        defs["BudgetSpec"]["properties"]["latency"] = {"anyOf": [*_DURATION["anyOf"], {"type": "null"}]}
    if "ttl" in defs.get("CacheSpec", {}).get("properties", {}):
        defs["CacheSpec"]["properties"]["ttl"] = {"anyOf": [*_DURATION["anyOf"], {"type": "null"}]}
    inputs = root.get("properties", {}).get("inputs")
    if inputs is not None and "InputSpec" in defs:
        type_names = defs["InputSpec"]["properties"]["type"].get("enum")
        inputs["additionalProperties"] = {
            "anyOf": [{"$ref": "#/$defs/InputSpec"}, {"type": "string", **({"enum": type_names} if type_names else {})}]
        }
