"""Catalog and interaction structures for recommender nodes, and the seeded demo dataset."""

from llmrec.data.catalog import EVENT_WEIGHTS, Catalog, Interaction, Interactions, Item
from llmrec.data.dataset import Dataset, EvalCase
from llmrec.data.datasets import DatasetInfo
from llmrec.data.demo import DemoDataset, DemoUser, generate_demo, write_demo
from llmrec.data.splits import SPLITS, make_dataset, split_interactions

__all__ = [
    "EVENT_WEIGHTS",
    "Catalog",
    "Dataset",
    "DatasetInfo",
    "EvalCase",
    "SPLITS",
    "DemoDataset",
    "DemoUser",
    "Interaction",
    "Interactions",
    "Item",
    "generate_demo",
    "make_dataset",
    "split_interactions",
    "write_demo",
]
