"""Catalog and interaction structures for recommender nodes, and the seeded demo dataset."""

from llmrec.data.catalog import EVENT_WEIGHTS, Catalog, Interaction, Interactions, Item
from llmrec.data.demo import DemoDataset, DemoUser, generate_demo, write_demo

__all__ = [
    "EVENT_WEIGHTS",
    "Catalog",
    "DemoDataset",
    "DemoUser",
    "Interaction",
    "Interactions",
    "Item",
    "generate_demo",
    "write_demo",
]
