"""Semantic item tokens: the rec-LM's vocabulary and how a user's history becomes a token sequence.

Vocabulary (token ids in this order):

- special tokens ``<pad>`` (id 0) and ``<bos>`` (id 1);
- one *item token* per catalog item id (``item:<id>``), in catalog order;
- *rating tokens* ``rating:1`` .. ``rating:5`` (the rating rounded and clamped to 1..5) and ``rating:none`` for
  events without a rating (views, clicks, purchases);
- *side tokens*: ``genre:<name>`` for each genre (MovieLens ``attributes["genres"]`` split on ``|``, otherwise the
  item's ``category``) and ``year:<decade>s`` for items with an ``attributes["year"]``.

A user's sequence is ``<bos>`` followed, per interaction (oldest first, as ``Interactions.history`` orders them),
by the item token and its rating token; only the last ``max_events`` events are kept.

Side tokens never appear in a sequence. They enter as *additive input embeddings* (the book's semantic
tokenization, 3.2/4.1): the input embedding of an item token is

    wte[item] + mean(wte[genre tokens of the item]) + wte[year token of the item]

so items that share genres and decade start close together and a rarely seen item borrows what its genre and
decade tokens learned from every other item. Every other token's input embedding is its own row of ``wte``.
The composition is a fixed sparse matrix ``C`` (vocab x vocab) built from the vocabulary; the model is fed
``inputs_embeds = C[tokens] @ wte``. Output logits stay tied to ``wte`` (plain GPT-2), so an item is predicted
through its own token's row.

The vocabulary is stored as JSON (``vocab.json``); nothing here ever pickles.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmrec.reclm.config import RecLMError

if TYPE_CHECKING:
    import numpy as np

    from llmrec.data.catalog import Catalog, Interaction, Item

VOCAB_FORMAT = "llmrec.reclm.vocab/1"
PAD, BOS = "<pad>", "<bos>"
PAD_ID, BOS_ID = 0, 1
RATING_NONE = "rating:none"
RATING_TOKENS = tuple(f"rating:{r}" for r in range(1, 6)) + (RATING_NONE,)


def item_genres(item: Item) -> list[str]:
    """The item's genres: ``attributes["genres"]`` split on ``|`` when present, else ``[category]`` (or [])."""
    raw = item.attributes.get("genres")
    if isinstance(raw, str) and raw.strip():
        names = [g.strip() for g in raw.split("|") if g.strip()]
        if names:
            return list(dict.fromkeys(names))
    return [item.category] if item.category else []


def item_decade(item: Item) -> str | None:
    """``"1990s"`` for an item with ``attributes["year"] == 1995``; None without a usable year."""
    year = item.attributes.get("year")
    if isinstance(year, bool) or not isinstance(year, (int, float)) or not math.isfinite(year):
        return None
    return f"{int(year) // 10 * 10}s"


def rating_token(rating: float | None) -> str:
    """The rating bucket: rounded and clamped to 1..5, ``rating:none`` for None or NaN."""
    if rating is None or not math.isfinite(rating):
        return RATING_NONE
    return f"rating:{min(5, max(1, int(round(rating))))}"


@dataclass(frozen=True)
class Vocab:
    """Token table plus each item's side tokens. Build with :meth:`from_catalog`, store with :meth:`to_json`."""

    tokens: tuple[str, ...]
    item_ids: tuple[str, ...]
    #: per item (same order as ``item_ids``): its genre token names and its year token name (or None)
    item_sides: tuple[tuple[tuple[str, ...], str | None], ...]

    def __post_init__(self) -> None:
        index = {token: i for i, token in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            raise RecLMError("vocabulary has duplicate tokens")
        if self.tokens[:2] != (PAD, BOS):
            raise RecLMError("vocabulary must start with <pad> and <bos>")
        if len(self.item_sides) != len(self.item_ids):
            raise RecLMError("vocabulary lists side tokens for a different number of items than it has")
        item_token_ids = []
        for item_id in self.item_ids:
            tid = index.get(f"item:{item_id}")
            if tid is None:
                raise RecLMError(f"vocabulary lacks the token of item {item_id!r}")
            item_token_ids.append(tid)
        if item_token_ids != list(range(2, 2 + len(item_token_ids))):
            raise RecLMError("item tokens must follow <pad> and <bos> contiguously, in item order")
        for token in RATING_TOKENS:
            if token not in index:
                raise RecLMError(f"vocabulary lacks {token}")
        for genres, year in self.item_sides:
            for name in (*genres, *([year] if year else [])):
                if name not in index:
                    raise RecLMError(f"vocabulary lacks side token {name!r}")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_item_token_ids", tuple(item_token_ids))
        object.__setattr__(self, "_item_position", {item_id: i for i, item_id in enumerate(self.item_ids)})

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> Vocab:
        """One item token per catalog item (catalog order), rating tokens, genre and decade tokens (sorted)."""
        if len(catalog) == 0:
            raise RecLMError("the catalog has no items: a rec-LM needs at least one item token")
        item_ids = tuple(item.id for item in catalog)
        sides: list[tuple[tuple[str, ...], str | None]] = []
        genres: set[str] = set()
        decades: set[str] = set()
        for item in catalog:
            g = tuple(f"genre:{name}" for name in item_genres(item))
            decade = item_decade(item)
            y = f"year:{decade}" if decade else None
            genres.update(g)
            if y:
                decades.add(y)
            sides.append((g, y))
        tokens = (PAD, BOS, *(f"item:{i}" for i in item_ids), *RATING_TOKENS, *sorted(genres), *sorted(decades))
        return cls(tokens=tokens, item_ids=item_ids, item_sides=tuple(sides))

    # -- lookups -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    def id_of(self, token: str) -> int:
        return self._index[token]  # type: ignore[attr-defined]

    def item_token(self, item_id: str) -> int | None:
        """Token id of an item, None for an id not in the vocabulary."""
        position = self._item_position.get(item_id)  # type: ignore[attr-defined]
        return None if position is None else self._item_token_ids[position]  # type: ignore[attr-defined]

    def item_position(self, item_id: str) -> int | None:
        """Index of the item among item tokens (0..n_items-1), None when unknown."""
        return self._item_position.get(item_id)  # type: ignore[attr-defined]

    @property
    def item_token_ids(self) -> tuple[int, ...]:
        return self._item_token_ids  # type: ignore[attr-defined]

    @property
    def item_slice(self) -> slice:
        """Item tokens are contiguous: ``logits[..., vocab.item_slice]`` are the item logits."""
        return slice(2, 2 + len(self.item_ids))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    # -- sequences ---------------------------------------------------------------------------------------------

    def encode_events(self, events: Iterable[tuple[str, float | None]], max_events: int) -> list[int]:
        """``[<bos>, item, rating, item, rating, ...]`` for (item_id, rating) pairs oldest first; unknown item ids
        are skipped and only the last ``max_events`` known events are kept."""
        index = self._index  # type: ignore[attr-defined]
        pairs: list[tuple[int, int]] = []
        for item_id, rating in events:
            tid = self.item_token(item_id)
            if tid is not None:
                pairs.append((tid, index[rating_token(rating)]))
        ids = [BOS_ID]
        for tid, rid in pairs[-max_events:] if max_events > 0 else []:
            ids.append(tid)
            ids.append(rid)
        return ids

    def encode_history(self, history: Sequence[Interaction], max_events: int) -> list[int]:
        """:meth:`encode_events` for ``Interactions.history(user)``."""
        return self.encode_events(((it.item_id, it.rating) for it in history), max_events)

    def composition(self) -> tuple[np.ndarray, np.ndarray]:
        """The composition matrix ``C`` as padded rows: ``(index [V, K] int64, weight [V, K] float32)`` such that
        the input embedding of token t is ``sum_k weight[t, k] * wte[index[t, k]]`` (padding entries have weight
        0 and index 0)."""
        import numpy as np

        rows: list[list[tuple[int, float]]] = [[(t, 1.0)] for t in range(len(self.tokens))]
        index = self._index  # type: ignore[attr-defined]
        for tid, (genres, year) in zip(self.item_token_ids, self.item_sides):
            row = rows[tid]
            for g in genres:
                row.append((index[g], 1.0 / len(genres)))
            if year:
                row.append((index[year], 1.0))
        width = max(len(r) for r in rows)
        idx = np.zeros((len(rows), width), dtype=np.int64)
        weight = np.zeros((len(rows), width), dtype=np.float32)
        for t, row in enumerate(rows):
            for k, (j, w) in enumerate(row):
                idx[t, k] = j
                weight[t, k] = w
        return idx, weight

    # -- storage -----------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        data = {
            "format": VOCAB_FORMAT,
            "tokens": list(self.tokens),
            "items": [{"id": i, "genres": list(g), "year": y} for i, (g, y) in zip(self.item_ids, self.item_sides)],
        }
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any, source: str = "vocab.json") -> Vocab:
        """Parse and validate; any problem is a RecLMError naming ``source``."""
        try:
            if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
                raise ValueError(f"not a rec-LM vocabulary (expected format {VOCAB_FORMAT!r})")
            tokens = data["tokens"]
            items = data["items"]
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise ValueError("'tokens' must be a list of strings")
            if not isinstance(items, list):
                raise ValueError("'items' must be a list")
            ids: list[str] = []
            sides: list[tuple[tuple[str, ...], str | None]] = []
            for entry in items:
                item_id, genres, year = entry["id"], entry["genres"], entry["year"]
                if not isinstance(item_id, str) or not isinstance(genres, list) or not all(
                        isinstance(g, str) for g in genres) or not (year is None or isinstance(year, str)):
                    raise ValueError(f"bad item entry {entry!r}")
                ids.append(item_id)
                sides.append((tuple(genres), year))
            return cls(tokens=tuple(tokens), item_ids=tuple(ids), item_sides=tuple(sides))
        except RecLMError as exc:
            raise RecLMError(f"{source} is corrupt: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise RecLMError(f"{source} is corrupt: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecLMError(f"{path} is missing: not a rec-LM model folder") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecLMError(f"{path} is corrupt: {exc}") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise RecLMError(f"{path} is corrupt: not JSON ({exc})") from None
        return cls.from_dict(data, str(path))


__all__ = ["BOS", "BOS_ID", "PAD", "PAD_ID", "RATING_TOKENS", "Vocab", "item_decade", "item_genres", "rating_token"]
