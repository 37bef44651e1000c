"""Generation speed of the lean decoder with the fused C kernels (rollout/native.py) against PyTorch ops alone,
side by side in one process, interleaved, on the shipped student.

    python bench/decode_native.py [--settings 8x8x32 16x8x64 4x16x128] [--reps 9] [--threads 1]

Prints the time of one decode step at a few batch sizes (cache 41 columns deep), then per setting the median
seconds to sample PROMPTS x GENERATIONS completions of up to TOKENS tokens at temperature 1 with each step (the
same seed for both) and whether both drew the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reasonrl.models import encode_prompt, load_model
from reasonrl.rollout import fast, native
from reasonrl.rollout.base import SamplingParams
from reasonrl.worlds.arith import ArithWorld


def median_us(fn, calls: int = 200, rounds: int = 7) -> float:
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - started) / calls)
    return statistics.median(times) * 1e6


def step_table(model) -> None:
    decoder = fast.Decoder(model, decode=True)
    layers, kv, dim, length, col = len(decoder.layers), decoder.kv_heads, decoder.head_dim, 64, 40
    print("| rows | PyTorch step us | C step us | speed-up |\n|---|---|---|---|")
    with torch.inference_mode():
        for rows in (8, 32, 64):
            torch.manual_seed(0)
            k_cache, v_cache = torch.randn(layers, rows, kv, length, dim), torch.randn(layers, rows, kv, length, dim)
            cos, sin = decoder.rope_table(length, "cpu")
            cos, sin = cos[None, col].expand(rows, -1).contiguous(), sin[None, col].expand(rows, -1).contiguous()
            ids, starts = torch.randint(3, 300, (rows,)), torch.randint(0, 8, (rows,))
            bias = torch.zeros(rows, col + 1).masked_fill_(torch.arange(col + 1) < starts[:, None], float("-inf"))
            bias = bias.repeat_interleave(kv, 0).unsqueeze(1)
            step = fast.native_step(decoder, k_cache)
            native.enabled = False
            a = median_us(lambda: decoder.forward(ids[:, None], cos[:, None], sin[:, None], k_cache, v_cache, col, bias))
            native.enabled = True
            b = median_us(lambda: step(ids, cos, sin, k_cache, v_cache, col, starts))
            print(f"| {rows} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["8x8x32", "16x8x64", "4x16x128"])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if native.kernels() is None:
        raise SystemExit("the C kernels did not build (see the warning above); nothing to compare")
    model, tokenizer = load_model("student")
    step_table(model)
    engine = fast.FastEngine(model, tokenizer)
    print("\n| setting | PyTorch step s | C step s | speed-up | same tokens |\n|---|---|---|---|---|")
    for setting in args.settings:
        prompts, gens, tokens = map(int, setting.split("x"))
        world = ArithWorld(levels=[1, 2, 3], seed=0)
        rows = [encode_prompt(tokenizer, world.example(i).prompt) for i in range(prompts)]
        params = SamplingParams(max_new_tokens=tokens, temperature=1.0)
        times: dict[bool, list[float]] = {False: [], True: []}
        same = True
        for rep in range(args.reps + 1):  # the first round warms up
            drawn = []
            for use in (False, True) if rep % 2 else (True, False):
                native.enabled = use
                torch.manual_seed(rep)
                started = time.perf_counter()
                drawn.append(engine.generate(rows, gens, params).completion_ids)
                if rep:
                    times[use].append(time.perf_counter() - started)
            same &= drawn[0] == drawn[1]
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {setting} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
