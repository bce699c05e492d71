"""Named datasets (MovieLens, BBC News, the demo shop) and folders of files, loaded as a :class:`Dataset`.

    ds = load_dataset("movielens-100k", split="temporal")      # ../shared/PROTOCOLS.md, chapter 2
    ds = load_dataset("bbc-news")                               # 200 head queries, chapter 1
    ds = load_dataset("path/to/folder", split="user")           # catalog.* and interactions.* in a folder

Files are looked up in ``data_dir``, else ``$LLMREC_DATA_DIR``, else ``~/.cache/llmrec/data``. Missing files
are a :class:`~llmrec.errors.DataError` saying which file was expected where and how to get it; MovieLens
can be fetched with ``download=True`` (verified against a SHA-256, unpacked atomically). Loaders never
download unless asked.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import gc
import hashlib
import inspect
import io
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.data.catalog import Catalog, Interactions, Item, construct_interactions
from llmrec.data.dataset import Dataset, EvalCase
from llmrec.data.splits import SPLITS, make_dataset
from llmrec.errors import DataError

ENV_VAR = "LLMREC_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/llmrec/data")

#: SHA-256 of the official GroupLens zips. Left empty on purpose: no value here has been checked against the
#: zips themselves, and a wrong constant is worse than none.
KNOWN_SHA256: dict[str, str] = {}
#: SHA-256 of the files llmrec reads, computed from a copy of the official release. A download is accepted
#: when every listed file of the unpacked zip matches (or when the zip matches a ``checksum`` option); without
#: either nothing is fetched.
KNOWN_FILE_SHA256: dict[str, dict[str, str]] = {
    "movielens-100k": {
        "ml-100k/u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        "ml-100k/u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    },
}


@dataclass(frozen=True)
class DatasetInfo:
    """One entry of :data:`DATASETS`."""

    name: str
    description: str
    loader: Callable[..., Dataset]
    files: tuple[str, ...] = ()  # relative to the data folder; empty: generated in memory
    splits: tuple[str, ...] = SPLITS
    url: str | None = None  # an official zip holding ``files``

    @property
    def options(self) -> tuple[str, ...]:
        """The extra keyword options the loader takes."""
        skip = {"root", "split", "seed", "test_fraction"}
        return tuple(p for p in inspect.signature(self.loader).parameters if p not in skip)


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


# -- MovieLens -------------------------------------------------------------------------------------------------

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    try:
        return path.read_bytes().decode(encoding)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except UnicodeDecodeError as exc:
        data = path.read_bytes()
        raise DataError("bytes that are not UTF-8", path, data[: exc.start].count(b"\n") + 1,
                        hint="Save the file as UTF-8") from None


def _int_table(path: Path, separator: bytes | None, columns: tuple[str, ...]) -> np.ndarray:
    """A file of integer rows as an (n, len(columns)) array; the exact line of any malformed row on error."""
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
    genres = [line.split("|")[0] for line in _read_text(genre_path, "latin-1").splitlines() if line.strip()]
    items: list[Item] = []
    for number, line in enumerate(_read_text(item_path, "latin-1").splitlines(), start=1):
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
    for number, line in enumerate(_read_text(path, "latin-1").splitlines(), start=1):
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
        items.append(_movie(movie_id, title, [g for g in genres.split("|") if g], int(match.group(1)) if match else None))
    return Catalog(items)


def _split(name: str, catalog: Catalog, log: Interactions, split: str, seed: int, test_fraction: float | None,
           relevant_rating: float | None, holdout_fraction: float, description: str) -> Dataset:
    return make_dataset(name, catalog, log, split, test_fraction=test_fraction,  # type: ignore[arg-type]
                        holdout_fraction=holdout_fraction, seed=seed, relevant_rating=relevant_rating,
                        description=description)


def _load_movielens_100k(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
                         relevant_rating: float | None = 4.0, holdout_fraction: float = 0.2) -> Dataset:
    folder = root / "ml-100k"
    catalog = _ml100k_catalog(folder)
    path = folder / "u.data"
    log = _movielens_log(path, _int_table(path, None, ("user", "item", "rating", "timestamp")), catalog)
    return _split("movielens-100k", catalog, log, split, seed, test_fraction, relevant_rating, holdout_fraction,
                  DATASETS["movielens-100k"].description)


def _load_movielens_1m(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
                       relevant_rating: float | None = 4.0, holdout_fraction: float = 0.2) -> Dataset:
    folder = root / "ml-1m"
    catalog = _ml1m_catalog(folder / "movies.dat")
    path = folder / "ratings.dat"
    log = _movielens_log(path, _int_table(path, b"::", ("user", "item", "rating", "timestamp")), catalog)
    return _split("movielens-1m", catalog, log, split, seed, test_fraction, relevant_rating, holdout_fraction,
                  DATASETS["movielens-1m"].description)


# -- BBC News --------------------------------------------------------------------------------------------------


def _title(text: str, words: int = 12) -> str:
    """The first sentence, or its first ``words`` words when it is longer (with an ellipsis)."""
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".")
    tokens = sentence.split()
    return " ".join(tokens) if len(tokens) <= words else " ".join(tokens[:words]) + " …"


def _bbc_catalog(root: Path) -> tuple[Catalog, list[str]]:
    """The articles (ids a0, a1, ... in file order) and their texts."""
    path = root / "bbc-news" / "bbc-text.csv"
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ["category", "text"]:
        raise DataError(f"expected the header 'category,text', found {','.join(header or [])!r}", path, 1)
    items: list[Item] = []
    texts: list[str] = []
    line = 1
    for record in reader:
        start, line = line + 1, reader.line_num
        if not record:
            continue
        if len(record) != 2 or not record[0].strip() or not record[1].strip():
            raise DataError("expected a category and a non-empty text", path, start)
        category, body = record[0].strip(), record[1].strip()
        items.append(Item(id=f"a{len(items)}", title=_title(body), description=body, category=category))
        texts.append(body)
    return Catalog(items), texts


def _load_bbc_news(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
                   n_queries: int = 200, query_tokens: int = 12) -> Dataset:
    catalog, texts = _bbc_catalog(root)
    items = list(catalog)
    if not 0 < n_queries <= len(items):
        raise DataError(f"n_queries must be between 1 and {len(items)}, got {n_queries}")
    picks = np.random.default_rng(seed).choice(len(items), n_queries, replace=False)
    cases = []
    for index in picks.tolist():
        article = items[index]
        same = {it.id for it in catalog.by_category(article.category)} - {article.id}
        cases.append(EvalCase(id=article.id, inputs={"query": " ".join(texts[index].split()[:query_tokens])},
                              relevant=frozenset(same), exclude=frozenset({article.id})))
    empty = Interactions([])
    return Dataset(name="bbc-news", catalog=catalog, train=empty, test=empty, test_cases=tuple(cases),
                   split="none", description=DATASETS["bbc-news"].description)


_PROFILE_START = 1_700_000_000
GRANULARITIES = ("subtopic", "topic")
#: tokens too common in news text to name a sub-topic (on top of scikit-learn's English stop words)
_NAME_STOP_WORDS = ("mr", "mrs", "ms", "said", "says", "year", "years", "new", "people", "just", "like")


def bbc_subtopics(catalog: Catalog, texts: list[str], per_topic: int = 4, seed: int = 0) -> dict[str, list[str]]:
    """Split every topic of the BBC catalog into ``per_topic`` sub-topics; ``{name: [article ids]}``.

    Deterministic and independent of any embedding model: per topic, TF-IDF of the article texts (English stop
    words, sublinear tf), reduced to 100 dimensions with LSA (TruncatedSVD) and L2-normalised, then
    ``KMeans(per_topic, random_state=seed, n_init=10)`` (scikit-learn's text-clustering recipe: the LSA step
    gives more coherent, more even clusters than k-means on raw TF-IDF). A sub-topic is named after the topic and
    the three heaviest TF-IDF terms of its articles, e.g. ``"sport: chelsea/club/league"``; names are unique
    (a number is added when two clusters share their terms). Topics too small to split keep one sub-topic.
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(1):  # small matrices: BLAS threads only fight each other (20x slower on 2 busy cores)
        return _cluster_topics(catalog, texts, per_topic, seed)


def _cluster_topics(catalog: Catalog, texts: list[str], per_topic: int, seed: int) -> dict[str, list[str]]:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
    from sklearn.preprocessing import normalize

    text_of = {item.id: text for item, text in zip(catalog, texts)}
    stop = sorted(ENGLISH_STOP_WORDS | set(_NAME_STOP_WORDS))
    out: dict[str, list[str]] = {}
    for topic in catalog.categories:
        ids = [item.id for item in catalog.by_category(topic)]
        vectorizer = TfidfVectorizer(stop_words=stop, sublinear_tf=True, min_df=2, max_df=0.5,
                                     token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
        try:
            tfidf = vectorizer.fit_transform([text_of[i] for i in ids])
        except ValueError:  # too few articles or words to build a vocabulary
            out[f"{topic}: all"] = ids
            continue
        k = min(per_topic, len(ids))
        if k < 2 or tfidf.shape[1] < 3:
            out[f"{topic}: all"] = ids
            continue
        dims = min(100, tfidf.shape[1] - 1, len(ids) - 1)
        lsa = normalize(TruncatedSVD(dims, random_state=seed).fit_transform(tfidf))
        labels = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(lsa).labels_
        terms = vectorizer.get_feature_names_out()
        for cluster in range(k):
            rows = np.flatnonzero(labels == cluster)
            if not len(rows):
                continue
            weights = np.asarray(tfidf[rows].mean(axis=0)).ravel()
            top = [str(terms[j]) for j in np.argsort(-weights, kind="stable")[:3]]
            name = base = f"{topic}: {'/'.join(top)}"
            n = 2
            while name in out:
                name, n = f"{base} ({n})", n + 1
            out[name] = [ids[r] for r in rows]
    return out


def _read_history(rng: np.random.Generator, pools: list[list[str]], other: list[str], history: int,
                  noise: float) -> list[str]:
    """``history`` distinct articles: with probability ``noise`` from ``other``, else from one of ``pools``
    (picked uniformly, so every interest shows in the history); an exhausted pool falls back to ``other``."""
    read: list[str] = []
    seen: set[str] = set()
    while len(read) < history:
        if rng.random() < noise:
            pool = other
        else:
            pool = pools[int(rng.integers(len(pools)))]
            if all(i in seen for i in pool):
                pool = other
        item = pool[int(rng.integers(len(pool)))]
        if item not in seen:
            read.append(item)
            seen.add(item)
    return read


def _load_bbc_profiles(root: Path, *, split: str = "user", seed: int = 0, test_fraction: float | None = None,
                       n_users: int = 200, history: int = 8, noise: float = 0.2, granularity: str = "subtopic",
                       interests: int | None = None, subtopics: int = 4) -> Dataset:
    """Synthetic readers of BBC News with planted interests (see the DATASETS entry).

    ``granularity: subtopic`` (default): each reader gets ``interests`` (default 2) sub-topics of different
    topics (:func:`bbc_subtopics`, ``subtopics`` per topic); relevant = the unread articles of those sub-topics.
    ``granularity: topic``: the first labelling, whole topics (1 or 2 at random unless ``interests`` says);
    relevant = every unread article of those topics. Histories: ``history`` clicks, a share ``noise`` of them
    outside the interests. Items carry their sub-topic name as the attribute ``subtopic`` (to show, never to rank
    with: it is the label). ``extra["interests"]``: the planted interests per user.
    """
    catalog, texts = _bbc_catalog(root)
    topics = catalog.categories
    if granularity not in GRANULARITIES:
        raise DataError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if n_users < 2:
        raise DataError(f"n_users must be at least 2, got {n_users}")
    if not 0.0 <= noise <= 1.0:
        raise DataError(f"noise must be between 0 and 1, got {noise}")
    if interests is not None and not 1 <= interests <= len(topics):
        raise DataError(f"interests must be between 1 and {len(topics)} (one per topic at most), got {interests}")
    if not 1 <= subtopics <= 20:
        raise DataError(f"subtopics must be between 1 and 20, got {subtopics}")
    fraction = 0.2 if test_fraction is None else test_fraction
    if not 0.0 < fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1, got {fraction}")
    by_topic = {topic: [it.id for it in catalog.by_category(topic)] for topic in topics}
    smallest = min(len(ids) for ids in by_topic.values())
    if not 1 <= history < smallest:
        raise DataError(f"history must be between 1 and {smallest - 1}, got {history}")
    rng = np.random.default_rng(seed)
    planted: dict[str, list[str]] = {}
    rows: list[tuple[str, str, str, float | None, int]] = []
    cases: dict[str, EvalCase] = {}
    if granularity == "subtopic":
        groups = bbc_subtopics(catalog, texts, subtopics, seed)
        subtopic_of = {i: name for name, ids in groups.items() for i in ids}
        catalog = Catalog([it.model_copy(update={"attributes": {**it.attributes, "subtopic": subtopic_of[it.id]}})
                           for it in catalog])
        names_of = {topic: [n for n in groups if n.startswith(f"{topic}: ")] for topic in topics}
    all_ids = catalog.ids
    for number in range(1, n_users + 1):
        user = f"u{number}"
        if granularity == "topic":
            count = int(rng.integers(1, 3)) if interests is None else interests
            chosen = sorted(rng.choice(topics, count, replace=False).tolist())
            pools = [by_topic[t] for t in chosen]
        else:
            picked = rng.choice(topics, 2 if interests is None else interests, replace=False).tolist()
            chosen = sorted(names_of[t][int(rng.integers(len(names_of[t])))] for t in picked)
            pools = [groups[name] for name in chosen]
        planted[user] = chosen
        liked_set = {i for pool in pools for i in pool}
        if granularity == "topic":  # the first generator, kept draw for draw
            liked = [i for pool in pools for i in pool]
            other = [i for t in topics if t not in chosen for i in by_topic[t]]
            read: list[str] = []
            while len(read) < history:
                pool = other if rng.random() < noise else liked
                item = pool[int(rng.integers(len(pool)))]
                if item not in read:
                    read.append(item)
        else:
            read = _read_history(rng, pools, [i for i in all_ids if i not in liked_set], history, noise)
        rows.extend((user, item, "click", None, _PROFILE_START + step * 3600) for step, item in enumerate(read))
        cases[user] = EvalCase(id=user, inputs={"user_id": user}, relevant=frozenset(liked_set - set(read)),
                               exclude=frozenset(read))
    users = list(cases)
    order = np.random.default_rng([seed, 1]).permutation(len(users)).tolist()
    n_test = max(1, min(len(users) - 1, round(len(users) * fraction)))
    test_users = {users[i] for i in order[:n_test]}
    what = ("sub-topics (TF-IDF + LSA + k-means clusters of each topic's articles, "
            f"{subtopics} per topic)" if granularity == "subtopic" else "topics")
    description = (f"BBC News with {n_users} seeded synthetic readers ({history} clicked articles each); labels come "
                   f"from the planted interests (no LLM judge yet): {what}; relevant = unread articles of the "
                   "reader's interests; users split "
                   f"{round((1 - fraction) * 100)}/{round(fraction * 100)}.")
    extra: dict[str, Any] = {"interests": planted, "granularity": granularity}
    if granularity == "subtopic":
        extra["subtopics"] = groups
    return Dataset(
        name="bbc-news-profiles", catalog=catalog, train=Interactions(construct_interactions(rows)),
        test=Interactions([]), test_cases=tuple(cases[u] for u in users if u in test_users),
        train_cases=tuple(cases[u] for u in users if u not in test_users), split="user",
        description=description, extra=extra,
    )


# -- generated and folder datasets -----------------------------------------------------------------------------


def _load_demo(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
               n_items: int = 300, n_users: int = 120, relevant_rating: float | None = 4.0,
               holdout_fraction: float = 0.2) -> Dataset:
    from llmrec.data.demo import generate_demo

    demo = generate_demo(seed=seed, n_items=n_items, n_users=n_users)
    ds = _split("demo", demo.catalog, demo.interactions, split, seed, test_fraction, relevant_rating,
                holdout_fraction, DATASETS["demo"].description)
    ds.extra["users"] = demo.users
    return ds


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
    from llmrec.data.files import columns, read_catalog, read_interactions

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError("dataset folder not found", root,
                        hint="Give a DATASETS name (see list_datasets()) or a folder with catalog.* and interactions.*")
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
        return _split(root.name, items, log, split, seed, test_fraction, relevant_rating, holdout_fraction,
                      f"Files in {root}")


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "movielens-100k",
            "MovieLens 100K: 100,000 ratings (1-5) by 943 users of 1,682 movies; category = first genre.",
            _load_movielens_100k, ("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.genre"),
            url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        ),
        DatasetInfo(
            "movielens-1m",
            "MovieLens 1M: 1,000,209 ratings (1-5) by 6,040 users of 3,706 movies; category = first genre.",
            _load_movielens_1m, ("ml-1m/ratings.dat", "ml-1m/movies.dat"),
            url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        ),
        DatasetInfo(
            "bbc-news",
            "BBC News: 1,249 articles in 5 topics; 200 head queries (first 12 words), relevant = same topic.",
            _load_bbc_news, ("bbc-news/bbc-text.csv",), splits=("none",),
        ),
        DatasetInfo(
            "bbc-news-profiles",
            "BBC News with seeded synthetic readers (8 clicked articles each) and planted interests: 2 sub-topics "
            "of different topics (TF-IDF + k-means clusters; granularity: topic plants whole topics); labels come "
            "from the planted interests (relevant = unread articles of them), users split 80/20.",
            _load_bbc_profiles, ("bbc-news/bbc-text.csv",), splits=("user", "none"),
        ),
        DatasetInfo(
            "demo",
            "The seeded demo shop (llmrec.data.demo), generated in memory: 300 items, 120 users.",
            _load_demo,
        ),
    )
}


def list_datasets() -> list[DatasetInfo]:
    """Every named dataset, in table order."""
    return list(DATASETS.values())


def is_path(name_or_path: str) -> bool:
    """Whether a dataset name is meant as a folder rather than a DATASETS name."""
    if name_or_path in DATASETS:
        return False
    if "/" in name_or_path or os.sep in name_or_path or name_or_path.startswith((".", "~")):
        return True
    try:
        return Path(name_or_path).expanduser().is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a folder
        return False


def problems(name_or_path: str, split: str = "none", options: dict[str, Any] | None = None) -> list[tuple[str, str, str | None]]:
    """What is wrong with a request, before loading anything: ``(field, message, hint)`` triples.

    ``field`` is ``name``, ``split`` or ``options``. Missing files are not a problem here (see missing_files).
    """
    found: list[tuple[str, str, str | None]] = []
    options = dict(options or {})
    if split not in SPLITS:
        found.append(("split", f"unknown split '{split}'", f"Use one of: {', '.join(SPLITS)}"))
    if is_path(name_or_path):
        allowed = tuple(p for p in inspect.signature(load_folder).parameters if p not in
                        ("folder", "split", "seed", "test_fraction"))
        splits: tuple[str, ...] = SPLITS
    elif name_or_path in DATASETS:
        info = DATASETS[name_or_path]
        allowed = info.options + (("download", "checksum", "url") if info.url else ())
        splits = info.splits
    else:
        close = difflib.get_close_matches(name_or_path, list(DATASETS), n=2, cutoff=0.5)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        found.append(("name", f"unknown dataset '{name_or_path}'",
                      hint + f"Known datasets: {', '.join(DATASETS)}; or give a folder path"))
        return found
    if split in SPLITS and split not in splits:
        found.append(("split", f"dataset '{name_or_path}' does not take split '{split}'",
                      f"It takes: {', '.join(splits)}"))
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            found.append(("options", f"unknown option '{key}' for dataset '{name_or_path}'",
                          hint + f"It takes: {', '.join(allowed) or 'no options'}"))
    return found


def missing_files(name_or_path: str, data_dir_: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files a dataset needs that are not there (empty for generated datasets and present data)."""
    if is_path(name_or_path):
        root = Path(name_or_path).expanduser()
        if not root.is_dir():
            return [root]
        return [root / f"{stem}.*" for stem in ("catalog", "interactions")
                if not any((root / f"{stem}{s}").is_file() for s in (".jsonl", ".csv", ".parquet"))]
    info = DATASETS.get(name_or_path)
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
                 if not (KNOWN_SHA256.get(info.name) or KNOWN_FILE_SHA256.get(info.name))
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


def download(name: str, data_dir_: str | os.PathLike[str] | None = None, *, checksum: str | None = None,
             url: str | None = None) -> Path:
    """Fetch a dataset's official zip, check its SHA-256 and unpack it atomically into the data folder.

    The expected digest is ``checksum`` or the one in KNOWN_SHA256; without either nothing is fetched.
    ``url`` replaces the official address (a mirror, a ``file://`` copy). Returns the data folder.
    """
    info = DATASETS[name]
    source = url or info.url
    if source is None:
        raise DataError(f"dataset '{name}' has no download; put its files in place instead")
    expected = (checksum or KNOWN_SHA256.get(name) or "").strip().lower()
    file_digests = KNOWN_FILE_SHA256.get(name, {}) if not expected else {}
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


# -- entry point -----------------------------------------------------------------------------------------------


def load_dataset(
    name_or_path: str,
    split: str = "none",
    *,
    seed: int = 0,
    test_fraction: float | None = None,
    data_dir: str | Path | None = None,
    **options: Any,
) -> Dataset:
    """Load a named dataset (see :data:`DATASETS`) or a folder of files, split by ``split``.

    ``seed`` drives every random choice (user splits, query draws, synthetic profiles, the demo shop);
    ``options`` are the dataset's own (``DATASETS[name].options``; MovieLens also takes ``download``,
    ``checksum`` and ``url``). Raises DataError for an unknown name or option and for missing or bad files.
    """
    found = problems(name_or_path, split, options)
    if found:
        field, message, hint = found[0]
        raise DataError(message, hint=hint)
    if is_path(name_or_path):
        return load_folder(name_or_path, split=split, seed=seed, test_fraction=test_fraction, **options)
    info = DATASETS[name_or_path]
    root = _data_dir(data_dir)
    fetch = bool(options.pop("download", False))
    checksum, url = options.pop("checksum", None), options.pop("url", None)
    missing = [root / f for f in info.files if not (root / f).is_file()]
    if missing and fetch:
        download(info.name, root, checksum=checksum, url=url)
        missing = [root / f for f in info.files if not (root / f).is_file()]
    if missing:
        raise _missing_error(info, root, missing)
    try:
        with _gc_paused():
            return info.loader(root, split=split, seed=seed, test_fraction=test_fraction, **options)
    except (TypeError, ValueError) as exc:  # an option of the wrong type or range (n_users: "many")
        raise DataError(f"dataset '{info.name}': {exc}", hint=f"Check its options ({', '.join(info.options)})") from None


_data_dir = data_dir  # load_dataset's parameter shadows the function

__all__ = ["DATASETS", "DatasetInfo", "ENV_VAR", "data_dir", "download", "list_datasets", "load_dataset",
           "load_folder", "missing_files", "problems"]
