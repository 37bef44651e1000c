"""The page of experiments/htsr.py: the seed-0 search grids, test perplexity with 95% intervals over seeds, paired
ratios to the baseline, a verdict per claim, the tail fits behind the schedules, and PNG curves."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from harness import t_interval
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.plot import write_keeping_notes
from reasonrl.spectral import analyze_path
from reasonrl.tracking import read_metrics

NOTES = "<!-- notes: kept when the experiment rewrites this file -->"
# (claim, setting, compared with, smallest gain the paper reports: an interval above 1 - this excludes the claim)
RATIO_CLAIMS = [
    (
        "(a) AlphaDecay lowers perplexity vs uniform weight decay, each at its own wd0 (paper, AdamW wd 0.1: "
        "2.3% at 60M, 2.8% at 135M)",
        "alphadecay",
        "uniform",
        0.02,
    ),
    (
        "(b) LLR lowers perplexity vs uniform lr, each at its own lr (paper: 1.8-7.5% at 60M-1B)",
        "llr",
        "uniform",
        0.018,
    ),
    (
        "(d) LLR's gain comes from where the lr goes, not from a higher mean lr: LLR beats `lr_matched` (this "
        "page's control, not a paper claim; the gain the LLR paper reports over uniform taken as the bar)",
        "llr",
        "lr_matched",
        0.018,
    ),
    (
        "(e) LLR lowers perplexity with Muon too, each at its own lr (paper: reported, sizes as for AdamW)",
        "llr_muon",
        "uniform_muon",
        0.018,
    ),
]


@dataclass
class Choice:
    lr: float
    wd: float
    grids: dict[str, dict[float, Path]]  # knob -> value -> its seed-0 run


@dataclass
class Experiment:
    sizes: list[str]
    settings: list[str]
    seeds: list[int]
    steps: int
    eval_every: int
    runs: dict[tuple[str, str, int], Path] = field(default_factory=dict)
    chosen: dict[tuple[str, str], Choice] = field(default_factory=dict)
    losses: dict[tuple[str, str, int], dict[str, float]] = field(default_factory=dict)  # validation / test loss
    multiplier: dict[str, float] = field(default_factory=dict)  # per size: lr_matched's multiplier of LLR's lr

    def test_ppl(self, size: str, setting: str) -> list[float]:
        return [math.exp(self.losses[size, setting, s]["test"]) for s in self.seeds]

    def ratios(self, size: str, setting: str, other: str) -> list[float]:
        """Paired by seed: test perplexity of `setting` over that of `other`."""
        return [a / b for a, b in zip(self.test_ppl(size, setting), self.test_ppl(size, other))]

    def all_runs(self) -> set[Path]:
        grids = {p for c in self.chosen.values() for runs in c.grids.values() for p in runs.values()}
        return grids | set(self.runs.values())


def baseline(setting: str) -> str:
    """The uniform run a setting is compared with: the one with the same optimizer."""
    return "uniform_muon" if setting.endswith("_muon") else "uniform"


def evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "eval/loss" in r]


def interval(values: list[float], digits: int = 3) -> str:
    mean, half = t_interval(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def first_step_reaching(rows: list[dict], loss: float) -> int | None:
    """The first eval step whose validation loss is at or below `loss` (None if never)."""
    return next((r["step"] for r in rows if r["eval/loss"] <= loss), None)


def grid_table(exp: Experiment) -> str:
    """Seed 0's final validation perplexity for every value each search tried; the chosen one in bold."""
    lines = ["| size | setting | knob (other knob fixed) | validation ppl per value (seed 0) |", "|---|---|---|---|"]
    for (size, name), choice in exp.chosen.items():
        for knob, runs in choice.grids.items():
            optim = yaml.safe_load((next(iter(runs.values())) / "config.yaml").read_text())["optim"]
            fixed = f"wd {optim['weight_decay']:g}" if knob == "lr" else f"lr {optim['lr']:g}"
            cells = []
            for value, run_dir in sorted(runs.items()):
                text = f"{value:g}: {evals(run_dir)[-1]['eval/perplexity']:.2f}"
                cells.append(f"**{text}**" if value == getattr(choice, knob) else text)
            lines.append(f"| {size} | {name} | {knob} ({fixed}) | {', '.join(cells)} |")
    return "\n".join(lines)


def results_table(exp: Experiment) -> str:
    lines = [
        "| size | setting | lr | wd | validation ppl | **test ppl** | test ppl / baseline's (paired; per seed) "
        "| validation loss change over the last 10% of steps | steps to baseline's final validation loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in exp.sizes:
        for name in exp.settings:
            choice, base = exp.chosen[size, name], baseline(name)
            validation = [math.exp(exp.losses[size, name, s]["validation"]) for s in exp.seeds]
            ratios = exp.ratios(size, name, base)
            per_seed = ", ".join(f"{r:.3f}" for r in ratios)
            ratio = "1" if name == base else f"{interval(ratios)} ({per_seed})"
            tail = [tail_change(exp.runs[size, name, s]) for s in exp.seeds]
            reach = [reach_step(exp, size, name, s) for s in exp.seeds]
            lines.append(
                f"| {size} | {name} | {choice.lr:.4g} | {choice.wd:g} | {interval(validation, 2)} | "
                f"{interval(exp.test_ppl(size, name), 2)} | {ratio} | {interval(tail, 4)} | "
                + ", ".join("never" if r is None else str(r) for r in reach)
                + " |"
            )
    return "\n".join(lines)


def tail_change(run_dir: Path) -> float:
    """Validation loss at the end minus at 90% of the steps (nats; the eval nearest to 90%)."""
    rows = evals(run_dir)
    at_90 = min(rows, key=lambda r: abs(r["step"] - 0.9 * rows[-1]["step"]))
    return rows[-1]["eval/loss"] - at_90["eval/loss"]


def reach_step(exp: Experiment, size: str, name: str, seed: int) -> int | None:
    target = evals(exp.runs[size, baseline(name), seed])[-1]["eval/loss"]
    return first_step_reaching(evals(exp.runs[size, name, seed]), target)


def ratio_verdict(ratios: list[float], smallest_gain: float) -> tuple[str, str]:
    mean, half = t_interval(ratios)
    low, high = mean - half, mean + half
    span = f"ratio {mean:.3f}, 95% interval [{low:.3f}, {high:.3f}] over {len(ratios)} seeds"
    if high < 1 and low > 1 - smallest_gain:
        return "holds, smaller", f"{span}: a gain, but below the {100 * smallest_gain:.1f}% bar"
    if high < 1:
        return "holds", f"{span}: the whole interval is a gain"
    if low > 1 - smallest_gain:
        return "does not hold", f"{span}: excludes a gain of {100 * smallest_gain:.1f}% or more"
    return "inconclusive", f"{span}: spans no effect and a gain of {100 * smallest_gain:.1f}%"


def speedup_verdict(exp: Experiment, size: str) -> tuple[str, str, str]:
    """(c): LLR reaches uniform's final validation loss in fewer steps (paper: up to 1.5x fewer tokens). It does not
    hold when no seed gets there more than one eval before the end: the eval grid cannot resolve less."""
    reach = [reach_step(exp, size, "llr", s) for s in exp.seeds]
    claim = "(c) LLR reaches uniform's final loss in fewer steps (paper: up to 1.5x fewer tokens)"
    if all(r is None or r >= exp.steps - exp.eval_every for r in reach):
        per_seed = ", ".join("never" if r is None else str(r) for r in reach)
        return claim, "does not hold", f"no seed gets there more than one eval before step {exp.steps} ({per_seed})"
    if any(r is None for r in reach):
        never = sum(r is None for r in reach)
        verdict = "does not hold" if never == len(reach) else "inconclusive"
        return claim, verdict, f"LLR never reaches uniform's final validation loss in {never} of {len(reach)} seeds"
    speedups = [exp.steps / r for r in reach]
    mean, half = t_interval(speedups)
    span = (
        f"speedup {mean:.2f}x, 95% interval [{mean - half:.2f}, {mean + half:.2f}] (per seed "
        + ", ".join(f"{s:.2f}" for s in speedups)
        + f"; eval every {exp.eval_every} steps, validation curves)"
    )
    if mean - half > 1:
        return claim, "holds", span
    return claim, "does not hold" if mean + half <= 1 else "inconclusive", span


def verdict_table(exp: Experiment) -> str:
    lines = ["| size | claim | verdict | why |", "|---|---|---|---|"]
    for size in exp.sizes:
        rows = []
        for claim, name, other, gain in RATIO_CLAIMS:
            if name in exp.settings and other in exp.settings:
                rows.append((claim, *ratio_verdict(exp.ratios(size, name, other), gain)))
        if "llr" in exp.settings:
            rows.insert(2, speedup_verdict(exp, size))
        lines += [f"| {size} | {claim} | **{verdict}** | {why} |" for claim, verdict, why in rows]
    return "\n".join(lines)


def tail_fit_table(exp: Experiment, setting: str) -> str:
    """Per module type, over layers and seeds of the final `setting` models: eigenvalue count, both fits, KS distances.

    σ is the standard error of the Hill α under the power-law model, (α - 1)/sqrt(n_tail): the noise the
    schedules' linear maps stretch to their full [min, max] range when α differs little between modules.
    """
    lines = [
        "| size | module type | shape | eigenvalues | tail (Hill / KS) "
        "| Hill α | σ(Hill α) | D (Hill) | KS α | D (KS) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in exp.sizes:
        groups = defaultdict(list)
        for seed in exp.seeds:
            for s in analyze_path(str(exp.runs[size, setting, seed] / "final"), device="cpu"):
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


def mean_std(values: list[float], digits: int = 2) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def plot_curves(exp: Experiment, size: str, key: str, ylabel: str, path: Path, log: bool = False) -> Path:
    """Mean over seeds of `key` per setting at its chosen values, with a band of one standard deviation."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in exp.settings:
        series = [
            {r["step"]: r[key] for r in read_metrics(exp.runs[size, name, s]) if r.get(key) is not None}
            for s in exp.seeds
        ]
        steps = sorted(set.intersection(*(set(s) for s in series)))
        mean = [statistics.mean(s[t] for s in series) for t in steps]
        std = [statistics.pstdev(s[t] for s in series) for t in steps]
        choice = exp.chosen[size, name]
        (line,) = ax.plot(steps, mean, label=f"{name} (lr {choice.lr:.3g}, wd {choice.wd:g})")
        low, high = [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set(title=f"{size}: {ylabel} (mean ± std over {len(exp.seeds)} seeds)", xlabel="step", ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    return path


def plot_grid(exp: Experiment, size: str, path: Path) -> Path:
    """Seed 0's final validation perplexity against lr (wd 0.1) and against wd (at the chosen lr), per setting."""
    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = dict(zip(("lr", "wd"), fig.subplots(1, 2)))
    for name in exp.settings:
        for knob, runs in exp.chosen[size, name].grids.items():
            values = sorted(runs)
            ppl = [evals(runs[v])[-1]["eval/perplexity"] for v in values]
            axes[knob].plot(values, ppl, marker="o", label=name, color=f"C{exp.settings.index(name)}")
    for knob, ax in axes.items():
        ax.set(xscale="log", xlabel=knob, ylabel="validation ppl (seed 0, final)", title=f"{size}: search over {knob}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110)
    return path


def write_page(exp: Experiment, results: Path, command: str, args) -> None:
    results.mkdir(parents=True, exist_ok=True)
    pngs = []
    for size in exp.sizes:
        pngs.append(plot_grid(exp, size, results / f"htsr-{size}-grid.png"))
        pngs.append(
            plot_curves(
                exp, size, "eval/perplexity", "validation perplexity", results / f"htsr-{size}-perplexity.png", True
            )
        )
        pngs.append(plot_curves(exp, size, "spectral/alpha_mean", "mean Hill α", results / f"htsr-{size}-alpha.png"))
    runs = exp.all_runs()
    cpu_minutes = sum(json.loads((p / "cpu_seconds.json").read_text()) for p in runs) / 60
    tokens = args.steps * args.batch_size * args.seq_len
    text = (
        f"# HT-SR schedules in miniature\n\nMade by `OMP_NUM_THREADS=1 .venv/bin/python {command}` (one thread): "
        f"{len(runs)} runs, {cpu_minutes:.1f} CPU-minutes of training and evaluation in all; sizes "
        f"{', '.join(exp.sizes)}; {len(exp.seeds)} seeds; {args.steps} steps of {args.batch_size} x {args.seq_len} "
        f"tokens ({tokens / 1e6:.2f}M tokens), cosine to 0.1 x lr after {max(1, args.steps // 20)} warm-up steps; "
        "AdamW; World English Bible, 5% held out. The held-out tokens are split in two disjoint parts: the first "
        f"{args.eval_tokens} are the **validation** part (the curves; every lr and wd choice), the rest the **test** "
        "part (scored once per final model; the verdicts). Every setting sees the same data order per seed.\n\n"
        "Protocol (seed 0, by final validation loss): uniform searches lr over 1e-3, 3e-3, 1e-2 at wd 0.1 (an lr "
        "grid whose best value is at an edge is widened by one step), then wd over 0.1 and 0.3 at the chosen lr. "
        "LLR keeps uniform's chosen wd and searches its lr the same way; AlphaDecay, which changes only the weight "
        "decay, keeps uniform's chosen lr and searches its wd0 over 0.1 and 0.3. Seeds 1 and 2 run at the chosen "
        "values. Intervals are 95% Student-t over seeds; ratios are paired by seed (same data order and init)."
        + (
            ""
            if not exp.multiplier
            else " `lr_matched` is uniform lr at LLR's chosen lr times "
            + ", ".join(f"{m:.3f} ({s})" for s, m in exp.multiplier.items())
            + ": LLR's multiplier averaged over parameters and updates (lr-weighted), from that size's LLR runs."
        )
        + f"\n\n## Search (seed 0, validation)\n\n{grid_table(exp)}\n\n"
        f"## Results at the chosen values\n\n{results_table(exp)}\n\n"
        "The baseline is uniform of the same optimizer. Steps are eval steps (every "
        f"{exp.eval_every}) of the validation curve: the first at or below the same seed's baseline's final "
        "validation loss.\n\n"
        f"## Verdicts (test split)\n\n{verdict_table(exp)}\n\n"
        'A claim holds when the whole 95% interval of the paired ratio lies below 1 ("holds, smaller" when it also '
        "excludes the smallest gain the paper reports), does not hold when it excludes that gain without lying "
        "below 1, and is inconclusive otherwise.\n\n"
        "## The tail fits behind the schedules\n\n"
        "Final baseline models, per module type: mean ± std over layers and seeds. Hill is the fixed-median fit the "
        "schedules use; KS is weightwatcher's x_min choice.\n\n"
        + "\n\n".join(f"`{s}`:\n\n{tail_fit_table(exp, s)}" for s in dict.fromkeys(map(baseline, exp.settings)))
        + "\n\n"
        + "\n".join(f"![{p.stem}]({p.name})" for p in pngs)
        + "\n"
    )
    write_keeping_notes(results / "htsr.md", text, NOTES)
    print(text)
