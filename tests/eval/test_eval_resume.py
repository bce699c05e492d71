"""Issue 11: `llmrec eval` interrupted by Ctrl-C and resumed with the same command reports exactly what an
uninterrupted run reports.

Every run is a real `python -m llmrec eval` process; the interrupt is a real SIGINT, sent once the run folder
holds some stored cases (polled, never a fixed sleep). report.json's quality metrics, case count, failures,
grounding and every stored per-case result are compared with an uninterrupted run into a fresh --out folder,
number for number (report.json writes metrics unrounded). Latency, wall time and which cases were reused differ
by nature and are left out of the comparison (docs/evaluation.md, "Resuming an interrupted run"). One test runs
in process, with the signal raised while a judge call is in flight, to check that a case whose cancellation was
turned into an error is never kept.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llmrec.errors import ProviderError
from llmrec.eval.runner import EvalInterrupted, evaluate
from llmrec.testing import FakeProvider, write_spec


def _sibling(name: str) -> ModuleType:
    """Another test module of this folder (pytest imports test files by path, not as a package)."""
    spec = importlib.util.spec_from_file_location(f"_resume_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cli = _sibling("test_eval_cli")  # SPEC (demo shop, user.profile -> ... -> present.items) and AFFINITY
_features = _sibling("test_eval_features")  # SLOW_PLUGIN: the `test.slow` node of the Ctrl-C test

CASES = 120  # the demo dataset's users, one test case each
SLEEP = "asyncio.sleep(0.02)"  # per case; 120 cases at concurrency 4 take about 0.6 s
assert "asyncio.sleep(0.2)" in _features.SLOW_PLUGIN
SLOW_PLUGIN = _features.SLOW_PLUGIN.replace("asyncio.sleep(0.2)", SLEEP)

# test.slow, except that it turns its cancellation into an error, as careless client code does; with a fallback
# to the popular list, a case cancelled by Ctrl-C could complete with another answer
CARELESS_PLUGIN = f'''
import asyncio
from llmrec import hookimpl
from llmrec.node import NodeType
from llmrec.types import Candidates


class Careless(NodeType):
    name = "test.careless"

    async def run(self, items: Candidates) -> Candidates:
        try:
            await {SLEEP}
        except asyncio.CancelledError:
            raise RuntimeError("connection closed") from None
        return items


@hookimpl
def llmrec_register_node_types(register):
    register(Careless)
'''


def _spec(folder: Path, name: str = "slow-blend", weight: float = 0.2, node: str = "test.slow",
          fallback: bool = False, file: str = "spec.yaml") -> Path:
    """test_eval_cli's spec with affinity and popularity fused (``weight``: the popular list's) and then the
    slow ``node`` (falling back to the popular list on an error with ``fallback``)."""
    nodes = (_cli.AFFINITY + "\n      blend:\n        type: fuse\n"
             f"        config: {{weights: [1.0, {weight}]}}\n"
             '        inputs: {lists: ["${affinity}", "${popular}"]}\n'
             f"      slow:\n        type: {node}\n"
             '        inputs: {items: "${blend}"}'
             + ("\n        fallback: {node: popular}" if fallback else ""))
    text = _cli.SPEC.format(name=name, retriever=nodes, source="slow")
    return write_spec(folder, text, file)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    (root / "plugins").mkdir()
    (root / "plugins" / "slow.py").write_text(SLOW_PLUGIN, encoding="utf-8")
    (root / "plugins" / "careless.py").write_text(CARELESS_PLUGIN, encoding="utf-8")
    _spec(root)
    return root


def _command(spec: Path, out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "llmrec", "eval", str(spec), "--concurrency", "4", "--out", str(out), *more]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the suite's LLMREC_TRUST covers its temporary folders
    env.pop("LLMREC_MODEL", None)
    return env


def _stored(out: Path, skip: Path | None = None) -> dict[str, dict[str, Any]]:
    """Case id -> stored record (latency left out) of the complete lines of the per-case files in ``out``
    (but ``skip``)."""
    records: dict[str, dict[str, Any]] = {}
    for file in out.glob("*.jsonl") if out.is_dir() else ():
        if file == skip:
            continue
        for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n") or line.startswith('{"header"'):
                continue
            rec = json.loads(line)
            rec.pop("latency_ms")
            assert rec["case"] not in records, f"case {rec['case']} stored twice"
            records[rec["case"]] = rec
    return records


def run(cmd: list[str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def interrupt(cmd: list[str], cwd: Path, out: Path, after: int, skip: Path | None = None) -> tuple[int, str, int]:
    """Run ``cmd``, send SIGINT once ``out`` holds at least ``after`` stored cases (not counting file ``skip``);
    (exit code, stderr, cases stored when it had exited)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=_env())
    deadline = time.monotonic() + 90
    while len(_stored(out, skip=skip)) < after:
        assert proc.poll() is None, f"finished before {after} cases were stored: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "no cases stored in time"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    return proc.returncode, stderr, len(_stored(out, skip=skip))


def assert_interrupted(code: int, stderr: str, out: Path, kept: int) -> None:
    assert code == 130, stderr
    assert 0 < kept < CASES, f"the interrupt did not land mid-way ({kept} of {CASES} cases stored)"
    assert (f"interrupted: {kept} case results kept in {out}; run the same command again (without --fresh) "
            "to resume from them") in stderr
    assert stderr.rstrip().endswith("to resume from them"), stderr  # the last word: no extra "aborted"


VOLATILE = ("latency_ms", "wall_s", "reused_cases", "cases_file", "label", "spec", "path")


def report(path: Path) -> dict[str, Any]:
    """The one result of a --report folder's report.json, or of a --json file (the same data)."""
    file = path / "report.json" if path.is_dir() else path
    (result,) = json.loads(file.read_text(encoding="utf-8"))["results"]
    return result


def assert_same_results(result: dict[str, Any], reference: dict[str, Any]) -> None:
    """Everything but latency, wall time, reuse and naming equal; the metrics exactly (== on floats)."""
    assert result["n_cases"] == reference["n_cases"] == CASES
    assert result["metrics"] == reference["metrics"]  # exact: report.json does not round metrics
    assert {k: v for k, v in result.items() if k not in VOLATILE} == \
        {k: v for k, v in reference.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def uninterrupted(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The report and stored cases of one uninterrupted run into a fresh --out folder."""
    out = folder / "uninterrupted"
    code, _, err = run(_command(folder / "spec.yaml", out, "--json", str(folder / "uninterrupted.json")), folder)
    assert code == 0, err
    result = report(folder / "uninterrupted.json")
    assert result["reused_cases"] == 0 and result["failures"]["count"] == 0
    assert result["metrics"]["ndcg@10"] > 0  # the answers are not empty
    cases = _stored(out)
    assert len(cases) == CASES and all(rec["ok"] for rec in cases.values())
    return result, cases


def test_interrupted_then_resumed_gives_the_uninterrupted_metrics(folder: Path, uninterrupted: Any) -> None:
    reference, reference_cases = uninterrupted
    out, rep = folder / "once", folder / "once-report"
    cmd = _command(folder / "spec.yaml", out, "--report", str(rep))
    code, err, kept = interrupt(cmd, folder, out, after=CASES // 3)
    assert_interrupted(code, err, out, kept)
    assert not rep.exists()  # no report as if it had finished
    stored = _stored(out)
    assert all(stored[case] == reference_cases[case] for case in stored)  # what was kept is what it would be

    code, _, err = run(cmd, folder)
    assert code == 0, err
    assert f"resumed {kept} of {CASES} cases" in err
    result = report(rep)
    assert result["reused_cases"] == kept
    assert_same_results(result, reference)
    assert _stored(out) == reference_cases  # every per-case result, once each


def test_interrupted_twice_then_resumed(folder: Path, uninterrupted: Any) -> None:
    reference, reference_cases = uninterrupted
    out, rep = folder / "twice", folder / "twice.json"
    cmd = _command(folder / "spec.yaml", out, "--json", str(rep))
    code, err, first = interrupt(cmd, folder, out, after=CASES // 4)
    assert_interrupted(code, err, out, first)
    code, err, second = interrupt(cmd, folder, out, after=first + CASES // 4)  # resumed, then interrupted again
    assert_interrupted(code, err, out, second)
    assert f"resumed {first} of {CASES} cases" in err and second > first

    code, _, err = run(cmd, folder)
    assert code == 0, err
    assert f"resumed {second} of {CASES} cases" in err
    result = report(rep)
    assert result["reused_cases"] == second
    assert_same_results(result, reference)
    assert _stored(out) == reference_cases


def test_resumed_with_a_changed_spec_starts_over_and_keeps_the_old_cases_apart(folder: Path,
                                                                               uninterrupted: Any) -> None:
    """The store's fingerprint covers the spec as loaded: after the spec file is edited, the same command
    reuses nothing, stores the edited spec's cases in a file of their own beside the first version's (left as
    they were, for when the spec is changed back) and reports the edited spec's own results."""
    reference, reference_cases = uninterrupted
    spec = _spec(folder, name="edited", file="edited.yaml")
    out = folder / "changed"
    cmd = _command(spec, out, "--json", str(folder / "changed.json"))
    code, err, kept = interrupt(cmd, folder, out, after=CASES // 3)
    assert_interrupted(code, err, out, kept)
    (first_file,) = out.glob("*.jsonl")
    first_text = first_file.read_text(encoding="utf-8")

    _spec(folder, name="edited", weight=5.0, file="edited.yaml")  # the popular list now dominates the blend
    code, err, kept_edited = interrupt(cmd, folder, out, after=CASES // 3, skip=first_file)
    assert "resumed" not in err  # nothing of the first version was reused
    assert_interrupted(code, err, out, kept_edited)  # and only the edited spec's cases are counted as kept
    code, _, err = run(cmd, folder)
    assert code == 0 and f"resumed {kept_edited} of {CASES} cases" in err
    assert len(list(out.glob("*.jsonl"))) == 2 and first_file.read_text(encoding="utf-8") == first_text
    edited = report(folder / "changed.json")
    assert edited["reused_cases"] == kept_edited

    fresh = evaluate([spec], ks=(5, 10, 20), concurrency=4, progress=False, out=folder / "edited-fresh")
    assert_same_results(edited, fresh.to_dict()["results"][0])  # the edited spec's own results, unmixed
    assert edited["metrics"] != reference["metrics"]  # which are not the first version's


def test_a_case_whose_cancellation_is_turned_into_an_error_is_not_kept(folder: Path, tmp_path: Path) -> None:
    """In process: Ctrl-C (a real SIGINT, handled by asyncio.run) arrives while a judge call is in flight, and
    the judge's client turns the cancellation into an error, as careless client code does; the spec's slow
    node does the same and falls back to the popular list. Without care, the cases in flight would be kept as
    judge failures or fallback answers; they must run again on resume instead."""
    spec = _spec(folder, node="test.careless", fallback=True, file="careless.yaml")
    scores = {"relevance": 4, "diversity": 3, "personalisation": 2}

    def judge(interrupt_at: int | None) -> FakeProvider:
        calls = 0

        async def reply(request: object) -> object:
            nonlocal calls
            calls += 1
            if calls == interrupt_at:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C now, while this call is in flight
            try:
                await asyncio.sleep(0.005)
            except asyncio.CancelledError:
                raise ProviderError("judge connection closed") from None
            return {"rationale": "fine", "scores": scores}

        return FakeProvider(reply)

    def run_in_process(out: Path, interrupt_at: int | None = None) -> Any:
        return evaluate([spec], ks=(5, 10, 20), concurrency=4, progress=False, out=out, judge=judge(interrupt_at))

    reference = run_in_process(tmp_path / "uninterrupted").to_dict()["results"][0]
    assert reference["judge"]["judged"] == CASES and reference["judge"]["failed"] == 0
    reference_cases = _stored(tmp_path / "uninterrupted")
    out = tmp_path / "interrupted"
    with pytest.raises(EvalInterrupted) as info:
        run_in_process(out, interrupt_at=CASES // 2)
    stored = _stored(out)
    assert 0 < info.value.kept == len(stored) < CASES
    assert all(stored[case] == reference_cases[case] for case in stored)  # no judge failure, no fallback kept
    resumed = run_in_process(out).to_dict()["results"][0]
    assert resumed["reused_cases"] == len(stored)
    assert resumed["judge"] == reference["judge"] and resumed["llm"]["fallback_requests"] == 0
    assert_same_results(resumed, reference)
    assert _stored(out) == reference_cases
