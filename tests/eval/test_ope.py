"""llmrec/eval/ope.py against a simulation whose true values are known (llmrec/eval/ope_synthetic.py): a contextual
slate environment with position-biased clicks, a Plackett-Luce logger over noisy scores, and two targets, one
close to the logger (Plackett-Luce over other noisy scores) and one far (the deterministic ranking by the true
affinity), whose true values come from their exact per-position marginals. Over 40 replications each estimator's
95% interval must cover the truth at least 85% of the time and the estimates must centre on it; DR with a good
reward model must vary less than IPS; support violations must be refused; bad inputs must be clear errors."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from llmrec.eval import ope
from llmrec.eval.ope_synthetic import SlateEnvironment, SlatePolicy

REPS = 40
ROUNDS = 600
ESTIMATORS = ("ips", "snips", "dr", "sndr")


@pytest.fixture(scope="module")
def world():
    env = SlateEnvironment.make(n_contexts=20, n_items=10, len_list=3, base_logit=0.5, seed=0)
    rng = np.random.default_rng(0)
    logger = SlatePolicy("plackett_luce", env.noisy_scores(1.0, rng))
    targets = {"close": SlatePolicy("plackett_luce", env.noisy_scores(1.0, rng), temperature=0.7),
               "far": SlatePolicy("ranking", env.affinity)}
    q_good = env.reward_model(0.1, rng)
    truth = {name: env.value(p) for name, p in targets.items()}
    return env, logger, targets, q_good, truth


@pytest.fixture(scope="module")
def replications(world):
    env, logger, targets, q_good, _ = world
    runs = []
    for rep in range(REPS):
        rng = np.random.default_rng(1000 + rep)
        logged, contexts = env.log(logger, ROUNDS, rng)
        policies = {name: env.target(logged, contexts, p, q_good, logger) for name, p in targets.items()}
        q = env.factual(logged, contexts, q_good)
        runs.append((ope.compare(logged, policies, ESTIMATORS, q, seed=rep),
                     ope.compare(logged, policies, ("snips", "sndr"), q, seed=rep, sn_interval="ratio")))
    return runs


def _obp(replications):
    return [obp for obp, _ in replications]


def _get(run, policy, estimator, mode="obp"):
    obp, ratio = run
    return ratio.get(policy, estimator) if mode == "ratio" else obp.get(policy, estimator)


def _values(runs, policy, estimator):
    return np.array([_get(r, policy, estimator).value for r in runs])


def test_the_simulators_true_values_are_what_running_the_policies_gives(world):
    env, logger, targets, _, truth = world
    rng = np.random.default_rng(5)
    for name, policy in [("logger", logger), *targets.items()]:
        value = env.value(policy)
        clicks = env.simulate(policy, 40_000, rng)[2]
        se = clicks.sum(axis=1).std() / env.len_list / math.sqrt(clicks.shape[0])
        assert abs(clicks.mean() - value) < 4 * se, name
    assert truth["far"] > truth["close"] > env.value(logger)  # the far target is the better one


MODES = [(e, "obp") for e in ESTIMATORS] + [("snips", "ratio"), ("sndr", "ratio")]


@pytest.mark.parametrize("policy", ["close", "far"])
@pytest.mark.parametrize("estimator, mode", MODES)
def test_the_95_percent_interval_covers_the_true_value(world, replications, policy, estimator, mode):
    truth = world[4][policy]
    covered = sum(_get(r, policy, estimator, mode).lower <= truth <= _get(r, policy, estimator, mode).upper
                  for r in replications)
    assert covered >= 0.85 * REPS, f"{estimator} ({mode}) on {policy}: {covered}/{REPS}"


@pytest.mark.parametrize("policy", ["close", "far"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_the_estimates_centre_on_the_true_value(world, replications, policy, estimator):
    truth = world[4][policy]
    values = _values(replications, policy, estimator)
    se_mean = values.std(ddof=1) / math.sqrt(REPS)
    assert abs(values.mean() - truth) < 3 * se_mean + 1e-3, (values.mean(), truth)


def _width(runs, policy, estimator, mode="obp"):
    return np.mean([_get(r, policy, estimator, mode).upper - _get(r, policy, estimator, mode).lower for r in runs])


@pytest.mark.parametrize("policy", ["close", "far"])
@pytest.mark.parametrize("estimator, mode", [("ips", "obp"), ("dr", "obp"), ("snips", "ratio"), ("sndr", "ratio")])
def test_the_interval_is_as_wide_as_the_estimates_spread(replications, policy, estimator, mode):
    spread = 2 * 1.96 * _values(replications, policy, estimator).std(ddof=1)
    assert 0.7 < _width(replications, policy, estimator, mode) / spread < 1.4


@pytest.mark.parametrize("policy", ["close", "far"])
def test_obps_self_normalised_interval_is_the_conservative_one(replications, policy):
    # OBP resamples SNIPS's terms r w / mean(w) with the normaliser held at the full sample's, so the interval
    # spans Var(r w) rather than Var(w (r - V)): wider than resampling the ratio when the value is far from 0.
    # SNDR's residuals r - qhat are small, so there the two barely differ.
    assert _width(replications, policy, "snips", "obp") > 1.3 * _width(replications, policy, "snips", "ratio")
    assert _width(replications, policy, "sndr", "obp") == pytest.approx(_width(replications, policy, "sndr", "ratio"),
                                                                        rel=0.1)
    for estimator in ("snips", "sndr"):  # the same point estimates either way
        ratio = [_get(r, policy, estimator, "ratio").value for r in replications]
        np.testing.assert_allclose(ratio, _values(replications, policy, estimator), rtol=1e-12)


@pytest.mark.parametrize("policy", ["close", "far"])
def test_dr_with_a_good_reward_model_varies_less_than_ips(replications, policy):
    ips, dr = _values(replications, policy, "ips"), _values(replications, policy, "dr")
    assert dr.std() < 0.9 * ips.std()
    assert _width(replications, policy, "dr") < 0.9 * _width(replications, policy, "ips")


def test_the_paired_difference_covers_the_true_difference(world, replications):
    truth = world[4]["far"] - world[4]["close"]
    diffs = [d for r in _obp(replications) for d in r.differences if d.estimator == "dr"]
    assert all((d.a, d.b) == ("close", "far") for d in diffs)
    covered = sum(d.lower <= -truth <= d.upper for d in diffs)
    assert covered >= 0.85 * REPS
    # paired: the difference's interval is narrower than the two policies' intervals side by side
    r = replications[0][0]
    d = next(d for d in r.differences if d.estimator == "dr")
    a, b = r.get("close", "dr"), r.get("far", "dr")
    assert d.upper - d.lower < (a.upper - a.lower) + (b.upper - b.lower)
    assert d.value == pytest.approx(a.value - b.value)


def test_a_policy_compared_with_itself_differs_by_exactly_zero(world):
    env, logger, targets, q_good, _ = world
    logged, contexts = env.log(logger, 200, np.random.default_rng(1))
    p = env.target(logged, contexts, targets["far"], q_good, logger)
    result = ope.compare(logged, {"a": p, "b": p}, reward_model=env.factual(logged, contexts, q_good), baseline="a")
    assert [(d.estimator, d.a, d.b) for d in result.differences] == [("ips", "b", "a"), ("snips", "b", "a"),
                                                                      ("dr", "b", "a")]
    assert all(d.value == d.lower == d.upper == 0.0 and not d.significant for d in result.differences)
    json.dumps(result.to_dict())


def test_full_support_raises_no_warning(world):
    env, logger, targets, q_good, _ = world
    logged, contexts = env.log(logger, 2000, np.random.default_rng(2))
    est = ope.estimate(logged, env.target(logged, contexts, targets["close"], q_good, logger), "ips")[0]
    assert est.warnings == ()
    assert est.weights.unsupported_rows == 0 and est.weights.matched == logged.n_rows
    assert est.weights.mean_lower <= 1.0 <= est.weights.mean_upper
    assert est.n_rounds == 2000 and est.n_rows == 6000


def test_a_deterministic_logger_cannot_evaluate_another_ranking(world):
    env, _, targets, _, truth = world
    logger = SlatePolicy("ranking", env.noisy_scores(1.0, np.random.default_rng(3)))
    logged, contexts = env.log(logger, 300, np.random.default_rng(4))
    assert np.all(logged.pscore == 1.0)
    target = env.target(logged, contexts, targets["far"])  # no logger distribution: pscore 1 alone tells
    with pytest.raises(ope.SupportError, match=r"rows.*pscore 1.*on_support='warn'"):
        ope.estimate(logged, target)
    est = ope.estimate(logged, target, "ips", on_support="warn")[0]
    assert est.weights.unsupported_rows > 0 and 0 < est.weights.unsupported_mass <= 1
    assert any("shows nothing" in w for w in est.warnings)
    assert est.value < truth["far"]  # the part of the value the logs cannot see is missing


def test_items_the_logger_never_shows_are_a_support_error_or_a_mean_weight_warning(world):
    env, _, targets, _, truth = world
    scores = env.noisy_scores(1.0, np.random.default_rng(3))
    scores[:, ::2] = -np.inf  # the logger never shows even-numbered items
    logger = SlatePolicy("plackett_luce", scores)
    logged, contexts = env.log(logger, 1500, np.random.default_rng(6))
    assert not np.any(logged.action % 2 == 0)
    exact = env.target(logged, contexts, targets["far"], logger=logger)  # checked against the full logger
    with pytest.raises(ope.SupportError, match="never shows"):
        ope.estimate(logged, exact)
    # with pi_e alone the violation cannot be proven, but the mean weight is far below 1: a warning
    est = ope.estimate(logged, exact.pi_e, "ips")[0]
    assert est.weights.mean_upper < 0.9
    assert any("mean importance weight" in w for w in est.warnings)
    assert est.upper < truth["far"]


def test_a_policy_the_logs_never_match_is_reported_not_divided_by_zero(world):
    env, logger, _, _, _ = world
    logged, _ = env.log(logger, 50, np.random.default_rng(7))
    ests = ope.estimate(logged, np.zeros(logged.n_rows), ("ips", "snips"))
    assert ests[0].value == 0.0 and math.isnan(ests[1].value)
    assert any("undefined" in w for w in ests[1].warnings)
    assert any("say nothing" in w for w in ests[0].warnings)


def _log(n=6, **over):
    base = dict(action=[0, 1, 2, 0, 1, 2][:n], position=[0, 1, 0, 1, 0, 1][:n], reward=[1, 0, 1, 0, 0, 1][:n],
                pscore=[0.5, 0.25, 0.5, 0.5, 0.25, 0.4][:n])
    base.update(over)
    return base


@pytest.mark.parametrize("over, message", [
    (dict(pscore=[0.5, -0.1, 0.5, 0.5, 0.25, 0.4]), r"`pscore` must be > 0.*row 1 is -0.1"),
    (dict(pscore=[0.5, 0.0, 0.5, 0.5, 0.25, 0.4]), r"`pscore` must be > 0.*never 0.*row 1 is 0.0"),
    (dict(pscore=[0.5, 1.5, 0.5, 0.5, 0.25, 0.4]), r"`pscore` is a probability, at most 1: row 1"),
    (dict(reward=[1, 0, 1]), r"`reward` has 3 values but the log has 6 rows"),
    (dict(position=[0, 1, 0, 1]), r"`position` has 4 values but the log has 6 rows"),
    (dict(action=[0, 1.5, 2, 0, 1, 2]), r"`action` must be non-negative integers.*row 1 is 1.5"),
    (dict(action=[0, -1, 2, 0, 1, 2]), r"`action` must be non-negative integers.*row 1"),
    (dict(reward=[1, 0, math.nan, 0, 0, 1]), r"`reward` must be finite: row 2 is nan"),
    (dict(position=[0, 1, 0, 1, 0, 3], len_list=2), r"`position` must be below len_list=2: row 5 is 3"),
    (dict(round_index=[[0, 1]] * 6), r"`round_index` must be one value per row"),
])
def test_invalid_logs_are_clear_value_errors(over, message):
    with pytest.raises(ValueError, match=message):
        ope.LoggedFeedback(**_log(**over))


def test_invalid_policies_and_settings_are_clear_value_errors():
    logged = ope.LoggedFeedback(**_log())
    pi = np.full(6, 0.5)
    cases = [
        (lambda: ope.estimate(logged, pi[:4]), r"pi_e` has 4 values but the log has 6 rows"),
        (lambda: ope.estimate(logged, pi * 3), r"pi_e` is a probability, at most 1"),
        (lambda: ope.estimate(logged, pi, "dr"), r"needs a reward model"),
        (lambda: ope.estimate(logged, pi, "dr", np.zeros(6)), r"expectation under the policy"),
        (lambda: ope.estimate(logged, pi, "magic"), r"unknown estimator 'magic': choose from ips, snips, dr, sndr"),
        (lambda: ope.estimate(logged, pi, alpha=5), r"`alpha` must lie strictly between 0 and 1"),
        (lambda: ope.estimate(logged, pi, n_bootstrap=0), r"`n_bootstrap` must be a positive integer"),
        (lambda: ope.estimate(logged, pi, lambda_=-1), r"`lambda_`.*must be > 0"),
        (lambda: ope.estimate(logged, pi, on_support="ignore"), r"`on_support` must be 'error' or 'warn'"),
        (lambda: ope.estimate(logged, np.full((6, 2, 2), 0.5)), r"must index `action_dist`'s 2 actions: row 2"),
        (lambda: ope.estimate(logged, np.full((6, 3, 2), 0.5)), r"must sum to 1 over actions.*sums to 1.5"),
        (lambda: ope.estimate(logged, np.full((5, 3, 2), 1 / 3)), r"action_dist has 5 rows but the log has 6"),
        (lambda: ope.compare(logged, {"a": pi}, baseline="b"), r"baseline 'b' is not one of the policies: a"),
        (lambda: ope.compare(logged, {}), r"no policy"),
        (lambda: ope.plackett_luce_dist(np.zeros((2, 40)), 6), r"pass n_samples"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_plackett_luce_marginals_are_exact():
    rng = np.random.default_rng(8)
    scores = rng.normal(size=(4, 6))
    scores[1, 2] = -np.inf  # never shown
    dist = ope.plackett_luce_dist(scores, 3, temperature=0.8)
    p = np.exp(scores / 0.8)
    p /= p.sum(axis=1, keepdims=True)
    brute = np.zeros_like(dist)
    for r in range(4):
        for slate in itertools.permutations(range(6), 3):
            prob, rest = 1.0, 1.0
            for a in slate:
                prob, rest = prob * p[r, a] / rest, rest - p[r, a]
            for k, a in enumerate(slate):
                brute[r, a, k] += prob
    np.testing.assert_allclose(dist, brute, atol=1e-12)
    assert np.all(dist[1, 2] == 0)
    sampled = ope.plackett_luce_dist(scores, 3, temperature=0.8, n_samples=20_000, seed=1)
    assert np.abs(sampled - brute).max() < 0.015


def test_ranking_and_epsilon_greedy_helpers(world):
    env = world[0]
    scores = env.noisy_scores(1.0, np.random.default_rng(9))
    rankings = ope.top_k(scores, 3)
    policy = SlatePolicy("epsilon_greedy", scores, epsilon=0.3)
    logged, contexts = env.log(policy, 4000, np.random.default_rng(10))
    per_round = rankings[contexts]
    direct = ope.ranking_probs(logged, per_round)
    np.testing.assert_array_equal(direct, ope.at_logged(logged, ope.ranking_dist(per_round, 10)))
    assert set(np.unique(direct)) <= {0.0, 1.0}
    relaxed = ope.ranking_probs(logged, per_round, ignore_position=True)
    np.testing.assert_allclose(relaxed, ope.at_logged(logged, ope.ranking_dist(per_round, 10, ignore_position=True)))
    eps = ope.epsilon_greedy_dist(scores, 3, 0.3)
    np.testing.assert_allclose(eps.sum(axis=1), 1.0)
    assert eps.max() == pytest.approx(0.7 + 0.03) and eps.min() == pytest.approx(0.03)
    # the epsilon-greedy logs' item frequencies per position are the marginals (the sampler and the formula agree)
    counts = np.zeros_like(eps)
    np.add.at(counts, (contexts[logged.round_index], logged.action, logged.position), 1.0)
    expected = eps * np.bincount(contexts, minlength=eps.shape[0])[:, None, None]
    chi2, cells = ((counts - expected) ** 2 / expected).sum(), expected.size - eps.shape[0] * eps.shape[2]
    assert chi2 < cells + 5 * math.sqrt(2 * cells)
    np.testing.assert_allclose(logged.pscore, eps[contexts[logged.round_index], logged.action, logged.position])


def test_ignoring_positions_is_unbiased_only_without_position_bias():
    results = {}
    for decay in (0.0, 1.5):
        env = SlateEnvironment.make(n_contexts=10, n_items=8, len_list=3, position_decay=decay, seed=1)
        rng = np.random.default_rng(0)
        logger = SlatePolicy("plackett_luce", env.noisy_scores(1.0, rng))
        target = SlatePolicy("ranking", env.affinity)
        values = {True: [], False: []}
        for rep in range(150):
            for relaxed in (True, False):
                logged, contexts = env.log(logger, 200, np.random.default_rng([rep, decay > 0]),
                                           ignore_position=relaxed)
                policy = env.target(logged, contexts, target, ignore_position=relaxed)
                values[relaxed].append(ope.estimate(logged, policy, "ips", n_bootstrap=1)[0].value)
        results[decay] = (env.value(target), {k: np.array(v) for k, v in values.items()})
    truth, v = results[0.0]
    for relaxed in (True, False):
        assert abs(v[relaxed].mean() - truth) < 3 * v[relaxed].std() / math.sqrt(150)
    assert v[True].std() < 0.8 * v[False].std()  # the relaxation's point: a larger support, less variance
    truth, v = results[1.5]
    assert abs(v[False].mean() - truth) < 3 * v[False].std() / math.sqrt(150)
    assert abs(v[True].mean() - truth) > 4 * v[True].std() / math.sqrt(150)  # position effects bias it


def test_rounds_are_resampled_whole(world):
    env, logger, targets, _, _ = world
    logged, contexts = env.log(logger, 300, np.random.default_rng(11))
    pi = env.target(logged, contexts, targets["close"]).pi_e
    rows = ope.LoggedFeedback(logged.action, logged.position, logged.reward, logged.pscore)
    singles = ope.LoggedFeedback(logged.action, logged.position, logged.reward, logged.pscore,
                                 round_index=np.arange(logged.n_rows))
    by_round, by_row, by_single = (ope.estimate(lg, pi, "ips")[0] for lg in (logged, rows, singles))
    assert by_round.value == by_row.value == by_single.value
    assert (by_row.lower, by_row.upper) == (by_single.lower, by_single.upper)  # one row per round: OBP's bootstrap
    assert (by_round.lower, by_round.upper) != (by_row.lower, by_row.upper)
    assert by_round.n_rounds == 300 and by_row.n_rounds == logged.n_rows
    # a resample's value is its rounds' terms over their rows
    terms = np.stack([np.arange(6.0), np.ones(6)], axis=1)
    lg = ope.LoggedFeedback([0] * 6, [0] * 6, [0] * 6, [1] * 6, round_index=[0, 0, 0, 1, 1, 2])
    means = ope.bootstrap_means(terms, lg, 50, seed=3)
    picks = np.random.RandomState(3).randint(0, 3, size=(50, 3))
    sums, sizes = np.array([3.0, 7.0, 5.0]), np.array([3.0, 2.0, 1.0])
    np.testing.assert_allclose(means[:, 0], sums[picks].sum(axis=1) / sizes[picks].sum(axis=1))
    np.testing.assert_allclose(means[:, 1], 1.0)


def test_weight_clipping_caps_ips_and_dr_only(world):
    env, logger, targets, q_good, _ = world
    logged, contexts = env.log(logger, 400, np.random.default_rng(12))
    policy = env.target(logged, contexts, targets["far"], q_good, logger)
    q = env.factual(logged, contexts, q_good)
    plain = ope.estimate(logged, policy, ESTIMATORS, q)
    assert [e.value for e in ope.estimate(logged, policy, ESTIMATORS, q, lambda_=math.inf)] == [e.value for e in plain]
    clipped = {e.estimator: e for e in ope.estimate(logged, policy, ESTIMATORS, q, lambda_=5.0)}
    w = policy.pi_e / logged.pscore
    assert clipped["ips"].weights.clipped == int((w > 5).sum()) > 0
    assert clipped["ips"].value == pytest.approx(np.mean(logged.reward * np.minimum(w, 5)))
    assert clipped["dr"].value == pytest.approx(np.mean(policy.q_hat_expected + np.minimum(w, 5) * (logged.reward - q)))
    assert clipped["ips"].value < plain[0].value
    assert clipped["snips"].value == plain[1].value and clipped["sndr"].value == plain[3].value  # as in OBP


def test_estimates_serialise_to_json(world):
    env, logger, targets, q_good, _ = world
    logged, contexts = env.log(logger, 100, np.random.default_rng(13))
    est = ope.estimate(logged, env.target(logged, contexts, targets["close"], q_good),
                       reward_model=env.factual(logged, contexts, q_good), name="variant-b")
    assert [e.estimator for e in est] == ["ips", "snips", "dr"]
    data = json.loads(json.dumps([e.to_dict() for e in est]))
    assert data[2]["policy"] == "variant-b" and data[2]["level"] == 0.95 and len(data[2]["ci"]) == 2
    assert data[0]["weights"]["n_rows"] == 300


def test_the_log_keeps_its_own_read_only_copies():
    data = {k: np.asarray(v, dtype=float) for k, v in _log().items()}
    logged = ope.LoggedFeedback(**data)
    data["pscore"][0] = 0.9  # the caller's array stays theirs, and writable
    assert logged.pscore[0] == 0.5 and not logged.pscore.flags.writeable
    assert logged.len_list == 2 and logged.n_rounds == 6
