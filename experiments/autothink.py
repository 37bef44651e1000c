"""AutoThink (ellipsis prompt, three reward stages) vs plain GRPO with the always-think prompt, both from the same
base model at equal steps: accuracy, completion tokens and think rate per difficulty level, with a verdict per claim.

Each arm runs its learning-rate grid (--lrs, grown by 2x beyond an edge that wins, until the choice is interior) with
the first seed, keeps the rate whose last three evaluations on a validation split are best (held-out problems that are
not in the test set), and runs the other seeds at that rate;
cosine decay to 0 (docs/results/learning.md). The final models are then measured on the test set: 50 held-out
problems per level, greedy and sampled at T=0.6. One run at a time, one thread; a finished run (final/ and cpu.json)
is reused and an interrupted one resumes from its last checkpoint. Writes docs/results/autothink-WORLD-...-Nsteps.md
and PNG plots (experiments/autothink_report.py). Reproduce (about 25 CPU-min); a smoke run; a model's modes per level:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py --world shortcut --levels 1 2 3 4 5
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py --world shortcut --levels 1 2 3 4 5 --quick
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py --world shortcut --measure MODEL
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from autothink_report import EVAL_LEVELS, TEMPERATURE, Experiment, write_page
from harness import run_process, validation_file
from plateau import validation_score

from reasonrl.algos.autothink import autothink_reward, is_thinking, mode_metrics
from reasonrl.algos.collect import example_fields
from reasonrl.data import Example
from reasonrl.models import decode_completion, encode_prompt, load_model
from reasonrl.prompt_modes import save_prompt_mode
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine
from reasonrl.worlds import get_world

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LEVELS = (1, 2, 3)  # default training levels; --levels
# size: (steps, eval problems per level (test), samples per test problem, validation problems per level, eval every)
SIZES = {"full": (300, 50, 8, 40, 25), "quick": (9, 8, 2, 4, 3)}
ARMS = ("autothink", "grpo")
LABELS = {"autothink": "autothink", "grpo": "grpo (always think)"}
MAX_GRID = 5  # learning rates per arm at most: the grid grows beyond a winning edge (tune in main)
WORLDS = {  # world: (the shipped checkpoint both arms start from, rollout.max_completion_length of stage 1 and GRPO)
    "arith": ("autothink_base", 64),
    "shortcut": ("autothink_shortcut_base", 96),
}


def common(world: str, levels: tuple[int, ...]) -> list[str]:
    """The overrides both arms share (the learning rate, seed and length come per run)."""
    return [
        f"data.train=world:{world}",
        f"data.levels=[{','.join(map(str, levels))}]",
        "rollout.num_generations=8",
        f"rollout.max_completion_length={WORLDS[world][1]}",
        "rollout.eval_max_completion_length=128",
        f"rollout.temperature={TEMPERATURE}",
        "train.prompts_per_step=8",
        "train.micro_batch_size=64",
        "optim.schedule=cosine",
        "optim.warmup_steps=5",
        "algo.loss_type=dapo",
        "algo.epsilon=0.2",
        "algo.beta=0.0",
    ]


def train(overrides: list[str], run_dir: Path, validation: tuple[Path, int], eval_every: int) -> float:
    """Train one run through the CLI on one thread (resuming an interrupted one, reusing a finished one); returns the
    CPU seconds of its training processes, evaluations on the validation split included."""
    done = run_dir / "cpu.json"
    if done.exists() and (run_dir / "final").is_dir():
        return json.loads(done.read_text())["cpu_seconds"]
    log = run_dir.parent / f"{run_dir.name}.log"
    if (run_dir / "checkpoints").is_dir():
        args = ["train", "--quiet", "--resume", str(run_dir)]
    else:
        args = ["train", "--quiet", "--output-dir", str(run_dir), *overrides]
        args += [f"data.eval={validation[0]}", f"data.eval_n={validation[1]}", f"train.eval_every={eval_every}"]
        args += ["train.save_every=100", "train.progress=false"]
    spent = run_dir.parent / f"{run_dir.name}.cpu"  # CPU of earlier, interrupted processes of this run
    code, cpu = run_process(args, log)
    cpu += float(spent.read_text()) if spent.exists() else 0.0
    if code:
        spent.write_text(str(cpu))
        raise RuntimeError(f"{run_dir} failed (exit {code}); see {log}")
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


def measure(model_dir: str | Path, world: str, n_per_level: int, samples: int, cache: Path) -> dict:
    """Greedy and sampled (T=0.6) mode metrics on the test set (`eval_set`, n_per_level per level), prompted by the
    folder's own template; cached in `cache`."""
    if cache.exists():
        return json.loads(cache.read_text())
    model, tokenizer = load_model(str(model_dir), device="cpu")
    engine = FastEngine(model, tokenizer)
    examples = get_world(world, levels=list(EVAL_LEVELS)).eval_set(EVAL_LEVELS, n_per_level)
    torch.manual_seed(0)
    result = {
        "greedy": sample_modes(engine, tokenizer, examples, 1, SamplingParams(128, greedy=True)),
        "sampled": sample_modes(engine, tokenizer, examples, samples, SamplingParams(128, TEMPERATURE)),
    }
    cache.write_text(json.dumps(result))
    return result


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=sorted(WORLDS), default="shortcut")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first one runs the lr grid")
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-5, 1e-4], help="each arm's learning-rate grid")
    parser.add_argument("--steps", type=int, help="training steps (default 300; stages 1 and 2 get a quarter each)")
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
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once, one thread each")
    parser.add_argument("--measure", metavar="MODEL", help="only print MODEL's modes per level and exit")
    parser.add_argument("--out", default=str(ROOT / "runs" / "exp-autothink"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    return parser.parse_args()


def command_line(args: argparse.Namespace, tag: str) -> str:
    """The command that reproduces this experiment, for its page."""
    return (
        f"OMP_NUM_THREADS=1 python experiments/autothink.py --world {args.world}"
        + (" --quick" if args.quick else "")
        + (f" --steps {args.steps}" if args.steps else "")
        + (f" --levels {' '.join(map(str, args.levels))}" if tag else "")
        + f" --seeds {' '.join(map(str, args.seeds))} --lrs {' '.join(f'{lr:g}' for lr in args.lrs)}"
        + (f" --nothink-correct {args.nothink_correct:g}" if args.nothink_correct != 2.0 else "")
        + (f" --stage-steps {' '.join(map(str, args.stage_steps))}" if args.stage_steps else "")
    )


def main() -> int:
    args = parse_args()
    steps, n_per_level, samples, n_validation, eval_every = SIZES["quick" if args.quick else "full"]
    steps = args.steps or steps
    s1, s2 = args.stage_steps or (steps // 4, steps // 4)  # the official 40 / 40 / 80 at 160 steps, in proportion
    if args.measure:
        print(level_modes(args.measure, args.world, n_per_level, 16))
        return 0
    base, levels = WORLDS[args.world][0], tuple(args.levels)
    tag = "" if levels == TRAIN_LEVELS else "-L" + "".join(map(str, levels))  # names runs and docs of other levels
    variant = ("" if args.nothink_correct == 2.0 else f"-c{args.nothink_correct:g}") + (
        f"-stages{s1}-{s2}" if args.stage_steps else ""
    )  # AutoThink's runs only
    out = Path(args.out) / args.world
    world = get_world(args.world, levels=list(EVAL_LEVELS))
    validation_path = validation_file(
        out / f"validation-{n_per_level}-{n_validation}.jsonl", world, EVAL_LEVELS, n_per_level, n_validation
    )
    validation = (validation_path, len(validation_path.read_text().splitlines()))
    # The same weights, prompted two ways: the always-think copy differs only in its chat template.
    think_base = out / "base-always-think"
    if not (think_base / "config.json").exists():
        save_prompt_mode(base, think_base, "think")
    arms = {
        "autothink": [
            f"model.path={base}",
            "algo=autothink",
            "algo.stage=all",
            f"algo.stage_steps=[{s1},{s2}]",
            f"algo.nothink_correct_reward={args.nothink_correct}",
        ],
        "grpo": [f"model.path={think_base}", "algo=grpo"],
    }

    def run_dir(arm: str, lr: float, seed: int) -> Path:
        name = f"{arm}-{steps}steps{tag}{variant if arm == 'autothink' else ''}"
        return out / name / f"lr{lr:g}-s{seed}"

    def run(arm: str, lr: float, seed: int) -> float:
        overrides = common(args.world, levels) + arms[arm]
        overrides += [f"optim.lr={lr}", f"train.steps={steps}", f"train.seed={seed}", f"data.seed={seed}"]
        cpu = train(overrides, run_dir(arm, lr, seed), validation, eval_every)
        print(f"{arm} lr {lr:g} seed {seed}: {cpu / 60:.1f} CPU-min", flush=True)
        return cpu

    first, rest = args.seeds[0], args.seeds[1:]

    def tune(arm: str) -> tuple[dict[float, float], list[float]]:
        """The arm's grid on the first seed: --lrs, grown by 2x beyond the edge that wins on validation until the
        choice is interior (at most MAX_GRID rates); returns {lr: validation score} and the runs' CPU seconds."""
        lrs, cpu_of = sorted(args.lrs), {}
        while True:
            for lr in lrs:
                if lr not in cpu_of:
                    cpu_of[lr] = run(arm, lr, first)
            scores = {lr: validation_score(run_dir(arm, lr, first)) for lr in lrs}
            best = max(lrs, key=scores.get)
            if len(lrs) < 2 or len(lrs) >= MAX_GRID or best not in (lrs[0], lrs[-1]):
                return scores, list(cpu_of.values())
            lrs = [*lrs, best * 2] if best == lrs[-1] else [best / 2, *lrs]

    with ThreadPoolExecutor(args.jobs) as pool:  # parallel one-thread processes; the grids first: they pick the rates
        tuned = {arm: pool.submit(tune, arm) for arm in ARMS}
        grid = {arm: tuned[arm].result()[0] for arm in ARMS}
        cpu = {arm: tuned[arm].result()[1] for arm in ARMS}
        chosen = {arm: max(grid[arm], key=grid[arm].get) for arm in ARMS}
        seeds = {arm: [pool.submit(run, arm, chosen[arm], seed) for seed in rest] for arm in ARMS}
        for arm in ARMS:
            cpu[arm] += [future.result() for future in seeds[arm]]

    measured = {
        "start, ellipsis prompt": [measure(base, args.world, n_per_level, samples, out / "start-ellipsis.json")],
        "start, always-think prompt": [measure(think_base, args.world, n_per_level, samples, out / "start-think.json")],
    }

    def test_of(run: Path) -> dict:
        return measure(run / "final", args.world, n_per_level, samples, run / f"test-{n_per_level}.json")

    run_dirs = {arm: [run_dir(arm, chosen[arm], seed) for seed in args.seeds] for arm in ARMS}
    for arm in ARMS:
        measured[f"{LABELS[arm]} after {steps} steps"] = [test_of(d) for d in run_dirs[arm]]
    # the grid's other rates on the test set too: shown, never used to choose
    grid_test = {arm: {lr: test_of(run_dir(arm, lr, first))["greedy"] for lr in grid[arm]} for arm in ARMS}
    start_cache = out / f"start-modes-{n_per_level}.md"
    if not start_cache.exists():
        start_cache.write_text(level_modes(base, args.world, n_per_level, 16))
    experiment = Experiment(
        world=args.world,
        base=base,
        max_length=WORLDS[args.world][1],
        levels=levels,
        steps=steps,
        stages=(s1, s2),
        nothink_correct=args.nothink_correct,
        seeds=tuple(args.seeds),
        command=command_line(args, tag),
        shared=common(args.world, levels)[1:],
        validation=f"{validation[1]} problems ({n_validation} per level where the level has that many held-out "
        f"problems outside the test set), every {eval_every} steps",
        grid=grid,
        chosen=chosen,
        grid_test=grid_test,
        grid_dirs={arm: {lr: run_dir(arm, lr, first) for lr in grid[arm]} for arm in ARMS},
        run_dirs={LABELS[arm]: run_dirs[arm] for arm in ARMS},
        cpu_minutes={arm: [c / 60 for c in cpu[arm]] for arm in ARMS},
        results=measured,
        start_table=start_cache.read_text(),
        n_per_level=n_per_level,
        samples=samples,
        quick=args.quick,
    )
    page = Path(args.doc) / f"autothink-{args.world}{tag}{variant}-{steps}steps.md"
    write_page(experiment, page)
    print(json.dumps({"page": str(page), "chosen": chosen, "cpu_minutes": experiment.total_cpu_minutes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
