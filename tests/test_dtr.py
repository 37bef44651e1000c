"""DTR, the Decision Transformer and IQL (reasonrl/control/dtr.py, dt.py, iql.py): every target, loss and schedule
against hand-computed values on tiny synthetic data (no environment needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reasonrl.control.dt import DecisionTransformer, window_batch
from reasonrl.control.dtr import DTR, DTRConfig, DTRPolicy, k_step_targets, select_candidate
from reasonrl.control.iql import IQL, GaussianPolicy, IQLConfig, expectile_loss
from reasonrl.control.offline_data import from_arrays, training_data
from reasonrl.control.offline_reward import ensemble_reward
from reasonrl.control.schedules import cosine_factor, ramp, soft_update_

TINY = {"context": 4, "embed": 8, "layers": 1, "heads": 2, "batch_size": 6, "critic_hidden": 8, "ema_start": 3}


def _data(episode_lengths=(6, 4, 5), obs_dim=3, act_dim=2, seed=0):
    """A synthetic dataset: episodes of the given lengths, the first terminated, the others truncated."""
    rng = np.random.default_rng(seed)
    n = sum(episode_lengths)
    ends = np.cumsum(episode_lengths) - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[ends[0]] = True
    timeouts[ends[1:]] = True
    arrays = {
        "observations": rng.normal(size=(n, obs_dim)),
        "actions": rng.uniform(-1, 1, (n, act_dim)),
        "rewards": rng.normal(size=n),
        "terminals": terminals,
        "timeouts": timeouts,
    }
    dataset = from_arrays(arrays, "synthetic")
    return dataset, training_data(dataset, dataset.rewards, -np.ones(act_dim), np.ones(act_dim))


def test_ensemble_zscore_matches_hand_values():
    members = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    # member 0: mean 3, std sqrt(3.5); member 1: mean 2, std 2; member 2 is constant and contributes 0
    z0 = (np.array([1.0, 2.0, 3.0, 6.0]) - 3.0) / np.sqrt(3.5)
    z1 = np.array([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(ensemble_reward(members, zscore=True), (z0 + z1) / 3, rtol=1e-6)
    np.testing.assert_allclose(ensemble_reward(members, zscore=False), [1.0, 4 / 3, 3.0, 4.0], rtol=1e-6)


def test_k_step_targets_full_and_left_padded_windows():
    gamma = 0.5
    rewards = torch.tensor([[1.0, 2.0, 3.0, 100.0], [0.0, 0.0, 5.0, 100.0], [0.0, 2.0, 4.0, 100.0]])
    bootstrap = torch.tensor([8.0, 4.0, 8.0])
    y = k_step_targets(rewards, bootstrap, gamma)
    # y_j = Σ_{i=j}^{K-2} γ^{i-j} r_i + γ^{K-1-j} B; the last reward never enters (B stands for it)
    assert y[0].tolist() == [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 8, 2 + 0.5 * 3 + 0.25 * 8, 3 + 0.5 * 8]
    assert y[1, 2].item() == 5 + 0.5 * 4  # two padded steps: only position 2 is trained
    assert y[2, 1:].tolist() == [2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8]  # one padded step


def test_window_batch_left_pads_at_episode_starts():
    _, data = _data()  # episodes at rows 0-5, 6-9, 10-14
    b = window_batch(data, np.array([7, 14]), context=4, rtg_scale=10.0)
    assert b["mask"].tolist() == [[False, False, True, True], [True, True, True, True]]
    np.testing.assert_array_equal(b["obs"][0, 2:].numpy(), data.obs[6:8])
    assert (b["obs"][0, :2] == 0).all() and (b["rewards"][0, :2] == 0).all()
    assert b["timesteps"][0].tolist() == [0, 0, 0, 1] and b["timesteps"][1].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(b["returns_to_go"][1].numpy(), data.returns_to_go[11:15] / 10.0, rtol=1e-6)


def test_returns_to_go_and_episode_index_by_hand():
    arrays = {
        "observations": np.zeros((5, 1)),
        "actions": np.zeros((5, 1)),
        "rewards": np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
        "terminals": np.array([0, 0, 1, 0, 0]),
        "timeouts": np.zeros(5),
    }
    dataset = from_arrays(arrays, "hand")
    data = training_data(dataset, dataset.rewards, np.array([-1.0]), np.array([1.0]))
    assert data.returns_to_go.tolist() == [6.0, 5.0, 3.0, 9.0, 5.0]
    assert data.timestep.tolist() == [0, 1, 2, 0, 1] and data.episode_start.tolist() == [0, 0, 0, 3, 3]
    assert data.episode_returns.tolist() == [6.0, 9.0]


def test_padding_does_not_change_the_unpadded_predictions():
    torch.manual_seed(0)
    model = DecisionTransformer(obs_dim=3, act_dim=2, embed=8, layers=2, heads=2, dropout=0.0, max_timestep=10).eval()
    rtg, obs, act = torch.randn(1, 4), torch.randn(1, 4, 3), torch.randn(1, 4, 2)
    steps, mask = torch.tensor([[0, 0, 0, 1]]), torch.tensor([[False, False, True, True]])
    out = model(rtg, obs, act, steps, mask)
    garbage = torch.randn(1, 2, 3) * 100
    out2 = model(rtg, torch.cat([garbage, obs[:, 2:]], 1), act, steps, mask)
    torch.testing.assert_close(out[:, 2:], out2[:, 2:])
    assert torch.isfinite(out).all()


def test_ramp_and_cosine_schedule():
    assert [ramp(s, 100) for s in (0, 25, 100, 150)] == [0.0, 0.25, 1.0, 1.0]
    assert cosine_factor(0, 100) == 1.0 and cosine_factor(50, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 100) == pytest.approx(0.0)


def test_soft_update_is_polyak_averaging():
    target, source = nn.Linear(2, 1), nn.Linear(2, 1)
    nn.init.zeros_(target.weight), nn.init.ones_(source.weight)
    soft_update_(target, source, 0.005)
    assert torch.allclose(target.weight, torch.full((1, 2), 0.005))


def test_dtr_update_actor_loss_ema_and_polyak():
    _, data = _data()
    torch.manual_seed(0)
    agent = DTR(data, DTRConfig(**TINY, eta=3.0, eta2=1.0, ema_every=2, tau=0.1), total_steps=8, max_timestep=20)
    rng = np.random.default_rng(0)
    for step in range(3):  # before ema_start the EMA actor is a copy of the actor
        m = agent.update(step, rng)
        for p, p_ema in zip(agent.actor.parameters(), agent.actor_ema.parameters()):
            assert torch.equal(p, p_ema)
    assert m["dtr/q_coefficient"] == 2 / 8
    assert m["dtr/actor_loss"] == pytest.approx(m["dtr/bc_loss"] + 3.0 * (2 / 8) * m["dtr/q_loss"], rel=1e-5)
    ema_before = [p.clone() for p in agent.actor_ema.parameters()]
    target_before = [p.clone() for p in agent.critic_target.parameters()]
    agent.update(4, rng)  # step 4: past ema_start and a multiple of ema_every
    for old, p, p_ema in zip(ema_before, agent.actor.parameters(), agent.actor_ema.parameters()):
        torch.testing.assert_close(p_ema, 0.995 * old + 0.005 * p)
    for old, p, p_t in zip(target_before, agent.critic.parameters(), agent.critic_target.parameters()):
        torch.testing.assert_close(p_t, 0.9 * old + 0.1 * p)
    ema_before = [p.clone() for p in agent.actor_ema.parameters()]
    agent.update(5, rng)  # not a multiple of ema_every: unchanged
    assert all(torch.equal(a, b) for a, b in zip(ema_before, agent.actor_ema.parameters()))
    agent.eval().train()  # as around an evaluation: the EMA actor never switches dropout on
    assert agent.actor.training and not agent.actor_ema.training


class ConstantCritic(nn.Module):
    """Both critics answer `value` for every (s, a)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((2, *x.shape[:-1], 1), self.value)


def test_critic_targets_bootstrap_from_q_or_from_a_terminal_reward():
    _, data = _data()  # episode 0 (rows 0-5) ends by termination at row 5
    agent = DTR(data, DTRConfig(**TINY, gamma=0.5), total_steps=8, max_timestep=20)
    agent.critic_target = ConstantCritic(10.0)
    b = window_batch(data, np.array([5, 8]), context=4, rtg_scale=10.0)
    y = agent.critic_targets(b)
    r = data.rewards
    # row 5 terminated: the window 2..5 bootstraps from r_5; the window 5..8 (padded at row 6's start) from Q' = 10
    expected0 = [r[2] + 0.5 * r[3] + 0.25 * r[4] + 0.125 * r[5], r[3] + 0.5 * r[4] + 0.25 * r[5], r[4] + 0.5 * r[5]]
    np.testing.assert_allclose(y[0].numpy(), expected0, rtol=1e-5)
    np.testing.assert_allclose(y[1, 1:].numpy(), [r[6] + 0.5 * r[7] + 0.25 * 10, r[7] + 0.5 * 10], rtol=1e-5)


class RTGActor(nn.Module):
    """Answers each candidate's current return-to-go as its first action dimension."""

    max_timestep = 100

    def forward(self, rtg, obs, actions, timesteps, mask):
        out = torch.zeros(*rtg.shape, 2)
        out[..., 0] = rtg
        return out


class PeakCritic(nn.Module):
    """Q(s, a) = -(a_0 - 0.3)²: highest for the candidate whose first action is 0.3."""

    def forward(self, x):
        q = -((x[..., -2] - 0.3) ** 2)
        return torch.stack([q, q + 1.0]).unsqueeze(-1)


def test_multi_target_inference_picks_the_best_q_candidate():
    _, data = _data()
    agent = DTR(data, DTRConfig(**TINY, copies=1, selection="argmax"), total_steps=8, max_timestep=100)
    agent.actor, agent.critic_target, agent.best_return = RTGActor(), PeakCritic(), 0.4
    policy = DTRPolicy(agent, torch.Generator().manual_seed(0))
    # targets 0.5, 0.75, 1, 1.5, 2 × 0.4 = 0.2, 0.3, 0.4, 0.6, 0.8: the critic peaks at 0.3
    action = policy(np.zeros(3))
    assert action[0] == pytest.approx(0.3)
    # the next step's returns-to-go fall by target / max_timestep: 0.198, 0.297, 0.396, ...
    action = policy(np.zeros(3))
    assert action[0] == pytest.approx(0.297)
    assert len(policy.actions) == 2


def test_softmax_selection_follows_q():
    q = torch.tensor([0.0, 50.0, 0.0])
    assert select_candidate(q, "argmax", None) == 1
    gen = torch.Generator().manual_seed(0)
    assert {select_candidate(q, "softmax", gen) for _ in range(20)} == {1}
    picks = [select_candidate(torch.zeros(3), "softmax", gen) for _ in range(300)]
    assert set(picks) == {0, 1, 2}


def test_dt_without_critic_conditions_on_one_target():
    _, data = _data()
    agent = DTR(data, DTRConfig(**TINY, dt_return_target=1.0), total_steps=4, max_timestep=20, use_critic=False)
    assert set(agent.optimizers()) == {"actor"} and not hasattr(agent, "critic")
    metrics = agent.update(0, np.random.default_rng(0))
    assert "dtr/q_loss" not in metrics and metrics["dtr/actor_loss"] == metrics["dtr/bc_loss"]
    policy = agent.episode_policy(torch.Generator().manual_seed(0))
    assert policy.targets.tolist() == pytest.approx([data.episode_returns.max() / 10.0])
    assert policy(np.zeros(3)).shape == (2,)


def test_expectile_loss_matches_hand_value():
    diff = torch.tensor([-2.0, 1.0, 3.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.3 * 4 + 0.7 * 1 + 0.7 * 9) / 3)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1 + 9) / 3)


def test_iql_policy_log_prob_is_the_gaussian_density():
    torch.manual_seed(0)
    policy = GaussianPolicy(3, 2, 8, 2)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.5, 0.3]))
    obs, action = torch.randn(4, 3), torch.rand(4, 2) * 2 - 1
    expected = torch.distributions.Normal(policy(obs), torch.tensor([-0.5, 0.3]).exp()).log_prob(action).sum(-1)
    torch.testing.assert_close(policy.log_prob(obs, action), expected)


def test_iql_update_targets_and_reward_scale():
    _, data = _data()
    agent = IQL(data, IQLConfig(hidden=8, batch_size=8), total_steps=10)
    spread = data.episode_returns.max() - data.episode_returns.min()
    assert agent.reward_scale == pytest.approx(1000.0 / spread)
    target_before = [p.clone() for p in agent.critic_target.parameters()]
    metrics = agent.update(0, np.random.default_rng(0))
    for old, p, p_t in zip(target_before, agent.critic.parameters(), agent.critic_target.parameters()):
        torch.testing.assert_close(p_t, 0.995 * old + 0.005 * p)
    assert all(np.isfinite(v) for v in metrics.values())


def test_iql_never_samples_a_row_without_a_known_next_observation():
    dataset, _ = _data()
    arrays = {k: getattr(dataset, k) for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    no_next = from_arrays(arrays, "no next_observations")
    data = training_data(no_next, no_next.rewards, -np.ones(2), np.ones(2))
    agent = IQL(data, IQLConfig(hidden=8), total_steps=10)
    assert set(np.flatnonzero(~data.has_next)) == {9, 14}  # the truncated episodes' last rows
    assert not set(agent.rows) & {9, 14}
