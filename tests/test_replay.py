"""`llmrec replay LOG [SPEC]` (issue 14): logged requests of a real `llmrec serve` app (in process, the file log
store) run again. The unchanged spec replays every answer (exit 0); after a template file or a config value of a
copy of the spec is edited, the answers that changed are counted and the changed provenance component is named
(exit 5); an unseeded stochastic node is called out as non-determinism; and a log or spec that cannot be
replayed is a one-line error."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llmrec.cli import main
from llmrec.eval.logged import LogError
from llmrec.eval.replay import EXIT_CHANGED, replay_logs


def _logged_tests() -> ModuleType:
    """tests/eval/test_logged.py, for its serve_and_log helper (pytest imports test files by path)."""
    spec = importlib.util.spec_from_file_location("_replay_logged", Path(__file__).parent / "eval" / "test_logged.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve_and_log = _logged_tests().serve_and_log

#: keyword search over the demo shop, the query rewritten by a template file first
SPEC = """
version: 1
name: finder
inputs:
  user_id: {type: string}
  query: {type: string, default: ""}
  k: {type: integer, default: 4, minimum: 1, maximum: 20}
resources:
  shop: {type: dataset, config: {name: demo, seed: 7, split: user}}
nodes:
  phrase:
    type: text.template
    config: {template_file: query.j2}
    inputs: {query: "${inputs.query}"}
  search:
    type: retrieve.bm25
    config: {k: 6}
    inputs: {catalog: "${resources.shop.catalog}", query: "${phrase}"}
  profile:
    type: user.profile
    inputs: {catalog: "${resources.shop.catalog}", interactions: "${resources.shop.train}",
             user_id: "${inputs.user_id}"}
  %(last)s
  result:
    type: present.items
    inputs: {candidates: "${%(source)s}", catalog: "${resources.shop.catalog}", profile: "${profile}",
             k: "${inputs.k}"}
outputs:
  recommendations: ${result}
"""
EXPLORE = """explore:
    type: rerank.explore
    config: {k: 4%s}
    inputs: {candidates: "${search}"}"""
QUERIES = ["hiking boots", "coffee", "lamp", "kitchen knife", "blanket", "running shoes", "headphones", "tea"]


def write(folder: Path, *, explore: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "query.j2").write_text("{{ query }}", encoding="utf-8")
    text = SPEC % {"last": EXPLORE % explore if explore is not None else "", "source":
                   "explore" if explore is not None else "search"}
    path = folder / "finder.yaml"
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def requests(n: int) -> list[dict[str, Any]]:
    return [{"user_id": f"u{1 + i}", "query": QUERIES[i % len(QUERIES)]} for i in range(n)]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("replay")
    spec = write(folder / "served")
    asyncio.run(serve_and_log(spec, folder / "logs", requests(24), batch=12))
    random_spec = write(folder / "random", explore="")  # rerank.explore without a seed
    asyncio.run(serve_and_log(random_spec, folder / "random-logs", requests(16), batch=16))
    return {"spec": spec, "logs": folder / "logs", "random": random_spec, "random_logs": folder / "random-logs"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay keeps the stamps it computes under ./runs/provenance: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args, "-q"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_an_unchanged_spec_replays_every_answer(logged, capsys) -> None:
    code, out, err = replay(capsys, str(logged["logs"]), str(logged["spec"]))
    assert code == 0, err
    assert "replayed 24 logged requests of spec 'finder'" in out and "0 changed, 24 unchanged" in out
    assert "the stamp is unchanged" in out
    code, out, _ = replay(capsys, str(logged["logs"]), str(logged["spec"]), "--json", "-", "--limit", "5")
    data = json.loads(out)
    assert code == 0 and data["replayed"] == 5 and data["changed"] == 0 and data["stamps"][0]["same_stamp"]


def test_an_edited_template_or_setting_is_named_and_the_command_fails(logged, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(logged["spec"].parent, copy)
    spec = copy / "finder.yaml"
    (copy / "query.j2").write_text("{{ query }} kitchen", encoding="utf-8")
    code, out, err = replay(capsys, str(logged["logs"]), str(spec))
    assert code == EXIT_CHANGED, err
    text = " ".join(out.split())
    changed = int(text.split(": ", 1)[1].split(" changed")[0])
    assert 0 < changed <= 24
    assert "changed: file query.j2" in text and "the spec's settings" not in text
    assert "recommendations: position" in text  # which position changed, and from what to what

    # a config value: the stamp kept by the first replay (runs/provenance) also names the setting
    assert main(["replay", str(logged["logs"]), str(logged["spec"]), "-q"]) == 0
    capsys.readouterr()
    (copy / "query.j2").write_text("{{ query }}", encoding="utf-8")
    spec.write_text(spec.read_text().replace("config: {k: 6}", "config: {k: 2}"), encoding="utf-8")
    report = replay_logs(logged["logs"], spec)
    (group,) = report.groups
    assert group.changes == ["spec"] and "nodes.search.config.k: 6 -> 2" in group.text
    assert 0 < len(report.changed) and all("positions differ" in c.detail for c in report.changed)


def test_answers_that_change_under_the_same_stamp_are_called_non_deterministic(logged, capsys) -> None:
    code, out, err = replay(capsys, str(logged["random_logs"]), str(logged["random"]))
    assert code == EXIT_CHANGED, err
    text = " ".join(out.split())
    assert "the stamp is unchanged, yet" in text and "the spec is not deterministic for these requests" in text
    assert "stochastic nodes: explore" in text and "explore has no seed" in text


def test_without_the_logged_stamp_it_says_what_is_unknown_and_filters_by_time(logged, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(logged["logs"], bare)
    for kept in bare.glob("provenance*.json"):  # what the operator saved and what the server wrote
        kept.unlink()
    copy = tmp_path / "copy"
    shutil.copytree(logged["spec"].parent, copy)
    (copy / "query.j2").write_text("{{ query }} kitchen", encoding="utf-8")
    report = replay_logs(bare, copy / "finder.yaml", archive=False)
    assert report.changed and "what changed is unknown" in report.groups[0].text
    assert report.groups[0].changes is None
    later = replay_logs(bare, logged["spec"], since=time.time() - 3600, limit=3, archive=False)
    assert later.replayed == 3 and not later.changed
    with pytest.raises(LogError, match="is at or after --since"):
        replay_logs(bare, logged["spec"], since=time.time() + 3600, archive=False)


def test_the_spec_is_found_by_name_and_mistakes_are_one_line_errors(logged, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(logged["spec"].parent)  # finder.yaml is here: the log names spec 'finder'
    code, out, err = replay(capsys, str(logged["logs"]))
    assert code == 0 and "0 changed" in out, err
    monkeypatch.chdir(tmp_path)
    other = write(tmp_path / "other")
    other.write_text(other.read_text().replace("name: finder", "name: seeker"), encoding="utf-8")
    for args, exit_code, expected in (
        ([str(tmp_path / "nowhere"), str(logged["spec"])], 2, "no log folder at"),
        ([str(logged["logs"])], 2, "give the spec that served the requests"),
        ([str(logged["logs"]), str(other)], 4, "holds no requests of spec 'seeker' (it holds: 'finder' (24))"),
        ([str(logged["logs"]), str(logged["spec"]), "--since", "soon"], 2, "is not a time"),
    ):
        code, _, err = replay(capsys, *args)
        assert code == exit_code and expected in " ".join(err.split()), (args, err)
