"""SRFT vs SFT only, GRPO only and SFT->GRPO from a weak start (issue 5), at equal optimizer steps and at equal
generated tokens: greedy accuracy on the training levels 1-3 and on held-out harder levels, entropy; 3 seeds.

Two phases, each writing its runs under --out; the report is rebuilt from whatever runs exist:
  pilot: one seed, a short run per (method, learning rate), on a different data seed (training stream and held-out
         draws) than the final runs, so that the learning rate is not picked on the final evaluation set;
  final: every method at its pilot-chosen learning rate, several seeds.
Writes docs/results/srft.md and PNG plots. Reproduce (the weak start first, then the two phases):
    reasonrl sft --config configs/srft_weak.yaml --export runs/srft/weak
    OMP_NUM_THREADS=1 .venv/bin/python experiments/srft.py pilot
    OMP_NUM_THREADS=1 .venv/bin/python experiments/srft.py final
    .venv/bin/python experiments/srft.py final --steps 4 --stage1 2 --eval-every 2 --seeds 0 --eval-n 5 --out /tmp/x
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from srft_text import ANALYSIS, HEADER, PILOT_NOTE, TABLE_NOTE

from reasonrl.config import load_config
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer
from reasonrl.worlds.arith import ArithWorld

ROOT = Path(__file__).resolve().parents[1]
ID_LEVELS, OOD_LEVELS, ALL_LEVELS = (1, 2, 3), (4, 5), (1, 2, 3, 4, 5)
PILOT_DATA_SEED, FINAL_DATA_SEED = 1, 0
SFT = ["algo=sft", "algo.demo=solution"]
# The on-policy settings of configs/srft_baseline_grpo.yaml, shared by GRPO and SRFT's on-policy term.
GRPO = ["algo=grpo", "algo.loss_type=dapo", "algo.scale_rewards=group", "algo.epsilon=0.2", "algo.beta=0.0"]


WEAK_COMMAND = (
    "reasonrl sft --config configs/student.yaml 'data.eval_levels=[1,2,3,4,5]' train.steps=480 --export runs/srft/weak"
)


@dataclass(frozen=True)
class Method:
    name: str
    overrides: list[str] | None  # None: the two-stage pipeline, SFT then GRPO
    family: str  # the learning-rate family the pilot tunes: sft, grpo or srft


METHODS = [
    Method("sft", SFT, "sft"),
    Method("grpo", GRPO, "grpo"),
    Method("sft->grpo", None, "grpo"),  # stage 1 at the sft lr, stage 2 at the grpo lr
    Method("srft (paper, -1)", ["algo=srft", "algo.sft_entropy_sign=-1"], "srft"),
    Method("srft (code, +1)", ["algo=srft", "algo.sft_entropy_sign=1"], "srft"),
]
PILOT = {"sft": METHODS[0], "grpo": METHODS[1], "srft": METHODS[3]}


def slug(name: str) -> str:
    return name.split()[0].replace("->", "_") + ("_" + name.split()[1].strip("(,") if " " in name else "")


def common(args, lr: float, steps: int, eval_every: int, seed: int, data_seed: int, model: str) -> list[str]:
    return [
        f"model.path={model}",
        "data.levels=[1,2,3]",
        f"data.eval_levels={list(ALL_LEVELS)}",
        f"data.eval_n={args.eval_n}",
        f"data.seed={data_seed}",
        "rollout.num_generations=8",
        "rollout.max_completion_length=64",
        "rollout.eval_max_completion_length=96",
        "rollout.temperature=1.0",
        "train.prompts_per_step=8",
        "train.micro_batch_size=72",
        f"optim.lr={lr}",
        "optim.warmup_steps=5",
        "train.progress=false",
        f"train.steps={steps}",
        f"train.eval_every={eval_every}",
        f"train.seed={seed}",
    ]


def train(overrides: list[str], run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    Trainer(load_config(None, overrides), run_dir=run_dir).train()


def run(method: Method, lrs: dict[str, float], args, steps: int, seed: int, data_seed: int, run_dir: Path) -> None:
    """One method from the weak start. The pipeline runs `args.stage1` SFT steps, then `steps` GRPO steps, and its
    two metric files are joined on one step axis: step `steps` is the equal-steps point, the end has as many
    rollout steps as GRPO and SRFT."""
    if method.overrides is not None:
        train(
            common(args, lrs[method.family], steps, args.eval_every, seed, data_seed, args.model) + method.overrides,
            run_dir,
        )
        return
    s1 = args.stage1
    train(common(args, lrs["sft"], s1, s1, seed, data_seed, args.model) + SFT, run_dir / "stage1")
    train(
        common(args, lrs["grpo"], steps, args.eval_every, seed, data_seed, str(run_dir / "stage1" / "final")) + GRPO,
        run_dir / "stage2",
    )
    rows = read_metrics(run_dir / "stage1")
    rows += [{**r, "step": r["step"] + s1} for r in read_metrics(run_dir / "stage2") if r["step"] > 0]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---- reading runs -------------------------------------------------------------------------------------------


def end_step(method: Method, args) -> int:
    return args.steps + (args.stage1 if method.overrides is None else 0)


def finished(run_dir: Path, step: int) -> bool:
    """Whether the run got to its last evaluation (a run cut short is redone by `final` and left out of the report)."""
    path = run_dir / "metrics.jsonl"
    return path.is_file() and any(r["step"] == step and "eval/accuracy" in r for r in read_metrics(run_dir))


def level_sizes(eval_n: int, data_seed: int) -> dict[int, int]:
    return {lv: len(ArithWorld(levels=[lv], seed=data_seed).eval_set([lv], eval_n)) for lv in ALL_LEVELS}


def evals(rows: list[dict], sizes: dict[int, int]) -> list[dict]:
    """Eval points: step, cumulative generated (rollout) tokens, ID and OOD accuracy weighted by problem counts."""
    out, tokens = [], 0.0
    for r in rows:
        if r["step"] > 0 and "loss" in r and "reward" in r:
            tokens += r.get("num_tokens", 0.0)  # SFT steps log demonstration tokens as num_tokens: not generated
        if "eval/accuracy" in r:
            acc = {lv: r[f"eval/accuracy/level_{lv}"] for lv in ALL_LEVELS}
            split = {
                key: sum(acc[lv] * sizes[lv] for lv in lvs) / sum(sizes[lv] for lv in lvs)
                for key, lvs in (("id", ID_LEVELS), ("ood", OOD_LEVELS))
            }
            out.append({"step": r["step"], "tokens": tokens, **split, **{f"L{lv}": a for lv, a in acc.items()}})
    return out


def at_step(points: list[dict], step: int) -> dict:
    return next(p for p in points if p["step"] == step)


def at_tokens(points: list[dict], budget: float, key: str) -> float:
    """Accuracy at `budget` generated tokens, linear between the eval points around it. An SFT stage generates no
    tokens, so the pipeline's last zero-token point (the end of SFT) is where its token axis starts."""
    sft_end = max((p for p in points if p["tokens"] == 0), key=lambda p: p["step"])
    pts = [p for p in points if p["tokens"] > 0 or p is sft_end]
    for a, b in itertools.pairwise(pts):
        if a["tokens"] <= budget <= b["tokens"]:
            t = (budget - a["tokens"]) / max(b["tokens"] - a["tokens"], 1e-9)
            return a[key] + t * (b[key] - a[key])
    raise ValueError(f"budget {budget:.0f} is beyond the run's {pts[-1]['tokens']:.0f} generated tokens")


def train_means(rows: list[dict], key: str, last: int = 10) -> float:
    vals = [r[key] for r in rows if r["step"] > 0 and key in r and r[key] is not None]
    return statistics.fmean(vals[-last:]) if vals else math.nan


def fmt(values: list[float], scale: float = 100, digits: int = 1) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


# ---- plots --------------------------------------------------------------------------------------------------


def color(name: str) -> str:
    """One colour per method in every plot."""
    return f"C{[m.name for m in METHODS].index(name)}"


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy(curves: dict[str, list[list[dict]]], x: str, path: Path, budget: float | None = None) -> None:
    """ID and OOD accuracy, mean over seeds with a band of one standard deviation, against steps or tokens."""
    fig = _figure((11, 4))
    for i, (key, title) in enumerate((("id", "ID: levels 1-3"), ("ood", "OOD: levels 4-5 (never trained on)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, seeds in curves.items():
            if x == "tokens" and all(p["tokens"] == 0 for p in seeds[0]):
                continue  # SFT only generates nothing
            n = min(len(s) for s in seeds)
            xs = [statistics.fmean(s[j][x] for s in seeds) for j in range(n)]
            ys = [[100 * s[j][key] for s in seeds] for j in range(n)]
            mean = [statistics.fmean(y) for y in ys]
            sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            (line,) = ax.plot(xs, mean, marker="o", ms=3, label=name, color=color(name))
            ax.fill_between(
                xs,
                [m - s for m, s in zip(mean, sd)],
                [m + s for m, s in zip(mean, sd)],
                color=line.get_color(),
                alpha=0.15,
            )
        if budget is not None:
            ax.axvline(budget, color="grey", ls="--", lw=1)
        ax.set(
            title=title, xlabel="generated tokens" if x == "tokens" else "optimizer step", ylabel="greedy accuracy (%)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def plot_train_metric(
    rows: dict[str, list[list[dict]]], keys: list[tuple[str, str]], path: Path, ylabel: str, window: int = 5
) -> None:
    """Per-step training metrics, mean over seeds, smoothed with a trailing window; one line per (method, key)."""
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    for name, seeds in rows.items():
        for (key, label), style in zip(keys, ("-", "--")):
            series = [{r["step"]: r[key] for r in s if r["step"] > 0 and r.get(key) is not None} for s in seeds]
            steps = sorted(set.intersection(*(set(s) for s in series)))
            if not steps:
                continue
            mean = [statistics.fmean(s[t] for s in series) for t in steps]
            smooth = [statistics.fmean(mean[max(0, j - window + 1) : j + 1]) for j in range(len(mean))]
            ax.plot(steps, smooth, style, label=f"{name}{label}", color=color(name))
    ax.set(xlabel="optimizer step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


# ---- the two phases -----------------------------------------------------------------------------------------


def pilot(args) -> None:
    for family, method in PILOT.items():
        for lr in args.pilot_lrs[family]:
            run_dir = Path(args.out) / "pilot" / f"{family}_lr{lr:g}"
            if (run_dir / "metrics.jsonl").is_file() and not args.redo:
                continue
            print(f"pilot {family} lr {lr:g}", flush=True)
            run(method, {family: lr}, args, args.pilot_steps, 0, PILOT_DATA_SEED, run_dir)


def pilot_table(args) -> tuple[str, dict[str, float]]:
    """The pilot's ID/OOD accuracy per (family, lr) and the chosen lr per family: the best mean ID accuracy over the
    eval points after step 0 (one seed's single end point on ~100 problems moves by several points)."""
    sizes = level_sizes(args.eval_n, PILOT_DATA_SEED)
    lines = [
        "| family | lr | ID start | ID mean over evals after step 0 | ID end | OOD end "
        "| train reward (last 10 steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    chosen: dict[str, float] = {}
    for family in PILOT:
        best = None
        for lr in args.pilot_lrs[family]:
            run_dir = Path(args.out) / "pilot" / f"{family}_lr{lr:g}"
            if not (run_dir / "metrics.jsonl").is_file():
                continue
            rows = read_metrics(run_dir)
            pts = evals(rows, sizes)
            end, mean_id = pts[-1], statistics.fmean(p["id"] for p in pts[1:])
            lines.append(
                f"| {family} | {lr:g} | {100 * pts[0]['id']:.1f} | {100 * mean_id:.1f} | "
                f"{100 * end['id']:.1f} | {100 * end['ood']:.1f} | "
                f"{fmt([train_means(rows, 'reward')], scale=1, digits=3)} |"
            )
            if best is None or mean_id > best[0]:
                best = (mean_id, lr)
        if best is not None:
            chosen[family] = best[1]
    return "\n".join(lines), chosen


def final(args, lrs: dict[str, float]) -> None:
    for seed in args.seeds:
        for method in args.methods:
            run_dir = Path(args.out) / "final" / f"seed{seed}" / slug(method.name)
            if finished(run_dir, end_step(method, args)) and not args.redo:
                continue
            print(f"final {method.name} seed {seed} lrs {lrs}", flush=True)
            run(method, lrs, args, args.steps, seed, FINAL_DATA_SEED, run_dir)


def report(args, lrs: dict[str, float], pilot_md: str) -> None:
    doc_dir, out = Path(args.doc), Path(args.out) / "final"
    doc_dir.mkdir(parents=True, exist_ok=True)
    sizes = level_sizes(args.eval_n, FINAL_DATA_SEED)
    rows: dict[str, list[list[dict]]] = {}
    for method in METHODS:
        dirs = [out / f"seed{s}" / slug(method.name) for s in args.seeds]
        dirs = [d for d in dirs if finished(d, end_step(method, args))]
        if dirs:
            rows[method.name] = [read_metrics(d) for d in dirs]
    curves = {m: [evals(r, sizes) for r in seeds] for m, seeds in rows.items()}
    start = next(iter(curves.values()))[0][0]
    rl = [m for m in curves if any(p["tokens"] > 0 for p in curves[m][0])]
    budget = min(s[-1]["tokens"] for m in rl for s in curves[m])  # the smallest generated-token total of any run
    head = (
        "| method | seeds | ID (L1-3) | OOD (L4-5) | L1 | L2 | L3 | L4 | L5 | generated tokens | "
        f"ID at {budget / 1e3:.0f}k tokens | OOD at {budget / 1e3:.0f}k tokens | ID, end of run | OOD, end of run |"
        " entropy (last 10) | demo NLL (last 10) |"
    )
    lines = [
        head,
        "|" + "---|" * 16,
        f"| weak start | - | {100 * start['id']:.1f} | {100 * start['ood']:.1f} | "
        + " | ".join(f"{100 * start[f'L{lv}']:.1f}" for lv in ALL_LEVELS)
        + " | 0 | | | | | | |",
    ]
    for name, seeds in curves.items():
        eq = [at_step(s, args.steps) for s in seeds]
        col = lambda pts, k: [p[k] for p in pts]  # noqa: E731
        tok = [at_step(s, args.steps)["tokens"] for s in seeds]
        generates = name in rl
        nll_key = {"sft": "sft/nll"}.get(name, "srft/demo_nll")  # the pipeline's SFT NLL is from stage 1: left out
        lines.append(
            f"| {name} | {len(seeds)} | {fmt(col(eq, 'id'))} | {fmt(col(eq, 'ood'))} | "
            + " | ".join(fmt(col(eq, f"L{lv}")) for lv in ALL_LEVELS)
            + f" | {statistics.fmean(tok):,.0f} | "
            + (
                f"{fmt([at_tokens(s, budget, 'id') for s in seeds])} | "
                f"{fmt([at_tokens(s, budget, 'ood') for s in seeds])}"
                if generates
                else "- | -"
            )
            + f" | {fmt([s[-1]['id'] for s in seeds])} | {fmt([s[-1]['ood'] for s in seeds])}"
            + f" | {fmt([train_means(r, 'entropy') for r in rows[name]], scale=1, digits=3)}"
            + f" | {fmt([train_means(r, nll_key) for r in rows[name]], scale=1, digits=3)} |"
        )
    plot_accuracy(curves, "step", doc_dir / "srft-accuracy-steps.png")
    plot_accuracy({m: c for m, c in curves.items() if m in rl}, "tokens", doc_dir / "srft-accuracy-tokens.png", budget)
    plot_train_metric(rows, [("entropy", " (rollouts)")], doc_dir / "srft-entropy.png", "policy entropy (nats)")
    plot_train_metric(
        {m: r for m, r in rows.items() if m in rl},
        [("reward", "")],
        doc_dir / "srft-reward.png",
        "training reward (sampled, T=1)",
    )
    plot_train_metric(
        {m: r for m, r in rows.items() if "srft" in m},
        [("srft/sft_weight", ": w_SFT"), ("srft/rl_weight", ": w_RL")],
        doc_dir / "srft-weights.png",
        "mean entropy weight",
    )
    summary = {
        "lrs": lrs,
        "budget_tokens": budget,
        "sizes": sizes,
        "curves": curves,
        "train": {
            m: {
                k: [train_means(r, k) for r in rows[m]]
                for k in ("entropy", "reward", "srft/demo_nll", "sft/nll", "srft/sft_weight")
            }
            for m in rows
        },
    }
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    doc = "\n".join(
        [
            HEADER.format(
                weak=WEAK_COMMAND,
                steps=args.steps,
                stage1=args.stage1,
                stage1_rest=args.steps - args.stage1,
                stage2_end=args.stage1 + args.steps,
                eval_every=args.eval_every,
                eval_n=args.eval_n,
                seeds=", ".join(map(str, args.seeds)),
                n_id=sum(sizes[lv] for lv in ID_LEVELS),
                n_ood=sum(sizes[lv] for lv in OOD_LEVELS),
                n_l1=sizes[1],
                lrs=", ".join(f"{k} {v:g}" for k, v in lrs.items()),
                shared=", ".join(f"`{o}`" for o in common(args, 0, 0, 0, 0, 0, "")[1:-5] if "lr" not in o),
            ),
            "",
            "## Learning-rate pilot",
            "",
            pilot_md,
            "",
            PILOT_NOTE.format(pilot_steps=args.pilot_steps),
            "",
            "## Results",
            "",
            TABLE_NOTE.format(budget=f"{budget:,.0f}", steps=args.steps, stage2_end=args.stage1 + args.steps),
            "",
            "\n".join(lines),
            "",
            ANALYSIS,
            "",
            "## Plots",
            "",
            *[
                f"![{f}]({f})"
                for f in (
                    "srft-accuracy-steps.png",
                    "srft-accuracy-tokens.png",
                    "srft-entropy.png",
                    "srft-reward.png",
                    "srft-weights.png",
                )
            ],
            "",
        ]
    )
    (doc_dir / "srft.md").write_text(doc)
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["pilot", "final", "report"])
    parser.add_argument("--model", default=str(ROOT / "runs" / "srft" / "weak"), help="the weak start")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps of every method (equal-steps point)")
    parser.add_argument("--stage1", type=int, default=20, help="SFT steps of the pipeline, then --steps GRPO steps")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-n", type=int, default=50)
    parser.add_argument("--pilot-steps", type=int, default=30)
    parser.add_argument(
        "--pilot-lrs",
        help="learning rates per family",
        default="sft=3e-5/1e-4/3e-4/1e-3/3e-3,grpo=2e-5/5e-5/2e-4/1e-3,srft=2e-5/5e-5/2e-4/1e-3",
    )
    parser.add_argument("--lrs", default="", help="override the pilot's choice, e.g. sft=1e-3,grpo=2e-4,srft=2e-4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(slug(m.name) for m in METHODS), help="%(default)s")
    parser.add_argument("--out", default=str(ROOT / "runs" / "srft"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--redo", action="store_true", help="rerun runs that already exist")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.methods = [m for m in METHODS if slug(m.name) in args.methods.split(",")]
    args.pilot_lrs = {k: [float(x) for x in v.split("/")] for k, v in (p.split("=") for p in args.pilot_lrs.split(","))}
    if args.phase == "pilot":
        pilot(args)
    pilot_md, lrs = pilot_table(args)
    lrs.update({k: float(v) for k, v in (p.split("=") for p in args.lrs.split(",") if p)})
    print(pilot_md, "\nchosen:", lrs, flush=True)
    if args.phase == "final":
        final(args, lrs)
    if args.phase in ("final", "report"):
        report(args, lrs, pilot_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
