"""Typed registries filled by the ``llmrec_register_*`` hooks, remembering which plugin registered what."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .data.datasets import COMMON_PARAMETERS, DatasetInfo
from .data.splits import SPLITS
from .errors import PluginError
from .node import NodeType, ResourceType, read_signature

T = TypeVar("T")
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
TYPE_NAMING = "use lower-case dotted names such as 'retrieve.bm25'"
#: dataset names may hold dashes (movielens-100k) but never a path's separators or leading dot
DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*([.-][a-z0-9_]+)*$")
DATASET_NAMING = "use lower-case letters, digits, '_', '-' and '.' such as 'movielens-100k'"


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, where it came from, and its version."""

    name: str
    distribution: str | None = None
    version: str | None = None
    source: str = "entry point"  # "built-in", "entry point" or "local file"

    api: str | None = None  # the plugin-API range it declares (LLMREC_PLUGIN_API), None when it declares none

    def label(self) -> str:
        if self.distribution:
            return f"{self.distribution} {self.version}" if self.version else self.distribution
        return self.name


@dataclass(frozen=True)
class RefusedPlugin:
    """An installed plugin llmrec did not load: it is broken or supports another plugin API. llmrec goes on
    without it; ``llmrec plugins`` lists it and every command warns once."""

    name: str
    distribution: str | None
    version: str | None
    reason: str
    needs: str | None = None  # what it needs that this llmrec lacks, e.g. "llmrec plugin API >=2,<3"

    def label(self) -> str:
        if self.distribution:
            return f"{self.distribution} {self.version}" if self.version else self.distribution
        return self.name

    def message(self) -> str:
        who = f"plugin '{self.name}'" + (f" ({self.label()})" if self.distribution else "")
        return f"{who} was not loaded: {self.reason}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    plugin: PluginInfo


@dataclass
class Table(Generic[T]):
    """Name -> registered value, for one kind of thing (node types, providers, ...)."""

    kind: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)
    pattern: re.Pattern[str] = TYPE_NAME  # what a valid name looks like
    naming: str = TYPE_NAMING  # the rule, for the error about an invalid name

    def add(self, name: str, value: T, plugin: PluginInfo) -> None:
        if not isinstance(name, str) or not self.pattern.match(name):
            raise PluginError(
                f"{self.kind} name {name!r} is invalid: {self.naming}",
                plugin.name,
                plugin.label() if plugin.distribution else None,
            )
        if name in self.entries:
            other = self.entries[name].plugin
            raise PluginError(
                f"registers {self.kind} '{name}', already registered by plugin '{other.name}' ({other.label()})",
                plugin.name,
                plugin.label() if plugin.distribution else None,
            )
        self.entries[name] = Entry(name, value, plugin)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> T:
        return self.entries[name].value

    def get(self, name: str) -> T | None:
        e = self.entries.get(name)
        return e.value if e else None

    def entry(self, name: str) -> Entry[T] | None:
        return self.entries.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def suggest(self, name: str, n: int = 3) -> list[Entry[T]]:
        """Registered names close to ``name``: difflib matches, plus same-suffix names (``bm25`` -> ``retrieve.bm25``)."""
        names = list(self.entries)
        close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
        tail = name.rsplit(".", 1)[-1]
        for other in names:
            if other not in close and other.rsplit(".", 1)[-1] == tail:
                close.append(other)
        return [self.entries[c] for c in close[:n]]


def _check_config_model(cls: type, plugin: PluginInfo, kind: str) -> None:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise PluginError(f"{kind} '{cls.name}': Config must be a pydantic BaseModel", plugin.name)
    if config.model_config.get("extra") != "forbid":
        raise PluginError(
            f"{kind} '{cls.name}': Config must set model_config = ConfigDict(extra='forbid') "
            "so that misspelt keys are errors",
            plugin.name,
        )
    if plugin.source == "built-in":  # their schemas are exported, hence checked, by tests/test_schema_export.py;
        return  # generating ~45 of them here was a third of `llmrec validate`'s start-up
    try:
        config.model_json_schema()
    except Exception as exc:
        raise PluginError(f"{kind} '{cls.name}': Config has no JSON Schema: {exc}", plugin.name) from None


@dataclass
class Registry:
    """Everything the loaded plugins registered."""

    node_types: Table[type[NodeType]] = field(default_factory=lambda: Table("node type"))
    resource_types: Table[type[ResourceType]] = field(default_factory=lambda: Table("resource type"))
    providers: Table[Any] = field(default_factory=lambda: Table("provider"))
    metrics: Table[Callable[..., float]] = field(default_factory=lambda: Table("metric"))
    cache_backends: Table[Callable[..., Any]] = field(default_factory=lambda: Table("cache backend"))
    session_stores: Table[Callable[..., Any]] = field(default_factory=lambda: Table("session store"))
    log_stores: Table[Callable[..., Any]] = field(default_factory=lambda: Table("log store"))
    template_filters: dict[str, Callable[..., Any]] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    hook: Any = None  # pluggy hook relay, for lifecycle hooks
    template_env: Any = None
    skipped_plugins: list[Any] = field(default_factory=list)  # plugins/*.py not imported: folder not trusted
    refused_plugins: list[RefusedPlugin] = field(default_factory=list)  # broken or incompatible entry points
    datasets: Table[DatasetInfo] = field(
        default_factory=lambda: Table("dataset", pattern=DATASET_NAME, naming=DATASET_NAMING))

    def add_dataset(self, dataset: Any, plugin: PluginInfo) -> None:
        """Check one registered dataset and add it to :attr:`datasets`."""
        if not isinstance(dataset, DatasetInfo):
            raise PluginError(f"register() for datasets expects a llmrec.data.datasets.DatasetInfo, got {dataset!r}",
                              plugin.name)
        if not callable(dataset.loader):
            raise PluginError(f"dataset '{dataset.name}': loader {dataset.loader!r} is not callable", plugin.name)
        try:
            params = inspect.signature(dataset.loader).parameters
        except (TypeError, ValueError) as exc:  # pragma: no cover - builtins
            raise PluginError(f"dataset '{dataset.name}': loader signature unreadable: {exc}", plugin.name) from None
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            lacking = [p for p in COMMON_PARAMETERS[1:] if p not in params]
            if lacking:
                raise PluginError(f"dataset '{dataset.name}': the loader must take the keyword parameters "
                                  f"{', '.join(lacking)} (loader(root, *, split, seed, test_fraction, ...))",
                                  plugin.name)
        unknown = [s for s in dataset.splits if s not in SPLITS]
        if not dataset.splits or unknown:
            raise PluginError(f"dataset '{dataset.name}': splits must be among {', '.join(SPLITS)}"
                              + (f", not {', '.join(map(repr, unknown))}" if unknown else ""), plugin.name)
        if dataset.url and not dataset.files:
            raise PluginError(f"dataset '{dataset.name}' has a url but no files to find in its zip", plugin.name)
        self.datasets.add(dataset.name, dataset, plugin)

    def add_node_type(self, cls: Any, plugin: PluginInfo) -> None:
        if not (isinstance(cls, type) and issubclass(cls, NodeType)):
            raise PluginError(f"register() for node types expects a NodeType subclass, got {cls!r}", plugin.name)
        if not isinstance(getattr(cls, "name", None), str):
            raise PluginError(f"node type {cls.__qualname__} has no 'name'", plugin.name)
        _check_config_model(cls, plugin, "node type")
        if cls.signature.__func__ is NodeType.signature.__func__ and cls.run is NodeType.run:  # type: ignore[attr-defined]
            raise PluginError(f"node type '{cls.name}' does not define run()", plugin.name)
        if cls.signature.__func__ is NodeType.signature.__func__:  # type: ignore[attr-defined]
            try:
                read_signature(cls.run)
            except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
                raise PluginError(f"node type '{cls.name}': run() signature unreadable: {exc}", plugin.name) from None
        self.node_types.add(cls.name, cls, plugin)

    def add_resource_type(self, cls: Any, plugin: PluginInfo) -> None:
        if not (isinstance(cls, type) and issubclass(cls, ResourceType)):
            raise PluginError(
                f"register() for resource types expects a ResourceType subclass, got {cls!r}", plugin.name
            )
        if not isinstance(getattr(cls, "name", None), str):
            raise PluginError(f"resource type {cls.__qualname__} has no 'name'", plugin.name)
        _check_config_model(cls, plugin, "resource type")
        self.resource_types.add(cls.name, cls, plugin)

    def provided_by(self, plugin_name: str) -> dict[str, list[str]]:
        """What one plugin registered, by kind."""
        out: dict[str, list[str]] = {}
        tables: tuple[Table[Any], ...] = (self.node_types, self.resource_types, self.providers, self.metrics,
                                          self.cache_backends, self.session_stores, self.log_stores,
                                          self.datasets)
        for table in tables:
            names = [e.name for e in table.entries.values() if e.plugin.name == plugin_name]
            if names:
                out[table.kind] = sorted(names)
        return out
