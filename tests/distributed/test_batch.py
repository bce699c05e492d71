"""`llmrec batch` on the local engine: every row answered in input order, bad rows recorded, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmrec.cli import main
from llmrec.distributed.batch import BatchError, BatchInterrupted, run_batch
from llmrec.testing import write_spec

SPEC = """
    name: greet
    inputs:
      user: {type: string}
      k: {type: integer, default: 2, minimum: 1}
      tags: {type: array, items: string, default: []}
    nodes:
      hello:
        type: text.template
        config: {template: "hello {{ who }} x{{ n }} {{ tags | join('+') }}"}
        inputs: {who: "${inputs.user}", n: "${inputs.k}", tags: "${inputs.tags}"}
    outputs:
      text: ${hello}
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("batch-spec"), SPEC)


def jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_rows_in_order_with_error_records_for_bad_rows(spec: Path, tmp_path: Path) -> None:
    requests = jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "user": "ann", "k": 3, "tags": ["x", "y"]},
        {"id": "b", "user": "bob", "k": 0},                      # below the minimum: an input error
        "{not json",                                              # an unreadable row
        {"id": "c", "user": "cy", "colour": "red"},               # an unknown input
        [1, 2],                                                   # not an object
        {"user": "dee"},                                          # no id: the row names it
    ])
    summary = run_batch(spec, requests, tmp_path / "out.jsonl", batch_size=2)
    got = records(tmp_path / "out.jsonl")
    assert [r["row"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["id"] for r in got] == ["a", "b", None, "c", None, None]
    assert got[0]["outputs"] == {"text": "hello ann x3 x+y"} and got[0]["degraded"] is False
    assert got[5]["outputs"] == {"text": "hello dee x2 "}
    assert got[1]["error"]["kind"] == "input" and got[1]["error"]["fields"][0]["field"] == "k"
    assert got[2]["error"]["kind"] == "row" and "not valid JSON" in got[2]["error"]["message"]
    assert got[3]["error"]["kind"] == "input" and "colour" in got[3]["error"]["message"]
    assert got[4]["error"] == {"kind": "row", "message": "each line must be a JSON object, found list"}
    assert (summary.written, summary.failed, summary.resumed) == (6, 4, 0)


def test_csv_and_parquet_inputs_give_the_answers_jsonl_gives(spec: Path, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text('id,user,k,tags\nr1,ann,3,"[""x""]"\nr2,bob,,\nr3,cy,many,\n', encoding="utf-8")
    pq.write_table(pa.table({"id": ["r1", "r2", "r3"], "user": ["ann", "bob", "cy"], "k": [3, None, None],
                             "tags": [["x"], None, None]}), tmp_path / "in.parquet")
    from_csv = run_batch(spec, tmp_path / "in.csv", tmp_path / "csv.jsonl")
    run_batch(spec, tmp_path / "in.parquet", tmp_path / "pq.jsonl")
    csv_out, pq_out = records(tmp_path / "csv.jsonl"), records(tmp_path / "pq.jsonl")
    assert [r["row"] for r in csv_out] == [2, 3, 4]  # CSV rows as an editor shows them: the header is row 1
    assert [r.get("outputs") for r in csv_out[:2]] == [r.get("outputs") for r in pq_out[:2]] == [
        {"text": "hello ann x3 x"}, {"text": "hello bob x2 "}]
    assert csv_out[2]["error"]["fields"][0]["field"] == "k" and from_csv.failed == 1
    assert pq_out[2]["outputs"] == {"text": "hello cy x2 "}


def test_parquet_output_has_one_row_per_request(spec: Path, tmp_path: Path) -> None:
    requests = jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "user": f"u{i}", "k": i % 3 or "bad"}
                                              for i in range(1, 8)])
    run_batch(spec, requests, tmp_path / "out.parquet", batch_size=3)
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["row"] for r in table] == list(range(1, 8))
    assert json.loads(table[0]["outputs"]) == {"text": "hello u1 x1 "} and table[0]["error"] is None
    assert table[2]["error_kind"] == "input" and table[2]["outputs"] is None
    assert not (tmp_path / "out.parquet.journal.jsonl").exists()


def test_an_interrupted_job_resumes_to_the_file_an_uninterrupted_one_writes(spec: Path, tmp_path: Path) -> None:
    requests = jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "user": f"u{i}", "k": i} for i in range(1, 11)])
    run_batch(spec, requests, tmp_path / "whole.jsonl", batch_size=3)
    seen = []

    def stop_after_four(record: dict) -> None:
        seen.append(record["row"])
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as stopped:
        run_batch(spec, requests, tmp_path / "part.jsonl", batch_size=3, on_record=stop_after_four)
    assert stopped.value.summary.written == 4
    with (tmp_path / "part.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"row": 7, "id": "r7", "outp')  # a line cut short by the interruption
    with pytest.raises(BatchError, match="pass --resume"):
        run_batch(spec, requests, tmp_path / "part.jsonl")
    summary = run_batch(spec, requests, tmp_path / "part.jsonl", batch_size=3, resume=True)
    assert (summary.resumed, summary.written) == (6, 10)  # the two batches written before the stop were kept
    assert (tmp_path / "part.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_resume_refuses_another_spec(spec: Path, tmp_path: Path) -> None:
    requests = jsonl(tmp_path / "in.jsonl", [{"user": "ann"}])
    run_batch(spec, requests, tmp_path / "out.jsonl")
    other = write_spec(tmp_path, SPEC.replace("hello {{ who }}", "hi {{ who }}"), "spec.yaml")
    with pytest.raises(BatchError, match="spec changed|the spec's content changed"):
        run_batch(other, requests, tmp_path / "out.jsonl", resume=True)


def test_cli_reports_interrupts_with_a_resume_hint_and_usage_errors_plainly(
        spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    requests = jsonl(tmp_path / "in.jsonl", [{"user": "ann"}, {"user": "bob"}])
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(spec), "-i", str(requests), "-o", str(out), "-q"]) == 0
    assert len(records(out)) == 2
    capsys.readouterr()
    assert main(["batch", str(spec), "-i", str(requests), "-o", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["batch", str(spec), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "name it .jsonl, .csv or .parquet" in capsys.readouterr().err
    assert main(["batch", str(spec), "-i", str(requests), "-o", str(tmp_path / "y.jsonl"), "--workers", "2"]) == 2
    assert "applies with --engine ray only" in capsys.readouterr().err

    import llmrec.distributed.batch as batch

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch.SpecWorker, "run", interrupted)
    assert main(["batch", str(spec), "-i", str(requests), "-o", str(tmp_path / "z.jsonl")]) == 130
    err = capsys.readouterr().err
    assert "interrupted: 0 rows kept" in err and "--resume" in err and "Traceback" not in err


def test_ray_missing_is_a_clear_error(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    requests = jsonl(tmp_path / "in.jsonl", [{"user": "ann"}])
    assert main(["batch", str(spec), "-i", str(requests), "-o", str(tmp_path / "o.jsonl"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'llmrec[ray]'" in err and "Traceback" not in err


def test_an_unreachable_ray_head_is_refused_at_once_and_leaves_no_file(
        spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    requests = jsonl(tmp_path / "in.jsonl", [{"user": "ann"}])
    out = tmp_path / "o.jsonl"
    assert main(["batch", str(spec), "-i", str(requests), "-o", str(out), "--engine", "ray",
                 "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray head at 127.0.0.1:1" in err and "'--address'" in err
    assert not out.exists() and not (tmp_path / "o.jsonl.meta.json").exists()
