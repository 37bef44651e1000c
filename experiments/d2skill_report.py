"""The page of experiments/d2skill.py: tables, claims with verdicts, and curves (arm gap, training success)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
from harness import t_interval
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.plot import write_keeping_notes
from reasonrl.tracking import read_metrics

NOTES = "<!-- notes: written by hand, kept when the script rewrites the page -->"


def results(exp, arm: str) -> dict[int, dict]:
    """seed -> result.json of the arm's runs at its chosen rate (seed 0's grid included)."""
    lr = exp.chosen_lr(arm)
    out = {}
    for seed in exp.CONFIG["seeds"] if exp.ARMS[arm].main else exp.CONFIG["ablation_seeds"]:
        path = exp.run_dir(arm, lr, seed) / "result.json" if lr is not None else None
        if path is not None and path.exists():
            out[seed] = json.loads(path.read_text())
    return out


def success(exp, arm: str, mode: str = "on") -> dict[int, float]:
    return {s: 100 * r["test"][mode] for s, r in results(exp, arm).items()}


def late_gap(exp, arm: str) -> dict[int, float]:
    """Per seed: the mean arm gap (skill-arm minus baseline-arm training success, points) over the second half."""
    out = {}
    lr = exp.chosen_lr(arm)
    for seed in results(exp, arm):
        rows = [r for r in read_metrics(exp.run_dir(arm, lr, seed)) if "skills/arm_gap" in r]
        half = [r["skills/arm_gap"] for r in rows[len(rows) // 2 :]]
        if half:
            out[seed] = 100 * statistics.fmean(half)
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in sorted(a) if s in b]


def ci(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.1f} points (one seed)" if values else "not run yet"
    mean, half = t_interval(values)
    return f"{mean:+.1f} ± {half:.1f} points (95% t-interval over {len(values)} seeds)"


def verdict(values: list[float]) -> str:
    if len(values) < 2:
        return "an indication only (one seed, no interval)" if values else "not run yet"
    mean, half = t_interval(values)
    return "holds" if mean - half > 0 else "does not hold" if mean + half < 0 else "inconclusive"


def cell(values: dict[int, float]) -> str:
    if not values:
        return "-"
    mean, half = t_interval(list(values.values()))
    seeds = " / ".join(f"{values[s]:.1f}" for s in sorted(values))
    return f"{mean:.1f} ± {half:.1f} ({seeds})"


def claims(exp) -> list[tuple[str, list[float]]]:
    full, base = success(exp, "d2skill"), success(exp, "grpo")
    out = [
        ("D2Skill (skills on) beats GRPO without skills at equal steps (paper: +10-20 points)", paired(full, base)),
        (
            "During training the skill arm beats the baseline arm (mean arm gap, second half of training)",
            list(late_gap(exp, "d2skill").values()),
        ),
        (
            "The bank carries a gain at the end: D2Skill with skills on beats the same model with skills off",
            paired(full, success(exp, "d2skill", "off")),
        ),
        (
            "The weights carry a gain: D2Skill's model without skills beats GRPO",
            paired(success(exp, "d2skill", "off"), base),
        ),
    ]
    for arm in ("no_utility", "no_prune", "task_only", "step_only"):
        out.append((f"The full method beats the ablation '{exp.ARMS[arm].what}'", paired(full, success(exp, arm))))
    return out


def plot(exp, key: str, label: str, path: Path) -> bool:
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    drawn = False
    for arm in exp.ARMS:
        lr = exp.chosen_lr(arm)
        curves = []
        for seed in results(exp, arm):
            rows = [r for r in read_metrics(exp.run_dir(arm, lr, seed)) if key in r]
            curves.append(([r["step"] for r in rows], [100 * r[key] for r in rows]))
        if not curves or not curves[0][0]:
            continue
        steps = curves[0][0]
        values = np.array([np.interp(steps, s, v) for s, v in curves])
        window = max(1, len(steps) // 10)  # smoothed: one step's success is over 32 episodes
        smooth = np.convolve(values.mean(0), np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=f"{arm} ({len(curves)} seeds)")
        drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        FigureCanvasAgg(fig).print_png(str(path))
    return drawn


def write_doc(path: Path, exp) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = exp.CONFIG
    lines = [
        "# D2Skill vs GRPO without skills on the textgame world (issue 24)",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python experiments/d2skill.py --jobs 2` ({c['steps']} steps, "
        f"learning-rate grid {', '.join(f'{lr:g}' for lr in c['lrs'])} on seed {c['seeds'][0]}, seeds "
        f"{', '.join(map(str, c['seeds']))} at the chosen rate). Setup and arms: the script's docstring. Greedy "
        f"success on the test households ({c['test_n']} per task type, 6 types), percent, mean ± 95% t-interval "
        "over seeds (per-seed values in brackets); the rate of GRPO and D2Skill is chosen on the validation split "
        f"with skills on; the ablations run at D2Skill's rate with seed(s) "
        f"{', '.join(map(str, c['ablation_seeds']))}.",
        "",
        "| arm | lr | test success, skills on | skills off | final bank size | train CPU-min (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for arm, spec in exp.ARMS.items():
        res = results(exp, arm)
        lr = exp.chosen_lr(arm)
        sizes = [r["test"].get("bank_size", 0) for r in res.values()]
        cpu = statistics.fmean(r["train_cpu_s"] / 60 for r in res.values()) if res else 0.0
        lr_text = f"{lr:g}" if lr is not None else "-"
        lines.append(
            f"| {arm}: {spec.what} | {lr_text} | {cell(success(exp, arm))} | {cell(success(exp, arm, 'off'))} | "
            f"{statistics.fmean(sizes):.0f} | {cpu:.1f} |"
            if res
            else f"| {arm}: {spec.what} | {lr_text} | - | - | - | - |"
        )
    lines += ["", "## Claims", ""]
    for text, values in claims(exp):
        lines.append(f"- {text}: {ci(values)} -> **{verdict(values)}**")
    name = path.stem
    for key, label, suffix in (
        ("skills/arm_gap", "arm gap (skill arm - baseline arm success, points)", "arm-gap"),
        ("episodes/success", "training success (all episodes, %)", "success"),
    ):
        png = path.parent / f"{name}-{suffix}.png"
        if plot(exp, key, label, png):
            lines += ["", f"![{label}]({png.name})"]
    write_keeping_notes(path, "\n".join(lines) + "\n", NOTES)
