"""Which code a spec may load: the one trust rule (docs/security.md, "Code a spec names").

A spec is data. It may *name* code in three ways: ``plugins/*.py`` beside it, a Python file in its folder
(``schema: schemas/recs.py:Recs``, ``check: rules.py:fits``), or a module (``schema: pkg.mod:Model``). The rule:

- Code in a spec's folder (plugins, schema and check files) is imported only when the user trusts that folder:
  ``--trust`` on the command line, ``llmrec trust FOLDER`` (kept in ``$XDG_CONFIG_HOME/llmrec/trusted``, default
  ``~/.config/llmrec/trusted``), or ``LLMREC_TRUST=FOLDER[:FOLDER...]`` in the user's environment. Trusting a
  folder trusts the folders under it.
- A module named by a spec is imported without trust only when it belongs to llmrec or to an installed llmrec
  plugin (a distribution with an ``llmrec`` entry point, as ``LLMREC_LOAD_PLUGINS`` allows). Any other module
  (``os:system``) needs the same trust.
- Whatever the trust, a file a spec names must be inside the spec's folder: an absolute path elsewhere, ``..``
  out of the folder or a symlink leading out is refused with the position of the field.

Nothing in a spec folder can grant trust: only the command line, the user's config file and the user's
environment are read.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from pathlib import Path

TRUST_ENV = "LLMREC_TRUST"
HINT = ("Read the code first; then run with --trust, or trust the folder once with 'llmrec trust {folder}' "
        "(docs/security.md).")

_lock = threading.Lock()
_granted: set[Path] = set()
_file_cache: tuple[tuple[str, int], list[Path]] | None = None


def hint(folder: str | os.PathLike[str] | None) -> str:
    """How to trust ``folder``: the text every "not trusted" message ends with."""
    return HINT.format(folder=_shown(Path(folder)) if folder is not None else "FOLDER")


class UntrustedCode(ValueError):
    """A spec names code that this process may not import; ``hint`` says how to trust it."""

    def __init__(self, message: str, folder: Path | None = None) -> None:
        super().__init__(message)
        self.folder = folder
        self.hint = hint(folder)


def _shown(folder: Path) -> str:
    try:
        rel = os.path.relpath(folder)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(folder)
    return rel if not rel.startswith("..") else str(folder)


def config_file() -> Path:
    """``$XDG_CONFIG_HOME/llmrec/trusted`` (default ``~/.config/llmrec/trusted``): one folder per line."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "llmrec" / "trusted"


def _resolve(folder: str | os.PathLike[str]) -> Path | None:
    try:
        return Path(folder).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):
        return None


def _from_file() -> list[Path]:
    global _file_cache
    path = config_file()
    try:
        stat = path.stat()
    except OSError:
        return []
    key = (str(path), stat.st_mtime_ns)
    with _lock:
        if _file_cache is not None and _file_cache[0] == key:
            return _file_cache[1]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    folders = [p for line in lines if line.strip() and not line.lstrip().startswith("#")
               if (p := _resolve(line.strip())) is not None]
    with _lock:
        _file_cache = (key, folders)
    return folders


def trusted_folders() -> list[Path]:
    """Every folder trusted now: granted in this process, listed in the config file, or in ``$LLMREC_TRUST``."""
    env = [p for part in os.environ.get(TRUST_ENV, "").split(os.pathsep) if part.strip()
           if (p := _resolve(part.strip())) is not None]
    with _lock:
        granted = list(_granted)
    return granted + env + _from_file()


def is_trusted(folder: str | os.PathLike[str] | None) -> bool:
    """True when ``folder`` is a trusted folder or inside one."""
    if folder is None:
        return False
    target = _resolve(folder)
    if target is None:
        return False
    return any(target == t or target.is_relative_to(t) for t in trusted_folders())


def grant(folder: str | os.PathLike[str]) -> Path:
    """Trust ``folder`` for the rest of this process (``--trust``; ``llmrec.validate(..., trust=True)``)."""
    target = _resolve(folder)
    if target is None:
        raise ValueError(f"cannot trust '{folder}': not a valid folder path")
    with _lock:
        _granted.add(target)
    return target


def revoke(folder: str | os.PathLike[str]) -> None:
    """Undo :func:`grant` (tests, notebooks)."""
    target = _resolve(folder)
    with _lock:
        _granted.discard(target)  # type: ignore[arg-type]


def remember(folder: str | os.PathLike[str]) -> Path:
    """Add ``folder`` to the config file (``llmrec trust FOLDER``)."""
    target = _resolve(folder)
    if target is None or not target.is_dir():
        raise ValueError(f"cannot trust '{folder}': it is not a folder")
    path = config_file()
    existing = _from_file()
    if target not in existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"{target}\n")
    return target


def forget(folder: str | os.PathLike[str]) -> bool:
    """Remove ``folder`` from the config file; True when it was listed."""
    target = _resolve(folder)
    path = config_file()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    kept = [line for line in lines if not line.strip() or _resolve(line.strip()) != target]
    if len(kept) == len(lines):
        return False
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return True


def _plugin_packages() -> set[str]:
    """Top-level packages of llmrec and of the installed plugins this process loads."""
    from .plugins import plugin_entry_points  # lazy: cycle (plugins imports trust)

    names = {"llmrec"}
    dists = {ep.dist.name for ep in plugin_entry_points() if ep.dist is not None}
    try:
        mapping = importlib.metadata.packages_distributions()
    except Exception:  # pragma: no cover - broken metadata: only llmrec itself
        mapping = {}
    for package, owners in mapping.items():
        if any(d in dists for d in owners):
            names.add(package)
    # a plugin whose entry point names a module directly (no metadata for its top-level package)
    for ep in plugin_entry_points():
        names.add(ep.value.split(":")[0].split(".")[0].strip())
    return names


_allowed_modules: set[str] = set()


def check_module(module: str, folder: Path | None) -> None:
    """Raise :class:`UntrustedCode` unless a spec in ``folder`` may import ``module`` (``pkg.mod`` of
    ``pkg.mod:Name``). ``folder=None``: the reference was validated before (a node loading at run time), so a
    module allowed then is allowed now."""
    if module.split(".")[0] in _plugin_packages():
        return
    if folder is not None and is_trusted(folder):
        with _lock:
            _allowed_modules.add(module)
        return
    with _lock:
        if folder is None and module in _allowed_modules:
            return
    raise UntrustedCode(f"module '{module[:200]}' is not part of llmrec or of an installed llmrec plugin, and the "
                        "spec's folder is not trusted, so it was not imported", folder)


def inside(base: Path, value: str, field: str = "path", shown: str | None = None) -> Path:
    """``value`` (relative to ``base``, or absolute) resolved; ValueError unless it stays inside ``base``.
    ``shown``: the value as the spec wrote it, for the message."""
    shown = value if shown is None else shown
    try:
        root = base.resolve()
        target = (root / Path(value).expanduser()).resolve()
    except (OSError, ValueError, RuntimeError):
        raise ValueError(f"'{shown[:200]}' is not a valid file path") from None
    if not target.is_relative_to(root):
        raise ValueError(f"'{shown[:200]}' is outside the spec's folder; {field} must name a file inside it "
                         "(no absolute path elsewhere, no '..' out of it)")
    return target


def check_code_file(file: Path) -> None:
    """Raise :class:`UntrustedCode` unless ``file`` (a Python file a spec names) is in a trusted folder."""
    if not is_trusted(file.parent):
        raise UntrustedCode(f"'{_shown(file)}' is code beside the spec, and its folder is not trusted, so it was "
                            "not imported", file.parent)
