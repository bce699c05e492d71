"""Core plugin behaviour: built-ins are plugins, local plugins/*.py, entry points, registration checks that
name the guilty plugin, lifecycle and validation hooks, and `llmrec plugins`.

Every test uses fresh tmp_path folders: get_registry caches per folder (+ file mtimes + LLMREC_LOAD_PLUGINS).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import textwrap
import types
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

import llmrec
from llmrec.errors import PluginError, RunError, SpecError
from llmrec.plugins import (DEFAULT_PLUGINS, PLUGIN_API_VERSION, PluginWarning, get_registry, llmrec_version,
                            plugin_manager)
from llmrec.cli import main
from llmrec.testing import errors_of, write_spec

PRELUDE = """
from typing import Any

from pydantic import BaseModel, ConfigDict

import llmrec


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")
"""

DOUBLE_PLUGIN = PRELUDE + """

class Double(llmrec.NodeType):
    name = "local.double"
    description = "Multiply a number."

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        factor: int = 2

    async def run(self, value: int) -> int:
        return value * self.config.factor


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(Double)
"""

DOUBLE_SPEC = """
    name: local
    inputs:
      x: integer
    nodes:
      d:
        type: local.double
        config: {factor: 3}
        inputs: {value: "${inputs.x}"}
    outputs:
      d: ${d}
"""

IDENTITY_SPEC = """
    name: plain
    nodes:
      a: {type: core.identity, inputs: {value: 1}}
    outputs:
      v: ${a}
"""


@pytest.fixture(autouse=True)
def _no_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "")
    monkeypatch.delenv("LLMREC_DEBUG", raising=False)


def write_plugin(folder: Path, name: str, code: str) -> Path:
    (folder / "plugins").mkdir(parents=True, exist_ok=True)
    path = folder / "plugins" / name
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# -- built-ins are plugins ----------------------------------------------------------------------------------


def test_builtins_are_registered_through_the_same_hooks() -> None:
    pm, infos = plugin_manager(None)
    assert list(infos) == list(DEFAULT_PLUGINS)
    for name in DEFAULT_PLUGINS:
        assert pm.get_plugin(name) is not None
        assert infos[name].source == "built-in"
        assert infos[name].distribution == "llmrec" and infos[name].version == llmrec_version()
    impls = [i.plugin_name for i in pm.hook.llmrec_register_node_types.get_hookimpls()]
    assert "llmrec.nodes.basic" in impls and "llmrec.nodes.retrieve" in impls

    reg = get_registry(None)
    assert {"core.identity", "text.template"} <= set(reg.node_types)
    for name in reg.node_types:
        plugin = reg.node_types.entry(name).plugin
        assert plugin.source == "built-in" and plugin.distribution == "llmrec", name
        assert plugin.name in DEFAULT_PLUGINS
    assert reg.node_types.entry("core.identity").plugin.name == "llmrec.nodes.basic"
    assert reg.cache_backends.entry("memory").plugin.source == "built-in"


def test_a_builtin_hook_is_an_ordinary_hookimpl() -> None:
    """What llmrec.nodes.basic registers is what its hookimpl hands to the register callback."""
    import llmrec.nodes.basic as basic

    got: list[type] = []
    basic.llmrec_register_node_types(register=got.append)
    reg = get_registry(None)
    assert got and all(reg.node_types[cls.name] is cls for cls in got)


# -- local plugins beside a spec ----------------------------------------------------------------------------


def test_local_plugin_is_loaded_for_its_folder_only(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_plugin(a, "double.py", DOUBLE_PLUGIN)
    spec_a = write_spec(a, DOUBLE_SPEC)
    b.mkdir()
    spec_b = write_spec(b, DOUBLE_SPEC)

    entry = get_registry(a).node_types.entry("local.double")
    assert entry is not None and entry.plugin.name == "plugins/double.py" and entry.plugin.source == "local file"
    assert "local.double" not in get_registry(b).node_types
    assert "local.double" not in get_registry(None).node_types

    code, out, _ = run_cli(capsys, "validate", str(spec_a))
    assert code == 0 and "ok (1 node," in out
    code, out, _ = run_cli(capsys, "run", str(spec_a), "--input", '{"x": 4}')
    assert code == 0 and json.loads(out) == {"d": 12}
    assert llmrec.run(spec_a, {"x": 5}).outputs == {"d": 15}

    code, out, _ = run_cli(capsys, "validate", str(spec_b))
    assert code == 1 and "unknown node type 'local.double'" in out


def test_local_plugin_config_forbids_unknown_keys(tmp_path: Path) -> None:
    write_plugin(tmp_path, "double.py", DOUBLE_PLUGIN)
    spec = write_spec(tmp_path, DOUBLE_SPEC.replace("factor: 3", "factr: 3"))
    errors = errors_of(spec)
    assert len(errors) == 1 and "factr" in errors[0]


def test_editing_a_local_plugin_is_picked_up(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, "double.py", DOUBLE_PLUGIN)
    first = get_registry(tmp_path)
    assert get_registry(tmp_path) is first  # cached
    path.write_text(textwrap.dedent(DOUBLE_PLUGIN).replace("local.double", "local.twice"), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = get_registry(tmp_path)
    assert second is not first
    assert "local.twice" in second.node_types and "local.double" not in second.node_types


def test_underscore_files_are_not_plugins(tmp_path: Path) -> None:
    write_plugin(tmp_path, "_helpers.py", "raise RuntimeError('must not be imported')\n")
    write_spec(tmp_path, IDENTITY_SPEC)
    assert "core.identity" in get_registry(tmp_path).node_types


# -- duplicates name both plugins ---------------------------------------------------------------------------

DUP_PLUGIN = PRELUDE + """

class Dup(llmrec.NodeType):
    name = "core.identity"
    Config = Forbid

    async def run(self, value: Any) -> Any:
        return value


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(Dup)
"""


def test_duplicate_of_a_builtin_names_the_local_plugin_and_the_other(tmp_path: Path) -> None:
    write_plugin(tmp_path, "dup.py", DUP_PLUGIN)
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    exc = info.value
    assert exc.plugin == "plugins/dup.py"
    assert str(exc).startswith("plugin 'plugins/dup.py': ")
    assert "registers node type 'core.identity', already registered by plugin 'llmrec.nodes.basic'" in str(exc)


def test_duplicate_cli_message_without_traceback(tmp_path: Path, capsys) -> None:
    write_plugin(tmp_path, "dup.py", DUP_PLUGIN)
    spec = write_spec(tmp_path, IDENTITY_SPEC)
    code, out, err = run_cli(capsys, "validate", str(spec))
    assert code == 1 and out == ""
    assert err.startswith("error: plugin 'plugins/dup.py': ")
    assert "'core.identity'" in err and "llmrec.nodes.basic" in err
    code, out, err = run_cli(capsys, "run", str(spec))
    assert code == 1 and err.startswith("error: plugin 'plugins/dup.py': ")


def test_duplicate_between_two_local_plugins_blames_the_later_one(tmp_path: Path) -> None:
    code = DOUBLE_PLUGIN
    write_plugin(tmp_path, "a_first.py", code)
    write_plugin(tmp_path, "b_second.py", code)
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    assert info.value.plugin == "plugins/b_second.py"
    assert "already registered by plugin 'plugins/a_first.py'" in str(info.value)


# -- invalid registrations ----------------------------------------------------------------------------------

BAD_NODE_TYPES = {
    "no_forbid": (
        """
        class Loose(BaseModel):
            k: int = 1

        class N(llmrec.NodeType):
            name = "bad.loose"
            Config = Loose
            async def run(self, value: Any) -> Any:
                return value
        """,
        "extra='forbid'",
    ),
    "config_not_a_model": (
        """
        class N(llmrec.NodeType):
            name = "bad.config"
            class Config:
                k = 1
            async def run(self, value: Any) -> Any:
                return value
        """,
        "Config must be a pydantic BaseModel",
    ),
    "bad_name": (
        """
        class N(llmrec.NodeType):
            name = "Bad Name"
            Config = Forbid
            async def run(self, value: Any) -> Any:
                return value
        """,
        "name 'Bad Name' is invalid",
    ),
    "no_name": (
        """
        class N(llmrec.NodeType):
            Config = Forbid
            async def run(self, value: Any) -> Any:
                return value
        """,
        "has no 'name'",
    ),
    "no_run": (
        """
        class N(llmrec.NodeType):
            name = "bad.norun"
            Config = Forbid
        """,
        "does not define run()",
    ),
    "not_a_node_type": (
        """
        class N:
            name = "bad.plain"
        """,
        "expects a NodeType subclass",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_NODE_TYPES))
def test_invalid_node_type_is_a_plugin_error_naming_the_plugin(tmp_path: Path, capsys, case: str) -> None:
    body, message = BAD_NODE_TYPES[case]
    code = PRELUDE + textwrap.dedent(body) + """

@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(N)
"""
    write_plugin(tmp_path, "bad.py", code)
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    assert info.value.plugin == "plugins/bad.py"
    assert str(info.value).startswith("plugin 'plugins/bad.py': ")
    assert message in str(info.value)

    spec = write_spec(tmp_path, IDENTITY_SPEC)
    rc, out, err = run_cli(capsys, "validate", str(spec))
    assert rc == 1 and err.startswith("error: plugin 'plugins/bad.py': ") and message in err


def test_hookimpl_with_wrong_arguments_is_a_plugin_error(tmp_path: Path) -> None:
    write_plugin(tmp_path, "wrongargs.py", PRELUDE + """

@llmrec.hookimpl
def llmrec_register_node_types(reg):
    pass
""")
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    assert info.value.plugin == "plugins/wrongargs.py" and "invalid hook implementation" in str(info.value)


def test_register_hook_that_raises_is_a_plugin_error(tmp_path: Path) -> None:
    write_plugin(tmp_path, "raises.py", PRELUDE + """

@llmrec.hookimpl
def llmrec_register_metrics(register):
    raise KeyError("oops")
""")
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    assert info.value.plugin == "plugins/raises.py"
    assert "llmrec_register_metrics failed: KeyError" in str(info.value)


def test_duplicate_metric_names_the_plugin(tmp_path: Path) -> None:
    write_plugin(tmp_path, "metrics.py", PRELUDE + """

@llmrec.hookimpl
def llmrec_register_metrics(register):
    register("local.precision", lambda recommended, relevant: 0.0)
    register("local.precision", lambda recommended, relevant: 1.0)
""")
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    assert info.value.plugin == "plugins/metrics.py" and "metric 'local.precision'" in str(info.value)


# -- a plugin file that fails to import ---------------------------------------------------------------------


def test_plugin_file_raising_on_import(tmp_path: Path, capsys) -> None:
    write_plugin(tmp_path, "boom.py", "raise RuntimeError('kaboom at import')\n")
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    text = str(info.value)
    assert "boom.py" in text and "RuntimeError: kaboom at import" in text
    assert not any(m.startswith("llmrec_local_plugins.boom_") for m in sys.modules)

    spec = write_spec(tmp_path, IDENTITY_SPEC)
    code, out, err = run_cli(capsys, "validate", str(spec))
    assert code == 1 and out == ""
    assert err.startswith("error: plugin ") and "boom.py" in err and "kaboom at import" in err
    code, out, err = run_cli(capsys, "plugins", "--spec-dir", str(tmp_path))
    assert code == 1 and "boom.py" in err


def test_plugin_file_with_syntax_error(tmp_path: Path, capsys) -> None:
    write_plugin(tmp_path, "broken.py", "def oops(:\n")
    spec = write_spec(tmp_path, IDENTITY_SPEC)
    code, _, err = run_cli(capsys, "validate", str(spec))
    assert code == 1 and "broken.py" in err and "SyntaxError" in err


# -- entry points and LLMREC_LOAD_PLUGINS --------------------------------------------------------------------


@pytest.fixture
def fake_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """fake_entry_point(code) -> spec folder; an installed-looking entry point 'fakeplug' whose module is code."""
    original = importlib.metadata.entry_points

    def make(code: str | None) -> Path:
        modname = f"_llmrec_fake_ep_{uuid.uuid4().hex}"
        value = modname
        if code is None:
            value = f"{modname}_missing"
        else:
            module = types.ModuleType(modname)
            exec(compile(textwrap.dedent(code), f"<{modname}>", "exec"), module.__dict__)
            monkeypatch.setitem(sys.modules, modname, module)
        ep = importlib.metadata.EntryPoint("fakeplug", value, "llmrec")

        def entry_points(**params: Any) -> Any:
            if params.get("group") == "llmrec":
                return [ep]
            return original(**params)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        # a do-nothing local plugin gives this folder a registry cache entry of its own
        folder = tmp_path / uuid.uuid4().hex
        write_plugin(folder, "noop.py", "")
        return folder

    return make


FAKE_EP = DOUBLE_PLUGIN.replace("local.double", "fake.double")


@pytest.mark.parametrize("setting, loaded", [
    (None, True), ("fakeplug", True), ("other, fakeplug", True), ("", False), ("other", False),
])
def test_load_plugins_env_selects_entry_points(fake_entry_point, monkeypatch, setting, loaded) -> None:
    if setting is None:
        monkeypatch.delenv("LLMREC_LOAD_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("LLMREC_LOAD_PLUGINS", setting)
    folder = fake_entry_point(FAKE_EP)
    reg = get_registry(folder)
    assert ("fake.double" in reg.node_types) is loaded
    if loaded:
        plugin = reg.node_types.entry("fake.double").plugin
        assert plugin.name == "fakeplug" and plugin.source == "entry point"


def test_entry_point_that_fails_to_load_is_refused_and_llmrec_goes_on(fake_entry_point, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    folder = fake_entry_point(None)
    with pytest.warns(PluginWarning, match="plugin 'fakeplug' was not loaded: failed to load entry point"):
        reg = get_registry(folder)
    assert "core.identity" in reg.node_types  # the built-ins work without it
    [refused] = reg.refused_plugins
    assert refused.name == "fakeplug" and "ModuleNotFoundError" in refused.reason
    assert "fakeplug" not in [p.name for p in reg.plugins]


def test_entry_point_duplicating_a_builtin_is_refused_not_fatal(fake_entry_point, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    folder = fake_entry_point(DUP_PLUGIN)
    with pytest.warns(PluginWarning, match="already registered by plugin 'llmrec.nodes.basic'"):
        reg = get_registry(folder)
    assert reg.node_types.entry("core.identity").plugin.name == "llmrec.nodes.basic"
    assert [r.name for r in reg.refused_plugins] == ["fakeplug"]


def test_entry_point_strict_plugin_manager_still_raises(fake_entry_point, monkeypatch) -> None:
    """plugin_manager() without a refused list (a caller that wants failures) raises, naming the plugin."""
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    fake_entry_point(None)
    with pytest.raises(PluginError) as info:
        plugin_manager(None)
    assert info.value.plugin == "fakeplug" and "failed to load entry point" in str(info.value)


# -- plugin API compatibility ----------------------------------------------------------------------------


@pytest.mark.parametrize("declared, loaded", [
    (None, True), (f">={PLUGIN_API_VERSION}", True), (">=1,<2", True), (">=2,<3", False), ("<1", False),
    ("one or two", False),
])
def test_plugin_api_range_decides_whether_an_entry_point_loads(fake_entry_point, monkeypatch, capsys,
                                                               declared, loaded) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    code = FAKE_EP if declared is None else f"LLMREC_PLUGIN_API = {declared!r}\n" + FAKE_EP
    folder = fake_entry_point(code)
    write_spec(folder, IDENTITY_SPEC)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = get_registry(folder)
    assert ("fake.double" in reg.node_types) is loaded
    if loaded:
        assert reg.node_types.entry("fake.double").plugin.api == declared
        assert not caught
        return
    [refused] = reg.refused_plugins
    [warning] = [w for w in caught if issubclass(w.category, PluginWarning)]
    if declared == "one or two":
        assert "is not a version range" in refused.reason
    else:
        assert refused.needs == f"llmrec plugin API {declared}"
        assert f"provides plugin API {PLUGIN_API_VERSION}" in str(warning.message)
        assert f"it supports llmrec plugin API {declared}," in str(warning.message)
    # the CLI keeps working without it and lists it as refused
    code_, out, err = run_cli(capsys, "plugins", "--json", "--spec-dir", str(folder))
    rows = {r["name"]: r for r in json.loads(out)}
    assert code_ == 0 and rows["fakeplug"]["status"] == "refused" and rows["fakeplug"]["reason"] == refused.reason
    assert rows["llmrec.nodes.basic"]["status"] == "loaded"


def test_spec_using_a_refused_plugins_type_says_why(fake_entry_point, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    folder = fake_entry_point('LLMREC_PLUGIN_API = ">=9"\n' + FAKE_EP)
    spec = write_spec(folder, DOUBLE_SPEC.replace("local.double", "fake.double"))
    code, out, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert "unknown node type 'fake.double'" in out + err
    assert "plugin 'fakeplug' was not loaded: it supports llmrec plugin API >=9" in out + err


def test_provenance_names_refused_plugins(fake_entry_point, monkeypatch) -> None:
    from llmrec.provenance import spec_provenance

    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    folder = fake_entry_point('LLMREC_PLUGIN_API = ">=9"\n' + FAKE_EP)
    spec = write_spec(folder, IDENTITY_SPEC)
    with pytest.warns(PluginWarning):
        graph = llmrec.validate(spec)
    assert "supports llmrec plugin API >=9" in spec_provenance(graph)["refused_plugins"]["fakeplug"]


def test_entry_point_misspelling_a_hook_is_refused(fake_entry_point, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    folder = fake_entry_point(FAKE_EP.replace("def llmrec_register_node_types", "def llmrec_register_node_type"))
    with pytest.warns(PluginWarning, match="unknown hook"):
        reg = get_registry(folder)
    assert "fake.double" not in reg.node_types and reg.refused_plugins[0].name == "fakeplug"


def test_entry_point_whose_distribution_needs_another_llmrec_is_refused(fake_entry_point, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "fakeplug")
    folder = fake_entry_point(FAKE_EP)
    [ep] = importlib.metadata.entry_points(group="llmrec")

    class Dist:
        name, version = "llmrec-fake", "3.1"
        requires = ["llmrec>=99", "pydantic>=2"]

    vars(ep).update(dist=Dist())
    with pytest.warns(PluginWarning, match=r"requires llmrec>=99, and llmrec .* is installed"):
        reg = get_registry(folder)
    [refused] = reg.refused_plugins
    assert refused.label() == "llmrec-fake 3.1" and refused.needs == "llmrec>=99"


def test_local_plugin_with_another_api_is_an_error(tmp_path: Path) -> None:
    write_plugin(tmp_path, "future.py", 'LLMREC_PLUGIN_API = ">=2"\n' + DOUBLE_PLUGIN)
    with pytest.raises(PluginError) as info:
        get_registry(tmp_path)
    assert info.value.plugin == "plugins/future.py" and "supports llmrec plugin API >=2" in str(info.value)


# -- lifecycle hooks ----------------------------------------------------------------------------------------

RECORDER_PLUGIN = PRELUDE + """
import sys

CALLS = sys.modules[{module!r}].calls


class Fail(llmrec.NodeType):
    name = "hooks.fail"
    Config = Forbid

    async def run(self, value: Any) -> Any:
        raise ValueError("boom")


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(Fail)


@llmrec.hookimpl
def llmrec_before_node_run(node_id, inputs, context):
    CALLS.append(("before", node_id, dict(inputs), context))


@llmrec.hookimpl
def llmrec_after_node_run(node_id, output, record):
    CALLS.append(("after", node_id, output, record.status))


@llmrec.hookimpl
def llmrec_on_node_error(node_id, error, record):
    CALLS.append(("error", node_id, error, record.retries))


@llmrec.hookimpl
def llmrec_after_run(result):
    CALLS.append(("run", None, result, None))
"""


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """A local plugin in tmp_path recording every lifecycle hook call into the returned list."""
    holder = types.ModuleType(f"_llmrec_hook_calls_{uuid.uuid4().hex}")
    holder.calls = []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, holder.__name__, holder)
    write_plugin(tmp_path, "recorder.py", RECORDER_PLUGIN.format(module=holder.__name__))
    return holder.calls  # type: ignore[attr-defined]


def test_lifecycle_hooks_called_with_the_right_arguments(tmp_path: Path, recorder) -> None:
    spec = write_spec(tmp_path, """
        name: hooks
        inputs:
          x: integer
        nodes:
          first:
            type: core.identity
            inputs: {value: "${inputs.x}"}
          backup:
            type: core.identity
            inputs: {value: -1}
          bad:
            type: hooks.fail
            inputs: {value: "${first}"}
            retries: {attempts: 1, backoff: 0}
            fallback: {node: backup}
        outputs:
          first: ${first}
          bad: ${bad}
    """)
    result = llmrec.run(spec, {"x": 3})
    assert result.outputs == {"first": 3, "bad": -1}
    calls = recorder

    def of(node_id: str) -> list[tuple[Any, ...]]:
        return [c for c in calls if c[1] == node_id]

    before, after = of("first")
    assert before[0] == "before" and before[2] == {"value": 3}
    assert before[3].run_id == result.trace.run_id  # the run's state
    assert after == ("after", "first", 3, "ok")

    bad = of("bad")
    assert [c[0] for c in bad] == ["before", "error", "error", "after"]
    assert bad[0][2] == {"value": 3}
    for c, retries in zip(bad[1:3], (0, 1)):
        assert isinstance(c[2], ValueError) and str(c[2]) == "boom" and c[3] == retries
    assert bad[3] == ("after", "bad", -1, "fallback")

    # the fallback-only node ran on demand, with hooks, after bad failed and before bad finished
    assert [c[0] for c in of("backup")] == ["before", "after"]
    order = [(c[0], c[1]) for c in calls]
    assert order.index(("error", "bad")) < order.index(("after", "backup")) < order.index(("after", "bad"))

    assert calls[-1][0] == "run" and calls[-1][2] is result
    assert sum(c[0] == "run" for c in calls) == 1


def test_after_run_gets_the_trace_of_a_failed_run(tmp_path: Path, recorder) -> None:
    spec = write_spec(tmp_path, """
        name: fails
        nodes:
          bad: {type: hooks.fail, inputs: {value: 1}}
        outputs:
          v: ${bad}
    """)
    with pytest.raises(RunError) as info:
        llmrec.run(spec)
    kinds = [(c[0], c[1]) for c in recorder]
    assert kinds == [("before", "bad"), ("error", "bad"), ("run", None)]
    trace = recorder[-1][2]
    assert trace is info.value.trace and trace.node("bad").status == "error"


def test_lifecycle_hooks_only_for_specs_beside_the_plugin(tmp_path: Path, recorder) -> None:
    other = tmp_path / "other"
    other.mkdir()
    llmrec.run(write_spec(other, IDENTITY_SPEC))
    assert recorder == []
    llmrec.run(write_spec(tmp_path, IDENTITY_SPEC))
    assert [(c[0], c[1]) for c in recorder] == [("before", "a"), ("after", "a"), ("run", None)]


# -- llmrec_validate_graph ----------------------------------------------------------------------------------

VALIDATE_PLUGIN = PRELUDE + """
from llmrec.errors import SpecError, SpecWarning

SEEN = []


@llmrec.hookimpl
def llmrec_validate_graph(graph, document):
    SEEN.append((graph, document))
    problems = []
    for node_id in graph.nodes:
        if node_id.startswith("tmp_"):
            problems.append(SpecError("house rule: node ids must not start with 'tmp_'", node_id=node_id,
                                      hint="Rename it."))
        if node_id == "legacy":
            problems.append(SpecWarning("'legacy' is deprecated", node_id=node_id))
    return problems
"""


def test_validate_graph_hook_adds_errors(tmp_path: Path, capsys) -> None:
    write_plugin(tmp_path, "rules.py", VALIDATE_PLUGIN)
    spec = write_spec(tmp_path, IDENTITY_SPEC.replace("a:", "tmp_a:").replace("${a}", "${tmp_a}"))
    code, out, err = run_cli(capsys, "validate", str(spec))
    assert code == 1
    assert "node 'tmp_a': house rule: node ids must not start with 'tmp_'. Rename it." in out
    assert f"{spec}: 1 error" in out
    code, out, err = run_cli(capsys, "run", str(spec))
    assert code == 1 and out == "" and "house rule" in err


def test_validate_graph_hook_gets_graph_and_document_and_may_warn(tmp_path: Path, capsys) -> None:
    write_plugin(tmp_path, "rules.py", VALIDATE_PLUGIN)
    spec = write_spec(tmp_path, IDENTITY_SPEC.replace("a:", "legacy:").replace("${a}", "${legacy}"))
    code, out, _ = run_cli(capsys, "validate", str(spec))
    assert code == 0
    assert "node 'legacy': warning: 'legacy' is deprecated" in out and "ok (1 node," in out
    module = next(m for n, m in sys.modules.items() if n.startswith("llmrec_local_plugins.rules_")
                  and getattr(m, "__file__", "") == str(tmp_path / "plugins" / "rules.py"))
    graph, document = module.SEEN[-1]
    assert isinstance(graph, llmrec.Graph) and isinstance(document, llmrec.SpecDocument)
    assert set(graph.nodes) == {"legacy"}


# -- llmrec plugins -----------------------------------------------------------------------------------------


def test_plugins_json_lists_builtins(capsys) -> None:
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert list(rows) == list(DEFAULT_PLUGINS)
    for row in rows.values():
        assert row["source"] == "built-in" and row["distribution"] == "llmrec" and row["version"] == llmrec_version()
    assert rows["llmrec.nodes.basic"]["provides"]["node type"] == ["core.identity", "text.template"]
    assert "retrieve.popular" in rows["llmrec.nodes.retrieve"]["provides"]["node type"]
    assert rows["llmrec.caches"]["provides"] == {"cache backend": ["disk", "memory"]}


def test_plugins_table_lists_builtins(capsys) -> None:
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "llmrec.nodes.basic" in out and f"llmrec {llmrec_version()}" in out
    assert "core.identity" in out and "text.template" in out


def test_plugins_with_spec_dir_lists_local_plugins(tmp_path: Path, capsys) -> None:
    write_plugin(tmp_path, "double.py", DOUBLE_PLUGIN)
    code, out, _ = run_cli(capsys, "plugins", "--json", "--spec-dir", str(tmp_path))
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["plugins/double.py"] == {
        "name": "plugins/double.py",
        "source": "local file",
        "distribution": None,
        "version": None,
        "status": "loaded",
        "api": None,
        "provides": {"node type": ["local.double"]},
    }
    code, out, _ = run_cli(capsys, "plugins", "--spec-dir", str(tmp_path))
    assert code == 0 and "plugins/double.py" in out and "local file" in out and "local.double" in out


def test_every_hookspec_is_typed_and_its_types_resolve() -> None:
    """The hook specs are the plugin contract: every parameter and return annotated, and every annotation
    names a real type (they are only imported for type checkers, so resolve them here)."""
    import inspect
    import typing

    import typer

    import llmrec.hookspecs as hs
    from llmrec.errors import SpecError
    from llmrec.graph.build import Graph
    from llmrec.node import NodeType, ResourceType, RunContext
    from llmrec.runtime.trace import NodeRecord, RunResult, Trace
    from llmrec.spec.loader import SpecDocument

    names = dict(vars(hs), typer=typer, Graph=Graph, SpecDocument=SpecDocument, SpecError=SpecError,
                 NodeType=NodeType, ResourceType=ResourceType, RunContext=RunContext, NodeRecord=NodeRecord,
                 RunResult=RunResult, Trace=Trace)
    hooks = [getattr(hs, n) for n in dir(hs) if n.startswith("llmrec_")]
    assert len(hooks) >= 13
    for hook in hooks:
        hints = typing.get_type_hints(hook, globalns=names)
        params = list(inspect.signature(hook).parameters)
        assert set(params) <= set(hints) and "return" in hints, hook.__name__
        assert hook.__doc__, hook.__name__
