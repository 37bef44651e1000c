"""OPD, POPD, TOPD at 10% and 25% of the horizon, and GRPO, all from the shipped student (issue 8): greedy accuracy on
levels 1-3 against training wall-clock and against generated tokens, several seeds.

Writes docs/results/opd.md and PNG plots. Runs are sequential on one thread, so their step times are comparable.
    OMP_NUM_THREADS=1 .venv/bin/python experiments/opd.py            (3 seeds x 48 steps; the doc gives its time)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/opd.py --quick    (3 seeds x 12 steps, about 5 minutes)
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

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.config import load_config
from reasonrl.plot import write_keeping_notes
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
GRPO = ["algo=grpo", "algo.loss_type=dapo", "algo.scale_rewards=group", "algo.epsilon=0.2", "algo.beta=0.0"]
METHODS = {
    "opd": ["algo=opd"],
    "popd": ["algo=popd"],  # H = min(64, 16 + 8 * floor(k / 5))
    "topd 10%": ["algo=topd", "algo.fraction=0.1"],  # H = 6
    "topd 25%": ["algo=topd", "algo.fraction=0.25"],  # H = 16
    "grpo": GRPO,
    "opd direct": ["algo=opd", "algo.signal=direct"],  # the exact-KL loss; not in the default set
}
DEFAULT = ["opd", "popd", "topd 10%", "topd 25%", "grpo"]
MODES = {"full": {"steps": 48, "eval_every": 4}, "quick": {"steps": 12, "eval_every": 4}}
KEPT = "<!-- notes: kept when the experiment rewrites this file -->"
EVAL_N = 200  # per level: 8 + 200 + 200 = 408 held-out problems on levels 1-3
NOTES = """## Notes for reading the numbers

- **The horizon is tiny here.** T = 64 tokens (the paper's is 15,360), so TOPD at 10% trains on 6 tokens: `<think>`,
  a newline and the first column's operands. The first digit the student computes is the 7th token, so TOPD 10% can
  only correct operand copying; the student's carry and digit errors come later (docs/opd.md). At 25% (16 tokens) the
  first column's whole step is inside the horizon.
- **POPD's schedule** (H0 16, dH 8, dk 5; the paper gives none) reaches T at step 31: a 12-step quick run only ever
  trains POPD at H = 16-32.
- **Learning rate.** Every method uses lr 5e-5 (configs/grpo.yaml's). Single-seed probes (seed 0, 408 problems,
  made while writing the algorithm, so the last digits differ from the final code) found larger rates harmful for
  OPD from this student: `signal=pg` at 1e-4 went 50.7% -> 53.4% at step 5 -> 45.3% at step 20, at 3e-4 to 27.2%;
  `signal=direct` at 1e-4 peaked at 58.1% (step 10) and fell back to 50.2% (step 20), at 3e-4 to 30.4%, at 1e-3
  to 6.9%. With fresh Adam state every weight moves by about lr per step, and the teacher's signal sits on a few
  tokens per completion (k1 of 5-12 nats at a wrong digit, about 0 elsewhere), so the rest of the step is noise.
- **Plateau.** In 40-step probes at 5e-5, OPD (pg) gained 5-8 points within the first 5-15 steps and then stayed
  at 55-59% (GRPO: 51-56% over the same 40 steps). The teacher needed 3,000 SFT steps at lr up to 3e-3 to reach
  100%; tens of steps at 5e-5 fix the student's easy errors, not its arithmetic.
- **Eval noise.** One problem is 0.25 points and the binomial standard error at 50% accuracy is 2.5 points; the seeds
  share the eval set, so differences between methods are less noisy than that, but a 1-2 point difference is not a
  result."""


def common(steps: int, eval_every: int, seed: int) -> list[str]:
    """Settings shared by every method: those of configs/grpo.yaml and configs/opd.yaml."""
    return [
        "model.path=student",
        "data.levels=[1,2,3]",
        f"data.eval_n={EVAL_N}",
        "rollout.num_generations=8",
        "rollout.max_completion_length=64",
        "rollout.temperature=1.0",
        "train.prompts_per_step=8",
        "train.micro_batch_size=64",
        "optim.lr=5e-5",
        "optim.warmup_steps=5",
        "train.progress=false",
        f"train.steps={steps}",
        f"train.eval_every={eval_every}",
        f"train.seed={seed}",
    ]


def slug(name: str) -> str:
    return name.replace(" ", "-").replace("%", "")


def train(overrides: list[str], run_dir: Path) -> float:
    """Train one run from scratch; returns its wall-clock seconds, evaluations and loading included."""
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    Trainer(load_config(None, overrides), run_dir=run_dir).train()
    return time.perf_counter() - started


def curve(rows: list[dict]) -> list[dict]:
    """One point per evaluation: accuracy, and the training seconds and generated tokens spent up to that step.

    Seconds leave out reward verification: the math-verify worker starts on the first answer that is not a plain
    number, which costs 5-10 s once, at a random step, in about half the runs of any method (otherwise about
    0.01 s per step); that one-off would be most of the difference between methods here.
    """
    wall = tokens = 0.0
    out = []
    for r in rows:
        wall += r.get("step_time", 0.0) - r.get("time/reward", 0.0)
        tokens += r.get("num_tokens", 0.0) if "reward" in r else 0.0  # rollout tokens (not eval records)
        if "eval/accuracy" in r and (not out or out[-1]["step"] != r["step"]):
            out.append({"step": r["step"], "accuracy": r["eval/accuracy"], "wall": wall, "tokens": tokens})
    return out


def seed_band(curves: list[list[dict]]) -> list[dict]:
    """Mean over seeds of x (wall, tokens) and of accuracy, with the accuracy's standard deviation, per eval step."""
    out = []
    for points in zip(*curves):
        acc = [p["accuracy"] for p in points]
        out.append(
            {
                "step": points[0]["step"],
                "accuracy": statistics.fmean(acc),
                "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                **{k: statistics.fmean(p[k] for p in points) for k in ("wall", "tokens")},
            }
        )
    return out


def first_reach(band: list[dict], target: float, key: str) -> float:
    """The x (`wall` or `tokens`) at which the seed-mean accuracy first reaches `target` (NaN if never)."""
    return next((p[key] for p in band if p["accuracy"] >= target - 1e-9), math.nan)


def summary(rows: list[dict], wall_total: float) -> dict[str, float]:
    steps = [r for r in rows if "loss" in r]
    evals = curve(rows)
    last = steps[-5:]

    def mean(key: str) -> float:
        return statistics.fmean([r[key] for r in last if key in r] or [math.nan])

    return {
        "final": evals[-1]["accuracy"],
        "best": max(p["accuracy"] for p in evals[1:]),
        "tokens": evals[-1]["tokens"],
        "wall": evals[-1]["wall"],
        "step_time": evals[-1]["wall"] / len(steps),
        "generate": sum(r.get("time/generate", 0.0) for r in steps),
        "kl": mean("opd/reverse_kl"),
        "agreement": mean("opd/agreement"),
        "reward": mean("reward"),
        "overhead": wall_total - evals[-1]["wall"],
        "evals": float(len(evals)),
    }


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if any(math.isnan(v) for v in values):
        return "-"
    mean = scale * statistics.fmean(values)
    spread = f" ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{mean:.{digits}f}{spread}"


def plot(
    bands: dict[str, list[dict]],
    key: str,
    xlabel: str,
    path: Path,
    title: str = "Student greedy accuracy, levels 1-3 (teacher: 100%)",
) -> None:
    """Seed-mean accuracy against `key`, with a band of one standard deviation over seeds."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, band in bands.items():
        x, y = [p[key] for p in band], [100 * p["accuracy"] for p in band]
        (line,) = ax.plot(x, y, marker="o", markersize=3, label=name)
        sd = [100 * p["std"] for p in band]
        ax.fill_between(
            x, [a - s for a, s in zip(y, sd)], [a + s for a, s in zip(y, sd)], color=line.get_color(), alpha=0.15
        )
    ax.set(title=title, xlabel=xlabel, ylabel="accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def estimate_full(results: dict[str, list[dict]]) -> float:
    """Seconds of the full run on one thread, from this run's per-step and per-evaluation times. POPD is counted at
    OPD's per-step time (an upper bound: its horizon only reaches OPD's at the end of its schedule)."""
    full = MODES["full"]
    evals = 1 + full["steps"] // full["eval_every"]
    total = 0.0
    for name, seeds in results.items():
        per_step = statistics.fmean(s["step_time"] for s in results.get("opd" if name == "popd" else name, seeds))
        per_eval = statistics.fmean(s["overhead"] / s["evals"] for s in seeds)  # loading counted as an evaluation
        total += len(seeds) * (per_step * full["steps"] + per_eval * evals)
    return total


def seconds(t: float) -> str:
    return "never in this run" if math.isnan(t) else f"{t:.0f} s"


def claims(results: dict[str, list[dict]], bands: dict[str, list[dict]], start: float) -> list[str]:
    """The paper's two claims, checked on this run's numbers (seed means)."""
    if "opd" not in results:
        return []
    final = {m: statistics.fmean(s["final"] for s in seeds) for m, seeds in results.items()}
    cost = {
        m: (statistics.fmean(s["tokens"] for s in seeds), statistics.fmean(s["wall"] for s in seeds))
        for m, seeds in results.items()
    }
    lines = []
    for name in ("topd 10%", "topd 25%"):
        if name in results:
            diff = 100 * (final[name] - final["opd"])
            lines.append(
                f"- **{name} vs OPD, final accuracy**: {100 * final[name]:.1f}% vs {100 * final['opd']:.1f}% "
                f"({diff:+.1f} points; the paper: within about 2) with {cost[name][0] / cost['opd'][0]:.0%} of OPD's "
                f"generated tokens and {cost[name][1] / cost['opd'][1]:.0%} of its training wall-clock: "
                f"**{'holds' if diff >= -2 else 'does not hold'}** here."
            )
    gain = final["opd"] - start
    if "popd" in results and gain > 0:
        target = start + 0.9 * gain
        t_opd, t_popd = first_reach(bands["opd"], target, "wall"), first_reach(bands["popd"], target, "wall")
        k_opd, k_popd = first_reach(bands["opd"], target, "tokens"), first_reach(bands["popd"], target, "tokens")
        # Generated tokens are the measure that other load on the machine cannot distort; wall-clock is shown beside.
        faster = not math.isnan(k_popd) and (math.isnan(k_opd) or k_popd < k_opd)
        reached = "never in this run" if math.isnan(k_popd) else f"{k_popd:,.0f}"
        lines.append(
            f"- **POPD vs OPD, cost to 90% of OPD's gain** ({100 * target:.1f}%, seed-mean curves): POPD "
            f"{reached} generated tokens ({seconds(t_popd)} of training wall-clock), OPD "
            f"{'never in this run' if math.isnan(k_opd) else f'{k_opd:,.0f}'} ({seconds(t_opd)}): "
            f"**{'holds' if faster else 'does not hold'}** here (the paper: up to 3x faster)."
        )
    return lines


def write_doc(
    args,
    mode: dict,
    seeds: list[int],
    results: dict[str, list[dict]],
    bands: dict[str, list[dict]],
    start: float,
    plots: list[str],
    estimate: float,
    path: Path,
) -> None:
    head = (
        "| method | final L1-3 | best during run | generated tokens | train wall-clock (s) | s / step | "
        "generate (s) | reverse KL (last 5 steps) | agreement (last 5) | sampled reward (last 5) |"
    )
    lines = [head, "|" + "---|" * 10, f"| student (step 0) | {100 * start:.1f} | - | 0 | 0 | - | - | - | - | - |"]
    for name, runs in results.items():
        col = {k: [r[k] for r in runs] for k in runs[0]}
        lines.append(
            f"| {name} | {fmt(col['final'])} | {fmt(col['best'])} | {statistics.fmean(col['tokens']):,.0f} | "
            f"{fmt(col['wall'], 1, 0)} | {statistics.fmean(col['step_time']):.2f} | "
            f"{statistics.fmean(col['generate']):.0f} | {fmt(col['kl'], 1, 3)} | {fmt(col['agreement'], 1, 3)} | "
            f"{fmt(col['reward'], 1, 2)} |"
        )
    flag = " --quick" if args.quick else ""
    doc = [
        "# On-policy distillation with horizon control: OPD, POPD, TOPD vs GRPO (arith world)",
        "",
        "Command (CPU, one thread, runs one after another so that their step times compare):",
        "",
        f"```\nOMP_NUM_THREADS=1 .venv/bin/python experiments/opd.py{flag}\n```",
        "",
    ]
    if args.quick:
        doc += [
            (
                f"**These are the numbers of the `--quick` mode ({mode['steps']} steps per run)**, a check of the "
                f"pipeline and a first look; the full run ({MODES['full']['steps']} steps, the same seeds) is "
                f"estimated from it at **{estimate / 60:.0f} CPU-minutes** on one thread (per-step and per-evaluation "
                "times measured here, POPD counted at OPD's per-step time)."
            ),
            "",
        ]
    doc += [
        f"Every method starts from the shipped `student` and trains for {mode['steps']} optimizer steps on levels 1-3, "
        f"seeds {', '.join(map(str, seeds))}; the teacher is the shipped `teacher` (100% on these problems). Shared: "
        + ", ".join(f"`{o}`" for o in common(mode["steps"], mode["eval_every"], 0)[:-3])
        + ".",
        "",
        "- `opd`: `algo=opd` (configs/opd.yaml): per-token reverse KL as the advantage, full horizon H = T = 64.",
        "- `popd`: `algo=popd`, H = min(64, 16 + 8 * floor(k / 5)) at step k = 0, 1, ... (64 from step 31 on).",
        "- `topd 10%` / `topd 25%`: `algo=topd algo.fraction=0.1` / `0.25`: H = 6 / 16 tokens at every step.",
        "- `grpo`: " + " ".join(f"`{o}`" for o in GRPO) + " (configs/grpo.yaml), outcome reward only.",
        "",
        (
            f"Greedy accuracy (%) on the 408 held-out problems of levels 1-3 (`data.eval_n={EVAL_N}`: 8 + 200 + 200; "
            "one problem is 0.25 points and the binomial standard error at 50% is 2.5 points). Mean ± standard "
            "deviation over seeds. Generated tokens and wall-clock are totals per run: training steps only, without "
            "evaluations and without reward verification (whose worker start-up costs 5-10 s once, at a random step, "
            "in about half the runs of any method; see `curve` in the script); the teacher's forward pass is inside "
            "`time/forward`. Reverse KL is the k1 estimate on the sampled tokens (nats per token), agreement the share "
            "of sampled positions where student and teacher have the same argmax."
        ),
        "",
        *lines,
        "",
        "## The paper's claims in miniature",
        "",
        *claims(results, bands, start),
        "",
        NOTES,
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    write_keeping_notes(path, "\n".join(doc), KEPT)  # the hand-written reading after the marker survives a rerun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 steps per run instead of 48")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--methods",
        default=",".join(slug(m) for m in DEFAULT),
        help=f"comma-separated, from: {', '.join(slug(m) for m in METHODS)}",
    )
    parser.add_argument("--out", default=str(ROOT / "runs" / "opd"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the doc from existing runs")
    args = parser.parse_args()
    mode = MODES["quick" if args.quick else "full"]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in METHODS if slug(m) in args.methods.split(",")]
    out = Path(args.out) / ("quick" if args.quick else "full")
    doc_dir = Path(args.doc)
    doc_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    curves: dict[str, list[list[dict]]] = {m: [] for m in methods}
    for seed in seeds:
        for name in methods:
            run_dir = out / f"seed{seed}" / slug(name)
            wall_file = run_dir / "wall_seconds.json"
            if not args.report_only:
                wall = train(common(mode["steps"], mode["eval_every"], seed) + METHODS[name], run_dir)
                wall_file.write_text(json.dumps(wall))
                print(f"{name} seed {seed}: {wall:.0f} s", flush=True)
            rows = read_metrics(run_dir)
            results[name].append(summary(rows, json.loads(wall_file.read_text())))
            curves[name].append(curve(rows))
    bands = {m: seed_band(curves[m]) for m in methods}
    start = bands[methods[0]][0]["accuracy"]  # the step-0 eval of the student, the same for every run
    prefix = "opd-quick" if args.quick else "opd"
    plots = [
        f"{prefix}-accuracy-vs-wallclock.png",
        f"{prefix}-accuracy-vs-tokens.png",
        f"{prefix}-accuracy-vs-step.png",
    ]
    for file, key, label in zip(
        plots, ("wall", "tokens", "step"), ("training wall-clock (s, one thread)", "generated tokens", "step")
    ):
        plot(bands, key, label, doc_dir / file)
    estimate = estimate_full(results)
    (out / "summary.json").write_text(json.dumps({"start": start, "results": results, "bands": bands}, indent=1))
    write_doc(args, mode, seeds, results, bands, start, plots, estimate, doc_dir / "opd.md")
    print((doc_dir / "opd.md").read_text())
    print(f"full run estimate: {estimate / 60:.1f} CPU-minutes on one thread")
    return 0


if __name__ == "__main__":
    sys.exit(main())
