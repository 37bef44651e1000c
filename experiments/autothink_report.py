"""The page of experiments/autothink.py: tables with 95% intervals over seeds, the learning-rate grid, paired
differences AutoThink - GRPO, a verdict per paper claim, and PNG curves of the runs' logged metrics."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from harness import t_interval
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.tracking import read_metrics

EVAL_LEVELS = (1, 2, 3, 4, 5)
TEMPERATURE = 0.6  # the paper's rollout and evaluation temperature
EQUAL_MARGIN = 2.0  # accuracy points: "equal accuracy" means the whole 95% interval of the difference lies within this
# world: (easy levels, hard levels) for the claim "thinks more on hard problems"
DIFFICULTY = {"shortcut": ((1, 2), (3, 4, 5)), "arith": ((1, 2), (4, 5))}
WORLD_CONTEXT = {
    "arith": """In this world only level 1 can be answered without thinking:
under the ellipsis prompt the start model's direct answers are right on about half of held-out level-1 problems
and almost never on levels 2-5 (docs/autothink.md). A level-1 trace is 14 tokens against 9 for a direct answer,
so a policy that answered level 1 directly and thought elsewhere would save about 5% of the tokens on levels 1-3.""",
    "shortcut": """In this world (reasonrl/worlds/shortcut.py) levels 1-2
are identities (x-x, x*0: the answer is 0; x+0, x*1: the answer is x). Their traces still work column by column
(48 and 51 tokens), while a direct answer is 7-9 tokens with `</think>`. Levels 3-5 carry or borrow, and their traces
(51, 66, 65 tokens) are what works the carries out. A policy that answered levels 1-2 directly and thought on level
3 would save about 53% of the tokens on the training levels 1-3 (about 28% on levels 1-5). Every level can be told
from its surface (the operator and the second operand).""",
}


@dataclass(frozen=True)
class Experiment:
    """Everything the page shows, gathered by experiments/autothink.py."""

    world: str
    base: str
    max_length: int
    levels: tuple[int, ...]
    steps: int
    stages: tuple[int, int]
    nothink_correct: float
    seeds: tuple[int, ...]
    command: str
    shared: list[str]
    validation: str
    grid: dict[str, dict[float, float]]  # arm: {lr: validation score of the first seed}
    chosen: dict[str, float]
    grid_test: dict[str, dict[float, dict[str, float]]]  # arm: {lr: greedy test metrics of the first seed's run}
    grid_dirs: dict[str, dict[float, Path]]  # arm: {lr: the first seed's run}
    run_dirs: dict[str, list[Path]]  # label: one run per seed at the chosen rate
    cpu_minutes: dict[str, list[float]]  # arm: every run's training CPU (grid, then the other seeds)
    results: dict[str, list[dict]]  # model name: per seed, {"greedy": mode metrics, "sampled": mode metrics}
    start_table: str
    n_per_level: int
    samples: int
    quick: bool

    @property
    def total_cpu_minutes(self) -> float:
        return sum(sum(v) for v in self.cpu_minutes.values())

    def arm(self, name: str) -> list[dict]:
        """The test measurements of an arm's final models, one per seed."""
        label = {"autothink": "autothink", "grpo": "grpo (always think)"}[name]
        return self.results[f"{label} after {self.steps} steps"]


def mean_ci(values: list[float], fmt: str) -> str:
    """Mean ± the half-width of its 95% Student-t interval over seeds (the mean alone for one value)."""
    mean, half = t_interval(values)
    return fmt.format(mean) + (f" ± {fmt.replace('+', '').format(half)}" if len(values) > 1 else "")


def level_mean(m: dict[str, float], key: str, levels: tuple[int, ...]) -> float:
    """The mean over levels (equal weight, as training draws them)."""
    return statistics.mean(m[f"{key}/level_{lv}"] for lv in levels)


def level_span(levels: tuple[int, ...]) -> str:
    """`L1-3` for consecutive levels, `L1,2,4,5` otherwise."""
    distinct = sorted(set(levels))
    if distinct == list(range(distinct[0], distinct[-1] + 1)):
        return f"L{distinct[0]}-{distinct[-1]}"
    return "L" + ",".join(map(str, distinct))


def tables(results: dict[str, list[dict]], decoding: str, levels: tuple[int, ...]) -> str:
    """Three tables (accuracy, tokens, think rate), a row per model, a column per level, mean ± 95% interval."""
    out = []
    for key, label, fmt, scale in (
        ("accuracy", "accuracy (%)", "{:.1f}", 100),
        ("tokens", "mean completion tokens", "{:.1f}", 1),
        ("think_rate", "think rate (%)", "{:.0f}", 100),
    ):
        head = (
            f"| {label} | " + " | ".join(f"L{lv}" for lv in EVAL_LEVELS) + f" | {level_span(levels)} (trained) | all |"
        )
        lines = [head, "|---" * (len(EVAL_LEVELS) + 3) + "|"]
        for name, per_seed in results.items():
            ms = [r[decoding] for r in per_seed]
            cells = [mean_ci([scale * m[f"{key}/level_{lv}"] for m in ms], fmt) for lv in EVAL_LEVELS]
            cells += [
                mean_ci([scale * level_mean(m, key, levels) for m in ms], fmt),
                mean_ci([scale * m[key] for m in ms], fmt),
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def mode_table(results: dict[str, list[dict]]) -> str:
    """Accuracy and length of each mode at T=0.6, where the model used it."""
    lines = [
        "| model (T=0.6) | accuracy thinking | accuracy direct | tokens thinking | tokens direct |",
        "|---|---|---|---|---|",
    ]
    for name, per_seed in results.items():
        cells = []
        for key, fmt, scale in (
            ("accuracy/think", "{:.1f}%", 100),
            ("accuracy/no_think", "{:.1f}%", 100),
            ("tokens/think", "{:.1f}", 1),
            ("tokens/no_think", "{:.1f}", 1),
        ):
            vals = [scale * r["sampled"][key] for r in per_seed if key in r["sampled"]]  # a mode never used: none
            seeds = f" ({len(vals)} of {len(per_seed)} seeds)" if 0 < len(vals) < len(per_seed) else ""
            cells.append(mean_ci(vals, fmt) + seeds if vals else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def last_evals(run_dir: Path, key: str, n: int = 3) -> float:
    """The mean of a run's last n logged values of an eval metric."""
    values = [r[key] for r in read_metrics(run_dir) if key in r][-n:]
    return statistics.mean(values)


def grid_table(exp: Experiment) -> str:
    """Each grid rate's validation score (seed `seeds[0]`), the chosen one in bold, with its tokens per answer; and
    the same run on the test set, for information (the choice never reads it)."""
    lines = [
        "| arm | lr | validation accuracy (mean of the last 3 evaluations) | validation tokens (same) "
        "| test accuracy, not used to choose | test tokens |",
        "|---|---|---|---|---|---|",
    ]
    for arm, scores in exp.grid.items():
        for lr, score in scores.items():
            mark = "**" if lr == exp.chosen[arm] else ""
            tokens = last_evals(exp.grid_dirs[arm][lr], "eval/mean_completion_tokens")
            test = exp.grid_test[arm][lr]
            lines.append(
                f"| {arm} | {mark}{lr:g}{mark} | {mark}{100 * score:.1f}%{mark} | {tokens:.1f} "
                f"| {100 * test['accuracy']:.1f}% | {test['tokens']:.1f} |"
            )
    return "\n".join(lines)


def paired(exp: Experiment) -> dict[str, list[float]]:
    """Per-seed differences AutoThink - GRPO on the test set (greedy; seeds paired by index), and AutoThink's think
    rate on hard minus easy levels."""
    easy, hard = DIFFICULTY[exp.world]
    at, grpo = [r["greedy"] for r in exp.arm("autothink")], [r["greedy"] for r in exp.arm("grpo")]
    trained = [] if set(exp.levels) == set(EVAL_LEVELS) else [exp.levels]  # a row of its own where some are held out
    out = {"accuracy, all levels (points)": [100 * (a["accuracy"] - b["accuracy"]) for a, b in zip(at, grpo)]}
    for levels in trained:
        out[f"accuracy, trained {level_span(levels)} (points)"] = [
            100 * (level_mean(a, "accuracy", levels) - level_mean(b, "accuracy", levels)) for a, b in zip(at, grpo)
        ]
    for lv in EVAL_LEVELS:
        key = f"accuracy/level_{lv}"
        out[f"accuracy, L{lv} (points)"] = [100 * (a[key] - b[key]) for a, b in zip(at, grpo)]
    out["tokens, all levels (%)"] = [100 * (a["tokens"] / b["tokens"] - 1) for a, b in zip(at, grpo)]
    for levels in trained:
        out[f"tokens, trained {level_span(levels)} (%)"] = [
            100 * (level_mean(a, "tokens", levels) / level_mean(b, "tokens", levels) - 1) for a, b in zip(at, grpo)
        ]
    out[f"AutoThink think rate, {level_span(hard)} minus {level_span(easy)} (points)"] = [
        100 * (level_mean(a, "think_rate", hard) - level_mean(a, "think_rate", easy)) for a in at
    ]
    return out


def paired_table(diffs: dict[str, list[float]]) -> str:
    lines = ["| difference (greedy, test set) | per seed | mean ± 95% interval |", "|---|---|---|"]
    for name, values in diffs.items():
        lines.append(f"| {name} | {' / '.join(f'{v:+.1f}' for v in values)} | {mean_ci(values, '{:+.1f}')} |")
    return "\n".join(lines)


def verdict(values: list[float], low: float, high: float) -> tuple[str, float, float]:
    """'holds' when the 95% interval lies inside [low, high], 'does not hold' when it lies wholly outside on one
    side, else 'inconclusive'; with the interval's ends."""
    mean, half = t_interval(values)
    lo, hi = mean - half, mean + half
    if low <= lo and hi <= high:
        return "holds", lo, hi
    if hi < low or lo > high:
        return "does not hold", lo, hi
    return "inconclusive", lo, hi


def verdicts(exp: Experiment, diffs: dict[str, list[float]]) -> list[str]:
    """One line per paper claim, with the interval it rests on."""
    easy, hard = DIFFICULTY[exp.world]
    tokens = diffs["tokens, all levels (%)"]
    accuracy = diffs["accuracy, all levels (points)"]
    gap = diffs[f"AutoThink think rate, {level_span(hard)} minus {level_span(easy)} (points)"]
    worst = min(EVAL_LEVELS, key=lambda lv: statistics.mean(diffs[f"accuracy, L{lv} (points)"]))
    a, a_lo, a_hi = verdict(tokens, float("-inf"), 0.0)
    b, b_lo, b_hi = verdict(accuracy, -EQUAL_MARGIN, EQUAL_MARGIN)
    if b == "does not hold" and b_lo > EQUAL_MARGIN:
        b = "holds, and better: AutoThink is more accurate"
    c, c_lo, c_hi = verdict(gap, 0.0, float("inf"))
    return [
        f"- **(a) Fewer tokens than always thinking: {a}.** AutoThink - GRPO = {mean_ci(tokens, '{:+.1f}')}% tokens "
        f"per answer on levels 1-5 (95% interval {a_lo:+.1f} to {a_hi:+.1f}).",
        f"- **(b) Equal accuracy (margin ±{EQUAL_MARGIN:g} points): {b}.** AutoThink - GRPO = "
        f"{mean_ci(accuracy, '{:+.1f}')} points on levels 1-5 (95% interval {b_lo:+.1f} to {b_hi:+.1f}); "
        f"equal means the whole interval lies within ±{EQUAL_MARGIN:g}. The largest gap is on level {worst}: "
        f"{mean_ci(diffs[f'accuracy, L{worst} (points)'], '{:+.1f}')} points.",
        f"- **(c) Thinks more on hard problems ({level_span(hard)}) than on easy ones ({level_span(easy)}): {c}.** "
        f"Greedy think rate {mean_ci(gap, '{:+.0f}')} points higher on the hard levels (95% interval {c_lo:+.0f} "
        f"to {c_hi:+.0f}).",
    ]


def curve(run_dirs: list[Path], key: str, window: int = 1) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over runs of a logged metric per step (training metrics averaged over `window` steps)."""
    per_run = [{r["step"]: r[key] for r in read_metrics(d) if r.get(key) is not None} for d in run_dirs]
    steps = sorted(set.intersection(*(set(r) for r in per_run)))
    if window > 1:
        steps = steps[window - 1 :: window]
    means, sds = [], []
    for s in steps:
        vals = [statistics.mean(r[t] for t in range(s - window + 1, s + 1) if t in r) for r in per_run]
        means.append(statistics.mean(vals))
        sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return steps, means, sds


def plot_curves(
    groups: dict[str, list[Path]],
    keys: list[str],
    title: str,
    ylabel: str,
    out: Path,
    window: int = 1,
    stage_lines: tuple[int, ...] = (),
) -> Path:
    """One line per (group, key), mean over the group's runs with a ±1 std band."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, dirs in groups.items():
        for key in keys:
            steps, mean, sd = curve(dirs, key, window)
            label = name if len(keys) == 1 else f"{name}: {key.rsplit('/', 1)[-1]}"
            (line,) = ax.plot(steps, mean, label=label, alpha=0.9)
            lower, upper = [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)]
            ax.fill_between(steps, lower, upper, color=line.get_color(), alpha=0.15)
    for x in stage_lines:
        ax.axvline(x + 0.5, color="grey", linestyle="--")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out, dpi=110)
    return out


def dynamics_table(groups: dict[str, list[Path]], steps: int) -> str:
    """Logged metrics in windows of steps//6, mean over seeds: what moves while the validation accuracy moves."""
    window = max(1, steps // 6)
    keys = [
        ("eval/accuracy", "validation acc (greedy)", 100, 1),
        ("eval/mean_completion_tokens", "validation tokens", 1, 1),
        ("rewards/accuracy/mean", "train acc (T=0.6)", 100, window),
        ("autothink/accuracy", "train acc (T=0.6)", 100, window),
        ("autothink/think_rate", "train think rate", 100, window),
        ("entropy", "entropy", 1, window),
        ("frac_reward_zero_std", "zero-std groups", 100, window),
        ("grad_norm", "grad norm", 1, window),
    ]
    columns = range(0, steps + 1, window)
    lines = [
        "| arm | metric | " + " | ".join(f"step {s}" for s in columns) + " |",
        "|---" * (2 + len(columns)) + "|",
    ]
    for name, dirs in groups.items():
        for key, label, scale, win in keys:
            if not all(any(key in r for r in read_metrics(d)) for d in dirs):
                continue
            by_step = dict(zip(*curve(dirs, key, win)[:2]))
            cells = [f"{scale * by_step[s]:.3g}" if s in by_step else "" for s in columns]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(exp: Experiment, prefix: str, doc_dir: Path) -> list[str]:
    """The page's PNGs (file names under doc_dir), each a mean over the seeds at the chosen rates."""
    stage_lines, made = (exp.stages[0], sum(exp.stages)), []

    def plot(name: str, groups: dict[str, list[Path]], keys: list[str], title: str, ylabel: str, **kw) -> None:
        made.append(plot_curves(groups, keys, title, ylabel, doc_dir / f"{prefix}{name}.png", **kw).name)

    grid = {f"{arm}, lr {lr:g}": [d] for arm, dirs in exp.grid_dirs.items() for lr, d in dirs.items()}
    plot("lr-grid", grid, ["eval/accuracy"], "validation accuracy of the lr grid (first seed)", "accuracy")
    plot(
        "accuracy", exp.run_dirs, ["eval/accuracy"], "validation accuracy (greedy)", "accuracy", stage_lines=stage_lines
    )
    plot(
        "tokens",
        exp.run_dirs,
        ["eval/mean_completion_tokens"],
        "validation completion tokens (greedy)",
        "tokens",
        stage_lines=stage_lines,
    )
    plot(
        "think-rate",
        {"autothink": exp.run_dirs["autothink"]},
        [f"autothink/think_rate/level_{lv}" for lv in exp.levels],
        "AutoThink: think rate of training rollouts (T=0.6)",
        "think rate",
        window=10,
        stage_lines=stage_lines,
    )
    plot("entropy", exp.run_dirs, ["entropy"], "policy entropy of training rollouts", "nats per token", window=10)
    return made


def write_page(exp: Experiment, page: Path) -> None:
    """The experiment's results page and its plots (next to it)."""
    doc_dir = page.parent
    doc_dir.mkdir(parents=True, exist_ok=True)
    prefix = page.stem + "-"
    held_out = [lv for lv in EVAL_LEVELS if lv not in exp.levels]
    s1, s2 = exp.stages
    diffs = paired(exp)
    at, grpo = exp.arm("autothink"), exp.arm("grpo")
    images = plots(exp, prefix, doc_dir)
    seeds = " ".join(map(str, exp.seeds))
    doc = [
        f"# AutoThink vs GRPO with always-think prompting ({exp.world} world, {exp.steps} steps)"
        + (" — quick smoke run" if exp.quick else ""),
        "",
        f"Command: `{exp.command}`. Both arms start from the shipped `{exp.base}` and train {exp.steps} steps on "
        f"levels {list(exp.levels)}" + (f"; levels {held_out} are held out" if held_out else "") + ". AutoThink: "
        f"ellipsis prompt, `algo.stage=all` with stage 1 (batch balance) for {s1} steps, stage 2 (R0) for {s2}, stage "
        f"3 (length shaping) for the rest (the official 40 / 40 / 80 of 160 steps, in proportion); max lengths "
        f"{exp.max_length}/{2 * exp.max_length}/{3 * exp.max_length}"
        + (f"; R0 of a correct direct answer {exp.nothink_correct:g}" if exp.nothink_correct != 2.0 else "")
        + f". GRPO: the same weights with the always-think prompt `<think>\\n`, the `accuracy` reward, max length "
        f"{exp.max_length}. Shared: " + ", ".join(exp.shared) + ".",
        "",
        f"**Learning rate per arm**, chosen on a validation split ({exp.validation}; none of them is in the test set) "
        f"with seed {exp.seeds[0]}: the rate whose last three validation evaluations are best. Seeds {seeds} then "
        "run at that rate. Every interval below is a 95% Student-t interval over the seeds (paired differences: "
        "per seed, seeds matched).",
        "",
        grid_table(exp),
        "",
        "CPU time of training per run (one thread, validation evaluations included): "
        + ", ".join(f"{arm} {' / '.join(f'{t:.1f}' for t in ts)} min" for arm, ts in exp.cpu_minutes.items())
        + f" (grid runs first); {exp.total_cpu_minutes:.1f} CPU-minutes in all.",
        "",
        f"Headline (greedy, test set: {exp.n_per_level} held-out problems per level): AutoThink "
        f"{mean_ci([100 * r['greedy']['accuracy'] for r in at], '{:.1f}')}% accuracy with "
        f"{mean_ci([r['greedy']['tokens'] for r in at], '{:.1f}')} tokens per answer, GRPO "
        f"{mean_ci([100 * r['greedy']['accuracy'] for r in grpo], '{:.1f}')}% with "
        f"{mean_ci([r['greedy']['tokens'] for r in grpo], '{:.1f}')}.",
        "",
        "## The paper's claims",
        "",
        *verdicts(exp, diffs),
        "",
        paired_table(diffs),
        "",
        WORLD_CONTEXT[exp.world],
        "",
        f"The start model (`{exp.base}`, ellipsis prompt) per level, 16 samples per held-out problem:",
        "",
        exp.start_table,
        "",
        "## Greedy decoding, test set",
        "",
        tables(exp.results, "greedy", exp.levels),
        "",
        f"## Sampled at T={TEMPERATURE}, {exp.samples} samples per problem",
        "",
        tables(exp.results, "sampled", exp.levels),
        "",
        mode_table(exp.results),
        "",
        "## Training dynamics (mean over seeds, chosen rates)",
        "",
        dynamics_table(exp.run_dirs, exp.steps),
        "",
        "Curves: mean over seeds with a ±1 std band; dashed lines mark AutoThink's stage switches.",
        "",
        *(f"![{name.removeprefix(prefix).removesuffix('.png')}]({name})" for name in images),
        "",
    ]
    page.write_text("\n".join(doc))
