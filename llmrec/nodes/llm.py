"""The ``llm`` resource and the ``llm.prompt`` node, registered as a default plugin (with provider ``litellm``).

::

    resources:
      model: {type: llm, config: {provider: litellm, model: "openai/gpt-4o-mini", timeout: 20s,
                                   api_key: "${env:OPENAI_API_KEY}"}}
    nodes:
      pick:
        type: llm.prompt
        config:
          system: "You recommend films."
          template: "I liked {{ liked | join(', ') }}. Suggest {{ n }} films."
          schema: schemas/recs.py:Recs
          reasoning_field: thinking
        inputs: {model: "${resources.model}", liked: "${profile.seen}", n: 5}

``prompt_cache`` (in the node's config) answers repeated requests without calling the model; see
:class:`PromptCacheConfig` and :mod:`llmrec.caches.prompt`::

        config: {template: ..., prompt_cache: {ttl: 1d, backend: disk, semantic: {threshold: 0.95}}}
        inputs: {model: "${resources.model}", cache_model: "${resources.minilm}", ...}

The template's variables are the node's inputs (plus ``model``, the provider), so a variable nothing provides is
a validation error, and the output is the schema's model, so ``${pick.items}`` is type-checked downstream.
Inputs are only ever template *variables*: catalog or user text that looks like Jinja or like instructions is
rendered verbatim as data, never evaluated (docs/security.md).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import inspect
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from typing_extensions import Annotated

from ..artifacts import ArtifactStore
from ..caches import default_cache_root
from ..caches.prompt import PromptCache
from ..errors import LlmrecError, OutputValidationError, ProviderError, RunError
from ..hookspecs import hookimpl
from ..llm.provider import Choices, Completion, CompletionRequest, Message, Provider
from ..llm.reclm_provider import RecLMProvider
from ..llm.remote import litellm_factory
from ..llm.routing import Route, RoutedProvider
from ..node import (
    CheckContext,
    LoadContext,
    NodeType,
    OutputSchemaProblem,
    Param,
    Problem,
    Reports,
    ResourceType,
    RunContext,
    Signature,
    SpecPath,
    StartContext,
)
from ..runtime.trace import ModelUsage
from ..schemas import SchemaRef, resolve_schema
from ..spec.models import parse_duration
from ..templates import TemplateProblem, compile_template, read_source, variables
from ..training import Target, TrainContext
from ..trust import UntrustedCode, is_trusted

#: default templates shipped with llmrec: ``template_file: NAME`` finds ``prompts/NAME`` here last
BUILTIN_PROMPTS = Path(__file__).resolve().parents[1] / "prompts"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

Duration = Annotated[
    float | None, BeforeValidator(lambda v: None if v is None else parse_duration(v)),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
                              {"type": "null"}]}),
]


class _Config(BaseModel):
    # defer_build: the validator is built on first use, so that the ~30 configs and answers of llm and llm_tasks
    # cost nothing to a spec that uses none of them (issue 13)
    model_config = ConfigDict(extra="forbid", defer_build=True)


# -- the llm resource ------------------------------------------------------------------------------------------


class RouteConfig(_Config):
    """One provider and model (the ``llm`` resource itself, or one of its ``fallbacks``)."""

    provider: str = Field(..., description="A registered provider: 'litellm', 'transformers', or a plugin's.")
    model: str = Field(..., description="The model, e.g. 'openai/gpt-4o-mini' for litellm or a local path.")
    timeout: Duration = Field(None, description="Per call, all attempts together (e.g. '20s').")
    max_retries: int = Field(2, ge=0, le=20, description="Re-asks on invalid output and retries on 5xx/timeouts.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible or self-hosted server.")
    api_key: SecretStr | None = Field(None, description="Write it as ${env:VAR}, never inline.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Provider-specific parameters.")
    max_input_chars: int | None = Field(
        None, ge=1, description="Take only prompts up to this many characters; longer ones go to the next route.")

    def provider_kwargs(self) -> dict[str, Any]:
        """What a provider factory receives: ``model``, the other keys the spec wrote (the api key as plain
        text), and the entries of ``extra`` as keyword arguments of their own."""
        out: dict[str, Any] = {"model": self.model}
        for name in sorted(self.model_fields_set - {"provider", "model", "extra", "max_input_chars", "fallbacks"}):
            value = getattr(self, name)
            out[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        out.update(self.extra)
        return out

    @field_validator("extra")
    @classmethod
    def _remote_code_needs_trust(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """``trust_remote_code`` imports the Python files of the model's folder: the trust rule (llmrec/trust.py)
        applies, as to any code a spec names."""
        base = (info.context or {}).get("base_dir")
        if value.get("trust_remote_code") and base is not None:
            if not is_trusted(base):
                raise UntrustedCode("'trust_remote_code' imports the Python files of the model's folder, and the "
                                    "spec's folder is not trusted, so it is refused", Path(base))
        return value

    @model_validator(mode="after")
    def _extra_does_not_shadow(self) -> RouteConfig:
        shadowed = sorted(set(self.extra) & set(type(self).model_fields))
        if shadowed:
            raise ValueError(f"'extra' repeats {', '.join(shadowed)}: set {'it' if len(shadowed) == 1 else 'them'} "
                             "as a key of the llm config itself")
        return self


MODEL_ENV = "LLMREC_MODEL"


class LlmConfig(RouteConfig):
    provider: str | None = Field(  # type: ignore[assignment]
        None, description="A registered provider; default: 'transformers' when the model is a local folder, "
                          "else 'litellm'.")
    model: str | None = Field(  # type: ignore[assignment]
        None, description=f"The model, e.g. 'openai/gpt-4o-mini' (litellm) or a local folder; default: "
                          f"${MODEL_ENV}. With neither, LLM nodes take their fallbacks (the response is degraded).")
    embedded: RouteConfig | None = Field(
        None, description=f"What answers when neither 'model' nor ${MODEL_ENV} is set: e.g. a rec-LM llmrec trains "
                          "on the spec's dataset ({provider: reclm, model: ../runs/NAME/reclm}).")
    train_on_first_use: bool = Field(
        False, description="When the provider in use is one llmrec trains (reclm): train it at start if no current "
                           "artifact exists, instead of refusing to run until `llmrec train`.")
    fallbacks: list[RouteConfig] = Field(
        default_factory=list,
        description="Other providers/models tried in order when this one fails, times out or cannot take the "
                    "prompt (max_input_chars): cheap first, strong last. Each has its own timeout.",
    )



def _global(table: str) -> Any:
    """A table of the process-wide registry: only for a node or resource used outside a runtime (a notebook),
    which has no graph, so no registry of its own."""
    from ..plugins import get_registry  # lazy: plugins imports this module (a default plugin)

    return getattr(get_registry(None), table)


class LlmResource(ResourceType):
    """A language model behind a registered provider, built once per runtime.

    When the provider in use is one llmrec trains (its factory has ``fit``, e.g. ``reclm``), the resource is a
    trainable of :mod:`llmrec.training`: ``training_params``, ``artifact_path`` and ``fit`` delegate to the
    provider's factory with the route's options, and ``load`` builds the provider on the verified artifact."""

    name = "llm"
    description = "A language model through a registered provider (litellm, transformers, or a plugin's)."
    Config = LlmConfig
    provides = Provider
    trains_on: ClassVar[str] = "dataset"

    # -- the training contract, for providers llmrec trains -----------------------------------------------------
    @staticmethod
    def _trainer(config: LlmConfig, providers: Any, base_dir: Path | None) -> tuple[Any, dict[str, Any]] | None:
        route = resolve_route(config, base_dir)
        if route is None:
            return None
        factory = providers.get(route.provider)
        if factory is None or not callable(getattr(factory, "fit", None)):
            return None
        options = route_options(factory, route, base_dir)
        check = getattr(factory, "is_trainable", None)
        if callable(check) and not check(options):
            return None
        return factory, options

    @classmethod
    def _target_trainer(cls, config: LlmConfig, target: Target) -> tuple[Any, dict[str, Any]] | None:
        providers = target.registry.providers if target.registry is not None else _global("providers")
        return cls._trainer(config, providers, target.base_dir)

    @classmethod
    def is_trainable(cls, config: LlmConfig, target: Target) -> bool:
        return cls._target_trainer(config, target) is not None

    @classmethod
    def _need_trainer(cls, config: LlmConfig, target: Target) -> tuple[Any, dict[str, Any]]:
        found = cls._target_trainer(config, target)
        if found is None:
            raise LlmrecError("this llm resource's provider is not one llmrec trains")
        return found

    @classmethod
    def training_params(cls, config: LlmConfig, target: Target) -> dict[str, Any]:
        factory, options = cls._need_trainer(config, target)
        return dict(factory.training_params(options))

    @classmethod
    def artifact_path(cls, config: LlmConfig, target: Target) -> Path:
        return Path(cls._need_trainer(config, target)[1]["model"])

    @classmethod
    def fit(cls, config: LlmConfig, ctx: TrainContext) -> Any:
        if ctx.target is None:
            raise LlmrecError("an llm resource trains through llmrec.training.fit_target, which names its target")
        factory, options = cls._need_trainer(config, ctx.target)
        return factory.fit(options, ctx)

    @classmethod
    def check(cls, config: LlmConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        table = ctx.registry.providers if ctx.registry is not None else _global("providers")
        problems: list[str | tuple[str, str] | Problem] = []
        if resolve_route(config, Path(ctx.base_dir) if ctx.base_dir else None) is None and not config.fallbacks:
            problems.append(Problem(
                f"no model configured (neither 'model' nor ${MODEL_ENV} is set): LLM nodes using this resource "
                "take their fallbacks, and responses are marked degraded", "model",
                f"Set {MODEL_ENV} to a litellm model (e.g. openai/gpt-4o-mini, ollama/llama3.1) or a local model "
                "folder, or write the resource's 'model'.", warning=True))
        for i, route in enumerate([config, *config.fallbacks]):
            if route.provider is None or route.provider in table:
                continue
            close = [e.name for e in table.suggest(route.provider)]
            known = ", ".join(table) or "none"
            hint = (f"Did you mean '{close[0]}'? " if close else "") + f"Registered providers: {known}."
            where = "provider" if i == 0 else "fallbacks"
            label = f"unknown provider '{route.provider}'" + ("" if i == 0 else f" in fallbacks[{i - 1}]")
            problems.append(Problem(label, where, hint))
        return problems

    async def load(self, ctx: LoadContext | None = None) -> Provider:
        config: LlmConfig = self.config  # type: ignore[assignment]
        # the registry the graph was checked against; a resource loaded outside a runtime asks the global one
        table = ctx.registry.providers if ctx is not None and ctx.registry is not None else _global("providers")
        base_dir = ctx.base_dir if ctx is not None else None
        resolved = resolve_route(config, base_dir)
        model_dir = None
        if resolved is not None and self._trainer(config, table, base_dir) is not None:
            if ctx is None:
                raise LlmrecError(f"provider '{resolved.provider}' needs its trained artifact: load this resource "
                                  "through a runtime (llmrec run/eval/serve), after `llmrec train`")
            model_dir = str((await ctx.artifact()).folder)
        first = Unconfigured() if resolved is None else await self._build(table, resolved, base_dir, model_dir)
        if not config.fallbacks and config.max_input_chars is None:
            return await _warmed(first)

        routes = [Route(first, config.timeout, config.max_input_chars)]
        for route in config.fallbacks:
            routes.append(Route(await self._build(table, route, base_dir), route.timeout,
                                route.max_input_chars))
        return await _warmed(RoutedProvider(routes))  # type: ignore[return-value]

    @staticmethod
    async def _build(table: Any, config: RouteConfig, base_dir: Path | None = None,
                     model_dir: str | None = None) -> Provider:
        factory = table.get(config.provider)
        if factory is None:
            raise ProviderError(f"unknown provider '{config.provider}' (registered: {', '.join(table) or 'none'})")
        kwargs = route_options(factory, config, base_dir)
        if model_dir is not None:  # a trained provider: its verified artifact
            kwargs["model"] = model_dir
        else:
            kwargs["model"] = _latest_artifact(kwargs["model"])
        # factories may import heavy libraries or load weights: keep the event loop free
        try:
            return await asyncio.to_thread(factory, **kwargs)
        except LlmrecError:
            raise
        except Exception as exc:  # a bad option or a missing model: the spec's problem, said in one line
            raise ProviderError(f"provider '{config.provider}' could not be set up for model '{config.model}': "
                                f"{type(exc).__name__}: {exc}") from None


def _latest_artifact(model: Any) -> Any:
    """A folder of versioned artifacts (``llmrec finetune``'s output: a ``latest`` pointer, no model files of its
    own) stands for its latest version, verified against its checksums; anything else is returned as it is."""
    if not isinstance(model, str):
        return model
    folder = Path(model).expanduser()
    if not (folder / "latest").is_file() or (folder / "config.json").exists():
        return model

    store = ArtifactStore(folder, "", "Write it again with the command that made it (e.g. `llmrec finetune`).")
    latest = store.latest_folder()
    if latest is None:
        raise ProviderError(f"{folder}: its 'latest' pointer names no folder; write the model again")
    return str(store.open(latest).folder)


async def _warmed(provider: Any) -> Any:
    """A provider with an optional ``warm()`` (imports, weights, clients) gets it called now, in a worker thread,
    so that a cold process does not count it against its first request's timeout (serve is ready after it)."""
    warm = getattr(provider, "warm", None)
    if callable(warm):
        try:
            await asyncio.to_thread(warm)
        except Exception as exc:  # its calls will fail the same way, and nodes take their fallbacks: say so now
            import warnings

            warnings.warn(f"provider '{getattr(provider, 'name', '?')}' could not be warmed up "
                          f"({type(exc).__name__}: {exc}); its calls will fail and LLM nodes take their fallbacks",
                          RuntimeWarning, stacklevel=2)
    return provider


def route_options(factory: Any, route: RouteConfig, base_dir: Path | None) -> dict[str, Any]:
    """The keyword arguments of a provider factory for ``route``; a factory whose ``model`` is a path
    (``model_is_path``) gets a relative one resolved against the spec's folder."""
    kwargs = route.provider_kwargs()
    if getattr(factory, "model_is_path", False):
        path = Path(str(kwargs["model"])).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        kwargs["model"] = os.path.normpath(path)
    return kwargs


def resolve_route(config: LlmConfig, base_dir: Path | None = None) -> RouteConfig | None:
    """The resource's own provider and model, ``$LLMREC_MODEL`` filling a missing model, else the ``embedded``
    route; None when none is set. A model folder the spec names resolves from ``base_dir`` (the spec's)."""
    model = config.model or os.environ.get(MODEL_ENV, "").strip() or None
    if model is None:
        return config.embedded
    if config.model and base_dir is not None and not Path(model).expanduser().is_absolute():
        beside = base_dir / model  # a folder the spec names is relative to the spec, like every path
        if beside.is_dir():
            model = os.path.normpath(beside)
    provider = config.provider
    if provider is None:
        looks_like_a_path = model.startswith(("/", "./", "../", "~"))  # never a litellm model name
        provider = "transformers" if Path(model).expanduser().is_dir() or looks_like_a_path else "litellm"
        if provider == "transformers" and config.model and base_dir is not None and \
                not Path(model).expanduser().is_absolute():
            model = os.path.normpath(base_dir / model)  # a missing folder is reported where it was looked for
    data = {k: getattr(config, k) for k in config.model_fields_set
            if k in RouteConfig.model_fields and k not in ("embedded", "train_on_first_use")}
    data.update(provider=provider, model=model)
    return RouteConfig.model_validate(data)


class Unconfigured:
    """The provider of an ``llm`` resource with no model: every call fails at once, so that nodes take their
    fallbacks (the embedded default of a fresh install, with no API key and no local model)."""

    name = "none"
    model = "none"
    timeout = None
    max_retries = 0

    MESSAGE = (f"no model configured: set {MODEL_ENV} (a litellm model such as openai/gpt-4o-mini, or a local "
               "model folder) or the llm resource's 'model'")

    async def complete(self, request: CompletionRequest) -> Completion:
        raise ProviderError(self.MESSAGE)

    async def close(self) -> None:
        return None


# -- llm.prompt ------------------------------------------------------------------------------------------------


class FewShot(_Config):
    user: str
    assistant: str


def _template_path(value: str | None, info: ValidationInfo) -> str | None:
    """A template file: relative to the spec, then the spec's prompts/ folder, then llmrec's own prompts/.

    It must be inside the spec's folder (or be a built-in template): a template's text becomes the prompt, and
    through it the output, so a spec may not name ``/etc/passwd`` or ``../../secrets.txt`` (docs/security.md)."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError("is empty; name a template file (relative to the spec) or a built-in template")
    base = Path((info.context or {}).get("base_dir") or Path.cwd()).resolve()
    try:
        path = Path(value)
        found = next((c for c in (base / path, base / "prompts" / path, BUILTIN_PROMPTS / path) if c.is_file()),
                     base / path).resolve()
    except (OSError, ValueError, RuntimeError):
        raise ValueError("is not a valid file path") from None
    if not (found.is_relative_to(base) or found.is_relative_to(BUILTIN_PROMPTS)):
        raise ValueError(f"'{value[:200]}' is outside the spec's folder; a template file must be in the spec's "
                         f"folder (or be a built-in template: {', '.join(_builtin_prompts())})")
    return str(found)


class SemanticCacheConfig(_Config):
    threshold: float = Field(0.95, gt=0.0, le=1.0, description="Least cosine similarity of the user messages.")


class PromptCacheConfig(_Config):
    """``prompt_cache: true`` or ``{ttl, backend, max_entries, path, semantic: {threshold}}``.

    An exact cache keyed by the rendered messages, model, schema, choices, sampling and template version; with
    ``semantic`` also a hit for a user message whose embedding (by the ``cache_model`` input, an embedder) is at
    least ``threshold`` similar, every other part identical.
    """

    enabled: bool = True
    ttl: Duration = Field(None, description="Seconds (or '1h', '1d') before an answer expires; none: never.")
    backend: str = Field("memory", description="'memory' (this runtime), 'disk' (persistent) or a plugin's.")
    max_entries: int = Field(10_000, ge=1)
    path: SpecPath | None = Field(None, description="Folder of the disk cache (default $LLMREC_CACHE_DIR/prompts).")
    semantic: SemanticCacheConfig | None = Field(None, description="Also serve near-identical user messages.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, bool):
            return {"enabled": data}
        if isinstance(data, dict) and data.get("semantic") is True:
            return {**data, "semantic": {}}
        return data


class PromptConfig(_Config):
    template: str | None = Field(None, description="Inline Jinja template of the user message.")
    template_file: str | None = Field(
        None, description="A template file: relative to the spec, its prompts/ folder, or a built-in name."
    )
    system: str | None = Field(None, description="System message (a Jinja template too).")
    few_shot: list[FewShot] = Field(default_factory=list, description="Example exchanges sent before the prompt.")
    schema_: SchemaRef | None = Field(
        None, alias="schema", description="Output schema: 'file.py:Model', 'package.module:Model' or 'file.json'."
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    max_retries: int | None = Field(None, ge=0, le=20, description="Re-asks on invalid output (default: the llm's).")
    reasoning_field: str | None = Field(
        None, description="A str field of the schema the model thinks in; dropped from the node's output."
    )
    token_budget: int | None = Field(None, ge=1, description="Most tokens the rendered prompt may take.")
    truncate: str | None = Field(
        None, description="The input shortened to fit token_budget: a list by whole items, a text by whole sentences.")
    keep: Literal["last", "first"] = Field(
        "last", description="Which end of the 'truncate' list is the most recent and is kept."
    )
    prompt_cache: PromptCacheConfig | None = Field(
        None, description="Reuse answers to identical (or, with 'semantic', near-identical) prompts."
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("template_file", mode="after")
    @classmethod
    def _resolve_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _template_path(value, info)

    @model_validator(mode="after")
    def _consistent(self) -> PromptConfig:
        if (self.template is None) == (self.template_file is None):
            raise ValueError("give exactly one of 'template' or 'template_file'")
        if self.reasoning_field and not self.schema_:
            raise ValueError("'reasoning_field' needs a 'schema' that has that field")
        if (self.token_budget is None) != (self.truncate is None):
            raise ValueError("'token_budget' and 'truncate' go together: the budget, and which list input to shorten")
        return self

    def source(self) -> str:
        looked = (f" (looked beside the spec, in its prompts/ folder and in llmrec's prompts/: "
                  f"{', '.join(_builtin_prompts()) or 'none'})")
        return read_source(self.template, self.template_file, looked)


def _builtin_prompts() -> list[str]:
    return sorted(p.name for p in BUILTIN_PROMPTS.glob("*.j2")) if BUILTIN_PROMPTS.is_dir() else []


_JSON_MODELS: dict[str, type[BaseModel]] = {}
_WITHOUT: dict[tuple[type[BaseModel], str], type[BaseModel]] = {}


def _json_schema_model(schema: dict[str, Any], ref: str) -> type[BaseModel]:
    """A pydantic model that sends ``schema`` to the model and validates answers against it (jsonschema)."""
    key = ref + ":" + str(hash(repr(schema)))
    model = _JSON_MODELS.get(key)
    if model is not None:
        return model
    name = "".join(c for c in str(schema.get("title") or Path(ref).stem).title() if c.isalnum()) or "Output"

    def validate(cls: Any, data: Any) -> Any:
        import jsonschema

        try:
            jsonschema.validate(data, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise ValueError((f"{where}: " if where else "") + exc.message) from None
        return data

    model = type(name, (BaseModel,), {
        "model_config": ConfigDict(extra="allow"),
        "_llmrec_json_schema": model_validator(mode="before")(classmethod(validate)),
        "model_json_schema": classmethod(lambda cls, *a, **k: dict(schema)),
    })
    _JSON_MODELS[key] = model
    return model


def _without(model: type[BaseModel], field: str) -> type[BaseModel]:
    """``model`` without ``field``: the output type once the reasoning field is dropped (cached)."""
    key = (model, field)
    derived = _WITHOUT.get(key)
    if derived is None:
        fields = {n: (f.annotation, f) for n, f in model.model_fields.items() if n != field}
        derived = create_model(model.__name__, __doc__=model.__doc__, __module__=model.__module__,
                               __config__=model.model_config, **fields)  # type: ignore[call-overload]
        # findable by name in its module (as pickle and the disk cache look classes up), apart from ``model``
        module = sys.modules.get(model.__module__)
        if module is not None and "<locals>" not in model.__qualname__:
            derived.__qualname__ = f"_llmrec_{model.__qualname__.replace('.', '_')}_without_{field}"
            setattr(module, derived.__qualname__, derived)
        _WITHOUT[key] = derived
    return derived


class _Resolved:
    """What a config resolves to, once: compiled templates, variables, schema and output models."""

    def __init__(self, config: PromptConfig) -> None:
        source = config.source()
        field = "template" if config.template is not None else "template_file"
        try:
            self.names = set(variables(source))
            self.template = compile_template(source)
        except TemplateProblem as exc:
            exc.field = field
            raise
        self.system = None
        if config.system is not None:
            try:
                self.names |= variables(config.system)
                self.system = compile_template(config.system)
            except TemplateProblem as exc:
                exc.field = "system"
                raise
        self.schema: type[BaseModel] | None = None
        self.output: Any = str
        self.json_schema = False
        if config.schema_:
            resolved = resolve_schema(config.schema_, Path.cwd(), "schema")
            if isinstance(resolved, dict):
                self.schema = _json_schema_model(resolved, config.schema_)
                self.output = dict[str, Any]
                self.json_schema = True
            else:
                self.schema = resolved
                self.output = resolved
        self.reasoning = config.reasoning_field
        self.result_model: type[BaseModel] | None = None
        if self.reasoning and self.schema is not None and not self.json_schema:
            fields = self.schema.model_fields
            if self.reasoning not in fields:
                raise OutputSchemaProblem(
                    f"schema {self.schema.__name__} has no field '{self.reasoning}'", "reasoning_field",
                    f"Its fields are: {', '.join(fields)}.",
                )
            self.result_model = _without(self.schema, self.reasoning)
            self.output = self.result_model


_RESOLVED: dict[str, _Resolved] = {}


def resolve_prompt(config: PromptConfig) -> _Resolved:
    key = config.model_dump_json(by_alias=True)
    files = [config.template_file] if config.template_file else []
    if config.schema_:  # 'file.py:Model' or 'file.json': an edited file resolves again
        ref = config.schema_
        files.append(ref if ref.endswith(".json") else ref.rpartition(":")[0])
    for file in files:
        try:
            key += f":{Path(file).stat().st_mtime_ns}"
        except OSError:
            pass
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _Resolved(config)
        if len(_RESOLVED) > 512:
            _RESOLVED.clear()
        _RESOLVED[key] = hit
    return hit


def estimate_tokens(text: str, provider: Any = None) -> int:
    """Tokens ``text`` takes: the provider's ``count_tokens`` when it has one, else ~4 characters a token."""
    count = getattr(provider, "count_tokens", None)
    if callable(count):
        return int(count(text))
    return math.ceil(len(text) / 4)


class Prompt(NodeType):
    """Render a sandboxed Jinja prompt from the node's inputs and ask a model; parse into the schema if given.

    Task nodes (llm.rank, llm.label, ...) subclass it and override :meth:`choices` to constrain the output.
    """

    name = "llm.prompt"
    description = "Ask an LLM: Jinja prompt from the inputs, optional output schema (validated, re-asked)."
    Config = PromptConfig
    reports = Reports(model_usage=True)

    def __init__(self, config: PromptConfig) -> None:
        super().__init__(config)
        self._r = resolve_prompt(config)
        self._cache: Any = None
        self._registry: Any = None  # the graph's registry, from start(ctx)
        self._version: str | None = None

    async def start(self, ctx: StartContext) -> None:
        self._registry = ctx.registry

    @classmethod
    def signature(cls, config: PromptConfig) -> Signature:  # type: ignore[override]
        r = resolve_prompt(config)
        params = {name: Param(name, Any, True) for name in sorted(r.names)}
        params["model"] = Param("model", Provider, True)
        if _semantic(config):
            from ..embed import Embedder  # lazy: sentence-transformers, only for a semantic prompt cache

            params["cache_model"] = Param("cache_model", Embedder, True)
        return Signature(params=params, output=r.output, variadic=False, wants_context=True)

    @classmethod
    def check(cls, config: PromptConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        r = resolve_prompt(config)
        problems: list[str | tuple[str, str] | Problem] = []
        for reserved in ("model", "context", *(("cache_model",) if _semantic(config) else ())):
            if reserved in r.names:
                problems.append(Problem(
                    f"the template uses '{reserved}', a name llm.prompt keeps for itself",
                    "template" if config.template is not None else "template_file",
                    "Rename the variable (and the input that provides it).",
                ))
        if config.truncate is not None and config.truncate not in r.names:
            close = difflib.get_close_matches(config.truncate, r.names, n=1)
            hint = f"Did you mean '{close[0]}'?" if close else f"Template variables: {', '.join(sorted(r.names))}."
            problems.append(Problem(f"'truncate' names '{config.truncate}', which the template does not use",
                                    "truncate", hint))
        if config.reasoning_field and r.json_schema:
            problems.append(Problem("'reasoning_field' needs a pydantic schema, not a JSON Schema file",
                                    "reasoning_field"))
        pc = config.prompt_cache
        if pc is not None and pc.enabled:
            table = ctx.registry.cache_backends if ctx.registry is not None else _global("cache_backends")
            if pc.backend not in table:
                close = [e.name for e in table.suggest(pc.backend)]
                hint = (f"Did you mean '{close[0]}'? " if close else "") + f"Available: {', '.join(table)}."
                problems.append(Problem(f"prompt_cache: unknown cache backend '{pc.backend}'", "prompt_cache", hint))
        return problems

    # -- the prompt cache ------------------------------------------------------------------------------------
    def prompt_cache(self) -> Any:
        """The node's :class:`~llmrec.caches.prompt.PromptCache` (built on first use), or None without one."""
        pc = self.config.prompt_cache
        if pc is None or not pc.enabled:
            return None
        if self._cache is None:
            table = self._registry.cache_backends if self._registry is not None else _global("cache_backends")
            factory = table[pc.backend]
            kwargs: dict[str, Any] = {"max_entries": pc.max_entries}
            if pc.path is not None or pc.backend == "disk":
                try:
                    accepts_path = "path" in inspect.signature(factory).parameters
                except (TypeError, ValueError):
                    accepts_path = False
                if accepts_path:
                    kwargs["path"] = pc.path if pc.path is not None else default_cache_root() / "prompts"
            backend = factory(**kwargs)
            self._cache = PromptCache(backend, pc.ttl, pc.semantic.threshold if pc.semantic else None)
        return self._cache

    def cache_version(self) -> str:
        """What a changed template or schema must change in the cache key: the template and system sources, and
        the output schema's JSON Schema (an edited schema file changes it even when the model keeps its name)."""
        if self._version is None:
            cfg = self.config
            schema = self._r.schema
            shape = json.dumps(schema.model_json_schema(), sort_keys=True, default=str) if schema is not None else ""
            self._version = hashlib.sha256(
                repr((cfg.source(), cfg.system, cfg.reasoning_field, shape)).encode()).hexdigest()
        return self._version

    async def close(self) -> None:
        closer = getattr(getattr(self._cache, "backend", None), "close", None)
        if callable(closer):
            done = closer()
            if inspect.isawaitable(done):  # a networked backend (redis) closes its connection asynchronously
                await done

    # -- extension points for task nodes --------------------------------------------------------------------
    def choices(self, inputs: dict[str, Any]) -> tuple[Choices, ...]:
        """Closed sets the output must come from (catalog ids for llm.rank); none for a plain prompt."""
        return ()

    def messages(self, inputs: dict[str, Any], provider: Any) -> tuple[tuple[Message, ...], dict[str, Any]]:
        """The chat messages for these inputs, the ``truncate`` list shortened to fit ``token_budget``; and what
        was done to fit (``{"truncated": name, "kept": k, "dropped": n}``, empty when nothing was)."""
        cfg = self.config
        r = self._r
        head: list[Message] = []
        if r.system is not None:
            head.append(Message("system", r.system.render(inputs)))
        for shot in cfg.few_shot:
            head += [Message("user", shot.user), Message("assistant", shot.assistant)]
        user = r.template.render(inputs)
        info: dict[str, Any] = {}
        if cfg.token_budget is not None and cfg.truncate is not None:
            fixed = sum(estimate_tokens(m.content, provider) for m in head)
            if fixed + estimate_tokens(user, provider) > cfg.token_budget:
                user, info = self._fit(inputs, provider, cfg.token_budget - fixed)
        return (*head, Message("user", user)), info

    def _fit(self, inputs: dict[str, Any], provider: Any, budget: int) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        name = cfg.truncate
        assert name is not None
        items = inputs.get(name)
        if items is None:
            items = []
        text = isinstance(items, str)
        if text:  # a text is shortened by whole sentences
            items = [s for s in _SENTENCE_END.split(items) if s]
        if not isinstance(items, (list, tuple)):
            raise RunError(f"'truncate' input '{name}' must be a list or a text to be shortened, got "
                           f"{type(items).__name__}")
        items = list(items)

        def render(k: int) -> str:
            kept = (items[len(items) - k:] if k else []) if cfg.keep == "last" else items[:k]
            return self._r.template.render({**inputs, name: " ".join(kept) if text else kept})

        lo, hi = 0, len(items)  # the largest k whose prompt fits: whole items only
        if estimate_tokens(render(0), provider) > budget:
            raise RunError(f"the prompt exceeds token_budget {cfg.token_budget} even with no '{name}' items")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if estimate_tokens(render(mid), provider) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return render(lo), {"truncated": name, "kept": lo, "dropped": len(items) - lo}

    def request(self, inputs: dict[str, Any], provider: Any, context: RunContext | None) -> tuple[CompletionRequest,
                                                                                                   dict[str, Any]]:
        cfg = self.config
        messages, info = self.messages(inputs, provider)
        timeout = getattr(provider, "timeout", None)
        if context is not None and context.deadline is not None:
            left = max(context.deadline - asyncio.get_running_loop().time(), 0.0)
            timeout = left if timeout is None else min(timeout, left)
        retries = cfg.max_retries if cfg.max_retries is not None else int(getattr(provider, "max_retries", 0) or 0)
        req = CompletionRequest(
            messages=messages,
            schema=self._r.schema,
            choices=self.choices(inputs),
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            seed=cfg.seed,
            timeout=timeout,
            max_retries=retries,
        )
        return req, info

    async def run(self, model: Provider, context: RunContext | None = None, **inputs: Any) -> Any:
        node_id = context.node_id if context is not None else None
        if isinstance(model, Unconfigured):  # no model: straight to the fallback, without rendering a prompt
            _record(context, None, 0, model, {})
            raise _for_node(ProviderError(Unconfigured.MESSAGE), node_id)
        embedder = inputs.pop("cache_model", None) if _semantic(self.config) else None
        req, info = self.request(inputs, model, context)
        cache = self.prompt_cache()
        token = None
        if cache is not None:
            hit, token = await cache.lookup(req, model, self.cache_version(), embedder)
            if hit is not None:
                info = {**info, "cached": hit.kind}
                if hit.similarity is not None:
                    info["similarity"] = round(hit.similarity, 4)
                _record(context, hit.completion.usage, 0, model, info, hit.completion)
                if context is not None and context.record is not None:
                    context.record.cache_hit = True
                    if hasattr(context.record, "cache"):
                        context.record.cache = hit.kind
                return self.result(hit.completion, context)
        try:
            completion = await model.complete(req)
        except LlmrecError as exc:
            _record(context, getattr(exc, "usage", None), getattr(exc, "attempts", None), model, info)
            raise _for_node(exc, node_id) from None
        except Exception as exc:  # a provider plugin's own error: report it as the provider's fault
            raise ProviderError(f"provider '{getattr(model, 'name', '?')}' failed: {type(exc).__name__}: {exc}",
                                node_id) from exc
        _record(context, completion.usage, completion.attempts, model, info, completion)
        value = self.result(completion, context)
        if cache is not None:
            await cache.store(token, req, completion)
        return value

    def result(self, completion: Completion, context: RunContext | None) -> Any:
        """The node's output from a completion: text, the parsed model, or a dict for a JSON Schema."""
        r = self._r
        if r.schema is None:
            return completion.text
        parsed = completion.parsed
        if parsed is None:
            raise OutputValidationError("the provider returned no parsed output for the schema",
                                        context.node_id if context else None, completion.attempts, completion.text)
        if r.json_schema:
            return parsed.model_dump()
        if r.result_model is not None and r.reasoning is not None:
            if context is not None:
                context.extra["reasoning"] = getattr(parsed, r.reasoning, None)
            return r.result_model.model_validate({k: getattr(parsed, k) for k in r.result_model.model_fields})
        return parsed


def _record(context: RunContext | None, usage: Any, attempts: Any, provider: Any, info: dict[str, Any],
            completion: Completion | None = None) -> None:
    """Tokens, cost, attempts and model into the node's trace record (when the executor hands one over) and
    into ``context.extra["llm"]``."""
    if context is None:
        return
    data: dict[str, Any] = {"model": (completion.model if completion else "") or getattr(provider, "model", ""),
                            "provider": (completion.provider if completion else "") or getattr(provider, "name", "")}
    if usage is not None:
        data["tokens"] = {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens}
        data["cost"] = usage.cost
    if attempts is not None:
        data["attempts"] = attempts
    if completion is not None and completion.cached:
        data["cached"] = info.get("cached", True)
    data.update(info)
    context.extra["llm"] = data
    record = getattr(context, "record", None)
    if record is None or not hasattr(record, "usage"):
        return
    tokens = data.get("tokens") or {}
    record.usage = ModelUsage(model=data["model"] or None, calls=int(data.get("attempts") or 0),
                              prompt_tokens=int(tokens.get("prompt", 0)),
                              completion_tokens=int(tokens.get("completion", 0)), cost=float(data.get("cost") or 0.0))


def _semantic(config: PromptConfig) -> bool:
    pc = config.prompt_cache
    return pc is not None and pc.enabled and pc.semantic is not None


def _for_node(exc: LlmrecError, node_id: str | None) -> LlmrecError:
    """The same error with the node named (providers do not know which node called them)."""
    if not isinstance(exc, RunError) or exc.node_id or node_id is None:
        return exc
    message = str(exc)
    if isinstance(exc, OutputValidationError):
        new: RunError = OutputValidationError(message, node_id, exc.attempts, exc.last_raw)
    else:
        new = type(exc)(message, node_id)
    for name in ("usage",):
        if hasattr(exc, name):
            setattr(new, name, getattr(exc, name))
    return new


# -- registration ----------------------------------------------------------------------------------------------


def _litellm(**config: Any) -> Any:
    return litellm_factory(**config)


def _transformers(**config: Any) -> Any:
    from ..llm.local import transformers_provider  # lazy: transformers and llguidance, only for a local model folder

    return transformers_provider(**config)


@hookimpl
def llmrec_register_providers(register: Any) -> None:
    register("litellm", _litellm)
    register("transformers", _transformers)

    register("reclm", RecLMProvider)


@hookimpl
def llmrec_register_resource_types(register: Any) -> None:
    register(LlmResource)


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    register(Prompt)


__all__ = ["LlmConfig", "LlmResource", "Prompt", "PromptCacheConfig", "PromptConfig", "estimate_tokens"]
