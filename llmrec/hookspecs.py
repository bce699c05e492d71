"""Every hook llmrec calls, namespace ``llmrec``. Implement them with ``@llmrec.hookimpl``.

Registration hooks take a ``register`` callback (as in simonw/llm and datasette) and are called once per
registry build, for every plugin; what each plugin registers is recorded under its name, so duplicates and
invalid registrations fail with a PluginError that names the plugin.

Lifecycle hooks are called by the executor around every node run; none is ``firstresult`` and their return
values are ignored. They run on the event loop, so keep them quick.

Every hook is typed (the annotations below are the contract; pluggy checks an implementation's parameter names
against them when a plugin registers, and a misspelt hook name is refused by ``check_pending``). No hook is
``historic`` (a registry is built once, with every plugin present) and only where said is one ``firstresult``.
What a registration hook's ``register`` receives is validated by :class:`llmrec.registry.Registry` (a node type
must subclass NodeType with a pydantic Config, names must be unique, ...), and a bad one is a PluginError naming
the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from .data.datasets import DatasetInfo  # light (the registry imports it too), so annotations resolve at run time

if TYPE_CHECKING:  # the types only; importing them at run time would make every module load the world
    import typer

    from .graph.build import Graph
    from .node import NodeType, ResourceType, RunContext
    from .runtime.trace import NodeRecord, RunResult, Trace
    from .errors import SpecError
    from .spec.loader import SpecDocument

hookspec = pluggy.HookspecMarker("llmrec")
hookimpl = pluggy.HookimplMarker("llmrec")


@hookspec
def llmrec_register_node_types(register: Callable[[type[NodeType]], None]) -> None:
    """Register node types: ``register(MyNodeType)`` for each subclass of :class:`llmrec.NodeType`.

    Called once per registry build; not firstresult; the return value is ignored."""


@hookspec
def llmrec_register_resource_types(register: Callable[[type[ResourceType]], None]) -> None:
    """Register resource types: ``register(MyResourceType)`` for each subclass of :class:`llmrec.ResourceType`.

    Called once per registry build; not firstresult; the return value is ignored."""


@hookspec
def llmrec_register_providers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register LLM providers: ``register(name, factory)``; ``factory(model=..., **options)`` returns an object
    with ``async complete(CompletionRequest) -> Completion`` (:class:`llmrec.llm.provider.Provider`).

    Called once per registry build; not firstresult."""


@hookspec
def llmrec_register_metrics(register: Callable[[str, Callable[..., float]], None]) -> None:
    """Register evaluation metrics: ``register(name, fn)``.

    A plain function is a per-case metric ``fn(ranked_ids, relevant_ids, k) -> float`` (averaged over cases);
    one decorated with :func:`llmrec.eval.metrics.list_metric` is computed once over every answer,
    ``fn(lists, k, context) -> float`` (coverage, diversity, novelty). ``llmrec eval`` reports them as ``name@k``.
    """


@hookspec
def llmrec_register_datasets(register: Callable[[DatasetInfo], None]) -> None:
    """Register named datasets: ``register(DatasetInfo(name, description, loader, files=..., splits=...))``.

    ``loader(root, *, split, seed, test_fraction, **options)`` returns a :class:`llmrec.data.Dataset`; its other
    keyword parameters are the dataset's options (a spec's ``options:``), checked before it is called. The name
    is what a ``dataset`` resource's ``name:`` and ``llmrec eval --dataset`` accept (lower-case, dashes allowed).
    Collected once per registry, the first time its datasets are looked up; not firstresult, not historic; the
    return value is ignored."""


@hookspec
def llmrec_register_cache_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register cache backends: ``register(name, factory)``; ``factory(max_entries=...)`` returns an object with
    async ``get(key) -> (hit, value)`` and ``set(key, value, ttl)``."""


@hookspec
def llmrec_register_session_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register session stores for multi-turn serving: ``register(name, factory)``; ``factory(**options)``
    returns an object with async ``load(session_id) -> dict | None``, ``save(session_id, state, ttl)`` and
    ``delete(session_id)``."""


@hookspec
def llmrec_register_log_stores(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register serving log stores (impressions and feedback, docs/serving.md): ``register(name, factory)``;
    ``factory(location, **options)`` returns a :class:`llmrec.serve.logs.LogStore`: ``append_impressions(records)``,
    ``append_feedback(records)`` (called from one writer thread, in batches), ``impressions()`` and
    ``feedback()`` (iterators of the records back, oldest first) and ``close()``. ``llmrec serve --log-store
    NAME:LOCATION`` picks one. Called once per registry build; not firstresult."""


@hookspec
def llmrec_register_template_filters(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register Jinja filters available to every template: ``register(name, fn)``."""


@hookspec
def llmrec_register_commands(cli: typer.Typer) -> None:
    """Add commands to the ``llmrec`` typer app (use :mod:`llmrec.commands` for loading specs, output and exit
    codes). Called once when the CLI starts a command that is not one of llmrec's own (``llmrec validate`` and
    ``llmrec version`` skip it), or lists the commands (``--help``, completion), so a plugin adds commands but
    never replaces a built-in one; not firstresult."""


@hookspec
def llmrec_validate_graph(graph: Graph, document: SpecDocument) -> list[SpecError] | None:
    """Extra validation of a built graph. Return SpecErrors; every implementation runs (not firstresult) and
    their errors are combined."""


@hookspec
def llmrec_before_node_run(node_id: str, inputs: dict[str, Any], context: RunContext) -> None:
    """Called before a node runs (after its cache missed), with its resolved inputs and a RunContext."""


@hookspec
def llmrec_after_node_run(node_id: str, output: Any, record: NodeRecord) -> None:
    """Called after a node produced its output (also for cache hits and fallbacks); ``record`` is its trace."""


@hookspec
def llmrec_on_node_error(node_id: str, error: BaseException, record: NodeRecord) -> None:
    """Called when a node attempt fails, before any retry or fallback."""


@hookspec
def llmrec_after_run(result: RunResult | Trace) -> None:
    """Called when a whole run has finished, with its :class:`llmrec.RunResult` (or the failed trace)."""
