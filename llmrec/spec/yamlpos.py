"""Safe YAML loading that remembers where every key and value came from.

YAML is data: we compose the document with PyYAML's safe composer and build plain Python values ourselves,
so that no tag can construct an object, aliases cannot blow up (each expansion counts against a budget, and a
recursive alias is refused), duplicate keys are errors instead of silently winning, and every key and value
keeps its ``file:line:col``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import Location, SpecSyntaxError

#: Values (scalars, lists, mappings) one document may expand to, aliases included.
MAX_VALUES = 100_000
#: nesting levels a document may have (PyYAML composes recursively; specs are a few levels deep)
MAX_DEPTH = 64
#: Bytes one spec file may hold.
MAX_FILE_BYTES = 4 * 1024 * 1024

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}

Path_ = tuple[str | int, ...]


@dataclass
class Positions:
    """Where each value (and, for mapping entries, each key) of a loaded document is."""

    values: dict[Path_, Location] = field(default_factory=dict)
    keys: dict[Path_, Location] = field(default_factory=dict)
    #: for string scalars written on one line in plain style: offset of the text within the line
    plain: set[Path_] = field(default_factory=set)

    def value(self, path: Path_) -> Location | None:
        """The closest known position of ``path`` or, failing that, of its nearest ancestor."""
        p = tuple(path)
        while p:
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get(())

    def key(self, path: Path_) -> Location | None:
        """Where the key that holds ``path`` is written, falling back to the value's position."""
        p = tuple(path)
        while p:
            if p in self.keys:
                return self.keys[p]
            p = p[:-1]
        return self.values.get(())

    def update(self, other: Positions, prefix: Path_ = ()) -> None:
        for k, v in other.values.items():
            self.values[prefix + k] = v
        for k, v in other.keys.items():
            self.keys[prefix + k] = v
        self.plain.update(prefix + k for k in other.plain)


def _tag(tag: str) -> str:
    """Show a tag as it was written: ``!!python/object`` rather than ``tag:yaml.org,2002:python/object``."""
    prefix = "tag:yaml.org,2002:"
    return "!!" + tag[len(prefix):] if tag.startswith(prefix) else tag


def _loc(display: str, node: Node) -> Location:
    return Location(display, node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, display: str) -> None:
        self.display = display
        self.positions = Positions()
        self.constructor = SafeConstructor()
        self.count = 0
        self.stack: set[int] = set()

    def build(self, node: Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise SpecSyntaxError(
                f"the document expands to more than {MAX_VALUES:,} values",
                _loc(self.display, node),
                hint="Anchors and aliases that refer to each other multiply; write the values out instead.",
            )
        self.positions.values[path] = _loc(self.display, node)
        if len(path) > MAX_DEPTH:  # aliases of aliases can nest deeper than the text does
            raise SpecSyntaxError(f"the document nests more than {MAX_DEPTH} levels deep", _loc(self.display, node),
                                  hint="Specs are shallow data; flatten the structure.")
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.stack:
            raise SpecSyntaxError("an alias refers to a value that contains it", _loc(self.display, node))
        self.stack.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                self._check_tag(node, "tag:yaml.org,2002:seq")
                return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
            if isinstance(node, MappingNode):
                self._check_tag(node, "tag:yaml.org,2002:map")
                return self._mapping(node, path)
        finally:
            self.stack.discard(id(node))
        raise SpecSyntaxError(f"unsupported YAML node {type(node).__name__}", _loc(self.display, node))

    def _check_tag(self, node: Node, allowed: str) -> None:
        if node.tag != allowed:
            raise SpecSyntaxError(
                f"YAML tag '{_tag(node.tag)}' is not allowed",
                _loc(self.display, node),
                hint="Specs are plain data: remove the tag.",
            )

    def _scalar(self, node: ScalarNode, path: Path_) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise SpecSyntaxError(
                f"YAML tag '{_tag(node.tag)}' is not allowed",
                _loc(self.display, node),
                hint="Specs are plain data: remove the tag.",
            )
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value  # keep dates as written: specs are JSON-shaped
        try:
            value = self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:  # pragma: no cover - safe tags only reach here
            raise SpecSyntaxError(str(exc.problem), _loc(self.display, node)) from None
        except (ValueError, KeyError, TypeError, OverflowError):  # `!!float x`, `!!bool maybe`, `!!int x`
            raise SpecSyntaxError(f"'{node.value[:80]}' is not a valid {_tag(node.tag)[2:]}",
                                  _loc(self.display, node),
                                  hint=f"Remove the {_tag(node.tag)} tag, or write a valid value.") from None
        if isinstance(value, str) and node.style is None and node.start_mark.line == node.end_mark.line:
            self.positions.plain.add(path)
        if isinstance(value, (datetime.date, datetime.datetime)):
            return node.value
        return value

    def _mapping(self, node: MappingNode, path: Path_) -> dict[str, Any]:
        written = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        try:
            self.constructor.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        except ConstructorError as exc:
            raise SpecSyntaxError(str(exc.problem), _loc(self.display, node)) from None
        result: dict[str, Any] = {}
        merged = len(node.value) - written  # flatten_mapping puts merged pairs first; written keys override them
        from_merge: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            if not isinstance(key_node, ScalarNode):
                raise SpecSyntaxError("mapping keys must be plain strings", _loc(self.display, key_node))
            key = self._scalar(key_node, path + ("<key>",))
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SpecSyntaxError("mapping keys must be plain strings", _loc(self.display, key_node))
            key = str(key)
            if key in from_merge or (index < merged and key in result):
                from_merge.discard(key)
                result.pop(key, None)
            elif key in result:
                first = self.positions.keys[path + (key,)]
                raise SpecSyntaxError(
                    f"duplicate key '{key}' (first defined at line {first.line})",
                    _loc(self.display, key_node),
                    hint="Remove one of them: YAML would silently keep the last.",
                )
            if index < merged:
                from_merge.add(key)
            self.positions.keys[path + (key,)] = _loc(self.display, key_node)
            result[key] = self.build(value_node, path + (key,))
        self.positions.plain.discard(path + ("<key>",))
        return result


def _check_depth(text: str, display: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before composing (PyYAML's composer recurses per level), from the
    event stream, which is parsed iteratively."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise SpecSyntaxError(f"the document nests more than {MAX_DEPTH} levels deep",
                                      Location(display, mark.line + 1, mark.column + 1),
                                      hint="Specs are shallow data; flatten the structure.")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _reader_location(exc: yaml.reader.ReaderError, text: str, display: str) -> Location:
    position = max(int(exc.position), 0)
    line = text.count("\n", 0, position) + 1
    return Location(display, line, position - (text.rfind("\n", 0, position) + 1) + 1)


def load_yaml_text(text: str, display: str) -> tuple[Any, Positions]:
    """Parse one YAML document held in ``text``; ``display`` names it in error messages."""
    try:
        _check_depth(text, display)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a control character: say where, on one line
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise SpecSyntaxError(f"YAML does not allow the control character U+{ord(char):04X}",
                              _reader_location(exc, text, display),
                              hint="Remove it (or write it as an escape inside double quotes: \"\\x01\").") from None
    except RecursionError:  # pragma: no cover - _check_depth refuses deep documents first
        raise SpecSyntaxError("the document nests too deep", Location(display, 1, 1)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(display, mark.line + 1, mark.column + 1) if mark else Location(display)
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{exc.context}: {message}" if "expected" not in message else f"{message} ({exc.context})"
        hint = None
        lines = text.splitlines()
        line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
        if "flow" in str(exc.context or "") and "${" in line[: mark.column + 1]:
            hint = 'Inside [...] or {...}, quote references: "${node}".'
        elif "'\\t'" in message:
            hint = "Indent with spaces, not tabs."
        raise SpecSyntaxError(f"YAML syntax error: {message}", loc, hint=hint) from None
    except yaml.YAMLError as exc:
        raise SpecSyntaxError(f"YAML error: {exc}", Location(display)) from None
    if root is None:
        return None, Positions()
    builder = _Builder(display)
    value = builder.build(root, ())
    return value, builder.positions


def load_yaml_file(path: Path, display: str) -> tuple[Any, Positions]:
    """Read and parse ``path`` with every guard of :func:`load_yaml_text` plus size and encoding checks."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SpecSyntaxError("file not found", Location(display)) from None
    except OSError as exc:
        raise SpecSyntaxError(f"cannot read file: {exc.strerror}", Location(display)) from None
    if path.is_dir():
        raise SpecSyntaxError("is a directory, not a spec file", Location(display))
    if size > MAX_FILE_BYTES:
        raise SpecSyntaxError(f"file is {size:,} bytes; specs are limited to {MAX_FILE_BYTES:,}", Location(display))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecSyntaxError("file is not valid UTF-8", Location(display, line, col),
                              hint="Save the file as UTF-8.") from None
    return load_yaml_text(text, display)
