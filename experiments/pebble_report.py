"""The page, plots and verdicts of experiments/pebble.py (verdict rules: experiments/control_report.py).

The gap claim uses, seed by seed, d = (rl_sallm_f - noisy) - 0.5 (oracle - noisy): d > 0 means RL-SaLLM-F recovered
more than half of the oracle-noisy gap on that seed, so "holds" says its mean lies above half the gap with 95%
confidence. It is only meaningful where the gap itself exists (the claim before it)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from control_report import KEPT, combine, per_arm, plot_curves, results, show, verdict

from reasonrl.plot import write_keeping_notes

METRICS = {"success": ("success rate", 2), "return": ("return", 0)}


def asks(result: dict, overrides: tuple[str, ...]) -> float:
    """Labeller calls: first asks, the swapped asks of the double-check (every strict first answer; the scripted
    labeller never fails) and the imaginations."""
    queries = result["pref/feedback"]
    checked = queries * (1 - result["pref/ambiguous_rate"]) if "feedback.double_check=true" in overrides else 0.0
    return queries + checked + result["pref/imagined"] + result["pref/imagine_failed"]


def cell(values: list[float], digits: int) -> str:
    values = [v for v in values if not math.isnan(v)]
    return show(values, digits)


def arm_table(exp, task: str) -> list[str]:
    cols = [
        ("success", "success", 2),
        ("return", "return", 0),
        ("pref/label_accuracy", "label acc.", 3),
        ("reward/true_accuracy", "reward acc.", 3),
        ("pref/ambiguous_rate", "ambiguous", 3),
        ("pref/double_check_rejected", "dc rejected", 3),
        ("pref/imagined_share", "imagined share", 3),
        ("pref/feedback", "queries", 0),
        ("pref/labels", "labels kept", 0),
        ("asks", "labeller calls", 0),
    ]
    lines = ["| arm | " + " | ".join(title for _, title, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for arm in exp.ARMS:
        runs = list(results(exp, task, arm).values())
        for r in runs:
            r["asks"] = asks(r, exp.ARMS[arm].overrides)
        lines.append(f"| {arm} | " + " | ".join(cell([r[k] for r in runs], d) for k, _, d in cols) + " |")
    return lines


def claims(exp, task: str) -> list[str]:
    rows = ["| claim | metric | per-seed quantity | verdict |", "|---|---|---|---|"]
    for metric, (title, digits) in METRICS.items():
        values = per_arm(exp, task, metric)
        tests = [
            ("the noisy labeller costs performance", "oracle − noisy", {"oracle": 1, "noisy": -1}),
            (
                "RL-SaLLM-F recovers more than half of the oracle−noisy gap",
                "(rl_sallm_f − noisy) − ½ (oracle − noisy)",
                {"rl_sallm_f": 1, "noisy": -0.5, "oracle": -0.5},
            ),
            ("double-check alone helps", "noisy_dc − noisy", {"noisy_dc": 1, "noisy": -1}),
            ("self-augmentation alone helps", "noisy_sa − noisy", {"noisy_sa": 1, "noisy": -1}),
        ]
        for text, quantity, weights in tests:
            diffs = combine(values, weights)
            rows.append(f"| {text} | {title} | {quantity} = {show(diffs, digits)} | {verdict(diffs, '>')} |")
    accuracy = per_arm(exp, task, "pref/label_accuracy")
    diffs = combine(accuracy, {"noisy_dc": 1, "noisy": -1})
    rows.append(
        f"| double-check raises label accuracy | label acc. | noisy_dc − noisy = {show(diffs, 3)} "
        f"| {verdict(diffs, '>')} |"
    )
    return rows


def gap_recovered(exp, task: str, metric: str) -> str:
    """(mean rl_sallm_f - mean noisy) / (mean oracle - mean noisy), descriptive."""
    values = per_arm(exp, task, metric)
    means = {arm: statistics.fmean(v.values()) for arm, v in values.items() if v}
    if not {"oracle", "noisy", "rl_sallm_f"} <= set(means) or means["oracle"] == means["noisy"]:
        return "—"
    return f"{(means['rl_sallm_f'] - means['noisy']) / (means['oracle'] - means['noisy']):.2f}"


def double_check_check(exp) -> str:
    expected = 1 - ((1 - exp.EPS_MISTAKE) ** 2 + exp.EPS_MISTAKE**2)
    measured = [
        r["pref/double_check_rejected"]
        for task in exp.CONFIG["tasks"]
        for arm in ("noisy_dc", "rl_sallm_f")
        for r in results(exp, task, arm).values()
    ]
    seen = f"{statistics.fmean(measured):.3f} (min {min(measured):.3f}, max {max(measured):.3f})" if measured else "—"
    return (
        f"Double-check rejection rate, all double-checked runs: {seen}; expected under flips drawn independently per "
        f"ask at e = {exp.EPS_MISTAKE}: 1 − ((1−e)² + e²) = {expected:.3f} (a labeller with flips fixed per pair "
        "would give 0)."
    )


def cost_table(exp) -> list[str]:
    lines = ["| task | arm | runs | steps | CPU s / 1k steps (whole process) |", "|---|---|---|---|---|"]
    for task in exp.CONFIG["tasks"]:
        for arm in exp.ARMS:
            runs = list(results(exp, task, arm).values())
            if runs:
                per_k = statistics.fmean(1000 * r["cpu_s"] / r["steps"] for r in runs)
                lines.append(f"| {task} | {arm} | {len(runs)} | {runs[0]['steps']} | {per_k:.1f} |")
    return lines


def write_doc(path: Path, exp) -> None:
    tasks = list(exp.CONFIG["tasks"])
    if not any(results(exp, task, arm) for task in tasks for arm in exp.ARMS):
        return
    stem = path.with_suffix("")
    panels = {
        task: {arm: [exp.run_dir(task, arm, s) for s in results(exp, task, arm)] for arm in exp.ARMS} for task in tasks
    }
    plot_curves(panels, "eval/success", "success rate (10 deterministic episodes)", Path(f"{stem}-success.png"))
    plot_curves(panels, "eval/return", "return (10 deterministic episodes)", Path(f"{stem}-return.png"))
    steps = ", ".join(f"{task} {n:,} steps" for task, n in exp.CONFIG["tasks"].items())
    lines = [
        "# RL-SaLLM-F in miniature: double-check and self-augmentation with a noisy labeller (issue 28)",
        "",
        "Written by `experiments/pebble.py` (arms, settings and cost in its docstring). MetaWorld v3, "
        f"{steps}, seeds {list(exp.CONFIG['seeds'])}, paired across arms. Cells: mean ± 95% t-interval over seeds;",
        f"success and return: the mean of the last {exp.LAST_EVALS} evaluations of 10 deterministic episodes.",
        "",
        "**No LLM here.** No LLM endpoint is reachable from this machine, so no run uses one: the `openai:` and `hf:`",
        "labellers are tested against a loopback stub server and a tiny local model only. The noisy labeller is a",
        f"scripted B-Pref teacher standing in for an LLM: {exp.EPS_MISTAKE:.0%} of its strict answers are flipped, "
        f"drawn independently at every ask (the double-check's swapped ask too, as an LLM's inconsistency under "
        f"reordering), and pairs whose true returns are within {exp.EPS_EQUAL} × the mean segment return are "
        'answered "equally good" (stored as 0.5, as B-Pref\'s equal teacher; an LLM\'s "0" is dropped instead).',
        "Mistakes that survive the swap (an LLM misreading both orders alike) are not modelled; the double-check",
        "cannot see those. Its self-augmentation imagines a straight path to the object and target, likely better",
        "than an LLM's imagined trajectories.",
        "",
        double_check_check(exp),
        "",
    ]
    for task in tasks:
        lines += [f"## {task}", "", "### Verdicts", "", *claims(exp, task), ""]
        recovered = ", ".join(f"{title} {gap_recovered(exp, task, m)}" for m, (title, _) in METRICS.items())
        lines += [
            f"Share of the oracle−noisy gap recovered by RL-SaLLM-F (ratio of means): {recovered}; read it only where",
            "the first claim holds (without a gap the ratio is noise).",
            "",
        ]
        lines += ["### Arms", "", *arm_table(exp, task), ""]
    lines += [
        "Label acc.: stored real labels against the true-return order (ties and imagined pairs left out); reward",
        "acc.: the ensemble's preference against the true-return order on the stored real pairs; labeller calls:",
        "first asks + double-check asks + imaginations. With the double-check, ties are dropped too (only strict,",
        "mirrored answers are kept), so those arms learn from fewer, cleaner labels.",
        "",
        f"![success]({Path(f'{stem}-success.png').name})",
        f"![return]({Path(f'{stem}-return.png').name})",
        "",
        "## CPU cost (one thread, a shared 2-core machine)",
        "",
        *cost_table(exp),
        "",
    ]
    write_keeping_notes(path, "\n".join(lines), KEPT)
