"""PROTOCOLS.md: a user's events are ordered by (timestamp, item id), the id compared as a number (2 before 1000)."""

from __future__ import annotations

from llmrec.data.catalog import Interaction, Interactions
from llmrec.data.splits import split_interactions


def test_same_second_events_order_item_ids_as_numbers_so_1000_is_held_out() -> None:
    events = [Interaction(user_id="7", item_id=i, event="rating", rating=4, timestamp=t)
              for i, t in (("1000", 50), ("2", 50), ("5", 10), ("30", 20), ("400", 30), ("9", 40),
                           ("11", 41), ("12", 42), ("13", 43), ("14", 44))]
    log = Interactions(events)
    assert [it.item_id for it in log.history("7")][-2:] == ["2", "1000"]  # text order would put "1000" first
    _, test, cases, _ = split_interactions(log, "temporal")
    assert [it.item_id for it in test] == ["1000"] and cases[0].relevant == frozenset({"1000"})


def test_ids_that_are_not_plain_numbers_use_natural_order() -> None:
    events = [Interaction(user_id="u", item_id=i, timestamp=5) for i in ("i10", "i2", "a")]
    assert [it.item_id for it in Interactions(events).history("u")] == ["a", "i2", "i10"]
