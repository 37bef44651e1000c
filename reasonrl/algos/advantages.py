"""Outcome-reward advantage estimators of the GRPO family, and the DAPO zero-variance group filter.

Every estimator maps one scalar reward per completion, `rewards` [N], and the prompt id of each row,
`groups` [N] (groups may have different sizes), to one advantage per completion [N]. A NaN reward
marks a failed verification: the row is left out of every statistic and gets advantage 0.
Standard deviations are unbiased (Bessel-corrected, `torch.std`'s default), as in TRL and verl; a group
with a single valid reward has no spread and gets std 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

AdvantageFn = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}
SCALE_REWARDS = ("group", "batch", "none")


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register an estimator `fn(rewards, groups, scale_rewards="group", eps=1e-4) -> advantages` as `name`."""

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def _group_sums(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """For every row, the sum of `x` over the rows of its group."""
    ids, inverse = torch.unique(groups, return_inverse=True)
    return torch.zeros(len(ids), dtype=x.dtype, device=x.device).index_add(0, inverse, x)[inverse]


def _group_stats(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per row: its group's count of valid (non-NaN) rewards, their sum, mean and unbiased std."""
    valid = ~rewards.isnan()
    r = torch.where(valid, rewards, 0.0).double()
    count = _group_sums(valid.double(), groups)
    total = _group_sums(r, groups)
    mean = total / count.clamp(min=1)
    sq = _group_sums(torch.where(valid, (r - mean) ** 2, 0.0), groups)
    std = torch.where(count > 1, sq / (count - 1).clamp(min=1), 0.0).sqrt()
    return count, total, mean, std


def _batch_std(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Unbiased std of `x` over the valid rows of the whole batch (0 with fewer than two)."""
    v = x[valid].double()
    return v.std() if v.numel() > 1 else v.new_zeros(())


def _finish(adv: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """NaN-reward rows get advantage 0; the result has the rewards' dtype."""
    return torch.where(rewards.isnan(), 0.0, adv).to(rewards.dtype)


def _scale(
    centred: torch.Tensor, rewards: torch.Tensor, group_std: torch.Tensor, scale_rewards: str, eps: float
) -> torch.Tensor:
    """Divide centred rewards by the group std, the batch std of the rewards, or nothing."""
    if scale_rewards == "group":
        return centred / (group_std + eps)
    if scale_rewards == "batch":
        return centred / (_batch_std(rewards, ~rewards.isnan()) + eps)
    if scale_rewards == "none":
        return centred
    raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")


@register_advantage("grpo")
def grpo_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, scale_rewards: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantage (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300, sec. 4.1.2).

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)  with scale_rewards="group" (GRPO);
    "batch" divides by the std of all rewards in the batch (TRL's option; Lite PPO, arXiv:2508.08221);
    "none" does not divide (Dr.GRPO, Liu et al. 2025, arXiv:2503.20783, sec. 3.1: the std term
    up-weights prompts that are too easy or too hard).
    """
    _, _, mean, std = _group_stats(rewards, groups)
    return _finish(_scale(rewards.double() - mean, rewards, std, scale_rewards, eps), rewards)


@register_advantage("rloo")
def rloo_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, scale_rewards: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, arXiv:2402.14740, sec. 3).

    A_i = r_i - 1/(k-1) sum_{j != i} r_j  over the k valid rewards of the group (0 when k = 1),
    then `scale_rewards` as for GRPO; scale_rewards="none" is the paper's estimator.
    """
    count, total, _, std = _group_stats(rewards, groups)
    r = torch.where(rewards.isnan(), 0.0, rewards).double()
    baseline = (total - r) / (count - 1).clamp(min=1)
    centred = torch.where(count > 1, r - baseline, 0.0)
    return _finish(_scale(centred, rewards, std, scale_rewards, eps), rewards)


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, scale_rewards: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025, arXiv:2501.03262, sec. 3; as in OpenRLHF and verl).

    x_i = r_i - mean(r_group), then whitened over the batch: A_i = (x_i - mean_b(x)) / (std_b(x) + eps),
    with the unbiased std over the valid rows. mean_b(x) = 0 here, since each group's deviations sum to 0,
    so whitening is a division. verl whitens per token (longer completions weigh more); we whiten per
    completion. Whitening is the method's own scaling, so `scale_rewards` is ignored.
    """
    _, _, mean, _ = _group_stats(rewards, groups)
    valid = ~rewards.isnan()
    x = torch.where(valid, rewards.double() - mean, 0.0)
    return _finish(x / (_batch_std(x, valid) + eps), rewards)


def zero_variance_groups(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """True for rows whose group's valid rewards are all equal (or all NaN): no learning signal.

    DAPO dynamic sampling (Yu et al. 2025, arXiv:2503.14476, sec. 3.2) keeps only groups with
    0 < |{o_i correct}| < G; this is the general form for non-binary rewards.
    """
    valid = ~rewards.isnan()
    ids, inverse = torch.unique(groups, return_inverse=True)
    size = len(ids)
    hi = torch.full((size,), -torch.inf, dtype=rewards.dtype, device=rewards.device)
    lo = torch.full((size,), torch.inf, dtype=rewards.dtype, device=rewards.device)
    hi = hi.scatter_reduce(0, inverse[valid], rewards[valid], "amax")
    lo = lo.scatter_reduce(0, inverse[valid], rewards[valid], "amin")
    return ~(hi > lo)[inverse]  # an all-NaN group keeps hi = -inf < lo = inf: also no signal


def turn_index(loss_mask: list[int]) -> torch.Tensor:
    """For every completion token, the policy turn it belongs to: turns are the runs of policy tokens (loss mask 1),
    and the environment tokens after a turn count with it, so a reward anywhere in the row is credited exactly once."""
    mask = torch.tensor(loss_mask, dtype=torch.long)
    starts = mask.clone()
    starts[1:] = mask[1:] * (1 - mask[:-1])
    return (starts.cumsum(0) - 1).clamp(min=0)


def process_advantages(
    token_rewards: list[list[float]],
    loss_mask: list[list[int]],
    groups: torch.Tensor,
    episodes: list[int],
    rewards: torch.Tensor,
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Process supervision over turns (DeepSeekMath, arXiv:2402.03300, sec. 4.1.3), one advantage per token [N, C].

    A turn's reward is the sum of `token_rewards` over its tokens (the episode driver puts it on the turn's last
    policy token). All turn rewards of a group are normalised together, r~ = (r - mean) / (std + eps) (`scale_rewards`
    as for GRPO: "batch" divides by the std of every turn reward of the batch, "none" only centres), and a token of
    turn t gets the sum of r~ over the turns t' >= t of its episode. An episode is a row (append mode) or the rows
    with the same (group, `episodes` id) in row order (window mode: one turn per row). Rows whose `rewards` entry or
    any turn reward is NaN (failed verification) are left out of the statistics and get 0; environment tokens get 0.
    """
    width = max([len(t) for t in token_rewards] + [1])
    rows, values, index, spans = [], [], [], {}  # per turn (row order, then turn order): its row and reward
    for i, (r, m) in enumerate(zip(token_rewards, loss_mask)):
        if len(r) != len(m):
            raise ValueError(f"row {i}: {len(r)} token rewards for a loss mask of {len(m)} tokens")
        index.append(turn_index(m) if m else torch.zeros(0, dtype=torch.long))
        if not m or 1 not in m:
            continue
        per_turn = torch.zeros(int(index[i].max()) + 1, dtype=torch.float64).index_add(
            0, index[i], torch.tensor(r).double()
        )
        failed = bool(rewards[i].isnan()) or bool(per_turn.isnan().any())
        spans[i] = (len(rows), len(per_turn))
        values += [math.nan] * len(per_turn) if failed else per_turn.tolist()  # a failed row joins no statistic
        rows += [i] * len(per_turn)
    out = torch.zeros(len(token_rewards), width, dtype=torch.float32)
    if not rows:
        return out
    turn_rows, turn_values = torch.tensor(rows), torch.tensor(values, dtype=torch.float64)
    _, _, mean, std = _group_stats(turn_values, groups[turn_rows])
    normalised = _finish(_scale(turn_values - mean, turn_values, std, scale_rewards, eps), turn_values).tolist()
    running: dict[tuple[int, int], float] = {}  # per episode: the sum of r~ over its turns from this one on
    credit = [0.0] * len(rows)
    for j in range(len(rows) - 1, -1, -1):
        key = (int(groups[rows[j]]), episodes[rows[j]])
        running[key] = running.get(key, 0.0) + normalised[j]
        credit[j] = running[key]
    for i, (start, count) in spans.items():
        if not math.isnan(values[start]):
            turn_credit = torch.tensor(credit[start : start + count], dtype=torch.float32)
            out[i, : len(index[i])] = turn_credit[index[i]] * torch.tensor(loss_mask[i], dtype=torch.float32)
    return out
