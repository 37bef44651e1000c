"""A training forward for Llama-family models that runs each distinct prompt of a micro-batch once.

GRPO scores G completions of every prompt and DPO two; HF's forward runs the prompt again for each of them. Here
the rows that share a prompt are found, each distinct prompt runs once (its keys and values kept per layer), and
the completions attend to those keys. The logits are the ones a single HF forward over [prompt; completion] gives
(tests/test_shared_prefix.py checks logits and gradients against HF), but the prompt's share of the compute is
1/G of HF's. The layer math is the lean decoder's (modeling/decoder.py), so the same architectures are covered
(Llama, Qwen2, Qwen3, Mistral), plain or with LoRA adapters, which it applies as differentiable merged weights
W + scaling B A (reasonrl/lora.py). Anything else falls back to the HF forward, as do gradient checkpointing,
attention dropout and LoRA dropout, which this forward does not implement. `model.reasonrl_forward = "hf"` forces
the fallback.
"""

from __future__ import annotations

import torch

from reasonrl.lora import merged_training_reason
from reasonrl.modeling.decoder import (
    Decoder,
    distinct_rows,
    prompt_attention_mask,
    unsupported_reason,
)


def fallback_reason(model: torch.nn.Module) -> str | None:
    """Why this forward cannot stand in for `model`'s own (None when it can)."""
    if getattr(model, "reasonrl_forward", "auto") == "hf":
        return "disabled (model.reasonrl_forward = 'hf')"
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x; older: is_gradient_...
    if checkpointing if checkpointing is not None else getattr(model, "is_gradient_checkpointing", False):
        return "gradient checkpointing is on"
    if model.training and getattr(getattr(model, "config", None), "attention_dropout", 0.0):
        return "attention dropout is on"
    return unsupported_reason(model, 0) or merged_training_reason(model)


def shared_prefix_logits(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, num_completion: int
) -> torch.Tensor:
    """Float32 logits [N, C, V] predicting the C completion tokens of `ids` [N, P + C] (left-padded prompts, then
    right-padded completions, as algos/common.build_sequences lays them out). Every row needs a prompt token."""
    decoder = Decoder(model)
    device = decoder.base.embed_tokens.weight.device
    ids, real = ids.to(device), mask.to(device).bool()
    width_p, num_in = ids.shape[1] - num_completion, num_completion - 1  # completion tokens fed in: all but the last
    first, index = distinct_rows(ids[:, :width_p], real[:, :width_p])
    prompt_real = real[first, :width_p]
    prompt_len = prompt_real.sum(-1)
    cos_table, sin_table = decoder.rope_table(width_p + num_completion, device)

    # The prompt pass, once per distinct prompt.
    positions = (prompt_real.long().cumsum(-1) - 1).clamp(min=0)
    cos_p, sin_p = cos_table[positions].unsqueeze(1), sin_table[positions].unsqueeze(1)
    prompt_mask = prompt_attention_mask(prompt_real)
    x = decoder.base.embed_tokens(ids[first, :width_p])

    # The completion pass: each row attends to its prompt's real keys and causally to its own earlier tokens.
    positions = prompt_len[index, None] + torch.arange(num_in, device=device)
    cos_c, sin_c = cos_table[positions].unsqueeze(1), sin_table[positions].unsqueeze(1)
    causal = torch.ones(num_in, num_in, dtype=torch.bool, device=device).tril()
    completion_mask = torch.cat(
        [prompt_real[index, None, None, :].expand(-1, 1, num_in, -1), causal.expand(len(ids), 1, -1, -1)], -1
    )
    y = decoder.base.embed_tokens(ids[:, width_p : width_p + num_in])  # padding_idx rows get no gradient, as in HF

    last = len(decoder.layers) - 1
    for i, w in enumerate(decoder.layers):
        q, k, v = decoder.attention_inputs(w, x, cos_p, sin_p)
        if num_in:
            qc, kc, vc = decoder.attention_inputs(w, y, cos_c, sin_c)
            oc = decoder.attend(qc, torch.cat([k[index], kc], 2), torch.cat([v[index], vc], 2), completion_mask)
            y = decoder.attention_output_and_mlp(w, y, oc)
        if i == last:  # beyond the last layer's keys, the prompt is needed only at its final position
            q, prompt_mask, x = q[:, :, -1:], prompt_mask[:, :, -1:], x[:, -1:]
        x = decoder.attention_output_and_mlp(w, x, decoder.attend(q, k, v, prompt_mask))
    first = decoder.logits(x[:, -1])[index]  # the last prompt token predicts the first completion token
    return torch.cat([first.unsqueeze(1), decoder.logits(y)], 1) if num_in else first.unsqueeze(1)
