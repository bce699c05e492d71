"""Spec mutants as users (and attackers) break them, for the validator's fuzz test and benchmarks/fuzz_specs.py.

Two kinds of mutation of the shipped specs: *bytes* (insert, replace or delete a token at a position: brackets,
colons, tabs, control characters, YAML tags, anchors and aliases, 400-digit numbers, references) and *structure*
(replace one value of the parsed document with a hostile one: huge or negative numbers, long strings, deep
nesting, dangling references, outside paths; or delete a key), written back as YAML.

``outcome(path)`` validates one file exactly as ``llmrec validate`` does and classifies what happened: ``pass``,
``errors`` (SpecErrors, each with a position), ``unpositioned`` (an error without line:col) or ``crash`` (any other
exception), with the seconds it took.
"""

from __future__ import annotations

import copy
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SPECS = Path(__file__).resolve().parents[2] / "specs"

TOKENS = [
    "\x00", "\x01", "\x1b", "\t", "\r", "\ufeff", "é", "[", "]", "{", "}", ":", ": ", "- ", ",", "'", '"', "#", "|",
    ">", "&a ", "*a", "*nope", "<<: *a\n", "!!float x", "!!int x", "!!bool maybe", "!!str", "!!binary ???",
    "!!timestamp 2020-99-99", "!!python/object/apply:os.system ['id']", "!env x", "%YAML 1.1\n", "---\n", "...\n",
    "9" * 400, "-" + "9" * 400, "1e999", ".nan", "0x" + "f" * 300, "${", "}", "${nodes.", "${resources.zz}",
    "${env:HOME}", "${inputs.k", "\n  ", "\n    - ", "\n", "  ", "a" * 300, "../" * 30, "/etc/passwd", "~",
    "[" * 300, "{a: " * 100,
]

HOSTILE: list[Any] = [
    None, True, 0, -1, 10 ** 400, -(10 ** 400), 1e308, float("inf"), float("nan"), "", "x" * 300, "x" * 5000,
    "${nodes.nope}", "${resources.nope.x}", "${inputs.nope}", "${env:LLMREC_FUZZ_UNSET}", "/etc/passwd",
    "../../../../etc/passwd", "9" * 400 + "s", "1e999d", [], {}, [[[[[[[[[[[]]]]]]]]]]], {"a": {"b": {"c": {}}}},
    ["${", "}"], {"type": "nope"}, "\u202e", "a\x00b",
]


def spec_texts() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(SPECS.glob("*.yaml"))}


def mutate_bytes(text: str, edits: list[tuple[float, int, int]]) -> bytes:
    """Apply ``(position fraction, kind, token index)`` edits: kind 0 inserts, 1 replaces a few characters,
    2 deletes a few characters."""
    out = text
    for where, kind, token in edits:
        at = int(where * len(out))
        piece = TOKENS[token % len(TOKENS)]
        if kind == 0:
            out = out[:at] + piece + out[at:]
        elif kind == 1:
            out = out[:at] + piece + out[at + len(piece) % 7 + 1:]
        else:
            out = out[:at] + out[at + token % 40 + 1:]
    return out.encode("utf-8", "surrogatepass")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def mutate_structure(text: str, edits: list[tuple[float, int, bool]]) -> bytes:
    """Apply ``(path fraction, hostile value index, delete?)`` edits to the parsed document, as YAML again."""
    data = yaml.safe_load(text)
    for where, hostile, delete in edits:
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = paths[int(where * len(paths)) % len(paths)]
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        if delete:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(HOSTILE[hostile % len(HOSTILE)])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8", "surrogatepass")


@dataclass
class Outcome:
    kind: str  # pass, errors, unpositioned, crash
    seconds: float
    detail: str = ""


def outcome(path: Path) -> Outcome:
    """Validate ``path`` as `llmrec validate` does and classify the result; ``seconds`` is this thread's CPU time
    (the machine is shared: wall time would measure the neighbours)."""
    from llmrec.api import check
    from llmrec.errors import SpecErrors

    started = time.thread_time()
    try:
        _, errors, _ = check(path)
    except SpecErrors as exc:
        errors = list(exc.errors)
    except Exception:  # anything else is a crash: `llmrec validate` would print "internal error"
        return Outcome("crash", time.thread_time() - started, traceback.format_exc(limit=-6))
    seconds = time.thread_time() - started
    if not errors:
        return Outcome("pass", seconds)
    bad = [e for e in errors if e.location is None or not e.location.line or not e.location.col]
    if bad:
        return Outcome("unpositioned", seconds, "; ".join(e.format() for e in bad)[:2000])
    return Outcome("errors", seconds)


__all__ = ["HOSTILE", "TOKENS", "Outcome", "mutate_bytes", "mutate_structure", "outcome", "spec_texts"]
