"""The fused C kernels (modeling/native.py) against PyTorch ops alone, side by side in one process, interleaved,
on the shipped student: generation, and the GRPO training forward + backward.

    python bench/native_kernels.py [--settings 8x8x32 16x8x64 4x16x128] [--reps 9] [--threads 1]

Prints the time of one decode step at a few batch sizes (cache 41 columns deep); per setting the median seconds
to sample PROMPTS x GENERATIONS completions of up to TOKENS tokens at temperature 1 (the same seed for both) and
whether both drew the same tokens; and per setting the median seconds of the loss forward and backward over
batches gathered by a GRPO run (the bench's settings: dapo loss, beta 0, one micro-batch).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from reasonrl.config import load_config
from reasonrl.modeling import native
from reasonrl.modeling.decoder import Decoder, native_step
from reasonrl.models import load_model
from reasonrl.rollout import fast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import generation_parser, interleaved_generation, per_call_us


def step_table(model) -> None:
    decoder = Decoder(model, decode=True)
    print("| rows | PyTorch step us | C step us | speed-up |\n|---|---|---|---|")
    with torch.inference_mode():
        for rows in (8, 32, 64):
            a, b = step_times(decoder, rows)
            print(f"| {rows} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")


def step_times(decoder: Decoder, rows: int, length: int = 64, col: int = 40) -> tuple[float, float]:
    """Median microseconds of one decode step at `rows` rows and cache column `col`: PyTorch ops, then the C step."""
    layers, kv, dim = len(decoder.layers), decoder.kv_heads, decoder.head_dim
    torch.manual_seed(0)
    k_cache, v_cache = torch.randn(layers, rows, kv, length, dim), torch.randn(layers, rows, kv, length, dim)
    cos, sin = decoder.rope_table(length, "cpu")
    cos, sin = cos[None, col].expand(rows, -1).contiguous(), sin[None, col].expand(rows, -1).contiguous()
    ids, starts = torch.randint(3, 300, (rows,)), torch.randint(0, 8, (rows,))
    bias = torch.zeros(rows, col + 1).masked_fill_(torch.arange(col + 1) < starts[:, None], float("-inf"))
    bias = bias.repeat_interleave(kv, 0).unsqueeze(1)
    step = native_step(decoder, k_cache)
    native.enabled = False
    a = per_call_us(
        lambda: decoder.forward(ids[:, None], cos[:, None], sin[:, None], k_cache, v_cache, col, bias),
        200,
        7,
        statistics.median,
    )
    native.enabled = True
    b = per_call_us(lambda: step(ids, cos, sin, k_cache, v_cache, col, starts), 200, 7, statistics.median)
    return a, b


def training_table(settings: list[str], reps: int, run_dir: str) -> None:
    from reasonrl.trainer import Trainer

    print("\n| setting | PyTorch fwd+bwd s | C kernels fwd+bwd s | speed-up |\n|---|---|---|---|")
    for setting in settings:
        prompts, gens, tokens = map(int, setting.split("x"))
        cfg = load_config(
            None,
            [
                f"train.prompts_per_step={prompts}",
                f"rollout.num_generations={gens}",
                f"rollout.max_completion_length={tokens}",
                "rollout.temperature=1.0",
                "algo.loss_type=dapo",
                "algo.beta=0.0",
                "algo.num_iterations=1",
                f"train.micro_batch_size={prompts * gens}",
                "data.eval_n=0",
                "train.steps=1",
                "train.progress=false",
                "train.seed=0",
            ],
        )
        trainer = Trainer(cfg, run_dir=f"{run_dir}/{setting}")
        trainer.train()  # one step, so the batches below come from a policy that has trained
        batches = [trainer.algo.gather(trainer.ctx) for _ in range(4)]
        times: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(reps + 1):  # the first round warms up
            for use in (False, True) if rep % 2 else (True, False):
                native.enabled = use
                for batch in batches:
                    trainer.algo.prepare_update(trainer.ctx, batch, 0)
                    started = time.perf_counter()
                    for micro in batch.micro_batches(prompts * gens):
                        loss, _ = trainer.algo.loss(trainer.ctx, micro)
                        loss.backward()
                    if rep:
                        times[use].append(time.perf_counter() - started)
                trainer.optimizer.zero_grad(set_to_none=True)
        native.enabled = True
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {setting} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")


def main() -> None:
    args = generation_parser(__doc__, reps=9).parse_args()
    torch.set_num_threads(args.threads)
    if native.kernels() is None:
        raise SystemExit("the C kernels did not build (see the warning above); nothing to compare")
    model, tokenizer = load_model("student")
    step_table(model)
    engine = fast.FastEngine(model, tokenizer)
    variants = {"PyTorch": lambda: setattr(native, "enabled", False), "C": lambda: setattr(native, "enabled", True)}
    print(
        "\n| setting | PyTorch generation s | C kernels generation s | speed-up | same tokens |\n|---|---|---|---|---|"
    )
    for setting in args.settings:
        (a, b), same = interleaved_generation(engine, tokenizer, setting, args.reps, variants)
        print(f"| {setting} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {'yes' if same else 'no'} |")
    native.enabled = True
    with tempfile.TemporaryDirectory() as run_dir:
        training_table(args.settings, max(2, args.reps // 2), run_dir)


if __name__ == "__main__":
    main()
