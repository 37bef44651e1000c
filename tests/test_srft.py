"""SRFT: each loss term against hand-computed values, the reduction to GRPO, exact accumulation, the CLI path."""

import json
import math
from pathlib import Path

import pytest
import torch

from reasonrl.algos.grpo import GRPO
from reasonrl.algos.srft import (
    SRFT,
    SRFTConfig,
    augmented_group_advantages,
    entropy_bonus,
    entropy_weights,
    offpolicy_term,
    positive_weighted,
    sft_term,
    srft_loss,
)
from reasonrl.cli import main
from reasonrl.config import ConfigError, load_config
from reasonrl.data import DataError
from reasonrl.rewards import register_reward
from reasonrl.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
LN2, LN4 = math.log(2), math.log(4)


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@register_reward("srft_test_digits")
def digits_reward(prompts, completions, **kwargs):
    """A dense reward a random model can earn: the share of digit characters, so groups have variance."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


# ---- the equations on fixed tensors -------------------------------------------------------------------------


def test_defaults_are_the_papers_coefficients():
    cfg = SRFTConfig()
    assert (cfg.sft_coef, cfg.sft_entropy_sign, cfg.rl_coef, cfg.rl_entropy_sign) == (0.5, -1.0, 0.1, 1.0)
    assert (cfg.offpolicy_coef, cfg.offpolicy_shaping, cfg.entropy_coef) == (1.0, 0.0, 0.001)
    assert cfg.scale_rewards == "group"


@pytest.mark.parametrize(
    "override", ["algo.sft_entropy_sign=2", "algo.rl_coef=-0.1", "algo.scale_rewards=std", "algo.loss_type=ppo"]
)
def test_invalid_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_config(None, ["algo=srft", override])


def test_entropy_weights_follow_the_configured_sign_and_carry_no_gradient():
    h = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    paper = entropy_weights(h, 0.5, -1.0)  # w_SFT of the paper: shrinks as entropy grows
    torch.testing.assert_close(paper, torch.tensor([0.5, 0.5 * math.exp(-1), 0.5 * math.exp(-2)]))
    code = entropy_weights(h, 0.5, 1.0)  # the released code's exp(+H)
    torch.testing.assert_close(code, torch.tensor([0.5, 0.5 * math.e, 0.5 * math.exp(2)]))
    torch.testing.assert_close(entropy_weights(h, 1.0, 0.0), torch.ones(3))  # constant weight
    assert not paper.requires_grad and not code.requires_grad  # sg(.)


def test_sft_term_is_weighted_nll_over_the_batch_demo_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w = torch.tensor([[0.2, 0.4, 9.0]])
    loss = sft_term(logp, w, mask, num_tokens=4.0)  # 4: the demo tokens of the whole batch, not this row's 2
    assert float(loss.detach()) == pytest.approx((0.2 * LN2 + 0.4 * LN4) / 4)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.05, -0.1, 0.0]]))


@pytest.mark.parametrize("shaping", [0.0, 0.1])
def test_offpolicy_term_uses_pi_beta_one_and_optional_shaping(shaping):
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0]])).requires_grad_()
    logp_pad = torch.where(torch.tensor([[True, True, False]]), logp, torch.tensor(float("inf")))  # garbage padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = offpolicy_term(logp_pad, torch.tensor([0.8]), mask, num_tokens=2.0, shaping=shaping)
    p = torch.tensor([0.5, 0.25])
    f = p / (p + shaping) if shaping else p
    assert float(loss.detach()) == pytest.approx(float(-0.8 * f.sum() / 2))
    loss.backward()
    # d/dlogp of -A f(p): -A p (paper) and -A gamma p / (p + gamma)^2 (shaping), over 2 tokens
    df = shaping * p / (p + shaping) ** 2 if shaping else p
    torch.testing.assert_close(logp.grad, torch.cat([-0.8 * df / 2, torch.zeros(1)]).unsqueeze(0))


def test_positive_weighted_scales_only_positive_advantages():
    adv = torch.tensor([1.0, -0.5, 0.0])
    w = torch.tensor([[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])
    expected = torch.tensor([[2.0, 3.0], [-0.5, -0.5], [0.0, 0.0]])
    torch.testing.assert_close(positive_weighted(adv, w), expected)


def test_entropy_bonus_rewards_entropy_and_has_its_gradient():
    h = torch.tensor([[1.0, 2.0], [3.0, 99.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss = entropy_bonus(h, mask, num_tokens=3.0, coef=0.01)
    assert float(loss.detach()) == pytest.approx(-0.01 * 6 / 3)
    loss.backward()
    torch.testing.assert_close(h.grad, torch.tensor([[-0.01 / 3, -0.01 / 3], [-0.01 / 3, 0.0]]))


def test_augmented_group_puts_the_demonstration_in_the_baseline():
    rewards, groups = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0]), torch.tensor([0, 0, 0, 1, 1, 1])
    adv = augmented_group_advantages(rewards, groups, torch.tensor([1.0, 1.0]), "none")
    # group 0: {0, 1, 0, demo 1}, mean 0.5; group 1: all correct, nothing to learn
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.5, 0.0]))
    scaled = augmented_group_advantages(rewards, groups, torch.tensor([1.0, 1.0]), "group")
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of {0, 1, 0, 1}
    assert float(scaled[0]) == pytest.approx(-0.5 / (std + 1e-4))
    assert float(scaled[6]) == pytest.approx(0.5 / (std + 1e-4))


def test_srft_loss_is_the_sum_of_the_hand_computed_terms():
    # rows: rollout with A = +1 (2 tokens), rollout with A = -1 (1 token), demonstration with A = 0.5 (2 tokens)
    logp = torch.log(t64([[0.5, 0.5], [0.25, 0.9], [0.5, 0.25]]))
    h = t64([[1.0, 2.0], [0.5, 7.0], [1.0, 0.0]])
    t = {
        "completion_mask": t64([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]),
        "demo_mask": t64([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
        "advantages": t64([1.0, -1.0, 0.5]),
    }
    totals = {
        "num_tokens": 3.0,
        "num_seqs": 2.0,
        "max_completion_length": 2.0,
        "demo_tokens": 2.0,
        "positive_tokens": 2.0,
        "all_tokens": 5.0,
    }
    loss, m = srft_loss(logp, h, t, totals, SRFTConfig())
    sft = (0.5 * math.exp(-1) * LN2 + 0.5 * math.exp(0) * LN4) / 2  # w_SFT = 0.5 exp(-H) on the demo tokens
    off = -0.5 * (0.5 + 0.25) / 2  # -A_demo * pi
    on = -(1 * 0.1 * math.e + 1 * 0.1 * math.exp(2) - 1) / 3  # ratio 1: -A_t, A_t = A * 0.1 exp(H) where A > 0
    bonus = -0.001 * (1 + 2 + 0.5 + 1 + 0) / 5
    assert m["srft/sft_loss"] == pytest.approx(sft)
    assert m["srft/offpolicy_loss"] == pytest.approx(off)
    assert m["srft/onpolicy_loss"] == pytest.approx(on)
    assert m["srft/entropy_loss"] == pytest.approx(bonus)
    assert float(loss) == pytest.approx(sft + off + on + bonus)
    assert m["srft/sft_weight"] == pytest.approx(0.5 * (math.exp(-1) + 1) / 2)
    assert m["srft/rl_weight"] == pytest.approx(0.1 * (math.e + math.exp(2)) / 2)
    assert m["entropy"] == pytest.approx((1 + 2 + 0.5) / 3) and m["srft/demo_entropy"] == pytest.approx(0.5)
    assert m["srft/demo_nll"] == pytest.approx((LN2 + LN4) / 2)


def test_bnpo_weighs_the_on_policy_term_by_the_share_of_rollouts_not_of_all_rows():
    # The batch above as one micro-batch: 2 rollout rows of num_seqs 2 give bnpo weight 1, so its on-policy term is
    # the rollout token mean, dapo's value; counting the demonstration row would scale it by 3/2.
    logp = torch.log(t64([[0.5, 0.5], [0.25, 0.9], [0.5, 0.25]]))
    h = t64([[1.0, 2.0], [0.5, 7.0], [1.0, 0.0]])
    t = {
        "completion_mask": t64([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]),
        "demo_mask": t64([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
        "advantages": t64([1.0, -1.0, 0.5]),
    }
    totals = {
        "num_tokens": 3.0,
        "num_seqs": 2.0,
        "max_completion_length": 2.0,
        "demo_tokens": 2.0,
        "positive_tokens": 2.0,
        "all_tokens": 5.0,
    }
    _, m = srft_loss(logp, h, t, totals, SRFTConfig(loss_type="bnpo"))
    assert m["srft/onpolicy_loss"] == pytest.approx(-(1 * 0.1 * math.e + 1 * 0.1 * math.exp(2) - 1) / 3)


# ---- on a tiny random model ---------------------------------------------------------------------------------


def grads(trainer: Trainer, algo, batch, size: int) -> tuple[list[torch.Tensor], dict[str, float]]:
    trainer.model.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for micro in batch.micro_batches(size):
        loss, metrics = algo.loss(trainer.ctx, micro)
        loss.backward()
        sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()}
    return [p.grad.clone() for p in trainer.model.parameters()], sums


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_without_sft_and_offpolicy_terms_srft_is_the_core_grpo_loss(quick_config, tmp_path, loss_type):
    common = ("rewards.funcs=srft_test_digits:1.0", "train.prompts_per_step=2", f"algo.loss_type={loss_type}")
    cfg = quick_config(
        "algo=srft",
        *common,
        "algo.sft_coef=0",
        "algo.offpolicy_coef=0",
        "algo.rl_coef=1",
        "algo.rl_entropy_sign=0",
        "algo.entropy_coef=0",
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "srft")
    batch = trainer.algo.gather(trainer.ctx)
    assert len(batch) == 2 * 4 + 2 and batch.tensors["demo_mask"].sum() > 0
    assert batch.tensors["advantages"][:8].abs().sum() > 0
    grpo = GRPO(quick_config("algo=grpo", *common))
    srft_grads, srft_m = grads(trainer, trainer.algo, batch, 16)
    grpo_grads, grpo_m = grads(trainer, grpo, batch, 16)
    loss_srft = float(trainer.algo.loss(trainer.ctx, batch)[0].detach())
    loss_grpo = float(grpo.loss(trainer.ctx, batch)[0].detach())
    assert loss_srft == pytest.approx(loss_grpo, rel=1e-6, abs=1e-9)
    assert srft_m["entropy"] == pytest.approx(grpo_m["entropy"])
    for a, b in zip(srft_grads, grpo_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # and with the paper's coefficients the demonstration terms do change the loss
    paper = SRFT(quick_config("algo=srft", *common))
    assert float(paper.loss(trainer.ctx, batch)[0].detach()) != pytest.approx(loss_grpo, rel=1e-3)


@pytest.mark.parametrize("sign", ["-1", "1"])
def test_gradient_accumulation_micro_batches_of_2_equal_the_whole_batch(quick_config, tmp_path, sign):
    cfg = quick_config(
        "algo=srft",
        "rewards.funcs=srft_test_digits:1.0",
        "train.prompts_per_step=3",
        f"algo.sft_entropy_sign={sign}",
        "algo.offpolicy_shaping=0.1",
        "algo.entropy_coef=0.01",
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "acc")
    batch = trainer.algo.gather(trainer.ctx)  # 12 rollouts, then 3 demonstrations: micro-batches split both kinds
    assert sum(bool(m.tensors["demo_mask"].sum() > 0) for m in batch.micro_batches(2)) == 2
    whole, whole_m = grads(trainer, trainer.algo, batch, 16)
    split, split_m = grads(trainer, trainer.algo, batch, 2)
    assert sum(g.abs().sum() for g in whole) > 0
    for a, b in zip(whole, split):  # float32 summation order: tolerance relative to the gradient's scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    for key in (
        "srft/sft_loss",
        "srft/offpolicy_loss",
        "srft/onpolicy_loss",
        "srft/sft_weight",
        "srft/rl_weight",
        "entropy",
    ):
        assert split_m[key] == pytest.approx(whole_m[key], rel=1e-5, abs=1e-7), key


def test_an_example_without_a_solution_is_a_data_error(quick_config, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"prompt": "Compute 1+1.", "answer": "2"}) + "\n")
    trainer = Trainer(quick_config("algo=srft", f"data.train={data}", f"data.eval={data}"), run_dir=tmp_path / "r")
    with pytest.raises(DataError, match="'solution'"):
        trainer.algo.gather(trainer.ctx)


def test_cli_train_algo_srft_runs_and_logs_each_term(nano_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        "algo=srft",
        f"model.path={nano_dir}",
        "--output-dir",
        str(run),
        "rollout.num_generations=2",
        "rollout.max_completion_length=8",
        "train.prompts_per_step=2",
        "train.steps=2",
        "data.eval_n=2",
        "--quiet",
    ]
    assert main(args) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]
    assert json.loads(summary)["run_dir"] == str(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in (
        "srft/sft_loss",
        "srft/offpolicy_loss",
        "srft/onpolicy_loss",
        "srft/sft_weight",
        "srft/rl_weight",
        "entropy",
        "srft/demo_reward",
        "reward",
    ):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert steps[0]["srft/demo_reward"] == 1.0  # the world's step-by-step demonstrations are correct


@pytest.mark.parametrize("name", ["srft.yaml", "srft_baseline_sft.yaml", "srft_baseline_grpo.yaml"])
def test_shipped_srft_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.algo.name == {"srft.yaml": "srft", "srft_baseline_sft.yaml": "sft"}.get(name, "grpo")


def test_the_sft_term_teaches_the_demonstrations_in_30_steps(quick_config, tmp_path):
    """Step-counted: with the released code's exp(+H) weight, a random model's NLL of the demonstrations falls.
    (With the paper's exp(-H) the weight at a random model's entropy is ~0.5/321, and it barely moves: docs/srft.md.)"""
    cfg = quick_config(
        "algo=srft",
        "algo.sft_entropy_sign=1",
        "rollout.num_generations=2",
        "data.levels=[1]",
        "rollout.max_completion_length=8",
        "train.prompts_per_step=8",
        "train.steps=30",
        "optim.lr=3e-3",
    )
    Trainer(cfg, run_dir=tmp_path / "learn").train()
    rows = [json.loads(line) for line in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    nll = [r["srft/demo_nll"] for r in rows if "loss" in r]
    assert len(nll) == 30 and sum(nll[-3:]) / 3 < 0.5 * sum(nll[:3]) / 3
