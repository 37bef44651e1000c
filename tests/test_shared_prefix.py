"""The shared-prefix training forward must give HF's logits and gradients, run each distinct prompt once, and step
aside whenever it cannot stand in for HF's forward exactly."""

import copy

import pytest
import torch
from test_fast_engine import SMALL, VARIANTS, random_model
from transformers import GPT2Config

import reasonrl.modeling.logprobs as logprobs
from reasonrl.algos.common import build_sequences
from reasonrl.modeling.decoder import Decoder
from reasonrl.modeling.logprobs import completion_logits, completion_logprobs
from reasonrl.modeling.shared_prefix import fallback_reason, shared_prefix_logits


def groups_batch(seed: int = 0, prompts: int = 3, per_prompt: int = 4, vocab: int = 321):
    """Rows in shuffled order: `per_prompt` completions of each of `prompts` prompts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    prompt_rows = [
        torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (prompts,), generator=g)
    ]
    rows = [
        (p, torch.randint(3, vocab, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist())
        for p in prompt_rows
        for _ in range(per_prompt)
    ]
    rows[0] = (
        rows[0][0],
        [0] + rows[0][1],
    )  # a sampled padding id is a real token (HF's embedding gives it no gradient)
    order = torch.randperm(len(rows), generator=g).tolist()
    return build_sequences([rows[i][0] for i in order], [rows[i][1] for i in order], pad_id=0)


def hf_logits(model, batch):
    model.reasonrl_forward = "hf"
    try:
        return completion_logits(model, batch)
    finally:
        del model.reasonrl_forward


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_gradients_equal_the_hf_forward(variant):
    """Measured against HF's forward in float64, our float32 logits and gradients are as close as HF's own float32
    ones (within 3x of HF's error, or 2e-5 of the largest value: the fused C kernels round differently, so the two
    float32 paths are not bit-identical, but neither may drift further from the exact result)."""
    model = random_model(VARIANTS[variant]()).train()
    exact = copy.deepcopy(model).double()
    assert fallback_reason(model) is None
    batch = groups_batch()
    mask = batch["completion_mask"].bool()
    weights = torch.randn(mask.shape)

    def grads(net, logits_fn):
        net.zero_grad()
        logits = logits_fn(net)
        (logits.log_softmax(-1).amax(-1) * weights.to(logits.dtype) * mask).sum().backward()
        return logits.detach().double(), {n: p.grad.double() for n, p in net.named_parameters()}

    def error(ours, truth):  # largest deviation relative to the largest exact value
        return float((ours - truth).abs().max() / truth.abs().max())

    truth, true_grads = grads(exact, lambda net: hf_logits(net, batch))
    hf, hf_grads = grads(model, lambda net: hf_logits(net, batch))
    ours, our_grads = grads(
        model, lambda net: shared_prefix_logits(net, batch["input_ids"], batch["attention_mask"], mask.shape[1])
    )
    assert error(ours[mask], truth[mask]) <= max(3 * error(hf[mask], truth[mask]), 2e-5)
    for name, g in true_grads.items():
        assert error(our_grads[name], g) <= max(3 * error(hf_grads[name], g), 2e-5), name


def test_each_distinct_prompt_runs_once(monkeypatch):
    model = random_model(VARIANTS["llama"]())
    batch = groups_batch(prompts=3, per_prompt=5)
    rows_seen = []
    original = Decoder.attention_inputs
    monkeypatch.setattr(
        Decoder, "attention_inputs", lambda self, w, x, *a: rows_seen.append(len(x)) or original(self, w, x, *a)
    )
    shared_prefix_logits(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"].shape[1])
    prompt_passes = rows_seen[::2]  # per layer: the prompt pass, then the completion pass
    assert prompt_passes == [3] * model.config.num_hidden_layers
    assert rows_seen[1::2] == [15] * model.config.num_hidden_layers


def test_prompts_are_the_same_when_their_real_tokens_are(monkeypatch):
    """A real token equal to the padding id ([0, 5, 6] with pad 0) is not padding: that prompt is distinct."""
    model = random_model(VARIANTS["llama"]())
    batch = build_sequences([[5, 6], [7, 5, 6], [5, 6], [0, 5, 6]], [[9, 9], [9], [8], [8, 8]], pad_id=0)
    rows_seen = []
    original = Decoder.attention_inputs
    monkeypatch.setattr(
        Decoder, "attention_inputs", lambda self, w, x, *a: rows_seen.append(len(x)) or original(self, w, x, *a)
    )
    ours = completion_logprobs(model, batch)[0]
    assert rows_seen[0] == 3
    model.reasonrl_forward = "hf"
    theirs = completion_logprobs(model, batch)[0]
    assert torch.allclose(ours * batch["completion_mask"], theirs * batch["completion_mask"], atol=1e-5)


def test_falls_back_where_it_would_differ_from_hf(monkeypatch):
    calls = []
    monkeypatch.setattr(logprobs, "shared_prefix_logits", lambda *a: calls.append(1))
    batch = groups_batch()
    gpt2 = random_model(GPT2Config(vocab_size=321, n_embd=32, n_layer=1, n_head=2, pad_token_id=0))
    assert "gpt2" in fallback_reason(gpt2)
    model = random_model(VARIANTS["llama"]()).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert "checkpointing" in fallback_reason(model)
    dropout = random_model(type(VARIANTS["llama"]())(**SMALL, attention_dropout=0.1)).train()
    assert "dropout" in fallback_reason(dropout)
    assert fallback_reason(dropout.eval()) is None  # dropout is inactive in eval mode
    for m in (gpt2, model, dropout.train()):
        completion_logits(m, batch)
    no_prompt = build_sequences([[], [4]], [[5, 6], [7]], pad_id=0)  # a row without a prompt token: HF's forward
    completion_logits(random_model(VARIANTS["llama"]()), no_prompt)
    assert calls == []
