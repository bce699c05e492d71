"""Serving logs: provenance stamps, impressions, feedback events and the stores that keep them.

    stamp = provenance_stamp(graph, runtime.resources)   # once per loaded spec: stamp.id, stamp.components
    store = open_log_store("sqlite:logs/serve.db")          # or a folder: the JSONL file store
    for imp in read_logs("logs/"):                           # impressions joined with their feedback
        print(imp.request_id, [i.id for i in imp.items], [f.type for f in imp.feedback])

``llmrec serve --log-dir DIR`` (or ``--log-store NAME:WHERE``) hands every successful answer to a
:class:`LogWriter`: the request path appends a tuple to a bounded in-memory queue and returns; a background thread
turns queued answers into impression records (the items shown, their positions and propensities, the provenance
id), batches them and appends them to a :class:`LogStore`. A store that fails is counted and logged, never raised
into a request. ``POST /v1/feedback`` events are validated by :class:`FeedbackEvent` and go the same way.

Stores are registered through ``llmrec_register_log_stores`` (``file``: JSONL segments, the default;
``sqlite``: one database file in WAL mode); both keep JSON only. The record formats are in docs/serving.md.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import to_json

from ..data.dataset import Dataset
from ..provenance import dataset_digest, spec_provenance

log = logging.getLogger("llmrec.serve.logs")

#: the version of the record formats below (docs/serving.md); a reader refuses records of a newer one
FORMAT = 1
#: what a node puts in its trace record's ``extra`` to declare the serving policy's propensities ({id: marginal
#: probability at the item's position}) and, optionally, cascade probabilities ({id: probability of the list down
#: to that item})
PROPENSITIES = "propensities"
CASCADE = "cascade"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
FEEDBACK_TYPES = ("click", "purchase", "rating", "dismissal")
_STORE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")  # a registry name (a drive letter is upper-case)
#: the file store starts a new segment once one holds this many bytes
SEGMENT_BYTES = 64 * 1024 * 1024


def _dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (pydantic-core's serialiser, much faster than the stdlib's); what JSON cannot hold
    becomes its ``str()``, a NaN or infinity ``null``."""
    return to_json(value, fallback=str, inf_nan_mode="null")


# -- provenance -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stamp:
    """What produced an answer: a short ``id`` and the digests it is made of (``components``)."""

    id: str
    components: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.components}


def stamp_folder(store: Any) -> Path | None:
    """Where a log store's stamps are kept beside it: a file store's folder, a database file's folder (a store
    of another kind may say with a ``stamp_folder`` attribute); None when it has no place on disk."""
    folder = getattr(store, "stamp_folder", None) or getattr(store, "folder", None)
    if folder is None and getattr(store, "path", None) is not None:
        folder = Path(store.path).parent
    return Path(folder) if folder is not None else None


def keep_stamp(stamp: Stamp, folder: Path, name: str | None = None,
               extra: Mapping[str, Any] | None = None) -> Path | None:
    """Write ``stamp`` (plus ``extra`` keys) as ``folder/<name>`` (default ``provenance-<id>.json``) once, through
    a temporary file renamed into place, so that ``llmrec replay`` and ``llmrec eval --logged`` can name the
    components that changed since a log was written; None when it cannot be written or the stamp is unknown."""
    if not stamp.id or stamp.id == "unknown":
        return None
    target = folder / (name or f"provenance-{stamp.id}.json")
    if target.is_file():
        return target
    record = {**stamp.to_dict(), **(extra or {})}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{target.stem}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        return None
    return target


def _model_ids(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            sub = f"{path}.{k}"
            if k == "model" and isinstance(v, str) and v:
                yield sub, v
            else:
                yield from _model_ids(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _model_ids(v, f"{path}.{i}")


def provenance_stamp(graph: Any, resources: Mapping[str, Any] | None = None) -> Stamp:
    """The stamp of a validated spec (and, given its loaded ``resources``, of the datasets among them).

    Components: ``spec`` (the spec as loaded), ``files`` (each template, schema, model folder or artifact its
    configs name, by path relative to the spec's folder), ``local_plugins``, ``llmrec`` and ``plugins``
    (versions), ``models`` (every ``model`` id in a resource config, and ``$LLMREC_MODEL`` when set) and
    ``datasets`` (:func:`llmrec.provenance.dataset_digest` of each loaded dataset). The id is a hash of them all:
    any change to one changes it. Hashing reads files, so compute it once per loaded spec, off the event loop."""
    prov = spec_provenance(graph)
    base = Path(graph.document.path).resolve().parent
    files = {}
    for p, digest in prov["files"].items():
        try:
            shown = os.path.relpath(os.path.normpath(p), base)
        except ValueError:  # pragma: no cover - another drive on Windows
            shown = p
        files[shown] = digest
    models = {}
    for res in graph.resources.values():
        for where, model in _model_ids(res.config.model_dump(mode="json"), res.name):
            models[where] = model
    if os.environ.get("LLMREC_MODEL"):
        models["$LLMREC_MODEL"] = os.environ["LLMREC_MODEL"]
    datasets = {name: dataset_digest(v) for name, v in sorted((resources or {}).items()) if isinstance(v, Dataset)}
    components = {"spec_name": str(graph.name), "spec": prov["spec"], "files": dict(sorted(files.items())),
                  "local_plugins": prov["local_plugins"], "llmrec": prov["llmrec"], "plugins": prov["plugins"],
                  "models": dict(sorted(models.items())), "datasets": datasets}
    text = json.dumps(components, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return Stamp(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], components)


def stamp_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The components that differ between two stamps' ``to_dict()`` (``files:prompts/x.j2``, ``spec``,
    ``models:llm.model``, ...), sorted: what ``llmrec replay`` names when an answer changed."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key == "id":
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{key}:{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


# -- records ----------------------------------------------------------------------------------------------------


def shown_lists(outputs: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    """The outputs that are lists of items, as the playground finds them: an output that is a list of objects
    with an ``id``, or an object whose ``items`` is one (``Recommendations``, ``Candidates``)."""
    found = []
    for name, value in outputs.items():  # JSON data: plain dicts and lists (isinstance on them is cheap)
        if isinstance(value, dict):
            items = value.get("items")
            if not isinstance(items, list):
                continue
        elif isinstance(value, list) and value:
            items = value
        else:
            continue
        for i in items:
            if not (isinstance(i, dict) and isinstance(i.get("id"), (str, int))):
                break
        else:
            found.append((name, items))
    return found


def _finite(value: Any) -> float | None:
    if value.__class__ is float:  # the common case first: a JSON number
        return value if math.isfinite(value) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def policy_propensities(trace: Any) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Item id -> propensity and item id -> cascade probability from the nodes of a run that report them
    (``record.extra["propensities"]`` and ``["cascade"]``, set by stochastic nodes such as ``rerank.explore``),
    the last to finish winning; and those nodes' ids."""
    reports = []
    for rec in getattr(trace, "nodes", ()) or ():
        extra = rec.extra
        if extra and isinstance(extra.get(PROPENSITIES), Mapping):
            reports.append((rec.start_ms + rec.wall_ms, rec.node_id, extra[PROPENSITIES], extra.get(CASCADE)))
    if not reports:
        return {}, {}, []
    reports.sort(key=lambda r: r[0])
    probs: dict[str, float] = {}
    cascade: dict[str, float] = {}
    for _, _, p, c in reports:
        probs.update(p)
        if isinstance(c, Mapping):
            cascade.update(c)
    return probs, cascade, [r[1] for r in reports]


def impression_record(request_id: str, ts: float, endpoint: str, spec: str, stamp_id: str, variant: str | None,
                      inputs: Mapping[str, Any], outputs: Mapping[str, Any], degraded: bool, trace: Any,
                      session_id: str | None, trace_id: str | None = None) -> dict[str, Any]:
    """One impression (docs/serving.md): what was shown, in order, with each item's position and propensity.
    ``outputs``: the answer's outputs as JSON data; ``trace``: the run's trace (for the policy's propensities);
    ``trace_id``: the request's OpenTelemetry trace id, kept as ``trace_id`` when tracing is on."""
    probs, cascades, stochastic = policy_propensities(trace)
    items = []
    for name, shown in shown_lists(outputs):
        for position, item in enumerate(shown, 1):
            item_id = item["id"]
            if item_id.__class__ is not str:
                item_id = str(item_id)
            p = item.get("propensity")
            if p is not None:  # the item says so itself
                p, c = _finite(p), _finite(item.get("cascade"))
            elif stochastic:
                p, c = _finite(probs.get(item_id)), _finite(cascades.get(item_id))
            else:  # a deterministic ranking
                p = c = 1.0
            row: dict[str, Any] = {"output": name, "position": position, "id": item_id, "propensity": p,
                                   "cascade": c}
            score = item.get("score")
            if score is not None and (score := _finite(score)) is not None:
                row["score"] = score
            items.append(row)
    user = inputs.get("user_id")
    if isinstance(user, bool) or not isinstance(user, (str, int)):
        user = None
    record = {"v": FORMAT, "kind": "impression", "request_id": request_id, "ts": round(ts, 6),
              "endpoint": endpoint, "spec": spec, "provenance": stamp_id, "variant": variant,
              "user_id": None if user is None else str(user),
              "session_id": session_id, "inputs": dict(inputs), "items": items,
              "policy": stochastic or None, "degraded": bool(degraded)}
    if trace_id is not None:
        record["trace_id"] = trace_id
    return record


class FeedbackEvent(BaseModel):
    """One feedback event of ``POST /v1/feedback``. ``value``: a rating's value (required, within the server's
    rating range), a purchase's amount or quantity (optional, not negative); a click or a dismissal has none."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="The X-Request-Id of the answer it is about.")
    item_id: str = Field(min_length=1, max_length=512, description="The item the user acted on.")
    type: Literal["click", "purchase", "rating", "dismissal"]
    value: float | None = Field(None, validate_default=True,  # a rating without a value is an error
                                description="A rating's value; a purchase's amount; none otherwise.")
    position: int | None = Field(None, ge=1, le=100_000, description="Where the item was shown (1 = first).")
    user_id: str | None = Field(None, max_length=512)
    timestamp: float | None = Field(None, description="When it happened: unix seconds or ISO 8601; default: "
                                                      "when the server received it.")

    @field_validator("value")
    @classmethod
    def _value(cls, v: float | None, info: ValidationInfo) -> float | None:
        kind = info.data.get("type")
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        if kind == "rating":
            lo, hi = (info.context or {}).get("rating_range", (0.0, 5.0))
            if v is None:
                raise ValueError("a rating needs a value")
            if not lo <= v <= hi:
                raise ValueError(f"a rating must be between {lo:g} and {hi:g}")
        elif kind == "purchase":
            if v is not None and v < 0:
                raise ValueError("a purchase's value (amount or quantity) cannot be negative")
        elif kind in ("click", "dismissal") and v is not None:
            raise ValueError(f"a {kind} has no value")
        return v

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                when = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("expected unix seconds or an ISO 8601 time such as 2024-05-01T12:00:00Z") from None
            return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
        if isinstance(v, bool):
            raise ValueError("expected unix seconds or an ISO 8601 time")
        return v

    @field_validator("timestamp")
    @classmethod
    def _timestamp_range(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v < 32_503_680_000):  # 1970 .. 3000
            raise ValueError("must be unix seconds between 1970 and 3000")
        return v


def feedback_record(event: FeedbackEvent, received: float) -> dict[str, Any]:
    """The stored form of a validated event (docs/serving.md)."""
    return {"v": FORMAT, "kind": "feedback", "request_id": event.request_id, "item_id": event.item_id,
            "type": event.type, "value": event.value, "position": event.position, "user_id": event.user_id,
            "ts": round(event.timestamp if event.timestamp is not None else received, 6),
            "received": round(received, 6)}


# -- stores -----------------------------------------------------------------------------------------------------


@runtime_checkable
class LogStore(Protocol):
    """Where impressions and feedback go. Called from one writer thread (appends) or a reader; records are
    JSON-compatible dicts. ``factory(location, **options)`` is what ``llmrec_register_log_stores`` registers;
    the factory should do no I/O. A store may also have ``prepare()``: create what it needs (a folder, the
    tables), raising OSError or ValueError with a message; ``llmrec serve`` calls it before serving."""

    def append_impressions(self, records: Sequence[dict[str, Any]]) -> None: ...

    def append_feedback(self, records: Sequence[dict[str, Any]]) -> None: ...

    def impressions(self) -> Iterator[dict[str, Any]]: ...

    def feedback(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class FileLogStore:
    """JSONL files in a folder: ``impressions-<UTC time>-<pid>-<n>.jsonl`` and ``feedback-...jsonl``, one record
    a line. Each batch is one ``write`` to a file opened for appending; a segment past ``max_bytes`` is fsynced
    and closed and the next one started; ``close`` fsyncs. A process never appends to a segment it did not
    start, so a crash leaves at most a torn last line in its own segment, which readers skip with a warning.
    Several workers write to one folder, each to its own segments."""

    KINDS = ("impressions", "feedback")

    def __init__(self, location: str | os.PathLike[str] | None = None, *, max_bytes: int = SEGMENT_BYTES,
                 **_options: Any) -> None:
        if not location:
            raise ValueError("the file log store needs a folder (--log-dir DIR or --log-store file:DIR)")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.folder = Path(location)
        self.max_bytes = max_bytes
        self._open: dict[str, tuple[int, int]] = {}  # kind -> (fd, bytes written)
        self._seq = 0
        self.skipped = 0  # lines readers skipped (torn or not JSON)

    def prepare(self) -> None:
        """Create the folder; OSError unless this process may write there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write in {self.folder}")

    def _start(self, kind: str) -> tuple[int, int]:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        while True:
            self._seq += 1
            path = self.folder / f"{kind}-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
            return fd, 0

    def _append(self, kind: str, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(_dumps(r) + b"\n" for r in records)
        fd, size = self._open.get(kind) or self._start(kind)
        if size and size + len(data) > self.max_bytes:
            os.fsync(fd)
            os.close(fd)
            fd, size = self._start(kind)
        self._open[kind] = (fd, size)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        self._open[kind] = (fd, size + len(data))

    def append_impressions(self, records: Sequence[dict[str, Any]]) -> None:
        self._append("impressions", records)

    def append_feedback(self, records: Sequence[dict[str, Any]]) -> None:
        self._append("feedback", records)

    def segments(self, kind: str) -> list[Path]:
        """The segment files of ``kind`` (impressions, feedback), oldest first."""
        return sorted(self.folder.glob(f"{kind}-*.jsonl")) if self.folder.is_dir() else []

    def _read(self, kind: str) -> Iterator[dict[str, Any]]:
        for path in self.segments(kind):
            with path.open("rb") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.endswith(b"\n"):
                        self.skipped += 1
                        log.warning("%s:%d: a torn last line (the writer stopped mid-record); skipped", path, lineno)
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        self.skipped += 1
                        log.warning("%s:%d: not a JSON record; skipped", path, lineno)
                        continue
                    if isinstance(record, dict):
                        yield record

    def impressions(self) -> Iterator[dict[str, Any]]:
        return self._read("impressions")

    def feedback(self) -> Iterator[dict[str, Any]]:
        return self._read("feedback")

    def close(self) -> None:
        for fd, _ in self._open.values():
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._open.clear()


class SqliteLogStore:
    """One SQLite database file (stdlib ``sqlite3``, WAL mode, so readers never block the writer and several
    workers can share the file): tables ``impressions`` and ``feedback``, each row ``(id, request_id, ts,
    record)`` with the record as JSON text (query it with SQLite's JSON functions). A batch is one
    transaction."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS impressions (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts REAL NOT NULL,
                                            record TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS impressions_request ON impressions (request_id);
    CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts REAL NOT NULL,
                                         record TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
    """

    def __init__(self, location: str | os.PathLike[str] | None = None, *, timeout: float = 10.0,
                 synchronous: Literal["off", "normal", "full"] = "normal", **_options: Any) -> None:
        if not location:
            raise ValueError("the sqlite log store needs a database file (--log-store sqlite:PATH)")
        if synchronous not in ("off", "normal", "full"):
            raise ValueError("synchronous is off, normal or full")
        self.path = Path(location)
        self.timeout = timeout
        self.synchronous = synchronous
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connection(self, create: bool) -> Any:
        import sqlite3  # stdlib, only where a sqlite store is used

        if self._conn is None:
            if not create and not self.path.exists():
                raise FileNotFoundError(f"no log database at {self.path}")
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            conn.executescript(self.SCHEMA)
            self._conn = conn
        return self._conn

    def prepare(self) -> None:
        """Create the database file and its tables."""
        with self._lock:
            self._connection(create=True)

    def _append(self, table: str, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        rows = [(str(r.get("request_id")), float(r.get("ts") or 0.0), _dumps(r).decode("utf-8")) for r in records]
        with self._lock:
            conn = self._connection(create=True)
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(f"INSERT INTO {table} (request_id, ts, record) VALUES (?, ?, ?)", rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def append_impressions(self, records: Sequence[dict[str, Any]]) -> None:
        self._append("impressions", records)

    def append_feedback(self, records: Sequence[dict[str, Any]]) -> None:
        self._append("feedback", records)

    def _read(self, table: str) -> Iterator[dict[str, Any]]:
        with self._lock:
            rows = self._connection(create=False).execute(f"SELECT record FROM {table} ORDER BY id").fetchall()
        for (text,) in rows:
            record = json.loads(text)
            if isinstance(record, dict):
                yield record

    def impressions(self) -> Iterator[dict[str, Any]]:
        return self._read("impressions")

    def feedback(self) -> Iterator[dict[str, Any]]:
        return self._read("feedback")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def parse_location(text: str, names: Sequence[str]) -> tuple[str, str]:
    """``NAME:WHERE`` -> (NAME, WHERE), NAME a registered store (ValueError naming the registered ones
    otherwise); a path without ``NAME:`` -> ``sqlite`` for a ``.db``, ``.sqlite`` or ``.sqlite3`` file, else
    ``file`` (a folder)."""
    name, sep, rest = text.partition(":")
    if sep and _STORE_NAME.match(name):
        if name not in names:
            close = difflib.get_close_matches(name, list(names), n=1)
            raise ValueError(f"unknown log store '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")
                             + f" (registered: {', '.join(sorted(names)) or 'none'})")
        return name, rest
    if Path(text).suffix.lower() in (".db", ".sqlite", ".sqlite3"):
        return "sqlite", text
    return "file", text


def open_log_store(source: str | os.PathLike[str], registry: Any = None, **options: Any) -> LogStore:
    """A registered store from ``NAME:WHERE`` or a path (see :func:`parse_location`)."""
    if registry is None:
        from ..plugins import get_registry  # lazy: the plugin registry, only when a store is opened by name

        registry = get_registry(None)
    stores = registry.log_stores
    name, where = parse_location(os.fspath(source), list(stores))
    factory = stores.get(name)
    if factory is None:
        raise ValueError(f"unknown log store '{name}' (registered: {', '.join(stores) or 'none'})")
    store: LogStore = factory(where, **options)
    return store


# -- the writer -------------------------------------------------------------------------------------------------


class LogWriter:
    """A bounded queue in front of a store, drained by one background thread in batches.

    :meth:`impression` and :meth:`feedback` only append a record to the queue; past ``max_pending`` records they
    refuse (counted as dropped). The thread wakes every ``interval`` seconds, or as soon as ``batch`` records
    wait, and appends them to the store in batches (serialising them is the store's work, on the thread); a
    batch the store refuses is counted as failed and logged (at most one warning per ``warn_every`` seconds),
    and the thread carries on. ``counter(kind, outcome, n)`` receives every count
    (``impressions``/``feedback``; ``written``/``dropped``/``failed``)."""

    def __init__(self, store: LogStore, *, max_pending: int = 10_000, batch: int = 256, interval: float = 0.2,
                 counter: Callable[[str, str, int], None] | None = None, warn_every: float = 30.0) -> None:
        self.store = store
        self.max_pending = max_pending
        self.batch = batch
        self.interval = interval
        self.counter = counter or (lambda kind, outcome, n: None)
        self.warn_every = warn_every
        self._queue: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._queued = 0  # records ever queued
        self._handled = 0  # records written, failed or dropped by the thread
        self._closing = False
        self._last_warning = -math.inf
        self._thread = threading.Thread(target=self._run, name="llmrec-log-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def room(self, n: int = 1) -> bool:
        return not self._closing and len(self._queue) + n <= self.max_pending

    def impression(self, record: dict[str, Any]) -> bool:
        """Queue an impression record (:func:`impression_record`); False when the queue is full."""
        if not self.room():
            self.counter("impressions", "dropped", 1)
            return False
        self._queue.append(("impressions", record))
        self._queued += 1
        if len(self._queue) >= self.batch:
            self._wake.set()
        return True

    def feedback(self, records: Sequence[dict[str, Any]]) -> bool:
        """Queue feedback records, all or none; False (and counted as dropped) when they do not fit."""
        if not self.room(len(records)):
            self.counter("feedback", "dropped", len(records))
            return False
        for r in records:
            self._queue.append(("feedback", r))
        self._queued += len(records)
        if len(self._queue) >= self.batch:
            self._wake.set()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or failed); True if it was within ``timeout``."""
        target = self._queued
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._handled >= target or not self._thread.is_alive(), timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then close the store (the file store fsyncs)."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                self._drain()
                if self._closing:
                    self._drain()
                    break
        finally:
            try:
                self.store.close()
            except Exception as exc:
                log.warning("the log store failed to close: %s: %s", type(exc).__name__, exc)
            with self._done:
                self._handled = self._queued
                self._done.notify_all()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            impressions: list[dict[str, Any]] = []
            feedback: list[dict[str, Any]] = []
            taken = 0
            while queue and taken < self.batch:
                kind, record = queue.popleft()
                taken += 1
                (feedback if kind == "feedback" else impressions).append(record)
            for kind, records, append in (("impressions", impressions, self.store.append_impressions),
                                          ("feedback", feedback, self.store.append_feedback)):
                if not records:
                    continue
                try:
                    append(records)
                except Exception as exc:
                    self.counter(kind, "failed", len(records))
                    self._warn(f"the log store failed to write {len(records)} {kind}: {type(exc).__name__}: {exc}")
                else:
                    self.counter(kind, "written", len(records))
            with self._done:
                self._handled += taken
                self._done.notify_all()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= self.warn_every:
            self._last_warning = now
            log.warning("%s (logging goes on; llmrec_log_records_total counts what was lost)", message)


# -- reading ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShownItem:
    """One item of an impression: the output it was in, its position there (1 = first), its id, its propensity
    (the marginal probability that the serving policy puts this item at this position: what position-based IPS
    weighs by), its cascade probability (that the policy's list is exactly the items shown down to this one;
    the last item's is the whole list's), each 1.0 for a deterministic ranking and None when unknown, and its
    score when the output had one."""

    output: str
    position: int
    id: str
    propensity: float | None
    cascade: float | None = None
    score: float | None = None
    team: str | None = None  # in an interleaved answer: the arm that contributed the item


@dataclass(frozen=True)
class Feedback:
    """One feedback event; ``shown`` says whether its item was among its impression's items (None: no
    impression has its request id)."""

    request_id: str
    item_id: str
    type: str
    value: float | None
    position: int | None
    user_id: str | None
    ts: float
    received: float
    shown: bool | None = None


@dataclass
class Impression:
    """One logged answer with the feedback about it."""

    request_id: str
    ts: float
    endpoint: str
    spec: str
    provenance: str
    variant: str | None
    user_id: str | None
    session_id: str | None
    inputs: dict[str, Any]
    items: list[ShownItem]
    policy: list[str] | None
    degraded: bool
    feedback: list[Feedback] = field(default_factory=list)
    experiment: dict[str, Any] | None = None  # the online experiment's record (docs/serving.md), if any

    @property
    def ids(self) -> list[str]:
        """The ids shown, in order (every output's items)."""
        return [i.id for i in self.items]


def _feedback(r: Mapping[str, Any], shown: bool | None = None) -> Feedback:
    return Feedback(str(r["request_id"]), str(r["item_id"]), str(r["type"]), r.get("value"), r.get("position"),
                    r.get("user_id"), float(r.get("ts") or 0.0), float(r.get("received") or 0.0), shown)


def _impression(r: Mapping[str, Any], events: list[Feedback]) -> Impression:
    items = [ShownItem(str(i["output"]), int(i["position"]), str(i["id"]), i.get("propensity"), i.get("cascade"),
                       i.get("score"), team=i.get("team")) for i in r.get("items") or ()]
    ids = {i.id for i in items}
    return Impression(str(r["request_id"]), float(r["ts"]), str(r.get("endpoint", "")), str(r.get("spec", "")),
                      str(r.get("provenance", "")), r.get("variant"), r.get("user_id"), r.get("session_id"),
                      dict(r.get("inputs") or {}), items, r.get("policy"), bool(r.get("degraded")),
                      [replace(f, shown=f.item_id in ids) for f in events],
                      experiment=r["experiment"] if isinstance(r.get("experiment"), dict) else None)


class LogReader:
    """Iterates a log's impressions, each with its feedback (:func:`read_logs`). After iterating:
    ``unmatched`` (feedback whose request id no impression has), ``duplicates`` (request ids logged more than
    once: their feedback joined the first), ``skipped`` (records that could not be read)."""

    def __init__(self, store: LogStore, close: bool) -> None:
        self.store = store
        self._close = close
        self.unmatched: list[Feedback] = []
        self.duplicates: list[str] = []
        self.skipped = 0

    def _usable(self, r: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
        if not isinstance(r.get("v"), int) or r["v"] > FORMAT or any(k not in r for k in keys):
            self.skipped += 1
            return False
        return True

    def __iter__(self) -> Iterator[Impression]:
        try:
            events: dict[str, list[Feedback]] = {}
            for r in self.store.feedback():
                if self._usable(r, ("request_id", "item_id", "type")):
                    events.setdefault(str(r["request_id"]), []).append(_feedback(r))
            seen: set[str] = set()
            for r in self.store.impressions():
                if not self._usable(r, ("request_id", "ts", "items")):
                    continue
                rid = str(r["request_id"])
                if rid in seen:
                    self.duplicates.append(rid)
                    yield _impression(r, [])
                    continue
                seen.add(rid)
                yield _impression(r, events.pop(rid, []))
            self.unmatched = [f for fs in events.values() for f in fs]
            self.skipped += getattr(self.store, "skipped", 0)
            if self.unmatched:
                log.warning("%d feedback event(s) name a request id that no impression has", len(self.unmatched))
            if self.duplicates:
                log.warning("%d request id(s) were logged more than once; their feedback joined the first",
                            len(self.duplicates))
        finally:
            if self._close:
                self.store.close()


def read_logs(source: LogStore | str | os.PathLike[str], registry: Any = None) -> LogReader:
    """A log's impressions joined with their feedback, as typed records: ``for imp in read_logs(src)``.
    ``source``: a :class:`LogStore`, ``NAME:WHERE`` (``sqlite:serve.db``, a plugin's store) or a path (a folder
    of the file store, a ``.db``/``.sqlite`` file). Feedback joins the impression with its request id."""
    if isinstance(source, (str, os.PathLike)):
        return LogReader(open_log_store(source, registry), close=True)
    return LogReader(source, close=False)


__all__ = ["CASCADE", "FEEDBACK_TYPES", "FORMAT", "Feedback", "FeedbackEvent", "FileLogStore", "Impression",
           "LogReader", "LogStore", "LogWriter", "PROPENSITIES", "ShownItem", "SqliteLogStore", "Stamp",
           "feedback_record", "impression_record", "keep_stamp", "open_log_store", "parse_location",
           "policy_propensities", "provenance_stamp", "read_logs", "shown_lists", "stamp_changes", "stamp_folder"]
