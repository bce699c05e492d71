"""The ``user.profile`` node type: what the interaction log says about one user (history, seen, liked, affinity)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydantic import Field

from ..data import Catalog, Interactions
from ..hookspecs import hookimpl
from ..node import NoConfig, NodeType
from ..types import UserProfile
from .common import PerObjects


class ProfileConfig(NoConfig):
    max_top_categories: int = Field(3, ge=0, description="At most this many categories in top_categories.")
    min_share: float = Field(
        0.1, ge=0.0, le=1.0,
        description="A category needs this share of the user's weighted interactions to count as liked "
                    "(the largest one always counts).",
    )
    like_at: float = Field(4.0, description="A rating at or above this puts the item in 'liked' (MovieLens: 4-5).")
    dislike_at: float = Field(2.0, description="A rating at or below this puts the item in 'disliked'.")
    memo: int = Field(
        100_000, ge=0,
        description="Keep the profiles of up to this many known users (least recently used dropped first): the "
                    "catalog and interactions are resources, so a user's profile only changes when they are "
                    "reloaded. 0 rebuilds it on every request.",
    )


class Profile(NodeType):
    """What the interaction log says about one user; unknown users are cold starts, never errors."""

    name = "user.profile"
    inline = True  # pure computation: no I/O in run()
    description = "Build a user's profile (history, seen items, category affinity); unknown users are cold starts."
    Config = ProfileConfig

    def __init__(self, config: ProfileConfig) -> None:
        super().__init__(config)
        self._memo: PerObjects[OrderedDict[str, UserProfile]] = PerObjects()

    async def run(self, catalog: Catalog, interactions: Interactions, user_id: str) -> UserProfile:
        if not self.config.memo:
            return self.build(catalog, interactions, user_id)
        memo = self._memo.get((catalog, interactions), OrderedDict)
        profile = memo.get(user_id)
        if profile is not None:
            memo.move_to_end(user_id)
            return profile
        profile = self.build(catalog, interactions, user_id)
        if profile.known:  # unknown ids are cheap to answer and unbounded in number: never kept
            memo[user_id] = profile
            if len(memo) > self.config.memo:
                memo.popitem(last=False)
        return profile

    def build(self, catalog: Catalog, interactions: Interactions, user_id: str) -> UserProfile:
        """The profile, computed from the log."""
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
