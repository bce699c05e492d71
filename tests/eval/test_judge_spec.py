"""The judge `llmrec eval` runs is a spec (llmrec/eval/judge.yaml) run through a Runtime, and users can swap it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.eval.judge import DEFAULT_RUBRIC, JUDGE_SPEC, EvalJudge, JudgeError
from llmrec.eval.runner import evaluate
from llmrec.testing import FakeProvider, write_spec

POPULAR = """
version: 1
name: popular
inputs:
  user_id: {type: string}
resources:
  shop: {type: dataset, config: {name: demo, split: temporal}}
nodes:
  popular:
    type: retrieve.popular
    config: {k: 10}
    inputs: {interactions: "${resources.shop.train}"}
outputs:
  items: ${popular}
"""

# a judge of one's own: a different rubric and prompt, the answer summarised by a template node first
OWN_JUDGE = """
version: 1
name: my-judge
inputs:
  subject: {type: object}
  request: {type: object}
resources:
  model: {type: llm, config: {model: openai/stub}}
nodes:
  shown:
    type: text.template
    config: {template: "{% for r in subject.recommendations %}{{ r.title }}; {% endfor %}"}
    inputs: {subject: "${inputs.subject}"}
  verdict:
    type: llm.judge
    config:
      criteria: {novelty: "surprising yet fitting items"}
      template: "Rate these picks: {{ subject }}. Criteria: {{ criteria }}"
    inputs: {model: "${resources.model}", subject: "${shown}", request: "${inputs.request}"}
outputs:
  judge: ${verdict}
"""


def reply(request: object) -> object:
    text = request.messages[-1].content  # type: ignore[attr-defined]
    names = [c for c in ("relevance", "diversity", "personalisation", "novelty") if c in text]
    return {"rationale": "ok", "scores": {c: 4 for c in names}}


def test_the_default_judge_is_the_builtin_spec() -> None:
    async def go() -> dict[str, object]:
        judge = await EvalJudge.open(provider=FakeProvider(reply))
        try:
            assert judge.runtime.graph.name == "eval-judge" and judge.spec == JUDGE_SPEC
            assert judge.criteria == DEFAULT_RUBRIC
            return await judge.score(["a"], None, ["b"])
        finally:
            await judge.close()

    scored = asyncio.run(go())
    assert scored["scores"] == {c: 4 for c in DEFAULT_RUBRIC} and scored["overall"] == 4.0
    assert scored["tokens"] > 0  # the node's ModelUsage, read from the run's trace


def test_judge_model_is_resolved_by_the_llm_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMREC_MODEL", raising=False)

    async def go(model: str) -> str:
        judge = await EvalJudge.open(model=model)
        await judge.close()
        return judge.model

    assert asyncio.run(go("openai/gpt-4o-mini")) == "openai/gpt-4o-mini"  # litellm, no call made at start
    with pytest.raises(JudgeError, match="judge"):
        asyncio.run(go("./no-such-model-folder"))  # a path: the transformers provider, which needs the folder


def test_a_rubric_is_checked_by_the_judge_node(tmp_path: Path) -> None:
    with pytest.raises(JudgeError, match="--judge-rubric.*plain identifiers|plain identifiers.*"):
        asyncio.run(EvalJudge.open(provider=FakeProvider(reply), criteria={"not valid": "x"}))


def test_a_judge_spec_of_ones_own(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, POPULAR, "popular.yaml")
    own = write_spec(tmp_path, OWN_JUDGE, "my_judge.yaml")
    provider = FakeProvider(reply)
    report = evaluate([spec], None, ks=(10,), users=3, progress=False, judge=provider, judge_spec=own)
    j = report.results[0].judge
    assert j["run"] and j["judged"] == 3 and j["means"] == {"novelty": 4.0} and provider.calls == 3
    sent = provider.requests[0].messages[-1].content
    assert sent.startswith("Rate these picks:") and ";" in sent  # its own template, over its own node's text


def test_a_bad_judge_spec_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, POPULAR, "popular.yaml")
    broken = write_spec(tmp_path, OWN_JUDGE.replace("judge: ${verdict}", "answer: ${verdict}"), "j.yaml")
    code = main(["eval", str(spec), "--users", "2", "--judge-spec", str(broken), "--judge-model", "openai/stub"])
    err = capsys.readouterr().err
    assert code == 4 and "output 'judge'" in err and "Traceback" not in err
    typo = write_spec(tmp_path, OWN_JUDGE.replace("type: llm.judge", "type: llm.jduge"), "typo.yaml")
    assert main(["eval", str(spec), "--users", "2", "--judge-spec", str(typo), "--judge-model", "openai/stub"]) == 4
    err = capsys.readouterr().err
    assert "typo.yaml:" in err and "llm.judge" in err  # positioned, with the did-you-mean
