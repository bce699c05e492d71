"""A gymnasium environment over the simulated users: one episode is one dialogue.

Observation: :func:`llmrec.conversation.policies.state_features` (one known flag per slot, the turn over the
turn limit, the share of rejected items, the last recommendation's feedback), a ``Box`` of ``len(slots) + 3``
floats. Actions (``Discrete(len(slots) + 2)``): ask slot i, recommend (the best-fitting item not turned down
yet), end. The reward of a step is the configured :class:`~llmrec.conversation.rewards.Reward` of that turn
(:data:`~llmrec.conversation.rewards.DEFAULT_REWARD` unless told). An episode terminates when the user accepts,
runs out of patience, or the policy ends; it is truncated at ``max_turns``. Each reset draws a persona with the
environment's seeded generator, so ``reset(seed=s)`` replays the same sequence of users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from ..data.catalog import Catalog
from .policies import DEFAULT_SLOTS, actions, state_features
from .rewards import build_reward
from .simulator import Dialogue, Persona, SimulatedUser


class DialogueEnv(gym.Env):
    """See the module docstring."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, catalog: Catalog, personas: Sequence[Persona], *, slots: Sequence[str] = DEFAULT_SLOTS,
                 reward: Mapping[str, Any] | None = None, max_turns: int = 10, seed: int = 0) -> None:
        if not personas:
            raise ValueError("DialogueEnv needs at least one persona")
        self.catalog = catalog
        self.personas = list(personas)
        self.slots = tuple(slots)
        self.reward = build_reward(reward)
        self.max_turns = max_turns
        self.decisions = actions(self.slots)
        self.observation_space = gym.spaces.Box(low=-1.0, high=1.0, shape=(len(self.slots) + 3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(len(self.decisions))
        self.dialogue: Dialogue | None = None
        self.episodes = 0
        self._seed = seed
        self.np_random = np.random.default_rng(seed)

    def _obs(self) -> np.ndarray:
        assert self.dialogue is not None
        return state_features(self.dialogue.state, self.slots, self.max_turns, self.dialogue.last_feedback)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed if seed is not None else (self._seed if self.episodes == 0 else None))
        persona = self.personas[int(self.np_random.integers(len(self.personas)))]
        user_seed = int(self.np_random.integers(2**31))
        self.dialogue = Dialogue(SimulatedUser(persona, self.catalog, seed=user_seed), self.reward, self.max_turns)
        self.episodes += 1
        return self._obs(), {"persona": persona.id}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        assert self.dialogue is not None, "call reset() first"
        d = self.dialogue
        r = d.step(self.decisions[int(action)])
        assert d.result is not None
        truncated = d.done and not d.result.success and not d.result.left and d.user.turn >= self.max_turns \
            and self.decisions[int(action)].action != "end"
        terminated = d.done and not truncated
        info = {"success": d.result.success, "turns": d.result.turns} if d.done else {}
        return self._obs(), float(r), terminated, truncated, info


__all__ = ["DialogueEnv"]
