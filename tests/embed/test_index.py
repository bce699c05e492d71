"""Vector indexes (llmrec/index.py): exact and LanceDB agree, exclusions, reopening, interrupted builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import llmrec.index as index_module
from llmrec.index import AUTO_EXACT_MAX, VectorIndex, resolve_kind


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


@pytest.mark.parametrize("kind", ["exact", "lancedb-flat"])
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


def test_auto_is_exact_up_to_the_threshold_and_ann_above() -> None:
    assert resolve_kind("auto", AUTO_EXACT_MAX) == "exact"
    assert resolve_kind("auto", AUTO_EXACT_MAX + 1) == "lancedb-ann"
    with pytest.raises(ValueError, match="unknown index kind"):
        resolve_kind("faiss", 10)


def test_empty_and_mismatched_inputs(tmp_path: Path) -> None:
    empty = VectorIndex.build([], np.zeros((0, 4), np.float32), kind="lancedb-flat", path=tmp_path)
    assert empty.search(np.ones((1, 4)), 5) == [([], pytest.approx(np.zeros(0)))]
    with pytest.raises(ValueError, match="does not match"):
        VectorIndex.build(["a"], np.zeros((2, 4)), kind="exact")
    index = VectorIndex.build(["a", "b"], np.eye(2, 4, dtype=np.float32), kind="exact")
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones((1, 3)), 1)
