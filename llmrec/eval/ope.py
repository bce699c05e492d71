"""ope: off-policy evaluation of ranking policies from logged impressions: IPS, SNIPS, DR and SNDR with bootstrap
intervals, exactly as Open Bandit Pipeline defines them (OBP, st-tech/zr-obp: ``obp/ope/estimators.py``, classes
InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting, DoublyRobust, SelfNormalizedDoublyRobust;
``obp/utils.py``, ``estimate_confidence_interval_by_bootstrap``). numpy only; nothing here knows llmrec's log format.

The setting: OBP's position-based one (``len_list`` positions)
--------------------------------------------------------------
A log is rows ``i = 1..n``, one per item shown: the round it belongs to (a request, a slate), the action ``a_i``
(the item's index among that round's candidates), its position ``k_i`` (0-based), the reward ``r_i`` (a click, a
purchase) and the propensity ``p_i = pi_b(a_i | x_i, k_i)``: the probability that the logging (serving) policy
put that item at that position. A target policy is given by the same probability under it, ``pi_e(a_i | x_i, k_i)``
(helpers below compute it for rankings, epsilon-greedy and Plackett-Luce policies). With ``w_i = pi_e / p_i`` and
``E_n`` the mean over the ``n`` rows (OBP's "round-wise" average, a row being OBP's round):

=====  ======================================================================================  ================
IPS    ``E_n[ min(w_i, lambda) r_i ]``                                                          OBP ``ipw``
SNIPS  ``E_n[ w_i r_i ] / E_n[ w_i ]``                                                          OBP ``snipw``
DR     ``E_n[ qhat(x_i, pi_e, k_i) + min(w_i, lambda) (r_i - qhat(x_i, a_i, k_i)) ]``           OBP ``dr``
SNDR   ``E_n[ qhat(x_i, pi_e, k_i) + w_i (r_i - qhat(x_i, a_i, k_i)) / E_n[ w_i ] ]``           OBP ``sndr``
=====  ======================================================================================  ================

where ``qhat(x, a, k)`` is a reward model's estimate and ``qhat(x, pi_e, k) = sum_a pi_e(a|x,k) qhat(x, a, k)`` its
expectation under the target policy (OBP: ``np.average(qhat[i, :, k_i], weights=action_dist[i, :, k_i])``).
``lambda`` clips large weights (default infinity: no clipping); as in OBP it applies to IPS and DR only.

What is estimated is OBP's policy value, the expected reward per row: ``V = E[ sum_a pi_e(a|x,k) q(x, a, k) ]``
with ``q(x, a, k) = E[r | x, a, k]``; when every position of every slate is logged, that is the expected reward
of a slate divided by ``len_list``. IPS is unbiased for it (and DR with any reward model) when two things hold:

- *the item-position model*: an item's reward depends on the context, the item and its position, not on the other
  items shown (OBP's Independent IPS; the position-based click model is one). Position bias is allowed.
- *support*: wherever ``pi_e(a|x,k) > 0``, ``pi_b(a|x,k) > 0``. Where the target puts probability on an item
  (at a position) that the logger never shows there, no row carries that reward, and IPS and DR lose that part of
  the value while SNIPS rescales what it sees: all biased, silently. :func:`estimate` therefore refuses
  (:class:`SupportError`) when it can tell: a row logged with ``pscore == 1`` (a deterministic logger) whose item
  the target would not certainly put there, or, given the logger's full distribution, any row where the target
  puts mass outside it. Otherwise it tests the mean importance weight, whose expectation is exactly 1 under
  full support and ``1 - (mass outside the support)`` without it, and warns when it is more than 3.29 standard
  errors (p < 0.001) from 1.

``ignore_position=True`` in the policy helpers is OBP's ``position=None`` relaxation: positions are ignored, and
each policy's probability is its position-averaged one ``(1/len_list) sum_k pi(a|x,k)`` (an item anywhere in the
slate counts). Give the logger's propensities the same way (:func:`position_averaged`). The support is then far
larger and the variance far lower, but it is unbiased only if rewards do not depend on the position at all.

Intervals
---------
As OBP's ``estimate_confidence_interval_by_bootstrap``: an estimator's per-row terms (what is inside ``E_n``
above; SNIPS and SNDR divided by the full sample's mean weight) are resampled with replacement ``n_bootstrap``
times (default 1,000) and the ``alpha/2`` and ``1 - alpha/2`` percentiles of the resampled means (numpy's linear
interpolation) are the interval. The indices come from ``numpy.random.RandomState(seed).randint``, the stream
OBP's ``RandomState.choice`` draws, so with one row per round the interval is OBP's own (tests/eval/test_ope_obp.py
checks it to 1e-9). The rows of one slate share a user and a request and are not independent, so when the log
says which round each row belongs to (``round_index``) whole rounds are resampled: a resample's value is the
sum of its rounds' terms over their number of rows. One resampling serves every estimator and every policy of a
call, so :func:`compare`'s differences are paired: both policies scored on the very same resampled rounds.

OBP's interval for SNIPS holds the normaliser at the full sample's mean weight, so it spans the spread of
``w r`` rather than of ``w (r - V)``: conservative (wider than needed) when the value is far from 0.
``sn_interval="ratio"`` resamples numerator and mean weight together and takes each resample's own ratio (the
bootstrap of the statistic itself); tests/eval/test_ope.py and benchmarks/ope_sim.py measure both.

The point estimate is always the full sample's (OBP's ``estimate_policy_value``), not the resamples' mean.
Entry points: :class:`LoggedFeedback` (the log); a target policy as :class:`TargetPolicy` (built from a full
distribution by :func:`policy_at_logged`), a vector of ``pi_e`` per row, or OBP's ``action_dist``;
``estimate(logged, policy, estimators, reward_model, n_bootstrap=1000, seed=0) -> list[Estimate]`` and
``compare(logged, {name: policy}, ...) -> Comparison``; policy helpers :func:`top_k`, :func:`ranking_probs`,
:func:`ranking_dist`, :func:`epsilon_greedy_dist`, :func:`plackett_luce_dist`, :func:`position_averaged`,
:func:`at_logged` (a distribution at the logged rows, e.g. the logger's pscore) and :func:`factual_rewards`.
Errors are :class:`OPEInputError` (a ``ValueError``) and its :class:`SupportError`.

Every :class:`Estimate` carries :class:`Weights` diagnostics (effective sample size ``(sum w)^2 / sum w^2``,
largest weight, mean weight with its interval, rows matched, rows clipped) and warnings in words.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

from .defaults import ESTIMATORS, N_BOOTSTRAP

ALIASES = {"ipw": "ips", "snipw": "snips"}  # OBP's names
ALPHA = 0.05
SUPPORT_Z = 3.29  # |mean weight - 1| / its standard error above this warns (two-sided p < 0.001)
MIN_ESS = 100.0  # an effective sample size below this warns
EXACT_PREFIXES = 200_000  # Plackett-Luce marginals are computed exactly up to this many slate prefixes
_CHUNK = 1 << 22  # elements gathered at once by the bootstrap
_TOL = 1e-9


class OPEInputError(ValueError):
    """Inputs an estimate cannot be made from; the message names the array, the row and what to fix."""


class SupportError(OPEInputError):
    """The target policy puts probability where the logging policy shows nothing: no estimate from these logs can
    see that part of its value."""


# --------------------------------------------------------------------------------------------------- inputs


def _vector(name: str, value: object, n: int | None = None, *, integer: bool = False) -> np.ndarray:
    try:
        arr = np.array(value, dtype=float)  # a copy: the log's arrays are made read-only, the caller's stay theirs
    except (TypeError, ValueError) as exc:
        raise OPEInputError(f"`{name}` must be numbers: {exc}") from None
    if arr.ndim != 1:
        raise OPEInputError(f"`{name}` must be one value per row (a 1-D array), not shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise OPEInputError(f"`{name}` has {arr.shape[0]} values but the log has {n} rows: one value per row")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise OPEInputError(f"`{name}` must be finite: row {bad[0]} is {arr[bad[0]]} ({bad.size} such rows)")
    if integer:
        bad = np.flatnonzero((arr < 0) | (arr != np.round(arr)))
        if bad.size:
            raise OPEInputError(f"`{name}` must be non-negative integers (0-based indices): row {bad[0]} is "
                                f"{arr[bad[0]]} ({bad.size} such rows)")
        return arr.astype(np.int64)
    return arr


def _probabilities(name: str, arr: np.ndarray, *, positive: bool = False) -> None:
    bad = np.flatnonzero((arr <= 0) if positive else (arr < 0))
    if bad.size:
        what = "> 0: the logging policy's probability of the item it showed, so never 0" if positive else ">= 0"
        raise OPEInputError(f"`{name}` must be {what}; row {bad[0]} is {arr[bad[0]]} ({bad.size} such rows)")
    bad = np.flatnonzero(arr > 1 + _TOL)
    if bad.size:
        raise OPEInputError(f"`{name}` is a probability, at most 1: row {bad[0]} is {arr[bad[0]]} "
                            f"({bad.size} such rows)")


@dataclass(frozen=True)
class LoggedFeedback:
    """Logged impressions in OBP's position-based form, one row per item shown.

    ``action``: the item's index (int, 0-based, into the round's candidates or the catalog); ``position``: where it
    was shown (0-based); ``reward``: what it earned (a click: 0/1); ``pscore``: ``pi_b(action | x, position)``, the
    logging policy's probability of showing that item at that position (``> 0``, ``<= 1``); ``round_index``
    (optional): the round (request, slate) of each row, an index into per-round arrays such as a policy's scores
    (0..n_rounds-1), and the unit the bootstrap resamples; without it every row is its own round, as in OBP.
    ``len_list``: the number of positions (default: the largest position + 1).
    """

    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    round_index: np.ndarray | None = None
    len_list: int | None = None

    def __post_init__(self) -> None:
        action = _vector("action", self.action, integer=True)
        n = action.shape[0]
        if n == 0:
            raise OPEInputError("the log has no rows: nothing to estimate from")
        position = _vector("position", self.position, n, integer=True)
        reward = _vector("reward", self.reward, n)
        pscore = _vector("pscore", self.pscore, n)
        _probabilities("pscore", pscore, positive=True)
        rounds = None if self.round_index is None else _vector("round_index", self.round_index, n, integer=True)
        len_list = int(position.max()) + 1 if self.len_list is None else self.len_list
        if not isinstance(len_list, (int, np.integer)) or isinstance(len_list, bool) or len_list < 1:
            raise OPEInputError(f"`len_list` must be a positive integer, not {self.len_list!r}")
        if position.max() >= len_list:
            row = int(np.argmax(position))
            raise OPEInputError(f"`position` must be below len_list={len_list}: row {row} is {position[row]}")
        for name, arr in (("action", action), ("position", position), ("reward", reward), ("pscore", pscore),
                          ("round_index", rounds)):
            if arr is not None:
                arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "len_list", int(len_list))

    @property
    def n_rows(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_rounds(self) -> int:
        """How many distinct rounds the rows come from (the bootstrap's unit)."""
        return self.n_rows if self.round_index is None else int(np.unique(self.round_index).size)

    def rounds(self) -> np.ndarray:
        """Each row's round: ``round_index``, or ``0..n_rows-1`` when none was given."""
        return np.arange(self.n_rows) if self.round_index is None else self.round_index


@dataclass(frozen=True)
class TargetPolicy:
    """A target policy at the logged rows. ``pi_e``: ``pi_e(action_i | x_i, position_i)`` for each row;
    ``q_hat_expected`` (for DR, SNDR): ``sum_a pi_e(a | x_i, position_i) qhat(x_i, a, position_i)``, the reward
    model's expectation under the policy at the row's position; ``unsupported`` (optional): the probability the
    policy puts, at the row's context and position, on items the logging policy never shows there (known only
    from the logger's full distribution: :func:`policy_at_logged` with ``behavior_dist``)."""

    pi_e: np.ndarray
    q_hat_expected: np.ndarray | None = None
    unsupported: np.ndarray | None = None


PolicyLike: TypeAlias = "TargetPolicy | np.ndarray"
RewardModelLike: TypeAlias = "np.ndarray | None"


def _dist(name: str, dist: object, rows: int, logged: LoggedFeedback) -> np.ndarray:
    arr = np.asarray(dist, dtype=float)
    if arr.ndim != 3:
        raise OPEInputError(f"`{name}` must have shape (rows or rounds, n_actions, len_list), not {arr.shape}")
    if arr.shape[0] < rows:
        raise OPEInputError(f"`{name}` has {arr.shape[0]} rows along its first axis but {rows} are needed")
    if arr.shape[2] < logged.len_list:
        raise OPEInputError(f"`{name}` has {arr.shape[2]} positions but the log has len_list={logged.len_list}")
    if logged.action.max() >= arr.shape[1]:
        row = int(np.argmax(logged.action))
        raise OPEInputError(f"`action` must index `{name}`'s {arr.shape[1]} actions: row {row} is "
                            f"{logged.action[row]}")
    if not np.all(np.isfinite(arr)):
        raise OPEInputError(f"`{name}` must be finite")
    return arr


def _check_distribution(name: str, arr: np.ndarray) -> None:
    if np.any(arr < -_TOL) or np.any(arr > 1 + _TOL):
        raise OPEInputError(f"`{name}` holds probabilities: every value must lie in [0, 1]")
    sums = arr.sum(axis=1)
    if not np.allclose(sums, 1.0):
        i, k = np.unravel_index(int(np.argmax(np.abs(sums - 1))), sums.shape)
        raise OPEInputError(f"`{name}` must sum to 1 over actions at every position (as OBP's action_dist): "
                            f"[{i}, :, {k}] sums to {sums[i, k]:.6g}")


def _index(logged: LoggedFeedback, by: Literal["row", "round"]) -> np.ndarray:
    if by == "row":
        return np.arange(logged.n_rows)
    if by == "round":
        return logged.rounds()
    raise OPEInputError(f"`by` must be 'row' or 'round', not {by!r}")


def at_logged(logged: LoggedFeedback, dist: np.ndarray, by: Literal["row", "round"] = "round") -> np.ndarray:
    """``dist[i, action_i, position_i]`` for each row: a policy's probability of the logged item at its position
    (use it for the logger's ``pscore`` too). ``dist`` is ``(n_rounds, n_actions, len_list)`` indexed by
    ``round_index`` (``by="round"``), or one slice per row (``by="row"``, OBP's ``action_dist``)."""
    idx = _index(logged, by)
    arr = _dist("dist", dist, int(idx.max()) + 1, logged)
    return arr[idx, logged.action, logged.position]


def factual_rewards(logged: LoggedFeedback, estimated_rewards: np.ndarray,
                    by: Literal["row", "round"] = "round") -> np.ndarray:
    """``qhat(x_i, action_i, position_i)`` for each row, from a reward model's ``(n_rounds, n_actions, len_list)``
    estimates indexed by ``round_index`` (``by="round"``) or OBP's ``estimated_rewards_by_reg_model``, one slice
    per row (``by="row"``); without a ``round_index`` the two are the same."""
    return at_logged(logged, estimated_rewards, by)


def policy_at_logged(logged: LoggedFeedback, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None,
                     behavior_dist: np.ndarray | None = None,
                     by: Literal["row", "round"] = "round") -> TargetPolicy:
    """Contract a target policy's full distribution to the logged rows (:class:`TargetPolicy`).

    ``action_dist``: ``pi_e(a | x, k)`` of shape ``(n, n_actions, len_list)``, one slice per round
    (``by="round"``, indexed by ``round_index``; what the policy helpers return) or per row (``by="row"``, OBP's
    ``action_dist``; without a ``round_index`` the two are the same); it must sum to 1 over actions.
    ``estimated_rewards`` (same shape): the reward model, for DR's expected term. ``behavior_dist`` (same shape):
    the logging policy's full distribution, which makes the support check exact.
    """
    idx = _index(logged, by)
    need = int(idx.max()) + 1
    pe = _dist("action_dist", action_dist, need, logged)
    _check_distribution("action_dist", pe[np.unique(idx)])
    pe_rows = pe[idx, :, logged.position]  # (n, n_actions): pi_e at each row's position
    pi_e = pe_rows[np.arange(logged.n_rows), logged.action]
    q_exp = None
    if estimated_rewards is not None:
        q = _dist("estimated_rewards", estimated_rewards, need, logged)
        if q.shape != pe.shape:
            raise OPEInputError(f"`estimated_rewards` must have action_dist's shape {pe.shape}, not {q.shape}")
        q_exp = np.average(q[idx, :, logged.position], weights=pe_rows, axis=1)
    unsupported = None
    if behavior_dist is not None:
        pb = _dist("behavior_dist", behavior_dist, need, logged)
        if pb.shape != pe.shape:
            raise OPEInputError(f"`behavior_dist` must have action_dist's shape {pe.shape}, not {pb.shape}")
        pb_rows = pb[idx, :, logged.position]
        unsupported = np.where(pb_rows <= 0, pe_rows, 0.0).sum(axis=1)
    return TargetPolicy(pi_e=pi_e, q_hat_expected=q_exp, unsupported=unsupported)


# ------------------------------------------------------------------------------------------ policy helpers


def position_averaged(dist: np.ndarray) -> np.ndarray:
    """OBP's ``position=None`` relaxation: every position gets the policy's position-averaged probability
    ``(1/len_list) sum_k dist[:, a, k]`` (an item anywhere in the slate). Unbiased only without position effects."""
    arr = np.asarray(dist, dtype=float)
    return np.broadcast_to(arr.mean(axis=2, keepdims=True), arr.shape).copy()


def _scores(scores: object) -> np.ndarray:
    arr = np.asarray(scores, dtype=float)
    if arr.ndim != 2:
        raise OPEInputError(f"`scores` must have shape (n_rounds, n_actions), not {arr.shape}")
    if np.any(np.isnan(arr)) or np.any(arr == np.inf):
        raise OPEInputError("`scores` must not be NaN or +inf (use -inf for an item that may not be shown)")
    return arr


def top_k(scores: np.ndarray, len_list: int) -> np.ndarray:
    """The ranking a deterministic policy shows: the ``len_list`` highest-scored actions of each round, best
    first (ties to the lower index)."""
    arr = _scores(scores)
    if not 1 <= len_list <= arr.shape[1]:
        raise OPEInputError(f"`len_list` must be between 1 and the {arr.shape[1]} actions, not {len_list}")
    return np.argsort(-arr, axis=1, kind="stable")[:, :len_list]


def ranking_probs(logged: LoggedFeedback, rankings: np.ndarray, *, ignore_position: bool = False) -> np.ndarray:
    """``pi_e`` at the logged rows for a deterministic ranking policy, without building a full distribution:
    1 where ``rankings[round_i, position_i] == action_i``, else 0. ``rankings``: ``(n_rounds, len_list)`` item
    indices per round (indexed by ``round_index``). ``ignore_position``: ``1/len_list`` where the logged item is
    anywhere in the round's ranking (OBP's ``position=None``; see :func:`position_averaged`)."""
    rk = np.asarray(rankings)
    if rk.ndim != 2 or rk.shape[1] < logged.len_list:
        raise OPEInputError(f"`rankings` must have shape (n_rounds, len_list >= {logged.len_list}), not {rk.shape}")
    rounds = logged.rounds()
    if rounds.max() >= rk.shape[0]:
        raise OPEInputError(f"`rankings` has {rk.shape[0]} rounds but round_index goes up to {rounds.max()}")
    shown = rk[rounds, : logged.len_list]
    if ignore_position:
        return (shown == logged.action[:, None]).any(axis=1) / logged.len_list
    return (shown[np.arange(logged.n_rows), logged.position] == logged.action).astype(float)


def ranking_dist(rankings: np.ndarray, n_actions: int, *, ignore_position: bool = False) -> np.ndarray:
    """A deterministic ranking's distribution, ``(n_rounds, n_actions, len_list)``: 1 for the item it puts at each
    position (OBP's ``convert_to_action_dist``)."""
    rk = np.asarray(rankings)
    if rk.ndim != 2 or rk.size and (rk.min() < 0 or rk.max() >= n_actions):
        raise OPEInputError(f"`rankings` must be (n_rounds, len_list) indices below n_actions={n_actions}")
    n_rounds, len_list = rk.shape
    out = np.zeros((n_rounds, n_actions, len_list))
    out[np.arange(n_rounds)[:, None], rk, np.arange(len_list)[None, :]] = 1.0
    return position_averaged(out) if ignore_position else out


def epsilon_greedy_dist(scores: np.ndarray, len_list: int, epsilon: float, *,
                        ignore_position: bool = False) -> np.ndarray:
    """An epsilon-greedy slate policy: with probability ``1 - epsilon`` the top ``len_list`` by score, with
    probability ``epsilon`` a uniformly random slate of distinct items, so each item has ``epsilon / n_actions`` at
    every position on top of the greedy ranking's 1. Shape ``(n_rounds, n_actions, len_list)``."""
    if not 0.0 <= epsilon <= 1.0:
        raise OPEInputError(f"`epsilon` must lie in [0, 1], not {epsilon}")
    arr = _scores(scores)
    greedy = ranking_dist(top_k(arr, len_list), arr.shape[1])
    out = (1.0 - epsilon) * greedy + epsilon / arr.shape[1]
    return position_averaged(out) if ignore_position else out


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    if not temperature > 0:
        raise OPEInputError(f"`temperature` must be > 0, not {temperature}")
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def plackett_luce_dist(scores: np.ndarray, len_list: int, temperature: float = 1.0, *,
                       n_samples: int | None = None, seed: int = 0, ignore_position: bool = False) -> np.ndarray:
    """A Plackett-Luce policy (``softmax(scores / temperature)`` sampled without replacement, position by
    position): the marginal probability of each item at each position, ``(n_rounds, n_actions, len_list)``.

    Exact (a sum over every ordered prefix of ``len_list - 1`` items, as many as ``n!/(n-len_list+1)!``) while
    that is at most ``EXACT_PREFIXES``; otherwise, or when ``n_samples`` is given, a Monte-Carlo estimate from
    ``n_samples`` slates per round drawn with the Gumbel top-k trick (seeded).
    """
    arr = _scores(scores)
    n_rounds, n = arr.shape
    if not 1 <= len_list <= n:
        raise OPEInputError(f"`len_list` must be between 1 and the {n} actions, not {len_list}")
    p = _softmax(arr, temperature)
    prefixes = sum(math.perm(n, k) for k in range(len_list))
    if n_samples is None and prefixes > EXACT_PREFIXES:
        raise OPEInputError(f"exact Plackett-Luce marginals for {n} actions and {len_list} positions need "
                            f"{prefixes:,} slate prefixes (limit {EXACT_PREFIXES:,}): pass n_samples for a "
                            "Monte-Carlo estimate")
    out = _pl_sampled(p, len_list, n_samples, seed) if n_samples is not None else _pl_exact(p, len_list)
    return position_averaged(out) if ignore_position else out


def _pl_exact(p: np.ndarray, len_list: int) -> np.ndarray:
    n_rounds, n = p.shape
    levels = []  # per position: which items each prefix of that length holds, and how it extends
    member = np.zeros((1, n), dtype=bool)
    for k in range(len_list):
        free = ~member
        parent, item = np.nonzero(free) if k < len_list - 1 else (None, None)
        levels.append((free.astype(float), parent, item))
        if parent is not None:
            member = member[parent].copy()
            member[np.arange(item.size), item] = True
    out = np.zeros((n_rounds, n, len_list))
    step = max(1, _CHUNK // max(free.shape[0] for free, _, _ in levels))
    for start in range(0, n_rounds, step):
        pc = p[start:start + step]
        prob = np.ones((pc.shape[0], 1))  # each prefix's probability, per round
        for k, (free, parent, item) in enumerate(levels):
            rest = pc @ free.T  # the mass still available after each prefix
            cond = np.where(rest > 0, prob / np.where(rest > 0, rest, 1.0), 0.0)
            out[start:start + step, :, k] = pc * (cond @ free)
            if parent is not None:
                prob = cond[:, parent] * pc[:, item]  # every prefix extended by every item it does not hold
    return out


def _pl_sampled(p: np.ndarray, len_list: int, n_samples: int, seed: int) -> np.ndarray:
    if n_samples < 1:
        raise OPEInputError(f"`n_samples` must be at least 1, not {n_samples}")
    n_rounds, n = p.shape
    rng = np.random.default_rng(seed)
    out = np.zeros((n_rounds, n, len_list))
    logp = np.log(np.where(p > 0, p, 1.0)) + np.where(p > 0, 0.0, -np.inf)
    step = max(1, _CHUNK // max(1, n_rounds * n))
    for start in range(0, n_samples, step):
        s = min(step, n_samples - start)
        keys = logp[:, None, :] + rng.gumbel(size=(n_rounds, s, n))
        slates = np.argsort(-keys, axis=2)[:, :, :len_list]  # (R, s, L)
        for k in range(len_list):
            np.add.at(out[:, :, k], (np.repeat(np.arange(n_rounds), s), slates[:, :, k].ravel()), 1.0)
    return out / n_samples


# -------------------------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Weights:
    """Importance-weight diagnostics of one target policy on the log (unclipped weights ``w = pi_e / pscore``)."""

    n_rows: int
    matched: int  # rows with w > 0: logged items the target would also put there
    mean: float  # 1 in expectation under full support
    mean_lower: float
    mean_upper: float
    max: float
    ess: float  # (sum w)^2 / sum w^2: how many rows the estimate effectively rests on
    clipped: int  # rows with w > lambda_
    unsupported_rows: int  # rows where the target provably puts mass outside the logger's support
    unsupported_mass: float  # that mass, averaged over all rows (what IPS cannot see)

    def to_dict(self) -> dict[str, object]:
        return {"n_rows": self.n_rows, "matched": self.matched, "mean": self.mean,
                "mean_ci": [self.mean_lower, self.mean_upper], "max": self.max, "ess": self.ess,
                "clipped": self.clipped, "unsupported_rows": self.unsupported_rows,
                "unsupported_mass": self.unsupported_mass}


@dataclass(frozen=True)
class Estimate:
    """One estimator's value for one target policy, its ``1 - alpha`` bootstrap interval, and diagnostics."""

    policy: str
    estimator: str
    value: float
    lower: float
    upper: float
    alpha: float
    n_rows: int
    n_rounds: int
    n_bootstrap: int
    seed: int
    weights: Weights
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "estimator": self.estimator, "value": self.value,
                "ci": [self.lower, self.upper], "level": 1 - self.alpha, "rows": self.n_rows,
                "rounds": self.n_rounds, "bootstrap": self.n_bootstrap, "seed": self.seed,
                "weights": self.weights.to_dict(), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class Difference:
    """``a`` minus ``b`` under one estimator, over the same resampled rounds (a paired bootstrap)."""

    estimator: str
    a: str
    b: str
    value: float
    lower: float
    upper: float
    alpha: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return bool(self.lower > 0 or self.upper < 0)

    def to_dict(self) -> dict[str, object]:
        return {"estimator": self.estimator, "a": self.a, "b": self.b, "diff": self.value,
                "ci": [self.lower, self.upper], "level": 1 - self.alpha, "significant": self.significant}


@dataclass(frozen=True)
class Comparison:
    """:func:`compare`'s answer: every policy's estimates and the paired differences between policies."""

    estimates: list[Estimate]
    differences: list[Difference]

    def get(self, policy: str, estimator: str) -> Estimate:
        for e in self.estimates:
            if e.policy == policy and e.estimator == estimator:
                return e
        raise KeyError(f"no {estimator!r} estimate of {policy!r}")

    def to_dict(self) -> dict[str, object]:
        return {"estimates": [e.to_dict() for e in self.estimates],
                "differences": [d.to_dict() for d in self.differences]}


def _estimators(estimators: Sequence[str] | None, has_model: bool) -> tuple[str, ...]:
    if estimators is None:
        return ("ips", "snips", "dr") if has_model else ("ips", "snips")
    if isinstance(estimators, str):
        estimators = (estimators,)
    names = []
    for raw in estimators:
        name = ALIASES.get(str(raw).lower(), str(raw).lower())
        if name not in ESTIMATORS:
            raise OPEInputError(f"unknown estimator {raw!r}: choose from {', '.join(ESTIMATORS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise OPEInputError("no estimator asked for: choose from " + ", ".join(ESTIMATORS))
    return tuple(names)


@dataclass(frozen=True)
class _Resolved:
    pi_e: np.ndarray
    q_fact: np.ndarray | None
    q_exp: np.ndarray | None
    unsupported: np.ndarray | None


def _resolve(logged: LoggedFeedback, name: str, policy: PolicyLike, reward_model: RewardModelLike) -> _Resolved:
    n = logged.n_rows
    if isinstance(policy, TargetPolicy):
        target = policy
    else:
        arr = np.asarray(policy, dtype=float)
        if arr.ndim == 3:
            q3 = reward_model if reward_model is not None and np.ndim(reward_model) == 3 else None
            if arr.shape[0] != n:
                raise OPEInputError(f"policy {name!r}: action_dist has {arr.shape[0]} rows but the log has {n} "
                                    "(one (n_actions, len_list) slice per row, as OBP's action_dist)")
            target = policy_at_logged(logged, arr, q3, by="row")
        elif arr.ndim == 1:
            target = TargetPolicy(pi_e=arr)
        else:
            raise OPEInputError(f"policy {name!r} must be a TargetPolicy, pi_e per row (1-D) or OBP's action_dist "
                                f"(n_rows, n_actions, len_list); got shape {arr.shape}")
    pi_e = _vector(f"{name}: pi_e", target.pi_e, n)
    _probabilities(f"{name}: pi_e", pi_e)
    q_exp = None if target.q_hat_expected is None else _vector(f"{name}: q_hat_expected", target.q_hat_expected, n)
    unsupported = None if target.unsupported is None else _vector(f"{name}: unsupported", target.unsupported, n)
    q_fact = None
    if reward_model is not None:
        q = np.asarray(reward_model, dtype=float)
        if q.ndim == 3:
            if q.shape[0] != n:
                raise OPEInputError(f"reward_model has {q.shape[0]} rows but the log has {n} (one slice per row, as "
                                    "OBP's estimated_rewards_by_reg_model)")
            q_fact = factual_rewards(logged, q, by="row")
        else:
            q_fact = _vector("reward_model", q, n)
    return _Resolved(pi_e, q_fact, q_exp, unsupported)


def _terms(estimator: str, r: _Resolved, logged: LoggedFeedback, lambda_: float) -> np.ndarray | None:
    w = r.pi_e / logged.pscore
    wc = np.minimum(w, lambda_)
    mean_w = w.mean()
    if estimator == "ips":
        return logged.reward * wc
    if estimator == "snips":
        return None if mean_w <= 0 else logged.reward * w / mean_w
    assert r.q_fact is not None and r.q_exp is not None
    if estimator == "dr":
        return r.q_exp + wc * (logged.reward - r.q_fact)
    return None if mean_w <= 0 else r.q_exp + w * (logged.reward - r.q_fact) / mean_w  # sndr


def bootstrap_means(terms: np.ndarray, logged: LoggedFeedback, n_bootstrap: int = N_BOOTSTRAP,
                    seed: int = 0) -> np.ndarray:
    """The means of ``terms`` (``(n_rows, m)``, one column per quantity) over ``n_bootstrap`` resamples of the
    rounds, ``(n_bootstrap, m)``: the same resampled rounds for every column. Draws are
    ``RandomState(seed).randint(0, n_rounds, n_rounds)`` per resample, OBP's stream."""
    t = np.asarray(terms, dtype=float)
    t = t[:, None] if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[0] != logged.n_rows:
        raise OPEInputError(f"`terms` must be (n_rows={logged.n_rows}, columns), not shape {t.shape}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise OPEInputError(f"`n_bootstrap` must be a positive integer, not {n_bootstrap!r}")
    if logged.round_index is None:
        sums, counts = t, None
    else:
        _, inverse = np.unique(logged.round_index, return_inverse=True)
        n_r = int(inverse.max()) + 1
        sums = np.stack([np.bincount(inverse, weights=t[:, j], minlength=n_r) for j in range(t.shape[1])], axis=1)
        counts = np.bincount(inverse, minlength=n_r).astype(float)
    n_r = sums.shape[0]
    cols = [np.ascontiguousarray(sums[:, j]) for j in range(sums.shape[1])]
    rs = np.random.RandomState(seed)
    out = np.empty((n_bootstrap, sums.shape[1]))
    step = max(1, _CHUNK // n_r)
    for start in range(0, n_bootstrap, step):
        b = min(step, n_bootstrap - start)
        idx = rs.randint(0, n_r, size=(b, n_r))
        if len(cols) <= 6:  # few columns: gather each
            total = np.stack([np.take(c, idx).sum(axis=1) for c in cols], axis=1)
            size = np.take(counts, idx).sum(axis=1) if counts is not None else None
        else:  # many: count how often each round is drawn, then one matrix product serves every column
            times = np.bincount((idx + (np.arange(b) * n_r)[:, None]).ravel(), minlength=b * n_r)
            times = times.reshape(b, n_r).astype(float)
            total = times @ sums
            size = times @ counts if counts is not None else None
        out[start:start + b] = total / (size[:, None] if size is not None else n_r)
    return out


def _check_settings(n_bootstrap: int, alpha: float, lambda_: float, on_support: str) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise OPEInputError(f"`n_bootstrap` must be a positive integer, not {n_bootstrap!r}")
    if not 0.0 < alpha < 1.0:
        raise OPEInputError(f"`alpha` must lie strictly between 0 and 1 (0.05 for 95% intervals), not {alpha}")
    if not lambda_ > 0:  # also NaN
        raise OPEInputError(f"`lambda_` (the largest importance weight kept) must be > 0, not {lambda_}")
    if on_support not in ("error", "warn"):
        raise OPEInputError(f"`on_support` must be 'error' or 'warn', not {on_support!r}")


def _support(name: str, logged: LoggedFeedback, r: _Resolved) -> tuple[np.ndarray, str | None]:
    """Per-row mass provably outside the logger's support, and a description of it (None when there is none)."""
    gone = np.where((logged.pscore >= 1 - _TOL) & (r.pi_e < 1 - _TOL), 1.0 - r.pi_e, 0.0)
    if r.unsupported is not None:
        gone = np.maximum(gone, r.unsupported)
    rows = np.flatnonzero(gone > _TOL)
    if rows.size == 0:
        return gone, None
    i = int(rows[0])
    where = f"row {i} (round {logged.rounds()[i]}, position {logged.position[i]}, action {logged.action[i]})"
    how = (f"the logger showed it with pscore {logged.pscore[i]:.3g} (always that item there) but the target puts "
           f"{1 - r.pi_e[i]:.3g} of its probability elsewhere" if logged.pscore[i] >= 1 - _TOL
           else f"the target puts {gone[i]:.3g} of its probability on items the logger never shows there")
    text = (f"policy {name!r} puts probability where the logging policy shows nothing: {rows.size} of "
            f"{logged.n_rows} rows, {gone.mean():.3g} of the policy's probability per row on average; e.g. {where}: "
            f"{how}. No row of these logs carries that part of its value, so IPS and DR would be biased toward 0 "
            "and SNIPS would rescale what it sees. Log with exploration (epsilon > 0, a Plackett-Luce serving "
            "policy), compare only policies inside the logger's support, or pass on_support='warn' to get the "
            "biased estimates anyway.")
    return gone, text


def compare(logged: LoggedFeedback, policies: Mapping[str, PolicyLike], estimators: Sequence[str] | None = None,
            reward_model: RewardModelLike | Mapping[str, RewardModelLike] = None, *, baseline: str | None = None,
            lambda_: float = math.inf, n_bootstrap: int = N_BOOTSTRAP, alpha: float = ALPHA, seed: int = 0,
            on_support: Literal["error", "warn"] = "error",
            sn_interval: Literal["obp", "ratio"] = "obp") -> Comparison:
    """Estimate every policy in ``policies`` on the same log with every estimator, and the paired bootstrap
    difference between policies: each other policy minus ``baseline`` when given, else every pair in order.

    ``policies``: name -> :class:`TargetPolicy`, a vector of ``pi_e`` per row, or OBP's ``action_dist``
    ``(n_rows, n_actions, len_list)``. ``estimators``: any of ``ips``, ``snips``, ``dr``, ``sndr`` (default
    ``ips, snips``, and ``dr`` when a reward model is given). ``reward_model`` (for DR, SNDR): ``qhat`` at the
    logged rows (1-D; each policy then needs ``TargetPolicy.q_hat_expected``) or OBP's
    ``estimated_rewards_by_reg_model`` ``(n_rows, n_actions, len_list)`` (with ``action_dist`` policies), or a
    mapping from policy name to either. ``on_support="error"`` raises :class:`SupportError` where the log
    provably cannot see part of a policy's value; ``"warn"`` reports it in the estimates' warnings instead.
    ``sn_interval``: how SNIPS and SNDR are resampled: ``"obp"`` (OBP's: their per-row terms, divided by the full
    sample's mean weight, are resampled; conservative, see the module's docstring) or ``"ratio"`` (numerator and
    mean weight resampled together, each resample's own ratio: the bootstrap of the statistic itself).
    """
    if not isinstance(logged, LoggedFeedback):
        raise OPEInputError(f"`logged` must be a LoggedFeedback, not {type(logged).__name__}")
    _check_settings(n_bootstrap, alpha, lambda_, on_support)
    if sn_interval not in ("obp", "ratio"):
        raise OPEInputError(f"`sn_interval` must be 'obp' or 'ratio', not {sn_interval!r}")
    point_override: dict[tuple[str, str], float] = {}
    if not policies:
        raise OPEInputError("no policy to estimate: pass at least one")
    names = [str(k) for k in policies]
    if baseline is not None and baseline not in names:
        raise OPEInputError(f"baseline {baseline!r} is not one of the policies: {', '.join(names)}")
    models = reward_model if isinstance(reward_model, Mapping) else {k: reward_model for k in names}
    has_model = any(models.get(k) is not None for k in names)
    wanted = _estimators(estimators, has_model)

    resolved: dict[str, _Resolved] = {}
    for name, policy in zip(names, policies.values()):
        r = _resolve(logged, name, policy, models.get(name))
        if {"dr", "sndr"} & set(wanted):
            if r.q_fact is None:
                raise OPEInputError(f"{'/'.join(e for e in wanted if e in ('dr', 'sndr'))} for policy {name!r} "
                                    "needs a reward model: pass reward_model (qhat at the logged rows, or OBP's "
                                    "estimated_rewards_by_reg_model)")
            if r.q_exp is None:
                raise OPEInputError(f"DR for policy {name!r} needs the reward model's expectation under the policy: "
                                    "give TargetPolicy(q_hat_expected=...) (policy_at_logged builds it) or "
                                    "OBP's action_dist with a 3-D reward_model")
        resolved[name] = r

    columns: list[np.ndarray] = []
    support: dict[str, tuple[np.ndarray, str | None]] = {}
    plan: dict[tuple[str, str], tuple[str, tuple[int, ...]] | None] = {}  # how each replicate is formed

    def add(column: np.ndarray) -> int:
        columns.append(column)
        return len(columns) - 1

    for name, r in resolved.items():
        gone, text = _support(name, logged, r)
        if text is not None and on_support == "error":
            raise SupportError(text)
        support[name] = (gone, text)
        w = r.pi_e / logged.pscore
        kw = add(w)  # the raw weight, for its interval and the support test
        plan[(name, "_w")] = ("mean", (kw,))
        for est in wanted:
            t = _terms(est, r, logged, lambda_)
            if t is None:
                plan[(name, est)] = None
            elif est in ("snips", "sndr") and sn_interval == "ratio":
                residual = logged.reward if est == "snips" else logged.reward - r.q_fact
                parts = (add(w * residual), kw) + ((add(r.q_exp),) if est == "sndr" else ())
                plan[(name, est)] = ("ratio", parts)
                point_override[(name, est)] = float(t.mean())
            else:
                plan[(name, est)] = ("mean", (add(t),))
    matrix = np.stack(columns, axis=1)
    means = matrix.mean(axis=0)
    boot = bootstrap_means(matrix, logged, n_bootstrap, seed)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    replicates: dict[tuple[str, str], tuple[float, np.ndarray] | None] = {}
    for key, how in plan.items():
        if how is None:
            replicates[key] = None
        elif how[0] == "mean":
            replicates[key] = (float(means[how[1][0]]), boot[:, how[1][0]])
        else:
            num, den, *dm = how[1]
            with np.errstate(divide="ignore", invalid="ignore"):
                rep = boot[:, num] / boot[:, den] + (boot[:, dm[0]] if dm else 0.0)
            replicates[key] = (point_override[key], np.where(np.isfinite(rep), rep, np.nan))

    def interval(rep: np.ndarray) -> tuple[float, float]:
        finite = rep[np.isfinite(rep)]
        if finite.size == 0:
            return math.nan, math.nan
        lo, hi = np.percentile(finite, q)
        return float(lo), float(hi)

    estimates: list[Estimate] = []
    for name, r in resolved.items():
        w = r.pi_e / logged.pscore
        mean_w, rep_w = replicates[(name, "_w")]
        w_lo, w_hi = interval(rep_w)
        gone, text = support[name]
        sum_w2 = float((w * w).sum())
        weights = Weights(n_rows=logged.n_rows, matched=int(np.count_nonzero(w > 0)), mean=mean_w,
                          mean_lower=w_lo, mean_upper=w_hi, max=float(w.max()),
                          ess=float(w.sum() ** 2 / sum_w2) if sum_w2 > 0 else 0.0,
                          clipped=int(np.count_nonzero(w > lambda_)),
                          unsupported_rows=int(np.count_nonzero(gone > _TOL)), unsupported_mass=float(gone.mean()))
        se_w = float(rep_w.std(ddof=1)) if n_bootstrap > 1 else math.nan
        notes = _warnings(name, weights, se_w, text)
        for est in wanted:
            got = replicates[(name, est)]
            extra = () if got is not None else (f"{est.upper()} is undefined: no logged row has pi_e > 0 (every "
                                                "importance weight is 0)",)
            value, (lo, hi) = (got[0], interval(got[1])) if got is not None else (math.nan, (math.nan, math.nan))
            estimates.append(Estimate(
                policy=name, estimator=est, value=value, lower=lo, upper=hi, alpha=alpha, n_rows=logged.n_rows,
                n_rounds=logged.n_rounds, n_bootstrap=int(n_bootstrap), seed=seed, weights=weights,
                warnings=notes + extra))

    pairs = ([(a, baseline) for a in names if a != baseline] if baseline is not None
             else list(itertools.combinations(names, 2)))
    differences = []
    for est in wanted:
        for a, b in pairs:
            ra, rb = replicates[(a, est)], replicates[(b, est)]
            if ra is None or rb is None:
                differences.append(Difference(est, a, b, math.nan, math.nan, math.nan, alpha))
                continue
            dlo, dhi = interval(ra[1] - rb[1])
            differences.append(Difference(est, a, b, ra[0] - rb[0], dlo, dhi, alpha))
    return Comparison(estimates=estimates, differences=differences)


def _warnings(name: str, w: Weights, se: float, support_text: str | None) -> tuple[str, ...]:
    notes = []
    if support_text is not None:
        notes.append(support_text)
    elif se > 0 and abs(w.mean - 1.0) > SUPPORT_Z * se:
        notes.append(f"policy {name!r}: the mean importance weight is {w.mean:.3f} (95% interval "
                     f"{w.mean_lower:.3f}..{w.mean_upper:.3f}) where full support gives exactly 1 in expectation: the "
                     "target probably puts probability where the logger never shows items, or the pscores are wrong; "
                     "IPS and DR are then biased, and SNIPS hides it")
    elif se == 0 and w.matched and abs(w.mean - 1.0) > 1e-6:
        notes.append(f"policy {name!r}: the mean importance weight is {w.mean:.3f} on every resample, not 1")
    if w.matched == 0:
        notes.append(f"policy {name!r}: no logged row is one the policy would show (every weight is 0): these logs "
                     "say nothing about it")
    elif w.ess < MIN_ESS:
        notes.append(f"policy {name!r}: the effective sample size is {w.ess:.0f} of {w.n_rows} rows (largest weight "
                     f"{w.max:.3g}): the estimate rests on a few rows; expect a wide interval, and an interval that "
                     "may be too narrow")
    return tuple(notes)


def estimate(logged: LoggedFeedback, policy: PolicyLike, estimators: Sequence[str] | None = None,
             reward_model: RewardModelLike = None, *, name: str = "target", lambda_: float = math.inf,
             n_bootstrap: int = N_BOOTSTRAP, alpha: float = ALPHA, seed: int = 0,
             on_support: Literal["error", "warn"] = "error",
             sn_interval: Literal["obp", "ratio"] = "obp") -> list[Estimate]:
    """Estimate one target policy's value on the log with each estimator (see :func:`compare` for the inputs);
    one :class:`Estimate` per estimator, in the order asked."""
    return compare(logged, {name: policy}, estimators, reward_model, lambda_=lambda_, n_bootstrap=n_bootstrap,
                   alpha=alpha, seed=seed, on_support=on_support, sn_interval=sn_interval).estimates


__all__ = ["ALIASES", "ALPHA", "ESTIMATORS", "EXACT_PREFIXES", "MIN_ESS", "N_BOOTSTRAP", "SUPPORT_Z", "Comparison",
           "Difference", "Estimate", "LoggedFeedback", "OPEInputError", "SupportError", "TargetPolicy", "Weights",
           "at_logged", "bootstrap_means", "compare", "epsilon_greedy_dist", "estimate", "factual_rewards",
           "plackett_luce_dist", "policy_at_logged", "position_averaged", "ranking_dist", "ranking_probs", "top_k"]
