"""PPO over :class:`~llmrec.conversation.env.DialogueEnv` (stable-baselines3), saved and loaded without pickle.

:func:`train_ppo` trains ``stable_baselines3.PPO("MlpPolicy", ...)`` and records each episode's return (the
reward curve). :func:`policy_files` turns the trained policy into two files: ``policy.safetensors``, the
policy network's tensors (the ``state_dict`` of its actor: ``mlp_extractor.policy_net.*`` and ``action_net.*``),
and ``policy.json``, what rebuilds it (layer sizes, activation, slots, action names, turn limit). :func:`load_policy`
rebuilds the actor as a plain ``torch.nn.Sequential`` and loads the tensors with ``safetensors`` (which reads
raw tensors and can run no code); nothing here ever calls ``PPO.load``, whose zip files hold cloudpickle.
The deterministic action is the arg-max of the actor's logits, what ``PPO.predict(obs, deterministic=True)``
gives. :func:`plot_curve` draws the curve as a PNG when matplotlib is installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor

from .env import DialogueEnv
from .policy_net import ACTIVATIONS, CONFIG_FILE, POLICY_FILE, PolicyNet, load_policy



class PPOStopped(Exception):
    """Training was asked to stop (``should_stop``)."""


@dataclass
class TrainedPPO:
    """What :func:`train_ppo` returns: the SB3 model (in memory only), the curve and the rebuild config."""

    model: Any
    config: dict[str, Any]
    returns: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        state = self.model.policy.state_dict()
        keep = ("mlp_extractor.policy_net.", "action_net.")
        return {k: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith(keep)}


class _Curve(BaseCallback):
    def __init__(self, progress: Callable[[str], None], stop: Callable[[], bool], every: int) -> None:
        super().__init__()
        self.returns: list[float] = []
        self.successes: list[bool] = []
        self.say, self.stop, self.every = progress, stop, every

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            ep = info.get("episode")
            if ep is not None:
                self.returns.append(float(ep["r"]))
                self.successes.append(bool(info.get("success", False)))
                if self.every and len(self.returns) % self.every == 0:
                    recent = self.returns[-self.every:]
                    self.say(f"ppo: {self.num_timesteps} steps, {len(self.returns)} episodes, mean return of the "
                             f"last {len(recent)} {sum(recent) / len(recent):.3f}")
        if self.stop():
            raise PPOStopped(f"after {self.num_timesteps} steps")
        return True


def train_ppo(env: DialogueEnv, *, timesteps: int, seed: int = 0, n_steps: int = 256, batch_size: int = 64,
              learning_rate: float = 3e-4, net_arch: Sequence[int] = (64, 64), activation: str = "tanh",
              ent_coef: float = 0.01, gamma: float = 0.99, n_epochs: int = 10,
              progress: Callable[[str], None] = lambda _: None, should_stop: Callable[[], bool] = lambda: False,
              report_every: int = 200) -> TrainedPPO:
    """Train PPO on ``env`` for ``timesteps`` steps (seeded, one torch thread: the net is tiny)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = PPO("MlpPolicy", Monitor(env), n_steps=n_steps, batch_size=batch_size, learning_rate=learning_rate,
                    ent_coef=ent_coef, gamma=gamma, n_epochs=n_epochs, seed=seed, device="cpu", verbose=0,
                    policy_kwargs={"net_arch": {"pi": list(net_arch), "vf": list(net_arch)},
                                   "activation_fn": ACTIVATIONS[activation]})
        curve = _Curve(progress, should_stop, report_every)
        model.learn(total_timesteps=timesteps, callback=curve)
    finally:
        torch.set_num_threads(threads)
    config = {"format": "llmrec-ppo-policy/1", "obs_dim": int(env.observation_space.shape[0]),
              "n_actions": int(env.action_space.n), "net_arch": list(net_arch), "activation": activation,
              "slots": list(env.slots), "max_turns": env.max_turns,
              "actions": [d.action if d.slot is None else f"ask:{d.slot}" for d in env.decisions]}
    return TrainedPPO(model, config, curve.returns, curve.successes)


def policy_files(trained: TrainedPPO) -> dict[str, bytes]:
    """The two files of a trained policy: its actor's tensors (safetensors) and the JSON that rebuilds it."""
    return {POLICY_FILE: save(trained.tensors(), metadata={"format": trained.config["format"]}),
            CONFIG_FILE: json.dumps(trained.config, indent=1).encode()}


def smooth(values: Sequence[float], window: int = 20) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        out.append(sum(part) / len(part))
    return out


def plot_curve(curves: Mapping[str, Sequence[float]], path: str | Path | BinaryIO, title: str = "PPO reward curve",
               window: int = 20, xlabel: str = "episode", ylabel: str | None = None) -> bool:
    """Draw each curve (smoothed over ``window`` episodes) into a PNG (a path or a binary file); False when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency, but optional here
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        ax.plot(smooth(values, window), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or f"return (mean of {window} episodes)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)
    return True


def curve_json(returns: Sequence[float], successes: Sequence[bool]) -> str:
    return json.dumps({"returns": [round(r, 5) for r in returns], "success": [bool(s) for s in successes],
                       "episodes": len(returns),
                       "last_mean": (sum(returns[-50:]) / len(returns[-50:])) if returns else math.nan})


__all__ = ["CONFIG_FILE", "POLICY_FILE", "PPOStopped", "PolicyNet", "TrainedPPO", "curve_json", "load_policy",
           "plot_curve", "policy_files", "smooth", "train_ppo"]
