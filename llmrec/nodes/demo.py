"""The ``demo.dataset`` resource: the seeded synthetic shop of :mod:`llmrec.data.demo`, generated in memory."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from ..data import DemoDataset, generate_demo
from ..hookspecs import hookimpl
from ..node import NoConfig, ResourceType


class DemoDatasetConfig(NoConfig):
    seed: int = Field(7, description="Random seed; the same seed always gives the same data.")
    n_items: int = Field(300, ge=1, le=1_000_000, description="Catalog size.")
    n_users: int = Field(120, ge=1, le=1_000_000, description="Number of users u1..uN.")


class DemoDatasetResource(ResourceType):
    """The seeded synthetic shop of :mod:`llmrec.data.demo`, generated in memory (no files, no download)."""

    name = "demo.dataset"
    description = "Seeded demo shop (catalog, interactions, users with planted tastes), generated in memory."
    Config = DemoDatasetConfig
    provides = DemoDataset

    async def load(self) -> DemoDataset:
        c = self.config
        return await asyncio.to_thread(generate_demo, seed=c.seed, n_items=c.n_items, n_users=c.n_users)


@hookimpl
def llmrec_register_resource_types(register: Any) -> None:
    register(DemoDatasetResource)


__all__ = ["DemoDatasetResource"]
