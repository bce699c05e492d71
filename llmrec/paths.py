"""Where a spec may read and write files (docs/security.md, "Paths a spec names").

Every path a spec names in a config (``SpecPath`` fields: catalogs, interaction logs, ``model_path``, caches,
indexes, plots, and a node's ``cache.path``) resolves against the spec's folder and must stay inside one of:

- the spec's folder;
- the data dir: ``$LLMREC_DATA_DIR`` (else ``~/.cache/llmrec/data``);
- llmrec's cache dir: ``$LLMREC_CACHE_DIR`` (else ``~/.cache/llmrec``);
- a run dir: ``runs/`` beside the spec's folder (``specs/x.yaml`` writes ``../runs/x/models``), ``runs/`` in the
  current folder, or ``$LLMREC_RUNS_DIR``.

Symlinks are followed before the check, so a link inside the folder cannot lead out. A spec in a folder the user
trusts (llmrec/trust.py) may name any path: it is the user's own.
"""

from __future__ import annotations

import os
from pathlib import Path

from .data.datasets import data_dir
from .trust import is_trusted

RUNS_ENV = "LLMREC_RUNS_DIR"


def cache_root() -> Path:
    """``$LLMREC_CACHE_DIR`` or ``~/.cache/llmrec``."""
    env = os.environ.get("LLMREC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmrec"


def allowed_roots(base: Path) -> list[tuple[str, Path]]:
    """(what, folder) a spec in ``base`` may use, in the order an error lists them."""
    roots = [("the spec's folder", base), ("the data dir", data_dir()), ("the cache dir", cache_root()),
             ("a runs/ folder", base.parent / "runs"), ("a runs/ folder", Path.cwd() / "runs")]
    env = os.environ.get(RUNS_ENV)
    if env:
        roots.append((f"${RUNS_ENV}", Path(env).expanduser()))
    return roots


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def confine(base: Path, value: Path, field: str = "path") -> Path:
    """``value`` resolved against ``base``; ValueError naming the allowed folders unless it is inside one of them
    or ``base`` is trusted."""
    target = (base / value.expanduser()) if not value.expanduser().is_absolute() else value.expanduser()
    try:
        real = _real(target)
    except (OSError, ValueError):
        raise ValueError(f"'{str(value)[:200]}' is not a valid path") from None
    for _, root in allowed_roots(base):
        try:
            if real == _real(root) or real.is_relative_to(_real(root)):
                return target
        except (OSError, ValueError):
            continue
    if is_trusted(base):
        return target
    raise ValueError(
        f"'{str(value)[:200]}' is outside the folders a spec may use: its own folder, the data dir "
        f"($LLMREC_DATA_DIR), the cache dir ($LLMREC_CACHE_DIR or ~/.cache/llmrec) and runs/ beside its folder, "
        f"in the current folder or at ${RUNS_ENV}. Move the file there, or trust the spec's folder "
        "(--trust; docs/security.md) if you wrote it")
