"""ope_synthetic: a contextual slate environment whose every click probability is known, for checking and measuring
the off-policy estimators of :mod:`llmrec.eval.ope` against the truth (tests/eval/test_ope.py,
benchmarks/ope_sim.py). numpy only.

Contexts (users) are drawn from a fixed distribution; item ``a`` in context ``c`` is clicked at position ``k`` with
probability ``relevance[c, a] * examination[k]`` independently of the rest of the slate (the position-based click
model, which satisfies the item-position assumption the estimators make). ``relevance`` is a logistic function of
a random low-rank affinity, so policies can be built from noisy copies of it. A policy is a ranking, an
epsilon-greedy or a Plackett-Luce policy over per-context scores; its exact per-position marginals give its true
value per row, ``sum_c P(c) (1/L) sum_k sum_a pi(a|c,k) relevance[c,a] examination[k]``, the quantity
:func:`llmrec.eval.ope.estimate` estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from llmrec.eval.ope import (LoggedFeedback, TargetPolicy, at_logged, epsilon_greedy_dist, plackett_luce_dist,
                             policy_at_logged, position_averaged, ranking_dist, top_k)


@dataclass(frozen=True)
class SlatePolicy:
    """A slate policy over per-context ``scores`` ``(n_contexts, n_items)``: ``kind`` ``ranking`` (the top
    ``len_list``), ``epsilon_greedy`` (that, or a uniformly random slate with probability ``epsilon``) or
    ``plackett_luce`` (softmax(scores / temperature) without replacement)."""

    kind: Literal["ranking", "epsilon_greedy", "plackett_luce"]
    scores: np.ndarray
    epsilon: float = 0.0
    temperature: float = 1.0
    _dists: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("ranking", "epsilon_greedy", "plackett_luce"):
            raise ValueError(f"unknown policy kind {self.kind!r}: ranking, epsilon_greedy or plackett_luce")

    def dist(self, len_list: int) -> np.ndarray:
        """Exact marginals ``(n_contexts, n_items, len_list)`` (computed once per ``len_list``; read-only)."""
        if len_list not in self._dists:
            if self.kind == "ranking":
                d = ranking_dist(top_k(self.scores, len_list), self.scores.shape[1])
            elif self.kind == "epsilon_greedy":
                d = epsilon_greedy_dist(self.scores, len_list, self.epsilon)
            else:
                d = plackett_luce_dist(self.scores, len_list, self.temperature)
            d.flags.writeable = False
            self._dists[len_list] = d
        return self._dists[len_list]

    def sample(self, contexts: np.ndarray, len_list: int, rng: np.random.Generator) -> np.ndarray:
        """One slate ``(len_list,)`` of distinct items per context in ``contexts``: ``(n_rounds, len_list)``."""
        s = self.scores[contexts]
        if self.kind == "plackett_luce":
            z = s / self.temperature
            return np.argsort(-(z + rng.gumbel(size=z.shape)), axis=1)[:, :len_list]
        slates = top_k(s, len_list)
        if self.kind == "epsilon_greedy" and self.epsilon > 0:
            explore = rng.random(len(contexts)) < self.epsilon
            if explore.any():
                keys = rng.random((int(explore.sum()), s.shape[1]))
                slates[explore] = np.argsort(keys, axis=1)[:, :len_list]
        return slates


@dataclass(frozen=True)
class SlateEnvironment:
    """Known click probabilities: ``relevance`` ``(n_contexts, n_items)``, ``examination`` ``(len_list,)``,
    ``context_probs`` ``(n_contexts,)``; ``affinity`` is the logit behind ``relevance`` (to build policies from)."""

    affinity: np.ndarray
    relevance: np.ndarray
    examination: np.ndarray
    context_probs: np.ndarray

    @classmethod
    def make(cls, n_contexts: int = 20, n_items: int = 10, len_list: int = 3, *, dim: int = 4,
             position_decay: float = 1.0, base_logit: float = -1.5, scale: float = 1.5,
             seed: int = 0) -> SlateEnvironment:
        """A random environment: examination ``1 / (k + 1) ** position_decay`` (0 for no position bias)."""
        rng = np.random.default_rng(seed)
        users = rng.normal(size=(n_contexts, dim))
        items = rng.normal(size=(n_items, dim))
        affinity = base_logit + scale * users @ items.T / np.sqrt(dim)
        relevance = 1.0 / (1.0 + np.exp(-affinity))
        examination = 1.0 / (np.arange(len_list) + 1.0) ** position_decay
        context_probs = rng.dirichlet(np.full(n_contexts, 5.0))
        return cls(affinity, relevance, examination, context_probs)

    @property
    def len_list(self) -> int:
        return int(self.examination.size)

    def click_probs(self) -> np.ndarray:
        """``(n_contexts, n_items, len_list)``: the probability of a click on each item at each position."""
        return self.relevance[:, :, None] * self.examination[None, None, :]

    def value(self, policy: SlatePolicy | np.ndarray) -> float:
        """A policy's true value: its expected reward per row (per shown item)."""
        dist = policy.dist(self.len_list) if isinstance(policy, SlatePolicy) else policy
        per_context = (dist * self.click_probs()).sum(axis=1).mean(axis=1)
        return float(self.context_probs @ per_context)

    def noisy_scores(self, noise: float, rng: np.random.Generator) -> np.ndarray:
        """The affinity plus Gaussian noise: scores for a policy of that quality."""
        return self.affinity + noise * rng.normal(size=self.affinity.shape)

    def reward_model(self, noise: float, rng: np.random.Generator) -> np.ndarray:
        """A reward model ``(n_contexts, n_items, len_list)``: the true click probabilities times log-normal
        noise of this scale (0: perfect)."""
        return np.clip(self.click_probs() * np.exp(noise * rng.normal(size=self.click_probs().shape)), 0.0, 1.0)

    def context_free_model(self) -> np.ndarray:
        """A poor reward model: each item's click probability averaged over contexts (ignores the user)."""
        mean = self.context_probs @ self.relevance
        return np.broadcast_to(mean[None, :, None] * self.examination[None, None, :],
                               self.click_probs().shape).copy()

    def simulate(self, policy: SlatePolicy, n_rounds: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``policy`` for ``n_rounds``: the contexts ``(n_rounds,)``, slates ``(n_rounds, L)`` and clicks."""
        contexts = rng.choice(self.context_probs.size, size=n_rounds, p=self.context_probs)
        slates = policy.sample(contexts, self.len_list, rng)
        p = self.relevance[contexts[:, None], slates] * self.examination[None, :]
        return contexts, slates, (rng.random(p.shape) < p).astype(float)

    def on_policy(self, policy: SlatePolicy, n_rounds: int, rng: np.random.Generator) -> float:
        """The on-policy (A/B test) estimate: the mean reward per row of running ``policy`` for ``n_rounds``."""
        return float(self.simulate(policy, n_rounds, rng)[2].mean())

    def log(self, logger: SlatePolicy, n_rounds: int, rng: np.random.Generator, *,
            ignore_position: bool = False) -> tuple[LoggedFeedback, np.ndarray]:
        """Logs of running ``logger``: one row per shown item, rounds marked, pscores exact; and each round's
        context (index per-context arrays with ``contexts[logged.round_index]``)."""
        contexts, slates, clicks = self.simulate(logger, n_rounds, rng)
        dist = logger.dist(self.len_list)
        if ignore_position:
            dist = position_averaged(dist)
        L = self.len_list
        rounds = np.repeat(np.arange(n_rounds), L)
        position = np.tile(np.arange(L), n_rounds)
        action = slates.ravel()
        pscore = dist[contexts[rounds], action, position]
        return LoggedFeedback(action=action, position=position, reward=clicks.ravel(), pscore=pscore,
                              round_index=rounds, len_list=L), contexts

    def target(self, logged: LoggedFeedback, contexts: np.ndarray, policy: SlatePolicy,
               reward_model: np.ndarray | None = None, logger: SlatePolicy | None = None, *,
               ignore_position: bool = False) -> TargetPolicy:
        """``policy`` at the logged rows (with DR's expected term for ``reward_model`` and the exact support check
        against ``logger`` when given)."""
        L = self.len_list
        dist = policy.dist(L)
        behavior = None if logger is None else logger.dist(L)
        if ignore_position:
            dist = position_averaged(dist)
            behavior = None if behavior is None else position_averaged(behavior)
        per_round = dist[contexts]
        return policy_at_logged(logged, per_round, None if reward_model is None else reward_model[contexts],
                                None if behavior is None else behavior[contexts], by="round")

    def factual(self, logged: LoggedFeedback, contexts: np.ndarray, reward_model: np.ndarray) -> np.ndarray:
        """The reward model at the logged rows (``qhat(x_i, a_i, k_i)``)."""
        return at_logged(logged, reward_model[contexts], by="round")


__all__ = ["SlateEnvironment", "SlatePolicy"]
