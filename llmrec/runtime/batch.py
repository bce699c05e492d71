"""batch: one call of a node type for many requests at once.

A node type that declares ``batchable = True`` implements ``run_batch(calls)``: the keyword arguments of many
``run`` calls in, their results out, in order (CF scoring as one matrix product, say). Inside
:func:`batching` (``Runtime.run_many``, ``llmrec eval``, ``/v1/recommend/batch``), the runtime gives each such
node a :class:`Batcher`: the calls that concurrent requests make to it within one turn of the event loop are
collected and sent to ``run_batch`` together. Outside it, and for a batch of one, ``run`` is called as always,
so a single request pays nothing for batching.

``run_batch`` must give what ``run`` gives for each call (tests/runtime/test_batch.py checks the built-ins
request by request). When it raises, the calls of that batch are run one by one, so a bad request fails alone
with its own error, as it would have without batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from ..node import NodeType

#: the most calls sent to one ``run_batch``; more are split into several batches
MAX_BATCH = 1024
_BATCHING: ContextVar[bool] = ContextVar("llmrec_batching", default=False)


@contextlib.contextmanager
def batching() -> Iterator[None]:
    """Requests started inside (their tasks copy the context) send their batchable nodes' calls in batches.

    Meanwhile the objects alive when it starts (the datasets, models and indexes the runtime loaded) are frozen
    out of the garbage collector's view (``gc.freeze``) and thawed at the end: a wave of requests keeps more
    objects alive at once, and each full collection would otherwise walk every one of MovieLens's 100K
    interactions (measured: that cost the batch path more than batching saved). Skipped when something else in
    the process already froze objects, so an application's own ``gc.freeze()`` is never undone."""
    token = _BATCHING.set(True)
    freeze = gc.isenabled() and gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        yield
    finally:
        _BATCHING.reset(token)
        if freeze:
            gc.unfreeze()


def is_batchable(node: NodeType) -> bool:
    """The node declares ``batchable`` (the type, or the instance for its config) and has an ``async def
    run_batch``."""
    return bool(node.batchable) and inspect.iscoroutinefunction(node.run_batch) and \
        inspect.iscoroutinefunction(node.run)


class Batcher:
    """Stands in for a batchable node's ``run``: inside :func:`batching`, waits for the calls of this loop turn
    and sends them to ``run_batch`` as one."""

    __slots__ = ("node", "run", "pending", "limit")

    def __init__(self, node: NodeType, limit: int = MAX_BATCH) -> None:
        self.node = node
        self.run = node.run
        self.limit = limit
        self.pending: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []

    async def __call__(self, **kwargs: Any) -> Any:
        if not _BATCHING.get():
            return await self.run(**kwargs)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((kwargs, fut))
        if len(self.pending) == 1:  # the first call of this turn: the batch goes once every caller has asked
            loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        batch, self.pending = self.pending[:self.limit], self.pending[self.limit:]
        if self.pending:
            asyncio.get_running_loop().create_task(self._flush())
        batch = [(kwargs, fut) for kwargs, fut in batch if not fut.done()]  # callers cancelled meanwhile
        if not batch:
            return
        if len(batch) > 1:
            try:
                results = await self.node.run_batch([kwargs for kwargs, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch gave {len(results)} results for {len(batch)} calls")
            except Exception:  # noqa: BLE001 - each call again on its own, so each fails (or not) by itself
                pass
            else:
                for (_, fut), value in zip(batch, results):
                    if not fut.done():
                        fut.set_result(value)
                return
        for kwargs, fut in batch:
            try:
                value = await self.run(**kwargs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - handed to the caller, as a direct call raises it
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(value)


__all__ = ["MAX_BATCH", "Batcher", "batching", "is_batchable"]
