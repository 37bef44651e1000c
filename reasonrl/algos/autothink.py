"""AutoThink: learn when to think (Tu et al. 2025, "Learning When to Think", arXiv:2505.10832).

The ellipsis prompt: the assistant turn starts with `<think>\\n...\\n`, so the model either reasons on or closes
`</think>` at once and answers directly (no-think). Three GRPO stages then shape one base reward R0 per completion
(official code, TU2021/AutoThink: deepscaler/rewards/math_reward.py and verl/trainer/main_ppo.py::RewardManager):

    R0:        think: +1 correct, 0 wrong;  no-think: +2 correct, -1 wrong;  format error (no `</think>` or no box): 0.
               A wrong no-think answer that degenerates (a whitespace n-gram, n <= 30, repeated >= 10 times in a
               row, or a word of >= 120 characters) gets -2.
    stage 1:   batch balance. p_T = think share of the batch; if p_T > gamma, lambda = clip(k (p_T - gamma), 0, 1)
               and every think sample moves towards r* (0 if correct, -1 if wrong): r <- (1 - lambda) r + lambda r*;
               symmetrically for no-think (r* = +1 correct, -2 wrong). gamma = 0.5, k = 2.
    stage 2:   R0 alone.
    stage 3:   length shaping within each prompt group, on the correct and on the wrong answers separately
               (each when >= 2): z_i = (L_i - mean L) / max(std L, 1e-6) (unbiased std, L = completion tokens);
               correct: r_i += exp(-alpha z_i) - 1, wrong: r_i += 1 - exp(-beta z_i). alpha = beta = 0.05.
    max length per stage 1:2:3 (the paper's 8k, 16k, 24k tokens).

The rest is the GRPO core (algos/grpo.py): group-normalised advantages, clip 0.2, token-mean loss, no KL.
The prompts come from reasonrl/prompt_modes.py; the evaluation probes are in experiments/autothink*.py.
`autothink_sft` makes a base model with the method's precondition: under the ellipsis prompt it picks either mode.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from reasonrl.algos.base import TrainBatch, register_algorithm
from reasonrl.algos.common import build_sequences
from reasonrl.algos.grpo import GRPO, GRPOConfig
from reasonrl.algos.sft import SFT
from reasonrl.config import AlgoConfig, RewardSpec
from reasonrl.data import DataError, Example
from reasonrl.distributed import gather_rows
from reasonrl.models import encode_completion, encode_prompt
from reasonrl.prompt_modes import prompt_mode, with_prompt_mode
from reasonrl.rewards.math import accuracy, find_last_boxed
from reasonrl.rewards.registry import Scores, register_reward

# ---- detection and the base reward R0 --------------------------------------------------------------------------


def is_thinking(completion: str) -> bool:
    """False when the think block holds nothing but the ellipsis: the completion closes `</think>` right away
    (after the ellipsis prompt) or writes `<think>\\n...\\n</think>` itself. A completion without `</think>` thinks
    (and is a format error), as in the official code."""
    head, closed, _ = completion.partition("</think>")
    return not (closed and head.replace("<think>", "").replace("...", "").strip() == "")


def answer_text(completion: str) -> str | None:
    """The text between the first `</think>` and a possible second one, where the answer must be (as the official
    code reads it: otherwise closing `</think>` at once, tracing, closing again and answering is paid as a direct
    answer); None if the think block never closes."""
    _, closed, rest = completion.partition("</think>")
    return rest.partition("</think>")[0] if closed else None


def is_format_error(completion: str) -> bool:
    """No `</think>`, or no `\\boxed{}` after it: R0 is 0 in either mode."""
    answer = answer_text(completion)
    return answer is None or find_last_boxed(answer) is None


def longest_repeat_run(text: str, max_n: int = 30) -> int:
    """Longest run of one whitespace n-gram (n <= max_n) repeated back to back, the text cut into non-overlapping
    n-word chunks from its start (the official `max_continuous_ngram`); 0 when nothing repeats."""
    words, best = text.split(), 0
    for n in range(1, max_n + 1):
        chunks = [tuple(words[i : i + n]) for i in range(0, len(words) - n + 1, n)]
        run = 1
        for a, b in itertools.pairwise(chunks):
            run = run + 1 if a == b else 1
            best = max(best, run)
    return best if best >= 2 else 0


def is_degenerate(text: str, max_repeats: int = 10, max_word: int = 120) -> bool:
    return longest_repeat_run(text) >= max_repeats or max((len(w) for w in text.split()), default=0) >= max_word


R0 = {(True, True): 1.0, (True, False): 0.0, (False, True): 2.0, (False, False): -1.0}  # (think, correct) -> R0


@register_reward("autothink")
def autothink_reward(
    prompts: list[str],
    completions: list[str],
    answer: list[str],
    meta: list[dict] | None = None,
    verifier=None,
    **fields,
) -> Scores:
    """R0: the mode-aware correctness reward (module docstring); NaN where verification failed or timed out."""
    checked = accuracy(prompts, [answer_text(c) or "" for c in completions], answer, meta, verifier)
    values = []
    for text, acc in zip(completions, checked):
        if math.isnan(acc):
            values.append(math.nan)
        elif is_format_error(text):
            values.append(0.0)  # no answer where it must be, in either mode
        else:
            r = R0[(is_thinking(text), acc == 1.0)]
            values.append(-2.0 if r < 0 and is_degenerate(text) else r)
    return Scores(values, checked.status, checked.errors)


def rescore_direct_correct(
    rewards: torch.Tensor, think: torch.Tensor, correct: torch.Tensor, value: float, weight: float = 1.0
) -> torch.Tensor:
    """Rewards with R0 of the correct direct answers moved from the official +2 to `value` (R0 enters the summed
    reward with `weight`); NaN rows stay NaN."""
    return torch.where(~think & correct, rewards + weight * (value - R0[(False, True)]), rewards)


# ---- stage shaping, on tensors: rewards [N] (NaN = failed verification), flags [N] bool, groups [N] -----------


def length_shaping(
    rewards: torch.Tensor, correct: torch.Tensor, lengths: torch.Tensor, groups: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """Stage 3: within each group, shorter correct answers gain (exp(-alpha z) - 1) and shorter wrong ones lose
    (1 - exp(-beta z)), z the length z-score among the group's correct (wrong) answers; subsets of one are left."""
    out = rewards.clone().double()
    valid = ~rewards.isnan()
    for g in groups.unique():
        for rows, coef, sign in ((correct, alpha, 1.0), (~correct, beta, -1.0)):
            sel = (groups == g) & rows & valid
            if sel.sum() < 2:
                continue
            length = lengths[sel].double()
            z = (length - length.mean()) / length.std().clamp(min=1e-6)
            out[sel] += sign * (torch.exp(-coef * z) - 1)
    return out.to(rewards.dtype)


def batch_balance(
    rewards: torch.Tensor, think: torch.Tensor, correct: torch.Tensor, rate: float, slope: float
) -> tuple[torch.Tensor, float, float]:
    """Stage 1: pull the over-represented mode's rewards towards its targets; returns (rewards, lambda_T, lambda_N)."""
    out, valid = rewards.clone(), ~rewards.isnan()
    if not valid.any():
        return out, 0.0, 0.0
    p_think = float(think[valid].float().mean())
    lambdas = []
    for mode, share, targets in ((think, p_think, (0.0, -1.0)), (~think, 1 - p_think, (1.0, -2.0))):
        lam = min(1.0, max(0.0, slope * (share - rate))) if share > rate else 0.0
        target = torch.where(correct, targets[0], targets[1]).to(out.dtype)
        out = torch.where(mode & valid, (1 - lam) * out + lam * target, out)
        lambdas.append(lam)
    return out, lambdas[0], lambdas[1]


def mode_metrics(think: list[bool], correct: list[bool], lengths: list[int], levels: list) -> dict[str, float]:
    """Think rate, accuracy and mean completion tokens: overall, per difficulty level, and (the last two) per mode."""
    out = {}
    by_level = defaultdict(list)
    for i, lv in enumerate(levels):
        if lv is not None:
            by_level[lv].append(i)
    for suffix, rows in [("", range(len(think)))] + [(f"/level_{lv}", v) for lv, v in sorted(by_level.items())]:
        n = max(1, len(rows))
        out[f"think_rate{suffix}"] = sum(think[i] for i in rows) / n
        out[f"accuracy{suffix}"] = sum(correct[i] for i in rows) / n
        out[f"tokens{suffix}"] = sum(lengths[i] for i in rows) / n
    for name, want in (("think", True), ("no_think", False)):
        rows = [i for i, t in enumerate(think) if t == want]
        if rows:  # a mode nobody used has no accuracy; leave the key out rather than log a made-up 0
            out[f"accuracy/{name}"] = sum(correct[i] for i in rows) / len(rows)
            out[f"tokens/{name}"] = sum(lengths[i] for i in rows) / len(rows)
    return out


# ---- the algorithm ----------------------------------------------------------------------------------------------


@dataclass
class AutoThinkConfig(GRPOConfig):
    """Defaults are the official scripts' (specs/llm-methods.md section 3); docs/autothink.md lists deviations."""

    name: str = "autothink"
    loss_type: str = "dapo"  # verl's token-mean
    stage: int | str = 1  # 1 | 2 | 3 | all (stages in sequence, switching after `stage_steps`)
    stage_steps: list[int] = field(default_factory=lambda: [10, 10])  # with stage=all: steps of stages 1 and 2
    max_lengths: list[int] = field(default_factory=list)  # per stage; empty: 1x, 2x, 3x rollout.max_completion_length
    balance_rate: float = 0.5  # gamma of stage 1 (official batch_balance_rate); stages 2-3 use 1.0 (off)
    balance_slope: float = 2.0  # k (official penalty_slope)
    length_alpha: float = 0.05  # stage 3 (official reward_alpha); stages 1-2 use 0
    length_beta: float = 0.05  # stage 3 (official reward_beta)
    # R0 of a correct direct answer (official +2). Against thinking's p_T, a direct answer pays in expectation where
    # its accuracy p_N > (1 + p_T) / (c + 1): c sets how accurate direct answers must be before thinking is skipped.
    nothink_correct_reward: float = 2.0

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3, "all"):
            raise ValueError(f"algo.stage must be 1, 2, 3 or all, got {self.stage!r}")
        if len(self.stage_steps) != 2 or min(self.stage_steps) < 0:
            raise ValueError(f"algo.stage_steps needs two step counts >= 0 (stages 1 and 2), got {self.stage_steps}")
        if self.max_lengths and (len(self.max_lengths) != 3 or min(self.max_lengths) < 1):
            raise ValueError(f"algo.max_lengths needs three lengths >= 1 (stages 1-3), got {self.max_lengths}")
        if not math.isfinite(self.nothink_correct_reward):
            raise ValueError(f"algo.nothink_correct_reward must be a finite number, got {self.nothink_correct_reward}")


@register_algorithm(autothink=AutoThinkConfig)
class AutoThink(GRPO):
    """GRPO whose sampled rewards are R0 reshaped for the current stage before the group advantages."""

    def __init__(self, config):
        super().__init__(config)
        names = [f.name for f in config.rewards.funcs]
        if names == ["accuracy"]:  # the default reward: R0 takes its place (it checks the answer the same way)
            config.rewards.funcs = [RewardSpec("autothink", 1.0)]
        elif "autothink" not in names:
            raise ValueError(f"algo=autothink needs the `autothink` reward (R0) in rewards.funcs, got {names}")
        self.r0_weight = next(f.weight for f in config.rewards.funcs if f.name == "autothink")
        length = config.rollout.max_completion_length
        self.max_lengths = list(self.cfg.max_lengths) or [length, 2 * length, 3 * length]
        self.checked_prompt = False

    def stage_at(self, step: int) -> int:
        if self.cfg.stage != "all":
            return int(self.cfg.stage)
        s1, s2 = self.cfg.stage_steps
        return 1 if step <= s1 else 2 if step <= s1 + s2 else 3

    def _sample(self, ctx):
        if not self.checked_prompt:
            mode = prompt_mode(ctx.tokenizer)
            if mode != "ellipsis":  # the paper's precondition; a silent plain prompt would train a think-only model
                raise ValueError(
                    f"algo=autothink needs the ellipsis prompt, but model {ctx.config.model.path!r} prompts in mode "
                    f"{mode!r}. Use model.path=autothink_base, or write a copy with reasonrl.prompt_modes."
                    f"save_prompt_mode(MODEL, OUT_DIR, 'ellipsis') (docs/autothink.md)"
                )
            self.checked_prompt = True
        stage = self.stage_at(ctx.step)
        self.params.max_new_tokens = self.max_lengths[stage - 1]
        rollouts, metrics = super()._sample(ctx)
        r0 = rollouts.reward_components.get("autothink", [])  # none when dynamic sampling kept no group here
        think = [is_thinking(t) for t in rollouts.texts]
        correct = [r > 0 for r in r0]  # R0 is positive exactly for correct answers
        lengths = [len(c) for c in rollouts.completion_ids]
        rewards = torch.tensor(rollouts.rewards, dtype=torch.float32)
        think_t, correct_t = torch.tensor(think, dtype=torch.bool), torch.tensor(correct, dtype=torch.bool)
        rewards = rescore_direct_correct(rewards, think_t, correct_t, self.cfg.nothink_correct_reward, self.r0_weight)
        # The shaping's statistics (the batch's think share, a group's lengths) are over every rank's rows, so every
        # rank takes part even with no rows of its own.
        groups, (rewards_all, think_all, correct_all, lengths_all), mine = gather_rows(
            torch.tensor(rollouts.group, dtype=torch.long), rewards, think_t, correct_t, torch.tensor(lengths)
        )
        # Official order: length shaping per group, then the batch balance.
        if stage == 3:
            rewards_all = length_shaping(
                rewards_all, correct_all, lengths_all, groups, self.cfg.length_alpha, self.cfg.length_beta
            )
        lam_t = lam_n = 0.0
        if stage == 1:
            rewards_all, lam_t, lam_n = batch_balance(
                rewards_all, think_all, correct_all, self.cfg.balance_rate, self.cfg.balance_slope
            )
        rewards = rewards_all[mine]
        if len(rollouts) == 0:
            return rollouts, metrics
        rollouts.rewards = rewards.tolist()
        levels = [m.get("level") for m in rollouts.meta]
        metrics.update({f"autothink/{k}": v for k, v in mode_metrics(think, correct, lengths, levels).items()})
        valid = rewards[~rewards.isnan()]
        metrics.update(
            {
                "autothink/stage": float(stage),
                "autothink/shaped_reward": float(valid.mean()),
                "autothink/balance_lambda_think": lam_t,
                "autothink/balance_lambda_no_think": lam_n,
                "autothink/format_error_rate": sum(map(is_format_error, rollouts.texts)) / len(rollouts),
            }
        )
        return rollouts, metrics


# ---- the base model: SFT on both modes under the ellipsis prompt ------------------------------------------------


@dataclass
class AutoThinkSFTConfig(AlgoConfig):
    name: str = "autothink_sft"
    nothink_fraction: float = 0.4  # of ellipsis-prompt examples, trained to close </think> at once and answer
    think_prompt_fraction: float = 0.2  # of all examples, under the always-think prompt `<think>\n` (the baseline's)

    def __post_init__(self) -> None:
        for key in ("nothink_fraction", "think_prompt_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"algo.{key} must be in [0, 1], got {getattr(self, key)}")


def continuation(example: Example, think: bool) -> str:
    """The demonstration after the assistant prefix: the step-by-step solution without its `<think>\\n` opening, or
    `</think>\\n` + the direct answer, which after the ellipsis prompt reads `<think>\\n...\\n</think>\\n\\boxed{N}`."""
    text = example.solution if think else example.direct
    if not text or (think and not text.startswith("<think>\n")):
        raise DataError(
            f"autothink_sft needs a `<think>\\n`-opened solution and a direct answer in every example "
            f"(prompt: {str(example.prompt)[:80]!r})"
        )
    return text.removeprefix("<think>\n") if think else "</think>\n" + text


@register_algorithm(autothink_sft=AutoThinkSFTConfig)
class AutoThinkSFT(SFT):
    """SFT whose prompts end with an assistant prefix: a share under `<think>\\n` (always step by step), the rest
    under the ellipsis, where `nothink_fraction` answer directly. Prompt ids come from the same templates as at
    rollout time. The run's tokenizer is switched to the ellipsis prompt, so the exported folder prompts that way."""

    def __init__(self, config):
        self.cfg: AutoThinkSFTConfig = config.algo
        self.batch_size = config.train.prompts_per_step
        self.name = "autothink_sft"
        self.tokenizers = None  # one per prompt mode, made from the run's tokenizer at the first step

    def gather(self, ctx) -> TrainBatch:
        if self.tokenizers is None:
            self.tokenizers = {m: with_prompt_mode(ctx.tokenizer, m) for m in ("think", "ellipsis")}
            ctx.tokenizer.chat_template = self.tokenizers["ellipsis"].chat_template
        examples = ctx.stream.next(self.batch_size)
        rng = random.Random(f"autothink_sft/{ctx.config.train.seed}/{ctx.step}")
        prompts, completions = [], []
        for ex in examples:
            mode = "think" if rng.random() < self.cfg.think_prompt_fraction else "ellipsis"
            think = mode == "think" or rng.random() >= self.cfg.nothink_fraction
            prompts.append(encode_prompt(self.tokenizers[mode], ex.prompt, ctx.config.data.system_prompt))
            completions.append(encode_completion(ctx.tokenizer, continuation(ex, think)))
        tensors = build_sequences(prompts, completions, ctx.tokenizer.pad_token_id)
        num_tokens = float(tensors["completion_mask"].sum())
        return TrainBatch(
            tensors, totals={"num_tokens": num_tokens}, metrics={"num_tokens": num_tokens}, sort_by_length=True
        )
