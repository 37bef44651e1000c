"""SRFT vs SFT only, GRPO only and SFT->GRPO from a weak start (issue 5): accuracy on the training levels 1-3 and on
the held-out harder levels 4-5, entropy, generated tokens; several seeds, equal optimizer steps.

Writes docs/results/srft.md and PNG plots. Reproduce (the weak start first, then the comparison):
    reasonrl sft --config configs/student.yaml train.steps=300 --export runs/srft/weak
    OMP_NUM_THREADS=1 .venv/bin/python experiments/srft.py
    .venv/bin/python experiments/srft.py --steps 4 --seeds 0 --eval-n 5   (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

from reasonrl.config import load_config
from reasonrl.plot import plot_runs
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer
from reasonrl.worlds.arith import ArithWorld

ROOT = Path(__file__).resolve().parents[1]
ID_LEVELS, OOD_LEVELS = (1, 2, 3), (4, 5)
# The on-policy settings of configs/srft_baseline_grpo.yaml, shared by GRPO and SRFT's on-policy term.
GRPO = ["algo=grpo", "algo.loss_type=dapo", "algo.scale_rewards=group", "algo.epsilon=0.2", "algo.beta=0.0"]
METHODS = {
    "sft": ["algo=sft", "algo.demo=solution"],
    "grpo": GRPO,
    "sft->grpo": None,  # two stages: sft for a quarter of the steps, then grpo (configs/srft_baseline_*.yaml split)
    "srft (paper, -1)": ["algo=srft", "algo.sft_entropy_sign=-1"],
    "srft (code, +1)": ["algo=srft", "algo.sft_entropy_sign=1"],
}


WEAK_COMMAND = ("reasonrl sft --config configs/student.yaml train.steps=380 train.eval_every=380 "
                "--export runs/srft/weak")
ANALYSIS = """## Analysis: the paper's claim is not reproduced at this scale

- **No method beats the weak start on greedy accuracy in 32 steps at lr 5e-5.** The weak start scores 22.1% on
  levels 1-3 here (18.5% on the 108-problem set at the end of its SFT). SFT only ends at 20.6%; SFT->GRPO at
  16.7 ± 3.1, SRFT at 15.7 ± 2.2 (paper sign) and 17.2 ± 0.8 (code sign), GRPO only at 13.2 ± 1.5. One problem is
  1.5 points of the 68 ID problems, so SFT->GRPO and both SRFT variants are within noise of each other; only GRPO
  only is clearly worse.
- **SRFT does not beat the two-stage pipeline on ID accuracy**, with either sign, even though it saw more data:
  every SRFT step also trains on 8 demonstrations (9,188 demonstration tokens vs the pipeline's 2,224) and it
  generated about 35% more rollout tokens (about 68k vs 50k; the pipeline generates nothing in its 8 SFT steps).
- **Out of distribution (levels 4-5) is at the floor for every method** (0-1 of 60 problems, the start 1 of 60),
  so the OOD half of the claim cannot be tested from this start: the weak model cannot do level 4-5 at all,
  and 32 steps on levels 1-3 do not change that.
- **What SRFT does do better: the sampled (temperature 1) training reward.** Mean `reward` over the first vs the
  last 8 steps, three seeds each: SRFT (paper) 0.15 -> 0.22-0.23, SRFT (code) 0.15 -> 0.20-0.21, GRPO
  0.12-0.15 -> 0.15-0.18, SFT->GRPO (its GRPO steps) 0.16-0.18 -> 0.16-0.20. SRFT's demonstration NLL falls
  0.189 -> 0.165, the same as SFT only (0.189 -> 0.166). So SRFT learns on the sampling distribution, but as
  with GRPO from the student (docs/results/grpo.md) that does not carry over to greedy decoding within this
  budget; outcome-reward updates mostly sharpen sampling, and they pull greedy accuracy down here (GRPO only).
- **The sign of w_SFT.** The policy's entropy is low (about 0.25-0.34 nats on rollouts, 0.27 on demonstrations),
  so the two signs differ by a constant factor rather than in direction: w_SFT is 0.41 with the paper's exp(-H)
  and 0.76-0.78 with the code's exp(+H). The code's sign, a larger SFT weight, keeps rollout entropy slightly
  higher (0.27 vs 0.25 over the last 5 steps) and ends 1.5 points higher on ID, which is one problem: no
  difference we can claim.
  The signs would matter for a high-entropy policy (docs/srft.md), which this SFT-made start is not.
- **Why the weak start learns so little, and what would test the claim better.** The learning rate was picked by
  one short check (10 steps, seed 0, 16 problems per level, GRPO and SRFT (paper)): lr 1e-4 and 3e-4 lowered ID
  accuracy (30% -> 17.5% both at 1e-4; GRPO 5.0%, SRFT 12.5% at 3e-4), lr 5e-5 kept it (30% -> 25% both), so 5e-5
  is used for every method, stages included, as configs/srft_baseline_*.yaml do. At that rate 32 steps of 8
  demonstrations is a small fraction of the 380 SFT steps at 3e-3 that made the start; the SFT signal that
  could lift greedy accuracy is too weak, and the RL signal does not lift it. A fair test of the claim needs
  hundreds of steps (the paper uses 500) and a start that can reach the OOD levels, i.e. about 10x this budget.
- **Seeds.** Three seeds (0, 1, 2). `train.seed` sets the sampling; the SFT data order follows `data.seed`, so the
  SFT-only runs and the SFT stage are identical across seeds (spread 0.0), and the demonstration NLL of SRFT is
  nearly so.
- **The CI test** (tests/test_srft_learning.py) therefore uses a different weak start: the shipped student with
  seeded weight noise (2.5% on levels 1-3), where 12 SRFT steps at lr 1e-3 lift accuracy to 10.0% in about 35 s.
  That pins down that SRFT learns, not that it beats the pipeline."""


def common(model: str, lr: float, eval_n: int, steps: int, eval_every: int, seed: int) -> list[str]:
    return [
        f"model.path={model}", "data.levels=[1,2,3]", "data.eval_levels=[1,2,3,4,5]", f"data.eval_n={eval_n}",
        "rollout.num_generations=8", "rollout.max_completion_length=64", "rollout.eval_max_completion_length=96",
        "rollout.temperature=1.0", "train.prompts_per_step=8", "train.micro_batch_size=72", f"optim.lr={lr}",
        "optim.warmup_steps=2", "train.progress=false", f"train.steps={steps}", f"train.eval_every={eval_every}",
        f"train.seed={seed}",
    ]


def train(overrides: list[str], run_dir: Path) -> Path:
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(load_config(None, overrides), run_dir=run_dir)
    trainer.train()
    return trainer.run_dir


def run_method(name: str, args, seed: int, out: Path) -> Path:
    """Train one method for `args.steps` optimizer steps; the two-stage run's metrics are joined on one step axis."""
    run_dir = out / f"seed{seed}" / slug(name)
    if METHODS[name] is not None:
        return train(common(args.model, args.lr, args.eval_n, args.steps, args.eval_every, seed) + METHODS[name],
                     run_dir)
    s1 = args.steps // 4
    stage1 = train(common(args.model, args.lr, args.eval_n, s1, s1, seed) + METHODS["sft"], run_dir / "stage1")
    stage2 = train(common(str(stage1 / "final"), args.lr, args.eval_n, args.steps - s1, args.eval_every, seed) + GRPO,
                   run_dir / "stage2")
    rows = read_metrics(stage1)
    rows += [{**r, "step": r["step"] + s1} for r in read_metrics(stage2) if r["step"] > 0]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def slug(name: str) -> str:
    return name.split()[0].replace("->", "_") + ("_" + name.split()[1].strip("(,") if " " in name else "")


def with_split_accuracy(rows: list[dict], sizes: dict[int, int]) -> list[dict]:
    """Add eval/accuracy_id (levels 1-3) and eval/accuracy_ood (levels 4-5), weighted by problem counts."""
    out = []
    for r in rows:
        r = dict(r)
        if "eval/accuracy" in r:
            for key, levels in (("eval/accuracy_id", ID_LEVELS), ("eval/accuracy_ood", OOD_LEVELS)):
                r[key] = sum(r[f"eval/accuracy/level_{lv}"] * sizes[lv] for lv in levels) / sum(sizes[lv] for lv in levels)
        out.append(r)
    return out


def seed_mean(runs: list[list[dict]]) -> list[dict]:
    """Mean over seeds of every numeric metric, step by step (each metric over the seeds that logged it)."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for rows in runs:
        for r in rows:
            slot = by_step.setdefault(r["step"], {})
            for k, v in r.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    slot.setdefault(k, []).append(float(v))
    return [{"step": s, **{k: sum(v) / len(v) for k, v in slot.items()}} for s, slot in sorted(by_step.items())]


def summary(rows: list[dict]) -> dict[str, float]:
    evals = [r for r in rows if "eval/accuracy_id" in r]
    train_rows = [r for r in rows if r["step"] > 0 and "loss" in r]
    generated = sum(r.get("num_tokens", 0.0) for r in train_rows if "reward" in r)  # rollout tokens only
    demos = sum(r.get("num_tokens", 0.0) for r in train_rows if "sft/nll" in r)
    demos += sum(8 * r.get("srft/demo_length", 0.0) for r in train_rows)  # SRFT: 8 demonstrations per step
    return {
        "id": evals[-1]["eval/accuracy_id"], "ood": evals[-1]["eval/accuracy_ood"],
        **{f"L{lv}": evals[-1][f"eval/accuracy/level_{lv}"] for lv in (*ID_LEVELS, *OOD_LEVELS)},
        "best_id": max(r["eval/accuracy_id"] for r in evals[1:]),
        "generated": generated, "demo_tokens": demos,
        "entropy": statistics.fmean([r["entropy"] for r in train_rows[-5:] if "entropy" in r] or [math.nan]),
        "wall": sum(r.get("step_time", 0.0) for r in train_rows),
    }


def fmt(values: list[float], pct: bool = True, digits: int = 1) -> str:
    scale = 100 if pct else 1
    if any(math.isnan(v) for v in values):
        return "-"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def table(results: dict[str, list[dict]], start: dict[str, float]) -> str:
    head = ("| method | L1-3 (ID) | L4-5 (OOD) | L1 | L2 | L3 | L4 | L5 | best ID during run | generated tokens |"
            " demonstration tokens | entropy (last 5 steps) | train time (s) |")
    lines = [head, "|" + "---|" * 13]
    lines.append(f"| weak start (step 0) | {100 * start['id']:.1f} | {100 * start['ood']:.1f} | "
                 + " | ".join(f"{100 * start[f'L{lv}']:.1f}" for lv in (1, 2, 3, 4, 5)) + " | - | 0 | 0 | - | 0 |")
    for name, seeds in results.items():
        col = lambda k: [s[k] for s in seeds]  # noqa: E731
        lines.append(
            f"| {name} | {fmt(col('id'))} | {fmt(col('ood'))} | "
            + " | ".join(fmt(col(f"L{lv}")) for lv in (1, 2, 3, 4, 5))
            + f" | {fmt(col('best_id'))} | {statistics.fmean(col('generated')):,.0f} | "
            f"{statistics.fmean(col('demo_tokens')):,.0f} | {fmt(col('entropy'), pct=False, digits=2)} | "
            f"{statistics.fmean(col('wall')):.0f} |"
        )
    return "\n".join(lines)


def write_doc(args, seeds: list[int], methods: list[str], sizes: dict[int, int], results_table: str,
              plots: dict[str, str], path: Path) -> None:
    defaults = {"steps": 32, "eval_every": 8, "eval_n": 30, "lr": 5e-5, "seeds": "0,1,2"}
    flags = "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v)
    n_id, n_ood = sum(sizes[lv] for lv in ID_LEVELS), sum(sizes[lv] for lv in OOD_LEVELS)
    doc = [
        "# SRFT vs SFT, GRPO and SFT->GRPO from a weak start (arith world)",
        "",
        "Commands (CPU, one thread; the weak start, then the comparison):",
        "",
        "```",
        WEAK_COMMAND,
        f"OMP_NUM_THREADS=1 .venv/bin/python experiments/srft.py{flags}",
        "```",
        "",
        f"Every method trains for {args.steps} optimizer steps from the same weak start on levels 1-3, seeds "
        f"{', '.join(map(str, seeds))}. Settings shared by all: " + ", ".join(f"`{o}`" for o in common(
            "runs/srft/weak", args.lr, args.eval_n, args.steps, args.eval_every, 0)[1:-3]) + ".",
        "",
        "- `sft`: `algo=sft algo.demo=solution` (the step-by-step demonstrations, 8 per step).",
        "- `grpo`: " + " ".join(f"`{o}`" for o in GRPO) + " (the settings of configs/srft_baseline_grpo.yaml).",
        f"- `sft->grpo`: `sft` for {args.steps // 4} steps, then `grpo` for {args.steps - args.steps // 4} from its "
        "model (the 1:3 split of configs/srft_baseline_sft.yaml + srft_baseline_grpo.yaml; optimizer and warmup "
        "restart at stage 2).",
        "- `srft (paper, -1)`: `algo=srft` with the paper's defaults (docs/srft.md), `algo.sft_entropy_sign=-1`.",
        "- `srft (code, +1)`: the same with the released code's sign, `algo.sft_entropy_sign=1`.",
        "",
        f"Greedy accuracy (%) at the last step on held-out problems: ID = levels 1-3 ({n_id} problems; level 1 "
        f"has only {sizes[1]}), OOD = levels 4-5 ({n_ood} problems, never trained on). Mean ± standard deviation "
        f"over {len(seeds)} seed(s). 'Generated tokens' is the sum of `num_tokens` over the rollouts; "
        "'demonstration tokens' counts the demonstration tokens trained on (SFT steps and SRFT's 8 per step). "
        "Entropy is the policy's mean token entropy on its rollouts (nats), averaged over the last 5 steps. "
        "Train time is the sum of step times (one thread, without evaluations), mean per run.",
        "",
        results_table,
        "",
        ANALYSIS,
        "",
        "Plots (mean over seeds; evaluation points every "
        f"{args.eval_every} steps; `sft` logs no rollout entropy or reward):",
        "",
        *[f"![{m}]({f})" for m, f in plots.items()],
        "",
    ]
    path.write_text("\n".join(doc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "srft" / "weak"), help="the weak start")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--eval-n", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(map(slug, METHODS)), help="comma-separated: %(default)s")
    parser.add_argument("--out", default=str(ROOT / "runs" / "srft" / "exp"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the doc from existing runs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in METHODS if slug(m) in args.methods.split(",")]
    out, doc_dir = Path(args.out), Path(args.doc)
    doc_dir.mkdir(parents=True, exist_ok=True)
    sizes = {lv: len(ArithWorld(levels=[lv]).eval_set([lv], args.eval_n)) for lv in (*ID_LEVELS, *OOD_LEVELS)}
    rows: dict[str, list[list[dict]]] = {m: [] for m in methods}
    for seed in seeds:
        for name in methods:
            run_dir = out / f"seed{seed}" / slug(name)
            if not args.report_only:
                started = time.perf_counter()
                run_method(name, args, seed, out)
                print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
            rows[name].append(with_split_accuracy(read_metrics(run_dir), sizes))
    results = {m: [summary(r) for r in rows[m]] for m in methods}
    first = rows[methods[0]][0][0]  # the step-0 eval of the weak start, the same for every run
    start = {"id": first["eval/accuracy_id"], "ood": first["eval/accuracy_ood"],
             **{f"L{lv}": first[f"eval/accuracy/level_{lv}"] for lv in (*ID_LEVELS, *OOD_LEVELS)}}
    mean_dirs = []
    for name in methods:
        d = out / "mean" / slug(name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seed_mean(rows[name])))
        mean_dirs.append(d)
    plots = {
        "eval/accuracy_id": "srft-accuracy-id.png",
        "eval/accuracy_ood": "srft-accuracy-ood.png",
        "entropy": "srft-entropy.png",
        "reward": "srft-reward.png",
        "srft/sft_weight": "srft-sft-weight.png",
    }
    for metric, file in list(plots.items()):
        if any(metric in r for m in methods for r in rows[m][0]):
            plot_runs(mean_dirs, methods, metric, doc_dir / file)
        else:
            del plots[metric]
    (out / "summary.json").write_text(json.dumps({"start": start, "results": results, "sizes": sizes}, indent=1))
    write_doc(args, seeds, methods, sizes, table(results, start), plots, doc_dir / "srft.md")
    print(table(results, start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
