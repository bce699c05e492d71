"""MovieLens 100K and 1M: the GroupLens rating logs, registered as named datasets.

    ds = load_dataset("movielens-100k", split="temporal")      # ../shared/PROTOCOLS.md, chapter 2
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from llmrec.data.catalog import Catalog, Interactions, Item, construct_interactions
from llmrec.data.dataset import Dataset
from llmrec.data.datasets import DatasetInfo, int_table, read_text
from llmrec.data.splits import make_dataset
from llmrec.errors import DataError

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _movielens_log(path: Path, table: np.ndarray, catalog: Catalog) -> Interactions:
    """Validated ratings (user, item, rating, timestamp columns) as Interactions."""
    users, items, ratings, stamps = table.T
    bad = (ratings < 1) | (ratings > 5)
    if bad.any():
        row = _first_bad(bad)
        raise DataError(f"rating {ratings[row]} is outside 1..5", path, row + 1, "rating")
    if (stamps < 0).any():
        row = _first_bad(stamps < 0)
        raise DataError(f"timestamp {stamps[row]} is negative", path, row + 1, "timestamp")
    known = np.array([int(i) for i in catalog.ids], dtype=np.int64)
    missing = ~np.isin(items, known)
    if missing.any():
        row = _first_bad(missing)
        others = int(missing.sum()) - 1
        raise DataError(f"movie {items[row]} is not in the movie list"
                        + (f" ({others} other rows name unknown movies too)" if others else ""),
                        path, row + 1, "item")
    rows = zip(users.astype(str).tolist(), items.astype(str).tolist(), ["rating"] * len(table),
               ratings.astype(float).tolist(), stamps.tolist())
    return Interactions(construct_interactions(rows))


def _movie(movie_id: str, title: str, genres: list[str], year: int | None) -> Item:
    attributes: dict[str, str | int | float | bool] = {"genres": "|".join(genres)}
    if year is not None:
        attributes["year"] = year
    return Item(id=movie_id, title=title, category=genres[0] if genres else "", attributes=attributes)


def _ml100k_catalog(folder: Path) -> Catalog:
    genre_path, item_path = folder / "u.genre", folder / "u.item"
    genres = [line.split("|")[0] for line in read_text(genre_path, "latin-1").splitlines() if line.strip()]
    items: list[Item] = []
    for number, line in enumerate(read_text(item_path, "latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + len(genres):
            raise DataError(f"{len(fields)} fields, expected {5 + len(genres)} (id, title, release date, video "
                            f"release date, URL and {len(genres)} genre flags)", item_path, number)
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError("genre flags must be 0 or 1", item_path, number)
        named = [genre for genre, flag in zip(genres, flags) if flag == "1"]
        release = fields[2].strip()
        year = int(release[-4:]) if release[-4:].isdigit() else None
        if not fields[0].strip().isdigit():
            raise DataError(f"movie id {fields[0]!r} is not a number", item_path, number, "id")
        items.append(_movie(fields[0].strip(), fields[1].strip(), named, year))
    return Catalog(items)


def _ml1m_catalog(path: Path) -> Catalog:
    items: list[Item] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(read_text(path, "latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError(f"{len(fields)} fields, expected 3 (MovieID::Title::Genres)", path, number)
        movie_id, title, genres = (f.strip() for f in fields)
        if not movie_id.isdigit():
            raise DataError(f"movie id {movie_id!r} is not a number", path, number, "MovieID")
        if movie_id in seen:
            raise DataError(f"duplicate movie id {movie_id} (first at line {seen[movie_id]})", path, number, "MovieID")
        seen[movie_id] = number
        match = _YEAR.search(title)
        year = int(match.group(1)) if match else None
        items.append(_movie(movie_id, title, [g for g in genres.split("|") if g], year))
    return Catalog(items)


def _load_movielens_100k(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
                         relevant_rating: float | None = 4.0, holdout_fraction: float = 0.2) -> Dataset:
    """MovieLens 100K from ``root/ml-100k`` (u.data, u.item, u.genre), split by ``split``."""
    folder = root / "ml-100k"
    catalog = _ml100k_catalog(folder)
    path = folder / "u.data"
    log = _movielens_log(path, int_table(path, None, ("user", "item", "rating", "timestamp")), catalog)
    return make_dataset("movielens-100k", catalog, log, split, test_fraction=test_fraction,  # type: ignore[arg-type]
                        holdout_fraction=holdout_fraction, seed=seed, relevant_rating=relevant_rating,
                        description=MOVIELENS_100K.description)


def _load_movielens_1m(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
                       relevant_rating: float | None = 4.0, holdout_fraction: float = 0.2) -> Dataset:
    """MovieLens 1M from ``root/ml-1m`` (ratings.dat, movies.dat), split by ``split``."""
    folder = root / "ml-1m"
    catalog = _ml1m_catalog(folder / "movies.dat")
    path = folder / "ratings.dat"
    log = _movielens_log(path, int_table(path, b"::", ("user", "item", "rating", "timestamp")), catalog)
    return make_dataset("movielens-1m", catalog, log, split, test_fraction=test_fraction,  # type: ignore[arg-type]
                        holdout_fraction=holdout_fraction, seed=seed, relevant_rating=relevant_rating,
                        description=MOVIELENS_1M.description)


MOVIELENS_100K = DatasetInfo(
    "movielens-100k",
    "MovieLens 100K: 100,000 ratings (1-5) by 943 users of 1,682 movies; category = first genre.",
    _load_movielens_100k, ("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.genre"),
    url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    # SHA-256 of the files llmrec reads, computed from a copy of the official release (no zip digest: none
    # has been checked against the zips themselves, and a wrong constant is worse than none)
    file_sha256={
        "ml-100k/u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        "ml-100k/u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    },
)
MOVIELENS_1M = DatasetInfo(
    "movielens-1m",
    "MovieLens 1M: 1,000,209 ratings (1-5) by 6,040 users of 3,706 movies; category = first genre.",
    _load_movielens_1m, ("ml-1m/ratings.dat", "ml-1m/movies.dat"),
    url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
)
DATASETS: tuple[DatasetInfo, ...] = (MOVIELENS_100K, MOVIELENS_1M)

__all__ = ["DATASETS", "MOVIELENS_100K", "MOVIELENS_1M"]
