"""Retrievers: every ``retrieve.*`` node type, and ``fuse``, which merges their lists (hybrid retrieval).

- ``retrieve.popular``, ``retrieve.category_affinity`` (:mod:`.popularity`): rankings from the interaction log;
- ``retrieve.bm25`` (:mod:`.bm25`): sparse lexical retrieval with bm25s;
- ``retrieve.dense`` (:mod:`.dense`): nearest neighbours of a query or of liked items in embedding space;
- ``retrieve.cf``, ``retrieve.item_knn`` (:mod:`.cf`): collaborative filtering (PureSVD, EASE, ALS, item-kNN);
- ``fuse`` (:mod:`.fuse`): reciprocal rank fusion or a weighted sum of normalised scores.

Retrievers return :class:`~llmrec.types.Candidates` whose items carry their score under the retriever's
``source`` name in ``ScoredItem.sources``; ``fuse`` keeps those per-source scores. Everything derivable from
the catalog or the interaction log is computed once per dataset object and kept on the node instance, so
per-request work grows with the number of candidates, not with the catalog.
"""

from __future__ import annotations

from collections.abc import Callable

from ...hookspecs import hookimpl
from ...node import NodeType
from .bm25 import BM25
from .cf import CF, ItemKNN
from .dense import Dense
from .fuse import Fuse
from .popularity import CategoryAffinity, Popular

NODE_TYPES: tuple[type[NodeType], ...] = (Popular, CategoryAffinity, BM25, Dense, CF, ItemKNN, Fuse)


@hookimpl
def llmrec_register_node_types(register: Callable[[type], None]) -> None:
    for cls in NODE_TYPES:
        register(cls)


__all__ = ["BM25", "CF", "CategoryAffinity", "Dense", "Fuse", "ItemKNN", "NODE_TYPES", "Popular"]
