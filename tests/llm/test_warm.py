"""Providers warm up when the llm resource loads: a cold process does not spend its first request's timeout on
imports or weights (issue 11), and a provider that cannot warm up warns and falls back as before."""

from __future__ import annotations

import asyncio

import pytest

from llmrec.api import validate
from llmrec.runtime.executor import Runtime
from llmrec.testing import write_spec

SPEC = """
    name: warm
    inputs: {}
    resources:
      model: {type: llm, config: {provider: transformers, model: MODEL, max_tokens: 16}}
    nodes:
      say:
        type: llm.prompt
        config: {template: "hi"}
        inputs: {model: "${resources.model}"}
        fallback: {value: "fallback"}
    outputs: {say: "${say}"}
"""


def test_the_transformers_provider_has_its_weights_loaded_before_the_first_request(tiny_model_dir, tmp_path) -> None:
    spec = write_spec(tmp_path, SPEC.replace("MODEL", str(tiny_model_dir)))

    async def started():
        rt = Runtime(validate(spec))
        await rt.start()
        try:
            return rt.resources["model"]._loaded is not None
        finally:
            await rt.close()

    assert asyncio.run(started())


def test_a_provider_that_cannot_warm_up_warns_and_its_nodes_fall_back(tiny_model_dir, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(b"not weights")
    spec = write_spec(tmp_path, SPEC.replace("MODEL", str(broken)))

    async def run():
        rt = Runtime(validate(spec))
        try:
            return await rt.run({})
        finally:
            await rt.close()

    with pytest.warns(RuntimeWarning, match="could not be warmed up"):
        result = asyncio.run(run())
    assert result.degraded and result.outputs["say"] == "fallback"
