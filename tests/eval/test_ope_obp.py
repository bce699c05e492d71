"""llmrec/eval/ope.py gives Open Bandit Pipeline's numbers: obp (0.4.1, the test extra; its later releases need
Python < 3.11) run on the same arrays gives the same point estimates and the same bootstrap intervals, to 1e-9,
for IPS, SNIPS, DR and SNDR in the position-based (len_list) setting and with a single position."""

from __future__ import annotations

import numpy as np
import pytest
from obp.ope import (DoublyRobust, InverseProbabilityWeighting, SelfNormalizedDoublyRobust,
                     SelfNormalizedInverseProbabilityWeighting)
from obp.utils import convert_to_action_dist

from llmrec.eval import ope

OBP = {"ips": InverseProbabilityWeighting, "snips": SelfNormalizedInverseProbabilityWeighting,
       "dr": DoublyRobust, "sndr": SelfNormalizedDoublyRobust}
BOOT = 1000


def _bandit(n: int, n_actions: int, len_list: int, seed: int):
    """Logged rows with a random logger, a random target (OBP's action_dist) and a random reward model."""
    rng = np.random.default_rng(seed)
    behavior = rng.dirichlet(np.ones(n_actions), size=(n, len_list)).transpose(0, 2, 1)
    action_dist = rng.dirichlet(np.full(n_actions, 0.5), size=(n, len_list)).transpose(0, 2, 1)
    q_hat = rng.random((n, n_actions, len_list))
    position = rng.integers(0, len_list, n)
    action = np.array([rng.choice(n_actions, p=behavior[i, :, position[i]]) for i in range(n)])
    reward = rng.binomial(1, q_hat[np.arange(n), action, position] * 0.8 + 0.1).astype(float)
    pscore = behavior[np.arange(n), action, position]
    return dict(reward=reward, action=action, position=position, pscore=pscore, action_dist=action_dist,
                estimated_rewards_by_reg_model=q_hat)


def _obp(estimator: str, data: dict, seed: int, position: bool = True) -> tuple[float, float, float]:
    kwargs = dict(data) if position else {k: v for k, v in data.items() if k != "position"}
    est = OBP[estimator]()
    value = est.estimate_policy_value(**kwargs)
    ci = est.estimate_interval(**kwargs, n_bootstrap_samples=BOOT, random_state=seed)
    return value, ci["95.0% CI (lower)"], ci["95.0% CI (upper)"]


@pytest.mark.parametrize("n, n_actions, len_list, seed", [(400, 5, 3, 0), (250, 8, 5, 1), (300, 4, 1, 2)])
def test_estimates_and_intervals_are_obps(n, n_actions, len_list, seed):
    data = _bandit(n, n_actions, len_list, seed)
    logged = ope.LoggedFeedback(data["action"], data["position"], data["reward"], data["pscore"], len_list=len_list)
    ours = ope.estimate(logged, data["action_dist"], ope.ESTIMATORS, data["estimated_rewards_by_reg_model"],
                        n_bootstrap=BOOT, seed=seed)
    for mine in ours:
        value, lower, upper = _obp(mine.estimator, data, seed, position=len_list > 1)
        assert mine.value == pytest.approx(value, abs=1e-9), mine.estimator
        assert (mine.lower, mine.upper) == pytest.approx((lower, upper), abs=1e-9), mine.estimator


def test_contracted_inputs_give_the_same_numbers_as_obps_arrays():
    data = _bandit(300, 6, 3, 3)
    logged = ope.LoggedFeedback(data["action"], data["position"], data["reward"], data["pscore"])
    target = ope.policy_at_logged(logged, data["action_dist"], data["estimated_rewards_by_reg_model"], by="row")
    factual = ope.factual_rewards(logged, data["estimated_rewards_by_reg_model"], by="row")
    ours = ope.estimate(logged, target, ("dr", "sndr"), factual, n_bootstrap=BOOT, seed=4)
    for mine in ours:
        value, lower, upper = _obp(mine.estimator, data, 4)
        assert (mine.value, mine.lower, mine.upper) == pytest.approx((value, lower, upper), abs=1e-9)


def test_clipped_weights_are_obps_min_of_weight_and_lambda():
    # obp 0.4.1 has no lambda_; later releases clip w to min(w, lambda_) in IPS and DR. The same weights come
    # from obp 0.4.1 given the pscore max(pscore, pi_e / lambda_), since pi_e / that = min(w, lambda_).
    data = _bandit(400, 5, 3, 5)
    logged = ope.LoggedFeedback(data["action"], data["position"], data["reward"], data["pscore"])
    lam = 2.0
    pi_e = data["action_dist"][np.arange(400), data["action"], data["position"]]
    assert (pi_e / data["pscore"] > lam).sum() > 20
    clipped = dict(data, pscore=np.maximum(data["pscore"], pi_e / lam))
    for mine in ope.estimate(logged, data["action_dist"], ("ips", "dr"), data["estimated_rewards_by_reg_model"],
                             lambda_=lam, n_bootstrap=BOOT, seed=6):
        value, lower, upper = _obp(mine.estimator, clipped, 6)
        assert (mine.value, mine.lower, mine.upper) == pytest.approx((value, lower, upper), abs=1e-9)


def test_a_ranking_is_obps_action_dist():
    rankings = np.random.default_rng(7).permuted(np.tile(np.arange(6), (20, 1)), axis=1)[:, :3]
    np.testing.assert_array_equal(ope.ranking_dist(rankings, 6), convert_to_action_dist(6, rankings))
