"""The ``user.profile`` node type: what the interaction log says about one user (history, seen, liked, affinity)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..data import Catalog, Interactions
from ..hookspecs import hookimpl
from ..node import NoConfig, NodeType
from ..types import UserProfile


class ProfileConfig(NoConfig):
    max_top_categories: int = Field(3, ge=0, description="At most this many categories in top_categories.")
    min_share: float = Field(
        0.1, ge=0.0, le=1.0,
        description="A category needs this share of the user's weighted interactions to count as liked "
                    "(the largest one always counts).",
    )
    like_at: float = Field(4.0, description="A rating at or above this puts the item in 'liked' (MovieLens: 4-5).")
    dislike_at: float = Field(2.0, description="A rating at or below this puts the item in 'disliked'.")


class Profile(NodeType):
    """What the interaction log says about one user; unknown users are cold starts, never errors."""

    name = "user.profile"
    inline = True  # pure computation: no I/O in run()
    description = "Build a user's profile (history, seen items, category affinity); unknown users are cold starts."
    Config = ProfileConfig

    async def run(self, catalog: Catalog, interactions: Interactions, user_id: str) -> UserProfile:
        history = interactions.history(user_id)
        if not history:
            return UserProfile(user_id=user_id, known=False)
        affinity = interactions.category_affinity(user_id, catalog)
        cfg = self.config
        top = [cat for cat, share in affinity.items() if share >= cfg.min_share][: cfg.max_top_categories]
        if not top and affinity and cfg.max_top_categories:
            top = [next(iter(affinity))]
        rated = [it for it in history if it.rating is not None]  # oldest first, as the history is
        return UserProfile(
            user_id=user_id,
            known=True,
            history_size=len(history),
            seen=list(dict.fromkeys(it.item_id for it in history)),  # first interaction first
            category_affinity=affinity,
            top_categories=top,
            liked=list(dict.fromkeys(it.item_id for it in rated if it.rating >= cfg.like_at)),
            disliked=list(dict.fromkeys(it.item_id for it in rated if it.rating <= cfg.dislike_at)),
            ratings={it.item_id: float(it.rating) for it in rated},
        )


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    register(Profile)


__all__ = ["Profile"]
