"""A third-party plugin, as a separate package would ship it: one generated dataset, ``acme-tiny``, registered
through ``llmrec_register_datasets`` (tests/thirdparty/test_datasets.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llmrec
from llmrec.data import Catalog, Dataset, Interaction, Interactions, Item, make_dataset
from llmrec.data.datasets import DatasetInfo

N_ITEMS = 8


def load_tiny(root: Path, *, split: str = "none", seed: int = 0, test_fraction: float | None = None,
              n_users: int = 6) -> Dataset:
    """``n_users`` users, each rating four of eight things in turn (5 stars), generated in memory."""
    if n_users < 2:
        raise ValueError(f"n_users must be at least 2, got {n_users}")
    items = [Item(id=f"t{i}", title=f"Tiny thing {i}", category="odd" if i % 2 else "even") for i in range(N_ITEMS)]
    events = [Interaction(user_id=f"u{u}", item_id=f"t{(u + j) % N_ITEMS}", event="rating", rating=5.0,
                          timestamp=1_000 + 10 * u + j)
              for u in range(n_users) for j in range(4)]
    return make_dataset("acme-tiny", Catalog(items), Interactions(events), split,  # type: ignore[arg-type]
                        test_fraction=test_fraction, seed=seed, description=TINY.description)


TINY = DatasetInfo("acme-tiny", "Acme's tiny shop: users rating four of eight things each, in turn.", load_tiny)


@llmrec.hookimpl
def llmrec_register_datasets(register: Any) -> None:
    register(TINY)
