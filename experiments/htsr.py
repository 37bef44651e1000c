"""HT-SR schedules in miniature: uniform weight decay vs AlphaDecay, uniform lr vs LLR, pretraining tiny Llamas.

Pretrains each size from scratch on the World English Bible (`reasonrl pretrain`) under three settings at equal
steps and the same data order, over several seeds, and reports held-out perplexity (mean ± std over seeds) and,
for LLR, the steps at which its held-out loss first reaches the uniform run's final loss. Writes
docs/results/htsr.md and PNGs of held-out perplexity and mean α over training. Reproduce:
    .venv/bin/python experiments/htsr.py            (full: 2 sizes x 3 settings x 3 seeds)
    .venv/bin/python experiments/htsr.py --quick    (a smoke run of every code path; writes under runs/ only)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.config import load_config
from reasonrl.pretrain import PretrainOptions, pretrain, pretrain_config
from reasonrl.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
# Every setting shares the base optimizer (AdamW, lr 3e-3 cosine, wd 0.1); only the HT-SR schedule differs.
# LLR's multipliers lie in [r_min, r_max] = [1, 3], so its average lr is above the uniform run's: a gain over
# an untuned uniform lr may be the higher lr, not the per-layer shape (the --quick run shows such a gap).
SETTINGS = {
    "uniform": [],
    "alphadecay": ["optim.weight_decay_schedule=alphadecay"],
    "llr": ["optim.lr_schedule=llr"],
}


def run(size: str, setting: str, seed: int, args, out_root: Path) -> Path:
    steps = args.steps
    overrides = SETTINGS[setting] + [
        f"train.steps={steps}", f"train.seed={seed}", f"train.eval_every={args.eval_every}",
        f"train.spectral_every={args.eval_every}", f"train.log_every={args.eval_every}", "train.progress=false",
        # α re-measured 20 times per run: the paper's 500 steps are for runs of 10k+ steps.
        f"optim.alphadecay_every={max(1, steps // 20)}", f"optim.warmup_steps={max(1, steps // 20)}",
    ]
    opts = PretrainOptions(size=size, seq_len=args.seq_len, batch_size=args.batch_size, corpus_chars=args.corpus_chars,
                           vocab_size=args.vocab_size)
    run_dir = out_root / f"{size}-{setting}-seed{seed}"
    pretrain(load_config(None, overrides, base=pretrain_config()), opts, run_dir)
    return run_dir


def evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "eval/loss" in r]


def first_step_reaching(rows: list[dict], loss: float) -> int | None:
    """The first eval step whose held-out loss is at or below `loss` (None if never)."""
    return next((r["step"] for r in rows if r["eval/loss"] <= loss), None)


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(runs: dict[tuple[str, str, int], Path], sizes: list[str], seeds: list[int]) -> str:
    lines = ["| size | setting | held-out ppl (final) | vs uniform (per seed) | steps to uniform's final loss |",
             "|---|---|---|---|---|"]
    for size in sizes:
        final_uniform = {s: evals(runs[size, "uniform", s])[-1] for s in seeds}
        for setting in SETTINGS:
            finals = [evals(runs[size, setting, s])[-1]["eval/perplexity"] for s in seeds]
            ratio = [f / final_uniform[s]["eval/perplexity"] for f, s in zip(finals, seeds)]
            reach = [first_step_reaching(evals(runs[size, setting, s]), final_uniform[s]["eval/loss"]) for s in seeds]
            reach_text = ", ".join("never" if r is None else str(r) for r in reach)
            lines.append(f"| {size} | {setting} | {mean_std(finals)} | {mean_std(ratio)} | {reach_text} |")
    return "\n".join(lines)


def plot_mean(runs: dict, size: str, seeds: list[int], key: str, ylabel: str, path: Path, log: bool = False) -> Path:
    """Mean over seeds of `key` per setting, with a band of one standard deviation."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for setting in SETTINGS:
        series = [{r["step"]: r[key] for r in read_metrics(runs[size, setting, s]) if r.get(key) is not None}
                  for s in seeds]
        steps = sorted(set.intersection(*(set(s) for s in series)))
        mean = [statistics.mean(s[t] for s in series) for t in steps]
        std = [statistics.pstdev(s[t] for s in series) for t in steps]
        (line,) = ax.plot(steps, mean, label=setting, marker="o" if len(steps) < 30 else None)
        ax.fill_between(steps, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                        color=line.get_color(), alpha=0.2)
    ax.set(title=f"{size}: {ylabel} (mean ± std over {len(seeds)} seeds)", xlabel="step", ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="nano model, 1 seed, 40 steps, 200k characters")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--corpus-chars", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "htsr")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.seeds, args.steps, args.eval_every = ["nano"], 1, 40, 10
        args.seq_len, args.batch_size, args.vocab_size, args.corpus_chars = 64, 8, 512, 200_000
        args.out = ROOT / "runs" / "htsr-quick"
    seeds = list(range(args.seeds))
    runs, started = {}, time.perf_counter()
    for size in args.sizes:
        for setting in SETTINGS:
            for seed in seeds:
                runs[size, setting, seed] = run(size, setting, seed, args, args.out)
                print(f"{size} {setting} seed {seed}: ppl {evals(runs[size, setting, seed])[-1]['eval/perplexity']:.2f}"
                      f" ({time.perf_counter() - started:.0f} s so far)", flush=True)
    wall = time.perf_counter() - started

    results = args.out if args.quick else ROOT / "docs" / "results"
    results.mkdir(parents=True, exist_ok=True)
    pngs = []
    for size in args.sizes:
        pngs.append(plot_mean(runs, size, seeds, "eval/perplexity", "held-out perplexity",
                              results / f"htsr-{size}-perplexity.png", log=True))
        pngs.append(plot_mean(runs, size, seeds, "spectral/alpha_mean", "mean Hill α", results / f"htsr-{size}-alpha.png"))
    command = "experiments/htsr.py" + (" --quick" if args.quick else "")
    text = (f"# HT-SR schedules in miniature\n\nMade by `.venv/bin/python {command}` in {wall / 60:.1f} minutes "
            f"(sizes {', '.join(args.sizes)}; {len(seeds)} seeds; {args.steps} steps of {args.batch_size} x "
            f"{args.seq_len} tokens; World English Bible, 5% held out).\n\n{table(runs, args.sizes, seeds)}\n\n"
            + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n")
    (results / "htsr.md").write_text(text)
    print(text)
    assert all(math.isfinite(evals(p)[-1]["eval/perplexity"]) for p in runs.values())


if __name__ == "__main__":
    main()
