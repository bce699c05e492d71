"""`llmrec eval` as a user meets it: the table, JSON, exit codes, and messages instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.testing import errors_of, write_spec

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
        config: {{k: 100}}
        inputs: {{interactions: "${{resources.shop.train}}"}}
      {retriever}
      unseen:
        type: rerank.filter_seen
        inputs: {{candidates: "${{{source}}}", profile: "${{profile}}"}}
      result:
        type: present.items
        inputs: {{candidates: "${{unseen}}", catalog: "${{resources.shop.catalog}}", profile: "${{profile}}",
                 k: "${{inputs.k}}"}}
    outputs:
      recommendations: "${{result}}"
"""

AFFINITY = """affinity:
        type: retrieve.category_affinity
        config: {k: 100}
        inputs: {catalog: "${resources.shop.catalog}", interactions: "${resources.shop.train}",
                 profile: "${profile}"}"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli")
    popular = write_spec(folder, SPEC.format(name="popular", retriever="", source="popular"), "popular.yaml")
    affinity = write_spec(folder, SPEC.format(name="affinity", retriever=AFFINITY, source="affinity"),
                          "affinity.yaml")
    return popular, affinity


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`llmrec eval` stores case results under ./runs/eval by default: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLMREC_MODEL", raising=False)  # no judge unless a test asks for one


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_json_to_stdout(specs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(specs[0]), "--users", "12", "--k", "10,5", "--json", "-")
    assert code == 0, err
    data = json.loads(out)
    assert data["ks"] == [5, 10]
    (r,) = data["results"]
    assert (r["spec"], r["dataset"], r["split"], r["n_cases"]) == ("popular", "demo", "temporal", 12)
    assert r["path"] == str(specs[0]) and r["failures"]["count"] == 0
    assert set(r["metrics"]) >= {"ndcg@5", "ndcg@10", "coverage@10", "popularity_bias@5"}
    assert set(r["latency_ms"]) >= {"p50", "p95", "p99"}


def test_table_side_by_side_and_json_file(specs: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out" / "report.json"
    code, out, err = run_cli(capsys, *map(str, specs), "--users", "20", "--k", "10", "--metrics",
                             "ndcg,coverage", "--json", str(target))
    assert code == 0, err
    assert "popular" in out and "affinity" in out and "ndcg@10" in out and "coverage@10" in out
    assert "recall@10" not in out  # --metrics restricts the rows
    assert "demo (split temporal, 20 cases)" in out
    data = json.loads(target.read_text())
    assert [r["spec"] for r in data["results"]] == ["popular", "affinity"]
    assert set(data["results"][0]["metrics"]) == {"ndcg@10", "coverage@10"}


def test_given_dataset_and_split(specs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(specs[0]), "--dataset", "demo", "--split", "leave-last", "--users", "5",
                             "--json", "-")
    assert code == 0, err
    r = json.loads(out)["results"][0]
    assert (r["dataset"], r["split"], r["n_cases"]) == ("demo", "leave-last", 5)
    # --split defaults to temporal for an interaction log
    code, out, err = run_cli(capsys, str(specs[0]), "--dataset", "demo", "--users", "3", "--json", "-")
    assert code == 0 and json.loads(out)["results"][0]["split"] == "temporal"


def test_spec_errors_print_like_validate(tmp_path: Path, specs: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_spec(tmp_path, SPEC.format(name="bad", retriever="", source="popularr"), "bad.yaml")
    expected = errors_of(bad)
    assert expected
    code, out, err = run_cli(capsys, str(specs[0]), str(bad))
    assert code == 1 and out == ""
    for line in expected:
        assert line in err.splitlines()
    assert "nothing was run" in err


@pytest.mark.parametrize("args, option", [
    (["--k", "0,x"], "'--k'"),
    (["--k", "5,x"], "'--k'"),
    (["--users", "0"], "--users"),
    (["--split", "random"], "'--split'"),
    (["--split", "user"], "'--split' / '--seed'"),  # applies to --dataset only
])
def test_usage_errors_exit_2(specs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], args: list[str],
                             option: str) -> None:
    code, out, err = run_cli(capsys, str(specs[0]), *args)
    assert code == 2
    assert option in err


def test_data_problems_exit_4(specs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_cli(capsys, str(specs[0]), "--dataset", "nosuch")
    assert code == 4 and "unknown dataset 'nosuch'" in err
    monkeypatch.setenv("LLMREC_DATA_DIR", str(tmp_path / "empty"))
    code, out, err = run_cli(capsys, str(specs[0]), "--dataset", "movielens-100k")
    assert code == 4 and "ml-100k/u.data" in err and "LLMREC_DATA_DIR" in err
    code, out, err = run_cli(capsys, str(specs[0]), "--users", "2", "--output", "nope")
    assert code == 4 and "no output 'nope'" in err and "recommendations" in err


def test_movielens_100k_popularity(specs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The real MovieLens 100K, temporal split: a popularity list finds something, covering little."""
    root = os.environ.get("LLMREC_DATA_DIR")
    if not root or not (Path(root) / "ml-100k" / "u.data").is_file():
        pytest.skip("MovieLens 100K not available: set LLMREC_DATA_DIR to the folder holding ml-100k/")
    code, out, err = run_cli(capsys, str(specs[0]), "--dataset", "movielens-100k", "--users", "200", "--k", "10",
                             "--json", "-")
    assert code == 0, err
    r = json.loads(out)["results"][0]
    assert (r["dataset"], r["split"], r["n_cases"]) == ("movielens-100k", "temporal", 200)
    assert 0.01 < r["metrics"]["precision@10"] < 0.5
    assert r["metrics"]["coverage@10"] < 0.1  # everyone gets nearly the same popular films
    assert r["metrics"]["popularity_bias@10"] > 0.9


def test_console_script(specs: tuple[Path, Path]) -> None:
    """The installed command, in a fresh process: exit codes and no traceback."""
    env = {**os.environ, "LLMREC_LOAD_PLUGINS": ""}
    env.pop("LLMREC_MODEL", None)
    script = Path(sys.executable).with_name("llmrec")
    proc = subprocess.run([str(script), "eval", str(specs[0]), "--users", "3", "--json", "-"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["n_cases"] == 3
    proc = subprocess.run([str(script), "eval", str(specs[0]), "--k", "0,x"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "'--k'" in proc.stderr and "Traceback" not in proc.stderr
