"""A local transformers provider: any causal LM on disk or in the local Hugging Face cache, with token-level
constrained decoding so that structured output always parses and validates.

::

    resources:
      model: {type: llm, config: {provider: transformers, model: ./models/qwen2.5-0.5b-instruct, timeout: 30s}}

With a schema, every sampled token is masked by an llguidance grammar compiled from the schema's JSON Schema,
tightened so that a model, however bad, cannot misbehave:

- compact JSON only: no whitespace between tokens, no extra object keys, no ``\\u`` escapes (and, as llguidance
  already does, no raw control characters in strings);
- every string has a ``maxLength``, every list a ``maxItems``, every number bounds and a precision, so the longest
  accepted output is finite; the defaults for fields that declare none are shrunk until that longest output fits
  ``max_tokens``, and a schema whose own bounds cannot fit is refused before any token is generated;
- a :class:`~llmrec.llm.provider.Choices` path becomes an ``enum`` of its values, and ``unique`` (which no JSON
  grammar can express) is enforced while decoding: a token that would start a value no longer available, repeat
  a value, or open more list elements than there are values left is rejected and another is sampled.

Generation runs in a worker thread (the event loop is never blocked) and stops between tokens at the request's
deadline or when the awaiting task is cancelled. Calls that arrive together (``max_batch``, default 8) are
decoded as one batch, each row with its own constraint state, sampler and stopping point and the same output it
gets alone; ``quantize: int8`` makes the linear layers dynamic int8 (CPU). ``count_tokens`` counts with the
model's tokenizer, for token budgets. torch, transformers and llguidance are imported lazily.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import inspect
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, NodeTimeoutError, OutputValidationError, ProviderError
from ..reclm.model import model_bytes
from .provider import Choices, Completion, CompletionRequest, Message, Usage

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

PROVIDER_NAME = "transformers"
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_MAX_BATCH = 8  # calls decoded together at most (1: one at a time)
DEFAULT_BATCH_WINDOW = 0.005  # seconds the worker waits after a call arrives for others to join its batch
DEFAULT_MAX_STRING_LENGTH = 64  # characters, for string fields without maxLength
DEFAULT_MAX_ITEMS = 10  # for list fields without maxItems
DEFAULT_NUMBER_BOUND = 10**9  # |value| bound for numbers without minimum/maximum
DEFAULT_NUMBER_DECIMALS = 4  # fractional digits for numbers without multipleOf
_BYTES_PER_CHAR = 4  # worst case for one character inside a JSON string (UTF-8); escapes take 2
_SHRINK = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.0)
_JSON_OPTIONS = {
    "whitespace_flexible": False,
    "item_separator": ",",
    "key_separator": ":",
    "json_allowed_escapes": '"\\bfnrt',  # no \uXXXX: six bytes per character would only waste the budget
}
_DTYPES = ("auto", "float32", "float16", "bfloat16")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


# -- the schema, tightened into a grammar with a finite longest output -----------------------------------------


@dataclass(frozen=True)
class UniqueValues:
    """A ``Choices(unique=True)`` as the decoder enforces it: ``path`` of the value, ``array`` the path of the
    list whose elements each hold one value, ``encoded`` the values as they appear between the JSON delimiters
    (sorted, for prefix look-ups), ``decoded`` the same values after json.loads."""

    path: str
    array: str | None
    encoded: tuple[bytes, ...]
    decoded: tuple[Any, ...]


@dataclass(frozen=True)
class ConstraintPlan:
    """The JSON Schema handed to llguidance, the longest output it accepts (in bytes; a token is at least one
    byte, so also an upper bound in tokens), and the uniqueness rules the decoder adds on top."""

    json_schema: dict[str, Any]
    max_bytes: int
    unique: tuple[UniqueValues, ...] = ()
    string_cap: int = 0
    items_cap: int = 0


class _Compiler:
    """One pass over a (ref-free) schema: applies choices and caps, and sums the longest output."""

    def __init__(self, choices: dict[str, Choices], string_cap: int, items_cap: int, number_bound: int,
                 decimals: int) -> None:
        self.choices = choices
        self.string_cap = string_cap
        self.items_cap = items_cap
        self.number_bound = number_bound
        self.decimals = decimals
        self.used: set[str] = set()
        self.kinds: dict[str, str] = {}  # choice path -> "string" | "integer"
        self.min_items: dict[str, int] = {}  # list path -> minItems
        self.values: dict[str, tuple[Any, ...]] = {}  # choice path -> the values decoding may produce

    def node(self, s: dict[str, Any], path: str) -> tuple[dict[str, Any], int]:
        s = {k: v for k, v in s.items() if k not in ("title", "description", "examples", "default")}
        for key in ("anyOf", "oneOf"):
            if key in s:
                branches = [self.node(b, path) for b in s[key]]
                rest = {k: v for k, v in s.items() if k != key}
                if rest:
                    raise ProviderError(f"schema at '{path or '$'}': '{key}' beside other keywords is not supported")
                return {key: [b for b, _ in branches]}, max(n for _, n in branches)
        if "allOf" in s:
            if len(s["allOf"]) != 1:
                raise ProviderError(f"schema at '{path or '$'}': allOf with several schemas is not supported")
            return self.node({**{k: v for k, v in s.items() if k != "allOf"}, **s["allOf"][0]}, path)
        if "const" in s:
            return s, len(_dump(s["const"]))
        if "enum" in s:
            if path in self.choices:
                return self.enum_choice(s, path)
            return s, max(len(_dump(v)) for v in s["enum"])
        kind = s.get("type")
        if isinstance(kind, list):
            branches = [self.node({**s, "type": t}, path) for t in kind]
            return {"anyOf": [b for b, _ in branches]}, max(n for _, n in branches)
        if path in self.choices and kind in ("string", "integer"):
            return self.choice(path, kind)
        if kind == "string":
            return self.string(s)
        if kind in ("integer", "number"):
            return self.number(s, kind)
        if kind == "boolean":
            return s, 5
        if kind == "null":
            return s, 4
        if kind == "array":
            return self.array(s, path)
        if kind == "object":
            return self.object(s, path)
        raise ProviderError(f"schema at '{path or '$'}' has no JSON type (e.g. a field typed Any): constrained "
                            "decoding needs a concrete type for every field")

    def choice(self, path: str, kind: str) -> tuple[dict[str, Any], int]:
        values: list[Any] = list(dict.fromkeys(self.choices[path].values))
        if kind == "integer":
            try:
                values = [int(v) for v in values]
            except ValueError:
                raise ProviderError(f"choices for '{path}': the field is an integer but a value is not") from None
        if not values:
            raise ProviderError(f"choices for '{path}' are empty: nothing could be generated")
        self.used.add(path)
        self.kinds[path] = kind
        self.values[path] = tuple(values)
        return {"enum": values}, max(len(_dump(v)) for v in values)

    def enum_choice(self, s: dict[str, Any], path: str) -> tuple[dict[str, Any], int]:
        """Choices on a field the schema already makes an enum (a ``Literal``): the values both allow, in the
        schema's order; an error only when they share none."""
        allowed = {str(v) for v in self.choices[path].values}
        values = [v for v in s["enum"] if (v if isinstance(v, str) else _dump(v).decode()) in allowed]
        if not values:
            raise ProviderError(f"choices for '{path}' share no value with the field's enum in the schema "
                                f"({', '.join(map(str, s['enum'][:5]))}{', ...' if len(s['enum']) > 5 else ''})")
        if all(isinstance(v, str) for v in values):
            kind = "string"
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            kind = "integer"
        else:
            raise ProviderError(f"choices for '{path}': the field's enum mixes types or is not of strings or "
                                "integers")
        self.used.add(path)
        self.kinds[path] = kind
        self.values[path] = tuple(values)
        return {**s, "enum": values}, max(len(_dump(v)) for v in values)

    def string(self, s: dict[str, Any]) -> tuple[dict[str, Any], int]:
        if "maxLength" not in s:
            s["maxLength"] = max(self.string_cap, int(s.get("minLength", 0)))
        return s, 2 + _BYTES_PER_CHAR * int(s["maxLength"])

    def number(self, s: dict[str, Any], kind: str) -> tuple[dict[str, Any], int]:
        low = s.get("minimum", s.get("exclusiveMinimum"))
        high = s.get("maximum", s.get("exclusiveMaximum"))
        if low is None:
            s["minimum"] = low = -self.number_bound
        if high is None:
            s["maximum"] = high = self.number_bound
        digits = max(len(str(int(abs(x)))) for x in (low, high)) + 1  # sign
        if kind == "integer":
            return s, digits
        step = s.get("multipleOf")
        if step is None:
            s["multipleOf"] = step = 10.0**-self.decimals
        decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
        return s, digits + (1 + decimals if decimals else 0) + 2  # '.', the fraction, slack for rounding

    def array(self, s: dict[str, Any], path: str) -> tuple[dict[str, Any], int]:
        s.pop("uniqueItems", None)  # llguidance cannot say it; pydantic (sets) deduplicates when parsing
        self.min_items[path] = max(self.min_items.get(path, 0), int(s.get("minItems", 0)))
        prefix = [self.node(p, f"{path}[]") for p in s.get("prefixItems", [])]
        if prefix:
            s["prefixItems"] = [p for p, _ in prefix]
        if prefix and s.get("items") in (None, False):  # a tuple: exactly its prefix items
            item, item_bytes = None, 0
            s["items"] = False
            s["maxItems"] = min(int(s.get("maxItems", len(prefix))), len(prefix))
        else:
            item, item_bytes = self.node(s.get("items", {}), f"{path}[]")
            s["items"] = item
            if "maxItems" not in s:
                s["maxItems"] = max(self.items_cap, int(s.get("minItems", 0)), len(prefix))
            distinct = [len(set(self.values.get(p, c.values))) for p, c in self.choices.items()
                        if c.unique and _array_of(p) == path]
            if distinct:  # one distinct value per element: the list cannot be longer than the values
                s["maxItems"] = max(min(int(s["maxItems"]), *distinct), int(s.get("minItems", 0)))
        n = int(s["maxItems"])
        total = 2 + max(n - 1, 0) + sum(b for _, b in prefix[:n]) + max(n - len(prefix), 0) * item_bytes
        return s, total

    def object(self, s: dict[str, Any], path: str) -> tuple[dict[str, Any], int]:
        extra = s.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            raise ProviderError(f"schema at '{path or '$'}' is a free-form mapping (dict[str, ...]): constrained "
                                "decoding needs fixed keys; use a list of objects instead")
        if s.get("patternProperties"):
            raise ProviderError(f"schema at '{path or '$'}': patternProperties is not supported")
        props = s.get("properties", {})
        out, total = {}, 2
        for name, sub in props.items():
            out[name], n = self.node(sub, f"{path}.{name}" if path else name)
            total += len(_dump(name)) + 1 + n
        total += max(len(props) - 1, 0)
        s["properties"] = out
        s["additionalProperties"] = False
        return s, total


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every local ``$ref`` replaced by its definition; a recursive model is refused (its
    output has no longest form)."""
    defs = {**schema.get("$defs", {}), **schema.get("definitions", {})}

    def walk(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(x, seen) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            name = ref.rsplit("/", 1)[-1]
            if not ref.startswith("#/") or name not in defs:
                raise ProviderError(f"schema reference {ref!r} does not resolve")
            if name in seen:
                raise ProviderError(f"schema model {name!r} is recursive: constrained decoding needs a schema "
                                    "whose output has a bounded size")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**defs[name], **rest}, seen + (name,))
        return {k: walk(v, seen) for k, v in node.items() if k not in ("$defs", "definitions")}

    return walk(schema, ())


def _array_of(path: str) -> str | None:
    """The path of the list whose elements hold the values at ``path``: ``items[].id`` -> ``items``."""
    if "[]" not in path:
        return None
    return path[: path.rindex("[]")]


def compile_constraints(
    schema: type[BaseModel] | dict[str, Any],
    choices: tuple[Choices, ...] = (),
    max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
    max_items: int = DEFAULT_MAX_ITEMS,
    number_bound: int = DEFAULT_NUMBER_BOUND,
    number_decimals: int = DEFAULT_NUMBER_DECIMALS,
    grow: bool = False,
) -> ConstraintPlan:
    """Tighten ``schema`` (a pydantic model or a JSON Schema) for decoding within ``max_tokens``.

    Fields without bounds get ``max_string_length``/``max_items``, shrunk proportionally until the longest
    accepted output fits the budget. Raises ProviderError, before anything is generated, when a choice path
    names no field, or when the schema cannot fit ``max_tokens`` even with the smallest caps. With ``grow``
    (``max_tokens`` is only a default) such a schema gets a plan anyway: its own bounds take the room they need
    and the fields without bounds share ``max_tokens`` on top; ``max_bytes`` then exceeds ``max_tokens``.
    """
    raw = schema if isinstance(schema, dict) else schema.model_json_schema()
    base = _inline_refs(raw)
    by_path: dict[str, Choices] = {}
    for c in choices:
        if c.path in by_path:
            raise ProviderError(f"choices given twice for '{c.path}'")
        by_path[c.path] = c
    budget = max_tokens - 1  # the end-of-sequence token
    plans = []
    for f in _SHRINK:
        plan = _compile_once(base, by_path, max(1, round(max_string_length * f)), max(1, round(max_items * f)),
                             number_bound, number_decimals)
        if plan.max_bytes <= budget:
            return plan
        plans.append(plan)
    smallest = plans[-1].max_bytes
    if grow:
        return next(p for p in plans + [plans[-1]] if p.max_bytes <= budget + smallest)
    raise ProviderError(
        f"the output schema can take up to {smallest} tokens even with the smallest default bounds, but "
        f"max_tokens is {max_tokens}: generation could stop before the JSON is complete. Raise max_tokens, or "
        "lower maxLength/maxItems (pydantic: Field(max_length=...)) on the schema's fields")


def _compile_once(base: dict[str, Any], by_path: dict[str, Choices], string_cap: int, items_cap: int,
                  number_bound: int, number_decimals: int) -> ConstraintPlan:
    comp = _Compiler(by_path, string_cap, items_cap, number_bound, number_decimals)
    tight, nbytes = comp.node(copy.deepcopy(base), "")
    missing = set(by_path) - comp.used
    if missing:
        raise ProviderError(f"choices path {sorted(missing)[0]!r} names no string or integer field of the "
                            f"schema (paths look like 'items[].id' or 'tags[]')")
    for path, c in by_path.items():
        need = comp.min_items.get(_array_of(path) or "", 0)
        distinct = len(set(comp.values.get(path, c.values)))
        if c.unique and _array_of(path) is not None and need > distinct:
            raise ProviderError(f"choices for '{path}': the list needs at least {need} distinct values but "
                                f"only {distinct} are given")
    return ConstraintPlan(tight, nbytes, _uniques(by_path, comp.kinds, comp.values), comp.string_cap,
                          comp.items_cap)


def _uniques(by_path: dict[str, Choices], kinds: dict[str, str],
             narrowed: dict[str, tuple[Any, ...]]) -> tuple[UniqueValues, ...]:
    out = []
    for path, c in by_path.items():
        if not c.unique or _array_of(path) is None:
            continue
        values = list(dict.fromkeys(narrowed.get(path, c.values)))
        if kinds[path] == "integer":
            values = [int(v) for v in values]
            pairs = sorted((str(v).encode(), v) for v in values)
        else:
            pairs = sorted((_dump(v)[1:-1], v) for v in values)
        out.append(UniqueValues(path, _array_of(path), tuple(p for p, _ in pairs), tuple(v for _, v in pairs)))
    return tuple(out)


# -- "no value twice": a byte-level JSON path tracker over the output -----------------------------------------


@dataclass
class _Frame:
    kind: str  # "obj" | "arr"
    path: str
    key: str | None = None
    expect: str = "start"  # obj: start/key/colon/value/comma; arr: start/value/comma


@dataclass
class _UniqueState:
    rule: UniqueValues
    used: set[Any] = field(default_factory=set)
    elements: int = 0


class UniqueTracker:
    """Follows the JSON the decoder emits, byte by byte, and says whether it can still be completed without
    repeating a value of a unique choice. The grammar guarantees well-formed compact JSON; this only adds what a
    grammar cannot: values already used are unavailable, and a list cannot open more elements than values left.
    """

    def __init__(self, rules: tuple[UniqueValues, ...]) -> None:
        self.states = [_UniqueState(r) for r in rules]
        self.stack: list[_Frame] = []
        self.in_str = False
        self.escape = False
        self.buf = bytearray()
        self.str_is_key = False
        self.scalar: bytearray | None = None
        self.target: _UniqueState | None = None

    def clone(self) -> UniqueTracker:
        other = copy.copy(self)
        other.states = [_UniqueState(s.rule, set(s.used), s.elements) for s in self.states]
        other.stack = [copy.copy(f) for f in self.stack]
        other.buf = bytearray(self.buf)
        other.scalar = None if self.scalar is None else bytearray(self.scalar)
        if self.target is not None:
            other.target = other.states[self.states.index(self.target)]
        return other

    def feed(self, data: bytes) -> bool:
        """Advance over ``data``; False when the output can no longer stay unique."""
        for b in data:
            if not self._byte(b):
                return False
        if self.target is not None:  # a value is half-written: some unused value must still start with it
            prefix = bytes(self.buf if self.in_str else (self.scalar or b""))
            return self._available(self.target, prefix)
        return True

    @staticmethod
    def _available(state: _UniqueState, prefix: bytes) -> bool:
        enc = state.rule.encoded
        i = bisect.bisect_left(enc, prefix)
        while i < len(enc) and enc[i].startswith(prefix):
            if state.rule.decoded[i] not in state.used:
                return True
            i += 1
        return False

    def _value_path(self) -> str:
        top = self.stack[-1] if self.stack else None
        if top is None:
            return ""
        if top.kind == "arr":
            return f"{top.path}[]"
        return f"{top.path}.{top.key}" if top.path else str(top.key)

    def _start_value(self) -> bool:
        """Called on the first byte of a value: count list elements, pick the rule the value falls under."""
        top = self.stack[-1] if self.stack else None
        path = self._value_path()
        if top is not None and top.kind == "arr" and top.expect == "start":
            top.expect = "value"
            if not self._count(top):
                return False
        self.target = next((st for st in self.states if st.rule.path == path), None)
        return True

    def _count(self, array: _Frame) -> bool:
        """One more element in ``array`` (at its first byte, or at the comma that promises it)."""
        for st in self.states:
            if st.rule.array == array.path:
                st.elements += 1
                if st.elements > len(st.rule.decoded):
                    return False
        return True

    def _end_value(self, raw: bytes) -> bool:
        st, self.target = self.target, None
        if st is None:
            return True
        try:
            value = json.loads(raw)
        except ValueError:
            return False
        if value in st.used:
            return False
        st.used.add(value)
        return True

    def _after_value(self) -> None:
        if self.stack:
            self.stack[-1].expect = "comma"

    def _byte(self, b: int) -> bool:
        if self.in_str:
            if self.escape:
                self.escape = False
                self.buf.append(b)
            elif b == 0x5C:  # backslash
                self.escape = True
                self.buf.append(b)
            elif b == 0x22:  # closing quote
                self.in_str = False
                if self.str_is_key:
                    self.stack[-1].key = json.loads(b'"' + bytes(self.buf) + b'"')
                    self.stack[-1].expect = "colon"
                else:
                    if not self._end_value(b'"' + bytes(self.buf) + b'"'):
                        return False
                    self._after_value()
            else:
                self.buf.append(b)
            return True
        if self.scalar is not None:
            if b in b",]} \t\r\n":
                raw, self.scalar = bytes(self.scalar), None
                if not self._end_value(raw):
                    return False
                self._after_value()
            else:
                self.scalar.append(b)
                return True
        if b in b" \t\r\n":
            return True
        top = self.stack[-1] if self.stack else None
        if top is not None and top.kind == "obj" and top.expect in ("start", "key"):
            if b == 0x22:
                self.in_str, self.str_is_key, self.buf = True, True, bytearray()
            elif b == 0x7D:  # }
                self.stack.pop()
                self._after_value()
            return True
        if top is not None and top.expect == "colon":
            top.expect = "value"
            return True
        if top is not None and top.expect == "comma":
            if b == 0x2C:
                top.expect = "key" if top.kind == "obj" else "value"
                if top.kind == "arr" and not self._count(top):
                    return False
            else:  # } or ]
                self.stack.pop()
                self._after_value()
            return True
        if top is not None and top.kind == "arr" and top.expect == "start" and b == 0x5D:
            self.stack.pop()
            self._after_value()
            return True
        # the first byte of a value
        if not self._start_value():
            return False
        path = self._value_path()
        if b == 0x7B:
            self.target = None
            self.stack.append(_Frame("obj", path))
        elif b == 0x5B:
            self.target = None
            self.stack.append(_Frame("arr", path))
        elif b == 0x22:
            self.in_str, self.str_is_key, self.buf = True, False, bytearray()
        else:
            self.scalar = bytearray([b])
        return True


# -- the provider ----------------------------------------------------------------------------------------------


def render_prompt(tokenizer: Any, messages: tuple[Message, ...]) -> tuple[str, bool]:
    """The prompt text, and whether it came from the tokenizer's chat template (else a ``role: content`` join
    ending with ``assistant:``)."""
    msgs = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), True
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:", False


@dataclass
class DecodeStats:
    """Counters since the provider was made: a forced token (fast-forwarded: the grammar allows only it) costs
    no sampling and shares its forward pass with the tokens around it. ``batches`` counts decoding runs (one per
    call when unbatched) and ``batched_calls`` the calls decoded together with another one."""

    calls: int = 0
    completion_tokens: int = 0
    sampled_tokens: int = 0
    forced_tokens: int = 0
    forward_passes: int = 0
    batches: int = 0
    batched_calls: int = 0
    largest_batch: int = 0
    model_seconds: float = 0.0  # forward passes
    prefill_seconds: float = 0.0  # the first forward pass of each batch (the whole prompts): part of model_seconds
    constraint_seconds: float = 0.0  # grammar masks, forced tokens, advancing the matcher
    sample_seconds: float = 0.0  # sampling (with the uniqueness check's rejections)


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any
    ll_tokenizer: Any | None = None
    context: int | None = None
    eos: frozenset[int] = frozenset()
    cache_arg: str = "past_key_values"  # transformers >= 5.x names the KV cache argument `cache`
    keep_arg: str | None = None  # the forward argument that computes logits for some positions only
    pad: int = 0  # the token id that fills the short rows of a batch (masked out: its value does not matter)
    quantization: dict[str, Any] | None = None


@dataclass
class _Job:
    """One ``complete`` call waiting for, or inside, a batch; the worker thread settles ``future`` on ``loop``."""

    request: CompletionRequest
    deadline: float | None
    cancel: threading.Event
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Completion]
    queued: float = field(default_factory=time.monotonic)


class _Seq:
    """One request being decoded: its tokens, constraint state and sampler. Every row of a batch is one, and
    decodes exactly as it would alone: its own matcher, uniqueness tracker, generator and stopping point."""

    def __init__(self, job: _Job, prompt: list[int], max_new: int, matcher: Any, tracker: UniqueTracker | None,
                 gen: Any, temperature: float, ignore_eos: bool) -> None:
        self.job = job
        self.prompt = prompt
        self.max_new = max_new
        self.matcher = matcher
        self.tracker = tracker
        self.gen = gen
        self.temperature = temperature
        self.ignore_eos = ignore_eos
        self.out: list[int] = []
        self.pending = list(prompt)  # tokens the model has not seen yet: fed together in the next forward pass
        self.seen = 0  # tokens of this row in the KV cache (its next position id)
        self.finished = False  # the output is complete (the grammar accepts it, or free text ended)
        self.done = False  # nothing more to generate
        self.failed = False  # its call got an error: it leaves the batch

    def advance(self, stats: DecodeStats, fast_forward: bool, ll_tok: Any) -> bool:
        """Take the tokens the grammar forces; True when the next token needs the model, False when done."""
        matcher = self.matcher
        while not self.done:
            if matcher is not None:
                if matcher.is_stopped():
                    self.finished = self.done = True
                    break
                t0 = time.perf_counter()
                forced = matcher.compute_ff_tokens()[: self.max_new - len(self.out)] if fast_forward else []
                stats.constraint_seconds += time.perf_counter() - t0
                if forced:  # tokens the grammar forces (keys, punctuation): no sampling, one forward for all
                    if self.tracker is not None and not self.tracker.feed(ll_tok.decode_bytes(forced)):
                        raise ProviderError("constrained decoding reached a dead end: the grammar forces "
                                            "a repeated value")
                    if not matcher.consume_tokens(forced):
                        raise ProviderError(f"constrained decoding failed: {matcher.get_error()}")
                    self.out += forced
                    self.pending += forced
                    stats.forced_tokens += len(forced)
                    stats.constraint_seconds += time.perf_counter() - t0
                    continue
            if len(self.out) >= self.max_new:
                self.finished = matcher is None or matcher.is_accepting()
                self.done = True
                break
            return True
        return False

    def feed(self, logits: Any, stats: DecodeStats, eos: frozenset[int], ll_tok: Any) -> None:
        """Mask ``logits`` (this row's, after its pending tokens), pick the next token and take it."""
        matcher = self.matcher
        t1 = time.perf_counter()
        if matcher is not None:
            bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            n = min(len(logits), ll_tok.vocab_size)
            allowed = np.zeros(len(logits), dtype=bool)
            allowed[:n] = bits[:n].astype(bool)
            import torch

            logits.masked_fill_(~torch.from_numpy(allowed), -math.inf)
        elif self.ignore_eos:
            logits[list(eos)] = -math.inf
        t2 = time.perf_counter()
        token, self.tracker = TransformersProvider._pick(logits, self.temperature, self.gen, self.tracker, ll_tok)
        t3 = time.perf_counter()
        stats.constraint_seconds += t2 - t1
        stats.sample_seconds += t3 - t2
        self.pending = []
        if token in eos and (matcher is None or matcher.is_accepting()):
            self.finished = self.done = True
            return
        if matcher is not None and not matcher.consume_token(token):
            raise ProviderError(f"constrained decoding failed: {matcher.get_error()}")
        stats.constraint_seconds += time.perf_counter() - t3
        stats.sampled_tokens += 1
        self.out.append(token)
        self.pending = [token]


_QUANTIZE = ("none", "int8")


class TransformersProvider:
    """A local causal LM through transformers, with llguidance-constrained structured output.

    ``model`` is a folder (config.json, weights, tokenizer files) or a model name already in the local Hugging
    Face cache (nothing is downloaded). The model loads on the first ``complete`` (or ``load()``), in a worker
    thread. ``seed`` is the default sampling seed; ``max_string_length``/``max_items`` the caps for schema fields
    that declare no bound (shrunk to fit ``max_tokens``). ``fast_forward`` feeds the tokens a grammar forces
    (keys, punctuation) in one forward pass instead of one pass each.

    ``max_new_tokens`` (the resource's ``max_tokens``) bounds every call that sets no ``max_tokens`` of its own;
    when neither is set, a schema whose own bounds (``maxLength``, ``maxItems``) need more than the default 256
    tokens gets the room they need, within the model's context.

    Calls that arrive together (within ``batch_window`` seconds of the first, up to ``max_batch``; 1 disables
    batching) are decoded in one batch: the prompts share every forward pass (each row padded, masked and given
    its own position ids), while each row keeps its own grammar, uniqueness tracker, sampler, deadline and
    stopping point, so that its output is the one it gets alone. ``quantize: int8`` applies dynamic int8
    quantization (``torch.ao.quantization.quantize_dynamic``) to every linear layer; CPU only.
    """

    name = PROVIDER_NAME

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "auto",
        max_new_tokens: int | None = None,
        seed: int | None = None,
        max_string_length: int = DEFAULT_MAX_STRING_LENGTH,
        max_items: int = DEFAULT_MAX_ITEMS,
        trust_remote_code: bool = False,
        fast_forward: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_window: float = DEFAULT_BATCH_WINDOW,
        quantize: str | None = None,
        timeout: float | None = None,
        temperature: float | None = None,
        max_retries: int = 0,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ValueError("the transformers provider needs 'model': a model folder or a cached model name")
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        if max_new_tokens is not None and int(max_new_tokens) < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if int(max_batch) < 1:
            raise ValueError("max_batch must be at least 1 (1: no batching)")
        if float(batch_window) < 0:
            raise ValueError("batch_window must not be negative")
        quantize = "none" if quantize in (None, False) else str(quantize).lower()
        if quantize not in _QUANTIZE:
            raise ValueError(f"unknown quantize {quantize!r}; use one of {', '.join(_QUANTIZE)}")
        if quantize == "int8" and (device != "cpu" or dtype not in ("auto", "float32")):
            raise ValueError("quantize: int8 runs on CPU in float32 only (device: cpu, dtype: auto or float32)")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else int(max_new_tokens)
        self._max_tokens_set = max_new_tokens is not None
        self.seed = seed
        self.max_string_length = int(max_string_length)
        self.max_items = int(max_items)
        self.trust_remote_code = bool(trust_remote_code)
        self.fast_forward = bool(fast_forward)
        self.max_batch = int(max_batch)
        self.batch_window = float(batch_window)
        self.quantize = quantize
        self.timeout = timeout  # defaults for requests that leave them unset
        self.temperature = temperature
        self.max_retries = int(max_retries)  # accepted for the llm resource; constrained output needs no re-asks
        self.stats = DecodeStats()
        self._loaded: _Loaded | None = None
        self._tokenizer: Any = None  # loaded alone by count_tokens, before the model is needed
        self._load_lock = threading.Lock()
        self._tok_lock = threading.Lock()  # a fast tokenizer is not to be used by two threads at once
        self._plans: dict[tuple[Any, ...], tuple[ConstraintPlan, Any]] = {}
        # one worker thread decodes, a batch at a time (calls compete for the same cores); it runs in the
        # default executor of the loop whose call found no decoding under way, and returns when no call waits
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._draining = False
        self._drainer: Any = None  # that executor's future (kept referenced)

    # where the model is --------------------------------------------------------------------------------------

    def _source(self) -> str:
        """The folder or cached name to load; raises DataError saying where to put the model."""
        path = Path(os.path.expanduser(self.model))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise DataError("not a transformers model folder: config.json is missing", path,
                                hint="Save the model with model.save_pretrained(folder) and "
                                     "tokenizer.save_pretrained(folder)")
            return str(path)
        if _REPO_ID.fullmatch(self.model) and not self.model.startswith("."):
            try:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(self.model, "config.json")
            except Exception:  # not a valid repo id after all
                hit = None
            if isinstance(hit, str):
                return self.model
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
        raise DataError(
            f"local model {self.model!r} not found: no model folder at {path.resolve()} and no such model in "
            f"the Hugging Face cache ({cache})", path,
            hint="Put a transformers model folder (config.json, weights, tokenizer files) at that path, or "
                 "download it once with `huggingface-cli download NAME` (it is then found offline)")

    def check_model(self) -> None:
        """Raise DataError now, without loading anything, when the model is not where it should be."""
        self._source()

    def _load_tokenizer(self, source: str) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=True,
                                                 trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot load the local model's tokenizer: {exc}", source,
                            hint="The folder must hold a causal LM and its tokenizer as saved by "
                                 "save_pretrained") from None

    def tokenizer(self) -> Any:
        """The model's tokenizer (loaded alone, without the model, when the model is not loaded yet)."""
        if self._loaded is not None:
            return self._loaded.tokenizer
        with self._load_lock:
            if self._loaded is not None:
                return self._loaded.tokenizer
            if self._tokenizer is None:
                self._tokenizer = self._load_tokenizer(self._source())
            return self._tokenizer

    def count_tokens(self, text: str) -> int:
        """How many tokens of this model's tokenizer ``text`` takes (no special tokens), for token budgets."""
        tokenizer = self.tokenizer()
        with self._tok_lock:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def warm(self) -> None:
        """Called when the ``llm`` resource loads (in a worker thread): load the weights now, so that the first
        request's timeout is not spent loading them and `llmrec serve` is ready only once they are in memory."""
        self.load()

    def load(self) -> None:
        """Load the tokenizer and model (once; thread-safe). Raises DataError when the model is missing."""
        if self._loaded is not None:
            return
        with self._load_lock:
            if self._loaded is not None:
                return
            source = self._source()
            import torch
            from transformers import AutoModelForCausalLM

            tokenizer = self._tokenizer if self._tokenizer is not None else self._load_tokenizer(source)
            try:
                dtype = torch.float32 if self.dtype == "auto" and self.device == "cpu" else (
                    "auto" if self.dtype == "auto" else getattr(torch, self.dtype))
                model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype,
                                                             trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot load the local model: {exc}", source,
                                hint="The folder must hold a causal LM and its tokenizer as saved by "
                                     "save_pretrained") from None
            model.to(self.device).eval()
            report = quantize_int8(model) if self.quantize == "int8" else None
            eos = set()
            for ids in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
                eos.update(ids if isinstance(ids, list) else [] if ids is None else [ids])
            cfg = model.config
            context = next((getattr(cfg, a) for a in ("max_position_embeddings", "n_positions", "n_ctx")
                            if isinstance(getattr(cfg, a, None), int)), None)
            params = inspect.signature(model.forward).parameters
            cache_arg = "cache" if "cache" in params else "past_key_values"
            keep_arg = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in params), None)
            pad = next((t for t in (tokenizer.pad_token_id, min(eos) if eos else None, 0) if t is not None), 0)
            self._loaded = _Loaded(tokenizer, model, None, context, frozenset(eos), cache_arg, keep_arg, int(pad),
                                   report)
            try:  # ~1 s for a large vocabulary: done here so that the first structured call does not pay it
                self._ll_tokenizer()
            except ProviderError:  # only structured output needs it; that path reports it
                pass

    @property
    def quantization(self) -> dict[str, Any] | None:
        """What ``quantize: int8`` did to the loaded model (layers, bytes before and after); None otherwise."""
        return None if self._loaded is None else self._loaded.quantization

    def _ll_tokenizer(self) -> Any:
        loaded = self._loaded
        assert loaded is not None
        if loaded.ll_tokenizer is None:
            import llguidance.hf

            if not loaded.eos:
                raise ProviderError(f"model {self.model!r}: the tokenizer has no end-of-sequence token, which "
                                    "constrained decoding needs")
            try:
                loaded.ll_tokenizer = llguidance.hf.from_tokenizer(loaded.tokenizer, eos_token=sorted(loaded.eos))
            except ValueError as exc:
                raise ProviderError(f"model {self.model!r}: constrained decoding needs a fast (Rust) "
                                    f"tokenizer: {exc}") from None
        return loaded.ll_tokenizer

    # constraints ---------------------------------------------------------------------------------------------

    def plan(self, request: CompletionRequest) -> tuple[ConstraintPlan, Any]:
        """The constraint plan and a fresh llguidance matcher for ``request`` (plans are cached). When neither
        the request nor the provider's config set ``max_tokens``, the plan may need more than the default
        (``max_bytes``): the schema's own bounds decide."""
        import llguidance

        assert request.schema is not None
        max_new = request.max_tokens or self.max_new_tokens
        grow = request.max_tokens is None and not self._max_tokens_set
        key = (request.schema, request.choices, max_new, grow)
        hit = self._plans.get(key)
        if hit is None:
            plan = compile_constraints(request.schema, request.choices, max_new, grow=grow,
                                       max_string_length=self.max_string_length, max_items=self.max_items)
            ll_tok = self._ll_tokenizer()
            grammar = llguidance.LLMatcher.grammar_from_json_schema(plan.json_schema, overrides=_JSON_OPTIONS)
            bad, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, ll_tok)
            if bad:
                raise ProviderError(f"the output schema cannot be constrained: {messages[0]}")
            matcher = llguidance.LLMatcher(ll_tok, grammar, log_level=0)
            if matcher.is_error():
                raise ProviderError(f"the output schema cannot be constrained: {matcher.get_error()}")
            hit = self._plans[key] = (plan, matcher)
            if len(self._plans) > 64:
                self._plans.pop(next(iter(self._plans)))
        return hit[0], hit[1].deep_copy()

    # generation ----------------------------------------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        if request.timeout is None and self.timeout is not None:
            request = replace(request, timeout=self.timeout)
        deadline = None if request.timeout is None else time.monotonic() + float(request.timeout)
        loop = asyncio.get_running_loop()
        job = _Job(request, deadline, threading.Event(), loop, loop.create_future())
        with self._cond:
            self._queue.append(job)
            lead = not self._draining
            self._draining = True
            self._cond.notify_all()
        if lead:  # no decoding is under way: this call starts it, in a worker thread of its loop
            self._drainer = loop.run_in_executor(None, self._drain)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancel.set()  # the worker drops it at its next token
            raise

    def _drain(self) -> None:
        """Decode until no call waits: take the calls waiting (up to max_batch, waiting batch_window after the
        first arrived for more to come), decode them together, repeat."""
        while True:
            with self._cond:
                if not self._queue:
                    self._draining = False
                    return
                if self.max_batch > 1:
                    end = self._queue[0].queued + self.batch_window
                    while len(self._queue) < self.max_batch and (left := end - time.monotonic()) > 0:
                        self._cond.wait(left)
                jobs = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                self._run(jobs)
            except Exception as exc:  # pragma: no cover - a bug: every call of the batch hears of it
                for job in jobs:
                    _settle(job, error=exc)

    def _expire_queued(self) -> None:
        """Fail the waiting calls whose deadline passed or whose caller gave up (checked between tokens)."""
        with self._cond:
            if not self._queue:
                return
            dead = [j for j in self._queue if j.cancel.is_set() or (j.deadline is not None
                                                                    and time.monotonic() > j.deadline)]
            if dead:
                self._queue[:] = [j for j in self._queue if j not in dead]
        for job in dead:
            _settle(job, error=self._time_error(job, 0))

    def _time_error(self, job: _Job, done: int) -> NodeTimeoutError:
        timeout = job.request.timeout
        return NodeTimeoutError(f"local model {self.model!r} did not finish within {timeout:g} s ({done} tokens "
                                "generated)" if timeout is not None and not job.cancel.is_set() else
                                f"local model {self.model!r}: generation cancelled after {done} tokens")

    @staticmethod
    def _late(job: _Job) -> bool:
        return job.cancel.is_set() or (job.deadline is not None and time.monotonic() > job.deadline)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            self.load()
        except Exception as exc:
            for job in jobs:
                _settle(job, error=exc)
            return
        seqs = []
        for job in jobs:
            try:
                if self._late(job):
                    raise self._time_error(job, 0)
                seqs.append(self._start(job))
            except Exception as exc:
                _settle(job, error=exc)
        if seqs:
            self._decode(seqs)

    def _start(self, job: _Job) -> _Seq:
        """A request made ready to decode: its prompt tokens, budget, constraints and sampler."""
        import torch

        request = job.request
        loaded = self._loaded
        assert loaded is not None
        tokenizer = loaded.tokenizer
        max_new = request.max_tokens or self.max_new_tokens
        if request.choices and request.schema is None:
            raise ProviderError("choices need an output schema: without one the output is free text")
        matcher = tracker = None
        if request.schema is not None:
            plan, matcher = self.plan(request)
            max_new = max(max_new, plan.max_bytes + 1)  # more than the default only when the schema needs it
            if plan.unique:
                tracker = UniqueTracker(plan.unique)
        text, templated = render_prompt(tokenizer, request.messages)
        with self._tok_lock:
            prompt = list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
        if not prompt:
            prompt = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else min(loaded.eos)]
        if loaded.context is not None and len(prompt) + max_new > loaded.context:
            raise ProviderError(f"the prompt is {len(prompt)} tokens; with max_tokens {max_new} it exceeds the "
                                f"context of {self.model!r} ({loaded.context} tokens)")
        seed = request.seed if request.seed is not None else self.seed
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
        temperature = float((request.temperature if request.temperature is not None else self.temperature) or 0.0)
        ignore_eos = bool(request.extra.get("ignore_eos"))  # free text of exactly max_tokens (benchmarks)
        self.stats.calls += 1
        return _Seq(job, prompt, max_new, matcher, tracker, gen, temperature, ignore_eos)

    def _decode(self, seqs: list[_Seq]) -> None:
        """Decode ``seqs`` together; settle each one's call as soon as it is done (or fails, or times out).

        Row i of the KV cache is ``rows[i]``. Each forward pass feeds every row its pending tokens (one sampled
        token, or more when the grammar forced some, or the whole prompt at first), right-padded to the longest;
        the attention mask keeps the padding out of every row's attention and position ids count each row's own
        tokens, so a row attends to exactly what it would alone. Finished rows leave the cache."""
        import torch

        loaded = self._loaded
        assert loaded is not None
        model, eos, ll_tok = loaded.model, loaded.eos, loaded.ll_tokenizer
        stats = self.stats
        batched = len(seqs) > 1  # a lone call runs exactly as it always has: no mask, no position ids
        stats.batches += 1
        stats.largest_batch = max(stats.largest_batch, len(seqs))
        if batched:
            stats.batched_calls += len(seqs)
        rows = list(seqs)
        past = None
        mask = None  # (rows, cache columns): 1 where a column holds one of the row's own tokens
        first = True
        with torch.inference_mode():
            while rows:
                self._expire_queued()
                live = []
                for s in rows:
                    if s.failed:
                        continue
                    try:
                        if s.advance(stats, self.fast_forward, ll_tok):
                            if self._late(s.job):
                                raise self._time_error(s.job, len(s.out))
                            live.append(s)
                        else:
                            _settle(s.job, result=self._completion(s, loaded))
                    except Exception as exc:
                        _settle(s.job, error=exc)
                if not live:
                    break
                if len(live) < len(rows) and past is not None:
                    keep = torch.tensor([i for i, s in enumerate(rows) if s in live], device=model.device)
                    past = _select_rows(past, keep)
                    mask = mask[keep] if mask is not None else None
                rows = live
                lengths = [len(s.pending) for s in rows]
                width = max(lengths)
                kwargs: dict[str, Any] = {loaded.cache_arg: past}
                if not batched:
                    ids = torch.tensor([rows[0].pending], device=model.device)
                    cols = [width - 1]
                    if loaded.keep_arg is not None:
                        kwargs[loaded.keep_arg] = 1
                        cols = [0]
                else:
                    ids = torch.tensor([s.pending + [loaded.pad] * (width - n) for s, n in zip(rows, lengths)],
                                       device=model.device)
                    new = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], device=model.device)
                    mask = new if mask is None else torch.cat([mask, new], dim=1)
                    kwargs["attention_mask"] = mask
                    kwargs["position_ids"] = torch.tensor(
                        [[s.seen + min(j, n - 1) for j in range(width)] for s, n in zip(rows, lengths)],
                        device=model.device)
                    cols = [n - 1 for n in lengths]
                    if loaded.keep_arg is not None:  # logits only where some row's next token is
                        wanted = sorted(set(cols))
                        kwargs[loaded.keep_arg] = torch.tensor(wanted, device=model.device)
                        cols = [wanted.index(c) for c in cols]
                t0 = time.perf_counter()
                result = model(input_ids=ids, use_cache=True, **kwargs)
                past = getattr(result, loaded.cache_arg, None)
                logits = result.logits.float().cpu()
                t1 = time.perf_counter()
                stats.forward_passes += 1
                stats.model_seconds += t1 - t0
                if first:
                    stats.prefill_seconds += t1 - t0
                    first = False
                for i, (s, n) in enumerate(zip(rows, lengths)):
                    s.seen += n
                    try:
                        s.feed(logits[i, cols[i], :].clone(), stats, eos, ll_tok)
                    except Exception as exc:  # this row only: it leaves the batch at the next step
                        s.failed = True
                        _settle(s.job, error=exc)

    def _completion(self, s: _Seq, loaded: _Loaded) -> Completion:
        """The finished row's answer (free text, or the constrained JSON parsed into the schema)."""
        request = s.job.request
        self.stats.completion_tokens += len(s.out)
        usage = Usage(prompt_tokens=len(s.prompt), completion_tokens=len(s.out))
        if request.schema is None:
            with self._tok_lock:
                text = loaded.tokenizer.decode(s.out, skip_special_tokens=True)
            return Completion(text, None, usage, 1, self.model, PROVIDER_NAME)
        raw = loaded.ll_tokenizer.decode_bytes(s.out).decode("utf-8", errors="replace")
        if not s.finished:  # cannot happen when the plan's bound holds; kept as a guard
            raise OutputValidationError(f"local model {self.model!r} hit max_tokens ({s.max_new}) before the "
                                        "JSON was complete", attempts=1, last_raw=raw)
        try:
            parsed = request.schema.model_validate_json(raw)
        except ValueError as exc:
            raise OutputValidationError(f"constrained output of {self.model!r} does not validate: {exc}",
                                        attempts=1, last_raw=raw) from None
        return Completion(raw, parsed, usage, 1, self.model, PROVIDER_NAME)

    @staticmethod
    def _pick(logits: Any, temperature: float, gen: Any, tracker: UniqueTracker | None,
              ll_tok: Any) -> tuple[int, UniqueTracker | None]:
        """Sample (or take the argmax of) ``logits``; with a tracker, reject tokens that would break uniqueness
        and sample again among the rest."""
        import torch

        while True:
            if not torch.isfinite(logits).any():
                raise ProviderError("constrained decoding reached a dead end: no token keeps the output valid")
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=gen).item())
            else:
                token = int(torch.argmax(logits).item())
            if tracker is None:
                return token, None
            trial = tracker.clone()
            if ll_tok.is_special_token(token) or trial.feed(ll_tok.decode_bytes([token])):
                return token, trial
            logits[token] = -math.inf

    async def close(self) -> None:
        with self._cond:
            waiting, self._queue[:] = list(self._queue), []
        for job in waiting:
            _settle(job, error=ProviderError(f"local model {self.model!r} was closed"))
        self._loaded = None
        self._tokenizer = None
        self._plans.clear()


def _settle(job: _Job, result: Completion | None = None, error: BaseException | None = None) -> None:
    """Hand ``job``'s outcome to its event loop (nothing when the caller gave up or the loop is gone)."""

    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits for the answer
        pass


def _select_rows(past: Any, keep: Any) -> Any:
    """The KV cache with only the batch rows ``keep``."""
    if hasattr(past, "batch_select_indices"):
        past.batch_select_indices(keep)
        return past
    return tuple(tuple(t[keep] for t in layer) for layer in past)  # the legacy tuple-of-tuples cache


def quantize_int8(model: Any) -> dict[str, Any]:
    """Dynamic int8 quantization of every linear layer of ``model``, in place (CPU; weights int8, activations
    quantized on the fly). transformers' ``Conv1D`` (GPT-2 style ``x @ W + b``) is first turned into an
    equivalent ``nn.Linear`` so that it is quantized too. Returns what was done (layers, bytes before/after)."""
    import warnings

    import torch
    from torch import nn


    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()  # type: ignore[assignment,misc]

    before = model_bytes(model)
    converted = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if Conv1D and isinstance(child, Conv1D):
                nx, nf = child.weight.shape
                linear = nn.Linear(nx, nf)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(module, child_name, linear)
                converted += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    layers = [name for name, m in model.named_modules() if isinstance(m, DynamicQuantizedLinear)]
    return {"method": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8", "quantized_layers": len(layers),
            "conv1d_converted_to_linear": converted, "bytes_before": before, "bytes_after": model_bytes(model)}


def transformers_provider(**config: Any) -> TransformersProvider:
    """Provider factory, registered as ``transformers``: the ``llm`` resource's config (``model``; ``timeout``,
    ``temperature``, ``max_tokens`` and ``max_retries`` as defaults for requests; ``extra`` entries such as
    ``device``, ``dtype``, ``seed``, ``max_string_length``, ``max_items``, ``max_batch``, ``batch_window``,
    ``quantize``). Checks, without loading it, that the model is there (DataError saying where to put it)."""
    config = dict(config)
    config.pop("provider", None)
    if "max_tokens" in config:
        value = config.pop("max_tokens")
        if value is not None:
            config.setdefault("max_new_tokens", value)
    remote_only = sorted(k for k in ("api_base", "api_key") if config.pop(k, None) is not None)
    if remote_only:
        raise ValueError(f"{' and '.join(remote_only)} are for remote providers; the transformers provider runs "
                         "the model in this process")
    known = set(inspect.signature(TransformersProvider.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown transformers provider option(s): {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    provider = TransformersProvider(**config)
    provider.check_model()
    return provider


__all__ = ["ConstraintPlan", "DecodeStats", "TransformersProvider", "UniqueTracker", "compile_constraints",
           "render_prompt", "transformers_provider"]
