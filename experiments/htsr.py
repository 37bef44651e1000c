"""HT-SR schedules in miniature: uniform weight decay vs AlphaDecay, uniform lr vs LLR, pretraining tiny Llamas.

Pretrains each size from scratch on the World English Bible (`reasonrl pretrain`) under four settings at equal
steps and the same data order, over several seeds, and reports held-out perplexity (mean ± std over seeds) and
the steps at which each run's held-out loss first reaches the uniform run's final loss. The fourth setting,
`lr_matched`, is uniform lr at LLR's average multiplier (measured from the same size's LLR runs): LLR's
multipliers lie in [1, 3], so a gain of LLR over uniform may be the higher lr rather than the per-layer shape.
Two more settings run Muon (optim.name=muon: Muon on hidden matrices, AdamW on the rest) at --muon-lr, uniform
and with LLR, as the LLR paper reports LLR with both optimizers; each setting is compared with the uniform run of
its own optimizer. Also reports the tail fits behind the schedules (eigenvalues per module, both α estimators, KS
distances). Writes docs/results/htsr.md (text below the notes marker survives a re-run) and PNGs of held-out
perplexity and mean α over training; a run of other --settings than the four AdamW ones writes them under --out.
Reproduce:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/htsr.py          (full: 2 sizes x 4 settings x 3 seeds)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/htsr.py --settings uniform_muon llr_muon --out runs/htsr-muon
    .venv/bin/python experiments/htsr.py --quick                     (a smoke run of every code path; runs/ only)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.algos.pretrain import pretrain_config
from reasonrl.config import config_to_dict, load_config
from reasonrl.models import load_model
from reasonrl.optim import lr_lambda
from reasonrl.plot import write_keeping_notes
from reasonrl.spectral import alpha_ratios, analyze_path, weight_modules
from reasonrl.spectral.esd import layer_and_type
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
NOTES = "<!-- notes: kept when the experiment rewrites this file -->"
# Every setting shares the base optimizer (AdamW, lr 3e-3 cosine, wd 0.1); only the HT-SR schedule differs, and
# for lr_matched the base lr (set in main, once the size's LLR runs are done: the dict order is the run order).
SETTINGS = {
    "uniform": [],
    "alphadecay": ["optim.weight_decay_schedule=alphadecay"],
    "llr": ["optim.lr_schedule=llr"],
    "lr_matched": [],
    "uniform_muon": ["optim.name=muon"],
    "llr_muon": ["optim.name=muon", "optim.lr_schedule=llr"],
}
# The *_muon settings' optim.lr: the best of 1e-3, 3e-3, 1e-2, 3e-2 for uniform_muon on nano, seed 0, by final
# held-out perplexity (107.5, 59.1, 46.7, 47.1), i.e. chosen on the split the table reports.
MUON_LR = 1e-2
ADAMW_SETTINGS = ["uniform", "alphadecay", "llr", "lr_matched"]  # the default --settings, and docs/results/htsr.md's


def baseline(setting: str) -> str:
    """The uniform run a setting is compared with: the one with the same optimizer."""
    return "uniform_muon" if setting.endswith("_muon") else "uniform"


def run(size: str, setting: str, seed: int, args, extra: list[str]) -> Path:
    """One pretraining run; with --reuse, a finished run with the same config is not redone."""
    steps = args.steps
    overrides = (
        SETTINGS[setting]
        + extra
        + [
            f"train.steps={steps}",
            f"train.seed={seed}",
            f"train.eval_every={args.eval_every}",
            f"train.spectral_every={args.eval_every}",
            f"train.log_every={args.eval_every}",
            "train.progress=false",
            # α re-measured 20 times per run: the paper's 500 steps are for runs of 10k+ steps.
            f"optim.alphadecay.every={max(1, steps // 20)}",
            f"optim.warmup_steps={max(1, steps // 20)}",
            f"algo.size={size}",
            f"algo.seq_len={args.seq_len}",
            f"algo.batch_size={args.batch_size}",
            f"algo.corpus_chars={args.corpus_chars}",
            f"algo.vocab_size={args.vocab_size}",
            f"algo.eval_tokens={args.eval_tokens}",
        ]
    )
    cfg = load_config(None, overrides, base=pretrain_config())
    run_dir = args.out / f"{size}-{setting}-seed{seed}"
    if not (args.reuse and finished(run_dir, cfg)):
        Trainer(cfg, run_dir=run_dir).train()
    return run_dir


def finished(run_dir: Path, cfg) -> bool:
    """Whether `run_dir` holds a completed run of this config (the pretraining options are its algo section).

    Every setting the saved config has must match; settings added to Config since then (new keys) are ignored,
    so a run stays reusable across library versions that only grew the config.
    """
    try:
        same_cfg = _within(yaml.safe_load((run_dir / "config.yaml").read_text()), config_to_dict(cfg))
        return same_cfg and (run_dir / "final").is_dir() and evals(run_dir)[-1]["step"] == cfg.train.steps
    except (OSError, IndexError, KeyError):
        return False


def _within(saved, current) -> bool:
    """Whether every key of the nested dict `saved` is in `current` with an equal value."""
    if isinstance(saved, dict):
        return isinstance(current, dict) and all(k in current and _within(v, current[k]) for k, v in saved.items())
    return saved == current


def evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "eval/loss" in r]


def first_step_reaching(rows: list[dict], loss: float) -> int | None:
    """The first eval step whose held-out loss is at or below `loss` (None if never)."""
    return next((r["step"] for r in rows if r["eval/loss"] <= loss), None)


def llr_mean_multiplier(run_dir: Path) -> float:
    """LLR's lr multiplier averaged over parameters and over updates, weighted by the base schedule's lr.

    So lr_matched (uniform lr x this) gives every parameter, on average, the same summed lr as LLR did. Each
    re-measurement's target multipliers are rebuilt from the logged `llr/alpha/<module>` with LLR's own map and
    eased in with its linear ramp; modules without an α and parameters outside the tuned modules (norms) count at 1.
    """
    cfg = load_config(run_dir / "config.yaml")
    optim, steps = cfg.optim, cfg.train.steps
    model, _ = load_model(str(run_dir / "final"), "float32", "cpu")
    sizes = {name: sum(p.numel() for p in m.parameters(recurse=False)) for name, m in weight_modules(model)}
    total = sum(p.numel() for p in model.parameters())
    targets = []  # (step after which it was set, {module: target multiplier})
    for record in read_metrics(run_dir):
        alphas = {k.removeprefix("llr/alpha/"): v for k, v in record.items() if k.startswith("llr/alpha/")}
        if alphas:
            ratios = alpha_ratios(
                list(alphas.values()),
                optim.llr.mapping,
                optim.llr.min_ratio,
                optim.llr.max_ratio,
                [layer_and_type(n)[0] for n in alphas],
            )
            targets.append((record["step"], dict(zip(alphas, ratios.tolist()))))
    base = lr_lambda(optim, steps)
    current, start, target, ramp_start = {}, {}, {}, 0
    lr_sum = weighted = 0.0
    for update in range(1, steps + 1):
        # A target set after update s (LLR.step at step_count s) is eased in over updates s+1 .. s+ramp.
        while targets and targets[0][0] < update:
            ramp_start, target = targets.pop(0)
            start = {n: current.get(n, target[n]) for n in target}
        done = 1.0 if optim.llr.ramp <= 1 else min(1.0, (update - ramp_start) / optim.llr.ramp)
        current = {n: start[n] + (target[n] - start[n]) * done for n in target}
        mean = (sum(sizes[n] * r for n, r in current.items()) + total - sum(sizes[n] for n in current)) / total
        lr_sum += base(update - 1)  # LambdaLR: update u uses the factor of step u - 1
        weighted += base(update - 1) * mean
    return weighted / lr_sum


def mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: dict[tuple[str, str, int], Path], sizes: list[str], settings: list[str], seeds: list[int]) -> str:
    """Final held-out perplexity per setting, and against the same seed's uniform run of the same optimizer."""
    lines = [
        "| size | setting | held-out ppl (final) | vs uniform (per seed) | steps to uniform's final loss (per seed) |",
        "|---|---|---|---|---|",
    ]
    for size in sizes:
        for setting in settings:
            final_uniform = {s: evals(runs[size, baseline(setting), s])[-1] for s in seeds}
            finals = [evals(runs[size, setting, s])[-1]["eval/perplexity"] for s in seeds]
            ratio = [f / final_uniform[s]["eval/perplexity"] for f, s in zip(finals, seeds)]
            reach = [first_step_reaching(evals(runs[size, setting, s]), final_uniform[s]["eval/loss"]) for s in seeds]
            reach_text = ", ".join("never" if r is None else str(r) for r in reach)
            lines.append(f"| {size} | {setting} | {mean_std(finals)} | {mean_std(ratio, 3)} | {reach_text} |")
    return "\n".join(lines)


def tail_fit_table(runs: dict, sizes: list[str], seeds: list[int], setting: str) -> str:
    """Per module type, over layers and seeds of the final `setting` models: eigenvalue count, both fits, KS distances.

    σ is the standard error of the Hill α under the power-law model, (α - 1)/sqrt(n_tail): the noise the
    schedules' linear maps stretch to their full [min, max] range when α differs little between modules.
    """
    lines = [
        "| size | module type | shape | eigenvalues | tail (Hill / KS) "
        "| Hill α | σ(Hill α) | D (Hill) | KS α | D (KS) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        groups = defaultdict(list)
        for seed in seeds:
            for s in analyze_path(str(runs[size, setting, seed] / "final"), device="cpu"):
                groups[s.type].append(s)
        for mtype, rows in groups.items():
            first = rows[0]
            shape = "x".join(map(str, first.shape))
            if first.status != "ok":
                lines.append(f"| {size} | {mtype} | {shape} | {first.n_eigs} | {first.status} | - | - | - | - | - |")
                continue
            col = {key: [getattr(r, key) for r in rows] for key in ("alpha", "D", "alpha_ks", "D_ks", "n_tail_ks")}
            sigma = [(r.alpha - 1) / math.sqrt(r.n_tail) for r in rows]
            lines.append(
                f"| {size} | {mtype} | {shape} | {first.n_eigs} | {first.n_tail} / "
                f"{statistics.mean(col['n_tail_ks']):.0f} | {mean_std(col['alpha'])} | "
                f"{statistics.mean(sigma):.2f} | {mean_std(col['D'], 3)} | {mean_std(col['alpha_ks'])} | "
                f"{mean_std(col['D_ks'], 3)} |"
            )
    return "\n".join(lines)


def plot_mean(
    runs: dict, size: str, settings: list[str], seeds: list[int], key: str, ylabel: str, path: Path, log: bool = False
) -> Path:
    """Mean over seeds of `key` per setting, with a band of one standard deviation."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for setting in settings:
        series = [
            {r["step"]: r[key] for r in read_metrics(runs[size, setting, s]) if r.get(key) is not None} for s in seeds
        ]
        steps = sorted(set.intersection(*(set(s) for s in series)))
        mean = [statistics.mean(s[t] for s in series) for t in steps]
        std = [statistics.pstdev(s[t] for s in series) for t in steps]
        (line,) = ax.plot(steps, mean, label=setting, marker="o" if len(steps) < 30 else None)
        ax.fill_between(
            steps,
            [m - d for m, d in zip(mean, std)],
            [m + d for m, d in zip(mean, std)],
            color=line.get_color(),
            alpha=0.2,
        )
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
    # Defaults: the committed run, sized to ~40 CPU-minutes at one thread (about 0.06 / 0.17 s per step).
    parser.add_argument("--sizes", nargs="+", default=["nano", "tiny"])
    parser.add_argument("--settings", nargs="+", default=ADAMW_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--muon-lr", type=float, default=MUON_LR, help="optim.lr of the *_muon settings")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--corpus-chars", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "htsr")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of the same config in --out")
    args = parser.parse_args()
    settings = list(dict.fromkeys(args.settings))
    needed = {baseline(s) for s in settings} | ({"llr"} if "lr_matched" in settings else set())
    if not needed <= set(settings):
        parser.error(
            f"--settings {' '.join(settings)} needs {' and '.join(sorted(needed - set(settings)))} too "
            f"(the baselines the table compares with)"
        )
    settings.sort(key=list(SETTINGS).index)  # lr_matched after llr, whose runs set its lr
    if args.quick:
        args.sizes, args.seeds, args.steps, args.eval_every = ["nano"], 1, 40, 10
        args.seq_len, args.batch_size, args.vocab_size, args.corpus_chars = 64, 8, 512, 200_000
        args.out = ROOT / "runs" / "htsr-quick"
    seeds = list(range(args.seeds))
    base_lr = pretrain_config().optim.lr
    runs, multiplier, started = {}, {}, time.perf_counter()  # started: for the progress lines
    for size in args.sizes:
        for setting in settings:
            extra = [f"optim.lr={args.muon_lr:g}"] if setting.endswith("_muon") else []
            if setting == "lr_matched":
                multiplier[size] = statistics.mean(llr_mean_multiplier(runs[size, "llr", s]) for s in seeds)
                extra = [f"optim.lr={base_lr * multiplier[size]:.6g}"]
            for seed in seeds:
                runs[size, setting, seed] = run(size, setting, seed, args, extra)
                print(
                    f"{size} {setting} seed {seed}: ppl {evals(runs[size, setting, seed])[-1]['eval/perplexity']:.2f}"
                    f" ({time.perf_counter() - started:.0f} s so far)",
                    flush=True,
                )
    # Training time from each run directory (config written after data prep, metrics last written at the end), so
    # a --reuse invocation still reports what the runs cost.
    train_minutes = (
        sum((p / "metrics.jsonl").stat().st_mtime - (p / "config.yaml").stat().st_mtime for p in runs.values()) / 60
    )

    results = args.out if args.quick or settings != ADAMW_SETTINGS else ROOT / "docs" / "results"
    results.mkdir(parents=True, exist_ok=True)
    pngs = []
    for size in args.sizes:
        pngs.append(
            plot_mean(
                runs,
                size,
                settings,
                seeds,
                "eval/perplexity",
                "held-out perplexity",
                results / f"htsr-{size}-perplexity.png",
                log=True,
            )
        )
        pngs.append(
            plot_mean(
                runs, size, settings, seeds, "spectral/alpha_mean", "mean Hill α", results / f"htsr-{size}-alpha.png"
            )
        )
    params = {
        size: sum(
            p.numel() for p in load_model(str(runs[size, settings[0], 0] / "final"), "float32", "cpu")[0].parameters()
        )
        for size in args.sizes
    }
    command = " ".join(["experiments/htsr.py", *sys.argv[1:]])
    muon = [s for s in settings if s.endswith("_muon")]
    text = (
        f"# HT-SR schedules in miniature\n\nMade by `OMP_NUM_THREADS=1 .venv/bin/python {command}` (one thread): "
        f"{len(runs)} runs, {train_minutes:.1f} minutes of training and evaluation in all; sizes "
        + ", ".join(f"{s} ({params[s] / 1e6:.2f}M parameters)" for s in args.sizes)
        + f"; {len(seeds)} seeds; {args.steps} steps of {args.batch_size} x {args.seq_len} tokens; World English "
        f"Bible, 5% held out, the first {args.eval_tokens} held-out tokens scored; every setting sees the same data "
        "order per seed."
        + ("" if settings == muon else f" AdamW, lr {base_lr:g} cosine, wd 0.1.")
        + (
            ""
            if "lr_matched" not in settings
            else " `lr_matched` is uniform lr at "
            + ", ".join(f"{multiplier[s]:.3f} x {base_lr:g} ({s})" for s in args.sizes)
            + ": LLR's multiplier averaged over parameters and updates (lr-weighted), from that size's LLR runs."
        )
        + (
            ""
            if not muon
            else f" {', '.join(f'`{s}`' for s in muon)}: Muon on the hidden matrices and AdamW on "
            f"embeddings and norms (`optim.name=muon`, updates scaled to AdamW's RMS), lr {args.muon_lr:g} cosine, "
            "wd 0.1; compared with `uniform_muon`."
        )
        + f"\n\n{table(runs, args.sizes, settings, seeds)}\n\n"
        "Steps are eval steps (every "
        f"{args.eval_every}): the first at which held-out loss is at or below the "
        "same seed's uniform run's final held-out loss (of the same optimizer).\n\n"
        "## The tail fits behind the schedules\n\n"
        "Final uniform models, per module type: mean ± std over layers and seeds. Hill is the fixed-median fit the "
        "schedules use; KS is weightwatcher's x_min choice.\n\n"
        + "\n\n".join(
            f"`{s}`:\n\n{tail_fit_table(runs, args.sizes, seeds, s)}" for s in dict.fromkeys(map(baseline, settings))
        )
        + "\n\n"
        + "\n".join(f"![{p.stem}]({p.name})" for p in pngs)
        + "\n"
    )
    write_keeping_notes(results / "htsr.md", text, NOTES)
    print(text)
    assert all(math.isfinite(evals(p)[-1]["eval/perplexity"]) for p in runs.values())


if __name__ == "__main__":
    main()
