"""Fixtures of the runtime tests."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

import llmrec

HERE = Path(__file__).parent


@pytest.fixture
def spec(tmp_path: Path):
    """spec(yaml) -> a Runtime for it; the folder gets the test node types as a local plugin."""
    (tmp_path / "plugins").mkdir()
    shutil.copy(HERE / "testnodes.py", tmp_path / "plugins" / "testnodes.py")

    def make(text: str) -> llmrec.Runtime:
        path = tmp_path / "spec.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return llmrec.Runtime(llmrec.validate(path))

    make.dir = tmp_path  # type: ignore[attr-defined]
    return make
