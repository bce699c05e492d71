"""Dialogue policies as node types (issue 15): each takes the turn's :class:`DialogueState` and returns a
:class:`Decision` (ask about a slot, recommend, or end), wrapping :mod:`llmrec.conversation`.

- ``policy.rule``: ask the most informative unknown slot (entropy of its values over the items that still fit)
  until ``min_known`` are known or the turn limit is near, then recommend; end once the user accepted
  (``accepted`` input) or turned down ``max_rejections`` items.
- ``policy.bandit``: epsilon-greedy, UCB1, Thompson sampling or LinUCB over the actions (ask slot i, recommend),
  learning online: the ``reward`` input is the previous turn's reward (``done`` when that turn ended the
  dialogue), credited to that session's previous decision; ``POST /v1/feedback`` events about a decision
  (``learns_from_feedback``: a click, purchase, dismissal or rating) are rewards too, and a server can call the
  node's ``update`` itself.
  ``explored`` in the Decision says when it did not take its best-estimated arm; ``scores`` are the values it
  ranked the arms by. Its state is plain JSON (``state_json()``).
- ``policy.ppo``: a PPO policy trained by ``llmrec train SPEC`` on the spec's dataset (``name: headphones``:
  its catalog and personas) against simulated users; the artifact is the actor's safetensors plus a JSON
  config, a reward curve (curve.json, curve.png) and the trained policy's success rate; the node acts
  deterministically (the arg-max action), ``scores`` are the action probabilities.
- ``policy.mcts``: a bundle of ``k`` complementary items (covering the state's use cases and features) under the
  state's budget, chosen by Monte Carlo tree search; the Decision recommends them in ``items``.

Also registered here: the ``headphones`` dataset (:mod:`llmrec.conversation.dataset`) and two reward functions
that fit the metric contract: ``conversation_acceptance`` (per case) and ``feature_diversity`` (over answers).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..conversation.bandits import ALGORITHMS
from ..conversation.catalog import as_set, matching_items
from ..conversation.dataset import HEADPHONES
from ..conversation.mcts import bundle_mcts, coverage_value
from ..conversation.policies import DEFAULT_SLOTS, BanditPolicy, RulePolicy, action_names, actions, state_features
from ..conversation.rewards import RewardConfigError, acceptance_metric, build_reward, feature_diversity_metric
from ..conversation.simulator import make_personas
from ..conversation.types import Decision, DialogueState
from ..data import Catalog
from ..hookspecs import hookimpl
from ..node import CheckContext, NodeType, Problem, RunContext, SpecPath, StartContext
from ..training import Target, TrainContext, TrainingInterrupted, TrainOutput, data_hash
from ..types import Candidates


def as_state(value: DialogueState | dict[str, Any]) -> DialogueState:
    """The ``state`` input as a :class:`DialogueState` (a request may send it as a JSON object)."""
    if isinstance(value, DialogueState):
        return value
    try:
        return DialogueState.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"the 'state' input is not a dialogue state ({problems})") from None


def _slots(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("give at least one slot")
    if len(set(value)) != len(value):
        raise ValueError(f"slots listed twice: {sorted({s for s in value if value.count(s) > 1})}")
    return value


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slots: list[str] = Field(default_factory=lambda: list(DEFAULT_SLOTS),
                             description="The slots the policy asks about, in order (its ask actions).")
    max_turns: int = Field(10, ge=1, le=100, description="The dialogue's turn limit.")

    _check_slots = field_validator("slots")(_slots)


class RuleConfig(_Config):
    min_known: int = Field(3, ge=0, description="Recommend once this many of the slots are known.")
    max_rejections: int = Field(3, ge=1, description="End after this many items were turned down.")
    pool: int = Field(60, ge=1, description="How many best-fitting items informativeness is measured on.")


class RulePolicyNode(NodeType):
    """Ask the most informative unknown slot, then recommend; end on acceptance or too many rejections."""

    name = "policy.rule"
    inline = True
    description = "Ask the most informative unknown slot until enough are known, then recommend."
    Config = RuleConfig

    def __init__(self, config: RuleConfig) -> None:
        super().__init__(config)
        self._policies: dict[int, tuple[Catalog | None, RulePolicy]] = {}

    def policy(self, catalog: Catalog | None) -> RulePolicy:
        hit = self._policies.get(id(catalog))
        if hit is None or hit[0] is not catalog:
            c = self.config
            self._policies = {id(catalog): (catalog, RulePolicy(catalog, tuple(c.slots), c.min_known, c.max_turns,
                                                                c.max_rejections, c.pool))}
            hit = self._policies[id(catalog)]
        return hit[1]

    async def run(self, state: DialogueState | dict[str, Any], catalog: Catalog | None = None,
                  accepted: bool | None = None) -> Decision:
        if accepted:
            return Decision(action="end", policy="rule", reason="the user accepted the recommendation")
        return self.policy(catalog)(as_state(state))


class BanditConfig(_Config):
    algorithm: Literal["epsilon_greedy", "ucb", "thompson", "linucb"] = "ucb"
    seed: int = 0
    epsilon: float = Field(0.1, ge=0.0, le=1.0, description="epsilon_greedy: the share of random arms.")
    c: float = Field(1.0, ge=0.0, description="ucb: the width of the confidence bonus.")
    alpha: float = Field(1.0, ge=0.0, description="linucb: the width of the confidence bonus.")
    kind: Literal["bernoulli", "gaussian"] = Field("gaussian", description="thompson: the reward model.")
    credit: Literal["turn", "return"] = Field(
        "return", description="'return': a decision learns the rewards from its turn to the dialogue's end "
                              "(asking pays when the recommendation it enabled is accepted); 'turn': its own turn's.")
    feedback_rewards: dict[Literal["click", "purchase", "dismissal"], float] = Field(
        default_factory=lambda: {"click": 0.2, "purchase": 1.0, "dismissal": -0.3},
        description="The reward of a POST /v1/feedback event about a decision (a rating of v: (v - 3) / 2); a "
                    "purchase ends its dialogue.")


class BanditPolicyNode(NodeType):
    """Choose the action with a bandit and learn from each turn's reward (see the module docstring)."""

    name = "policy.bandit"
    inline = True
    learns_from_feedback = True  # POST /v1/feedback (Runtime.feedback): a decision's reward from what users did
    description = "Choose ask-or-recommend with a bandit (epsilon-greedy, UCB, Thompson, LinUCB), learning online."
    Config = BanditConfig

    def __init__(self, config: BanditConfig) -> None:
        super().__init__(config)
        c = config
        params: dict[str, Any] = {"epsilon_greedy": {"epsilon": c.epsilon}, "ucb": {"c": c.c},
                                  "thompson": {"kind": c.kind}, "linucb": {"alpha": c.alpha}}[c.algorithm]
        self.policy = BanditPolicy(c.algorithm, tuple(c.slots), c.max_turns, c.seed, params, credit=c.credit)
        #: run id -> (session, arm, context) of the decisions feedback may still arrive for (the latest 10,000)
        self.runs: OrderedDict[str, tuple[str, int, Any]] = OrderedDict()

    @property
    def bandit(self) -> Any:
        return self.policy.bandit

    def update(self, reward: float, done: bool = False, session: str = "") -> bool:
        """Credit ``reward`` to ``session``'s last decision (what the ``reward`` input does)."""
        return self.policy.update(reward, done, session)

    def state_json(self) -> str:
        """The bandit's whole state as JSON (:func:`llmrec.conversation.bandits.bandit_from_json` restores it)."""
        assert self.policy.bandit is not None
        return self.policy.bandit.to_json()

    async def feedback(self, event: Any) -> None:
        """A feedback event about one of this node's decisions is that turn's reward (see ``feedback_rewards``):
        credited like the ``reward`` input while the decision is its session's latest, else to its arm alone."""
        hit = self.runs.pop(getattr(event, "request_id", ""), None)
        if hit is None:
            return  # not a decision of this node (another server's, or too old)
        kind, value = getattr(event, "type", None), getattr(event, "value", None)
        if kind == "rating":
            reward = None if value is None else (float(value) - 3.0) / 2.0
        else:
            reward = self.config.feedback_rewards.get(kind)
        if reward is None:
            return
        key, arm, x = hit
        last = self.policy.last.get(key)
        if last is not None and last[0] == arm and last[1] is x:
            self.policy.update(reward, done=kind == "purchase", session=key)
        else:
            assert self.policy.bandit is not None
            self.policy.bandit.update(arm, reward, x)

    async def run(self, state: DialogueState | dict[str, Any], reward: float | None = None, done: bool = False,
                  session: str | None = None, last_feedback: float = 0.0,
                  context: RunContext | None = None) -> Decision:
        key = session or ""
        if reward is not None:
            self.policy.update(float(reward), done, key)
        if done:
            return Decision(action="end", policy=self.config.algorithm, reason="the dialogue ended")
        decision = self.policy(as_state(state), float(last_feedback), key)
        if context is not None:
            arm, x = self.policy.last[key]
            self.runs[context.run_id] = (key, arm, x)
            while len(self.runs) > 10_000:
                self.runs.popitem(last=False)
        return decision


#: config fields of policy.ppo that change the trained policy
PPO_TRAINING_FIELDS = ("slots", "max_turns", "timesteps", "seed", "n_steps", "batch_size", "n_epochs",
                       "learning_rate", "ent_coef", "gamma", "net_arch", "reward", "personas")


class PPOConfig(_Config):
    model_path: SpecPath = Field(description="Folder of trained artifacts (relative to the spec's folder).")
    timesteps: int = Field(20_000, ge=64, description="Environment steps to train for.")
    seed: int = 0
    n_steps: int = Field(256, ge=8, description="Steps per PPO rollout.")
    batch_size: int = Field(64, ge=2)
    n_epochs: int = Field(10, ge=1)
    learning_rate: float = Field(3e-4, gt=0.0)
    ent_coef: float = Field(0.01, ge=0.0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    net_arch: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    reward: dict[str, Any] | None = Field(None, description="The reward config (llmrec.conversation.rewards); "
                                                            "default: acceptance, feature match, price, turn penalty.")
    personas: int = Field(200, ge=1, description="Simulated personas when the dataset brings none.")
    train_on_first_use: bool = Field(False, description="Train at start when no current artifact exists.")


class PPOPolicyNode(NodeType):
    """Act with a PPO policy trained against simulated users by ``llmrec train`` (see the module docstring)."""

    name = "policy.ppo"
    inline = True  # a forward pass of a tiny MLP
    description = "Ask or recommend with a PPO policy trained by `llmrec train` against simulated users."
    Config = PPOConfig
    trains_on: ClassVar[str] = "dataset"

    def __init__(self, config: PPOConfig) -> None:
        super().__init__(config)
        self.net: Any = None
        self.decisions = actions(config.slots)
        self.names = action_names(config.slots)

    @classmethod
    def check(cls, config: PPOConfig, ctx: CheckContext) -> list[str | tuple[str, str] | Problem]:
        problems: list[str | tuple[str, str] | Problem] = []
        try:
            build_reward(config.reward)
        except RewardConfigError as exc:
            problems.append(Problem(str(exc), field="reward", hint="e.g. reward: {acceptance: 1, feature_match: 0.3}"))
        if config.model_path.exists() and not config.model_path.is_dir():
            problems.append(("model_path", f"model_path '{config.model_path}' is a file; it must be a folder"))
        return problems

    @classmethod
    def training_params(cls, config: PPOConfig, target: Target) -> dict[str, Any]:
        return {name: getattr(config, name) for name in PPO_TRAINING_FIELDS}

    @classmethod
    def fit(cls, config: PPOConfig, ctx: TrainContext) -> TrainOutput:
        """Train PPO against the dataset's personas (or ``personas`` drawn from its catalog)."""
        # lazy: gymnasium, stable-baselines3 and torch, only to train
        from ..conversation.env import DialogueEnv
        from ..conversation.policy_net import CONFIG_FILE, POLICY_FILE, policy_from_bytes
        from ..conversation.ppo import PPOStopped, curve_json, plot_curve, policy_files, train_ppo
        from ..conversation.simulator import SimulatedUser, run_dialogue, success_summary

        catalog = ctx.dataset.catalog
        personas = list(ctx.dataset.extra.get("personas") or make_personas(catalog, config.personas, seed=config.seed))
        env = DialogueEnv(catalog, personas, slots=config.slots, reward=config.reward, max_turns=config.max_turns,
                          seed=config.seed)
        ctx.progress(f"policy.ppo '{ctx.name}': {config.timesteps} steps against {len(personas)} simulated personas")
        try:
            trained = train_ppo(env, timesteps=config.timesteps, seed=config.seed, n_steps=config.n_steps,
                                batch_size=config.batch_size, n_epochs=config.n_epochs,
                                learning_rate=config.learning_rate, ent_coef=config.ent_coef, gamma=config.gamma,
                                net_arch=config.net_arch, progress=ctx.progress, should_stop=ctx.should_stop)
        except PPOStopped as exc:
            raise TrainingInterrupted(f"while training policy.ppo '{ctx.name}' ({exc})") from None
        files = policy_files(trained)
        for name, content in files.items():
            ctx.staging.write(name, content)
        ctx.staging.write("curve.json", curve_json(trained.returns, trained.successes))
        png = io.BytesIO()
        if plot_curve({"episode return": trained.returns}, png, title=f"policy.ppo '{ctx.name}'"):
            ctx.staging.write("curve.png", png.getvalue())
        net = policy_from_bytes(files[POLICY_FILE], files[CONFIG_FILE])
        act = _acting(net, config)
        reward = build_reward(config.reward)
        results = [run_dialogue(act, SimulatedUser(p, catalog, seed=config.seed + 1), reward=reward,
                                max_turns=config.max_turns) for p in personas]
        summary = success_summary(results)
        metrics = {"success_rate": round(summary["success_rate"], 4),
                   "turns_to_success": round(summary["turns_to_success"], 3),
                   "mean_return": round(summary["mean_reward"], 4), "episodes": len(trained.returns)}
        return TrainOutput(data_hash=data_hash(ctx.dataset), metrics=metrics,
                           meta={"format": "llmrec-ppo-policy/1", "actions": trained.config["actions"]},
                           rows=config.timesteps)

    async def start(self, ctx: StartContext) -> None:
        artifact = await ctx.artifact()
        # lazy: torch and safetensors, only for a spec with a PPO policy
        from ..conversation.policy_net import CONFIG_FILE, POLICY_FILE, load_policy

        self.net = load_policy(artifact.path(POLICY_FILE), artifact.path(CONFIG_FILE))
        if self.net.config.get("actions") != self.names:
            raise ValueError(f"the trained policy's actions {self.net.config.get('actions')} are not this node's "
                             f"{self.names}; retrain it")

    async def run(self, state: DialogueState | dict[str, Any], last_feedback: float = 0.0) -> Decision:
        if self.net is None:
            raise RuntimeError("policy.ppo was not started (no trained policy loaded)")
        x = state_features(as_state(state), self.config.slots, self.config.max_turns,
                           float(last_feedback))
        probs = self.net.probabilities(x)
        best = int(probs.argmax())
        d = self.decisions[best]
        scores = {n: round(float(p), 4) for n, p in zip(self.names, probs)}
        return d.model_copy(update={"policy": "ppo", "scores": scores,
                                    "reason": f"PPO: {self.names[best]} (p={float(probs[best]):.2f})"})


def _acting(net: Any, config: PPOConfig) -> Callable[[DialogueState], Decision]:
    decisions = actions(config.slots)
    return lambda s: decisions[net.act(state_features(s, config.slots, config.max_turns))]


class MCTSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(2, ge=1, le=10, description="Items in the bundle (at most).")
    iterations: int = Field(400, ge=1, le=100_000)
    pool: int = Field(30, ge=1, description="The search runs over this many candidates worth most on their own.")
    seed: int = 0
    c: float = Field(1.0, ge=0.0, description="UCT's exploration constant.")
    type_bonus: float = Field(0.1, ge=0.0, description="Bonus for a bundle of different types.")


class MCTSPolicyNode(NodeType):
    """Recommend a bundle of complementary items under the state's budget (MCTS)."""

    name = "policy.mcts"
    inline = True
    description = "Recommend a bundle of k complementary items under the budget, chosen by Monte Carlo tree search."
    Config = MCTSConfig

    async def run(self, state: DialogueState | dict[str, Any], catalog: Catalog,
                  candidates: Candidates | None = None) -> Decision:
        s = as_state(state)
        c = self.config
        budget = s.slots.get("budget")
        budget = float(budget) if isinstance(budget, (int, float)) else None
        uses, feats = as_set(s.slots.get("use_case")), as_set(s.slots.get("features"))
        if candidates is not None:
            items = [it for cand in candidates.items if (it := catalog.get(cand.id)) is not None
                     and cand.id not in s.rejected]
        else:
            other = {k: v for k, v in s.slots.items() if k not in ("budget", "use_case", "features")}
            items = [it for it, _ in matching_items(catalog, other, k=len(catalog), exclude=s.rejected,
                                                    negated=s.negated)]
        value = coverage_value(uses, feats, budget=budget, type_bonus=c.type_bonus)
        bundle = bundle_mcts(items, c.k, value, budget=budget, iterations=c.iterations, seed=c.seed, c=c.c, pool=c.pool)
        if not bundle.items:
            return Decision(action="ask", slot="budget", policy="mcts",
                            reason=f"no item fits the budget of {budget:g}" if budget is not None else "no candidates")
        scores = {it.id: round(value([it]), 4) for it in bundle.items}
        return Decision(action="recommend", policy="mcts", items=bundle.ids, scores=scores,
                        reason=f"a bundle of {len(bundle.items)} at {bundle.price:g}"
                               + (f" of a {budget:g} budget" if budget is not None else "")
                               + f", value {bundle.value:.3f}")


NODE_TYPES = (RulePolicyNode, BanditPolicyNode, PPOPolicyNode, MCTSPolicyNode)
assert set(ALGORITHMS) == {"epsilon_greedy", "ucb", "thompson", "linucb"}


@hookimpl
def llmrec_register_node_types(register: Any) -> None:
    for cls in NODE_TYPES:
        register(cls)


@hookimpl
def llmrec_register_datasets(register: Any) -> None:
    register(HEADPHONES)


@hookimpl
def llmrec_register_metrics(register: Any) -> None:
    register("conversation_acceptance", acceptance_metric)
    register("feature_diversity", feature_diversity_metric)


__all__ = ["as_state", "BanditPolicyNode", "MCTSPolicyNode", "NODE_TYPES", "PPOPolicyNode", "RulePolicyNode"]
