"""Markdown tables for bench/grpo_vs_trl.py: speed side by side, where reasonrl's time goes, FLOP/s vs peak."""

from __future__ import annotations

import platform
import statistics
import sys
from datetime import date

PHASES = ["generate", "reward", "score", "forward", "backward", "optimizer", "other"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> str:
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    return f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}"


def breakdown(runs: list[dict]) -> dict[str, float]:
    """Median seconds per phase over every measured reasonrl step."""
    steps = [b for r in runs for b in r["breakdown"]]
    return {p: statistics.median(s.get(f"time/{p}", 0.0) for s in steps) for p in PHASES}


def speed_table(results: dict) -> list[str]:
    lines = [
        "| setting (prompts x gens x max tokens) | TRL s/step | reasonrl s/step | speed-up | TRL gen tok/s "
        "| reasonrl gen tok/s | TRL peak RSS MB | reasonrl peak RSS MB | TRL RSS growth MB | reasonrl RSS growth MB "
        "| TRL RSS drift MB | reasonrl RSS drift MB | TRL mean reward | reasonrl mean reward |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, r in results.items():
        t, o = r["trl"], r["reasonrl"]
        lines.append(
            f"| {setting} | {t['sec_per_step']:.3f} | {o['sec_per_step']:.3f} "
            f"| **{t['sec_per_step'] / o['sec_per_step']:.2f}x** "
            f"| {t['tok_per_sec']:.0f} | {o['tok_per_sec']:.0f} | {t['peak_rss_mb']:.0f} | {o['peak_rss_mb']:.0f} "
            f"| {t['train_rss_mb']:.0f} | {o['train_rss_mb']:.0f} "
            f"| {t['rss_drift_mb']:+.0f} | {o['rss_drift_mb']:+.0f} "
            f"| {t['reward']:.3f} | {o['reward']:.3f} |"
        )
    return lines


def breakdown_table(results: dict) -> list[str]:
    lines = ["| setting | " + " | ".join(PHASES) + " | total |", "|---" * (len(PHASES) + 2) + "|"]
    for setting, r in results.items():
        b = breakdown(r["runs"]["reasonrl"])
        total = sum(b.values())
        cells = " | ".join(f"{b[p]:.3f} ({100 * b[p] / total:.0f}%)" for p in PHASES)
        lines.append(f"| {setting} | {cells} | {total:.3f} |")
    return lines


def flops_table(results: dict, peak: float) -> list[str]:
    lines = [
        "| setting | generation GFLOP | generation GFLOP/s | training GFLOP | training GFLOP/s (fwd+bwd) "
        "| % of matmul peak (training) |",
        "|---|---|---|---|---|---|",
    ]
    for setting, r in results.items():
        runs = r["runs"]["reasonrl"]
        b = breakdown(runs)
        gen = statistics.mean(x["flops"]["generate"] for x in runs)
        train = statistics.mean(x["flops"]["train"] for x in runs)
        train_rate = train / max(1e-9, b["forward"] + b["backward"])
        lines.append(
            f"| {setting} | {gen / 1e9:.2f} | {gen / 1e9 / max(1e-9, b['generate']):.1f} | {train / 1e9:.2f} "
            f"| {train_rate / 1e9:.1f} | {100 * train_rate / peak:.1f}% |"
        )
    return lines


def scaling_table(scaling: dict) -> list[str]:
    lines = ["| setting | s/step | generated tokens/step | generate s | forward+backward s |", "|---|---|---|---|---|"]
    for setting, runs in scaling.items():
        b = breakdown(runs)
        times = [t for r in runs for t in r["step_times"]]
        tokens = [t for r in runs for t in r["tokens"]]
        lines.append(
            f"| {setting} | {statistics.median(times):.3f} | {statistics.mean(tokens):.0f} "
            f"| {b['generate']:.3f} | {b['forward'] + b['backward']:.3f} |"
        )
    return lines


def learning_table(learning: dict) -> list[str]:
    lines = ["| library | seed | mean reward, first 5 steps | mean reward, last 10 steps |", "|---|---|---|---|"]
    for lib, runs in learning.items():
        for seed, rewards in runs:
            lines.append(
                f"| {lib} | {seed} | {statistics.mean(rewards[:5]):.3f} | {statistics.mean(rewards[-10:]):.3f} |"
            )
    return lines


def write_report(results: dict, args, peak: float, scaling: dict | None = None, learning: dict | None = None) -> str:
    out = [
        "# GRPO step time: reasonrl vs TRL",
        "",
        f"Measured {date.today().isoformat()} by `python bench/grpo_vs_trl.py {' '.join(sys.argv[1:])}`.",
        f"Machine: {_cpu_name()}, {args.threads} torch threads, no GPU. {_versions()}.",
        "",
        "Both libraries train the shipped `student` (827k-parameter Llama) on arithmetic levels 1-3 with temperature "
        "1.0, lr 5e-5 constant, `loss_type=dapo`, beta 0, one optimizer step per generation round, one micro-batch, "
        "float32 (TRL's default bf16 autocast off), gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'} in both, and the same `accuracy` reward function. "
        "Each library/setting/repetition is a fresh process; the two "
        f"libraries alternate. {args.warmup} warm-up steps per process are excluded; {args.steps} measured steps "
        f"x {args.reps} processes per cell. Seconds per step are medians; tokens/s are generated completion tokens "
        "over measured time; peak RSS is the process's high-water mark (imports included), RSS growth is the "
        "peak during training minus the RSS before the first step; RSS drift is the RSS after the last measured step "
        "minus after the first (flat memory means near 0).",
        "",
        *speed_table(results),
        "",
        "## Where a reasonrl step's time goes",
        "",
        "Median seconds per measured step (share of the summed phases). `score` is extra log-prob passes "
        "(reference/old policy): none with beta 0 and one update per round.",
        "",
        *breakdown_table(results),
        "",
        "## Distance to the hardware limit",
        "",
        f"A {2048}x{2048} float32 matmul probe in the same run reaches **{peak / 1e9:.1f} GFLOP/s** on "
        f"{args.threads} threads. FLOPs are counted by `torch.utils.flop_counter` over one step.",
        "",
        *flops_table(results, peak),
    ]
    if scaling:
        out += ["", "## How step time grows", "", *scaling_table(scaling)]
    if learning:
        out += ["", "## Learning is not traded for speed", "", *learning_table(learning)]
    return "\n".join(out) + "\n"
