"""llmrec.coalesce: concurrent callers' items go to one call; each gets its own result or the batch's error."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmrec.coalesce import Coalescer


def test_a_lone_caller_goes_straight_through() -> None:
    seen: list[list[int]] = []
    c = Coalescer(lambda items: seen.append(list(items)) or [i * 2 for i in items])
    assert c(3) == 6 and c(4) == 8
    assert seen == [[3], [4]] and c.stats() == {"calls": 2, "items": 2, "mean_batch": 1.0}


def test_many_threads_each_get_their_own_result_in_fewer_calls_and_batches_respect_the_limit() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def many(items: list[int]) -> list[int]:
        sizes.append(len(items))
        gate.wait(0.002)  # long enough for the other threads to queue up
        return [i * i for i in items]

    c = Coalescer(many, limit=8)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(c, range(200)))
    assert results == [i * i for i in range(200)]
    assert sum(sizes) == 200 and max(sizes) <= 8 and len(sizes) < 200


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_runs() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def many(items: list[str]) -> list[str]:
        calls.append(list(items))
        if items == ["first"]:
            started.set()
            release.wait(5)
            return ["ok"]
        if "bad" in items:
            raise ValueError("bad item")
        return [i.upper() for i in items]

    c = Coalescer(many)
    results: dict[str, object] = {}

    def ask(item: str) -> None:
        try:
            results[item] = c(item)
        except ValueError as exc:
            results[item] = exc

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert started.wait(5)
    queued = [threading.Thread(target=ask, args=(i,)) for i in ("bad", "fine")]
    for t in queued:
        t.start()
    while len(c._queue) < 2:
        threading.Event().wait(0.001)
    release.set()
    for t in [first, *queued]:
        t.join(5)
    assert results["first"] == "ok"
    assert isinstance(results["bad"], ValueError) and isinstance(results["fine"], ValueError)  # one batch
    assert c("later") == "LATER"  # the coalescer is idle again afterwards


def test_a_window_lets_a_lone_caller_wait_for_company() -> None:
    sizes: list[int] = []
    c = Coalescer(lambda items: sizes.append(len(items)) or list(items), window=0.05)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(c, range(4))) == [0, 1, 2, 3]
    assert sum(sizes) == 4 and len(sizes) < 4


def test_a_wrong_number_of_results_is_an_error_not_a_mixup() -> None:
    c = Coalescer(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1"):
        c(1)


async def test_async_callers_share_calls_without_a_thread_each_and_errors_reach_their_batch() -> None:
    import asyncio

    from llmrec.coalesce import AsyncCoalescer

    calls: list[list[int]] = []

    def many(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("unlucky")
        threading.Event().wait(0.01)  # the model call: other tasks queue up meanwhile
        return [i + 100 for i in items]

    c = AsyncCoalescer(many, limit=10)
    assert await c(1) == 101 and calls == [[1]]  # alone: straight through
    calls.clear()
    got = await asyncio.gather(*(c(i) for i in range(20, 45)))
    assert got == [i + 100 for i in range(20, 45)]
    assert sorted(i for call in calls for i in call) == list(range(20, 45)) and max(map(len, calls)) <= 10
    assert calls[0] == [20] and len(calls) == 4  # the first starts at once; the 24 queued: batches of 10, 10, 4
    results = await asyncio.gather(c(11), c(12), c(13), return_exceptions=True)
    assert results[0] == 111  # alone, at once; 12 and 13 queued behind it: one batch, one error
    assert isinstance(results[1], ValueError) and isinstance(results[2], ValueError)
    assert await c(14) == 114  # and the next call works


async def test_an_async_caller_cancelled_while_queued_is_left_out_of_the_batch() -> None:
    import asyncio

    from llmrec.coalesce import AsyncCoalescer

    calls: list[list[int]] = []

    def many(items: list[int]) -> list[int]:
        calls.append(list(items))
        threading.Event().wait(0.01)
        return [i * 2 for i in items]

    c = AsyncCoalescer(many)
    first = asyncio.ensure_future(c(1))
    waiting = asyncio.ensure_future(c(2))
    other = asyncio.ensure_future(c(3))
    await asyncio.sleep(0)  # 1 is being encoded; 2 and 3 wait
    waiting.cancel()
    assert await first == 2 and await other == 6
    assert calls == [[1], [3]]
