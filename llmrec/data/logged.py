"""Serve logs as a dataset: the impressions ``llmrec serve --log-dir`` wrote, and the feedback about them.

    data = logged_dataset("logs/", catalog, history=shop.train)     # or "sqlite:logs/serve.db", "NAME:WHERE"
    data.dataset.train_cases     # one EvalCase per logged impression with a positive label, its request's inputs
    print("\\n".join(data.summary.lines()))                          # what was used and what was skipped

``llmrec train SPEC --from-logs LOG`` trains a spec's trainable nodes on such a dataset instead of its dataset
resource (docs/feedback-training.md). The rules, in one place:

- **Labels.** An item of an impression is *relevant* when its feedback has a click, a purchase or a rating of at
  least ``relevant_rating``; its gain is the largest of its events' (:data:`DEFAULT_GAINS`: purchase 3, a good
  rating 2, click 1). A dismissal or a rating below ``relevant_rating`` makes the item a *negative*: it is not
  relevant even when it was also clicked (an explicit "no" outranks an implicit "yes"). Only items the
  impression showed are labelled; feedback about an item it did not show is counted (``not_shown``) and kept as
  an interaction only.
- **Cases.** Each impression with at least one relevant item becomes an :class:`EvalCase`: id = the request id,
  ``inputs`` = the request's logged inputs (so the spec's graph re-runs the logged request), ``relevant`` and
  ``gains`` as above, less the items the user already has in the training interactions (``known``: nothing new;
  they are the case's ``exclude``, as in every split). What the impression showed (positions, propensities)
  and its negatives stay beside it in :class:`LoggedCase` (``LoggedData.cases``), and the shown ids in
  ``Dataset.extra["shown"]``: ``llmrec train`` cuts a case's candidate lists to them (an item never shown is
  unobserved, not a negative). Training has no per-example weights, so inverse-propensity weighting is not
  applied (docs/feedback-training.md, *Limitations*).
- **Split, by time.** Cases are ordered by (impression time, request id); the latest ``test_fraction`` are
  ``test_cases``, never trained on. Of the earlier ones, each user's latest ``case_share`` (at least one) are
  ``train_cases``; the feedback of that user's earlier impressions joins the training interactions. So no case's
  own feedback is ever in ``train`` (the collection graph would otherwise see the answer: a clicked item would be
  "seen", and retrievers that drop seen items would drop it), as PROTOCOLS.md keeps held-out items out of
  training; and nothing that happened at or after the first test impression is a training interaction.
- **Interactions.** ``train`` = ``history`` (the interactions the server answered from; ``llmrec train`` passes
  the spec's dataset's training interactions) + the feedback events of the impressions kept as history: clicks,
  purchases and ratings (with their values) at their own times. Dismissals are *not* interactions: every
  consumer of :class:`~llmrec.data.Interactions` (popularity, affinity, "seen") reads an event as interest.
- **Skipped and reported** (:class:`LogSummary`): feedback about items not in the catalog, feedback no
  impression has (``unmatched``), request ids logged twice, unreadable records, impressions whose inputs do not
  fit (``accept``), impressions with feedback but nothing relevant, and, counted but used, impressions of
  other specs or of other versions of this one (provenance stamps that are not ``stamp``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec.data.catalog import Catalog, Interaction, Interactions
from llmrec.data.dataset import Dataset, EvalCase
from llmrec.errors import DataError
from llmrec.serve.logs import Feedback, Impression, ShownItem, parse_location, read_logs

#: the gain of an item by the best event about it (a rating counts when it is at least ``relevant_rating``)
DEFAULT_GAINS: Mapping[str, float] = {"purchase": 3.0, "rating": 2.0, "click": 1.0}
#: a rating at least this high is relevant, a lower one is a negative (PROTOCOLS.md's MovieLens rule)
RELEVANT_RATING = 4.0
#: the feedback types that become interactions, and the Interaction event each becomes
INTERACTION_EVENTS: Mapping[str, str] = {"click": "click", "purchase": "purchase", "rating": "rating"}
#: how many example ids a summary keeps of each kind of skipped item
EXAMPLES = 5


class LoggedDataError(DataError):
    """A log that cannot become a dataset: unreadable, empty, or without usable feedback (the message says
    which, and what to do)."""


@dataclass(frozen=True)
class LoggedCase:
    """One logged impression that became a case: what it showed and what the user did about it."""

    request_id: str
    ts: float
    user_id: str | None
    part: str  # "train" (a training case), "test" (held out) or "history" (its feedback became interactions)
    shown: tuple[ShownItem, ...]  # in order, with positions and the logging policy's propensities
    gains: Mapping[str, float]  # relevant shown items -> gain
    negatives: frozenset[str]  # shown items dismissed or rated low
    provenance: str
    spec: str
    degraded: bool

    @property
    def shown_ids(self) -> list[str]:
        """The ids shown, in the logged order (first occurrence when several outputs listed one)."""
        seen: set[str] = set()
        return [i.id for i in self.shown if not (i.id in seen or seen.add(i.id))]  # type: ignore[func-returns-value]


@dataclass
class LogSummary:
    """What a log held, what became training data and what was skipped (``lines()`` says it in words)."""

    source: str
    impressions: int = 0  # impressions read
    with_feedback: int = 0  # impressions with at least one feedback event
    events: int = 0  # feedback events joined to an impression
    train_cases: int = 0
    test_cases: int = 0
    history_impressions: int = 0  # impressions whose feedback became training interactions
    interactions: int = 0  # feedback events turned into training interactions
    history_events: int = 0  # interactions given as ``history`` (what the server answered from)
    users: int = 0  # distinct users of the cases and history impressions
    relevant: int = 0  # relevant (impression, item) labels over every case
    negatives: int = 0  # (impression, item) negatives: dismissals and low ratings
    dismissals: int = 0  # dismissal events (never interactions)
    not_in_catalog: int = 0  # events about an item the catalog does not have (skipped)
    not_in_catalog_ids: list[str] = field(default_factory=list)
    not_shown: int = 0  # events about an item their impression did not show (interactions only, never labels)
    nothing_relevant: int = 0  # impressions with feedback but no relevant item (not cases)
    known: int = 0  # relevant labels dropped: the user already had the item in the training interactions
    only_known: int = 0  # impressions whose every relevant item was such a one (not cases)
    unmatched: int = 0  # events whose request id no impression has (skipped)
    duplicates: int = 0  # request ids logged more than once (their feedback joined the first)
    unreadable: int = 0  # records that could not be read (torn lines, newer formats)
    refused: dict[str, int] = field(default_factory=dict)  # impressions ``accept`` refused, by reason
    other_specs: dict[str, int] = field(default_factory=dict)  # cases by spec name, for names that are not ``spec``
    other_versions: dict[str, int] = field(default_factory=dict)  # cases by stamp, for stamps that are not ``stamp``
    spec: str | None = None
    stamp: str | None = None
    split_time: float | None = None  # the first test impression's time
    case_share: float = 1.0
    test_fraction: float = 0.2
    digest: str = ""  # a content hash of every record used (what the artifacts were learned from)

    def lines(self) -> list[str]:
        """The summary in a few lines, for a person."""
        out = [f"logs {self.source} (digest {self.digest}): {self.impressions} impressions, {self.with_feedback} "
               f"with feedback ({self.events} events)",
               f"  used: {self.train_cases} training cases, {self.test_cases} held out (the latest "
               f"{self.test_fraction:.0%}), {self.history_impressions} impressions' feedback as {self.interactions} "
               f"training interactions (+ {self.history_events} of history); {self.users} users, "
               f"{self.relevant} relevant and {self.negatives} negative labels"]
        apart = []
        if self.dismissals:
            apart.append(f"{self.dismissals} dismissals (negative labels, never interactions)")
        if self.not_shown:
            apart.append(f"{self.not_shown} events about items their impression did not show (never labels)")
        if apart:
            out.append("  kept apart: " + "; ".join(apart))
        skipped = []
        if self.not_in_catalog:
            skipped.append(f"{self.not_in_catalog} events about items not in the catalog "
                           f"(e.g. {', '.join(self.not_in_catalog_ids)})")
        if self.nothing_relevant:
            skipped.append(f"{self.nothing_relevant} impressions with feedback but nothing relevant")
        if self.known:
            skipped.append(f"{self.known} relevant items the user already had in training ({self.only_known} "
                           "impressions had nothing else)")
        if self.unmatched:
            skipped.append(f"{self.unmatched} events about request ids no impression has")
        if self.duplicates:
            skipped.append(f"{self.duplicates} request ids logged twice (feedback joined the first)")
        if self.unreadable:
            skipped.append(f"{self.unreadable} unreadable records")
        for reason, n in sorted(self.refused.items()):
            skipped.append(f"{n} impressions refused: {reason}")
        if skipped:
            out.append("  skipped: " + "; ".join(skipped))
        if self.other_specs:
            names = ", ".join(f"'{k}' ({v})" for k, v in sorted(self.other_specs.items()))
            out.append(f"  note: cases logged by other specs, used because their inputs fit: {names}")
        if self.other_versions:
            n = sum(self.other_versions.values())
            out.append(f"  note: {n} cases were served by other versions of spec '{self.spec}' (stamps "
                       f"{', '.join(sorted(self.other_versions))}; now {self.stamp}): used")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class LoggedData:
    """:func:`logged_dataset`'s answer: the dataset, the summary, and each case's logged impression by id."""

    dataset: Dataset
    summary: LogSummary
    cases: Mapping[str, LoggedCase]


def labels(imp: Impression, catalog: Catalog, gains: Mapping[str, float] = DEFAULT_GAINS,
           relevant_rating: float = RELEVANT_RATING) -> tuple[dict[str, float], frozenset[str]]:
    """An impression's labels: relevant shown item -> gain, and the shown items that are negatives (see the
    module docstring). Items outside ``catalog`` and items the impression did not show get no label."""
    shown = {i.id for i in imp.items}
    best: dict[str, float] = {}
    negative: set[str] = set()
    for f in imp.feedback:
        if f.item_id not in shown or f.item_id not in catalog:
            continue
        if f.type == "dismissal" or (f.type == "rating" and (f.value is None or f.value < relevant_rating)):
            negative.add(f.item_id)
        elif f.type in gains:
            best[f.item_id] = max(best.get(f.item_id, 0.0), float(gains[f.type]))
    relevant = {k: v for k, v in best.items() if k not in negative and v > 0}
    return relevant, frozenset(negative)


def slate_order(shown: Sequence[str], ranking: Sequence[str]) -> list[str]:
    """The logged slate ``shown`` reordered by ``ranking`` (a new model's list): items it ranks first, in its
    order, then the items it did not rank in their logged order. Compare a new model with the logged ranking on
    exactly the items the user saw (the only ones feedback labels)."""
    where = {item: i for i, item in reversed(list(enumerate(ranking)))}
    return sorted(dict.fromkeys(shown), key=lambda item: (where.get(item, math.inf), shown.index(item)))


def _open(source: Any, registry: Any) -> tuple[Any, str]:
    """``read_logs`` of ``source`` with LoggedDataError for what a user can get wrong."""
    if not isinstance(source, (str, os.PathLike)):
        return read_logs(source, registry), type(source).__name__
    text = os.fspath(source)
    if registry is None:
        from llmrec.plugins import get_registry  # lazy: the plugin registry, only when a log is opened by name

        registry = get_registry(None)
    try:
        name, where = parse_location(text, list(registry.log_stores))
    except ValueError as exc:
        raise LoggedDataError(f"{exc}; give a folder of the file store (llmrec serve --log-dir), a .db file or "
                              "NAME:WHERE", text) from None
    if name == "file":
        path = Path(where)
        if not path.exists():
            raise LoggedDataError("no log here: the folder does not exist", text,
                                  hint="Serve with `llmrec serve SPEC --log-dir DIR` and POST feedback to "
                                       "/v1/feedback first (docs/feedback-training.md).")
        if not path.is_dir():
            raise LoggedDataError("this is a file; the file log store is a folder (the --log-dir of llmrec "
                                  "serve), or name the store: sqlite:PATH", text)
    elif name == "sqlite" and not Path(where).is_file():
        raise LoggedDataError("no log database here", text,
                              hint="Serve with `llmrec serve SPEC --log-store sqlite:PATH` first.")
    try:
        return read_logs(text, registry), text
    except (OSError, ValueError) as exc:
        raise LoggedDataError(f"cannot open the log: {exc}", text) from None


def _read(reader: Any, where: str) -> list[Impression]:
    try:
        return list(reader)
    except (OSError, ValueError) as exc:  # a plugin store, a locked or corrupt database
        raise LoggedDataError(f"cannot read the log: {type(exc).__name__}: {exc}", where) from None


def _digest(imps: Iterable[Impression]) -> str:
    h = hashlib.sha256()
    for imp in imps:
        record = [imp.request_id, imp.ts, imp.provenance, imp.inputs, [(i.id, i.position, i.propensity)
                                                                      for i in imp.items],
                  sorted((f.item_id, f.type, f.value, f.ts) for f in imp.feedback)]
        h.update(json.dumps(record, sort_keys=True, default=str, separators=(",", ":")).encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def _user(imp: Impression) -> str | None:
    if imp.user_id:
        return str(imp.user_id)
    for f in imp.feedback:
        if f.user_id:
            return str(f.user_id)
    return None


def _interaction(user: str, f: Feedback) -> Interaction:
    return Interaction(user_id=user, item_id=f.item_id, event=INTERACTION_EVENTS[f.type],  # type: ignore[arg-type]
                       rating=float(f.value) if f.type == "rating" and f.value is not None else None,
                       timestamp=max(int(f.ts), 0))


def logged_dataset(
    source: Any,
    catalog: Catalog,
    *,
    history: Interactions | None = None,
    test_fraction: float = 0.2,
    case_share: float = 1.0,
    gains: Mapping[str, float] | None = None,
    relevant_rating: float = RELEVANT_RATING,
    spec: str | None = None,
    stamp: str | None = None,
    specs: Collection[str] | None = None,
    accept: Callable[[Impression], str | None] | None = None,
    registry: Any = None,
) -> LoggedData:
    """A :class:`Dataset` from a serve log (module docstring: labels, cases, the time split, interactions).

    ``source``: a folder (the file store), a ``.db``/``.sqlite`` file, ``NAME:WHERE`` for any registered log store
    (looked up in ``registry``, default the process's) or a LogStore. ``catalog``: the items (feedback about others
    is skipped). ``history``: interactions that precede the log (the server's own). ``spec`` and ``stamp``: the
    spec's name and current provenance id, to report cases served by others. ``specs``: use only impressions of
    these spec names. ``accept(impression)``: a reason to refuse it (say, its inputs do not fit the spec), or None.
    Raises :class:`LoggedDataError` for a log that cannot be read, is empty or has no usable feedback."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be at least 0 and below 1, got {test_fraction}")
    if not 0.0 < case_share <= 1.0:
        raise ValueError(f"case_share must be above 0 and at most 1, got {case_share}")
    gains = dict(DEFAULT_GAINS if gains is None else gains)
    reader, where = _open(source, registry)
    imps = _read(reader, where)
    summary = LogSummary(source=where, spec=spec, stamp=stamp, case_share=case_share, test_fraction=test_fraction,
                         history_events=len(history) if history is not None else 0)
    summary.impressions = len(imps)
    summary.unmatched = len(reader.unmatched)
    summary.duplicates = len(reader.duplicates)
    summary.unreadable = reader.skipped
    if not imps:
        raise LoggedDataError("the log has no impressions", where,
                              hint="Serve with --log-dir (or --log-store) and let it answer requests first.")
    refused: Counter[str] = Counter()
    unknown: list[str] = []
    cases: list[tuple[Impression, dict[str, float], frozenset[str]]] = []
    for imp in imps:
        if not imp.feedback:
            continue
        summary.with_feedback += 1
        summary.events += len(imp.feedback)
        if specs is not None and imp.spec not in specs:
            refused[f"logged by spec '{imp.spec}'"] += 1
            continue
        reason = accept(imp) if accept is not None else None
        if reason:
            refused[reason] += 1
            continue
        shown = {i.id for i in imp.items}
        for f in imp.feedback:
            if f.item_id not in catalog:
                summary.not_in_catalog += 1
                unknown.append(f.item_id)
            elif f.item_id not in shown:
                summary.not_shown += 1
            summary.dismissals += f.type == "dismissal"
        relevant, negative = labels(imp, catalog, gains, relevant_rating)
        summary.negatives += len(negative)
        if not relevant:
            summary.nothing_relevant += 1
            continue
        cases.append((imp, relevant, negative))
    summary.refused = dict(refused)
    summary.not_in_catalog_ids = list(dict.fromkeys(unknown))[:EXAMPLES]
    if summary.with_feedback == 0:
        raise LoggedDataError(f"the log's {len(imps)} impressions have no feedback", where,
                              hint="POST what users did to /v1/feedback (click, purchase, rating, dismissal) with "
                                   "the answer's X-Request-Id; docs/serving.md, 'Impressions and feedback'.")
    if not cases:
        why = [f"{v} {k}" for k, v in (("refused", sum(refused.values())),
                                       ("about items not in the catalog", summary.not_in_catalog),
                                       ("about items not shown", summary.not_shown),
                                       ("dismissals", summary.dismissals)) if v]
        raise LoggedDataError(
            f"no usable feedback: {summary.events} events on {summary.with_feedback} impressions, none a click, "
            f"purchase or rating >= {relevant_rating:g} of a shown catalog item"
            + (f" ({'; '.join(why)})" if why else ""), where,
            hint="Check that the log is this spec's (its catalog's item ids) and that clients send item_id as shown.")

    # -- the time split -----------------------------------------------------------------------------------------
    cases.sort(key=lambda c: (c[0].ts, c[0].request_id))
    n_test = min(max(round(len(cases) * test_fraction), 1), len(cases) - 1) if test_fraction > 0 and len(cases) > 1 \
        else 0
    training, held = cases[:len(cases) - n_test], cases[len(cases) - n_test:]
    split_time = held[0][0].ts if held else math.inf
    summary.split_time = held[0][0].ts if held else None
    by_user: dict[str | None, list[int]] = {}
    for i, (imp, _, _) in enumerate(training):
        by_user.setdefault(_user(imp), []).append(i)
    part = ["train"] * len(training)
    for user, idx in by_user.items():
        if user is None:
            continue  # anonymous impressions cannot be anyone's history: always cases
        n_cases = max(1, round(len(idx) * case_share))
        for i in idx[:len(idx) - n_cases]:
            part[i] = "history"

    events: list[Interaction] = list(history or ())
    for (imp, _, _), p in zip(training, part):
        if p != "history":
            continue
        user = _user(imp)
        assert user is not None
        for f in imp.feedback:
            if f.type in INTERACTION_EVENTS and f.item_id in catalog and f.ts < split_time:
                events.append(_interaction(user, f))
                summary.interactions += 1
    train = Interactions(events)

    logged: dict[str, LoggedCase] = {}
    train_cases: list[EvalCase] = []
    test_cases: list[EvalCase] = []
    test_events: list[Interaction] = []
    for (imp, rel, neg), p in [*zip(training, part), *((c, "test") for c in held)]:
        user = _user(imp)
        if p != "history":
            seen = train.seen(user) if user is not None else frozenset()
            fresh = {k: v for k, v in rel.items() if k not in seen}
            summary.known += len(rel) - len(fresh)
            if not fresh:  # every relevant item is one the user already has in training: nothing new to learn
                summary.only_known += 1
                continue
            rel = fresh
            (train_cases if p == "train" else test_cases).append(EvalCase(
                id=imp.request_id, inputs=dict(imp.inputs), relevant=frozenset(rel), exclude=frozenset(seen),
                gains=dict(rel)))
            if spec is not None and imp.spec != spec:
                summary.other_specs[imp.spec] = summary.other_specs.get(imp.spec, 0) + 1
            elif stamp is not None and imp.provenance != stamp:
                summary.other_versions[imp.provenance] = summary.other_versions.get(imp.provenance, 0) + 1
        if p == "test" and user is not None:
            test_events += [_interaction(user, f) for f in imp.feedback
                            if f.type in INTERACTION_EVENTS and f.item_id in catalog]
        logged[imp.request_id] = LoggedCase(imp.request_id, imp.ts, user, p, tuple(imp.items), rel, neg,
                                            imp.provenance, imp.spec, imp.degraded)
    test = Interactions(test_events)
    summary.train_cases, summary.test_cases = len(train_cases), len(test_cases)
    summary.history_impressions = part.count("history")
    summary.relevant = sum(len(c.relevant) for c in (*train_cases, *test_cases))
    summary.users = len({u for imp, _, _ in cases if (u := _user(imp)) is not None})
    summary.digest = _digest(imp for imp, _, _ in cases)
    if not train_cases:
        raise LoggedDataError(
            f"no training case: of {len(cases)} impressions with a relevant item, {n_test} are held out (the latest "
            f"{test_fraction:.0%}) and {summary.only_known} relevant only items the user already had", where,
            hint="Log more feedback, or hold out less (--log-test).")
    dataset = Dataset(
        name=f"logs-{summary.digest}", catalog=catalog, train=train, test=test, test_cases=tuple(test_cases),
        train_cases=tuple(train_cases), split="logged",
        description=f"serve logs {where}: {len(train_cases)} training and {len(test_cases)} held-out impressions",
        extra={"log_summary": summary.to_dict(),
               "shown": {c.request_id: tuple(c.shown_ids) for c in logged.values() if c.part != "history"}})
    return LoggedData(dataset, summary, logged)


def spec_logged_dataset(graph: Any, source: Any, dataset: Dataset, *, stamp: str | None = None,
                        **options: Any) -> LoggedData:
    """:func:`logged_dataset` for a validated spec: its dataset resource's catalog, its training interactions as
    ``history``, impressions refused when their inputs do not fit the spec's, the spec's name (and ``stamp``,
    its current provenance id) to report others, the log stores of the spec's registry."""
    declared = set(graph.spec.inputs)
    model = graph.request_model

    def accept(imp: Impression) -> str | None:
        try:
            model.model_validate({k: v for k, v in imp.inputs.items() if k in declared})
        except ValueError as exc:  # pydantic's ValidationError
            errors = getattr(exc, "errors", lambda **_: [])(include_url=False)
            fields = sorted({".".join(map(str, e["loc"])) for e in errors}) or ["?"]
            return f"their inputs do not fit spec '{graph.name}' ({', '.join(fields)})"
        return None

    return logged_dataset(source, dataset.catalog, history=dataset.train, spec=str(graph.name), stamp=stamp,
                          accept=accept, registry=graph.registry, **options)


__all__ = ["DEFAULT_GAINS", "INTERACTION_EVENTS", "LogSummary", "LoggedCase", "LoggedData", "LoggedDataError",
           "RELEVANT_RATING", "labels", "logged_dataset", "slate_order", "spec_logged_dataset"]
