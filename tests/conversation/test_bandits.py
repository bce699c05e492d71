"""Bandits: the best arm found, regret that grows slower than linearly, exploration reported, JSON state that
restores the same future (issue 15)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmrec.conversation.bandits import (
    ALGORITHMS, EpsilonGreedy, LinUCB, Thompson, bandit_from_json, make_bandit, simulate_regret,
)
from llmrec.conversation.policies import BanditPolicy, state_features
from llmrec.conversation.types import DialogueState

MEANS = [0.2, 0.35, 0.7, 0.5, 0.3]
SETTINGS = {"epsilon_greedy": {"epsilon": 0.1}, "ucb": {}, "thompson": {}, "linucb": {"alpha": 1.0}}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_best_arm_found_and_regret_sublinear(name: str) -> None:
    run = simulate_regret(make_bandit(name, len(MEANS), dim=1, seed=3, **SETTINGS[name]), MEANS, 3000, seed=4)
    assert run.found_best and run.pulls[2] > 0.6 * 3000
    # sub-linear: the second half of the run adds less regret than the first
    first, second = run.regret[1499], run.regret[-1] - run.regret[1499]
    assert second < first
    assert run.regret[-1] < 0.25 * 3000 * (max(MEANS) - min(MEANS))  # far below always picking at random


def test_gaussian_thompson_and_exploration_flag() -> None:
    run = simulate_regret(Thompson(3, kind="gaussian", sigma=0.5, seed=1), [0.0, 1.0, 0.5], 500, seed=2,
                          noise="gaussian", sigma=0.5)
    assert run.found_best
    eps = EpsilonGreedy(2, epsilon=1.0, seed=0)
    eps.update(0, 1.0)
    picks = [eps.select() for _ in range(200)]
    assert all(c.explored == (c.arm == 1) for c in picks)  # arm 0 is the greedy one; picking 1 explores
    assert eps.explorations == sum(c.explored for c in picks)
    with pytest.raises(ValueError, match="unknown bandit algorithm 'ucb2'"):
        make_bandit("ucb2", 3)
    with pytest.raises(ValueError, match="epsilon must be in"):
        EpsilonGreedy(2, epsilon=2)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_json_state_restores_the_same_future(name: str) -> None:
    bandit = make_bandit(name, 4, dim=3, seed=9, **SETTINGS[name])
    rng = np.random.default_rng(0)
    x = np.array([1.0, 0.5, 0.0])
    for _ in range(50):
        arm = bandit.select(x).arm
        bandit.update(arm, float(rng.random() < 0.5), x)
    text = bandit.to_json()
    json.loads(text)  # plain JSON
    copy = bandit_from_json(text)
    assert [bandit.select(x).arm for _ in range(30)] == [copy.select(x).arm for _ in range(30)]


def test_linucb_uses_the_context() -> None:
    bandit = LinUCB(2, dim=2, alpha=0.1, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(400):  # arm 0 pays in context a, arm 1 in context b
        x = np.array([1.0, 0.0]) if rng.random() < 0.5 else np.array([0.0, 1.0])
        arm = bandit.select(x).arm
        bandit.update(arm, float(arm == (0 if x[0] else 1)), x)
    assert bandit.select(np.array([1.0, 0.0])).arm == 0 and bandit.select(np.array([0.0, 1.0])).arm == 1
    with pytest.raises(ValueError, match="expected 2"):
        bandit.select(np.ones(3))


def test_bandit_policy_masks_asked_slots_and_credits_the_return() -> None:
    policy = BanditPolicy("ucb", seed=0)
    state = DialogueState(slots={"type": "earbuds"}, asked=["type", "budget"], turn=2)
    assert state_features(state).tolist() == pytest.approx([1, 0, 0, 0, 0.2, 0, 0])
    for _ in range(20):
        d = policy(state)
        assert d.slot not in ("type", "budget") and d.policy == "ucb"
    policy.update(-0.05)
    policy(state)
    policy.update(1.0, done=True)  # both decisions learn the return from their turn on
    assert sum(policy.bandit.sums) == pytest.approx(0.95 + 1.0)  # -0.05 + 1.0 for the first, 1.0 the second
    assert sum(policy.bandit.counts) == 2 and policy.pending == {}
