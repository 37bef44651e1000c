"""Pieces every algorithm shares: packing token ids into padded tensors and scoring completion tokens."""

from __future__ import annotations

import torch

from reasonrl.algos.losses import token_logprobs, token_logprobs_and_entropy
from reasonrl.algos.shared_prefix import fallback_reason, shared_prefix_logits


def build_sequences(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, so all completions start at one column.

    Returns input_ids/attention_mask [N, P + C] and completion_mask [N, C].
    """
    n = len(prompt_ids)
    width_p = max(len(p) for p in prompt_ids)
    width_c = max(1, max(len(c) for c in completion_ids))
    input_ids = torch.full((n, width_p + width_c), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width_p + width_c), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, width_p - len(p) : width_p] = torch.tensor(p, dtype=torch.long)
        input_ids[i, width_p : width_p + len(c)] = torch.tensor(c, dtype=torch.long)
        attention_mask[i, width_p - len(p) : width_p + len(c)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": attention_mask[:, width_p:].float(),
    }


def pad_values(rows: list[list[float]], width: int, value: float = 0.0) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.float32)
    return out


def completion_logits(model: torch.nn.Module, micro: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 logits [N, C, V] that predict the C completion tokens, in one forward pass.

    For Llama-family models the rows that share a prompt run it once (algos/shared_prefix.py). Otherwise HF's
    forward: position ids come from the attention mask so left padding does not shift positions, and the LM head
    runs only on the completion positions (`logits_to_keep`), which saves most of its cost for long prompts.
    """
    ids, mask = micro["input_ids"], micro["attention_mask"]
    num_completion = micro["completion_mask"].shape[1]
    if fallback_reason(model) is None and bool(mask[:, -num_completion - 1].all()):
        return shared_prefix_logits(model, ids, mask, num_completion)  # each distinct prompt runs once
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=num_completion + 1).logits
    return logits[:, :-1].float()


def completion_logprobs(
    model: torch.nn.Module, micro: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, C] of the completion tokens (and their entropies) in one forward pass.

    Entropies are detached unless `entropy_grad` (an entropy bonus in the loss needs their gradient).
    """
    logits = completion_logits(model, micro)
    targets = micro["input_ids"][:, -logits.shape[1]:].to(logits.device)
    if with_entropy:
        return token_logprobs_and_entropy(logits, targets, temperature, entropy_grad)
    return token_logprobs(logits, targets, temperature), None
