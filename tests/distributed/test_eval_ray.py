"""`llmrec eval --engine ray`: the cases predicted by Ray actors score exactly what the local engine scores, a store
one engine began the other resumes (cases already there are not run again), Ctrl-C exits 130 with the resume
hint, and `--otel` traces each case's run. Ray is part of the test extra: missing, these tests fail."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.eval.runner import LocalEngine, TracedEngine, evaluate
from llmrec.testing import write_spec

SPEC = """
    name: demo-cf
    inputs:
      user_id: {type: string}
      k: {type: integer, default: 10, minimum: 1}
    resources:
      shop: {type: dataset, config: {name: demo, seed: 7, split: temporal}}
    nodes:
      cf:
        type: retrieve.cf
        config: {algorithm: svd, factors: 16}
        inputs: {interactions: "${resources.shop.train}", user_id: "${inputs.user_id}", k: "${inputs.k}"}
      profile:
        type: user.profile
        inputs:
          catalog: ${resources.shop.catalog}
          interactions: ${resources.shop.train}
          user_id: ${inputs.user_id}
      result:
        type: present.items
        inputs: {candidates: "${cf}", catalog: "${resources.shop.catalog}", profile: "${profile}", k: "${inputs.k}"}
    outputs:
      recommendations: ${result}
"""
USERS = 40
CLI_USERS = 100  # two batches of the Ray engine (64 a batch)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("eval-ray-spec"), SPEC)


class Counting:
    """An engine around another that counts the answers; with ``only``, it hands the inner engine only the first
    ``only`` cases (a store left by an evaluation stopped there: Ctrl-C itself is the CLI test's)."""

    def __init__(self, inner, only: int | None = None) -> None:
        self.inner, self.only, self.count, self.name = inner, only, 0, inner.name

    async def answers(self, job, todo: Sequence, on_answer) -> None:
        async def counted(i, case, answer) -> None:
            self.count += 1
            await on_answer(i, case, answer)

        await self.inner.answers(job, todo if self.only is None else todo[:self.only], counted)


def test_ray_resumes_a_store_the_local_engine_began_scores_the_same_and_traces_each_case(
        ray_local, spec: Path, tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from llmrec.distributed.eval_engine import RayEvalEngine
    from llmrec.telemetry import configure

    (local,) = evaluate([spec], users=USERS, progress=False, out=tmp_path / "local").results
    (first,) = evaluate([spec], users=USERS, progress=False, out=tmp_path / "mixed",
                        engine=Counting(LocalEngine(), only=12)).results
    assert first.store is not None and len(first.case_ids) == 12
    exporter = InMemorySpanExporter()
    tracing = configure([exporter], simple=True)
    ray_engine = RayEvalEngine(workers=2, batch_size=8)
    on_ray = Counting(ray_engine)
    (resumed,) = evaluate([spec], users=USERS, progress=False, out=tmp_path / "mixed",
                          engine=TracedEngine(on_ray, tracing)).results
    assert resumed.reused == 12 and on_ray.count == USERS - 12  # only the cases the store lacked ran on Ray
    assert ray_engine.used_workers == 2
    assert resumed.n_cases == local.n_cases == USERS and resumed.failures == local.failures == 0
    assert resumed.metrics == local.metrics  # exactly
    assert resumed.case_values == local.case_values and resumed.answers == local.answers
    assert resumed.provenance == local.provenance
    # every case Ray ran is a `run demo-cf` span with a span per node, from the trace that came back with it
    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "run demo-cf"]
    assert len(runs) == USERS - 12
    done = {c for c in local.case_ids} - {s.attributes["llmrec.eval.case"] for s in runs}
    assert len(done) == 12
    nodes = {s.name for s in spans if s.parent is not None and s.parent.span_id == runs[0].context.span_id}
    assert nodes == {"node cf", "node profile", "node result"}
    tracing.shutdown()


def test_a_worker_whose_cases_differ_from_the_driver_s_says_so(ray_local, spec: Path, tmp_path: Path) -> None:
    from llmrec.distributed.eval_engine import RayEvalEngine

    # the workers load another split (seed 8) than the one the driver scores on (the spec's own, seed 7)
    engine = RayEvalEngine(workers=1, dataset={"name": "demo", "seed": 8, "split": "temporal"})
    (result,) = evaluate([spec], users=5, progress=False, out=tmp_path / "out", engine=engine).results
    assert result.not_run is not None
    assert "test cases of 'shop' are not the driver's" in result.not_run
    assert "docs/scaling.md" in result.not_run


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_engine_ray_matches_local_resumes_after_ctrl_c_and_otel_console_traces(
        ray_local, spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import llmrec.distributed.engine as engine_module

    monkeypatch.chdir(tmp_path)
    common = [str(spec), "--users", str(CLI_USERS), "--json", "-", "-q"]
    code, out, err = _run(capsys, *common, "--out", "local", "--otel", "console")
    assert code == 0, err
    local = json.loads(out)["results"][0]
    # --otel console: each case's run, as JSON spans on stderr (stdout keeps the report)
    assert err.count('"name": "run demo-cf"') == CLI_USERS and '"llmrec.eval.case": "' in err

    real = engine_module.map_in_order

    def interrupted(*args, **kwargs) -> Iterator:
        batches = real(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt  # Ctrl-C while the next batch runs

    monkeypatch.setattr(engine_module, "map_in_order", interrupted)
    ray_args = ["--engine", "ray", "--workers", "2", "--out", "ray"]
    code, out, err = _run(capsys, *common, *ray_args)
    assert code == 130, err
    assert "interrupted: 64 case results kept in ray; run the same command again" in err
    monkeypatch.setattr(engine_module, "map_in_order", real)
    code, out, err = _run(capsys, str(spec), "--users", str(CLI_USERS), "--json", "-", *ray_args)
    assert code == 0, err
    assert "resumed 64 of 100 cases from" in err
    on_ray = json.loads(out)["results"][0]
    assert on_ray["reused_cases"] == 64 and on_ray["n_cases"] == CLI_USERS
    assert on_ray["metrics"] == local["metrics"] and on_ray["intervals"] == local["intervals"]


def test_cli_refuses_ray_options_without_engine_ray(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, str(spec), "--workers", "2")
    assert code == 2 and "applies with --engine ray only" in err
    code, _, err = _run(capsys, str(spec), "--engine", "spark")
    assert code == 2 and "'spark' is not one of local, ray" in err
