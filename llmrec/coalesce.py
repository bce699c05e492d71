"""coalesce: concurrent calls from many threads to a one-item function become one call over a list.

``Coalescer(many)`` is called as ``coalescer(item)`` from any thread and gives ``many([item])[0]``. While one
call of ``many`` runs, the items other threads ask for queue up; when it ends, the first of them runs ``many``
once for the whole queue (at most ``limit`` items) and hands each thread its own result. An idle caller goes
straight through and waits for nobody, so a lone request pays nothing; under load the batches form by
themselves, as large as the requests that arrived during the previous call. With ``window`` > 0 a caller
that finds nothing running waits that many seconds for company before it starts (a fixed latency for bigger
batches: off by default).

:class:`AsyncCoalescer` does the same for coroutines of one event loop: the items the loop's tasks ask for while
one call runs (in a worker thread) queue up, and go in the next call together. Waiting costs no thread, so the
batches are as large as the concurrent requests, not as the thread pool.

They serve :meth:`llmrec.embed.Embedder.encode_query` and ``aencode_query``: concurrent requests' query encodes
become one batched model call (ONNX Runtime encodes 8 short queries in about half the CPU of 8 single calls:
benchmarks/query_batch.py). ``many`` must give for each item what it gives for that item alone (for MiniLM on
ONNX Runtime the vectors are bit-identical: tests/embed/test_encoders.py). When ``many`` raises, every
caller of that batch gets the exception.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "done", "lead", "result", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.lead = False
        self.result: R | None = None
        self.error: BaseException | None = None


class Coalescer(Generic[T, R]):
    """``coalescer(item)``: ``many([item])[0]``, batched with the items other threads ask for meanwhile."""

    def __init__(self, many: Callable[[list[T]], Sequence[R]], *, limit: int = 64, window: float = 0.0) -> None:
        self.many = many
        self.limit = max(int(limit), 1)
        self.window = max(float(window), 0.0)
        self._lock = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        self._busy = False  # a thread is running (or about to run) ``many``
        self.calls = 0  # calls of ``many``
        self.items = 0  # items they encoded

    def __call__(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            if self._busy:
                self._queue.append(slot)
            else:
                self._busy = slot.lead = True
        if not slot.lead:
            slot.done.wait()
            if not slot.lead:  # a result (or error) came; else this thread was made the next leader
                return self._take(slot)
        self._lead(slot)
        return self._take(slot)

    def stats(self) -> dict[str, float]:
        """Calls of ``many``, items, and items per call."""
        return {"calls": self.calls, "items": self.items,
                "mean_batch": round(self.items / self.calls, 2) if self.calls else 0.0}

    @staticmethod
    def _take(slot: _Slot[T, R]) -> R:
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, slot: _Slot[T, R]) -> None:
        if self.window:
            threading.Event().wait(self.window)
        with self._lock:
            batch = [slot, *self._queue[:self.limit - 1]]
            del self._queue[:self.limit - 1]
        try:
            results = self.many([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"gave {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets it, as a direct call would
            for s in batch:
                s.error = exc
        else:
            for s, value in zip(batch, results):
                s.result = value
        self.calls += 1
        self.items += len(batch)
        with self._lock:  # the next queued caller leads the next batch; or nobody is busy any more
            if self._queue:
                nxt = self._queue.pop(0)
                nxt.lead = True
                nxt.done.set()
            else:
                self._busy = False
        for s in batch:
            if s is not slot:
                s.done.set()


class _LoopQueue(Generic[T, R]):
    __slots__ = ("pending", "busy")

    def __init__(self) -> None:
        self.pending: list[tuple[T, asyncio.Future[R]]] = []
        self.busy = False


class AsyncCoalescer(Generic[T, R]):
    """``await coalescer(item)``: ``many([item])[0]`` run in a worker thread, batched with the items the event
    loop's other tasks ask for in the same turn or while a call runs."""

    def __init__(self, many: Callable[[list[T]], Sequence[R]], *, limit: int = 64) -> None:
        self.many = many
        self.limit = max(int(limit), 1)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue[T, R]] = \
            weakref.WeakKeyDictionary()
        self.calls = 0
        self.items = 0

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        queue = self._loops.get(loop)
        if queue is None:
            queue = self._loops[loop] = _LoopQueue()
        fut: asyncio.Future[R] = loop.create_future()
        queue.pending.append((item, fut))
        if not queue.busy:
            # the thread starts now, not in a task of its own: a task would start only after every callback
            # ready in this turn (other nodes running on the loop), leaving the model idle meanwhile
            queue.busy = True
            self._start(loop, queue)
        return await fut

    def stats(self) -> dict[str, float]:
        """Calls of ``many``, items, and items per call."""
        return {"calls": self.calls, "items": self.items,
                "mean_batch": round(self.items / self.calls, 2) if self.calls else 0.0}

    def _start(self, loop: asyncio.AbstractEventLoop, queue: _LoopQueue[T, R]) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        while queue.pending and not batch:
            batch = [(i, f) for i, f in queue.pending[:self.limit] if not f.done()]  # not cancelled meanwhile
            del queue.pending[:self.limit]
        if not batch:
            queue.busy = False
            return
        done = loop.run_in_executor(None, self.many, [i for i, _ in batch])
        done.add_done_callback(lambda d: self._finish(loop, queue, batch, d))

    def _finish(self, loop: asyncio.AbstractEventLoop, queue: _LoopQueue[T, R],
                batch: list[tuple[T, asyncio.Future[R]]], done: asyncio.Future[Sequence[R]]) -> None:
        self.calls += 1
        self.items += len(batch)
        error: BaseException | None = asyncio.CancelledError() if done.cancelled() else done.exception()
        results: Sequence[R] = [] if error is not None else done.result()
        if error is None and len(results) != len(batch):
            error = RuntimeError(f"gave {len(results)} results for {len(batch)} items")
        for n, (_, f) in enumerate(batch):
            if f.done():
                continue
            if error is not None:
                f.set_exception(error)
            else:
                f.set_result(results[n])
        self._start(loop, queue)  # what queued meanwhile goes next, in one call


__all__ = ["AsyncCoalescer", "Coalescer"]
