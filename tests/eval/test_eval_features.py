"""`llmrec eval` beyond ranking metrics: variants, resumable runs, LLM and grounding metrics, the judge, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.data import Dataset, generate_demo, make_dataset
from llmrec.errors import SpecErrors
from llmrec.eval.html import to_html, write_reports
from llmrec.eval.judge import DEFAULT_RUBRIC, JudgeError, load_rubric
from llmrec.eval.runner import evaluate
from llmrec.runtime.executor import Runtime
from llmrec.spec.variants import check_variant
from llmrec.testing import FakeProvider, write_spec

BLEND = """
version: 1
name: blend
inputs:
  user_id: {type: string}
  k: {type: integer, default: 10}
resources:
  shop: {type: dataset, config: {name: demo, split: temporal}}
nodes:
  profile:
    type: user.profile
    inputs: {catalog: "${resources.shop.catalog}", interactions: "${resources.shop.train}",
             user_id: "${inputs.user_id}"}
  popular:
    type: retrieve.popular
    config: {k: 100}
    inputs: {interactions: "${resources.shop.train}"}
  affinity:
    type: retrieve.category_affinity
    config: {k: 100}
    inputs: {catalog: "${resources.shop.catalog}", interactions: "${resources.shop.train}", profile: "${profile}"}
  blend:
    type: fuse
    config: {weights: [1.0, 0.2]}
    inputs: {lists: ["${affinity}", "${popular}"]}
  unseen:
    type: rerank.filter_seen
    inputs: {candidates: "${blend}", profile: "${profile}"}
  result:
    type: present.items
    inputs: {candidates: "${unseen}", catalog: "${resources.shop.catalog}", profile: "${profile}",
             k: "${inputs.k}"}
outputs:
  recommendations: ${result}
variants:
  popular_first:
    nodes.blend.config.weights: [0.05, 1.0]
  few:
    nodes.popular.config.k: 5
    nodes.affinity.config.k: 5
"""

# an LLM re-ranks the popular list; when the model fails the node falls back to the popular list itself
LLM = """
version: 1
name: llm-rank
inputs:
  user_id: {type: string}
resources:
  shop: {type: dataset, config: {name: demo, split: temporal}}
  model: {type: llm, config: {provider: litellm, model: openai/stub}}
nodes:
  popular:
    type: retrieve.popular
    config: {k: 8}
    inputs: {interactions: "${resources.shop.train}"}
  ranked:
    type: llm.rank
    config: {mode: listwise, max_retries: 1}
    inputs: {model: "${resources.model}", catalog: "${resources.shop.catalog}", candidates: "${popular}"}
    fallback: {node: popular}
outputs:
  items: ${ranked}
"""

# answers that break every grounding rule: an unknown id, a repeated one, and (for most users) seen ones
GROUNDING = """
version: 1
name: ungrounded
inputs:
  user_id: {type: string}
resources:
  shop: {type: dataset, config: {name: demo, split: temporal}}
nodes:
  answer:
    type: core.identity
    inputs: {value: ["no-such-item", "%s", "%s", "%s"]}
outputs:
  items: ${answer}
"""


@pytest.fixture(scope="module")
def demo() -> Dataset:
    shop = generate_demo()
    return make_dataset("demo", shop.catalog, shop.interactions, "temporal")


@pytest.fixture(scope="module")
def blend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("blend"), BLEND, "blend.yaml")


# -- variants ----------------------------------------------------------------------------------------------------


def test_variants_are_evaluated_side_by_side(blend: Path, demo: Dataset) -> None:
    report = evaluate([blend], demo, ks=(10,), users=40, progress=False, variants=True)
    base, popular_first, few = report.results
    assert [r.variant for r in report.results] == [None, "popular_first", "few"]
    assert report.labels() == ["blend.yaml", "blend.yaml[popular_first]", "blend.yaml[few]"]
    # leaning on popularity covers less of the catalog; 5 + 5 candidates cannot fill a top 10
    assert popular_first.metrics["coverage@10"] < base.metrics["coverage@10"]
    assert popular_first.metrics["ndcg@10"] != base.metrics["ndcg@10"]
    assert few.metrics["precision@10"] < base.metrics["precision@10"]
    picked = evaluate([blend], demo, ks=(10,), users=10, progress=False, variants=["few"])
    assert [r.label for r in picked.results] == ["blend", "blend.yaml[few]"]
    assert picked.results[1].metrics == pytest.approx(
        evaluate([(blend, "few")], demo, ks=(10,), users=10, progress=False).results[0].metrics)


def test_variant_errors_name_the_variant_the_path_and_the_line(tmp_path: Path, demo: Dataset) -> None:
    text = BLEND + "  typo:\n    nodes.blnd.config.weights: [1, 1]\n  bad_value:\n    nodes.popular.config.k: -1\n"
    spec = write_spec(tmp_path, text, "v.yaml")
    line = text.lstrip("\n").splitlines().index("    nodes.blnd.config.weights: [1, 1]") + 1
    _, errors, _ = check_variant(spec, "typo")
    (msg,) = [e.format() for e in errors]
    assert f"v.yaml:{line}:5" in msg and "variant 'typo'" in msg and "'nodes.blnd.config.weights'" in msg
    assert "'nodes' has no 'blnd'" in msg
    _, errors, _ = check_variant(spec, "bad_value")
    assert any(f"v.yaml:{line + 2}:" in e.format() and "'k'" in e.format() for e in errors)
    with pytest.raises(SpecErrors):
        evaluate([spec], demo, users=2, progress=False, variants=["typo"])
    _, errors, _ = check_variant(spec, "nope")
    assert "no variant 'nope'" in errors[0].format() and "popular_first" in errors[0].format()


def test_cli_variants(blend: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMREC_MODEL", raising=False)
    code = main(["eval", str(blend), "--users", "8", "--k", "10", "--variants", "popular_first", "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert [r["label"] for r in data["results"]] == ["blend.yaml", "blend.yaml[popular_first]"]
    assert data["results"][0]["judge"]["run"] is False
    assert "--judge-model" in data["results"][0]["judge"]["reason"]
    code = main(["eval", str(blend), "--variants", "nope"])
    _, err = capsys.readouterr()
    assert code == 2 and "no spec declares variant 'nope'" in err and "Traceback" not in err


# -- resume ------------------------------------------------------------------------------------------------------


def test_interrupted_run_resumes_where_it_stopped(blend: Path, demo: Dataset, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    full = evaluate([blend], demo, ks=(5, 10), users=30, progress=False, out=tmp_path / "full", concurrency=1)
    original = Runtime.run
    calls: list[str] = []

    async def stops_after_12(self: Runtime, inputs: object = None, **kwargs: object) -> object:
        if len(calls) == 12:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        calls.append(str(inputs))
        return await original(self, inputs, **kwargs)

    monkeypatch.setattr(Runtime, "run", stops_after_12)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate([blend], demo, ks=(5, 10), users=30, progress=False, out=out, concurrency=1)
    (stored,) = out.glob("*.jsonl")
    assert len(stored.read_text().splitlines()) == 1 + 12  # header + the cases that completed
    with open(stored, "a", encoding="utf-8") as f:
        f.write('{"case": "u99", "ok": tr')  # killed in the middle of writing a line

    counted: list[str] = []

    async def counting(self: Runtime, inputs: object = None, **kwargs: object) -> object:
        counted.append(str(inputs))
        return await original(self, inputs, **kwargs)

    monkeypatch.setattr(Runtime, "run", counting)
    notices: list[str] = []
    resumed = evaluate([blend], demo, ks=(5, 10), users=30, progress=False, out=out, log=notices.append)
    (r,) = resumed.results
    assert len(counted) == 30 - 12 and r.reused == 12  # only the remaining cases ran
    assert "resumed 12 of 30 cases" in notices[0]
    assert r.metrics == pytest.approx(full.results[0].metrics, abs=1e-12)
    assert r.grounding == full.results[0].grounding
    lines = stored.read_text().splitlines()
    assert len(lines) == 1 + 30 and all(json.loads(line) for line in lines)  # the broken tail was cut off
    counted.clear()
    again = evaluate([blend], demo, ks=(5, 10), users=30, progress=False, out=out)
    assert counted == [] and again.results[0].reused == 30
    # another cutoff, another user count, a variant: never mixed with these results
    evaluate([blend], demo, ks=(10,), users=30, progress=False, out=out)
    evaluate([(blend, "few")], demo, ks=(5, 10), users=30, progress=False, out=out)
    assert len(counted) == 60 and len(list(out.glob("*.jsonl"))) == 3
    counted.clear()
    fresh = evaluate([blend], demo, ks=(5, 10), users=30, progress=False, out=out, fresh=True)
    assert len(counted) == 30 and fresh.results[0].reused == 0


# -- LLM metrics, grounding, judge ---------------------------------------------------------------------------------


def test_llm_metrics_from_the_traces(tmp_path: Path, demo: Dataset) -> None:
    spec = write_spec(tmp_path, LLM, "llm.yaml")
    calls = {"n": 0}

    def reply(request: object) -> object:
        calls["n"] += 1
        allowed = list(request.choices[0].values)  # type: ignore[attr-defined]
        if calls["n"] % 4 == 0:
            raise RuntimeError("model down")  # every 4th call fails: that request falls back to popularity
        return {"ranking": list(reversed(allowed))}

    fake = FakeProvider(reply, cost_per_token=1e-6)
    report = evaluate([spec], demo, ks=(5,), users=12, progress=False, resources={"model": fake}, concurrency=1)
    llm = report.results[0].llm
    assert llm["llm_nodes"] == 1 and llm["node_runs"] == 12
    assert fake.calls == 12 and llm["calls"] == 9  # the calls that answered (a raised call reports no attempts)
    failed = llm["fallback_requests"]
    assert failed == 3 and llm["fallback_rate"] == pytest.approx(3 / 12)
    assert llm["fallbacks_by_node"] == {"ranked": 3}
    assert llm["prompt_tokens"] > 0 and llm["completion_tokens"] > 0
    assert llm["cost"] == pytest.approx((llm["prompt_tokens"] + llm["completion_tokens"]) * 1e-6)
    assert llm["cache_hit_rate"] == 0.0
    assert report.results[0].failures == 0  # fallbacks answer: not failures


def test_specs_without_llm_nodes_show_n_a(blend: Path, demo: Dataset) -> None:
    report = evaluate([blend], demo, ks=(10,), users=5, progress=False)
    llm = report.results[0].llm
    assert (llm["llm_nodes"], llm["calls"], llm["cost"], llm["cache_hit_rate"]) == (0, 0, 0.0, None)
    assert report.to_dict()["results"][0]["llm"]["cache_hit_rate"] is None
    assert all(not label.startswith("LLM") for label, *_ in report.llm_rows())


def test_grounding_violations(tmp_path: Path, demo: Dataset) -> None:
    case = demo.test_cases[0]
    user = case.inputs["user_id"]
    seen = sorted(demo.train.seen(user))[0]
    unseen = next(i.id for i in demo.catalog if i.id not in demo.train.seen(user))
    spec = write_spec(tmp_path, GROUNDING % (seen, unseen, unseen), "g.yaml")
    report = evaluate([spec], demo, ks=(5,), users=1, progress=False)
    g = report.results[0].grounding
    assert (g["items"], g["hallucinated"], g["duplicate"], g["seen"]) == (4, 1, 1, 1)
    assert g["hallucinated_rate"] == pytest.approx(0.25) and g["violation_rate"] == 1.0


def test_judge_scores_each_answer(blend: Path, demo: Dataset, tmp_path: Path) -> None:
    def reply(request: object) -> object:
        text = request.messages[-1].content  # type: ignore[attr-defined]
        assert "user_history" in text and "recommendations" in text
        return {"rationale": "fine", "scores": {"relevance": 4, "diversity": 2, "personalisation": 3}}

    judge = FakeProvider(reply)
    report = evaluate([blend], demo, ks=(10,), users=6, progress=False, judge=judge)
    j = report.results[0].judge
    assert j["run"] and j["judged"] == 6 and j["failed"] == 0 and judge.calls == 6
    assert j["means"] == {"relevance": 4.0, "diversity": 2.0, "personalisation": 3.0}
    assert j["overall"] == pytest.approx(3.0) and set(j["criteria"]) == set(DEFAULT_RUBRIC)
    rows = {label: values for label, values, *_ in report.llm_rows()}
    assert rows["judge relevance"] == [4.0] and rows["judge overall"] == [3.0]
    # a rubric of one's own; a judge that fails is counted, not fatal
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("criteria:\n  novelty: surprising yet fitting items\n", encoding="utf-8")
    scores = iter([{"rationale": "x", "scores": {"novelty": 5}}, RuntimeError("judge down")] * 3)
    custom = evaluate([blend], demo, ks=(10,), users=6, progress=False, concurrency=1,
                      judge=FakeProvider(lambda request: next(scores)), judge_rubric=load_rubric(rubric))
    j = custom.results[0].judge
    assert j["means"] == {"novelty": 5.0} and (j["judged"], j["failed"]) == (3, 3) and "judge down" in j["first_error"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- relevance\n", encoding="utf-8")
    with pytest.raises(JudgeError, match="must map criterion names"):
        load_rubric(bad)
    with pytest.raises(JudgeError, match="not found"):
        load_rubric(tmp_path / "missing.yaml")
    none = evaluate([blend], demo, ks=(10,), users=2, progress=False)
    assert none.results[0].judge["run"] is False and "--judge-model" in none.results[0].judge["reason"]


# -- reports -------------------------------------------------------------------------------------------------------


def test_markdown_and_self_contained_html(blend: Path, demo: Dataset, tmp_path: Path) -> None:
    report = evaluate([blend], demo, ks=(5, 10), users=20, progress=False, variants=["popular_first"])
    files = write_reports(report, tmp_path / "report")
    page = files["html"].read_text(encoding="utf-8")
    assert '<img src="data:image/png;base64,' in page
    assert page.count('<img src="data:image/png;base64,') == 2  # metric@k curves and latency
    assert "blend.yaml" in page and "blend.yaml[popular_first]" in page
    for name in ("ndcg@10", "coverage@5"):
        for r in report.results:
            assert f"{r.metrics[name]:.4f}" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    md = files["markdown"].read_text(encoding="utf-8")
    assert "| metric | blend.yaml | blend.yaml[popular_first] |" in md
    assert f"{report.results[1].metrics['ndcg@10']:.4f}" in md and "](plot1.png)" in md
    assert (tmp_path / "report" / "plot1.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(files["json"].read_text())["results"][1]["variant"] == "popular_first"
    assert "judge not run" in to_html(report, images={})


def test_cli_report_and_resume(blend: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMREC_MODEL", raising=False)
    args = ["eval", str(blend), "--users", "6", "--k", "10", "--variants", "none"]
    assert main([*args, "--report", "rep"]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()
    assert list((tmp_path / "runs" / "eval").glob("*/blend-*.jsonl"))
    assert main(args) == 0
    _, err = capsys.readouterr()
    assert "resumed 6 of 6 cases" in err
    assert main([*args, "--fresh"]) == 0
    _, err = capsys.readouterr()
    assert "resumed" not in err
    rubric = tmp_path / "r.yaml"
    rubric.write_text("criteria: [a]\n", encoding="utf-8")
    assert main([*args, "--judge-rubric", str(rubric)]) == 4
    _, err = capsys.readouterr()
    assert "must map criterion names" in err and "Traceback" not in err


SLOW_PLUGIN = '''
import asyncio
from llmrec import hookimpl
from llmrec.node import NodeType
from llmrec.types import Candidates


class Slow(NodeType):
    name = "test.slow"

    async def run(self, items: Candidates) -> Candidates:
        await asyncio.sleep(0.2)
        return items


@hookimpl
def llmrec_register_node_types(register):
    register(Slow)
'''

SLOW_SPEC = """
name: slow
inputs:
  user_id: {type: string}
  k: {type: integer, default: 10}
resources:
  shop: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 30}}}
nodes:
  popular:
    type: retrieve.popular
    inputs: {interactions: "${resources.shop.train}"}
  slow:
    type: test.slow
    inputs: {items: "${popular}"}
outputs: {items: "${slow}"}
"""


def test_ctrl_c_during_eval_exits_130_says_what_was_kept_and_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow.py").write_text(SLOW_PLUGIN)
    spec = write_spec(tmp_path, SLOW_SPEC)
    out_dir = tmp_path / "evalout"
    cmd = [sys.executable, "-m", "llmrec", "eval", str(spec), "--concurrency", "1", "--out", str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until a few cases are stored
        files = list(out_dir.glob("*.jsonl"))
        if files and sum(1 for _ in files[0].open()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted:" in stderr and "case results kept in" in stderr and "to resume" in stderr
    assert "Traceback" not in stderr and "ndcg" not in stdout.lower()  # no report as if it had finished
    kept = sum(1 for _ in next(out_dir.glob("*.jsonl")).open()) - 1  # the header line
    assert f"interrupted: {kept} case result" in stderr
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and f"resumed {kept} of 30 cases" in again.stdout + again.stderr
