"""SRFT: Supervised Reinforcement Fine-Tuning in one stage (Fu et al. 2025, arXiv:2506.19767, ICLR 2026).

One step's batch mixes the policy's own rollouts with demonstrations (the examples' `solution` field): for each
prompt x, G rollouts y_1..y_G ~ pi_theta(.|x) and the demonstration y*, all scored by the run's rewards.
Advantages are GRPO's over the group augmented with the demonstration (paper eq. 6-7):
    A_k = (r_k - mean_{G_aug} r) / std_{G_aug} r,   G_aug = {y_1..y_G, y*}
so a correct demonstration raises the baseline and gets a positive advantage whenever some rollout fails.
The loss is three terms plus an entropy bonus, with no KL and no reference model:
    L_SRFT = L_SFT^demo + L_RL^demo + L_RL^self - entropy_coef * mean_t H_t
  1. SFT on demonstrations, entropy-weighted (eq. 8):
       L_SFT^demo = E_t[ w_SFT,t * -log pi(y*_t) ],   w_SFT,t = sft_coef * sg(exp(sft_entropy_sign * H_t))
     Paper: sign -1 (SFT fades when the policy is uncertain). Released code: +1 (see docs/srft.md).
  2. Off-policy RL on demonstrations, pi_beta := 1 and no clipping (eq. 9-10):
       L_RL^demo = -E_t[ A_demo * f(pi(y*_t)) ],   f(p) = p (paper) or p / (p + gamma) (LUFFY's policy shaping)
  3. On-policy RL on rollouts (eq. 11-12): the GRPO clipped surrogate, positive-advantage tokens weighted:
       l_t = -min(rho_t A, clip(rho_t, 1-eps, 1+eps_high) A) * (w_RL,t if A > 0 else 1),
       w_RL,t = rl_coef * sg(exp(rl_entropy_sign * H_t))
H_t is the policy's entropy at token t, so both weights are per token (the released code's granularity).
Terms 1-2 are divided by the batch's demonstration tokens, term 3 by `loss_type`'s batch-global normaliser
(algos/losses.py), the entropy bonus by all tokens: summed micro-batch losses equal the whole-batch loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from reasonrl.algos.advantages import SCALE_REWARDS
from reasonrl.algos.base import TrainBatch, register_algorithm
from reasonrl.algos.batch import group_advantages, rollout_batch
from reasonrl.algos.collect import collect_rollouts, example_fields, rollout_metrics
from reasonrl.algos.losses import LOSS_TYPES, policy_loss
from reasonrl.config import AlgoConfig
from reasonrl.data import DataError, Example
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.models import encode_completion
from reasonrl.rollout.base import SamplingParams

ENTROPY_SIGNS = (-1.0, 0.0, 1.0)


@dataclass
class SRFTConfig(AlgoConfig):
    """Defaults are the paper's (specs/llm-methods.md section 1); docs/srft.md says where each comes from."""

    name: str = "srft"
    sft_coef: float = 0.5  # w_SFT scale (eq. 8; OpenReview review)
    sft_entropy_sign: float = -1.0  # -1: paper exp(-H); +1: released code exp(+H); 0: constant weight (ablation)
    offpolicy_coef: float = 1.0  # scale of L_RL^demo (the paper adds the three terms unweighted)
    offpolicy_shaping: float = 0.0  # gamma of f(p) = p / (p + gamma); 0: paper f(p) = p; 0.1: SRFT/LUFFY script
    rl_coef: float = 0.1  # w_RL scale on positive-advantage rollout tokens (eq. 12; OpenReview review)
    rl_entropy_sign: float = 1.0  # +1: paper exp(+H), damps self-imitation once entropy is low
    entropy_coef: float = 0.001  # entropy bonus of the LUFFY/SRFT actor
    scale_rewards: str = "group"  # group: paper eq. 7 divides by the group std; none: LUFFY script (no std)
    loss_type: str = "dapo"  # on-policy aggregation (algos/losses.py); dapo = verl's token-mean
    epsilon: float = 0.2  # PPO clip of the on-policy term
    epsilon_high: float | None = None  # None: symmetric clip

    def __post_init__(self) -> None:
        for key in ("sft_entropy_sign", "rl_entropy_sign"):
            if getattr(self, key) not in ENTROPY_SIGNS:
                raise ValueError(f"algo.{key} must be -1, 0 or 1, got {getattr(self, key)!r}")
        for key in ("sft_coef", "offpolicy_coef", "offpolicy_shaping", "rl_coef", "entropy_coef"):
            if getattr(self, key) < 0:
                raise ValueError(f"algo.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"algo.scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"algo.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")


# ---- the equations, on plain tensors: per-token [N, C], masks 1 where a token counts -----------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of x over the tokens where mask > 0 (padding may hold anything, even inf)."""
    return torch.where(mask > 0, x, 0.0).sum()


def entropy_weights(entropy: torch.Tensor, coef: float, sign: float) -> torch.Tensor:
    """w_t = coef * sg(exp(sign * H_t)): w_SFT with sign -1 (paper eq. 8), w_RL with sign +1 (eq. 12)."""
    return coef * torch.exp(sign * entropy.detach())


def augmented_group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, demo_rewards: torch.Tensor, scale_rewards: str = "group"
) -> torch.Tensor:
    """Eq. 6-7: GRPO advantages over each group plus its demonstration; demonstration g belongs to group g.
    Returns [N + P]: the N rollouts' advantages, then the P demonstrations' (statistics over every rank's rows)."""
    demo_groups = torch.arange(len(demo_rewards), dtype=groups.dtype)
    return group_advantages(torch.cat([rewards, demo_rewards]), torch.cat([groups, demo_groups]), "grpo", scale_rewards)


def sft_term(logp: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """Eq. 8: sum_t w_SFT,t * -log pi(y*_t) / (demonstration tokens in the batch)."""
    return masked_sum(weights * -logp, mask) / num_tokens


def offpolicy_term(
    logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, num_tokens: float, shaping: float = 0.0
) -> torch.Tensor:
    """Eq. 9-10 with pi_beta = 1, unclipped: sum_t -A * f(pi(y*_t)) / (demonstration tokens in the batch).

    f(p) = p, or LUFFY's policy shaping p / (p + gamma), whose gradient gamma / (p + gamma)^2 * grad p boosts
    low-probability expert tokens. `advantages` is one value per row [N].
    """
    p = torch.where(mask > 0, logp, 0.0).exp()
    f = p / (p + shaping) if shaping > 0 else p
    return masked_sum(-advantages.unsqueeze(-1) * f, mask) / num_tokens


def positive_weighted(advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 12 as per-token advantages [N, C]: A * w_RL,t where A > 0, A elsewhere. Since w > 0, scaling A
    scales the clipped surrogate: -min(rho A w, clip(rho) A w) = w * -min(rho A, clip(rho) A)."""
    a = advantages.unsqueeze(-1)
    return torch.where(a > 0, a * weights, a.expand_as(weights))


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, num_tokens: float, coef: float) -> torch.Tensor:
    """-coef * sum_t H_t / (tokens in the batch): lower loss for a more uncertain policy."""
    return -coef * masked_sum(entropy, mask) / num_tokens


def srft_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    t: Mapping[str, torch.Tensor],
    totals: Mapping[str, float],
    cfg: SRFTConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_SRFT of one micro-batch from its token log-probs and entropies, and its metrics (batch-normalised)."""
    on_mask, demo_mask, adv = t["completion_mask"], t["demo_mask"], t["advantages"]
    w_sft = entropy_weights(entropy, cfg.sft_coef, cfg.sft_entropy_sign)
    w_rl = entropy_weights(entropy, cfg.rl_coef, cfg.rl_entropy_sign)
    sft = sft_term(logp, w_sft, demo_mask, totals["demo_tokens"])
    off = cfg.offpolicy_coef * offpolicy_term(logp, adv, demo_mask, totals["demo_tokens"], cfg.offpolicy_shaping)
    # With one update per round the sampling policy is the current one: rho = pi / sg(pi) = 1, gradient intact.
    # Only the rollout rows (a demonstration holds at least its EOS): bnpo weighs by the share of totals["num_seqs"].
    rows = demo_mask.sum(-1) == 0
    on, clip_metrics = policy_loss(
        logp[rows],
        logp[rows].detach(),
        positive_weighted(adv, w_rl)[rows],
        on_mask[rows],
        loss_type=cfg.loss_type,
        totals=totals,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
    )
    bonus = entropy_bonus(entropy, on_mask + demo_mask, totals["all_tokens"], cfg.entropy_coef)
    positive = on_mask * (adv > 0).unsqueeze(-1)
    h = entropy.detach()
    metrics = {
        "srft/sft_loss": sft,
        "srft/offpolicy_loss": off,
        "srft/onpolicy_loss": on,
        "srft/entropy_loss": bonus,
        "srft/demo_nll": masked_sum(-logp.detach(), demo_mask) / totals["demo_tokens"],
        "srft/sft_weight": masked_sum(w_sft, demo_mask) / totals["demo_tokens"],
        "srft/rl_weight": masked_sum(w_rl, positive) / totals["positive_tokens"],
        "srft/demo_entropy": masked_sum(h, demo_mask) / totals["demo_tokens"],
        "entropy": masked_sum(h, on_mask) / totals["num_tokens"],
        **clip_metrics,
    }
    return sft + off + on + bonus, {k: float(v.detach()) for k, v in metrics.items()}


# ---- the algorithm: data for a step, and the loss on a micro-batch -------------------------------------------


def demonstration(example: Example) -> str:
    """The example's step-by-step demonstration y*; SRFT cannot run on data without one."""
    if not example.solution:
        raise DataError(
            "SRFT needs a demonstration in every example's 'solution' field (data.solution_field), "
            f"but an example has none (prompt: {str(example.prompt)[:80]!r})"
        )
    return example.solution


@register_algorithm(srft=SRFTConfig)
class SRFT:
    needs_reference = False  # SRFT uses no KL term
    needs_rollouts = True

    def __init__(self, config):
        self.cfg: SRFTConfig = config.algo
        self.name = "srft"
        r = config.rollout
        if r.num_generations < 1:
            raise ValueError("rollout.num_generations must be >= 1 for SRFT (each group also holds the demonstration)")
        self.prompts_per_step, self.num_generations = config.train.prompts_per_step, r.num_generations
        self.temperature = r.temperature
        self.params = SamplingParams(r.max_completion_length, r.temperature, r.top_p, r.top_k)

    def gather(self, ctx) -> TrainBatch:
        """Rows: the N = P * G rollouts, then the P demonstrations; `completion_mask` marks rollout tokens
        (the on-policy term, as in GRPO) and `demo_mask` demonstration tokens (the SFT and off-policy terms)."""
        examples = ctx.stream.next(self.prompts_per_step)
        demos = [demonstration(ex) for ex in examples]  # fail on bad data before sampling
        rollouts, result = collect_rollouts(ctx, examples, self.num_generations, self.params)
        metrics = rollout_metrics(rollouts, result, self.params.max_new_tokens)
        demo_ids = [encode_completion(ctx.tokenizer, d) for d in demos]
        demo_rewards = torch.tensor(self._score_demos(ctx, examples, demos, demo_ids))
        rewards = torch.tensor(rollouts.rewards, dtype=demo_rewards.dtype)
        groups = torch.tensor(rollouts.group)
        advantages = augmented_group_advantages(rewards, groups, demo_rewards, self.cfg.scale_rewards)
        batch = rollout_batch(
            rollouts,
            ctx.tokenizer.pad_token_id,
            advantages,
            self.params.max_new_tokens,
            demonstrations=(ctx.encode_prompts(examples), demo_ids),
            metrics=metrics,
        )
        on, demo, n = batch.tensors["completion_mask"], batch.tensors["demo_mask"], len(rollouts)
        batch.totals |= {
            "demo_tokens": max(1.0, float(demo.sum())),
            "positive_tokens": max(1.0, float((on * (advantages > 0).float().unsqueeze(1)).sum())),
            "all_tokens": max(1.0, float((on + demo).sum())),
        }
        valid = demo_rewards[torch.isfinite(demo_rewards)]
        batch.metrics.update(
            {
                "srft/demo_reward": float(valid.mean()) if len(valid) else float("nan"),
                "srft/demo_advantage": float(advantages[n:].mean()),
                "srft/demo_length": float(demo.sum()) / len(demos),
            }
        )
        return batch

    def _score_demos(self, ctx, examples: list[Example], demos: list[str], demo_ids: list[list[int]]) -> list[float]:
        """r(y*) from the run's rewards (math-verify accuracy by default), as the paper scores demonstrations."""
        fields = example_fields(examples, 1)
        fields.update(completion_ids=demo_ids, finished=[True] * len(demos))
        return list(ctx.rewards.score([str(ex.prompt) for ex in examples], demos, fields).total)

    def num_updates(self, batch: TrainBatch) -> int:
        return 1

    def prepare_update(self, ctx, batch: TrainBatch, update: int) -> None:
        pass

    def loss(self, ctx, micro: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logp, entropy = completion_logprobs(
            ctx.model, micro.tensors, self.temperature, with_entropy=True, entropy_grad=self.cfg.entropy_coef > 0
        )
        t = {k: micro.tensors[k].to(logp.device) for k in ("completion_mask", "demo_mask", "advantages")}
        return srft_loss(logp, entropy, t, micro.totals, self.cfg)
