"""Spectral analysis of every weight module, reasonrl.spectral vs weightwatcher, on the same models in one run.

For each model: the seconds to analyse all of its weight matrices with `reasonrl.spectral.analyze` (both α fits,
and the Hill fit alone, which is what AlphaDecay/LLR use) and with `weightwatcher.WeightWatcher.analyze()` at its
defaults, as medians over repetitions that alternate which library goes first (one warm-up call each, untimed);
then α per module side by side: reasonrl's fixed-median Hill and KS-optimal x_min fits, weightwatcher's α, and the
difference of the two KS fits (the same estimator, so they should agree). Writes docs/results/bench-spectral.md;
text below its notes marker survives a re-run.

    pip install -c constraints.txt -e ".[bench]"
    OMP_NUM_THREADS=1 python bench/spectral.py                       # student and a 44M-parameter Llama
    OMP_NUM_THREADS=1 python bench/spectral.py --models student runs/htsr/tiny-uniform-seed0/final --no-write

Models: a shipped name (`student`, `teacher`), a model directory, or `llama-44m` (random init, built from config).
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reasonrl.models import load_model
from reasonrl.plot import write_keeping_notes
from reasonrl.spectral import analyze, weight_modules

logging.getLogger("weightwatcher").setLevel(logging.ERROR)  # its per-layer info and "no CUDA" warnings
try:
    import weightwatcher
except ImportError:
    sys.exit(
        "bench/spectral.py compares against weightwatcher, which is not installed: "
        "pip install -c constraints.txt -e '.[bench]'  (or: pip install weightwatcher)"
    )

ROOT = Path(__file__).resolve().parents[1]
NOTES = "<!-- notes: kept when the bench rewrites this file -->"
# A Llama big enough that analysis time is not all fixed overhead: 6 blocks of width 768, tied 8192-token embedding.
LLAMA_44M = {
    "vocab_size": 8192,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
}


def build(name: str) -> torch.nn.Module:
    if name == "llama-44m":
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(**LLAMA_44M)).eval()
    return load_model(name, "float32", "cpu")[0].eval()


def run_reasonrl(model: torch.nn.Module, methods: tuple[str, ...] = ("hill", "ks")) -> list:
    return analyze(model, methods=methods)


def run_weightwatcher(model: torch.nn.Module):
    return weightwatcher.WeightWatcher(model=model).analyze()


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def measure(model: torch.nn.Module, reps: int) -> tuple[dict[str, float], list, object]:
    """Median seconds of each analysis over `reps` alternating repetitions, after one untimed warm-up each."""
    jobs = {
        "reasonrl": lambda: run_reasonrl(model),
        "reasonrl_hill": lambda: run_reasonrl(model, ("hill",)),
        "weightwatcher": lambda: run_weightwatcher(model),
    }
    results = {name: job() for name, job in jobs.items()}  # warm-up: imports, first SVD call, scipy/BLAS set-up
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for rep in range(reps):
        for name in jobs if rep % 2 == 0 else reversed(jobs):
            seconds, results[name] = timed(jobs[name])
            times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}, results["reasonrl"], results["weightwatcher"]


def fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def module_table(model: torch.nn.Module, ours: list, ww) -> tuple[str, list[float]]:
    """One row per module weightwatcher or reasonrl analysed, in module order; and the KS-α differences."""
    by_name = {s.name: s for s in ours}
    ww_rows = {row.longname: row for row in ww.itertuples()}
    # A weight tied to an earlier module (lm_head = embed_tokens) is analysed once by reasonrl, again by weightwatcher.
    first_name = {id(m.weight): n for n, m in weight_modules(model)}
    lines = [
        (
            "| module | shape | eigenvalues (ours / ww) | Hill α (ours) | KS α (ours) | α (ww) | KS α − ww α "
            "| D KS (ours / ww) | tail (ours / ww) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    diffs = []
    for name, module in model.named_modules():
        if name not in by_name and name not in ww_rows:
            continue
        s = by_name.get(name) or by_name.get(first_name.get(id(getattr(module, "weight", None)), ""))
        w = ww_rows.get(name)
        shape = "x".join(map(str, module.weight.shape))
        label = name if name in by_name else f"{name} (tied to {s.name})" if s else name
        ww_alpha = float(w.alpha) if w is not None and w.alpha > 0 else math.nan
        ours_ks = s.alpha_ks if s is not None else math.nan
        diff = ours_ks - ww_alpha
        if not math.isnan(diff) and name in by_name:  # a tied duplicate would count the same fit twice
            diffs.append(diff)
        eigs = f"{s.n_eigs if s else '-'} / {int(w.num_evals) if w is not None else 'skipped'}"
        status = "" if s is None or s.status == "ok" else f" ({s.status})"
        lines.append(
            f"| {label} | {shape} | {eigs} | {fmt(s.alpha if s else math.nan)}{status} | {fmt(ours_ks)} | "
            f"{fmt(ww_alpha)} | {'-' if math.isnan(diff) else f'{diff:+.1e}'} | "
            f"{fmt(s.D_ks if s else math.nan)} / {fmt(float(w.D) if w is not None else math.nan)} | "
            f"{s.n_tail_ks if s and s.status == 'ok' else '-'} / {int(w.num_pl_spikes) if w is not None else '-'} |"
        )
    return "\n".join(lines), diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["student", "llama-44m"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "bench-spectral.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    summary = [
        (
            "| model | parameters | weight modules (ours / ww) | reasonrl s (Hill + KS) | reasonrl s (Hill only) "
            "| weightwatcher s | ww / reasonrl | max abs(KS α − ww α) | median abs(KS α − ww α) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sections = []
    for name in args.models:
        model = build(name)
        seconds, ours, ww = measure(model, args.reps)
        table, diffs = module_table(model, ours, ww)
        params = sum(p.numel() for p in model.parameters())
        abs_diffs = [abs(d) for d in diffs] or [math.nan]
        summary.append(
            f"| {name} | {params / 1e6:.2f}M | {len(ours)} / {len(ww)} | {seconds['reasonrl']:.3f} | "
            f"{seconds['reasonrl_hill']:.3f} | {seconds['weightwatcher']:.3f} | "
            f"**{seconds['weightwatcher'] / seconds['reasonrl']:.1f}x** | {max(abs_diffs):.2g} | "
            f"{statistics.median(abs_diffs):.2g} |"
        )
        sections.append(f"### {name}\n\n{table}\n")
        print(summary[-1], flush=True)

    command = "OMP_NUM_THREADS=1 python bench/spectral.py " + " ".join(sys.argv[1:])
    text = (
        "# Spectral analysis: reasonrl.spectral vs weightwatcher\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} by `{command.strip()}`. "
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s), no GPU; torch {torch.__version__}, weightwatcher "
        f"{weightwatcher.__version__}.\n\n"
        "Seconds are medians of "
        f"{args.reps} repetitions per library (alternating which goes first, after one untimed warm-up) to analyse "
        "every weight module of the model: reasonrl `analyze(model)` (ESD + fixed-median Hill α + KS-optimal α, KS "
        "distances, stable rank, spectral norm) and `analyze(model, methods=('hill',))`, the per-step cost of the "
        "AlphaDecay/LLR schedules; weightwatcher `WeightWatcher(model).analyze()` with its defaults. KS α and "
        "weightwatcher's α are the same estimator (power-law MLE with the x_min that minimises the KS distance).\n\n"
        + "\n".join(summary)
        + "\n\n## α per module\n\n"
        "Eigenvalues of WᵀW per module; `tail` is the number of eigenvalues at or above the KS fit's x_min "
        "(weightwatcher's `num_pl_spikes`). A blank difference means one side did not fit the module.\n\n"
        + "\n".join(sections)
    )
    if args.no_write:
        print(text)
        return
    out = Path(args.out)
    write_keeping_notes(out, text, NOTES)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
