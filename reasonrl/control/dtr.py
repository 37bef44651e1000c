"""DTR (Tu et al. 2024, arXiv 2412.09104): a Decision Transformer trained jointly with K-step double-Q critics.

On windows of K steps (dt.py) with the training reward r (DTR: the z-scored reward ensemble), per step:
  critic:  y_j = Σ_{i=j}^{K-2} γ^{i-j} r_i + γ^{K-1-j} B,   B = min_m Q'_m(s_{K-1}, ā_{K-1})  (ā: the EMA actor's
           action at the window's last state; B = r_{K-1} when that step terminated the episode)
           L_Q = Σ_m MSE(Q_m(s_j, a_j), y_j) over the unpadded positions j < K-1
  actor:   L = η₂ MSE(â_t, a_t) + η c(step) L_Q,   L_Q = -Q_m(s_t, â_t) / mean|Q_m'(s_t, â_t)| (normaliser detached,
           m drawn at random),  c(step) = step / train.steps  (a linear ramp from 0 to 1)
  then the EMA actor (decay 0.995, every 5 steps from step 1000) and Polyak-averaged target critics (τ = 0.005).
Inference: candidate return targets {0.5, 0.75, 1, 1.5, 2} × the dataset's best return (divided by rtg_scale), each
repeated with N(0, 0.1) noise on its current return-to-go except the first copy; every candidate predicts an action
and one is chosen by min_m Q'_m(s, â): sampled from softmax(Q) (DTR's code) or the argmax. Returns-to-go fall by
target / max_episode_steps per step (no reward model at test time).
`algo=dt` is the same code without critics: behaviour cloning of the Decision Transformer conditioned on one return
target. Where we differ from DTR's code (github.com/TU2021/DTR, ql_trainer.py): windows are drawn by their last row
(so short windows sit at episode starts, as at inference) rather than their first; a terminal last step bootstraps
with its reward instead of 0; the EMA actor copies the actor until it starts averaging instead of keeping its initial
weights, and runs without dropout; the learning rate decays by a cosine over steps rather than over iterations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.control.dt import DecisionTransformer, window_batch
from reasonrl.control.offline_data import TrainingData
from reasonrl.control.sac import TwinQ
from reasonrl.control.schedules import cosine_factor, ramp, soft_update_

SELECTION = ("softmax", "argmax")


@dataclass
class DTRConfig:
    """DTR's options (also algo=dt's); the defaults are DTR's README command on D4RL MuJoCo."""

    context: int = 20  # K: steps per window
    embed: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.1
    batch_size: int = 256
    lr: float = 3e-4  # actor (Adam with L2 weight decay, as DTR's code)
    weight_decay: float = 1e-4
    critic_lr: float = 3e-4
    critic_hidden: int = 256
    critic_layers: int = 3
    lr_decay: bool = True  # cosine decay of both learning rates to 0 over train.steps
    grad_norm: float = 9.0  # gradient-norm clip of actor and critics; 0: none
    eta: float = 3.0  # weight of the Q term (ramped in linearly)
    eta2: float = 1.0  # weight of the behaviour-cloning term
    gamma: float = 0.99
    tau: float = 0.005  # Polyak coefficient of the target critics
    ema_decay: float = 0.995
    ema_start: int = 1000  # steps before the EMA actor starts averaging (it copies the actor until then)
    ema_every: int = 5
    rtg_scale: float = 10.0  # returns-to-go are divided by this
    return_targets: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 2.0])  # × best dataset return
    copies: int = 10  # candidates per return target (all but the first with noise)
    rtg_noise: float = 0.1
    selection: str = "softmax"  # softmax: sample by softmax(Q), as DTR's code; argmax: the best candidate
    dt_return_target: float = 1.0  # algo=dt: condition on this × the best dataset return

    def __post_init__(self) -> None:
        if self.selection not in SELECTION:
            raise ValueError(f"dtr.selection={self.selection!r}; choose one of {', '.join(SELECTION)}")
        if self.context < 2:
            raise ValueError(f"dtr.context={self.context}: K-step critic targets need windows of at least 2 steps")
        if min(self.embed, self.layers, self.heads, self.batch_size, self.copies, self.ema_every) < 1:
            raise ValueError("dtr.embed, layers, heads, batch_size, copies and ema_every must be >= 1")
        if not self.return_targets or self.rtg_scale <= 0:
            raise ValueError("dtr.return_targets must be non-empty and dtr.rtg_scale > 0")


def k_step_targets(rewards: torch.Tensor, bootstrap: torch.Tensor, gamma: float) -> torch.Tensor:
    """y_j = Σ_{i=j}^{K-2} γ^{i-j} r_i + γ^{K-1-j} B for j = 0..K-2: rewards (B, K), bootstrap (B,) -> (B, K-1).

    Left padding (zero rewards before the episode's first step) leaves every unpadded position's target exact."""
    k = rewards.shape[1]
    j = torch.arange(k - 1, dtype=rewards.dtype)
    powers = j[None, :] - j[:, None]  # [j, i] = i - j
    weights = torch.where(powers >= 0, gamma ** powers.clamp(min=0), torch.zeros(()))
    return rewards[:, : k - 1] @ weights.T + gamma ** (k - 1 - j) * bootstrap[:, None]


def select_candidate(q: torch.Tensor, selection: str, generator: torch.Generator | None) -> int:
    """The chosen candidate's index from its Q values (n,): argmax, or a sample from softmax(q)."""
    if selection == "argmax":
        return int(q.argmax())
    return int(torch.multinomial(torch.softmax(q, dim=0), 1, generator=generator))


class DTR(nn.Module):
    """Actor (a Decision Transformer), its EMA copy, and (unless `use_critic` is false: algo=dt) twin critics."""

    def __init__(
        self, data: TrainingData, cfg: DTRConfig, total_steps: int, max_timestep: int, use_critic: bool = True
    ):
        super().__init__()
        self.data, self.cfg, self.total_steps, self.use_critic = data, cfg, total_steps, use_critic
        obs_dim, act_dim = data.obs.shape[1], data.actions.shape[1]
        self.actor = DecisionTransformer(obs_dim, act_dim, cfg.embed, cfg.layers, cfg.heads, cfg.dropout, max_timestep)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False).eval()
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if use_critic:
            self.critic = TwinQ(obs_dim + act_dim, cfg.critic_hidden, cfg.critic_layers)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
            self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.best_return = float(data.episode_returns.max()) / cfg.rtg_scale

    def train(self, mode: bool = True) -> DTR:
        """The EMA actor stays in eval mode (no dropout in target actions) whatever the agent's mode."""
        super().train(mode)
        self.actor_ema.eval()
        return self

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optim} | ({"critic": self.critic_optim} if self.use_critic else {})

    def q_values(self, critic: nn.Module, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(2, ...): both critics' Q(s, a)."""
        return critic(torch.cat([obs, action], dim=-1)).squeeze(-1)

    def _step(self, optim: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
        optim.zero_grad()
        loss.backward()
        if self.cfg.grad_norm > 0:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_norm)
        optim.step()

    @torch.no_grad()
    def critic_targets(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K-1) K-step targets of a window batch: bootstrapped from the target critics at the EMA actor's action
        in the window's last state, or from that step's reward when it terminated the episode."""
        window = (b["returns_to_go"], b["obs"], b["actions"], b["timesteps"], b["mask"])
        next_action = self.actor_ema(*window)[:, -1]
        next_q = self.q_values(self.critic_target, b["obs"][:, -1], next_action).min(0).values
        bootstrap = torch.where(b["terminals"][:, -1] > 0, b["rewards"][:, -1], next_q)
        return k_step_targets(b["rewards"], bootstrap, self.cfg.gamma)

    def update(self, step: int, rng: np.random.Generator) -> dict[str, float]:
        """One critic step and one actor step on a batch of windows; `step` counts from 0."""
        cfg = self.cfg
        factor = cosine_factor(step, self.total_steps) if cfg.lr_decay else 1.0
        base = {"actor": cfg.lr, "critic": cfg.critic_lr}
        for name, optim in self.optimizers().items():
            optim.param_groups[0]["lr"] = base[name] * factor
        ends = rng.integers(0, len(self.data.rewards), cfg.batch_size)
        b = window_batch(self.data, ends, cfg.context, cfg.rtg_scale)
        window = (b["returns_to_go"], b["obs"], b["actions"], b["timesteps"], b["mask"])
        valid = b["mask"]
        metrics: dict[str, float] = {}
        if self.use_critic:
            y = self.critic_targets(b)
            q = self.q_values(self.critic, b["obs"][:, :-1], b["actions"][:, :-1])
            trained = valid[:, :-1]
            critic_loss = sum(F.mse_loss(q_m[trained], y[trained]) for q_m in q)
            self._step(self.critic_optim, critic_loss, self.critic.parameters())
            metrics |= {"dtr/critic_loss": critic_loss.item(), "dtr/target_q": y[trained].mean().item()}

        predicted = self.actor(*window)
        bc_loss = F.mse_loss(predicted[valid], b["actions"][valid])
        actor_loss = cfg.eta2 * bc_loss
        if self.use_critic:
            q_pi = self.q_values(self.critic, b["obs"][valid], predicted[valid])
            m = int(rng.integers(2))
            q_loss = -q_pi[m].mean() / q_pi[1 - m].abs().mean().detach()
            coefficient = ramp(step, self.total_steps)
            actor_loss = actor_loss + cfg.eta * coefficient * q_loss
            metrics |= {"dtr/q_loss": q_loss.item(), "dtr/q_coefficient": coefficient}
        self._step(self.actor_optim, actor_loss, self.actor.parameters())

        if step < cfg.ema_start:
            self.actor_ema.load_state_dict(self.actor.state_dict())
        elif step % cfg.ema_every == 0:
            soft_update_(self.actor_ema, self.actor, 1.0 - cfg.ema_decay)
        if self.use_critic:
            soft_update_(self.critic_target, self.critic, cfg.tau)
        return metrics | {"dtr/bc_loss": bc_loss.item(), "dtr/actor_loss": actor_loss.item(), "dtr/lr": cfg.lr * factor}

    def episode_policy(self, generator: torch.Generator) -> DTRPolicy:
        return DTRPolicy(self, generator)


class DTRPolicy:
    """Acts for one episode: keeps the history the Decision Transformer conditions on, and picks among candidates.
    The caller puts the agent in eval mode (no dropout)."""

    def __init__(self, agent: DTR, generator: torch.Generator):
        cfg = agent.cfg
        self.agent, self.generator = agent, generator
        if agent.use_critic:
            targets = torch.tensor(cfg.return_targets, dtype=torch.float32).repeat_interleave(cfg.copies)
            self.noisy = torch.ones(len(targets), dtype=torch.bool)
            self.noisy[:: cfg.copies] = False  # the first copy of each target keeps the exact target
        else:
            targets = torch.tensor([cfg.dt_return_target])
            self.noisy = torch.zeros(1, dtype=torch.bool)
        self.targets = targets * agent.best_return
        self.decrement = self.targets / agent.actor.max_timestep
        self.obs: list[torch.Tensor] = []
        self.actions: list[torch.Tensor] = []
        self.returns_to_go: list[torch.Tensor] = []  # (candidates,) per step

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        agent, cfg = self.agent, self.agent.cfg
        t = len(self.obs)
        self.obs.append(torch.from_numpy(agent.data.normalize_obs(obs)))
        self.returns_to_go.append(self.targets - t * self.decrement)
        k = min(len(self.obs), cfg.context)
        n = len(self.targets)
        history = torch.stack(self.obs[-k:])
        past_actions = self.actions[-(k - 1) :] if k > 1 else []
        actions = torch.stack([*past_actions, torch.zeros(agent.data.actions.shape[1])])
        rtg = torch.stack(self.returns_to_go[-k:], dim=1)  # (n, k)
        rtg[:, -1] += self.noisy * cfg.rtg_noise * torch.randn(n, generator=self.generator)
        pad = cfg.context - k
        mask = torch.cat([torch.zeros(pad, dtype=torch.bool), torch.ones(k, dtype=torch.bool)]).expand(n, -1)
        window = (
            F.pad(rtg, (pad, 0)),
            F.pad(history, (0, 0, pad, 0)).expand(n, -1, -1),
            F.pad(actions, (0, 0, pad, 0)).expand(n, -1, -1),
            F.pad(torch.arange(t - k + 1, t + 1), (pad, 0)).expand(n, -1),
            mask,
        )
        candidates = agent.actor(*window)[:, -1]
        choice = 0
        if agent.use_critic:
            q = agent.q_values(agent.critic_target, window[1][:, -1], candidates).min(0).values
            choice = select_candidate(q, cfg.selection, self.generator)
        action = candidates[choice]
        self.actions.append(action)
        return action.numpy()
