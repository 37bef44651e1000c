"""Every method's paper claims at plateau length (issue 22, item 3): each arm trains until its accuracy curve flattens
(600 steps with cosine decay, the main job's recipe; docs/results/learning.md), at its own learning rate chosen on a
validation split, over 3 seeds, with 95% confidence intervals and a verdict per claim.

An arm runs its learning-rate grid with seed 0 (validation evaluations every 50 steps), keeps the rate whose last
three validation evaluations are best, and runs seeds 1 and 2 at that rate. Each final model is then scored once on
the test set (the 408 problems of levels 1-3 `reasonrl train` evaluates on) and on levels 4-5 (out of distribution).
Arms run as parallel one-thread processes (--jobs); a run whose directory holds result.json is skipped and an
interrupted one resumes from its last checkpoint, so the experiment can be run in pieces. Writes
docs/results/plateau.md (tables and verdicts above its hand-written notes) and PNG curves.
    OMP_NUM_THREADS=1 .venv/bin/python experiments/plateau.py --jobs 2                 (every method)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/plateau.py --methods opd srft       (some methods)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/plateau.py --report                 (only rewrite the page)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT, TEST_N, cli_eval, run_all, run_process, validation_file
from plateau_claims import write_doc

from reasonrl.tracking import read_metrics

OUT = ROOT / "runs" / "exp-plateau"
ARCHIVE = ROOT / "docs" / "results" / "data" / "plateau"  # finished runs, committed (--archive)
SEEDS = (0, 1, 2)
EXTRA: list[str] = []  # --extra
EVAL_EVERY = 50

# The main job's recipe (configs/grpo.yaml), written out so that the arms do not move when the defaults do.
BASE = [
    "model.path=student",
    "data.levels=[2,3]",
    "rollout.num_generations=8",
    "rollout.max_completion_length=64",
    "rollout.temperature=1.0",
    "optim.schedule=cosine",
    "optim.warmup_steps=5",
    "train.steps=600",
    "train.prompts_per_step=8",
    "train.micro_batch_size=64",
]
GRPO = ["algo=grpo", "algo.loss_type=dapo", "algo.scale_rewards=group", "algo.epsilon=0.2", "algo.beta=0.0"]
SFT = ["algo=sft", "algo.demo=solution"]
OPD = ["algo.signal=direct"]  # the stronger signal at plateau length (docs/results/opd-limits.md)
DPO_VP_YAML = "configs/dpo_vp.yaml"  # 32 prompts per step, 4 steps per round, one pair per prompt, beta 0.1
DPO_VP = ("model.path=student", "data.levels=[2,3]", "optim.schedule=cosine", "algo.rounds=36", "train.eval_every=8")


@dataclass(frozen=True)
class Arm:
    what: str
    overrides: tuple[str, ...] = ()
    lrs: tuple[float, ...] = ()
    command: str = "train"
    init: str | None = None  # "method/arm": start from that arm's final model of the same seed
    alias: str | None = None  # "method/arm": the same runs, shown again in this method's table
    config: str | None = None  # a YAML file under the overrides
    lr_from: str | None = None  # "method/arm": use the rate chosen for that arm (a variant of the same method)

    def key(self, method: str, name: str) -> str:
        return self.alias or f"{method}/{name}"


METHODS: dict[str, dict[str, Arm]] = {
    "grpo": {
        # Third grid points (2026-12-03, second session): every two-point grid chose an edge, so each arm gets the point
        # beyond the edge it chose.
        "grpo": Arm("GRPO (token-mean loss, group-scaled advantages, clip 0.2)", (*BASE, *GRPO), (5e-5, 1e-4, 2e-4)),
        "dapo": Arm(
            "DAPO (clip-higher 0.28, dynamic sampling, overlong shaping)", (*BASE, "algo=dapo"), (2.5e-5, 5e-5, 1e-4)
        ),
    },
    "srft": {
        "sft": Arm("SFT on the world's solutions", (*BASE, *SFT), (5e-5, 1e-4, 2e-4, 4e-4), command="sft"),
        "grpo": Arm("GRPO", alias="grpo/grpo"),
        "sft100": Arm(
            "SFT, 100 steps (the first stage of SFT->GRPO)",
            (*BASE, *SFT, "train.steps=100"),
            command="sft",
            lr_from="srft/sft",
        ),
        "sft_grpo": Arm(
            "SFT (100 steps) -> GRPO (500 steps)",
            (*BASE, *GRPO, "train.steps=500"),
            (5e-5, 1e-4, 2e-4),
            init="srft/sft100",
        ),
        "srft": Arm(
            "SRFT (paper signs; demonstrations and rollouts in one loss)",
            (*BASE, "algo=srft", "train.micro_batch_size=72"),
            (5e-5, 1e-4, 2e-4),
        ),
    },
    "opd": {
        # The rate: seed 0 of 1e-4 and 2e-4 in experiments/opd_limits.py, on this validation split and recipe (mean of
        # the last three evaluations 81.1% and 84.3%); POPD uses OPD's, so the horizon is the only difference. TOPD
        # collapsed at it, so it gets its own sweep.
        # 2e-4 is that sweep's upper edge, so 4e-4 joins the grid here.
        "opd": Arm(
            "OPD (exact reverse KL to the teacher, full horizon T = 64)", (*BASE, "algo=opd", *OPD), (2e-4, 4e-4)
        ),
        "topd25": Arm(
            "TOPD, 25% of the horizon (16 tokens)",
            (*BASE, "algo=topd", *OPD, "algo.fraction=0.25"),
            (2.5e-5, 5e-5, 1e-4, 2e-4),  # at OPD's 2e-4 it fell from 50% to 34% (seed 0): its own sweep
        ),
        "topd10": Arm(
            "TOPD, 10% of the horizon (6 tokens)",
            (*BASE, "algo=topd", *OPD, "algo.fraction=0.1"),
            (2.5e-5, 5e-5, 1e-4, 2e-4),
        ),
        "popd": Arm(
            "POPD (horizon 16 -> 64, +8 every 50 steps)", (*BASE, "algo=popd", *OPD, "algo.dk=50"), lr_from="opd/opd"
        ),
        "grpo": Arm("GRPO", alias="grpo/grpo"),
    },
    "dpo_vp": {
        # 36 rounds of 32 x 4 prompts x 8 samples = 36,864 samples, GRPO's 600 x 8 x 8 = 38,400
        "dpo_vp": Arm(
            "DPO-VP, 36 rounds of 4 steps (T 0.7, 0.7, 0.7, 1.0, 1.0, then 1.2)",
            DPO_VP,
            (1.25e-5, 2.5e-5, 5e-5, 1e-4),  # 5e-5 won the first grid (59.0 vs 53.2), then 2.5e-5 (60.2): lower again
            config=DPO_VP_YAML,
        ),
        "grpo": Arm("GRPO", alias="grpo/grpo"),
    },
    "dpo_vp_rm": {
        "dpo_vp": Arm("DPO-VP, every prompt labelled", alias="dpo_vp/dpo_vp"),
        "half": Arm(
            "DPO-VP, half of the prompts unlabelled (skipped)",
            (*DPO_VP, "algo.unlabeled_fraction=0.5"),
            config=DPO_VP_YAML,
            lr_from="dpo_vp/dpo_vp",
        ),
        "half_rm": Arm(
            "DPO-VP, half unlabelled, paired by the co-trained reward model",
            (*DPO_VP, "algo.unlabeled_fraction=0.5", "algo.reward_model=true"),
            config=DPO_VP_YAML,
            lr_from="dpo_vp/dpo_vp",
        ),
    },
}


def arms_of(methods: list[str]) -> dict[str, Arm]:
    """The runs behind `methods`, keyed "method/arm" (aliases resolved), with what they depend on."""
    found: dict[str, Arm] = {}
    todo = [f"{m}/{a}" for m in methods for a in METHODS[m]]
    while todo:
        key = todo.pop(0)
        method, name = key.split("/")
        arm = METHODS[method][name]
        if arm.alias:
            todo.append(arm.alias)
            continue
        found[key] = arm
        todo += [k for k in (arm.init, arm.lr_from) if k and k not in found]
    return found


def run_dir(key: str, lr: float, seed: int) -> Path:
    """An arm that starts from another arm's final model names that arm's rate too: when the start model's rate
    changes (its grid grew), the runs made from the old start model are not mixed into the new grid."""
    arm = METHODS[key.split("/")[0]][key.split("/")[1]]
    start = ""
    if arm.init:
        init_lr = chosen_lr(arm.init)
        start = f"init{init_lr:g}-" if init_lr is not None else "init?-"  # not ready: never created
    return OUT / key.replace("/", "-") / f"{start}lr{lr:g}-s{seed}"


def resolve(key: str) -> tuple[str, Arm]:
    method, name = key.split("/")
    arm = METHODS[method][name]
    return (arm.alias, resolve(arm.alias)[1]) if arm.alias else (key, arm)


def validation_score(directory: Path) -> float:
    """Mean validation accuracy of a run's last three evaluations: what picks the learning rate."""
    evals = [r["eval/accuracy"] for r in read_metrics(directory) if "eval/accuracy" in r]
    return sum(evals[-3:]) / len(evals[-3:])


MAX_GRID = 6  # learning rates per arm at most, the written grid included


def grid(key: str) -> list[float]:
    """The arm's learning-rate grid: the written one, grown by a factor of 2 beyond its edge for as long as the best
    rate on validation (seed 0) is the highest or the lowest point tried, so that every chosen rate is interior."""
    arm = METHODS[key.split("/")[0]][key.split("/")[1]]
    lrs = sorted(arm.lrs)
    while 1 < len(lrs) < MAX_GRID and all((run_dir(key, lr, 0) / "result.json").exists() for lr in lrs):
        best = max(lrs, key=lambda lr: validation_score(run_dir(key, lr, 0)))
        if best not in (lrs[0], lrs[-1]):
            break
        lrs = [*lrs, best * 2] if best == lrs[-1] else [best / 2, *lrs]
    return lrs


def chosen_lr(key: str) -> float | None:
    """The arm's learning rate: the grid's best on validation (seed 0), once every grid run is done."""
    arm = METHODS[key.split("/")[0]][key.split("/")[1]]
    if arm.lr_from:
        return chosen_lr(arm.lr_from)
    if len(arm.lrs) == 1:
        return arm.lrs[0]
    lrs = grid(key)
    if not all((run_dir(key, lr, 0) / "result.json").exists() for lr in lrs):
        return None
    return max(lrs, key=lambda lr: validation_score(run_dir(key, lr, 0)))


def runs_wanted(key: str) -> list[tuple[float, int]]:
    """(lr, seed) runs of an arm known so far: the grid with seed 0, then the other seeds at the chosen rate."""
    arm = METHODS[key.split("/")[0]][key.split("/")[1]]
    best = chosen_lr(key)
    tried = [] if arm.lr_from or len(arm.lrs) == 1 else [(lr, 0) for lr in grid(key)]
    rest = [] if best is None else [(best, s) for s in SEEDS if (best, s) not in tried]
    return tried + rest


def ready(key: str, seed: int) -> bool:
    """Whether the run's start model exists (arms that start from another arm's final model wait for it)."""
    arm = METHODS[key.split("/")[0]][key.split("/")[1]]
    if arm.lr_from and chosen_lr(arm.lr_from) is None:
        return False
    if arm.init is None:
        return True
    lr = chosen_lr(arm.init)
    return lr is not None and (run_dir(arm.init, lr, seed) / "result.json").exists()


def train_one(key: str, lr: float, seed: int) -> dict:
    """Train one (arm, lr, seed) run (resuming an interrupted one), then score its final model on the test set and on
    levels 4-5; result.json marks it done."""
    arm = METHODS[key.split("/")[0]][key.split("/")[1]]
    directory = run_dir(key, lr, seed)
    log = directory.parent / f"{directory.name}.log"
    done = directory / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    cpu = 0.0
    if not (directory / "final").is_dir():
        if (directory / "checkpoints").is_dir():
            args = [arm.command, "--quiet", "--resume", str(directory)]
        else:
            start = []
            if arm.init:
                start = [f"model.path={run_dir(arm.init, chosen_lr(arm.init), seed) / 'final'}"]
            args = [
                arm.command,
                "--quiet",
                "--output-dir",
                str(directory),
                *(["--config", arm.config] if arm.config else []),
                *arm.overrides,
                *start,
                f"optim.lr={lr}",
                f"train.seed={seed}",
                f"data.seed={seed}",  # train.seed alone leaves the prompt order, and so SFT, unchanged
                f"data.eval={validation_file(OUT / 'validation.jsonl')}",
                "data.eval_n=400",
                *(
                    []
                    if any(o.startswith("train.eval_every=") for o in arm.overrides)
                    else [f"train.eval_every={EVAL_EVERY}"]
                ),
                "train.save_every=100",
                *EXTRA,
            ]
        code, cpu = run_process(args, log)
        spent = directory.parent / f"{directory.name}.cpu"  # CPU seconds over every piece of a resumed run
        cpu += float(spent.read_text()) if spent.exists() else 0.0
        spent.write_text(f"{cpu:.1f}")
        if code:
            raise RuntimeError(f"{key} lr {lr:g} seed {seed} failed; see {log}")
    final = directory / "final"
    test = cli_eval(final, ["--levels", "1,2,3", "--n", str(TEST_N)], directory / "test-eval.json", log)
    ood = cli_eval(final, ["--levels", "4,5", "--n", "100"], directory / "ood-eval.json", log)
    result = {"key": key, "lr": lr, "seed": seed, "train_cpu_s": cpu, "test": test, "ood": ood}
    done.write_text(json.dumps(result))
    return result


def base_evals() -> None:
    """The shipped student on the test set and on levels 4-5: every table's starting point."""
    for name, data in (("test", ["--levels", "1,2,3", "--n", str(TEST_N)]), ("ood", ["--levels", "4,5", "--n", "100"])):
        cli_eval("student", data, OUT / "student" / f"{name}-eval.json", OUT / "student" / "eval.log")


def schedule(keys: list[str], jobs: int) -> list[str]:
    """Run every wanted run as its dependencies allow, `jobs` at a time; returns the failures."""

    def wanted() -> list[tuple[str, float, int]]:
        # runs already started first (finish what is begun), then seed-major: every arm's seed 0, then seed 1...,
        # so that a partial experiment still pairs arms by seed
        runs = sorted(
            ((key, lr, seed) for key in keys for lr, seed in runs_wanted(key)),
            key=lambda r: (not (run_dir(*r) / "checkpoints").is_dir(), r[2]),
        )
        return [r for r in runs if ready(r[0], r[2])]

    return run_all(
        wanted,
        train_one,
        lambda r: (run_dir(*r) / "result.json").exists(),
        lambda r, result: f"{r[0]} lr {r[1]:g} seed {r[2]}: test {result['test']['accuracy']:.3f}",
        jobs,
    )


KEPT_KEYS = {"step", "num_tokens", "entropy", "reward", "eval/accuracy", "eval/n"}  # what the page reads


def archive(to: Path) -> int:
    """Copy every finished run's result, config and metrics (only the keys the page reads) to `to`: committed, they
    let the page be rewritten, and the experiment continue, on a machine without the run directories."""
    count = 0
    for done in sorted(OUT.glob("*/*/result.json")):
        target = to / done.parent.relative_to(OUT)
        target.mkdir(parents=True, exist_ok=True)
        rows = [{k: v for k, v in r.items() if k in KEPT_KEYS} for r in read_metrics(done.parent)]
        (target / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name in ("result.json", "config.yaml"):
            (target / name).write_text((done.parent / name).read_text())
        count += 1
    for name in ("validation.jsonl", "student/test-eval.json", "student/ood-eval.json"):
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_text((OUT / name).read_text())
    return count


def restore(source: Path) -> None:
    """Put archived runs (and the validation split they were chosen on) back where the experiment looks for them."""
    for path in sorted(source.rglob("*")):
        target = OUT / path.relative_to(source)
        if path.is_file() and not target.exists() and not (target.parent / "result.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())


def main() -> int:
    global OUT, EXTRA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2, help="processes at once, one thread each")
    parser.add_argument("--report", action="store_true", help="only rewrite docs/results/plateau.md from the runs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "exp-plateau", help="where the runs go")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run (e.g. a smoke test)")
    parser.add_argument("--archive", action="store_true", help=f"copy the finished runs to {ARCHIVE.relative_to(ROOT)}")
    args = parser.parse_args()
    OUT, EXTRA = args.out, args.extra
    restore(ARCHIVE)  # finished runs committed by an earlier session are skipped, not re-run
    validation_file(OUT / "validation.jsonl")
    if args.archive:
        print(f"{archive(ARCHIVE)} finished runs copied to {ARCHIVE}")
        return 0
    failures = []
    if not args.report:
        base_evals()
        failures = schedule(list(arms_of(args.methods)), args.jobs)
    write_doc(ROOT / "docs" / "results" / "plateau.md", sys.modules[__name__])
    for message in failures:
        print(message, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
