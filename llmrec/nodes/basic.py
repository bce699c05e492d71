"""General-purpose built-in node types, registered as a default plugin."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..hookspecs import hookimpl
from ..node import CheckContext, NodeType, Signature, SpecPath
from ..schemas import SchemaRef, resolve_schema
from ..templates import TemplateProblem, check as check_template, compile_template, read_source


class TemplateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(None, description="Inline Jinja template.")
    template_file: SpecPath | None = Field(None, description="A template file, e.g. prompts/explain.j2.")
    parse: str = Field("text", pattern="^(text|json)$", description="'json' parses the rendered text.")
    output_schema: SchemaRef | None = Field(
        None, description="With parse: json, a model ('schemas/x.py:Model') the parsed JSON must match."
    )

    @model_validator(mode="after")
    def _one_source(self) -> TemplateConfig:
        if (self.template is None) == (self.template_file is None):
            raise ValueError("give exactly one of 'template' or 'template_file'")
        if self.output_schema and self.parse != "json":
            raise ValueError("'output_schema' needs parse: json")
        return self

    def source(self) -> str:
        return read_source(self.template, self.template_file)


class Template(NodeType):
    """Render a sandboxed Jinja template with the node's inputs; optionally parse the result as JSON."""

    name = "text.template"
    inline = True
    description = "Render a Jinja template from the node's inputs (optionally parsed as JSON into a schema)."
    Config = TemplateConfig

    def __init__(self, config: TemplateConfig) -> None:
        super().__init__(config)
        self._template = compile_template(config.source())
        self._model = self._schema(config)

    @staticmethod
    def _schema(config: TemplateConfig) -> Any:
        return resolve_schema(config.output_schema, Path.cwd()) if config.output_schema else None

    @classmethod
    def signature(cls, config: TemplateConfig) -> Signature:  # type: ignore[override]
        output: Any = str
        if config.parse == "json":
            output = Any
            if config.output_schema:
                model = resolve_schema(config.output_schema, Path.cwd(), "output_schema")
                output = model if isinstance(model, type) else dict[str, Any]
        return Signature(params={}, output=output, variadic=True)

    @classmethod
    def check(cls, config: TemplateConfig, ctx: CheckContext) -> list[str | tuple[str, str]]:
        field = "template" if config.template is not None else "template_file"
        try:
            missing = check_template(config.source(), ctx.declared_inputs, ctx.template_env)
        except TemplateProblem as exc:
            exc.field = field
            raise
        problems: list[str | tuple[str, str]] = []
        for name in missing:
            close = difflib.get_close_matches(name, ctx.declared_inputs, n=1)
            hint = f"Did you mean '{close[0]}'?" if close else "Declare it under the node's 'inputs:'."
            declared = ", ".join(sorted(ctx.declared_inputs)) or "none"
            problems.append((field, f"template uses undefined variable '{name}' (inputs: {declared}). {hint}"))
        return problems

    async def run(self, **inputs: Any) -> Any:
        text = self._template.render(inputs)
        if self.config.parse == "text":
            return text
        data = json.loads(text)
        if isinstance(self._model, type):
            return self._model.model_validate(data)
        return data


class IdentityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Identity(NodeType):
    """Pass a value through unchanged: useful to name a value, or as a fallback target."""

    name = "core.identity"
    inline = True
    description = "Return the 'value' input unchanged."
    Config = IdentityConfig

    async def run(self, value: Any) -> Any:
        return value


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    register(Template)
    register(Identity)


__all__ = ["Identity", "Template"]
