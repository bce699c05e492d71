"""What a plugin author subclasses: :class:`NodeType` and :class:`ResourceType`.

A node type is a class with a pydantic ``Config`` (extra="forbid") and a ``run`` method whose signature *is*
its declaration: each keyword parameter is an input (its annotation is the type a producer must match, its
default makes it optional) and the return annotation is the output (a pydantic model's fields can be
referenced as ``${node.field}``). A parameter named ``context`` receives the :class:`RunContext`.

    class Popular(NodeType):
        name = "retrieve.popular"

        class Config(BaseModel):
            model_config = ConfigDict(extra="forbid")
            k: int = 50

        async def run(self, interactions: Interactions, exclude: list[str] | None = None) -> Candidates:
            ...

``run`` may be ``async def`` (preferred) or plain ``def``: a plain one runs inline, or in a worker thread when
the class sets ``offload = True`` (CPU- or IO-heavy work that must not block the event loop).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from .paths import confine


class OutputSchemaProblem(ValueError):
    """Raised by node types whose output schema reference does not resolve; ``field`` names the config key."""

    def __init__(self, message: str, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.hint = hint


class NoConfig(BaseModel):
    """The config of a node type that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Problem:
    """What ``check`` may return when a plain message is not enough: a config key, a hint, or a warning.

    A warning does not make the spec invalid (``llmrec validate`` passes and prints it): use it for things that
    are correct as written but will matter when the spec runs, such as a model artifact not trained yet.
    """

    message: str
    field: str | None = None
    hint: str | None = None
    warning: bool = False


@dataclass(frozen=True)
class Reports:
    """What a node type reports, declared as data (as simonw/llm's models declare ``supports_schema=True``):
    ``llmrec eval`` and ``llmrec serve`` read these flags, never a type's name, so a plugin's node gets what a
    built-in gets.

    - ``model_usage``: it calls a model and fills ``context.record.usage`` (a
      :class:`~llmrec.runtime.trace.ModelUsage`: calls, tokens, cost, model). eval reports LLM calls, tokens,
      cost and cache hits for it; serve exports them as Prometheus series. (A node with a
      :class:`~llmrec.llm.provider.Provider` input counts as one too.)
    - ``grounding``: its output counts the grounding fixes it made, as int attributes ``dropped``, ``repaired``
      and ``duplicates``; serve exports them (``llmrec_grounding_fixes_total``).
    """

    model_usage: bool = False
    grounding: bool = False


@dataclass(frozen=True)
class Param:
    """One declared input of a node type."""

    name: str
    type: Any
    required: bool
    default: Any = None


@dataclass(frozen=True)
class Signature:
    """A node type's declared inputs and output, read from ``run``'s signature (or given by ``signature()``)."""

    params: dict[str, Param]
    output: Any
    variadic: bool = False  # accepts any extra named inputs (``**kwargs``)
    wants_context: bool = False


@dataclass
class RunContext:
    """Per-request facts a node may ask for by declaring a ``context`` parameter."""

    run_id: str
    node_id: str
    inputs: dict[str, Any]
    deadline: float | None = None  # loop.time() by which the whole request must finish
    attempt: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    record: Any = None  # the node's NodeRecord in the trace: LLM nodes add tokens, cost, attempts and model
    cost_left: float | None = None  # USD the request may still spend on LLM calls (None: no cost budget)


@dataclass
class CheckContext:
    """What ``NodeType.check`` may consult at validation time."""

    node_id: str
    base_dir: Any  # pathlib.Path the spec's relative paths resolve from
    declared_inputs: set[str]  # input names this node is given
    request_inputs: set[str]  # names declared in the spec's `inputs`
    template_env: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)  # the node's inputs as written (values or ${...} text)
    #: the :class:`~llmrec.registry.Registry` the graph is checked against (providers, cache backends, ...):
    #: look registered things up here, never in a global registry
    registry: Any = None


@dataclass
class StartContext:
    """What ``NodeType.start(ctx)`` receives when it declares a parameter: who the node is, its graph, and its
    trained artifact (trainable node types; see :mod:`llmrec.training`)."""

    node_id: str
    graph: Any
    base_dir: Path | None
    #: ``await ctx.artifact()``: the verified artifact, trained first when the config says train_on_first_use;
    #: raises ModelNotTrainedError / ArtifactError naming the command otherwise
    artifact: Callable[[], Awaitable[Any]]
    #: the registry the graph was checked against (``graph.registry``): the one to look providers and
    #: backends up in, so that a graph checked with one registry runs against that registry
    registry: Any = None


@dataclass
class LoadContext:
    """What ``ResourceType.load(ctx)`` receives when it declares a parameter: its name, the graph, other
    resources' values (``await ctx.resource("ml")``) and its trained artifact (trainable resource types)."""

    name: str
    graph: Any
    base_dir: Path | None
    resource: Callable[[str], Awaitable[Any]]
    artifact: Callable[[], Awaitable[Any]]
    registry: Any = None  # as StartContext.registry


def wants_context(method: Any) -> bool:
    """Whether a ``start``/``load`` method takes a context parameter (older plugins' take none)."""
    try:
        return len(inspect.signature(method).parameters) > 0
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def read_signature(fn: Any) -> Signature:
    """Declared inputs and output of a ``run`` method, from its annotations."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolved forward references: fall back to Any rather than refuse
        hints = {}
    params: dict[str, Param] = {}
    variadic = False
    wants_context = False
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            variadic = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.name == "context":
            wants_context = True
            continue
        required = p.default is inspect.Parameter.empty
        params[p.name] = Param(p.name, hints.get(p.name, Any), required, None if required else p.default)
    return Signature(params, hints.get("return", Any), variadic, wants_context)


class NodeType:
    """Base class of every node type; see the module docstring."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]] = NoConfig
    #: plain ``def run`` only: run it in a worker thread (it blocks: CPU-heavy or blocking I/O)
    offload: ClassVar[bool] = False
    #: ``async def run`` that never waits on I/O (pure computation): the executor may start it without
    #: creating an asyncio task, which saves most of its per-node cost. Leave False for anything that awaits
    #: the network, sleeps, or enters asyncio.timeout / anyio cancel scopes.
    inline: ClassVar[bool] = False
    #: ``async def run_batch(calls)`` gives, for many calls' keyword arguments at once, what ``run`` gives for
    #: each: the runtime then sends it the calls of concurrent requests together (llmrec/runtime/batch.py)
    batchable: ClassVar[bool] = False
    #: what the node reports beyond its output (model usage, grounding fixes); see :class:`Reports`
    reports: ClassVar[Reports] = Reports()
    #: ``feedback(event)`` learns from what users did with answers (``POST /v1/feedback`` of ``llmrec serve``,
    #: ``Runtime.feedback``): an online bandit, say. ``event.request_id`` is the ``context.run_id`` of the run
    #: it is about.
    learns_from_feedback: ClassVar[bool] = False

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    async def feedback(self, event: Any) -> None:
        """One feedback event (a :class:`llmrec.serve.logs.FeedbackEvent`: ``request_id``, ``item_id``, ``type``
        click/purchase/rating/dismissal, ``value``, ``position``), for a node type that declares
        ``learns_from_feedback = True``. Runs between requests on the event loop: keep it short. Default: nothing."""

    async def start(self) -> None:
        """Called once before the first run (load a model, open a connection). Default: nothing.

        Declare a parameter, ``async def start(self, ctx: StartContext)``, to receive the node's context."""

    async def warm(self, **inputs: Any) -> None:
        """Called once at start with the inputs already known then: those bound to resources or literals.

        Build per-resource structures here (an index over the catalog, a popularity table) so that the first
        request does not pay for them. Default: nothing.
        """

    async def close(self) -> None:
        """Called when the runtime shuts down. Default: nothing."""

    @classmethod
    def referenced_nodes(cls, config: BaseModel) -> list[str]:
        """Ids of other nodes this node's *config* names (not its inputs), which count as used: e.g. the label
        node a trainable ranker is trained with. Default: none."""
        return []

    def cache_version(self) -> str:
        """Extra text for this node's cache keys: what the config *points at* and a cached result depends on,
        such as the contents of a template file. Default: nothing (the config itself is always part of the key)."""
        return ""

    @classmethod
    def signature(cls, config: BaseModel) -> Signature:
        """Declared inputs and output. Override when they depend on the config (templates, schemas)."""
        return read_signature(cls.run)

    @classmethod
    def check(cls, config: BaseModel, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        """Extra validation beyond the Config model.

        Return messages, ``(config_key, message)`` pairs so the error points at that key's value, or
        :class:`Problem` objects (hints, warnings); the core adds file, line and column.
        """
        return []

    def run(self, **inputs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run_batch(self, calls: list[dict[str, Any]]) -> list[Any]:
        """The results of ``run(**kwargs)`` for each of ``calls``, in order; only called when ``batchable``.
        Override it to do the work of many calls at once. Default: one call after another."""
        return [await self.run(**kwargs) for kwargs in calls]


class ResourceType:
    """Something loaded once per runtime and shared by nodes through ``${resources.NAME}``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]] = NoConfig
    #: the Python type ``load`` returns; consumers' input annotations are checked against it
    provides: ClassVar[Any] = Any

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @classmethod
    def check(cls, config: BaseModel, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        """Extra validation beyond the Config model; returns what :meth:`NodeType.check` returns."""
        return []

    async def load(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _resolve_spec_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir") if info.context else None
    value = Path(value).expanduser()
    if base is None:  # a config built in Python, not from a spec
        return value

    return confine(Path(base), value, info.field_name or "path")


#: A config field holding a file path: relative paths resolve against the folder of the spec that wrote them, and
#: the path must stay inside the folders a spec may use (llmrec/paths.py).
SpecPath = Annotated[Path, AfterValidator(_resolve_spec_path)]
