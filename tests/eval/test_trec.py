"""`llmrec eval --trec DIR` (llmrec/eval/trec.py): run and qrels files that ranx, an independent library, reads
back to the same precision, recall, NDCG, MRR and hit rate as llmrec's own report, including the cases the TREC
formats cannot hold directly (an empty answer, nothing relevant) and graded gains."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
from ranx import Qrels, Run
from ranx import evaluate as ranx_evaluate

from llmrec.cli import main
from llmrec.data import Dataset, generate_demo, make_dataset
from llmrec.eval.report import EvalReport, SpecResult
from llmrec.eval.runner import evaluate
from llmrec.eval.trec import NO_RELEVANT_DOC, TrecError, trec_files, write_trec
from llmrec.testing import write_spec

# retrieve.popular, minus what the user has seen: with k: 4 candidates, some users have seen them all, and their
# answer is empty
SPEC = """
    version: 1
    name: {name}
    inputs:
      user_id: {{type: string}}
      k: {{type: integer, default: 10, minimum: 1, maximum: 50}}
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
      unseen:
        type: rerank.filter_seen
        inputs: {{candidates: "${{popular}}", profile: "${{profile}}"}}
      result:
        type: present.items
        inputs: {{candidates: "${{unseen}}", catalog: "${{resources.shop.catalog}}", profile: "${{profile}}",
                 k: "${{inputs.k}}"}}
    outputs:
      recommendations: "${{result}}"
"""
KS = (1, 5, 10)
# the metrics ranx computes as llmrec defines them (ranx's map@k divides by every relevant item, llmrec's by
# min(k, |relevant|), so MAP is left out: docs/evaluation.md)
SAME = ("precision", "recall", "ndcg", "mrr", "hit_rate")


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("trec-specs")
    return [write_spec(folder, SPEC.format(name="popular", k=100), "popular.yaml"),
            write_spec(folder, SPEC.format(name="popular four", k=4), "four.yaml")]


@pytest.fixture(scope="module")
def shop() -> Dataset:
    """The demo shop split temporally, with every ninth case left with nothing relevant and every third graded
    (gains 1, 2, 3), so that both rules of the export are exercised."""
    demo = generate_demo()
    data = make_dataset("demo", demo.catalog, demo.interactions, "temporal")
    cases = []
    for i, case in enumerate(data.test_cases):
        if i % 9 == 4:
            case = dataclasses.replace(case, relevant=frozenset())
        elif i % 3 == 1:
            case = dataclasses.replace(case, gains={r: float(1 + j % 3) for j, r in enumerate(sorted(case.relevant))})
        cases.append(case)
    return dataclasses.replace(data, test_cases=tuple(cases))


@pytest.fixture(scope="module")
def report(specs: list[Path], shop: Dataset) -> EvalReport:
    return evaluate(specs, shop, ks=KS, progress=False)


def _ranx(qrels_path: Path, run_path: Path, names: list[str]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety notes from inside ranx
        qrels = Qrels.from_file(str(qrels_path), kind="trec")
        run = Run.from_file(str(run_path), kind="trec")
        # every case is in the qrels; make_comparable gives the cases missing from the run an empty ranking
        scores = ranx_evaluate(qrels, run, names, make_comparable=True)
    return {name: float(scores[name]) for name in names}


def test_ranx_reproduces_llmrec_metrics(report: EvalReport, tmp_path: Path) -> None:
    popular, four = report.results
    assert sum(1 for a in four.answers if not a) >= 5  # empty answers: not in the run file
    assert sum(1 for q in popular.qrels.values() if not q) >= 5  # nothing relevant: one placeholder judgment
    assert any(g > 1 for q in popular.qrels.values() for g in q.values())  # graded gains
    paths = write_trec(report, tmp_path / "trec")
    assert [p.name for p in paths] == ["qrels-demo-temporal.txt", "popular.run", "popular_four.run"]
    names = [f"{m}@{k}" for m in SAME for k in KS]
    for result, run_path in zip(report.results, paths[1:]):
        theirs = _ranx(paths[0], run_path, names)
        ours = {name: result.metrics[name] for name in names}
        assert {n: round(v, 4) for n, v in theirs.items()} == {n: round(v, 4) for n, v in ours.items()}, result.label
        assert ours["ndcg@10"] > 0 and ours["recall@10"] > 0  # something to reproduce


def test_file_formats(report: EvalReport, tmp_path: Path) -> None:
    folder = tmp_path / "trec"
    paths = write_trec(report, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # no temporary file left
    qrels_lines = [line.split() for line in paths[0].read_text(encoding="utf-8").splitlines()]
    assert all(len(f) == 4 and f[1] == "0" for f in qrels_lines)
    assert all("." not in f[3] for f in qrels_lines)  # whole gains as integers
    assert {f[3] for f in qrels_lines} == {"0", "1", "2", "3"}
    popular = report.results[0]
    assert list(dict.fromkeys(f[0] for f in qrels_lines)) == popular.case_ids  # every case, in order
    empty = {qid for qid, judged in popular.qrels.items() if not judged}
    assert {f[0] for f in qrels_lines if f[2] == NO_RELEVANT_DOC} == empty
    assert all(f[3] == "0" for f in qrels_lines if f[2] == NO_RELEVANT_DOC)
    for result, run_path, tag in zip(report.results, paths[1:], ["popular", "popular_four"]):
        by_case: dict[str, list[list[str]]] = {}
        for line in run_path.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            assert len(fields) == 6 and fields[1] == "Q0" and fields[5] == tag
            by_case.setdefault(fields[0], []).append(fields)
        answered = [(qid, answer) for qid, answer in zip(result.case_ids, result.answers) if answer]
        assert list(by_case) == [qid for qid, _ in answered]  # empty answers have no line
        for qid, answer in answered:
            lines = by_case[qid]
            assert [f[2] for f in lines] == answer
            assert [int(f[3]) for f in lines] == list(range(1, len(answer) + 1))
            scores = [float(f[4]) for f in lines]
            assert all(a > b for a, b in zip(scores, scores[1:])) and scores[-1] == 1


def _result(label: str, answers: dict[str, list[str]], qrels: dict[str, dict[str, float]],
            dataset: str = "shop") -> SpecResult:
    return SpecResult(spec=label, path=None, dataset=dataset, split="temporal", n_cases=len(answers), metrics={},
                      latency_ms={}, label=label, case_ids=list(answers), answers=list(answers.values()),
                      qrels=qrels)


def test_naming_gains_and_conflicting_judgments() -> None:
    a = _result("a b", {"q1": ["x", NO_RELEVANT_DOC], "q2": []}, {"q1": {"x": 0.5, "y": 2.0}, "q2": {}})
    b = _result("a_b", {"q1": ["y"], "q2": ["x"]}, {"q1": {"x": 0.5, "y": 2.0}, "q2": {}})
    c = _result("c", {"q1": ["y"]}, {"q1": {"y": 1.0}})  # same dataset and split names, other judgments
    e = _result("e", {"q1": ["y"]}, {"q1": {"x": 0.5, "y": 2.0}})  # the same judgments, fewer cases
    files = dict(trec_files(EvalReport([a, b, c, e], (5,))))
    assert list(files) == ["qrels-shop-temporal.txt", "a_b.run", "a_b-2.run", "qrels-shop-temporal-2.txt", "c.run",
                           "qrels-shop-temporal-3.txt", "e.run"]
    assert files["qrels-shop-temporal.txt"] == f"q1 0 x 0.5\nq1 0 y 2\nq2 0 {NO_RELEVANT_DOC} 0\n"
    assert files["a_b.run"] == f"q1 Q0 x 1 2 a_b\nq1 Q0 {NO_RELEVANT_DOC} 2 1 a_b\n"
    assert files["a_b-2.run"] == "q1 Q0 y 1 1 a_b\nq2 Q0 x 1 1 a_b\n"
    assert files["qrels-shop-temporal-2.txt"] == "q1 0 y 1\n"
    assert files["qrels-shop-temporal-3.txt"] == "q1 0 x 0.5\nq1 0 y 2\n"
    # the placeholder never names an item an answer to that case holds
    d = _result("d", {"q2": [NO_RELEVANT_DOC]}, {"q2": {}})
    assert dict(trec_files(EvalReport([d], (5,))))["qrels-shop-temporal.txt"] == f"q2 0 {NO_RELEVANT_DOC}_ 0\n"


def test_bad_ids_and_folders_write_nothing(tmp_path: Path) -> None:
    spaced = _result("s", {"q1": ["an item"]}, {"q1": {"x": 1.0}})
    with pytest.raises(TrecError, match="'an item'.*whitespace"):
        write_trec(EvalReport([spaced], (5,)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrecError, match="finite"):
        trec_files(EvalReport([_result("n", {"q1": []}, {"q1": {"x": float("nan")}})], (5,)))
    file = tmp_path / "file.txt"
    file.write_text("not a folder\n", encoding="utf-8")
    good = EvalReport([_result("g", {"q1": ["x"]}, {"q1": {"x": 1.0}})], (5,))
    with pytest.raises(TrecError, match="is a file"):
        write_trec(good, file)
    with pytest.raises(TrecError, match="inside .*file.txt, which is a file"):
        write_trec(good, file / "sub")
    assert file.read_text(encoding="utf-8") == "not a folder\n"
    # written again: replaced whole
    out = tmp_path / "again"
    write_trec(good, out)
    write_trec(EvalReport([_result("g", {"q1": ["y"]}, {"q1": {"x": 1.0}})], (5,)), out)
    assert (out / "g.run").read_text(encoding="utf-8") == "q1 Q0 y 1 1 g\n"


def test_cli(specs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # per-case results go under ./runs/eval
    code = main(["eval", str(specs[1]), "--users", "20", "--k", "5", "--trec", "trec", "--json", "-", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["results"][0]["spec"] == "popular four"  # stdout stays JSON
    assert err.strip().splitlines() == ["TREC files written to trec: qrels-demo-temporal.txt, popular_four.run"]
    assert len({line.split()[0] for line in (tmp_path / "trec" / "qrels-demo-temporal.txt").open()}) == 20
    stored = sorted((tmp_path / "runs").rglob("*.jsonl"))
    (tmp_path / "taken").write_text("", encoding="utf-8")
    code = main(["eval", str(specs[1]), "--users", "5", "--trec", "taken", "-q"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert "--trec" in err and "'taken' is a file" in err
    assert sorted((tmp_path / "runs").rglob("*.jsonl")) == stored  # refused before anything ran
