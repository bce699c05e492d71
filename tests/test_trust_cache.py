"""Trust boundary: a cache file is data. A spec chooses where its disk cache lives, so whoever wrote the folder
controls the file's bytes; reading it must never run code (issue 11). The attack is the test: a poisoned cache
file planted beside a spec."""

from __future__ import annotations

import json
import pickle
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import llmrec
from llmrec.caches import codec
from llmrec.caches import DiskCache
from llmrec.testing import write_spec
from llmrec.types import Candidates, ScoredItem

SPEC = """
    name: cached
    inputs: {}
    resources:
      data: {type: dataset, config: {name: demo, split: temporal, options: {n_users: 10, n_items: 30}}}
    nodes:
      popular:
        type: retrieve.popular
        config: {k: 3}
        inputs: {interactions: "${resources.data.train}"}
        cache: {backend: disk, path: cache}
    outputs: {items: "${popular}"}
"""


class _Payload:
    """What an attacker pickles: unpickling it runs a command that writes a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, ([sys.executable, "-c", f"open({self.marker!r}, 'w').write('pwned')"],))


def _poison(db, blob: bytes) -> int:
    with sqlite3.connect(db) as conn:
        n = conn.execute("UPDATE entries SET value = ?", (blob,)).rowcount
    return n


@pytest.mark.parametrize("header", [b"llmrec-cache/1\n", b"llmrec-cache/2\n", b""])
def test_a_poisoned_pickle_in_the_cache_file_is_a_miss_and_never_runs(tmp_path, header) -> None:
    spec = write_spec(tmp_path, SPEC)
    first = llmrec.run(spec, {}).outputs["items"].ids
    db = tmp_path / "cache" / DiskCache.FILENAME
    marker = tmp_path / "pwned"
    assert _poison(db, header + pickle.dumps(_Payload(str(marker)))) >= 1
    with pytest.warns(Warning, match="unreadable entry dropped"):
        again = llmrec.run(spec, {})
    assert not marker.exists()  # the payload never ran
    assert again.outputs["items"].ids == first and again.trace.node("popular").cache_hit is False


@pytest.mark.parametrize("entry", [
    {"$m": ["os", "system"], "v": "touch pwned"},           # not a model class
    {"$m": ["subprocess", "Popen"], "v": ["true"]},
    {"$m": ["antigravity", "Anything"], "v": {}},           # a module not imported yet: never imported to decode
    {"$m": ["llmrec.types", "Candidates.__class__"], "v": {}},
    {"$m": ["llmrec.reclm", "TrainedRecLM"], "v": {}},       # a lazy module attribute: never imported to decode
    {"$np": ["|O", [1], "gARdlC4="]},                       # an object array would unpickle
    {"$zz": 1},
])
def test_a_crafted_json_entry_names_nothing_it_may_not(tmp_path, entry) -> None:
    spec = write_spec(tmp_path, SPEC)
    first = llmrec.run(spec, {}).outputs["items"].ids
    _poison(tmp_path / "cache" / DiskCache.FILENAME, b"llmrec-cache/2\n" + json.dumps(entry).encode())
    with pytest.warns(Warning, match="unreadable entry dropped"):
        assert llmrec.run(spec, {}).outputs["items"].ids == first
    assert "antigravity" not in sys.modules


def test_the_codec_round_trips_what_nodes_return_and_refuses_the_rest() -> None:
    value = {
        "cands": Candidates(items=[ScoredItem(id="a", score=0.5, sources={"x": 1.0})], source="s"),
        "tuple": (1, "two", None), "set": {1, 2}, "frozen": frozenset({"a"}), "bytes": b"\x00\xff",
        "floats": [float("nan"), float("inf"), -0.0, 1e300], 3: "int key", "$dollar": True,
        "array": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.int64(7),
    }
    back = codec.decode(codec.encode(value))
    assert back["cands"] == value["cands"] and isinstance(back["cands"], Candidates)
    assert back["tuple"] == (1, "two", None) and back["set"] == {1, 2} and back["frozen"] == frozenset({"a"})
    assert back["bytes"] == b"\x00\xff" and back[3] == "int key" and back["$dollar"] is True
    assert np.isnan(back["floats"][0]) and back["floats"][1:] == [float("inf"), -0.0, 1e300]
    assert back["array"].dtype == np.float32 and back["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["scalar"] == 7
    for bad in (object(), np.array([object()], dtype=object), lambda: 1):
        with pytest.raises(codec.CodecError):
            codec.encode(bad)
    with pytest.raises(codec.CodecError):
        codec.decode(b"\x80not json")
