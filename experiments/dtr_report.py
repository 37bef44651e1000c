"""The page, plots and verdicts of experiments/dtr.py (verdict rules: experiments/control_report.py): paired
differences of D4RL normalised scores, seed by seed, per dataset."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from control_report import KEPT, combine, per_arm, plot_curves, results, show, verdict

from reasonrl.plot import write_keeping_notes

LEARNED_ARMS = ("dtr", "dt", "iql", "dtr_raw")  # every arm on the learned reward: the same reward at a seed
CLAIMS = [
    ("DTR beats DT (same learned reward)", {"dtr": 1, "dt": -1}),
    ("DTR beats IQL (same learned reward)", {"dtr": 1, "iql": -1}),
    ("z-scoring the ensemble helps DTR", {"dtr": 1, "dtr_raw": -1}),
    ("the learned reward costs IQL (true-reward ceiling above)", {"iql_true": 1, "iql": -1}),
    ("DTR (learned reward) beats IQL on the true reward", {"dtr": 1, "iql_true": -1}),
]


def claims(exp, level: str) -> list[str]:
    scores = per_arm(exp, level, "score")
    rows = ["| claim | paired difference (normalised score) | verdict |", "|---|---|---|"]
    for text, weights in CLAIMS:
        diffs = combine(scores, weights)
        quantity = " − ".join(weights)
        rows.append(f"| {text} | {quantity} = {show(diffs, 1)} | {verdict(diffs, '>')} |")
    return rows


def arm_table(exp, level: str) -> list[str]:
    cols = [
        ("score", "normalised score", 1),
        ("return", "return", 0),
        ("reward/true_corr", "reward corr.", 3),
        ("reward/true_accuracy", "reward acc.", 3),
        ("pref/label_accuracy", "label acc.", 3),
        ("steps", "steps", 0),
        ("cpu_s", "CPU s", 0),
    ]
    lines = ["| arm | " + " | ".join(title for _, title, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm in exp.ARMS:
        runs = list(results(exp, level, arm).values())
        cells = [show([r[k] for r in runs if r[k] == r[k]], d) for k, _, d in cols]  # r[k] == r[k]: not nan
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def same_reward(exp, level: str) -> str:
    """Whether, seed by seed, every learned-reward arm's ensemble agreed with the true-return order equally often."""
    accuracy = per_arm(exp, level, "reward/true_accuracy")
    seeds = sorted(set.intersection(*(set(accuracy[a]) for a in LEARNED_ARMS)))
    if not seeds:
        return "Same learned reward across arms: no seed has all four learned-reward arms yet."
    agree = all(len({accuracy[a][s] for a in LEARNED_ARMS}) == 1 for s in seeds)
    return (
        f"Same learned reward across {', '.join(LEARNED_ARMS)}: reward accuracies identical at every seed "
        f"({len(seeds)} seeds): {'yes' if agree else 'NO — the arms did not train on the same reward'}."
    )


def dataset_table(exp) -> list[str]:
    lines = [
        "| dataset | transitions | episodes | return mean | min | max | normalised mean | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in exp.LEVELS:
        path = exp.dataset_path(level).with_suffix(".json")
        if path.exists():
            d = json.loads(path.read_text())
            lines.append(
                f"| {level} | {d['transitions']} | {d['episodes']} | {d['return_mean']:.0f} | {d['return_min']:.0f} "
                f"| {d['return_max']:.0f} | {d['normalized_score_mean']:.1f} | {d['cpu_s']:.0f} |"
            )
    return lines


def cost_table(exp) -> list[str]:
    lines = ["| dataset | arm | runs | steps | CPU s / 1k gradient steps (whole process) |", "|---|---|---|---|---|"]
    for level in exp.LEVELS:
        for arm in exp.ARMS:
            runs = list(results(exp, level, arm).values())
            if runs:
                per_k = statistics.fmean(1000 * r["cpu_s"] / r["steps"] for r in runs)
                lines.append(f"| {level} | {arm} | {len(runs)} | {runs[0]['steps']} | {per_k:.1f} |")
    return lines


def write_doc(path: Path, exp) -> None:
    behaviour = exp.behaviour_dir() / "result.json"
    if not behaviour.exists():
        return
    b = json.loads(behaviour.read_text())
    stem = path.with_suffix("")
    panels = {
        level: {arm: [exp.run_dir(level, arm, s) for s in results(exp, level, arm)] for arm in exp.ARMS}
        for level in exp.LEVELS
    }
    plot_curves(panels, "eval/normalized_score", "D4RL normalised score", Path(f"{stem}-score.png"))
    plot_curves({"behaviour SAC": {"sac": [exp.behaviour_dir()]}}, "eval/return", "return", Path(f"{stem}-sac.png"))
    lines = [
        "# DTR vs DT and IQL on a preference-learned reward, Hopper-v5 (issue 28)",
        "",
        "Written by `experiments/dtr.py` (datasets, arms, sizes and cost in its docstring). Datasets made here from",
        f"our own SAC run ({b['steps']:,} steps, {b['cpu_s']:.0f} CPU-s): medium checkpoint step {b['medium_step']:,}",
        f"(evaluation return {b['medium_eval_return']:.0f}; target a third of D4RL's expert, {exp.MEDIUM_RETURN:.0f}).",
        f"Seeds {list(exp.CONFIG['seeds'])}, paired across arms. Scores: D4RL normalised, 100 × (return + 20.27) /",
        "(3234.3 + 20.27) with D4RL's Hopper reference returns, of the mean of the last 2 evaluations; Gymnasium's",
        "Hopper-v5 is not D4RL's hopper-v2, so the numbers are not comparable with published tables. Cells: mean ± 95%",
        "t-interval over seeds.",
        "",
        "Reward corr.: Pearson correlation of the training reward with the true reward over the dataset; reward acc.:",
        "the ensemble's preference against the true-return order on the labelled pairs; label acc.: the labels' own",
        "accuracy (10% flipped by the teacher).",
        "",
        *dataset_table(exp),
        "",
    ]
    for level in exp.LEVELS:
        lines += [f"## {level}", "", "### Verdicts", "", *claims(exp, level), "", same_reward(exp, level), ""]
        lines += ["### Arms", "", *arm_table(exp, level), ""]
    lines += [
        f"![normalised score]({Path(f'{stem}-score.png').name})",
        f"![behaviour SAC]({Path(f'{stem}-sac.png').name})",
        "",
        "## CPU cost (one thread, a shared 2-core machine)",
        "",
        *cost_table(exp),
        "",
    ]
    write_keeping_notes(path, "\n".join(lines), KEPT)
