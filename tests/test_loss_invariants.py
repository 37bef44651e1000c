"""Loss invariants: micro-batches sum to the full batch (gradient accumulation), bnpo's row weighting, and the loss
variants that must coincide do coincide. The hand-computed values are in tests/test_losses.py."""

from __future__ import annotations

import pytest
import torch

from reasonrl.algos.advantages import grpo_advantages
from reasonrl.algos.losses import KL_ESTIMATORS, policy_loss


def close(actual: torch.Tensor, expected: list[float] | float, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def random_batch(n: int = 8, c: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Ragged rows (1..c tokens), off-policy ratios and a reference, for the identities below."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, c + 1, (n,), generator=g)
    lengths[0] = c
    mask = (torch.arange(c) < lengths.unsqueeze(-1)).float()
    old = -torch.rand(n, c, generator=g) * 3
    return {
        "logp": old + 0.3 * torch.randn(n, c, generator=g),
        "old": old,
        "ref": old + 0.3 * torch.randn(n, c, generator=g),
        "adv": torch.randn(n, generator=g),
        "mask": mask,
    }


def totals_of(b: dict[str, torch.Tensor], max_len: int) -> dict[str, float]:
    return {"num_seqs": len(b["mask"]), "num_tokens": float(b["mask"].sum()), "max_completion_length": max_len}


def run(b: dict[str, torch.Tensor], rows: list[slice], totals: dict, **kw) -> tuple:
    """Sum of loss, gradient and metrics over micro-batches `rows`, with batch-global `totals`."""
    logp = b["logp"].clone().requires_grad_(True)
    loss_sum, metric_sum = 0.0, {}
    for r in rows:
        loss, m = policy_loss(
            logp[r], b["old"][r], b["adv"][r], b["mask"][r], ref_logp=b["ref"][r], totals=totals, **kw
        )
        loss.backward()
        loss_sum += float(loss.detach())
        metric_sum = {k: metric_sum.get(k, 0.0) + float(v) for k, v in m.items()}
    return loss_sum, logp.grad, metric_sum


def full_batch(b: dict[str, torch.Tensor], loss_type: str, **kw) -> tuple:
    """`run` on the whole batch as one micro-batch, max_completion_length = C."""
    return run(b, [slice(0, len(b["mask"]))], totals_of(b, b["mask"].shape[1]), loss_type=loss_type, **kw)


def assert_same(x: tuple, y: tuple) -> None:
    """Two `run` results agree: loss, gradient and every metric within 1e-6."""
    assert abs(x[0] - y[0]) < 1e-6
    torch.testing.assert_close(x[1], y[1], atol=1e-6, rtol=0)
    assert x[2].keys() == y[2].keys() and all(abs(x[2][k] - y[2][k]) < 1e-6 for k in x[2])


@pytest.mark.parametrize("kl_estimator", KL_ESTIMATORS)
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_micro_batches_sum_to_the_full_batch(loss_type: str, kl_estimator: str) -> None:
    b = random_batch()
    totals = totals_of(b, 6)
    kw = {"loss_type": loss_type, "beta": 0.05, "epsilon_high": 0.28, "kl_estimator": kl_estimator}
    assert_same(run(b, [slice(0, 8)], totals, **kw), run(b, [slice(i, i + 2) for i in range(0, 8, 2)], totals, **kw))


def splits(sizes: list[int]) -> list[slice]:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(a, a + n) for a, n in zip(starts, sizes)]


def trl_bnpo(b: dict[str, torch.Tensor], rows: list[slice], **kw) -> tuple:
    """TRL's bnpo on micro-batches `rows` (an independent path): each micro-batch's own token mean (dapo over its
    own tokens), divided by the number of micro-batches, summed."""
    logp = b["logp"].clone().requires_grad_(True)
    total = 0.0
    for r in rows:
        own = {"num_seqs": r.stop - r.start, "num_tokens": float(b["mask"][r].sum()), "max_completion_length": 6}
        loss, _ = policy_loss(
            logp[r], b["old"][r], b["adv"][r], b["mask"][r], ref_logp=b["ref"][r], totals=own, loss_type="dapo", **kw
        )
        (loss / len(rows)).backward()
        total += float(loss.detach()) / len(rows)
    return total, logp.grad


@pytest.mark.parametrize("sizes", [[4, 4], [2, 2, 2, 2]])
def test_bnpo_equal_micro_batches_sum_to_the_one_micro_batch_value(sizes: list[int]) -> None:
    # Ragged rows whose pairs and quadruples hold the same token count (6 and 12): equal micro-batches. The summed
    # loss and gradient equal the one-micro-batch value (the batch's token mean: dapo), not a multiple of it.
    b = random_batch()
    b["mask"] = (torch.arange(5) < torch.tensor([5, 1, 3, 3, 2, 4, 4, 2]).unsqueeze(-1)).float()
    totals, kw = totals_of(b, 6), {"beta": 0.05, "epsilon_high": 0.28}
    whole = run(b, splits([8]), totals, loss_type="bnpo", **kw)
    split = run(b, splits(sizes), totals, loss_type="bnpo", **kw)
    assert_same(split, whole)
    assert_same(whole, full_batch(b, "dapo", **kw))
    trl = trl_bnpo(b, splits(sizes), **kw)  # TRL's mean of micro-batch means
    assert abs(split[0] - trl[0]) < 1e-6
    torch.testing.assert_close(split[1], trl[1], atol=1e-6, rtol=0)


def test_bnpo_one_row_micro_batches_are_not_scaled_by_their_number() -> None:
    # Equal-length rows, one per micro-batch: before the row weights the sum was 8 times the full-batch value.
    b = random_batch()
    b["mask"] = (torch.arange(5) < 3).float().expand(8, 5).clone()
    totals = totals_of(b, 6)
    whole = run(b, splits([8]), totals, loss_type="bnpo")
    split = run(b, splits([1] * 8), totals, loss_type="bnpo")
    assert_same(split, whole)
    assert abs(whole[0]) > 1e-3  # a real value, so 8x would show


def test_bnpo_on_ragged_micro_batches_is_the_row_weighted_mean_of_micro_batch_means() -> None:
    # Micro-batches of 3, 1 and 4 ragged rows: the sum is sum_k (n_k / 8) m_k for micro-batch token means m_k,
    # the full batch is sum_k (T_k / T) m_k; both are convex combinations of the m_k, so they differ by at most
    # max_k m_k - min_k m_k.
    b = random_batch()
    totals, rows = totals_of(b, 6), splits([3, 1, 4])
    split = run(b, rows, totals, loss_type="bnpo")
    means = [trl_bnpo(b, [r])[0] for r in rows]  # one micro-batch each: its own token mean
    expected = sum((r.stop - r.start) / 8 * m for r, m in zip(rows, means))
    assert abs(split[0] - expected) < 1e-6
    grad = sum((r.stop - r.start) / 8 * trl_bnpo(b, [r])[1] for r in rows)
    torch.testing.assert_close(split[1], grad, atol=1e-6, rtol=0)
    whole = run(b, splits([8]), totals, loss_type="bnpo")[0]
    assert abs(whole - sum(float(b["mask"][r].sum()) / totals["num_tokens"] * m for r, m in zip(rows, means))) < 1e-6
    assert abs(split[0] - whole) <= max(means) - min(means)


def test_grpo_and_dr_grpo_coincide_at_full_length() -> None:
    # Every row has C = max_completion_length tokens, so 1/|o_i| = 1/L_max for all i.
    b = random_batch()
    b["mask"] = torch.ones_like(b["mask"])
    b["adv"] = grpo_advantages(torch.arange(8.0) % 3, torch.arange(8) // 4, "none")
    assert_same(full_batch(b, "grpo"), full_batch(b, "dr_grpo"))


def test_dapo_and_grpo_coincide_at_equal_lengths() -> None:
    # All rows have 3 of 5 tokens: sum_i (1/3) sum_t l / N = sum l / (3 N).
    b = random_batch()
    b["mask"] = (torch.arange(5) < 3).float().expand(8, 5).clone()
    assert_same(full_batch(b, "grpo"), full_batch(b, "dapo"))


def test_gspo_equals_token_level_grpo_for_single_token_sequences() -> None:
    # One token per row: s_i is that token's ratio, so sequence and token clipping agree.
    b = random_batch()
    b["mask"] = torch.zeros_like(b["mask"])
    b["mask"][:, 0] = 1
    b["logp"][:, 0] = b["old"][:, 0] + torch.linspace(-0.5, 0.5, 8)  # some ratios beyond 1 +- 0.2
    assert_same(full_batch(b, "gspo", beta=0.05), full_batch(b, "grpo", beta=0.05))


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_logprobs_and_entropy_in_one_pass_equal_the_separate_ones(entropy_grad, monkeypatch):
    """Sharing the logsumexp changes nothing, in chunks of rows too (a tiny chunk size forces 3 chunks of 2 rows)."""
    import reasonrl.modeling.logprobs as logprobs

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 2 * 4 * 7)
    torch.manual_seed(0)
    logits = (3 * torch.randn(5, 4, 7)).requires_grad_()
    targets = torch.randint(0, 7, (5, 4))
    logp, entropy = logprobs.token_logprobs_and_entropy(logits, targets, 0.7, entropy_grad=entropy_grad)
    assert entropy.requires_grad == entropy_grad
    (grad_joint,) = torch.autograd.grad((logp.sum() + entropy.sum()) if entropy_grad else logp.sum(), logits)
    logp_ref = logprobs.token_logprobs(logits, targets, 0.7)
    entropy_ref = logprobs.token_entropy(logits, 0.7)
    hand = torch.log_softmax(logits / 0.7, -1)  # independent formula
    assert torch.allclose(logp, hand.gather(-1, targets.unsqueeze(-1)).squeeze(-1), atol=1e-6)
    assert torch.allclose(entropy, -(hand.exp() * hand).sum(-1), atol=1e-5)
    assert torch.allclose(logp, logp_ref) and torch.allclose(entropy, entropy_ref)
    (grad_ref,) = torch.autograd.grad((logp_ref.sum() + entropy_ref.sum()) if entropy_grad else logp_ref.sum(), logits)
    assert torch.allclose(grad_joint, grad_ref, atol=1e-6)
