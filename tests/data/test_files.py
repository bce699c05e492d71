"""Reading catalogs and interaction logs from CSV, JSONL and Parquet (llmrec/data/files.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmrec.data import Catalog, Interaction, Interactions, Item
from llmrec.data.files import columns, read_catalog, read_interactions, read_item_ids
from llmrec.errors import DataError

ITEMS = [
    {"id": "b1", "title": "Mystery Novel", "summary": "A page-turning read.", "genre": "books", "cost": 12.5,
     "brand": "Acme"},
    {"id": "o1", "title": "Hiking Boots", "summary": "For rocky trails.", "genre": "outdoor", "cost": 89.0,
     "brand": "Trail"},
    {"id": "k1", "title": "Espresso Machine", "summary": "Cafe at home.", "genre": "kitchen", "cost": None,
     "brand": "Brew"},
]
EVENTS = [
    {"user": "u1", "item": "b1", "kind": "click", "stars": None, "ts": 100},
    {"user": "u1", "item": "o1", "kind": "rating", "stars": 4.0, "ts": 200},
    {"user": "u2", "item": "k1", "kind": "purchase", "stars": None, "ts": 150},
]


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "csv":
        header = list(rows[0])
        lines = [",".join(header)] + [",".join("" if r[h] is None else str(r[h]) for h in header) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _catalog_kwargs() -> dict:
    return dict(description="summary", category="genre", price="cost", metadata=["brand"])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    catalog = read_catalog(_write(tmp_path / f"items.{fmt}", ITEMS, fmt), **_catalog_kwargs())
    assert catalog.ids == ["b1", "o1", "k1"]
    boots = catalog["o1"]
    assert (boots.title, boots.description, boots.category, boots.price) == ("Hiking Boots", "For rocky trails.",
                                                                               "outdoor", 89.0)
    assert boots.attributes == {"brand": "Trail"}
    assert catalog["k1"].price is None
    assert catalog["b1"].text == "Mystery Novel. A page-turning read."  # no template: title and description

    log = read_interactions(_write(tmp_path / f"events.{fmt}", EVENTS, fmt), user="user", item="item",
                            event="kind", rating="stars", timestamp="ts", catalog=catalog)
    assert isinstance(log, Interactions) and len(log) == 3
    assert log.history("u1") == [
        Interaction(user_id="u1", item_id="b1", event="click", rating=None, timestamp=100),
        Interaction(user_id="u1", item_id="o1", event="rating", rating=4.0, timestamp=200),
    ]
    assert log.seen("u2") == {"k1"}


def test_text_template_sets_embed_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "items.jsonl", ITEMS, "jsonl")
    catalog = read_catalog(path, text="{{ title }} by {{ brand }}: {{ summary }}")
    assert catalog["b1"].embed_text == "Mystery Novel by Acme: A page-turning read."
    assert catalog["b1"].text == catalog["b1"].embed_text
    assert Item(id="x", title="T", description="D").text == "T. D"  # unchanged without embed_text


def test_defaults_event_from_rating_and_iso_dates(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,rating,timestamp\nu1,a,5,2024-01-01T00:00:00Z\nu1,b,,1704067201\n")
    log = read_interactions(path, rating="rating")
    assert [(it.event, it.rating, it.timestamp) for it in log.history("u1")] == [
        ("rating", 5.0, 1704067200), ("view", None, 1704067201)]


def test_no_timestamp_column_keeps_file_order(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\nu1,z\nu1,a\n")
    assert [it.item_id for it in read_interactions(path, timestamp=None).history("u1")] == ["z", "a"]


def test_bom_and_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes('\ufeffid,title\n\n1,"Two\nlines"\n2,\n'.encode())
    with pytest.raises(DataError) as info:
        read_catalog(path)
    # the record starting on line 5 (after a blank line and a two-line quoted field) is the bad one
    assert (info.value.row, info.value.column) == (5, "title")


# -- bad input: every message names the file, the row and the column --------------------------------------------


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_missing_id_column_lists_columns_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\n1,A\n")
    assert _error(read_catalog, path) == (
        f"{path}:1: column 'id': no column 'id' (the file has: item_id, title). "
        "Did you mean 'item_id'? Set id= to the column that holds it")


def test_missing_column_in_jsonl_has_no_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "items.jsonl", ITEMS, "jsonl")
    assert _error(read_catalog, path, category="genres") == (
        f"{path}: column 'genres': no column 'genres' (the file has: id, title, summary, genre, cost, brand). "
        "Did you mean 'genre'? Set category= to the column that holds it")


def test_empty_id(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,title\n1,A\n ,B\n")
    assert _error(read_catalog, path) == f"{path}:3: column 'id': empty id. Every item needs an id"


def test_duplicate_id_names_the_first(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,title\n1,A\n2,B\n1,C\n")
    assert _error(read_catalog, path) == f"{path}:4: column 'id': duplicate id '1' (first at row 2)"


def test_duplicate_id_jsonl_uses_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": 1, "title": "A"}\n\n{"id": 1, "title": "B"}\n')
    assert _error(read_catalog, path) == f"{path}:3: column 'id': duplicate id '1' (first at row 1)"


def test_empty_text_from_template(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,title,summary\n1,A,fine\n2,B,\n")
    assert _error(read_catalog, path, text="{{summary}}") == (
        f"{path}:3: empty text for item '2': the text template '{{{{summary}}}}' gives nothing. "
        "Fill in the columns it uses")


def test_template_naming_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,title,summary\n1,A,x\n")
    message = _error(read_catalog, path, text="{{ title }}. {{ sumary }}")
    assert message.startswith(f"{path}:1: column 'sumary': no column 'sumary'")
    assert "Did you mean 'summary'?" in message


def test_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(b"id,title\n1,Caf\xe9\n2,B\n")
    assert _error(read_catalog, path) == (
        f"{path}:2: bytes that are not UTF-8 (byte 0xe9). Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


@pytest.mark.parametrize(("cell", "message"), [
    ("nan", "price is NaN. Leave the cell empty when there is no price"),
    ("-3", "price -3 is negative or infinite"),
    ("cheap", "price 'cheap' is not a number"),
])
def test_bad_price(tmp_path: Path, cell: str, message: str) -> None:
    path = tmp_path / "items.csv"
    path.write_text(f"id,title,price\n1,A,3\n2,B,{cell}\n")
    assert _error(read_catalog, path, price="price") == f"{path}:3: column 'price': {message}"


def test_parquet_rows_are_named_row(tmp_path: Path) -> None:
    rows = [dict(r, cost=float("nan") if r["id"] == "o1" else r["cost"]) for r in ITEMS]
    path = _write(tmp_path / "items.parquet", rows, "parquet")
    with pytest.raises(DataError) as info:
        read_catalog(path, price="cost")
    assert str(info.value) == f"{path}: row 2: column 'cost': price is NaN. Leave the cell empty when there is no price"
    assert info.value.row == 2 and info.value.column == "cost"


def test_non_numeric_rating_and_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,rating,timestamp\nu1,a,4,10\nu1,b,good,11\n")
    assert _error(read_interactions, path, rating="rating") == (
        f"{path}:3: column 'rating': rating 'good' is not a number")
    path.write_text("user_id,item_id,rating,timestamp\nu1,a,4,10\nu1,b,3,yesterday\n")
    assert _error(read_interactions, path, rating="rating") == (
        f"{path}:3: column 'timestamp': timestamp 'yesterday' is not a number. "
        "Use Unix seconds or an ISO 8601 date such as 2024-05-01T12:00:00")


def test_unknown_event(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,event,timestamp\nu1,a,like,10\n")
    assert _error(read_interactions, path, event="event") == (
        f"{path}:2: column 'event': unknown event 'like'. Use one of: view, click, purchase, rating")


def test_items_missing_from_catalog_name_the_row_and_count_the_rest(tmp_path: Path) -> None:
    catalog = Catalog([Item(id="a", title="A")])
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,a,1\nu1,x,2\nu2,y,3\nu2,z,4\n")
    assert _error(read_interactions, path, catalog=catalog) == (
        f"{path}:3: column 'item_id': item 'x' is not in the catalog (2 other rows name unknown items too). "
        "Check that the log and the catalog use the same ids")
    assert len(read_interactions(path, catalog=["a", "x", "y", "z"])) == 4


def test_wrong_field_count_and_missing_file_and_bad_suffix(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\nu1,a,1,extra\n")
    assert _error(read_interactions, path) == f"{path}:2: 4 fields, but the header has 3. Quote fields that contain commas"
    missing = tmp_path / "nope.jsonl"
    assert _error(read_catalog, missing) == (
        f"{missing}: file not found. Check the path (relative paths start at the spec's folder)")
    assert "cannot tell the format" in _error(read_catalog, tmp_path / "items.txt")
    assert _error(read_catalog, tmp_path / "items.txt", format="xml").endswith("Use one of: csv, jsonl, parquet")


def test_bad_json_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "1", "title": "A"}\n{"id": "2", "title": }\n')
    assert _error(read_catalog, path).startswith(f"{path}:2: not valid JSON: Expecting value")


def test_item_ids_and_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "items.parquet", ITEMS, "parquet")
    assert read_item_ids(path) == ["b1", "o1", "k1"]
    assert columns(path) == ["id", "title", "summary", "genre", "cost", "brand"]


def test_nothing_is_returned_when_a_late_row_is_bad(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},Item {i}" for i in range(1, 500))
    path = tmp_path / "items.csv"
    path.write_text(f"id,title\n{rows}\n12,again\n")
    assert _error(read_catalog, path) == f"{path}:501: column 'id': duplicate id '12' (first at row 13)"
