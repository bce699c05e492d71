"""`llmrec embed` on the local engine: a spec's catalog embedded as its embedder embeds it, with an index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmrec.cli import main
from llmrec.testing import write_spec

def test_embed_a_spec_s_catalog_with_its_embedder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "items.csv").write_text("sku,name,blurb\n" + "".join(
        f"s{i},{word} {i},a {word} for every day\n" for i, word in enumerate(["kettle", "tent", "lamp"] * 10)),
        encoding="utf-8")
    spec = write_spec(tmp_path, """
        name: shop
        inputs: {user: {type: string}}
        resources:
          items:
            type: catalog
            config: {path: items.csv, id: sku, title: name, text: "{{ name }}. {{ blurb }}"}
          model:
            type: embedder
            config: {batch_size: 8}
        nodes:
          hello: {type: text.template, config: {template: "hi {{ who }}"}, inputs: {who: "${inputs.user}"}}
        outputs: {text: "${hello}"}
    """)
    out = tmp_path / "shop"
    assert main(["embed", str(spec), "-o", str(out), "--batch-size", "16", "--index", "lancedb-flat"]) == 0
    assert "30 items embedded (all-MiniLM-L6-v2, dim 384)" in capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    ids = json.loads((out / "ids.json").read_text())
    vectors = np.load(out / "vectors.npy")
    from llmrec.data.files import read_catalog
    from llmrec.embed import Embedder
    from llmrec.index import VectorIndex

    catalog = read_catalog(tmp_path / "items.csv", id="sku", title="name", text="{{ name }}. {{ blurb }}")
    assert ids == [f"s{i}" for i in range(30)] and vectors.shape == (30, 384)
    _, expected = Embedder(cache_dir=tmp_path / "cache").embed_items(catalog, progress=False)  # the embedder's own
    assert np.allclose(vectors, expected, atol=1e-5)
    assert meta["items"] == 30 and meta["engine"] == "local" and meta["index"] == "lancedb-flat"
    hits, _ = VectorIndex.open(out / "index").search(vectors[[4]], 2)[0]
    assert hits[0] == "s4"


def test_embed_refuses_what_it_cannot_embed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, """
        name: none
        inputs: {user: {type: string}}
        nodes:
          hello: {type: text.template, config: {template: "hi {{ who }}"}, inputs: {who: "${inputs.user}"}}
        outputs: {text: "${hello}"}
    """)
    assert main(["embed", str(spec), "-o", str(tmp_path / "o")]) == 2
    assert "needs exactly one dataset or catalog resource" in capsys.readouterr().err
    (tmp_path / "items.csv").write_text("id,name\na,x\n", encoding="utf-8")
    assert main(["embed", str(tmp_path / "items.csv"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no column 'title'" in err and "Traceback" not in err
    assert main(["embed", str(tmp_path / "items.csv"), "-o", str(tmp_path / "o"), "--title", "name",
                 "--index", "hnsw"]) == 2
    assert "'hnsw' is not one of" in capsys.readouterr().err
