"""On-policy distillation (OPD) with horizon control: POPD and TOPD (Zhang et al. 2026, arXiv:2605.31490).

The student samples y ~ pi_theta(.|x), at most H tokens; the teacher scores the same tokens without gradients.
The signal is the per-token reverse KL, as a single-sample (k1) estimate and exactly over the vocabulary:
    k1_t   = log pi_theta(y_t | x, y_<t) - log pi_T(y_t | x, y_<t)
    KL_t   = sum_v pi_theta(v | x, y_<t) * (log pi_theta(v | .) - log pi_T(v | .))
Two ways to turn it into a loss (`algo.signal`):
  pg      the standard OPD of Thinking Machines / SkyRL: r_t = -k1_t is a per-token reward used directly as the
          advantage (no discount, no group baseline: the paper's token-level estimator), in the importance-sampled
          policy gradient  l_t = -exp(log pi_theta - sg(log pi_theta)) * A_t,  A_t = -kl_coef * sg(k1_t).
  direct  the exact reverse KL at every sampled prefix, differentiated through pi_theta (GKD with beta = 1,
          lambda = 1: Agarwal et al. 2024, arXiv:2306.13649):  l_t = kl_coef * KL_t.
Either can be mixed with the verifiable outcome reward: A_t += outcome_coef * A_i, GRPO's group advantage of
completion i (algos/advantages.py), which needs rollout.num_generations >= 2.
The horizon H (`algo.horizon`) is passed to the engine as max_new_tokens, so generation really stops there:
  full         H = T = rollout.max_completion_length (standard OPD)
  progressive  H_k = min(T, h0 + dh * floor(k / dk)) at step k = 0, 1, ... (POPD)
  truncated    H = round(fraction * T) (TOPD; the paper uses 0.1 and 0.25)
Losses are aggregated by `loss_type` (algos/losses.py) with batch-global normalisers: micro-batching is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from reasonrl.algos.advantages import SCALE_REWARDS
from reasonrl.algos.base import TrainBatch, register_algorithm
from reasonrl.algos.batch import group_advantages, rollout_batch
from reasonrl.algos.collect import collect_rollouts, rollout_metrics
from reasonrl.algos.losses import AGGREGATIONS, LOSS_TYPES, policy_loss
from reasonrl.config import AlgoConfig
from reasonrl.modeling.logprobs import completion_logits
from reasonrl.models import load_model, load_tokenizer
from reasonrl.rollout.base import SamplingParams

HORIZONS = ("full", "progressive", "truncated")
SIGNALS = ("pg", "direct")


@dataclass
class OPDConfig(AlgoConfig):
    """docs/opd.md says where each default comes from; H0, dH and dk are not given in the paper."""

    name: str = "opd"
    teacher: str = "teacher"  # shipped name or HF model directory; must share the student's tokenizer
    signal: str = "pg"  # pg: -k1 reverse KL as a per-token advantage | direct: exact reverse KL as the loss
    kl_coef: float = 1.0  # weight of the distillation signal
    outcome_coef: float = 0.0  # weight of GRPO's group advantage of the verifiable reward; 0: pure distillation
    scale_rewards: str = "group"  # of the outcome advantage (group | batch | none)
    loss_type: str = "dapo"  # aggregation (algos/losses.py); dapo = token mean over the batch, verl's default
    horizon: str = "full"  # full | progressive (POPD) | truncated (TOPD)
    h0: int = 16  # POPD: first horizon, in tokens
    dh: int = 8  # POPD: tokens added every dk steps
    dk: int = 5  # POPD: steps between increases
    fraction: float = 0.25  # TOPD: H = round(fraction * rollout.max_completion_length)

    def __post_init__(self) -> None:
        choices = {"horizon": HORIZONS, "signal": SIGNALS, "loss_type": LOSS_TYPES, "scale_rewards": SCALE_REWARDS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"algo.{key}={getattr(self, key)!r}; choose one of {', '.join(allowed)}")
        if self.h0 < 1 or self.dh < 0 or self.dk < 1:
            raise ValueError(f"algo.h0 >= 1, algo.dh >= 0 and algo.dk >= 1 needed, got {self.h0}, {self.dh}, {self.dk}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"algo.fraction must be in (0, 1], got {self.fraction}")
        if self.kl_coef < 0 or self.outcome_coef < 0:
            raise ValueError(
                f"algo.kl_coef and algo.outcome_coef must be >= 0, got {self.kl_coef}, {self.outcome_coef}"
            )


@dataclass
class POPDConfig(OPDConfig):
    name: str = "popd"
    horizon: str = "progressive"


@dataclass
class TOPDConfig(OPDConfig):
    name: str = "topd"
    horizon: str = "truncated"
    fraction: float = 0.1  # the paper's headline setting


# ---- the equations, on plain tensors: per-token [N, C], masks 1 where a token counts -----------------------


def horizon_at(cfg: OPDConfig, step: int, max_length: int) -> int:
    """Generation limit H for trainer step `step` (counted from 1, so POPD's first step uses h0), never above T."""
    if cfg.horizon == "full":
        return max_length
    if cfg.horizon == "truncated":
        return max(1, min(max_length, round(cfg.fraction * max_length)))
    return min(max_length, cfg.h0 + cfg.dh * ((step - 1) // cfg.dk))


def kl_row(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def token_stats(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    kl_grad: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-position [N, C] quantities of both distributions at `temperature`, one row at a time (a [C, V]
    working copy, as in modeling/logprobs.py), from one log-softmax of each model:
      logp, teacher_logp   log-probs of the sampled tokens `targets`
      kl                   KL(pi_theta || pi_T) = sum_v p_v (log p_v - log q_v); with a gradient if `kl_grad`
      entropy              the student's entropy (detached)
      agree                1 where both models' most likely tokens are the same
    Each model normalises over its own vocabulary; a teacher whose embedding is padded beyond the student's
    (common for HF checkpoints) is compared on the student's tokens, where all of pi_theta's mass is.
    """
    width = logits.shape[-1]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", "teacher_logp", "kl", "entropy", "agree")}
    for s, t, y in zip(logits, teacher_logits.detach(), targets):
        log_p = (s.float() / temperature).log_softmax(-1)
        log_q = (t.float() / temperature).log_softmax(-1)
        y = y.unsqueeze(-1)
        out["logp"].append(log_p.gather(-1, y).squeeze(-1))
        out["teacher_logp"].append(log_q.gather(-1, y).squeeze(-1))
        out["kl"].append(kl_row(log_p if kl_grad else log_p.detach(), log_q[:, :width]))
        out["entropy"].append(-(log_p.exp() * log_p).sum(-1).detach())
        out["agree"].append((s.detach().argmax(-1) == t.argmax(-1)).float())
    return {k: torch.stack(v) for k, v in out.items()}


def opd_advantages(
    k1: torch.Tensor, kl_coef: float, outcome: torch.Tensor | None = None, outcome_coef: float = 0.0
) -> torch.Tensor:
    """A_t = -kl_coef * k1_t (+ outcome_coef * A_i): the reward r_t = log pi_T - log pi_theta taken as the
    advantage itself, token by token, without discount or baseline; plus the completion's outcome advantage."""
    adv = -kl_coef * k1.detach()
    if outcome is not None and outcome_coef > 0:
        adv = adv + outcome_coef * outcome.to(adv.dtype).unsqueeze(-1)
    return adv


def masked_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """Sum of x over the tokens where mask > 0, divided by the batch's token count (so micro-batches add up)."""
    return torch.where(mask > 0, x, 0.0).sum() / num_tokens


def opd_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    totals: Mapping[str, float],
    cfg: OPDConfig,
    temperature: float = 1.0,
    outcome: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The OPD loss of one micro-batch from student logits (with gradient) and teacher logits [N, C, V], and its
    metrics; `targets` [N, C] are the sampled tokens, `outcome` [N] the outcome advantages (or None)."""
    direct = cfg.signal == "direct"
    st = token_stats(logits, teacher_logits, targets, temperature, kl_grad=direct)
    logp, kl = st["logp"], st["kl"]
    k1 = logp.detach() - st["teacher_logp"]
    adv = opd_advantages(k1, 0.0 if direct else cfg.kl_coef, outcome, cfg.outcome_coef)
    # One update per batch: the sampling policy is the current one, so the ratio is exactly 1 and PPO's clip never
    # binds; the gradient is -A_t * grad log pi_theta(y_t), the importance-sampling loss of the reference code.
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, loss_type=cfg.loss_type, totals=totals)
    if direct:
        loss = loss + cfg.kl_coef * AGGREGATIONS[cfg.loss_type](torch.where(mask > 0, kl, 0.0), mask, totals)
    n = totals["num_tokens"]
    metrics = {
        "opd/reverse_kl": masked_mean(k1, mask, n),
        "opd/reverse_kl_exact": masked_mean(kl.detach(), mask, n),
        "opd/agreement": masked_mean(st["agree"], mask, n),
        "opd/teacher_logprob": masked_mean(st["teacher_logp"], mask, n),
        "entropy": masked_mean(st["entropy"], mask, n),
    }
    return loss, {k: float(v) for k, v in metrics.items()}


# ---- the algorithm: data for a step, and the loss on a micro-batch -------------------------------------------


def load_teacher(path: str, model_cfg) -> torch.nn.Module:
    """The frozen teacher, on the student's device and dtype; its tokenizer must be the student's, because the
    teacher scores the student's token ids as they are."""
    teacher, teacher_tok = load_model(path, model_cfg.dtype, model_cfg.device)
    scratch = model_cfg.path.startswith("scratch:")  # a random-init student: its tokenizer is built, not loaded
    if not scratch and load_tokenizer(model_cfg.path).get_vocab() != teacher_tok.get_vocab():
        raise ValueError(
            f"algo.teacher={path!r} has a different tokenizer than model.path={model_cfg.path!r}; "
            "on-policy distillation scores the student's tokens with the teacher, so both must match"
        )
    return teacher.eval().requires_grad_(False)


@register_algorithm(opd=OPDConfig, popd=POPDConfig, topd=TOPDConfig)
class OPD:
    needs_reference = False  # the teacher is loaded here from algo.teacher, not as the trainer's reference model
    needs_rollouts = True

    def __init__(self, config):
        self.cfg: OPDConfig = config.algo
        self.name = self.cfg.name
        r = config.rollout
        if self.cfg.outcome_coef > 0 and r.num_generations < 2:
            raise ValueError("algo.outcome_coef > 0 needs rollout.num_generations >= 2 (group advantages)")
        self.prompts_per_step, self.num_generations = config.train.prompts_per_step, r.num_generations
        self.max_length, self.temperature = r.max_completion_length, r.temperature
        self.sampling = (r.temperature, r.top_p, r.top_k)
        self.teacher = load_teacher(self.cfg.teacher, config.model)  # before the run directory exists: fail early

    def gather(self, ctx) -> TrainBatch:
        """The student's rollouts cut at this step's horizon; the teacher scores them in `loss`, micro-batch by
        micro-batch, so its [N, C, V] logits are never held for the whole batch."""
        h = horizon_at(self.cfg, ctx.step, self.max_length)
        params = SamplingParams(h, *self.sampling)
        rollouts, result = collect_rollouts(ctx, ctx.stream.next(self.prompts_per_step), self.num_generations, params)
        metrics = rollout_metrics(rollouts, result, h)
        metrics["opd/horizon"] = float(h)
        advantages = None
        if self.cfg.outcome_coef > 0:  # NaN rewards (failed checks) get advantage 0, so they add distillation only
            advantages = group_advantages(
                torch.tensor(rollouts.rewards), torch.tensor(rollouts.group), "grpo", self.cfg.scale_rewards
            )
        # Dr.GRPO's constant is this step's generation limit; failed verifications still teach distillation.
        return rollout_batch(rollouts, ctx.tokenizer.pad_token_id, advantages, h, drop_failed=False, metrics=metrics)

    def num_updates(self, batch: TrainBatch) -> int:
        return 1

    def prepare_update(self, ctx, batch: TrainBatch, update: int) -> None:
        pass

    def loss(self, ctx, micro: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        t = micro.tensors
        logits = completion_logits(ctx.model, t)
        with torch.no_grad():
            teacher_logits = completion_logits(self.teacher, t).to(logits.device)
        targets = t["input_ids"][:, -logits.shape[1] :].to(logits.device)
        mask = t["completion_mask"].to(logits.device)
        outcome = t["advantages"].to(logits.device) if "advantages" in t else None
        return opd_loss(logits, teacher_logits, targets, mask, micro.totals, self.cfg, self.temperature, outcome)
