"""LoRA through PEFT: only adapters train, the engines and the training forward see exactly the adapted model, the
merged export generates what the adapted model does, and adapter-only checkpoints resume exactly."""

import shutil

import pytest
import torch
from test_shared_prefix import groups_batch, hf_logits

from reasonrl.algos.common import build_sequences, pad_values
from reasonrl.checkpoint import CheckpointError, load_checkpoint
from reasonrl.config import LoRAConfig, load_config
from reasonrl.lora import apply_lora, quantization_config
from reasonrl.modeling.decoder import unsupported_reason
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.modeling.shared_prefix import fallback_reason, shared_prefix_logits
from reasonrl.models import encode_prompt, load_model
from reasonrl.rewards import register_reward
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.hf import HFEngine
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer

pytest.importorskip("peft")  # the `lora` extra (also in `test`)

PROMPTS = [f"Compute {a}+{b}. Put the final answer in \\boxed{{}}." for a, b in [(3, 4), (12, 30), (7, 8), (25, 61)]]


@register_reward("lora_test_digit_share")
def digit_share(prompts, completions, **kwargs):
    """Dense, so every group has reward spread and GRPO moves the adapters from the first step."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def run_config(run_dir, *extra):
    return load_config(
        None,
        [
            "model.path=student",
            "model.device=cpu",
            "model.lora.r=8",
            "rewards.funcs=lora_test_digit_share:1.0",
            "rollout.num_generations=4",
            "rollout.max_completion_length=16",
            "train.prompts_per_step=2",
            "train.micro_batch_size=16",
            "train.steps=3",
            "train.save_every=1",
            "train.keep_checkpoints=3",
            "data.eval_n=1",
            "optim.lr=1e-2",
            "optim.warmup_steps=0",
            "train.progress=false",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three GRPO steps of LoRA on the shipped student, a checkpoint after each."""
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    torch.manual_seed(0)
    trainer = Trainer(run_config(run_dir), run_dir=run_dir)
    trainer.train()
    return trainer


def adapted_student(seed: int = 0, **lora):
    """The student with LoRA adapters whose B is random (fresh adapters have B = 0 and change nothing)."""
    model, tok = load_model("student", device="cpu")
    model = apply_lora(model, LoRAConfig(**{"r": 8, **lora}))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return model, tok


def scored(model, out, temperature=1.0):
    """Log-probs of `out`'s completions under `model`'s own HF (for PEFT: unmerged) forward."""
    seq = build_sequences(out.prompt_ids, out.completion_ids, 0)
    model.reasonrl_forward = "hf"
    try:
        with torch.no_grad():
            logp, _ = completion_logprobs(model, seq, temperature)
    finally:
        del model.reasonrl_forward
    return logp * seq["completion_mask"]


def test_training_changes_only_the_adapters(run):
    base, _ = load_model("student", device="cpu")
    trained = dict(run.model.get_base_model().named_parameters())
    for name, weight in base.named_parameters():  # a LoRA layer keeps its frozen weight under `base_layer`
        stored = trained[name] if name in trained else trained[name.replace(".weight", ".base_layer.weight")]
        assert torch.equal(stored, weight), name
    adapters = {n: p for n, p in run.model.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_" in n for n in adapters)
    assert any(bool(p.detach().any()) for n, p in adapters.items() if "lora_B" in n)  # B starts at 0
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in adapters.values()}


def test_merged_export_generates_what_the_adapted_model_generates(run):
    adapted = run.model.eval()
    merged, tok = load_model(str(run.run_dir / "final"), device="cpu")  # final/ is a plain HF folder
    assert (run.run_dir / "final" / "adapter" / "adapter_config.json").is_file()
    assert (run.run_dir / "final" / "adapter" / "adapter_model.safetensors").is_file()
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    greedy = SamplingParams(max_new_tokens=32, greedy=True)
    peft_tokens = HFEngine(adapted, tok).generate(prompts, 1, greedy).completion_ids  # PEFT's own unmerged forward
    assert HFEngine(merged, tok).generate(prompts, 1, greedy).completion_ids == peft_tokens
    assert FastEngine(merged, tok).generate(prompts, 1, greedy).completion_ids == peft_tokens
    runs = []
    for model in (adapted, merged):
        torch.manual_seed(3)
        runs.append(FastEngine(model, tok).generate(prompts, 4, SamplingParams(max_new_tokens=32)))
    assert runs[0].completion_ids == runs[1].completion_ids
    theirs, ours = scored(adapted, runs[0]), scored(merged, runs[0])
    # x (W + s B A) against x W + s (x A) B: float32 rounding alone gives ~2e-5 (0 in float64)
    assert float((theirs - ours).abs().max()) < 1e-4
    base, _ = load_model("student", device="cpu")  # the adapter must matter, or the checks above prove nothing
    assert float((scored(base, runs[0]) - theirs).abs().max()) > 1e-2


@pytest.mark.parametrize("greedy", [True, False])
def test_fast_engine_samples_the_peft_model(greedy):
    model, tok = adapted_student()
    assert unsupported_reason(model, 64) is None
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=32, greedy=greedy)
    engine = FastEngine(model, tok)
    ours = engine.generate(prompts, 1 if greedy else 4, params)
    assert engine.decode_calls > 0  # the lean decoder ran, not the HF fallback
    if greedy:
        assert ours.completion_ids == HFEngine(model, tok).generate(prompts, 1, params).completion_ids
    else:
        theirs = scored(model.eval(), ours)
        sampled = pad_values(ours.logprobs, theirs.shape[1]) * (theirs != 0)
        assert float((theirs - sampled).abs().max()) < 1e-4


def test_shared_prefix_forward_gives_peft_logits_and_adapter_gradients():
    model, _ = adapted_student()
    model.train()
    assert fallback_reason(model) is None
    batch = groups_batch()
    mask = batch["completion_mask"].bool()
    weights = torch.randn(mask.shape)

    def grads(logits_fn):
        model.zero_grad(set_to_none=True)
        logits = logits_fn()
        (logits.log_softmax(-1).amax(-1) * weights * mask).sum().backward()
        return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    ids, attention = batch["input_ids"], batch["attention_mask"]
    ours, our_grads = grads(lambda: shared_prefix_logits(model, ids, attention, mask.shape[1]))
    theirs, their_grads = grads(lambda: hf_logits(model, batch))
    assert float((ours - theirs)[mask].abs().max()) < 1e-4 * float(theirs[mask].abs().max())
    assert set(our_grads) == set(their_grads) and all(".lora_" in n for n in their_grads)
    for name, g in their_grads.items():
        assert torch.allclose(our_grads[name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max())), name


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft reads a deprecated transformers attribute
def test_what_merged_weights_cannot_express_falls_back_to_peft():
    model, _ = adapted_student(dropout=0.1)
    assert "LoRA dropout" in fallback_reason(model.train())
    assert fallback_reason(model.eval()) is None  # generation has no dropout
    dora, _ = load_model("student", device="cpu")
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(dora, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert "variant" in unsupported_reason(dora, 64)


def test_adapter_checkpoint_is_small_and_resume_equals_the_uninterrupted_run(run, tmp_path):
    checkpoints = run.run_dir / "checkpoints"
    adapter_bytes = (checkpoints / "step_000003" / "model.safetensors").stat().st_size
    full_bytes = (run.run_dir / "final" / "model.safetensors").stat().st_size
    assert adapter_bytes < full_bytes / 5
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(run.run_dir, resumed_dir, ignore=shutil.ignore_patterns("step_000003", "final"))
    resumed = Trainer(run_config(resumed_dir), run_dir=resumed_dir, resume=True)
    assert resumed.start_step == 2
    resumed.train()

    def comparable(run_dir):
        return [
            {k: v for k, v in r.items() if k != "step_time" and not k.startswith("time/")}
            for r in read_metrics(run_dir)
        ]

    assert comparable(resumed_dir) == comparable(run.run_dir)
    ours, theirs = dict(resumed.model.named_parameters()), dict(run.model.named_parameters())
    assert all(torch.equal(ours[n], p) for n, p in theirs.items())


def test_an_adapter_checkpoint_refuses_a_model_without_adapters(run):
    plain, _ = load_model("student", device="cpu")
    with pytest.raises(CheckpointError, match="LoRA adapter weights only"):
        load_checkpoint(run.run_dir / "checkpoints" / "step_000003", plain, None, None)


def test_qlora_without_cuda_or_bitsandbytes_is_one_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        Trainer(run_config(tmp_path / "run", "model.lora.quantize=4bit"), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install bitsandbytes"):
            quantization_config("4bit", torch.bfloat16, torch.device("cuda"))


def test_merged_state_dict_is_peft_merge_under_the_base_names():
    """What a weight-loading engine (vLLM) receives: the base model's names, the merged values, nothing of PEFT."""
    from reasonrl.lora import merged_state_dict

    model, _ = adapted_student()
    state = merged_state_dict(model)
    plain, _ = load_model("student", device="cpu")
    assert set(state) == set(plain.state_dict())  # lm_head tied to the embedding: one tensor, both names
    merged = model.merge_and_unload()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=1e-6)
    assert (
        float(
            (
                state["model.layers.0.self_attn.q_proj.weight"]
                - plain.state_dict()["model.layers.0.self_attn.q_proj.weight"]
            )
            .abs()
            .max()
        )
        > 1e-3
    )
