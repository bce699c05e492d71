"""`--engine ray` on a local Ray started here: the same records and vectors as the local engine, resumable.

Ray is part of the test extra: when it is missing these tests fail (they are not skipped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmrec.distributed.batch import BatchInterrupted, run_batch
from llmrec.distributed.embedding import embed_catalog, source_from_file
from llmrec.testing import write_spec

SPEC = """
    name: greet
    inputs:
      user: {type: string}
      k: {type: integer, default: 2, minimum: 1}
    nodes:
      hello:
        type: text.template
        config: {template: "hello {{ who }} x{{ n }}"}
        inputs: {who: "${inputs.user}", n: "${inputs.k}"}
    outputs:
      text: ${hello}
"""


# ray_local: tests/distributed/conftest.py (one Ray for this folder's Ray tests)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("ray-spec"), SPEC)


def test_batch_on_ray_resumes_a_job_and_writes_what_the_local_engine_writes(ray_local, spec: Path,
                                                                            tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "user": f"u{i}", "k": i} for i in range(1, 13)]
    rows[8]["k"] = 0  # an input error, in a batch the Ray actors run
    lines = [json.dumps(r) for r in rows]
    lines.insert(10, "{broken")  # an unreadable row, too
    requests = tmp_path / "in.jsonl"
    requests.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_batch(spec, requests, tmp_path / "local.jsonl", batch_size=2)
    count = 0

    def stop(record: dict) -> None:
        nonlocal count
        count += 1
        if count == 3:
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted):  # the local engine stops after two batches (4 rows)
        run_batch(spec, requests, tmp_path / "part.jsonl", batch_size=2, on_record=stop)
    # Ray's actors run the other 9 rows (5 batches over 2 actors), streamed back and written in row order
    resumed = run_batch(spec, requests, tmp_path / "part.jsonl", engine="ray", batch_size=2, workers=2,
                        resume=True)
    assert (resumed.resumed, resumed.written, resumed.failed) == (4, 13, 2)
    assert resumed.extra["workers"] == 2
    assert (tmp_path / "part.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_embed_on_ray_gives_the_local_engine_s_vectors_and_index(ray_local, tmp_path: Path) -> None:
    catalog = tmp_path / "items.csv"
    words = ["coffee", "grinder", "trail", "boots", "lamp", "desk", "kettle", "tent", "yoga", "mat", "camera"]
    catalog.write_text("id,title\n" + "".join(f"i{i},{words[i % 11]} {words[(i * 7) % 11]} model {i}\n"
                                              for i in range(40)), encoding="utf-8")
    source = source_from_file(catalog, model=None)
    local = embed_catalog(source, tmp_path / "local", batch_size=8, index="lancedb-flat")
    ray_meta = embed_catalog(source, tmp_path / "ray", engine="ray", batch_size=8, workers=2, index="lancedb-flat")
    a, b = np.load(tmp_path / "local" / "vectors.npy"), np.load(tmp_path / "ray" / "vectors.npy")
    assert a.shape == (40, 384) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert json.loads((tmp_path / "ray" / "ids.json").read_text()) == [f"i{i}" for i in range(40)]
    assert ray_meta["workers"] == 2 and ray_meta["content_key"] == local["content_key"]
    # the vectors are the embedder's own (through its cache or not), and the index finds an item by its vector
    from llmrec.embed import Embedder
    from llmrec.index import VectorIndex

    assert np.allclose(Embedder().encode(source.texts[:3]), a[:3], atol=1e-6)
    index = VectorIndex.open(tmp_path / "ray" / "index")
    ids, _ = index.search(b[[5]], 1)[0]
    assert list(ids) == ["i5"]


def test_a_worker_that_cannot_load_the_spec_is_one_clear_error(ray_local, tmp_path: Path) -> None:
    from llmrec.api import validate
    from llmrec.distributed.engine import WorkerError

    (tmp_path / "items.csv").write_text("id,title\na,x\n", encoding="utf-8")
    spec = write_spec(tmp_path, """
        name: shop
        inputs: {user: {type: string}}
        resources:
          items: {type: catalog, config: {path: items.csv}}
        nodes:
          hello: {type: text.template, config: {template: "hi {{ who }}"}, inputs: {who: "${inputs.user}"}}
        outputs: {text: "${hello}"}
    """)
    graph = validate(spec)  # as the driver saw it; the workers then find no catalog file (not on their node)
    (tmp_path / "items.csv").unlink()
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"user": "ann"}\n', encoding="utf-8")
    with pytest.raises(WorkerError, match="a Ray worker failed: .*items.csv.*docs/scaling.md"):
        run_batch(spec, requests, tmp_path / "out.jsonl", graph=graph, engine="ray", workers=1)
