"""Output-schema models for the valid corpus specs."""

from pydantic import BaseModel


class Recommendation(BaseModel):
    item_id: str
    reason: str


class Ranking(BaseModel):
    items: list[Recommendation]
