"""`llmrec plugin new NAME`: the package it writes installs (pip, offline) and passes its own tests at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmrec.cli import main
from llmrec.scaffold import ScaffoldError, names


def test_a_new_plugin_installs_and_passes_its_own_tests(tmp_path, capsys) -> None:
    assert main(["plugin", "new", "price-cap", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "llmrec-price-cap"
    assert f"next: cd {root}" in capsys.readouterr().err
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--no-cache-dir", "--quiet", "--target", str(target), str(root)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "llmrec_price_cap-0.1.0.dist-info" / "entry_points.txt").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("LLMREC_LOAD_PLUGINS", None)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=root, env=env, capture_output=True, text=True,
                           timeout=300)
    assert tests.returncode == 0 and "4 passed" in tests.stdout, tests.stdout[-3000:] + tests.stderr[-2000:]
    plugins = subprocess.run([sys.executable, "-m", "llmrec", "plugins", "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert '"price_cap"' in plugins.stdout and "price_cap.price_cap" in plugins.stdout, plugins.stderr
    assert main(["plugin", "new", "price-cap", "--dir", str(tmp_path)]) == 2  # never over an existing package
    assert "already holds a plugin" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["Price", "1st", "a b", "x--y", "-x", ""])
def test_plugin_names_are_checked(bad) -> None:
    with pytest.raises(ScaffoldError):
        names(bad)
    assert names("llmrec-acme") == {"dist": "llmrec-acme", "module": "llmrec_acme", "ns": "acme"}
