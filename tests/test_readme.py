"""The README's sample output is what its command prints (scripts/readme_samples.py writes it; this checks it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_samples", ROOT / "scripts" / "readme_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_sample_is_what_the_command_prints() -> None:
    samples = _script()
    m = samples.sample(samples.README.read_text(encoding="utf-8"))
    fresh = samples.render(samples.run(m["spec"], json.loads(m["input"])))
    assert fresh == m["body"], "README sample is stale: run .venv/bin/python scripts/readme_samples.py"
