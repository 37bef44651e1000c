"""Offline DPO on a pairs file (`algo=dpo`), and the pairwise loss and update DPO-VP (algos/dpo_vp.py) shares.

DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7) with conservative label smoothing eps (cDPO, Mitchell 2023):
    z = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    L = -(1 - eps) log sigma(beta z) - eps log sigma(-beta z)
IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17), `loss_type=ipo`:  L = (z - 1 / (2 beta))^2
log pi(y|x) sums the completion's token log-probs, as OpenRLHF's DPOLoss (which DPO-VP trains with) does. For IPO,
`ipo_logratio=mean` divides each completion's log-ratio by its token count first, as TRL's IPO does (its authors'
length normalisation); `sum` (default) is the paper's equation as written.
beta (log pi - log pi_ref) is each completion's implicit reward (always of the summed log-ratio); its chosen/rejected
means, margin and accuracy are logged under TRL's names. Reference log-probs never change while a pair is in use, so
each pair's are computed once (for the whole file at the first step) and cached.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasonrl.algos.base import TrainBatch, register_algorithm, trim_padding
from reasonrl.algos.common import build_sequences
from reasonrl.algos.dpo_pairs import Pair, load_pairs_file
from reasonrl.config import AlgoConfig
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.models import encode_completion, model_context

LOSS_TYPES = ("sigmoid", "ipo")
IPO_LOGRATIOS = ("sum", "mean")


@dataclass
class PreferenceConfig(AlgoConfig):
    """The DPO loss options both algorithms share (defaults: DPO-VP's, specs/llm-methods.md section 2)."""

    beta: float = 0.1
    label_smoothing: float = 0.0  # cDPO's eps: the assumed probability that a pair's labels are flipped
    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo
    ipo_logratio: str = "sum"  # IPO only: sum of token log-ratios (paper, OpenRLHF) | mean per token (TRL)

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"algo.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.ipo_logratio not in IPO_LOGRATIOS:
            raise ValueError(f"algo.ipo_logratio must be one of {IPO_LOGRATIOS}, got {self.ipo_logratio!r}")
        if self.ipo_logratio == "mean" and self.loss_type != "ipo":
            raise ValueError(f"algo.ipo_logratio=mean applies to algo.loss_type=ipo only, not {self.loss_type!r}")
        if not self.beta > 0:
            raise ValueError(f"algo.beta must be > 0, got {self.beta!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"algo.label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")


@dataclass
class DPOConfig(PreferenceConfig):
    name: str = "dpo"
    pairs: str = ""  # JSONL with `prompt` (text or chat messages), `chosen` and `rejected` per line


# ---- the loss, on plain tensors: one value per pair [N] -------------------------------------------------------


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    token_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses [N] and the implicit rewards beta (log pi - log pi_ref) of chosen and rejected (detached).
    `token_counts` [N, 2] (IPO only): the completions' lengths, to take IPO's log-ratios per token (TRL's IPO)."""
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if token_counts is not None and loss_type != "ipo":
        raise ValueError(f"token_counts (per-token log-ratios) apply to loss_type='ipo' only, not {loss_type!r}")
    if loss_type == "ipo":
        counts = (1.0, 1.0) if token_counts is None else token_counts.to(chosen).clamp(min=1).unbind(-1)
        losses = (chosen / counts[0] - rejected / counts[1] - 1 / (2 * beta)) ** 2
    elif loss_type == "sigmoid":
        z = chosen - rejected
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    return losses, beta * chosen.detach(), beta * rejected.detach()


def pair_tensors(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """`pair_*` tensors [N, 2, ...]: pair i's chosen (index 0) and rejected (index 1) sequences in one row, so the
    trainer's micro-batches never split a pair (the loss needs both)."""
    prompts = [p.prompt_ids for p in pairs for _ in range(2)]
    completions = [c for p in pairs for c in (p.chosen_ids, p.rejected_ids)]
    tensors = build_sequences(prompts, completions, pad_id)
    return {f"pair_{k}": v.view(len(pairs), 2, *v.shape[1:]) for k, v in tensors.items()}


def sequence_logprobs(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(y|x) [N, 2] of each pair's chosen and rejected: summed completion token log-probs, one forward pass."""
    flat = trim_padding({k.removeprefix("pair_"): v.flatten(0, 1) for k, v in tensors.items() if k.startswith("pair_")})
    logp, _ = completion_logprobs(model, flat)
    mask = flat["completion_mask"].to(logp.device)
    return torch.where(mask > 0, logp, 0.0).sum(-1).view(-1, 2)


# ---- the algorithms: where the pairs come from differs, the loss does not --------------------------------------


class PairwiseDPO:
    """The DPO update on a batch of pairs with cached reference log-probs; subclasses provide `gather`."""

    needs_rollouts = False
    # Pairs are drawn outside the sharded prompt stream, and DPO-VP's reward model trains per process: one rank only.
    data_parallel = False

    def __init__(self, config):
        self.cfg: PreferenceConfig = config.algo
        self.name = self.cfg.name
        self.micro_batch_size = config.train.micro_batch_size

    def reference_logps(self, model: torch.nn.Module, pairs: list[Pair], pad_id: int) -> None:
        """Fill `ref_logps` of `pairs` under `model`, without gradients, micro-batch by micro-batch."""
        with torch.no_grad():
            for start in range(0, len(pairs), self.micro_batch_size):
                chunk = pairs[start : start + self.micro_batch_size]
                for pair, logps in zip(chunk, sequence_logprobs(model, pair_tensors(chunk, pad_id)).tolist()):
                    pair.ref_logps = (logps[0], logps[1])

    def batch(self, pairs: list[Pair], pad_id: int, metrics: dict[str, float]) -> TrainBatch:
        """A step's TrainBatch; the loss is divided by the step's pair count, so micro-batch losses sum exactly."""
        if not pairs:
            return TrainBatch({}, metrics=metrics)
        tensors = pair_tensors(pairs, pad_id)
        tensors["ref_logps"] = torch.tensor([p.ref_logps for p in pairs], dtype=torch.float32)
        metrics["num_pairs"] = float(len(pairs))
        return TrainBatch(tensors, totals={"num_pairs": float(len(pairs))}, metrics=metrics)

    def num_updates(self, batch: TrainBatch) -> int:
        return 1

    def prepare_update(self, ctx, batch: TrainBatch, update: int) -> None:
        pass

    def loss(self, ctx, micro: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logps = sequence_logprobs(ctx.model, micro.tensors)
        ref = micro.tensors["ref_logps"].to(logps.device)
        counts = micro.tensors["pair_completion_mask"].sum(-1) if self.cfg.ipo_logratio == "mean" else None
        losses, chosen, rejected = dpo_loss(
            logps[:, 0],
            logps[:, 1],
            ref[:, 0],
            ref[:, 1],
            self.cfg.beta,
            self.cfg.label_smoothing,
            self.cfg.loss_type,
            counts,
        )
        n = micro.totals["num_pairs"]
        metrics = {
            "rewards/chosen": chosen.sum() / n,
            "rewards/rejected": rejected.sum() / n,
            "rewards/margins": (chosen - rejected).sum() / n,
            "rewards/accuracies": (chosen > rejected).sum() / n,
            "logps/chosen": logps[:, 0].detach().sum() / n,
            "logps/rejected": logps[:, 1].detach().sum() / n,
        }
        return losses.sum() / n, {k: float(v) for k, v in metrics.items()}


@register_algorithm(dpo=DPOConfig)
class DPO(PairwiseDPO):
    """Offline DPO: `train.prompts_per_step` pairs per step, epoch after epoch in an order shuffled by (seed, epoch).
    The reference is model.ref_path (default: the starting model), scored on every pair once, at the first step;
    the read position lives in ctx.state."""

    needs_reference = True

    def __init__(self, config):
        super().__init__(config)
        if not self.cfg.pairs:
            raise ValueError("algo=dpo needs a pairs file: algo.pairs=FILE.jsonl (fields prompt, chosen, rejected)")
        self.rows = load_pairs_file(self.cfg.pairs)  # a malformed file fails before the run starts
        self.pairs_per_step, self.seed = config.train.prompts_per_step, config.train.seed
        self.pairs: list[Pair] | None = None  # tokenized on the first step (the tokenizer comes with the context)
        self._order: tuple[int, list[int]] = (-1, [])

    def _index(self, k: int) -> int:
        epoch, offset = divmod(k, len(self.rows))
        if self._order[0] != epoch:
            order = list(range(len(self.rows)))
            random.Random(f"dpo-pairs/{self.seed}/{epoch}").shuffle(order)
            self._order = (epoch, order)
        return self._order[1][offset]

    def _encode(self, ctx) -> list[Pair]:
        """Token ids of every pair; a pair longer than the model's context is an error naming its prompt."""
        tok, context = ctx.tokenizer, model_context(ctx.model)
        pairs = []
        for prompt, (example, chosen, rejected) in zip(ctx.encode_prompts([ex for ex, _, _ in self.rows]), self.rows):
            pair = Pair(prompt, encode_completion(tok, chosen), encode_completion(tok, rejected))
            longest = len(prompt) + max(len(pair.chosen_ids), len(pair.rejected_ids))
            if context and longest > context:
                raise ValueError(
                    f"{self.cfg.pairs}: a pair of {longest} tokens exceeds the model's context of "
                    f"{context} (prompt starts {str(example.prompt)[:60]!r})"
                )
            pairs.append(pair)
        return pairs

    def gather(self, ctx) -> TrainBatch:
        pad_id = ctx.tokenizer.pad_token_id
        metrics = {}
        if self.pairs is None:
            # One reference pass over the whole file, in fixed chunks: a resumed run recomputes the same values.
            self.pairs = self._encode(ctx)
            self.reference_logps(ctx.ref_model, self.pairs, pad_id)
            metrics["dpo/reference_pairs"] = float(len(self.pairs))
        state = ctx.state.setdefault("dpo", {"position": 0})
        picked = [self.pairs[self._index(state["position"] + i)] for i in range(self.pairs_per_step)]
        state["position"] += self.pairs_per_step
        return self.batch(picked, pad_id, metrics)
