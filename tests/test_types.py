"""ScoredItem.trusted: the validated item, built without validation, on every hot path (issue 13)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from llmrec.api import open_runtime
from llmrec.types import Candidates, Recommendation, Recommendations, ScoredItem

ROOT = Path(__file__).resolve().parent.parent
floats = st.floats(allow_nan=False, allow_infinity=False)


@given(st.text(), floats, st.dictionaries(st.text(), floats, max_size=4))
def test_trusted_is_the_validated_item(item_id, score, sources):
    trusted, validated = ScoredItem.trusted(item_id, score, sources), ScoredItem(id=item_id, score=score,
                                                                                 sources=sources)
    assert trusted == validated
    assert trusted.model_dump() == validated.model_dump()
    assert trusted.model_dump_json() == validated.model_dump_json()
    assert Candidates(items=[trusted]) == Candidates(items=[validated])
    assert type(trusted.score) is float


@given(st.integers(1, 10_000), st.text(), st.text(), st.text(), st.none() | st.floats(0, 1e6), floats, st.text())
def test_trusted_recommendation_is_the_validated_one(rank, item_id, title, category, price, score, reason):
    trusted = Recommendation.trusted(rank, item_id, title, category, price, score, reason)
    validated = Recommendation(rank=rank, id=item_id, title=title, category=category, price=price, score=score,
                               reason=reason)
    assert trusted == validated and trusted.model_dump_json() == validated.model_dump_json()
    for slot in BaseModel.__slots__:
        assert getattr(trusted, slot) == getattr(validated, slot), slot
    assert Recommendations(user_id="u", items=[trusted]) == Recommendations(user_id="u", items=[validated])


def test_trusted_keeps_pydantic_instance_layout():
    """What trusted() sets by hand is what pydantic's own constructor sets (a pydantic upgrade that changes the
    instance layout fails here, not in production)."""
    validated = ScoredItem(id="a", score=1, sources={"s": 1.0})
    trusted = ScoredItem.trusted("a", 1, {"s": 1.0})
    assert set(BaseModel.__slots__) == {"__dict__", "__pydantic_fields_set__", "__pydantic_extra__",
                                         "__pydantic_private__"}
    for slot in BaseModel.__slots__:
        assert getattr(trusted, slot) == getattr(validated, slot), slot
    with pytest.raises(ValidationError):
        trusted.score = 2.0  # still frozen
    assert trusted.model_copy(update={"score": 2.0}).score == 2.0


def _check_items(value, where):
    if isinstance(value, Recommendation):
        assert Recommendation.model_validate_json(value.model_dump_json()) == value, where
        assert type(value.score) is float and type(value.rank) is int, where
    if isinstance(value, ScoredItem):
        assert type(value.id) is str and type(value.score) is float, where
        assert all(type(k) is str and type(v) is float for k, v in value.sources.items()), (where, value.sources)
        assert ScoredItem.model_validate_json(value.model_dump_json()) == value, where
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _check_items(getattr(value, name), where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_items(v, where)


@pytest.mark.parametrize("inputs", [{"user_id": "u1"}, {"user_id": "u7", "query": "hiking boots"},
                                    {"user_id": "newcomer", "query": "coffee"}])
def test_every_node_of_the_quickstart_builds_exactly_typed_items(inputs):
    async def main():
        rt = open_runtime(ROOT / "specs" / "quickstart.yaml")
        try:
            seen = []
            result = await rt.run(inputs, on_node=lambda record, value: seen.append((record.node_id, value)))
            for node, value in seen:
                _check_items(value, node)
            assert {n for n, _ in seen} >= {"taste", "affinity", "popular", "personal", "ranked", "blend"}
            return result
        finally:
            await rt.close()

    result = asyncio.run(main())
    json.dumps(result.outputs, default=lambda o: o.model_dump())


def test_every_node_of_movielens_cf_builds_exactly_typed_items(tmp_path):
    import os

    if not os.environ.get("LLMREC_DATA_DIR"):
        pytest.fail("set LLMREC_DATA_DIR to the folder holding ml-100k/")

    async def main():
        rt = open_runtime(ROOT / "specs" / "movielens_cf.yaml")
        try:
            for user in ("1", "196", "nobody"):
                seen = []
                await rt.run({"user_id": user}, on_node=lambda record, value: seen.append((record.node_id, value)))
                for node, value in seen:
                    _check_items(value, node)
        finally:
            await rt.close()

    asyncio.run(main())
