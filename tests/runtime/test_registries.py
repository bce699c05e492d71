"""Context as parameters (issue 12): a graph checked with one registry starts against that registry. Two
registries in one process, one with a provider the other lacks; node and resource types get the registry
through their check/start/load contexts, never from a global."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import llmrec
from llmrec.graph.build import build
from llmrec.llm.provider import Completion, Usage
from llmrec.plugins import get_registry, make_registry
from llmrec.testing import write_spec

SPEC = """
version: 1
name: twin
resources:
  model: {type: llm, config: {provider: twin, model: m1}}
nodes:
  say:
    type: llm.prompt
    config: {template: "hello"}
    inputs: {model: "${resources.model}"}
outputs:
  text: ${say}
"""


class Twin:
    name = "twin"

    def __init__(self, model: str) -> None:
        self.model = model

    async def complete(self, request: object) -> Completion:
        return Completion(text=f"twin {self.model}", usage=Usage(prompt_tokens=1, completion_tokens=2),
                          attempts=1, model=self.model, provider="twin")


@llmrec.hookimpl
def llmrec_register_providers(register):  # type: ignore[no-untyped-def]
    register("twin", Twin)


def test_a_graph_runs_against_the_registry_it_was_checked_with(tmp_path: Path) -> None:
    path = write_spec(tmp_path, SPEC)
    with pytest.raises(llmrec.SpecErrors, match="unknown provider 'twin'"):
        llmrec.validate(path)  # the process-wide registry has no 'twin'
    plugin = SimpleNamespace(llmrec_register_providers=llmrec_register_providers)
    mine = make_registry(plugin)
    assert "twin" in mine.providers and "twin" not in get_registry(tmp_path).providers
    graph = build(llmrec.load_spec(path), mine)
    assert graph.registry is mine
    result = llmrec.Runtime(graph).run_sync({})
    assert result.outputs["text"] == "twin m1"
    assert result.trace.node("say").usage.calls == 1
