"""Read a catalog or an interaction log from CSV, JSONL or Parquet, refusing bad data with a precise message.

Every problem is a :class:`~llmrec.errors.DataError` naming the file, the row and the column, as an editor
shows them: in a CSV file the header is row 1, so the first item is row 2; in JSONL the row is the line
number; Parquet has no lines, so the message says ``row N`` (N = row index + 1). The whole file is validated
before anything is returned, so a caller never sees a half-loaded catalog.

    catalog = read_catalog("items.csv", text="{{title}}. {{summary}}", metadata=["brand"])
    log = read_interactions("events.jsonl", event="event", rating="stars", catalog=catalog)
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

from llmrec.data.catalog import Catalog, EventType, Interactions, Item, construct_interactions
from llmrec.errors import DataError
from llmrec.templates import TemplateProblem, compile_template, variables

FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
EVENTS: tuple[str, ...] = get_args(EventType)

PathLike = str | Path


class _ParquetRowError(DataError):
    """A DataError about a Parquet row: Parquet has no lines, so the row is shown as ``row N``."""

    def format(self) -> str:
        row, self.row = self.row, None
        try:
            text = super().format()
        finally:
            self.row = row
        if row is None:
            return text
        head = f"{self.path}: " if self.path else ""
        return f"{head}row {row}: {text[len(head):]}"


@dataclass
class _Table:
    """A file's rows as dicts, each with the row number an editor shows."""

    path: Path
    format: str
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]
    header_row: int | None  # where the column names are (CSV: 1); None when they are not on one line

    def error(self, message: str, row: int | None = None, column: str | None = None,
              hint: str | None = None) -> DataError:
        cls = _ParquetRowError if self.format == "parquet" else DataError
        return cls(message, self.path, row, column, hint)

    def require(self, column: str, option: str) -> None:
        """Raise unless ``column`` exists; ``option`` says what named it (for the hint)."""
        if column in self.columns:
            return
        lower = [c for c in self.columns if c.lower() == column.lower()]
        close = difflib.get_close_matches(column, self.columns, n=1, cutoff=0.6)
        # 'id' -> 'item_id', 'user' -> 'user_id': a column that has the name as one of its words
        words = [c for c in self.columns if column.lower() in re.split(r"[_\-\s.]+", c.lower())]
        guess = (lower or close or words or [None])[0]
        hint = f"Did you mean '{guess}'? " if guess else ""
        hint += f"Set {option} to the column that holds it" if option.endswith("=") else f"Fix {option}"
        raise self.error(f"no column '{column}' (the file has: {', '.join(self.columns) or 'no columns'})",
                         self.header_row, column, hint)


def detect_format(path: PathLike, format: str | None = None) -> str:
    """``format`` when given, else the one the suffix names (.csv, .jsonl/.ndjson, .parquet/.pq)."""
    if format is not None:
        if format not in FORMATS:
            raise DataError(f"unknown format '{format}'", path, hint=f"Use one of: {', '.join(FORMATS)}")
        return format
    found = _SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise DataError(f"cannot tell the format from the suffix '{Path(path).suffix}'", path,
                        hint=f"Name the file .csv, .jsonl or .parquet, or pass format= ({', '.join(FORMATS)})")
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path, hint="Check the path (relative paths start at the spec's folder)") from None
    except IsADirectoryError:
        raise DataError("is a folder, not a file", path) from None
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path) from None


def _decode(path: Path, data: bytes) -> str:
    try:
        return codecs.decode(data, "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"bytes that are not UTF-8 (byte 0x{data[exc.start]:02x})", path, line,
                        hint="Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _read_csv(path: Path) -> _Table:
    text = _decode(path, _read_bytes(path))
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, Any]]] = []
    last_line = 0
    try:
        for record in reader:
            start, last_line = last_line + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = [name.strip() for name in record]
                seen: dict[str, int] = {}
                for position, name in enumerate(header):
                    if name in seen:
                        raise DataError(f"column '{name}' appears twice in the header", path, start, name)
                    seen[name] = position
                header_row = start
                continue
            if len(record) != len(header):
                raise DataError(f"{len(record)} fields, but the header has {len(header)}", path, start,
                                hint="Quote fields that contain commas")
            rows.append((start, dict(zip(header, record))))
    except csv.Error as exc:
        raise DataError(f"not valid CSV: {exc}", path, reader.line_num) from None
    if header is None:
        raise DataError("the file is empty (no header line)", path)
    return _Table(path, "csv", header, rows, header_row)


def _read_jsonl(path: Path) -> _Table:
    text = _decode(path, _read_bytes(path))
    columns: dict[str, None] = {}
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg} (character {exc.colno})", path, number) from None
        if not isinstance(record, dict):
            raise DataError(f"each line must be a JSON object, found {type(record).__name__}", path, number)
        columns.update(dict.fromkeys(record))
        rows.append((number, record))
    return _Table(path, "jsonl", list(columns), rows, None)


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        _read_bytes(path)  # raises the same "file not found" / "is a folder" as the text formats
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path) from None
    records = table.to_pylist()
    return _Table(path, "parquet", list(table.column_names), [(i + 1, r) for i, r in enumerate(records)], None)


def _read_table(path: PathLike, format: str | None) -> _Table:
    path = Path(path)
    fmt = detect_format(path, format)
    return {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt](path)


def _text(value: Any) -> str:
    """A cell as a string: None is empty; whole floats lose their '.0' (ids written by pandas)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value.strip() if isinstance(value, str) else str(value)


def _number(value: Any) -> float | None:
    """A cell as a float; None for an empty cell; raises ValueError for text that is not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _attribute(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)  # lists, dates: kept as text


# -- catalog ---------------------------------------------------------------------------------------------------


def read_catalog(
    path: PathLike,
    *,
    id: str = "id",
    title: str = "title",
    description: str | None = None,
    category: str | None = None,
    price: str | None = None,
    text: str | None = None,
    metadata: Sequence[str] = (),
    format: str | None = None,
) -> Catalog:
    """Read items from a CSV, JSONL or Parquet file.

    Keyword arguments name the columns. ``text`` is a Jinja template over the row (``"{{title}}. {{summary}}"``)
    giving ``Item.embed_text``, the text embedded and searched; without it ``Item.text`` is title and
    description. ``metadata`` columns become ``Item.attributes`` (a column holding a JSON object is merged
    key by key; empty cells are left out). Raises DataError on the first problem, before returning anything.
    """
    table = _read_table(path, format)
    wanted = [("id", id), ("title", title), ("description", description), ("category", category),
              ("price", price)]
    for option, column in wanted:
        if column is not None:
            table.require(column, f"{option}=")
    for column in metadata:
        table.require(column, "metadata=")
    template = None
    if text is not None:
        try:
            names = variables(text)
            template = compile_template(text)
        except TemplateProblem as exc:
            raise DataError(f"text template: {exc}", table.path) from None
        for name in sorted(names):
            table.require(name, "the text template or add the column")

    items: list[Item] = []
    first_row: dict[str, int] = {}
    for row, record in table.rows:
        item_id = _text(record.get(id))
        if not item_id:
            raise table.error("empty id", row, id, hint="Every item needs an id")
        if item_id in first_row:
            raise table.error(f"duplicate id '{item_id}' (first at row {first_row[item_id]})", row, id)
        first_row[item_id] = row
        item_title = _text(record.get(title))
        if not item_title:
            raise table.error(f"empty title for item '{item_id}'", row, title)
        item_price = None
        if price is not None:
            cell = record.get(price)
            try:
                item_price = _number(cell)
            except (TypeError, ValueError):
                raise table.error(f"price {cell!r} is not a number", row, price) from None
            if item_price is not None and math.isnan(item_price):
                raise table.error("price is NaN", row, price, hint="Leave the cell empty when there is no price")
            if item_price is not None and (item_price < 0 or math.isinf(item_price)):
                raise table.error(f"price {item_price:g} is negative or infinite", row, price)
        attributes: dict[str, str | int | float | bool] = {}
        for column in metadata:
            value = record.get(column)
            if isinstance(value, dict):
                for key, inner in value.items():
                    if (converted := _attribute(inner)) is not None:
                        attributes[str(key)] = converted
            elif (converted := _attribute(value)) is not None and converted != "":
                if not (isinstance(converted, float) and math.isnan(converted)):
                    attributes[column] = converted
        embed_text = None
        if template is not None:
            context = {k: ("" if v is None else v) for k, v in record.items()}
            try:
                embed_text = template.render(context).strip()
            except Exception as exc:  # sandbox refusals, filters given the wrong type
                raise table.error(f"text template failed: {exc}", row) from None
            if not embed_text:
                raise table.error(f"empty text for item '{item_id}': the text template {text!r} gives nothing", row,
                                  hint="Fill in the columns it uses")
        items.append(Item(
            id=item_id, title=item_title, description=_text(record.get(description)) if description else "",
            category=_text(record.get(category)) if category else "", price=item_price, attributes=attributes,
            embed_text=embed_text,
        ))
    return Catalog(items)


def read_item_ids(path: PathLike, *, id: str = "id", format: str | None = None) -> list[str]:
    """Only the id column of a catalog file (empty and duplicate ids are errors, as in read_catalog)."""
    table = _read_table(path, format)
    table.require(id, "id=")
    ids: dict[str, int] = {}
    for row, record in table.rows:
        item_id = _text(record.get(id))
        if not item_id:
            raise table.error("empty id", row, id)
        if item_id in ids:
            raise table.error(f"duplicate id '{item_id}' (first at row {ids[item_id]})", row, id)
        ids[item_id] = row
    return list(ids)


# -- interactions ----------------------------------------------------------------------------------------------


def _timestamp(value: Any) -> int:
    """Unix seconds from a number or an ISO 8601 date; raises ValueError otherwise."""
    if isinstance(value, datetime):
        return int(value.timestamp() if value.tzinfo else value.replace(tzinfo=timezone.utc).timestamp())
    try:
        number = _number(value)
    except (TypeError, ValueError):
        number = None
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))  # raises ValueError
            return _timestamp(parsed)
        raise
    if number is None or not math.isfinite(number):
        raise ValueError
    return int(number)


def read_interactions(
    path: PathLike,
    *,
    user: str = "user_id",
    item: str = "item_id",
    event: str | None = None,
    rating: str | None = None,
    timestamp: str | None = "timestamp",
    catalog: Catalog | Iterable[str] | None = None,
    format: str | None = None,
) -> Interactions:
    """Read an interaction log from a CSV, JSONL or Parquet file.

    Keyword arguments name the columns. Without an ``event`` column a row with a rating is a "rating" event and
    any other a "view". Timestamps are Unix seconds or ISO 8601 dates; ``timestamp=None`` uses the file order.
    With ``catalog`` (a Catalog or item ids), every item must be in it. Raises DataError on the first problem.
    """
    table = _read_table(path, format)
    table.require(user, "user=")
    table.require(item, "item=")
    for option, column in (("event", event), ("rating", rating), ("timestamp", timestamp)):
        if column is not None:
            table.require(column, f"{option}=")
    known = None if catalog is None else (catalog if isinstance(catalog, Catalog) else frozenset(catalog))
    events: list[tuple[str, str, str, float | None, int]] = []
    unknown: list[tuple[int, str]] = []
    for position, (row, record) in enumerate(table.rows):
        user_id = _text(record.get(user))
        if not user_id:
            raise table.error("empty user id", row, user)
        item_id = _text(record.get(item))
        if not item_id:
            raise table.error("empty item id", row, item)
        if known is not None and item_id not in known:
            unknown.append((row, item_id))
        value = None
        if rating is not None:
            cell = record.get(rating)
            try:
                value = _number(cell)
            except (TypeError, ValueError):
                raise table.error(f"rating {cell!r} is not a number", row, rating) from None
            if value is not None and not math.isfinite(value):
                raise table.error(f"rating {value} is not a number", row, rating)
        if event is not None:
            kind = _text(record.get(event)).lower()
            if kind not in EVENTS:
                raise table.error(f"unknown event {_text(record.get(event))!r}", row, event,
                                  hint=f"Use one of: {', '.join(EVENTS)}")
        else:
            kind = "rating" if value is not None else "view"
        if timestamp is None:
            when = position
        else:
            cell = record.get(timestamp)
            if _text(cell) == "":
                raise table.error("empty timestamp", row, timestamp)
            try:
                when = _timestamp(cell)
            except (TypeError, ValueError, OverflowError):
                raise table.error(f"timestamp {cell!r} is not a number", row, timestamp,
                                  hint="Use Unix seconds or an ISO 8601 date such as 2024-05-01T12:00:00") from None
            if when < 0:
                raise table.error(f"timestamp {when} is negative", row, timestamp)
        events.append((user_id, item_id, kind, value, when))
    if unknown:
        row, item_id = unknown[0]
        others = len(unknown) - 1
        more = f" ({others} other row{'s' if others != 1 else ''} name unknown items too)" if others else ""
        raise table.error(f"item '{item_id}' is not in the catalog{more}", row, item,
                          hint="Check that the log and the catalog use the same ids")
    return Interactions(construct_interactions(events))


def columns(path: PathLike, format: str | None = None) -> list[str]:
    """The column names of a CSV, JSONL or Parquet file (JSONL: every key any line uses, in order)."""
    path = Path(path)
    fmt = detect_format(path, format)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not path.is_file():
            _read_bytes(path)  # raises "file not found" / "is a folder"
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"not a readable Parquet file: {exc}", path) from None
    return _read_table(path, fmt).columns


__all__ = ["FORMATS", "columns", "detect_format", "read_catalog", "read_interactions", "read_item_ids"]
