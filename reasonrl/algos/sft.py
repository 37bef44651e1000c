"""SFT: maximise the likelihood of demonstration completions; the loss counts completion tokens only.

On a multi-turn world (one with make_env) each demonstration's policy turns are played through the env and the
renderer into an episode (rollout/episodes.py), and only the policy tokens are trained: SFT and RL see one format."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reasonrl.algos.base import TrainBatch, register_algorithm
from reasonrl.algos.common import build_sequences
from reasonrl.config import AlgoConfig
from reasonrl.data import DataError, Example, multi_turn_world
from reasonrl.envs.render import make_renderer
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.models import encode_completion, model_context
from reasonrl.multimodal import pack_rows
from reasonrl.rollout.episodes import episode_metrics, play_demonstrations, to_rollouts


@dataclass
class SFTConfig(AlgoConfig):
    name: str = "sft"
    demo: str = "solution"  # solution (step by step) | direct (answer only) | mix
    direct_fraction: float = 0.5  # with demo=mix: share of examples trained on the direct answer
    # multi-turn worlds: loss weight of a policy turn by its first word, e.g. {take: 3.0}; other turns weigh 1. Class
    # balance for rare decisions: an explorer's episode has one `take` among ten turns, most of them `go to`
    turn_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.turn_weights.items() if not v >= 0 or " " in k}
        if bad:
            raise ValueError(f"algo.turn_weights maps one word to a weight >= 0, got {bad}")


def demonstration(example: Example, cfg: SFTConfig, rng: random.Random) -> str:
    use_direct = cfg.demo == "direct" or (cfg.demo == "mix" and rng.random() < cfg.direct_fraction)
    text = example.direct if use_direct else example.solution
    if not text:
        field = "direct" if use_direct else "solution"
        raise DataError(
            f"SFT needs a {field!r} demonstration, but an example has none (prompt: {str(example.prompt)[:80]!r})"
        )
    return text


def weigh_turns(episodes: Sequence, weights: dict[str, float]) -> None:
    """Scale each policy turn's loss mask by the weight of the turn's first word (algo.turn_weights)."""
    for ep in episodes:
        for turn in ep.turns if weights else ():
            words = turn.action.split()
            w = weights.get(words[0], 1.0) if words else 1.0
            ep.loss_mask[turn.span[0] : turn.span[1]] = [m * w for m in ep.loss_mask[turn.span[0] : turn.span[1]]]


@register_algorithm(sft=SFTConfig)
class SFT:
    needs_reference = False
    needs_rollouts = False

    def __init__(self, config):
        self.cfg: SFTConfig = config.algo
        if self.cfg.demo not in ("solution", "direct", "mix"):
            raise ValueError(f"algo.demo must be solution, direct or mix, got {self.cfg.demo!r}")
        self.batch_size = config.train.prompts_per_step
        self.name = "sft"
        self.world = multi_turn_world(config.data.train, config.data)

    def gather(self, ctx) -> TrainBatch:
        examples = ctx.stream.next(self.batch_size)
        if self.world is not None:
            return self._gather_episodes(ctx, examples)
        rng = random.Random(f"sft/{ctx.config.train.seed}/{ctx.step}")
        completions = [encode_completion(ctx.tokenizer, demonstration(ex, self.cfg, rng)) for ex in examples]
        prompts, images = ctx.encode_image_prompts(examples)
        tensors = build_sequences(prompts, completions, ctx.tokenizer.pad_token_id) | pack_rows(images)
        num_tokens = float(tensors["completion_mask"].sum())
        return TrainBatch(
            tensors, totals={"num_tokens": num_tokens}, metrics={"num_tokens": num_tokens}, sort_by_length=True
        )

    def _gather_episodes(self, ctx, examples: list[Example]) -> TrainBatch:
        limits = ctx.config.rollout.turns
        renderer = make_renderer(ctx.tokenizer, limits, ctx.config.data.system_prompt)
        episodes = play_demonstrations(self.world, examples, renderer, ctx.tokenizer, limits, model_context(ctx.model))
        metrics = episode_metrics(episodes)  # stop reasons other than done: budgets cut
        metrics["num_tokens"] = float(sum(ep.policy_tokens for ep in episodes))
        weigh_turns(episodes, self.cfg.turn_weights)
        rows = to_rollouts(episodes, limits.context)  # window mode: one row per step prompt
        tensors = build_sequences(rows.prompt_ids, rows.completion_ids, ctx.tokenizer.pad_token_id, rows.loss_mask)
        weight = float(tensors["completion_mask"].sum())  # the loss is the weighted mean over policy tokens
        return TrainBatch(tensors, totals={"num_tokens": weight}, metrics=metrics, sort_by_length=True)

    def num_updates(self, batch: TrainBatch) -> int:
        return 1

    def prepare_update(self, ctx, batch: TrainBatch, update: int) -> None:
        pass

    def loss(self, ctx, micro: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = micro.tensors["completion_mask"]
        logp, _ = completion_logprobs(ctx.model, micro.tensors)
        loss = -(logp * mask.to(logp.device)).sum() / micro.totals["num_tokens"]
        return loss, {"sft/nll": float(loss.detach())}
