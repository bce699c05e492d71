"""Datasets by name or folder, loaded as a :class:`Dataset`: the shared machinery behind every named dataset.

    ds = load_dataset("movielens-100k", split="temporal")      # a registered name (llmrec/data/movielens.py)
    ds = load_dataset("path/to/folder", split="user")           # catalog.* and interactions.* in a folder

Named datasets are plugins: a :class:`DatasetInfo` registered through ``llmrec_register_datasets`` (the built-ins,
MovieLens, BBC News and the demo shop, register through it too) and looked up in a registry's ``datasets``
table, the process registry unless one is given. Files are looked up in ``data_dir``, else ``$LLMREC_DATA_DIR``,
else ``~/.cache/llmrec/data``. Missing files are a :class:`~llmrec.errors.DataError` saying which file was
expected where and how to get it; a dataset with a ``url`` can be fetched with ``download=True`` (verified
against a SHA-256, unpacked atomically). Loaders never download unless asked.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import inspect
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrec.data.dataset import Dataset
from llmrec.data.files import columns, read_catalog, read_interactions
from llmrec.data.splits import SPLITS, make_dataset
from llmrec.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from llmrec.registry import Registry

ENV_VAR = "LLMREC_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/llmrec/data")
#: keyword parameters every loader takes, which are not the dataset's own options
COMMON_PARAMETERS = ("root", "split", "seed", "test_fraction")
#: options of a dataset with a ``url`` that ``load_dataset`` handles itself
DOWNLOAD_OPTIONS = ("download", "checksum", "url")


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset, as registered through ``llmrec_register_datasets``.

    ``loader(root, *, split, seed, test_fraction, **options) -> Dataset`` builds it from the data folder
    ``root``; its other keyword parameters are the dataset's options. ``files`` (relative to the data folder)
    must exist before it is called (empty: generated in memory). ``url`` names an official zip holding
    ``files``, verified against ``sha256`` (the zip's) or ``file_sha256`` (each unpacked file's).
    """

    name: str
    description: str
    loader: Callable[..., Dataset]
    files: tuple[str, ...] = ()
    splits: tuple[str, ...] = SPLITS
    url: str | None = None
    sha256: str | None = None
    file_sha256: Mapping[str, str] = field(default_factory=dict)

    @property
    def options(self) -> tuple[str, ...]:
        """The extra keyword options the loader takes."""
        return tuple(p for p in inspect.signature(self.loader).parameters if p not in COMMON_PARAMETERS)

    @property
    def default_split(self) -> str:
        """The split the loader uses when none is given."""
        param = inspect.signature(self.loader).parameters.get("split")
        return "none" if param is None or param.default is inspect.Parameter.empty else str(param.default)


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where dataset files live: ``explicit``, else ``$LLMREC_DATA_DIR``, else ``~/.cache/llmrec/data``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR.expanduser()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Build hundreds of thousands of small objects without the cyclic GC rescanning them (2-3x faster)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A text file's contents; a DataError naming the file (and the line of the first undecodable byte)."""
    try:
        return path.read_bytes().decode(encoding)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except UnicodeDecodeError as exc:
        data = path.read_bytes()
        raise DataError("bytes that are not UTF-8", path, data[: exc.start].count(b"\n") + 1,
                        hint="Save the file as UTF-8") from None


def int_table(path: Path, separator: bytes | None, columns: tuple[str, ...]) -> np.ndarray:
    """A file of integer rows as an (n, len(columns)) array; the exact line of any malformed row on error."""
    import numpy as np  # only MovieLens-style files need it; the registry imports this module

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    text = raw.replace(separator, b" ") if separator else raw
    tokens = text.split()
    width = len(columns)
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        if len(tokens) != len(lines) * width:
            raise ValueError
        return np.array(tokens, dtype=np.int64).reshape(-1, width)
    except ValueError:
        pass
    # slow path, only for a broken file: find the first bad line and say what is wrong with it
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width:
            raise DataError(f"{len(fields)} fields, expected {width} ({', '.join(columns)})", path, number)
        for name, field in zip(columns, fields):
            try:
                int(field)
            except ValueError:
                raise DataError(f"{field.decode('latin-1')!r} is not an integer", path, number, name) from None
    raise DataError("cannot read the file as integer rows", path)  # pragma: no cover - the slow path finds it


def _find(folder: Path, stem: str) -> Path:
    for suffix in (".jsonl", ".csv", ".parquet"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise DataError(f"no {stem}.jsonl, {stem}.csv or {stem}.parquet in this folder", folder,
                    hint="A dataset folder holds catalog.* and interactions.* (as llmrec.data.write_demo writes)")


def load_folder(folder: str | os.PathLike[str], *, split: str = "none", seed: int = 0,
                test_fraction: float | None = None, catalog: dict[str, Any] | None = None,
                interactions: dict[str, Any] | None = None, relevant_rating: float | None = 4.0,
                holdout_fraction: float = 0.2) -> Dataset:
    """A folder with ``catalog.{jsonl,csv,parquet}`` and ``interactions.{...}``, split by ``split``.

    Optional columns (description, category, price, attributes; event, rating) are used when present;
    ``catalog`` and ``interactions`` are extra keyword arguments for read_catalog / read_interactions.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError("dataset folder not found", root,
                        hint="Give a registered dataset name (llmrec plugins) or a folder with catalog.* and "
                             "interactions.*")
    catalog_path, log_path = _find(root, "catalog"), _find(root, "interactions")
    catalog_options = dict(catalog or {})
    present = columns(catalog_path)
    for option in ("description", "category", "price"):
        if option in present:
            catalog_options.setdefault(option, option)
    if "attributes" in present:
        catalog_options.setdefault("metadata", ["attributes"])
    log_options = dict(interactions or {})
    present = columns(log_path)
    for option in ("event", "rating"):
        if option in present:
            log_options.setdefault(option, option)
    with _gc_paused():
        items = read_catalog(catalog_path, **catalog_options)
        log = read_interactions(log_path, catalog=items, **log_options)
        return make_dataset(root.name, items, log, split, test_fraction=test_fraction,  # type: ignore[arg-type]
                            holdout_fraction=holdout_fraction, seed=seed, relevant_rating=relevant_rating,
                            description=f"Files in {root}")


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from llmrec.plugins import get_registry  # lazy: cycle (plugins -> registry -> this module)

    return get_registry()


def list_datasets(registry: Registry | None = None) -> list[DatasetInfo]:
    """Every named dataset of ``registry`` (default: the process registry), by name."""
    table = _registry(registry).datasets
    return [table[name] for name in table]


def looks_like_path(name_or_path: str) -> bool:
    """Whether a dataset name is written as a path (a separator, or a leading ``.`` or ``~``): never a name."""
    return "/" in name_or_path or os.sep in name_or_path or name_or_path.startswith((".", "~"))


def is_path(name_or_path: str, registry: Registry | None = None) -> bool:
    """Whether a dataset name is meant as a folder rather than a name registered in ``registry``."""
    if looks_like_path(name_or_path):
        return True
    if name_or_path in _registry(registry).datasets:
        return False
    try:
        return Path(name_or_path).expanduser().is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a folder
        return False


def problems(name_or_path: str, split: str = "none", options: dict[str, Any] | None = None,
             registry: Registry | None = None) -> list[tuple[str, str, str | None]]:
    """What is wrong with a request, before loading anything: ``(field, message, hint)`` triples.

    ``field`` is ``name``, ``split`` or ``options``. Missing files are not a problem here (see missing_files).
    """
    table = _registry(registry).datasets
    found: list[tuple[str, str, str | None]] = []
    options = dict(options or {})
    if split not in SPLITS:
        found.append(("split", f"unknown split '{split}'", f"Use one of: {', '.join(SPLITS)}"))
    if is_path(name_or_path, registry):
        allowed = tuple(p for p in inspect.signature(load_folder).parameters if p not in
                        ("folder", "split", "seed", "test_fraction"))
        splits: tuple[str, ...] = SPLITS
    elif name_or_path in table:
        info = table[name_or_path]
        allowed = info.options + (DOWNLOAD_OPTIONS if info.url else ())
        splits = info.splits
    else:
        close = table.suggest(name_or_path)
        names = " or ".join(f"'{e.name}' (from {e.plugin.label()})" for e in close)
        hint = f"Did you mean {names}? " if close else ""
        found.append(("name", f"unknown dataset '{name_or_path}'",
                      hint + f"Known datasets: {', '.join(table)} (llmrec plugins); or give a folder path"))
        return found
    if split in SPLITS and split not in splits:
        found.append(("split", f"dataset '{name_or_path}' does not take split '{split}'",
                      f"It takes: {', '.join(splits)}"))
    for key in options:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"Did you mean '{near[0]}'? " if near else ""
            found.append(("options", f"unknown option '{key}' for dataset '{name_or_path}'",
                          hint + f"It takes: {', '.join(allowed) or 'no options'}"))
    return found


def missing_files(name_or_path: str, data_dir_: str | os.PathLike[str] | None = None,
                  registry: Registry | None = None) -> list[Path]:
    """The files a dataset needs that are not there (empty for generated datasets and present data)."""
    if is_path(name_or_path, registry):
        root = Path(name_or_path).expanduser()
        if not root.is_dir():
            return [root]
        return [root / f"{stem}.*" for stem in ("catalog", "interactions")
                if not any((root / f"{stem}{s}").is_file() for s in (".jsonl", ".csv", ".parquet"))]
    info = _registry(registry).datasets.get(name_or_path)
    if info is None:
        return []
    root = data_dir(data_dir_)
    return [root / f for f in info.files if not (root / f).is_file()]


def _missing_error(info: DatasetInfo, root: Path, missing: list[Path]) -> DataError:
    where = os.environ.get(ENV_VAR)
    hint = (f"Put the files under {root} or set {ENV_VAR} to the folder that holds "
            f"{Path(info.files[0]).parts[0]}/ (now {'set to ' + where if where else 'unset'})")
    if info.url:
        hint += (f"; or set the options download: true and checksum: <SHA-256 of the zip> to fetch {info.url}"
                 if not (info.sha256 or info.file_sha256)
                 else f"; or set the option download: true to fetch {info.url}")
    more = f" (and {len(missing) - 1} other file{'s' if len(missing) > 2 else ''})" if len(missing) > 1 else ""
    return DataError(f"dataset '{info.name}' needs this file, which is not there{more}", missing[0], hint=hint)


# -- download --------------------------------------------------------------------------------------------------


def _fetch(url: str, destination: Path) -> None:
    """Copy ``url`` (https or file) to ``destination``."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response, destination.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(response, out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(info: DatasetInfo, data_dir_: str | os.PathLike[str] | None = None, *, checksum: str | None = None,
             url: str | None = None) -> Path:
    """Fetch a dataset's official zip, check its SHA-256 and unpack it atomically into the data folder.

    The expected digest is ``checksum`` or ``info.sha256``; without either, every file of ``info.file_sha256``
    must match, and without those nothing is fetched. ``url`` replaces the official address (a mirror, a
    ``file://`` copy). Returns the data folder.
    """
    name = info.name
    source = url or info.url
    if source is None:
        raise DataError(f"dataset '{name}' has no download; put its files in place instead")
    expected = (checksum or info.sha256 or "").strip().lower()
    file_digests = dict(info.file_sha256) if not expected else {}
    if not file_digests and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DataError(f"no SHA-256 to verify {source} against",
                        hint="Pass the option checksum: <the 64 hex digits of the official zip's SHA-256>"
                        if not expected else f"checksum {expected!r} is not 64 hex digits")
    root = data_dir(data_dir_)
    folder = Path(info.files[0]).parts[0]
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        archive = work / "download.zip"
        try:
            _fetch(source, archive)
        except OSError as exc:
            raise DataError(f"cannot download {source}: {exc}",
                            hint=f"Check the network, or download it yourself and unzip it into {root}") from None
        actual = _sha256(archive)
        if expected and actual != expected:
            raise DataError(f"SHA-256 mismatch for {source}: expected {expected}, got {actual}", archive,
                            hint="The download is corrupt or not the official file; nothing was unpacked")
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    target = (work / member).resolve()
                    if not target.is_relative_to(work.resolve()):
                        raise DataError(f"refusing a zip entry outside the folder: {member!r}", archive)
                zf.extractall(work / "unpacked")
        except zipfile.BadZipFile:
            raise DataError("not a zip file", source) from None
        unpacked = work / "unpacked" / folder
        missing = [f for f in info.files if not (work / "unpacked" / f).is_file()]
        if missing:
            raise DataError(f"the zip does not hold {', '.join(missing)}", source)
        for relative, digest in file_digests.items():
            if _sha256(work / "unpacked" / relative) != digest:
                raise DataError(f"SHA-256 mismatch for {relative} in {source}", archive,
                                hint="The download is corrupt or not the official release; nothing was unpacked")
        destination = root / folder
        if destination.exists():
            raise DataError("already exists but lacks some files; remove it and download again", destination)
        os.replace(unpacked, destination)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def load_dataset(
    name_or_path: str,
    split: str = "none",
    *,
    seed: int = 0,
    test_fraction: float | None = None,
    data_dir: str | Path | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset registered in ``registry`` (default: the process registry) or a folder of files, split by
    ``split``.

    ``seed`` drives every random choice (user splits, query draws, synthetic profiles, the demo shop);
    ``options`` are the dataset's own (``DatasetInfo.options``; a dataset with a ``url`` also takes
    ``download``, ``checksum`` and ``url``). Raises DataError for an unknown name or option and for missing or
    bad files.
    """
    found = problems(name_or_path, split, options, registry)
    if found:
        _, message, hint = found[0]
        raise DataError(message, hint=hint)
    if is_path(name_or_path, registry):
        return load_folder(name_or_path, split=split, seed=seed, test_fraction=test_fraction, **options)
    info = _registry(registry).datasets[name_or_path]
    root = _data_dir(data_dir)
    fetch = bool(options.pop("download", False))
    checksum, url = options.pop("checksum", None), options.pop("url", None)
    missing = [root / f for f in info.files if not (root / f).is_file()]
    if missing and fetch:
        download(info, root, checksum=checksum, url=url)
        missing = [root / f for f in info.files if not (root / f).is_file()]
    if missing:
        raise _missing_error(info, root, missing)
    try:
        with _gc_paused():
            return info.loader(root, split=split, seed=seed, test_fraction=test_fraction, **options)
    except (TypeError, ValueError) as exc:  # an option of the wrong type or range (n_users: "many")
        raise DataError(f"dataset '{info.name}': {exc}",
                        hint=f"Check its options ({', '.join(info.options)})") from None


_data_dir = data_dir  # load_dataset's parameter shadows the function

__all__ = ["COMMON_PARAMETERS", "DOWNLOAD_OPTIONS", "DatasetInfo", "ENV_VAR", "data_dir", "download", "int_table",
           "is_path", "list_datasets", "load_dataset", "load_folder", "looks_like_path", "missing_files", "problems",
           "read_text"]
