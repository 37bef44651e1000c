"""Shape rewards: the `<think>...</think>` then `\\boxed{}` format, any box at all, and DAPO's overlong penalty."""

from __future__ import annotations

import re

from reasonrl.rewards.math import find_last_boxed
from reasonrl.rewards.registry import RewardFunc, register_reward

_THINK = re.compile(r"\s*<think>(.*?)</think>(.*)", re.DOTALL)
# What may follow the final box: whitespace, closing math delimiters, and end-of-sequence text that a
# decoder left in (`<|im_end|>`, `<|endoftext|>`, `</s>`).
_TAIL = re.compile(r"(?:\s|\$|\\\]|\\\)|<\|[^<>|]*\|>|</s>)*")


def is_well_formatted(prompt: str, completion: str) -> bool:
    """One think block, then text ending in a `\\boxed{...}`, with nothing but whitespace/EOS text after it."""
    text = completion
    # Chat templates such as Qwen3's and DeepSeek-R1's open the think block inside the prompt.
    if prompt.rstrip().endswith("<think>") and not completion.lstrip().startswith("<think>"):
        text = "<think>" + completion
    m = _THINK.fullmatch(text)
    if m is None or "<think>" in m.group(1):
        return False
    rest = m.group(2)
    if "<think>" in rest or "</think>" in rest:
        return False
    span = find_last_boxed(rest)
    return span is not None and _TAIL.fullmatch(rest, span[1] + 1) is not None


@register_reward("format")
def format_reward(prompts: list[str], completions: list[str], **fields) -> list[float]:
    """1.0 for `<think>...</think> ... \\boxed{answer}`, else 0.0 (see `is_well_formatted`)."""
    return [float(is_well_formatted(p, c)) for p, c in zip(prompts, completions)]


@register_reward("boxed")
def boxed_reward(prompts: list[str], completions: list[str], **fields) -> list[float]:
    """1.0 if the completion has a closed `\\boxed{}` (something `accuracy` can read), else 0.0."""
    return [float(find_last_boxed(c) is not None) for c in completions]


def soft_overlong_punishment(max_completion_length: int, buffer_len: int, penalty: float = 1.0) -> RewardFunc:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, sec. 3.4) on `completion_ids` lengths.

    R(y) = 0 if |y| <= L_max - L_cache;  ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max;
    -1 if |y| > L_max; scaled by `penalty`.
    """
    if not 0 < buffer_len <= max_completion_length:
        raise ValueError(f"need 0 < buffer_len <= max_completion_length, got {buffer_len} and {max_completion_length}")
    free = max_completion_length - buffer_len

    def overlong(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **fields) -> list[float]:
        out = []
        for ids in completion_ids:
            n = len(ids)
            if n <= free:
                out.append(0.0)
            elif n <= max_completion_length:
                out.append(penalty * (free - n) / buffer_len)
            else:
                out.append(-penalty)
        return out

    return overlong


@register_reward("overlong")
def overlong_reward(
    prompts: list[str],
    completions: list[str],
    completion_ids: list[list[int]],
    max_completion_length: int,
    overlong_buffer: int,
    overlong_penalty: float = 1.0,
    **fields,
) -> list[float]:
    """`soft_overlong_punishment` with its settings taken from scalar fields of the same names."""
    fn = soft_overlong_punishment(max_completion_length, overlong_buffer, overlong_penalty)
    return fn(prompts, completions, completion_ids=completion_ids)
