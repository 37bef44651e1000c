"""The lean decoder must sample exactly what the HF model would: same greedy tokens, same log-probs, any variant."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from reasonrl.algos.common import build_sequences, pad_values
from reasonrl.modeling.decoder import unsupported_reason
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.models import arith_tokenizer, encode_prompt, load_model
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine, sample
from reasonrl.rollout.hf import HFEngine
from reasonrl.trainer import Trainer

SMALL = dict(
    vocab_size=321,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
VARIANTS = {
    "llama": lambda: LlamaConfig(**SMALL),
    "llama-mha-untied": lambda: LlamaConfig(**{**SMALL, "num_key_value_heads": 4}, tie_word_embeddings=False),
    "llama-biases": lambda: LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True),
    "llama3-rope": lambda: LlamaConfig(
        **SMALL,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "qwen2-bias": lambda: Qwen2Config(**SMALL),
    "qwen3-qk-norm": lambda: Qwen3Config(**SMALL, head_dim=16),
    "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
}
PROMPTS = ["Compute 3+4.", "Compute 12+30. Think step by step.", "Compute 7*8.", "hi"]


def random_model(config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger weights than the init, so greedy paths are varied and long
        for name, p in model.named_parameters():
            p.mul_(4.0)
            if name.endswith(".bias"):  # initialised to zero: make them matter, so a dropped bias shows
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return arith_tokenizer()


def prompt_ids(tokenizer):
    return [encode_prompt(tokenizer, p) for p in PROMPTS]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_tokens_match_hf_generate(variant, tokenizer):
    model = random_model(VARIANTS[variant]())
    assert unsupported_reason(model, 64) is None
    params = SamplingParams(max_new_tokens=24, greedy=True)
    ours = FastEngine(model, tokenizer).generate(prompt_ids(tokenizer), 1, params)
    theirs = HFEngine(model, tokenizer).generate(prompt_ids(tokenizer), 1, params)
    assert ours.completion_ids == theirs.completion_ids
    assert ours.finished == theirs.finished


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sampled_logprobs_equal_the_training_forward(variant, tokenizer):
    model = random_model(VARIANTS[variant]())
    torch.manual_seed(1)
    out = FastEngine(model, tokenizer).generate(
        prompt_ids(tokenizer), 3, SamplingParams(max_new_tokens=20, temperature=0.7)
    )
    seq = build_sequences(out.prompt_ids, out.completion_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        train_logp, _ = completion_logprobs(model, seq, temperature=0.7)
    sampled = pad_values(out.logprobs, train_logp.shape[1])
    mask = seq["completion_mask"]
    assert float(((train_logp - sampled).abs() * mask).max()) < 1e-4


@pytest.mark.parametrize("variant", ["llama-biases", "qwen2-bias", "qwen3-qk-norm"])
def test_unfused_projections_match_the_fused_ones(variant, tokenizer, monkeypatch):
    """Large models keep q/k/v and gate/up separate (no weight copies); the tokens must not change."""
    import reasonrl.modeling.decoder as decoder

    model = random_model(VARIANTS[variant]())
    params = SamplingParams(max_new_tokens=24, greedy=True)
    fused = FastEngine(model, tokenizer).generate(prompt_ids(tokenizer), 1, params)
    monkeypatch.setattr(decoder, "FUSE_BELOW_PARAMS", 0)
    assert len(decoder.Decoder(model).layers[0].qkv) == 3
    unfused = FastEngine(model, tokenizer).generate(prompt_ids(tokenizer), 1, params)
    assert unfused.completion_ids == fused.completion_ids
    assert (
        unfused.completion_ids == HFEngine(model, tokenizer).generate(prompt_ids(tokenizer), 1, params).completion_ids
    )


def test_compaction_changes_nothing(tokenizer):
    """Dropping finished rows from the batch (compact_below=1) gives the same greedy tokens as never dropping."""
    model, tok = load_model("student")
    prompts = [
        encode_prompt(tok, f"Compute {a}+{b}. Put the final answer in \\boxed{{}}.")
        for a, b in [(1, 2), (13, 29), (5, 5), (47, 38), (9, 1), (60, 21)]
    ]
    params = SamplingParams(max_new_tokens=48, greedy=True)
    eager, never = FastEngine(model, tok, compact_below=1.0), FastEngine(model, tok, compact_below=0.0)
    a, b = eager.generate(prompts, 1, params), never.generate(prompts, 1, params)
    assert a.completion_ids == b.completion_ids
    assert len({len(c) for c in a.completion_ids}) > 1  # rows really finished at different steps
    assert a.completion_ids == HFEngine(model, tok).generate(prompts, 1, params).completion_ids


def test_generation_stops_when_every_row_has_finished(tokenizer):
    model, tok = load_model("student")
    engine = FastEngine(model, tok)
    prompts = [encode_prompt(tok, "Compute 2+3. Put the final answer in \\boxed{}.")]
    out = engine.generate(prompts, 1, SamplingParams(max_new_tokens=200, greedy=True))
    assert out.finished == [True]
    assert engine.decode_calls == len(out.completion_ids[0])  # prefill + one call per token but the last


def test_unsupported_models_fall_back_to_hf_generate(tokenizer):
    config = GPT2Config(vocab_size=321, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = random_model(config)
    assert "gpt2" in unsupported_reason(model, 64)
    engine = FastEngine(model, tokenizer)
    out = engine.generate(prompt_ids(tokenizer), 1, SamplingParams(max_new_tokens=8, greedy=True))
    assert engine.decode_calls == 0
    assert (
        out.completion_ids
        == HFEngine(model, tokenizer)
        .generate(prompt_ids(tokenizer), 1, SamplingParams(max_new_tokens=8, greedy=True))
        .completion_ids
    )


def test_sliding_window_shorter_than_the_sequence_is_unsupported():
    model = random_model(MistralConfig(**SMALL, sliding_window=16))
    assert "sliding window" in unsupported_reason(model, 64)
    assert unsupported_reason(model, 16) is None


def test_sampler_matches_the_distribution_and_its_filters():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40000, 4).contiguous()
    tokens, logp = sample(logits, SamplingParams(temperature=1.0))
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, probs, atol=0.01)
    assert torch.allclose(logp, probs.log()[tokens], atol=1e-6)  # log-probs are of the unfiltered distribution
    top2, _ = sample(logits[:2000], SamplingParams(top_k=2))
    assert set(top2.tolist()) == {0, 1}
    nucleus, _ = sample(logits[:2000], SamplingParams(top_p=0.7))  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops
    assert set(nucleus.tolist()) == {0, 1}
    only_top, _ = sample(logits[:500], SamplingParams(top_p=0.4))
    assert set(only_top.tolist()) == {0}
    cold, _ = sample(logits[:2000], SamplingParams(temperature=0.25))  # p^4: 0.5 -> ~0.87 of the mass
    assert 0.82 < float((cold == 0).float().mean()) < 0.92
    greedy, none = sample(logits[:3], SamplingParams(greedy=True))
    assert greedy.tolist() == [0, 0, 0] and none is None


def test_a_grpo_step_runs_the_model_only_for_the_loss(quick_config, tmp_path, monkeypatch):
    """Regression guard, not timed: generation never goes through HF forward; the update runs one training forward
    per micro-batch (the shared-prefix one for this Llama); the decoder runs once per generated position at most."""
    import reasonrl.modeling.logprobs as logprobs

    cfg = quick_config("rewards.funcs=format:1.0", "train.micro_batch_size=4", "train.prompts_per_step=2")
    trainer = Trainer(cfg, run_dir=tmp_path / "guard")
    assert isinstance(trainer.ctx.engine, FastEngine)
    calls, shared = [], []
    original, original_shared = trainer.model.forward, logprobs.shared_prefix_logits
    monkeypatch.setattr(trainer.model, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(logprobs, "shared_prefix_logits", lambda *a: shared.append(1) or original_shared(*a))
    batch = trainer.algo.gather(trainer.ctx)
    assert calls == [] and shared == []
    assert 1 <= trainer.ctx.engine.decode_calls <= cfg.rollout.max_completion_length
    trainer._update(batch)
    assert calls == [] and len(shared) == 2  # 8 rows in micro-batches of 4


@pytest.mark.parametrize("engine", [HFEngine, FastEngine])
def test_top_k_zero_samples_the_whole_vocabulary(engine, tokenizer):
    """generate() silently applies top-k 50 unless told otherwise; both engines must sample every token."""
    model = random_model(LlamaConfig(**SMALL))
    with torch.no_grad():
        for p in model.parameters():
            p.div_(16.0)  # near-uniform next-token distribution
    torch.manual_seed(0)
    out = engine(model, tokenizer).generate(prompt_ids(tokenizer)[:1], 3000, SamplingParams(max_new_tokens=1))
    assert len({c[0] for c in out.completion_ids}) > 250
