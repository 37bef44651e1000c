"""The one rollout-to-tensor path (algos/batch.py) on multi-turn rows built by hand: policy tokens only in every count,
normaliser and metric; per-turn (process) advantages against values computed by hand."""

import math

import pytest
import torch

from reasonrl.algos.advantages import process_advantages, turn_index
from reasonrl.algos.base import Context
from reasonrl.algos.batch import rollout_advantages, rollout_batch
from reasonrl.algos.collect import rollout_metrics
from reasonrl.algos.grpo import GRPO
from reasonrl.algos.losses import policy_loss, sampler_mismatch, truncated_is_weights
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.models import load_model
from reasonrl.rewards import RewardResult
from reasonrl.rollout.base import Rollouts

# Two groups. Row 0: turns of 2 and 2 policy tokens around 2 environment tokens, turn rewards 1 and 3. Row 1: turns of
# 3 and 1 tokens, rewards 0 and 2. Row 2: its verification failed (NaN). Row 3: one turn of 3 tokens, reward 5.
LOSS_MASK = [[1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 1], [1, 0, 1], [1, 1, 1]]
TOKEN_REWARDS = [[0, 1, 0, 0, 0, 3], [0, 0, 0, 0, 2], [0, 1, 1], [0, 0, 5]]
S = math.sqrt(5 / 3) + 1e-4  # unbiased std of group 0's turn rewards {1, 3, 0, 2} (mean 1.5), plus eps


def multi_turn() -> Rollouts:
    return Rollouts(
        prompt_ids=[[5, 6], [5, 6], [7, 8, 9], [7, 8, 9]],
        completion_ids=[[10, 11, 12, 13, 14, 2], [15, 16, 17, 18, 2], [19, 20, 2], [21, 22, 2]],
        logprobs=[[-0.5] * 6, [-0.4] * 5, [-0.3] * 3, [-0.2] * 3],
        finished=[True, True, True, False],
        group=[0, 0, 1, 1],
        rewards=[4.0, 2.0, math.nan, 5.0],
        meta=[{}] * 4,
        texts=["a", "b", "c", "d"],
        loss_mask=[list(m) for m in LOSS_MASK],
        token_rewards=[[float(r) for r in t] for t in TOKEN_REWARDS],
    )


def test_turns_are_runs_of_policy_tokens_with_the_environment_tokens_after_them():
    assert turn_index([1, 1, 0, 0, 1, 1]).tolist() == [0, 0, 0, 0, 1, 1]
    assert turn_index([1, 0, 1, 0, 0, 1]).tolist() == [0, 0, 1, 1, 1, 2]


def test_process_advantages_normalise_a_groups_turn_rewards_and_sum_them_from_the_turn_on():
    r = multi_turn()
    adv = rollout_advantages(r, "process", "group")
    expected = torch.zeros(4, 6)
    expected[0] = torch.tensor([1.0, 1.0, 0, 0, 1.5, 1.5]) / S  # turn 1: (3 - 1.5); turn 0: (1 - 1.5) + (3 - 1.5)
    expected[1, :5] = torch.tensor([-1.0, -1.0, -1.0, 0, 0.5]) / S  # turn 1: (2 - 1.5); turn 0: (0 - 1.5) + 0.5
    # Row 2 failed and row 3 is its group's only valid turn (no spread): both 0.
    torch.testing.assert_close(adv, expected)
    centred = rollout_advantages(r, "process", "none")  # Dr.GRPO-style: centred, not divided
    torch.testing.assert_close(centred[0], torch.tensor([1.0, 1.0, 0, 0, 1.5, 1.5]))


def test_process_advantages_in_window_mode_sum_over_the_later_step_rows_of_the_episode():
    # One row per step, one turn per row; episode 0 is rows 0-1, episode 1 is row 2 (all in group 0).
    adv = process_advantages(
        [[0, 1.0], [3.0], [0, 0, 2.0]],
        [[1, 1], [1], [1, 1, 1]],
        torch.tensor([0, 0, 0]),
        [0, 0, 1],
        torch.tensor([1.0, 1.0, 1.0]),
    )
    s = 1.0 + 1e-4  # turn rewards {1, 3, 2}: mean 2, std 1
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0, 0], [1 / s, 0, 0], [0.0, 0.0, 0.0]]))


def test_process_advantages_need_token_rewards():
    r = multi_turn()
    r.token_rewards = []
    with pytest.raises(ValueError, match="token_rewards"):
        rollout_advantages(r, "process", "group")


def test_a_multi_turn_batch_trains_and_counts_policy_tokens_only():
    r = multi_turn()
    batch = rollout_batch(r, 0, rollout_advantages(r, "grpo", "group"), 96, mask_truncated=False)
    mask = batch.tensors["completion_mask"]
    assert mask.tolist() == [[1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 1, 0], [0] * 6, [1, 1, 1, 0, 0, 0]]
    # num_tokens is the loss-mask sum of the rows that train; Dr.GRPO's constant is the policy-token budget given.
    assert batch.totals == {"num_tokens": 11.0, "num_seqs": 4.0, "max_completion_length": 96.0}
    assert batch.tensors["advantages"].shape == (4,)
    # Environment tokens are attended to (they are context) but never trained on.
    assert batch.tensors["attention_mask"][:, 3:].sum(1).tolist() == [6, 5, 3, 3]
    per_token = rollout_batch(r, 0, rollout_advantages(r, "process", "group"), 96)
    assert per_token.tensors["advantages"].shape == mask.shape
    truncated = rollout_batch(r, 0, None, 96, mask_truncated=True)  # DAPO's filter drops row 3 (cut at the limit)
    assert truncated.totals["num_tokens"] == 8.0 and "advantages" not in truncated.tensors


def test_demonstrations_are_laid_out_after_the_rollouts_under_their_own_mask():
    r = multi_turn()
    batch = rollout_batch(r, 0, torch.zeros(6), 8, demonstrations=([[5], [7]], [[3, 4, 2], [2]]))
    assert batch.tensors["completion_mask"][4:].sum() == 0
    assert batch.tensors["demo_mask"].sum(1).tolist() == [0, 0, 0, 0, 3, 1]
    assert batch.totals["num_seqs"] == 4.0 and batch.totals["num_tokens"] == 11.0


def test_rollout_metrics_count_policy_tokens():
    metrics = rollout_metrics(multi_turn(), RewardResult([], {}), 8)
    assert metrics["completions/mean_length"] == pytest.approx(13 / 4)  # 4 + 4 + 2 + 3 policy tokens
    assert metrics["completions/max_length"] == 4.0 and metrics["num_tokens"] == 13.0


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo", "gspo"])
def test_environment_tokens_change_no_loss_metric_or_gradient(loss_type):
    """Whatever the model, the old policy or the sampler say at environment positions, every loss, clip metric, KL,
    TIS weight and mismatch metric is the same, and those positions get exactly zero gradient."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 1, 0]], dtype=torch.float32)
    old = -torch.rand(2, 6, generator=g) * 2
    base = {"logp": old + 0.3 * torch.randn(2, 6, generator=g), "old": old, "ref": old - 0.2, "sampling": old + 0.1}
    env = mask == 0
    noisy = {k: torch.where(env, v - 5 * torch.rand(2, 6, generator=g), v) for k, v in base.items()}
    totals = {"num_seqs": 2.0, "num_tokens": float(mask.sum()), "max_completion_length": 8.0}
    outs = []
    for t in (base, noisy):
        logp = t["logp"].clone().requires_grad_(True)
        is_w = truncated_is_weights(t["old"], t["sampling"], 2.0)
        loss, metrics = policy_loss(
            logp,
            t["old"],
            torch.tensor([0.7, -1.2]),
            mask,
            loss_type=loss_type,
            totals=totals,
            epsilon=0.2,
            beta=0.1,
            ref_logp=t["ref"],
            is_weights=is_w,
            kl_estimator="k3_is",
        )
        loss.backward()
        metrics |= sampler_mismatch(t["old"], t["sampling"], mask, totals["num_tokens"])
        outs.append((loss.detach(), {k: float(v) for k, v in metrics.items()}, logp.grad))
    (loss_a, metrics_a, grad_a), (loss_b, metrics_b, grad_b) = outs
    torch.testing.assert_close(loss_b, loss_a)
    assert metrics_b == pytest.approx(metrics_a)
    torch.testing.assert_close(grad_b, grad_a)
    assert float(grad_a[env].abs().max()) == 0.0 and float(grad_a[~env].abs().max()) > 0


def test_gspo_sequence_ratio_is_over_the_policy_tokens_of_the_row():
    mask = torch.tensor([[1, 1, 0, 0, 1, 1]], dtype=torch.float32)
    old = torch.tensor([[-1.0, -1.0, -9.0, -9.0, -1.0, -1.0]])
    logp = torch.tensor([[-0.9, -1.1, -1.0, -1.0, -0.8, -1.0]])  # env positions: a log-ratio of 8 if they counted
    totals = {"num_seqs": 1.0, "num_tokens": 4.0, "max_completion_length": 8.0}
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, loss_type="gspo", totals=totals, epsilon=10.0)
    s = math.exp((0.1 - 0.1 + 0.2 + 0.0) / 4)  # mean log-ratio over the 4 policy tokens
    assert float(loss) == pytest.approx(-s, rel=1e-6)


def test_grpo_loss_on_a_multi_turn_batch_uses_policy_tokens_for_entropy_and_dr_grpos_constant(quick_config):
    config = quick_config("algo=dr_grpo", "rollout.temperature=1.0")
    model, tokenizer = load_model(config.model.path)
    algo = GRPO(config)
    r = multi_turn()
    batch = rollout_batch(r, tokenizer.pad_token_id, torch.tensor([1.0, -0.5, 0.0, 2.0]), 96)
    loss, metrics = algo.loss(Context(config, model, tokenizer, stream=None), batch)
    _, entropy = completion_logprobs(model, batch.tensors, 1.0, with_entropy=True)
    mask = batch.tensors["completion_mask"]
    assert metrics["entropy"] == pytest.approx(float((entropy * mask).sum() / mask.sum()), rel=1e-5)
    # On-policy, the ratio is 1: the loss is -sum of A over the trained tokens / (rows * the policy-token budget).
    expected = -float((batch.tensors["advantages"].unsqueeze(1) * mask).sum()) / (4 * 96)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_grpo_takes_the_process_estimator_by_name(quick_config):
    assert GRPO(quick_config("algo.advantage=process")).cfg.advantage == "process"
    with pytest.raises(ValueError, match="process"):
        GRPO(quick_config("algo.advantage=turnwise"))
