"""What the control experiments' pages share (experiments/pebble.py, experiments/dtr.py): per-run summaries from
metrics.jsonl, paired differences over seeds with 95% Student-t intervals and their verdicts, and learning curves.

A verdict reads the interval of a per-seed quantity (a paired difference, or a linear combination of arms seed by
seed): "holds" when it lies wholly on the claimed side of 0, "does not hold" when wholly on the other side,
"inconclusive" when it straddles 0 (or fewer than 2 seeds finished)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from harness import t_interval
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.tracking import read_metrics

KEPT = "<!-- notes: kept when the experiment rewrites this file -->"


def results(exp, group: str, arm: str) -> dict[int, dict]:
    """Seed -> the result.json of a finished run of `arm` in `group` (a task or a dataset) of experiment `exp`."""
    found = {s: exp.run_dir(group, arm, s) / "result.json" for s in exp.CONFIG["seeds"]}
    return {s: json.loads(f.read_text()) for s, f in found.items() if f.exists()}


def per_arm(exp, group: str, key: str) -> dict[str, dict[int, float]]:
    """Arm -> seed -> `key` of the finished runs of `group`."""
    return {arm: {s: r[key] for s, r in results(exp, group, arm).items()} for arm in exp.ARMS}


def last_mean(rows: list[dict], key: str, n: int) -> float:
    """Mean of `key` over the last `n` records that hold it (nan when none does)."""
    values = [r[key] for r in rows if key in r][-n:]
    return statistics.fmean(values) if values else float("nan")


def last_value(rows: list[dict], key: str) -> float:
    """The last logged value of `key` (nan when never logged)."""
    values = [r[key] for r in rows if key in r]
    return values[-1] if values else float("nan")


def combine(per_arm: dict[str, dict[int, float]], weights: dict[str, float]) -> list[float]:
    """Σ_arm weight × value, seed by seed, over the seeds where every weighted arm has a value that is not nan (a
    paired difference when the weights are {a: 1, b: -1})."""
    seeds = set.intersection(*({s for s, v in per_arm.get(arm, {}).items() if not math.isnan(v)} for arm in weights))
    return [sum(w * per_arm[arm][s] for arm, w in weights.items()) for s in sorted(seeds)]


def show(values: list[float], digits: int = 2) -> str:
    """Mean ± the half-width of its 95% t-interval ("—" without values)."""
    if not values:
        return "—"
    mean, half = t_interval(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def verdict(values: list[float], side: str) -> str:
    """side ">": the claim is that the quantity is > 0; "<": < 0."""
    if len(values) < 2:
        return "inconclusive (fewer than 2 seeds)"
    mean, half = t_interval(values)
    low, high = mean - half, mean + half
    if side == "<":
        low, high = -high, -low
    return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"


def plot_curves(panels: dict[str, dict[str, list[Path]]], key: str, label: str, path: Path) -> None:
    """One panel per title in `panels` ({arm: run directories}): the mean over runs of `key` against the step, with
    each run as a faint line."""
    fig = Figure(figsize=(5.5 * len(panels), 3.6))
    for i, (title, arms) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for arm, dirs in arms.items():
            runs = [[(r["step"], r[key]) for r in read_metrics(d) if key in r] for d in dirs]
            runs = [r for r in runs if r]
            if not runs:
                continue
            n = min(len(r) for r in runs)
            steps = [s for s, _ in runs[0][:n]]
            mean = [statistics.fmean(r[j][1] for r in runs) for j in range(n)]
            (line,) = ax.plot(steps, mean, marker=".", label=arm)
            for r in runs:
                ax.plot([s for s, _ in r], [v for _, v in r], color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        if i == 0:
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
