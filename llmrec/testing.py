"""Helpers and pytest fixtures for testing specs and plugins (registered as the ``llmrec`` pytest plugin).

- :func:`run_spec` validates and runs a spec file or YAML text in one call;
- the ``llmrec_spec`` fixture writes YAML text to a temporary spec file and returns its path.

Fixtures never load installed entry-point plugins unless a test asks for them (``LLMREC_LOAD_PLUGINS``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .api import arun, check
from .runtime.trace import RunResult


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    """Write dedented YAML ``text`` to ``directory/name`` and return the path."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


async def run_spec(spec: str | Path, inputs: dict[str, Any] | None = None, **kwargs: Any) -> RunResult:
    """Validate and run ``spec`` (a path) once."""
    return await arun(spec, inputs, **kwargs)


def errors_of(spec: str | Path) -> list[str]:
    """The formatted errors `llmrec validate` would print for ``spec``."""
    _, errors, _ = check(spec)
    return [e.format() for e in errors]


@pytest.fixture
def llmrec_spec(tmp_path: Path) -> Callable[..., Path]:
    """``llmrec_spec(yaml_text, name="spec.yaml") -> Path``: a spec file in a fresh temporary folder."""

    def make(text: str, name: str = "spec.yaml") -> Path:
        return write_spec(tmp_path, text, name)

    return make
