"""Command line: `reasonrl train | sft | eval | plot | spectrum | pretrain`. Thin: parse arguments, then call the library."""

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
  reasonrl plot runs/grpo-...
  reasonrl spectrum student --modules mlp.down_proj   alpha of every weight matrix; ESD plots of chosen ones
  reasonrl pretrain --size tiny optim.weight_decay_schedule=alphadecay   tiny LM on the World English Bible
"""


def _run_training(args, algo: str | None) -> int:
    from reasonrl.config import load_config, main_job_config
    from reasonrl.trainer import Trainer

    overrides = list(args.overrides)
    if algo and not any(o.startswith(("algo=", "algo.name=")) for o in overrides):
        overrides.insert(0, f"algo={algo}")
    if args.replay:
        recorded = Path(args.replay) / "rollouts" if (Path(args.replay) / "rollouts").is_dir() else Path(args.replay)
        overrides += ["rollout.engine=replay", f"rollout.replay_dir={recorded}"]
    config_path = args.config
    if args.resume and not config_path:
        config_path = str(Path(args.resume) / "config.yaml")
    main_job = args.command == "train" and not config_path  # `reasonrl train` alone: the main job's settings
    config = load_config(config_path, overrides, base=main_job_config() if main_job else None)
    if args.quiet:
        config.train.progress = False
    trainer = Trainer(config, run_dir=args.resume or args.output_dir, resume=bool(args.resume))
    try:
        final = trainer.train()
    finally:
        from reasonrl.distributed import shutdown

        shutdown()
    if not trainer.is_main:  # under torchrun, rank 0 reports
        return 0
    from reasonrl.tracking import read_metrics

    records = [r for r in read_metrics(trainer.run_dir) if "eval/accuracy" in r]
    summary = {"run_dir": str(trainer.run_dir)}
    if trainer.stopped_at is not None:  # SIGTERM / SIGINT: a checkpoint of this step was saved; exit 0
        print(f"reasonrl {args.command}: stopped by signal after step {trainer.stopped_at} (checkpoint saved); "
              f"continue with: reasonrl {args.command} --resume {trainer.run_dir}", file=sys.stderr)
        print(json.dumps({**summary, "stopped_at_step": trainer.stopped_at}))
        return 0
    headline = None
    if records:
        summary["accuracy_before"] = records[0]["eval/accuracy"]
        summary["accuracy_after"] = records[-1]["eval/accuracy"]
        summary.update({k.removeprefix("eval/"): v for k, v in final.items()})
        before, after = summary["accuracy_before"], summary["accuracy_after"]
        size = f" on {records[-1]['eval/n']:.0f} held-out problems" if "eval/n" in records[-1] else ""
        headline = (f"eval accuracy{size}: {before:.1%} -> {after:.1%} ({100 * (after - before):+.1f} points; "
                    f"run directory: {trainer.run_dir})")
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


def _run_eval(args) -> int:
    from reasonrl.config import DataConfig
    from reasonrl.data import load_source
    from reasonrl.evaluation import evaluate
    from reasonrl.models import load_model, model_context
    from reasonrl.rollout.fast import FastEngine

    levels = [int(x) for x in args.levels.split(",")] if args.levels else [1, 2, 3]
    data_cfg = DataConfig(levels=levels, eval_levels=levels, eval_n=args.n, seed=args.seed,
                          prompt_field=args.prompt_field, answer_field=args.answer_field)
    examples = load_source(args.data, data_cfg, "eval", args.n)  # bad data fails before the model loads
    model, tokenizer = load_model(args.model, args.dtype, args.device)
    metrics = evaluate(FastEngine(model, tokenizer), tokenizer, examples, args.max_new_tokens,
                       context=model_context(model))
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


def _run_pretrain(args) -> int:
    from reasonrl.config import load_config
    from reasonrl.pretrain import PretrainOptions, pretrain, pretrain_config

    opts = PretrainOptions(size=args.size, vocab_size=args.vocab_size, seq_len=args.seq_len,
                           batch_size=args.batch_size, corpus_chars=args.corpus_chars)
    config = load_config(args.config, args.overrides, base=pretrain_config())
    if args.quiet:
        config.train.progress = False
    summary = pretrain(config, opts, args.output_dir)
    print(f"held-out perplexity: {summary['perplexity_before']:.1f} before, {summary['perplexity_after']:.1f} after "
          f"(run directory: {summary['run_dir']})")
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonrl", description=__doc__, epilog=USAGE_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "RL training (GRPO family by default)"), ("sft", "supervised fine-tuning on demonstrations")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config file")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest valid checkpoint")
        p.add_argument("--output-dir", help="run directory (default: runs/ALGO-TIME)")
        p.add_argument("--export", metavar="DIR", help="copy the final model folder here when done")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--replay", metavar="DIR", help="train on rollouts recorded with rollout.save_rollouts=true "
                       "(RUN_DIR or RUN_DIR/rollouts) instead of generating")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. algo.beta=0.01")
    p = sub.add_parser("eval", help="greedy accuracy of a model on a dataset; last line is JSON")
    p.add_argument("--model", default="student", help="model directory or shipped name (student, teacher)")
    p.add_argument("--data", default="world:arith", help="world:arith | FILE.jsonl | reasoning_gym:NAME")
    p.add_argument("--n", type=int, default=50, help="examples per level (worlds) or in total")
    p.add_argument("--levels", help="comma-separated world levels, e.g. 1,2,3")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("plot", help="PNG learning curves of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default: RUN_DIR/plots)")
    p = sub.add_parser("spectrum", help="HT-SR alpha of every weight matrix: a table, spectrum.json and PNGs")
    p.add_argument("model", help="model directory or shipped name (student, teacher)")
    p.add_argument("--out", help="output folder (default: runs/spectrum-NAME)")
    p.add_argument("--modules", nargs="*", default=[], metavar="SUBSTRING",
                   help="ESD plots for modules whose name contains one of these (default: lowest and highest alpha)")
    p.add_argument("--min-eigs", type=int, default=50, help="modules with fewer eigenvalues are reported, not fitted")
    p.add_argument("--xmin-pos", type=float, default=2, help="median Hill: x_min at eigenvalue index N/xmin_pos")
    p.add_argument("--device", default="auto")
    p = sub.add_parser("pretrain", help="pretrain a tiny Llama on the World English Bible; held-out perplexity")
    p.add_argument("--config", help="YAML config file (optim and train sections; pretraining defaults otherwise)")
    p.add_argument("--output-dir", help="run directory (default: runs/pretrain-TIME)")
    p.add_argument("--size", default="tiny", help="tiny model size: nano, tiny or small")
    p.add_argument("--vocab-size", type=int, default=2048, help="byte-level BPE trained on the training split")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    p.add_argument("--corpus-chars", type=int, default=0, help="use only the first N characters (0: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=2000 optim.lr_schedule=llr")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`train --quiet a=1 --config f b=2`), so collect them from both.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or args.command not in ("train", "sft", "pretrain")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("train", "sft"):
            return _run_training(args, "sft" if args.command == "sft" else None)
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "spectrum":
            return _run_spectrum(args)
        if args.command == "pretrain":
            return _run_pretrain(args)
        return _run_plot(args)
    except (ValueError, OSError, RuntimeError) as e:
        # Bad input, a missing file or a full disk gets one clear line, not a traceback to decode.
        print(f"reasonrl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
