"""Rankers: every ``rank.*`` node type, both trainable through ``llmrec train``.

- ``rank.lambdamart`` (:mod:`.lambdamart`): a LightGBM LambdaMART model over candidate features;
- ``rank.blend`` (:mod:`.blend`): a score-level blend of candidate lists, its weights fitted on validation.
"""

from __future__ import annotations

from collections.abc import Callable

from ...hookspecs import hookimpl
from ...node import NodeType
from .blend import Blend
from .lambdamart import LambdaMART

NODE_TYPES: tuple[type[NodeType], ...] = (LambdaMART, Blend)


@hookimpl
def llmrec_register_node_types(register: Callable[[type], None]) -> None:
    for cls in NODE_TYPES:
        register(cls)


__all__ = ["Blend", "LambdaMART", "NODE_TYPES"]
