"""Typed test node types for the broken-spec corpus (loaded automatically: plugins/ beside the specs).

- test.numbers: run() -> list[int]
- test.count:   run(items: list[str]) -> int
- test.pair:    run(left: str = "a", right: int = 0) -> Pair(left: str, right: int)
- test.greet:   run(name: str, times: int = 1) -> str
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

import llmrec
from llmrec import NodeType


class NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NumbersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = 3


class Pair(BaseModel):
    left: str
    right: int


class Numbers(NodeType):
    name = "test.numbers"
    Config = NumbersConfig

    async def run(self) -> list[int]:
        return list(range(self.config.n))  # type: ignore[attr-defined]


class Count(NodeType):
    name = "test.count"
    Config = NoConfig

    async def run(self, items: list[str]) -> int:
        return len(items)


class MakePair(NodeType):
    name = "test.pair"
    Config = NoConfig

    async def run(self, left: str = "a", right: int = 0) -> Pair:
        return Pair(left=left, right=right)


class Greet(NodeType):
    name = "test.greet"
    Config = NoConfig

    async def run(self, name: str, times: int = 1) -> str:
        return " ".join([f"hello {name}"] * times)


@llmrec.hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in (Numbers, Count, MakePair, Greet):
        register(cls)
