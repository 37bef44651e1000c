"""HT-SR schedules in miniature (issue 22, item 3): uniform weight decay vs AlphaDecay, uniform lr vs LLR, each at its
own tuned learning rate (and weight decay), pretraining tiny Llamas to a plateau.

Pretrains from scratch on the World English Bible (`reasonrl pretrain`). The held-out split is cut in two disjoint
parts: its first --eval-tokens tokens are the VALIDATION part (scored during training; every choice is made on it)
and the rest is the TEST part (scored once on each final model; the only numbers the verdicts use). Per setting, a
coordinate search on seed 0 picks the knobs by final validation loss: uniform searches lr over 1e-3, 3e-3, 1e-2 (at
wd 0.1; an lr grid whose best value sits at an edge is widened by one step), then wd over 0.1 and 0.3 at that lr.
Seeds 1 and 2 then run at the chosen values. LLR keeps uniform's chosen wd and searches its lr; AlphaDecay, which
changes only the weight decay, keeps uniform's chosen lr and searches its wd0. `lr_matched` is uniform lr at LLR's
chosen lr times LLR's average multiplier (LLR's multipliers lie in [1, 3], so a gain may be the higher lr rather
than the per-layer shape). The *_muon settings (Muon on hidden matrices, AdamW on the rest) follow the same
protocol, compared with uniform_muon. A finished run with the same
config is reused, so the experiment can be run in pieces. Writes docs/results/htsr.md (text below the notes marker
survives a re-run) and PNGs (experiments/htsr_report.py); runs of other --settings write under --out.
Reproduce:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/htsr.py                (nano, uniform/alphadecay/llr/lr_matched)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/htsr.py --settings uniform_muon llr_muon --out runs/htsr-muon
    .venv/bin/python experiments/htsr.py --quick                          (a smoke run of every code path; runs/ only)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from htsr_report import Choice, Experiment, baseline, write_page

from reasonrl.algos.pretrain import encode, evaluate_lm, load_corpus, pretrain_config, split_corpus
from reasonrl.config import config_to_dict, load_config
from reasonrl.models import load_model
from reasonrl.optim import lr_lambda
from reasonrl.spectral import alpha_ratios, weight_modules
from reasonrl.spectral.esd import layer_and_type
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
# Values a search may take; each starts at the three middle ones of START and widens along the ladder.
# wd tries only 0.1 and 0.3: at about 4.5 wall-minutes per 2000-step nano run on the shared machine, the budget
# holds about 22 runs.
LADDER = {"lr": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "wd": (0.1, 0.3)}
MAX_GRID = 4
BASE_WD = 0.1  # the papers' AdamW weight decay: where the lr search runs


@dataclass(frozen=True)
class Setting:
    overrides: list[str]
    knobs: tuple[str, ...]  # searched on seed 0, in this order
    wd_from: str | None = None  # use that setting's chosen weight decay (for lr_matched: also its lr, scaled)
    lr_from: str | None = None  # use that setting's chosen lr (AlphaDecay changes only the weight decay)
    lr_start: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    wd_start: tuple[float, ...] = (0.1, 0.3)


SETTINGS = {
    "uniform": Setting([], ("lr", "wd")),
    "llr": Setting(["optim.lr_schedule=llr"], ("lr",), wd_from="uniform"),
    "lr_matched": Setting([], (), wd_from="llr"),
    "alphadecay": Setting(["optim.weight_decay_schedule=alphadecay"], ("wd",), lr_from="uniform"),
    "uniform_muon": Setting(["optim.name=muon"], ("lr", "wd"), lr_start=(3e-3, 1e-2, 3e-2)),
    "llr_muon": Setting(
        ["optim.name=muon", "optim.lr_schedule=llr"], ("lr",), wd_from="uniform_muon", lr_start=(3e-3, 1e-2, 3e-2)
    ),
}
ADAMW_SETTINGS = ["uniform", "llr", "lr_matched", "alphadecay"]  # the default --settings, and docs/results/htsr.md's


def run(size: str, setting: str, seed: int, lr: float, wd: float, args) -> Path:
    """One pretraining run (its CPU seconds saved beside it); a finished run with the same config is not redone."""
    steps = args.steps
    overrides = SETTINGS[setting].overrides + [
        f"optim.lr={lr:.6g}",
        f"optim.weight_decay={wd:g}",
        f"train.steps={steps}",
        f"train.seed={seed}",
        f"train.eval_every={args.eval_every}",
        f"train.spectral_every={args.eval_every}",
        f"train.log_every={args.eval_every}",
        "train.progress=false",
        # α re-measured 20 times per run: the paper's 500 steps are for runs of 10k+ steps.
        f"optim.alphadecay.every={max(1, steps // 20)}",
        f"optim.warmup_steps={max(1, steps // 20)}",
        f"algo.size={size}",
        f"algo.seq_len={args.seq_len}",
        f"algo.batch_size={args.batch_size}",
        f"algo.corpus_chars={args.corpus_chars}",
        f"algo.vocab_size={args.vocab_size}",
        f"algo.eval_tokens={args.eval_tokens}",
    ]
    cfg = load_config(None, overrides, base=pretrain_config())
    run_dir = args.out / f"{size}-{setting}-lr{lr:.4g}-wd{wd:g}-seed{seed}"
    if not finished(run_dir, cfg):
        started = time.process_time()
        Trainer(cfg, run_dir=run_dir).train()
        (run_dir / "cpu_seconds.json").write_text(json.dumps(time.process_time() - started))
        print(f"{run_dir.name}: validation ppl {evals(run_dir)[-1]['eval/perplexity']:.2f}", flush=True)
    return run_dir


def finished(run_dir: Path, cfg) -> bool:
    """Whether `run_dir` holds a completed run of this config (the pretraining options are its algo section).

    Every setting the saved config has must match; settings added to Config since then (new keys) are ignored,
    so a run stays reusable across library versions that only grew the config.
    """
    try:
        same_cfg = _within(yaml.safe_load((run_dir / "config.yaml").read_text()), config_to_dict(cfg))
        return same_cfg and (run_dir / "cpu_seconds.json").exists() and evals(run_dir)[-1]["step"] == cfg.train.steps
    except (OSError, IndexError, KeyError):
        return False


def _within(saved, current) -> bool:
    """Whether every key of the nested dict `saved` is in `current` with an equal value."""
    if isinstance(saved, dict):
        return isinstance(current, dict) and all(k in current and _within(v, current[k]) for k, v in saved.items())
    return saved == current


def evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "eval/loss" in r]


def search(knob: str, start: tuple[float, ...], run_at) -> tuple[float, dict[float, Path]]:
    """The value of `knob` whose run (`run_at(value)`, seed 0) ends at the lowest validation loss, and every run.

    Starts from `start`; while the best value is at an edge of the grid, adds the next ladder value on that side.
    """
    ladder, grid, runs = LADDER[knob], sorted(start), {}
    while True:
        for value in grid:
            runs.setdefault(value, run_at(value))
        best = min(grid, key=lambda value: evals(runs[value])[-1]["eval/loss"])
        at, side = ladder.index(best), -1 if best == grid[0] else 1 if best == grid[-1] else 0
        if not side or len(grid) >= MAX_GRID or not 0 <= at + side < len(ladder):
            return best, runs
        grid = sorted(grid + [ladder[at + side]])


def choose(size: str, name: str, chosen: dict[str, Choice], multiplier: float | None, args) -> Choice:
    """A setting's lr and wd: searched on seed 0 over its knobs in order, or derived from the setting it copies."""
    setting = SETTINGS[name]
    if name == "lr_matched":
        return Choice(chosen["llr"].lr * multiplier, chosen["llr"].wd, {})
    point = {
        "lr": chosen[setting.lr_from].lr if setting.lr_from else setting.lr_start[1],
        "wd": chosen[setting.wd_from].wd if setting.wd_from else BASE_WD,
    }
    grids = {}
    for knob in setting.knobs:

        def run_at(value: float, knob: str = knob) -> Path:
            values = point | {knob: value}
            return run(size, name, 0, values["lr"], values["wd"], args)

        point[knob], grids[knob] = search(knob, setting.lr_start if knob == "lr" else setting.wd_start, run_at)
    return Choice(point["lr"], point["wd"], grids)


def llr_mean_multiplier(run_dir: Path) -> float:
    """LLR's lr multiplier averaged over parameters and over updates, weighted by the base schedule's lr.

    So lr_matched (uniform lr x this) gives every parameter, on average, the same summed lr as LLR did. Each
    re-measurement's target multipliers are rebuilt from the logged `llr/alpha/<module>` with LLR's own map and
    eased in with its linear ramp; modules without an α and parameters outside the tuned modules (norms) count at 1.
    """
    cfg = load_config(run_dir / "config.yaml")
    optim, steps = cfg.optim, cfg.train.steps
    model, _ = load_model(str(run_dir / "final"), "float32", "cpu")
    sizes = {name: sum(p.numel() for p in m.parameters(recurse=False)) for name, m in weight_modules(model)}
    total = sum(p.numel() for p in model.parameters())
    targets = []  # (step after which it was set, {module: target multiplier})
    for record in read_metrics(run_dir):
        alphas = {k.removeprefix("llr/alpha/"): v for k, v in record.items() if k.startswith("llr/alpha/")}
        if alphas:
            ratios = alpha_ratios(
                list(alphas.values()),
                optim.llr.mapping,
                optim.llr.min_ratio,
                optim.llr.max_ratio,
                [layer_and_type(n)[0] for n in alphas],
            )
            targets.append((record["step"], dict(zip(alphas, ratios.tolist()))))
    base = lr_lambda(optim, steps)
    current, start, target, ramp_start = {}, {}, {}, 0
    lr_sum = weighted = 0.0
    for update in range(1, steps + 1):
        # A target set after update s (LLR.step at step_count s) is eased in over updates s+1 .. s+ramp.
        while targets and targets[0][0] < update:
            ramp_start, target = targets.pop(0)
            start = {n: current.get(n, target[n]) for n in target}
        done = 1.0 if optim.llr.ramp <= 1 else min(1.0, (update - ramp_start) / optim.llr.ramp)
        current = {n: start[n] + (target[n] - start[n]) * done for n in target}
        mean = (sum(sizes[n] * r for n, r in current.items()) + total - sum(sizes[n] for n in current)) / total
        lr_sum += base(update - 1)  # LambdaLR: update u uses the factor of step u - 1
        weighted += base(update - 1) * mean
    return weighted / lr_sum


def score(run_dir: Path, args) -> dict[str, float]:
    """Final model's loss on the validation part (checked against the run's last eval) and on the test part."""
    model, tokenizer = load_model(str(run_dir / "final"), "float32", "cpu")
    text = load_corpus()
    _, heldout = split_corpus(text[: args.corpus_chars] if args.corpus_chars else text)
    ids = encode(tokenizer, heldout)
    validation = evaluate_lm(model, ids[: args.eval_tokens], args.seq_len, args.batch_size)["loss"]
    logged = evals(run_dir)[-1]["eval/loss"]
    if abs(validation - logged) > 1e-3:
        raise RuntimeError(f"{run_dir}: validation loss {validation:.5f} differs from the logged {logged:.5f}")
    return {
        "validation": validation,
        "test": evaluate_lm(model, ids[args.eval_tokens :], args.seq_len, args.batch_size)["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="nano model, 2 seeds, 40 steps, 200k characters")
    # Defaults: the committed run, sized to ~45 CPU-minutes at one thread (nano: about 0.045 s per step).
    parser.add_argument("--sizes", nargs="+", default=["nano"])
    parser.add_argument("--settings", nargs="+", default=ADAMW_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens of the validation part")
    parser.add_argument("--corpus-chars", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "htsr-plateau")
    args = parser.parse_args()
    settings = list(dict.fromkeys(args.settings))
    needed = {baseline(s) for s in settings} | {SETTINGS[s].wd_from or SETTINGS[s].lr_from for s in settings} - {None}
    if not needed <= set(settings):
        parser.error(
            f"--settings {' '.join(settings)} needs {' and '.join(sorted(needed - set(settings)))} too "
            f"(the baselines the table compares with and the settings whose choices they use)"
        )
    settings.sort(key=list(SETTINGS).index)  # each setting after those whose choices it uses
    if args.quick:
        args.sizes, args.seeds, args.steps, args.eval_every = ["nano"], 2, 40, 10
        args.seq_len, args.batch_size, args.vocab_size, args.corpus_chars = 64, 8, 512, 200_000
        args.eval_tokens, args.out = 1024, ROOT / "runs" / "htsr-quick"
    seeds = list(range(args.seeds))
    exp = Experiment(args.sizes, settings, seeds, args.steps, args.eval_every)
    for size in args.sizes:
        chosen: dict[str, Choice] = {}
        for name in settings:
            multiplier = None
            if name == "lr_matched":
                multiplier = statistics.mean(llr_mean_multiplier(exp.runs[size, "llr", s]) for s in seeds)
                exp.multiplier[size] = multiplier
            chosen[name] = exp.chosen[size, name] = choose(size, name, chosen, multiplier, args)
            for seed in seeds:
                exp.runs[size, name, seed] = run(size, name, seed, chosen[name].lr, chosen[name].wd, args)
                exp.losses[size, name, seed] = score(exp.runs[size, name, seed], args)
            print(f"{size} {name}: lr {chosen[name].lr:.4g}, wd {chosen[name].wd:g}", flush=True)
    results = args.out if args.quick or settings != ADAMW_SETTINGS else ROOT / "docs" / "results"
    command = " ".join(["experiments/htsr.py", *sys.argv[1:]])
    write_page(exp, results, command, args)


if __name__ == "__main__":
    main()
