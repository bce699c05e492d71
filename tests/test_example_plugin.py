"""The example third-party plugin (plugins/llmrec-example), installed for real and used through the real CLI.

The package is built and installed once, without network, into a temporary folder; the CLI then runs in a
subprocess that sees it through PYTHONPATH and loads it as an entry-point plugin.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SRC = ROOT / "plugins" / "llmrec-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build and install llmrec-example into a temporary --target folder (once for the module).

    pip builds in the source tree (build/, *.egg-info), so it builds from a copy to leave the checkout alone.
    """
    base = tmp_path_factory.mktemp("llmrec_example")
    src = base / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    target = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--no-cache-dir", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (target / "llmrec_example" / "__init__.py").is_file()
    assert (target / "llmrec_example-0.1.0.dist-info" / "entry_points.txt").is_file()
    return {"target": target, "src": src}


def cli(installed: dict[str, Path], *args: str, load: str | None = "example", cwd: Path | None = None):
    """Run ``python -m llmrec.cli ARGS`` in a subprocess that sees the installed plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(installed["target"]), env.get("PYTHONPATH")]))
    if load is None:
        env.pop("LLMREC_LOAD_PLUGINS", None)
    else:
        env["LLMREC_LOAD_PLUGINS"] = load
    env.pop("LLMREC_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "llmrec.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd or installed["src"], timeout=120,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def expected_sample(items: list, k: int, seed: int) -> list:
    """What example.sample computes: k indices drawn by random.Random(seed), in their original order."""
    if k >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), k))]


def expected_round_robin(lists: list[list]) -> list:
    out: list = []
    for i in range(max(map(len, lists))):
        for lst in lists:
            if i < len(lst) and lst[i] not in out:
                out.append(lst[i])
    return out


CANDIDATES = ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"]
EDITORS = ["i2", "e1", "e2"]
SEED = 7  # examples/sample.yaml: explore.config.seed


def test_plugins_json_lists_the_entry_point_plugin(installed) -> None:
    proc = cli(installed, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    example = rows["example"]
    assert example["source"] == "entry point"
    assert example["distribution"] == "llmrec-example" and example["version"] == "0.1.0"
    assert example["provides"]["node type"] == ["example.round_robin", "example.sample"]
    assert example["provides"]["metric"] == ["example.hit_rate_at_k"]
    assert example["status"] == "loaded" and example["api"] == ">=1,<2"  # the plugin API range it declares
    # built-ins are still there, beside it
    assert rows["llmrec.nodes.basic"]["source"] == "built-in"


def test_selected_by_distribution_name_too(installed) -> None:
    proc = cli(installed, "plugins", "--json", load="llmrec-example")
    assert proc.returncode == 0, proc.stderr
    assert "example" in {row["name"] for row in json.loads(proc.stdout)}


def test_plugins_table_shows_distribution_and_version(installed) -> None:
    proc = cli(installed, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert "llmrec-example 0.1.0" in proc.stdout and "example.sample" in proc.stdout


def test_validate_example_spec(installed) -> None:
    proc = cli(installed, "validate", "examples/sample.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "examples/sample.yaml: ok (4 nodes, 0 resources, 3 outputs)" in proc.stdout


@pytest.mark.parametrize("k", [3, 2, 0, 20])
def test_run_example_spec_computes_what_the_node_types_say(installed, k) -> None:
    proc = cli(installed, "run", "examples/sample.yaml", "--input", json.dumps({"k": k}))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    explore = expected_sample(CANDIDATES, k, SEED)
    mixed = expected_round_robin([EDITORS, explore])
    assert out == {
        "explore": explore,
        "mixed": mixed,
        "message": f"{len(mixed)} picks: {', '.join(mixed)}",
    }
    assert len(explore) == min(k, len(CANDIDATES))
    assert explore == [c for c in CANDIDATES if c in explore]  # relative order kept


def test_run_is_deterministic_by_seed(installed) -> None:
    first = cli(installed, "run", "examples/sample.yaml")
    second = cli(installed, "run", "examples/sample.yaml")
    assert first.returncode == second.returncode == 0
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert json.loads(first.stdout)["explore"] == expected_sample(CANDIDATES, 3, SEED)


def test_run_with_the_spec_given_by_absolute_path(installed, tmp_path) -> None:
    proc = cli(installed, "run", str(installed["src"] / "examples" / "sample.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["explore"] == expected_sample(CANDIDATES, 3, SEED)


def test_without_the_plugin_the_spec_is_invalid(installed) -> None:
    proc = cli(installed, "validate", "examples/sample.yaml", load="")
    assert proc.returncode == 1
    assert "unknown node type 'example.sample'" in proc.stdout
    assert "unknown node type 'example.round_robin'" in proc.stdout
    rows = json.loads(cli(installed, "plugins", "--json", load="").stdout)
    assert "example" not in {row["name"] for row in rows}


def test_run_without_the_plugin_fails_like_validate(installed) -> None:
    proc = cli(installed, "run", "examples/sample.yaml", load="")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "unknown node type 'example.sample'" in proc.stderr


def test_other_plugin_names_do_not_load_it(installed) -> None:
    proc = cli(installed, "validate", "examples/sample.yaml", load="something-else")
    assert proc.returncode == 1 and "unknown node type 'example.sample'" in proc.stdout


def test_lifecycle_hook_counts_node_runs_and_metric_is_registered(installed) -> None:
    """In-process in the subprocess: the registry has the metric, and the Counter sees every node run."""
    code = """
import json, llmrec, llmrec_example
from llmrec.plugins import get_registry
reg = get_registry()
metric = reg.metrics["example.hit_rate_at_k"]
llmrec_example.reset_node_run_counts()
result = llmrec.run("examples/sample.yaml", {"k": 2})
llmrec.run("examples/sample.yaml", {"k": 1})
print(json.dumps({
    "metric_is_function": metric is llmrec_example.hit_rate_at_k,
    "hit": metric(["a", "b", "c"], {"c"}, k=3),
    "miss": metric(["a", "b", "c"], {"c"}, k=2),
    "plugin": reg.metrics.entry("example.hit_rate_at_k").plugin.label(),
    "counts": llmrec_example.node_run_counts(),
}))
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(installed["target"]), env.get("PYTHONPATH")]))
    env["LLMREC_LOAD_PLUGINS"] = "example"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=installed["src"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["metric_is_function"] is True
    assert data["hit"] == 1.0 and data["miss"] == 0.0
    assert data["plugin"] == "llmrec-example 0.1.0"
    assert data["counts"] == {"core.identity": 2, "example.sample": 2, "example.round_robin": 2, "text.template": 2}


def test_the_plugins_own_tests_pass_against_the_installed_package(installed) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(installed["target"]), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          capture_output=True, text=True, env=env, cwd=installed["src"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout
