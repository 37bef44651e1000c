"""DTR against DT and IQL on a preference-learned reward, on Hopper-v5 datasets made here (issue 28): does DTR beat
DT and IQL on the same learned reward, how far is it from IQL on the true reward, and does its ensemble z-scoring
matter?

Data (no D4RL download here; `reasonrl control collect`, docs/control.md): one SAC run on Hopper-v5 with the true
reward (SB3's defaults, 80k steps, a checkpoint and a 10-episode evaluation every 5k); its "medium" checkpoint is the
one whose evaluation return is closest to a third of D4RL's expert reference (3234.3 / 3, D4RL's definition of
medium); medium = 100k transitions of that policy's sampled actions, medium-replay = its replay buffer up to that
checkpoint (every transition the run saw until then). HalfCheetah and Walker2d are left out: a second task would
double the cost past the budget.
Arms, per dataset, seeds 0-2 (train.seed: the labels drawn, the reward ensemble, the agent; arms pair seed by seed):
    dtr       DTR on the learned reward (the ensemble z-scored per member)
    dt        the Decision Transformer alone, same learned reward
    iql       IQL, same learned reward
    iql_true  IQL on the true reward (the ceiling)
    dtr_raw   DTR on the members' plain mean (no z-scoring; the ablation)
The learned reward: 500 pairs of 50-step segments labelled by B-Pref's mistake teacher (10% flipped, a stand-in for
crowd labels such as Uni-RLHF's), a 3-member ensemble (3x256) trained 20 epochs at batch 64. It is a function of the
seed and the dataset only (trained before any agent is built), so at a seed every arm but iql_true trains on the same
reward — the page checks that their reward accuracies agree. DTR / DT in miniature (DTR's own sizes are GPU-sized):
embed 64, 2 layers, 2 heads, K = 20, batch 32, critics 3x128, 2 candidates per return target, 5,000 steps; IQL at its
defaults (2x256, batch 256) for 20,000 steps. The two step counts give each run about the same CPU time (~4 CPU-min
of updates). No hyper-parameter is chosen: offline RL has no validation signal but the environment return, which is
the test; the settings are DTR's and IQL's defaults, shrunk for the CPU. Per run the score is D4RL's normalised score
of the mean of the last 2 evaluations (5 episodes each; 5 evaluations per run).
Claims per dataset (experiments/dtr_report.py): DTR > DT; DTR > IQL (same reward); DTR > DTR without z-scoring;
IQL on the true reward > IQL on the learned reward; DTR on the learned reward > IQL on the true reward.

Measured cost (--quick on 2026-12-04, 2.9 CPU-minutes in all, plus timing runs of 500 DTR / DT and 2,000 IQL steps
on its medium dataset; one thread, both cores loaded by other experiments, so CPU-seconds run ~1.5x an idle
machine's): ~4 CPU-s start-up per process; DTR 47 CPU-s per 1k gradient steps at the sizes above, DT 30, IQL 8.8;
per evaluation environment step DTR 3.5 ms (10 candidates + critics), DT 0.8, IQL 0.13; reward training 36 CPU-s
(500 pairs x 50 steps x 20 epochs, measured apart); SAC on Hopper ~10 CPU-s per 1k steps (the quick behaviour run:
34.6 CPU-s for 3,000 steps with start-up and evaluations). Full design: behaviour SAC 80k steps ≈ 900 CPU-s,
datasets ≈ 40; per (dataset, seed): dtr 235 + 36 + <= 88 (25 evaluation episodes of up to 1,000 steps) + 4 ≈ 360,
dtr_raw ≈ 360, dt 150 + 36 + 20 + 4 ≈ 210, iql 176 + 36 + 7 ≈ 220, iql_true ≈ 185: ~1,340, x 2 datasets x 3 seeds ≈
8,000. In all ~9,000 CPU-s: ~2.5 CPU-hours, ~1.3 hours on 2 cores (--jobs 2). Why this size: 2 datasets x 5 arms x 3
seeds = 30 runs at ~4 CPU-minutes of updates each is what fits 2-3 CPU-hours. DTR's 5,000 steps at batch 32 (160k
windows) are far below DTR's own budget (GPU runs of 100k+ steps at batch 256, embed 256): a comparison in miniature,
whose curves on the page show whether the scores had settled.
    OMP_NUM_THREADS=1 .venv/bin/python experiments/dtr.py --jobs 2              (~2.5 CPU-hours)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/dtr.py --report              (only rewrite the page)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/dtr.py --quick --jobs 1      (smoke: 3k SAC steps, 2k transitions,
        100 DTR / 400 IQL steps, seeds 0-1, runs/exp-dtr-quick, page /tmp/dtr-quick.md)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from control_report import last_mean
from harness import ROOT, control_run, run_all, run_process

from reasonrl.tracking import read_metrics

OUT = ROOT / "runs" / "exp-dtr"
DOC = ROOT / "docs" / "results" / "dtr.md"
ENV = "Hopper-v5"
SEEDS = (0, 1, 2)
LEVELS = ("medium", "medium-replay")
MEDIUM_RETURN = 3234.3 / 3  # a third of D4RL's Hopper expert reference return
LAST_EVALS = 2

# full size, and --quick (the same model sizes; fewer steps, shorter segments for the short episodes of a 3k-step SAC)
SIZES = {
    False: {"behaviour": 80_000, "every": 5000, "medium": 100_000, "dtr": 5000, "iql": 20_000, "episodes": 5},
    True: {"behaviour": 3000, "every": 1000, "medium": 2000, "dtr": 100, "iql": 400, "episodes": 2},
}
PREF = {
    False: ["pref.segment=50", "pref.max_feedback=500", "pref.epochs=20"],
    True: ["pref.segment=10", "pref.max_feedback=50", "pref.epochs=2"],
}
LEARNED = ["pref.enabled=true", "pref.batch_size=64", "pref.teacher.name=mistake", "pref.teacher.eps_mistake=0.1"]
SMALL_DT = [
    "dtr.embed=64",
    "dtr.layers=2",
    "dtr.heads=2",
    "dtr.batch_size=32",
    "dtr.critic_hidden=128",
    "dtr.copies=2",
]


@dataclass(frozen=True)
class Arm:
    what: str
    algo: str  # which step count: "dtr" (dtr, dt) or "iql"
    overrides: tuple[str, ...]


ARMS: dict[str, Arm] = {
    "dtr": Arm("DTR, learned reward (z-scored ensemble)", "dtr", ("algo=dtr", *LEARNED, *SMALL_DT)),
    "dt": Arm("DT, learned reward", "dtr", ("algo=dt", *LEARNED, *SMALL_DT)),
    "iql": Arm("IQL, learned reward", "iql", ("algo=iql", *LEARNED)),
    "iql_true": Arm("IQL, true reward (ceiling)", "iql", ("algo=iql",)),
    "dtr_raw": Arm(
        "DTR, learned reward without z-scoring", "dtr", ("algo=dtr", *LEARNED, *SMALL_DT, "data.zscore=false")
    ),
}
CONFIG: dict = {"seeds": SEEDS, "quick": False, "extra": []}  # set by main()


def sizes() -> dict:
    return SIZES[CONFIG["quick"]]


def behaviour_dir() -> Path:
    return OUT / "behaviour"


def dataset_path(level: str) -> Path:
    return OUT / "data" / f"hopper-{level}.npz"


def run_dir(level: str, arm: str, seed: int) -> Path:
    return OUT / level / arm / f"s{seed}"


def medium_checkpoint(directory: Path) -> tuple[int, float]:
    """(step, evaluation return) of the checkpoint whose evaluation return is closest to MEDIUM_RETURN."""
    evals = {r["step"]: r["eval/return"] for r in read_metrics(directory) if "eval/return" in r and r["step"] > 0}
    saved = {int(p.name.removeprefix("step_")) for p in (directory / "checkpoints").glob("step_*")}
    candidates = {s: v for s, v in evals.items() if s in saved}
    if not candidates:
        raise RuntimeError(f"{directory}: no checkpoint with an evaluation")
    step = min(candidates, key=lambda s: abs(candidates[s] - MEDIUM_RETURN))
    return step, candidates[step]


def train_behaviour() -> dict:
    """The SAC run whose checkpoints make the datasets; result.json names its medium checkpoint."""
    directory, size = behaviour_dir(), sizes()
    done = directory / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    fresh = [f"env.id={ENV}", f"train.steps={size['behaviour']}", f"train.save_every={size['every']}"]
    fresh += [f"train.eval_every={size['every']}", "train.eval_episodes=10", "train.keep_checkpoints=1000"]
    fresh += ["train.plots=false", "train.seed=0"]
    cpu = control_run(directory, fresh, "behaviour SAC")
    step, value = medium_checkpoint(directory)
    result = {"cpu_s": cpu, "steps": size["behaviour"], "medium_step": step, "medium_eval_return": value}
    done.write_text(json.dumps(result))
    return result


def make_dataset(level: str) -> dict:
    """`reasonrl control collect LEVEL` from the medium checkpoint; its summary (and CPU seconds) beside the file."""
    path, summary = dataset_path(level), dataset_path(level).with_suffix(".json")
    if summary.exists():
        return json.loads(summary.read_text())
    behaviour = json.loads((behaviour_dir() / "result.json").read_text())
    checkpoint = behaviour_dir() / "checkpoints" / f"step_{behaviour['medium_step']:06d}"
    partial = path.with_name(f"{path.stem}.partial.npz")  # renamed when whole: an interrupted collect leaves no dataset
    args = ["control", "collect", level, "--policy", str(checkpoint), "--output", str(partial), "--seed", "0"]
    if level != "medium-replay":
        args += ["--steps", str(sizes()["medium"])]
    log = path.with_suffix(".log")
    code, cpu = run_process(args, log)
    if code:
        raise RuntimeError(f"collect {level} failed; see {log}")
    partial.replace(path)
    out = json.loads(log.read_text().strip().splitlines()[-1]) | {"path": str(path), "cpu_s": cpu}
    summary.write_text(json.dumps(out))
    return out


def summarize(directory: Path) -> dict:
    """The final score and return, and the dataset and learned-reward metrics of the run's first record."""
    rows = read_metrics(directory)
    first = rows[0]
    out = {
        "steps": rows[-1]["step"],
        "score": last_mean(rows, "eval/normalized_score", LAST_EVALS),
        "return": last_mean(rows, "eval/return", LAST_EVALS),
    }
    keys = ("reward/true_corr", "reward/true_accuracy", "pref/label_accuracy", "pref/labels", "data/return_mean")
    return out | {k: first.get(k, float("nan")) for k in keys}


def train_offline(level: str, arm: str, seed: int) -> dict:
    """One offline run (resuming an interrupted one); result.json marks it done."""
    directory, size = run_dir(level, arm, seed), sizes()
    done = directory / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    steps = size[ARMS[arm].algo]
    fresh = [f"env.id={ENV}", f"data.path={dataset_path(level)}", *ARMS[arm].overrides, *PREF[CONFIG["quick"]]]
    fresh += [f"train.steps={steps}", f"train.eval_every={steps // 5}", f"train.save_every={steps // 5}"]
    fresh += [f"train.log_every={min(100, steps // 5)}"]  # evaluations fall on records: 5 per run, --quick too
    fresh += [f"train.eval_episodes={size['episodes']}", "train.plots=false", f"train.seed={seed}", *CONFIG["extra"]]
    cpu = control_run(directory, fresh, f"{level} {arm} seed {seed}")
    result = {"level": level, "arm": arm, "seed": seed, "cpu_s": cpu, **summarize(directory)}
    done.write_text(json.dumps(result))
    return result


def wanted() -> list[tuple]:
    """The behaviour run, then the datasets once it is done, then the offline runs of each dataset that exists."""
    if not (behaviour_dir() / "result.json").exists():
        return [("behaviour",)]
    runs: list[tuple] = [("dataset", level) for level in LEVELS]
    ready = [level for level in LEVELS if dataset_path(level).with_suffix(".json").exists()]
    return runs + [("offline", lv, arm, s) for s in CONFIG["seeds"] for lv in ready for arm in ARMS]


def run_task(kind: str, *args) -> dict:
    return {"behaviour": train_behaviour, "dataset": make_dataset, "offline": train_offline}[kind](*args)


def task_done(task: tuple) -> bool:
    kind, *args = task
    if kind == "behaviour":
        return (behaviour_dir() / "result.json").exists()
    if kind == "dataset":
        return dataset_path(args[0]).with_suffix(".json").exists()
    return (run_dir(*args) / "result.json").exists()


def describe(task: tuple, result: dict) -> str:
    kind, *args = task
    if kind == "behaviour":
        return (
            f"behaviour SAC: medium checkpoint step {result['medium_step']} (return {result['medium_eval_return']:.0f})"
        )
    if kind == "dataset":
        return f"{args[0]}: {result['transitions']} transitions, return mean {result['return_mean']:.0f}"
    return f"{args[0]} {args[1]} seed {args[2]}: normalised score {result['score']:.1f}"


def main() -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="processes at once, one thread each")
    parser.add_argument("--report", action="store_true", help="only rewrite the page from the runs")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny steps, seeds 0-1")
    parser.add_argument("--out", type=Path, help="where the runs go (default runs/exp-dtr[-quick])")
    parser.add_argument("--doc", type=Path, help="the page to write (default docs/results/dtr.md; --quick: /tmp)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (--quick: 0 1)")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every offline run")
    args = parser.parse_args()
    OUT = args.out or (OUT.with_name("exp-dtr-quick") if args.quick else OUT)
    doc = args.doc or (Path("/tmp/dtr-quick.md") if args.quick else DOC)
    seeds = args.seeds or ((0, 1) if args.quick else SEEDS)
    CONFIG.update(seeds=tuple(seeds), quick=args.quick, extra=args.extra)
    failures = [] if args.report else run_all(wanted, run_task, task_done, describe, args.jobs)
    from dtr_report import write_doc

    write_doc(doc, sys.modules[__name__])
    for message in failures:
        print(message, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
