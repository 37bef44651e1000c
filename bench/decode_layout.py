"""Generation speed of the lean decoder with its weights input-major ([in, out] in memory) against the parameters'
own [out, in] layout, side by side in one process, interleaved.

    python bench/decode_layout.py [--settings 4x16x128 8x8x32] [--reps 7] [--threads 1]

Prints per-shape matmul times (the decode step's projections at a few row counts) and, per setting, the median
seconds to sample PROMPTS x GENERATIONS completions of up to TOKENS tokens from the shipped student at temperature 1
with each layout (the same seed for both, so the same tokens are drawn).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from reasonrl.modeling import decoder, native
from reasonrl.models import load_model
from reasonrl.rollout import fast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import generation_parser, interleaved_generation, per_call_us


def matmul_table(model) -> None:
    cfg = model.config
    shapes = {
        "qkv": (cfg.hidden_size, (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim),
        "o_proj": (cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size),
        "gate_up": (cfg.hidden_size, 2 * cfg.intermediate_size),
        "down": (cfg.intermediate_size, cfg.hidden_size),
    }
    print("| projection (in -> out) | rows | [out, in] us | [in, out] us | ratio |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for name, (n_in, n_out) in shapes.items():
            weight = torch.randn(n_out, n_in)
            input_major = weight.t().contiguous().t()
            for rows in (2, 16, 32, 64):
                x = torch.randn(rows, 1, n_in)
                a = per_call_us(lambda x=x, weight=weight: F.linear(x, weight))
                b = per_call_us(lambda x=x, input_major=input_major: F.linear(x, input_major))
                print(f"| {name} ({n_in} -> {n_out}) | {rows} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


def main() -> None:
    args = generation_parser(__doc__, reps=7).parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("student")
    matmul_table(model)
    engine = fast.FastEngine(model, tokenizer)
    native.enabled = False  # PyTorch ops, whose speed the layout decides (the C kernels: bench/native_kernels.py)
    input_major = decoder._input_major
    layouts = {
        "[out, in]": lambda: setattr(decoder, "_input_major", lambda weight: weight),
        "[in, out]": lambda: setattr(decoder, "_input_major", input_major),
    }
    print("\n| setting | [out, in] s | [in, out] s | speed-up |\n|---|---|---|---|")
    for setting in args.settings:
        (a, b), _ = interleaved_generation(engine, tokenizer, setting, args.reps, layouts)
        print(f"| {setting} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    decoder._input_major = input_major


if __name__ == "__main__":
    main()
