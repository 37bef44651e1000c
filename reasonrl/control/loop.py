"""The training loop of `reasonrl control train`: SAC on the true reward, or PEBBLE when `pref.enabled`.

PEBBLE (Lee et al. 2021), as in B-Pref's code: `sac.learning_starts` uniform random steps; `pref.unsup_steps` of SAC
on a state-entropy reward (distance of s' to its k-th nearest stored state, divided by its running std); then
feedback rounds every `pref.feedback_interval` steps until `pref.max_feedback` queries: sample segment pairs, label
them (feedback.labeller: a scripted teacher or a language model, with RL-SaLLM-F's double-check and self-augmentation
when enabled; reasonrl/control/feedback.py), train the reward ensemble, relabel the whole replay buffer with its mean,
and (first round only) reset the critics. SAC never sees the true reward then; new transitions get the learned reward.

Run directory: config.yaml, metrics.jsonl (a record per episode, step = environment steps), checkpoints/step_N
(reasonrl/checkpoint.py's atomic, manifest-verified format; everything in safetensors and JSON, no pickle), plots/.
Checkpoints are written at episode ends and every episode is reset with seed train.seed + its number, so `--resume`
continues exactly as the uninterrupted run would have (CPU, one thread).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from reasonrl.checkpoint import latest_checkpoint, load_algo_tensors, load_checkpoint
from reasonrl.control.buffer import ReplayBuffer
from reasonrl.control.config import ControlConfig, control_config_dict
from reasonrl.control.envs import evaluate, make_env
from reasonrl.control.feedback import Labelling
from reasonrl.control.labellers import Queries, make_labeller
from reasonrl.control.preferences import (
    OBS_SLICES,
    PreferenceBuffer,
    ScriptedTeacher,
    reward_inputs,
    sample_pairs,
    select_queries,
)
from reasonrl.control.reward_model import RewardEnsemble
from reasonrl.control.runs import TrainingLoop, load_optimizers, optimizer_tensors
from reasonrl.control.sac import SAC
from reasonrl.control.trajectory_text import task_text
from reasonrl.tracking import Tracker

logger = logging.getLogger("reasonrl")


def default_run_dir(cfg: ControlConfig) -> Path:
    """train.output_dir with {env} (the task, path-safe) and {time} filled in."""
    env = cfg.env.id.removeprefix("metaworld:").replace("/", "-")
    return Path(cfg.train.output_dir.format(env=env, time=time.strftime("%Y%m%d-%H%M%S")))


def make_teacher(cfg: ControlConfig) -> ScriptedTeacher:
    """The named B-Pref teacher with the knobs set in pref.teacher applied on top."""
    t = cfg.pref.teacher
    teacher = ScriptedTeacher.from_name(t.name)
    for knob in ("beta", "gamma", "eps_mistake", "eps_skip", "eps_equal"):
        if getattr(t, knob) is not None:
            setattr(teacher, knob, getattr(t, knob))
    return teacher


def make_labelling(cfg: ControlConfig, obs_dim: int, run_dir: Path, fresh: bool) -> Labelling:
    """feedback.labeller with the double-check and self-augmentation configured; recording to RUN_DIR/labels.jsonl
    when feedback.record (`fresh`: a new run starts that file empty)."""
    f = cfg.feedback
    task = task_text(cfg.env.id, obs_dim, f.goal)
    if f.self_augment and f.labeller == "scripted" and not task.metaworld:
        raise ValueError(
            f"feedback.self_augment with the scripted labeller imagines MetaWorld trajectories; {cfg.env.id} is not one"
        )
    record = run_dir / "labels.jsonl" if f.record else None
    if record is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    labeller = make_labeller(f.labeller, task, make_teacher(cfg), f, cfg.train.seed, record, fresh)
    return Labelling(labeller, task, f.double_check, f.self_augment)


class ControlRun(TrainingLoop):
    """One run in `run_dir`; `resume=True` continues from its latest valid checkpoint."""

    def __init__(self, cfg: ControlConfig, run_dir: str | Path, resume: bool = False, track: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        torch.manual_seed(cfg.train.seed)
        self.rng = np.random.default_rng(cfg.train.seed)
        self.env = make_env(cfg.env.id, cfg.env.max_episode_steps)
        self.eval_env = make_env(cfg.env.id, cfg.env.max_episode_steps)
        obs_dim, act_dim = self.env.observation_space.shape[0], self.env.action_space.shape[0]
        self.low, self.high = self.env.action_space.low, self.env.action_space.high
        self.agent = SAC(obs_dim, act_dim, cfg.sac)
        self.buffer = ReplayBuffer(cfg.sac.buffer_size, obs_dim, act_dim)  # np.zeros: pages untouched cost nothing
        self.modules = nn.ModuleDict({"agent": self.agent})
        p = cfg.pref
        self.obs_slice = OBS_SLICES[p.obs_slice] if p.obs_slice else None
        if self.obs_slice is not None and max(self.obs_slice) >= obs_dim:
            raise ValueError(
                f"pref.obs_slice={p.obs_slice} needs {max(self.obs_slice) + 1} observation dims, env has {obs_dim}"
            )
        self.labelling: Labelling | None = None  # only a training run asks for labels (`control eval` loads no LLM)
        if p.enabled:
            in_dim = (len(self.obs_slice) if self.obs_slice else obs_dim) + (act_dim if p.use_action else 0)
            self.reward_model = RewardEnsemble(p.ensemble, in_dim, p.hidden, p.layers, p.lr)
            room = p.max_feedback * (2 if cfg.feedback.self_augment else 1)  # one imagined pair per label at most
            self.prefs = PreferenceBuffer(room, p.segment, in_dim)
            self.modules["reward"] = self.reward_model
            if track:
                self.labelling = make_labelling(cfg, obs_dim, self.run_dir, fresh=not resume)
        # counters: everything a resumed run needs besides weights, optimizers, buffers and RNG states
        self.step = self.episode = self.feedback = self.rounds = 0
        self.entropy_stats = [0.0, 0.0, 0.0]  # count, mean, var of the state-entropy reward (running)
        self.last_eval = self.last_save = self._last_round_step = 0
        self.pref_metrics: dict[str, float] = {}
        self.stopped_at: int | None = None
        resume_step = self._load() if resume else None
        if not track:  # `reasonrl control eval`: the weights only, the run directory untouched
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # on resume too: overrides given then (a larger train.steps) hold for later resumes
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(control_config_dict(cfg), sort_keys=False))
        self.tracker = Tracker(
            self.run_dir, [], control_config_dict(cfg), cfg.train.steps, cfg.train.progress, resume_step
        )

    # ---- acting and rewards
    def _env_action(self, action: np.ndarray) -> np.ndarray:
        return self.low + (action + 1.0) * 0.5 * (self.high - self.low)

    def _learned_reward(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        return self.reward_model.predict(reward_inputs(obs, action, self.obs_slice, self.cfg.pref.use_action))

    def _state_entropy_reward(self, next_obs: torch.Tensor) -> torch.Tensor:
        """PEBBLE's intrinsic reward: distance to the k-th nearest stored state, over its running std."""
        full = torch.from_numpy(self.buffer.obs[: self.buffer.size])
        k = min(self.cfg.pref.entropy_k + 1, len(full))  # + 1: a state's nearest neighbour is usually itself
        knn = torch.cdist(next_obs, full).kthvalue(k, dim=1).values
        count, mean, var = self.entropy_stats
        n, b_mean, b_var = len(knn), knn.mean().item(), knn.var(unbiased=False).item()
        total = count + n
        delta = b_mean - mean
        var = (var * count + b_var * n + delta**2 * count * n / total) / total
        self.entropy_stats = [total, mean + delta * n / total, var]
        return knn / max(var**0.5, 1e-8)

    # ---- PEBBLE phases
    def _in_unsup_phase(self) -> bool:
        """Before the first feedback round SAC trains on state entropy, never on the true reward."""
        return self.cfg.pref.enabled and self.rounds == 0

    def _feedback_due(self) -> bool:
        p, starts = self.cfg.pref, self.cfg.sac.learning_starts
        if not p.enabled or self.feedback >= p.max_feedback or self.step < starts + p.unsup_steps:
            return False
        if self.feedback and self.step - self._last_round_step < p.feedback_interval:
            return False
        return len(self.buffer.segment_starts(p.segment)) >= 2

    def _mb_size(self) -> int:
        p = self.cfg.pref
        size = p.mb_size
        if p.schedule == "linear":
            size = max(1, int(p.mb_size * (1 - self.step / self.cfg.train.steps)))
        return min(size, p.max_feedback - self.feedback)

    def feedback_round(self) -> dict[str, float]:
        """Query, label, train the reward ensemble, relabel the buffer; the first round also resets the critics."""
        p, mb = self.cfg.pref, self._mb_size()
        if self.rounds == 0 or p.sampling == "uniform":  # PEBBLE's first round is uniform whatever the scheme
            s0, s1 = sample_pairs(self.buffer, mb, p.segment, self.rng)
        else:
            c0, c1 = sample_pairs(self.buffer, mb * p.large_batch, p.segment, self.rng)
            probs = self.reward_model.preference_probs(*(self._inputs(c) for c in (c0, c1)))
            pick = select_queries(probs, mb, p.sampling)
            s0, s1 = c0[pick], c1[pick]
        seg0, seg1 = self.buffer.segments(s0, p.segment), self.buffer.segments(s1, p.segment)
        scale = float(self.buffer.true_reward[: self.buffer.size].mean()) * p.segment
        out = self.labelling(Queries(seg0, seg1, scale))
        keep = out.keep
        ret0, ret1 = seg0["true_reward"].sum(1)[keep], seg1["true_reward"].sum(1)[keep]
        true_labels = np.where(ret1 > ret0, 1.0, np.where(ret1 < ret0, 0.0, 0.5)).astype(np.float32)
        self.feedback += mb
        x0, x1 = self._inputs(s0[keep]), self._inputs(s1[keep])
        self.prefs.add(x0, x1, out.labels, true_labels)
        worse, better = (self._seg_inputs(seg) for seg in (out.imagined_worse, out.imagined_better))
        ones = np.ones(len(worse), np.float32)
        self.prefs.add(worse, better, ones, ones, imagined=True)
        self._last_round_step = self.step
        if self.prefs.size == 0:  # every answer failed or was ambiguous: SAC stays on the state-entropy reward
            logger.warning("no labels from the feedback round at step %d; the next round asks again", self.step)
            return {**self.labelling.metrics(), "pref/feedback": self.feedback, "pref/labels": 0}
        metrics = self.reward_model.train_epochs(*self.prefs.data(), p.epochs, p.batch_size, self.rng)
        self.buffer.relabel(self._learned_reward)
        if self.rounds == 0 and p.reset_critic:
            self.agent.reset_critic()
        self.rounds += 1  # rounds that trained the reward model
        st = self.prefs.state()
        real = ~st["imagined"]  # imagined pairs have no true reward: accuracies leave them out
        strict = real & (st["labels"] != 0.5) & (st["true_labels"] != 0.5)
        probs = self.reward_model.preference_probs(st["seg0"], st["seg1"]).mean(0)
        agree = ((probs > 0.5) == (st["true_labels"] > 0.5))[real & (st["true_labels"] != 0.5)]
        return {
            **metrics,
            **self.labelling.metrics(),
            "pref/feedback": self.feedback,
            "pref/labels": int(real.sum()),
            "pref/imagined": int(st["imagined"].sum()),
            "pref/imagined_share": float(st["imagined"].mean()) if self.prefs.size else 0.0,
            "pref/label_accuracy": float((st["labels"] == st["true_labels"])[strict].mean()) if strict.any() else 1.0,
            "pref/equal_share": float((st["labels"][real] == 0.5).mean()) if real.any() else 0.0,
            "reward/true_accuracy": float(agree.mean()) if agree.size else float("nan"),
        }

    def _inputs(self, starts: np.ndarray) -> np.ndarray:
        return self._seg_inputs(self.buffer.segments(starts, self.cfg.pref.segment))

    def _seg_inputs(self, seg: dict[str, np.ndarray]) -> np.ndarray:
        return reward_inputs(seg["obs"], seg["action"], self.obs_slice, self.cfg.pref.use_action)

    # ---- the loop (runs.TrainingLoop.train drives these)
    def first_record(self) -> dict[str, float]:
        """Step 0: the untrained policy's evaluation."""
        return self.evaluate()

    def train_unit(self) -> dict[str, float]:
        return self._run_episode()

    def _run_episode(self) -> dict[str, float]:
        cfg = self.cfg
        obs, _ = self.env.reset(seed=cfg.train.seed + self.episode)
        total, length, sac_metrics, done = 0.0, 0, {}, False
        while not done and self.step < cfg.train.steps:
            if self.step < cfg.sac.learning_starts:
                action = self.rng.uniform(-1.0, 1.0, self.agent.act_dim).astype(np.float32)
            else:
                action = self.agent.act(obs, deterministic=False)
            next_obs, true_reward, terminated, truncated, _ = self.env.step(self._env_action(action))
            reward = true_reward
            if cfg.pref.enabled:
                reward = self._learned_reward(obs[None], action[None])[0] if self.rounds else 0.0
            self.buffer.add(obs, action, reward, true_reward, next_obs, terminated, self.episode)
            obs, total, length = next_obs, total + float(true_reward), length + 1
            self.step += 1
            done = terminated or truncated
            if self._feedback_due():
                self.pref_metrics = self.feedback_round()
            if self.step > cfg.sac.learning_starts:
                for _ in range(cfg.sac.gradient_steps):
                    batch = self.buffer.sample(self.rng, cfg.sac.batch_size)
                    if self._in_unsup_phase():
                        batch["reward"] = self._state_entropy_reward(batch["next_obs"])
                    sac_metrics = self.agent.update(batch)
        self.episode += 1
        return {"reward": total, "train/episode_length": length, **sac_metrics, **self.pref_metrics}

    def evaluate(self, episodes: int | None = None) -> dict[str, float]:
        """Deterministic-policy return (and success) over seeded evaluation episodes."""
        return evaluate(
            self.eval_env,
            lambda o: self._env_action(self.agent.act(o, deterministic=True)),
            episodes or self.cfg.train.eval_episodes,
            self.cfg.train.seed,
        )

    # ---- checkpoints
    def save(self) -> Path:
        optimizers = dict(self.agent.optimizers())
        if self.cfg.pref.enabled:
            optimizers["reward"] = self.reward_model.optim
        tensors, groups = optimizer_tensors(optimizers)
        if self.cfg.pref.enabled:
            tensors |= {f"prefs.{k}": torch.from_numpy(v) for k, v in self.prefs.state().items()}
        tensors |= {f"replay.{k}": torch.from_numpy(v) for k, v in self.buffer.state().items()}
        state = {
            "episode": self.episode,
            "feedback": self.feedback,
            "labelling": self.labelling.state() if self.labelling else None,
            "rounds": self.rounds,
            "last_round_step": self._last_round_step,
            "last_eval": self.last_eval,
            "entropy_stats": self.entropy_stats,
            "pref_metrics": self.pref_metrics,
            "replay_ptr": self.buffer.ptr,
            "generator": self.rng.bit_generator.state,
            "optimizer_groups": groups,
        }
        return self.write_checkpoint(state, tensors)

    def _load(self) -> int:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"{self.run_dir} has no valid checkpoint to resume from")
        state = load_checkpoint(path, self.modules, None, None)
        tensors = {k: v.numpy() if not k.startswith("optim.") else v for k, v in load_algo_tensors(path).items()}
        optimizers = dict(self.agent.optimizers())
        if self.cfg.pref.enabled:
            optimizers["reward"] = self.reward_model.optim
            self.prefs.load_state({k.removeprefix("prefs."): v for k, v in tensors.items() if k.startswith("prefs.")})
        load_optimizers(optimizers, tensors, state["optimizer_groups"])
        self.buffer.load_state(
            {k.removeprefix("replay."): v for k, v in tensors.items() if k.startswith("replay.")}, state["replay_ptr"]
        )
        self.step, self.episode, self.feedback = state["step"], state["episode"], state["feedback"]
        if self.labelling is not None:
            self.labelling.load_state(state["labelling"])
        self.rounds, self._last_round_step = state["rounds"], state["last_round_step"]
        self.last_eval, self.last_save = state["last_eval"], state["step"]
        self.entropy_stats, self.pref_metrics = state["entropy_stats"], state["pref_metrics"]
        self.rng.bit_generator.state = state["generator"]
        return self.step
