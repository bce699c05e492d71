"""provenance: what produced a result, as digests: the spec, the files it reads, the code, the data.

:func:`spec_provenance` describes a validated spec: the hash of the spec as loaded (includes merged, the
variant applied), a digest per file or folder its node and resource configs name (templates, schemas, model
folders and trained artifacts: a folder by its files' names, sizes and modification times, so a retrain shows),
the local plugin modules beside it, llmrec's version and the versions of the installed plugin packages.
:func:`dataset_digest` hashes a dataset's catalog ids, training interactions and test cases.

``llmrec eval`` keys its resume store on both (llmrec/eval/store.py), so a case computed before a fix, a
retrain or a data change is never reused silently. Nothing here runs code or reads outside the folders the
spec's own paths were validated against: only paths the configs hold (already checked by the spec's path
rules) and the spec folder's ``plugins/`` are read.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: files up to this size are hashed whole; larger ones by size and modification time
_WHOLE = 64 * 1024 * 1024
#: a folder is summarised by at most this many of its files (names, sizes, times)
_MAX_FILES = 20_000


def llmrec_version() -> str:
    try:
        return importlib.metadata.version("llmrec")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


@functools.lru_cache(maxsize=1)
def plugin_versions() -> dict[str, str]:
    """Installed distributions that publish llmrec plugins (the ``llmrec`` entry-point group), by name."""
    out = {}
    for dist in importlib.metadata.distributions():
        if any(ep.group == "llmrec" for ep in dist.entry_points):
            out[dist.metadata["Name"]] = dist.version
    return dict(sorted(out.items()))


def path_digest(path: Path) -> str:
    """A file's content hash (size and mtime past 64 MiB); a folder's listing with sizes and times."""
    h = hashlib.sha256()
    try:
        if path.is_file():
            st = path.stat()
            if st.st_size <= _WHOLE:
                h.update(path.read_bytes())
            else:
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        elif path.is_dir():
            for n, (root, dirs, files) in enumerate(os.walk(path)):
                dirs.sort()
                for name in sorted(files):
                    p = Path(root) / name
                    try:
                        st = p.stat()
                    except OSError:
                        continue
                    h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                if n > _MAX_FILES:
                    break
        else:
            return "missing"
    except OSError:
        return "unreadable"
    return h.hexdigest()[:16]


def _paths(value: Any) -> Iterable[Path]:
    if isinstance(value, Path):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _paths(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _paths(v)


def spec_provenance(graph: Any) -> dict[str, Any]:
    """The digests of everything a validated spec's results depend on, JSON-able (see the module doc)."""
    doc = graph.document
    text = json.dumps(doc.data, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    files: dict[str, str] = {}
    configs = [(f"node {n.id}", n.config) for n in graph.nodes.values()]
    configs += [(f"resource {r.name}", r.config) for r in graph.resources.values()]
    for _, config in configs:
        for p in _paths(config.model_dump()):
            files.setdefault(str(p), path_digest(p))
    plugins = Path(doc.path).parent / "plugins"
    local = {p.name: path_digest(p) for p in sorted(plugins.glob("*.py"))} if plugins.is_dir() else {}
    out = {
        "spec": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        "files": dict(sorted(files.items())),
        "local_plugins": local,
        "llmrec": llmrec_version(),
        "plugins": plugin_versions(),
    }
    refused = getattr(graph.registry, "refused_plugins", None)
    if refused:  # installed but not loaded: what answered lacked them (the key only then, so ids stay as they were)
        out["refused_plugins"] = {r.name: r.reason for r in refused}
    return out


def dataset_digest(dataset: Any) -> str:
    """A hash of a dataset's catalog ids, training interactions and test cases."""
    h = hashlib.sha256()
    h.update("\0".join(dataset.catalog.ids).encode("utf-8"))
    for it in dataset.train:
        h.update(f"{it.user_id}\t{it.item_id}\t{it.event}\t{it.rating}\t{it.timestamp}\n".encode())
    for c in dataset.test_cases:
        h.update(json.dumps([c.id, sorted(c.relevant), sorted(c.exclude),
                             dict(c.gains) if c.gains is not None else None], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]


__all__ = ["dataset_digest", "llmrec_version", "path_digest", "plugin_versions", "spec_provenance"]
