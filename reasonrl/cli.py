"""Command line: `reasonrl train | sft | eval | pretrain | plot | spectrum | discover | control`. Thin: parse
arguments, then call the library.

train, sft, eval and pretrain share one grammar: `--config FILE` and dotted `key=value` overrides (the keys of
reasonrl/config.py); their short flags (`eval --data`, `pretrain --size` ...) are aliases of config keys, applied
before the overrides. plot and spectrum read a run or a model folder and take no config.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

USAGE_EXAMPLES = """examples:
  reasonrl train                                  GRPO on the arith world from the shipped student (~4 CPU-min)
  reasonrl train algo=dapo train.steps=60         the main job with DAPO settings, fewer steps
  reasonrl train --config configs/grpo.yaml algo.beta=0.01
  reasonrl train --resume runs/grpo-20261122-101500
  reasonrl sft --config configs/student.yaml --export reasonrl/assets/student
  reasonrl eval --model runs/grpo-.../final --data world:arith --levels 1,2,3,4,5
  reasonrl eval --model X --data qa.jsonl data.prompt_field=question rollout.eval_max_completion_length=64
  reasonrl plot runs/grpo-...
  reasonrl spectrum student --modules mlp.down_proj   alpha of every weight matrix; ESD plots of chosen ones
  reasonrl pretrain --size tiny optim.weight_decay_schedule=alphadecay   tiny LM on the World English Bible
  reasonrl discover --problem duffing method=stride budget=100      equation discovery (docs/discover.md)
  reasonrl discover --data DIR backend=openai:http://127.0.0.1:8000/v1 backend_options.model=NAME
  reasonrl control train env.id=Pendulum-v1 train.steps=10000      SAC (needs pip install 'reasonrl[control]')
  reasonrl control train env.id=metaworld:reach-v3 pref.enabled=true pref.teacher.name=mistake   PEBBLE
  reasonrl control eval runs/control-Pendulum-v1-...               deterministic return of the latest checkpoint
  reasonrl control collect medium --policy RUN --output data/hopper-medium.npz     an offline dataset (docs/control.md)
  reasonrl control train algo=dtr env.id=Hopper-v5 data.path=data/hopper-medium.npz pref.enabled=true   DTR
"""

# Short flags of each command -> the config key each one sets (argparse dest -> dotted key).
ALIASES = {
    "eval": {
        "model": "model.path",
        "data": "data.eval",
        "n": "data.eval_n",
        "levels": "data.eval_levels",
        "max_new_tokens": "rollout.eval_max_completion_length",
        "prompt_field": "data.prompt_field",
        "answer_field": "data.answer_field",
        "dtype": "model.dtype",
        "device": "model.device",
        "seed": "data.seed",
    },
    "pretrain": {
        "size": "algo.size",
        "vocab_size": "algo.vocab_size",
        "seq_len": "algo.seq_len",
        "batch_size": "algo.batch_size",
        "corpus_chars": "algo.corpus_chars",
    },
}
# The first eval metric that a run logs of these is its headline, the last line printed, for a person: before ->
# after, the change and the eval size.
HEADLINES = (
    ("accuracy", "eval accuracy{size}: {before:.1%} -> {after:.1%} ({change:+.1f} points)"),
    ("perplexity", "held-out perplexity{size}: {before:.1f} -> {after:.1f}"),
)


def _config(args, overrides: list[str], config_path: str | None, base=None):
    """The command's config: `base`, the YAML file, then its flags' aliases, then `key=value` overrides."""
    import reasonrl.algos  # noqa: F401  (the algorithms register their config sections)
    from reasonrl.config import load_config

    aliases = ALIASES.get(args.command, {})
    flags = [f"{key}={getattr(args, dest)}" for dest, key in aliases.items() if getattr(args, dest) is not None]
    return load_config(config_path, flags + overrides, base=base)


def _run_training(args, algo: str | None) -> int:
    from reasonrl.trainer import Trainer

    overrides = list(args.overrides)
    if algo and not any(o.startswith(("algo=", "algo.name=")) for o in overrides):
        overrides.insert(0, f"algo={algo}")
    if getattr(args, "replay", None):
        recorded = Path(args.replay) / "rollouts" if (Path(args.replay) / "rollouts").is_dir() else Path(args.replay)
        overrides += ["rollout.engine=replay", f"rollout.replay_dir={recorded}"]
    config_path = args.config
    if args.resume and not config_path:
        config_path = str(Path(args.resume) / "config.yaml")
    # `reasonrl train` alone (no --config, no algo=) is the main job: configs/grpo.yaml's settings (config.MAIN_JOB).
    main_job = (
        args.command == "train"
        and not config_path
        and not any(o.startswith(("algo=", "algo.name=")) for o in overrides)
    )
    base = None
    if main_job:
        from reasonrl.config import main_job_config

        base = main_job_config()
    elif args.command == "pretrain":
        from reasonrl.algos.pretrain import pretrain_config

        base = pretrain_config()
    config = _config(args, overrides, config_path, base)
    if args.quiet:
        config.train.progress = False
    trainer = Trainer(config, run_dir=args.resume or args.output_dir, resume=bool(args.resume))
    try:
        final = trainer.train()
    finally:
        trainer.parallel.shutdown()
    if not trainer.is_main:  # under torchrun, rank 0 reports
        return 0
    from reasonrl.tracking import read_metrics

    summary = {"run_dir": str(trainer.run_dir)}
    if trainer.stopped_at is not None:  # SIGTERM / SIGINT: a checkpoint of this step was saved; exit 0
        print(
            f"reasonrl {args.command}: stopped by signal after step {trainer.stopped_at} (checkpoint saved); "
            f"continue with: reasonrl {args.command} --resume {trainer.run_dir}",
            file=sys.stderr,
        )
        print(json.dumps({**summary, "stopped_at_step": trainer.stopped_at}))
        return 0
    rows, headline = read_metrics(trainer.run_dir), None
    for key, line in HEADLINES:
        records = [r for r in rows if f"eval/{key}" in r]
        if records:
            before, after = records[0][f"eval/{key}"], records[-1][f"eval/{key}"]
            summary[f"{key}_before"], summary[f"{key}_after"] = before, after
            summary.update({k.removeprefix("eval/"): v for k, v in final.items()})
            size = f" on {records[-1]['eval/n']:.0f} held-out problems" if "eval/n" in records[-1] else ""
            change = 100 * (after - before)
            headline = (
                f"{line.format(size=size, before=before, after=after, change=change)}; run directory: {trainer.run_dir}"
            )
            break
    if args.export:
        export = Path(args.export)
        tmp = export.with_name(export.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(trainer.run_dir / "final", tmp)
        shutil.rmtree(export, ignore_errors=True)
        tmp.rename(export)
        summary["exported"] = str(export)
    print(json.dumps(summary))
    if headline:  # the last line, for a person: before -> after and the eval size
        print(headline)
    return 0


def eval_defaults():
    """`reasonrl eval`'s base config: completions of up to 128 tokens (training's eval default is shorter)."""
    from reasonrl.config import Config, RolloutConfig

    return Config(rollout=RolloutConfig(eval_max_completion_length=128))


def _run_eval(args) -> int:
    from reasonrl.data import load_source, multi_turn_world, world_eval_metrics
    from reasonrl.evaluation import evaluate, evaluate_episodes
    from reasonrl.models import load_model, model_context
    from reasonrl.multimodal import is_multimodal
    from reasonrl.rollout.fast import FastEngine

    cfg = _config(args, list(args.overrides), args.config, eval_defaults())
    data, rollout = cfg.data, cfg.rollout
    examples = load_source(data.eval or data.train, data, "eval", data.eval_n)  # bad data fails before the model loads
    model, tokenizer = load_model(cfg.model.path, cfg.model.dtype, cfg.model.device)
    world = multi_turn_world(data.eval or data.train, data)
    if world is not None:  # a multi-turn world: greedy episodes
        metrics = evaluate_episodes(
            FastEngine(model, tokenizer),
            tokenizer,
            examples,
            world.make_env,
            rollout.turns,
            data.system_prompt,
            model_context(model),
            getattr(world, "episode_metrics", None),
        )
        print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        return 0
    processor = None
    if is_multimodal(model):
        from reasonrl.vision_models import processor_for

        processor = processor_for(cfg.model.path, tokenizer)
    metrics = evaluate(
        FastEngine(model, tokenizer),
        tokenizer,
        examples,
        rollout.eval_max_completion_length or rollout.max_completion_length,
        data.system_prompt,
        context=model_context(model),
        processor=processor,
        world_metrics=world_eval_metrics(data.eval or data.train, data),
    )
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


def _run_plot(args) -> int:
    from reasonrl.plot import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0


def _run_spectrum(args) -> int:
    from reasonrl.spectral import analyze_path
    from reasonrl.spectral.report import print_table, write_report

    rows = analyze_path(args.model, device=args.device, min_eigs=args.min_eigs, xmin_pos=args.xmin_pos)
    print_table(rows, title=args.model)
    out = args.out or Path("runs") / f"spectrum-{Path(args.model).name}"
    for path in write_report(rows, out, args.modules, title=args.model):
        print(path)
    return 0


def _run_discover(args) -> int:
    from reasonrl.discover import run

    if args.data and args.problem:
        raise ValueError("give --data DIR or --problem NAME, not both")
    problem = args.data or (args.problem and f"sr:{args.problem.removeprefix('sr:')}")
    options = _pairs(args.overrides) | ({"progress": "false"} if args.quiet else {})
    summary = run(problem, args.resume or args.output_dir, bool(args.resume), args.config, **options)
    print(json.dumps(summary))
    return 0


def _run_control(args) -> int:
    from reasonrl.control.envs import require_gymnasium

    try:
        require_gymnasium()  # the extra: fail here with the install command, not deep inside a run
    except ImportError as e:
        print(f"reasonrl control: error: {e}", file=sys.stderr)
        return 2
    from reasonrl.control.config import OFFLINE_ALGOS, load_control_config
    from reasonrl.control.loop import ControlRun, default_run_dir
    from reasonrl.control.offline_loop import OfflineRun

    if args.action == "collect":
        return _control_collect(args)
    run_dir = args.resume if args.action == "train" else args.run_dir
    config_path = args.config or (str(Path(run_dir) / "config.yaml") if run_dir else None)
    cfg = load_control_config(config_path, args.overrides)
    run_class = OfflineRun if cfg.algo in OFFLINE_ALGOS else ControlRun  # one interface: train, evaluate, step
    if args.action == "eval":
        run = run_class(cfg, run_dir, resume=True, track=False)
        print(json.dumps({"run_dir": str(run_dir), "step": run.step, **run.evaluate(args.episodes)}))
        return 0
    if args.quiet:
        cfg.train.progress = False
    run = run_class(cfg, args.resume or args.output_dir or default_run_dir(cfg), resume=bool(args.resume))
    final = run.train()
    if run.stopped_at is not None:
        print(
            f"reasonrl control: stopped by signal after step {run.stopped_at} (checkpoint saved); "
            f"continue with: reasonrl control train --resume {run.run_dir}",
            file=sys.stderr,
        )
    summary = {"run_dir": str(run.run_dir), "steps": run.step, "feedback": run.feedback}
    print(json.dumps({**summary, **({"stopped_at_step": run.stopped_at} if run.stopped_at is not None else final)}))
    return 0


def _control_collect(args) -> int:
    from reasonrl.control.collect import collect, save_dataset
    from reasonrl.control.offline_data import dataset_summary

    dataset = collect(
        args.level, args.steps, args.policy, args.expert, args.env, args.noise, args.deterministic, args.seed
    )
    path = save_dataset(dataset, args.output, args.level)
    print(json.dumps({"path": str(path), "level": args.level, **dataset_summary(dataset)}))
    return 0


def _pairs(overrides: list[str]) -> dict[str, str]:
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"malformed override {item!r}; expected key=value")
        pairs[key.strip()] = value
    return pairs


def _add_run_options(p: argparse.ArgumentParser, config_help: str = "YAML config file") -> None:
    """What every training command takes: a config, overrides, a run directory, resume and export."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest valid checkpoint")
    p.add_argument("--output-dir", help="run directory (default: runs/ALGO-TIME)")
    p.add_argument("--export", metavar="DIR", help="copy the final model folder here when done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. algo.beta=0.01")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reasonrl",
        description=__doc__,
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "RL training (GRPO family by default)"),
        ("sft", "supervised fine-tuning on demonstrations"),
    ):
        p = sub.add_parser(name, help=help_text)
        _add_run_options(p)
        p.add_argument(
            "--replay",
            metavar="DIR",
            help="train on rollouts recorded with rollout.save_rollouts=true "
            "(RUN_DIR or RUN_DIR/rollouts) instead of generating",
        )
    # Short flags default to None: only a flag given sets its config key (ALIASES), so the config's value stands.
    p = sub.add_parser("eval", help="greedy accuracy of a model on a dataset; last line is JSON")
    p.add_argument("--config", help="YAML config file (model, data and rollout sections)")
    p.add_argument("--model", help="model.path: model directory or shipped name (default: student)")
    p.add_argument(
        "--data",
        help="data.eval: world:arith | world:kb | FILE.jsonl | reasoning_gym:NAME (default: data.train); a QA file "
        "with data.retriever.corpus=... or url=... plays search episodes (docs/kb.md)",
    )
    p.add_argument("--n", type=int, help="data.eval_n: examples per level (worlds) or in total (default: 50)")
    p.add_argument("--levels", help="data.eval_levels: comma-separated world levels, e.g. 1,2,3")
    p.add_argument("--max-new-tokens", type=int, help="rollout.eval_max_completion_length (default: 128)")
    p.add_argument("--prompt-field", help="data.prompt_field")
    p.add_argument("--answer-field", help="data.answer_field")
    p.add_argument("--dtype", help="model.dtype")
    p.add_argument("--device", help="model.device")
    p.add_argument("--seed", type=int, help="data.seed")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.prompt_field=question"
    )
    p = sub.add_parser("plot", help="PNG learning curves of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default: RUN_DIR/plots)")
    p = sub.add_parser("spectrum", help="HT-SR alpha of every weight matrix: a table, spectrum.json and PNGs")
    p.add_argument("model", help="model directory or shipped name (student, teacher)")
    p.add_argument("--out", help="output folder (default: runs/spectrum-NAME)")
    p.add_argument(
        "--modules",
        nargs="*",
        default=[],
        metavar="SUBSTRING",
        help="ESD plots for modules whose name contains one of these (default: lowest and highest alpha)",
    )
    p.add_argument("--min-eigs", type=int, default=50, help="modules with fewer eigenvalues are reported, not fitted")
    p.add_argument("--xmin-pos", type=float, default=2, help="median Hill: x_min at eigenvalue index N/xmin_pos")
    p.add_argument("--device", default="auto")
    p = sub.add_parser(
        "pretrain", help="pretrain a tiny Llama on the World English Bible (algo=pretrain); held-out perplexity"
    )
    _add_run_options(p, "YAML config file (pretraining defaults otherwise: lr 3e-3 cosine, 1000 steps)")
    p.add_argument("--size", help="algo.size: tiny model size nano, tiny or small (default: tiny)")
    p.add_argument("--vocab-size", type=int, help="algo.vocab_size: byte-level BPE trained on the training split")
    p.add_argument("--seq-len", type=int, help="algo.seq_len: tokens per window (default: 128)")
    p.add_argument("--batch-size", type=int, help="algo.batch_size: windows per optimizer step (default: 16)")
    p.add_argument("--corpus-chars", type=int, help="algo.corpus_chars: only the first N characters (0: all)")
    p = sub.add_parser(
        "discover",
        help="equation discovery with LLM-SR or STRIDE on a data folder or an embedded problem; last line is JSON",
    )
    p.add_argument(
        "--data", help="data folder: train.csv, test_id.csv, test_ood.csv (last column the target), spec.yaml"
    )
    p.add_argument("--problem", help="embedded sr problem: duffing, vanderpol, forced, logistic, gompertz, monod, ...")
    p.add_argument("--config", help="YAML file of discover options")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--output-dir", help="run directory (default: runs/discover-METHOD-PROBLEM-TIME)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="options, e.g. method=llmsr budget=200 critic=false"
    )
    p = sub.add_parser("control", help="SAC, PEBBLE, DTR on gymnasium, MuJoCo and MetaWorld (the control extra)")
    actions = p.add_subparsers(dest="action", required=True)
    t = actions.add_parser(
        "train", help="train SAC, PEBBLE (pref.enabled=true) or offline algo=dtr|dt|iql; last line is JSON"
    )
    t.add_argument("--config", help="YAML file of control options (docs/control.md)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest valid checkpoint")
    t.add_argument("--output-dir", help="run directory (default: runs/control-ENV-TIME)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="options, e.g. sac.lr=1e-3 pref.enabled=true")
    e = actions.add_parser("eval", help="deterministic return of a run's latest checkpoint; last line is JSON")
    e.add_argument("run_dir")
    e.add_argument("--config", help="YAML file (default: RUN_DIR/config.yaml)")
    e.add_argument("--episodes", type=int, help="evaluation episodes (default: train.eval_episodes)")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="options, e.g. env.max_episode_steps=100")
    c = actions.add_parser("collect", help="an offline dataset from SAC runs at D4RL's levels; last line is JSON")
    c.add_argument("level", choices=["random", "medium", "expert", "medium-replay", "medium-expert"])
    c.add_argument("--policy", help="behaviour policy: a control run directory or its checkpoints/step_N")
    c.add_argument("--expert", help="medium-expert: the expert run (--policy is the medium one)")
    c.add_argument("--env", help="random: the gymnasium id (other levels take the policy's)")
    c.add_argument("--steps", type=int, default=100_000, help="transitions (not for medium-replay)")
    c.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise added to the policy's actions")
    c.add_argument("--deterministic", action="store_true", help="the policy's mean action instead of a sample")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--output", required=True, help="FILE.npz, or a directory that becomes a Minari dataset root")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`train --quiet a=1 --config f b=2`), so collect them from both.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("train", "sft", "pretrain"):
            return _run_training(args, None if args.command == "train" else args.command)
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "spectrum":
            return _run_spectrum(args)
        if args.command == "discover":
            return _run_discover(args)
        if args.command == "control":
            return _run_control(args)
        return _run_plot(args)
    except (ValueError, OSError, RuntimeError) as e:
        # Bad input, a missing file or a full disk gets one clear line, not a traceback to decode.
        print(f"reasonrl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
