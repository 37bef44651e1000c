"""Why GRPO from the shipped student learned little, and which setup fixes it (issue 22): one-factor experiments.

Every arm is one `reasonrl train` process on one thread (arms run in parallel with --jobs); an arm whose run
directory holds a test result is skipped, an interrupted one resumes from its last checkpoint. Settings are chosen
on a VALIDATION split (400 held-out problems of levels 2-3 that are not in the test set); each arm's final model is
then scored once on the TEST set, the 408 problems `reasonrl train` evaluates on (data.eval_n=200: 8 of level 1,
200 of level 2, 200 of level 3). Writes docs/results/learning.md (the tables) and PNG curves.
    OMP_NUM_THREADS=1 .venv/bin/python experiments/learning.py --jobs 2          (every arm; the doc gives the time)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/learning.py --arms old new    (some arms only)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reasonrl.plot import plot_runs, write_keeping_notes
from reasonrl.tracking import read_metrics
from reasonrl.worlds.arith import ArithWorld

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "exp-learning"
PYTHON = [sys.executable, "-m", "reasonrl.cli"]
TEST_N = 200  # per level: the test set of `reasonrl train` (408 problems)
KEPT = "<!-- notes: kept when the experiment rewrites this file -->"

# The main job's settings before issue 22 (configs/grpo.yaml then), written out so the arms do not move when the
# defaults do. Each arm below changes one thing from OLD (or, in the second table, from NEW).
OLD = ["model.path=student", "data.levels=[1,2,3]", "rollout.num_generations=8", "rollout.max_completion_length=64",
       "rollout.temperature=1.0", "algo=grpo", "algo.loss_type=dapo", "algo.scale_rewards=group", "algo.epsilon=0.2",
       "algo.beta=0.0", "optim.lr=5e-5", "optim.warmup_steps=5", "optim.schedule=constant", "train.steps=40",
       "train.prompts_per_step=8", "train.micro_batch_size=64"]
NEW = OLD  # replaced below once the recommended setting is known

# Students made by a short SFT (name -> `reasonrl sft` arguments); exported under OUT/students/NAME.
STUDENTS: dict[str, list[str]] = {
    # the shipped student's recipe without its 20% direct-answer demonstrations
    "cot": ["--config", "configs/student.yaml", "algo.demo=solution"],
}
COT = "model.path=runs/exp-learning/students/cot"

# arm name -> (table, overrides on top of its base list, what it tests)
ARMS: dict[str, tuple[str, list[str], str]] = {
    "old": ("steps", OLD, "the old default: 40 steps at lr 5e-5"),
    "old-600": ("steps", OLD + ["train.steps=600"], "the same, 600 steps"),
    "lr1e-4-600": ("lr", OLD + ["train.steps=600", "optim.lr=1e-4"], "lr 1e-4, 600 steps"),
    "levels23": ("levels", OLD + ["train.steps=600", "data.levels=[2,3]"], "train on levels 2-3 only"),
    "lr1e-4-cosine": ("schedule", OLD + ["train.steps=600", "optim.lr=1e-4", "optim.schedule=cosine"],
                      "lr 1e-4 with cosine decay to 0"),
    "t0.7": ("temperature", OLD + ["train.steps=600", "rollout.temperature=0.7"], "sampling temperature 0.7"),
    "p16-300": ("batch", OLD + ["train.steps=300", "train.prompts_per_step=16"],
                "16 prompts x 8 per step, 300 steps (the same samples as 8 x 8 x 600)"),
    "beta0.04-lr1e-4": ("kl", OLD + ["train.steps=600", "optim.lr=1e-4", "algo.beta=0.04"],
                        "KL to the student, beta 0.04, at lr 1e-4"),
    "cot-student": ("student", OLD + ["train.steps=600", COT], "a student SFT'd without direct answers"),
}


def validation_file() -> Path:
    """Held-out problems of levels 2 and 3 (200 each) that are not in the test set: where settings are chosen."""
    path = OUT / "validation.jsonl"
    if path.exists():
        return path
    world = ArithWorld((1, 2, 3), seed=0)
    test = {ex.prompt for ex in world.eval_set((1, 2, 3), TEST_N)}
    rows = []
    for level in (2, 3):
        seen: dict[str, object] = {}
        for index in range(20_000):
            ex = world.to_example(world._draw("eval", index, level))
            if ex.prompt not in test:
                seen.setdefault(ex.prompt, ex)
            if len(seen) == 200:
                break
        rows += [{"prompt": ex.prompt, "answer": ex.answer, "level": ex.level} for ex in seen.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_process(args: list[str], log: Path) -> tuple[int, float]:
    """Run a CLI command on one thread; returns its exit status and CPU seconds (user + system)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with log.open("a") as out:
        proc = subprocess.Popen(PYTHON + args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def test_eval(model: Path | str, out: Path, log: Path) -> dict:
    """Greedy accuracy of `model` on the test set, cached in `out`."""
    if not out.exists():
        code, cpu = run_process(["eval", "--model", str(model), "--levels", "1,2,3", "--n", str(TEST_N)], log)
        if code:
            raise RuntimeError(f"eval of {model} failed; see {log}")
        last = log.read_text().strip().splitlines()[-1]
        out.write_text(json.dumps(json.loads(last) | {"cpu_s": cpu}))
    return json.loads(out.read_text())


def make_student(name: str) -> Path:
    """The SFT student `name`, made once."""
    target = OUT / "students" / name
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        run_dir = OUT / "students" / f"{name}-run"
        code, cpu = run_process(["sft", "--quiet", "--output-dir", str(run_dir), "--export", str(target),
                                 *STUDENTS[name]], OUT / "students" / f"{name}.log")
        if code:
            raise RuntimeError(f"SFT of student {name} failed; see {OUT / 'students' / (name + '.log')}")
        (OUT / "students" / f"{name}.cpu").write_text(f"{cpu:.1f}")
    return target


def model_of(overrides: list[str]) -> str:
    return [o.split("=", 1)[1] for o in overrides if o.startswith("model.path=")][-1]


def run_arm(name: str) -> dict:
    """Train arm `name` (validation evals every 50 steps), then score its final model on the test set."""
    _, overrides, _ = ARMS[name]
    run_dir = OUT / name
    log = OUT / f"{name}.log"
    done = run_dir / "test.json"
    if not done.exists():
        steps = int([o.split("=")[1] for o in overrides if o.startswith("train.steps=")][-1])
        if (run_dir / "checkpoints").is_dir() and not (run_dir / "final").is_dir():
            args = ["train", "--quiet", "--resume", str(run_dir)]
        else:
            args = ["train", "--quiet", "--output-dir", str(run_dir), *overrides, f"data.eval={validation_file()}",
                    "data.eval_n=400", f"train.eval_every={50 if steps > 100 else 10}", "train.save_every=100"]
        started = time.perf_counter()
        code, cpu = run_process(args, log)
        if code:
            raise RuntimeError(f"arm {name} failed; see {log}")
        result = test_eval(run_dir / "final", run_dir / "test-eval.json", log)
        done.write_text(json.dumps({"cpu_s": cpu, "wall_s": time.perf_counter() - started, "test": result}))
    return json.loads(done.read_text())


def se(p: float, n: float) -> float:
    return math.sqrt(p * (1 - p) / n)


def pct(p: float, n: float) -> str:
    return f"{100 * p:.1f} ± {196 * se(p, n):.1f}"


def arm_row(name: str) -> str:
    _, overrides, what = ARMS[name]
    result = json.loads((OUT / name / "test.json").read_text())
    rows = read_metrics(OUT / name)
    evals = [r for r in rows if "eval/accuracy" in r]
    steps = max(r["step"] for r in rows)
    val_n = evals[0]["eval/n"]
    base = test_eval(model_of(overrides), OUT / "models" / f"{Path(model_of(overrides)).name}.json",
                     OUT / "models" / "eval.log")
    test, test_n = result["test"], result["test"]["n"]
    best = max(evals[1:], key=lambda r: r["eval/accuracy"])
    return (f"| {name} | {what} | {steps} | {pct(evals[0]['eval/accuracy'], val_n)} → "
            f"{pct(evals[-1]['eval/accuracy'], val_n)} (best {100 * best['eval/accuracy']:.1f} at {best['step']}) | "
            f"{pct(base['accuracy'], test_n)} → {pct(test['accuracy'], test_n)} | "
            f"{100 * (test['accuracy'] - base['accuracy']):+.1f} | {result['cpu_s'] / 60:.1f} |")


def report(names: list[str]) -> str:
    head = ("| arm | setting | steps | validation (400): before → after, % ± 95% CI | test (408): before → after | "
            "test change (points) | CPU-min |\n|---|---|---|---|---|---|---|")
    tables: dict[str, list[str]] = {}
    for name in names:
        tables.setdefault(ARMS[name][0], []).append(arm_row(name))
    return "\n\n".join(f"### {table}\n\n{head}\n" + "\n".join(rows) for table, rows in tables.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), help=f"arms to run (default: all of {list(ARMS)})")
    parser.add_argument("--jobs", type=int, default=2, help="arms run at once, one thread each")
    args = parser.parse_args()
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {list(ARMS)}")
    validation_file()
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    for name in {Path(model_of(ARMS[a][1])).name for a in args.arms} & set(STUDENTS):
        make_student(name)
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, result in zip(args.arms, pool.map(run_arm, args.arms)):
            print(f"{name}: test accuracy {result['test']['accuracy']:.3f}, {result['cpu_s'] / 60:.1f} CPU-min",
                  flush=True)
    print(report(args.arms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
