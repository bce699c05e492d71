"""Conversational policies against simulated users (book chapter 5, 8.4): learned (PPO, a LinUCB bandit) vs the
rule policy; the book's 5.4 reward comparison (discrete feature match vs piecewise-linear price); bandit regret
against the best fixed arm; CPU per decision.

A. Success and turns. For each seed: the headphones catalog (300 items), 200 training personas and 200 held-out
   ones (make_personas, noise 0.1: one answer in ten is wrong). PPO (stable-baselines3, DEFAULT_REWARD) trains for
   --ppo-steps on the training personas; the LinUCB bandit (credit "return") learns online over --bandit-passes
   passes of them; then the rule policy (min_known 3), the frozen bandit and the deterministic PPO policy each talk
   to every held-out persona with the same user seed. Success = the persona accepted an item before leaving or the
   turn limit (10). Intervals: 95% bootstrap over seeds (llmrec.eval.stats.interval) of the per-seed rates, and
   paired differences over all (seed, persona) dialogues (llmrec.eval.stats.paired: bootstrap + randomization p).
   The contenders run in alternating order per seed.
B. Reward curves (book 5.4): PPO trained with reward {feature_match: 1} vs {price: 1} (each a recommendation's
   reward only), --episodes x --episode-steps environment steps per seed; an "episode" here is a block of 200
   steps, as in the book. Convergence: the first block whose 5-block moving average reaches 90% of the way from
   the first block's mean reward to the last 10 blocks' mean; also the success rate of each final policy on the
   held-out personas (a yardstick both rewards share).
C. Regret: each bandit on 5 Bernoulli arms with means 0.2, 0.35, 0.7, 0.5, 0.3 for 5,000 steps, 20 seeds;
   cumulative pseudo-regret against the best fixed arm at 500, 1,000 and 5,000 steps (medians, 95% intervals over
   seeds), the share of runs that end pulling the best arm most, and regret(5000)/regret(1000) (5 for linear).
D. CPU per decision (time.process_time), rule vs bandit vs PPO on the same 400 states, alternating rounds.

    .venv/bin/python benchmarks/conversation_policies.py [--seeds 3] [--ppo-steps 12000] [--write]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_md import write_section  # noqa: E402

from llmrec.conversation.bandits import ALGORITHMS, make_bandit, simulate_regret  # noqa: E402
from llmrec.conversation.catalog import generate_headphones  # noqa: E402
from llmrec.conversation.env import DialogueEnv  # noqa: E402
from llmrec.conversation.policies import BanditPolicy, RulePolicy, actions, state_features  # noqa: E402
from llmrec.conversation.policy_net import CONFIG_FILE, POLICY_FILE, policy_from_bytes  # noqa: E402
from llmrec.conversation.ppo import plot_curve, policy_files, train_ppo  # noqa: E402
from llmrec.conversation.rewards import build_reward  # noqa: E402
from llmrec.conversation.simulator import Dialogue, SimulatedUser, make_personas  # noqa: E402
from llmrec.eval.stats import interval, paired  # noqa: E402

HEADING = "## Conversational policies vs simulated users (benchmarks/conversation_policies.py)"
MAX_TURNS = 10
MEANS = (0.2, 0.35, 0.7, 0.5, 0.3)
BANDIT_SETTINGS = {"epsilon_greedy": {"epsilon": 0.1}, "ucb": {}, "thompson": {}, "linucb": {"alpha": 1.0}}


def play(policy, user, reward, learn=None):
    """One dialogue; ``policy(state, last_feedback)``; ``learn(reward, done)`` after each turn when learning."""
    d = Dialogue(user, reward, MAX_TURNS)
    while not d.done:
        r = d.step(policy(d.state, d.last_feedback))
        if learn is not None:
            learn(r, d.done)
    return d.result


def ppo_policy(trained):
    files = policy_files(trained)  # the artifact's bytes: what a served policy.ppo loads
    net = policy_from_bytes(files[POLICY_FILE], files[CONFIG_FILE])
    decisions = actions(tuple(trained.config["slots"]))
    return lambda s, fb=0.0: decisions[net.act(state_features(s, trained.config["slots"], MAX_TURNS, fb))]


def part_a(seeds, ppo_steps, passes):
    catalog = generate_headphones(seed=5)
    reward = build_reward(None)
    per_seed = {name: [] for name in ("rule", "linucb", "ppo")}
    turns = {name: [] for name in per_seed}
    dialogues = {name: [] for name in per_seed}
    train_cpu = {"linucb": [], "ppo": []}
    shapes: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in per_seed}
    for seed in range(seeds):
        train_personas = make_personas(catalog, 200, seed=seed, noise=0.1)
        held_out = make_personas(catalog, 200, seed=1000 + seed, noise=0.1)
        t = time.process_time()
        trained = train_ppo(DialogueEnv(catalog, train_personas, seed=seed), timesteps=ppo_steps, seed=seed,
                            n_epochs=4)
        train_cpu["ppo"].append(time.process_time() - t)
        t = time.process_time()
        bandit = BanditPolicy("linucb", seed=seed, params={"alpha": 1.0}, credit="return")
        for p_ in range(passes):
            for p in train_personas:
                play(bandit, SimulatedUser(p, catalog, seed=seed * 100 + p_), reward, bandit.update)
        train_cpu["linucb"].append(time.process_time() - t)
        rule = RulePolicy(catalog=catalog, min_known=3, max_turns=MAX_TURNS)
        contenders = {"rule": lambda s, fb=0.0: rule(s), "linucb": bandit, "ppo": ppo_policy(trained)}
        order = list(contenders) if seed % 2 == 0 else list(reversed(contenders))  # alternate who goes first
        for name in order:
            results = [play(contenders[name], SimulatedUser(p, catalog, seed=7 + seed), reward) for p in held_out]
            wins = [r for r in results if r.success]
            per_seed[name].append(len(wins) / len(results))
            turns[name].append(statistics.mean(r.turns for r in wins) if wins else math.nan)
            dialogues[name].extend(1.0 if r.success else 0.0 for r in results)
            for r in results:
                key = tuple(r.decisions[:3])
                shapes[name][key] = shapes[name].get(key, 0) + 1
        print(f"A seed {seed}: " + ", ".join(f"{n} {per_seed[n][-1]:.3f}" for n in per_seed), flush=True)
    return per_seed, turns, dialogues, train_cpu, shapes


def convergence_block(curve, frac=0.9, window=5):
    start, final = curve[0], float(np.mean(curve[-10:]))
    if final <= start:
        return 1
    smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
    for i, v in enumerate(smooth):
        if v >= start + frac * (final - start):
            return i + window
    return len(curve)


def part_b(seeds, episodes, episode_steps):
    catalog = generate_headphones(seed=5)
    yardstick = build_reward(None)
    out = {}
    for name in ("feature_match", "price"):
        out[name] = {"curves": [], "blocks": [], "success": [], "start": [], "final": [], "shapes": {}}
    for seed in range(seeds):
        personas = make_personas(catalog, 200, seed=seed, noise=0.1)
        held_out = make_personas(catalog, 200, seed=1000 + seed, noise=0.1)
        order = (("feature_match", {"feature_match": 1.0}), ("price", {"price": 1.0}))
        for name, config in (order if seed % 2 == 0 else tuple(reversed(order))):
            env = DialogueEnv(catalog, personas, reward=config, seed=seed)
            rewards: list[float] = []
            step = env.step

            def tapped(action, _step=step, _rewards=rewards):
                result = _step(action)
                _rewards.append(result[1])
                return result

            env.step = tapped  # type: ignore[method-assign]
            trained = train_ppo(env, timesteps=episodes * episode_steps, seed=seed, n_steps=episode_steps,
                                batch_size=50, n_epochs=4)
            blocks = [float(np.mean(rewards[i * episode_steps:(i + 1) * episode_steps])) for i in range(episodes)]
            policy = ppo_policy(trained)
            results = [play(policy, SimulatedUser(p, catalog, seed=7 + seed), yardstick) for p in held_out]
            o = out[name]
            o["curves"].append(blocks)
            o["blocks"].append(convergence_block(blocks))
            o["success"].append(sum(r.success for r in results) / len(results))
            o["start"].append(blocks[0])
            o["final"].append(float(np.mean(blocks[-10:])))
            for r in results:
                key = " > ".join(r.decisions[:3])
                o["shapes"][key] = o["shapes"].get(key, 0) + 1
        print(f"B seed {seed}: " + ", ".join(f"{n} block {out[n]['blocks'][-1]} success {out[n]['success'][-1]:.3f}"
                                             for n in out), flush=True)
    return out


def part_c(seeds=20, steps=5000):
    out = {}
    for name in sorted(ALGORITHMS):
        runs = [simulate_regret(make_bandit(name, len(MEANS), dim=1, seed=s, **BANDIT_SETTINGS[name]), MEANS, steps,
                                seed=100 + s) for s in range(seeds)]
        out[name] = {"at": {n: [float(r.regret[n - 1]) for r in runs] for n in (500, 1000, steps)},
                     "found": sum(r.found_best for r in runs) / seeds,
                     "ratio": [float(r.regret[steps - 1] / max(r.regret[999], 1e-9)) for r in runs]}
    return out


def part_d(rounds=7, n_states=400):
    catalog = generate_headphones(seed=5)
    personas = make_personas(catalog, 100, seed=0, noise=0.1)
    reward = build_reward(None)
    states = []
    rule = RulePolicy(catalog=catalog)
    for p in personas:
        d = Dialogue(SimulatedUser(p, catalog, seed=1), reward, MAX_TURNS)
        while not d.done and len(states) < n_states:
            states.append(d.state)
            d.step(rule(d.state))
    trained = train_ppo(DialogueEnv(catalog, personas, seed=0), timesteps=256, n_steps=128, n_epochs=1)
    contenders = {"rule": lambda s: rule(s), "linucb": BanditPolicy("linucb", params={"alpha": 1.0}),
                  "ppo": ppo_policy(trained)}
    cpu = {name: [] for name in contenders}
    for r in range(rounds):
        for name in (list(contenders) if r % 2 == 0 else list(reversed(contenders))):
            fn = contenders[name]
            t = time.process_time()
            for s in states:
                fn(s)
            cpu[name].append((time.process_time() - t) / len(states) * 1e6)
    return cpu


def fmt_ci(values, digits=3):
    lo, hi = interval(values)
    return f"{statistics.mean(values):.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ppo-steps", type=int, default=12000)
    ap.add_argument("--bandit-passes", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--episode-steps", type=int, default=200)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    started, cpu0 = time.time(), time.process_time()
    a = part_a(args.seeds, args.ppo_steps, args.bandit_passes)
    b = part_b(args.seeds, args.episodes, args.episode_steps)
    c = part_c()
    d = part_d()
    wall, cpu = time.time() - started, time.process_time() - cpu0
    per_seed, turns, dialogues, train_cpu, shapes = a

    def opening(counts: dict) -> str:
        top = max(counts, key=counts.get)
        name = top if isinstance(top, str) else " > ".join(top)
        return f"{name} ({counts[top] / sum(counts.values()):.0%} of dialogues)"
    lines = [HEADING, "",
             f"`.venv/bin/python benchmarks/conversation_policies.py --seeds {args.seeds} --ppo-steps {args.ppo_steps} "
             f"--bandit-passes {args.bandit_passes} --episodes {args.episodes} --episode-steps {args.episode_steps} "
             f"--write` (Python {platform.python_version()}, {platform.machine()}, 2 shared cores; {wall:.0f} s wall, "
             f"{cpu:.0f} s CPU in all). Simulated users: llmrec.conversation.simulator personas (noise 0.1, patience "
             "4-8 turns, accept at hidden utility >= 0.8) on the seeded 300-item headphones catalog; held-out "
             "personas never seen in training.", "",
             f"A. Success rate and turns to success on 200 held-out personas per seed ({args.seeds} seeds; mean of "
             "the per-seed values with a 95% bootstrap interval over seeds):", "",
             "| policy | success rate | turns to success | training CPU s/seed |", "|---|---:|---:|---:|"]
    for name, label in (("rule", "policy.rule (min_known 3)"), ("linucb", f"policy.bandit linucb, {args.bandit_passes} "
                                                                         "online passes"),
                        ("ppo", f"policy.ppo, {args.ppo_steps} steps")):
        tc = f"{statistics.median(train_cpu[name]):.1f}" if name in train_cpu else "-"
        lines.append(f"| {label} | {fmt_ci(per_seed[name])} | {fmt_ci([t for t in turns[name] if t == t], 2)} | {tc} |")
    lines += ["", "Paired over every (seed, persona) dialogue, success difference vs the rule policy (bootstrap 95% "
                  "interval, randomization p):", ""]
    for name in ("linucb", "ppo"):
        pr = paired("success", name, dialogues[name], "rule", dialogues["rule"])
        lines.append(f"- {name} - rule: {pr.diff:+.3f} ({pr.lo:+.3f} to {pr.hi:+.3f}), p = {pr.p:.4f}, "
                     f"{pr.wins} dialogues won, {pr.losses} lost of {pr.n}")
    lines += ["", f"B. Reward curves (book 5.4): PPO with one reward component, {args.episodes} blocks x "
                  f"{args.episode_steps} steps per seed, {args.seeds} seeds (mean, 95% interval over seeds):", "",
              "| reward | first block | last 10 blocks | block reaching 90% of the gain | success of the final "
              "policy |", "|---|---:|---:|---:|---:|"]
    for name, label in (("feature_match", "feature match (discrete)"), ("price", "price (piecewise linear)")):
        o = b[name]
        lines.append(f"| {label} | {fmt_ci(o['start'])} | {fmt_ci(o['final'])} | "
                     f"{statistics.median(o['blocks']):.0f} (seeds: {', '.join(str(x) for x in o['blocks'])}) | "
                     f"{fmt_ci(o['success'])} |")
    lines += ["", "C. Bandit regret against the best fixed arm (5 Bernoulli arms, means 0.2/0.35/0.7/0.5/0.3; 20 "
                  "seeds; medians, 95% bootstrap interval of the mean in brackets):", "",
              "| bandit | regret @500 | @1000 | @5000 | @5000 / @1000 | best arm found |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, o in c.items():
        lines.append(f"| {name} | {statistics.median(o['at'][500]):.1f} | {statistics.median(o['at'][1000]):.1f} | "
                     f"{statistics.median(o['at'][5000]):.1f} [{fmt_ci(o['at'][5000], 1)}] | "
                     f"{statistics.median(o['ratio']):.2f} | {o['found']:.0%} |")
    lines += ["", "D. CPU per decision (process time, 400 states, 7 alternating rounds; median, min-max):", "",
              "| policy | us/decision | vs rule |", "|---|---:|---:|"]
    base = statistics.median(d["rule"])
    for name, v in d.items():
        lines.append(f"| {name} | {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f}) | "
                     f"{statistics.median(v) / base:.2f}x |")
    fm, pr = statistics.median(b["feature_match"]["blocks"]), statistics.median(b["price"]["blocks"])
    verdict = ("reproduced: the feature-match reward reaches 90% of its gain first" if fm < pr else
               "refuted here: the price reward reaches 90% of its gain first" if pr < fm else "a tie")
    best_a = max(per_seed, key=lambda n: statistics.mean(per_seed[n]))
    lines += ["", "Notes:", "",
              f"- A: the best success rate is {best_a}'s. Success is the share of held-out personas who accepted an "
              "item; the learned policies and the rule policy recommend the same way (the best-fitting item not "
              "turned down yet), so they differ only in what they ask and when they stop asking.",
              f"- B, the book's finding (discrete feature match converges faster than the piecewise-linear price "
              f"reward): {verdict} (median block {fm:.0f} vs {pr:.0f}). The price reward is easy to satisfy in this "
              "environment: the recommender breaks ties by the lower price, so an item under the persona's budget "
              "earns the full reward without a single question, and the policy it trains learns to recommend at "
              "once; it converges to a policy that few personas accept (the success column). Feature match pays "
              "only once the features are asked about, so its curve climbs later but its policy is the one users "
              "accept.",
              "- C: regret(5000)/regret(1000) is 5 for a policy that never stops exploring (linear regret) and 1 for "
              "one that has stopped; epsilon-greedy's fixed 10% of random arms keeps it near linear, UCB1 and "
              "Thompson sampling flatten (logarithmic), LinUCB with a constant context is a UCB with a ridge prior "
              "and a narrow bonus.",
              "- How each policy opens (its most common first three decisions on the held-out dialogues): "
              + "; ".join(f"{n}: {opening(shapes[n])}" for n in shapes)
              + f"; B's feature-match PPO: {opening(b['feature_match']['shapes'])}; B's price PPO: "
              + f"{opening(b['price']['shapes'])}.",
              "- D: the rule policy measures each slot's entropy over the 60 best-fitting items of the 300-item "
              "catalog per decision; the bandit and PPO read a 7-value state vector.", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results"
    (out / "conversation_policies.json").write_text(json.dumps({"A": {"per_seed": per_seed, "turns": turns,
                                                                      "openings": {n: {" > ".join(k): v for k, v in
                                                                                       sh.items()}
                                                                                   for n, sh in shapes.items()}},
                                                                "B": b, "C": c, "D": d}, indent=1))
    plot_curve({name: [float(np.mean([cv[i] for cv in b[name]["curves"]])) for i in range(args.episodes)]
                for name in b}, out / "conversation_reward_curves.png",
               title=f"PPO, mean step reward per {args.episode_steps}-step block ({args.seeds} seeds)", window=1,
               xlabel=f"block of {args.episode_steps} steps", ylabel="mean reward per step")
    if args.write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
