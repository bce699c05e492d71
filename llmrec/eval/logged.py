"""``llmrec eval SPEC... --logged LOG``: off-policy evaluation of specs and their variants on served traffic.

    report = evaluate_logged(["specs/shop.yaml"], "logs/", variants=True)   # every declared variant
    report.render()                                                         # or report.to_dict()

The log is what ``llmrec serve --log-dir`` (or ``--log-store``) wrote: impressions (the request's inputs, the
items shown with their positions and the logging policy's propensities) joined with their feedback
(:func:`llmrec.serve.logs.read_logs`). Each target (a spec, or one of its declared variants) is run on every
logged request's inputs through an ordinary :class:`~llmrec.runtime.executor.Runtime`, concurrently and batched
as ``llmrec eval`` runs its cases; its answer becomes ``pi_e`` at each logged (item, position), the feedback
becomes a reward per row, and :func:`llmrec.eval.ope.compare` estimates every target's value (IPS, SNIPS, DR)
with bootstrap intervals over requests, and the paired difference of every pair.

Rows and weights
----------------
A row is one item shown in the evaluated output of one logged request (``ope.LoggedFeedback``: the request is
the round, resampled whole by the bootstrap). Two ways to weigh it (``weights``):

- ``position`` (default; OBP's independent IPS, the setting :mod:`llmrec.eval.ope` implements): ``pi_e`` is 1
  when the target puts the logged item at the logged position, else 0 (:func:`llmrec.eval.ope.ranking_probs`),
  and ``pscore`` the item's logged ``propensity``, the logging policy's marginal probability of that item at
  that position. Unbiased when a shown item's reward depends on the request, the item and its position only
  (the position-based click model).
- ``cascade`` (OBP's reward-interaction IPS): ``pi_e`` is 1 when the target's list agrees with the logged one
  down to that position, and ``pscore`` the logged ``cascade`` probability (that the logging policy's list is
  exactly the items shown down to that one). Unbiased also when a reward depends on the items above it (the
  cascade model), at the cost of more variance.

The position-relaxed variant of OBP (an item anywhere in the list counts) needs the logging policy's probability
of the item at every position, which a log keeps only at the position it was shown: it is not offered.

A target with a stochastic node (one that reports propensities, such as ``rerank.explore``) is evaluated
through one draw per request, made independently of the logged one (its run id differs from the request id):
that indicator is an unbiased estimate of its ``pi_e``, so the estimates stay unbiased, with more variance.

Rewards
-------
``reward`` maps feedback types to weights (:func:`parse_reward`): ``click`` (the default: 1 for a clicked item,
else 0), ``click=1,purchase=5,dismissal=-1``, ``rating`` (the item's last rating's value). Each type counts once
per item (two clicks on one item are one); an item without feedback earns 0; feedback about an item that was
not shown is ignored.

DR's reward model
-----------------
A position-based click model fitted on the log with shrinkage, cross-fitted: the requests are split in two
halves at random (``seed``), and each half's rows get the model fitted on the other half. Position factor
``theta_k`` = the mean reward at position k (shrunk toward the overall mean with :data:`SHRINK` pseudo-rows)
over the overall mean; item rate ``gamma_a`` = (the item's reward + SHRINK x overall mean) / (its exposure, the
sum of ``theta_k`` over its rows, + SHRINK); ``qhat(a, k) = theta_k gamma_a`` (an item the half never showed:
the overall mean times ``theta_k``). DR is unbiased whatever the model; a good one only narrows its interval.

Support
-------
A target can be evaluated only where the logging policy could have shown what it shows. A deterministic logger
(every logged propensity 1.0) supports only a target that shows exactly the logged lists: any other is reported
as unsupported (never given a number, unless ``on_support="warn"``), with the reason. The logging policy itself
is always a column, ``logged``: its weights are 1, and its value is the mean reward the log observed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import progress as progress_
from ..api import validate
from ..errors import InputError, LlmrecError, SpecErrors
from ..graph.build import Graph
from ..runtime.batch import batching
from ..runtime.executor import WAVE, Runtime
from ..serve.logs import (
    FEEDBACK_TYPES,
    PROPENSITIES,
    Feedback,
    Impression,
    Stamp,
    keep_stamp,
    parse_location,
    provenance_stamp,
    read_logs,
    stamp_changes,
)
from ..spec.variants import validate_variant, variant_names
from . import ope
from .defaults import DEFAULT_ESTIMATORS, DEFAULT_REWARD, WEIGHTS
from .runner import answer_ids

#: the column of the logging policy itself
LOGGED = "logged"
#: pseudo-rows of the overall mean in DR's reward model (see the module doc)
SHRINK = 10.0
#: where ``llmrec eval --logged`` and ``llmrec replay`` keep every provenance stamp they compute (relative to the
#: working folder), so that a later replay can name what changed since
STAMP_ARCHIVE = Path("runs") / "provenance"
#: how many first errors a target's notes quote
MAX_MESSAGES = 3


class LogError(LlmrecError):
    """A log that cannot be used: not there, unreadable, empty, or holding nothing the command can work on.
    ``usage`` is True when the location itself is wrong (the command line's fault: exit 2), False when the log
    is there but holds nothing usable (exit 4)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


# -- reading logs -------------------------------------------------------------------------------------------------


def check_location(source: str | os.PathLike[str], registry: Any) -> tuple[str, str]:
    """(store name, where) for ``source`` (a folder, a ``.db``/``.sqlite`` file or ``NAME:WHERE``), or a
    :class:`LogError` (``usage``) saying what is wrong: an unknown store, a folder or file that is not there."""
    text = os.fspath(source)
    if not text.strip():
        raise LogError("no log given: name a log folder (llmrec serve --log-dir), a .db file or NAME:WHERE",
                       usage=True)
    try:
        name, where = parse_location(text, list(registry.log_stores))
    except ValueError as exc:
        raise LogError(str(exc), usage=True) from None
    path = Path(where)
    if name == "file":
        if path.is_file():
            raise LogError(f"{where} is a file, not a log folder (a SQLite log is a .db, .sqlite or .sqlite3 "
                           "file, or sqlite:PATH)", usage=True)
        if not path.is_dir():
            raise LogError(f"no log folder at {where} (llmrec serve --log-dir DIR writes one)", usage=True)
    elif name == "sqlite" and not path.is_file():
        raise LogError(f"no SQLite log at {where} (llmrec serve --log-store sqlite:PATH writes one)", usage=True)
    return name, where


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: unix seconds, an ISO 8601 time (``2024-05-01T12:00:00Z``) or a time ago (``30m``, ``2h``,
    ``7d``, ``90s``) -> unix seconds. ValueError saying what is accepted."""
    raw = text.strip()
    ago = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", raw)
    if ago:
        seconds = float(ago.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ago.group(2)]
        return (time.time() if now is None else now) - seconds
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not a time: give unix seconds, an ISO 8601 time such as "
                         "2024-05-01T12:00:00Z, or a time ago such as 30m, 2h, 7d") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


@dataclass
class LogRead:
    """What was read from a log: the impressions kept (oldest first) and what was left out."""

    source: str
    impressions: list[Impression]
    total: int  # impressions in the log
    skipped_records: int = 0  # unreadable records
    unmatched_feedback: int = 0  # feedback naming a request id no impression has
    duplicates: int = 0  # request ids logged more than once
    before_since: int = 0  # impressions older than --since
    beyond_limit: int = 0  # impressions past --limit / --users

    def notes(self) -> list[str]:
        out = []
        if self.skipped_records:
            out.append(f"{self.skipped_records} unreadable log records were skipped")
        if self.unmatched_feedback:
            out.append(f"{self.unmatched_feedback} feedback events name a request id no impression has (ignored)")
        if self.duplicates:
            out.append(f"{self.duplicates} request ids were logged more than once (their feedback joined the "
                       "first)")
        return out


def read_impressions(source: str | os.PathLike[str], registry: Any, *, since: float | None = None,
                     limit: int | None = None) -> LogRead:
    """The impressions of a log (with their feedback), those at or after ``since`` (unix seconds), the first
    ``limit`` of them. :class:`LogError` when the log is not there, cannot be read or holds no impression."""
    check_location(source, registry)
    text = os.fspath(source)
    try:
        reader = read_logs(text, registry)
        everything = list(reader)
    except Exception as exc:  # a damaged database, a plugin store's own error: one line, never a traceback
        raise LogError(f"cannot read the log at {text}: {type(exc).__name__}: {exc}") from None
    if not everything:
        raise LogError(f"the log at {text} holds no impressions (llmrec serve logs one per answer; is this the "
                       "folder --log-dir named?)")
    kept = [imp for imp in everything if since is None or imp.ts >= since]
    read = LogRead(text, kept, len(everything), reader.skipped, len(reader.unmatched), len(reader.duplicates),
                   before_since=len(everything) - len(kept))
    if not kept:
        raise LogError(f"none of the {len(everything)} impressions of {text} is at or after --since "
                       f"({datetime.fromtimestamp(since or 0, timezone.utc).isoformat()})")
    if limit is not None and len(kept) > limit:
        read.beyond_limit = len(kept) - limit
        read.impressions = kept[:limit]
    return read


# -- provenance stamps of logs ------------------------------------------------------------------------------------


def _stamps_in(path: Path, pattern: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    files = [path] if path.is_file() else sorted(path.glob(pattern)) if path.is_dir() else []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        values: list[Any] = []
        try:
            values = [json.loads(text)]
        except ValueError:  # JSON lines: one stamp a line
            for line in text.splitlines():
                try:
                    values.append(json.loads(line))
                except ValueError:
                    continue
        for value in values:
            for stamp in value if isinstance(value, list) else [value]:
                if isinstance(stamp, dict) and isinstance(stamp.get("id"), str):
                    found[stamp["id"]] = stamp
    return found


def known_stamps(source: str | os.PathLike[str] | None = None, registry: Any = None,
                 extra: Iterable[str | os.PathLike[str]] = ()) -> dict[str, dict[str, Any]]:
    """Provenance stamps whose components are known (id -> ``Stamp.to_dict()``), from: ``extra`` files or
    folders (``--stamps``: what ``GET /v1/provenance`` returned, one stamp per file, a list, or one per line);
    ``provenance*.json``/``.jsonl`` files in the log's folder (the file store's folder, a database's folder); and
    :data:`STAMP_ARCHIVE`, where ``llmrec eval --logged`` and ``llmrec replay`` keep the stamps they compute."""
    out: dict[str, dict[str, Any]] = {}

    def add(found: Mapping[str, dict[str, Any]]) -> None:
        for sid, stamp in found.items():  # one id, one set of components: only the archive adds the settings
            out[sid] = {**stamp, **out.get(sid, {})}

    add(_stamps_in(STAMP_ARCHIVE, "*.json"))
    if source is not None and registry is not None:
        try:
            name, where = parse_location(os.fspath(source), list(registry.log_stores))
        except ValueError:
            name, where = "", ""
        folder = Path(where) if name == "file" else Path(where).parent if name == "sqlite" else None
        if folder is not None:
            add(_stamps_in(folder, "provenance*.json"))
            add(_stamps_in(folder, "provenance*.jsonl"))
    for item in extra:
        path = Path(item)
        add(_stamps_in(path, "*.json"))
        add(_stamps_in(path, "*.jsonl"))
    return out


#: the key under which an archived stamp keeps the spec's settings (not a stamp component)
SETTINGS = "spec_settings"


def archive_stamp(stamp: Stamp, folder: Path = STAMP_ARCHIVE, settings: Mapping[str, Any] | None = None) -> Path | None:
    """Keep ``stamp`` as ``<folder>/<id>.json`` (once; written to a temporary file and renamed), so that a later
    ``llmrec replay`` can name the components that changed since; with ``settings`` (the spec as loaded,
    ``graph.document.data``) also which settings. None when it cannot be written."""
    return keep_stamp(stamp, folder, f"{stamp.id}.json", {SETTINGS: settings} if settings is not None else None)


def describe_changes(changes: Sequence[str]) -> str:
    """``stamp_changes`` output in words: ``files:prompts/x.j2`` -> ``file prompts/x.j2``."""
    words = {"spec": "the spec's settings", "llmrec": "llmrec's version",
             "spec_name": "the spec's name", "error": "the stamp could not be computed"}
    out = []
    for c in changes:
        kind, _, what = c.partition(":")
        if not what:
            out.append(words.get(kind, kind))
        else:
            out.append({"files": "file", "local_plugins": "local plugin", "plugins": "plugin", "models": "model",
                        "datasets": "dataset"}.get(kind, kind) + f" {what}")
    return ", ".join(out)


def stochastic_nodes(trace: Any) -> list[str]:
    """The nodes of a run that reported propensities (a stochastic ranking such as ``rerank.explore``)."""
    return [rec.node_id for rec in getattr(trace, "nodes", ()) or ()
            if rec.extra and isinstance(rec.extra.get(PROPENSITIES), Mapping)]


# -- running targets ----------------------------------------------------------------------------------------------


async def run_requests(runtime: Runtime, requests: Sequence[tuple[str, Mapping[str, Any]]], *,
                       concurrency: int = 8, advance: Callable[..., None] | None = None) -> list[Any]:
    """Run ``(run id, inputs)`` requests as ``llmrec eval`` runs its cases: concurrently (a spec of inline nodes
    only in waves of :data:`~llmrec.runtime.executor.WAVE`), batchable nodes batched. Each result is a
    :class:`~llmrec.runtime.trace.RunResult` or the exception that request raised (InputError, RunError...), in
    order; Ctrl-C and cancellation propagate."""
    await runtime.start()
    results: list[Any] = [None] * len(requests)

    async def one(i: int, run_id: str, inputs: Mapping[str, Any]) -> None:
        try:
            results[i] = await runtime.run(dict(inputs), run_id=run_id)
        except Exception as exc:  # one failing request never stops the others
            results[i] = exc
        if advance is not None:
            advance()

    with batching():
        if runtime.inline_only:
            for start in range(0, len(requests), WAVE):
                await asyncio.gather(*(one(i, rid, inputs) for i, (rid, inputs)
                                       in enumerate(requests[start:start + WAVE], start)))
        else:
            gate = asyncio.Semaphore(concurrency)

            async def gated(i: int, rid: str, inputs: Mapping[str, Any]) -> None:
                async with gate:
                    await one(i, rid, inputs)

            await asyncio.gather(*(gated(i, rid, inputs) for i, (rid, inputs) in enumerate(requests)))
    return results


@dataclass
class Target:
    """One policy to evaluate: a validated graph, the file it came from and the variant applied (if any)."""

    graph: Any
    path: str | None
    variant: str | None = None
    label: str = ""


def resolve_targets(specs: Sequence[Any], variants: bool | Sequence[str] | None = True) -> list[Target]:
    """Paths, ``(path, variant)`` pairs, Graphs or Targets -> validated :class:`Target` s; with ``variants``
    (True: all declared; a list: those) each path's variants are added after it. SpecErrors lists every
    problem."""
    out: list[Target] = []
    errors = []
    for s in specs:
        if isinstance(s, Target):
            out.append(s)
            continue
        variant = None
        if isinstance(s, tuple):
            s, variant = s
        try:
            if isinstance(s, Graph):
                graph, path = s, None
            else:
                graph = validate_variant(s, variant, str(s)) if variant is not None else validate(s, str(s))
                path = str(s)
        except SpecErrors as exc:
            errors.extend(exc.errors)
            continue
        out.append(Target(graph, path, variant))
        if variant is not None or not variants or path is None:
            continue
        declared = variant_names(graph.document)
        for v in declared if variants is True else [v for v in variants if v in declared]:
            try:
                out.append(Target(validate_variant(path, v, path), path, v))
            except SpecErrors as exc:
                errors.extend(exc.errors)
    if errors:
        raise SpecErrors(errors)
    files = any(t.variant is not None for t in out)  # as llmrec eval labels its columns
    names = [f"{Path(t.path or t.graph.name).name}[{t.variant}]" if t.variant is not None else
             Path(t.path).name if files and t.path else t.graph.name for t in out]
    for t, name in zip(out, names):
        t.label = f"{name} ({t.path})" if names.count(name) > 1 and t.path and t.variant is None else name
    return out


# -- rewards ------------------------------------------------------------------------------------------------------


def parse_reward(text: str) -> dict[str, float]:
    """``--reward``: feedback types with optional weights, ``click`` / ``click=1,purchase=5,dismissal=-1`` /
    ``rating`` -> {type: weight}. ValueError naming the types."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, weight = part.partition("=")
        name = name.strip()
        if name not in FEEDBACK_TYPES:
            raise ValueError(f"'{name}' is not a feedback type: choose from {', '.join(FEEDBACK_TYPES)} "
                             "(e.g. click, or click=1,purchase=5)")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"the weight of '{name}' must be a number, not '{weight.strip()}'") from None
        if not math.isfinite(value):
            raise ValueError(f"the weight of '{name}' must be a finite number")
        out[name] = value
    if not out:
        raise ValueError("give at least one feedback type, e.g. click or click=1,purchase=5")
    return out


def item_reward(events: Iterable[Feedback], weights: Mapping[str, float]) -> float:
    """One shown item's reward from its feedback: the sum over ``weights``' types it received (each once; a
    rating's weight times the value of its last rating)."""
    latest: dict[str, Feedback] = {}
    for e in events:
        if e.type in weights and (e.type not in latest or e.ts >= latest[e.type].ts):
            latest[e.type] = e
    total = 0.0
    for kind, e in latest.items():
        total += weights[kind] * (float(e.value or 0.0) if kind == "rating" else 1.0)
    return total


# -- the log as rows ----------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """The log as OPE rows: one per item shown in ``output``, with round (request), 0-based position, item index
    (into ``vocab``), reward and pscore; ``shown`` per round is its logged list of ids."""

    output: str
    impressions: list[Impression]
    shown: list[list[str]]
    round_index: np.ndarray
    position: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    vocab: dict[str, int]
    dropped_rows: int = 0  # rows whose propensity is unknown (left out)
    without_output: int = 0  # impressions that showed nothing in ``output``

    @property
    def len_list(self) -> int:
        return int(self.position.max()) + 1

    def index(self, item_id: str) -> int:
        """The item's action index (a new one for an id the log never showed)."""
        if item_id not in self.vocab:
            self.vocab[item_id] = len(self.vocab)
        return self.vocab[item_id]


def logged_output(impressions: Sequence[Impression], output: str | None) -> str:
    """The output whose shown items are evaluated: ``output``, else the one most impressions show."""
    if output is not None:
        return output
    counts = Counter(i.items[0].output for i in impressions if i.items)
    if not counts:
        raise LogError("no logged impression shows any item: there is nothing to evaluate")
    return counts.most_common(1)[0][0]


def build_rows(impressions: Sequence[Impression], output: str, reward: Mapping[str, float],
               weights: Literal["position", "cascade"] = "position") -> Rows:
    """The rows of ``output`` (see :class:`Rows`); rows whose pscore is unknown or not a probability are left out
    and counted. LogError when no row is left."""
    kept: list[Impression] = []
    shown: list[list[str]] = []
    cols: dict[str, list[float]] = {"round": [], "position": [], "action": [], "reward": [], "pscore": []}
    vocab: dict[str, int] = {}
    dropped = without = 0
    for imp in impressions:
        items = sorted((i for i in imp.items if i.output == output), key=lambda i: i.position)
        if not items:
            without += 1
            continue
        events: dict[str, list[Feedback]] = {}
        for f in imp.feedback:
            if f.shown:
                events.setdefault(f.item_id, []).append(f)
        r = len(kept)
        added = 0
        for it in items:
            p = it.propensity if weights == "position" else getattr(it, "cascade", None)
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 < p <= 1.0 + 1e-9:
                dropped += 1
                continue
            cols["round"].append(r)
            cols["position"].append(it.position - 1)
            cols["action"].append(vocab.setdefault(it.id, len(vocab)))
            cols["reward"].append(item_reward(events.get(it.id, ()), reward))
            cols["pscore"].append(min(float(p), 1.0))
            added += 1
        if added:
            kept.append(imp)
            shown.append([i.id for i in items])
    if not kept:
        why = (f"{dropped} shown items have no {'propensity' if weights == 'position' else 'cascade probability'}"
               if dropped else f"no impression shows items in output '{output}'")
        raise LogError(f"nothing to evaluate in output '{output}': {why}")
    return Rows(output, kept, shown, np.asarray(cols["round"], dtype=np.int64),
                np.asarray(cols["position"], dtype=np.int64), np.asarray(cols["action"], dtype=np.int64),
                np.asarray(cols["reward"], dtype=float), np.asarray(cols["pscore"], dtype=float), vocab,
                dropped, without)


def target_probs(rows: Rows, answers: Sequence[Sequence[str]], weights: Literal["position", "cascade"],
                 logged: ope.LoggedFeedback) -> np.ndarray:
    """``pi_e`` at every row for a target that answered ``answers`` (ids, best first, one list per round):
    position weights through :func:`llmrec.eval.ope.ranking_probs`; cascade weights 1 down to the first
    position where the answer leaves the logged list."""
    L = rows.len_list
    if weights == "position":
        rankings = np.full((len(answers), L), -1, dtype=np.int64)  # -1: nothing there, never a logged action
        for r, ids in enumerate(answers):
            for k, item in enumerate(list(ids)[:L]):
                rankings[r, k] = rows.index(item)
        return ope.ranking_probs(logged, rankings)
    agree = np.zeros(len(answers), dtype=np.int64)  # how many leading positions agree with the logged list
    for r, (ids, shown) in enumerate(zip(answers, rows.shown)):
        n = 0
        for a, b in zip(ids, shown):
            if a != b:
                break
            n += 1
        agree[r] = n
    return (rows.position < agree[rows.round_index]).astype(float)


# -- DR's reward model --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PositionModel:
    """``qhat(a, k) = theta[k] * gamma[a]`` (see the module doc); ``mean`` the overall mean reward."""

    theta: np.ndarray
    gamma: dict[int, float]
    mean: float

    @classmethod
    def fit(cls, position: np.ndarray, action: np.ndarray, reward: np.ndarray, len_list: int) -> PositionModel:
        if reward.size == 0:
            return cls(np.ones(len_list), {}, 0.0)
        g = float(reward.mean())
        sums = np.bincount(position, weights=reward, minlength=len_list)
        counts = np.bincount(position, minlength=len_list).astype(float)
        m = (sums + SHRINK * g) / (counts + SHRINK)
        theta = m / g if g != 0 else np.ones(len_list)
        exposure: dict[int, float] = {}
        earned: dict[int, float] = {}
        for a, k, r in zip(action.tolist(), position.tolist(), reward.tolist()):
            exposure[a] = exposure.get(a, 0.0) + float(theta[k])
            earned[a] = earned.get(a, 0.0) + r
        gamma = {a: (earned[a] + SHRINK * g) / (exposure[a] + SHRINK) for a in exposure}
        return cls(theta, gamma, g)

    def predict(self, action: np.ndarray, position: np.ndarray) -> np.ndarray:
        """``qhat`` at each (action, position); an action of -1 (nothing shown there) gives 0."""
        gamma = np.array([self.gamma.get(a, self.mean) for a in action.tolist()], dtype=float)
        return np.where(action >= 0, self.theta[position] * gamma, 0.0)


def cross_fit_folds(n_rounds: int, seed: int = 0) -> np.ndarray:
    """Each round's half (0 or 1), at random (``seed``)."""
    folds = np.zeros(n_rounds, dtype=np.int64)
    folds[np.random.RandomState(seed).permutation(n_rounds)[1::2]] = 1
    return folds


# -- the evaluation -----------------------------------------------------------------------------------------------


@dataclass
class PolicyResult:
    """One column: a target (or the logging policy itself)."""

    label: str
    spec: str | None = None
    path: str | None = None
    variant: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    failures: int = 0
    failure_messages: list[str] = field(default_factory=list)
    stochastic: list[str] = field(default_factory=list)  # nodes that reported propensities in its runs
    unsupported: str | None = None  # why the log cannot evaluate it
    not_run: str | None = None  # why it was not run (its runtime could not start)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "spec": self.spec, "path": self.path, "variant": self.variant,
                "provenance": self.provenance or None, "requests": self.requests, "failures": self.failures,
                "first_failures": list(self.failure_messages), "stochastic_nodes": list(self.stochastic),
                "supported": self.unsupported is None and self.not_run is None, "unsupported": self.unsupported,
                "not_run": self.not_run}


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class LoggedReport:
    """What :func:`evaluate_logged` found: every column's estimates and the paired differences."""

    source: str
    output: str
    reward: dict[str, float]
    weights: str
    estimators: tuple[str, ...]
    n_requests: int
    n_rows: int
    len_list: int
    policies: list[PolicyResult]
    comparison: ope.Comparison | None
    warnings: list[str] = field(default_factory=list)
    logged_provenance: dict[str, int] = field(default_factory=dict)
    deterministic_logger: bool = False
    allow_unsupported: bool = False

    def problems(self) -> list[str]:
        """Columns that got no estimate (unsupported, or not run): the command then exits 4."""
        return [p.label for p in self.policies
                if p.not_run is not None or (p.unsupported is not None and not self.allow_unsupported)]

    def shown(self, policy: PolicyResult) -> bool:
        return policy.not_run is None and (policy.unsupported is None or self.allow_unsupported)

    def to_dict(self) -> dict[str, Any]:
        comp = self.comparison
        policies = []
        for p in self.policies:
            d = p.to_dict()
            if comp is not None and self.shown(p):
                d["estimates"] = {e.estimator: {"value": _number(e.value), "ci": [_number(e.lower), _number(e.upper)],
                                                "warnings": list(e.warnings)}
                                  for e in comp.estimates if e.policy == p.label}
                w = next((e.weights for e in comp.estimates if e.policy == p.label), None)
                d["weights"] = None if w is None else {k: (_number(v) if isinstance(v, float) else v)
                                                       for k, v in w.to_dict().items() if k != "mean_ci"}
            policies.append(d)
        differences = []
        if comp is not None:
            for d in comp.differences:
                differences.append({"estimator": d.estimator, "a": d.a, "b": d.b, "diff": _number(d.value),
                                    "ci": [_number(d.lower), _number(d.upper)], "significant": d.significant})
        return {"log": self.source, "output": self.output, "reward": dict(self.reward), "weights": self.weights,
                "estimators": list(self.estimators), "requests": self.n_requests, "rows": self.n_rows,
                "positions": self.len_list, "value": "expected reward per shown position (OBP's policy value)",
                "interval": "95% bootstrap over requests (1,000 resamples)",
                "deterministic_logger": self.deterministic_logger, "logged_provenance": dict(self.logged_provenance),
                "policies": policies, "differences": differences, "warnings": list(self.warnings)}

    def notes(self) -> list[str]:
        lines = list(self.warnings)
        for p in self.policies:
            if p.not_run is not None:
                lines.append(f"{p.label}: not evaluated: {p.not_run}")
                continue
            if p.unsupported is not None:
                lines.append(f"{p.label}: {'biased (shown anyway): ' if self.allow_unsupported else 'no estimate: '}"
                             f"{p.unsupported}")
            if p.failures:
                lines.append(f"{p.label}: {p.failures} of {p.requests} requests failed (counted as showing nothing); "
                             "first errors: " + " | ".join(p.failure_messages))
            if p.stochastic:
                lines.append(f"{p.label}: stochastic ({', '.join(p.stochastic)}): evaluated through one draw per "
                             "request, independent of the logged one (unbiased, wider intervals)")
        if self.comparison is not None:
            seen: set[str] = set()
            for e in self.comparison.estimates:
                for w in e.warnings:
                    pol = next((p for p in self.policies if p.label == e.policy), None)
                    if w not in seen and not (pol is not None and pol.unsupported is not None):
                        seen.add(w)
                        lines.append(f"warning: {w}")
        return lines

    def render(self, console: Any | None = None) -> None:
        """The estimates table, the paired differences and the notes, on ``console`` (stdout by default)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = console or Console()
        reward = ", ".join(f"{k}={v:g}" for k, v in self.reward.items())
        console.print(f"llmrec eval --logged {self.source}: {self.n_requests} requests, {self.n_rows} shown items "
                      f"in output '{self.output}' ({self.len_list} positions); reward {reward}; {self.weights} "
                      "weights", markup=False, highlight=False)
        comp = self.comparison
        table = Table(title="estimated reward per shown position, 95% bootstrap interval over requests")
        for col in ("policy", "estimator", "value", "95% interval", "matched rows", "ESS", "mean weight"):
            table.add_column(col, justify="left" if col in ("policy", "estimator") else "right", no_wrap=True)
        for p in self.policies:
            if comp is None or not self.shown(p):
                table.add_row(escape(p.label), "", "not run" if p.not_run is not None else "unsupported",
                              "", "", "", "", end_section=True)
                continue
            for n, est in enumerate(self.estimators):
                e = comp.get(p.label, est)
                w = e.weights
                value = "n/a" if not math.isfinite(e.value) else f"{e.value:.4f}"
                ci = "" if not math.isfinite(e.lower) else f"{e.lower:.4f} to {e.upper:.4f}"
                first = n == 0
                table.add_row(escape(p.label + (" (biased)" if p.unsupported else "")) if first else "",
                              est.upper(), value, ci, f"{w.matched} of {w.n_rows}" if first else "",
                              f"{w.ess:.0f}" if first else "", f"{w.mean:.3f}" if first else "",
                              end_section=n == len(self.estimators) - 1)
        console.print(table)
        if comp is not None and comp.differences:
            diffs = Table(title="paired differences (first - second), 95% bootstrap interval")
            for col in ("first", "second", "estimator", "difference", "95% interval", "significant"):
                diffs.add_column(col, justify="right" if col in ("difference", "95% interval") else "left",
                                 no_wrap=True)
            pairs = list(dict.fromkeys((d.a, d.b) for d in comp.differences))
            by = {(d.a, d.b, d.estimator): d for d in comp.differences}
            for a, b in pairs:
                shown = [by[(a, b, est)] for est in self.estimators if (a, b, est) in by]
                for n, d in enumerate(shown):
                    finite = math.isfinite(d.value)
                    diffs.add_row(escape(a) if n == 0 else "", escape(b) if n == 0 else "", d.estimator.upper(),
                                  f"{d.value:+.4f}" if finite else "n/a",
                                  f"{d.lower:+.4f} to {d.upper:+.4f}" if finite else "",
                                  ("[bold]yes[/bold]" if d.significant else "no") if finite else "",
                                  end_section=n == len(shown) - 1)
            console.print(diffs)
        for line in self.notes():
            console.print(line, markup=False, highlight=False, soft_wrap=True)


async def aevaluate_logged(
    specs: Sequence[Any],
    source: str | os.PathLike[str],
    *,
    variants: bool | Sequence[str] | None = True,
    reward: str | Mapping[str, float] = DEFAULT_REWARD,
    weights: Literal["position", "cascade"] = "position",
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    output: str | None = None,
    limit: int | None = None,
    since: float | None = None,
    concurrency: int = 8,
    n_bootstrap: int = ope.N_BOOTSTRAP,
    seed: int = 0,
    clip: float = math.inf,
    allow_unsupported: bool = False,
    stamps: Iterable[str | os.PathLike[str]] = (),
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    archive: bool = True,
) -> LoggedReport:
    """:func:`evaluate_logged`, for code already inside an event loop."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    reward_weights = parse_reward(reward) if isinstance(reward, str) else dict(reward)
    wanted = tuple(dict.fromkeys(ope.ALIASES.get(e.strip().lower(), e.strip().lower()) for e in estimators))
    bad = [e for e in wanted if e not in ope.ESTIMATORS]
    if bad or not wanted:
        raise ValueError(f"unknown estimator {', '.join(repr(b) for b in bad) or '(none given)'}: choose from "
                         f"{', '.join(ope.ESTIMATORS)}")
    targets = resolve_targets(specs, variants)
    if not targets:
        raise ValueError("no spec to evaluate")
    registry = targets[0].graph.registry
    read = read_impressions(source, registry, since=since, limit=limit)
    out_name = logged_output(read.impressions, output)
    rows = build_rows(read.impressions, out_name, reward_weights, weights)
    logged = ope.LoggedFeedback(action=rows.action, position=rows.position, reward=rows.reward, pscore=rows.pscore,
                                round_index=rows.round_index, len_list=rows.len_list)
    warnings = read.notes()
    if rows.dropped_rows:
        warnings.append(f"{rows.dropped_rows} shown items have no usable "
                        f"{'propensity' if weights == 'position' else 'cascade probability'} (a stochastic node "
                        "ran but did not rank them) and were left out")
    if rows.without_output:
        warnings.append(f"{rows.without_output} impressions show nothing in output '{out_name}' and were left out")
    deterministic = bool(np.all(rows.pscore >= 1.0 - 1e-12))

    # DR's reward model, cross-fitted over two halves of the requests
    folds = cross_fit_folds(len(rows.impressions), seed)
    row_fold = folds[rows.round_index]
    models = []
    for f in (0, 1):
        other = row_fold != f if np.any(row_fold != f) else np.ones(row_fold.size, dtype=bool)
        models.append(PositionModel.fit(rows.position[other], rows.action[other], rows.reward[other], rows.len_list))
    q_fact = np.where(row_fold == 0, models[0].predict(rows.action, rows.position),
                      models[1].predict(rows.action, rows.position))

    policies: dict[str, ope.TargetPolicy] = {LOGGED: ope.TargetPolicy(pi_e=rows.pscore.copy(), q_hat_expected=q_fact)}
    results = [PolicyResult(LOGGED, requests=len(rows.impressions))]
    known = known_stamps(source, registry, stamps)
    current: dict[tuple[str, str | None], Stamp] = {}
    requests = [(f"{imp.request_id}:target", imp.inputs) for imp in rows.impressions]
    for target in targets:
        graph = target.graph
        res = PolicyResult(target.label, graph.name, target.path, target.variant, requests=len(requests))
        results.append(res)
        if out_name not in graph.outputs:
            res.not_run = (f"it has no output '{out_name}' (the log's); its outputs are: {', '.join(graph.outputs)}; "
                           "name the logged output with --output")
            continue
        runtime = Runtime(graph)
        shown = (progress_.step(f"running {target.label} on {len(requests)} logged requests", len(requests))
                 if progress else None)
        try:
            try:
                await runtime.start()
            except LlmrecError as exc:
                res.not_run = str(exc)
                if log is not None:
                    log(f"{target.label}: not evaluated: {exc}")
                continue
            stamp = provenance_stamp(graph, dict(runtime.resources))
            res.provenance = stamp.to_dict()
            current[(graph.name, target.variant)] = stamp
            if archive:
                archive_stamp(stamp, settings=graph.document.data)
            if shown is not None:
                with shown as advance:
                    answers = await run_requests(runtime, requests, concurrency=concurrency, advance=advance)
            else:
                answers = await run_requests(runtime, requests, concurrency=concurrency)
        finally:
            await runtime.close()
        ids: list[list[str]] = []
        stochastic: set[str] = set()
        for imp, result in zip(rows.impressions, answers):
            if isinstance(result, Exception):
                res.failures += 1
                if len(res.failure_messages) < MAX_MESSAGES:
                    what = "inputs do not fit: " if isinstance(result, InputError) else ""
                    res.failure_messages.append(f"{imp.request_id}: {what}{result}")
                ids.append([])
                continue
            stochastic.update(stochastic_nodes(result.trace))
            found = answer_ids(result.outputs.get(out_name))
            if found is None:
                res.failures += 1
                if len(res.failure_messages) < MAX_MESSAGES:
                    res.failure_messages.append(f"{imp.request_id}: output '{out_name}' is not a list of items")
                ids.append([])
                continue
            ids.append(found)
        res.stochastic = sorted(stochastic)
        pi_e = target_probs(rows, ids, weights, logged)
        at_k = np.full(rows.round_index.size, -1, dtype=np.int64)  # the target's item at each row's position
        for i, (r, k) in enumerate(zip(rows.round_index.tolist(), rows.position.tolist())):
            if k < len(ids[r]):
                at_k[i] = rows.index(ids[r][k])
        q_exp = np.where(row_fold == 0, models[0].predict(at_k, rows.position), models[1].predict(at_k, rows.position))
        policies[target.label] = ope.TargetPolicy(pi_e=pi_e, q_hat_expected=q_exp)

    warnings += _stamp_warnings(rows.impressions, targets, current, known)
    comparison = None
    runnable = {name: pol for name, pol in policies.items()
                if next(p for p in results if p.label == name).not_run is None}
    comparison = ope.compare(logged, runnable, wanted, q_fact, lambda_=clip, n_bootstrap=n_bootstrap, seed=seed,
                             on_support="warn")
    for p in results:
        if p.label not in runnable or p.label == LOGGED:
            continue
        e = comparison.get(p.label, wanted[0])
        if e.weights.unsupported_rows:
            p.unsupported = _unsupported_text(p, e.weights, deterministic, len(rows.impressions))
    report = LoggedReport(read.source, out_name, reward_weights, weights, wanted, len(rows.impressions),
                          logged.n_rows, rows.len_list, results, comparison, warnings,
                          dict(Counter(imp.provenance for imp in rows.impressions)), deterministic, allow_unsupported)
    if not allow_unsupported:  # a column without support gets no number anywhere, differences included
        hidden = {p.label for p in results if p.unsupported is not None}
        comparison.differences[:] = [d for d in comparison.differences if d.a not in hidden and d.b not in hidden]
    return report


def _unsupported_text(p: PolicyResult, w: ope.Weights, deterministic: bool, n_requests: int) -> str:
    if deterministic:
        return (f"the logging policy was deterministic (every logged propensity is 1.0), and this policy shows "
                f"something else on {w.unsupported_rows} of {w.n_rows} logged rows: deterministic logs can only "
                "evaluate a policy that shows exactly what was logged (on-policy). To compare variants off-policy, "
                "serve with a stochastic ranking such as rerank.explore (docs/serving.md) and evaluate those logs")
    return (f"on {w.unsupported_rows} of {w.n_rows} logged rows the logging policy showed its item with "
            "certainty (propensity 1.0) where this policy shows another: no row of the log carries that part of "
            "its value. Log with more exploration, or pass --allow-unsupported for the biased estimates")


def _stamp_warnings(impressions: Sequence[Impression], targets: Sequence[Target],
                    current: Mapping[tuple[str, str | None], Stamp],
                    known: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One warning per logged provenance that is not what the matching target is now, naming what changed."""
    groups: Counter[tuple[str, str, str | None]] = Counter((imp.provenance, imp.spec, imp.variant)
                                                           for imp in impressions)
    names = {t.graph.name for t in targets}
    out = []
    for (prov, spec, variant), n in groups.items():
        if any(s.id == prov for s in current.values()):
            continue
        now = current.get((spec, variant)) or current.get((spec, None))
        served = f"spec '{spec}'" + (f" variant '{variant}'" if variant else "")
        if spec not in names:
            out.append(f"warning: {n} logged requests were served by {served} (provenance {prov or 'unknown'}), "
                       f"which is none of the specs evaluated ({', '.join(sorted(names))}): their inputs are used as "
                       "they are, and the logged propensities still define the logging policy")
            continue
        if now is None:
            continue
        graph = next((t.graph for t in targets if t.graph.name == spec and t.variant == variant),
                     next((t.graph for t in targets if t.graph.name == spec), None))
        out.append(f"warning: {n} logged requests were served by {served} with provenance {prov or 'unknown'}, "
                   f"but it is now {now.id}: "
                   + changes_text(prov, now, known, graph.document.data if graph is not None else None))
    return out


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths where two specs' settings differ, with both values: ``nodes.x.config.k: 10 -> 20``."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in new:
                out.append(f"{path} removed")
            elif key not in old:
                out.append(f"{path} added ({json.dumps(new[key], default=str)[:60]})")
            else:
                out += settings_diff(old[key], new[key], path)
        return out
    if old == new:
        return []
    return [f"{prefix}: {json.dumps(old, default=str)[:60]} -> {json.dumps(new, default=str)[:60]}"]


def changes_text(logged_id: str, now: Stamp, known: Mapping[str, Mapping[str, Any]],
                 settings: Mapping[str, Any] | None = None) -> str:
    """What changed between a logged stamp (by id) and ``now``, in words (with the settings that differ, when
    the logged stamp was archived with its spec's and ``settings`` are the spec's now), or why it is unknown."""
    old = known.get(logged_id)
    if old is None:
        return (f"what changed is unknown (the components of stamp {logged_id or '(none)'} are not kept: save "
                "`GET /v1/provenance` beside the logs as provenance.json, or pass --stamps FILE)")
    changes = stamp_changes({k: v for k, v in old.items() if k != SETTINGS}, now.to_dict())
    if not changes:
        return "no component differs (a changed hash recipe)"
    text = "changed: " + describe_changes(changes)
    if "spec" in changes and isinstance(old.get(SETTINGS), Mapping) and settings is not None:
        diff = settings_diff(old[SETTINGS], settings)
        if diff:
            text += " (" + "; ".join(diff[:5]) + (f"; {len(diff) - 5} more" if len(diff) > 5 else "") + ")"
    return text


def evaluate_logged(specs: Sequence[Any], source: str | os.PathLike[str], **options: Any) -> LoggedReport:
    """Estimate each spec's (and each declared variant's) value on logged traffic; see the module doc.

    ``specs``: paths, ``(path, variant)`` pairs or Graphs; ``variants``: True (every declared one, the default),
    a list of names, or False/None; ``source``: a log folder, a ``.db`` file or ``NAME:WHERE``. Options:
    ``reward`` (``"click"``, ``"click=1,purchase=5"``...), ``weights`` (``"position"`` or ``"cascade"``),
    ``estimators`` (of ``ips``, ``snips``, ``dr``, ``sndr``), ``output`` (the logged output evaluated; default:
    the one most impressions show), ``limit`` (the first N requests), ``since`` (unix seconds), ``concurrency``,
    ``n_bootstrap``, ``seed`` (bootstrap and DR's folds), ``clip`` (the largest importance weight kept),
    ``allow_unsupported`` (estimate columns the log cannot support anyway, marked biased), ``stamps`` (files of
    provenance stamps, to name what changed since the log). Raises :class:`LogError` for a log that cannot be
    used, ValueError for bad options and SpecErrors for invalid specs."""
    return asyncio.run(aevaluate_logged(specs, source, **options))


__all__ = ["DEFAULT_ESTIMATORS", "DEFAULT_REWARD", "LOGGED", "LogError", "LogRead", "LoggedReport", "PolicyResult",
           "PositionModel", "Rows", "SETTINGS", "SHRINK", "STAMP_ARCHIVE", "Target", "WEIGHTS", "aevaluate_logged",
           "archive_stamp", "build_rows", "changes_text", "check_location", "cross_fit_folds", "describe_changes",
           "evaluate_logged", "item_reward", "known_stamps", "logged_output", "parse_reward", "parse_since",
           "read_impressions", "resolve_targets", "run_requests", "settings_diff", "stochastic_nodes",
           "target_probs"]
