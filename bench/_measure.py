"""Measuring helpers shared by the benchmarks: resident memory over a run, the CPU's matmul peak, FLOPs of a step."""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class RSSSampler:
    """Peak resident memory of this process: the kernel's high-water mark, and the growth during the `with` block
    (sampled every 5 ms, so a spike shorter than that can be missed; the high-water mark never misses)."""

    def __enter__(self):
        self.baseline = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, float]:
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {
            "peak_mb": max(high_water, self.peak),
            "baseline_mb": self.baseline,
            "growth_mb": self.peak - self.baseline,
        }


def matmul_peak_flops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a large float32 matmul: the practical ceiling for this CPU at this thread count."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def step_flops(gather, update) -> dict[str, float]:
    """FLOPs of one step's data gathering (generation) and update (forward + backward), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        batch = gather()
    generate = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        update(batch)
    return {
        "generate": float(generate),
        "train": float(counter.get_total_flops()),
        "train_tokens": float(batch.tensors["attention_mask"].sum()) if len(batch) else 0.0,
    }


def per_call_us(fn, calls: int = 400, rounds: int = 5, pick=min) -> float:
    """Microseconds per call of `fn`: `rounds` timed loops of `calls` calls after one warm-up call, reduced by
    `pick` (the best round by default)."""
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - started) / calls)
    return pick(times) * 1e6


def generation_parser(doc: str, reps: int) -> argparse.ArgumentParser:
    """The options of the side-by-side generation benches: settings PROMPTSxGENERATIONSxTOKENS, rounds, threads."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["8x8x32", "16x8x64", "4x16x128"])
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--threads", type=int, default=1)
    return p


def interleaved_generation(engine, tokenizer, setting: str, reps: int, variants: dict) -> tuple[list[float], bool]:
    """Median seconds for `engine` to sample the setting's completions of arithmetic prompts at temperature 1 under
    each variant (a callable that switches it on), interleaved and alternating in order, the same seed for every
    variant in a round; and whether all variants drew the same tokens. The first round warms up."""
    from reasonrl.models import encode_prompt
    from reasonrl.rollout.base import SamplingParams
    from reasonrl.worlds.arith import ArithWorld

    prompts, gens, tokens = map(int, setting.split("x"))
    world = ArithWorld(levels=[1, 2, 3], seed=0)
    rows = [encode_prompt(tokenizer, world.example(i).prompt) for i in range(prompts)]
    params = SamplingParams(max_new_tokens=tokens, temperature=1.0)
    names, times, same = list(variants), {name: [] for name in variants}, True
    for rep in range(reps + 1):
        drawn = []
        for name in names if rep % 2 else names[::-1]:
            variants[name]()
            torch.manual_seed(rep)
            started = time.perf_counter()
            drawn.append(engine.generate(rows, gens, params).completion_ids)
            if rep:
                times[name].append(time.perf_counter() - started)
        same &= all(d == drawn[0] for d in drawn)
    return [statistics.median(times[name]) for name in names], same
