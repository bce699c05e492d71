"""A valid output-schema module for the corpus."""

from pydantic import BaseModel


class Recommendation(BaseModel):
    item_id: str
    reason: str


class Ranking(BaseModel):
    items: list[Recommendation]
