"""The ``headphones`` dataset: the generated catalog, personas, and the events those personas left.

Each persona (:func:`llmrec.conversation.simulator.make_personas`) browses the catalog: it views items, clicks
the ones it half likes and buys and rates the ones it likes (its hidden utility), so a dataset resource of
``name: headphones`` has training interactions and cases like any other dataset, and ``llmrec train`` can train a
``policy.ppo`` node on it (the policy learns against the personas of ``extra["personas"]``). Generated in memory
from the seed, never stored as data; :func:`write_headphones` writes the catalog and personas as JSONL for
anyone who wants the files.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from ..data.catalog import Interaction, Interactions
from ..data.dataset import Dataset
from ..data.datasets import DatasetInfo
from ..data.splits import make_dataset
from .catalog import HEADPHONE_SLOTS, catalog_values, generate_headphones
from .simulator import Persona, make_personas

START = 1_750_000_000


def browse(personas: list[Persona], catalog: Any, *, seed: int = 0, per_persona: tuple[int, int] = (6, 14)
           ) -> Interactions:
    """Each persona's events: the items it likes most come first; a rating of 1-5 from its utility."""
    rng = random.Random(seed)
    events: list[Interaction] = []
    pairs = catalog_values(catalog)
    for number, p in enumerate(personas):
        liking = {it.id: p.utility(it, values) for it, values in pairs}
        ranked = sorted((it for it, _ in pairs), key=lambda it: (-liking[it.id] + rng.random() * 0.15, it.id))
        count = rng.randint(*per_persona)
        pool = ranked[: count * 2]
        chosen = rng.sample(pool, min(count, len(pool)))
        for offset, item in enumerate(sorted(chosen, key=lambda it: it.id)):
            u = liking[item.id]
            stars = float(max(1, min(5, round(1 + 4 * u + rng.uniform(-0.5, 0.5)))))
            event = "rating" if u >= 0.6 or rng.random() < 0.3 else ("click" if u >= 0.4 else "view")
            events.append(Interaction(user_id=p.id, item_id=item.id, event=event,
                                      rating=stars if event == "rating" else None,
                                      timestamp=START + number * 10_000 + offset * 60 + rng.randint(0, 59)))
    return Interactions(events)


def load_headphones(root: Path, *, split: str = "user", seed: int = 0, test_fraction: float | None = None,
                    n_items: int = 300, n_personas: int = 200, noise: float = 0.1,
                    holdout_fraction: float = 0.2) -> Dataset:
    """The headphones catalog and its personas' events, split by ``split``; ``extra``: ``personas`` (a list of
    :class:`Persona`), ``slots`` (the slot schema as a dict)."""
    catalog = generate_headphones(seed=seed + 5, n_items=n_items)
    personas = make_personas(catalog, n_personas, seed=seed, noise=noise)
    ds = make_dataset("headphones", catalog, browse(personas, catalog, seed=seed), split,  # type: ignore[arg-type]
                      test_fraction=test_fraction, holdout_fraction=holdout_fraction, seed=seed,
                      description=HEADPHONES.description)
    ds.extra["personas"] = personas
    ds.extra["slots"] = HEADPHONE_SLOTS.to_dict()
    return ds


def write_headphones(directory: str | os.PathLike[str], *, seed: int = 0, n_items: int = 300,
                     n_personas: int = 200) -> dict[str, Path]:
    """Write ``catalog.jsonl``, ``personas.jsonl`` and ``slots.json`` into ``directory`` (created if missing)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    catalog = generate_headphones(seed=seed + 5, n_items=n_items)
    paths = {"catalog": root / "catalog.jsonl", "personas": root / "personas.jsonl", "slots": root / "slots.json"}
    paths["catalog"].write_text("".join(it.model_dump_json() + "\n" for it in catalog), encoding="utf-8")
    paths["personas"].write_text("".join(json.dumps(p.to_dict()) + "\n"
                                         for p in make_personas(catalog, n_personas, seed=seed)), encoding="utf-8")
    paths["slots"].write_text(json.dumps(HEADPHONE_SLOTS.to_dict(), indent=1), encoding="utf-8")
    return paths


HEADPHONES = DatasetInfo(
    "headphones",
    "A seeded headphones shop for conversational recommendation (llmrec.conversation): 300 items with types, "
    "features, use cases and prices, 200 personas with hidden preferences and their events; generated in memory.",
    load_headphones,
)

__all__ = ["HEADPHONES", "browse", "load_headphones", "write_headphones"]
