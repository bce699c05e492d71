"""Plugin discovery: built-in defaults, the ``llmrec`` entry-point group, and ``plugins/*.py`` beside a spec.

Built-in node types are plugins like any other: the core imports them only through DEFAULT_PLUGINS.

``LLMREC_LOAD_PLUGINS`` controls entry-point plugins (as DATASETTE_LOAD_PLUGINS does): unset loads every
installed one; a comma-separated list loads only those entry-point names (or distribution names); an empty
string loads none, which is what the test suite does to stay hermetic.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import trust
from .errors import PluginError

if TYPE_CHECKING:
    import pluggy

    from .registry import PluginInfo, Registry

# pluggy, the hook specs, the registry (node.py, pydantic, the data layer) and Jinja are imported by the functions
# that build a registry, so that importing this module for llmrec_version() or get_registry's signature is cheap

ENTRY_POINT_GROUP = "llmrec"
DEFAULT_PLUGINS = (
    "llmrec.nodes.basic",
    "llmrec.nodes.data",
    "llmrec.nodes.demo",
    "llmrec.nodes.user",
    "llmrec.nodes.embed",
    "llmrec.nodes.retrieve",
    "llmrec.nodes.rerank",
    "llmrec.nodes.rank",
    "llmrec.nodes.present",
    "llmrec.nodes.viz",
    "llmrec.nodes.llm",
    "llmrec.nodes.llm_tasks",
    "llmrec.nodes.verify",
    "llmrec.nodes.planning",
    "llmrec.caches",
    "llmrec.eval.commands",
    "llmrec.serve.commands",
    "llmrec.training",
    "llmrec.distill.cli",
    "llmrec.finetune.cli",
)
LOCAL_PLUGIN_DIR = "plugins"

_lock = threading.Lock()
_cache: dict[Any, Registry] = {}


def llmrec_version() -> str:
    try:
        return importlib.metadata.version("llmrec")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def plugin_entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    allow = os.environ.get("LLMREC_LOAD_PLUGINS")
    if allow is None:
        return eps
    wanted = {w.strip() for w in allow.split(",") if w.strip()}
    return [ep for ep in eps if ep.name in wanted or (ep.dist is not None and ep.dist.name in wanted)]


def local_plugin_files(spec_dir: Path | None) -> list[Path]:
    if spec_dir is None:
        return []
    folder = spec_dir / LOCAL_PLUGIN_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def _import_local(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    modname = f"llmrec_local_plugins.{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise PluginError(f"cannot import {path}", path.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(modname, None)
        raise PluginError(
            f"failed to import {path}: {type(exc).__name__}: {exc}", f"{LOCAL_PLUGIN_DIR}/{path.name}"
        ) from None
    return module


def plugin_manager(spec_dir: Path | None = None,
                   skipped: list[Path] | None = None) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A PluginManager with the defaults, entry points and local plugin files registered. Local files of a folder
    the user does not trust are not imported; they are appended to ``skipped``."""
    import pluggy

    from . import hookspecs  # lazy: pluggy and the hook specs' types, only when a registry is built
    from .registry import PluginInfo  # lazy: node.py, pydantic and the data layer, only when a registry is built

    skipped = [] if skipped is None else skipped
    pm = pluggy.PluginManager("llmrec")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    version = llmrec_version()
    for modname in DEFAULT_PLUGINS:
        module = importlib.import_module(modname)
        pm.register(module, name=modname)
        infos[modname] = PluginInfo(modname, "llmrec", version, "built-in")
    for ep in plugin_entry_points():
        dist = ep.dist.name if ep.dist else None
        dist_version = ep.dist.version if ep.dist else None
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"failed to load entry point '{ep.value}': {type(exc).__name__}: {exc}", ep.name, dist) from None
        try:
            pm.register(plugin, name=ep.name)
        except ValueError as exc:
            raise PluginError(str(exc), ep.name, dist) from None
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"invalid hook implementation: {exc}", ep.name, dist) from None
        infos[ep.name] = PluginInfo(ep.name, dist, dist_version, "entry point")
    files = local_plugin_files(spec_dir)
    if files and not trust.is_trusted(spec_dir):  # code beside a spec runs only when the user trusts the folder
        skipped.extend(files)
        files = []
    for path in files:
        module = _import_local(path)
        name = f"{LOCAL_PLUGIN_DIR}/{path.name}"
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"invalid hook implementation: {exc}", name) from None
        infos[name] = PluginInfo(name, None, None, "local file")
    try:  # a misspelt hook name (llmrec_register_node_type) would otherwise be silently ignored
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or "?"
        info = infos.get(name)
        raise PluginError(f"{exc}. See llmrec/hookspecs.py for the hook names", name,
                          info.label() if info and info.distribution else None) from None
    return pm, infos


def _call_register_hook(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], hook_name: str, adder: Any) -> None:
    from .registry import PluginInfo  # lazy: see plugin_manager

    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order: built-ins, entry points, then local files
        info = infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name)

        def register(*args: Any, _info: PluginInfo = info) -> None:
            adder(_info, *args)

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{hook_name} failed: {type(exc).__name__}: {exc}",
                info.name,
                info.label() if info.distribution else None,
            ) from None


def _build(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> Registry:
    from .registry import Registry  # lazy: see plugin_manager
    from .templates import make_environment  # lazy: Jinja, only when a registry is built

    reg = Registry()
    reg.plugins = list(infos.values())
    reg.hook = pm.hook
    _call_register_hook(pm, infos, "llmrec_register_node_types", lambda info, cls: reg.add_node_type(cls, info))
    _call_register_hook(
        pm, infos, "llmrec_register_resource_types", lambda info, cls: reg.add_resource_type(cls, info)
    )
    _call_register_hook(pm, infos, "llmrec_register_providers", lambda info, n, v: reg.providers.add(n, v, info))
    _call_register_hook(pm, infos, "llmrec_register_metrics", lambda info, n, v: reg.metrics.add(n, v, info))
    _call_register_hook(
        pm, infos, "llmrec_register_cache_backends", lambda info, n, v: reg.cache_backends.add(n, v, info)
    )
    _call_register_hook(
        pm, infos, "llmrec_register_session_stores", lambda info, n, v: reg.session_stores.add(n, v, info)
    )
    _call_register_hook(pm, infos, "llmrec_register_log_stores", lambda info, n, v: reg.log_stores.add(n, v, info))
    _call_register_hook(pm, infos, "llmrec_register_datasets", lambda info, d: reg.add_dataset(d, info))

    def add_filter(info: PluginInfo, name: str, fn: Any) -> None:
        if name in reg.template_filters:
            raise PluginError(f"registers template filter '{name}' twice", info.name)
        reg.template_filters[name] = fn

    _call_register_hook(pm, infos, "llmrec_register_template_filters", add_filter)

    reg.template_env = make_environment(reg.template_filters)
    reg.pm = pm  # type: ignore[attr-defined]
    return reg


def make_registry(*plugins: Any, spec_dir: Path | None = None) -> Registry:
    """A fresh registry: the defaults, entry points and (trusted) local plugins, plus ``plugins`` (modules or
    objects with ``@hookimpl`` functions). Not cached and not shared: an application or a test can hold two
    registries in one process, and a graph checked with one (``llmrec.graph.build.build(doc, registry)``) starts
    against that one; node and resource types receive it as ``ctx.registry``."""
    import pluggy

    from .registry import PluginInfo  # lazy: see plugin_manager

    skipped: list[Path] = []
    pm, infos = plugin_manager(spec_dir, skipped)
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"cannot register: {exc}", name) from None
        infos[name] = PluginInfo(name, None, None, "given")
    reg = _build(pm, infos)
    reg.skipped_plugins = skipped
    return reg


def get_registry(spec_dir: Path | None = None, refresh: bool = False) -> Registry:
    """The registry for specs in ``spec_dir`` (local plugins differ per folder). Cached until files change."""
    files = local_plugin_files(spec_dir)
    key = (
        str(spec_dir) if files else None,
        tuple((str(p), p.stat().st_mtime_ns) for p in files),
        os.environ.get("LLMREC_LOAD_PLUGINS"),
        bool(files) and trust.is_trusted(spec_dir),
    )
    with _lock:
        if not refresh and key in _cache:
            return _cache[key]
        skipped: list[Path] = []
        pm, infos = plugin_manager(spec_dir, skipped)
        reg = _build(pm, infos)
        reg.skipped_plugins = skipped
        _cache[key] = reg
        return reg
