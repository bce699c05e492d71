"""BBC News: the articles with 200 head queries, and synthetic readers with planted interests.

    ds = load_dataset("bbc-news")                               # 200 head queries, chapter 1
    ds = load_dataset("bbc-news-profiles", "user", n_users=60)  # readers planted with sub-topic interests
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.data.catalog import Catalog, Interactions, Item, construct_interactions
from llmrec.data.dataset import Dataset, EvalCase
from llmrec.data.datasets import DatasetInfo, read_text
from llmrec.errors import DataError



def _title(text: str, words: int = 12) -> str:
    """The first sentence, or its first ``words`` words when it is longer (with an ellipsis)."""
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].rstrip(".")
    tokens = sentence.split()
    return " ".join(tokens) if len(tokens) <= words else " ".join(tokens[:words]) + " …"


def _bbc_catalog(root: Path) -> tuple[Catalog, list[str]]:
    """The articles (ids a0, a1, ... in file order) and their texts."""
    path = root / "bbc-news" / "bbc-text.csv"
    text = read_text(path)
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
    """The articles and ``n_queries`` head queries (an article's first ``query_tokens`` words; relevant: the
    other articles of its topic)."""
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
    protocol = {"split": f"none: {n_queries} head queries drawn with numpy default_rng({seed}), without "
                         f"replacement; a query is its article's first {query_tokens} words",
                "relevance": "every other article of the query article's topic",
                "candidates": "every article but the query's own"}
    return Dataset(name="bbc-news", catalog=catalog, train=empty, test=empty, test_cases=tuple(cases),
                   split="none", description=BBC_NEWS.description, extra={"protocol": protocol})


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
    """Synthetic readers of BBC News with planted interests (see BBC_NEWS_PROFILES).

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
    extra: dict[str, Any] = {"interests": planted, "granularity": granularity, "protocol": {
        "split": f"user: a seeded {fraction:.0%} of {n_users} synthetic readers are test users",
        "relevance": f"unread articles of the reader's planted interests ({what})",
        "candidates": "every article the reader has not read"}}
    if granularity == "subtopic":
        extra["subtopics"] = groups
    return Dataset(
        name="bbc-news-profiles", catalog=catalog, train=Interactions(construct_interactions(rows)),
        test=Interactions([]), test_cases=tuple(cases[u] for u in users if u in test_users),
        train_cases=tuple(cases[u] for u in users if u not in test_users), split="user",
        description=description, extra=extra,
    )


BBC_NEWS = DatasetInfo(
    "bbc-news",
    "BBC News: 1,249 articles in 5 topics; 200 head queries (first 12 words), relevant = same topic.",
    _load_bbc_news, ("bbc-news/bbc-text.csv",), splits=("none",),
)
BBC_NEWS_PROFILES = DatasetInfo(
    "bbc-news-profiles",
    "BBC News with seeded synthetic readers (8 clicked articles each) and planted interests: 2 sub-topics "
    "of different topics (TF-IDF + k-means clusters; granularity: topic plants whole topics); labels come "
    "from the planted interests (relevant = unread articles of them), users split 80/20.",
    _load_bbc_profiles, ("bbc-news/bbc-text.csv",), splits=("user", "none"),
)
DATASETS: tuple[DatasetInfo, ...] = (BBC_NEWS, BBC_NEWS_PROFILES)

__all__ = ["BBC_NEWS", "BBC_NEWS_PROFILES", "DATASETS", "GRANULARITIES", "bbc_subtopics"]
