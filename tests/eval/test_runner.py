"""The evaluation runner (llmrec/eval/runner.py) over the demo shop, split temporally, and its report."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from llmrec.data import Dataset, generate_demo, make_dataset
from llmrec.errors import SpecErrors
from llmrec.metrics import ndcg_at_k, recall_at_k
from llmrec.eval.runner import EvalError, answer_ids, evaluate, parse_ks
from llmrec.types import Candidates, Recommendation, Recommendations, ScoredItem

# A local plugin beside the specs: a resource that provides a Dataset (the demo shop, split), counting its
# loads, and a node that fails for chosen users.
PLUGIN = '''
from pydantic import BaseModel, ConfigDict
import llmrec
from llmrec.data import Dataset, generate_demo, make_dataset
from llmrec.node import NodeType, ResourceType
from llmrec.types import Candidates, UserProfile

LOADS = []


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: str = "temporal"


class DemoSplit(ResourceType):
    name = "evaltest.dataset"
    provides = Dataset
    Config = DataConfig

    async def load(self):
        LOADS.append(self.config.split)
        demo = generate_demo()
        return make_dataset("demo", demo.catalog, demo.interactions, self.config.split)


class FlakyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_users: list[str] = []


class Flaky(NodeType):
    name = "evaltest.flaky"
    Config = FlakyConfig

    async def run(self, candidates: Candidates, profile: UserProfile) -> Candidates:
        if profile.user_id in self.config.fail_users:
            raise RuntimeError(f"cannot serve {profile.user_id}")
        return candidates


@llmrec.hookimpl
def llmrec_register_resource_types(register):
    register(DemoSplit)


@llmrec.hookimpl
def llmrec_register_node_types(register):
    register(Flaky)
'''

HEAD = """
version: 1
name: {name}
inputs:
  user_id: {{type: string}}
  k: {{type: integer, default: 10, minimum: 1, maximum: 100}}
resources:
  data: {{type: evaltest.dataset}}
nodes:
  profile:
    type: user.profile
    inputs: {{catalog: "${{resources.data.catalog}}", interactions: "${{resources.data.interactions}}",
             user_id: "${{inputs.user_id}}"}}
  popular:
    type: retrieve.popular
    config: {{k: 100}}
    inputs: {{interactions: "${{resources.data.interactions}}"}}
"""

PERSONAL = HEAD + """
  affinity:
    type: retrieve.category_affinity
    config: {{k: 100}}
    inputs: {{catalog: "${{resources.data.catalog}}", interactions: "${{resources.data.interactions}}",
             profile: "${{profile}}"}}
  blend:
    type: fuse
    config: {{weights: [1.0, 0.5]}}
    inputs: {{lists: ["${{affinity}}", "${{popular}}"]}}
  unseen:
    type: rerank.filter_seen
    inputs: {{candidates: "${{blend}}", profile: "${{profile}}"}}
{extra}
  result:
    type: present.items
    inputs: {{candidates: "${{{last}}}", catalog: "${{resources.data.catalog}}", profile: "${{profile}}",
             k: "${{inputs.k}}"}}
outputs:
{outputs}
"""

POPULAR = HEAD + """
  unseen:
    type: rerank.filter_seen
    inputs: {{candidates: "${{popular}}", profile: "${{profile}}"}}
  result:
    type: present.items
    inputs: {{candidates: "${{unseen}}", catalog: "${{resources.data.catalog}}", profile: "${{profile}}",
             k: "${{inputs.k}}"}}
outputs:
  recommendations: "${{result}}"
"""

FAIL_USERS = ["u3", "u7", "u11"]


def _spec(folder: Path, file: str, text: str) -> Path:
    path = folder / file
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("eval")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "evaltest.py").write_text(PLUGIN, encoding="utf-8")
    flaky = (f"  flaky:\n    type: evaltest.flaky\n    config: {{fail_users: {json.dumps(FAIL_USERS)}}}\n"
             '    inputs: {candidates: "${unseen}", profile: "${profile}"}')
    return {
        "personal": _spec(folder, "personal.yaml", PERSONAL.format(
            name="personal", extra="", last="unseen", outputs='  recommendations: "${result}"')),
        "popular": _spec(folder, "popular.yaml", POPULAR.format(name="popular")),
        "flaky": _spec(folder, "flaky.yaml", PERSONAL.format(
            name="flaky", extra=flaky, last="flaky", outputs='  recommendations: "${result}"')),
        "outputs": _spec(folder, "outputs.yaml", PERSONAL.format(
            name="outputs", extra="", last="unseen",
            outputs='  who: "${inputs.user_id}"\n  cands: "${unseen}"\n  recommendations: "${result}"')),
        "query": _spec(folder, "query.yaml", """
            version: 1
            name: query
            inputs:
              query: {type: string}
            resources:
              data: {type: evaltest.dataset}
            nodes:
              search:
                type: retrieve.bm25
                inputs: {catalog: "${resources.data.catalog}", query: "${inputs.query}"}
            outputs:
              hits: "${search}"
            """),
    }


@pytest.fixture(scope="module")
def demo() -> Dataset:
    shop = generate_demo()
    return make_dataset("demo", shop.catalog, shop.interactions, "temporal")


def _loads() -> list[str]:
    module = next(m for name, m in sys.modules.items() if name.startswith("llmrec_local_plugins.evaltest"))
    return module.LOADS


def test_scores_every_case_and_matches_per_case_metrics(specs: dict[str, Path], demo: Dataset,
                                                        tmp_path: Path) -> None:
    results = tmp_path / "cases.jsonl"
    report = evaluate([specs["personal"]], demo, ks=(5, 10, 20), users=40, progress=False, results_path=results)
    (r,) = report.results
    assert (r.spec, r.dataset, r.split, r.n_cases, r.failures) == ("personal", "demo", "temporal", 40, 0)
    assert r.output == "recommendations"
    for name in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage", "entropy", "entropy_norm",
                 "ild", "novelty", "popularity_bias"):
        for k in (5, 10, 20):
            assert f"{name}@{k}" in r.metrics
    assert 0 < r.metrics["ndcg@10"] <= 1 and 0 < r.metrics["coverage@10"] <= 1
    assert r.metrics["recall@5"] <= r.metrics["recall@10"] <= r.metrics["recall@20"]
    assert set(r.latency_ms) >= {"p50", "p95", "p99"} and r.latency_ms["p50"] <= r.latency_ms["p99"]
    # one JSON line per case; recomputing from the recorded answers gives the reported means
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(rec["case"] for rec in records) == sorted(c.id for c in demo.test_cases[:40])
    cases = {c.id: c for c in demo.test_cases}
    ndcg = [ndcg_at_k(rec["ids"], cases[rec["case"]].relevant, 10) for rec in records]
    recall = [recall_at_k(rec["ids"], cases[rec["case"]].relevant, 20) for rec in records]
    assert r.metrics["ndcg@10"] == pytest.approx(sum(ndcg) / len(ndcg))
    assert r.metrics["recall@20"] == pytest.approx(sum(recall) / len(recall))
    for rec in records:
        assert rec["ok"] and rec["error"] is None
        assert len(rec["ids"]) == 20  # the spec declares k: eval passes max(ks)
        assert not set(rec["ids"]) & cases[rec["case"]].exclude  # nothing seen in training
        assert len(set(rec["ids"])) == len(rec["ids"])


def test_given_dataset_is_preloaded_into_the_dataset_resource(specs: dict[str, Path], demo: Dataset) -> None:
    before = len(_loads()) if any(n.startswith("llmrec_local_plugins.evaltest") for n in sys.modules) else 0
    shop = generate_demo()
    leave_last = dataclasses.replace(make_dataset("demo", shop.catalog, shop.interactions, "leave-last"),
                                     name="demo-leave-last")
    report = evaluate([specs["personal"], specs["popular"]], leave_last, ks=(10,), users=15, progress=False)
    assert [(r.dataset, r.split, r.n_cases) for r in report.results] == [("demo-leave-last", "leave-last", 15)] * 2
    assert len(_loads()) == before  # the spec's own resource never loaded
    assert all(not r.warnings for r in report.results)


def test_without_a_dataset_each_spec_reads_its_own_loaded_once(specs: dict[str, Path], demo: Dataset) -> None:
    evaluate([specs["popular"]], demo, ks=(10,), users=1, progress=False)  # the plugin module is imported
    before = len(_loads())
    report = evaluate([specs["personal"], specs["popular"]], None, ks=(10,), users=10, progress=False)
    assert [(r.dataset, r.split, r.n_cases) for r in report.results] == [("demo", "temporal", 10)] * 2
    assert _loads()[before:] == ["temporal"]  # one load for both specs (same resource config)


def test_side_by_side_report_and_beyond_accuracy_behaviour(specs: dict[str, Path], demo: Dataset) -> None:
    report = evaluate([specs["personal"], specs["popular"]], demo, ks=(10,), users=60, progress=False)
    personal, popular = report.results
    # a popularity list barely changes between users: it covers less of the catalog, with less diverse
    # answers, of more popular (less novel) items
    assert popular.metrics["coverage@10"] < personal.metrics["coverage@10"]
    assert popular.metrics["entropy@10"] < personal.metrics["entropy@10"]
    assert popular.metrics["popularity_bias@10"] > personal.metrics["popularity_bias@10"]
    assert popular.metrics["novelty@10"] < personal.metrics["novelty@10"]
    data = report.to_dict()
    assert [d["spec"] for d in data["results"]] == ["personal", "popular"]
    assert data["ks"] == [10]
    assert set(data["results"][0]) >= {"spec", "dataset", "split", "n_cases", "metrics", "latency_ms", "failures"}
    json.dumps(data)  # plain JSON
    table = report.table()
    assert [c.header for c in table.columns] == ["metric", "personal", "popular"]
    rows = {table.columns[0]._cells[i]: (table.columns[1]._cells[i], table.columns[2]._cells[i])
            for i in range(table.row_count)}
    assert rows["coverage@10"][0].startswith("[bold]") and not rows["coverage@10"][1].startswith("[bold]")
    # lower popularity bias is the better value
    assert rows["popularity_bias@10"][0].startswith("[bold]")
    console = Console(record=True, width=120)
    report.render(console)
    text = console.export_text()
    assert "personal" in text and "popular" in text and "ndcg@10" in text and "latency p95" in text


def test_deterministic(specs: dict[str, Path], demo: Dataset) -> None:
    first = evaluate([specs["personal"]], demo, ks=(5, 10), users=25, concurrency=8, progress=False)
    second = evaluate([specs["personal"]], demo, ks=(5, 10), users=25, concurrency=1, progress=False)
    assert first.results[0].metrics == second.results[0].metrics


def test_failing_cases_are_counted_not_fatal(specs: dict[str, Path], demo: Dataset, tmp_path: Path) -> None:
    results = tmp_path / "flaky.jsonl"
    report = evaluate([specs["flaky"], specs["personal"]], demo, ks=(10,), users=20, progress=False,
                      results_path=results)
    flaky, personal = report.results
    failing = [c.id for c in demo.test_cases[:20] if c.id in FAIL_USERS]
    assert failing and flaky.failures == len(failing) and personal.failures == 0
    assert flaky.n_cases == 20
    assert any("cannot serve" in m and "flaky" in m for m in flaky.failure_messages)
    # a failed case scores as an empty answer: the others match the healthy spec exactly
    assert flaky.metrics["hit_rate@10"] == pytest.approx(
        personal.metrics["hit_rate@10"] - sum(1 for rec in map(json.loads, results.read_text().splitlines())
                                              if rec["spec"] == "personal" and rec["case"] in failing
                                              and rec["metrics"]["hit_rate@10"]) / 20)
    bad = [json.loads(line) for line in results.read_text().splitlines()]
    assert {rec["case"] for rec in bad if not rec["ok"]} == set(failing)


def test_output_choice(specs: dict[str, Path], demo: Dataset) -> None:
    auto = evaluate([specs["outputs"]], demo, ks=(10,), users=10, progress=False)
    assert auto.results[0].output == "cands"  # 'who' is a string, not a list: the first list output wins
    named = evaluate([specs["outputs"]], demo, ks=(10,), users=10, output="recommendations", progress=False)
    assert named.results[0].output == "recommendations"
    with pytest.raises(EvalError, match="no output 'nope'.*who, cands, recommendations"):
        evaluate([specs["outputs"]], demo, ks=(10,), users=5, output="nope", progress=False)
    wrong = evaluate([specs["outputs"]], demo, ks=(10,), users=3, output="who", progress=False)
    assert wrong.results[0].failures == 3
    assert "not Recommendations, Candidates or a list of ids" in wrong.results[0].failure_messages[0]


def test_user_mistakes_are_clear_errors(specs: dict[str, Path], demo: Dataset, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="cannot take the test cases.*'query'.*the cases give: user_id"):
        evaluate([specs["query"]], demo, ks=(10,), progress=False)
    nothing = dataclasses.replace(demo, test_cases=())
    with pytest.raises(EvalError, match="no test cases"):
        evaluate([specs["personal"]], nothing, progress=False)
    with pytest.raises(EvalError, match="unknown metric 'ndgc'.*did you mean ndcg"):
        evaluate([specs["personal"]], demo, metrics=["ndgc"], progress=False)
    plain = tmp_path / "plain.yaml"
    plain.write_text("version: 1\nname: plain\nnodes:\n  x: {type: core.identity, inputs: {value: 1}}\n"
                     "outputs:\n  x: ${x}\n")
    with pytest.raises(EvalError, match="no dataset resource"):
        evaluate([plain], None, progress=False)
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nname: broken\nnodes:\n  x: {type: retrieve.popularr}\noutputs: {}\n")
    with pytest.raises(SpecErrors):
        evaluate([broken], demo, progress=False)


def test_parse_ks_and_answer_ids() -> None:
    assert parse_ks("20, 5,10,5") == (5, 10, 20)
    for bad, message in (("0,x", "at least 1|whole number"), ("", "at least one"), ("5,x", "'x' is not")):
        with pytest.raises(ValueError, match=message):
            parse_ks(bad)
    recs = Recommendations(user_id="u", items=[Recommendation(rank=1, id="a", title="A", score=1.0)])
    assert answer_ids(recs) == ["a"]
    assert answer_ids(Candidates(items=[ScoredItem(id="b", score=1.0)])) == ["b"]
    assert answer_ids(["c", "d"]) == ["c", "d"]
    assert answer_ids({"items": [{"id": "e"}]}) == ["e"]
    assert answer_ids("u1") is None and answer_ids(3) is None and answer_ids(None) is None
