"""AutoThink (ellipsis prompt, three reward stages) vs plain GRPO with the always-think prompt, both from the same
base model at equal steps, over several seeds: accuracy, completion tokens and think rate per difficulty level.

Worlds: `arith` (base `autothink_base`) and `shortcut` (base `autothink_shortcut_base`, easy problems with long
but skippable traces). Writes docs/results/autothink-WORLD.md and PNG plots. Reproduce (~17 CPU-min); a smoke run;
the per-level modes of a model:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py --world shortcut --seeds 0 1 2 --steps 160
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py --world shortcut --quick
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py --world shortcut --measure MODEL
A finished run (its final/ and cpu.json) is reused, so an interrupted experiment picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.algos.autothink import autothink_reward, is_thinking, mode_metrics
from reasonrl.algos.collect import example_fields
from reasonrl.config import load_config
from reasonrl.data import Example
from reasonrl.models import (
    ASSETS,
    SHIPPED,
    decode_completion,
    encode_prompt,
    load_model,
)
from reasonrl.prompt_modes import save_prompt_mode
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer
from reasonrl.worlds import get_world

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LEVELS, EVAL_LEVELS = (1, 2, 3), (1, 2, 3, 4, 5)  # default training levels; --levels
TEMPERATURE = 0.6  # the paper's rollout and evaluation temperature
# size: (steps, stage steps of stages 1 and 2, eval problems per level, samples per eval problem)
SIZES = {"full": (240, (60, 60), 50, 8), "quick": (9, (3, 3), 8, 2)}
ARMS = ("autothink", "grpo")


@dataclass(frozen=True)
class WorldSetup:
    base: str  # the checkpoint under reasonrl/assets/ both arms start from
    max_length: int  # rollout.max_completion_length: stage 1's and the baseline's; AutoThink's stages 2-3 get 2x, 3x
    context: str  # what was measured about the world before the run, for the doc

    @property
    def base_path(self) -> str:
        """A shipped name where models.py knows it, else the folder under reasonrl/assets/."""
        return self.base if self.base in SHIPPED else str(ASSETS / self.base)


WORLDS = {
    "arith": WorldSetup(
        "autothink_base",
        64,
        """In this world only level 1 can be answered without thinking:
under the ellipsis prompt the start model's direct answers are right on about half of held-out level-1 problems
and almost never on levels 2-5 (docs/autothink.md). A level-1 trace is 14 tokens against 9 for a direct answer,
so a policy that answered level 1 directly and thought elsewhere would save about 5% of the tokens on levels 1-3.""",
    ),
    "shortcut": WorldSetup(
        "autothink_shortcut_base",
        96,
        """In this world (reasonrl/worlds/shortcut.py) levels 1-2
are identities (x-x, x*0: the answer is 0; x+0, x*1: the answer is x). Their traces still work column by column
(48 and 51 tokens), while a direct answer is 7-9 tokens with `</think>`. Levels 3-5 carry or borrow, and their traces
(51, 66, 65 tokens) are what works the carries out. A policy that answered levels 1-2 directly and thought on level
3 would save about 53% of the tokens on the training levels 1-3 (about 28% on levels 1-5). Every level can be told
from its surface (the operator and the second operand).""",
    ),
}


def common(world: str, levels: tuple[int, ...]) -> list[str]:
    return [
        f"data.train=world:{world}",
        f"data.levels=[{','.join(map(str, levels))}]",
        "rollout.num_generations=8",
        f"rollout.max_completion_length={WORLDS[world].max_length}",
        "rollout.eval_max_completion_length=128",
        f"rollout.temperature={TEMPERATURE}",
        "train.prompts_per_step=8",
        "train.micro_batch_size=64",
        "optim.lr=5e-5",
        "optim.warmup_steps=5",
        "algo.loss_type=dapo",
        "algo.epsilon=0.2",
        "algo.beta=0.0",
        "train.progress=false",
    ]


def run(world: str, levels: tuple[int, ...], overrides: list[str], steps: int, run_dir: Path, seed: int) -> float:
    """Train one arm (or reuse a finished run); returns its CPU seconds (process time, evaluations included)."""
    done = run_dir / "cpu.json"
    if done.exists() and (run_dir / "final").exists():
        return json.loads(done.read_text())["cpu_seconds"]
    overrides = (
        common(world, levels)
        + overrides
        + [
            f"train.steps={steps}",
            f"train.eval_every={max(1, steps // 6)}",
            f"train.seed={seed}",
            f"data.eval_levels=[{','.join(map(str, EVAL_LEVELS))}]",
            "data.eval_n=50",
        ]
    )
    trainer = Trainer(load_config(None, overrides), run_dir=run_dir)
    started = time.process_time()
    trainer.train()
    cpu = time.process_time() - started
    done.write_text(json.dumps({"cpu_seconds": cpu}))
    return cpu


def sample_modes(engine, tokenizer, examples: list[Example], n: int, params: SamplingParams) -> dict[str, float]:
    """`mode_metrics` of n sampled completions per example, prompted by the tokenizer's own template; correct means
    R0 > 0 (the answer after `</think>` is right), so it applies to any prompt mode."""
    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in examples]
    rollouts = engine.generate(prompts, n, params)
    texts = [decode_completion(tokenizer, ids) for ids in rollouts.completion_ids]
    fields = example_fields(examples, n)
    scores = autothink_reward([""] * len(texts), texts, fields["answer"], fields["meta"])
    return mode_metrics(
        [is_thinking(t) for t in texts],
        [s > 0 for s in scores],
        [len(c) for c in rollouts.completion_ids],
        fields["level"],
    )


def measure(model_dir: str | Path, world: str, n_per_level: int, samples: int) -> dict[str, dict[str, float]]:
    """Greedy and sampled (T=0.6) mode metrics on held-out problems, prompted by the folder's own template."""
    model, tokenizer = load_model(str(model_dir), device="cpu")
    engine = FastEngine(model, tokenizer)
    examples = get_world(world, levels=list(EVAL_LEVELS)).eval_set(EVAL_LEVELS, n_per_level)
    torch.manual_seed(0)
    return {
        "greedy": sample_modes(engine, tokenizer, examples, 1, SamplingParams(128, greedy=True)),
        "sampled": sample_modes(engine, tokenizer, examples, samples, SamplingParams(128, TEMPERATURE)),
    }


def level_modes(model_dir: str | Path, world: str, n_per_level: int, samples: int) -> str:
    """A table of the model's modes per level before training: no-think rate, accuracy and tokens of each mode,
    sampled at T=1 and T=0.6, and how often greedy decoding thinks."""
    model, tokenizer = load_model(str(model_dir), device="cpu")
    engine, w = FastEngine(model, tokenizer), get_world(world, levels=list(EVAL_LEVELS))
    torch.manual_seed(0)
    head = (
        "| level | problems | "
        + " | ".join(
            f"{c} T={t}" for t in (1, TEMPERATURE) for c in ("no-think rate", "accuracy thinking", "accuracy direct")
        )
        + " | tokens thinking / direct T=1 | greedy: think rate, accuracy |"
    )
    lines = [head, "|---" * 10 + "|"]

    def pct(m: dict[str, float], k: str) -> str:
        return f"{m[k]:.0%}" if k in m else "-"

    for level in EVAL_LEVELS:
        examples = w.eval_set([level], n_per_level)
        cells = [str(len(examples))]
        for temp in (1.0, TEMPERATURE):
            m = sample_modes(engine, tokenizer, examples, samples, SamplingParams(128, temp))
            cells += [f"{1 - m['think_rate']:.0%}", pct(m, "accuracy/think"), pct(m, "accuracy/no_think")]
            if temp == 1.0:
                tokens = f"{m.get('tokens/think', float('nan')):.1f} / {m.get('tokens/no_think', float('nan')):.1f}"
        g = sample_modes(engine, tokenizer, examples, 1, SamplingParams(128, greedy=True))
        cells += [tokens, f"{g['think_rate']:.0%}, {g['accuracy']:.0%}"]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_sd(values: list[float], fmt: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(values[0] if len(values) == 1 else statistics.mean(values))}" + (
        f" ± {fmt.replace('+', '').format(sd)}" if len(values) > 1 else ""
    )


def train_level_mean(m: dict[str, float], key: str, levels: tuple[int, ...]) -> float:
    """The mean over the training levels (equal weight, as training draws them)."""
    return statistics.mean(m[f"{key}/level_{lv}"] for lv in levels)


def level_span(levels: tuple[int, ...]) -> str:
    """`L1-3` for consecutive levels, `L1,2,4,5` otherwise."""
    distinct = sorted(set(levels))
    if distinct == list(range(distinct[0], distinct[-1] + 1)):
        return f"L{distinct[0]}-{distinct[-1]}"
    return "L" + ",".join(map(str, distinct))


def tables(results: dict[str, list[dict]], decoding: str, levels: tuple[int, ...]) -> str:
    """Three tables (accuracy, tokens, think rate), a row per model, a column per level, mean ± std over seeds."""
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
            cells = [mean_sd([scale * m[f"{key}/level_{lv}"] for m in ms], fmt) for lv in EVAL_LEVELS]
            cells += [
                mean_sd([scale * train_level_mean(m, key, levels) for m in ms], fmt),
                mean_sd([scale * m[key] for m in ms], fmt),
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def mode_table(results: dict[str, list[dict]]) -> str:
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
            cells.append(
                mean_sd(vals, fmt)
                + (f" ({len(vals)} of {len(per_seed)} seeds)" if 0 < len(vals) < len(per_seed) else "")
                if vals
                else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve(run_dirs: list[Path], key: str, window: int = 1) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over runs of a logged metric per step (training metrics averaged over `window` steps)."""
    per_run = []
    for d in run_dirs:
        rows = {r["step"]: r[key] for r in read_metrics(d) if r.get(key) is not None}
        per_run.append(rows)
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
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, dirs in groups.items():
        for key in keys:
            steps, mean, sd = curve(dirs, key, window)
            label = name if len(keys) == 1 else f"{name}: {key.rsplit('/', 1)[-1]}"
            (line,) = ax.plot(steps, mean, label=label, alpha=0.9)
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, sd)],
                [m + s for m, s in zip(mean, sd)],
                color=line.get_color(),
                alpha=0.15,
            )
    for x in stage_lines:
        ax.axvline(x + 0.5, color="grey", linestyle="--")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out, dpi=110)
    return out


def dynamics_table(groups: dict[str, list[Path]], steps: int) -> str:
    """Training metrics in windows of steps//6, mean over seeds: what moves while held-out accuracy drifts."""
    window = max(1, steps // 6)
    keys = [
        ("eval/accuracy", "eval acc (greedy)", 100, 1),
        ("eval/mean_completion_tokens", "eval tokens", 1, 1),
        ("rewards/accuracy/mean", "train acc (T=0.6)", 100, window),
        ("autothink/accuracy", "train acc (T=0.6)", 100, window),
        ("entropy", "entropy", 1, window),
        ("frac_reward_zero_std", "zero-std groups", 100, window),
        ("grad_norm", "grad norm", 1, window),
    ]
    lines = [
        "| arm | metric | " + " | ".join(f"step {s}" for s in range(0, steps + 1, window)) + " |",
        "|---" * (2 + len(range(0, steps + 1, window))) + "|",
    ]
    for name, dirs in groups.items():
        for key, label, scale, win in keys:
            if not all(any(key in r for r in read_metrics(d)) for d in dirs):
                continue
            xs, mean, _ = curve(dirs, key, win)
            by_step = dict(zip(xs, mean))
            cells = [f"{scale * by_step[s]:.3g}" if s in by_step else "" for s in range(0, steps + 1, window)]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=sorted(WORLDS), default="shortcut")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="training steps (default 240; stages 1 and 2 get a quarter each)")
    parser.add_argument("--levels", type=int, nargs="+", default=list(TRAIN_LEVELS), help="training levels")
    parser.add_argument(
        "--nothink-correct",
        type=float,
        default=2.0,
        metavar="C",
        help="AutoThink's R0 for a correct direct answer (algo.nothink_correct_reward; official 2)",
    )
    parser.add_argument(
        "--stage-steps",
        type=int,
        nargs=2,
        metavar=("S1", "S2"),
        help="steps of AutoThink's stages 1 and 2 (default a quarter of the steps each; stage 3 the rest)",
    )
    parser.add_argument("--measure", metavar="MODEL", help="only print MODEL's modes per level and exit")
    parser.add_argument("--out", default=str(ROOT / "runs" / "exp-autothink"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args()
    steps, (s1, s2), n_per_level, samples = SIZES["quick" if args.quick else "full"]
    if args.steps:  # the same stage proportions: a quarter each for stages 1 and 2, the rest for stage 3
        steps, s1, s2 = args.steps, args.steps // 4, args.steps // 4
    setup, levels = WORLDS[args.world], tuple(args.levels)
    held_out = ", ".join(str(lv) for lv in EVAL_LEVELS if lv not in levels)
    tag = "" if levels == TRAIN_LEVELS else "-L" + "".join(map(str, levels))  # names runs and docs of other levels
    if args.stage_steps:
        s1, s2 = args.stage_steps
    variant = ("" if args.nothink_correct == 2.0 else f"-c{args.nothink_correct:g}") + (
        f"-stages{s1}-{s2}" if args.stage_steps else ""
    )  # AutoThink's runs only
    if args.measure:
        print(level_modes(args.measure, args.world, n_per_level, 16))
        return 0
    out, doc_dir = Path(args.out) / args.world, Path(args.doc)
    doc_dir.mkdir(parents=True, exist_ok=True)
    # The same weights, prompted two ways: the always-think copy differs only in its chat template.
    think_base = save_prompt_mode(setup.base_path, out / "base-always-think", "think")
    arms = {
        "autothink": [
            f"model.path={setup.base_path}",
            "algo=autothink",
            "algo.stage=all",
            f"algo.stage_steps=[{s1},{s2}]",
            f"algo.nothink_correct_reward={args.nothink_correct}",
        ],
        "grpo": [f"model.path={think_base}", "algo=grpo"],
    }
    run_dirs: dict[str, list[Path]] = {a: [] for a in ARMS}
    cpu: dict[str, list[float]] = {a: [] for a in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            d = out / f"{arm}-{steps}steps{tag}{variant if arm == 'autothink' else ''}-s{seed}"
            cpu[arm].append(run(args.world, levels, arms[arm], steps, d, seed))
            run_dirs[arm].append(d)
    starts = {"start, ellipsis prompt": setup.base_path, "start, always-think prompt": think_base}
    results = {name: [measure(path, args.world, n_per_level, samples)] for name, path in starts.items()}
    labels = {"autothink": "autothink", "grpo": "grpo (always think)"}
    for arm in ARMS:
        results[f"{labels[arm]} after {steps} steps"] = [
            measure(d / "final", args.world, n_per_level, samples) for d in run_dirs[arm]
        ]
    (out / f"results{tag}{variant}-{steps}steps.json").write_text(json.dumps(results, indent=1))
    start_table = level_modes(setup.base_path, args.world, n_per_level, 16)

    prefix = f"autothink-{args.world}{tag}{variant}-"
    groups = {labels[a]: run_dirs[a] for a in ARMS}
    stage_lines = (s1, s1 + s2)
    plot_curves(
        groups,
        ["eval/accuracy"],
        "held-out accuracy (greedy, levels 1-5)",
        "accuracy",
        doc_dir / f"{prefix}accuracy.png",
        stage_lines=stage_lines,
    )
    plot_curves(
        groups,
        ["eval/mean_completion_tokens"],
        "held-out completion tokens (greedy)",
        "tokens",
        doc_dir / f"{prefix}tokens.png",
        stage_lines=stage_lines,
    )
    plot_curves(
        groups,
        ["entropy"],
        "policy entropy of training rollouts",
        "nats per token",
        doc_dir / f"{prefix}entropy.png",
        window=10,
        stage_lines=stage_lines,
    )
    plot_curves(
        {"autothink": run_dirs["autothink"]},
        [f"autothink/think_rate/level_{lv}" for lv in levels],
        "AutoThink: think rate of training rollouts (T=0.6)",
        "think rate",
        doc_dir / f"{prefix}think-rate.png",
        window=10,
        stage_lines=stage_lines,
    )

    at, base = results[f"autothink after {steps} steps"], results[f"grpo (always think) after {steps} steps"]
    all_tokens = [a["greedy"]["tokens"] / b["greedy"]["tokens"] - 1 for a, b in zip(at, base)]
    train_tokens = [
        train_level_mean(a["greedy"], "tokens", levels) / train_level_mean(b["greedy"], "tokens", levels) - 1
        for a, b in zip(at, base)
    ]
    seeds = " ".join(map(str, args.seeds))
    command = (
        f"OMP_NUM_THREADS=1 python experiments/autothink.py --world {args.world} --seeds {seeds}"
        + (" --quick" if args.quick else "")
        + (f" --steps {args.steps}" if args.steps else "")
        + (f" --levels {' '.join(map(str, levels))}" if tag else "")
        + (f" --nothink-correct {args.nothink_correct:g}" if args.nothink_correct != 2.0 else "")
        + (f" --stage-steps {s1} {s2}" if args.stage_steps else "")
    )
    doc = [
        f"# AutoThink vs GRPO with always-think prompting ({args.world} world)"
        + (" — quick smoke run" if args.quick else ""),
        "",
        f"Command: `{command}`. Both arms start from the shipped `{setup.base}` and train {steps} steps on levels "
        f"{list(levels)}"
        + (
            f"; {'levels' if ',' in held_out else 'level'} {held_out} {'are' if ',' in held_out else 'is'} held out"
            if held_out
            else ""
        )
        + f". AutoThink: ellipsis prompt, `algo.stage=all` with stage 1 (batch balance) for {s1} steps, stage 2 (R0) "
        f"for {s2}, stage 3 (length shaping) for the rest; max "
        f"lengths {setup.max_length}/{2 * setup.max_length}/{3 * setup.max_length}"
        + (
            f"; R0 of a correct direct answer {args.nothink_correct:g} instead of the official 2"
            if args.nothink_correct != 2.0
            else ""
        )
        + ". GRPO: the same weights with the "
        f"always-think prompt `<think>\\n`, the `accuracy` reward, max length {setup.max_length}. Shared: "
        + ", ".join(common(args.world, levels)[1:-1])
        + f". Seeds {seeds}: tables give mean ± std over seeds (sample std).",
        "",
        "CPU time of training per run (process time, evaluations during training included): "
        + ", ".join(f"{labels[a]} {mean_sd([t / 60 for t in cpu[a]], '{:.1f}')} min" for a in ARMS)
        + ".",
        "",
        (
            f"Headline (greedy, {n_per_level} held-out problems per level): AutoThink "
            f"{mean_sd([100 * r['greedy']['accuracy'] for r in at], '{:.1f}')}% accuracy with "
            f"{mean_sd([r['greedy']['tokens'] for r in at], '{:.1f}')} tokens per answer vs GRPO "
            f"{mean_sd([100 * r['greedy']['accuracy'] for r in base], '{:.1f}')}% with "
            f"{mean_sd([r['greedy']['tokens'] for r in base], '{:.1f}')}: "
            f"{mean_sd([100 * s for s in all_tokens], '{:+.1f}')}% tokens on levels 1-5, "
            f"{mean_sd([100 * s for s in train_tokens], '{:+.1f}')}% on the trained levels (per seed, paired)."
        ),
        "",
        setup.context,
        "",
        f"The start model (`{setup.base}`, ellipsis prompt) per level, 16 samples per held-out problem:",
        "",
        start_table,
        "",
        "## Greedy decoding, held-out problems",
        "",
        tables(results, "greedy", levels),
        "",
        f"## Sampled at T={TEMPERATURE}, {samples} samples per problem",
        "",
        tables(results, "sampled", levels),
        "",
        mode_table(results),
        "",
        "## Training dynamics (mean over seeds)",
        "",
        dynamics_table(groups, steps),
        "",
        f"![accuracy]({prefix}accuracy.png)",
        f"![tokens]({prefix}tokens.png)",
        f"![think rate]({prefix}think-rate.png)",
        f"![entropy]({prefix}entropy.png)",
        "",
    ]
    (doc_dir / f"autothink-{args.world}{tag}{variant}.md").write_text("\n".join(doc))
    print(
        json.dumps(
            {
                "runs": {a: [str(d) for d in ds] for a, ds in run_dirs.items()},
                "cpu_minutes": {a: sum(t) / 60 for a, t in cpu.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
