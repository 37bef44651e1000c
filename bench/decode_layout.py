"""Generation speed of the lean decoder with its weights input-major ([in, out] in memory) against the parameters'
own [out, in] layout, side by side in one process, interleaved.

    python bench/decode_layout.py [--settings 4x16x128 8x8x32] [--reps 7] [--threads 1]

Prints per-shape matmul times (the decode step's projections at a few row counts) and, per setting, the median
seconds to sample PROMPTS x GENERATIONS completions of up to TOKENS tokens from the shipped student at temperature 1
with each layout (the same seed for both, so the same tokens are drawn).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from reasonrl.models import encode_prompt, load_model
from reasonrl.rollout import fast
from reasonrl.rollout.base import SamplingParams
from reasonrl.worlds.arith import ArithWorld


def per_call_us(fn, calls: int = 400, rounds: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def matmul_table(model) -> None:
    cfg = model.config
    shapes = {"qkv": (cfg.hidden_size, (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim),
              "o_proj": (cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size),
              "gate_up": (cfg.hidden_size, 2 * cfg.intermediate_size), "down": (cfg.intermediate_size, cfg.hidden_size)}
    print("| projection (in -> out) | rows | [out, in] us | [in, out] us | ratio |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for name, (n_in, n_out) in shapes.items():
            weight = torch.randn(n_out, n_in)
            input_major = weight.t().contiguous().t()
            for rows in (2, 16, 32, 64):
                x = torch.randn(rows, 1, n_in)
                a = per_call_us(lambda: F.linear(x, weight))
                b = per_call_us(lambda: F.linear(x, input_major))
                print(f"| {name} ({n_in} -> {n_out}) | {rows} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["8x8x32", "16x8x64", "4x16x128"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("student")
    matmul_table(model)
    engine = fast.FastEngine(model, tokenizer)
    engine.native = False  # the layouts matter to the PyTorch step; the C step (bench/decode_native.py) reads them too
    layouts = {"[out, in]": lambda weight: weight, "[in, out]": fast._input_major}
    print("\n| setting | [out, in] s | [in, out] s | speed-up |\n|---|---|---|---|")
    for setting in args.settings:
        prompts, gens, tokens = map(int, setting.split("x"))
        world = ArithWorld(levels=[1, 2, 3], seed=0)
        rows = [encode_prompt(tokenizer, world.example(i).prompt) for i in range(prompts)]
        params = SamplingParams(max_new_tokens=tokens, temperature=1.0)
        times: dict[str, list[float]] = {name: [] for name in layouts}
        for rep in range(args.reps + 1):  # the first round warms up
            for name, layout in layouts.items():
                fast._input_major = layout
                torch.manual_seed(rep)
                started = time.perf_counter()
                engine.generate(rows, gens, params)
                if rep:
                    times[name].append(time.perf_counter() - started)
        fast._input_major = layouts["[in, out]"]
        a, b = (statistics.median(times[name]) for name in layouts)
        print(f"| {setting} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
