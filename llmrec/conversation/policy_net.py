"""The PPO actor of :mod:`llmrec.conversation.ppo`, rebuilt from its two files with torch and safetensors only.

``policy.json`` says how to rebuild it (layer sizes, activation, slots, action names, turn limit);
``policy.safetensors`` holds its tensors. :func:`load_policy` never unpickles anything (safetensors reads raw
tensors and runs no code), and needs neither stable-baselines3 nor gymnasium: serving a trained policy needs
only torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, load_file

POLICY_FILE = "policy.safetensors"
CONFIG_FILE = "policy.json"
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


class PolicyNet(torch.nn.Module):
    """The PPO actor rebuilt from :data:`CONFIG_FILE`: ``policy_net`` (Linear + activation per layer) and
    ``action_net`` (logits)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        act = ACTIVATIONS[str(config.get("activation", "tanh"))]
        layers: list[torch.nn.Module] = []
        width = int(config["obs_dim"])
        for size in config["net_arch"]:
            layers += [torch.nn.Linear(width, int(size)), act()]
            width = int(size)
        self.policy_net = torch.nn.Sequential(*layers)
        self.action_net = torch.nn.Linear(width, int(config["n_actions"]))
        self.config = dict(config)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_net(self.policy_net(obs))

    @torch.no_grad()
    def probabilities(self, obs: np.ndarray) -> np.ndarray:
        logits = self.forward(torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, -1))[0]
        return torch.softmax(logits, dim=-1).numpy()

    def act(self, obs: np.ndarray) -> int:
        """The deterministic action (arg-max of the logits)."""
        return int(np.argmax(self.probabilities(obs)))


def load_policy(tensors: str | Path, config: Mapping[str, Any] | str | Path) -> PolicyNet:
    """Rebuild the actor from ``policy.json`` (a mapping or its path) and load ``policy.safetensors``."""
    if not isinstance(config, Mapping):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    net = PolicyNet(config)
    state = load_file(str(tensors))
    net.load_state_dict(_renamed(state), strict=True)
    net.eval()
    return net


def policy_from_bytes(tensors: bytes, config: bytes | str | Mapping[str, Any]) -> PolicyNet:
    """:func:`load_policy` from the files' contents (safetensors bytes and the JSON)."""
    net = PolicyNet(config if isinstance(config, Mapping) else json.loads(config))
    net.load_state_dict(_renamed(load(tensors)), strict=True)
    return net.eval()


def _renamed(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("mlp_extractor.policy_net.", "policy_net."): v for k, v in state.items()}


__all__ = ["ACTIVATIONS", "CONFIG_FILE", "POLICY_FILE", "PolicyNet", "load_policy", "policy_from_bytes"]
