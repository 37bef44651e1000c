"""The algorithm-blind trainer: exact gradient accumulation, dynamic sampling, resume, replay, bad input."""

import json
import math
import re

import pytest
import torch

from reasonrl.algos.base import TrainBatch
from reasonrl.rewards import RewardError, register_reward
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer, TrainingError


@register_reward("test_digits")
def digits_reward(prompts, completions, **kwargs):
    """A dense reward a random model can earn: the share of digit characters, so groups have variance."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


@register_reward("test_always_raises")
def always_raises(prompts, completions, **kwargs):
    raise RuntimeError("verifier exploded")


def grads_with_micro_batches(trainer: Trainer, batch: TrainBatch, size: int) -> list[torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    for micro in batch.micro_batches(size):
        loss, _ = trainer.algo.loss(trainer.ctx, micro)
        loss.backward()
    return [p.grad.clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_gradient_accumulation_4x2_equals_1x8(quick_config, tmp_path, loss_type):
    cfg = quick_config("rewards.funcs=test_digits:1.0", "train.prompts_per_step=2", f"algo.loss_type={loss_type}")
    trainer = Trainer(cfg, run_dir=tmp_path / "acc")
    batch = trainer.algo.gather(trainer.ctx)
    assert len(batch) == 8 and batch.tensors["advantages"].abs().sum() > 0
    whole = grads_with_micro_batches(trainer, batch, 8)
    split = grads_with_micro_batches(trainer, batch, 2)
    assert sum(g.abs().sum() for g in whole) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_kl_estimator_reaches_the_loss(quick_config, tmp_path):
    # On-policy r = 1, so k3 and k3_is give the same loss, but r's gradient adds k3 to each token's KL gradient.
    losses, grads = [], []
    for estimator in ("k3", "k3_is"):
        torch.manual_seed(0)
        cfg = quick_config(
            "rewards.funcs=test_digits:1.0",
            "train.prompts_per_step=2",
            "algo.beta=0.5",
            f"algo.kl_estimator={estimator}",
        )
        trainer = Trainer(cfg, run_dir=tmp_path / estimator)
        batch = trainer.algo.gather(trainer.ctx)
        batch.tensors["ref_logprobs"] -= 0.5  # a reference unlike the policy, so k3 > 0
        trainer.model.zero_grad(set_to_none=True)
        loss, _ = trainer.algo.loss(trainer.ctx, batch)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(trainer.model.model.embed_tokens.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert not torch.allclose(grads[0], grads[1], atol=1e-6)


def test_logged_learning_rate_is_the_one_each_step_used(quick_config, tmp_path):
    # warmup 2 of 4 steps, then cosine to 0: step k uses lr * (k / 3) while warming up, then 1 and cos(pi / 2)-half
    cfg = quick_config(
        "train.steps=4", "optim.lr=1e-3", "optim.warmup_steps=2", "optim.schedule=cosine", "data.eval_n=1"
    )
    Trainer(cfg, run_dir=tmp_path / "run").train()
    logged = [r["learning_rate"] for r in read_metrics(tmp_path / "run") if "learning_rate" in r]
    assert logged == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 0.5e-3])


def test_gradient_checkpointing_gives_the_same_gradients(quick_config, tmp_path):
    """model.gradient_checkpointing trades compute for memory and must not change the gradients."""
    cfg = quick_config("rewards.funcs=test_digits:1.0", "train.prompts_per_step=2")
    trainer = Trainer(cfg, run_dir=tmp_path / "plain")
    batch = trainer.algo.gather(trainer.ctx)
    plain = grads_with_micro_batches(trainer, batch, 8)
    trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert trainer.model.is_gradient_checkpointing
    checkpointed = grads_with_micro_batches(trainer, batch, 8)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    configured = Trainer(
        quick_config("rewards.funcs=test_digits:1.0", "model.gradient_checkpointing=true"), run_dir=tmp_path / "gc"
    )
    assert configured.model.is_gradient_checkpointing


def test_unscorable_completions_are_dropped_from_the_loss_but_counted_as_rows(quick_config, tmp_path):
    # A NaN reward (a failed check) zeroes the row's mask: it adds no token to the loss or to num_tokens, and its
    # advantage is 0; it still counts in num_seqs. TRL instead keeps such rows in the loss with advantage 0.
    @register_reward("test_every_other_nan")
    def every_other_nan(prompts, completions, **kwargs):
        return [math.nan if i % 2 else 0.1 * i for i in range(len(completions))]

    trainer = Trainer(quick_config("rewards.funcs=test_every_other_nan:1.0"), run_dir=tmp_path / "nan_rows")
    batch = trainer.algo.gather(trainer.ctx)
    nan_rows = torch.tensor([bool(math.isnan(r)) for r in batch.extra["rollouts"].rewards])
    mask = batch.tensors["completion_mask"]
    assert 0 < int(nan_rows.sum()) < len(nan_rows)
    assert mask[nan_rows].sum() == 0 and mask[~nan_rows].sum() > 0
    assert batch.tensors["advantages"][nan_rows].abs().sum() == 0
    assert batch.totals["num_seqs"] == len(nan_rows) and batch.totals["num_tokens"] == float(mask.sum())


def test_dynamic_sampling_never_emits_a_zero_variance_group(quick_config, tmp_path):
    # Reward 1 for completions longer than 6 tokens: some groups are all-0 or all-1 and must be dropped.
    @register_reward("test_long")
    def long_reward(prompts, completions, completion_ids, **kwargs):
        return [float(len(ids) > 6) for ids in completion_ids]

    cfg = quick_config(
        "algo=dapo",
        "rewards.funcs=test_long:1.0",
        "algo.overlong_buffer=0",
        "algo.max_resample_rounds=4",
        "rollout.temperature=1.5",
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "ds")
    for _ in range(3):
        batch = trainer.algo.gather(trainer.ctx)
        rollouts = batch.extra["rollouts"]
        groups = {}
        for g, r in zip(rollouts.group, rollouts.rewards):
            groups.setdefault(g, []).append(r)
        assert len(groups) <= cfg.train.prompts_per_step
        assert all(max(rs) > min(rs) for rs in groups.values())


def run_metrics(run_dir) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(quick_config, tmp_path):
    overrides = ("rewards.funcs=test_digits:1.0", "train.steps=4", "train.save_every=2", "optim.schedule=constant")
    Trainer(quick_config(*overrides), run_dir=tmp_path / "full").train()
    Trainer(quick_config(*overrides, "train.steps=2"), run_dir=tmp_path / "cut").train()
    Trainer(quick_config(*overrides), run_dir=tmp_path / "cut", resume=True).train()
    full, resumed = run_metrics(tmp_path / "full"), run_metrics(tmp_path / "cut")
    assert sorted(resumed) == [1, 2, 3, 4]  # no step lost or repeated
    for step in (3, 4):
        for key in ("loss", "reward", "grad_norm", "completions/mean_length"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-5, abs=1e-7), (step, key)


def test_log_every_averages_step_metrics_over_each_record_and_always_logs_evals_and_checkpoints(quick_config, tmp_path):
    overrides = ("rewards.funcs=test_digits:1.0", "train.steps=7", "train.eval_every=5")
    Trainer(quick_config(*overrides), run_dir=tmp_path / "every").train()
    Trainer(quick_config(*overrides, "train.log_every=3", "train.save_every=4"), run_dir=tmp_path / "sparse").train()
    every = run_metrics(tmp_path / "every")
    rows = [json.loads(line) for line in (tmp_path / "sparse" / "metrics.jsonl").read_text().splitlines()]
    # Records end at multiples of 3, at the checkpoint (4), the eval (5) and the last step (7); evals at 0, 5, 7.
    assert [r["step"] for r in rows if "loss" in r] == [3, 4, 5, 6, 7]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 5, 7]
    sparse = run_metrics(tmp_path / "sparse")
    for step, covered in ((3, [1, 2, 3]), (4, [4]), (6, [6]), (7, [7])):
        for key in ("loss", "reward", "grad_norm"):
            mean = sum(every[s][key] for s in covered) / len(covered)
            assert sparse[step][key] == pytest.approx(mean, rel=1e-5, abs=1e-7), (step, key)
    with pytest.raises(ValueError, match=re.escape("train.log_every must be >= 1")):
        Trainer(quick_config("train.log_every=0"), run_dir=tmp_path / "never")


def test_replayed_rollouts_reproduce_the_recorded_losses(quick_config, tmp_path):
    recorded = quick_config("rewards.funcs=test_digits:1.0", "rollout.save_rollouts=true", "train.steps=3")
    Trainer(recorded, run_dir=tmp_path / "rec").train()
    assert len(list((tmp_path / "rec" / "rollouts").glob("call_*.jsonl"))) == 3
    replay = quick_config(
        "rewards.funcs=test_digits:1.0",
        "train.steps=3",
        "rollout.engine=replay",
        f"rollout.replay_dir={tmp_path / 'rec' / 'rollouts'}",
    )
    torch.manual_seed(123)  # a different sampling seed must not matter: no sampling happens
    Trainer(replay, run_dir=tmp_path / "rep").train()
    a, b = run_metrics(tmp_path / "rec"), run_metrics(tmp_path / "rep")
    for step in (1, 2, 3):
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=1e-6)
        assert a[step]["reward"] == pytest.approx(b[step]["reward"], rel=1e-9)


def test_sampler_mismatch_is_logged_and_corrected_by_truncated_importance_sampling(quick_config, tmp_path):
    recorded = quick_config("rewards.funcs=test_digits:1.0", "rollout.save_rollouts=true", "train.steps=1")
    Trainer(recorded, run_dir=tmp_path / "rec").train()
    assert run_metrics(tmp_path / "rec")[1]["rollout/logprob_abs_diff"] < 1e-4  # our engine samples the trainer's
    # A sampler whose log-probs are 0.3 lower on every token, as a mismatched engine (vLLM, bf16) would report.
    call = tmp_path / "rec" / "rollouts" / "call_000001.jsonl"
    rows = [json.loads(line) for line in call.read_text().splitlines()]
    call.write_text("".join(json.dumps({**r, "logprobs": [x - 0.3 for x in r["logprobs"]]}) + "\n" for r in rows))
    grad_norms = {}
    for cap in (0.0, 2.0, 1.2):
        replay = quick_config(
            "rewards.funcs=test_digits:1.0",
            "train.steps=1",
            "rollout.engine=replay",
            f"rollout.replay_dir={call.parent}",
            f"algo.tis_cap={cap}",
        )
        Trainer(replay, run_dir=tmp_path / f"cap{cap}").train()
        m = run_metrics(tmp_path / f"cap{cap}")[1]
        assert m["rollout/logprob_abs_diff"] == pytest.approx(0.3, abs=1e-4)
        assert m["rollout/mismatch_kl"] == pytest.approx(math.exp(0.3) - 1.3, abs=1e-4)
        grad_norms[cap] = m["grad_norm"]
        if cap:  # every token's weight is min(e^0.3, cap): 1.3499 below the cap of 2, the cap of 1.2 above it
            assert m["rollout/tis_weight_mean"] == pytest.approx(min(math.exp(0.3), cap), abs=1e-4)
    # At ratio 1 the surrogate is linear in the weights: a constant weight w scales the gradient by w.
    assert grad_norms[0.0] > 0
    assert grad_norms[2.0] == pytest.approx(math.exp(0.3) * grad_norms[0.0], rel=1e-4)
    assert grad_norms[1.2] == pytest.approx(1.2 * grad_norms[0.0], rel=1e-4)


def test_one_update_per_round_needs_no_extra_forward_pass(quick_config, tmp_path, monkeypatch):
    """num_iterations == 1: the loss's forward passes are the only ones (old log-probs = detached current)."""
    import reasonrl.modeling.logprobs as logprobs

    calls = []
    original = logprobs.completion_logits
    monkeypatch.setattr(logprobs, "completion_logits", lambda *a: calls.append(1) or original(*a))
    cfg = quick_config("rewards.funcs=test_digits:1.0", "train.micro_batch_size=4", "train.prompts_per_step=2")
    trainer = Trainer(cfg, run_dir=tmp_path / "fw")
    batch = trainer.algo.gather(trainer.ctx)
    assert calls == []  # generation does not score
    trainer._update(batch)
    assert len(calls) == 2  # 8 rows / micro-batches of 4
    cfg2 = quick_config(
        "rewards.funcs=test_digits:1.0", "train.micro_batch_size=4", "train.prompts_per_step=2", "algo.num_iterations=2"
    )
    trainer2 = Trainer(cfg2, run_dir=tmp_path / "fw2")
    calls.clear()
    batch = trainer2.algo.gather(trainer2.ctx)
    trainer2._update(batch)
    assert len(calls) == 2 + 2 * 2  # one no-grad pass for old log-probs, then 2 updates


def test_nan_loss_is_skipped_then_stops_with_a_checkpoint(quick_config, tmp_path, monkeypatch):
    cfg = quick_config("rewards.funcs=test_digits:1.0", "train.steps=5", "train.max_nan_steps=2")
    trainer = Trainer(cfg, run_dir=tmp_path / "nan")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    real_loss = trainer.algo.loss
    monkeypatch.setattr(trainer.algo, "loss", lambda ctx, micro: (real_loss(ctx, micro)[0] * float("nan"), {}))
    with pytest.raises(TrainingError, match="NaN/inf in 2 updates in a row"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # no NaN step applied
    assert list((tmp_path / "nan" / "checkpoints").glob("step_*"))
    assert run_metrics(tmp_path / "nan") == {}  # no step with a loss was ever logged


def test_a_run_where_every_reward_fails_stops_with_a_clear_error(quick_config, tmp_path):
    cfg = quick_config("rewards.funcs=test_always_raises:1.0", "train.max_nan_steps=1")
    trainer = Trainer(cfg, run_dir=tmp_path / "bad")
    with pytest.raises(RewardError, match="verifier exploded"):
        trainer.train()


def test_missing_model_directory_is_an_error_and_writes_nothing(quick_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        Trainer(quick_config(f"model.path={tmp_path / 'nope'}"), run_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_malformed_jsonl_names_the_line_and_writes_nothing(quick_config, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": \n')
    with pytest.raises(ValueError, match="line 2"):
        Trainer(quick_config(f"data.train={data}"), run_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_reference_model_is_loaded_only_when_beta_is_positive(quick_config, tmp_path):
    plain = Trainer(quick_config("rewards.funcs=test_digits:1.0"), run_dir=tmp_path / "b0")
    assert plain.ctx.ref_model is None
    cfg = quick_config("rewards.funcs=test_digits:1.0", "algo.beta=0.1", "train.steps=3", "optim.lr=1e-2")
    trainer = Trainer(cfg, run_dir=tmp_path / "b1")
    assert trainer.ctx.ref_model is not None
    trainer.train()
    kl = [r["kl"] for r in run_metrics(tmp_path / "b1").values()]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # the policy starts equal to the reference
    assert kl[-1] > 0  # and drifts from it after updates


def test_an_eval_prompt_longer_than_the_context_fails_before_the_run_starts(quick_config, tmp_path):
    from reasonrl.config import DataConfig
    from reasonrl.data import load_source
    from reasonrl.evaluation import evaluate
    from reasonrl.models import load_model
    from reasonrl.rollout.fast import FastEngine

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "1+" * 400 + "1", "answer": "401"}) + "\n")
    with pytest.raises(ValueError, match=r"rollout.max_completion_length=\d+ exceeds the model's context"):
        Trainer(quick_config(f"data.eval={data}"), run_dir=tmp_path / "long")
    assert not (tmp_path / "long").exists()
    with pytest.raises(ValueError, match=r"rollout.eval_max_completion_length=7 exceeds"):
        Trainer(quick_config(f"data.eval={data}", "rollout.eval_max_completion_length=7"), run_dir=tmp_path / "long")
    model, tok = load_model("student")
    examples = load_source(str(data), DataConfig(), "eval", 1)
    with pytest.raises(ValueError, match="max_new_tokens=8 exceeds the model's context of 512 tokens"):
        evaluate(FastEngine(model, tok), tok, examples, 8, context=model.config.max_position_embeddings)


def test_a_prompt_longer_than_the_context_is_a_clear_error(quick_config, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "1+" * 400 + "1", "answer": "401"}) + "\n")
    trainer = Trainer(quick_config(f"data.train={data}", "data.eval=world:arith"), run_dir=tmp_path / "long")
    with pytest.raises(ValueError, match="exceeds the model's context"):
        trainer.algo.gather(trainer.ctx)
