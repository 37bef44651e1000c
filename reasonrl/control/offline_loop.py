"""The training loop of offline algos (`algo=dtr|dt|iql`): a dataset, a reward, gradient steps, evaluations.

1. Read `data.path` (offline_data.py). 2. The training reward: the true reward, or with `pref.enabled` a
Bradley-Terry ensemble (pref.ensemble, hidden, layers, lr, batch_size, epochs, use_action, obs_slice) trained once on
preference pairs of `pref.segment` steps — from `data.preferences`, or `pref.max_feedback` pairs labelled by
`pref.teacher` — then every member evaluated on every transition and combined by `data.zscore` (offline_reward.py).
3. `train.steps` gradient steps of the agent, which samples its own batches from the run's generator; every
`train.log_every` steps one metrics record (means over those steps), joined by an evaluation when `train.eval_every`
steps have passed and followed by a checkpoint when `train.save_every` have. The trainer knows only the agent's
interface: update(step, rng) -> metrics, optimizers(), episode_policy(generator) -> act(obs), and its weights.

Run directory as the online loop's (loop.py): config.yaml, metrics.jsonl, checkpoints/step_N, plots/, plus
preferences.npz (the labels used, reusable as data.preferences). Checkpoints hold the agent, the reward ensemble,
the optimizers and every RNG state; on resume the reward is recomputed from the stored ensemble (deterministic), so
`--resume` continues exactly as the uninterrupted run (CPU, one thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import yaml
from torch import nn

from reasonrl.checkpoint import MODEL_FILE, latest_checkpoint, load_algo_tensors, load_checkpoint
from reasonrl.control.config import ControlConfig, control_config_dict
from reasonrl.control.dtr import DTR
from reasonrl.control.envs import evaluate, make_env
from reasonrl.control.iql import IQL
from reasonrl.control.loop import make_teacher
from reasonrl.control.offline_data import dataset_summary, load_offline_dataset, normalized_score, training_data
from reasonrl.control.offline_reward import (
    ensemble_reward,
    load_preferences,
    member_rewards,
    scripted_preferences,
    train_reward_model,
)
from reasonrl.control.preferences import OBS_SLICES, reward_inputs
from reasonrl.control.reward_model import RewardEnsemble
from reasonrl.control.runs import TrainingLoop, load_optimizers, optimizer_tensors
from reasonrl.tracking import Tracker

PREFERENCES_FILE = "preferences.npz"


class OfflineRun(TrainingLoop):
    """One offline run in `run_dir`; `resume=True` continues from its latest valid checkpoint."""

    def __init__(self, cfg: ControlConfig, run_dir: str | Path, resume: bool = False, track: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        torch.manual_seed(cfg.train.seed)
        self.rng = np.random.default_rng(cfg.train.seed)
        self.dataset = load_offline_dataset(cfg.data.path)
        if self.dataset.env_id is not None and self.dataset.env_id != cfg.env.id:
            raise ValueError(
                f"data.path={cfg.data.path} was collected on {self.dataset.env_id} but env.id={cfg.env.id}; "
                f"set env.id={self.dataset.env_id}"
            )
        self.eval_env = make_env(cfg.env.id, cfg.env.max_episode_steps)
        obs_dim, act_dim = self.eval_env.observation_space.shape[0], self.eval_env.action_space.shape[0]
        if self.dataset.observations.shape[1] != obs_dim or self.dataset.actions.shape[1] != act_dim:
            raise ValueError(
                f"data.path={cfg.data.path} has observations of {self.dataset.observations.shape[1]} and actions "
                f"of {self.dataset.actions.shape[1]} dims; {cfg.env.id} has {obs_dim} and {act_dim}"
            )
        self.low, self.high = self.eval_env.action_space.low, self.eval_env.action_space.high
        self.modules = nn.ModuleDict()
        self.step = self.last_eval = self.last_save = self.feedback = 0
        self.reward_metrics: dict[str, float] = {}
        self.stopped_at: int | None = None
        checkpoint = self._checkpoint() if resume else None
        rewards = self._training_reward(checkpoint)
        self.data = training_data(self.dataset, rewards, self.low, self.high)
        self.agent = self._make_agent()
        self.modules["agent"] = self.agent
        resume_step = self._load(checkpoint) if checkpoint is not None else None
        if not track:  # `reasonrl control eval`: the weights only, the run directory untouched
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(control_config_dict(cfg), sort_keys=False))
        self.tracker = Tracker(
            self.run_dir, [], control_config_dict(cfg), cfg.train.steps, cfg.train.progress, resume_step
        )

    # ---- setup
    def _checkpoint(self) -> Path:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"{self.run_dir} has no valid checkpoint to resume from")
        return path

    def _training_reward(self, checkpoint: Path | None) -> np.ndarray:
        """The true reward, or the preference-learned ensemble's (trained now, or restored from `checkpoint`)."""
        p = self.cfg.pref
        if not p.enabled:
            return self.dataset.rewards
        obs_slice = OBS_SLICES[p.obs_slice] if p.obs_slice else None
        actions = np.clip(2.0 * (self.dataset.actions - self.low) / (self.high - self.low) - 1.0, -1.0, 1.0)
        inputs = reward_inputs(self.dataset.observations, actions, obs_slice, p.use_action)
        self.reward_model = RewardEnsemble(p.ensemble, inputs.shape[1], p.hidden, p.layers, p.lr)
        self.modules["reward"] = self.reward_model
        if checkpoint is not None:
            weights = safetensors.torch.load_file(checkpoint / MODEL_FILE)
            self.reward_model.load_state_dict(
                {k.removeprefix("reward."): v for k, v in weights.items() if k.startswith("reward.")}
            )
        else:
            if self.cfg.data.preferences:
                prefs = load_preferences(self.cfg.data.preferences, self.dataset)
            else:
                prefs = scripted_preferences(self.dataset, p.max_feedback, p.segment, make_teacher(self.cfg), self.rng)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            prefs.save(self.run_dir / PREFERENCES_FILE)
            self.feedback = len(prefs.labels)
            self.reward_metrics = train_reward_model(
                self.reward_model, inputs, self.dataset.rewards, prefs, p.epochs, p.batch_size, self.rng
            )
        rewards = ensemble_reward(member_rewards(self.reward_model, inputs), self.cfg.data.zscore)
        if checkpoint is None:
            self.reward_metrics["reward/true_corr"] = float(np.corrcoef(rewards, self.dataset.rewards)[0, 1])
        return rewards

    def _make_agent(self) -> nn.Module:
        cfg = self.cfg
        if cfg.algo == "iql":
            return IQL(self.data, cfg.iql, cfg.train.steps)
        limit = self.eval_env.spec.max_episode_steps if self.eval_env.spec else None
        max_timestep = max(limit or 0, int(self.data.timestep.max()) + 1)
        return DTR(self.data, cfg.dtr, cfg.train.steps, max_timestep, use_critic=cfg.algo == "dtr")

    # ---- the loop (runs.TrainingLoop.train drives these)
    def first_record(self) -> dict[str, float]:
        """Step 0: the dataset's size and true returns, and the reward model's fit."""
        summary = {k: v for k, v in dataset_summary(self.dataset).items() if isinstance(v, int | float)}
        return {**{f"data/{k}": v for k, v in summary.items()}, **self.reward_metrics}

    def train_unit(self) -> dict[str, float]:
        """`train.log_every` updates (fewer at the end); the mean of each metric over them."""
        count = min(self.cfg.train.log_every, self.cfg.train.steps - self.step)
        sums: dict[str, float] = {}
        for _ in range(count):
            for k, v in self.agent.update(self.step, self.rng).items():
                sums[k] = sums.get(k, 0.0) + v
            self.step += 1
        return {k: v / count for k, v in sums.items()}

    def evaluate(self, episodes: int | None = None) -> dict[str, float]:
        """Mean return (and D4RL normalised score) of the agent's policy over seeded evaluation episodes; the
        policy's own randomness (DTR's candidates) comes from a generator seeded per episode."""
        episodes = episodes or self.cfg.train.eval_episodes
        seed = self.cfg.train.seed
        self.agent.eval()
        returns = []
        for i in range(episodes):
            policy = self.agent.episode_policy(torch.Generator().manual_seed(seed + i))
            act = lambda obs, policy=policy: self.low + (policy(obs) + 1.0) * 0.5 * (self.high - self.low)  # noqa: E731
            returns.append(evaluate(self.eval_env, act, 1, seed + i)["eval/return"])
        self.agent.train()
        mean = float(np.mean(returns))
        out = {"eval/return": mean, "eval/return_std": float(np.std(returns))}
        score = normalized_score(self.cfg.env.id, mean)
        return out | ({"eval/normalized_score": score} if score is not None else {})

    # ---- checkpoints
    def save(self) -> Path:
        tensors, groups = optimizer_tensors(self.agent.optimizers())
        state = {
            "last_eval": self.last_eval,
            "feedback": self.feedback,
            "reward_metrics": self.reward_metrics,
            "generator": self.rng.bit_generator.state,
            "optimizer_groups": groups,
        }
        return self.write_checkpoint(state, tensors)

    def _load(self, path: Path) -> int:
        state = load_checkpoint(path, self.modules, None, None)
        load_optimizers(self.agent.optimizers(), load_algo_tensors(path), state["optimizer_groups"])
        self.step, self.last_eval, self.last_save = state["step"], state["last_eval"], state["step"]
        self.feedback, self.reward_metrics = state["feedback"], state["reward_metrics"]
        self.rng.bit_generator.state = state["generator"]
        return self.step
