"""Node types for executor tests, loaded as a local plugin (copied into <spec dir>/plugins/)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

import llmrec
from llmrec.errors import ProviderError


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0
    failures: int = 0


class Sleep(llmrec.NodeType):
    name = "test.sleep"
    Config = _Cfg
    events: list[tuple[str, str, float]] = []

    async def run(self, value: Any = None, context: llmrec.RunContext | None = None) -> Any:
        assert context is not None
        Sleep.events.append((context.node_id, "start", time.perf_counter()))
        await asyncio.sleep(self.config.seconds)
        Sleep.events.append((context.node_id, "end", time.perf_counter()))
        return value


class Flaky(llmrec.NodeType):
    name = "test.flaky"
    Config = _Cfg
    calls: dict[str, int] = {}

    async def run(self, value: Any = None, context: llmrec.RunContext | None = None) -> Any:
        assert context is not None
        n = Flaky.calls[context.node_id] = Flaky.calls.get(context.node_id, 0) + 1
        if n <= self.config.failures:
            raise ConnectionError(f"attempt {n} failed")
        return {"value": value, "attempts": n}


class Fail(llmrec.NodeType):
    name = "test.fail"
    Config = _Cfg

    async def run(self, value: Any = None) -> list[str]:
        raise ValueError("boom")


class ProviderDown(llmrec.NodeType):
    name = "test.provider_down"
    Config = _Cfg

    async def run(self, value: Any = None) -> list[str]:
        raise ProviderError("the provider answered 503")


class Counter(llmrec.NodeType):
    name = "test.counter"
    Config = _Cfg
    calls = 0

    async def run(self, key: str = "") -> list[str]:
        Counter.calls += 1
        return [key, str(Counter.calls)]


class Blocking(llmrec.NodeType):
    name = "test.blocking"
    Config = _Cfg
    offload = True

    def run(self, value: Any = None) -> Any:
        time.sleep(self.config.seconds)
        return value


class Batched(llmrec.NodeType):
    """Ten times its value; a batch of calls at once. A negative value fails (alone or in a batch)."""

    name = "test.batched"
    inline = True
    batchable = True
    batches: list[int] = []  # the size of each run_batch call

    async def run(self, value: int = 0) -> int:
        if value < 0:
            raise ValueError(f"negative value {value}")
        return 10 * value

    async def run_batch(self, calls: list[dict[str, Any]]) -> list[int]:
        Batched.batches.append(len(calls))
        if any(c["value"] < 0 for c in calls):
            raise ValueError("a negative value in the batch")
        return [10 * c["value"] for c in calls]


@llmrec.hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in (Sleep, Flaky, Fail, ProviderDown, Counter, Blocking, Batched):
        register(cls)
