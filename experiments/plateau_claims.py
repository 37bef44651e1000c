"""The paper claims that experiments/plateau.py tests, their verdicts, and the page and plots it writes.

A verdict comes from the 95% Student-t interval of the per-seed paired difference (seed s of one arm against seed s
of the other; both start from the same model and see the same prompts): "holds" when the interval lies on the
claimed side, "does not hold" when it lies on the other side, "inconclusive" when it straddles it."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import t_interval
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.plot import write_keeping_notes
from reasonrl.tracking import read_metrics

KEPT = "<!-- notes: kept when the experiment rewrites this file -->"


EXPERIMENT = None  # the running experiments/plateau.py module (its arms, run directories and chosen rates)


def plateau():
    return EXPERIMENT


def results(key: str) -> list[dict]:
    """Finished runs of an arm at its chosen learning rate, by seed."""
    p = plateau()
    key, _ = p.resolve(key)
    lr = p.chosen_lr(key)
    if lr is None:
        return []
    found = [p.run_dir(key, lr, s) / "result.json" for s in p.SEEDS]
    return [json.loads(f.read_text()) for f in found if f.exists()]


def accuracies(key: str, split: str = "test") -> dict[int, float]:
    """Seed -> accuracy in points on `split` (test: levels 1-3, ood: levels 4-5)."""
    return {r["seed"]: 100 * r[split]["accuracy"] for r in results(key)}


def curve(key: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, cumulative generated tokens and validation accuracy (%) at each evaluation of one run."""
    p = plateau()
    key, _ = p.resolve(key)
    rows = read_metrics(p.run_dir(key, p.chosen_lr(key), seed))
    steps, tokens, acc, total = [], [], [], 0.0
    for row in rows:
        total += row.get("num_tokens", 0.0)
        if "eval/accuracy" in row:
            steps.append(row["step"])
            tokens.append(total)
            acc.append(100 * row["eval/accuracy"])
    return np.array(steps), np.array(tokens), np.array(acc)


def late_mean(key: str, metric: str, last: int = 50) -> dict[int, float]:
    """Seed -> mean of a training metric over the last `last` steps."""
    p = plateau()
    key, _ = p.resolve(key)
    out = {}
    for r in results(key):
        rows = [row for row in read_metrics(p.run_dir(key, r["lr"], r["seed"])) if metric in row]
        if rows:
            cut = rows[-1]["step"] - last
            out[r["seed"]] = statistics.fmean(row[metric] for row in rows if row["step"] > cut)
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in sorted(a) if s in b]


def ci(values: list[float], unit: str = "points", digits: int = 1) -> str:
    if not values:
        return "not run yet"
    mean, half = t_interval(values)
    return f"{mean:+.{digits}f} ± {half:.{digits}f} {unit} (95% t-interval over {len(values)} seeds)"


def verdict(values: list[float], margin: float = 0.0) -> str:
    """Holds when the interval of `values` lies above -margin (margin 0: above 0), fails when it lies below."""
    if len(values) < 2:
        return "inconclusive (fewer than 2 seeds)"
    mean, half = t_interval(values)
    if mean - half > -margin:
        return "holds"
    if mean + half < -margin:
        return "does not hold"
    return "inconclusive"


def tokens_to_reach(key: str, seed: int, target: float) -> float:
    """Generated tokens until the validation curve first reaches `target` (linear between evaluations); NaN if never."""
    _, tokens, acc = curve(key, seed)
    for i in range(1, len(acc)):
        if acc[i] >= target:
            frac = (target - acc[i - 1]) / (acc[i] - acc[i - 1]) if acc[i] > acc[i - 1] else 1.0
            return float(tokens[i - 1] + max(0.0, frac) * (tokens[i] - tokens[i - 1]))
    return float("nan")


@dataclass
class Claim:
    text: str
    measure: Callable[[], tuple[list[float], str]]  # per-seed values whose sign decides, and how to read them
    margin: float = 0.0


def better(a: str, b: str, split: str = "test") -> Callable[[], tuple[list[float], str]]:
    def measure():
        diff = paired(accuracies(a, split), accuracies(b, split))
        return diff, f"{a} minus {b}: {ci(diff)}"

    return measure


def popd_speed() -> tuple[list[float], str]:
    """1 - POPD's tokens / OPD's to reach 90% of OPD's own validation gain, per seed (> 0: POPD is faster)."""
    values, parts = [], []
    for seed in sorted(accuracies("opd/opd")):
        if seed not in accuracies("opd/popd"):
            continue
        _, _, acc = curve("opd/opd", seed)
        target = acc[0] + 0.9 * (acc[-3:].mean() - acc[0])
        opd, popd = tokens_to_reach("opd/opd", seed, target), tokens_to_reach("opd/popd", seed, target)
        if not np.isfinite(popd):  # never reached: all its tokens were not enough, a bound on the speed-up
            popd = curve("opd/popd", seed)[1][-1]
            parts.append(
                f"seed {seed}: target {target:.1f}%, OPD {opd / 1e3:.0f}k tokens, POPD never (> {popd / 1e3:.0f}k)"
            )
        else:
            parts.append(f"seed {seed}: target {target:.1f}%, OPD {opd / 1e3:.0f}k tokens, POPD {popd / 1e3:.0f}k")
        if np.isfinite(opd):
            values.append(1 - popd / opd)
    return values, "; ".join(parts) + f"; 1 - POPD/OPD: {ci([100 * v for v in values], '%')}"


def equal_tokens() -> tuple[list[float], str]:
    """DPO-VP's final validation accuracy minus GRPO's at DPO-VP's generated tokens, per seed."""
    values = []
    for seed in sorted(accuracies("dpo_vp/dpo_vp")):
        if seed not in accuracies("grpo/grpo"):
            continue
        _, tok_d, acc_d = curve("dpo_vp/dpo_vp", seed)
        _, tok_g, acc_g = curve("grpo/grpo", seed)
        values.append(float(acc_d[-1] - np.interp(tok_d[-1], tok_g, acc_g)))
    return values, f"DPO-VP minus GRPO at DPO-VP's generated tokens (validation): {ci(values)}"


def entropy_kept() -> tuple[list[float], str]:
    diff = paired(late_mean("grpo/dapo", "entropy"), late_mean("grpo/grpo", "entropy"))
    return diff, f"DAPO minus GRPO, policy entropy over the last 50 steps: {ci(diff, 'nats', 3)}"


def reaches(key: str, target: float) -> Callable[[], tuple[list[float], str]]:
    def measure():
        acc = list(accuracies(key).values())
        mean, half = t_interval(acc) if acc else (float("nan"), float("nan"))
        return [a - target for a in acc], f"{key} on the test set: {mean:.1f} ± {half:.1f}% (target {target:.0f}%)"

    return measure


CLAIMS: dict[str, list[Claim]] = {
    "grpo": [
        Claim(
            "DAPO ends more accurate than GRPO (DAPO paper: 50 vs 30 on AIME 2024)", better("grpo/dapo", "grpo/grpo")
        ),
        Claim("Clip-higher keeps the policy's entropy up (no entropy collapse)", entropy_kept),
    ],
    "srft": [
        Claim("SRFT beats the SFT->RL pipeline in distribution (levels 1-3)", better("srft/srft", "srft/sft_grpo")),
        Claim("SRFT beats SFT alone in distribution", better("srft/srft", "srft/sft")),
        Claim("SRFT beats RL (GRPO) alone in distribution", better("srft/srft", "grpo/grpo")),
        Claim(
            "SRFT beats the SFT->RL pipeline out of distribution (levels 4-5)",
            better("srft/srft", "srft/sft_grpo", "ood"),
        ),
    ],
    "opd": [
        Claim("TOPD at 25% of the horizon is within 2 points of OPD", better("opd/topd25", "opd/opd"), margin=2.0),
        Claim("TOPD at 10% of the horizon is within 2 points of OPD", better("opd/topd10", "opd/opd"), margin=2.0),
        Claim("POPD reaches 90% of OPD's gain with fewer generated tokens (paper: up to 3x faster)", popd_speed),
        Claim(
            "OPD from a 100%-accurate teacher reaches 85% on levels 1-3 (issue 22's target)", reaches("opd/opd", 85.0)
        ),
        Claim("OPD ends more accurate than GRPO at equal steps", better("opd/opd", "grpo/grpo")),
    ],
    "dpo_vp": [
        Claim("DPO-VP is as accurate as GRPO (within 2 points) at equal generated tokens", equal_tokens, margin=2.0),
        Claim("DPO-VP's final accuracy is within 2 points of GRPO's", better("dpo_vp/dpo_vp", "grpo/grpo"), margin=2.0),
    ],
    "dpo_vp_rm": [
        Claim("Reward-model pairs on unlabelled prompts add accuracy", better("dpo_vp_rm/half_rm", "dpo_vp_rm/half")),
    ],
}


def cell(values: dict[int, float]) -> str:
    if not values:
        return "-"
    mean, half = t_interval(list(values.values()))
    seeds = " / ".join(f"{v:.1f}" for _, v in sorted(values.items()))
    return f"{mean:.1f} ± {half:.1f} ({seeds})"


def lr_cell(key: str) -> str:
    p = plateau()
    _, arm = p.resolve(key)
    if arm.lr_from:
        return f"{p.chosen_lr(arm.lr_from) or '?'} (from {arm.lr_from})"
    key = p.resolve(key)[0]
    lrs = p.grid(key) if len(arm.lrs) > 1 else list(arm.lrs)
    parts = []
    for lr in lrs:
        d = p.run_dir(key, lr, 0)
        parts.append(f"{lr:g}: {100 * p.validation_score(d):.1f}" if (d / "result.json").exists() else f"{lr:g}: -")
    best = p.chosen_lr(key)
    # grid() grows an edge choice outward until MAX_GRID points; a choice still on an edge is flagged
    edge = best is not None and len(lrs) > 1 and best in (min(lrs), max(lrs))
    return ", ".join(parts) + (f" → **{best:g}**" if best else "") + (" (an edge of the grid)" if edge else "")


def method_table(method: str) -> str:
    p = plateau()
    student = {s: json.loads((p.OUT / "student" / f"{s}-eval.json").read_text()) for s in ("test", "ood")}
    rows = [
        "| arm | what | lr: validation (seed 0) → chosen | test, levels 1-3 (408), mean ± 95% CI (seeds 0/1/2) "
        f"| levels 4-5 ({student['ood']['n']:.0f}) | generated tokens | train CPU-min |",
        "|---|---|---|---|---|---|---|",
        f"| student | the start | - | {100 * student['test']['accuracy']:.1f} | "
        f"{100 * student['ood']['accuracy']:.1f} | - | - |",
    ]
    for name, arm in p.METHODS[method].items():
        key = f"{method}/{name}"
        runs = results(key)
        tokens = [curve(key, r["seed"])[1][-1] for r in runs]
        cpu = [r["train_cpu_s"] / 60 for r in runs if r["train_cpu_s"]]
        rows.append(
            f"| {name} | {arm.what if not arm.alias else p.resolve(key)[1].what} | {lr_cell(key)} | "
            f"{cell(accuracies(key))} | {cell(accuracies(key, 'ood'))} | "
            f"{f'{statistics.fmean(tokens) / 1e3:.0f}k' if tokens else '-'} | "
            f"{f'{statistics.fmean(cpu):.1f}' if cpu else '-'} |"
        )
    return "\n".join(rows)


def claims_list(method: str) -> str:
    lines = []
    for claim in CLAIMS[method]:
        try:
            values, reading = claim.measure()
        except (FileNotFoundError, KeyError, IndexError, TypeError, ValueError) as err:  # arms not run yet
            values, reading = [], f"not measured yet ({type(err).__name__})"
        rule = f" (holds when the interval lies above -{claim.margin:g})" if claim.margin else ""
        lines.append(f"- **{claim.text}: {verdict(values, claim.margin)}.** {reading}{rule}")
    return "\n".join(lines)


def plot_method(method: str, path: Path, x: str = "step") -> bool:
    """Seed-mean validation accuracy of each arm (band: min to max over seeds) against steps or generated tokens."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    for name in plateau().METHODS[method]:
        key = f"{method}/{name}"
        curves = [curve(key, r["seed"]) for r in results(key)]
        if not curves or len({len(c[0]) for c in curves}) != 1:
            continue
        xs = np.mean([c[0 if x == "step" else 1] for c in curves], axis=0)
        accs = np.array([c[2] for c in curves])
        ax.plot(xs, accs.mean(0), marker="o", markersize=2, label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(xs, accs.min(0), accs.max(0), alpha=0.15)
        drawn += 1
    if drawn:
        ax.set(title=f"{method}: validation accuracy", xlabel="step" if x == "step" else "generated tokens")
        ax.set_ylabel("greedy accuracy, validation (400), %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.savefig(path, dpi=110)
    return bool(drawn)


def write_doc(path: Path, experiment) -> None:
    """Rewrite `path` from the runs of `experiment` (the plateau.py module, passed in because it runs as __main__)."""
    global EXPERIMENT
    EXPERIMENT = p = experiment
    sections = [
        "# Every method's claims at plateau length (issue 22)",
        "Made by `OMP_NUM_THREADS=1 .venv/bin/python experiments/plateau.py --jobs 2` (tables, verdicts and plots are "
        "generated; the notes below them are written by hand). Every arm starts from the shipped `student`, trains on "
        "levels 2-3 with the main job's recipe (8 prompts x 8 samples, 600 steps, cosine decay to 0; "
        "docs/results/learning.md), picks its learning rate on a 400-problem validation split (mean of its last "
        "three evaluations, seed 0) and runs 3 seeds at it. Accuracy is greedy; ± is the 95% Student-t interval "
        "over seeds. " + __doc__.split("\n\n")[1].replace("\n", " "),
    ]
    for method in p.METHODS:
        sections.append(f"## {method}\n\n{method_table(method)}\n\n{claims_list(method)}")
        images = []
        for x in ("step", "tokens"):
            image = path.parent / f"plateau-{method}-{x}.png"
            if plot_method(method, image, x):
                images.append(f"![{method}, validation accuracy against {x}]({image.name})")
        sections.append("\n".join(images))
    write_keeping_notes(path, "\n\n".join(s for s in sections if s), KEPT)
