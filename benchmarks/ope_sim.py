"""Off-policy estimators against the truth: bias, spread, RMSE and interval coverage of llmrec/eval/ope.py's IPS,
SNIPS, DR and SNDR in a slate simulation whose true values are exact (llmrec/eval/ope_synthetic.py), beside the
on-policy estimate (running the target itself for as many rounds, an A/B test's arm); and CPU per estimate, llmrec
against obp's own estimators on the same arrays.

World: 50 contexts, 20 items, 4 positions, clicks = relevance(context, item) x 1/(position + 1) (position-based
model); the logger is Plackett-Luce over the true affinity plus N(0, 1) noise. Targets: *close* (Plackett-Luce
over the logger's scores plus N(0, 0.5) more noise, temperature 0.8) and *far* (the deterministic top 4 by the
true affinity). Reward models for DR: *good* (the true click probabilities times log-normal noise, sigma 0.2) and
*poor* (each item's context-averaged click probability). Each replication draws fresh logs and a fresh on-policy
run, for 300, 1,000 and 3,000 rounds (x 4 rows); intervals are 95% bootstraps over rounds (1,000 resamples).

    .venv/bin/python benchmarks/ope_sim.py [--reps 200] [--write]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_md import write_section  # noqa: E402

from llmrec.eval import ope  # noqa: E402
from llmrec.eval.ope_synthetic import SlateEnvironment, SlatePolicy  # noqa: E402

HEADING = "## Off-policy estimators (benchmarks/ope_sim.py)"
SIZES = (300, 1000, 3000)
VARIANTS = [("ips", "IPS"), ("snips", "SNIPS"), ("snips-ratio", "SNIPS, ratio interval"), ("dr", "DR, good model"),
            ("sndr", "SNDR, good model"), ("dr-poor", "DR, poor model")]


def world():
    env = SlateEnvironment.make(n_contexts=50, n_items=20, len_list=4, base_logit=-1.0, seed=0)
    rng = np.random.default_rng(0)
    logger_scores = env.noisy_scores(1.0, rng)
    logger = SlatePolicy("plackett_luce", logger_scores)
    targets = {"close": SlatePolicy("plackett_luce", logger_scores + 0.5 * rng.normal(size=logger_scores.shape),
                                    temperature=0.8),
               "far": SlatePolicy("ranking", env.affinity)}
    return env, logger, targets, env.reward_model(0.2, rng), env.context_free_model()


def replicate(env, logger, targets, q_good, q_poor, n_rounds: int, rep: int) -> dict:
    rng = np.random.default_rng([n_rounds, rep])
    logged, contexts = env.log(logger, n_rounds, rng)
    out: dict = {("on-policy", name): env.on_policy(p, n_rounds, rng) for name, p in targets.items()}
    good = {name: env.target(logged, contexts, p, q_good, logger) for name, p in targets.items()}
    poor = {name: env.target(logged, contexts, p, q_poor) for name, p in targets.items()}
    fact_good, fact_poor = env.factual(logged, contexts, q_good), env.factual(logged, contexts, q_poor)
    runs = [("", ope.compare(logged, good, ("ips", "snips", "dr", "sndr"), fact_good, seed=rep)),
            ("-ratio", ope.compare(logged, good, ("snips",), fact_good, seed=rep, sn_interval="ratio")),
            ("-poor", ope.compare(logged, poor, ("dr",), fact_poor, seed=rep))]
    for suffix, result in runs:
        for e in result.estimates:
            out[(e.estimator + suffix, e.policy)] = e
    return out


def summarise(rows: list[dict], truth: dict, name: str, variant: str) -> dict:
    on = np.array([r[("on-policy", name)] for r in rows])
    if variant == "on-policy":
        values, cover, width = on, math.nan, math.nan
    else:
        ests = [r[(variant, name)] for r in rows]
        values = np.array([e.value for e in ests])
        cover = float(np.mean([e.lower <= truth[name] <= e.upper for e in ests]))
        width = float(np.mean([e.upper - e.lower for e in ests]))
    err = values - truth[name]
    rmse = float(np.sqrt(np.mean(err ** 2)))
    rmse_on = float(np.sqrt(np.mean((on - truth[name]) ** 2)))
    return {"bias": float(err.mean()), "se_bias": float(values.std(ddof=1) / math.sqrt(len(values))),
            "sd": float(values.std(ddof=1)), "rmse": rmse, "ratio": rmse / rmse_on,
            "gap": float(np.sqrt(np.mean((values - on) ** 2))), "cover": cover, "width": width}


def cpu_per_estimate(env, logger, targets, q_good, rounds: int = 9) -> list[str]:
    """Median CPU seconds of one estimate with its 1,000-resample interval: llmrec's and obp's, alternating."""
    try:
        from obp.ope import (DoublyRobust, InverseProbabilityWeighting, SelfNormalizedDoublyRobust,
                             SelfNormalizedInverseProbabilityWeighting)
    except ImportError:
        return ["obp is not installed (it is in the test extra): no CPU comparison"]
    n_rounds = SIZES[-1]
    logged, contexts = env.log(logger, n_rounds, np.random.default_rng(99))
    rows_only = ope.LoggedFeedback(logged.action, logged.position, logged.reward, logged.pscore)
    rounds_of = logged.round_index
    action_dist = targets["far"].dist(env.len_list)[contexts][rounds_of]  # OBP's per-row arrays
    q_rows = q_good[contexts][rounds_of]
    kw = dict(reward=logged.reward, action=logged.action, position=logged.position, pscore=logged.pscore,
              action_dist=action_dist, estimated_rewards_by_reg_model=q_rows)
    obp = {"ips": InverseProbabilityWeighting, "snips": SelfNormalizedInverseProbabilityWeighting,
           "dr": DoublyRobust, "sndr": SelfNormalizedDoublyRobust}
    def run_obp(names: tuple[str, ...]) -> None:
        for est in names:
            o = obp[est]()
            o.estimate_policy_value(**kw)
            o.estimate_interval(**kw, n_bootstrap_samples=1000, random_state=0)

    everything = ("ips", "snips", "dr", "sndr")
    contenders = {
        ("IPS", "llmrec"): lambda: ope.estimate(rows_only, action_dist, ("ips",)),
        ("IPS", "obp"): lambda: run_obp(("ips",)),
        ("IPS, SNIPS, DR, SNDR", "llmrec"): lambda: ope.estimate(rows_only, action_dist, everything, q_rows),
        ("IPS, SNIPS, DR, SNDR", "obp"): lambda: run_obp(everything),
        ("IPS, SNIPS, DR, SNDR", "llmrec, rounds"): lambda: ope.estimate(logged, action_dist, everything, q_rows),
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in contenders}
    for i in range(rounds):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for key in order:
            t = time.process_time()
            contenders[key]()
            times[key].append(time.process_time() - t)
    med = {key: float(np.median(v)) for key, v in times.items()}
    lines = [f"CPU seconds per call with 95% intervals (1,000 resamples) on {n_rounds:,} rounds x 4 = "
             f"{logged.n_rows:,} rows (the far target), median of {rounds} rounds in alternating order. obp 0.4.1 "
             "resamples rows, so llmrec is timed on the same log without its round_index; llmrec draws one set of "
             "resamples for every estimator of a call, obp one per estimator. `rounds`: llmrec resampling the 3,000 "
             "rounds (its default when the log has them).", "",
             "| estimators | llmrec | obp | obp / llmrec | llmrec, rounds |", "|---|---:|---:|---:|---:|"]
    for what in ("IPS", "IPS, SNIPS, DR, SNDR"):
        ours, theirs = med[(what, "llmrec")], med[(what, "obp")]
        by_round = f"{med[(what, 'llmrec, rounds')]:.3f}" if (what, "llmrec, rounds") in med else ""
        lines.append(f"| {what} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.1f}x | {by_round} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200, help="replications per log size (default 200)")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()

    env, logger, targets, q_good, q_poor = world()
    truth = {name: env.value(p) for name, p in targets.items()}
    start = time.process_time()
    results = {n: [replicate(env, logger, targets, q_good, q_poor, n, rep) for rep in range(args.reps)]
               for n in SIZES}
    sim_cpu = time.process_time() - start
    ess = {name: float(np.mean([r[("ips", name)].weights.ess / r[("ips", name)].n_rows
                                for n in SIZES for r in results[n]])) for name in targets}

    lines = [HEADING, "", f"`.venv/bin/python benchmarks/ope_sim.py --reps {args.reps} --write`; the world and the "
             "policies are in the script's docstring. Values are expected clicks per shown item (OBP's policy value "
             f"per row). True values: logger {env.value(logger):.4f}, close {truth['close']:.4f}, far "
             f"{truth['far']:.4f}. Over {args.reps} replications per log size: bias (with its standard error), the "
             "estimates' standard deviation, RMSE against the truth, RMSE over the on-policy estimate's RMSE "
             "(an A/B arm of as many rounds), the RMS gap to that on-policy estimate, how often the 95% interval "
             "covers the truth, and its mean width. The importance weights' effective sample size is "
             + " and ".join(f"{ess[name]:.0%} of the rows for {name}" for name in targets) + ".",
             ""]
    stats = {(n, name, v): summarise(results[n], truth, name, v) for n in SIZES for name in targets
             for v, _ in [("on-policy", ""), *VARIANTS]}
    ope_rows = [s for (n, name, v), s in stats.items() if v != "on-policy"]
    z = max(abs(s["bias"]) / s["se_bias"] for s in ope_rows)
    covers = [s["cover"] for s in ope_rows]
    sd_ratio = ", ".join(f"{name} {stats[(n, name, 'dr')]['sd'] / stats[(n, name, 'ips')]['sd']:.2f}"
                         for name in targets for n in SIZES[-1:])
    need = " and ".join(f"{stats[(SIZES[-1], name, 'dr')]['ratio'] ** 2:.1f}x for {name}" for name in targets)
    verdict = "no estimator's bias is distinguishable from 0" if z < 3 else "some bias is distinguishable from 0"
    lines += [f"In short: {verdict} (the largest is {z:.1f} standard errors); the 95% intervals cover the truth "
              f"{min(covers):.1%} to {max(covers):.1%} of the time; DR with the good model has {sd_ratio} of IPS's "
              f"spread at {SIZES[-1]:,} rounds; and to be as accurate as an A/B arm, DR needs (RMSE ratio squared) "
              f"{need} as many logged rounds.", ""]
    for name in targets:
        lines += [f"**{name}** (true value {truth[name]:.4f})", "",
                  "| rounds | estimator | bias (se) | sd | RMSE | RMSE / on-policy | gap to on-policy | coverage | "
                  "width |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for n in SIZES:
            for variant, label in [("on-policy", "on-policy (A/B arm)"), *VARIANTS]:
                s = stats[(n, name, variant)]
                cover = "" if math.isnan(s["cover"]) else f"{s['cover']:.1%}"
                width = "" if math.isnan(s["width"]) else f"{s['width']:.4f}"
                gap = "" if variant == "on-policy" else f"{s['gap']:.4f}"
                lines.append(f"| {n:,} | {label} | {s['bias']:+.4f} ({s['se_bias']:.4f}) | {s['sd']:.4f} | "
                             f"{s['rmse']:.4f} | {s['ratio']:.2f} | {gap} | {cover} | {width} |")
        lines.append("")
    lines += cpu_per_estimate(env, logger, targets, q_good)
    lines += ["", f"Simulation and estimates: {sim_cpu:.0f} s of CPU for {args.reps * len(SIZES)} replications."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
