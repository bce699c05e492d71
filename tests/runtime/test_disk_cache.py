"""The ``disk`` cache backend: persistence across runtimes and processes, TTL, eviction, corrupt files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
from pydantic import BaseModel

from llmrec.api import validate
from llmrec.caches import CacheWarning, DiskCache
from llmrec.runtime.executor import Runtime
from llmrec.testing import FakeProvider, write_spec


class Pick(BaseModel):
    items: list[str]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_values_survive_a_new_instance_and_keep_their_type(tmp_path) -> None:
    a = DiskCache(path=tmp_path)
    await a.set("n:v:k1", Pick(items=["i1", "i2"]), None)
    await a.set("n:v:k2", {"x": [1, 2.5, None]}, None)
    a.close()
    b = DiskCache(path=tmp_path)
    assert b.peek("n:v:k1") == (True, Pick(items=["i1", "i2"]))
    assert await b.get("n:v:k2") == (True, {"x": [1, 2.5, None]})
    assert b.peek("n:v:nope") == (False, None)
    assert (tmp_path / DiskCache.FILENAME).is_file()


async def test_ttl_expires_entries(tmp_path) -> None:
    clock = Clock()
    cache = DiskCache(path=tmp_path, clock=clock)
    await cache.set("n:v:a", "A", 10.0)
    await cache.set("n:v:b", "B", None)
    clock.now += 9.9
    assert cache.peek("n:v:a") == (True, "A")
    clock.now += 0.2
    assert cache.peek("n:v:a") == (False, None)
    assert cache.peek("n:v:b") == (True, "B")
    assert len(cache) == 1  # the expired entry is gone from the file


async def test_each_namespace_keeps_max_entries_least_recently_read_first(tmp_path) -> None:
    clock = Clock()
    cache = DiskCache(max_entries=3, path=tmp_path, clock=clock)
    for i in range(3):
        clock.now += 1
        await cache.set(f"node:v1:{i}", i, None)
    clock.now += 1
    assert cache.peek("node:v1:0") == (True, 0)  # read: now the most recent
    clock.now += 1
    await cache.set("node:v1:3", 3, None)
    await cache.set("other:v1:x", "x", None)  # another node's entries do not count against this one's
    assert [cache.peek(f"node:v1:{i}")[0] for i in range(4)] == [True, False, True, True]
    assert cache.peek("other:v1:x") == (True, "x")


async def test_corrupt_file_is_a_miss_with_a_warning_then_a_fresh_cache(tmp_path) -> None:
    (tmp_path / DiskCache.FILENAME).write_bytes(b"this is not sqlite" * 100)
    cache = DiskCache(path=tmp_path)
    with pytest.warns(CacheWarning, match="corrupt"):
        assert cache.peek("n:v:k") == (False, None)
    await cache.set("n:v:k", "fresh", None)
    assert cache.peek("n:v:k") == (True, "fresh")
    assert list(tmp_path.glob(f"{DiskCache.FILENAME}.corrupt-*"))  # kept aside for a look, not deleted


async def test_file_corrupted_while_open_is_recovered(tmp_path) -> None:
    cache = DiskCache(path=tmp_path)
    await cache.set("n:v:k", "old", None)
    cache.close()
    (tmp_path / DiskCache.FILENAME).write_bytes(b"\0garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        (tmp_path / (DiskCache.FILENAME + suffix)).unlink(missing_ok=True)
    with pytest.warns(CacheWarning):
        assert cache.peek("n:v:k") == (False, None)
    await cache.set("n:v:k", "new", None)
    assert cache.peek("n:v:k") == (True, "new")


async def test_unreadable_entry_and_unpicklable_value_are_misses_with_warnings(tmp_path) -> None:
    import sqlite3

    cache = DiskCache(path=tmp_path)
    await cache.set("n:v:k", "ok", None)
    cache.close()
    with sqlite3.connect(tmp_path / DiskCache.FILENAME) as conn:
        conn.execute("UPDATE entries SET value = ?", (b"llmrec-cache/0\nold format",))
    with pytest.warns(CacheWarning, match="unreadable entry"):
        assert cache.peek("n:v:k") == (False, None)
    with pytest.warns(CacheWarning, match="cannot store"):
        await cache.set("n:v:lambda", lambda: 1, None)
    assert cache.peek("n:v:lambda") == (False, None)


def test_unusable_folder_turns_caching_off_with_one_warning(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = DiskCache(path=blocker / "sub")
    with pytest.warns(CacheWarning, match="not usable"):
        assert cache.peek("n:v:k") == (False, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.peek("n:v:k") == (False, None)  # off now: no warning per lookup


def test_default_folder_is_under_llmrec_cache_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path))
    assert DiskCache().folder == tmp_path / "nodecache"


# -- through the executor ----------------------------------------------------------------------------------------

SPEC = """
name: disk-cached
inputs:
  liked: {type: array, items: string}
resources:
  model: {type: llm, config: {provider: litellm, model: openai/stub}}
nodes:
  pick:
    type: llm.prompt
    config: {template: "I liked {{ liked | join(', ') }}.", schema: "tests_pick.py:Pick"}
    inputs: {model: "${resources.model}", liked: "${inputs.liked}"}
    cache: {backend: disk, ttl: 1h}
outputs:
  items: ${pick.items}
"""

SCHEMA = "from pydantic import BaseModel\n\nclass Pick(BaseModel):\n    items: list[str]\n"


def _spec(tmp_path) -> str:
    (tmp_path / "tests_pick.py").write_text(SCHEMA, encoding="utf-8")
    return str(write_spec(tmp_path, SPEC))


async def test_node_cache_on_disk_survives_a_new_runtime(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    path = _spec(tmp_path)
    fake = FakeProvider(lambda req: {"items": ["m1", "m2"]})
    first = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    assert first.outputs["items"] == ["m1", "m2"] and fake.calls == 1
    second = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    rec = second.trace.node("pick")
    assert rec.status == "cached" and rec.cache_hit and second.outputs["items"] == ["m1", "m2"]
    assert fake.calls == 1
    other = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Heat"]})
    assert other.trace.node("pick").status == "ok" and fake.calls == 2


async def test_cache_path_resolves_from_the_spec_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "elsewhere"))
    (tmp_path / "tests_pick.py").write_text(SCHEMA, encoding="utf-8")
    path = str(write_spec(tmp_path, SPEC.replace("cache: {backend: disk, ttl: 1h}",
                                                 "cache: {backend: disk, ttl: 1h, path: cache/nodes}")))
    fake = FakeProvider(lambda req: {"items": ["m1"]})
    await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    again = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    assert again.trace.node("pick").status == "cached" and fake.calls == 1
    assert any((tmp_path / "cache" / "nodes").iterdir())  # beside the spec, not under LLMREC_CACHE_DIR
    assert not (tmp_path / "elsewhere").exists()


async def test_editing_a_template_file_changes_the_node_cache_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tests_pick.py").write_text(SCHEMA, encoding="utf-8")
    (tmp_path / "pick.j2").write_text("I liked {{ liked | join(', ') }}.", encoding="utf-8")
    inline = "template: \"I liked {{ liked | join(', ') }}.\""
    assert inline in SPEC
    path = str(write_spec(tmp_path, SPEC.replace(inline, "template_file: pick.j2")))
    fake = FakeProvider(lambda req: {"items": ["m1"]})
    await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    hit = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    assert hit.trace.node("pick").status == "cached" and fake.calls == 1
    (tmp_path / "pick.j2").write_text("Loved {{ liked | join(' and ') }}.", encoding="utf-8")
    edited = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    assert edited.trace.node("pick").status == "ok" and fake.calls == 2  # never the stale answer



async def test_editing_a_schema_file_changes_the_node_cache_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tests_pick.py").write_text(SCHEMA, encoding="utf-8")
    path = str(write_spec(tmp_path, SPEC))
    fake = FakeProvider(lambda req: {"items": ["m1"]})
    await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    hit = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    assert hit.trace.node("pick").status == "cached" and fake.calls == 1
    # the same model name, another shape: a stale answer would not even validate against it
    (tmp_path / "tests_pick.py").write_text(SCHEMA.replace("items: list[str]", "items: list[str]\n    why: str = ''"),
                                            encoding="utf-8")
    import os

    os.utime(tmp_path / "tests_pick.py", ns=(1, 1))  # a new mtime even within the same clock tick
    edited = await Runtime(validate(path), resources={"model": fake}).run({"liked": ["Alien"]})
    assert edited.trace.node("pick").status == "ok" and fake.calls == 2


CHILD = """
import asyncio, json, sys
from llmrec.api import validate
from llmrec.runtime.executor import Runtime
from llmrec.testing import FakeProvider

fake = FakeProvider(lambda req: {"items": ["from-" + sys.argv[2]]})
result = asyncio.run(Runtime(validate(sys.argv[1]), resources={"model": fake}).run({"liked": ["Alien"]}))
print(json.dumps({"status": result.trace.node("pick").status, "items": result.outputs["items"], "calls": fake.calls}))
"""


def test_node_cache_keys_are_stable_across_processes(tmp_path) -> None:
    path = _spec(tmp_path)
    env = {**os.environ, "LLMREC_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    out = []
    for name in ("first", "second"):
        proc = subprocess.run([sys.executable, "-c", CHILD, path, name], env=env, capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert out[0] == {"status": "ok", "items": ["from-first"], "calls": 1}
    assert out[1] == {"status": "cached", "items": ["from-first"], "calls": 0}
