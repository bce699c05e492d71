"""Online experiments in ``llmrec serve``: an A/B split by a stable hash, team-draft interleaving, and the results.

    exp = parse_experiment("ab:default,fast:90,10", name="shop-ranker")
    arm, bucket = exp.assign("u1")                      # the same arm for u1 in every request, worker and restart
    merged = team_draft(list_a, list_b, random.Random(7))  # merged.ids, merged.teams, merged.flips
    report = experiment_results(read_logs("logs/"))      # per arm CTR with intervals, the difference, p, SRM

**Arms** are the spec as written (``default``) or a variant it declares (``variants:``, applied exactly as
``llmrec eval --variants`` applies it: :func:`llmrec.spec.variants.check_variant`). **Assignment** of an A/B
experiment: a unit (the ``user_id`` input; without one the session id; without one the request id) falls in
bucket ``int(sha256(name + "\\0" + salt + "\\0" + unit)[:8 bytes]) % 10000``, and the arms own consecutive ranges
of buckets in proportion to their weights, so a unit always sees the same arm, in every worker and after a
restart, and raising a treatment's weight only moves units into it. **Interleaving** runs both arms for every
request and merges their lists by team draft (Radlinski, Kurup and Joachims, "How does clickthrough data reflect
retrieval quality?", CIKM 2008): per round a coin flip decides which team picks first, and each team adds its
highest-ranked item not yet in the list. The flips come from a generator seeded by the experiment's name, seed,
request id and output, so a request id always gets the same list, and they are logged so it can be replayed.

**Results** (:func:`experiment_results`) are read from the impression log joined with its feedback. A/B: per
arm impressions, units, feedback counts and CTR (the share of impressions with a click on a shown item) with a
95% percentile bootstrap interval over units (a unit's impressions are resampled together, since they are
correlated), each treatment minus the control with a bootstrap interval and a permutation p-value (units'
arm labels shuffled, the CTR ratio recomputed), and a sample-ratio-mismatch chi-square test of the units per arm
against the weights. Interleaving: per impression the team with more clicks on its items wins; wins, losses,
ties, the preference ``(wins_A - wins_B) / (wins_A + wins_B + ties)`` with a bootstrap interval over units, a
two-sided binomial sign test of wins against losses, and the balance of the first picks.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..data.dataset import Dataset
from ..errors import LlmrecError
from ..node import wants_context
from .logs import Impression, LogReader, read_logs, shown_lists

#: buckets of the assignment hash: weights are honoured to 0.01%
BUCKETS = 10_000
#: the arm that is the spec as written (unless the spec declares a variant of that name)
DEFAULT_ARM = "default"
KINDS = ("ab", "interleave")
#: the two interleaved teams, as flips and teams are logged: A is the first arm, B the second
TEAMS = ("A", "B")
ALPHA = 0.05
#: below this p-value the units per arm are called a sample ratio mismatch (the usual, strict threshold: the check
#: runs on every experiment, and a real mismatch gives p-values far smaller)
SRM_ALPHA = 0.001
RESAMPLES = 2000
PERMUTATIONS = 10_000
SEED = 0
LEVEL = 0.95
_CHUNK = 2_000_000  # array elements per bootstrap or permutation chunk


class ExperimentError(LlmrecError):
    """An experiment that cannot be set up or read: a malformed ``--experiment``, an unknown arm, a log without
    experiment records."""


# -- the experiment ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """An online experiment: ``kind`` (``ab`` or ``interleave``), its ``arms`` (``default`` or variant names),
    their ``weights`` (A/B), the ``name`` and ``salt`` of the assignment hash, and the interleaving ``seed``."""

    kind: str
    arms: tuple[str, ...]
    weights: tuple[float, ...]
    name: str
    salt: str = ""
    seed: int = 0

    @property
    def cuts(self) -> list[int]:
        """The first bucket past each arm's range (the last is :data:`BUCKETS`)."""
        total = sum(self.weights)
        acc, cuts = 0.0, []
        for w in self.weights:
            acc += w
            cuts.append(round(BUCKETS * acc / total))
        cuts[-1] = BUCKETS
        return cuts

    def bucket(self, unit: str) -> int:
        """The unit's bucket, 0 .. 9999: the first 8 bytes of sha256(name NUL salt NUL unit), big-endian, mod
        10000 (any language can recompute it)."""
        digest = hashlib.sha256(f"{self.name}\0{self.salt}\0{unit}".encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def assign(self, unit: str) -> tuple[str, int]:
        """(arm, bucket) of a unit."""
        b = self.bucket(unit)
        return self.arms[bisect.bisect_right(self.cuts, b)], b

    def rng(self, request_id: str, output: str) -> random.Random:
        """The coin flips of one request's output: a generator seeded by the experiment, its seed, the request id
        and the output's name."""
        digest = hashlib.sha256(f"{self.name}\0{self.seed}\0{request_id}\0{output}".encode("utf-8")).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "arms": list(self.arms), "weights": list(self.weights),
                "salt": self.salt, "seed": self.seed}

    def arm_record(self, arm: str, bucket: int | None, unit: str, forced: bool = False) -> dict[str, Any]:
        """The ``experiment`` field of an impression one arm answered: its arm, the unit kind (``user``,
        ``session``, ``request``) and bucket, and (A/B) the weights, for the sample-ratio check."""
        record: dict[str, Any] = {"name": self.name, "kind": self.kind, "arm": arm, "arms": list(self.arms),
                                  "unit": unit, "bucket": bucket}
        if self.kind == "ab":
            record["weights"] = list(self.weights)
        if forced:
            record["forced"] = True
        return record

    def interleave_record(self, unit: str, provenance: Mapping[str, str], flips: Mapping[str, str] | None = None
                          ) -> dict[str, Any]:
        """The ``experiment`` field of an interleaved impression: the arms (A first), the unit kind, the seed,
        each arm's provenance id and each merged output's flips (who picked first per round)."""
        record: dict[str, Any] = {"name": self.name, "kind": self.kind, "arms": list(self.arms), "unit": unit,
                                  "seed": self.seed, "provenance": dict(provenance)}
        if flips is not None:
            record["flips"] = dict(flips)
        return record


def parse_experiment(text: str, name: str | None = None, salt: str = "", seed: int = 0,
                     spec_name: str = "spec") -> Experiment:
    """``ab:ARM,ARM[,ARM...][:W,W,...]`` or ``interleave:ARM,ARM`` -> :class:`Experiment` (ValueError saying what
    to write otherwise). Weights default to equal; ``name`` defaults to ``SPEC_NAME:ARM,ARM``, so that changing
    the weights keeps every unit's bucket."""
    usage = "write ab:CONTROL,TREATMENT[:WEIGHT,WEIGHT] (e.g. ab:default,fast:90,10) or interleave:ARM,ARM"
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(f"'{text}' is not an experiment: {usage}")
    arms_text, sep, weights_text = rest.partition(":")
    arms = tuple(a.strip() for a in arms_text.split(","))
    if any(not a for a in arms) or len(arms) < 2:
        raise ValueError(f"'{text}': name at least two arms, comma-separated ({usage})")
    if len(set(arms)) != len(arms):
        raise ValueError(f"'{text}': an arm is named twice")
    if kind == "interleave" and len(arms) != 2:
        raise ValueError(f"'{text}': interleaving compares exactly two arms")
    if sep:
        if kind == "interleave":
            raise ValueError(f"'{text}': interleaving takes no weights (both arms run for every request)")
        try:
            weights = tuple(float(w) for w in weights_text.split(","))
        except ValueError:
            raise ValueError(f"'{text}': weights are numbers, one per arm, e.g. :90,10") from None
        if len(weights) != len(arms):
            raise ValueError(f"'{text}': {len(weights)} weights for {len(arms)} arms")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"'{text}': weights must be non-negative numbers, not all 0")
    else:
        weights = tuple(1.0 for _ in arms)
    return Experiment(kind, arms, weights, name or f"{spec_name}:{','.join(arms)}", salt, int(seed))


def arm_variant(arm: str, declared: Sequence[str]) -> str | None:
    """The variant an arm applies: None for ``default`` (unless the spec declares a variant of that name); the
    arm's own name otherwise. Raises :class:`ExperimentError` for a name that is neither."""
    if arm in declared:
        return arm
    if arm == DEFAULT_ARM:
        return None
    raise ExperimentError(f"arm '{arm}' is not a variant of the spec (declared variants: "
                          f"{', '.join(declared) or 'none'}; '{DEFAULT_ARM}' is the spec as written)")


def assignment_unit(inputs: Mapping[str, Any], session_id: str | None, request_id: str) -> tuple[str, str]:
    """(kind, id) of the unit a request is assigned by: its ``user_id`` input, else its session, else itself."""
    user = inputs.get("user_id")
    if isinstance(user, (str, int)) and not isinstance(user, bool) and user != "":
        return "user", str(user)
    if session_id:
        return "session", session_id
    return "request", request_id


def _resource_key(res: Any) -> str:
    return json.dumps([res.cls.name, res.config.model_dump(mode="json")], sort_keys=True, default=str)


def shared_resources(graph: Any, earlier: Sequence[tuple[Any, Mapping[str, Any]]]) -> dict[str, Any]:
    """The resources of ``graph`` that an arm loaded before can lend it: those of the same name, type and config
    whose value cannot depend on a resource that differs (its type takes no load context, or provides a
    Dataset, or every resource of the two arms is the same). ``earlier``: (graph, loaded resources) per arm."""
    mine = {n: _resource_key(r) for n, r in graph.resources.items()}
    out: dict[str, Any] = {}
    for other, loaded in earlier:
        theirs = {n: _resource_key(r) for n, r in other.resources.items()}
        for n, key in mine.items():
            if n in out or theirs.get(n) != key or n not in loaded:
                continue
            res = graph.resources[n]
            provides = getattr(res.cls, "provides", None)
            dataset = isinstance(provides, type) and issubclass(provides, Dataset)
            if mine == theirs or dataset or not wants_context(res.cls(res.config).load):
                out[n] = loaded[n]
    return out


# -- team-draft interleaving ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interleaving:
    """A team-draft list: the ``ids`` in order, each one's team (``A`` or ``B``) and the team that picked first in
    each round (``flips``, e.g. ``"ABBA"``)."""

    ids: list[str]
    teams: list[str]
    flips: str


def team_draft(a: Sequence[str], b: Sequence[str], rng: random.Random | None = None, *, length: int | None = None,
               flips: str | None = None) -> Interleaving:
    """Merge rankings ``a`` and ``b`` by team draft: while both still have an item not in the list (and the list
    is shorter than ``length``, default the longer ranking's length), the team with fewer picks picks, and when
    both have as many a coin flip (``rng.random() < 0.5``: A first) decides; a team picks its highest-ranked item
    not in the list yet. ``flips`` replays a logged draft instead of flipping."""
    if rng is None and flips is None:
        raise ValueError("team_draft needs an rng or the logged flips")
    limit = max(len(a), len(b)) if length is None else length
    ids: list[str] = []
    teams: list[str] = []
    rounds: list[str] = []
    seen: set[str] = set()
    ia = ib = picks_a = picks_b = 0
    replay = iter(flips) if flips is not None else None
    while len(ids) < limit:
        while ia < len(a) and a[ia] in seen:
            ia += 1
        while ib < len(b) and b[ib] in seen:
            ib += 1
        if ia >= len(a) or ib >= len(b):
            break
        if picks_a < picks_b:
            team = "A"
        elif picks_b < picks_a:
            team = "B"
        else:
            if replay is not None:
                team = next(replay, None) or ""
                if team not in TEAMS:
                    raise ValueError(f"the logged flips {flips!r} end too soon or hold something but A and B")
            else:
                assert rng is not None
                team = "A" if rng.random() < 0.5 else "B"
            rounds.append(team)
        item = a[ia] if team == "A" else b[ib]
        ids.append(item)
        teams.append(team)
        seen.add(item)
        if team == "A":
            picks_a += 1
        else:
            picks_b += 1
    return Interleaving(ids, teams, "".join(rounds))


def mark_teams(record: dict[str, Any], teams: Mapping[str, Sequence[str | None]]) -> dict[str, Any]:
    """Give an impression record's items (:func:`~llmrec.serve.logs.impression_record`) their ``team`` from
    ``teams`` (output -> the arm of each position, None for an item credited to neither); their propensity is
    unknown (None), since the coin flips made the list. Changes ``record`` and returns it."""
    for row in record["items"]:
        team = teams.get(row["output"])
        if team is not None and row["position"] <= len(team):
            if team[row["position"] - 1] is not None:
                row["team"] = team[row["position"] - 1]
            row["propensity"] = None
            if "cascade" in row:
                row["cascade"] = None
    return record


def _list_of(value: Any) -> list[Any] | None:
    """The items of an output value as :func:`~llmrec.serve.logs.shown_lists` finds them, empty lists included."""
    if isinstance(value, dict):
        items = value.get("items")
        value = items if isinstance(items, list) else None
    if isinstance(value, list) and all(isinstance(i, dict) and isinstance(i.get("id"), (str, int)) for i in value):
        return value
    return None


def interleave_outputs(outputs_a: Mapping[str, Any], outputs_b: Mapping[str, Any],
                       rng_for: Callable[[str], random.Random], fill: bool = True,
                       ) -> tuple[dict[str, Any], dict[str, list[str | None]], dict[str, str]]:
    """Merge two answers' outputs: every output that is a list of items in both (as the impression log finds
    them) becomes their team-draft merge, its items the contributing arm's objects (a ``rank`` renumbered);
    every other output is A's. Returns (outputs, the team of each merged output's items, each one's flips);
    ``rng_for(output)`` gives an output's coin flips.

    Team draft stops when either list has no item left that is not already shown, which with two short,
    overlapping lists (a top k each) leaves the answer short of k. With ``fill`` the rest of the other list
    follows, up to the longer list's length, with no team (None): a click on such an item credits neither arm,
    so the comparison stays the balanced draft's."""
    merged = dict(outputs_a)
    teams: dict[str, list[str | None]] = {}
    flips: dict[str, str] = {}
    names = [n for n, _ in shown_lists(outputs_a)] + [n for n, _ in shown_lists(outputs_b)]
    for name in dict.fromkeys(names):
        items_a, items_b = _list_of(outputs_a.get(name)), _list_of(outputs_b.get(name))
        if items_a is None or items_b is None:
            continue
        by_id_a = {str(i["id"]): i for i in items_a}
        by_id_b = {str(i["id"]): i for i in items_b}
        ids_a, ids_b = [str(i["id"]) for i in items_a], [str(i["id"]) for i in items_b]
        draft = team_draft(ids_a, ids_b, rng_for(name))
        order = list(zip(draft.ids, draft.teams))
        if fill:  # one list ran out of new items: the other's rest, credited to neither team
            limit, seen = max(len(ids_a), len(ids_b)), set(draft.ids)
            for item_id, team in [(i, "a") for i in ids_a] + [(i, "b") for i in ids_b]:
                if len(order) >= limit:
                    break
                if item_id not in seen:
                    seen.add(item_id)
                    order.append((item_id, team))
        shown = []
        for position, (item_id, team) in enumerate(order, 1):
            item = dict((by_id_a if team in ("A", "a") else by_id_b)[item_id])
            if isinstance(item.get("rank"), int) and not isinstance(item.get("rank"), bool):
                item["rank"] = position
            shown.append(item)
        base = outputs_a.get(name) if isinstance(outputs_a.get(name), dict) else outputs_b.get(name)
        merged[name] = {**base, "items": shown} if isinstance(base, dict) else shown
        teams[name] = [t if t in TEAMS else None for _, t in order]
        flips[name] = draft.flips
    return merged, teams, flips


# -- results ----------------------------------------------------------------------------------------------------


@dataclass
class ArmResult:
    """One arm of an A/B experiment: ``units`` (users, or sessions/requests where there was no user),
    ``impressions``, ``clicked`` (impressions with a click on a shown item), ``feedback`` (events on shown items
    by type), ``ctr`` = clicked / impressions and its bootstrap interval over units."""

    arm: str
    units: int
    impressions: int
    clicked: int
    clicks: int
    feedback: dict[str, int]
    ctr: float
    ctr_ci: tuple[float, float]
    expected_share: float
    share: float


@dataclass
class Comparison:
    """``treatment`` minus ``control`` in CTR: the difference, its bootstrap interval, the permutation p-value
    over units and whether p < alpha."""

    control: str
    treatment: str
    diff: float
    ci: tuple[float, float]
    p_value: float
    significant: bool
    relative: float | None  # diff / control's CTR


@dataclass
class ABResult:
    """An A/B experiment's results (see the module doc). ``srm_p`` < :data:`SRM_ALPHA` flags a sample ratio
    mismatch: the assignment or the logging is broken, and no difference should be trusted."""

    name: str
    arms: list[ArmResult]
    comparisons: list[Comparison]
    srm_chi2: float
    srm_p: float
    srm: bool
    units: int
    impressions: int
    forced: int  # impressions served by a ?variant= override: not analysed
    crossovers: int  # units seen in more than one arm (the weights or the name changed, or an override)
    weights_changed: bool
    unit_kinds: dict[str, int]
    test: str = "permutation over units"
    kind: str = "ab"

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass
class InterleaveResult:
    """An interleaving experiment's results (see the module doc). ``delta`` > 0 means arm A is preferred."""

    name: str
    arm_a: str
    arm_b: str
    impressions: int
    units: int
    with_clicks: int
    wins_a: int
    wins_b: int
    ties: int
    delta: float
    ci: tuple[float, float]
    p_value: float
    significant: bool
    preferred: str | None
    first_a: int  # rounds of the first output's first pick won by A's coin
    first_b: int
    first_p: float
    single_arm: int  # impressions one arm answered alone (the other failed): not analysed
    forced: int
    test: str = "two-sided binomial sign test on wins vs losses"
    kind: str = "interleave"

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass
class ExperimentReport:
    """Every experiment found in a log, and how many impressions were outside any experiment."""

    results: list[ABResult | InterleaveResult]
    impressions: int
    outside: int
    alpha: float = ALPHA
    resamples: int = RESAMPLES
    permutations: int = PERMUTATIONS
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"impressions": self.impressions, "outside_experiments": self.outside, "alpha": self.alpha,
                "resamples": self.resamples, "permutations": self.permutations, "notes": self.notes,
                "experiments": [r.to_dict() for r in self.results]}


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _ratio_resamples(num: np.ndarray, den: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """sum(num) / sum(den) over ``resamples`` resamples of the units with replacement."""
    n = num.size
    out = np.empty(resamples)
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + rows] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    return out


def _percentiles(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _permutation_p(num: np.ndarray, den: np.ndarray, treated: int, observed: float, permutations: int,
                   rng: np.random.Generator) -> float:
    """Two-sided p of a CTR difference: the units' arm labels shuffled ``permutations`` times (arm sizes kept),
    p = (as extreme + 1) / (permutations + 1)."""
    n = num.size
    labels = np.zeros(n)
    labels[:treated] = 1.0
    tot_num, tot_den = num.sum(), den.sum()
    extreme = 0
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, permutations, step):
        rows = min(step, permutations - start)
        mask = rng.permuted(np.tile(labels, (rows, 1)), axis=1)
        t_num, t_den = mask @ num, mask @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = t_num / t_den - (tot_num - t_num) / (tot_den - t_den)
        extreme += int(np.sum(np.abs(diff) >= abs(observed) - 1e-12))
    return (extreme + 1) / (permutations + 1)


def _unit_of(imp: Impression, exp: Mapping[str, Any]) -> str:
    kind = exp.get("unit")
    if kind == "user" and imp.user_id is not None:
        return f"user:{imp.user_id}"
    if kind == "session" and imp.session_id:
        return f"session:{imp.session_id}"
    if kind is None and imp.user_id is not None:
        return f"user:{imp.user_id}"
    return f"request:{imp.request_id}"


def _clicks(imp: Impression) -> list[str]:
    return [f.item_id for f in imp.feedback if f.type == "click" and f.shown]


def _ab(name: str, rows: list[tuple[Impression, dict[str, Any]]], resamples: int, permutations: int, seed: int,
        alpha: float) -> ABResult:
    from scipy import stats  # scipy.stats imports in about a second: only when results are computed

    forced = sum(1 for _, e in rows if e.get("forced"))
    rows = [(i, e) for i, e in rows if not e.get("forced")]
    if not rows:
        raise ExperimentError(f"experiment '{name}': every impression was served by a ?variant= override; "
                              "there is nothing to analyse")
    declared = [tuple(e.get("arms") or ()) for _, e in rows]
    arms_seen = list(dict.fromkeys(str(e.get("arm")) for _, e in rows))
    arms = list(declared[-1]) if declared[-1] else arms_seen
    arms += [a for a in arms_seen if a not in arms]
    weights_seen = {tuple(e.get("weights") or ()) for _, e in rows}
    last_weights = list(rows[-1][1].get("weights") or [1.0] * len(arms))
    weights = dict(zip(declared[-1] or arms, last_weights))
    per_unit: dict[str, dict[str, list[int]]] = {a: defaultdict(lambda: [0, 0, 0]) for a in arms}
    counts: dict[str, Counter[str]] = {a: Counter() for a in arms}
    arms_of_unit: dict[str, set[str]] = defaultdict(set)
    unit_kinds: Counter[str] = Counter()
    for imp, e in rows:
        arm = str(e.get("arm"))
        unit = _unit_of(imp, e)
        arms_of_unit[unit].add(arm)
        clicks = _clicks(imp)
        cell = per_unit[arm][unit]
        cell[0] += 1
        cell[1] += 1 if clicks else 0
        cell[2] += len(clicks)
        counts[arm].update(f.type for f in imp.feedback if f.shown)
    for unit in arms_of_unit:
        unit_kinds[unit.partition(":")[0]] += 1
    rng = np.random.default_rng(seed)
    total_units = sum(len(per_unit[a]) for a in arms)
    total_w = sum(weights.get(a, 0.0) for a in arms) or 1.0
    results, data = [], {}
    for a in arms:
        cells = np.array(list(per_unit[a].values()), dtype=float).reshape(-1, 3)
        den, num = cells[:, 0], cells[:, 1]
        data[a] = (num, den)
        impressions, clicked = int(den.sum()), int(num.sum())
        ctr = clicked / impressions if impressions else math.nan
        ci = _percentiles(_ratio_resamples(num, den, resamples, rng)) if impressions else (math.nan, math.nan)
        results.append(ArmResult(a, len(per_unit[a]), impressions, clicked, int(cells[:, 2].sum()),
                                 dict(sorted(counts[a].items())), ctr, ci, weights.get(a, 0.0) / total_w,
                                 len(per_unit[a]) / total_units if total_units else math.nan))
    comparisons = []
    control = arms[0]
    for t in arms[1:]:
        (nc, dc), (nt, dt) = data[control], data[t]
        if dc.sum() == 0 or dt.sum() == 0:
            comparisons.append(Comparison(control, t, math.nan, (math.nan, math.nan), math.nan, False, None))
            continue
        c_ctr, t_ctr = nc.sum() / dc.sum(), nt.sum() / dt.sum()
        diff = float(t_ctr - c_ctr)
        boots = _ratio_resamples(nt, dt, resamples, rng) - _ratio_resamples(nc, dc, resamples, rng)
        num, den = np.concatenate([nt, nc]), np.concatenate([dt, dc])
        p = _permutation_p(num, den, nt.size, diff, permutations, rng)
        comparisons.append(Comparison(control, t, diff, _percentiles(boots), p, bool(p < alpha),
                                      diff / c_ctr if c_ctr else None))
    observed = np.array([len(per_unit[a]) for a in arms], dtype=float)
    expected_share = np.array([weights.get(a, 0.0) for a in arms], dtype=float) / total_w
    if total_units and np.all(expected_share > 0):
        chi2, srm_p = stats.chisquare(observed, expected_share * observed.sum())
        chi2, srm_p = float(chi2), float(srm_p)
    else:  # an arm with weight 0 that still got units: a mismatch by definition
        extra = any(observed[i] > 0 for i in range(len(arms)) if expected_share[i] == 0)
        chi2, srm_p = (math.inf, 0.0) if extra else (math.nan, math.nan)
    return ABResult(name, results, comparisons, chi2, srm_p, bool(srm_p < SRM_ALPHA), total_units,
                    sum(r.impressions for r in results), forced,
                    sum(1 for s in arms_of_unit.values() if len(s) > 1), len(weights_seen) > 1, dict(unit_kinds))


def _interleave(name: str, rows: list[tuple[Impression, dict[str, Any]]], resamples: int, seed: int,
                alpha: float) -> InterleaveResult:
    from scipy import stats  # scipy.stats imports in about a second: only when results are computed

    forced = sum(1 for _, e in rows if e.get("forced"))
    single = sum(1 for _, e in rows if not e.get("forced") and e.get("fallback"))
    rows = [(i, e) for i, e in rows if not e.get("forced") and not e.get("fallback")]
    arms = list(rows[-1][1].get("arms") or TEAMS) if rows else list(TEAMS)
    arm_a, arm_b = (arms + list(TEAMS))[:2]
    per_unit: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    wins_a = wins_b = ties = with_clicks = first_a = first_b = 0
    for imp, e in rows:
        team_of: dict[str, str] = {}
        for item in imp.items:  # an item in several outputs is credited to its team in the first
            if item.team is not None:
                team_of.setdefault(item.id, item.team)
        credit = Counter(team_of[i] for i in _clicks(imp) if i in team_of)
        a, b = credit.get(arm_a, 0), credit.get(arm_b, 0)
        cell = per_unit[_unit_of(imp, e)]
        if a or b:
            with_clicks += 1
            if a > b:
                wins_a += 1
                cell[0] += 1
            elif b > a:
                wins_b += 1
                cell[1] += 1
            else:
                ties += 1
                cell[2] += 1
        flips = e.get("flips") or {}
        first = next(iter(flips.values()), "") if isinstance(flips, dict) else ""
        if first[:1] == "A":
            first_a += 1
        elif first[:1] == "B":
            first_b += 1
    decided = wins_a + wins_b + ties
    delta = (wins_a - wins_b) / decided if decided else math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    if decided:
        cells = np.array(list(per_unit.values()), dtype=float).reshape(-1, 3)
        rng = np.random.default_rng(seed)
        ci = _percentiles(_ratio_resamples(cells[:, 0] - cells[:, 1], cells.sum(axis=1), resamples, rng))
    p = float(stats.binomtest(wins_a, wins_a + wins_b, 0.5).pvalue) if wins_a + wins_b else math.nan
    first_p = float(stats.binomtest(first_a, first_a + first_b, 0.5).pvalue) if first_a + first_b else math.nan
    significant = bool(p < alpha)
    preferred = (arm_a if wins_a > wins_b else arm_b) if significant else None
    return InterleaveResult(name, arm_a, arm_b, len(rows), len(per_unit), with_clicks, wins_a, wins_b, ties, delta,
                            ci, p, significant, preferred, first_a, first_b, first_p, single, forced)


def experiment_results(records: Iterable[Impression] | str | os.PathLike[str] | Any, *, name: str | None = None,
                       resamples: int = RESAMPLES, permutations: int = PERMUTATIONS, seed: int = SEED,
                       alpha: float = ALPHA) -> ExperimentReport:
    """The results of every experiment in ``records`` (impressions joined with their feedback, as
    :func:`~llmrec.serve.logs.read_logs` yields them; or a log source it accepts). ``name`` keeps one
    experiment. Raises :class:`ExperimentError` when no impression belongs to an experiment."""
    if isinstance(records, (str, os.PathLike)) or hasattr(records, "append_impressions"):
        records = read_logs(records)
    groups: dict[tuple[str, str], list[tuple[Impression, dict[str, Any]]]] = {}
    total = outside = 0
    for imp in records:
        total += 1
        exp = imp.experiment
        if not exp or not isinstance(exp.get("name"), str) or exp.get("kind") not in KINDS:
            outside += 1
            continue
        groups.setdefault((exp["name"], exp["kind"]), []).append((imp, exp))
    notes = []
    if isinstance(records, LogReader):
        if records.unmatched:
            notes.append(f"{len(records.unmatched)} feedback event(s) name a request id no impression has")
        if records.skipped:
            notes.append(f"{records.skipped} unreadable record(s) skipped")
    if total == 0:
        raise ExperimentError("the log holds no impressions")
    if name is not None:
        groups = {k: v for k, v in groups.items() if k[0] == name}
    if not groups:
        which = f"experiment '{name}'" if name is not None else "any experiment"
        raise ExperimentError(f"none of the log's {total} impressions belongs to {which}: serve with "
                              "--experiment ab:ARM,ARM or interleave:ARM,ARM to run one")
    results: list[ABResult | InterleaveResult] = []
    for (exp_name, kind), rows in groups.items():
        if kind == "ab":
            results.append(_ab(exp_name, rows, resamples, permutations, seed, alpha))
        else:
            results.append(_interleave(exp_name, rows, resamples, seed, alpha))
    return ExperimentReport(results, total, outside, alpha, resamples, permutations, notes)


# -- text -------------------------------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p < 0.001 else f"{p:.4f}".rstrip("0").rstrip(".") if p < 1 else "1"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [line(header), *(line(r) for r in rows)]


def format_results(report: ExperimentReport) -> str:
    """The report as plain text: a table per experiment and a verdict line per comparison."""
    lines: list[str] = []
    for r in report.results:
        if lines:
            lines.append("")
        if isinstance(r, ABResult):
            kinds = ", ".join(f"{n} {k}s" for k, n in sorted(r.unit_kinds.items()))
            lines.append(f"experiment {r.name} (A/B): {r.impressions} impressions, {r.units} units ({kinds})")
            rows = []
            for a in r.arms:
                other = ", ".join(f"{k} {v}" for k, v in a.feedback.items() if k != "click") or "-"
                rows.append([a.arm, str(a.units), f"{a.share:.1%}", f"{a.expected_share:.1%}", str(a.impressions),
                             str(a.clicks), str(a.clicked), _num(a.ctr), f"[{_num(a.ctr_ci[0])}, {_num(a.ctr_ci[1])}]",
                             other])
            lines += _table(["arm", "units", "share", "expected", "impressions", "clicks", "clicked", "ctr",
                             "95% CI", "other feedback"], rows)
            for c in r.comparisons:
                rel = f" ({c.relative:+.1%})" if c.relative is not None else ""
                verdict = "significant" if c.significant else "not significant"
                lines.append(f"{c.treatment} - {c.control}: ctr {_num(c.diff, sign=True)}{rel}, 95% CI "
                             f"[{_num(c.ci[0], sign=True)}, {_num(c.ci[1], sign=True)}], p {_p(c.p_value)} "
                             f"({r.test}, {report.permutations}): {verdict} at {report.alpha:g}")
            srm = "MISMATCH: the split is not the configured one; do not trust the differences" if r.srm else "ok"
            lines.append(f"sample ratio: chi2 {_num(r.srm_chi2, 2)}, p {_p(r.srm_p)}: {srm}")
            if r.crossovers:
                lines.append(f"note: {r.crossovers} unit(s) saw more than one arm")
            if r.weights_changed:
                lines.append("note: the weights changed during the experiment; the sample ratio uses the last ones")
            if r.forced:
                lines.append(f"note: {r.forced} impression(s) served by a ?variant= override were left out")
        else:
            lines.append(f"experiment {r.name} (interleaving {r.arm_a} vs {r.arm_b}): {r.impressions} impressions, "
                         f"{r.units} units, {r.with_clicks} with clicks")
            lines += _table(["", "wins", "share"], [
                [f"{r.arm_a} wins", str(r.wins_a), f"{r.wins_a / r.with_clicks:.1%}" if r.with_clicks else "-"],
                [f"{r.arm_b} wins", str(r.wins_b), f"{r.wins_b / r.with_clicks:.1%}" if r.with_clicks else "-"],
                ["ties", str(r.ties), f"{r.ties / r.with_clicks:.1%}" if r.with_clicks else "-"]])
            verdict = f"{r.preferred} preferred" if r.preferred else "no significant preference"
            lines.append(f"preference ({r.arm_a} - {r.arm_b}) / (wins + ties): {_num(r.delta, sign=True)}, 95% CI "
                         f"[{_num(r.ci[0], sign=True)}, {_num(r.ci[1], sign=True)}], p {_p(r.p_value)} ({r.test}): "
                         f"{verdict} at {report.alpha:g}")
            balance = "ok" if not (math.isfinite(r.first_p) and r.first_p < SRM_ALPHA) else "MISMATCH"
            lines.append(f"first picks: {r.arm_a} {r.first_a}, {r.arm_b} {r.first_b}, binomial p {_p(r.first_p)}: "
                         f"{balance}")
            if r.single_arm:
                lines.append(f"note: {r.single_arm} impression(s) answered by one arm alone were left out")
            if r.forced:
                lines.append(f"note: {r.forced} impression(s) served by a ?variant= override were left out")
    if report.outside:
        lines.append("")
        lines.append(f"{report.outside} of {report.impressions} impressions belong to no experiment")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


__all__ = ["ABResult", "ArmResult", "BUCKETS", "Comparison", "DEFAULT_ARM", "Experiment", "ExperimentError",
           "ExperimentReport", "InterleaveResult", "Interleaving", "arm_variant", "assignment_unit",
           "experiment_results", "format_results", "interleave_outputs", "mark_teams", "parse_experiment",
           "shared_resources", "team_draft"]
