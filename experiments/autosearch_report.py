"""The page, plots and verdicts of experiments/autosearch.py.

A verdict comes from the 95% Student-t interval of the per-seed paired difference (seed s of one arm against seed s
of GRPO; both start from kb_student and see the same questions in the same order): "holds" when the interval lies on
the claimed side, "does not hold" when it lies on the other side, "inconclusive" when it straddles it. "EM not lower"
is a non-inferiority claim with a margin of 3 points: it holds when the interval lies above -3 points."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from harness import t_interval
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.plot import write_keeping_notes
from reasonrl.tracking import read_metrics

KEPT = "<!-- notes: kept when the experiment rewrites this file -->"
EM_MARGIN = 3.0  # points: "not lower" ("not higher") tolerates an interval reaching 3 points past 0
DEPTHS = (0, 1, 2, 3)
PERCENT = {"em", "f1", "over_search_rate", "under_search_rate"}  # shown in points; searches as they are


def results(exp, arm: str) -> dict[int, dict]:
    """Seed -> finished result of an arm at its chosen rate."""
    lr = exp.chosen_lr(arm)
    if lr is None:
        return {}
    found = {s: exp.run_dir(arm, lr, s) / "result.json" for s in exp.CONFIG["seeds"]}
    return {s: json.loads(f.read_text()) for s, f in found.items() if f.exists()}


def value(test: dict, metric: str, depth: int) -> float:
    v = test[f"{metric}/d_min_{depth}"]
    return 100 * v if metric in PERCENT else v


def per_seed(exp, arm: str, metric: str, depth: int) -> dict[int, float]:
    return {s: value(r["test"], metric, depth) for s, r in results(exp, arm).items()}


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in sorted(a) if s in b]


def show(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    mean, half = t_interval(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def verdict(diffs: list[float], side: str, margin: float = 0.0) -> str:
    """side "<": the claim is diff < 0, ">": diff > 0; non-inferiority ">=": diff > -margin, "<=": diff < margin."""
    if len(diffs) < 2:
        return "inconclusive (fewer than 2 seeds)"
    mean, half = t_interval(diffs)
    low, high = mean - half, mean + half
    if side == "<":
        return "holds" if high < 0 else "does not hold" if low > 0 else "inconclusive"
    if side == ">":
        return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    if side == "<=":
        return "holds" if high < margin else "does not hold" if low > margin else "inconclusive"
    return "holds" if low > -margin else "does not hold" if high < -margin else "inconclusive"


METRICS = {
    "em": ("EM (%)", 1),
    "f1": ("F1 (%)", 1),
    "searches": ("searches / episode", 2),
    "over_search_rate": ("over-search rate (%)", 1),
    "under_search_rate": ("under-search rate (%)", 1),
}


def tables(exp) -> list[str]:
    student = json.loads((exp.OUT / "kb_student" / "test.json").read_text())
    lines = []
    for metric, (title, digits) in METRICS.items():
        lines += [f"### {title}, greedy, test set ({exp.CONFIG['test_n']} per d_min)", ""]
        lines += ["| arm | " + " | ".join(f"d_min {d}" for d in DEPTHS) + " |", "|---" * (len(DEPTHS) + 1) + "|"]
        lines.append("| kb_student | " + " | ".join(f"{value(student, metric, d):.{digits}f}" for d in DEPTHS) + " |")
        for arm in exp.ARMS:
            cells = [show(list(per_seed(exp, arm, metric, d).values()), digits) for d in DEPTHS]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        for arm in [a for a in exp.ARMS if a != "grpo"]:
            cells = [
                show(paired(per_seed(exp, arm, metric, d), per_seed(exp, "grpo", metric, d)), digits) for d in DEPTHS
            ]
            lines.append(f"| {arm} − grpo (paired) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def claims(exp) -> list[str]:
    def diff(arm: str, metric: str, d: int) -> list[float]:
        return paired(per_seed(exp, arm, metric, d), per_seed(exp, "grpo", metric, d))

    rows = ["| claim | d_min | paired difference vs GRPO | verdict |", "|---|---|---|---|"]

    def add(text: str, arm: str, metric: str, d: int, side: str, margin: float = 0.0) -> None:
        values = diff(arm, metric, d)
        rows.append(f"| {text} | {d} | {show(values, 2)} | {verdict(values, side, margin)} |")

    for d in (1, 2, 3):
        add("AutoSearch (process) searches less than GRPO", "autosearch", "searches", d, "<")
        add("AutoSearch (process) over-searches less than GRPO", "autosearch", "over_search_rate", d, "<")
        add("AutoSearch (process) EM not lower than GRPO (margin 3 pts)", "autosearch", "em", d, ">=", EM_MARGIN)
    for d in (1, 2, 3):
        add("AutoSearch (episode) searches less than GRPO", "autosearch_episode", "searches", d, "<")
        add("AutoSearch (episode) over-searches less than GRPO", "autosearch_episode", "over_search_rate", d, "<")
        add(
            "AutoSearch (episode) EM not lower than GRPO (margin 3 pts)", "autosearch_episode", "em", d, ">=", EM_MARGIN
        )
    for d in (1, 2, 3):
        add("uniform penalty searches less than GRPO", "uniform", "searches", d, "<")
    add("uniform penalty under-searches more on 3-hop", "uniform", "under_search_rate", 3, ">")
    add("uniform penalty loses EM on 3-hop", "uniform", "em", 3, "<")
    for arm in ("autosearch", "autosearch_episode"):
        add(f"{arm} does not under-search more on 3-hop (margin 3 pts)", arm, "under_search_rate", 3, "<=", EM_MARGIN)
        add(f"{arm} EM not lower on 3-hop (margin 3 pts)", arm, "em", 3, ">=", EM_MARGIN)
    return rows


def curves(exp, metric: str, smooth: int = 10) -> dict[str, list[tuple[list[int], list[float]]]]:
    """Arm -> per-seed (steps, moving average of a training metric over `smooth` steps)."""
    out: dict[str, list[tuple[list[int], list[float]]]] = {}
    for arm in exp.ARMS:
        for r in results(exp, arm).values():
            rows = [row for row in read_metrics(exp.run_dir(arm, r["lr"], r["seed"])) if metric in row]
            steps, values = [row["step"] for row in rows], [row[metric] for row in rows]
            averaged = [statistics.fmean(values[max(0, i - smooth + 1) : i + 1]) for i in range(len(values))]
            out.setdefault(arm, []).append((steps, averaged))
    return out


def plot(exp, metric: str, title: str, path: Path) -> None:
    """One panel per d_min, a line per arm (mean over seeds) of the training metric `metric/d_min_K`."""
    fig = Figure(figsize=(13, 3.2))
    for i, d in enumerate(DEPTHS):
        ax = fig.add_subplot(1, len(DEPTHS), i + 1)
        for arm, runs in curves(exp, f"{metric}/d_min_{d}").items():
            n = min(len(steps) for steps, _ in runs)
            mean = [statistics.fmean(v[j] for _, v in runs) for j in range(n)]
            ax.plot(runs[0][0][:n], mean, label=arm)
        ax.set_title(f"d_min {d}")
        ax.set_xlabel("step")
        if i == 0:
            ax.set_ylabel(title)
            ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


def write_doc(path: Path, exp) -> None:
    if not (exp.OUT / "kb_student" / "test.json").exists():
        return
    stem = path.with_suffix("")
    plot(exp, "episodes/searches", "searches / episode (sampled, training)", Path(f"{stem}-searches.png"))
    plot(exp, "episodes/em", "EM (sampled, training)", Path(f"{stem}-em.png"))
    cpu = []
    for arm in exp.ARMS:
        for r in results(exp, arm).values():
            rows = [row for row in read_metrics(exp.run_dir(arm, r["lr"], r["seed"])) if "step_time" in row]
            wall = statistics.fmean(row["step_time"] for row in rows)
            per_step = r["train_cpu_s"] / r["steps"]
            cpu.append(f"| {arm} | {r['seed']} | {r['lr']:g} | {r['steps']} | {per_step:.2f} | {wall:.2f} |")
    chosen = ", ".join(f"{arm} {exp.chosen_lr(arm)}" for arm in exp.ARMS)
    lines = [
        "# AutoSearch vs outcome-only GRPO on the kb world (issue 23)",
        "",
        "Written by `experiments/autosearch.py` (method, arms and splits in its docstring). Every arm starts from",
        f"`kb_student` and trains {exp.CONFIG['steps']} steps of 8 questions x 8 episodes (d_min 0-3, rl shard);",
        f"seeds {list(exp.CONFIG['seeds'])}; learning rate per arm chosen on the validation split from",
        f"{list(exp.CONFIG['lrs'])}: {chosen}. Cells: mean ± 95% t-interval over seeds; paired rows: arm minus GRPO,",
        "seed by seed. Over-search rate: correct episodes that searched more than d_min, among correct ones;",
        "under-search rate: episodes that searched less than d_min.",
        "",
        "## Verdicts",
        "",
        *claims(exp),
        "",
        "## Test set",
        "",
        *tables(exp),
        f"![searches]({Path(f'{stem}-searches.png').name})",
        f"![em]({Path(f'{stem}-em.png').name})",
        "",
        "## CPU per training step (one thread)",
        "",
        "CPU s / step: the whole `reasonrl train` process (model load and two tiny evals included) over its steps;",
        "wall s / step: the trainer's own `step_time` (generation, probes, update), on a shared machine.",
        "",
        "| arm | seed | lr | steps | CPU s / step | wall s / step |",
        "|---|---|---|---|---|---|",
        *cpu,
        "",
    ]
    write_keeping_notes(path, "\n".join(lines), KEPT)
