"""AutoThink (ellipsis prompt, three reward stages) vs plain GRPO with the always-think prompt, both from the shipped
`autothink_base` at equal steps: accuracy, completion tokens and think rate per difficulty level.

Writes docs/results/autothink.md and PNG plots. Reproduce:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py           (full run; see the doc for its CPU time)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/autothink.py --quick   (a smoke run of a few minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.algos.autothink import sample_modes, save_prompt_mode
from reasonrl.config import load_config
from reasonrl.models import load_model
from reasonrl.plot import plot_runs
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer
from reasonrl.worlds.arith import ArithWorld

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LEVELS, EVAL_LEVELS = (1, 2, 3), (1, 2, 3, 4, 5)
TEMPERATURE = 0.6  # the paper's rollout and evaluation temperature
# size: (steps, stage steps of stages 1 and 2, eval problems per level, samples per eval problem)
SIZES = {"full": (240, (60, 60), 50, 8), "quick": (9, (3, 3), 8, 2)}
COMMON = [
    "data.train=world:arith", f"data.levels=[{','.join(map(str, TRAIN_LEVELS))}]", "rollout.num_generations=8",
    "rollout.max_completion_length=64", "rollout.eval_max_completion_length=128", f"rollout.temperature={TEMPERATURE}",
    "train.prompts_per_step=8", "train.micro_batch_size=64", "optim.lr=5e-5", "optim.warmup_steps=5",
    "algo.loss_type=dapo", "algo.epsilon=0.2", "algo.beta=0.0", "train.progress=false",
]


CONTEXT = """Measured before this run (docs/autothink.md has the commands): under the ellipsis prompt the start model
answers directly 37-40% of the time on every level (T=1). Its direct answers are right on about half of held-out
level-1 problems and almost never on levels 2-5, where even the 3000-step `teacher` answers directly right on
under 8%. A level-1 trace is 14 tokens against 9 for a direct answer, so in this world a policy that answered
level 1 directly and thought elsewhere would save about 5% of the tokens on levels 1-3: the paper's 40-52% needs
easy problems with long traces and a model that can answer them without thinking."""


def run(name: str, overrides: list[str], steps: int, out: Path, seed: int) -> tuple[Path, float]:
    overrides = COMMON + overrides + [f"train.steps={steps}", f"train.eval_every={max(1, steps // 6)}",
                                      f"train.seed={seed}", f"data.eval_levels=[{','.join(map(str, EVAL_LEVELS))}]",
                                      "data.eval_n=50"]
    trainer = Trainer(load_config(None, overrides), run_dir=out / name)
    started = time.process_time()
    trainer.train()
    return trainer.run_dir, time.process_time() - started


def measure(model_dir: str | Path, n_per_level: int, samples: int) -> dict[str, dict[str, float]]:
    """Greedy and sampled (T=0.6) mode metrics on held-out problems, prompted by the folder's own template."""
    model, tokenizer = load_model(str(model_dir), device="cpu")
    engine, examples = FastEngine(model, tokenizer), ArithWorld(levels=list(EVAL_LEVELS)).eval_set(EVAL_LEVELS, n_per_level)
    torch.manual_seed(0)
    return {"greedy": sample_modes(engine, tokenizer, examples, 1, SamplingParams(128, greedy=True)),
            "sampled": sample_modes(engine, tokenizer, examples, samples, SamplingParams(128, TEMPERATURE))}


def table(results: dict[str, dict[str, float]], decoding: str) -> str:
    head = "| model | " + " | ".join(f"L{lv} acc / tokens / think" for lv in EVAL_LEVELS) + " | all: acc / tokens / think |"
    lines = [head, "|---" * (len(EVAL_LEVELS) + 2) + "|"]
    for name, res in results.items():
        m = res[decoding]
        cells = [f"{m[f'accuracy{s}']:.0%} / {m[f'tokens{s}']:.1f} / {m[f'think_rate{s}']:.0%}"
                 for s in [f"/level_{lv}" for lv in EVAL_LEVELS] + [""]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mode_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| model | accuracy thinking | accuracy direct | tokens thinking | tokens direct |", "|---|---|---|---|---|"]
    for name, res in results.items():
        m = res["sampled"]
        cells = [fmt.format(m[k]) if k in m else "-" for k, fmt in (
            ("accuracy/think", "{:.0%}"), ("accuracy/no_think", "{:.0%}"), ("tokens/think", "{:.1f}"),
            ("tokens/no_think", "{:.1f}"))]  # a mode the model never used has no numbers
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_think_rate(run_dir: Path, out: Path) -> Path:
    """AutoThink's think rate per training level over its training rollouts, with the stage boundaries."""
    rows = [r for r in read_metrics(run_dir) if "autothink/think_rate" in r]
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key in ["autothink/think_rate"] + [f"autothink/think_rate/level_{lv}" for lv in TRAIN_LEVELS]:
        pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([s for s, _ in pairs], [v for _, v in pairs], label=key.removeprefix("autothink/"), alpha=0.8)
    for step, prev in zip(rows[1:], rows):
        if step["autothink/stage"] != prev["autothink/stage"]:
            ax.axvline(step["step"] - 0.5, color="grey", linestyle="--")
    ax.set(title="AutoThink: think rate of training rollouts (T=0.6)", xlabel="step", ylabel="think rate", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out, dpi=110)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "exp-autothink"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args()
    steps, (s1, s2), n_per_level, samples = SIZES["quick" if args.quick else "full"]
    out, doc_dir = Path(args.out), Path(args.doc)
    doc_dir.mkdir(parents=True, exist_ok=True)
    # The same weights, prompted two ways: the always-think copy differs only in its chat template.
    think_base = save_prompt_mode("autothink_base", out / "base-always-think", "think")
    arms = {
        "autothink": ["model.path=autothink_base", "algo=autothink", "algo.stage=all", f"algo.stage_steps=[{s1},{s2}]"],
        "grpo (always think)": [f"model.path={think_base}", "algo=grpo"],
    }
    run_dirs, cpu = {}, {}
    for name, overrides in arms.items():
        run_dirs[name], cpu[name] = run(name.split()[0], overrides, steps, out, args.seed)
    results = {"start, ellipsis prompt": measure("autothink_base", n_per_level, samples),
               "start, always-think prompt": measure(think_base, n_per_level, samples)}
    results |= {f"{name} after {steps} steps": measure(d / "final", n_per_level, samples) for name, d in run_dirs.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1))

    prefix = "autothink-"
    labels = list(run_dirs)
    plots = {"eval/accuracy": "accuracy.png", "completions/mean_length": "length.png", "reward": "reward.png"}
    for metric, file in plots.items():
        plot_runs([run_dirs[n] for n in labels], labels, metric, doc_dir / f"{prefix}{file}")
    plot_think_rate(run_dirs["autothink"], doc_dir / f"{prefix}think-rate.png")

    at, base = results[f"autothink after {steps} steps"]["greedy"], results[f"grpo (always think) after {steps} steps"]["greedy"]
    command = "OMP_NUM_THREADS=1 python experiments/autothink.py" + (" --quick" if args.quick else "")
    doc = [
        "# AutoThink vs GRPO with always-think prompting (arith world)" + (" — quick smoke run" if args.quick else ""),
        "",
        f"Command: `{command}` (seed {args.seed}). Both arms start from the shipped `autothink_base` "
        f"(configs/autothink_base.yaml) and train {steps} steps on levels {list(TRAIN_LEVELS)}; levels 4-5 are "
        "held out. AutoThink: ellipsis prompt, `algo.stage=all` with stage 1 (batch balance) for "
        f"{s1} steps, stage 2 (R0) for {s2}, stage 3 (length shaping) for the rest; max lengths 64/128/192. "
        "GRPO: the same weights with the always-think prompt `<think>\\n`, the `accuracy` reward, max length 64. "
        "Shared: " + ", ".join(COMMON[1:-1]) + ".",
        "",
        "CPU time of training (process time, evaluations during training included): "
        + ", ".join(f"{n} {t / 60:.1f} min" for n, t in cpu.items()) + ".",
        "",
        (f"Headline (greedy, {n_per_level} held-out problems per level, L1 has fewer): AutoThink "
         f"{at['accuracy']:.1%} accuracy with {at['tokens']:.1f} tokens per answer vs GRPO {base['accuracy']:.1%} "
         f"with {base['tokens']:.1f} ({at['tokens'] / base['tokens'] - 1:+.1%} tokens)."),
        "",
        CONTEXT,
        "",
        "## Greedy decoding: accuracy / mean completion tokens / think rate per level",
        "",
        table(results, "greedy"),
        "",
        f"## Sampled at T={TEMPERATURE}, {samples} samples per problem",
        "",
        table(results, "sampled"),
        "",
        mode_table(results),
        "",
        *[f"![{m}]({prefix}{f})" for m, f in plots.items()],
        f"![think rate]({prefix}think-rate.png)",
        "",
    ]
    (doc_dir / "autothink.md").write_text("\n".join(doc))
    print(json.dumps({"runs": {n: str(d) for n, d in run_dirs.items()}, "cpu_minutes": {n: t / 60 for n, t in cpu.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
