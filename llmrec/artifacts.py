"""Trained-model artifacts on disk: versioned folders written atomically, with metadata, verified on load.

Every trainer in llmrec (``rank.lambdamart``, the rec-LM provider, a third-party plugin's node) stores what it
learned through this module, so every artifact has one layout::

    <model_path>/
      latest                      text: the folder name of the newest artifact
      <name>-<digest>/            one trained version (digest: training parameters + training data)
        meta.json                 format, name, trainer, params + params_hash, data_hash, metrics, llmrec
                                  version, created, and every file's size and SHA-256
        <the trainer's files>

A version is written to a hidden staging folder first and renamed into place (``os.replace``), and ``latest``
is replaced the same way, so a reader sees a whole artifact or none. :meth:`ArtifactStore.open` checks every
file against ``meta.json`` before a trainer's loader reads it: a truncated or edited file is an
:class:`ArtifactError` naming the file and the command that retrains it, never a crash inside a native library
(a truncated LightGBM model aborts the process).

Nothing here imports a node type or a model library.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RunError
from .plugins import llmrec_version

LATEST = "latest"
META = "meta.json"
FORMAT = 2  # meta.json layout; 1 was llmrec 0.1's (no file checksums)


class ArtifactError(RunError):
    """An artifact exists but cannot be used: a file is missing, truncated or edited, or meta.json is garbage."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, node_id: str | None = None,
                 hint: str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.hint = hint
        where = f"{os.path.normpath(path)}: " if path is not None else ""
        super().__init__(where + message + (f". {hint}" if hint else ""), node_id)


def params_hash(params: Mapping[str, Any]) -> str:
    """A short, stable hash of the training parameters an artifact depends on."""
    return digest(dict(params))


def digest(value: Any, length: int = 12) -> str:
    """A short, stable hash of JSON-able data (or bytes)."""
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:length]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_meta(folder: Path) -> dict[str, Any]:
    """An artifact's meta.json, or {} when missing or unreadable."""
    try:
        data = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Artifact:
    """One verified artifact folder: its files are those meta.json lists, with the recorded checksums."""

    folder: Path
    meta: dict[str, Any]

    def path(self, name: str) -> Path:
        """The path of one of the artifact's files."""
        if name not in self.meta.get("files", {}):
            raise ArtifactError(f"the artifact has no file '{name}'", self.folder)
        return self.folder / name

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics") or {})

    @property
    def version(self) -> str:
        return self.folder.name


class Staging:
    """A hidden folder a trainer writes its files into; :meth:`ArtifactStore.commit` moves it into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, name: str, content: bytes | str) -> Path:
        """Write one file of the artifact."""
        path = self.folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path


class ArtifactStore:
    """The versions of one trainable thing (a node or a resource) under ``model_path``."""

    def __init__(self, model_path: str | os.PathLike[str], name: str, retrain_hint: str | None = None) -> None:
        self.root = Path(model_path)
        self.name = name
        self.retrain_hint = retrain_hint

    # -- finding ----------------------------------------------------------------------------------------------
    def find(self, p_hash: str) -> Path | None:
        """The folder trained with parameters ``p_hash``: ``latest`` when it matches, else the newest that does."""
        if not self.root.is_dir():
            return None
        latest = self.latest_folder()
        if latest is not None and read_meta(latest).get("params_hash") == p_hash:
            return latest
        best: tuple[float, Path] | None = None
        for meta_file in self.root.glob(f"{self.name}-*/{META}"):
            meta = read_meta(meta_file.parent)
            if meta.get("params_hash") == p_hash:
                created = float(meta.get("created", 0) or 0)
                if best is None or created > best[0]:
                    best = (created, meta_file.parent)
        return best[1] if best else None

    def latest_folder(self) -> Path | None:
        pointer = self.root / LATEST
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not name or "/" in name or "\\" in name or name.startswith("."):
            return None
        folder = self.root / name
        return folder if folder.is_dir() else None

    def status(self, params: Mapping[str, Any]) -> str | None:
        """None when an artifact trained with ``params`` exists, else why not (missing, or stale and how)."""
        if self.find(params_hash(params)) is not None:
            return None
        where = os.path.normpath(self.root)
        latest = self.latest_folder()
        if latest is not None and not read_meta(latest):
            return f"the model in {os.path.normpath(latest)} is corrupt: its meta.json is missing or unreadable"
        if latest is not None:
            old = read_meta(latest).get("params")
            if isinstance(old, dict):
                changed = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
                return f"the model in {where} is stale: trained with another {', '.join(changed) or 'config'}"
        return f"no trained model in {where}"

    def open(self, folder: Path) -> Artifact:
        """Verify ``folder`` against its meta.json (every file present, same size and SHA-256)."""
        hint = self.retrain_hint
        raw = folder / META
        try:
            meta = json.loads(raw.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError("meta.json is missing", folder, hint=hint) from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"meta.json is corrupt ({type(exc).__name__})", raw, hint=hint) from None
        files = meta.get("files") if isinstance(meta, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise ArtifactError("meta.json is corrupt (no valid 'files' table)", raw, hint=hint)
        for name, info in files.items():
            if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
                raise ArtifactError(f"meta.json is corrupt (file name {name!r} is not a plain file name)", raw,
                                    hint=hint)
            path = folder / name
            if not path.is_file():
                raise ArtifactError(f"file '{name}' is missing", folder, hint=hint)
            size = path.stat().st_size
            if size != info.get("bytes"):
                raise ArtifactError(f"the file is corrupt: {size} bytes, {info.get('bytes')} when it was written "
                                    "(truncated?)", path, hint=hint)
            if file_digest(path) != info.get("sha256"):
                raise ArtifactError("the file is corrupt: its SHA-256 differs from the one recorded when it was "
                                    "written", path, hint=hint)
        return Artifact(folder, meta)

    def load(self, params: Mapping[str, Any]) -> Artifact | None:
        """The verified artifact trained with ``params``, or None when there is none."""
        folder = self.find(params_hash(params))
        if folder is None:
            latest = self.latest_folder()
            if latest is not None and not read_meta(latest):
                return self.open(latest)  # its meta.json is missing or garbage: say so rather than "not trained"
            return None
        return self.open(folder)

    # -- writing ----------------------------------------------------------------------------------------------
    @contextmanager
    def staging(self) -> Iterator[Staging]:
        """A fresh hidden folder to write into; removed afterwards unless committed."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / f".staging-{self.name}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        try:
            yield Staging(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, staging: Staging, *, params: Mapping[str, Any], data_hash: str, trainer: str,
               metrics: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
               force: bool = False) -> tuple[Path, bool]:
        """Move a staged artifact into ``<name>-<digest>/`` and point ``latest`` at it.

        Returns the folder and whether it was written (False: an identical version existed and ``force`` was not
        given; ``latest`` points at it either way)."""
        p_hash = params_hash(params)
        folder = self.root / f"{self.name}-{digest([p_hash, data_hash])}"
        files = {}
        for path in sorted(staging.folder.iterdir()):
            if path.name == META or not path.is_file():
                continue
            files[path.name] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        meta = {**dict(extra or {}), "format": FORMAT, "name": self.name, "trainer": trainer, "params": dict(params),
                "params_hash": p_hash, "data_hash": data_hash, "metrics": dict(metrics or {}), "files": files,
                "created": time.time(), "llmrec_version": llmrec_version()}
        (staging.folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
        written = True
        if folder.exists() and not force:
            written = False
        elif folder.exists():  # a directory rename needs an empty target
            old = self.root / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
            os.replace(folder, old)
            os.replace(staging.folder, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging.folder, folder)
        pointer = self.root / f".{LATEST}-{uuid.uuid4().hex[:8]}"
        pointer.write_text(folder.name + "\n", encoding="utf-8")
        os.replace(pointer, self.root / LATEST)
        return folder, written

    def checkpoint_dir(self, params: Mapping[str, Any]) -> Path:
        """A folder that survives an interrupted training run with these parameters (resumable trainers)."""
        return self.root / ".checkpoints" / f"{self.name}-{params_hash(params)}"


__all__ = ["Artifact", "ArtifactError", "ArtifactStore", "Staging", "digest", "file_digest", "params_hash", "read_meta"]
