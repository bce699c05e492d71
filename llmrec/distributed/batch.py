"""``llmrec batch``: a spec run over a file of requests, on this machine or on Ray.

    llmrec batch specs/quickstart.yaml --input requests.jsonl --output results.jsonl
    llmrec batch specs/quickstart.yaml --input requests.csv --output results.parquet --engine ray --workers 4

Each row of the input (JSONL: one JSON object a line; CSV: a header, then one request a row; Parquet: one request
a row) is one request: its columns are the spec's inputs, and an ``id`` column (``--id-column``), when it is not an
input itself, names the request. The results are written in input order, one record per row::

    {"row": 2, "id": "r2", "outputs": {...}, "degraded": false}
    {"row": 3, "id": "r3", "error": {"kind": "input", "message": "input 'k': ...", "fields": [...]}}

``row`` is the row an editor shows (CSV: the header is row 1; JSONL: the line; Parquet: index + 1). A bad row
(not JSON, a value that does not fit the input's type, a node failing with no fallback) gets an error record of
its own (``kind`` row, input or run); the job never stops for one. A degraded answer also lists its
``fallbacks``. An OUT ending in ``.parquet`` gets the columns row, id, outputs (the JSON text), degraded,
fallbacks (JSON text), error_kind and error; it is written when the job completes, from a journal
``OUT.journal.jsonl`` of the same records.

Records go to OUT (or the journal) as each batch of rows completes, flushed. After Ctrl-C (exit 130) ``--resume``
continues after the last complete record, with the same spec and input (``OUT.meta.json`` records them), so the
finished file is the one an uninterrupted run writes.

The local engine (default) and ``--engine ray`` run the same :class:`SpecWorker` on the same batches of rows:
Ray Data's ``map_batches`` over an actor pool, each actor building the spec's Runtime once (models load once per
actor) and the batches streamed back to the driver, which writes them as the local engine does.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, InputError, LlmrecError, RunError
from ..eval.store import fingerprint

INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
OUTPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_BATCH = 64
PARQUET_COLUMNS = ("row", "id", "outputs", "degraded", "fallbacks", "error_kind", "error")


class BatchError(LlmrecError):
    """The job cannot run as asked (a bad input file, an output that exists, a resume that does not match);
    ``option`` names the command-line option at fault."""

    def __init__(self, message: str, option: str | None = None) -> None:
        self.option = option
        super().__init__(message)


# -- reading requests ------------------------------------------------------------------------------------------


def input_format(path: Path) -> str:
    found = INPUT_FORMATS.get(path.suffix.lower())
    if found is None:
        raise BatchError(f"cannot tell the format of {path} from its suffix '{path.suffix}': name it .jsonl, .csv "
                         "or .parquet", "--input")
    return found


def _cell(value: str, kind: str) -> Any:
    """A CSV cell as the input's type wants it: arrays and objects are JSON text; the rest pydantic converts."""
    if kind in ("array", "object"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # the input's validation says what is wrong with it
    return value


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row, record) for every row; a record that cannot be read is the message saying why (one bad row is
    its own error, not the file's)."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise BatchError(f"{path}: not a readable Parquet file: {exc}", "--input") from None
        row = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row += 1
                yield row, {k: v for k, v in record.items() if v is not None}
        return
    try:
        handle = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise BatchError(f"{path}: file not found", "--input") from None
    except OSError as exc:
        raise BatchError(f"{path}: cannot read the file: {exc.strerror or exc}", "--input") from None
    with handle:
        if fmt == "jsonl":
            for number, line in enumerate(_lines(handle, path), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, f"not valid JSON: {exc.msg} (character {exc.colno})"
                    continue
                yield number, record if isinstance(record, dict) else \
                    f"each line must be a JSON object, found {type(record).__name__}"
            return
        reader = csv.reader(_lines(handle, path))
        header: list[str] | None = None
        last = 0
        try:
            for cells in reader:
                start, last = last + 1, reader.line_num
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if header is None:
                    header = [c.strip() for c in cells]
                    continue
                if len(cells) != len(header):
                    yield start, f"{len(cells)} fields, but the header has {len(header)} (quote fields with commas)"
                    continue
                yield start, {k: v for k, v in zip(header, cells) if v != ""}  # an empty cell: the input's default
        except csv.Error as exc:
            raise BatchError(f"{path}:{reader.line_num}: not valid CSV: {exc}", "--input") from None


def _lines(handle: io.TextIOBase, path: Path) -> Iterator[str]:
    try:
        yield from handle
    except UnicodeDecodeError as exc:
        raise BatchError(f"{path}: bytes that are not UTF-8 ({exc.reason}); save the file as UTF-8",
                         "--input") from None


def read_requests(path: str | os.PathLike[str], inputs: Mapping[str, Any], id_column: str = "id",
                  ) -> Iterator[dict[str, Any]]:
    """Each row of ``path`` as an item for :class:`SpecWorker`: ``{"row", "id", "inputs"}``, or ``{"row", "id",
    "error"}`` for a row that cannot be read. ``inputs`` are the spec's declared inputs (name -> InputSpec);
    the ``id_column`` is dropped from the inputs unless the spec declares it."""
    path = Path(path)
    fmt = input_format(path)
    for row, record in _rows(path, fmt):
        if isinstance(record, str):
            yield {"row": row, "id": None, "error": {"kind": "row", "message": record}}
            continue
        rid = record.get(id_column)
        if id_column not in inputs:
            record.pop(id_column, None)
        if fmt == "csv":
            record = {k: _cell(v, inputs[k].type) if k in inputs else v for k, v in record.items()}
        yield {"row": row, "id": None if rid is None else str(rid), "inputs": record}


# -- running ---------------------------------------------------------------------------------------------------


def record_of(item: Mapping[str, Any], result: Any) -> dict[str, Any]:
    """The output record of one row: its outputs, or its error (``result`` is a RunResult or an exception)."""
    head = {"row": item["row"], "id": item.get("id")}
    if isinstance(result, InputError):
        return {**head, "error": {"kind": "input", "message": str(result), "fields": result.errors}}
    if isinstance(result, RunError):
        return {**head, "error": {"kind": "run", "message": str(result), "node": result.node_id}}
    if isinstance(result, Exception):
        return {**head, "error": {"kind": "run", "message": f"{type(result).__name__}: {result}"}}
    data = result.to_dict()
    return {**head, **data}


class SpecWorker:
    """Runs a spec's requests: the Runtime is built and started once (in ``__init__``: a Ray actor's models load
    once), then each call runs a batch of rows through :meth:`Runtime.run_many`. The local engine and Ray's
    actors both use it, so their records are the same."""

    def __init__(self, spec: str, trust: bool = False, concurrency: int | None = None) -> None:
        from ..api import validate  # lazy: the checker, once a worker starts
        from ..runtime.executor import Runtime  # lazy: the runtime, once a worker starts

        self.graph = validate(spec, trust=trust)
        self.runtime = Runtime(self.graph)
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.runtime.start())

    def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One record per item, in order."""
        todo = [item for item in items if "error" not in item]
        results = self.loop.run_until_complete(
            self.runtime.run_many([item["inputs"] for item in todo], concurrency=self.concurrency)) if todo else []
        answers = iter(results)
        return [{"row": item["row"], "id": item.get("id"), "error": item["error"]} if "error" in item
                else record_of(item, next(answers)) for item in items]

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Ray Data's ``map_batches`` call: ``group`` JSON texts (each a list of items, one batch of the local
        engine) in, a ``record`` JSON text per item out."""
        import numpy as np

        records = [r for text in batch["group"] for r in self.run(json.loads(text))]
        return {"row": np.asarray([r["row"] for r in records], dtype=np.int64),
                "record": np.asarray([json.dumps(r, ensure_ascii=False) for r in records], dtype=object)}

    def close(self) -> None:
        self.loop.run_until_complete(self.runtime.close())
        self.loop.close()


# -- writing results -------------------------------------------------------------------------------------------


def output_format(path: Path) -> str:
    found = OUTPUT_FORMATS.get(path.suffix.lower())
    if found is None:
        raise BatchError(f"cannot tell the output format of {path} from its suffix '{path.suffix}': name it "
                         ".jsonl or .parquet", "--output")
    return found


def journal_path(output: Path) -> Path:
    """Where records go as they complete: OUT itself for JSONL, OUT.journal.jsonl for Parquet."""
    return output if output_format(output) == "jsonl" else output.with_name(output.name + ".journal.jsonl")


def meta_path(output: Path) -> Path:
    return output.with_name(output.name + ".meta.json")


def _complete_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a journal; a last line cut short by an interruption is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    records = []
    for line in data[:end].decode("utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def parquet_table(records: list[dict[str, Any]]) -> Any:
    """The records as an Arrow table with :data:`PARQUET_COLUMNS` (outputs and fallbacks as JSON text)."""
    import pyarrow as pa

    def text(value: Any) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False)

    columns = {
        "row": pa.array([r["row"] for r in records], pa.int64()),
        "id": pa.array([r.get("id") for r in records], pa.string()),
        "outputs": pa.array([text(r.get("outputs")) for r in records], pa.string()),
        "degraded": pa.array([r.get("degraded") for r in records], pa.bool_()),
        "fallbacks": pa.array([text(r.get("fallbacks")) for r in records], pa.string()),
        "error_kind": pa.array([(r.get("error") or {}).get("kind") for r in records], pa.string()),
        "error": pa.array([text(r.get("error")) for r in records], pa.string()),
    }
    return pa.table(columns)


@dataclass
class BatchSummary:
    """What a job did: rows written (``written``, of which ``resumed`` were there before), ``failed`` rows
    (error records), where the results are."""

    output: Path
    written: int = 0
    resumed: int = 0
    failed: int = 0
    engine: str = "local"
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a job: ``summary`` says how many rows were kept, for the resume hint."""

    def __init__(self, summary: BatchSummary) -> None:
        self.summary = summary
        super().__init__()


def _meta(spec: Path, input_path: Path, graph: Any, id_column: str) -> dict[str, Any]:
    return {"spec": str(spec.resolve()), "input": str(input_path.resolve()), "id_column": id_column,
            "spec_digest": fingerprint({"spec": graph.document.data})}


def _open_journal(output: Path, meta: dict[str, Any], resume: bool) -> tuple[Path, list[dict[str, Any]]]:
    journal = journal_path(output)
    marker = meta_path(output)
    if not resume:
        if output.exists() or (journal != output and journal.exists()):
            raise BatchError(f"{output if output.exists() else journal} exists: pass --resume to continue that "
                             "job, or remove it (or choose another --output) to start over", "--output")
        output.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return journal, []
    if journal != output and output.exists() and not journal.exists():
        raise BatchError(f"{output} is complete: nothing to resume", "--resume")
    if marker.exists():
        before = json.loads(marker.read_text(encoding="utf-8"))
        changed = [k for k in ("spec", "input", "id_column", "spec_digest") if before.get(k) != meta.get(k)]
        if changed:
            what = ", ".join("the spec's content" if k == "spec_digest" else k for k in changed)
            raise BatchError(f"{output} was written by another job ({what} changed): resume with the same spec "
                             "and input, or start over with another --output", "--resume")
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return journal, _complete_records(journal)


def _chunks(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_batch(
    spec: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    graph: Any = None,
    engine: str = "local",
    resume: bool = False,
    batch_size: int = DEFAULT_BATCH,
    concurrency: int | None = None,
    id_column: str = "id",
    trust: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Run ``spec`` over every row of ``input_path``, writing one record per row to ``output`` in input order
    (module docstring). ``graph`` is the validated spec when the caller has it. ``on_record`` sees each record
    as it is written. Ctrl-C raises :class:`BatchInterrupted`; ``resume=True`` continues such a job."""
    import time

    from ..api import validate  # lazy: the checker, only when a job runs

    spec, input_path, output = Path(spec), Path(input_path), Path(output)
    fmt = output_format(output)
    input_format(input_path)
    if not input_path.is_file():
        raise BatchError(f"{input_path}: {'is a folder, not a file' if input_path.is_dir() else 'file not found'}",
                         "--input")
    if batch_size < 1:
        raise BatchError("must be at least 1", "--batch-size")
    if engine not in ("local", "ray"):
        raise BatchError(f"'{engine}' is not one of local, ray", "--engine")
    graph = graph if graph is not None else validate(spec, trust=trust)
    if engine == "ray":  # before anything is written: a cluster that cannot be reached leaves no file behind
        from .engine import connect  # lazy: Ray, only with --engine ray

        connect(address, num_cpus)
    journal, done = _open_journal(output, _meta(spec, input_path, graph, id_column), resume)
    summary = BatchSummary(output, written=len(done), resumed=len(done),
                           failed=sum(1 for r in done if "error" in r), engine=engine)
    skip = {r["row"] for r in done}
    started = time.perf_counter()
    items = (item for item in read_requests(input_path, graph.spec.inputs, id_column) if item["row"] not in skip)
    handle = journal.open("a", encoding="utf-8")

    def write(records: list[dict[str, Any]]) -> None:
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        handle.flush()
        for r in records:
            summary.written += 1
            summary.failed += "error" in r
            if on_record is not None:
                on_record(r)

    try:
        if engine == "ray":
            _run_on_ray(spec, items, write, trust=trust, batch_size=batch_size, concurrency=concurrency,
                        address=address, num_cpus=num_cpus, workers=workers, progress=progress, summary=summary)
        else:
            worker = SpecWorker(str(spec), trust, concurrency)
            try:
                for chunk in _chunks(items, batch_size):
                    write(worker.run(chunk))
            finally:
                worker.close()
    except KeyboardInterrupt:
        handle.close()
        summary.seconds = time.perf_counter() - started
        raise BatchInterrupted(summary) from None
    except DataError as exc:
        handle.close()
        raise BatchError(str(exc), "--input") from None
    handle.close()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        records = _complete_records(journal)
        records.sort(key=lambda r: r["row"])
        staging = output.with_name(f".{output.name}.tmp")
        pq.write_table(parquet_table(records), staging)
        staging.replace(output)
        journal.unlink()
    summary.seconds = time.perf_counter() - started
    return summary


def _run_on_ray(spec: Path, items: Iterator[dict[str, Any]], write: Callable[[list[dict[str, Any]]], None], *,
                trust: bool, batch_size: int, concurrency: int | None, address: str | None, num_cpus: int | None,
                workers: int | None, progress: bool, summary: BatchSummary) -> None:
    """Ray Data over an actor pool of :class:`SpecWorker`; the records stream back and are written in row order
    (a batch that arrives early waits for the ones before it)."""
    from .engine import connect, map_in_order, pool_size  # lazy: Ray, only with --engine ray

    groups = [json.dumps(chunk, ensure_ascii=False) for chunk in _chunks(items, batch_size)]
    if not groups:
        return
    ray = connect(address, num_cpus)
    size = min(pool_size(ray, workers), len(groups))
    summary.extra["workers"] = size
    order = [item["row"] for text in groups for item in json.loads(text)]
    waiting: dict[int, dict[str, Any]] = {}
    position = 0
    for batch in map_in_order(ray, groups, SpecWorker,
                              {"spec": str(spec.resolve()), "trust": trust, "concurrency": concurrency},
                              workers=size, progress=progress):
        for text in batch["record"]:
            record = json.loads(text)
            waiting[record["row"]] = record
        ready = []
        while position < len(order) and order[position] in waiting:
            ready.append(waiting.pop(order[position]))
            position += 1
        if ready:
            write(ready)


__all__ = ["BatchError", "BatchInterrupted", "BatchSummary", "DEFAULT_BATCH", "PARQUET_COLUMNS", "SpecWorker",
           "journal_path", "meta_path", "parquet_table", "read_requests", "record_of", "run_batch"]
