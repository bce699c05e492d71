"""Named datasets, dataset folders and the data resource types (llmrec/data/datasets.py, llmrec/nodes/data.py).

Tests on the real MovieLens 100K and BBC News files skip unless LLMREC_DATA_DIR points at them.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmrec.data import Dataset, write_demo
from llmrec.data import datasets as ds_module
from llmrec.api import check
from llmrec.data.datasets import list_datasets, load_dataset, problems
from llmrec.errors import DataError
from llmrec.plugins import get_registry
from llmrec.testing import errors_of, run_spec, write_spec

DATA = os.environ.get("LLMREC_DATA_DIR")


def _need(*files: str) -> Path:
    if not DATA:
        pytest.skip("LLMREC_DATA_DIR is not set")
    root = Path(DATA)
    for f in files:
        if not (root / f).is_file():
            pytest.skip(f"{root / f} is not there")
    return root


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    _need("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.genre")
    return load_dataset("movielens-100k", "temporal")


@pytest.fixture(scope="module")
def bbc() -> Dataset:
    _need("bbc-news/bbc-text.csv")
    return load_dataset("bbc-news")


# -- MovieLens -------------------------------------------------------------------------------------------------


def test_movielens_100k_shape_and_temporal_protocol(ml100k: Dataset) -> None:
    assert len(ml100k.catalog) == 1682
    assert len(ml100k.train) + len(ml100k.test) == 100_000
    assert len(set(ml100k.train.users()) | set(ml100k.test.users())) == 943
    toy = ml100k.catalog["1"]
    assert toy.title == "Toy Story (1995)" and toy.category == "Animation"
    assert toy.attributes == {"genres": "Animation|Children's|Comedy", "year": 1995}
    # PROTOCOLS.md: per user, the last round(10%) (at least one) by (timestamp, item id) are the test set
    raw = np.loadtxt(Path(DATA) / "ml-100k/u.data", dtype=np.int64)
    per_user = Counter(raw[:, 0].tolist())
    expected = sum(min(max(round(n * 0.1), 1), n - 1) for n in per_user.values())
    assert len(ml100k.test) == expected
    assert len(ml100k.test_cases) == 943
    case = next(c for c in ml100k.test_cases if c.id == "1")
    held = ml100k.test.history("1")
    good = {it.item_id for it in held if it.rating >= 4}
    assert case.relevant == (good or {it.item_id for it in held})
    assert case.exclude == ml100k.train.seen("1")
    # PROTOCOLS.md: (timestamp, item id) with the id compared as a number
    last_train = max((it.timestamp, int(it.item_id)) for it in ml100k.train.history("1"))
    assert all((it.timestamp, int(it.item_id)) > last_train for it in held)


def test_movielens_100k_loads_fast() -> None:
    # a regression guard with room for a busy CI machine (about 0.8 s of CPU on a quiet one), not a benchmark
    _need("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.genre")
    import time

    start = time.process_time()
    load_dataset("movielens-100k")
    assert time.process_time() - start < 4.0


def test_movielens_1m_parser(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Amélie (2001)::Comedy|Romance\n".encode("latin-1"))
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n")
    data = load_dataset("movielens-1m", "leave-last", data_dir=tmp_path)
    assert data.catalog["2"].title == "Amélie (2001)"
    assert data.catalog["2"].attributes == {"genres": "Comedy|Romance", "year": 2001}
    assert len(data.train) == 2 and [c.id for c in data.test_cases] == ["1"]
    assert data.test_cases[0].relevant == {"2"} or data.test_cases[0].relevant == {"1"}
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::7::3::978302109\n")
    with pytest.raises(DataError) as info:
        load_dataset("movielens-1m", data_dir=tmp_path)
    assert str(info.value) == f"{folder / 'ratings.dat'}:2: column 'item': movie 7 is not in the movie list"
    (folder / "ratings.dat").write_text("1::1::5::978300760\n1::2::five::978302109\n")
    with pytest.raises(DataError) as info:
        load_dataset("movielens-1m", data_dir=tmp_path)
    assert str(info.value) == f"{folder / 'ratings.dat'}:2: column 'rating': 'five' is not an integer"


def test_missing_files_say_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMREC_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_dataset("movielens-100k")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'ml-100k/u.data'}: dataset 'movielens-100k' needs this file")
    assert f"set LLMREC_DATA_DIR to the folder that holds ml-100k/ (now set to {tmp_path})" in message
    assert "download: true" in message and "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in message


def _zip(tmp_path: Path) -> tuple[Path, str]:
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
        zf.writestr("ml-1m/ratings.dat", "1::1::5::978300760\n")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_download_verifies_the_checksum_and_unpacks(tmp_path: Path) -> None:
    archive, digest = _zip(tmp_path)
    target = tmp_path / "data"
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        load_dataset("movielens-1m", data_dir=target, download=True, checksum="0" * 64, url=archive.as_uri())
    assert not (target / "ml-1m").exists() and list(target.iterdir()) == []  # nothing half-unpacked
    with pytest.raises(DataError, match="no SHA-256 to verify"):
        load_dataset("movielens-1m", data_dir=target, download=True, url=archive.as_uri())
    data = load_dataset("movielens-1m", data_dir=target, download=True, checksum=digest, url=archive.as_uri())
    assert len(data.train) == 1 and (target / "ml-1m" / "ratings.dat").is_file()


def test_movielens_100k_downloads_without_a_zip_checksum_when_its_files_match(tmp_path: Path) -> None:
    """The official files' own SHA-256 (MOVIELENS_100K.file_sha256) verify a download; a changed byte is refused."""
    source = _need("ml-100k/u.data", "ml-100k/u.item", "ml-100k/u.genre")
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    for archive, tamper in ((good, False), (bad, True)):
        with zipfile.ZipFile(archive, "w") as zf:
            for name in ("u.data", "u.item", "u.genre"):
                data = (source / "ml-100k" / name).read_bytes()
                zf.writestr(f"ml-100k/{name}", data + b"1\t1\t5\t1\n" if tamper and name == "u.data" else data)
    target = tmp_path / "data"
    with pytest.raises(DataError, match="SHA-256 mismatch for ml-100k/u.data"):
        load_dataset("movielens-100k", data_dir=target, download=True, url=bad.as_uri())
    assert list(target.iterdir()) == []  # nothing unpacked
    data = load_dataset("movielens-100k", data_dir=target, download=True, url=good.as_uri())
    assert len(data.train) == 100_000


def test_download_is_never_implicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str, destination: Path) -> None:
        raise AssertionError("fetched without download=True")

    monkeypatch.setattr(ds_module, "_fetch", refuse)
    with pytest.raises(DataError, match="needs this file"):
        load_dataset("movielens-100k", data_dir=tmp_path)


# -- BBC News --------------------------------------------------------------------------------------------------


def test_bbc_news_head_queries(bbc: Dataset) -> None:
    assert len(bbc.catalog) == 1249 and len(bbc.catalog.categories) == 5
    assert len(bbc.test_cases) == 200 and len(bbc.train) == 0
    picks = np.random.default_rng(0).choice(1249, 200, replace=False)
    assert [c.id for c in bbc.test_cases] == [f"a{i}" for i in picks.tolist()]
    for case in bbc.test_cases:
        article = bbc.catalog[case.id]
        assert case.exclude == {case.id} and case.id not in case.relevant
        assert case.relevant == {it.id for it in bbc.catalog.by_category(article.category)} - {case.id}
        assert case.inputs["query"] == " ".join(article.description.split()[:12])
    assert len(bbc.catalog["a0"].title.split()) <= 13
    assert {c.id for c in load_dataset("bbc-news", seed=1).test_cases} != {c.id for c in bbc.test_cases}


def test_bbc_news_profiles_topic_granularity() -> None:
    _need("bbc-news/bbc-text.csv")
    data = load_dataset("bbc-news-profiles", "user", seed=3, n_users=50, granularity="topic")
    again = load_dataset("bbc-news-profiles", "user", seed=3, n_users=50, granularity="topic")
    assert list(data.train) == list(again.train) and data.test_cases == again.test_cases
    assert data.extra["interests"] == again.extra["interests"]
    other = load_dataset("bbc-news-profiles", seed=4, n_users=50, granularity="topic")
    assert other.extra["interests"] != data.extra["interests"]
    assert len(data.test_cases) == 10 and len(data.train_cases) == 40
    assert not {c.id for c in data.test_cases} & {c.id for c in data.train_cases}
    assert "planted interest" in data.description
    on_topic = 0
    for case in (*data.test_cases, *data.train_cases):
        history = data.train.history(case.id)
        topics = data.extra["interests"][case.id]
        assert len(history) == 8 and 1 <= len(topics) <= 2
        assert [it.event for it in history] == ["click"] * 8
        assert [it.timestamp for it in history] == sorted({it.timestamp for it in history})
        assert not case.relevant & {it.item_id for it in history}
        assert case.exclude == {it.item_id for it in history}
        assert case.relevant == {i.id for t in topics for i in data.catalog.by_category(t)} - case.exclude
        on_topic += sum(data.catalog[it.item_id].category in topics for it in history)
    assert 0.7 < on_topic / (8 * 50) < 0.9  # ~80% of reading follows the planted interests


@pytest.fixture(scope="module")
def profiles() -> Dataset:
    _need("bbc-news/bbc-text.csv")
    return load_dataset("bbc-news-profiles", "user", seed=3, n_users=60)


def test_bbc_news_profiles_plant_subtopics(profiles: Dataset) -> None:
    data = profiles
    again = load_dataset("bbc-news-profiles", "user", seed=3, n_users=60)
    assert list(data.train) == list(again.train) and data.test_cases == again.test_cases
    assert data.extra["interests"] == again.extra["interests"] and data.extra["granularity"] == "subtopic"
    assert len(data.test_cases) == 12 and len(data.train_cases) == 48
    assert "planted interest" in data.description and "sub-topics" in data.description
    groups = data.extra["subtopics"]
    # 4 sub-topics per topic that partition it, named "topic: term/term/term" after their articles' words
    assert len(groups) == 20 and sorted({name.split(": ")[0] for name in groups}) == data.catalog.categories
    assert sorted(i for ids in groups.values() for i in ids) == sorted(data.catalog.ids)
    for name, ids in groups.items():
        topic, terms = name.split(": ")
        assert len(terms.split("/")) == 3 and len(ids) >= 5
        assert all(data.catalog[i].category == topic and data.catalog[i].attributes["subtopic"] == name for i in ids)
        words = " ".join(data.catalog[i].description.lower() for i in ids)
        assert all(term in words for term in terms.split("/"))
    sport = {i for name, ids in groups.items() if name.startswith("sport: ") for i in ids}
    football = next(ids for name, ids in groups.items() if name.startswith("sport: ") and any(
        w in name for w in ("club", "league", "chelsea", "football")))
    assert len(football) < len(sport) / 2  # a reader of football is not a reader of all sport
    on_interest = 0
    for case in (*data.test_cases, *data.train_cases):
        interests = data.extra["interests"][case.id]
        assert len(interests) == 2 and len({name.split(": ")[0] for name in interests}) == 2
        read = [it.item_id for it in data.train.history(case.id)]
        assert len(read) == len(set(read)) == 8 and case.exclude == set(read)
        liked = {i for name in interests for i in groups[name]}
        assert case.relevant == liked - set(read) and case.relevant
        on_interest += sum(i in liked for i in read)
    assert 0.7 < on_interest / (8 * 60) < 0.9  # ~80% of reading follows the planted interests


def test_bbc_news_profiles_options() -> None:
    _need("bbc-news/bbc-text.csv")
    three = load_dataset("bbc-news-profiles", n_users=20, interests=3, subtopics=3, history=5, noise=0.0)
    assert len(three.extra["subtopics"]) == 15
    for case in (*three.test_cases, *three.train_cases):
        interests = three.extra["interests"][case.id]
        assert len({name.split(": ")[0] for name in interests}) == 3
        liked = {i for name in interests for i in three.extra["subtopics"][name]}
        assert {it.item_id for it in three.train.history(case.id)} <= liked  # no noise
    with pytest.raises(DataError, match="granularity must be one of subtopic, topic, got 'genre'"):
        load_dataset("bbc-news-profiles", granularity="genre")
    with pytest.raises(DataError, match="interests must be between 1 and 5"):
        load_dataset("bbc-news-profiles", interests=6)
    assert problems("bbc-news-profiles", "user", {"granularity": "topic", "interest": 2})[0][2].startswith(
        "Did you mean 'interests'?")


# -- generated and folder datasets -----------------------------------------------------------------------------


def test_demo_and_folder_datasets_agree(tmp_path: Path) -> None:
    demo = load_dataset("demo", "temporal", seed=7)
    write_demo(tmp_path / "shop", seed=7)
    folder = load_dataset(str(tmp_path / "shop"), "temporal", seed=7)
    assert folder.catalog.ids == demo.catalog.ids
    assert list(folder.catalog)[5] == list(demo.catalog)[5]  # attributes and prices survive the JSONL round trip
    assert list(folder.train) == list(demo.train) and folder.test_cases == demo.test_cases
    assert demo.extra["users"][0].id == "u1"


def test_unknown_names_and_options() -> None:
    with pytest.raises(DataError, match="unknown dataset 'movielens'. Did you mean 'movielens-1m'"):
        load_dataset("movielens")
    assert problems("bbc-news", "temporal") == [
        ("split", "dataset 'bbc-news' does not take split 'temporal'", "It takes: none")]
    assert problems("demo", "none", {"n_user": 3})[0][2].startswith("Did you mean 'n_users'?")
    table = get_registry().datasets
    assert [d.name for d in list_datasets()] == sorted(table.entries)
    assert {"movielens-100k", "movielens-1m", "bbc-news", "bbc-news-profiles", "demo"} <= set(table)
    assert {table.entry(n).plugin.name for n in ("movielens-100k", "bbc-news", "demo")} == {"llmrec.nodes.data"}
    with pytest.raises(DataError, match="dataset 'demo': n_users must be a positive integer, got 0"):
        load_dataset("demo", n_users=0)


# -- resources in a spec ---------------------------------------------------------------------------------------

SPEC = """
    version: 1
    name: data-test
    resources:
      shop:
        type: dataset
        config: {{name: {name}, split: temporal, seed: 7, options: {{n_items: 60, n_users: 20}}}}
    nodes:
      popular:
        type: retrieve.popular
        config: {{k: 5}}
        inputs: {{interactions: "${{resources.shop.train}}"}}
    outputs:
      top: ${{popular}}
"""


async def test_dataset_resource_feeds_popular(tmp_path: Path) -> None:
    result = await run_spec(write_spec(tmp_path, SPEC.format(name="demo")))
    expected = load_dataset("demo", "temporal", seed=7, n_items=60, n_users=20).train.popularity()
    assert result.outputs["top"].ids == list(expected)[:5]


def test_dataset_resource_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors = errors_of(write_spec(tmp_path, SPEC.format(name="demo-shop")))
    assert len(errors) == 1 and "unknown dataset 'demo-shop'. Did you mean 'demo' (from llmrec " in errors[0]
    monkeypatch.setenv("LLMREC_DATA_DIR", str(tmp_path))
    spec = write_spec(tmp_path, SPEC.format(name="bbc-news-profiles").replace("n_items: 60, ", "")
                      .replace("split: temporal", "split: user"))
    _, errors, warnings = check(spec)
    assert errors == [] and len(warnings) == 1  # the spec is right; the data is missing
    message = warnings[0].format()
    assert "warning: data for dataset 'bbc-news-profiles' not found" in message and "LLMREC_DATA_DIR" in message


async def test_a_folder_beside_the_spec_is_named_bare_or_as_a_path(tmp_path: Path, monkeypatch) -> None:
    """``name: shop`` means the folder beside the spec when no dataset is registered as ``shop``, from any working
    folder; ``./shop`` always does; a bare name that is neither stays an unknown dataset."""
    write_demo(tmp_path / "shop", seed=7, n_items=60, n_users=20)
    monkeypatch.chdir(tmp_path.parent)
    expected = load_dataset("demo", "temporal", seed=7, n_items=60, n_users=20).train.popularity()
    for name in ("shop", "./shop"):
        text = SPEC.format(name=name).replace("options: {n_items: 60, n_users: 20}", "options: {}")
        spec = write_spec(tmp_path, text)
        assert errors_of(spec) == []
        assert (await run_spec(spec)).outputs["top"].ids == list(expected)[:5]
    errors = errors_of(write_spec(tmp_path, SPEC.format(name="shops")))
    assert len(errors) == 1 and "unknown dataset 'shops'" in errors[0]


def test_a_dataset_folder_outside_the_specs_folders_is_refused_unless_trusted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LLMREC_TRUST")  # the suite trusts its temporary folders; a user's download folder is not
    write_demo(tmp_path / "outside" / "shop", seed=7, n_items=60, n_users=20)
    text = SPEC.format(name="../outside/shop").replace("options: {n_items: 60, n_users: 20}", "options: {}")
    (tmp_path / "spec").mkdir()
    spec = write_spec(tmp_path / "spec", text)
    errors = errors_of(spec)
    assert len(errors) == 1 and "'../outside/shop' is outside the folders a spec may use" in errors[0]
    _, errors, _ = check(spec, trust=True)
    assert errors == []


async def test_catalog_and_interactions_resources(tmp_path: Path) -> None:
    write_demo(tmp_path, seed=2, n_items=40, n_users=10)
    spec = write_spec(tmp_path, """
        version: 1
        name: files
        resources:
          items:
            type: catalog
            config: {path: catalog.jsonl, category: category, text: "{{title}} ({{category}})"}
          log:
            type: interactions
            config: {path: interactions.csv, event: event, rating: rating, catalog_check: catalog.jsonl}
        nodes:
          popular: {type: retrieve.popular, config: {k: 3}, inputs: {interactions: "${resources.log}"}}
          keyword: {type: retrieve.bm25, inputs: {catalog: "${resources.items}", query: "kitchen"}}
        outputs:
          top: ${popular}
          found: ${keyword}
    """)
    assert errors_of(spec) == []
    result = await run_spec(spec)
    assert len(result.outputs["top"].items) == 3
    demo_items = load_dataset(str(tmp_path)).catalog
    assert result.outputs["found"].ids and all(demo_items[i].category == "kitchen" for i in result.outputs["found"].ids)


async def test_dataset_folder_is_relative_to_the_spec(tmp_path: Path) -> None:
    write_demo(tmp_path / "shop", seed=7, n_items=60, n_users=20)
    spec = write_spec(tmp_path, SPEC.format(name="./shop").replace("options: {n_items: 60, n_users: 20}", "options: {}"))
    assert errors_of(spec) == []
    result = await run_spec(spec)
    assert result.outputs["top"].ids == (await run_spec(write_spec(tmp_path, SPEC.format(name="demo"), "b.yaml"))
                                         ).outputs["top"].ids
