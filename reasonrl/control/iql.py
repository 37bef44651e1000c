"""Implicit Q-Learning (Kostrikov, Nair, Levine 2021, arXiv 2110.06169): offline RL without querying unseen actions.

Per step on a batch of transitions, in the official code's order:
  value:   L_V = E[ L₂^τ(min_m Q'_m(s, a) - V(s)) ],   L₂^τ(u) = |τ - 1(u < 0)| u²   (expectile regression, τ = 0.7)
  actor:   L_π = -E[ min(exp(β (min_m Q'_m(s, a) - V(s))), 100) log π(a|s) ]   (advantage-weighted regression, β = 3)
  critics: L_Q = Σ_m E[ (Q_m(s, a) - r - γ (1 - terminal) V(s'))² ]
  then Polyak-averaged target critics (τ = 0.005). The policy is a Gaussian with a tanh mean and a state-independent
log-std; evaluation acts with its mean. For MuJoCo the official code rescales rewards by 1000 / (max - min episode
return of the dataset) (`iql.scale_rewards`). The actor's learning rate decays by a cosine over train.steps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.control.offline_data import TrainingData
from reasonrl.control.sac import TwinQ, mlp
from reasonrl.control.schedules import cosine_factor, soft_update_

LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0  # the official policy's clamp


@dataclass
class IQLConfig:
    """IQL's options; the defaults are the paper's MuJoCo settings (also d3rlpy's)."""

    hidden: int = 256
    layers: int = 2
    lr: float = 3e-4  # actor, critics and value
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    temperature: float = 3.0  # β
    max_weight: float = 100.0
    scale_rewards: bool = True  # r × 1000 / (max - min episode return), the paper's MuJoCo setting

    def __post_init__(self) -> None:
        if not 0 < self.expectile < 1:
            raise ValueError(f"iql.expectile={self.expectile} must lie in (0, 1)")
        if min(self.hidden, self.layers, self.batch_size) < 1 or self.temperature < 0 or self.max_weight <= 0:
            raise ValueError("iql.hidden, layers, batch_size must be >= 1, temperature >= 0 and max_weight > 0")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean of |τ - 1(u < 0)| u² over u = diff: an asymmetric square whose minimiser is the τ-expectile."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff**2).mean()


class GaussianPolicy(nn.Module):
    """π(a|s) = N(tanh(mean(s)), exp(log_std)²) with one learned log-std per action dimension."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int):
        super().__init__()
        self.mean = mlp(obs_dim, act_dim, hidden, layers)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mean(obs))

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        z = (action - self(obs)) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class IQL(nn.Module):
    def __init__(self, data: TrainingData, cfg: IQLConfig, total_steps: int):
        super().__init__()
        self.data, self.cfg, self.total_steps = data, cfg, total_steps
        obs_dim, act_dim = data.obs.shape[1], data.actions.shape[1]
        self.actor = GaussianPolicy(obs_dim, act_dim, cfg.hidden, cfg.layers)
        self.critic = TwinQ(obs_dim + act_dim, cfg.hidden, cfg.layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(obs_dim, 1, cfg.hidden, cfg.layers)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=cfg.lr)
        self.rows = np.flatnonzero(data.has_next)  # transitions whose next observation is known
        spread = float(data.episode_returns.max() - data.episode_returns.min())
        self.reward_scale = 1000.0 / spread if cfg.scale_rewards and spread > 0 else 1.0

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optim, "critic": self.critic_optim, "value": self.value_optim}

    def q_values(self, critic: nn.Module, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return critic(torch.cat([obs, action], dim=-1)).squeeze(-1)

    def _step(self, optim: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optim.zero_grad()
        loss.backward()
        optim.step()

    def update(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        """Value, actor and critic steps on one batch of transitions (each step sees the previous ones' updates)."""
        cfg, d = self.cfg, self.data
        self.actor_optim.param_groups[0]["lr"] = cfg.lr * cosine_factor(step, self.total_steps)
        idx = self.rows[rng.integers(0, len(self.rows), cfg.batch_size)]
        obs, action, next_obs = (torch.from_numpy(a[idx]) for a in (d.obs, d.actions, d.next_obs))
        reward = torch.from_numpy(d.rewards[idx] * self.reward_scale)
        terminal = torch.from_numpy(d.terminals[idx])
        with torch.no_grad():
            q_target = self.q_values(self.critic_target, obs, action).min(0).values

        value_loss = expectile_loss(q_target - self.value(obs).squeeze(-1), cfg.expectile)
        self._step(self.value_optim, value_loss)

        with torch.no_grad():
            advantage = q_target - self.value(obs).squeeze(-1)
            weight = torch.exp(cfg.temperature * advantage).clamp(max=cfg.max_weight)
        actor_loss = -(weight * self.actor.log_prob(obs, action)).mean()
        self._step(self.actor_optim, actor_loss)

        with torch.no_grad():
            y = reward + cfg.gamma * (1 - terminal) * self.value(next_obs).squeeze(-1)
        q = self.q_values(self.critic, obs, action)
        critic_loss = sum(F.mse_loss(q_m, y) for q_m in q)
        self._step(self.critic_optim, critic_loss)
        soft_update_(self.critic_target, self.critic, cfg.tau)
        return {
            "iql/value_loss": value_loss.item(),
            "iql/actor_loss": actor_loss.item(),
            "iql/critic_loss": critic_loss.item(),
            "iql/advantage": advantage.mean().item(),
            "iql/weight": weight.mean().item(),
            "iql/q": q.mean().item(),
        }

    def episode_policy(self, generator: torch.Generator):
        """The deterministic policy: the Gaussian's mean."""

        @torch.no_grad()
        def act(obs: np.ndarray) -> np.ndarray:
            return self.actor(torch.from_numpy(self.data.normalize_obs(obs))).numpy()

        return act
