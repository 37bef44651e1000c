"""Why GRPO from the shipped student learned little, and which setup fixes it (issue 22): one-factor experiments.

Every arm is one `reasonrl train` process on one thread (arms run in parallel with --jobs); an arm whose run
directory holds a test result is skipped, an interrupted one resumes from its last checkpoint. Settings are chosen
on a VALIDATION split (400 held-out problems of levels 2-3 that are not in the test set); each arm's final model is
then scored once on the TEST set, the 408 problems `reasonrl train` evaluates on (data.eval_n=200: 8 of level 1,
200 of level 2, 200 of level 3). TRL's GRPOTrainer runs the arms named by --trl with the same settings; its saved
models are scored the same way. Writes docs/results/learning.md (tables above its hand-written notes) and PNG curves.
    OMP_NUM_THREADS=1 .venv/bin/python experiments/learning.py --jobs 2              (every arm; the doc gives the time)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/learning.py --arms old new --trl  (some arms, no TRL)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness  # experiments/harness.py
from harness import ROOT, TEST_N, cli_eval, pct, run_process
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.plot import write_keeping_notes
from reasonrl.tracking import read_metrics

OUT = ROOT / "runs" / "exp-learning"
EVAL_EVERY = 50  # validation evaluations, in steps
KEPT = "<!-- notes: kept when the experiment rewrites this file -->"

# The main job's settings before issue 22 (configs/grpo.yaml then), written out so the arms do not move when the
# defaults do. Each arm below changes one thing from OLD (or, in the second table, from NEW).
OLD = [
    "model.path=student",
    "data.levels=[1,2,3]",
    "rollout.num_generations=8",
    "rollout.max_completion_length=64",
    "rollout.temperature=1.0",
    "algo=grpo",
    "algo.loss_type=dapo",
    "algo.scale_rewards=group",
    "algo.epsilon=0.2",
    "algo.beta=0.0",
    "optim.lr=5e-5",
    "optim.warmup_steps=5",
    "optim.schedule=constant",
    "train.steps=40",
    "train.prompts_per_step=8",
    "train.micro_batch_size=64",
]
NEW = OLD + ["train.steps=600", "data.levels=[2,3]", "optim.lr=1e-4", "optim.schedule=cosine"]

# Students made by a short SFT (name -> `reasonrl sft` arguments); exported under OUT/students/NAME.
STUDENTS: dict[str, list[str]] = {
    # the shipped student's recipe without its 20% direct-answer demonstrations
    "cot": ["--config", "configs/student.yaml", "algo.demo=solution"],
}
COT = "model.path=runs/exp-learning/students/cot"

# arm name -> (table, overrides, what it tests)
A = "A. the old setting, longer"
B = "B. one factor changed from the old setting at 600 steps"
C = "C. the new default (levels 2-3, lr 1e-4 with cosine decay, 600 steps): its lr, warm-up and seeds"
OLD600 = OLD + ["train.steps=600"]
ARMS: dict[str, tuple[str, list[str], str]] = {
    "old": (A, OLD, "the old default: 40 steps at lr 5e-5"),
    "old-600": (A, OLD600, "the same, 600 steps"),
    "lr1e-4-600": (B, OLD600 + ["optim.lr=1e-4"], "lr 1e-4"),
    "lr1e-4-cosine": (B, OLD600 + ["optim.lr=1e-4", "optim.schedule=cosine"], "lr 1e-4 with cosine decay to 0"),
    "levels23": (B, OLD600 + ["data.levels=[2,3]"], "train on levels 2-3 only"),
    "t0.7": (B, OLD600 + ["rollout.temperature=0.7"], "sampling temperature 0.7"),
    "beta0.04-lr1e-4": (B, OLD600 + ["optim.lr=1e-4", "algo.beta=0.04"], "KL to the student, beta 0.04, at lr 1e-4"),
    "p16-300": (
        B,
        OLD + ["train.steps=300", "train.prompts_per_step=16"],
        "16 prompts x 8 per step, 300 steps (the samples of 8 x 8 x 600)",
    ),
    "cot-student": (B, OLD600 + [COT], "a student SFT'd without direct answers"),
    "new": (C, NEW, "the new default"),
    "new-lr5e-5": (C, NEW + ["optim.lr=5e-5"], "lr 5e-5"),
    "new-lr2e-4": (C, NEW + ["optim.lr=2e-4"], "lr 2e-4"),
    "new-warmup100": (C, NEW + ["optim.warmup_steps=100"], "100 warm-up steps"),
    "new-seed1": (C, NEW + ["train.seed=1"], "seed 1"),
    "new-seed2": (C, NEW + ["train.seed=2"], "seed 2"),
}

TRL_ARMS = ["new"]  # arms also run with TRL by default


def validation_file() -> Path:
    """Held-out problems of levels 2 and 3 (200 each) that are not in the test set: where settings are chosen."""
    return harness.validation_file(OUT / "validation.jsonl")


def run_worker(args: list[str], log: Path) -> tuple[int, float]:
    return run_process(args, log, [sys.executable, str(Path(__file__).resolve())])


def test_eval(model: Path | str, out: Path, log: Path) -> dict:
    return cli_eval(model, ["--levels", "1,2,3", "--n", str(TEST_N)], out, log)


def validation_eval(model: Path | str, out: Path, log: Path) -> dict:
    return cli_eval(model, ["--data", str(validation_file()), "--n", "400", "--max-new-tokens", "64"], out, log)


def make_student(name: str) -> Path:
    """The SFT student `name`, made once."""
    target = OUT / "students" / name
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        run_dir = OUT / "students" / f"{name}-run"
        code, cpu = run_process(
            ["sft", "--quiet", "--output-dir", str(run_dir), "--export", str(target), *STUDENTS[name]],
            OUT / "students" / f"{name}.log",
        )
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
        steps = int(setting(overrides)["train.steps"])
        if (run_dir / "checkpoints").is_dir() and not (run_dir / "final").is_dir():
            args = ["train", "--quiet", "--resume", str(run_dir)]
        else:
            args = [
                "train",
                "--quiet",
                "--output-dir",
                str(run_dir),
                *overrides,
                f"data.eval={validation_file()}",
                "data.eval_n=400",
                f"train.eval_every={EVAL_EVERY if steps > 100 else 10}",
                "train.save_every=100",
            ]
        started = time.perf_counter()
        code, cpu = (0, None) if (run_dir / "final").is_dir() else run_process(args, log)  # trained, not yet scored
        if code:
            raise RuntimeError(f"arm {name} failed; see {log}")
        result = test_eval(run_dir / "final", run_dir / "test-eval.json", log)
        done.write_text(json.dumps({"cpu_s": cpu, "wall_s": time.perf_counter() - started, "test": result}))
    return json.loads(done.read_text())


def setting(overrides: list[str]) -> dict[str, str]:
    """The last value of each dotted key in an override list."""
    return dict(o.split("=", 1) for o in overrides)


def trl_worker(name: str) -> None:
    """Train arm `name`'s setting with TRL's GRPOTrainer (same student, prompts in the same order, reward, sampling,
    lr schedule), saving the model every `EVAL_EVERY` steps; runs inside its own process."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from reasonrl.config import load_config
    from reasonrl.data import PromptStream
    from reasonrl.models import load_model
    from reasonrl.rewards.math import accuracy

    cfg = load_config(None, ARMS[name][1])
    assert cfg.algo.loss_type == "dapo" and cfg.algo.scale_rewards == "group" and cfg.optim.min_lr_ratio == 0
    model, tokenizer = load_model(cfg.model.path)
    steps, prompts, gens = cfg.train.steps, cfg.train.prompts_per_step, cfg.rollout.num_generations
    examples = PromptStream(cfg.data.train, cfg.data).next(prompts * steps)  # reasonrl's prompt order
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": ex.prompt}], "answer": ex.answer} for ex in examples]
    )

    def reward(prompts, completions, answer, **kwargs):
        return list(accuracy(prompts, [c[-1]["content"] for c in completions], answer))

    args = GRPOConfig(
        output_dir=str(OUT / f"trl-{name}"),
        per_device_train_batch_size=prompts * gens,
        num_generations=gens,
        max_completion_length=cfg.rollout.max_completion_length,
        temperature=cfg.rollout.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=cfg.optim.lr,
        lr_scheduler_type=cfg.optim.schedule,
        warmup_steps=cfg.optim.warmup_steps,
        loss_type="dapo",
        beta=cfg.algo.beta,
        num_iterations=1,
        epsilon=cfg.algo.epsilon,
        scale_rewards="group",
        max_steps=steps,
        logging_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=EVAL_EVERY,
        save_only_model=True,
        use_cpu=True,
        seed=cfg.train.seed,
        max_grad_norm=cfg.optim.max_grad_norm,
        weight_decay=0.0,
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        shuffle_dataset=False,
    )
    GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tokenizer).train()


def run_trl(name: str) -> dict:
    """TRL on arm `name`'s setting; each saved model is scored on the validation set (written as a reasonrl-style
    metrics.jsonl), the last one on the test set."""
    run_dir, log = OUT / f"trl-{name}", OUT / f"trl-{name}.log"
    done = run_dir / "test.json"
    if not done.exists():
        code, cpu = run_worker(["--trl-worker", name], log)
        if code:
            raise RuntimeError(f"TRL on {name} failed; see {log}")
        checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        base = validation_eval(model_of(ARMS[name][1]), run_dir / "eval-0.json", log)
        rows = [{"step": 0, **{f"eval/{k}": v for k, v in base.items()}}]
        for ckpt in checkpoints:
            metrics = validation_eval(ckpt, run_dir / f"eval-{ckpt.name}.json", log)
            rows.append({"step": int(ckpt.name.split("-")[1]), **{f"eval/{k}": v for k, v in metrics.items()}})
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = test_eval(checkpoints[-1], run_dir / "test-eval.json", log)
        done.write_text(json.dumps({"cpu_s": cpu, "test": result}))
    return json.loads(done.read_text())


def arm_row(name: str) -> str:
    _, overrides, what = ARMS[name]
    result = json.loads((OUT / name / "test.json").read_text())
    rows = read_metrics(OUT / name)
    evals = [r for r in rows if "eval/accuracy" in r]
    steps = max(r["step"] for r in rows)
    val_n = evals[0]["eval/n"]
    base = test_eval(
        model_of(overrides), OUT / "models" / f"{Path(model_of(overrides)).name}.json", OUT / "models" / "eval.log"
    )
    test, test_n = result["test"], result["test"]["n"]
    best = max(evals[1:], key=lambda r: r["eval/accuracy"])
    last3 = sum(r["eval/accuracy"] for r in evals[-3:]) / len(evals[-3:])
    return (
        f"| {name} | {what} | {steps} | {pct(evals[0]['eval/accuracy'], val_n)} → "
        f"{pct(evals[-1]['eval/accuracy'], val_n)} | {100 * last3:.1f} | "
        f"{100 * best['eval/accuracy']:.1f} at {best['step']} | "
        f"{pct(base['accuracy'], test_n)} → {pct(test['accuracy'], test_n)} | "
        f"{100 * (test['accuracy'] - base['accuracy']):+.1f} | {cpu_minutes(result)} |"
    )


def cpu_minutes(result: dict) -> str:
    return "-" if result.get("cpu_s") is None else f"{result['cpu_s'] / 60:.1f}"


def trl_row(name: str) -> str:
    """reasonrl's and TRL's runs of arm `name`, side by side: validation at every evaluation, test at the end."""
    cells = []
    for label, run_dir in (("reasonrl", OUT / name), ("TRL", OUT / f"trl-{name}")):
        evals = [r for r in read_metrics(run_dir) if "eval/accuracy" in r]
        test = json.loads((run_dir / "test.json").read_text())
        curve = " / ".join(f"{100 * r['eval/accuracy']:.1f}" for r in evals[::2])
        cells.append(
            f"| {label} | {curve} | {pct(test['test']['accuracy'], test['test']['n'])} | {cpu_minutes(test)} |"
        )
    steps = " / ".join(str(r["step"]) for r in [r for r in read_metrics(OUT / name) if "eval/accuracy" in r][::2])
    return (
        f"### reasonrl vs TRL: {ARMS[name][2]}\n\n| library | validation accuracy (%) at steps {steps} | "
        f"test after (408) | CPU-min |\n|---|---|---|---|\n" + "\n".join(cells)
    )


def report(names: list[str]) -> str:
    head = (
        "| arm | setting | steps | validation (400): before → after, % ± 95% CI | validation, mean of the last 3 "
        "evaluations | validation best (step) | test (408): before → after | test change (points) | CPU-min |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    tables: dict[str, list[str]] = {}
    for name in names:
        tables.setdefault(ARMS[name][0], []).append(arm_row(name))
    parts = [f"### {table}\n\n{head}\n" + "\n".join(rows) for table, rows in tables.items()]
    seeds = [n for n in ("new", "new-seed1", "new-seed2") if n in names]
    if len(seeds) > 1:
        gains = []
        for n in seeds:
            base = test_eval(model_of(ARMS[n][1]), OUT / "models" / "student.json", OUT / "models" / "eval.log")
            gains.append(100 * (json.loads((OUT / n / "test.json").read_text())["test"]["accuracy"] - base["accuracy"]))
        parts.append(
            f"Test gain of the new default over seeds {', '.join(seeds)}: "
            f"{' / '.join(f'{g:+.1f}' for g in gains)} points (mean {statistics.fmean(gains):+.1f}, "
            f"standard deviation {statistics.stdev(gains):.1f})."
        )
    parts += [trl_row(n) for n in names if (OUT / f"trl-{n}" / "test.json").exists()]
    return "\n\n".join(parts)


PLOTS = {  # file stem -> (title, arms; "trl-ARM" is TRL's run of ARM)
    "learning-lr": ("Old setting: steps and learning rate", ["old", "old-600", "lr1e-4-600", "lr1e-4-cosine"]),
    "learning-factors": (
        "One factor at a time from 600 steps at lr 5e-5",
        ["old-600", "levels23", "t0.7", "beta0.04-lr1e-4", "cot-student"],
    ),
    "learning-new": (
        "The new default: lr and warm-up",
        ["new", "new-lr5e-5", "new-lr2e-4", "new-warmup100", "levels23"],
    ),
    "learning-seeds": ("The new default, three seeds", ["new", "new-seed1", "new-seed2", "old"]),
    "learning-trl": ("reasonrl vs TRL's GRPOTrainer, the new default", ["new", "trl-new"]),
}


def plots(doc_dir: Path) -> list[str]:
    """Validation accuracy over steps for each comparison whose runs exist; returns markdown image lines."""
    lines = []
    for stem, (title, arms) in PLOTS.items():
        dirs = [OUT / a for a in arms if (OUT / a / "metrics.jsonl").exists()]
        if len(dirs) < 2:
            continue
        path = doc_dir / f"{stem}.png"
        plot_curves(dirs, title, path)
        lines.append(f"![{title}]({path.name})")
    return lines


def plot_curves(run_dirs: list[Path], title: str, path: Path) -> None:
    """Validation accuracy against step, one line per run."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for run_dir in run_dirs:
        evals = [r for r in read_metrics(run_dir) if "eval/accuracy" in r]
        ax.plot(
            [r["step"] for r in evals],
            [100 * r["eval/accuracy"] for r in evals],
            marker="o",
            markersize=3,
            label=run_dir.name,
        )
    ax.set(title=title, xlabel="step", ylabel="greedy accuracy, validation (400 problems), %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def write_doc(names: list[str], path: Path) -> None:
    results = [json.loads(p.read_text()) for p in OUT.glob("*/test.json")]
    cpu = sum(r["cpu_s"] or 0 for r in results) + sum(float(p.read_text()) for p in OUT.glob("students/*.cpu"))
    text = "\n\n".join(
        [
            "# What limits learning in the main job, and the setup that fixes it (issue 22)",
            "Made by `OMP_NUM_THREADS=1 .venv/bin/python experiments/learning.py --jobs 2` "
            f"({cpu / 60:.0f} CPU-minutes "
            f"for {len(results)} runs; the tables and plots are generated, the notes below them are written by hand). "
            "Accuracy is greedy; ± is the 95% binomial interval (1.96 standard errors) of one evaluation.",
            report(names),
            "\n".join(plots(path.parent)),
        ]
    )
    write_keeping_notes(path, text, KEPT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), help=f"arms to run (default: all of {list(ARMS)})")
    parser.add_argument("--trl", nargs="*", default=TRL_ARMS, help="arms also trained with TRL's GRPOTrainer")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once, one thread each")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return 0
    unknown = [a for a in args.arms + args.trl if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {list(ARMS)}")
    validation_file()
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    for name in {Path(model_of(ARMS[a][1])).name for a in args.arms + args.trl} & set(STUDENTS):
        make_student(name)
    tasks = [(run_trl, a, f"trl-{a}") for a in args.trl] + [(run_arm, a, a) for a in args.arms]
    with ThreadPoolExecutor(args.jobs) as pool:  # TRL first: its runs are the longest
        for (_, _, label), result in zip(tasks, pool.map(lambda t: t[0](t[1]), tasks)):
            print(f"{label}: test accuracy {result['test']['accuracy']:.3f}, {cpu_minutes(result)} CPU-min", flush=True)
    done = [a for a in ARMS if (OUT / a / "test.json").exists()]
    write_doc(done, ROOT / "docs" / "results" / "learning.md")
    print(report(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
