"""OPD / POPD / TOPD: the reverse-KL signal and both losses against hand values, horizon schedules, generation that
really stops at the horizon, exact micro-batch accumulation, the teacher checks and the shipped config."""

import json
import math
from pathlib import Path

import pytest
import torch

from reasonrl.algos.opd import (
    OPDConfig,
    horizon_at,
    opd_advantages,
    opd_loss,
    token_stats,
)
from reasonrl.config import ConfigError, load_config
from reasonrl.models import load_model
from reasonrl.rewards import register_reward
from reasonrl.trainer import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
LN2 = math.log(2)


@register_reward("opd_test_digits")
def digits_reward(prompts, completions, **kwargs):
    """A dense reward a random model can earn, so groups have variance and outcome advantages are non-zero."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def logits_of(probs) -> torch.Tensor:
    """Logits [1, C, V] whose softmax is `probs` (rows of probabilities per position)."""
    return torch.tensor(probs, dtype=torch.float32).log().unsqueeze(0)


# Position 0: student (1/2, 1/4, 1/4), teacher (1/4, 1/2, 1/4), sampled token 0.
# Position 1: student (1/4, 1/4, 1/2), teacher (1/4, 1/4, 1/2): the same distribution, sampled token 2.
STUDENT = [[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]
TEACHER = [[0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]
TARGETS = torch.tensor([[0, 2]])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_reverse_kl_signal_on_crafted_logits(temperature):
    # logits scaled by T and sampled at T are the same distributions: every value below must be unchanged
    st = token_stats(temperature * logits_of(STUDENT), temperature * logits_of(TEACHER), TARGETS, temperature)
    k1 = st["logp"] - st["teacher_logp"]
    torch.testing.assert_close(k1, torch.tensor([[LN2, 0.0]], dtype=torch.float32))  # ln(1/2) - ln(1/4)
    # exact KL at position 0: 1/2 ln 2 + 1/4 ln(1/2) + 1/4 ln 1 = ln2 / 4; identical distributions give 0
    torch.testing.assert_close(st["kl"], torch.tensor([[LN2 / 4, 0.0]], dtype=torch.float32))
    torch.testing.assert_close(st["entropy"][0, 0], torch.tensor(1.5 * LN2, dtype=torch.float32))
    assert st["agree"].tolist() == [[0.0, 1.0]]  # argmax 0 vs 1, then 2 vs 2


def test_a_teacher_with_a_padded_vocabulary_is_compared_on_the_students_tokens():
    # the teacher's extra row gets a logit of -inf: its distribution on the shared tokens is unchanged
    padded = torch.cat([logits_of(TEACHER), torch.full((1, 2, 1), -math.inf, dtype=torch.float32)], -1)
    st = token_stats(logits_of(STUDENT), padded, TARGETS)
    torch.testing.assert_close(st["kl"], torch.tensor([[LN2 / 4, 0.0]], dtype=torch.float32))


def test_advantage_is_the_negative_reverse_kl_plus_the_weighted_outcome_advantage():
    k1 = torch.tensor([[LN2, 0.0, -1.0]])
    torch.testing.assert_close(opd_advantages(k1, 1.0), torch.tensor([[-LN2, 0.0, 1.0]]))
    mixed = opd_advantages(k1, 0.5, outcome=torch.tensor([2.0]), outcome_coef=0.25)
    torch.testing.assert_close(mixed, torch.tensor([[-0.5 * LN2 + 0.5, 0.5, 1.0]]))
    assert not opd_advantages(k1.requires_grad_(), 1.0).requires_grad  # the reward is a constant of the loss


def loss_grad(cfg: OPDConfig, mask, outcome=None, temperature: float = 1.0):
    logits = logits_of(STUDENT).requires_grad_()
    totals = {"num_tokens": float(mask.sum()), "num_seqs": 1.0, "max_completion_length": 2.0}
    loss, metrics = opd_loss(logits, logits_of(TEACHER), TARGETS, mask, totals, cfg, temperature, outcome)
    loss.backward()
    return loss, logits.grad[0], metrics


def test_pg_loss_gradient_is_the_advantage_times_the_score():
    # d/dz of -A * log softmax(z)[y] = -A * (onehot(y) - p); A = -(ln 1/2 - ln 1/4) = -ln2 at position 0,
    # A = 0 at position 1 (the models agree there). Token mean over 2 tokens.
    loss, grad, m = loss_grad(OPDConfig(signal="pg"), torch.tensor([[1.0, 1.0]], dtype=torch.float32))
    p0 = torch.tensor(STUDENT[0], dtype=torch.float32)
    advantage = -LN2
    expected0 = -advantage * (torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32) - p0) / 2
    torch.testing.assert_close(grad[0], expected0)
    torch.testing.assert_close(grad[1], torch.zeros(3, dtype=torch.float32))
    assert float(loss.detach()) == pytest.approx(LN2 / 2)  # value of -ratio * A with ratio 1: (ln2 + 0) / 2
    assert m["opd/reverse_kl"] == pytest.approx(LN2 / 2)
    assert m["opd/reverse_kl_exact"] == pytest.approx(LN2 / 8)
    assert m["opd/agreement"] == pytest.approx(0.5)
    assert m["opd/teacher_logprob"] == pytest.approx((math.log(0.25) + math.log(0.5)) / 2)


def test_direct_loss_is_the_exact_reverse_kl_with_its_analytic_gradient():
    # d KL(p || q) / dz = p * (log p - log q - KL): the softmax Jacobian applied to log p - log q + 1
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float32)  # position 1 is padding: no loss, no gradient
    loss, grad, _ = loss_grad(OPDConfig(signal="direct", kl_coef=2.0), mask)
    p, q = torch.tensor(STUDENT[0], dtype=torch.float32), torch.tensor(TEACHER[0], dtype=torch.float32)
    kl = float((p * (p / q).log()).sum())
    assert kl == pytest.approx(LN2 / 4)
    assert float(loss.detach()) == pytest.approx(2.0 * kl)
    torch.testing.assert_close(grad[0], 2.0 * p * ((p / q).log() - kl))
    torch.testing.assert_close(grad[1], torch.zeros(3, dtype=torch.float32))


def test_direct_loss_plus_outcome_adds_the_policy_gradient_of_the_outcome_advantage():
    mask = torch.tensor([[1.0, 1.0]], dtype=torch.float32)
    _, alone, _ = loss_grad(OPDConfig(signal="direct"), mask)
    _, mixed, _ = loss_grad(OPDConfig(signal="direct", outcome_coef=0.5), mask, outcome=torch.tensor([1.5]))
    score = torch.eye(3, dtype=torch.float32)[TARGETS[0]] - torch.tensor(STUDENT, dtype=torch.float32)
    torch.testing.assert_close(mixed - alone, -(0.5 * 1.5) * score / 2)


# ---- horizons ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step,expected", [(1, 16), (5, 16), (6, 24), (10, 24), (11, 32), (31, 64), (500, 64)])
def test_progressive_horizon_grows_by_dh_every_dk_steps_up_to_the_max(step, expected):
    cfg = OPDConfig(horizon="progressive", h0=16, dh=8, dk=5)
    assert horizon_at(cfg, step, 64) == expected  # H0 + dH * floor((step - 1) / dk), capped at T = 64


@pytest.mark.parametrize("fraction,expected", [(0.1, 6), (0.25, 16), (1.0, 64), (0.001, 1)])
def test_truncated_horizon_is_a_fixed_fraction_of_the_max(fraction, expected):
    cfg = OPDConfig(horizon="truncated", fraction=fraction)
    assert [horizon_at(cfg, s, 64) for s in (1, 50, 1000)] == [expected] * 3


def test_full_horizon_is_the_max_completion_length():
    assert horizon_at(OPDConfig(), 7, 64) == 64


@pytest.mark.parametrize(
    "override",
    [
        "algo.horizon=linear",
        "algo.signal=k2",
        "algo.fraction=0",
        "algo.dk=0",
        "algo.h0=0",
        "algo.kl_coef=-1",
        "algo.loss_type=ppo",
    ],
)
def test_invalid_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_config(None, ["algo=opd", override])


def test_presets_and_the_shipped_config():
    assert load_config(CONFIGS / "opd.yaml").algo.horizon == "full"
    popd = load_config(CONFIGS / "opd.yaml", ["algo=popd"]).algo
    topd = load_config(CONFIGS / "opd.yaml", ["algo=topd"]).algo
    assert (popd.horizon, topd.horizon, topd.fraction) == ("progressive", "truncated", 0.1)
    assert load_config(CONFIGS / "opd.yaml", ["algo=topd", "algo.fraction=0.25"]).algo.fraction == 0.25


# ---- on a tiny random student with the shipped teacher (a different size, the same tokenizer) ------------------


def opd_config(quick_config, *overrides):
    return quick_config("algo=opd", "algo.teacher=teacher", *overrides)


def test_truncation_really_bounds_the_generated_tokens(quick_config, tmp_path):
    full = Trainer(opd_config(quick_config), run_dir=tmp_path / "full")
    full.ctx.step = 1
    lengths = full.algo.gather(full.ctx).tensors["completion_mask"].sum(1)
    assert lengths.max() > 3  # untruncated, the random student writes past the horizon below (it seldom ends)
    topd = Trainer(opd_config(quick_config, "algo=topd", "algo.fraction=0.25"), run_dir=tmp_path / "topd")
    topd.ctx.step = 1
    calls = topd.ctx.engine.decode_calls
    batch = topd.algo.gather(topd.ctx)
    assert batch.metrics["opd/horizon"] == 3  # round(0.25 * 12)
    assert batch.tensors["completion_mask"].shape[1] <= 3 and batch.tensors["completion_mask"].sum(1).max() <= 3
    assert batch.metrics["num_tokens"] == float(batch.tensors["completion_mask"].sum()) <= 16 * 3
    assert topd.ctx.engine.decode_calls - calls <= 3  # one prefill + at most 2 decode steps: generation stopped


def test_popd_run_logs_its_growing_horizon_and_the_distillation_metrics(quick_config, tmp_path):
    cfg = opd_config(quick_config, "algo=popd", "algo.h0=2", "algo.dh=3", "algo.dk=1", "train.steps=3")
    Trainer(cfg, run_dir=tmp_path / "popd").train()
    rows = [json.loads(line) for line in (tmp_path / "popd" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["opd/horizon"] for r in steps] == [2, 5, 8]
    for r in steps:
        assert r["completions/max_length"] <= r["opd/horizon"]
        for key in ("opd/reverse_kl", "opd/reverse_kl_exact", "opd/agreement", "num_tokens", "step_time"):
            assert math.isfinite(r[key]), key
        assert r["opd/reverse_kl_exact"] > 0 and 0 <= r["opd/agreement"] <= 1  # a random student vs the teacher


def grads(trainer: Trainer, batch, size: int) -> tuple[list[torch.Tensor], dict[str, float]]:
    trainer.model.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for micro in batch.micro_batches(size):
        loss, metrics = trainer.algo.loss(trainer.ctx, micro)
        loss.backward()
        sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()}
    return [p.grad.clone() for p in trainer.model.parameters()], sums


@pytest.mark.parametrize(
    "signal,loss_type", [("pg", "dapo"), ("direct", "dapo"), ("pg", "grpo"), ("direct", "dr_grpo")]
)
def test_micro_batches_of_2_accumulate_to_the_gradient_of_the_whole_batch(quick_config, tmp_path, signal, loss_type):
    cfg = opd_config(
        quick_config,
        f"algo.signal={signal}",
        f"algo.loss_type={loss_type}",
        "algo.outcome_coef=0.5",
        "rewards.funcs=opd_test_digits:1.0",
        "train.prompts_per_step=2",
        "rollout.max_completion_length=8",
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "acc")
    trainer.ctx.step = 1
    batch = trainer.algo.gather(trainer.ctx)
    assert len(batch) == 8 and batch.tensors["advantages"].abs().sum() > 0  # the outcome term is live too
    whole, whole_m = grads(trainer, batch, 8)
    split, split_m = grads(trainer, batch, 2)
    assert sum(float(g.abs().sum()) for g in whole) > 0
    for a, b in zip(whole, split):  # float32 summation order: tolerance relative to the gradient's scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    for key in whole_m:
        assert split_m[key] == pytest.approx(whole_m[key], rel=1e-5, abs=1e-7), key
    assert all(p.grad is None and not p.requires_grad for p in trainer.algo.teacher.parameters())


def test_a_teacher_with_another_tokenizer_is_refused_before_the_run(quick_config, nano_dir, tmp_path):
    other = tmp_path / "other_teacher"
    model, tok = load_model(str(nano_dir), device="cpu")
    tok.add_tokens(["<extra>"])
    model.save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ValueError, match="different tokenizer"):
        Trainer(quick_config("algo=opd", f"algo.teacher={other}"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_outcome_mixing_needs_groups(quick_config, tmp_path):
    with pytest.raises(ValueError, match="num_generations"):
        Trainer(opd_config(quick_config, "algo.outcome_coef=1", "rollout.num_generations=1"), run_dir=tmp_path / "r")
