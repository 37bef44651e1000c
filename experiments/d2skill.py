"""D2Skill against GRPO without skills on the textgame world (issue 24): does a skill bank that learns the hidden
house style lift success at equal steps, is the gain in the weights or in the bank, and which components carry it?

Arms, all from the shipped `game_student`, same budget (steps x 4 households x 8 episodes, all six task types,
the oracle-backed template reflector): GRPO without skills (the same prompt template, "No relevant skills found."),
D2Skill, and its ablations: no utility/UCB (similarity-only retrieval), no pruning, task skills only, step skills
only. Caps are scaled to the run (task 20, step 40 skills) so that pruning acts within it. The two main arms (GRPO,
D2Skill) each run their learning-rate grid with seed 0, keep the rate whose final model (with its bank) has the best
greedy success on a validation split, and run seeds 1 and 2 at that rate; the ablations run at D2Skill's chosen rate
(ablating a component of the tuned method) with seed 0 only (--ablation-seeds adds more: a D2Skill run costs ~0.6-1
CPU-hour), so their verdicts are one-seed indications. Validation: eval-split households from their own key stream,
none equal to a test household; test: `reasonrl eval`'s eval set (TEST_N households per task type). Each final model
is scored twice, with its bank's skills in the prompts (D2Skill's validation) and without (is the gain in the
weights?).
data.seed stays 0 (the house style and the household stream); a seed is train.seed (sampling, reflection picks).
Arms run as parallel one-thread processes (--jobs); finished runs are skipped, interrupted ones resumed. Writes
docs/results/d2skill.md and PNG curves (experiments/d2skill_report.py).
    OMP_NUM_THREADS=1 .venv/bin/python experiments/d2skill.py --jobs 2
    OMP_NUM_THREADS=1 .venv/bin/python experiments/d2skill.py --report                  (only rewrite the page)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/d2skill.py --quick --out runs/exp-d2skill-smoke \\
        --doc /tmp/d2skill-smoke.md                                                      (smoke: 2 steps, tiny evals)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT, run_all, run_process, train_run

OUT = ROOT / "runs" / "exp-d2skill"
DOC = ROOT / "docs" / "results" / "d2skill.md"
SEEDS = (0, 1, 2)
LRS = (5e-5, 1e-4)
STEPS = 100
TEST_N = 20  # households per task type (six types)
VALIDATION_N = 10
LEVELS = (1, 2, 3, 4, 5, 6)

BASE = [
    "model.path=game_student",
    "data.train=world:textgame",
    f"data.levels=[{','.join(map(str, LEVELS))}]",
    "data.seed=0",
    "data.textgame.skills_block=true",
    "rollout.turns.context=window",
    "rollout.turns.history=2",
    "rollout.turns.max_turns=20",
    "rollout.turns.max_turn_tokens=24",
    "rollout.turns.max_episode_tokens=500",
    "rollout.turns.max_obs_tokens=400",
    "rollout.num_generations=8",
    "rollout.temperature=1.0",
    "train.prompts_per_step=4",
    "train.micro_batch_size=64",
    "optim.schedule=cosine",
    "optim.warmup_steps=5",
    "algo.beta=0.0",  # no reference model in any arm (CPU); the official 0.01 KL is a config away
    "train.eval_every=0",
    "data.eval_n=2",  # the trainer's own before/after evals: tiny (the scorer below does the work)
    "train.save_every=25",
]
SKILLS = ["algo=d2skill", "algo.reflector.oracle=true", "algo.bank.cap_task=20", "algo.bank.cap_step=40"]


@dataclass(frozen=True)
class Arm:
    what: str
    overrides: tuple[str, ...]
    main: bool = False  # main arms tune their own rate and run every seed; ablations run at D2Skill's rate


ARMS: dict[str, Arm] = {
    "grpo": Arm("GRPO without skills (same template, empty skills line)", ("algo=grpo",), main=True),
    "d2skill": Arm("D2Skill (task + step skills, utility/UCB retrieval, pruning)", (*SKILLS,), main=True),
    "no_utility": Arm("D2Skill, similarity-only retrieval", (*SKILLS, "algo.bank.use_utility=false")),
    "no_prune": Arm("D2Skill, no pruning", (*SKILLS, "algo.prune=false")),
    "task_only": Arm("D2Skill, task skills only", (*SKILLS, "algo.pools=task")),
    "step_only": Arm("D2Skill, step skills only", (*SKILLS, "algo.pools=step")),
}
ABLATION_SEEDS = (0,)  # a D2Skill run is ~0.6-1 CPU-hour: the ablations get one seed unless --ablation-seeds says more
CONFIG = {
    "steps": STEPS,
    "lrs": LRS,
    "seeds": SEEDS,
    "ablation_seeds": ABLATION_SEEDS,
    "test_n": TEST_N,
    "validation_n": VALIDATION_N,
    "extra": [],
}


def run_dir(arm: str, lr: float, seed: int) -> Path:
    return OUT / arm / f"lr{lr:g}-s{seed}"


def chosen_lr(arm: str) -> float | None:
    if not ARMS[arm].main:
        return chosen_lr("d2skill")
    lrs = CONFIG["lrs"]
    if len(lrs) == 1:
        return lrs[0]
    if not all((run_dir(arm, lr, 0) / "result.json").exists() for lr in lrs):
        return None
    return max(lrs, key=lambda lr: json.loads((run_dir(arm, lr, 0) / "result.json").read_text())["validation"]["on"])


def runs_wanted(arm: str) -> list[tuple[float, int]]:
    if not ARMS[arm].main:
        best = chosen_lr(arm)
        return [] if best is None else [(best, s) for s in CONFIG["ablation_seeds"]]
    grid = [(lr, CONFIG["seeds"][0]) for lr in CONFIG["lrs"]]
    best = chosen_lr(arm)
    return grid + ([] if best is None else [(best, s) for s in CONFIG["seeds"] if (best, s) not in grid])


def score(run: Path, split: str, log: Path) -> dict:
    """Greedy success of the run's final model on `split`, skills on and off; cached in run/{split}.json."""
    out = run / f"{split}.json"
    if not out.exists():
        n = CONFIG["test_n"] if split == "test" else CONFIG["validation_n"]
        args = ["--score", str(run), "--split", split, "--n", str(n)]
        code, _ = run_process(args, log, command=[sys.executable, str(Path(__file__).resolve())])
        if code:
            raise RuntimeError(f"scoring {run} on {split} failed; see {log}")
    return json.loads(out.read_text())


def train_one(arm: str, lr: float, seed: int) -> dict:
    """Train one (arm, lr, seed) run (resuming an interrupted one), then score it; result.json marks it done."""
    directory = run_dir(arm, lr, seed)
    log = directory.parent / f"{directory.name}.log"
    done = directory / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    fresh = ["--output-dir", str(directory), *BASE, *ARMS[arm].overrides, f"train.steps={CONFIG['steps']}"]
    fresh += [f"optim.lr={lr}", f"train.seed={seed}", *CONFIG["extra"]]
    cpu = train_run(directory, fresh, f"{arm} lr {lr:g} seed {seed}")
    result = {"arm": arm, "lr": lr, "seed": seed, "train_cpu_s": cpu}
    result |= {"validation": score(directory, "validation", log), "test": score(directory, "test", log)}
    done.write_text(json.dumps(result))
    return result


def schedule(jobs: int) -> list[str]:
    """Every wanted run as the lr choice allows, `jobs` at a time, seed-major; returns the failures."""
    return run_all(
        lambda: sorted(((arm, lr, seed) for arm in ARMS for lr, seed in runs_wanted(arm)), key=lambda r: r[2]),
        train_one,
        lambda r: (run_dir(*r) / "result.json").exists(),
        lambda r, res: (
            f"{r[0]} lr {r[1]:g} seed {r[2]}: test success {res['test']['on']:.3f} / off {res['test']['off']:.3f}"
        ),
        jobs,
    )


def households(world, split: str, n: int) -> list:
    """The test set (the world's eval set, n per task type) or the validation split: eval-split households from the
    key stream "validation/...", none equal to a test household (of the full TEST_N)."""
    if split == "test":
        return world.eval_set(LEVELS, n)
    taken = {json.dumps(ex.meta["house"], sort_keys=True) for ex in world.eval_set(LEVELS, TEST_N)}
    out = []
    for level in LEVELS:
        i = found = 0
        while found < n:
            ex = world.household("eval", f"validation/{level}/{i}", level)
            i += 1
            if json.dumps(ex.meta["house"], sort_keys=True) not in taken:
                out.append(ex)
                found += 1
    return out


def score_here(run: Path, split: str, n: int) -> None:
    """Greedy episodes of run/final on `split` with the run's final bank in the prompts (on) and without (off)."""
    import reasonrl.algos  # noqa: F401  (registration)
    from reasonrl.algos.d2skill import D2Skill
    from reasonrl.config import load_config
    from reasonrl.evaluation import evaluate_episodes
    from reasonrl.models import load_model, model_context
    from reasonrl.rollout.fast import FastEngine

    config = load_config(str(run / "config.yaml"), ["algo=d2skill", "algo.reflector.oracle=false"])
    d2 = D2Skill(config)  # the runs' own skilled_env: retrieval as in training
    if (run / "skills.json").exists():
        d2.bank.load(run / "skills.json")
    model, tok = load_model(str(run / "final"), device="cpu")
    examples = households(d2.world, split, n)
    out = {}
    for mode in ("on", "off"):
        metrics = evaluate_episodes(
            FastEngine(model, tok),
            tok,
            examples,
            lambda ex, on=(mode == "on"): d2.skilled_env(ex, on),
            config.rollout.turns,
            config.data.system_prompt,
            model_context(model),
            d2.world.episode_metrics,
        )
        out[mode] = metrics["accuracy"]
        out |= {
            f"{mode}/{k}": v
            for k, v in metrics.items()
            if k.startswith(("success/", "steps", "invalid", "stop_reason/"))
        }
    out["bank_size"] = len(d2.bank)
    (run / f"{split}.json").write_text(json.dumps({k: round(v, 4) for k, v in out.items()}))


def main() -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="processes at once, one thread each")
    parser.add_argument("--report", action="store_true", help="only rewrite the page from the runs")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 steps, one seed, tiny evaluations")
    parser.add_argument("--out", type=Path, default=OUT, help="where the runs go")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to write")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=list(ABLATION_SEEDS))
    parser.add_argument("--model", default="game_student", help="the start of every arm")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    parser.add_argument("--score", type=Path, help=argparse.SUPPRESS)  # internal: score one run (one-thread process)
    parser.add_argument("--split", choices=("validation", "test"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        score_here(args.score, args.split, args.n)
        return 0
    OUT = args.out
    BASE[0] = f"model.path={args.model}"
    CONFIG.update(steps=args.steps, lrs=tuple(args.lrs), seeds=tuple(args.seeds), extra=args.extra)
    CONFIG.update(ablation_seeds=tuple(args.ablation_seeds))
    if args.quick:
        CONFIG.update(steps=2, lrs=(args.lrs[0],), seeds=(0,), ablation_seeds=(0,), test_n=1, validation_n=1)
        CONFIG["extra"] = [*CONFIG["extra"], "train.prompts_per_step=2", "rollout.turns.max_turns=4"]
    failures = [] if args.report else schedule(args.jobs)
    from d2skill_report import write_doc

    write_doc(args.doc, sys.modules[__name__])
    for message in failures:
        print(message, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
