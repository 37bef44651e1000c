"""reasonrl.control's pieces against hand-computed values: Bradley-Terry loss, the reward ensemble, relabelling,
B-Pref's teachers, SAC's target and losses, the config grammar, and the CLI without the extra."""

from __future__ import annotations

import copy
import importlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reasonrl.config_types import ConfigError
from reasonrl.control.buffer import ReplayBuffer
from reasonrl.control.config import load_control_config
from reasonrl.control.preferences import (
    METAWORLD17,
    ScriptedTeacher,
    reward_inputs,
    select_queries,
)
from reasonrl.control.reward_model import RewardEnsemble, bradley_terry_loss
from reasonrl.control.sac import SAC, SACConfig, squashed_log_prob


def test_bradley_terry_loss_matches_hand_values():
    r0, r1 = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 2.0, 2.0])
    labels = torch.tensor([1.0, 0.0, 0.5])
    pref1, pref0 = math.log(1 + math.exp(-1)), math.log(1 + math.e)  # -log σ(1), -log σ(-1)
    expected = (pref1 + pref0 + 0.5 * (pref1 + pref0)) / 3
    assert bradley_terry_loss(r0, r1, labels).item() == pytest.approx(expected, rel=1e-6)


def _two_member_ensemble() -> RewardEnsemble:
    """Member 0: r = tanh(2 leaky(x)); member 1: r = tanh(leaky(-x) + 0.5); leaky slope 0.01."""
    model = RewardEnsemble(members=2, in_dim=1, hidden=1, layers=1)
    first, second = model.net.net[0], model.net.net[2]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[[1.0]], [[-1.0]]]))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[[2.0]], [[1.0]]]))
        second.bias.copy_(torch.tensor([[[0.0]], [[0.5]]]))
    return model


def test_reward_ensemble_outputs_match_hand_values():
    model = _two_member_ensemble()
    member0 = [math.tanh(2 * 0.5), math.tanh(2 * 0.25)]  # x = 0.5, 0.25
    member1 = [math.tanh(-0.005 + 0.5), math.tanh(-0.0025 + 0.5)]
    out = model(torch.tensor([[0.5], [0.25]]))
    assert out.shape == (2, 2)
    assert out[0].tolist() == pytest.approx(member0, rel=1e-5)
    assert out[1].tolist() == pytest.approx(member1, rel=1e-5)
    mean = [(a + b) / 2 for a, b in zip(member0, member1)]
    assert model.predict(np.array([[0.5], [0.25]], np.float32)).tolist() == pytest.approx(mean, rel=1e-5)
    # one pair: segment 0 = [0.5, 0.25], segment 1 = [0.25, 0.25]; P_e = σ(R¹_e - R⁰_e)
    seg0, seg1 = np.array([[[0.5], [0.25]]], np.float32), np.array([[[0.25], [0.25]]], np.float32)
    probs = model.preference_probs(seg0, seg1)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert probs[0, 0] == pytest.approx(sig(member0[1] - member0[0]), rel=1e-5)
    assert probs[1, 0] == pytest.approx(sig(member1[1] - member1[0]), rel=1e-5)


def test_reward_ensemble_learns_a_separable_preference():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    seg0, seg1 = rng.normal(size=(64, 5, 2)).astype(np.float32), rng.normal(size=(64, 5, 2)).astype(np.float32)
    labels = (seg1[..., 0].sum(1) > seg0[..., 0].sum(1)).astype(np.float32)  # true reward: the first feature
    model = RewardEnsemble(members=3, in_dim=2, hidden=32, layers=2, lr=1e-2)
    metrics = model.train_epochs(seg0, seg1, labels, epochs=30, batch_size=16, rng=rng)
    assert metrics["reward/train_accuracy"] >= 0.95
    assert metrics["reward/loss"] < 0.3


def test_relabel_changes_every_stored_reward_and_nothing_else():
    rng = np.random.default_rng(1)
    buf = ReplayBuffer(capacity=8, obs_dim=3, act_dim=2)
    for t in range(11):  # wraps: 8 slots hold the last 8 steps
        obs, act = rng.normal(size=3), rng.normal(size=2)
        buf.add(obs, act, -5.0 - t, float(t), obs + 1, t == 10, episode=t // 4)
    before = {k: v.copy() for k, v in buf.state().items()}
    buf.relabel(lambda obs, act: obs.sum(1) + act[:, 0] + 100.0, chunk=3)
    after = buf.state()
    assert np.all(after["reward"] != before["reward"])
    np.testing.assert_allclose(after["reward"], before["obs"].sum(1) + before["action"][:, 0] + 100.0, rtol=1e-6)
    for k in before:
        if k != "reward":
            np.testing.assert_array_equal(after[k], before[k])


def test_segment_starts_stay_inside_one_episode_and_never_cross_the_write_pointer():
    buf = ReplayBuffer(capacity=6, obs_dim=1, act_dim=1)
    for t, ep in enumerate([0, 0, 0, 1, 1, 1, 1, 2]):  # 8 steps into 6 slots: ptr = 2
        buf.add([t], [0], 0.0, 0.0, [t], False, ep)
    # slots hold steps [6, 7, 2, 3, 4, 5] of episodes [1, 2, 0, 1, 1, 1]; slot 5 -> 0 is steps 5, 6 (ring wrap)
    assert sorted(buf.segment_starts(2).tolist()) == [3, 4, 5]
    np.testing.assert_array_equal(buf.segments(np.array([5]), 2)["obs"][0, :, 0], [5, 6])
    one_episode = ReplayBuffer(capacity=6, obs_dim=1, act_dim=1)
    for t in range(8):
        one_episode.add([t], [0], 0.0, 0.0, [t], False, 0)
    # slot 1 (step 7) -> slot 2 (step 2) joins new and old data across the write pointer
    assert sorted(one_episode.segment_starts(2).tolist()) == [0, 2, 3, 4, 5]


REWARDS0 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
REWARDS1 = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.0]])  # returns 1, 0.1, 0 against 1, 0, 3


@pytest.mark.parametrize(
    ("teacher", "kept", "labels"),
    [
        (ScriptedTeacher(), [0, 1, 2], [0.0, 1.0, 0.0]),  # oracle: 1[R¹ > R⁰]; a tie is not a preference for 1
        (ScriptedTeacher(gamma=0.5), [0, 1, 2], [1.0, 1.0, 0.0]),  # myopic: R⁰ = .25, 0, 1.75; R¹ = 1, .1, 0
        (ScriptedTeacher(eps_skip=0.5), [0, 2], [0.0, 0.0]),  # both returns <= 0.5 × scale: skipped
        (ScriptedTeacher(eps_equal=0.5), [0, 1, 2], [0.5, 0.5, 0.0]),  # |R¹ - R⁰| < 0.5: equally preferable
        (ScriptedTeacher(eps_mistake=1.0), [0, 1, 2], [1.0, 0.0, 1.0]),  # every label flipped
    ],
)
def test_scripted_teacher_rules_on_hand_made_segments(teacher, kept, labels):
    keep, y = teacher.label(REWARDS0, REWARDS1, scale=1.0, rng=np.random.default_rng(0))
    assert keep.tolist() == kept
    assert y.tolist() == labels


def test_stochastic_teacher_prefers_with_bradley_terry_probability():
    n = 20_000
    r0, r1 = np.zeros((n, 2)), np.tile([0.5, 0.5], (n, 1))  # R¹ - R⁰ = 1
    _, y = ScriptedTeacher(beta=2.0).label(r0, r1, 1.0, np.random.default_rng(0))
    assert y.mean() == pytest.approx(1 / (1 + math.exp(-2.0)), abs=0.01)


def test_named_teachers_and_unknown_name():
    assert ScriptedTeacher.from_name("mistake").eps_mistake == 0.1
    assert ScriptedTeacher.from_name("oracle") == ScriptedTeacher()
    with pytest.raises(ValueError, match="unknown scripted teacher 'orcale'"):
        ScriptedTeacher.from_name("orcale")


def test_query_selection_by_disagreement_and_entropy():
    probs = np.array([[0.5, 0.9, 0.1, 0.6], [0.5, 0.1, 0.1, 0.6]])  # pair 1: members disagree; pair 0: p = 0.5
    assert select_queries(probs, 1, "disagreement").tolist() == [1]
    assert select_queries(probs, 2, "entropy").tolist() == [0, 1]  # mean p 0.5, 0.5 beat 0.1 and 0.6
    with pytest.raises(ValueError, match="unknown sampling scheme"):
        select_queries(probs, 1, "random")


def test_reward_inputs_slice_metaworld_and_append_actions():
    obs, act = np.arange(39, dtype=np.float32)[None], np.array([[7.0, 8.0, 9.0, 10.0]], np.float32)
    x = reward_inputs(obs, act, METAWORLD17, use_action=False)
    assert x[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 18, 19, 20, 21, 22, 23, 24, 36, 37, 38]
    assert reward_inputs(obs, act, METAWORLD17, use_action=True).shape == (1, 21)


class _FixedActor(nn.Module):
    """π that always acts 0 with log-prob -1 (one parameter, so actor updates still have a gradient)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, obs, deterministic=False):
        return self.p.expand(len(obs), 1), -1.0 + 0 * self.p.expand(len(obs))


class _FixedQ(nn.Module):
    def forward(self, x):
        return torch.tensor([[[3.0], [1.0]], [[2.0], [5.0]]])  # Q1 = (3, 1), Q2 = (2, 5) for the 2 rows


def test_sac_target_alpha_and_critic_losses_on_a_hand_case():
    torch.manual_seed(0)
    agent = SAC(1, 1, SACConfig(hidden=4, layers=1, gamma=0.9, init_alpha=0.5, lr=0.01))
    agent.actor, agent.critic_target = _FixedActor(), _FixedQ()
    agent.actor_optim = torch.optim.Adam(agent.actor.parameters(), lr=0.01)
    batch = {
        "obs": torch.tensor([[0.1], [0.2]]),
        "action": torch.tensor([[0.3], [-0.3]]),
        "reward": torch.tensor([1.0, 2.0]),
        "next_obs": torch.tensor([[0.0], [0.0]]),
        "terminated": torch.tensor([0.0, 1.0]),
    }
    # y = r + γ (1 - d) (min Q' - α log π): 1 + 0.9 (2 + 0.5) = 3.25 and 2 (terminal)
    np.testing.assert_allclose(agent.target(batch["reward"], batch["next_obs"], batch["terminated"]), [3.25, 2.0])
    with torch.no_grad():
        q = agent.q_values(agent.critic, batch["obs"], batch["action"])
    metrics = agent.update(batch)
    # α loss = -log α (log π + target entropy) = -log 0.5 × (-1 - 1); Adam's first step moves log α by -lr
    assert metrics["sac/alpha_loss"] == pytest.approx(2 * math.log(0.5), rel=1e-6)
    alpha = 0.5 * math.exp(-0.01)
    assert metrics["sac/alpha"] == pytest.approx(alpha, rel=1e-5)
    y = torch.tensor([1 + 0.9 * (2 + alpha), 2.0])
    expected = 0.5 * sum(((q_i - y) ** 2).mean() for q_i in q)
    assert metrics["sac/critic_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_sac_polyak_update_and_critic_reset():
    torch.manual_seed(0)
    agent = SAC(2, 1, SACConfig(hidden=8, layers=1, tau=0.25, batch_size=4))
    old_target = copy.deepcopy(agent.critic_target.state_dict())
    batch = {
        "obs": torch.randn(4, 2),
        "action": torch.rand(4, 1) * 2 - 1,
        "reward": torch.randn(4),
        "next_obs": torch.randn(4, 2),
        "terminated": torch.zeros(4),
    }
    agent.update(batch)
    for name, new in agent.critic_target.state_dict().items():
        expected = 0.75 * old_target[name] + 0.25 * agent.critic.state_dict()[name]
        torch.testing.assert_close(new, expected)
    critic_before = copy.deepcopy(agent.critic.state_dict())
    agent.reset_critic()
    for name, fresh in agent.critic.state_dict().items():
        assert not torch.equal(fresh, critic_before[name])
    torch.testing.assert_close(agent.critic_target.state_dict(), agent.critic.state_dict())


def test_squashed_log_prob_matches_change_of_variables():
    mean, std, u = torch.tensor([0.2]), torch.tensor([0.5]), torch.tensor([0.7])
    gauss = torch.distributions.Normal(mean, std).log_prob(u)
    expected = gauss - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)
    torch.testing.assert_close(squashed_log_prob(u, mean, std), expected.sum(-1))


def test_control_config_grammar_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sac:\n  lr: 1e-3\npref:\n  enabled: true\n  teacher:\n    name: myopic\n")
    cfg = load_control_config(path, ["pref.teacher.gamma=0.8", "train.steps=50"])
    assert (cfg.sac.lr, cfg.pref.enabled, cfg.pref.teacher.name, cfg.pref.teacher.gamma) == (1e-3, True, "myopic", 0.8)
    with pytest.raises(ConfigError, match=r"unknown config key 'pref\.segmnt'; did you mean 'pref\.segment'"):
        load_control_config(None, ["pref.segmnt=10"])
    with pytest.raises(ConfigError, match=r"pref\.sampling='random'"):
        load_control_config(None, ["pref.sampling=random"])


def test_cli_control_says_how_to_install_the_extra(monkeypatch, capsys):
    from reasonrl import cli

    real = importlib.import_module

    def no_gymnasium(name, *args, **kwargs):
        if name == "gymnasium":
            raise ImportError("No module named 'gymnasium'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_gymnasium)
    assert cli.main(["control", "train", "train.steps=10"]) == 2
    assert "pip install 'reasonrl[control]'" in capsys.readouterr().err


def test_base_package_imports_without_the_extra():
    code = (
        "import sys; sys.modules['gymnasium'] = sys.modules['mujoco'] = sys.modules['metaworld'] = None\n"
        "import reasonrl.cli, reasonrl.control.loop\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("name", ["pebble_pendulum", "pebble_reach"])
def test_shipped_control_configs_load(name):
    cfg = load_control_config(Path(__file__).parents[1] / "configs" / "control" / f"{name}.yaml")
    assert cfg.pref.enabled and cfg.pref.teacher.name == "oracle"
