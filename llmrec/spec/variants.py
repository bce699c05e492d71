"""Spec variants: named alternatives of one spec, compared side by side by ``llmrec eval``.

A spec's ``variants`` section maps a variant name to dotted paths and the values that replace them::

    variants:
      more_popular:
        nodes.blend.config.weights: [0.5, 1.0]
      svd32:
        nodes.cf.config.factors: 32
        resources.model.config.model: openai/gpt-4o-mini

A variant is applied to the raw spec data (includes merged, ``${env:...}`` expanded), which is then validated and
built exactly like a spec file, so a bad value is reported like any spec error, at the variant entry that set it.
Every segment of a path but the last must exist in the spec; the last may be new when its parent is a mapping
(e.g. a config option left at its default). A list element is addressed by its index (``...weights.0``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from ..errors import Location, SpecError, SpecErrors, SpecValidationError
from ..graph.build import check_graph
from ..plugins import get_registry
from .loader import SpecDocument, load_spec, validate_sections
from .yamlpos import Path_

_MISSING = object()


class VariantError(SpecValidationError):
    """A variant that cannot be applied: unknown variant, or a path that does not exist in the spec."""


def variant_names(doc: SpecDocument) -> list[str]:
    """Declared variant names, in the order written."""
    block = doc.data.get("variants")
    return list(block) if isinstance(block, dict) else []


def _step(container: Any, segment: str) -> tuple[Any, Any]:
    """(key to use, child value or _MISSING) for ``segment`` in a mapping or list."""
    if isinstance(container, dict):
        return segment, container.get(segment, _MISSING)
    if isinstance(container, list):
        try:
            index = int(segment)
        except ValueError:
            return segment, _MISSING
        if -len(container) <= index < len(container):
            return index, container[index]
        return index, _MISSING
    return segment, _MISSING


def set_path(data: dict[str, Any], dotted: str) -> tuple[Path_, Any] | str:
    """Resolve ``dotted`` in ``data``: (the path as keys/indexes, the parent container) or a message saying
    which segment does not exist."""
    segments = dotted.split(".")
    if not dotted or any(s == "" for s in segments):
        return f"'{dotted}' is not a dotted path such as 'nodes.rank.config.k'"
    current: Any = data
    path: list[str | int] = []
    for i, segment in enumerate(segments):
        key, child = _step(current, segment)
        last = i == len(segments) - 1
        if child is _MISSING and not (last and isinstance(current, dict)):
            where = ".".join(segments[:i]) or "the spec"
            if isinstance(current, dict):
                have = ", ".join(map(str, list(current)[:12])) or "nothing"
                return f"'{where}' has no '{segment}' (it has: {have})"
            if isinstance(current, list):
                return f"'{where}' is a list of {len(current)}; '{segment}' is not an index in it"
            return f"'{where}' is a {type(current).__name__}, not a mapping, so it has no '{segment}'"
        path.append(key)
        if not last:
            current = child
    return tuple(path), current


def apply_variant(doc: SpecDocument, name: str) -> SpecDocument:
    """A new document: ``doc``'s data with variant ``name`` applied, validated again.

    Problems (an unknown variant, a path not in the spec, a value the spec language refuses) are in the
    returned document's ``errors``, each pointing at the variant entry in the spec file.
    """
    variants = doc.data.get("variants")
    declared = variants if isinstance(variants, dict) else {}
    if name not in declared:
        known = ", ".join(declared) or "none"
        where = doc.at(("variants",), key=True) if declared else Location(doc.display)
        return _with_error(doc, VariantError(f"spec has no variant '{name}' (declared variants: {known})", where))
    overrides = declared[name]
    if not isinstance(overrides, dict):
        return _with_error(doc, VariantError(
            f"variant '{name}' must map dotted paths to values, e.g. 'nodes.rank.config.k: 20'",
            doc.at(("variants", name))))
    return apply_overrides(doc, overrides, f"variant '{name}'", ("variants", name))


def _copy(doc: SpecDocument) -> SpecDocument:
    new = SpecDocument(path=doc.path, display=doc.display, data=copy.deepcopy(dict(doc.data)),
                       positions=copy.deepcopy(doc.positions), base_dirs=dict(doc.base_dirs))
    new.errors.extend(doc.errors)
    return new


def _with_error(doc: SpecDocument, error: SpecError) -> SpecDocument:
    new = _copy(doc)
    new.errors.append(error)
    return new


def apply_overrides(doc: SpecDocument, overrides: Mapping[str, Any], origin: str = "override",
                    entries: Path_ | None = None) -> SpecDocument:
    """A new document: ``doc``'s data with each dotted path in ``overrides`` set to its value, validated again.

    ``origin`` names where the overrides come from in messages (``variant 'fast'``, ``--judge-model``);
    ``entries`` is the path in ``doc`` of the mapping that wrote them (a variant), so errors about a new value
    point at the entry that set it. Without it, such errors point at the value it replaced."""
    new = _copy(doc)
    data, positions = new.data, new.positions
    for dotted, value in overrides.items():
        entry = (*entries, dotted) if entries is not None else None
        at = doc.at(entry, key=True) if entry is not None else Location(doc.display)
        resolved = set_path(data, str(dotted))
        if isinstance(resolved, str):
            new.errors.append(VariantError(f"{origin}: path '{dotted}' does not exist in the spec: {resolved}", at))
            continue
        path, parent = resolved
        if path[0] == "variants":
            new.errors.append(VariantError(f"{origin}: cannot change 'variants'", at))
            continue
        parent[path[-1]] = copy.deepcopy(value)
        if entry is None:
            continue  # errors about the new value keep the position of the value it replaced
        loc = doc.positions.value(entry)
        for table in (positions.values, positions.keys):
            for key in [k for k in table if k[: len(path)] == path]:
                del table[key]
        if loc is not None:
            positions.values[path] = loc
            positions.keys[path] = doc.at(entry, key=True)
        positions.plain.discard(path)
    if any(isinstance(e, VariantError) for e in new.errors):
        return new
    new.spec = validate_sections(new)
    return new


def check_variant(path: str | os.PathLike[str], variant: str | None,
                  display: str | None = None) -> tuple[Any, list[SpecError], list[SpecError]]:
    """Like :func:`llmrec.api.check`, for one variant of a spec (``None``: the spec as written)."""
    doc = load_spec(path, display)
    if doc.spec is not None and variant is not None:
        doc = apply_variant(doc, variant)
    if doc.spec is None:
        return None, list(doc.errors), []
    graph, errors, warnings = check_graph(doc, get_registry(doc.base_dir))
    return graph, list(errors), list(warnings)


def validate_variant(path: str | os.PathLike[str], variant: str | None, display: str | None = None) -> Any:
    """Load, apply ``variant``, build and check; raises :class:`~llmrec.errors.SpecErrors` listing every problem."""
    graph, errors, _ = check_variant(path, variant, display)
    if errors or graph is None:
        raise SpecErrors(errors)
    return graph


__all__ = ["VariantError", "apply_overrides", "apply_variant", "check_variant", "set_path", "validate_variant",
           "variant_names"]
