"""``${...}`` references and the value expressions built from them.

A value in a node's ``inputs`` (or in ``outputs``) is compiled once, at build time, into an expression:

- ``Literal``: plain data, passed as is;
- ``Ref``: a whole-string reference such as ``${inputs.k}``, ``${candidates}``, ``${candidates.items}`` or
  ``${resources.demo.catalog}``; its value keeps its type;
- ``Interp``: a string with references inside (``"user ${inputs.user_id}"``), always a string;
- ``ListExpr`` / ``DictExpr``: containers holding any of the above.

``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .yamlpos import Path_

_REF = re.compile(r"(?<!\$)\$\{([^}]*)\}")
_REF_BODY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class Ref:
    """A reference: ``root`` is 'inputs', 'resources', 'state' or a node id; ``attrs`` the dotted path after it."""

    root: str
    attrs: tuple[str, ...]
    text: str
    where: Path_ = ()
    offset: int = 0

    @property
    def node(self) -> str | None:
        return None if self.root in ("inputs", "resources", "state") else self.root

    def resolve(self, env: dict[str, Any]) -> Any:
        value = env[self.root]
        for a in self.attrs:
            if value is None:  # a node skipped by `when` yields None, and so does every field of it
                return None
            value = get_attr(value, a)
        return value


def get_attr(value: Any, name: str) -> Any:
    """``${x.name}``: a mapping key, a list index, or an attribute, in that order."""
    if isinstance(value, dict):
        return value[name]
    if isinstance(value, (list, tuple)) and name.isdigit():
        return value[int(name)]
    return getattr(value, name)


class BadRef(ValueError):
    def __init__(self, text: str, offset: int, where: Path_ = ()) -> None:
        super().__init__(text)
        self.text = text
        self.offset = offset
        self.where = where


def parse_ref(body: str, where: Path_ = (), offset: int = 0) -> Ref:
    body = body.strip()
    if not _REF_BODY.match(body):
        raise BadRef(body, offset)
    root, *attrs = body.split(".")
    return Ref(root, tuple(attrs), "${" + body + "}", where, offset)


@dataclass(frozen=True)
class Literal:
    value: Any

    def evaluate(self, env: dict[str, Any]) -> Any:
        return self.value

    def refs(self) -> list[Ref]:
        return []


@dataclass(frozen=True)
class RefExpr:
    ref: Ref

    def evaluate(self, env: dict[str, Any]) -> Any:
        return self.ref.resolve(env)

    def refs(self) -> list[Ref]:
        return [self.ref]


@dataclass(frozen=True)
class Interp:
    parts: tuple[str | Ref, ...]

    def evaluate(self, env: dict[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else _to_text(p.resolve(env)) for p in self.parts)

    def refs(self) -> list[Ref]:
        return [p for p in self.parts if isinstance(p, Ref)]


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Any, ...]

    def evaluate(self, env: dict[str, Any]) -> list[Any]:
        return [i.evaluate(env) for i in self.items]

    def refs(self) -> list[Ref]:
        return [r for i in self.items for r in i.refs()]


@dataclass(frozen=True)
class DictExpr:
    items: tuple[tuple[str, Any], ...]

    def evaluate(self, env: dict[str, Any]) -> dict[str, Any]:
        return {k: v.evaluate(env) for k, v in self.items}

    def refs(self) -> list[Ref]:
        return [r for _, v in self.items for r in v.refs()]


Expr = Literal | RefExpr | Interp | ListExpr | DictExpr


def _to_text(value: Any) -> str:
    return "" if value is None else str(value)


def compile_value(value: Any, where: Path_, errors: list[BadRef]) -> Expr:
    """Compile a YAML value into an expression; bad reference syntax is appended to ``errors``."""
    if isinstance(value, dict):
        return DictExpr(tuple((k, compile_value(v, where + (k,), errors)) for k, v in value.items()))
    if isinstance(value, list):
        return ListExpr(tuple(compile_value(v, where + (i,), errors) for i, v in enumerate(value)))
    if not isinstance(value, str) or "${" not in value:
        return Literal(value)
    parts: list[str | Ref] = []
    pos = 0
    for m in _REF.finditer(value):
        if m.start() > pos:
            parts.append(value[pos : m.start()])
        try:
            parts.append(parse_ref(m.group(1), where, m.start()))
        except BadRef as exc:
            errors.append(BadRef(m.group(0), m.start(), where))
            del exc
            parts.append(m.group(0))
        pos = m.end()
    if pos < len(value):
        tail = value[pos:]
        unclosed = re.search(r"(?<!\$)\$\{", tail)
        if unclosed:
            errors.append(BadRef(tail[unclosed.start():], pos + unclosed.start(), where))
        parts.append(tail)
    parts = [p.replace("$${", "${") if isinstance(p, str) else p for p in parts]
    if len(parts) == 1 and isinstance(parts[0], Ref):
        return RefExpr(parts[0])
    if not any(isinstance(p, Ref) for p in parts):
        return Literal("".join(p for p in parts if isinstance(p, str)))
    return Interp(tuple(parts))
