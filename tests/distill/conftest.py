"""A small synthetic catalog and log where pairwise preference is learnable: each user walks one genre."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmrec.data import Catalog, Interaction, Interactions, Item
from llmrec.data.splits import make_dataset

GENRES = ("Action", "Comedy", "Drama")
PER_GENRE = 20
#: fast, single-threaded rec-LM settings for tests
FAST = {"threads": 1, "device": "cpu"}


def synthetic_log(n_users: int = 120, seed: int = 0) -> tuple[Catalog, Interactions]:
    """60 items in 3 genres; each user likes (rates 4-5) consecutive items of one genre and dislikes (rates 1-2)
    an occasional item of another genre."""
    rng = random.Random(seed)
    items = [Item(id=f"m{g * PER_GENRE + j}", title=f"movie {g * PER_GENRE + j}", category=GENRES[g],
                  attributes={"genres": GENRES[g], "year": 1975 + 10 * (j % 3)})
             for g in range(len(GENRES)) for j in range(PER_GENRE)]
    events = []
    for u in range(n_users):
        g, start, length = rng.randrange(len(GENRES)), rng.randrange(PER_GENRE), rng.randint(10, 14)
        t = 1000
        for k in range(length):
            if rng.random() < 0.15:
                other = (g + rng.randrange(1, len(GENRES))) % len(GENRES)
                events.append(Interaction(user_id=f"u{u}", item_id=f"m{other * PER_GENRE + rng.randrange(PER_GENRE)}",
                                          event="rating", rating=float(rng.randint(1, 2)), timestamp=t))
                t += 1
            events.append(Interaction(user_id=f"u{u}", item_id=f"m{g * PER_GENRE + (start + k) % PER_GENRE}",
                                      event="rating", rating=float(rng.randint(4, 5)), timestamp=t))
            t += 1
    # a user may have drawn the same disliked item twice or one of their genre's: keep the first event per item
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in events:
        if (e.user_id, e.item_id) not in seen:
            seen.add((e.user_id, e.item_id))
            unique.append(e)
    return Catalog(items), Interactions(unique)


def synthetic_dataset(n_users: int = 120, seed: int = 0, split: str = "temporal"):
    catalog, log = synthetic_log(n_users, seed)
    return make_dataset("synthetic", catalog, log, split, test_fraction=0.15)


def write_folder(folder: Path, n_users: int = 120, seed: int = 0) -> Path:
    """The synthetic data as a dataset folder (catalog.jsonl, interactions.jsonl) a spec can name."""
    catalog, log = synthetic_log(n_users, seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "catalog.jsonl", "w", encoding="utf-8") as fh:
        for item in catalog:
            fh.write(json.dumps({"id": item.id, "title": item.title, "category": item.category,
                                 "attributes": item.attributes}) + "\n")
    with open(folder / "interactions.jsonl", "w", encoding="utf-8") as fh:
        for it in log:
            fh.write(json.dumps({"user_id": it.user_id, "item_id": it.item_id, "rating": it.rating,
                                 "timestamp": it.timestamp}) + "\n")
    return folder


@pytest.fixture(scope="session")
def dataset():
    return synthetic_dataset()


#: the test teacher: a small rec-LM trained long enough to prefer the user's genre
TEACHER = {"size": "small", "max_epochs": 15, "patience": 15, "seed": 0, **FAST}
#: quick students
QUICK = {"epochs": 6, "init_epochs": 3, "threads": 1, "device": "cpu"}


@pytest.fixture(scope="session")
def prepared(dataset):
    from llmrec.distill import DistillConfig, prepare

    return prepare(dataset, DistillConfig(**QUICK))


@pytest.fixture(scope="session")
def teacher_rec(prepared):
    from llmrec.reclm import RecLMConfig, train_reclm

    carved = prepared.carved
    return train_reclm(carved.catalog, carved.train, list(carved.train_cases), RecLMConfig(**TEACHER))


@pytest.fixture(scope="session")
def teacher_folder(teacher_rec, tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "reclm"
    teacher_rec.save(folder)
    return folder


@pytest.fixture(scope="session")
def teacher_z(prepared, teacher_rec):
    from llmrec.distill import RecLMTeacher
    from llmrec.distill.teachers import teacher_logits

    return teacher_logits(RecLMTeacher(teacher_rec), prepared.transfer.histories, prepared.transfer.pairs)
