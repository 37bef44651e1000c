"""The rollout-engine contract every engine meets (rollout/base.py): row layout, stopping, log-probs that are the
trainer's own at the sampling temperature, greedy decoding that is the trainer's argmax, and weight sync.

Runs against the HF and lean engines, and the vLLM server engine talking to a fake `vllm serve` (tests/fake_vllm.py)
that generates with the lean engine; the colocated vLLM engine joins when vLLM and a CUDA GPU are present (never in
CI here).
"""

import contextlib

import pytest
import torch
from fake_vllm import FakeVLLMServer

from reasonrl.algos.common import build_sequences
from reasonrl.modeling.logprobs import completion_logits
from reasonrl.models import encode_prompt, load_model
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.hf import HFEngine
from reasonrl.rollout.vllm_server import VLLMServerEngine

PROMPTS = ["Compute 3+4.", "Compute 12+30. Think step by step.", "Compute 25+61.", "7+8?"]


def vllm_engine(model, tok, cleanup: contextlib.ExitStack):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from reasonrl.models import resolve_model_path
    from reasonrl.rollout.vllm import VLLMEngine

    return VLLMEngine(model.cuda(), tok, str(resolve_model_path("student")), sleep=False)


def vllm_server_engine(model, tok, cleanup: contextlib.ExitStack):
    server = FakeVLLMServer(FastEngine(model, tok), tok)
    cleanup.callback(server.close)
    return VLLMServerEngine(server.url, tok)


# Each builds an engine on (model, tokenizer) and registers what must be shut down afterwards on the ExitStack.
ENGINES = {
    "hf": lambda model, tok, _: HFEngine(model, tok),
    "fast": lambda model, tok, _: FastEngine(model, tok),
    "vllm": vllm_engine,
    "vllm-server": vllm_server_engine,
}
# How far an engine's log-probs may be from the trainer's: ours run the same float32 math (the fake server runs the
# lean engine); vLLM's kernels differ.
TOLERANCE = {"hf": 1e-4, "fast": 1e-4, "vllm": 5e-2, "vllm-server": 1e-4}


@pytest.fixture(params=sorted(ENGINES))
def setup(request):
    model, tok = load_model("student", device="cpu")
    with contextlib.ExitStack() as cleanup:
        engine = ENGINES[request.param](model, tok, cleanup)
        prompts = [encode_prompt(tok, p) for p in PROMPTS]
        yield request.param, model, tok, engine, prompts


def trainer_logits(model, out) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The trainer's logits for every completion token of `out`, the tokens, and their mask."""
    seq = build_sequences(out.prompt_ids, out.completion_ids, 0)
    with torch.no_grad():
        logits = completion_logits(model, seq).cpu()
    return logits, seq["input_ids"][:, -logits.shape[1] :], seq["completion_mask"].bool()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rows_stopping_and_logprobs(setup, temperature):
    name, model, tok, engine, prompts = setup
    torch.manual_seed(0)
    params = SamplingParams(max_new_tokens=24, temperature=temperature)
    out = engine.generate(prompts, 3, params)
    assert len(out) == 12 and out.group == [g for g in range(4) for _ in range(3)]
    assert out.prompt_ids == [p for p in prompts for _ in range(3)]
    assert any(out.finished) and not all(out.finished)  # both ways of ending are exercised
    for ids, logprobs, finished in zip(out.completion_ids, out.logprobs, out.finished):
        assert len(logprobs) == len(ids) and all(lp <= 0 for lp in logprobs)
        assert tok.eos_token_id not in ids[:-1]  # generation stops at the first EOS
        assert (ids[-1] == tok.eos_token_id) == finished
        assert finished or len(ids) == params.max_new_tokens
    logits, targets, mask = trainer_logits(model, out)
    theirs = (logits / temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ours = torch.zeros_like(theirs)
    for i, lp in enumerate(out.logprobs):
        ours[i, : len(lp)] = torch.tensor(lp)
    assert float((ours - theirs)[mask].abs().max()) < TOLERANCE[name]


def test_greedy_is_the_trainers_argmax_and_follows_synced_weights(setup):
    name, model, _, engine, prompts = setup
    greedy = SamplingParams(max_new_tokens=24, greedy=True)

    def check_greedy():
        out = engine.generate(prompts, 1, greedy)
        assert (
            all(lp == [] for lp in out.logprobs)
            and out.completion_ids == engine.generate(prompts, 1, greedy).completion_ids
        )
        logits, targets, mask = trainer_logits(model, out)
        top2 = logits.topk(2, -1).values
        chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        # each token is the trainer's argmax (up to near-ties, where float rounding may pick either)
        assert bool(((chosen >= top2[..., 0] - 1e-4) | (top2[..., 0] - top2[..., 1] < 1e-4))[mask].all())
        return out.completion_ids

    before = check_greedy()
    if name == "vllm-server":
        pytest.skip(
            "the fake server generates with the trainer's own model object, so following synced weights "
            "would prove nothing; the real push needs NCCL and a CUDA GPU"
        )
    with torch.no_grad():  # a training update, as far as the engine can tell
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05 * p.abs().mean())
    engine.sync_weights(model)
    after = check_greedy()
    assert after != before  # the engine generates from the new weights, not a stale copy
