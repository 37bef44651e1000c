"""Pieces every algorithm shares: packing token ids into padded tensors."""

from __future__ import annotations

import torch


def build_sequences(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
    loss_mask: list[list[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, so all completions start at one column.

    Returns input_ids/attention_mask [N, P + C] and completion_mask [N, C]. With `loss_mask` (multi-turn episodes:
    1 on policy tokens, 0 on environment tokens, per completion token) the completion mask is real AND policy, so
    environment tokens are attended to but never trained on or counted.
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
    completion_mask = attention_mask[:, width_p:].float()
    if loss_mask:
        for i, (c, m) in enumerate(zip(completion_ids, loss_mask)):
            if len(m) != len(c):
                raise ValueError(f"row {i}: loss_mask has {len(m)} entries for {len(c)} completion tokens")
            completion_mask[i, : len(c)] *= torch.tensor(m, dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pad_values(rows: list[list[float]], width: int, value: float = 0.0) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.float32)
    return out
