"""Plugin discovery: built-in defaults, the ``llmrec`` entry-point group, and ``plugins/*.py`` beside a spec.

Built-in node types are plugins like any other: the core imports them only through DEFAULT_PLUGINS.

``LLMREC_LOAD_PLUGINS`` controls entry-point plugins (as DATASETTE_LOAD_PLUGINS does): unset loads every
installed one; a comma-separated list loads only those entry-point names (or distribution names); an empty
string loads none, which is what the test suite does to stay hermetic.

Plugins say which llmrec plugin API they support: a module-level ``LLMREC_PLUGIN_API = ">=1,<2"`` (a version
specifier over :data:`PLUGIN_API_VERSION`). An installed (entry-point) plugin that supports another API, fails to
import, or registers something invalid is *refused*: llmrec warns once, naming it, its version and what it needs,
and works without it (a broken plugin never takes the command line down with it, simonw/llm#575). A plugin
beside a spec, or one given to :func:`make_registry`, is part of what the user is running: its failures are
errors.
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

    from .registry import PluginInfo, RefusedPlugin, Registry

# pluggy, the hook specs, the registry (node.py, pydantic, the data layer) and Jinja are imported by the functions
# that build a registry, so that importing this module for llmrec_version() or get_registry's signature is cheap

ENTRY_POINT_GROUP = "llmrec"
#: the plugin API this llmrec provides: the major number changes when a hook or a contract a plugin relies on
#: changes incompatibly, the minor one when something is added (plugins/llmrec-example/README.md)
PLUGIN_API_VERSION = "1.0"
PLUGIN_API_ATTR = "LLMREC_PLUGIN_API"
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
    "llmrec.nodes.dialogue",
    "llmrec.nodes.policy",
    "llmrec.caches",
    "llmrec.stores",
    "llmrec.eval.commands",
    "llmrec.serve.commands",
    "llmrec.training",
    "llmrec.distill.cli",
    "llmrec.finetune.cli",
    "llmrec.distributed.commands",
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


class _Refused(Exception):
    def __init__(self, reason: str, needs: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.needs = reason, needs


def declared_api(plugin: Any) -> str | None:
    """The plugin-API range a plugin declares (``LLMREC_PLUGIN_API``), or None; raises _Refused when it is not a
    version specifier or excludes :data:`PLUGIN_API_VERSION`."""
    declared = getattr(plugin, PLUGIN_API_ATTR, None)
    if declared is None:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        supported = SpecifierSet(str(declared))
    except InvalidSpecifier:
        raise _Refused(f"{PLUGIN_API_ATTR} = {declared!r} is not a version range such as '>=1,<2'") from None
    text = str(declared).strip()  # as its author wrote it
    if PLUGIN_API_VERSION not in supported:
        raise _Refused(f"it supports llmrec plugin API {text}, and this llmrec {llmrec_version()} provides "
                       f"plugin API {PLUGIN_API_VERSION}", f"llmrec plugin API {text}")
    return text


def _required_llmrec(dist: importlib.metadata.Distribution | None) -> None:
    """Refuse a distribution whose own requirement on llmrec excludes this version (installed with --no-deps, or
    llmrec upgraded under it). A source tree's version (0+unknown) satisfies nothing: not checked."""
    version = llmrec_version()
    if dist is None or version == "0+unknown":
        return
    from packaging.requirements import InvalidRequirement, Requirement

    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower() == "llmrec" and req.marker is None and req.specifier \
                and not req.specifier.contains(version, prereleases=True):
            raise _Refused(f"it requires llmrec{req.specifier}, and llmrec {version} is installed",
                           f"llmrec{req.specifier}")


def plugin_manager(spec_dir: Path | None = None, skipped: list[Path] | None = None,
                   refused: list[RefusedPlugin] | None = None
                   ) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A PluginManager with the defaults, entry points and local plugin files registered. Local files of a folder
    the user does not trust are not imported; they are appended to ``skipped``. Entry points that fail to load
    or support another plugin API are appended to ``refused`` (or raise PluginError when it is None)."""
    import pluggy

    from . import hookspecs  # lazy: pluggy and the hook specs' types, only when a registry is built
    from .registry import PluginInfo, RefusedPlugin  # lazy: node.py, pydantic and the data layer, for a registry

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
            try:
                _required_llmrec(ep.dist)
                plugin = ep.load()
            except _Refused:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a broken plugin raises, llmrec goes on without it
                raise _Refused(f"failed to load entry point '{ep.value}': {type(exc).__name__}: {exc}") from None
            api = declared_api(plugin)
            try:
                pm.register(plugin, name=ep.name)
            except ValueError as exc:
                raise _Refused(str(exc)) from None
            except pluggy.PluginValidationError as exc:
                raise _Refused(f"invalid hook implementation: {exc}") from None
        except _Refused as exc:
            if refused is None:
                raise PluginError(exc.reason, ep.name, f"{dist} {dist_version}" if dist else None) from None
            refused.append(RefusedPlugin(ep.name, dist, dist_version, exc.reason, exc.needs))
            continue
        infos[ep.name] = PluginInfo(ep.name, dist, dist_version, "entry point", api)
    files = local_plugin_files(spec_dir)
    if files and not trust.is_trusted(spec_dir):  # code beside a spec runs only when the user trusts the folder
        skipped.extend(files)
        files = []
    for path in files:
        module = _import_local(path)
        name = f"{LOCAL_PLUGIN_DIR}/{path.name}"
        api = _checked_api(module, name)
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"invalid hook implementation: {exc}", name) from None
        infos[name] = PluginInfo(name, None, None, "local file", api)
    while True:  # a misspelt hook name (llmrec_register_node_type) would otherwise be silently ignored
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or "?"
            info = infos.get(name)
            message = f"{exc}. See llmrec/hookspecs.py for the hook names"
            if refused is None or info is None or info.source != "entry point":
                raise PluginError(message, name, info.label() if info and info.distribution else None) from None
            refuse(pm, infos, refused, name, message)
    return pm, infos


def _checked_api(plugin: Any, name: str) -> str | None:
    """declared_api for a plugin whose failures are errors (a local file, one given to make_registry)."""
    try:
        return declared_api(plugin)
    except _Refused as exc:
        raise PluginError(exc.reason, name) from None


def refuse(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], refused: list[RefusedPlugin], name: str,
           reason: str) -> None:
    """Take an entry-point plugin out again, remembering why."""
    from .registry import RefusedPlugin  # lazy: see plugin_manager

    info = infos.pop(name)
    pm.unregister(name=name)
    refused.append(RefusedPlugin(name, info.distribution, info.version, reason))


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


def _build_refusing(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], refused: list[RefusedPlugin]
                    ) -> Registry:
    """_build, refusing each entry-point plugin whose registration fails (an invalid node type, a name another
    plugin registered) and building again without it; others' failures are errors."""
    import warnings

    while True:
        try:
            reg = _build(pm, infos)
            break
        except PluginError as exc:
            info = infos.get(exc.plugin or "")
            if info is None or info.source != "entry point":
                raise
            reason = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
            refuse(pm, infos, refused, info.name, reason)
    reg.refused_plugins = list(refused)
    for r in refused:
        warnings.warn(f"{r.message()}. llmrec goes on without it ('llmrec plugins' lists it; "
                      f"LLMREC_LOAD_PLUGINS selects the plugins to load)", PluginWarning, stacklevel=3)
    return reg


class PluginWarning(UserWarning):
    """An installed plugin was refused (broken, or built for another plugin API); llmrec runs without it."""


def make_registry(*plugins: Any, spec_dir: Path | None = None) -> Registry:
    """A fresh registry: the defaults, entry points and (trusted) local plugins, plus ``plugins`` (modules or
    objects with ``@hookimpl`` functions). Not cached and not shared: an application or a test can hold two
    registries in one process, and a graph checked with one (``llmrec.graph.build.build(doc, registry)``) starts
    against that one; node and resource types receive it as ``ctx.registry``."""
    import pluggy

    from .registry import PluginInfo  # lazy: see plugin_manager

    skipped: list[Path] = []
    refused: list[RefusedPlugin] = []
    pm, infos = plugin_manager(spec_dir, skipped, refused)
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        api = _checked_api(plugin, name)
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"cannot register: {exc}", name) from None
        infos[name] = PluginInfo(name, None, None, "given", api)
    reg = _build_refusing(pm, infos, refused)
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
        refused: list[RefusedPlugin] = []
        pm, infos = plugin_manager(spec_dir, skipped, refused)
        reg = _build_refusing(pm, infos, refused)
        reg.skipped_plugins = skipped
        _cache[key] = reg
        return reg
