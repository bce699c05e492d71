"""A spec's ``state:`` block as a pydantic model: what a session keeps between turns (issue 15).

``state: {schema: {...fields like inputs...}, update: ${node.field}}`` or ``state: {schema: pkg.module:Model, ...}``.
The model is what nodes see as ``${state}`` (type-checked field by field like any node output), what ``llmrec run
--state``, the Python API and ``llmrec serve`` validate a given state against, and what the ``update`` reference's
value is validated into after a run. Every field has a default, so a new session starts from ``Model()``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from typing import Literal as TLiteral

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..errors import InputError
from ..node import OutputSchemaProblem
from ..schemas import resolve_schema
from ..spec.models import InputSpec, StateSpec
from .typecheck import input_python_type


class StateProblem(ValueError):
    """The ``state:`` block cannot give a model; ``field`` is the key at fault (``schema`` or a field's name)."""

    def __init__(self, message: str, field: tuple[str, ...] = ("schema",), hint: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.hint = hint


def _field_type(spec: InputSpec) -> Any:
    t = input_python_type(spec.type, spec.items)
    if spec.enum:
        t = TLiteral[tuple(spec.enum)]  # type: ignore[misc]
    if spec.default is None:
        t = t | None
    return t


def state_model(state: StateSpec, base_dir: Path, spec_name: str = "spec") -> type[BaseModel]:
    """The pydantic model of a spec's state; raises :class:`StateProblem` (or trust.UntrustedCode) when the schema
    cannot be resolved or a field has no default."""
    schema = state.schema_
    if isinstance(schema, str):
        try:
            model = resolve_schema(schema, base_dir, field="schema", confine=True)
        except OutputSchemaProblem as exc:
            raise StateProblem(str(exc).replace("schema", "state schema", 1), ("schema",), exc.hint) from None
        if not isinstance(model, type):
            raise StateProblem("a state schema must be a pydantic model ('package.module:Model', 'file.py:Model') or "
                               "a mapping of fields; a JSON Schema file cannot give defaults to start a session from")
        try:
            model()
        except ValidationError as exc:
            missing = ", ".join(str(e["loc"][0]) for e in exc.errors(include_url=False) if e["loc"])
            raise StateProblem(f"state model '{schema}' cannot start a new session: fields without a default: "
                               f"{missing or '?'}", ("schema",),
                               "Give every field of the state model a default.") from None
        return model
    fields: dict[str, Any] = {}
    for name, field in schema.items():
        if field.required:
            raise StateProblem(f"state field '{name}' cannot be required: a new session starts from the defaults",
                               ("schema", name, "required"), "Remove 'required: true' and give it a default.")
        default = field.default
        if default is None and field.type in ("array", "object") and "default" not in field.model_fields_set:
            default = [] if field.type == "array" else {}
        kwargs: dict[str, Any] = {"description": field.description or None}
        if field.minimum is not None:
            kwargs["ge"] = field.minimum
        if field.maximum is not None:
            kwargs["le"] = field.maximum
        t = _field_type(field) if default is None else _field_type(field.model_copy(update={"default": default}))
        if isinstance(default, (list, dict)):
            fields[name] = (t, Field(default_factory=lambda d=default: type(d)(d), **kwargs))  # type: ignore[misc]
        else:
            fields[name] = (t, Field(default, **kwargs))
    model_name = "".join(p.capitalize() for p in re.split(r"[^0-9A-Za-z]+", spec_name) if p)[:60] or "Spec"
    try:
        model = create_model(f"{model_name}State", __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload]
        model()
    except (ValidationError, TypeError, ValueError) as exc:
        raise StateProblem(f"the state's defaults do not fit its fields: {_first(exc)}") from None
    return model  # type: ignore[no-any-return]


def _first(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in e["loc"])
        return f"{loc}: {e['msg']}" if loc else e["msg"]
    return str(exc)


def validate_state(model: type[BaseModel], value: Any) -> BaseModel:
    """``value`` (None: a new session, the defaults; a mapping or a model instance) as an instance of the state
    model; raises InputError naming the field ``state.<field>`` that does not fit."""
    if value is None:
        return model()
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        raise InputError("state must be a JSON object", "state",
                         [{"field": "state", "message": "must be a JSON object"}])
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False):
            field = ".".join(["state", *(str(p) for p in e["loc"])])
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            errors.append({"field": field, "message": msg})
        raise InputError(f"input '{errors[0]['field']}': {errors[0]['message']}", errors[0]["field"], errors) from None


def state_json(value: BaseModel | None) -> dict[str, Any] | None:
    """The state as JSON-compatible data (what sessions store and answers carry)."""
    return None if value is None else value.model_dump(mode="json")
