"""One local Ray for every test of this folder that asks for ``ray_local`` (test_ray.py, test_eval_ray.py): started
on first use and shut down after the folder's last test, so that tests elsewhere never find it running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmrec.testing import short_temp_dir

HERE = Path(__file__).resolve().parent
_started: list[object] = []


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if not ray.is_initialized():
        temp = short_temp_dir()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
                 configure_logging=False)
        _started.append(ray)
    yield ray
    _shutdown()


def _shutdown() -> None:
    while _started:
        _started.pop().shutdown()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _started and (nextitem is None or HERE not in Path(nextitem.path).resolve().parents):
        _shutdown()
