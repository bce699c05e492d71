"""Multi-armed bandits for choosing a dialogue action online: epsilon-greedy, UCB1, Thompson sampling
(Beta-Bernoulli and Gaussian) and LinUCB (contextual, over a small state feature vector).

Every bandit has ``select(context=None, allowed=None) -> Choice`` (the arm, whether it *explored*, i.e. did not
take the arm its current estimates rank best, and the value it scored each arm by) and ``update(arm, reward,
context=None)``. Its whole state, the random generator's included, is plain JSON (``to_json()`` /
:func:`bandit_from_json`), never a pickle, so a served policy can be saved and restored byte for byte.

:func:`simulate_regret` plays a bandit on a problem with known arm means and returns its cumulative
(pseudo-)regret against the best fixed arm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Choice:
    arm: int
    explored: bool
    values: tuple[float, ...]


def _rng(seed: int | None, state: dict[str, Any] | None = None) -> np.random.Generator:
    g = np.random.Generator(np.random.PCG64(seed))
    if state is not None:
        g.bit_generator.state = state
    return g


def _best(values: Sequence[float], allowed: Sequence[int]) -> int:
    return max(allowed, key=lambda a: (values[a], -a))


class Bandit:
    """The common part: arm counts and mean rewards, the generator, JSON state."""

    name: ClassVar[str] = ""

    def __init__(self, n_arms: int, seed: int = 0) -> None:
        if n_arms < 1:
            raise ValueError(f"a bandit needs at least one arm, got {n_arms}")
        self.n_arms = n_arms
        self.seed = seed
        self.counts = [0] * n_arms
        self.sums = [0.0] * n_arms
        self.rng = _rng(seed)
        self.steps = 0
        self.explorations = 0

    @property
    def means(self) -> list[float]:
        return [s / c if c else 0.0 for s, c in zip(self.sums, self.counts)]

    def _allowed(self, allowed: Sequence[int] | None) -> list[int]:
        arms = list(range(self.n_arms)) if allowed is None else [a for a in allowed if 0 <= a < self.n_arms]
        if not arms:
            raise ValueError("no allowed arm to choose from")
        return arms

    def select(self, context: Any = None, allowed: Sequence[int] | None = None) -> Choice:
        arms = self._allowed(allowed)
        arm, values = self._pick(arms, context)
        explored = arm != _best(self._estimates(context), arms)
        self.explorations += explored
        return Choice(arm, explored, tuple(float(v) for v in values))

    def _estimates(self, context: Any) -> list[float]:
        return self.means

    def _pick(self, arms: list[int], context: Any) -> tuple[int, Sequence[float]]:  # pragma: no cover
        raise NotImplementedError

    def update(self, arm: int, reward: float, context: Any = None) -> None:
        self.counts[arm] += 1
        self.sums[arm] += float(reward)
        self.steps += 1

    # -- JSON ------------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts, "sums": self.sums, "steps": self.steps, "explorations": self.explorations}

    def to_json(self) -> str:
        return json.dumps({"algorithm": self.name, "n_arms": self.n_arms, "seed": self.seed,
                           "params": self.params(), "state": self.state(), "rng": self.rng.bit_generator.state})

    def restore(self, state: dict[str, Any]) -> None:
        self.counts = [int(c) for c in state["counts"]]
        self.sums = [float(s) for s in state["sums"]]
        self.steps = int(state["steps"])
        self.explorations = int(state.get("explorations", 0))


class EpsilonGreedy(Bandit):
    name = "epsilon_greedy"

    def __init__(self, n_arms: int, epsilon: float = 0.1, seed: int = 0) -> None:
        super().__init__(n_arms, seed)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def _pick(self, arms: list[int], context: Any) -> tuple[int, Sequence[float]]:
        values = self.means
        if self.rng.random() < self.epsilon:
            return arms[int(self.rng.integers(len(arms)))], values
        return _best(values, arms), values


class UCB1(Bandit):
    name = "ucb"

    def __init__(self, n_arms: int, c: float = math.sqrt(2.0), seed: int = 0) -> None:
        super().__init__(n_arms, seed)
        self.c = c

    def params(self) -> dict[str, Any]:
        return {"c": self.c}

    def _pick(self, arms: list[int], context: Any) -> tuple[int, Sequence[float]]:
        total = sum(self.counts[a] for a in arms)
        values = [m + self.c * math.sqrt(math.log(max(total, 1)) / n) if n else math.inf
                  for m, n in zip(self.means, self.counts)]
        return _best(values, arms), values


class Thompson(Bandit):
    """Beta-Bernoulli (rewards in [0, 1]; a fractional reward counts as that share of a success) or Gaussian
    (known noise ``sigma``, a N(0, prior_sigma^2) prior on each arm's mean)."""

    name = "thompson"

    def __init__(self, n_arms: int, kind: str = "bernoulli", sigma: float = 1.0, prior_sigma: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(n_arms, seed)
        if kind not in ("bernoulli", "gaussian"):
            raise ValueError(f"kind must be 'bernoulli' or 'gaussian', got {kind!r}")
        self.kind, self.sigma, self.prior_sigma = kind, sigma, prior_sigma

    def params(self) -> dict[str, Any]:
        return {"kind": self.kind, "sigma": self.sigma, "prior_sigma": self.prior_sigma}

    def _posterior(self) -> list[tuple[float, float]]:
        if self.kind == "bernoulli":  # (alpha, beta)
            return [(1.0 + min(max(s, 0.0), c), 1.0 + c - min(max(s, 0.0), c)) for s, c in zip(self.sums, self.counts)]
        out = []
        for s, c in zip(self.sums, self.counts):
            precision = 1.0 / self.prior_sigma**2 + c / self.sigma**2
            out.append(((s / self.sigma**2) / precision, math.sqrt(1.0 / precision)))  # (mean, sd)
        return out

    def _estimates(self, context: Any) -> list[float]:
        post = self._posterior()
        return [a / (a + b) for a, b in post] if self.kind == "bernoulli" else [m for m, _ in post]

    def _pick(self, arms: list[int], context: Any) -> tuple[int, Sequence[float]]:
        post = self._posterior()
        if self.kind == "bernoulli":
            values = [float(self.rng.beta(a, b)) for a, b in post]
        else:
            values = [float(self.rng.normal(m, sd)) for m, sd in post]
        return _best(values, arms), values

    def update(self, arm: int, reward: float, context: Any = None) -> None:
        if self.kind == "bernoulli":
            reward = min(1.0, max(0.0, float(reward)))
        super().update(arm, reward, context)


class LinUCB(Bandit):
    """Disjoint LinUCB (Li et al. 2010): a ridge regression of the reward on the context per arm, plus
    ``alpha`` times the estimate's standard error."""

    name = "linucb"

    def __init__(self, n_arms: int, dim: int, alpha: float = 1.0, seed: int = 0) -> None:
        super().__init__(n_arms, seed)
        self.dim, self.alpha = dim, alpha
        self.A = [np.eye(dim) for _ in range(n_arms)]
        self.b = [np.zeros(dim) for _ in range(n_arms)]

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "alpha": self.alpha}

    def _x(self, context: Any) -> np.ndarray:
        if context is None:
            raise ValueError("linucb needs a context vector")
        x = np.asarray(context, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.dim:
            raise ValueError(f"linucb: context has {x.shape[0]} values, expected {self.dim}")
        return x

    def _estimates(self, context: Any) -> list[float]:
        x = self._x(context)
        return [float(np.linalg.solve(A, b) @ x) for A, b in zip(self.A, self.b)]

    def _pick(self, arms: list[int], context: Any) -> tuple[int, Sequence[float]]:
        x = self._x(context)
        values = []
        for A, b in zip(self.A, self.b):
            inv = np.linalg.inv(A)
            values.append(float((inv @ b) @ x + self.alpha * math.sqrt(float(x @ inv @ x))))
        return _best(values, arms), values

    def update(self, arm: int, reward: float, context: Any = None) -> None:
        x = self._x(context)
        self.A[arm] += np.outer(x, x)
        self.b[arm] += float(reward) * x
        super().update(arm, reward, context)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "A": [a.tolist() for a in self.A], "b": [b.tolist() for b in self.b]}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.A = [np.array(a, dtype=np.float64) for a in state["A"]]
        self.b = [np.array(b, dtype=np.float64) for b in state["b"]]


ALGORITHMS: dict[str, type[Bandit]] = {c.name: c for c in (EpsilonGreedy, UCB1, Thompson, LinUCB)}


def make_bandit(algorithm: str, n_arms: int, *, dim: int = 0, seed: int = 0, **params: Any) -> Bandit:
    """A bandit by name (``epsilon_greedy``, ``ucb``, ``thompson``, ``linucb``); ``dim`` is LinUCB's context size."""
    cls = ALGORITHMS.get(algorithm)
    if cls is None:
        raise ValueError(f"unknown bandit algorithm {algorithm!r}; use {', '.join(ALGORITHMS)}")
    if cls is LinUCB:
        return LinUCB(n_arms, dim, seed=seed, **params)
    return cls(n_arms, seed=seed, **params)


def bandit_from_json(text: str) -> Bandit:
    """The bandit :meth:`Bandit.to_json` wrote, in the same state (its generator's included)."""
    data = json.loads(text)
    params = dict(data.get("params") or {})
    dim = int(params.pop("dim", 0))
    bandit = make_bandit(data["algorithm"], int(data["n_arms"]), dim=dim, seed=int(data["seed"]), **params)
    bandit.restore(data["state"])
    bandit.rng = _rng(bandit.seed, data["rng"])
    return bandit


@dataclass(frozen=True)
class RegretRun:
    """A bandit's cumulative pseudo-regret per step, its pulls, and whether it ended on the best arm."""

    regret: np.ndarray
    pulls: list[int]
    best_arm: int
    found_best: bool
    explorations: int


def simulate_regret(bandit: Bandit, means: Sequence[float], steps: int, *, seed: int = 0,
                    noise: str = "bernoulli", sigma: float = 0.5) -> RegretRun:
    """Play ``bandit`` for ``steps`` on arms with the given mean rewards (Bernoulli draws, or Gaussian with
    ``sigma``); regret of step t is ``max(means) - means[arm_t]``."""
    rng = np.random.default_rng(seed)
    best = int(np.argmax(means))
    regret = np.zeros(steps)
    total = 0.0
    dim = getattr(bandit, "dim", 0)
    context = np.ones(dim) if dim else None  # a constant context: LinUCB becomes a plain bandit with intercepts
    for t in range(steps):
        arm = bandit.select(context).arm
        mu = float(means[arm])
        reward = float(rng.random() < mu) if noise == "bernoulli" else float(rng.normal(mu, sigma))
        bandit.update(arm, reward, context)
        total += means[best] - mu
        regret[t] = total
    return RegretRun(regret, list(bandit.counts), best, int(np.argmax(bandit.counts)) == best, bandit.explorations)


__all__ = ["ALGORITHMS", "Bandit", "Choice", "EpsilonGreedy", "LinUCB", "RegretRun", "Thompson", "UCB1",
           "bandit_from_json", "make_bandit", "simulate_regret"]
