"""``llmrec replay LOG [SPEC]``: run logged requests again and say which answers changed, and why.

    report = replay_logs("logs/", "specs/shop.yaml")          # every logged request of that spec
    print("\\n".join(report.lines())); report.changed           # the requests whose answer differs

Each logged impression (:func:`llmrec.serve.logs.read_logs`) is run again through an ordinary
:class:`~llmrec.runtime.executor.Runtime` of the spec (of the variant it was served by, when it names one), with its
inputs and its request id as the run id, so that a seeded stochastic node (``rerank.explore`` with ``seed:``)
draws what it drew then. The answer's shown items (every output that is a list of items, found as the impression
log finds them) are compared with the logged ones: the ids in order, and each score within ``tolerance``
(relative and absolute). A request that now fails, or whose output is gone, has changed too.

For every logged provenance stamp the report says what differs from the spec's stamp now
(:func:`llmrec.serve.logs.stamp_changes`: ``file prompts/x.j2``, ``the spec``, ``model llm.model``...), when the
logged stamp's components are known (:func:`llmrec.eval.logged.known_stamps`: ``--stamps``, ``provenance*.json``
beside the log, or the stamps earlier replays kept in ``runs/provenance/``). Answers that changed although the
stamp is the same mean the spec is not deterministic for those requests (an unseeded ``rerank.explore``, a
remote model at a temperature above 0, a clock): the report says so, naming the stochastic nodes it saw.

``llmrec replay`` exits 0 when no answer changed and :data:`EXIT_CHANGED` (5) when some did.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import progress as progress_
from ..errors import LlmrecError, SpecErrors
from ..runtime.executor import Runtime
from ..serve.logs import Impression, Stamp, provenance_stamp, shown_lists, stamp_changes
from ..spec.variants import validate_variant, variant_names
from .defaults import EXIT_CHANGED, SHOW, TOLERANCE
from .logged import (
    SETTINGS,
    LogError,
    archive_stamp,
    changes_text,
    known_stamps,
    read_impressions,
    run_requests,
    stochastic_nodes,
)

#: ``llmrec replay``'s exit code when some answer changed (0: none did)


@dataclass
class Change:
    """One logged request whose answer is not what was logged."""

    request_id: str
    variant: str | None
    provenance: str  # the logged stamp's id
    detail: str  # what differs, in words

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "variant": self.variant, "provenance": self.provenance,
                "detail": self.detail}


@dataclass
class StampGroup:
    """The logged requests of one provenance stamp (and variant), and what differs from the spec's stamp now."""

    logged: str
    variant: str | None
    requests: int
    changed: int
    current: str | None  # the spec's stamp now (None: that variant could not be run)
    changes: list[str] | None  # stamp_changes(logged, now); None when the logged stamp's components are unknown
    text: str  # the changes in words, or why they are unknown
    stochastic: list[str] = field(default_factory=list)  # nodes that reported propensities when replayed
    unseeded: list[str] = field(default_factory=list)  # of those, the ones without a seed

    @property
    def same(self) -> bool:
        return self.current is not None and self.current == self.logged

    def to_dict(self) -> dict[str, Any]:
        return {"logged": self.logged, "variant": self.variant, "requests": self.requests, "changed": self.changed,
                "current": self.current, "same_stamp": self.same, "changes": self.changes,
                "stochastic_nodes": self.stochastic, "unseeded_nodes": self.unseeded}


@dataclass
class ReplayReport:
    """What :func:`replay_logs` found."""

    source: str
    spec: str
    path: str | None
    tolerance: float
    replayed: int
    changed: list[Change]
    groups: list[StampGroup]
    notes: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        return self.replayed - len(self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {"log": self.source, "spec": self.spec, "path": self.path, "tolerance": self.tolerance,
                "replayed": self.replayed, "changed": len(self.changed), "unchanged": self.unchanged,
                "stamps": [g.to_dict() for g in self.groups], "changes": [c.to_dict() for c in self.changed],
                "notes": list(self.notes)}

    def lines(self, show: int = SHOW) -> list[str]:
        """The report as text: the counts, one line per logged stamp, the first ``show`` changed requests."""
        n = len(self.changed)
        out = [f"replayed {self.replayed} logged requests of spec '{self.spec}' from {self.source}: {n} changed, "
               f"{self.unchanged} unchanged (scores compared within {self.tolerance:g})"]
        for g in self.groups:
            served = f"provenance {g.logged or 'unknown'}" + (f" (variant '{g.variant}')" if g.variant else "")
            head = f"{served}: {g.requests} requests, {g.changed} changed"
            if g.current is None:
                out.append(f"{head}; not replayed: {g.text}")
            elif g.same:
                line = f"{head}; the stamp is unchanged"
                if g.changed:
                    nodes = ", ".join(g.stochastic) if g.stochastic else ""
                    why = (f"; stochastic nodes: {nodes}" if nodes else "")
                    hint = (f" ({', '.join(g.unseeded)} {'has' if len(g.unseeded) == 1 else 'have'} no seed: give "
                            "it a `seed:` so a request replays to the same draw)" if g.unseeded else "")
                    line += (f", yet {g.changed} answers differ: the spec is not deterministic for these requests"
                             f"{why}{hint}")
                out.append(line)
            else:
                out.append(f"{head}; the spec's stamp is now {g.current}: {g.text}")
        if self.changed:
            out.append(f"changed requests{f' (first {show} of {n})' if n > show else ''}:")
            out += [f"  {c.request_id}: {c.detail}" for c in self.changed[:show]]
        out += self.notes
        return out


def _items_of(outputs: Mapping[str, Any]) -> dict[str, list[tuple[str, float | None]]]:
    return {name: [(str(i["id"]), i.get("score") if isinstance(i.get("score"), (int, float)) else None)
                   for i in items] for name, items in shown_lists(outputs)}


def compare_answer(imp: Impression, outputs: Mapping[str, Any], tolerance: float = TOLERANCE) -> str | None:
    """None when the answer (outputs as JSON data) shows what ``imp`` logged, else what differs, in words."""
    now = _items_of(outputs)
    logged: dict[str, list[tuple[str, float | None]]] = {}
    for it in sorted(imp.items, key=lambda i: (i.output, i.position)):
        logged.setdefault(it.output, []).append((it.id, it.score))
    for name, before in logged.items():
        after = now.get(name)
        if after is None:
            return f"output '{name}' shows no list of items any more"
        ids_before, ids_after = [i for i, _ in before], [i for i, _ in after]
        if ids_before != ids_after:
            first = next((k for k, (a, b) in enumerate(zip(ids_before, ids_after)) if a != b),
                         min(len(ids_before), len(ids_after)))
            differ = sum(1 for a, b in zip(ids_before, ids_after) if a != b) + abs(len(ids_before) - len(ids_after))
            was = ids_before[first] if first < len(ids_before) else "nothing"
            now_id = ids_after[first] if first < len(ids_after) else "nothing"
            return (f"{name}: position {first + 1} was {was}, now {now_id} ({differ} of "
                    f"{max(len(ids_before), len(ids_after))} positions differ)")
        for k, ((item, a), (_, b)) in enumerate(zip(before, after)):
            if a is not None and b is not None and not math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance):
                return f"{name}: the score of {item} (position {k + 1}) was {a:g}, now {b:g}"
            if (a is None) != (b is None):
                return f"{name}: {item} (position {k + 1}) {'has a score now' if a is None else 'lost its score'}"
    return None


def _unseeded(graph: Any, nodes: Iterable[str]) -> list[str]:
    """Of ``nodes``, those whose config has a ``seed`` that is not set."""
    out = []
    for n in nodes:
        node = graph.nodes.get(n)
        config = getattr(node, "config", None)
        if config is not None and "seed" in type(config).model_fields and getattr(config, "seed") is None:
            out.append(n)
    return out


async def areplay_logs(source: str | os.PathLike[str], spec: str | os.PathLike[str], *, limit: int | None = None,
                       since: float | None = None, tolerance: float = TOLERANCE, concurrency: int = 8,
                       stamps: Iterable[str | os.PathLike[str]] = (), progress: bool = False,
                       archive: bool = True, graph: Any = None) -> ReplayReport:
    """:func:`replay_logs`, for code already inside an event loop. ``graph``: the spec, already validated."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be at least 0, not {tolerance}")
    path = os.fspath(spec)
    base = graph
    if base is None:
        base = validate_variant(path, None, path)
    registry = base.registry
    read = read_impressions(source, registry, since=since)
    mine = [imp for imp in read.impressions if imp.spec == base.name]
    if not mine:
        names = Counter(imp.spec for imp in read.impressions)
        listed = ", ".join(f"'{n}' ({c})" for n, c in names.most_common(5))
        raise LogError(f"the log at {read.source} holds no requests of spec '{base.name}' (it holds: {listed}); "
                       "name the spec that served them")
    notes = read.notes()
    other = len(read.impressions) - len(mine)
    if other:
        notes.append(f"{other} logged requests of other specs were left out")
    if limit is not None and len(mine) > limit:
        notes.append(f"{len(mine) - limit} later requests were not replayed (--limit {limit})")
        mine = mine[:limit]
    known = known_stamps(source, registry, stamps)
    declared = variant_names(base.document)
    by_variant: dict[str | None, list[Impression]] = {}
    for imp in mine:
        by_variant.setdefault(imp.variant, []).append(imp)
    changed: list[Change] = []
    groups: list[StampGroup] = []
    order = {imp.request_id: i for i, imp in enumerate(mine)}
    for variant, imps in by_variant.items():
        counts = Counter(imp.provenance for imp in imps)
        if variant is not None and variant not in declared:
            why = (f"the spec declares no variant '{variant}' any more (declared: {', '.join(declared) or 'none'})")
            for imp in imps:
                changed.append(Change(imp.request_id, variant, imp.provenance, f"not replayed: {why}"))
            groups += [StampGroup(p, variant, n, n, None, None, why) for p, n in counts.items()]
            continue
        try:
            graph_v = base if variant is None else validate_variant(path, variant, path)
        except SpecErrors as exc:
            why = f"variant '{variant}' is invalid now: {exc.errors[0].format() if exc.errors else exc}"
            for imp in imps:
                changed.append(Change(imp.request_id, variant, imp.provenance, f"not replayed: {why}"))
            groups += [StampGroup(p, variant, n, n, None, None, why) for p, n in counts.items()]
            continue
        runtime = Runtime(graph_v)
        try:
            try:
                await runtime.start()
            except LlmrecError as exc:
                why = f"the spec cannot start: {exc}"
                for imp in imps:
                    changed.append(Change(imp.request_id, variant, imp.provenance, f"not replayed: {why}"))
                groups += [StampGroup(p, variant, n, n, None, None, why) for p, n in counts.items()]
                continue
            stamp: Stamp = provenance_stamp(graph_v, dict(runtime.resources))
            if archive:
                archive_stamp(stamp, settings=graph_v.document.data)
            requests = [(imp.request_id, imp.inputs) for imp in imps]
            label = base.name if variant is None else f"{base.name}[{variant}]"
            if progress:
                with progress_.step(f"replaying {len(requests)} requests of {label}", len(requests)) as advance:
                    results = await run_requests(runtime, requests, concurrency=concurrency, advance=advance)
            else:
                results = await run_requests(runtime, requests, concurrency=concurrency)
        finally:
            await runtime.close()
        per_stamp_changed: Counter[str] = Counter()
        stochastic: dict[str, set[str]] = {}
        for imp, result in zip(imps, results):
            if isinstance(result, Exception):
                detail = f"fails now: {result}"
            else:
                stochastic.setdefault(imp.provenance, set()).update(stochastic_nodes(result.trace))
                detail = compare_answer(imp, result.outputs_json(), tolerance)
            if detail is not None:
                changed.append(Change(imp.request_id, variant, imp.provenance, detail))
                per_stamp_changed[imp.provenance] += 1
        for prov, n in counts.items():
            if prov == stamp.id:
                text, changes = "the stamp is unchanged", []
            else:
                old = known.get(prov)
                changes = (stamp_changes({k: v for k, v in old.items() if k != SETTINGS}, stamp.to_dict())
                           if old is not None else None)
                text = changes_text(prov, stamp, known, graph_v.document.data)
            nodes = sorted(stochastic.get(prov, ()))
            groups.append(StampGroup(prov, variant, n, per_stamp_changed[prov], stamp.id, changes, text, nodes,
                                     _unseeded(graph_v, nodes)))
    changed.sort(key=lambda c: order.get(c.request_id, 0))
    return ReplayReport(read.source, base.name, path, tolerance, len(mine), changed, groups, notes)


def replay_logs(source: str | os.PathLike[str], spec: str | os.PathLike[str], **options: Any) -> ReplayReport:
    """Replay the logged requests of ``spec`` (a path) from ``source`` (a log folder, a ``.db`` file or
    ``NAME:WHERE``) and compare the answers with the logged ones; see the module doc. Options: ``limit`` (the
    first N requests), ``since`` (unix seconds), ``tolerance`` (for scores), ``concurrency``, ``stamps`` (files
    of provenance stamps), ``archive`` (keep the spec's stamp in ``runs/provenance/``; default True). Raises
    :class:`~llmrec.eval.logged.LogError` for a log that cannot be used and SpecErrors for an invalid spec."""
    return asyncio.run(areplay_logs(source, spec, **options))


def find_spec(spec_names: Sequence[str]) -> Path | None:
    """The spec file for a log whose requests name one spec: ``<name>.yaml`` (or ``.yml``) in the working folder
    or its ``specs/``."""
    if len(set(spec_names)) != 1:
        return None
    name = spec_names[0]
    for folder in (Path("."), Path("specs")):
        for ext in (".yaml", ".yml"):
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


__all__ = ["Change", "EXIT_CHANGED", "ReplayReport", "SHOW", "StampGroup", "TOLERANCE", "areplay_logs",
           "compare_answer", "find_spec", "replay_logs"]
