"""The README's sample output is what its command prints (scripts/readme_samples.py writes it; this checks it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_samples", ROOT / "scripts" / "readme_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _approx(value):
    """Scores to 1e-3: MiniLM's vectors differ in their last bits between CPUs (SIMD paths), which moves a fused
    score in the 5th decimal, and where two candidates nearly tie in one of the fused lists it can swap them there,
    which moves a reciprocal-rank-fusion score by up to 1/61 - 1/62 (2.6e-4) per list (seen: 3.7e-4 between two
    x86_64 machines); ids, ranks, titles and reasons must match exactly."""
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-3)
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx(v) for v in value]
    return value


def test_the_readme_sample_is_what_the_command_prints() -> None:
    samples = _script()
    m = samples.sample(samples.README.read_text(encoding="utf-8"))
    outputs = samples.run(m["spec"], json.loads(m["input"]))
    fresh = samples.render(outputs)
    assert json.loads(fresh) == _approx(json.loads(m["body"])), \
        "README sample is stale: run .venv/bin/python scripts/readme_samples.py"
