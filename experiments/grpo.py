"""GRPO and DAPO from the shipped student on the arith world: accuracy per level, completion length, entropy.

Writes docs/results/grpo.md and PNG plots. Reproduce:
    .venv/bin/python experiments/grpo.py            (about 25 CPU-minutes on 2 cores)
    .venv/bin/python experiments/grpo.py --steps 5  (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reasonrl.config import load_config
from reasonrl.plot import plot_runs
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer
from reasonrl.worlds.arith import ArithWorld

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "grpo": ["algo=grpo"],
    "dapo": ["algo=dapo"],
}
COMMON = [
    "model.path=student",
    "data.levels=[1,2,3]",
    "data.eval_levels=[1,2,3,4,5]",
    "data.eval_n=50",
    "rollout.num_generations=8",
    "rollout.max_completion_length=64",
    "rollout.eval_max_completion_length=96",
    "train.prompts_per_step=8",
    "train.micro_batch_size=64",
    "optim.lr=5e-5",
    "optim.warmup_steps=5",
    "train.progress=false",
]


def run(name: str, steps: int, out_root: Path, seed: int) -> tuple[Path, float]:
    overrides = (
        COMMON
        + SETTINGS[name]
        + [f"train.steps={steps}", f"train.eval_every={max(1, steps // 5)}", f"train.seed={seed}"]
    )
    trainer = Trainer(load_config(None, overrides), run_dir=out_root / name)
    started = time.perf_counter()
    trainer.train()
    return trainer.run_dir, time.perf_counter() - started


def table(run_dirs: dict[str, Path], wall: dict[str, float]) -> str:
    levels = [1, 2, 3, 4, 5]
    # Level 1 has only 8 held-out problems: the L1-3 column counts problems, it does not average levels.
    sizes = {lv: len(ArithWorld(levels=[lv]).eval_set([lv], 50)) for lv in (1, 2, 3)}
    header = "| setting | step | wall-clock (s) | " + " | ".join(f"L{lv}" for lv in levels) + " | L1-3 | mean tokens |"
    lines = [header, "|" + "---|" * (levels.__len__() + 5)]
    for name, run_dir in run_dirs.items():
        evals = [r for r in read_metrics(run_dir) if "eval/accuracy" in r]
        for label, r in (("before", evals[0]), ("after", evals[-1])):
            per = [r.get(f"eval/accuracy/level_{lv}", float("nan")) for lv in levels]
            in_dist = sum(per[i] * sizes[i + 1] for i in range(3)) / sum(sizes.values())
            lines.append(
                f"| {name} ({label}) | {r['step']} | {wall[name] if label == 'after' else 0:.0f} | "
                + " | ".join(f"{100 * a:.0f}%" for a in per)
                + f" | {100 * in_dist:.1f}% | {r['eval/mean_completion_tokens']:.1f} |"
            )
    return "\n".join(lines)


ANALYSIS = """## What this shows, and what fell short

- The sampled accuracy (`rewards/accuracy/mean`, temperature 1) rises: GRPO from 0.51 (mean of steps 1-50) to about
  0.60 (steps 101-250); DAPO from 0.46 to about 0.59 (DAPO's `reward` also holds the overlong punishment). Measured on
  16 held-out prompts x 8 samples per level (`python experiments/sample_modes.py student` and
  `... runs/exp-grpo/grpo/final`): the think rate goes from 80-88% to 97-100%
  (direct answers are almost always wrong on levels 2-3), and sampled accuracy of thinking traces from 32% to 52%
  (level 2) and from 32% to 46% (level 3). So RL does what it promises on the sampling distribution.
- Greedy accuracy on levels 1-3 moves much less: GRPO +7.4 points (51.9% -> 59.3% over the 108 held-out problems),
  DAPO +3.7 points, with large swings between evaluations (GRPO reached 61.1% at step 50). **The brief's target of +20
  points in about 10 CPU-minutes is not met.** Held-out levels 4-5 do not improve.
- Why, as far as measured: the student's errors are digit-copying and carry errors inside long (40-50 token)
  step-by-step traces; an outcome reward gives one bit per trace, and the sampled traces are much noisier than the
  greedy one (sampled thinking accuracy 32% on levels 2-3 vs 50% greedy), so most of the gradient sharpens sampling.
  None of the variants below moved greedy accuracy by more than the baseline (table). The same model goes from 52% to
  100% with 2,400 more SFT steps (docs/results/checkpoints.md), so the capacity is there; dense supervision is what the
  outcome reward lacks here. Candidate next steps: more samples per prompt, a process-level signal, or on-policy
  distillation from the teacher (issue on OPD).

### Variants tried (seed 0, from the student, greedy accuracy on levels 1-3)

Command: `reasonrl train --config configs/grpo.yaml train.steps=STEPS data.eval_n=N OVERRIDE` (N=50: 108 problems,
N=40: 88 problems); all numbers from single runs, so differences of a few points are within noise.

| override | steps | eval n | before | after | change | step time (s) |
|---|---|---|---|---|---|---|
| (none: lr 5e-5, T 1.0, 8 prompts x 8, loss dapo) | 60 | 108 | 51.9% | 60.2% | +8.3 | 106 |
| `rollout.temperature=0.7` | 60 | 108 | 51.9% | 57.4% | +5.5 | 104 |
| `rollout.num_generations=16` | 60 | 108 | 51.9% | 60.2% | +8.3 | 169 |
| `algo.loss_type=grpo` | 60 | 108 | 51.9% | 57.4% | +5.5 | 108 |
| `optim.lr=2e-4` | 30 | 88 | 54.5% | 36.4% | -18.2 | - |
| `optim.lr=1e-4` | 40 | 88 | 54.5% | 55.7% | +1.1 | - |
| `optim.lr=5e-5` | 40 | 88 | 54.5% | 61.4% | +6.8 | - |
| `train.prompts_per_step=16 optim.lr=1e-4` | 60 | 88 | 54.5% | 56.8% | +2.3 | - |
| `model.path=DIR`, a student made with \
`reasonrl sft --config configs/student.yaml algo.demo=solution --export DIR` (58.3% at the end of its SFT) \
| 60 | 88 | 59.1% | 61.4% | +2.3 | - |"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "exp-grpo"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the doc from existing runs")
    args = parser.parse_args()
    out_root, doc_dir = Path(args.out), Path(args.doc)
    doc_dir.mkdir(parents=True, exist_ok=True)
    run_dirs, wall = {}, {}
    for name in SETTINGS:
        if args.report_only:
            run_dirs[name] = out_root / name
            wall[name] = sum(r.get("step_time", 0.0) for r in read_metrics(run_dirs[name]))
        else:
            run_dirs[name], wall[name] = run(name, args.steps, out_root, args.seed)
    labels = list(run_dirs)
    plots = {
        "eval/accuracy/level_2": "grpo-accuracy-level2.png",
        "eval/accuracy/level_3": "grpo-accuracy-level3.png",
        "completions/mean_length": "grpo-length.png",
        "entropy": "grpo-entropy.png",
        "reward": "grpo-reward.png",
    }
    for metric, file in plots.items():
        plot_runs([run_dirs[n] for n in labels], labels, metric, doc_dir / file)
    command = "python experiments/grpo.py" + ("" if args.steps == 250 else f" --steps {args.steps}")
    doc = [
        "# GRPO and DAPO from the shipped student (arith world)",
        "",
        f"Command: `{command}` (seed {args.seed}; CPU, 2 cores). Training levels 1-3; levels 4-5 are held out"
        " (never trained on with RL). Greedy accuracy on 50 held-out problems per level (level 1 has only 8).",
        "",
        "Settings: " + ", ".join(COMMON[:-1]) + ". GRPO: `loss_type=dapo` (token-level), std-scaled group"
        " advantages, epsilon 0.2, beta 0. DAPO: clip-higher (epsilon_high 0.28), dynamic sampling (up to 3 extra"
        " rounds), soft overlong punishment over the last 16 tokens.",
        "",
        table(run_dirs, wall),
        "",
        "Wall-clock is the sum of step times (generation, rewards, update), without the evaluations.",
        "",
        ANALYSIS,
        "",
        *[f"![{m}]({f})" for m, f in plots.items()],
        "",
    ]
    (doc_dir / "grpo.md").write_text("\n".join(doc))
    print(json.dumps({n: str(d) for n, d in run_dirs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
