"""DPO and DPO-VP: the loss and its gradient by hand, every pair rule, pairs files, runs through the real Trainer."""

import itertools
import json
import math
import random
import re
import shutil

import pytest
import torch

import reasonrl.modeling.logprobs as logprobs
from reasonrl.algos.dpo import PairwiseDPO, dpo_loss, pair_tensors, sequence_logprobs
from reasonrl.algos.dpo_pairs import Pair, load_pairs_file, select_pair, vr_score
from reasonrl.algos.dpo_vp import DPOVP
from reasonrl.checkpoint import load_checkpoint
from reasonrl.cli import main
from reasonrl.config import ConfigError, load_config
from reasonrl.data import DataError
from reasonrl.models import encode_completion, encode_prompt, load_model
from reasonrl.rewards.math import accuracy
from reasonrl.trainer import Trainer
from reasonrl.worlds.arith import ArithWorld


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- the loss on fixed log-probs --------------------------------------------------------------------------------
# policy chosen/rejected -1.0/-3.0, reference -1.5/-2.0: chosen ratio +0.5, rejected ratio -1.0, z = 1.5.


def loss_and_grads(beta: float, label_smoothing: float = 0.0, loss_type: str = "sigmoid", token_counts=None):
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    ref_c, ref_r = torch.tensor([-1.5], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
    losses, chosen, rejected = dpo_loss(pc, pr, ref_c, ref_r, beta, label_smoothing, loss_type, token_counts)
    losses.sum().backward()
    return float(losses.detach()), float(pc.grad), float(pr.grad), float(chosen), float(rejected)


def test_sigmoid_loss_gradient_and_implicit_rewards_match_hand_values():
    loss, g_chosen, g_rejected, r_chosen, r_rejected = loss_and_grads(beta=0.5)
    assert loss == pytest.approx(math.log(1 + math.exp(-0.75)))  # -log sigma(beta z), beta z = 0.75
    assert g_chosen == pytest.approx(-0.5 * sigmoid(-0.75))  # dL/dz = -beta sigma(-beta z) = -0.16041
    assert g_rejected == pytest.approx(0.5 * sigmoid(-0.75))  # the rejected log-prob is pushed down as hard
    assert (r_chosen, r_rejected) == pytest.approx((0.25, -0.5))  # beta * (log pi - log pi_ref)


def test_label_smoothing_mixes_in_the_flipped_label():
    loss, g_chosen, g_rejected, _, _ = loss_and_grads(beta=0.5, label_smoothing=0.1)
    assert loss == pytest.approx(0.9 * math.log(1 + math.exp(-0.75)) + 0.1 * math.log(1 + math.exp(0.75)))
    expected = -0.9 * 0.5 * sigmoid(-0.75) + 0.1 * 0.5 * sigmoid(0.75)  # = -0.1070
    assert g_chosen == pytest.approx(expected) and g_rejected == pytest.approx(-expected)


def test_ipo_loss_is_the_squared_distance_to_one_over_two_beta():
    loss, g_chosen, g_rejected, _, _ = loss_and_grads(beta=0.5, loss_type="ipo")
    assert loss == pytest.approx(0.25)  # (z - 1 / (2 beta))^2 = (1.5 - 1)^2
    assert (g_chosen, g_rejected) == pytest.approx((1.0, -1.0))  # 2 (z - 1): past the target, IPO pulls back
    loss, g_chosen, _, _, _ = loss_and_grads(beta=0.25, loss_type="ipo")
    assert loss == pytest.approx(0.25) and g_chosen == pytest.approx(-1.0)  # target 2: below it, push on


def test_ipo_per_token_mean_divides_each_log_ratio_by_its_length():
    # chosen ratio +0.5 over 2 tokens, rejected -1.0 over 4: z = 0.25 + 0.25 = 0.5, below beta 0.5's target 1.
    # L = (z - 1)^2 = 0.25; dL/dz = -1, so d/d log pi(y_w) = -1 / 2 and d/d log pi(y_l) = +1 / 4.
    loss, g_chosen, g_rejected, r_chosen, r_rejected = loss_and_grads(
        0.5, loss_type="ipo", token_counts=torch.tensor([[2, 4]])
    )
    assert loss == pytest.approx(0.25)
    assert (g_chosen, g_rejected) == pytest.approx((-0.5, 0.25))
    assert (r_chosen, r_rejected) == pytest.approx((0.25, -0.5))  # implicit rewards stay the summed log-ratios
    with pytest.raises(ValueError, match="ipo"):
        loss_and_grads(0.5, token_counts=torch.tensor([[2, 4]]))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_a_policy_equal_to_its_reference_has_loss_log_2(label_smoothing):
    x = torch.tensor([-4.0, -7.0])
    losses, chosen, rejected = dpo_loss(x, x - 1, x, x - 1, 0.1, label_smoothing)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)))
    assert not chosen.any() and not rejected.any()


# ---- sequence log-probs and exact accumulation on a real model --------------------------------------------------


@pytest.fixture(scope="module")
def nano(nano_dir):
    return load_model(str(nano_dir), device="cpu")


def arith_pairs(tokenizer, n: int) -> list[Pair]:
    """Arith prompts with the world's demonstration as chosen and a wrong boxed answer as rejected."""
    world = ArithWorld([1, 2, 3])
    pairs = []
    for i in range(n):
        ex = world.example(i)
        pairs.append(
            Pair(
                encode_prompt(tokenizer, ex.prompt),
                encode_completion(tokenizer, ex.solution),
                encode_completion(tokenizer, f"\\boxed{{{int(ex.answer) + 1}}}"),
            )
        )
    return pairs


def test_padded_pair_log_probs_equal_each_sequence_scored_alone(nano):
    model, tok = nano
    pairs = arith_pairs(tok, 3)
    with torch.no_grad():
        batched = sequence_logprobs(model, pair_tensors(pairs, tok.pad_token_id))
        for i, pair in enumerate(pairs):
            for j, completion in enumerate((pair.chosen_ids, pair.rejected_ids)):
                ids = torch.tensor([pair.prompt_ids + completion])
                logits = model(input_ids=ids).logits[0, len(pair.prompt_ids) - 1 : -1].float()
                alone = logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).sum()
                assert batched[i, j] == pytest.approx(float(alone), abs=1e-4)


def test_micro_batches_never_split_a_pair_and_sum_to_the_full_batch_loss(nano, quick_config):
    model, tok = nano
    algo = PairwiseDPO(quick_config("algo=dpo_vp"))
    pairs = arith_pairs(tok, 5)
    algo.reference_logps(model, pairs, tok.pad_token_id)
    for p in pairs:  # a reference unlike the policy, so the loss is not log 2 everywhere
        p.ref_logps = (p.ref_logps[0] - 1.0, p.ref_logps[1] + 0.5)
    batch = algo.batch(pairs, tok.pad_token_id, {})
    ctx = type("Ctx", (), {"model": model})()
    results = []
    for size in (5, 2, 1):
        model.zero_grad()
        total = 0.0
        for micro in batch.micro_batches(size):
            assert micro.tensors["pair_input_ids"].shape[1] == 2  # chosen and rejected travel together
            loss, _ = algo.loss(ctx, micro)
            loss.backward()
            total += float(loss.detach())
        results.append((total, model.model.embed_tokens.weight.grad.clone()))
    for total, grad in results[1:]:
        assert total == pytest.approx(results[0][0], rel=1e-5)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-4, atol=1e-6)


def test_ipo_logratio_mean_divides_by_each_completions_token_count(nano, quick_config):
    model, tok = nano
    algo = PairwiseDPO(quick_config("algo=dpo", "algo.pairs=x.jsonl", "algo.loss_type=ipo", "algo.ipo_logratio=mean"))
    pairs = arith_pairs(tok, 3)
    algo.reference_logps(model, pairs, tok.pad_token_id)
    for p in pairs:
        p.ref_logps = (p.ref_logps[0] - 1.0, p.ref_logps[1] + 0.5)
    batch = algo.batch(pairs, tok.pad_token_id, {})
    loss, _ = algo.loss(type("Ctx", (), {"model": model})(), batch)
    # By hand: log-ratios 1.0 and -0.5 (the policy is the reference before the shift), each over its own length.
    z = torch.tensor([1.0 / len(p.chosen_ids) + 0.5 / len(p.rejected_ids) for p in pairs])
    assert float(loss.detach()) == pytest.approx(float(((z - 1 / (2 * 0.1)) ** 2).mean()), rel=1e-5)
    assert len({len(p.chosen_ids) for p in pairs} | {len(p.rejected_ids) for p in pairs}) > 1  # lengths differ


# ---- verifiable scores and pair rules on crafted samples ---------------------------------------------------------


def test_vr_score_of_the_worlds_demonstrations_and_of_wrong_or_unboxed_answers():
    ex = ArithWorld([2]).example(0)
    texts = [ex.solution, ex.direct, "\\boxed{-1}", "\\boxed{ }", f"the answer is {ex.answer}", f"\\boxed{{{ex.answer}"]
    rewards = accuracy([""] * len(texts), texts, answer=[ex.answer] * len(texts))
    assert [vr_score(t, r) for t, r in zip(texts, rewards)] == [1, 1, 0, 0, -1, -1]  # unclosed box: no box
    assert vr_score("\\boxed{}", 1.0) == 0  # an empty box is never correct, whatever the reward says
    assert vr_score(ex.solution, math.nan) is None  # a failed verification takes no part in a pair


def rejected_over_seeds(scores, lengths, max_tokens=10, wrong_pairs="all", seeds=60):
    picks = {select_pair(scores, lengths, random.Random(s), max_tokens, wrong_pairs) for s in range(seeds)}
    assert len({c for c, _ in picks}) == 1, picks  # the chosen sample is deterministic
    return next(iter(picks))[0], {r for _, r in picks}


@pytest.mark.parametrize(
    "scores, lengths, chosen, rejected",
    [
        ([1, 1, 0, -1, -1], [5, 9, 8, 3, 4], 1, {3, 4}),  # longest correct vs a random unboxed (preferred to wrong)
        ([1, 0, 1, 0], [7, 3, 8, 9], 2, {1, 3}),  # no unboxed: longest correct vs a random boxed-wrong
        ([1, 1, 1, 0], [10, 9, 4, 5], 1, {3}),  # the longest correct is not shorter than max_tokens=10: next longest
        ([1, 1, 0], [12, 15, 5], 1, {2}),  # no correct one is shorter than max_tokens: the longest of them
        ([0, 0, -1, -1], [4, 6, 9, 2], 1, {2, 3}),  # no correct: longest boxed-wrong vs a random unboxed
        ([0, 0, 0], [4, 6, 5], 1, {0, 2}),  # only boxed-wrong: the longest vs any other one, never itself
        ([1, 1, -1], [5, 5, 1], 0, {2}),  # equally long: the earlier sample
        ([None, 1, None, 0], [50, 3, 50, 2], 1, {3}),  # failed verifications are never picked
    ],
)
def test_pair_rules(scores, lengths, chosen, rejected):
    assert rejected_over_seeds(scores, lengths) == (chosen, rejected)


@pytest.mark.parametrize(
    "scores",
    [
        [1, 1, 1],  # all correct: nothing to reject
        [-1, -1, -1],  # nothing boxed: nothing to choose
        [0, -1][:1],  # a single boxed-wrong sample and nothing else
        [0, None, None],  # the others failed verification
        [1, None],  # correct, but nothing to reject
        [None, None],
        [],
    ],
)
def test_prompts_without_a_pair(scores):
    assert select_pair(scores, [5] * len(scores), random.Random(0), 10) is None


@pytest.mark.parametrize(
    "wrong_pairs, scores, expected",
    [
        ("none", [0, -1], None),
        ("none", [0, 0], None),
        ("none", [1, 0], (0, 1)),
        ("unboxed", [0, -1], (0, 1)),
        ("unboxed", [0, 0, 0], None),
        ("unboxed", [1, 0], (0, 1)),
        ("all", [0, 0], (0, 1)),
    ],
)
def test_wrong_pairs_option_keeps_only_the_pairs_it_names(wrong_pairs, scores, expected):
    assert select_pair(scores, [5] * len(scores), random.Random(0), 10, wrong_pairs) == expected


# ---- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "algo.loss_type=hinge",
        "algo.beta=0",
        "algo.label_smoothing=0.5",
        "algo.wrong_pairs=some",
        "algo.temperatures=[]",
        "algo.rounds=0",
        "algo.ipo_logratio=median",
        "algo.ipo_logratio=mean",
    ],
)
def test_invalid_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_config(None, ["algo=dpo_vp", override])


def test_dpo_vp_sets_the_step_count_from_rounds(quick_config):
    config = quick_config("algo=dpo_vp", "algo.rounds=3", "algo.steps_per_round=5", "train.steps=2")
    DPOVP(config)
    assert config.train.steps == 15


# ---- offline DPO from a pairs file -------------------------------------------------------------------------------


def write_pairs(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"prompt": "Compute 2+3. Put the final answer in \\boxed{}.", "chosen": "\\boxed{5}", "rejected": "\\boxed{6}"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": "p", "chosen": "a"}, r"line 2: missing field 'rejected'"),
        ({"prompt": "p", "chosen": 5, "rejected": "b"}, r"line 2: field 'chosen' must be a non-empty string, got 5"),
        ({"prompt": "p", "chosen": "a", "rejected": "  "}, r"line 2: field 'rejected' must be a non-empty string"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, r"line 2: empty prompt"),
        ('{"prompt": "p", "chosen"', r"line 2: malformed JSON"),
    ],
)
def test_a_malformed_pairs_file_is_one_error_naming_the_line_and_field(tmp_path, bad, message):
    path = write_pairs(tmp_path / "pairs.jsonl", [GOOD, bad])
    with pytest.raises(DataError, match=message):
        load_pairs_file(path)


def test_a_bad_pairs_file_fails_before_the_run_directory_exists(quick_config, tmp_path):
    path = write_pairs(tmp_path / "pairs.jsonl", [GOOD, {"prompt": "p", "chosen": "a"}])
    config = quick_config("algo=dpo", f"algo.pairs={path}")
    with pytest.raises(DataError, match="line 2: missing field 'rejected'"):
        Trainer(config, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=re.escape("algo.pairs=FILE.jsonl")):
        Trainer(quick_config("algo=dpo"), run_dir=tmp_path / "run")


def test_offline_dpo_widens_the_margin_and_scores_the_reference_once(quick_config, tmp_path, monkeypatch):
    world = ArithWorld([1, 2])
    rows = [
        {"prompt": ex.prompt, "chosen": ex.solution, "rejected": f"\\boxed{{{int(ex.answer) + 1}}}"}
        for ex in map(world.example, range(4))
    ]
    path = write_pairs(tmp_path / "pairs.jsonl", rows)
    config = quick_config(
        "algo=dpo",
        f"algo.pairs={path}",
        "train.steps=4",
        "train.prompts_per_step=4",
        "data.eval_n=1",
        "optim.warmup_steps=0",
        "algo.beta=0.5",
    )
    trainer = Trainer(config, run_dir=tmp_path / "run")
    reference_rows = []
    original = logprobs.completion_logits
    monkeypatch.setattr(
        logprobs,
        "completion_logits",
        lambda model, micro: (
            (model is trainer.ctx.ref_model and reference_rows.append(micro["input_ids"].shape[0]))
            or original(model, micro)
        ),
    )
    trainer.train()
    assert sum(reference_rows) == 2 * len(rows)  # 4 pairs seen 4 times each, referenced once
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    margins = [r["rewards/margins"] for r in log if "rewards/margins" in r]
    assert margins[0] == pytest.approx(0.0, abs=1e-5)  # the policy starts as its reference
    assert all(b > a for a, b in itertools.pairwise(margins)), margins
    assert [r["rewards/accuracies"] for r in log if "rewards/accuracies" in r][-1] == 1.0
    assert [r.get("dpo/reference_pairs") for r in log if "loss" in r] == [4.0, None, None, None]


# ---- DPO-VP end to end: the CLI, each round's pairs file, the reference reset, resume --------------------------

VP_ARGS = [
    "algo=dpo_vp",
    "model.path=student",
    "algo.rounds=3",
    "algo.steps_per_round=2",
    "algo.temperatures=[0.7,1.3]",
    "rollout.num_generations=4",
    "train.prompts_per_step=4",
    "data.eval_n=2",
    "optim.lr=1e-3",
    "optim.warmup_steps=0",
    "train.save_every=1",
    "train.keep_checkpoints=10",
    "train.seed=0",
]


@pytest.fixture(scope="module")
def vp_run(tmp_path_factory):
    """A 3-round DPO-VP run from the shipped student through the CLI (8 prompts x 4 samples per round)."""
    run = tmp_path_factory.mktemp("dpo_vp") / "run"
    assert main(["train", *VP_ARGS, "--output-dir", str(run), "--quiet"]) == 0
    return run


def metric_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cli_run_writes_each_rounds_pairs_as_a_valid_pairs_file(vp_run):
    assert sorted(p.name for p in (vp_run / "pairs").iterdir()) == [f"round_00{k}.jsonl" for k in (1, 2, 3)]
    for k in (1, 2, 3):
        path = vp_run / "pairs" / f"round_00{k}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert 0 < len(rows) <= 8  # at most one pair per prompt
        assert all(
            r["round"] == k and (r["chosen_score"], r["rejected_score"]) in {(1, 0), (1, -1), (0, -1), (0, 0)}
            for r in rows
        )
        assert len(load_pairs_file(path)) == len(rows)  # replayable with algo=dpo algo.pairs=...
    log = metric_rows(vp_run)
    assert max(r["step"] for r in log) == 6  # rounds x steps_per_round
    temps = [r["dpo_vp/temperature"] for r in log if "dpo_vp/temperature" in r]
    assert temps == [0.7, 1.3, 1.3]  # the last temperature repeats for later rounds
    pairs = [r["dpo_vp/round_pairs"] for r in log if "dpo_vp/round_pairs" in r]
    used = [r.get("num_pairs", 0) for r in log if "dpo_vp/round" in r]
    assert [used[0] + used[1], used[2] + used[3], used[4] + used[5]] == pairs  # one epoch per round


def test_each_rounds_reference_is_the_policy_at_the_rounds_start(vp_run):
    log = [r for r in metric_rows(vp_run) if "rewards/margins" in r]
    first_steps = [r for r in log if r["step"] in (1, 3, 5)]
    assert len(first_steps) == 3 and all(abs(r["rewards/chosen"]) < 1e-5 for r in first_steps)
    assert any(abs(r["rewards/chosen"]) > 1e-3 for r in log if r["step"] in (2, 4, 6))  # the policy did move
    rows = [json.loads(line) for line in (vp_run / "pairs" / "round_002.jsonl").read_text().splitlines()]
    pairs = [Pair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
    saved = torch.tensor([[r["ref_chosen_logp"], r["ref_rejected_logp"]] for r in rows])
    model, tok = load_model("student", device="cpu")
    with torch.no_grad():
        start = sequence_logprobs(model, pair_tensors(pairs, tok.pad_token_id))
        load_checkpoint(vp_run / "checkpoints" / "step_000002", model, None, None)  # the end of round 1
        end_of_round_1 = sequence_logprobs(model, pair_tensors(pairs, tok.pad_token_id))
    torch.testing.assert_close(saved, end_of_round_1, rtol=0, atol=1e-4)
    assert (saved - start).abs().max() > 1e-2  # not the initial model: the reference was reset


def test_resuming_mid_round_reuses_the_rounds_pairs_and_ends_bitwise_identical(vp_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(vp_run, run, ignore=shutil.ignore_patterns("step_00000[2-9]", "final"))
    state = json.loads((run / "checkpoints" / "step_000001" / "trainer_state.json").read_text())
    assert state["algo"]["dpo_vp"] == {"round": 0, "step_in_round": 1, "pairs_file": "pairs/round_001.jsonl"}
    config = load_config(run / "config.yaml", ["train.progress=false"])
    Trainer(config, run_dir=run, resume=True).train()
    a = load_model(str(vp_run / "final"), device="cpu")[0].state_dict()
    b = load_model(str(run / "final"), device="cpu")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k in (2, 3):  # later rounds were sampled again, from the same state: the same pairs
        name = f"pairs/round_00{k}.jsonl"
        assert (run / name).read_text() == (vp_run / name).read_text()
