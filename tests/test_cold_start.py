"""Cold start (issue 13): each command imports only what it needs. Behaviour, not timing: which modules a fresh
process holds after `import llmrec`, `llmrec version` and `llmrec validate` (figures: benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

import llmrec
from llmrec.errors import PluginError
from llmrec.plugins import make_registry

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.yaml"

#: what `llmrec validate` never needs: model runtimes, servers, vector stores, trainers, the DAG library
NOT_FOR_VALIDATE = ("torch", "sentence_transformers", "transformers", "onnxruntime", "lightgbm", "sklearn",
                    "litellm", "instructor", "lancedb", "faiss", "fastapi", "uvicorn", "networkx", "matplotlib",
                    "peft")


def loaded_after(code: str) -> set[str]:
    """The top-level modules and llmrec modules a fresh interpreter holds after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {**os.environ, "LLMREC_LOAD_PLUGINS": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_llmrec_loads_no_submodule_and_no_library() -> None:
    mods = loaded_after("import llmrec")
    assert {m for m in mods if m.startswith("llmrec.")} == set()
    assert not mods & {"pydantic", "jinja2", "pluggy", "yaml", "asyncio", "numpy", "networkx", "typer"}


def test_public_names_resolve_on_first_use() -> None:
    assert set(llmrec.__all__) <= set(dir(llmrec))
    assert all(getattr(llmrec, name) is not None for name in llmrec.__all__)
    from llmrec.graph.build import Graph
    from llmrec.node import SpecPath
    from llmrec.runtime.executor import Runtime

    assert llmrec.Runtime is Runtime and llmrec.Graph is Graph and llmrec.SpecPath is SpecPath
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        llmrec.Nope  # noqa: B018


def test_version_builds_no_registry() -> None:
    for argv in (["version"], ["--version"]):
        mods = loaded_after(f"from llmrec.cli import main\nassert main({argv!r}) == 0")
        llmrec_mods = {m for m in mods if m.startswith("llmrec.")}
        assert not llmrec_mods & {"llmrec.registry", "llmrec.node", "llmrec.api", "llmrec.graph.build",
                                  "llmrec.runtime.executor", "llmrec.templates", "llmrec.data"}, argv
        assert not any(m.startswith("llmrec.nodes") for m in llmrec_mods), argv
        assert not mods & {"jinja2", "numpy", "asyncio", "pluggy"}, argv


@pytest.mark.parametrize("how", ["cli", "api"])
def test_validate_leaves_heavy_libraries_unimported(how: str) -> None:
    code = (f"from llmrec.cli import main\nassert main(['validate', {str(QUICKSTART)!r}]) == 0" if how == "cli"
            else f"import llmrec\nllmrec.validate({str(QUICKSTART)!r})")
    mods = loaded_after(code)
    assert {m.split(".")[0] for m in mods} & set(NOT_FOR_VALIDATE) == set()
    # the eval plugin registers metrics, but its commands' machinery loads when a command runs
    assert mods & {"llmrec.eval.logged", "llmrec.eval.ope", "llmrec.eval.replay", "llmrec.eval.html"} == set()


def test_validate_registers_no_plugin_command_but_help_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    from llmrec.cli import BUILTIN_COMMANDS, needs_plugin_commands

    assert {"validate", "run", "version", "plugin"} <= BUILTIN_COMMANDS and "eval" not in BUILTIN_COMMANDS
    assert not needs_plugin_commands(["validate", "x.yaml"]) and not needs_plugin_commands(["--version"])
    assert needs_plugin_commands(["eval", "x.yaml"]) and needs_plugin_commands(["--help"])
    assert needs_plugin_commands([])
    from llmrec.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "eval" in out and "serve" in out and "train" in out


def test_graph_dag_is_networkx_built_on_first_use() -> None:
    import networkx as nx

    graph = llmrec.validate(QUICKSTART)
    assert "dag" not in vars(graph)
    dag = graph.dag
    assert isinstance(dag, nx.DiGraph) and graph.dag is dag
    assert list(dag.nodes) == list(graph.spec.nodes)
    assert {(u, v): k for u, v, k in dag.edges(data="kind")} == graph.edges
    assert graph.order == list(nx.topological_sort(dag))


def test_a_plugins_config_still_needs_a_json_schema() -> None:
    """Built-in Configs skip the JSON Schema check at registration (tests/test_schema_export.py exports them all);
    a plugin's own still gets it."""

    class NoSchema(llmrec.NodeType):
        name = "test.no_schema"

        class Config(BaseModel):
            model_config = ConfigDict(extra="forbid")
            fn: Callable[[int], int] | None = None

        async def run(self) -> int:
            return 1

    plugin = types.SimpleNamespace(
        llmrec_register_node_types=llmrec.hookimpl(lambda register: register(NoSchema)))
    plugin.__name__ = "no_schema_plugin"
    with pytest.raises(PluginError, match="Config has no JSON Schema"):
        make_registry(plugin)
