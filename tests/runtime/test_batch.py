"""The batch path: inside Runtime.run_many (and llmrec eval), concurrent requests' calls to a batchable node go
to its run_batch together, with the results run() gives; a single request never batches; a bad request fails
alone with its own error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import llmrec
from llmrec.errors import InputError, RunError

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
    name: batched
    nodes:
      times: {type: test.batched, inputs: {value: "${inputs.n}"}}
      again: {type: test.batched, inputs: {value: "${times}"}}
    inputs: {n: {type: integer}}
    outputs: {value: "${again}"}
"""


def batches_of(rt: llmrec.Runtime) -> list[int]:
    """The sizes of test.batched's run_batch calls (the class the spec's plugin folder loaded)."""
    return type(rt.plans["times"].instance).batches


async def test_concurrent_requests_reach_run_batch_together_with_what_run_gives(spec) -> None:
    rt = spec(SPEC)
    batches = batches_of(rt)
    batches.clear()
    results = await rt.run_many([{"n": n} for n in range(50)], concurrency=50)
    assert [r.outputs["value"] for r in results] == [100 * n for n in range(50)]
    assert batches == [50, 50]  # each node once for all fifty requests
    batches.clear()
    await rt.run_many([{"n": n} for n in range(50)])  # waves of WAVE (32)
    assert batches == [32, 32, 18, 18]
    assert all([rec.status for rec in r.trace.nodes] == ["ok", "ok"] for r in results)
    one = await rt.run({"n": 7})  # a single request calls run(), never run_batch
    assert one.outputs == {"value": 700} and batches == [32, 32, 18, 18]


async def test_a_bad_request_in_a_batch_fails_alone_with_its_own_error(spec) -> None:
    rt = spec(SPEC)
    results = await rt.run_many([{"n": 1}, {"n": -2}, {"n": "three"}, {"n": 4}])
    assert results[0].outputs == {"value": 100} and results[3].outputs == {"value": 400}
    assert isinstance(results[1], RunError) and results[1].node_id == "times"
    assert "negative value -2" in str(results[1])  # run()'s own error, not the batch's
    assert isinstance(results[2], InputError) and results[2].field == "n"


async def test_concurrency_bounds_the_requests_in_flight(spec) -> None:
    rt = spec(SPEC)
    batches = batches_of(rt)
    batches.clear()
    results = await rt.run_many([{"n": n} for n in range(10)], concurrency=4)
    assert [r.outputs["value"] for r in results] == [100 * n for n in range(10)]
    assert batches == [4, 4, 4, 4, 2, 2]


DATA = os.environ.get("LLMREC_DATA_DIR")


@pytest.mark.skipif(not DATA or not (Path(DATA) / "ml-100k" / "u.data").is_file(),
                    reason="needs MovieLens 100K under $LLMREC_DATA_DIR (.ci/run sets it)")
@pytest.mark.parametrize("batch", [True, False])
async def test_movielens_cf_batched_gives_every_user_what_a_single_request_gives(tmp_path, batch) -> None:
    text = (ROOT / "specs" / "movielens_cf.yaml").read_text(encoding="utf-8")
    text = text.replace("      factors: 64", f"      factors: 64\n      batch: {str(batch).lower()}", 1)
    (tmp_path / "cf.yaml").write_text(text, encoding="utf-8")
    rt = llmrec.Runtime(llmrec.validate(tmp_path / "cf.yaml"))
    assert rt.plans["cf"].instance.batchable is batch
    requests = [{"user_id": str(u), "k": 20} for u in range(1, 944)] + [{"user_id": "nobody"}, {"user_id": 3}]
    batched = await rt.run_many(requests)
    for request, many in zip(requests[:-1], batched):
        single = await rt.run(request)
        assert many.outputs == single.outputs, request
    assert batched[-2].outputs["recommendations"].cold_start
    assert isinstance(batched[-1], llmrec.InputError)  # a bad request fails alone, in its place
