"""DPO-VP's reward model: its loss and metrics by hand, its pair rule on crafted scores, its last-token read-out,
and runs through the real Trainer (hidden answers never verified, the RM's weights saved each round, exact resume)."""

import json
import math
import random
import re
import shutil

import pytest
import safetensors.torch
import torch

from reasonrl.algos.common import build_sequences
from reasonrl.algos.dpo_vp import is_unlabeled
from reasonrl.algos.reward_model import (
    RewardModel,
    load_reward_model,
    rm_loss,
    rm_metrics,
    save_reward_model,
    score_samples,
    select_rm_pair,
    train_reward_model,
)
from reasonrl.config import ConfigError, load_config
from reasonrl.data import PromptStream
from reasonrl.models import encode_completion, encode_prompt, load_model
from reasonrl.rewards.manager import RewardManager
from reasonrl.trainer import Trainer
from reasonrl.worlds.arith import ArithWorld

# ---- the loss ----------------------------------------------------------------------------------------------------


def test_rm_loss_and_gradient_match_binary_cross_entropy_by_hand():
    logits = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64, requires_grad=True)
    loss = rm_loss(logits, torch.tensor([1.0, 0.0, 1.0]))
    # -log sigma(2), -log(1 - sigma(-1)) = -log sigma(1), -log sigma(0) = log 2; mean of three
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 3
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # d/dr of the mean BCE is (sigma(r) - label) / N: pushes correct samples up, wrong ones down
    assert logits.grad.tolist() == pytest.approx([(sigma(2) - 1) / 3, sigma(-1) / 3, (0.5 - 1) / 3])


# ---- the pair rule on crafted scores ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs, margin, threshold, expected",
    [
        ([0.9, 0.2, 0.5], 0.3, 0.5, (0, 1)),  # highest vs lowest
        ([0.3, 0.95, 0.1, 0.6], 0.3, 0.5, (1, 2)),
        ([0.8, 0.8, 0.1], 0.3, 0.5, (0, 2)),  # a tie at the top: the earlier sample is chosen
        ([0.9, 0.1, 0.7, 0.1], 0.3, 0.5, (0, 1)),  # a tie at the bottom: the earlier sample is rejected
        ([0.75, 0.25], 0.5, 0.5, (0, 1)),  # a difference exactly at the margin is enough
        ([0.75, 0.25], 0.0, 0.75, (0, 1)),  # a chosen exactly at the threshold is enough
        ([0.6, 0.4, 0.5], 0.3, 0.5, None),  # unsure: the spread is below the margin
        ([0.45, 0.05, 0.2], 0.3, 0.5, None),  # unsure: even the best sample is more likely wrong than right
        ([0.7, 0.7, 0.7], 0.0, 0.0, None),  # all tied: no pair even without a margin (chosen and rejected would be one)
        ([0.99], 0.0, 0.0, None),  # a single sample
        ([], 0.0, 0.0, None),
    ],
)
def test_rm_pair_rule(probs, margin, threshold, expected):
    assert select_rm_pair(probs, margin, threshold) == expected


# ---- the RM's accuracy against the verifier -------------------------------------------------------------------------


def test_rm_metrics_by_hand():
    # prompt 0: samples correct, wrong, wrong; prompt 1: correct, unboxed; prompt 2: all correct (no ranking pair)
    scores = [1, 0, 0, 1, -1, 1, 1]
    groups = [0, 0, 0, 1, 1, 2, 2]
    probs = [0.8, 0.6, 0.8, 0.3, 0.9, 0.7, 0.55]
    m = rm_metrics(probs, scores, groups, margin=0.3, threshold=0.5)
    # p > 0.5 vs correct: 0.8/1 yes, 0.6/0 no, 0.8/0 no, 0.3/1 no, 0.9/-1 no, 0.7/1 yes, 0.55/1 yes -> 3 of 7
    assert m["accuracy"] == pytest.approx(3 / 7)
    assert m["base_rate"] == pytest.approx(4 / 7)
    # (correct, wrong) comparisons: prompt 0: 0.8 > 0.6 (1), 0.8 = 0.8 (1/2); prompt 1: 0.3 < 0.9 (0) -> 1.5 of 3
    assert m["ranking"] == pytest.approx(0.5)
    # RM pairs: prompt 0: 0.8 vs 0.6, spread 0.2 < 0.3: none; prompt 1: 0.9 (unboxed) vs 0.3 (correct): flipped;
    # prompt 2: 0.7 vs 0.55, spread below the margin: none
    assert (m["pair_rate"], m["pair_agreement"], m["pair_flipped"]) == pytest.approx((1 / 3, 0.0, 1.0))
    m = rm_metrics(probs, scores, groups, margin=0.1, threshold=0.5)
    # now prompt 0 pairs 0.8 (the earlier, correct) vs 0.6 (wrong): agrees; prompt 2 pairs two correct ones: a tie
    assert (m["pair_rate"], m["pair_agreement"], m["pair_flipped"]) == pytest.approx((1.0, 1 / 3, 1 / 3))


def test_rm_metrics_without_comparable_samples_are_nan_not_zero():
    m = rm_metrics([0.9, 0.8], [1, 1], [0, 0], margin=0.5, threshold=0.5)
    assert m["accuracy"] == 1.0 and math.isnan(m["ranking"]) and math.isnan(m["pair_agreement"])
    assert rm_metrics([], [], [], 0.3, 0.5) == {}


# ---- the model: last-token read-out, weights of its own, training, safetensors -------------------------------------


@pytest.fixture(scope="module")
def nano(nano_dir):
    return load_model(str(nano_dir), device="cpu")


def arith_samples(tokenizer, n: int):
    """Prompts with a correct sample (the step-by-step demonstration) and a wrong one (no answer) each: 2n samples,
    labels 1/0, that even a random tiny model can learn to tell apart."""
    world = ArithWorld([1, 2])
    prompts, completions, labels = [], [], []
    for i in range(n):
        ex = world.example(i)
        for text, label in ((ex.solution, 1.0), ("I do not know.", 0.0)):
            prompts.append(encode_prompt(tokenizer, ex.prompt))
            completions.append(encode_completion(tokenizer, text))
            labels.append(label)
    return prompts, completions, labels


def test_the_head_reads_each_rows_last_real_token_whatever_the_padding(nano):
    model, tok = nano
    rm = RewardModel.from_policy(model)
    torch.nn.init.normal_(rm.head.weight, std=1.0)  # a head that sees the hidden state
    prompts, completions, _ = arith_samples(tok, 3)
    completions[0] = completions[0][:1]  # rows of different lengths: left and right padding both occur
    batch = build_sequences(prompts, completions, tok.pad_token_id)
    with torch.no_grad():
        batched = rm(batch["input_ids"], batch["attention_mask"])
        for i, (p, c) in enumerate(zip(prompts, completions)):
            ids = torch.tensor([p + c])
            alone = rm(ids, torch.ones_like(ids))
            assert float(batched[i]) == pytest.approx(float(alone), abs=1e-4)
        shorter = torch.tensor([prompts[1] + completions[1][:-1]])
        cut = rm(shorter, torch.ones_like(shorter))
    assert abs(float(cut) - float(batched[1])) > 1e-4  # the last token matters: it is the one read


def test_an_untrained_rm_says_one_half_and_training_it_leaves_the_policy_alone(nano):
    model, tok = nano
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rm = RewardModel.from_policy(model)
    prompts, completions, labels = arith_samples(tok, 4)
    assert score_samples(rm, prompts, completions, tok.pad_token_id, 3) == pytest.approx([0.5] * 8)
    losses = [
        train_reward_model(rm, prompts, completions, labels, tok.pad_token_id, 3e-3, 1, 4, random.Random(0))
        for _ in range(12)
    ]
    assert losses[-1] < 0.5 * losses[0], losses  # it learns to tell the demonstration from the wrong answer
    probs = score_samples(rm, prompts, completions, tok.pad_token_id, 8)
    assert all((p > 0.5) == bool(label) for p, label in zip(probs, labels)), probs
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the RM owns its weights


def test_rm_weights_round_trip_through_safetensors_and_bad_files_are_clear_errors(nano, tmp_path):
    model, _ = nano
    rm = RewardModel.from_policy(model)
    torch.nn.init.normal_(rm.head.weight)
    save_reward_model(rm, tmp_path / "rm" / "round_001.safetensors", {"round": "1"})
    assert [p.name for p in (tmp_path / "rm").iterdir()] == ["round_001.safetensors"]  # no temp file left
    other = RewardModel.from_policy(model)
    load_reward_model(other, tmp_path / "rm" / "round_001.safetensors")
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in rm.state_dict().items())
    with pytest.raises(FileNotFoundError, match=re.escape("round_002.safetensors")):
        load_reward_model(other, tmp_path / "rm" / "round_002.safetensors")
    student = RewardModel.from_policy(load_model("student", device="cpu")[0])
    with pytest.raises(ValueError, match="not a reward model of this policy's architecture"):
        load_reward_model(student, tmp_path / "rm" / "round_001.safetensors")


# ---- which prompts are unlabelled ----------------------------------------------------------------------------------


def test_the_hidden_share_is_a_fixed_subset_of_about_the_fraction():
    prompts = [ArithWorld([1, 2, 3]).example(i).prompt for i in range(2000)]
    hidden = [is_unlabeled(p, 0, 0.3) for p in prompts]
    assert 0.27 < sum(hidden) / len(hidden) < 0.33
    assert hidden == [is_unlabeled(p, 0, 0.3) for p in prompts]  # the same prompts every time
    assert hidden != [is_unlabeled(p, 1, 0.3) for p in prompts]  # another data seed, another subset
    assert not any(is_unlabeled(p, 0, 0.0) for p in prompts)
    assert all(is_unlabeled(p, 0, 0.6) for p, h in zip(prompts, hidden) if h)  # a larger share hides a superset


@pytest.mark.parametrize(
    "override",
    [
        "algo.unlabeled_fraction=1.0",
        "algo.unlabeled_fraction=-0.1",
        "algo.rm_lr=0",
        "algo.rm_epochs=0",
        "algo.rm_margin=1.5",
        "algo.rm_threshold=-1",
    ],
)
def test_invalid_rm_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_config(None, ["algo=dpo_vp", override])


# ---- through the Trainer --------------------------------------------------------------------------------------------

RM_ARGS = [
    "algo=dpo_vp",
    "model.path=student",
    "algo.rounds=3",
    "algo.steps_per_round=2",
    "rollout.num_generations=4",
    "train.prompts_per_step=6",
    "data.eval_n=1",
    "optim.lr=1e-3",
    "optim.warmup_steps=0",
    "train.save_every=1",
    "train.keep_checkpoints=10",
    "train.seed=0",
    "train.progress=false",
    "algo.reward_model=true",
    "algo.unlabeled_fraction=0.5",
    "algo.rm_margin=0.0",
    "algo.rm_threshold=0.0",
    "algo.rm_epochs=1",
]


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    """3 rounds of 12 prompts x 4 samples, half the prompts hidden; every verifier call recorded."""
    run = tmp_path_factory.mktemp("dpo_vp_rm") / "run"
    calls = []
    original = RewardManager.score

    def spy(self, prompts, completions, fields):
        calls.append((list(prompts), list(fields.get("answer", []))))
        return original(self, prompts, completions, fields)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RewardManager, "score", spy)
        Trainer(load_config(None, RM_ARGS), run_dir=run).train()
    return run, calls


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hidden_prompts_never_reach_the_verifier_and_get_rm_pairs(rm_run):
    run, calls = rm_run
    config = load_config(run / "config.yaml")
    trained = [ex.prompt for ex in PromptStream(config.data.train, config.data).next(3 * 12)]  # the 3 rounds' prompts
    hidden = [p for p in trained if is_unlabeled(p, config.data.seed, 0.5)]
    scored = [p for prompts, _ in calls for p in prompts]
    assert hidden and not set(hidden) & set(scored)  # no hidden prompt was ever verified ...
    assert all(scored.count(p) == 4 for p in trained if p not in hidden)  # ... every other one, K = 4 times
    assert all(a for _, answers in calls for a in answers)  # and every verified row had its gold answer
    rounds = [r for r in rows(run / "metrics.jsonl") if "dpo_vp/hidden_prompts" in r]
    assert sum(r["dpo_vp/hidden_prompts"] for r in rounds) == len(hidden)
    rm_pairs = 0
    for k in (1, 2, 3):
        for row in rows(run / "pairs" / f"round_00{k}.jsonl"):
            hidden = is_unlabeled(row["prompt"], 0, 0.5)
            assert row["labelled"] != hidden
            if hidden:  # an RM pair: no answer, no verifier score, never scored by the verifier
                assert row["answer"] == "" and row["chosen_score"] is None and row["prompt"] not in scored
                assert row["chosen_rm"] >= row["rejected_rm"]
                rm_pairs += 1
    assert rm_pairs > 0
    assert sum(r.get("dpo_vp/pairs/rm", 0) for r in rounds) == rm_pairs


def test_round_one_measures_the_untrained_rm_and_each_round_saves_its_weights(rm_run):
    run, _ = rm_run
    rounds = [r for r in rows(run / "metrics.jsonl") if "rm/accuracy" in r]
    assert len(rounds) == 3
    first = rounds[0]
    # Measured before any training: the zero head says 0.5 for every sample, i.e. "wrong" everywhere.
    assert first["rm/accuracy"] == pytest.approx(1 - first["rm/base_rate"])
    assert first["rm/ranking"] in (0.5, None)  # None: NaN in metrics.jsonl, no prompt had both kinds
    assert all(math.isfinite(r["rm/train_loss"]) for r in rounds)
    files = sorted(p.name for p in (run / "reward_model").iterdir())
    assert files == [f"round_00{k}.safetensors" for k in (1, 2, 3)]
    tokens = [r["num_tokens"] for r in rows(run / "metrics.jsonl") if "dpo_vp/hidden_tokens" in r]
    assert all(t > h for t, h in zip(tokens, [r["dpo_vp/hidden_tokens"] for r in rounds]))  # hidden ones counted


def test_resuming_mid_round_reloads_the_rm_and_ends_bitwise_identical(rm_run, tmp_path):
    run, _ = rm_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("step_00000[4-9]", "final", "round_003*"))
    state = json.loads((resumed / "checkpoints" / "step_000003" / "trainer_state.json").read_text())
    assert state["algo"]["dpo_vp"]["rm_file"] == "reward_model/round_002.safetensors"
    config = load_config(resumed / "config.yaml", ["train.progress=false"])
    Trainer(config, run_dir=resumed, resume=True).train()  # round 3's RM starts from the file of round 2
    a = load_model(str(run / "final"), device="cpu")[0].state_dict()
    b = load_model(str(resumed / "final"), device="cpu")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed / "pairs/round_003.jsonl").read_text() == (run / "pairs/round_003.jsonl").read_text()
    # (tensors, not bytes: safetensors writes its metadata keys in hash order)
    saved = [safetensors.torch.load_file(r / "reward_model/round_003.safetensors") for r in (run, resumed)]
    assert saved[0].keys() == saved[1].keys() and all(torch.equal(v, saved[1][k]) for k, v in saved[0].items())


def test_resume_without_the_rm_weights_or_with_the_rm_switched_off_is_refused(rm_run, tmp_path):
    run, _ = rm_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("step_00000[5-9]", "final", "round_00[23]*"))
    config = load_config(resumed / "config.yaml", ["train.progress=false"])
    with pytest.raises(FileNotFoundError, match=re.escape("reward_model/round_002.safetensors")):  # step 4 ends round 2
        Trainer(config, run_dir=resumed, resume=True).train()
    config = load_config(resumed / "config.yaml", ["train.progress=false", "algo.reward_model=false"])
    with pytest.raises(ValueError, match=re.escape("started with algo.reward_model=True")):
        Trainer(config, run_dir=resumed, resume=True).train()


def test_with_no_hidden_prompts_the_rm_changes_nothing_in_the_policys_run(tmp_path):
    """The RM draws no random numbers and labels nothing here, so the policy's run is the plain DPO-VP run."""
    base = [a for a in RM_ARGS if not a.startswith(("algo.reward_model", "algo.unlabeled"))]
    base = [a if a != "algo.rounds=3" else "algo.rounds=2" for a in base] + ["train.save_every=0"]
    finals = []
    for flag in ("true", "false"):
        run = tmp_path / flag
        Trainer(load_config(None, base + [f"algo.reward_model={flag}"]), run_dir=run).train()
        finals.append(load_model(str(run / "final"), device="cpu")[0].state_dict())
        assert (run / "reward_model").exists() == (flag == "true")
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert (tmp_path / "true" / "pairs" / "round_002.jsonl").read_text() == (
        tmp_path / "false" / "pairs" / "round_002.jsonl"
    ).read_text()
