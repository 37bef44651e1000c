"""`reasonrl control collect`: offline datasets made by our own SAC runs, at D4RL's levels.

D4RL (Fu et al. 2020) made its MuJoCo datasets from SAC policies; here the behaviour policies are checkpoints of
`reasonrl control train` runs (pick one by its run directory, its latest checkpoint, or a checkpoint directory):
    random         uniform random actions
    medium/expert  rollouts of the policy (D4RL: a policy at about 1/3 of expert return, and a fully trained one)
    medium-replay  the policy's own replay buffer as stored in its checkpoint: every transition its run saw up to
                   then, with true rewards (D4RL: the buffer of the run until the medium policy)
    medium-expert  half the steps from the policy, half from `expert` (D4RL: the medium and expert datasets joined)
Rollout actions are samples of SAC's stochastic policy (its mean with `deterministic`), plus N(0, noise²) when
`noise` > 0, clipped to [-1, 1]; training episode k is reset with seed + k. The last episode of a rollout dataset is
cut at `steps` and marked as a timeout, as in D4RL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from reasonrl.checkpoint import STATE_FILE, latest_checkpoint, load_algo_tensors, verify_checkpoint
from reasonrl.control.config import load_control_config
from reasonrl.control.envs import make_env
from reasonrl.control.offline_data import OfflineDataset, write_minari
from reasonrl.control.sac import SAC

LEVELS = ("random", "medium", "expert", "medium-replay", "medium-expert")


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) of a run directory (its latest valid checkpoint) or a checkpoint directory."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"{path} has no valid checkpoint")
        return path, checkpoint
    if path.parent.name == "checkpoints":
        verify_checkpoint(path)
        return path.parent.parent, path
    raise FileNotFoundError(f"{path} is neither a control run directory nor one of its checkpoints/step_N")


def load_sac_policy(path: str | Path) -> tuple[SAC, str, Path]:
    """(SAC agent, env id, checkpoint) of a `reasonrl control train` run with algo=sac."""
    run_dir, checkpoint = resolve_checkpoint(path)
    cfg = load_control_config(run_dir / "config.yaml")
    env = make_env(cfg.env.id, cfg.env.max_episode_steps)
    agent = SAC(env.observation_space.shape[0], env.action_space.shape[0], cfg.sac)
    weights = safetensors.torch.load_file(checkpoint / "model.safetensors")
    agent_weights = {k.removeprefix("agent."): v for k, v in weights.items() if k.startswith("agent.")}
    if not agent_weights:
        raise ValueError(f"{checkpoint} holds no SAC agent (a run of `reasonrl control train` with algo=sac is needed)")
    agent.load_state_dict(agent_weights)
    return agent, cfg.env.id, checkpoint


def rollouts(env, act, steps: int, seed: int) -> OfflineDataset:
    """`steps` transitions of `act(obs) -> action in [-1, 1]` in `env`, episode k reset with seed + k."""
    low, high = env.action_space.low, env.action_space.high
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "next_observations")}
    terminals, timeouts = [], []
    episode = 0
    while len(terminals) < steps:
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done and len(terminals) < steps:
            action = low + (act(obs) + 1.0) * 0.5 * (high - low)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            for key, value in zip(rows, (obs, action, reward, next_obs)):
                rows[key].append(value)
            terminals.append(terminated)
            timeouts.append(truncated or (not terminated and len(terminals) == steps))
            obs = next_obs
        episode += 1
    arrays = {k: np.asarray(v, np.float32) for k, v in rows.items()}
    return OfflineDataset(
        **arrays,
        terminals=np.asarray(terminals, bool),
        timeouts=np.asarray(timeouts, bool),
        has_next=np.ones(steps, bool),
        env_id=env.spec.id if env.spec else None,
    )


def policy_actor(agent: SAC, noise: float, deterministic: bool, rng: np.random.Generator):
    """act(obs) of a SAC behaviour policy with optional Gaussian action noise, in [-1, 1]."""

    def act(obs: np.ndarray) -> np.ndarray:
        action = agent.act(obs, deterministic)
        if noise > 0:
            action = np.clip(action + rng.normal(0.0, noise, action.shape), -1.0, 1.0)
        return action.astype(np.float32)

    return act


def replay_dataset(path: str | Path) -> OfflineDataset:
    """A run's replay buffer from its checkpoint, oldest transition first, actions in the environment's units."""
    run_dir, checkpoint = resolve_checkpoint(path)
    cfg = load_control_config(run_dir / "config.yaml")
    env = make_env(cfg.env.id, cfg.env.max_episode_steps)
    tensors = {
        k.removeprefix("replay."): v.numpy()
        for k, v in load_algo_tensors(checkpoint).items()
        if k.startswith("replay.")
    }
    if "obs" not in tensors:
        raise ValueError(f"{checkpoint} holds no replay buffer")
    ptr = json.loads((checkpoint / STATE_FILE).read_text())["replay_ptr"]
    size = len(tensors["reward"])
    shift = -ptr if size == cfg.sac.buffer_size else 0  # a full ring: the oldest transition sits at ptr
    t = {k: np.roll(v, shift, axis=0) for k, v in tensors.items()}
    ended = np.append(t["episode"][1:] != t["episode"][:-1], True)
    terminals = t["terminated"].astype(bool)
    low, high = env.action_space.low, env.action_space.high
    return OfflineDataset(
        observations=t["obs"],
        actions=(low + (t["action"] + 1.0) * 0.5 * (high - low)).astype(np.float32),
        rewards=t["true_reward"],
        next_observations=t["next_obs"],
        terminals=terminals,
        timeouts=ended & ~terminals,
        has_next=np.ones(size, bool),
        env_id=cfg.env.id,
    )


def collect(
    level: str,
    steps: int,
    policy: str | Path | None = None,
    expert: str | Path | None = None,
    env_id: str | None = None,
    noise: float = 0.0,
    deterministic: bool = False,
    seed: int = 0,
) -> OfflineDataset:
    """The dataset of `level` (module docstring); `env_id` only for `random`, where no policy names the task."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if level == "medium-replay":
        if policy is None:
            raise ValueError("medium-replay needs --policy (the run whose replay buffer becomes the dataset)")
        return replay_dataset(policy)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if level == "random":
        if env_id is None:
            raise ValueError("the random level needs --env (no policy names the task)")
        env = make_env(env_id)
        return rollouts(env, lambda obs: rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32), steps, seed)
    if policy is None:
        raise ValueError(f"level {level} needs --policy (a control run directory or checkpoint)")
    agent, policy_env, _ = load_sac_policy(policy)
    env = make_env(policy_env)
    if level != "medium-expert":
        return rollouts(env, policy_actor(agent, noise, deterministic, rng), steps, seed)
    if expert is None:
        raise ValueError("medium-expert needs --expert (the expert run) besides --policy (the medium one)")
    expert_agent, expert_env, _ = load_sac_policy(expert)
    if expert_env != policy_env:
        raise ValueError(f"--policy runs on {policy_env} but --expert on {expert_env}")
    half = steps // 2
    medium = rollouts(env, policy_actor(agent, noise, deterministic, rng), half, seed)
    best = rollouts(env, policy_actor(expert_agent, noise, deterministic, rng), steps - half, seed + 500_000)
    return OfflineDataset.concatenate([medium, best])


def save_dataset(dataset: OfflineDataset, output: str | Path, level: str) -> Path:
    """Write `dataset`: a path ending in .npz gets our npz layout; any other path becomes a Minari dataset root,
    with the dataset `reasonrl/<task>-<level>-v0` inside. Returns the written file or dataset directory."""
    output = Path(output)
    if output.suffix == ".npz":
        return dataset.save_npz(output)
    if dataset.env_id is None:
        raise ValueError("a Minari dataset needs the environment id")
    task = dataset.env_id.split("-")[0].lower()
    description = f"{level} data of {dataset.env_id} made by reasonrl control collect"
    return write_minari(dataset, output, f"reasonrl/{task}-{level}-v0", make_env(dataset.env_id), description)
