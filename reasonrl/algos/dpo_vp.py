"""DPO-VP (Tu et al. 2025, arXiv:2503.12854): rounds of sample -> verify -> pair -> one DPO epoch, and the optional
generator-reward-model co-evolution. The loss and the update are offline DPO's (algos/dpo.py).

Each round samples K completions per prompt, verifies them, builds one pair per prompt (algos/dpo_pairs.py) and trains
one DPO epoch on the pairs, each round's reference being the round's starting model. The trainer counts optimizer
steps, not rounds, so a round is `steps_per_round` steps: the first samples, pairs and scores the references (for
the whole round, before its first update, then cached), and every step takes the next slice of the round's pairs.
train.steps is set to rounds * steps_per_round.

Generator-RM co-evolution (`reward_model=true`, algos/reward_model.py): a share `unlabeled_fraction` of the prompts
has its gold answer hidden. Each round a reward model is measured on, then trained on, the verified samples of the
other prompts, and it builds the pairs of the hidden ones from its scores. Without the RM hidden prompts are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field

from reasonrl.algos.base import TrainBatch, register_algorithm
from reasonrl.algos.collect import collect_rollouts, rollout_metrics
from reasonrl.algos.dpo import PairwiseDPO, PreferenceConfig
from reasonrl.algos.dpo_pairs import (
    WRONG_PAIRS,
    Pair,
    load_round_pairs,
    save_round_pairs,
    select_pair,
    vr_score,
)
from reasonrl.algos.reward_model import (
    RewardModel,
    load_reward_model,
    rm_metrics,
    save_reward_model,
    score_samples,
    select_rm_pair,
    train_reward_model,
)
from reasonrl.data import Example
from reasonrl.models import decode_completion
from reasonrl.rollout.base import SamplingParams

logger = logging.getLogger("reasonrl")

SCORE_NAMES = {1: "correct", 0: "wrong", -1: "unboxed"}  # DPO-VP's verifiable scores, for metric names


@dataclass
class DPOVPConfig(PreferenceConfig):
    name: str = "dpo_vp"
    rounds: int = 6
    steps_per_round: int = 4  # optimizer steps per round: one epoch over its pairs; a round samples this many
    # times train.prompts_per_step prompts (rollout.num_generations each)
    temperatures: list[float] = field(default_factory=lambda: [0.7, 0.7, 0.7, 1.0, 1.0, 1.2])  # per round; the
    # last one repeats for later rounds
    wrong_pairs: str = "all"  # all (official) | unboxed | none: pairs whose chosen is wrong (algos/dpo_pairs.py)
    # Generator-RM co-evolution (algos/reward_model.py). The hidden prompts are a fixed subset (by a hash of the
    # prompt and data.seed); without the RM they are not even sampled.
    unlabeled_fraction: float = 0.0  # share of prompts whose gold answer the pair builder never sees
    reward_model: bool = False  # train an RM on each round's verified samples; it pairs the hidden prompts' samples
    rm_lr: float = 3e-4  # the RM's AdamW, fresh each round
    rm_epochs: int = 2  # passes over the round's verified samples
    rm_batch_size: int = 64
    rm_margin: float = 0.3  # a hidden prompt's pair needs p(chosen) - p(rejected) >= rm_margin ...
    rm_threshold: float = 0.5  # ... and p(chosen) >= rm_threshold; otherwise the RM is unsure and there is no pair

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.unlabeled_fraction < 1:
            raise ValueError(f"algo.unlabeled_fraction must be in [0, 1), got {self.unlabeled_fraction!r}")
        if not self.rm_lr > 0 or self.rm_epochs < 1 or self.rm_batch_size < 1:
            raise ValueError(
                f"algo.rm_lr must be > 0, algo.rm_epochs and algo.rm_batch_size >= 1, got "
                f"{self.rm_lr}, {self.rm_epochs}, {self.rm_batch_size}"
            )
        if not (0 <= self.rm_margin <= 1 and 0 <= self.rm_threshold <= 1):
            raise ValueError(
                f"algo.rm_margin and algo.rm_threshold are probabilities in [0, 1], got "
                f"{self.rm_margin}, {self.rm_threshold}"
            )
        if self.rounds < 1 or self.steps_per_round < 1:
            raise ValueError(
                f"algo.rounds and algo.steps_per_round must be >= 1, got {self.rounds}, {self.steps_per_round}"
            )
        if not self.temperatures or any(not t > 0 for t in self.temperatures):
            raise ValueError(f"algo.temperatures must be a non-empty list of positive numbers, got {self.temperatures}")
        if self.wrong_pairs not in WRONG_PAIRS:
            raise ValueError(f"algo.wrong_pairs must be one of {WRONG_PAIRS}, got {self.wrong_pairs!r}")


@register_algorithm(dpo_vp=DPOVPConfig)
class DPOVP(PairwiseDPO):
    """DPO-VP. ctx.state["dpo_vp"] = {round, step_in_round, pairs_file[, rm_file]}: resuming mid-round re-reads the
    round's pairs (token ids and reference log-probs) from RUN_DIR/pairs/round_NNN.jsonl instead of sampling again,
    and the reward model from the safetensors file the last round saved."""

    needs_rollouts = True
    # The reference is the round's starting model, which is the policy itself when the round's pairs are scored
    # (before the round's first update): no second model is loaded, and "resetting" it costs nothing.
    needs_reference = False

    def __init__(self, config):
        super().__init__(config)
        self.cfg: DPOVPConfig = config.algo
        r = config.rollout
        if r.num_generations < 2:
            raise ValueError("rollout.num_generations must be >= 2: a DPO-VP pair needs two samples of a prompt")
        steps = self.cfg.rounds * self.cfg.steps_per_round
        if config.train.steps != steps:
            logger.info("dpo_vp: train.steps set to algo.rounds * algo.steps_per_round = %d", steps)
            config.train.steps = steps  # before the trainer sizes its LR schedule and progress bar with it
        self.prompts_per_round = config.train.prompts_per_step * self.cfg.steps_per_round
        self.num_generations, self.seed, self.data_seed = r.num_generations, config.train.seed, config.data.seed
        self.round: tuple[int, list[Pair]] = (-1, [])  # (round index, its pairs) held in memory
        self.rm: RewardModel | None = None

    def gather(self, ctx) -> TrainBatch:
        state, metrics = ctx.state.get("dpo_vp"), {}
        if state is not None and ("rm_file" in state) != self.cfg.reward_model:
            raise ValueError(
                f"this run was started with algo.reward_model={'rm_file' in state}; resume it with its "
                f"own config (RUN_DIR/config.yaml)"
            )
        if state is None or state["step_in_round"] >= self.cfg.steps_per_round:
            k = 0 if state is None else state["round"] + 1
            if self.cfg.reward_model and self.rm is None:
                self.rm = self._make_reward_model(ctx, state)
            pairs, metrics = self._new_round(ctx, k)
            state = ctx.state["dpo_vp"] = {"round": k, "step_in_round": 0, "pairs_file": _round_file(k)}
            if self.cfg.reward_model:
                state["rm_file"] = _rm_file(k)
            self.round = (k, pairs)
        elif self.round[0] != state["round"]:  # resumed mid-round
            self.round = (state["round"], load_round_pairs(ctx.run_dir / state["pairs_file"]))
        pairs, j, steps = self.round[1], state["step_in_round"], self.cfg.steps_per_round
        state["step_in_round"] = j + 1
        metrics["dpo_vp/round"] = float(state["round"] + 1)
        # Step j of the round takes the j-th of `steps` near-equal slices: one epoch in exactly `steps` updates.
        part = pairs[j * len(pairs) // steps : (j + 1) * len(pairs) // steps]
        return self.batch(part, ctx.tokenizer.pad_token_id, metrics)

    def _make_reward_model(self, ctx, state: dict | None) -> RewardModel:
        """A new run's RM starts as a copy of the starting policy; a resumed run's is the one its last round saved
        (the RM's state lives in that file only: its optimizer is fresh every round)."""
        rm = RewardModel.from_policy(ctx.model)
        if state is not None:
            load_reward_model(rm, ctx.run_dir / state["rm_file"])
        return rm

    def _new_round(self, ctx, k: int) -> tuple[list[Pair], dict[str, float]]:
        """Sample, verify and pair; with the RM, also pair the hidden prompts; score the references with the current
        policy; save the round's pairs."""
        r = ctx.config.rollout
        temperature = self.cfg.temperatures[min(k, len(self.cfg.temperatures) - 1)]
        params = SamplingParams(r.max_completion_length, temperature, r.top_p, r.top_k)
        examples = ctx.stream.next(self.prompts_per_round)
        hidden = [is_unlabeled(ex.prompt, self.data_seed, self.cfg.unlabeled_fraction) for ex in examples]
        labelled = [ex for ex, h in zip(examples, hidden) if not h]
        # Blind copies: the prompt only, so nothing of a hidden prompt's answer can reach the pair builder.
        blind = [Example(ex.prompt, "") for ex, h in zip(examples, hidden) if h]
        rng = random.Random(f"dpo_vp/{self.seed}/{k}")
        pairs, rows, metrics, verified = [], [], {}, ([], [], [], [])
        if labelled:
            pairs, rows, metrics, verified = self._verified_pairs(ctx, k, labelled, params, rng)
        metrics.update({"dpo_vp/labelled_prompts": float(len(labelled)), "dpo_vp/hidden_prompts": float(len(blind))})
        if self.rm is not None:
            with ctx.timer.section("reward_model"):
                metrics.update(self._train_reward_model(ctx, k, verified))
            if blind:
                rm_pairs, rm_rows, rm_metrics = self._rm_pairs(ctx, k, blind, params)
                pairs, rows = pairs + rm_pairs, rows + rm_rows
                # num_tokens counts every generated token of the round, the hidden prompts' too
                rm_metrics["num_tokens"] = metrics.get("num_tokens", 0.0) + rm_metrics["dpo_vp/hidden_tokens"]
                metrics.update(rm_metrics)
        order = list(range(len(pairs)))
        rng.shuffle(order)  # the epoch's order (OpenRLHF shuffles its dataset)
        pairs, rows = [pairs[i] for i in order], [rows[i] for i in order]
        self.reference_logps(ctx.model, pairs, ctx.tokenizer.pad_token_id)
        for row, pair in zip(rows, pairs):
            row.update(
                prompt_ids=pair.prompt_ids,
                chosen_ids=pair.chosen_ids,
                rejected_ids=pair.rejected_ids,
                ref_chosen_logp=pair.ref_logps[0],
                ref_rejected_logp=pair.ref_logps[1],
            )
        save_round_pairs(ctx.run_dir / _round_file(k), rows)
        metrics.update(round_metrics(rows), **{"dpo_vp/temperature": temperature})
        return pairs, metrics

    def _verified_pairs(self, ctx, k: int, examples: list[Example], params: SamplingParams, rng: random.Random):
        """The verifier's pairs of the labelled prompts (algos/dpo_pairs.py), their rows for the round file, the
        round's rollout metrics, and the verified samples (prompt ids, completion ids, scores, groups) for the RM."""
        rollouts, result = collect_rollouts(ctx, examples, self.num_generations, params)
        scores = [vr_score(t, reward) for t, reward in zip(rollouts.texts, rollouts.rewards)]
        # Response length without the closing EOS, as the official code counts the decoded response's tokens.
        lengths = [len(ids) - int(done) for ids, done in zip(rollouts.completion_ids, rollouts.finished)]
        groups = _group_rows(rollouts.group)
        pairs, rows = [], []
        for g, example in enumerate(examples):
            idx = groups.get(g, [])
            pick = select_pair(
                [scores[i] for i in idx], [lengths[i] for i in idx], rng, params.max_new_tokens, self.cfg.wrong_pairs
            )
            if pick is None:
                continue
            c, rej = idx[pick[0]], idx[pick[1]]
            pairs.append(Pair(rollouts.prompt_ids[c], rollouts.completion_ids[c], rollouts.completion_ids[rej]))
            rows.append(
                {
                    "round": k + 1,
                    "prompt": example.prompt,
                    "chosen": rollouts.texts[c],
                    "rejected": rollouts.texts[rej],
                    "answer": example.answer,
                    "labelled": True,
                    "chosen_score": scores[c],
                    "rejected_score": scores[rej],
                }
            )
        metrics = rollout_metrics(rollouts, result, params.max_new_tokens) | score_shares(scores)
        valid = [i for i, s in enumerate(scores) if s is not None]  # failed verifications teach the RM nothing
        verified = tuple(
            [seq[i] for i in valid] for seq in (rollouts.prompt_ids, rollouts.completion_ids, scores, rollouts.group)
        )
        return pairs, rows, metrics, verified

    def _train_reward_model(self, ctx, k: int, verified: tuple[list, list, list, list]) -> dict[str, float]:
        """Measure the RM against the verifier on this round's samples (which it has not seen), train it on them,
        and save it as RUN_DIR/reward_model/round_NNN.safetensors."""
        prompts, completions, scores, groups = verified
        cfg, pad = self.cfg, ctx.tokenizer.pad_token_id
        probs = score_samples(self.rm, prompts, completions, pad, cfg.rm_batch_size)
        metrics = {
            f"rm/{name}": v for name, v in rm_metrics(probs, scores, groups, cfg.rm_margin, cfg.rm_threshold).items()
        }
        metrics["rm/train_loss"] = train_reward_model(
            self.rm,
            prompts,
            completions,
            [float(s == 1) for s in scores],
            pad,
            cfg.rm_lr,
            cfg.rm_epochs,
            cfg.rm_batch_size,
            random.Random(f"dpo_vp/rm/{self.seed}/{k}"),
        )
        metrics["rm/train_samples"] = float(len(scores))
        save_reward_model(self.rm, ctx.run_dir / _rm_file(k), {"round": str(k + 1), "policy": ctx.config.model.path})
        return metrics

    def _rm_pairs(self, ctx, k: int, blind: list[Example], params: SamplingParams):
        """Sample the hidden prompts and pair their samples by the RM's scores (no verifier, no answer)."""
        with ctx.timer.section("generate"):
            out = ctx.engine.generate(ctx.encode_prompts(blind), self.num_generations, params)
        with ctx.timer.section("reward_model"):
            probs = score_samples(
                self.rm, out.prompt_ids, out.completion_ids, ctx.tokenizer.pad_token_id, self.cfg.rm_batch_size
            )
        groups = _group_rows(out.group)
        pairs, rows = [], []
        for g, example in enumerate(blind):
            idx = groups.get(g, [])
            pick = select_rm_pair([probs[i] for i in idx], self.cfg.rm_margin, self.cfg.rm_threshold)
            if pick is None:
                continue
            c, rej = idx[pick[0]], idx[pick[1]]
            pairs.append(Pair(out.prompt_ids[c], out.completion_ids[c], out.completion_ids[rej]))
            rows.append(
                {
                    "round": k + 1,
                    "prompt": example.prompt,
                    "answer": "",
                    "labelled": False,
                    "chosen": decode_completion(ctx.tokenizer, out.completion_ids[c]),
                    "rejected": decode_completion(ctx.tokenizer, out.completion_ids[rej]),
                    "chosen_score": None,
                    "rejected_score": None,
                    "chosen_rm": probs[c],
                    "rejected_rm": probs[rej],
                }
            )
        metrics = {
            "rm/hidden_pairs": float(len(pairs)),
            "rm/hidden_mean_p": sum(probs) / max(1, len(probs)),
            "dpo_vp/hidden_tokens": float(sum(len(c) for c in out.completion_ids)),
        }
        return pairs, rows, metrics


def is_unlabeled(prompt: str | list[dict[str, str]], seed: int, fraction: float) -> bool:
    """Whether a prompt's gold answer is hidden: a fixed subset of about `fraction` of all prompts, by a hash of the
    prompt and the data seed, so a prompt is hidden in every round it appears in, whatever the batch around it."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}/{json.dumps(prompt, sort_keys=True)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _group_rows(group: list[int]) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        rows.setdefault(g, []).append(i)
    return rows


def score_shares(scores: list[int | None]) -> dict[str, float]:
    """Shares of each verifiable score among the round's verified samples."""
    valid = [s for s in scores if s is not None]
    return {f"dpo_vp/frac_{name}": valid.count(v) / max(1, len(valid)) for v, name in SCORE_NAMES.items()}


def round_metrics(rows: list[dict]) -> dict[str, float]:
    """Pair counts of the round by (chosen, rejected) kind; `rm` for the reward model's pairs of hidden prompts."""
    metrics = {"dpo_vp/round_pairs": float(len(rows))}
    for row in rows:
        kind = (
            "rm"
            if row["chosen_score"] is None
            else f"{SCORE_NAMES[row['chosen_score']]}_vs_{SCORE_NAMES[row['rejected_score']]}"
        )
        metrics[f"dpo_vp/pairs/{kind}"] = metrics.get(f"dpo_vp/pairs/{kind}", 0.0) + 1.0
    return metrics


def _round_file(k: int) -> str:
    """Where round k's pairs go, relative to the run directory (1-based in the name, as rounds are counted)."""
    return f"pairs/round_{k + 1:03d}.jsonl"


def _rm_file(k: int) -> str:
    """Where the reward model is saved after round k's training, relative to the run directory."""
    return f"reward_model/round_{k + 1:03d}.safetensors"
