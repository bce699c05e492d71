"""Vector indexes (llmrec/index.py): exact, FAISS and LanceDB agree, exclusions, reopening, interrupted builds."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import llmrec.index as index_module
from llmrec.index import AUTO_EXACT_MAX, FaissIndex, IvfParams, VectorIndex, resolve_kind


@pytest.fixture(scope="module")
def vectors() -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((400, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    return [f"item{i}" for i in range(400)], matrix, queries


def brute_force(matrix: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return list(np.argsort(-(m @ (q / np.linalg.norm(q))), kind="stable")[:k])


def test_exact_search_is_the_brute_force_cosine_top_k(vectors) -> None:
    ids, matrix, queries = vectors
    index = VectorIndex.build(ids, matrix, kind="exact")
    for q, (found, scores) in zip(queries, index.search(queries, 10)):
        assert found == [ids[i] for i in brute_force(matrix, q, 10)]
        assert np.all(np.diff(scores) <= 0) and -1.0 <= scores[-1] <= scores[0] <= 1.0


def test_exact_and_lancedb_flat_give_the_same_top_k_and_scores(vectors, tmp_path: Path) -> None:
    ids, matrix, queries = vectors
    exact = VectorIndex.build(ids, matrix, kind="exact")
    flat = VectorIndex.build(ids, matrix, kind="lancedb-flat", path=tmp_path / "idx")
    assert flat.kind == "lancedb-flat" and (tmp_path / "idx" / index_module.POINTER).is_file()
    for (e_ids, e_scores), (f_ids, f_scores) in zip(exact.search(queries, 10), flat.search(queries, 10)):
        assert e_ids == f_ids
        assert np.allclose(e_scores, f_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "lancedb-flat", "faiss-ivf"])
def test_excluded_ids_never_come_back_and_k_is_still_filled(vectors, tmp_path: Path, kind: str) -> None:
    ids, matrix, queries = vectors
    index = VectorIndex.build(ids, matrix, kind=kind, path=tmp_path / kind)
    best = index.search(queries[:1], 5)[0][0]
    found, _ = index.search(queries[:1], 5, exclude=best[:3] + ["not-an-id"])[0]
    assert len(found) == 5 and not set(found) & set(best[:3]) and found[:2] == best[3:5]


def test_an_unchanged_index_is_reopened_not_rebuilt(vectors, tmp_path: Path) -> None:
    ids, matrix, queries = vectors
    first = VectorIndex.build(ids, matrix, kind="lancedb-flat", path=tmp_path, key="model-v1")
    again = VectorIndex.build(ids, matrix, kind="lancedb-flat", path=tmp_path, key="model-v1")
    assert not first.reused and again.reused
    assert again.search(queries, 3)[0][0] == first.search(queries, 3)[0][0]
    changed = VectorIndex.build(ids, matrix, kind="lancedb-flat", path=tmp_path, key="model-v2")
    assert not changed.reused
    assert len(list(tmp_path.glob("v-*"))) == 1  # the superseded build was removed


def test_an_interrupted_build_keeps_the_previous_index(vectors, tmp_path: Path, monkeypatch) -> None:
    ids, matrix, queries = vectors
    old = VectorIndex.build(ids[:100], matrix[:100], kind="lancedb-flat", path=tmp_path, key="old")
    expected = old.search(queries, 5)

    class Crash(BaseException):
        pass

    def crash(root, data):
        raise Crash()

    monkeypatch.setattr(index_module, "_write_pointer", crash)  # the new table is written, the switch never happens
    with pytest.raises(Crash):
        VectorIndex.build(ids, matrix, kind="lancedb-flat", path=tmp_path, key="new")
    monkeypatch.undo()

    reopened = VectorIndex.open(tmp_path)
    assert reopened.ids == ids[:100]
    assert [h[0] for h in reopened.search(queries, 5)] == [h[0] for h in expected]
    assert VectorIndex.build(ids[:100], matrix[:100], kind="lancedb-flat", path=tmp_path, key="old").reused


def test_lancedb_ann_on_a_small_table_finds_the_exact_neighbours(vectors, tmp_path: Path) -> None:
    ids, matrix, queries = vectors
    ann = VectorIndex.build(ids, matrix, kind="lancedb-ann", path=tmp_path)
    exact = VectorIndex.build(ids, matrix, kind="exact")
    hits = [len(set(a[0]) & set(e[0])) for a, e in zip(ann.search(queries, 10), exact.search(queries, 10))]
    assert sum(hits) / (10 * len(hits)) >= 0.9


def test_auto_is_exact_up_to_the_threshold_and_faiss_above() -> None:
    assert resolve_kind("auto", AUTO_EXACT_MAX) == "exact"
    assert resolve_kind("auto", AUTO_EXACT_MAX + 1) == "faiss-ivf"
    assert resolve_kind("lancedb-ann", 10) == "lancedb-ann"  # an explicit kind is kept
    with pytest.raises(ValueError, match="unknown index kind"):
        resolve_kind("faiss", 10)


def test_auto_falls_back_to_lancedb_ann_with_a_warning_without_faiss(monkeypatch, caplog, tmp_path: Path) -> None:
    def no_faiss():
        raise ImportError("No module named 'faiss'")

    monkeypatch.setattr(index_module, "_faiss", no_faiss)
    with caplog.at_level(logging.WARNING, logger="llmrec.index"):
        assert resolve_kind("auto", AUTO_EXACT_MAX + 1) == "lancedb-ann"
    assert "faiss" in caplog.text and "lancedb-ann" in caplog.text
    assert resolve_kind("auto", 100) == "exact"
    with pytest.raises(ImportError, match="faiss"):  # asked for by name: a clear error, nothing written
        VectorIndex.build(["a", "b"], np.eye(2, 4), kind="faiss-ivf", path=tmp_path)
    assert not any(tmp_path.iterdir())


# -- faiss-ivf ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clustered() -> tuple[list[str], np.ndarray, np.ndarray]:
    """3,000 vectors around 30 centres in 32 dimensions, and 40 queries from the same mixture (not the data)."""
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((30, 32)).astype(np.float32)
    matrix = centres[rng.integers(0, 30, 3000)] + 0.4 * rng.standard_normal((3000, 32)).astype(np.float32)
    queries = centres[rng.integers(0, 30, 40)] + 0.4 * rng.standard_normal((40, 32)).astype(np.float32)
    return [f"doc{i}" for i in range(3000)], matrix, queries


def recall_at(found: list, truth: list) -> float:
    return float(np.mean([len(set(f[0]) & set(t[0])) / len(t[0]) for f, t in zip(found, truth)]))


def test_faiss_ivf_finds_the_exact_neighbours_with_cosine_scores(clustered) -> None:
    ids, matrix, queries = clustered
    exact = VectorIndex.build(ids, matrix, kind="exact")
    ivf = VectorIndex.build(ids, matrix, kind="faiss-ivf")
    assert isinstance(ivf, FaissIndex) and ivf.path is None  # no path: in memory only
    assert 1 < ivf.faiss_index.nlist < len(ids) and ivf.nprobe < ivf.faiss_index.nlist  # a real partial search
    truth, found = exact.search(queries, 10), ivf.search(queries, 10)
    assert recall_at(found, truth) >= 0.95
    for (f_ids, f_scores), q in zip(found, queries):
        expected = exact.matrix[[exact._position[i] for i in f_ids]] @ (q / np.linalg.norm(q))
        assert np.allclose(f_scores, expected, atol=1e-5) and np.all(np.diff(f_scores) <= 1e-6)
    # a batch gives what one query at a time gives (the batch path runs on all threads)
    assert [h[0] for h in ivf.search(queries[:5], 10)] == [ivf.search(q[None], 10)[0][0] for q in queries[:5]]


def test_faiss_ivf_probing_fewer_lists_loses_recall_and_more_regains_it(clustered) -> None:
    ids, matrix, queries = clustered
    truth = VectorIndex.build(ids, matrix, kind="exact").search(queries, 10)
    ivf = VectorIndex.build(ids, matrix, kind="faiss-ivf", ivf=IvfParams(lists=40, nprobe=1))
    one = recall_at(ivf.search(queries, 10), truth)
    ivf.nprobe = 40  # every list: exhaustive
    assert one < recall_at(ivf.search(queries, 10), truth) == 1.0


def test_faiss_ivf_persists_and_an_unchanged_index_is_reopened(clustered, tmp_path: Path) -> None:
    ids, matrix, queries = clustered
    first = VectorIndex.build(ids, matrix, kind="faiss-ivf", path=tmp_path, key="model-v1")
    folders = list(tmp_path.glob("v-*"))
    assert len(folders) == 1 and (folders[0] / "ivf.faiss").is_file() and (folders[0] / "vectors.lance").is_dir()
    expected = [h[0] for h in first.search(queries, 10)]

    again = VectorIndex.build(ids, matrix, kind="faiss-ivf", path=tmp_path, key="model-v1",
                              ivf=IvfParams(nprobe=3))  # a search setting: reopened, not rebuilt
    assert not first.reused and again.reused and again.nprobe == 3
    opened = VectorIndex.open(tmp_path)
    assert isinstance(opened, FaissIndex) and opened.ids == ids and opened.nprobe == first.nprobe
    assert [h[0] for h in opened.search(queries, 10)] == expected

    retrained = VectorIndex.build(ids, matrix, kind="faiss-ivf", path=tmp_path, key="model-v1",
                                  ivf=IvfParams(lists=20))  # a build setting: rebuilt
    assert not retrained.reused and retrained.faiss_index.nlist == 20
    assert len(list(tmp_path.glob("v-*"))) == 1  # the superseded build was removed


@pytest.mark.parametrize("crash_in", ["_write_faiss", "_write_pointer"])
def test_an_interrupted_faiss_build_keeps_the_previous_index(clustered, tmp_path: Path, monkeypatch,
                                                             crash_in: str) -> None:
    ids, matrix, queries = clustered
    old = VectorIndex.build(ids[:500], matrix[:500], kind="faiss-ivf", path=tmp_path, key="old")
    expected = [h[0] for h in old.search(queries, 5)]

    class Crash(BaseException):
        pass

    def crash(*args):
        raise Crash()

    monkeypatch.setattr(index_module, crash_in, crash)
    with pytest.raises(Crash):
        VectorIndex.build(ids, matrix, kind="faiss-ivf", path=tmp_path, key="new")
    monkeypatch.undo()

    reopened = VectorIndex.open(tmp_path)
    assert reopened.kind == "faiss-ivf" and reopened.ids == ids[:500]
    assert [h[0] for h in reopened.search(queries, 5)] == expected
    assert VectorIndex.build(ids[:500], matrix[:500], kind="faiss-ivf", path=tmp_path, key="old").reused


def test_a_damaged_faiss_file_is_rebuilt(clustered, tmp_path: Path) -> None:
    ids, matrix, queries = clustered
    VectorIndex.build(ids[:500], matrix[:500], kind="faiss-ivf", path=tmp_path, key="k")
    (next(tmp_path.glob("v-*")) / "ivf.faiss").write_bytes(b"not an index")
    again = VectorIndex.build(ids[:500], matrix[:500], kind="faiss-ivf", path=tmp_path, key="k")
    assert not again.reused and len(again.search(queries[:1], 5)[0][0]) == 5


def test_faiss_ivf_on_tiny_catalogs_and_large_k(clustered) -> None:
    ids, matrix, queries = clustered
    tiny = VectorIndex.build(ids[:7], matrix[:7], kind="faiss-ivf")  # fewer vectors than FAISS trains lists on
    exact = VectorIndex.build(ids[:7], matrix[:7], kind="exact")
    assert tiny.faiss_index.nlist == 1
    assert tiny.search(queries[:2], 50)[0][0] == exact.search(queries[:2], 50)[0][0]  # k above n: all 7
    found, _ = tiny.search(queries[:1], 50, exclude=ids[:7])[0]
    assert found == []
    assert IvfParams().num_lists(1_000_000) == 1000 and IvfParams(lists=64).num_lists(10) == 10


def test_empty_and_mismatched_inputs(tmp_path: Path) -> None:
    empty = VectorIndex.build([], np.zeros((0, 4), np.float32), kind="lancedb-flat", path=tmp_path)
    assert empty.search(np.ones((1, 4)), 5) == [([], pytest.approx(np.zeros(0)))]
    with pytest.raises(ValueError, match="does not match"):
        VectorIndex.build(["a"], np.zeros((2, 4)), kind="exact")
    index = VectorIndex.build(["a", "b"], np.eye(2, 4, dtype=np.float32), kind="exact")
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones((1, 3)), 1)
