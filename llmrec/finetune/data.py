"""Instruction pairs for LoRA fine-tuning, built from a dataset's *training* interactions (book section 4.5).

One pair is one user at one point in time: the prompt lists what the user liked (rated at least
``like_rating``, or an unrated event of a kind in ``implicit_liked``) and disliked (rated at most
``dislike_rating``) *before* a cut, each with its genres and year, and asks for the next movies the user will
like; the answer is the user's next liked titles *after* the cut, as the JSON that ``llm.recommend`` (with
``by: title``) expects::

    I liked these movies:
    - Toy Story (1995) [Animation, Children's, Comedy]
    - Heat (1995) [Action, Crime, Thriller]
    I did not like these movies:
    - Jumanji (1995) [Adventure, Children's, Fantasy]
    Recommend the next 3 movies I will like, named by their exact catalog titles.
    Answer as JSON: {"items": [3 titles]}.

    {"items": ["Casino (1995)", "Se7en (1995)", "Fargo (1996)"]}

Cuts are drawn per user with a seeded generator (``Random(f"{seed}:{user}")``), so the same data and seed give
the same pairs whatever the user order. Only ``Dataset.train`` is read: :func:`finetune_pairs` first carves a
validation split from each user's training events (:func:`llmrec.training.validation_dataset`, the dataset's
own temporal protocol), learns from the carved training events and validates on the carved-off ones; the
dataset's test interactions are never looked at.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ..data.catalog import Catalog, Interaction, Interactions, Item, natural_key
from ..data.dataset import Dataset
from ..errors import LlmrecError
from ..reclm.tokens import item_genres
from ..training import validation_dataset


class FinetuneError(LlmrecError):
    """``llmrec finetune`` cannot run: a bad base model folder, a dataset it cannot learn from, no llm resource.

    ``exit_code`` is what the command exits with: 2 for a bad ``--base`` argument, 4 (the work failed) otherwise."""

    def __init__(self, message: str, exit_code: int = 4) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class PairConfig(BaseModel):
    """How instruction pairs are drawn from interactions."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(5, ge=1, le=50, description="How many next liked titles an answer holds (at most).")
    max_history: int = Field(20, ge=1, description="The most recent liked/disliked items listed in a prompt.")
    min_history: int = Field(2, ge=1, description="Liked or disliked events a user needs before a cut.")
    like_rating: float = Field(4.0, description="A rating at least this is 'liked'.")
    dislike_rating: float = Field(2.0, description="A rating at most this is 'disliked'.")
    implicit_liked: tuple[str, ...] = Field(
        ("click", "purchase"), description="Unrated event types that count as liked (views count as neither).")
    pairs_per_user: int = Field(1, ge=1, description="Cuts drawn per user (distinct, seeded).")
    noun: str = Field("movies", min_length=1, description="What the prompt calls the items.")
    seed: int = 0


@dataclass(frozen=True)
class InstructionPair:
    """One training example: a prompt and the answer the model should give to it."""

    user_id: str
    prompt: str
    answer: str
    targets: tuple[str, ...]  # the answer's item ids, in order
    history: tuple[str, ...]  # the item ids the prompt lists (liked then disliked)


def feedback(it: Interaction, config: PairConfig) -> str | None:
    """``"liked"``, ``"disliked"`` or None (neutral or a plain view) for one event."""
    if it.rating is not None:
        if it.rating >= config.like_rating:
            return "liked"
        if it.rating <= config.dislike_rating:
            return "disliked"
        return None
    return "liked" if it.event in config.implicit_liked else None


def item_year(item: Item) -> int | None:
    year = item.attributes.get("year")
    if isinstance(year, bool) or not isinstance(year, (int, float)) or year != year:
        return None
    return int(year)


def describe_item(item: Item) -> str:
    """``Toy Story (1995) [Animation, Children's, Comedy]``: the title, its year unless the title already
    ends with it, and its genres (MovieLens ``attributes["genres"]``, else the category)."""
    text = item.title
    year = item_year(item)
    if year is not None and f"({year})" not in text:
        text += f" ({year})"
    genres = item_genres(item)
    return f"{text} [{', '.join(genres)}]" if genres else text


def render_prompt(liked: Sequence[Item], disliked: Sequence[Item], n: int, noun: str = "movies") -> str:
    """The instruction for one user: liked and disliked items (oldest first), then the question."""
    lines: list[str] = []
    if liked:
        lines.append(f"I liked these {noun}:")
        lines.extend(f"- {describe_item(item)}" for item in liked)
    if disliked:
        lines.append(f"I did not like these {noun}:")
        lines.extend(f"- {describe_item(item)}" for item in disliked)
    lines.append(f"Recommend the next {n} {noun} I will like, named by their exact catalog titles.")
    lines.append(f'Answer as JSON: {{"items": [{n} titles]}}.')
    return "\n".join(lines)


def render_answer(titles: Iterable[str]) -> str:
    """``{"items": [titles]}``: the answer schema of ``llm.recommend`` with ``by: title``."""
    return json.dumps({"items": list(titles)}, ensure_ascii=False)


def _pair(user: str, shown: list[tuple[Item, str]], targets: list[Item], config: PairConfig) -> InstructionPair:
    shown = shown[-config.max_history:]
    liked = [item for item, mark in shown if mark == "liked"]
    disliked = [item for item, mark in shown if mark == "disliked"]
    return InstructionPair(
        user_id=user, prompt=render_prompt(liked, disliked, len(targets), config.noun),
        answer=render_answer(item.title for item in targets), targets=tuple(item.id for item in targets),
        history=tuple(item.id for item in liked + disliked),
    )


def build_pairs(interactions: Interactions, catalog: Catalog, config: PairConfig | None = None,
                users: Iterable[str] | None = None) -> list[InstructionPair]:
    """Pairs from each user's history with a temporal cut: the prompt shows liked/disliked events before the
    cut, the answer is the next ``config.n`` liked items after it. Users without a valid cut give no pair."""
    config = config or PairConfig()
    out: list[InstructionPair] = []
    for user in (interactions.users() if users is None else users):
        history = [it for it in interactions.history(user) if it.item_id in catalog]
        marks = [feedback(it, config) for it in history]
        known = [0]
        for mark in marks:
            known.append(known[-1] + (mark is not None))
        later_liked = [False] * (len(history) + 1)
        for i in range(len(history) - 1, -1, -1):
            later_liked[i] = later_liked[i + 1] or marks[i] == "liked"
        cuts = [c for c in range(1, len(history)) if known[c] >= config.min_history and later_liked[c]]
        if not cuts:
            continue
        rng = random.Random(f"{config.seed}:{user}")
        for cut in sorted(rng.sample(cuts, min(config.pairs_per_user, len(cuts)))):
            before = {it.item_id for it in history[:cut]}
            shown = [(catalog[it.item_id], mark) for it, mark in zip(history[:cut], marks[:cut]) if mark]
            targets: list[Item] = []
            for it, mark in zip(history[cut:], marks[cut:]):
                if mark == "liked" and it.item_id not in before and all(t.id != it.item_id for t in targets):
                    targets.append(catalog[it.item_id])
                    if len(targets) == config.n:
                        break
            if targets:
                out.append(_pair(user, shown, targets, config))
    return out


def validation_pairs(data: Dataset, config: PairConfig | None = None,
                     users: Iterable[str] | None = None) -> list[InstructionPair]:
    """Pairs for the validation cases of a (carved) split: the prompt is the user's whole training history, the
    answer the user's liked held-out items (in held-out order when ``data.test`` has them)."""
    config = config or PairConfig()
    wanted = None if users is None else set(users)
    out: list[InstructionPair] = []
    for case in data.train_cases:
        user = str(case.inputs.get("user_id", case.id))
        if wanted is not None and user not in wanted:
            continue
        shown = [(data.catalog[it.item_id], mark) for it in data.train.history(user)
                 if it.item_id in data.catalog and (mark := feedback(it, config))]
        held = [it.item_id for it in data.test.history(user) if feedback(it, config) == "liked"]
        order = held or sorted(case.relevant, key=natural_key)  # a user split keeps no held-out order
        targets = [data.catalog[i] for i in dict.fromkeys(order) if i in data.catalog][:config.n]
        if shown and targets:
            out.append(_pair(user, shown, targets, config))
    return out


@dataclass(frozen=True)
class PairSplit:
    """What fine-tuning learns from and validates on."""

    train: list[InstructionPair]
    validation: list[InstructionPair]
    users: int  # users drawn
    events: int  # training events those users have (before the validation carve)


def finetune_pairs(dataset: Dataset, config: PairConfig | None = None, max_users: int | None = None,
                   name: str = "dataset") -> PairSplit:
    """Training and validation pairs from ``dataset``'s training interactions only (never its test split).

    ``max_users`` draws that many users (seeded by ``config.seed``). Raises :class:`FinetuneError` for a
    dataset with no interactions, a single user, or no user with a liked event after ``min_history`` others."""
    config = config or PairConfig()
    if not len(dataset.train):
        raise FinetuneError(f"dataset resource '{name}' has no training interactions to learn from; give it a "
                            "dataset with users' ratings or events (e.g. name: movielens-100k, split: temporal)")
    everyone = dataset.train.users()
    if len(everyone) < 2:
        raise FinetuneError(f"dataset resource '{name}' has interactions of a single user ({everyone[0]}); "
                            "fine-tuning needs several users (some to learn from, others to validate on)")
    users = everyone
    if max_users is not None and max_users < len(users):
        users = sorted(random.Random(config.seed).sample(users, max_users), key=natural_key)
    carved = validation_dataset(dataset)
    train = build_pairs(carved.train, carved.catalog, config, users)
    if not train:
        raise FinetuneError(
            f"dataset resource '{name}': no user has a liked event after {config.min_history} liked or disliked "
            f"ones (liked: rating >= {config.like_rating:g} or an unrated {'/'.join(config.implicit_liked)}), so "
            "there is nothing to learn; use a dataset with longer histories")
    events = sum(len(dataset.train.history(u)) for u in users)
    return PairSplit(train=train, validation=validation_pairs(carved, config, users), users=len(users),
                     events=events)


__all__ = ["FinetuneError", "InstructionPair", "PairConfig", "PairSplit", "build_pairs", "describe_item",
           "feedback", "finetune_pairs", "render_answer", "render_prompt", "validation_pairs"]
