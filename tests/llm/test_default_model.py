"""The embedded default: an llm resource with no model uses $LLMREC_MODEL; with neither, LLM nodes take their
fallbacks and the response is marked degraded (a fresh install runs every shipped spec offline)."""

from __future__ import annotations

import pytest

from llmrec.api import check
from llmrec.nodes.llm import LlmConfig, resolve_route
from llmrec.testing import run_spec, write_spec

SPEC = """
name: default-model
inputs: {text: string}
resources:
  model: {type: llm}
nodes:
  tag:
    type: llm.label
    config: {labels: [sport, politics]}
    inputs: {model: "${resources.model}", text: "${inputs.text}"}
    fallback: {value: {label: sport}}
outputs:
  label: ${tag.label}
"""


def test_no_model_anywhere_warns_at_validation_and_falls_back(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("LLMREC_MODEL", raising=False)
    path = write_spec(tmp_path, SPEC)
    graph, errors, warnings = check(path)
    assert errors == [] and graph is not None
    assert any("no model configured" in w.format() and "LLMREC_MODEL" in w.format() for w in warnings)
    result = run_spec_sync(path, {"text": "The match ended 2-1."})
    assert result.outputs == {"label": "sport"} and result.degraded
    rec = result.trace.node("tag")
    assert rec.status == "fallback" and "LLMREC_MODEL" in rec.fallback_reason
    # the response itself says which node fell back, to what, and why
    (fell,) = result.to_dict()["fallbacks"]
    assert fell["node"] == "tag" and fell["to"] == "value" and "no model configured" in fell["reason"]


def run_spec_sync(path, inputs):
    import asyncio

    return asyncio.run(run_spec(path, inputs))


def test_llmrec_model_fills_a_missing_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_MODEL", "openai/gpt-4o-mini")
    route = resolve_route(LlmConfig(timeout="5s"))
    assert route.provider == "litellm" and route.model == "openai/gpt-4o-mini" and route.timeout == 5.0
    graph, errors, warnings = check(write_spec(tmp_path, SPEC))
    assert errors == [] and not any("no model configured" in w.format() for w in warnings)


def test_a_local_folder_in_llmrec_model_picks_the_transformers_provider(tmp_path, monkeypatch) -> None:
    (tmp_path / "tiny").mkdir()
    monkeypatch.setenv("LLMREC_MODEL", str(tmp_path / "tiny"))
    route = resolve_route(LlmConfig())
    assert route.provider == "transformers" and route.model == str(tmp_path / "tiny")


def test_the_spec_model_wins_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_MODEL", "openai/other")
    assert resolve_route(LlmConfig(provider="litellm", model="openai/mine")).model == "openai/mine"


def test_no_model_and_no_fallback_is_a_clear_run_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("LLMREC_MODEL", raising=False)
    path = write_spec(tmp_path, SPEC.replace("    fallback: {value: {label: sport}}\n", ""))
    from llmrec.errors import RunError

    with pytest.raises(RunError) as info:
        run_spec_sync(path, {"text": "x"})
    assert "no model configured" in str(info.value)


def test_a_model_folder_the_spec_names_is_relative_to_the_spec(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("LLMREC_MODEL", raising=False)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    route = resolve_route(LlmConfig(model="../models/tiny"), spec_dir)  # the spec's folder is a parameter
    assert route.provider == "transformers" and route.model == str(tmp_path / "models" / "tiny")
    # a path that does not exist yet is still a local folder (reported where it was looked for), never a
    # litellm model name
    missing = resolve_route(LlmConfig(model="../runs/none"), spec_dir)
    assert missing.provider == "transformers" and missing.model == str(tmp_path / "runs" / "none")
    assert resolve_route(LlmConfig(model="openai/gpt-4o-mini")).provider == "litellm"
