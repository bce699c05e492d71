"""Numbers a data scientist can trust (issue 14): intervals, paired tests, the protocol, degraded specs.

Real evaluations over the demo shop (and MovieLens where the data is present) through llmrec.eval.runner, then
the report's JSON, Markdown and HTML read back."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llmrec.data import Dataset, generate_demo, make_dataset
from llmrec.eval.html import to_html
from llmrec.eval.runner import evaluate
from llmrec.eval.stats import holm, interval, paired, randomization_p

PLUGIN = '''
import llmrec
from llmrec.node import NodeType
from llmrec.types import Candidates


class Broken(NodeType):
    """A reranker that always fails: the spec's fallback answers every request."""

    name = "trusttest.broken"

    async def run(self, candidates: Candidates) -> Candidates:
        raise RuntimeError("the model is down")


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(Broken)
'''

SPEC = """
version: 1
name: {name}
inputs:
  user_id: {{type: string}}
  k: {{type: integer, default: 10, minimum: 1, maximum: 100}}
resources:
  shop: {{type: dataset, config: {{name: demo, split: temporal}}}}
nodes:
  profile:
    type: user.profile
    inputs: {{catalog: "${{resources.shop.catalog}}", interactions: "${{resources.shop.train}}",
             user_id: "${{inputs.user_id}}"}}
  popular:
    type: retrieve.popular
    config: {{k: {k}}}
    inputs: {{interactions: "${{resources.shop.train}}"}}
  affinity:
    type: retrieve.category_affinity
    config: {{k: 100}}
    inputs: {{catalog: "${{resources.shop.catalog}}", interactions: "${{resources.shop.train}}",
             profile: "${{profile}}"}}
  blend:
    type: fuse
    config: {{weights: [1.0, 0.5]}}
    inputs: {{lists: ["${{affinity}}", "${{popular}}"]}}
  unseen:
    type: rerank.filter_seen
    inputs: {{candidates: "${{{source}}}", profile: "${{profile}}"}}
{extra}
  result:
    type: present.items
    inputs: {{candidates: "${{{last}}}", catalog: "${{resources.shop.catalog}}", profile: "${{profile}}",
             k: "${{inputs.k}}"}}
outputs:
  recommendations: "${{result}}"
"""

BROKEN = """  smart:
    type: trusttest.broken
    inputs: {candidates: "${unseen}"}
    fallback: {node: unseen}"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("trust")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "trusttest.py").write_text(PLUGIN, encoding="utf-8")
    out = {}
    for name, source, k, extra, last in [("personal", "blend", 100, "", "unseen"),
                                         ("popular", "popular", 100, "", "unseen"),
                                         ("short", "popular", 10, "", "unseen"),
                                         ("degraded", "blend", 100, BROKEN, "smart")]:
        path = folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(SPEC.format(name=name, source=source, k=k, extra=extra, last=last)),
                        encoding="utf-8")
        out[name] = path
    return out


@pytest.fixture(scope="module")
def demo() -> Dataset:
    shop = generate_demo(seed=7)
    return make_dataset("demo", shop.catalog, shop.interactions, "temporal")


# -- the statistics ----------------------------------------------------------------------------------------


def test_the_interval_is_the_protocols_bootstrap_and_shared_by_every_metric() -> None:
    values = np.random.default_rng(5).random(120)
    idx = np.random.default_rng(0).integers(0, 120, size=(1000, 120))  # PROTOCOLS.md: 1,000 resamples, seed 0
    means = values[idx].mean(axis=1)
    assert interval(values) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    lo, hi = interval(values)
    assert lo < values.mean() < hi


def test_the_randomization_p_agrees_with_scipys_permutation_test() -> None:
    from scipy.stats import permutation_test

    rng = np.random.default_rng(3)
    for shift in (0.0, 0.02, 0.08):
        a = rng.random(200)
        b = a - shift + rng.normal(0, 0.2, 200)
        ours = randomization_p(a - b)
        theirs = permutation_test((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), vectorized=True,
                                  permutation_type="samples", n_resamples=10_000,
                                  random_state=np.random.default_rng(1)).pvalue
        assert abs(ours - theirs) < 0.02  # two Monte Carlo estimates of one p-value (sd about 0.005)
    assert randomization_p(np.zeros(10)) == 1.0


def test_holm_adjusts_step_down_and_keeps_the_order() -> None:
    raw = [paired("m", "a", [float(i)], "b", [0.0]) for i in range(3)]
    raw = [r.__class__(**{**r.__dict__, "p": p, "p_adjusted": p}) for r, p in zip(raw, [0.04, 0.01, 0.03])]
    assert [round(r.p_adjusted, 6) for r in holm(raw)] == [0.06, 0.03, 0.06]


# -- reports over real evaluations ---------------------------------------------------------------------------


def test_every_metric_has_an_interval_and_every_pair_a_paired_test(specs: dict[str, Path], demo: Dataset) -> None:
    report = evaluate([specs["personal"], specs["popular"]], demo, ks=(5, 10), progress=False)
    personal, popular = report.results
    assert personal.case_ids == popular.case_ids and len(personal.case_ids) == len(demo.test_cases)
    for name, value in personal.metrics.items():
        if name in personal.case_values:
            lo, hi = personal.intervals[name]
            assert lo <= value <= hi
            assert value == pytest.approx(float(np.mean(personal.case_values[name])))
    comps = {c.metric: c for c in report.comparisons()}
    assert set(comps) == set(personal.case_values)
    c = comps["ndcg@10"]
    assert c.a == "personal" and c.b == "popular"
    assert c.diff == pytest.approx(personal.metrics["ndcg@10"] - popular.metrics["ndcg@10"])
    assert c.lo <= c.diff <= c.hi and 0 < c.p <= 1 and c.p_adjusted >= c.p
    assert c.significant == (c.p_adjusted < 0.05 and not c.lo <= 0 <= c.hi)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["results"][0]["intervals"]["ndcg@10"] == list(personal.intervals["ndcg@10"])
    assert {d["metric"] for d in data["comparisons"]} == set(comps)
    md = report.to_markdown()
    assert "## Paired comparisons" in md and "## Protocol" in md
    assert f"[{personal.intervals['ndcg@10'][0]:.4f}, {personal.intervals['ndcg@10'][1]:.4f}]" in md


def test_the_protocol_says_how_cases_were_made_and_flags_cutoffs_beyond_the_answers(specs: dict[str, Path],
                                                                                    demo: Dataset) -> None:
    report = evaluate([specs["short"]], demo, ks=(5, 20), progress=False)
    r = report.results[0]
    assert r.protocol["split"].startswith("temporal") and "rated >= 4" in r.protocol["relevance"]
    assert r.protocol["short_answers"]["20"] == len(r.case_ids)  # 10 popular items minus seen: never 20
    assert r.protocol["short_answers"]["5"] < len(r.case_ids)
    lines = report.protocol_lines()
    assert any("k=20 is longer than" in line for line in lines)
    assert any("score 0 on ndcg@" in line for line in lines)
    assert report.comparisons() == []  # one spec: nothing to compare


def test_a_spec_that_answered_from_its_fallback_is_marked_and_never_best(specs: dict[str, Path],
                                                                         demo: Dataset) -> None:
    report = evaluate([specs["degraded"], specs["popular"], specs["personal"]], demo, ks=(10,), progress=False)
    degraded, _, personal = report.results
    assert degraded.metrics == personal.metrics  # the fallback is the personal spec's own list
    assert report.fallback_shares()[0] == 1.0 and report.rankable() == [False, True, True]
    assert report.headers()[0] == "degraded [fallback 100%]"
    md = report.to_markdown()
    row = next(line for line in md.splitlines() if line.startswith("| ndcg@10 |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert not cells[0].startswith("**") and cells[2].startswith("**")  # the tie goes to the real spec only
    assert any("came from a fallback" in n and "the fallback's" in n for n in report.notes())
    fallback_row = next(line for line in md.splitlines() if line.startswith("| fallback rate |"))
    assert "**" not in fallback_row  # usage is not ranked
    page = to_html(report, images={})
    assert "degraded [fallback 100%]" in page and "Paired comparisons" in page
    data = report.to_dict()
    assert data["results"][0]["degraded"] is True and data["results"][1]["degraded"] is False



def test_movielens_reports_its_fallback_relevance_cases_and_unrecommendable_items() -> None:
    from llmrec.data.datasets import load_dataset

    ds = load_dataset("movielens-100k", split="temporal")
    fallback = [c for c in ds.test_cases if c.relevance_fallback]
    assert len(ds.test_cases) == 943 and len(fallback) == 103  # no held-out rating >= 4
    assert all(c.relevant for c in fallback)
    assert "rated >= 4" in ds.extra["protocol"]["relevance"]


def test_the_resume_store_is_keyed_on_what_produced_the_results(specs: dict[str, Path], demo: Dataset,
                                                                  tmp_path: Path) -> None:
    """Reused only when nothing changed: a template file, a local plugin or the data changing starts over."""
    folder = specs["personal"].parent
    (folder / "note.j2").write_text("for {{ user }}", encoding="utf-8")
    text = specs["personal"].read_text(encoding="utf-8").replace(
        "outputs:\n", '  note:\n    type: text.template\n    config: {template_file: note.j2}\n'
        '    inputs: {user: "${inputs.user_id}"}\noutputs:\n  note: "${note}"\n')
    spec = folder / "templated.yaml"
    spec.write_text(text.replace("name: personal", "name: templated"), encoding="utf-8")
    out = tmp_path / "runs"

    def reused(dataset: Dataset = demo) -> int:
        return evaluate([spec], dataset, ks=(10,), users=20, progress=False, out=out,
                        output="recommendations").results[0].reused

    assert reused() == 0 and reused() == 20  # the same run again: every case reused
    (folder / "note.j2").write_text("for user {{ user }}", encoding="utf-8")
    assert reused() == 0  # the template changed
    assert reused() == 20
    plugin = folder / "plugins" / "trusttest.py"
    plugin.write_text(plugin.read_text(encoding="utf-8") + "\n# fixed\n", encoding="utf-8")
    assert reused() == 0  # a local plugin changed
    assert reused() == 20
    fewer = dataclasses.replace(demo, train=type(demo.train)(list(demo.train)[:-50]))
    assert fewer.test_cases == demo.test_cases
    assert reused(fewer) == 0  # other training data; the same name, split and test cases


def test_a_column_that_cannot_start_is_reported_not_run_and_the_others_are_evaluated(
        specs: dict[str, Path], demo: Dataset, tmp_path: Path) -> None:
    """A variant whose model is not there (a fine-tuned folder not made yet) must not throw away the rest."""
    folder = specs["personal"].parent
    missing = folder / "needs_model.yaml"
    ask = '  ask:\n    type: core.identity\n    inputs: {value: "${resources.lm}"}\n'
    text = specs["personal"].read_text(encoding="utf-8").replace("name: personal", "name: needs-model")
    text = text.replace("resources:\n", "resources:\n  lm: {type: llm, config: {model: ./no-such-model}}\n")
    missing.write_text(text.replace("  result:\n", ask + "  result:\n"), encoding="utf-8")
    report = evaluate([specs["popular"], missing, specs["personal"]], demo, ks=(10,), users=15, progress=False)
    popular, broken, personal = report.results
    assert broken.not_run is not None and "no-such-model" in broken.not_run
    assert popular.n_cases == personal.n_cases == 15 and broken.n_cases == 0
    assert report.headers()[1] == "needs-model [not run]" and report.rankable() == [True, False, True]
    assert any(n.startswith("needs-model: not evaluated:") for n in report.notes())
    assert {(c.a, c.b) for c in report.comparisons()} == {("popular", "personal")}
    assert "0 cases" not in report.describe()
    assert report.to_dict()["results"][1]["not_run"] == broken.not_run
    assert sum("judge not run" in n for n in report.notes()) == 1  # one line for every column, as before
