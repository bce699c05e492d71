"""The plugin's own tests: what a plugin author ships next to the code.

Unit tests call the node types directly; the spec test runs the example spec through llmrec with the installed
plugin (``pip install -e .`` first) selected by LLMREC_LOAD_PLUGINS, using helpers from ``llmrec.testing``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmrec.plugins import get_registry
from llmrec.testing import errors_of, run_spec
from llmrec_example import RoundRobin, Sample, hit_rate_at_k

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.yaml"


async def test_sample_is_seeded_and_keeps_order() -> None:
    items = list(range(20))
    a = await Sample(Sample.Config(seed=3)).run(items=items, k=5)
    b = await Sample(Sample.Config(seed=3)).run(items=items, k=5)
    assert a == b and len(a) == 5 and a == sorted(a)
    assert await Sample(Sample.Config()).run(items=["x", "y"], k=5) == ["x", "y"]


async def test_round_robin_interleaves_and_dedupes() -> None:
    node = RoundRobin(RoundRobin.Config())
    assert await node.run(lists=[["a", "b", "c"], ["b", "d"], []]) == ["a", "b", "d", "c"]
    assert await RoundRobin(RoundRobin.Config(limit=2)).run(lists=[["a", "b"], ["c"]]) == ["a", "c"]


def test_config_forbids_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        Sample.Config(sed=1)


def test_hit_rate_at_k() -> None:
    assert hit_rate_at_k(["a", "b", "c"], {"c"}, k=3) == 1.0
    assert hit_rate_at_k(["a", "b", "c"], {"c"}, k=2) == 0.0


@pytest.fixture
def with_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        importlib.metadata.distribution("llmrec-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llmrec-example is not installed (pip install -e .)")
    monkeypatch.setenv("LLMREC_LOAD_PLUGINS", "example")


async def test_example_spec_runs(with_plugin: None) -> None:
    assert "example.sample" in get_registry().node_types
    assert errors_of(EXAMPLE) == []
    result = await run_spec(EXAMPLE, {"k": 2})
    assert len(result.outputs["explore"]) == 2
    assert result.outputs["mixed"][:2] == ["i2", "e1"]
