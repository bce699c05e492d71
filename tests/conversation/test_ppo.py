"""The gymnasium environment and PPO: a short training run, and the policy saved as safetensors + JSON and
rebuilt without unpickling anything (issue 15)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from safetensors import safe_open

from llmrec.conversation.catalog import generate_headphones
from llmrec.conversation.env import DialogueEnv
from llmrec.conversation.ppo import (
    CONFIG_FILE, POLICY_FILE, curve_json, load_policy, plot_curve, policy_files, train_ppo,
)
from llmrec.conversation.simulator import make_personas


@pytest.fixture(scope="module")
def env_parts():
    catalog = generate_headphones(seed=5, n_items=60)
    return catalog, make_personas(catalog, 20, seed=1)


@pytest.fixture(scope="module")
def trained(env_parts):
    catalog, personas = env_parts
    return train_ppo(DialogueEnv(catalog, personas, seed=0), timesteps=384, n_steps=128, batch_size=64, n_epochs=2,
                     net_arch=(16, 16), seed=0)


def test_env_follows_the_gymnasium_api_and_replays_with_a_seed(env_parts) -> None:
    catalog, personas = env_parts
    env = DialogueEnv(catalog, personas, seed=0)
    check_env(env, skip_render_check=True)
    assert env.action_space.n == 6 and env.observation_space.shape == (7,)

    def episode(seed: int) -> list:
        obs, info = env.reset(seed=seed)
        out = [info["persona"]]
        for action in (0, 1, 2, 4, 4, 4, 4):  # ask type, use case, features, then recommend
            obs, reward, terminated, truncated, info = env.step(action)
            out.append((obs.tolist(), round(reward, 6)))
            if terminated or truncated:
                out.append(info)
                break
        return out

    assert episode(3) == episode(3)
    obs, _ = env.reset(seed=1)
    obs, reward, *_ = env.step(0)  # asking reveals a slot and costs a turn
    assert obs[0] == 1.0 and reward == pytest.approx(-0.05)
    _, _, terminated, _, info = env.step(5)  # end
    assert terminated and info["success"] is False


def test_ppo_trains_and_records_a_curve(trained, tmp_path) -> None:
    assert len(trained.returns) > 20 and len(trained.returns) == len(trained.successes)
    data = json.loads(curve_json(trained.returns, trained.successes))
    assert data["episodes"] == len(trained.returns)
    assert plot_curve({"ppo": trained.returns}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_policy_round_trips_through_safetensors_without_pickle(trained, tmp_path, monkeypatch) -> None:
    files = policy_files(trained)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with safe_open(str(tmp_path / POLICY_FILE), "pt") as f:
        keys = set(f.keys())
    assert keys == {"mlp_extractor.policy_net.0.weight", "mlp_extractor.policy_net.0.bias",
                    "mlp_extractor.policy_net.2.weight", "mlp_extractor.policy_net.2.bias",
                    "action_net.weight", "action_net.bias"}
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["actions"] == ["ask:type", "ask:use_case", "ask:features", "ask:budget", "recommend", "end"]

    def refuse(*args, **kwargs):
        raise AssertionError("loading a policy must not unpickle anything")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    net = load_policy(tmp_path / POLICY_FILE, tmp_path / CONFIG_FILE)
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    for _ in range(40):
        obs = rng.uniform(-1, 1, size=7).astype(np.float32)
        expected, _ = trained.model.predict(obs, deterministic=True)
        assert net.act(obs) == int(expected)
    assert net.probabilities(obs).sum() == pytest.approx(1.0, abs=1e-5)
