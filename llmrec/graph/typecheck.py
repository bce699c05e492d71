"""Static type checks between what a node produces and what its consumer declares.

Deliberately lenient where Python typing is ambiguous (Any, TypeVars, unparameterised generics): the check
exists to catch real wiring mistakes (a list where an int is expected, the wrong model), not to be mypy.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import types
import typing
from typing import Any, get_args, get_origin

from pydantic import BaseModel

_SEQUENCES = {list, tuple, set, frozenset, cabc.Sequence, cabc.Iterable, cabc.Collection, cabc.Set,
              cabc.MutableSequence}
_MAPPINGS = {dict, cabc.Mapping, cabc.MutableMapping}
UNKNOWN = object()  # an attribute whose type cannot be known statically


def _is_union(t: Any) -> bool:
    return get_origin(t) in (typing.Union, types.UnionType)


def _strip_annotated(t: Any) -> Any:
    while get_origin(t) is typing.Annotated:
        t = get_args(t)[0]
    return t


def type_name(t: Any) -> str:
    """A short readable name: ``list[ScoredItem]``, ``int | None``."""
    t = _strip_annotated(t)
    if t is Any:
        return "Any"
    if t is type(None) or t is None:
        return "None"
    if _is_union(t):
        return " | ".join(type_name(a) for a in get_args(t))
    origin = get_origin(t)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in get_args(t)) + "]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        args = get_args(t)
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    return getattr(t, "__name__", str(t))


def compatible(produced: Any, expected: Any) -> bool:
    """Whether a value statically typed ``produced`` may be given where ``expected`` is declared."""
    produced, expected = _strip_annotated(produced), _strip_annotated(expected)
    if produced is Any or expected is Any or produced is UNKNOWN or expected is object:
        return True
    if isinstance(produced, typing.TypeVar) or isinstance(expected, typing.TypeVar):
        return True
    if _is_union(produced):
        members = [a for a in get_args(produced) if a is not type(None)]  # None: a skipped `when` node
        return all(compatible(a, expected) for a in members) if members else True
    if _is_union(expected):
        return any(compatible(produced, a) for a in get_args(expected))
    if produced is type(None):
        return expected is type(None)
    p_origin, e_origin = get_origin(produced), get_origin(expected)
    if e_origin is typing.Literal:
        if p_origin is typing.Literal:
            return set(get_args(produced)) <= set(get_args(expected))
        return any(isinstance(v, produced) for v in get_args(expected)) if isinstance(produced, type) else True
    if p_origin is typing.Literal:
        return all(compatible(type(v), expected) for v in get_args(produced))
    e_base = e_origin or expected
    p_base = p_origin or produced
    if e_base in _SEQUENCES:
        if p_base not in _SEQUENCES and not (isinstance(p_base, type) and issubclass(p_base, (list, tuple))):
            return False
        e_args, p_args = get_args(expected), get_args(produced)
        if not e_args or not p_args:
            return True
        if p_base is tuple and len(p_args) == 2 and p_args[1] is Ellipsis:
            p_args = p_args[:1]
        if p_base is tuple and p_args:
            return all(compatible(a, e_args[0]) for a in p_args)
        return compatible(p_args[0], e_args[0])
    if e_base in _MAPPINGS:
        if p_base not in _MAPPINGS:
            return False
        e_args, p_args = get_args(expected), get_args(produced)
        if not e_args or not p_args:
            return True
        return compatible(p_args[0], e_args[0]) and compatible(p_args[1], e_args[1])
    if expected is float and produced in (int, float):
        return True
    if expected is int and produced is bool:
        return False
    if isinstance(p_base, type) and isinstance(e_base, type):
        try:
            return issubclass(p_base, e_base)
        except TypeError:
            return True
    return True


def attribute_type(t: Any, attr: str) -> Any:
    """The static type of ``value.attr`` for a value of type ``t``; UNKNOWN when it cannot be told,
    None when ``t`` certainly has no such attribute."""
    t = _strip_annotated(t)
    if t is Any or t is UNKNOWN:
        return UNKNOWN
    if _is_union(t):
        members = [a for a in get_args(t) if a is not type(None)]
        found = [attribute_type(a, attr) for a in members]
        if any(f is None for f in found):
            return None
        return found[0] if len(found) == 1 else UNKNOWN
    origin = get_origin(t) or t
    if isinstance(t, type) and issubclass(t, BaseModel):
        f = t.model_fields.get(attr)
        if f is not None:
            return f.annotation
        prop = getattr(t, attr, None)
        if isinstance(prop, property):
            return typing.get_type_hints(prop.fget).get("return", UNKNOWN) if prop.fget else UNKNOWN
        return None
    if dataclasses.is_dataclass(t) and isinstance(t, type):
        hints = typing.get_type_hints(t)
        if attr in hints:
            return hints[attr]
        return UNKNOWN if hasattr(t, attr) else None
    if origin in _MAPPINGS:
        args = get_args(t)
        return args[1] if args else UNKNOWN
    if origin in _SEQUENCES and attr.isdigit():
        args = get_args(t)
        return args[0] if args else UNKNOWN
    if origin in (int, float, str, bool, type(None)):
        return None
    return UNKNOWN


def attribute_names(t: Any) -> list[str]:
    """Known attribute names of ``t``, for did-you-mean."""
    t = _strip_annotated(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return list(t.model_fields)
    if isinstance(t, type) and dataclasses.is_dataclass(t):
        return [f.name for f in dataclasses.fields(t)]
    return []


_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "object": dict[str, Any],
}


def input_python_type(type_name_: str, items: str | None = None) -> Any:
    """The Python type of a request input declared as ``type: ...`` in the spec."""
    if type_name_ == "array":
        return list[_JSON_TYPES.get(items, Any)] if items else list[Any]  # type: ignore[misc]
    return _JSON_TYPES[type_name_]


def literal_type(value: Any) -> Any:
    """The static type of a literal YAML value."""
    if value is None:
        return type(None)
    if isinstance(value, list):
        return list[Any]
    if isinstance(value, dict):
        return dict[str, Any]
    return type(value)
