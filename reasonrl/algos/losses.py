"""KL and the clipped policy losses of the GRPO family (token log-probs and entropies: modeling/logprobs.py).

Per-token tensors are [N, C], aligned with the completion tokens; `mask` [N, C] is 1 where a token counts
in the loss and 0 elsewhere. Following the contract in algos/base.py, every loss is divided by a
normaliser taken from `totals`, computed once over the whole batch, so that the losses of micro-batches
sum to the full-batch loss (exact gradient accumulation). `totals` holds:
  num_seqs               completions in the batch (rows, G per prompt times prompts)
  num_tokens             mask sum over the whole batch
  max_completion_length  the generation limit (Dr.GRPO's constant)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from reasonrl.algos.advantages import ADVANTAGE_ESTIMATORS, register_advantage, zero_variance_groups

# The advantage estimators are re-exported so the whole GRPO family imports from one module.
__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LOSS_TYPES",
    "kl_k3",
    "overlong_mask",
    "policy_loss",
    "register_advantage",
    "sampler_mismatch",
    "truncated_is_weights",
    "zero_variance_groups",
]

Totals = Mapping[str, float]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate, unbiased and non-negative (Schulman 2020, "Approximating KL
    divergence", k3; DeepSeekMath eq. 4): pi_ref/pi - log(pi_ref/pi) - 1."""
    log_r = ref_logp - logp
    return log_r.exp() - log_r - 1


# k3: Schulman's estimator, as DeepSeekMath and verl ("low_var_kl", clamped there to [-10, 10]) use it.
# k3_is: k3 times the importance ratio pi / pi_old, TRL's `use_bias_correction_kl` (its default; DeepSeek-V3.2,
# arXiv:2512.02556): the samples come from pi_old, so the weight makes the KL gradient the unbiased gradient of
# KL(pi || pi_ref). The ratio carries gradient, so the term differs from k3 even on-policy, where its value is 1.
KL_ESTIMATORS = ("k3", "k3_is")


def overlong_mask(finished: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the mask of completions cut off at the length limit (`finished` [N] False), so they add no
    gradient: DAPO's overlong filtering (Yu et al. 2025, arXiv:2503.14476, sec. 3.4)."""
    return mask * finished.unsqueeze(-1).to(mask.dtype)


def truncated_is_weights(train_logp: torch.Tensor, sampling_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): min(pi_train / pi_sampler, C) per token, without gradient. A rollout engine whose
    probabilities differ from the trainer's (vLLM kernels, bf16) samples from pi_sampler, not from the policy the
    loss assumes; weighting by the ratio removes that bias, and the cap C bounds its variance."""
    return (train_logp - sampling_logp).exp().clamp(max=cap).detach()


def sampler_mismatch(
    train_logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor, num_tokens: float
) -> dict[str, torch.Tensor]:
    """How far the rollout engine's log-probs are from the trainer's on the sampled tokens, summed over masked
    tokens and divided by the batch's `num_tokens`: mean |difference| and the k3 estimate of KL(sampler || train)."""
    on = mask > 0
    diff = torch.where(on, train_logp.detach() - sampling_logp, 0.0)
    return {
        "rollout/logprob_abs_diff": diff.abs().sum() / num_tokens,
        "rollout/mismatch_kl": torch.where(on, diff.exp() - diff - 1, 0.0).sum() / num_tokens,
    }


# ---- aggregation: (masked per-token loss [N, C], mask, totals) -> scalar ------------------------------
Aggregation = Callable[[torch.Tensor, torch.Tensor, Totals], torch.Tensor]


def _sequence_mean(per_token: torch.Tensor, mask: torch.Tensor, totals: Totals) -> torch.Tensor:
    """GRPO (DeepSeekMath eq. 3) and GSPO: (1/G) sum_i (1/|o_i|) sum_t l_it, with G = totals["num_seqs"]."""
    return (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / totals["num_seqs"]


def _constant_length(per_token: torch.Tensor, mask: torch.Tensor, totals: Totals) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025, arXiv:2503.20783, sec. 3.1): 1/|o_i| replaced by the constant
    max_completion_length, which removes the bias toward long wrong answers: sum_i,t l_it / (G * L_max)."""
    return per_token.sum() / (totals["num_seqs"] * totals["max_completion_length"])


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor, totals: Totals) -> torch.Tensor:
    """DAPO token-level loss (Yu et al. 2025, arXiv:2503.14476, eq. 8 / sec. 3.3): sum_i,t l_it / sum_i |o_i|,
    the token count of the whole batch."""
    return per_token.sum() / totals["num_tokens"]


def _local_token_mean(per_token: torch.Tensor, mask: torch.Tensor, totals: Totals) -> torch.Tensor:
    """BNPO as TRL defines it: DAPO's formula over this micro-batch's own tokens, weighted by the micro-batch's share
    of the batch's rows, n_k / totals["num_seqs"]. TRL divides each micro-batch mean by the accumulation steps and
    averages over ranks, i.e. weights 1/K with K equal micro-batches; the row share is that weight for equal
    micro-batches on any number of ranks, and keeps the weights summing to 1 when length buckets make them ragged."""
    return per_token.sum() / mask.sum().clamp(min=1) * (len(mask) / totals["num_seqs"])


AGGREGATIONS: dict[str, Aggregation] = {
    "grpo": _sequence_mean,
    "dr_grpo": _constant_length,
    "dapo": _token_mean,
    "bnpo": _local_token_mean,
    "gspo": _sequence_mean,
}
LOSS_TYPES = tuple(AGGREGATIONS)


def _kl_importance_weight(log_ratio: torch.Tensor, mask: torch.Tensor, sequence: bool) -> torch.Tensor:
    """The ratio k3_is multiplies the KL by, with its gradient: per token exp(log pi - log pi_old), or for GSPO
    TRL's sequence-level weight exp(1/|y_i| sum_t log-ratio) [N, 1], broadcast onto every token of the row."""
    if sequence:
        return (log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)).exp()
    return log_ratio.exp()


def _sequence_log_ratio(logp: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO-token log-ratio (Zheng et al. 2025, arXiv:2507.18071, sec. 4.1 and 4.3):
    s_i = exp(1/|y_i| sum_t log(pi/pi_old)),  s_i,t = sg[s_i] * pi(y_i,t) / sg[pi(y_i,t)].
    Its value is s_i at every token; its gradient flows through each token's log-prob."""
    log_s = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    return log_s.detach() + logp - logp.detach()


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    totals: Totals,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss of one micro-batch, normalised by batch-global `totals`, and its metrics.

    Per token (PPO, Schulman et al. 2017; GRPO, DeepSeekMath eq. 3), with r = pi / pi_old:
        l_t = -min(r_t A, clip(r_t, 1 - epsilon, 1 + epsilon_high) A) + beta * KL_t,
    KL_t = k3(pi || pi_ref)_t, or with kl_estimator="k3_is" (TRL's default) r_t * k3_t (see KL_ESTIMATORS).
    epsilon_high > epsilon is DAPO's clip-higher (sec. 3.1); None means symmetric. For "gspo", r_t is the
    sequence ratio s_i,t (GSPO-token). `loss_type` chooses the aggregation (see AGGREGATIONS).
    `advantages` is one value per completion [N] or per token [N, C] (e.g. SRFT's entropy-weighted advantages).
    Metrics are sums over masked tokens divided by totals["num_tokens"]: micro-batch values sum to the
    batch value. `kl` (KL_t) is reported whenever `ref_logp` is given; it enters the loss only when beta > 0.
    `is_weights` [N, C] (detached, e.g. `truncated_is_weights`) multiply each token's surrogate term.
    """
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs of the reference model)")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    on = mask > 0
    # Padding may hold any value (even inf); zero it before exp so neither loss nor gradient sees it.
    logp, old_logp = torch.where(on, logp, 0.0), torch.where(on, old_logp, 0.0)
    token_log_ratio = logp - old_logp
    log_ratio = _sequence_log_ratio(logp, token_log_ratio, mask) if loss_type == "gspo" else token_log_ratio
    ratio = log_ratio.exp()
    adv = (advantages if advantages.dim() == 2 else advantages.unsqueeze(-1)).to(ratio.dtype)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - epsilon, 1 + eps_high) * adv)
    if is_weights is not None:
        per_token = per_token * torch.where(on, is_weights, 0.0)
    metrics: dict[str, torch.Tensor] = {}
    if ref_logp is not None:
        kl = kl_k3(logp, torch.where(on, ref_logp, 0.0))
        if kl_estimator == "k3_is":
            kl = kl * _kl_importance_weight(token_log_ratio, mask, sequence=loss_type == "gspo")
        metrics["kl"] = kl.detach().sum() / totals["num_tokens"]
        if beta > 0:
            per_token = per_token + beta * kl
    loss = AGGREGATIONS[loss_type](torch.where(on, per_token, 0.0), mask, totals)

    # Clip fractions as TRL logs them: tokens whose gradient the clip removed.
    r = ratio.detach()
    low = on & (r < 1 - epsilon) & (adv < 0)
    high = on & (r > 1 + eps_high) & (adv > 0)
    for name, hit in (("low", low), ("high", high), ("region", low | high)):
        metrics[f"clip_ratio/{name}_mean"] = hit.sum() / totals["num_tokens"]
    return loss, metrics
