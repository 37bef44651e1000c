"""GRPO-family math against values worked out by hand (in the comments), and accumulation exactness."""

from __future__ import annotations

import math

import pytest
import torch

from reasonrl.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    zero_variance_groups,
)
from reasonrl.algos.losses import (
    KL_ESTIMATORS,
    LOSS_TYPES,
    kl_k3,
    overlong_mask,
    policy_loss,
    sampler_mismatch,
    truncated_is_weights,
)
from reasonrl.modeling.logprobs import token_entropy, token_logprobs

EPS = 1e-4
# Two interleaved groups of 3: group 7 has rewards [0, 2, 4], group 3 has [1, 1, 4]; both means are 2.
REWARDS = torch.tensor([0.0, 2.0, 1.0, 4.0, 1.0, 4.0])
GROUPS = torch.tensor([7, 7, 3, 7, 3, 3])
# Deviations from the group mean, row order: [-2, 0, -1, 2, -1, 2].
# Unbiased group std: group 7: sqrt((4 + 0 + 4) / 2) = 2; group 3: sqrt((1 + 1 + 4) / 2) = sqrt(3).
S3 = math.sqrt(3)


def close(actual: torch.Tensor, expected: list[float] | float, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ---- advantage estimators -----------------------------------------------------------------------------


def test_registry_holds_the_estimators() -> None:
    assert {"grpo", "rloo", "reinforce_pp"} <= set(ADVANTAGE_ESTIMATORS)


def test_grpo_group_scaling_uses_unbiased_group_std() -> None:
    # Population std would give group 7 sqrt(8/3) = 1.633 and +-1.22; the unbiased std 2 gives +-1.
    expected = [-2 / (2 + EPS), 0.0, -1 / (S3 + EPS), 2 / (2 + EPS), -1 / (S3 + EPS), 2 / (S3 + EPS)]
    close(grpo_advantages(REWARDS, GROUPS, "group"), expected)


def test_grpo_batch_scaling_divides_by_the_batch_std_of_rewards() -> None:
    # Batch mean 2; squared deviations 4 + 0 + 1 + 4 + 1 + 4 = 14; unbiased var 14 / 5 = 2.8.
    s = math.sqrt(2.8)
    close(grpo_advantages(REWARDS, GROUPS, "batch"), [d / (s + EPS) for d in [-2, 0, -1, 2, -1, 2]])


def test_grpo_without_scaling_is_dr_grpo_mean_centring() -> None:
    close(grpo_advantages(REWARDS, GROUPS, "none"), [-2.0, 0.0, -1.0, 2.0, -1.0, 2.0])


def test_grpo_zero_variance_group_gets_zero_advantage() -> None:
    # [5, 5, 5]: deviations 0, std 0 -> 0 / (0 + eps) = 0.
    close(grpo_advantages(torch.tensor([5.0, 5.0, 5.0]), torch.tensor([0, 0, 0])), [0.0, 0.0, 0.0])


def test_unknown_scale_rewards_is_an_error() -> None:
    with pytest.raises(ValueError, match="group"):
        grpo_advantages(REWARDS, GROUPS, "std")


def test_rloo_subtracts_the_mean_of_the_others() -> None:
    # Group 7 [0, 2, 4]: 0 - 3 = -3, 2 - 2 = 0, 4 - 1 = 3. Group 3 [1, 1, 4]: 1 - 2.5, 1 - 2.5, 4 - 1.
    close(rloo_advantages(REWARDS, GROUPS, "none"), [-3.0, 0.0, -1.5, 3.0, -1.5, 3.0])
    expected = [-3 / (2 + EPS), 0.0, -1.5 / (S3 + EPS), 3 / (2 + EPS), -1.5 / (S3 + EPS), 3 / (S3 + EPS)]
    close(rloo_advantages(REWARDS, GROUPS, "group"), expected)


def test_rloo_singleton_group_gets_zero() -> None:
    # Row 2 is alone in group 1: no other sample to form a baseline.
    close(rloo_advantages(torch.tensor([0.0, 1.0, 5.0]), torch.tensor([0, 0, 1]), "none"), [-1.0, 1.0, 0.0])


def test_reinforce_pp_whitens_group_centred_rewards_over_the_batch() -> None:
    # Groups [0, 2] and [10, 12]: x = [-1, 1, -1, 1], batch mean 0, unbiased std sqrt(4 / 3).
    # (GRPO's "batch" would divide by the std of the raw rewards instead: sqrt(104 / 3).)
    rewards, groups = torch.tensor([0.0, 2.0, 10.0, 12.0]), torch.tensor([0, 0, 1, 1])
    s = math.sqrt(4 / 3)
    close(reinforce_pp_advantages(rewards, groups), [-1 / (s + EPS), 1 / (s + EPS), -1 / (s + EPS), 1 / (s + EPS)])
    assert not torch.allclose(grpo_advantages(rewards, groups, "batch"), reinforce_pp_advantages(rewards, groups))


# One group [1, NaN, 0, 2]: valid rewards [1, 0, 2], mean 1, unbiased std sqrt((0 + 1 + 1) / 2) = 1.
NAN_REWARDS = torch.tensor([1.0, float("nan"), 0.0, 2.0])
NAN_GROUPS = torch.tensor([0, 0, 0, 0])


@pytest.mark.parametrize(
    ("name", "scale", "expected"),
    [
        ("grpo", "group", [0.0, 0.0, -1 / (1 + EPS), 1 / (1 + EPS)]),
        ("grpo", "batch", [0.0, 0.0, -1 / (1 + EPS), 1 / (1 + EPS)]),
        ("grpo", "none", [0.0, 0.0, -1.0, 1.0]),
        # Leave-one-out over the three valid rewards: 1 - (0 + 2) / 2, 0 - 3 / 2, 2 - 1 / 2.
        ("rloo", "none", [0.0, 0.0, -1.5, 1.5]),
        # x = [0, -1, 1] over valid rows, std 1.
        ("reinforce_pp", "group", [0.0, 0.0, -1 / (1 + EPS), 1 / (1 + EPS)]),
    ],
)
def test_nan_rewards_are_left_out_and_get_zero(name: str, scale: str, expected: list[float]) -> None:
    close(ADVANTAGE_ESTIMATORS[name](NAN_REWARDS, NAN_GROUPS, scale), expected)


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp"])
def test_all_nan_group_gives_finite_zeros(name: str) -> None:
    rewards = torch.tensor([float("nan"), float("nan"), 1.0, 0.0])
    adv = ADVANTAGE_ESTIMATORS[name](rewards, torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(adv).all() and adv[:2].eq(0).all()


def test_zero_variance_groups_flags_groups_without_signal() -> None:
    nan = float("nan")
    # Groups: 0 all 1; 1 mixed; 2 equal apart from a NaN; 3 all NaN; 4 equal non-dyadic floats.
    rewards = torch.tensor([1.0, 1, 1, 0, 1, 0, 2, nan, 2, nan, nan, 0.1, 0.1, 0.1])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4])
    expected = [True] * 3 + [False] * 3 + [True] * 8
    assert zero_variance_groups(rewards, groups).tolist() == expected


# ---- log-probs, entropy, KL, masks ---------------------------------------------------------------------


def test_token_logprobs_match_log_softmax_at_temperature() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    targets = torch.randint(0, 7, (2, 3))
    ours = token_logprobs(logits, targets, temperature=0.7)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_entropy_of_uniform_is_log_v_and_of_a_known_distribution() -> None:
    close(token_entropy(torch.full((1, 2, 8), 3.0), temperature=0.5), [[math.log(8)] * 2])
    # Logits [0, 2 ln 3] at T = 2 -> p = [1/4, 3/4]; H = 1/4 ln 4 + 3/4 ln(4/3) = 0.5623351.
    logits = torch.tensor([[[0.0, 2 * math.log(3)]]])
    close(token_entropy(logits, temperature=2.0), [[0.25 * math.log(4) + 0.75 * math.log(4 / 3)]])


def test_k3_kl_value() -> None:
    # pi = 1/2, pi_ref = 1/4: ratio 1/2 -> 1/2 - ln(1/2) - 1 = 0.1931472; equal policies -> 0.
    logp, ref = torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0])
    close(kl_k3(logp, ref), [0.5 + math.log(2) - 1, 0.0])


def test_overlong_mask_zeroes_truncated_rows() -> None:
    out = overlong_mask(torch.tensor([True, False]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert out.tolist() == [[1.0, 1.0], [0.0, 0.0]]


# ---- policy losses --------------------------------------------------------------------------------------

# Row 0 has 3 tokens with A = 1, row 1 has 2 tokens with A = -2. At ratio 1 each token's loss is -A.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])
TOTALS = {"num_seqs": 2, "num_tokens": 5, "max_completion_length": 4}


def loss_and_grad(log_ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, **kw) -> tuple:
    """Loss, d loss / d logp and metrics at logp = old_logp + log_ratio."""
    old = torch.full_like(log_ratio, -1.0)
    logp = (old + log_ratio).requires_grad_(True)
    loss, metrics = policy_loss(logp, old, adv, mask, **kw)
    loss.backward()
    return loss.detach(), logp.grad, metrics


@pytest.mark.parametrize(
    ("loss_type", "value", "grad"),
    [
        # Row means -1 and 2, summed, over 2 sequences: 0.5. Gradient -A / |o_i| / 2.
        ("grpo", 0.5, [[-1 / 6] * 3, [0.5, 0.5, 0.0]]),
        # Token sum -3 + 4 = 1 over 2 * 4: 0.125. Gradient -A / 8.
        ("dr_grpo", 0.125, [[-1 / 8] * 3, [0.25, 0.25, 0.0]]),
        # Token sum 1 over 5 tokens. Gradient -A / 5.
        ("dapo", 0.2, [[-0.2] * 3, [0.4, 0.4, 0.0]]),
        ("bnpo", 0.2, [[-0.2] * 3, [0.4, 0.4, 0.0]]),
        # s_i = 1; the sequence mean gives GRPO's value and gradient.
        ("gspo", 0.5, [[-1 / 6] * 3, [0.5, 0.5, 0.0]]),
    ],
)
def test_loss_value_and_gradient_at_ratio_one(loss_type: str, value: float, grad: list) -> None:
    loss, g, metrics = loss_and_grad(torch.zeros(2, 3), ADV, MASK, loss_type=loss_type, totals=TOTALS)
    close(loss, value)
    close(g, grad)
    assert all(metrics[f"clip_ratio/{k}_mean"] == 0 for k in ("low", "high", "region"))


def test_bnpo_weighs_the_micro_batch_token_mean_by_its_share_of_rows() -> None:
    # As if these 2 rows were a quarter of an 8-row, 20-token batch: bnpo takes this micro-batch's own token mean
    # (1 / 5) times 2 / 8, where dapo divides by the batch's 20 tokens.
    totals = {**TOTALS, "num_seqs": 8, "num_tokens": 20}
    loss, g, _ = loss_and_grad(torch.zeros(2, 3), ADV, MASK, loss_type="bnpo", totals=totals)
    close(loss, 1 / 5 * 2 / 8)
    close(g, [[-1 / 20] * 3, [0.1, 0.1, 0.0]])  # -A / 5 tokens * 1/4
    close(loss_and_grad(torch.zeros(2, 3), ADV, MASK, loss_type="dapo", totals=totals)[0], 1 / 20)


def test_clipping_zeroes_the_gradient_where_the_bound_binds() -> None:
    # One token per row, epsilon 0.2, dapo over 4 tokens:
    #   ratio 1.5, A +1: min(1.5, 1.2) = 1.2 clipped (high)  loss -1.2  grad 0
    #   ratio 0.5, A +1: min(0.5, 0.8) = 0.5 unclipped       loss -0.5  grad -A r / 4 = -0.125
    #   ratio 1.5, A -1: min(-1.5, -1.2) = -1.5 unclipped    loss  1.5  grad  0.375
    #   ratio 0.5, A -1: min(-0.5, -0.8) = -0.8 clipped (low) loss  0.8  grad 0
    log_ratio = torch.tensor([[math.log(1.5)], [math.log(0.5)], [math.log(1.5)], [math.log(0.5)]])
    adv, mask = torch.tensor([1.0, 1.0, -1.0, -1.0]), torch.ones(4, 1)
    totals = {"num_seqs": 4, "num_tokens": 4, "max_completion_length": 1}
    loss, g, m = loss_and_grad(log_ratio, adv, mask, loss_type="dapo", totals=totals)
    close(loss, (-1.2 - 0.5 + 1.5 + 0.8) / 4)
    close(g, [[0.0], [-0.125], [0.375], [0.0]])
    close(m["clip_ratio/low_mean"], 0.25)
    close(m["clip_ratio/high_mean"], 0.25)
    close(m["clip_ratio/region_mean"], 0.5)


def test_clip_higher_widens_only_the_upper_bound() -> None:
    # Ratio 1.25 with A +1 and ratio 0.75 with A -1 (dapo, 2 tokens).
    # Symmetric 0.2: both clipped: losses -1.2 and 0.8, no gradient.
    # epsilon_high 0.28: 1.25 < 1.28 passes: loss -1.25, grad -1.25 / 2; the low side is unchanged.
    log_ratio = torch.tensor([[math.log(1.25)], [math.log(0.75)]])
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 1)
    totals = {"num_seqs": 2, "num_tokens": 2, "max_completion_length": 1}
    loss, g, _ = loss_and_grad(log_ratio, adv, mask, loss_type="dapo", totals=totals)
    close(loss, (-1.2 + 0.8) / 2)
    close(g, [[0.0], [0.0]])
    loss, g, m = loss_and_grad(log_ratio, adv, mask, loss_type="dapo", totals=totals, epsilon_high=0.28)
    close(loss, (-1.25 + 0.8) / 2)
    close(g, [[-0.625], [0.0]])
    close(m["clip_ratio/high_mean"], 0.0)
    close(m["clip_ratio/low_mean"], 0.5)


def test_gspo_clips_and_scales_by_the_sequence_ratio() -> None:
    # Row 0: log-ratios [0.1, 0.2, 0.3] -> s = e^0.2 = 1.2214 > 1.2 with A = 1: clipped, loss -1.2, grad 0.
    # Row 1: log-ratios [0.4, -0.2] -> s = e^0.1 = 1.1052 with A = -2: loss 2 e^0.1,
    #   grad -A s / |o_1| / 2 = e^0.1 / 2 on each of its tokens. Loss (-1.2 + 2 e^0.1) / 2.
    log_ratio = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.2, 9.0]])
    loss, g, m = loss_and_grad(log_ratio, ADV, MASK, loss_type="gspo", totals=TOTALS)
    e = math.exp(0.1)
    close(loss, (-1.2 + 2 * e) / 2)
    close(g, [[0.0] * 3, [e / 2, e / 2, 0.0]])
    close(m["clip_ratio/high_mean"], 3 / 5)  # the 3 tokens of row 0


def test_kl_penalty_value_gradient_and_metric() -> None:
    # pi = 1/2, pi_ref = 1/4, A = 0: loss = beta * k3 = 0.1 * 0.1931472; d k3 / d logp = 1 - pi_ref / pi = 0.5.
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    totals = {"num_seqs": 1, "num_tokens": 1, "max_completion_length": 1}
    k3 = 0.5 + math.log(2) - 1
    loss, m = policy_loss(
        logp, logp.detach(), torch.zeros(1), torch.ones(1, 1), loss_type="dapo", totals=totals, beta=0.1, ref_logp=ref
    )
    loss.backward()
    close(loss, 0.1 * k3)
    close(logp.grad, [[0.05]])
    close(m["kl"], k3)
    loss, m = policy_loss(
        logp, logp.detach(), torch.zeros(1), torch.ones(1, 1), loss_type="dapo", totals=totals, ref_logp=ref
    )
    close(loss, 0.0)  # beta 0: KL is reported, not optimised
    close(m["kl"], k3)


def test_truncated_importance_weights_and_mismatch_by_hand() -> None:
    # Trainer vs sampler log-probs on 3 tokens (the third is padding): ratios e^0.5 = 1.6487, e^-1 = 0.3679.
    train = torch.tensor([[-1.0, -2.0, 5.0]])
    sampler = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    close(truncated_is_weights(train, sampler, cap=2.0)[:, :2], [[math.exp(0.5), math.exp(-1.0)]])
    close(truncated_is_weights(train, sampler, cap=1.5)[:, :2], [[1.5, math.exp(-1.0)]])  # the cap binds
    m = sampler_mismatch(train, sampler, mask, num_tokens=2.0)
    close(m["rollout/logprob_abs_diff"], (0.5 + 1.0) / 2)
    # k3 = e^d - d - 1 for d = 0.5 and -1: 0.1487213 + 0.3678794, averaged over the 2 real tokens.
    close(m["rollout/mismatch_kl"], ((math.exp(0.5) - 1.5) + (math.exp(-1.0) + 1 - 1)) / 2)


def test_importance_weights_scale_each_tokens_surrogate() -> None:
    # At ratio 1 the dapo loss is -sum_t w_t A / num_tokens: with A = 2, w = [1.5, 0.25]: -(3 + 0.5) / 2 = -1.75,
    # and d loss / d logp_t = -w_t A / 2 = [-1.5, -0.25].
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    totals = {"num_seqs": 1, "num_tokens": 2, "max_completion_length": 2}
    loss, _ = policy_loss(
        logp,
        logp.detach(),
        torch.tensor([2.0]),
        torch.ones(1, 2),
        loss_type="dapo",
        totals=totals,
        is_weights=torch.tensor([[1.5, 0.25]]),
    )
    loss.backward()
    close(loss, -1.75)
    close(logp.grad, [[-1.5, -0.25]])
    plain, _ = policy_loss(
        logp,
        logp.detach(),
        torch.tensor([2.0]),
        torch.ones(1, 2),
        loss_type="dapo",
        totals=totals,
        is_weights=torch.ones(1, 2),
    )
    close(plain, -2.0)  # weights of 1 are the uncorrected loss


def test_k3_is_weighs_the_kl_by_the_importance_ratio_with_its_gradient() -> None:
    # pi = 1/2, pi_ref = 1/4, A = 0 (the surrogate adds nothing), beta 0.1, dapo over 1 token.
    # k3 = 1/2 + ln 2 - 1; d k3 / d logp = 1 - pi_ref / pi = 1/2. With r = pi / pi_old:
    #   value r k3,  d (r k3) / d logp = r k3 + r / 2 = r ln 2.
    k3 = 0.5 + math.log(2) - 1
    ref, totals = torch.tensor([[math.log(0.25)]]), {"num_seqs": 1, "num_tokens": 1, "max_completion_length": 1}
    for old, r in ((None, 1.0), (math.log(0.4), 1.25)):  # on-policy (old = sg(logp)), then pi_old = 0.4
        logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
        old_logp = logp.detach() if old is None else torch.tensor([[old]])
        loss, m = policy_loss(
            logp,
            old_logp,
            torch.zeros(1),
            torch.ones(1, 1),
            loss_type="dapo",
            totals=totals,
            beta=0.1,
            ref_logp=ref,
            kl_estimator="k3_is",
        )
        loss.backward()
        close(loss, 0.1 * r * k3)
        close(logp.grad, [[0.1 * r * math.log(2)]])  # plain k3 would give 0.1 * 0.5 on-policy
        close(m["kl"], r * k3)


def test_k3_is_under_gspo_uses_the_sequence_ratio_as_trl_does() -> None:
    # One row of 2 tokens, A = 0, beta 0.1, sequence mean over 1 row. pi = [1/2, 1/2], pi_ref = [1/4, 1/2]:
    # k3 = [ln 2 - 1/2, 0], d k3 / d logp = [1/2, 0]. Log-ratios [0.1, 0.3]: s = exp(mean) = e^0.2, ds/dlogp_t = s / 2.
    #   loss = 0.1 * s * (k3_1 + k3_2) / 2,  d loss / d logp_t = 0.05 * (s * k3'_t + s / 2 * (k3_1 + k3_2)).
    logp = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_(True)
    old = logp.detach() - torch.tensor([[0.1, 0.3]])
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    totals = {"num_seqs": 1, "num_tokens": 2, "max_completion_length": 2}
    loss, _ = policy_loss(
        logp,
        old,
        torch.zeros(1),
        torch.ones(1, 2),
        loss_type="gspo",
        totals=totals,
        beta=0.1,
        ref_logp=ref,
        kl_estimator="k3_is",
    )
    loss.backward()
    s, k = math.exp(0.2), math.log(2) - 0.5
    close(loss, 0.1 * s * k / 2)
    close(logp.grad, [[0.05 * (s * 0.5 + s / 2 * k), 0.05 * (s / 2 * k)]])


def test_invalid_arguments_are_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="dr_grpo"):
        policy_loss(x, x, ADV, MASK, loss_type="ppo", totals=TOTALS)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(x, x, ADV, MASK, loss_type="grpo", totals=TOTALS, beta=0.1)
    with pytest.raises(ValueError, match="k3_is"):
        policy_loss(x, x, ADV, MASK, loss_type="grpo", totals=TOTALS, kl_estimator="k2")


@pytest.mark.parametrize("kl_estimator", KL_ESTIMATORS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_garbage_in_padding_never_reaches_loss_or_gradient(loss_type: str, kl_estimator: str) -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0, -2.9], [-1.0, -2.1, float("nan")]])
    ref = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, float("inf")]])
    loss, m = policy_loss(
        logp, old, ADV, MASK, loss_type=loss_type, totals=TOTALS, beta=0.1, ref_logp=ref, kl_estimator=kl_estimator
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[1, 2] == 0
    assert all(torch.isfinite(v) for v in m.values())
