"""The reward model of DPO-VP's generator-RM co-evolution: it learns from each round's verified samples and labels the
samples of prompts that have no gold answer (`algo=dpo_vp algo.reward_model=true`).

Tu et al. 2025 (arXiv:2503.12854) let "the generator and the reward model improve each other across rounds of DPO";
their code has no RM, so everything below is our reading (specs/llm-methods.md section 2c, [INFER]). It is an
outcome reward model (ORM, Cobbe et al. 2021, arXiv:2110.14168): the policy's own transformer, copied at the first
round, with a linear head read at each sequence's last real token,
    r(x, y) = w . h_last(x, y) + b,        p(x, y) = sigma(r),
trained pointwise on the verifier's label l = 1 if the sample is correct and boxed (DPO-VP's v = +1), else 0:
    L = -mean[ l log sigma(r) + (1 - l) log(1 - sigma(r)) ]
Pointwise rather than Bradley-Terry over the round's pairs because it learns from all K samples of a prompt (a
round has at most one pair per prompt) and gives probabilities, so "uncertain" is a threshold one can read.

A prompt whose answer is hidden gives the pair (highest p, lowest p) of its K samples, only when
p(chosen) >= rm_threshold and p(chosen) - p(rejected) >= rm_margin: otherwise the RM is unsure and the prompt is
dropped, as the verifier drops prompts whose samples all score the same.

Why not AutoModelForSequenceClassification: it finds the last token by searching for pad_token_id, which reads the
wrong position when pad == eos (load_tokenizer makes it so for models without a pad token: a completion's closing
EOS would count as padding). Here the position comes from the attention mask, as everywhere else in reasonrl.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F

from reasonrl.algos.base import trim_padding
from reasonrl.algos.common import build_sequences


class RewardModel(torch.nn.Module):
    """The policy's backbone (its transformer without the LM head) plus a scalar head; forward gives logits r [N]."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        weight = next(backbone.parameters())
        # A zero head, built without nn.Linear's random init: the untrained RM says p = 0.5 for everything (knows
        # nothing), and building it draws no random numbers, so a run's samples are the same whether its RM was
        # built at the first round or loaded from a file on resume.
        self.head = torch.nn.utils.skip_init(torch.nn.Linear, hidden_size, 1, device=weight.device, dtype=weight.dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy: torch.nn.Module) -> RewardModel:
        """An RM starting from a copy of the policy's current transformer weights (HF `base_model`)."""
        return cls(copy.deepcopy(policy.base_model), policy.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = self.head.weight.device
        ids, mask = input_ids.to(device), attention_mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding does not shift positions
        hidden = self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the last real token of each row
        return self.head(hidden[torch.arange(len(ids), device=device), last]).squeeze(-1).float()


def rm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the RM's logits against the verifier's 0/1 labels."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits))


def select_rm_pair(probs: list[float], margin: float, threshold: float) -> tuple[int, int] | None:
    """(chosen, rejected) indices into one prompt's samples by RM probability, or None when the RM is unsure:
    chosen = the highest p, rejected = the lowest p (ties: the earlier sample), kept only if
    p(chosen) >= threshold and p(chosen) - p(rejected) >= margin (and they are different samples)."""
    if len(probs) < 2:
        return None
    best = max(range(len(probs)), key=lambda i: (probs[i], -i))
    worst = min(range(len(probs)), key=lambda i: (probs[i], i))
    if best == worst or probs[best] < threshold or probs[best] - probs[worst] < margin:
        return None
    return best, worst


def rm_metrics(
    probs: list[float], scores: list[int], groups: list[int], margin: float, threshold: float
) -> dict[str, float]:
    """The RM against the verifier on verified samples (`scores` are DPO-VP's v = +1, 0, -1 per sample):

    accuracy        share of samples where (p > 0.5) equals (v = +1)
    base_rate       share with v = +1 (an RM that always says "wrong" has accuracy 1 - base_rate)
    ranking         within each prompt, over (correct, not correct) sample pairs: share where the correct one has
                    the higher p (ties count 1/2); NaN if no prompt has both
    pair_agreement  the pairs the RM would build on these prompts (select_rm_pair): share with v(chosen) >
                    v(rejected), the verifier's own preference; NaN if it builds none
    pair_flipped    share of those pairs with v(chosen) < v(rejected), which teach the wrong preference (the rest
                    tie, e.g. two correct samples)
    pair_rate       such pairs per prompt
    """
    if not probs:
        return {}
    labels = [s == 1 for s in scores]
    out = {
        "accuracy": sum((p > 0.5) == lab for p, lab in zip(probs, labels)) / len(probs),
        "base_rate": sum(labels) / len(labels),
    }
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    wins, comparisons, agree, flipped, pairs = 0.0, 0, 0, 0, 0
    for idx in by_group.values():
        good, bad = [i for i in idx if labels[i]], [i for i in idx if not labels[i]]
        for i in good:
            for j in bad:
                wins += 1.0 if probs[i] > probs[j] else 0.5 if probs[i] == probs[j] else 0.0
        comparisons += len(good) * len(bad)
        pick = select_rm_pair([probs[i] for i in idx], margin, threshold)
        if pick is not None:
            chosen, rejected = scores[idx[pick[0]]], scores[idx[pick[1]]]
            pairs, agree, flipped = pairs + 1, agree + (chosen > rejected), flipped + (chosen < rejected)
    out["ranking"] = wins / comparisons if comparisons else float("nan")
    out["pair_agreement"] = agree / pairs if pairs else float("nan")
    out["pair_flipped"] = flipped / pairs if pairs else float("nan")
    out["pair_rate"] = pairs / len(by_group)
    return out


def _batches(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, rows: list[int], batch_size: int
):
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        tensors = trim_padding(
            build_sequences([prompt_ids[i] for i in chunk], [completion_ids[i] for i in chunk], pad_id)
        )
        yield chunk, tensors


def score_samples(
    rm: RewardModel, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, batch_size: int
) -> list[float]:
    """p(correct) of every (prompt, completion), batch by batch, without gradients."""
    rm.eval()
    probs: list[float] = []
    with torch.no_grad():
        for _, t in _batches(prompt_ids, completion_ids, pad_id, list(range(len(prompt_ids))), batch_size):
            probs += torch.sigmoid(rm(t["input_ids"], t["attention_mask"])).tolist()
    return probs


def train_reward_model(
    rm: RewardModel,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    labels: list[float],
    pad_id: int,
    lr: float,
    epochs: int,
    batch_size: int,
    rng: random.Random,
) -> float:
    """`epochs` passes of AdamW (fresh each call, grad-norm clip 1.0) in an order shuffled by `rng`; returns the
    last epoch's mean loss (NaN when there is nothing to train on)."""
    if not labels:
        return float("nan")
    rm.train()
    optimizer = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    target = torch.tensor(labels, dtype=torch.float32)
    last = float("nan")
    for _ in range(epochs):
        order = list(range(len(labels)))
        rng.shuffle(order)
        total = 0.0
        for chunk, t in _batches(prompt_ids, completion_ids, pad_id, order, batch_size):
            loss = rm_loss(rm(t["input_ids"], t["attention_mask"]), target[chunk])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            optimizer.step()
            total += float(loss.detach()) * len(chunk)
        last = total / len(labels)
    rm.eval()
    return last


def save_reward_model(rm: RewardModel, path: Path, metadata: dict[str, str]) -> None:
    """The RM's weights (backbone + head) as one safetensors file, written to a temp file and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().contiguous() for k, v in rm.state_dict().items()}
    safetensors.torch.save_file(state, tmp, metadata={"format": "pt", **metadata})
    os.replace(tmp, path)


def load_reward_model(rm: RewardModel, path: Path) -> None:
    """Load weights saved by `save_reward_model` into `rm` (built from the same policy architecture)."""
    if not path.is_file():
        raise FileNotFoundError(f"reward model weights not found: {path}")
    try:
        state = safetensors.torch.load_file(path, device=str(rm.head.weight.device))
        rm.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, safetensors.SafetensorError) as e:
        raise ValueError(f"{path} is not a reward model of this policy's architecture ({e})") from e
