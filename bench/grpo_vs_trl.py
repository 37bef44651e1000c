"""GRPO step time, reasonrl vs TRL's GRPOTrainer, side by side on this machine.

Both run the shipped student on the same arithmetic prompts with identical settings: prompts per step,
num_generations, max_completion_length, temperature 1.0, lr, loss_type=dapo, beta=0, one optimizer step per
generation round, one micro-batch, the same accuracy reward function. Each (library, setting, repetition) is a
fresh subprocess, run alternately, so peak memory is each library's own and drift on the machine hits both.

    pip install -c constraints.txt -e ".[bench]"
    python bench/grpo_vs_trl.py                     # all settings, writes docs/results/bench-grpo.md
    python bench/grpo_vs_trl.py --settings 8x8x32 --reps 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import RSSSampler, _rss_mb, matmul_peak_flops, step_flops

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["8x8x32", "16x8x64", "4x16x128"]  # prompts x generations x max completion tokens
LR = 5e-5
NOTES = "<!-- notes: kept when the bench rewrites this file -->"


def parse_setting(s: str) -> tuple[int, int, int]:
    prompts, gens, length = (int(x) for x in s.split("x"))
    return prompts, gens, length


# ----------------------------------------------------------------------------------------------- workers


def run_reasonrl(prompts: int, gens: int, length: int, steps: int, seed: int, out_dir: str, gc: bool) -> dict:
    from reasonrl import trainer as trainer_mod
    from reasonrl.config import load_config

    ends: list[float] = []

    class TimedTracker(trainer_mod.Tracker):  # the end of each step, as the interval between consecutive logs
        def log(self, step, metrics):
            if step > 0:
                ends.append(time.perf_counter())
                rss.append(_rss_mb())
                logs.append(dict(metrics))
            super().log(step, metrics)

    logs: list[dict] = []
    rss: list[float] = []
    trainer_mod.Tracker = TimedTracker
    cfg = load_config(
        None,
        [
            f"train.prompts_per_step={prompts}",
            f"rollout.num_generations={gens}",
            f"rollout.max_completion_length={length}",
            "rollout.temperature=1.0",
            f"optim.lr={LR}",
            "optim.warmup_steps=0",
            "optim.schedule=constant",
            "algo.loss_type=dapo",
            "algo.beta=0.0",
            "algo.num_iterations=1",
            f"train.micro_batch_size={prompts * gens}",
            "data.eval_n=0",
            f"train.steps={steps}",
            "train.progress=false",
            f"train.seed={seed}",
            f"model.gradient_checkpointing={gc}",
        ],
    )
    trainer = trainer_mod.Trainer(cfg, run_dir=out_dir)
    sampler = RSSSampler()
    start = time.perf_counter()
    with sampler:
        trainer.train()
    times = [b - a for a, b in zip([start] + ends[:-1], ends)]
    flops = step_flops(lambda: trainer.algo.gather(trainer.ctx), lambda b: trainer._update(b))
    return {
        "step_times": times,
        "tokens": [m["num_tokens"] for m in logs],
        "rewards": [m["reward"] for m in logs],
        "breakdown": [{k: v for k, v in m.items() if k.startswith("time/")} for m in logs],
        "rss": {**sampler.result(), "per_step": rss},
        "flops": flops,
    }


def run_trl(prompts: int, gens: int, length: int, steps: int, seed: int, out_dir: str, gc: bool) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reasonrl.config import load_config
    from reasonrl.data import PromptStream
    from reasonrl.models import load_model
    from reasonrl.rewards.math import accuracy

    model, tokenizer = load_model("student")
    # The exact prompt sequence reasonrl's stream yields for this seed, unshuffled: step k sees the same prompts
    # in both libraries, so reward curves differ only by sampling noise and the update itself.
    stream = PromptStream("world:arith", load_config(None, [f"train.seed={seed}"]).data)
    examples = stream.next(prompts * steps)
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": ex.prompt}], "answer": ex.answer} for ex in examples]
    )

    def reward(prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return list(accuracy(prompts, texts, answer))

    ends: list[float] = []
    rss: list[float] = []
    seen: list[dict] = []

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            rss.append(_rss_mb())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                seen.append(dict(logs))

    args = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=prompts * gens,
        gradient_accumulation_steps=1,
        num_generations=gens,
        max_completion_length=length,
        temperature=1.0,
        top_p=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        loss_type="dapo",
        beta=0.0,
        num_iterations=1,
        epsilon=0.2,
        scale_rewards="group",
        max_steps=steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=seed,
        max_grad_norm=1.0,
        weight_decay=0.0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # GRPOConfig defaults to bf16 autocast and gradient checkpointing; reasonrl trains in float32 without
        # checkpointing unless asked, so both are set explicitly to match.
        bf16=False,
        gradient_checkpointing=gc,
        shuffle_dataset=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[Timing()],
    )
    sampler = RSSSampler()
    start = time.perf_counter()
    with sampler:
        trainer.train()
    times = [b - a for a, b in zip([start] + ends[:-1], ends)]
    batch = prompts * gens
    return {
        "step_times": times,
        "tokens": [float(m.get("completions/mean_length", 0.0)) * batch for m in seen],
        "rewards": [float(m["reward"]) for m in seen],
        "rss": {**sampler.result(), "per_step": rss},
    }


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    fn = {"reasonrl": run_reasonrl, "trl": run_trl}[args.worker]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = fn(
            *parse_setting(args.settings[0]), args.warmup + args.steps, args.seed, tmp, args.gradient_checkpointing
        )
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------------------------- driver


def spawn(lib: str, setting: str, args, seed: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        lib,
        "--settings",
        setting,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--seed",
        str(seed),
        "--threads",
        str(args.threads),
    ]
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{lib} {setting} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT ") :])
    w = args.warmup  # warm-up steps are excluded from every statistic
    out = {**out, "step_times": out["step_times"][w:], "tokens": out["tokens"][w:], "all_rewards": out["rewards"]}
    per_step = out["rss"]["per_step"]
    out["rss_drift_mb"] = per_step[-1] - per_step[min(w, len(per_step) - 1)]
    if "breakdown" in out:
        out["breakdown"] = out["breakdown"][w:]
    return out


def summarize(runs: list[dict]) -> dict:
    times = [t for r in runs for t in r["step_times"]]
    tokens = [t for r in runs for t in r["tokens"]]
    return {
        "sec_per_step": statistics.median(times),
        "tok_per_sec": sum(tokens) / sum(times),
        "peak_rss_mb": max(r["rss"]["peak_mb"] for r in runs),
        "train_rss_mb": max(r["rss"]["growth_mb"] for r in runs),
        # memory must stay flat across steps: RSS after the last measured step minus after the first
        "rss_drift_mb": max(r["rss_drift_mb"] for r in runs),
        "reward": statistics.mean(x for r in runs for x in r["all_rewards"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=SETTINGS, help="PROMPTSxGENERATIONSxTOKENS")
    p.add_argument("--reps", type=int, default=3, help="fresh processes per library and setting")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="measured steps per process")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true", help="both libraries recompute activations")
    p.add_argument("--scaling", action="store_true", help="also time reasonrl over completion lengths and group sizes")
    p.add_argument("--learning-steps", type=int, default=0, help="also compare reward curves over this many steps")
    p.add_argument("--learning-seeds", type=int, default=2)
    p.add_argument("--learning-setting", default="16x8x64")
    p.add_argument("--out", default=str(ROOT / "docs/results/bench-grpo.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--worker", choices=["reasonrl", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from _report import write_report

    peak = matmul_peak_flops(args.threads)
    print(f"matmul peak on this CPU ({args.threads} threads): {peak / 1e9:.1f} GFLOP/s")
    results = {}
    for setting in args.settings if args.reps else []:  # --reps 0: only the scaling/learning parts
        runs = {"reasonrl": [], "trl": []}
        for rep in range(args.reps):
            for lib in ("trl", "reasonrl") if rep % 2 == 0 else ("reasonrl", "trl"):  # alternate who goes first
                runs[lib].append(spawn(lib, setting, args, args.seed + rep))
                print(
                    f"  {setting} rep {rep} {lib}: {statistics.median(runs[lib][-1]['step_times']):.3f} s/step",
                    flush=True,
                )
        results[setting] = {lib: summarize(r) for lib, r in runs.items()}
        results[setting]["runs"] = runs
    scaling = {}
    if args.scaling:
        for setting in ["8x4x64", "8x8x64", "8x16x64", "8x8x32", "8x8x128"]:
            scaling[setting] = [spawn("reasonrl", setting, args, args.seed)]
            print(f"  scaling {setting}: {statistics.median(scaling[setting][0]['step_times']):.3f} s/step", flush=True)
    learning = {}
    if args.learning_steps:
        long = argparse.Namespace(**{**vars(args), "warmup": 0, "steps": args.learning_steps})
        for lib in ("trl", "reasonrl"):
            learning[lib] = []
            for seed in range(args.learning_seeds):
                run = spawn(lib, args.learning_setting, long, args.seed + seed)
                learning[lib].append((args.seed + seed, run["all_rewards"]))
                print(
                    f"  learning {lib} seed {seed}: last-10 reward {statistics.mean(run['all_rewards'][-10:]):.3f}",
                    flush=True,
                )
    text = write_report(results, args, peak, scaling, learning)
    print(text)
    if not args.no_write:
        from reasonrl.plot import write_keeping_notes

        write_keeping_notes(Path(args.out), text, NOTES)  # hand-written analysis below the marker survives
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
