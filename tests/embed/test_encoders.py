"""The encoders behind the Embedder: ONNX Runtime gives sentence-transformers' vectors (within ONNX_TOLERANCE)
without importing torch, converts a model folder once, and falls back (or fails, when asked for) with a reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmrec.embed import Embedder, resolve_model_path
from llmrec.encoders import ONNX_TOLERANCE, Pipeline
from llmrec.errors import DataError

TEXTS = [
    "football transfer news",
    "",
    "Ünïcode — naïve café, 東京 and emoji 🎬",
    "interest rates rise again as inflation " * 80,  # longer than the model's 256 tokens: truncated alike
    "a",
    "The film won three Oscars, including best picture.",
]


@pytest.fixture(scope="module")
def minilm() -> Path:
    return resolve_model_path("all-MiniLM-L6-v2")


def test_minilm_on_onnx_runtime_gives_the_sentence_transformers_vectors(minilm, tmp_path) -> None:
    onnx = Embedder(backend="onnx", batch_size=4, cache_dir=tmp_path).load()
    torch_ = Embedder(backend="sentence-transformers", batch_size=4, cache_dir=tmp_path).load()
    assert onnx.describe()["backend"] == "onnx" and torch_.describe()["backend"] == "sentence-transformers"
    a, b = onnx.encode(TEXTS), torch_.encode(TEXTS)  # two batches, padded differently
    assert a.shape == b.shape == (len(TEXTS), 384) and a.dtype == np.float32
    assert np.abs(a - b).max() <= ONNX_TOLERANCE
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    alone = np.stack([onnx.encode([t])[0] for t in TEXTS])  # padding never changes a text's vector
    assert np.abs(alone - a).max() <= ONNX_TOLERANCE
    assert onnx.cache_key == torch_.cache_key  # the same vectors, so the same cached catalog


def test_the_onnx_backend_imports_neither_torch_nor_sentence_transformers(minilm) -> None:
    Embedder(backend="onnx").load()  # converted once (in this process) if it was not already
    code = ("import sys; from llmrec.embed import Embedder; e = Embedder(backend='auto'); e.encode('hi'); "
            "print(e.describe()['backend'], 'torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["onnx", "False", "False"]


def _tiny_model(folder: Path, minilm: Path, pooling: str, extra_modules: list[dict] | None = None) -> Path:
    """A random-weight two-layer BERT saved as a sentence-transformers folder, with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               *(extra_modules or [])]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


def test_a_local_model_folder_is_converted_once_into_the_cache_dir(minilm, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    folder = _tiny_model(tmp_path / "tiny", minilm, "cls")
    onnx = Embedder(str(folder), backend="onnx", batch_size=3).load()
    converted = list((tmp_path / "cache" / "onnx").glob("*/model.onnx"))
    assert len(converted) == 1 and converted[0].parent.name == onnx.version
    assert not list((tmp_path / "cache" / "onnx").glob("*/.*partial"))
    reference = Embedder(str(folder), backend="sentence-transformers", batch_size=3).load()
    a, b = onnx.encode(TEXTS), reference.encode(TEXTS)
    assert a.shape == (len(TEXTS), 32) and np.abs(a - b).max() <= ONNX_TOLERANCE
    stamp = converted[0].stat().st_mtime_ns
    Embedder(str(folder), backend="onnx").load()  # the next process reuses the file
    assert converted[0].stat().st_mtime_ns == stamp


def test_a_pipeline_onnx_runtime_cannot_run_falls_back_or_fails_with_the_reason(minilm, tmp_path,
                                                                              monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    folder = _tiny_model(tmp_path / "maxpool", minilm, "max")
    assert "pools by pooling_mode_max_tokens" in Pipeline(folder).reason
    auto = Embedder(str(folder), backend="auto").load()
    assert auto.describe()["backend"] == "sentence-transformers" and auto.encode(["x"]).shape == (1, 32)
    with pytest.raises(DataError, match="cannot run on ONNX Runtime: it pools by") as err:
        Embedder(str(folder), backend="onnx").load()
    assert "sentence-transformers" in (err.value.hint or "")
    assert not (tmp_path / "cache" / "onnx").exists()  # nothing converted for a model it cannot run
    on_gpu = Embedder(str(_tiny_model(tmp_path / "cls", minilm, "cls")), backend="onnx", device="cuda")
    with pytest.raises(DataError, match="CPU only"):
        on_gpu.load()


def test_the_int8_model_is_made_once_and_cached_under_its_own_key(minilm, tmp_path) -> None:
    int8 = Embedder(backend="onnx-int8", cache_dir=tmp_path).load()
    float_ = Embedder(backend="onnx", cache_dir=tmp_path).load()
    assert int8.describe()["backend"] == "onnx-int8"
    assert int8.cache_key == float_.cache_key + "-int8"
    a, b = int8.encode(TEXTS), float_.encode(TEXTS)
    cosine = (a * b).sum(axis=1)
    assert np.abs(a - b).max() > ONNX_TOLERANCE  # other vectors, so never mixed with the float model's
    assert cosine.min() > 0.8, cosine


def test_an_onnx_file_whose_data_points_outside_its_folder_is_refused(minilm, tmp_path, monkeypatch) -> None:
    """A model folder from a spec is data: ONNX Runtime refuses external tensor data outside the model's folder,
    so an ONNX file cannot make llmrec read /etc/hostname (or anything else) as weights."""
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    folder = _tiny_model(tmp_path / "hostile", minilm, "mean")
    weights = numpy_helper.from_array(np.zeros((32,), np.float32), "w")
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("raw_data")
    for key, value in (("location", "../../../../../../etc/hostname"), ("offset", "0"), ("length", "128")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "t", 32])
    graph = helper.make_graph([helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
                               helper.make_node("Unsqueeze", ["f", "axes"], ["g"]),
                               helper.make_node("Add", ["g", "w"], ["last_hidden_state"])],
                              "hostile", [ids], [out],
                              [weights, numpy_helper.from_array(np.array([2], np.int64), "axes")])
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(DataError, match="escapes model directory"):
        Embedder(str(folder), backend="onnx").load()
    assert not (tmp_path / "cache" / "onnx").exists()  # the folder's own file was used, nothing converted


def test_a_pooling_module_outside_the_model_folder_is_not_read(minilm, tmp_path) -> None:
    folder = _tiny_model(tmp_path / "escape", minilm, "mean")
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["path"] = "../../elsewhere"
    (folder / "modules.json").write_text(json.dumps(modules))
    assert Pipeline(folder).reason == "its pooling module lies outside the model folder"


def test_queries_on_one_thread_and_catalogs_on_all_give_the_same_vectors(minilm, tmp_path, monkeypatch) -> None:
    """A query (SMALL texts or fewer) runs on a one-thread session, a catalog on a session with every thread;
    a text's vector is the same from either."""
    from llmrec import encoders

    monkeypatch.setenv("LLMREC_THREADS", "2")
    onnx = Embedder(backend="onnx", batch_size=16, cache_dir=tmp_path).load()
    model = onnx._model
    texts = [f"{t} {i}" for i in range(encoders.SMALL // len(TEXTS) + 2) for t in TEXTS]
    assert len(texts) > encoders.SMALL and model._wide is None
    wide = onnx.encode(texts)
    assert model._wide is not None and model._wide is not model.session
    narrow = np.stack([onnx.encode([t])[0] for t in texts])
    assert np.abs(wide - narrow).max() <= ONNX_TOLERANCE
