"""``llmrec serve --workers N`` gives each worker its share of the cores: the thread variables it sets (a pure
function of the worker count, the cores and the environment), and the FAISS index following ``$LLMREC_THREADS``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from llmrec.serve.commands import THREAD_VARS, available_cores, worker_thread_env


def test_one_worker_leaves_the_thread_counts_alone() -> None:
    assert worker_thread_env(1, 16, {}) == {}


@pytest.mark.parametrize(("workers", "cores", "each"), [(2, 2, "1"), (2, 8, "4"), (3, 8, "2"), (4, 2, "1"),
                                                        (16, 1, "1")])
def test_n_workers_get_cores_over_n_threads_each_and_at_least_one(workers: int, cores: int, each: str) -> None:
    assert worker_thread_env(workers, cores, {}) == {name: each for name in THREAD_VARS}


def test_values_the_user_set_are_kept() -> None:
    env = worker_thread_env(2, 8, {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "", "PATH": "/bin"})
    assert "OMP_NUM_THREADS" not in env  # set by the user: not overridden
    assert env == {"LLMREC_THREADS": "4", "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4"}  # "" counts as unset


def test_the_users_llmrec_threads_sets_the_others() -> None:
    assert worker_thread_env(2, 8, {"LLMREC_THREADS": "3"}) == {
        "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}
    assert worker_thread_env(2, 8, {"LLMREC_THREADS": "many"})["OMP_NUM_THREADS"] == "4"  # not a number: ignored


def test_available_cores_is_the_affinity_where_there_is_one() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected >= 1


def test_faiss_threads_follow_llmrec_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    faiss = pytest.importorskip("faiss")
    from llmrec.index import VectorIndex

    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((600, 16)).astype(np.float32)
    ids = [f"d{i}" for i in range(600)]
    calls: list[int] = []
    real = faiss.omp_set_num_threads

    def record(n: int) -> None:
        calls.append(n)
        real(n)

    monkeypatch.setattr(faiss, "omp_set_num_threads", record)
    monkeypatch.setenv("LLMREC_THREADS", "1")
    index = VectorIndex.build(ids, matrix, kind="faiss-ivf")
    index.search(matrix[:4], 5)
    index.search(matrix[:1], 5)
    assert calls and set(calls) == {1}  # the build, the batch and the one-query search: one thread each

    calls.clear()
    monkeypatch.delenv("LLMREC_THREADS")
    index.search(matrix[:4], 5)
    assert calls == [available_cores()]  # unset: every core this process may use


def test_llmrec_serve_with_workers_sets_the_thread_counts_before_uvicorn_spawns(tmp_path, monkeypatch) -> None:
    import uvicorn

    from llmrec.serve import commands
    from llmrec.serve.app import OPTIONS_ENV
    from llmrec.serve.metrics import MULTIPROC_ENV

    from .conftest import SHOP, write

    for name in (*THREAD_VARS, OPTIONS_ENV, MULTIPROC_ENV):  # set, then unset: the test's end restores them
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.setattr(commands, "available_cores", lambda: 4)
    seen: dict[str, dict[str, str]] = {}

    def fake_run(app: str, **kwargs: object) -> None:
        seen[str(kwargs["workers"])] = {name: os.environ.get(name, "") for name in THREAD_VARS}

    monkeypatch.setattr(uvicorn, "run", fake_run)
    commands.serve_command(write(tmp_path, SHOP), workers=2)
    assert seen["2"] == {"LLMREC_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "7",
                         "OPENBLAS_NUM_THREADS": "2"}
