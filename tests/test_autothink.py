"""AutoThink: mode detection, the ellipsis prompt's token ids, R0 and each stage's shaping against hand-computed values,
the stage schedule, the base-model SFT, and a step-counted check that stage 1 moves the think rate towards balance."""

import json
import math
import re

import pytest
import torch

from experiments.autothink_probe import think_probability
from reasonrl.algos.autothink import (
    AutoThink,
    AutoThinkSFT,
    autothink_reward,
    batch_balance,
    continuation,
    is_degenerate,
    is_thinking,
    length_shaping,
    longest_repeat_run,
    mode_metrics,
    rescore_direct_correct,
)
from reasonrl.algos.grpo import GRPO
from reasonrl.config import load_config
from reasonrl.models import encode_prompt, load_tokenizer
from reasonrl.prompt_modes import prompt_mode, prompt_mode_template, save_prompt_mode, with_prompt_mode
from reasonrl.rollout.base import Rollouts
from reasonrl.trainer import Trainer
from reasonrl.worlds.arith import ArithWorld

THINK = "5+7=12, write 2 carry 1\n</think>\n\\boxed{12}"  # what follows the ellipsis prompt when the model reasons
NO_THINK = "</think>\n\\boxed{12}"  # ... and when it closes the think block at once


# ---- detection --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, thinks",
    [
        (NO_THINK, False),
        ("  </think>\n\n\\boxed{12}", False),  # R1 writes `</think>\n\n`; leading whitespace is still an empty block
        ("<think>\n...\n</think>\n\\boxed{12}", False),  # the model wrote the ellipsis itself (plain prompt)
        ("...\n</think>\n\\boxed{12}", False),  # after the always-think prompt `<think>\n`
        (THINK, True),
        ("<think>\n5+7=12\n</think>\n\\boxed{12}", True),
        ("...\n5+7=12\n</think>\n\\boxed{12}", True),  # an ellipsis followed by real steps is thinking
        ("5+7=12, write 2", True),  # never closed: thinking (and a format error), as in the official code
        ("\\boxed{12}", True),
    ],
)
def test_no_think_is_an_empty_or_ellipsis_only_think_block(completion, thinks):
    assert is_thinking(completion) is thinks


# ---- the ellipsis prompt -----------------------------------------------------------------------------------------


def test_ellipsis_prompt_is_the_plain_prompt_followed_by_the_prefix_tokens():
    tok = load_tokenizer("student")
    ellipsis = with_prompt_mode(tok, "ellipsis")
    plain, ids = encode_prompt(tok, "Compute 5+7."), encode_prompt(ellipsis, "Compute 5+7.")
    assert ids[: len(plain)] == plain
    assert tok.convert_ids_to_tokens(ids[len(plain) :]) == ["<think>", "Ċ", ".", ".", ".", "Ċ"]
    assert ids[len(plain) :] == tok("<think>\n...\n", add_special_tokens=False)["input_ids"]
    assert prompt_mode(tok) == "plain" and prompt_mode(ellipsis) == "ellipsis"
    assert prompt_mode(with_prompt_mode(ellipsis, "think")) == "think"  # a new mode replaces the old one
    assert with_prompt_mode(ellipsis, "plain").chat_template == tok.chat_template
    # The prefix belongs to the generation prompt only: a rendered conversation without one is unchanged.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    assert ellipsis.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)


def test_template_that_already_opens_the_think_block_gets_only_the_ellipsis():
    tok = load_tokenizer("student")
    r1_style = with_prompt_mode(tok, "think")  # stands in for DeepSeek-R1's `<|Assistant|><think>\n`
    r1_style.chat_template = r1_style.chat_template.replace("{#- reasonrl prompt mode -#}", "")
    rendered = r1_style.apply_chat_template(
        [{"role": "user", "content": "x"}],
        add_generation_prompt=True,
        tokenize=False,
        chat_template=prompt_mode_template(r1_style, "ellipsis"),
    )
    assert rendered.endswith("assistant\n<think>\n...\n") and rendered.count("<think>") == 1


def test_saved_prompt_mode_survives_reloading(tmp_path):
    out = save_prompt_mode("student", tmp_path / "think", "think")
    assert prompt_mode(load_tokenizer(str(out))) == "think"
    assert prompt_mode(load_tokenizer("student")) == "plain"  # the source folder is untouched


# ---- R0 -----------------------------------------------------------------------------------------------------------


def r0(completions, gold="12"):
    return list(autothink_reward([""] * len(completions), completions, [gold] * len(completions)))


def test_r0_pays_direct_answers_more_and_punishes_their_mistakes():
    assert r0([THINK, NO_THINK]) == [1.0, 2.0]
    assert r0([THINK.replace("{12}", "{13}"), NO_THINK.replace("{12}", "{13}")]) == [0.0, -1.0]


def test_r0_format_errors_score_zero_in_either_mode():
    unclosed = "5+7=12\n\\boxed{12}"  # a right box but no </think>: the answer is not where it must be
    no_box = "</think>\n12"
    boxed_inside_only = "\\boxed{12}\n</think>\nso 12"
    assert r0([unclosed, no_box, boxed_inside_only]) == [0.0, 0.0, 0.0]


def test_only_the_text_before_a_second_think_close_is_graded():
    # the loophole a 300-step seed found: close at once (direct), trace, close again, answer right -> was paid +2
    retrace = "</think>\n5+7=12\n</think>\n\\boxed{12}"
    answered_then_closed = "</think>\n\\boxed{12}\n</think>\nmore"
    assert r0([retrace, answered_then_closed]) == [0.0, 2.0]


def test_repetition_penalty_hits_only_wrong_direct_answers():
    loop = "</think>\n" + "7 " * 10 + "\\boxed{13}"  # one word ten times in a row
    assert longest_repeat_run(loop) == 10 and is_degenerate(loop)
    assert longest_repeat_run("1 2 3 " * 10) == 10 and not is_degenerate("1 2 3 " * 9)  # a 3-gram: 10 or 9 times
    assert longest_repeat_run("0 " + "1 2 3 " * 10) == 9  # chunks are aligned to the start: (0 1 2)(3 1 2)...
    assert longest_repeat_run("c a b a b") == 0  # chunks are aligned to the start: (c a)(b a) never repeat
    assert longest_repeat_run("x x x y") == 3
    long_word = "</think>\n" + "7" * 120 + " \\boxed{13}"
    think_loop = "7 " * 10 + "\n</think>\n\\boxed{13}"
    right_loop = "</think>\n" + "7 " * 10 + "\\boxed{12}"
    assert r0([loop, long_word, think_loop, right_loop]) == [-2.0, -2.0, 0.0, 2.0]


def test_r0_keeps_failed_verifications_nan():
    # A reasoning-gym row whose checker cannot run (its meta lacks the generator's keys) fails verification.
    scores = autothink_reward(["", ""], [NO_THINK, NO_THINK], ["12", "12"], meta=[{"source": "reasoning_gym"}, {}])
    assert math.isnan(scores[0]) and scores.status[0] == "failed" and scores[1] == 2.0


# ---- stage 1: batch balance -----------------------------------------------------------------------------------------


def balance(rewards, think, correct, rate=0.5, slope=2.0):
    out, lam_t, lam_n = batch_balance(torch.tensor(rewards), torch.tensor(think), torch.tensor(correct), rate, slope)
    return [round(x, 6) for x in out.tolist()], lam_t, lam_n


def test_balanced_batch_is_left_alone():
    assert balance([1.0, 0.0, 2.0, -1.0], [True, True, False, False], [True, False, True, False]) == (
        [1.0, 0.0, 2.0, -1.0],
        0.0,
        0.0,
    )


def test_think_heavy_batch_moves_think_rewards_towards_zero_and_minus_one():
    # p_T = 3/4: lambda_T = 2 * (0.75 - 0.5) = 0.5; think correct 1 -> 0.5 * 1 + 0.5 * 0, think wrong 0 -> -0.5
    out = balance([1.0, 1.0, 0.0, 2.0], [True, True, True, False], [True, True, False, True])
    assert out == ([0.5, 0.5, -0.5, 2.0], 0.5, 0.0)


def test_no_think_heavy_batch_moves_direct_rewards_towards_one_and_minus_two():
    # p_N = 3/4: lambda_N = 0.5; no-think correct 2 -> 1.5, no-think wrong -1 -> -1.5
    out = balance([2.0, -1.0, -1.0, 1.0], [False, False, False, True], [True, False, False, True])
    assert out == ([1.5, -1.5, -1.5, 1.0], 0.0, 0.5)


def test_balance_weight_saturates_and_skips_nan_rows():
    # 9 valid rows of which 9 think (the NaN row does not count): lambda_T = clip(2 * 0.5, 0, 1) = 1 -> targets
    out, lam_t, _ = balance([1.0] * 5 + [0.0] * 4 + [math.nan], [True] * 10, [True] * 5 + [False] * 5)
    assert lam_t == 1.0 and out[:9] == [0.0] * 5 + [-1.0] * 4 and math.isnan(out[9])
    assert balance([1.0, 0.0], [True, True], [True, False], rate=1.0) == ([1.0, 0.0], 0.0, 0.0)  # stages 2-3


def test_direct_correct_reward_can_be_moved_from_two():
    # rows: direct correct, direct wrong, think correct, think wrong, direct correct but NaN (failed verification)
    rewards = torch.tensor([2.0, -1.0, 1.0, 0.0, math.nan])
    think = torch.tensor([False, False, True, True, False])
    correct = torch.tensor([True, False, True, False, True])
    out = rescore_direct_correct(rewards, think, correct, 1.5).tolist()
    assert out[:4] == [1.5, -1.0, 1.0, 0.0] and math.isnan(out[4])
    # R0 weighted 0.5 in a sum with a format reward of 0.25: direct correct 0.5 * 2 + 0.25 = 1.25 -> 0.5 * 1.5 + 0.25,
    # direct wrong 0.5 * -1 + 0.25 = -0.25 unchanged
    out = rescore_direct_correct(
        torch.tensor([1.25, -0.25]), torch.tensor([False, False]), torch.tensor([True, False]), 1.5, weight=0.5
    )
    assert out.tolist() == [1.0, -0.25]
    with pytest.raises(ValueError, match="nothink_correct_reward"):
        load_config(None, ["algo=autothink", "algo.nothink_correct_reward=nan"])


# ---- stage 3: length shaping ------------------------------------------------------------------------------------


def test_length_shaping_uses_z_scores_within_correct_and_wrong_subsets_of_a_group():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 2.0, 1.0])
    correct = torch.tensor([True, True, True, False, False, True, True])
    lengths = torch.tensor([10, 20, 30, 5, 15, 8, 40])
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 2])
    out = length_shaping(rewards, correct, lengths, groups, alpha=0.05, beta=0.05).tolist()
    # group 0 correct: mean 20, unbiased std 10, z = -1, 0, 1; r += exp(-0.05 z) - 1
    assert out[0] == pytest.approx(1 + math.exp(0.05) - 1) and out[1] == pytest.approx(1.0)
    assert out[2] == pytest.approx(1 + math.exp(-0.05) - 1)
    # group 0 wrong: mean 10, std sqrt(50), z = -+0.7071; r += 1 - exp(-0.05 z): the short wrong answer loses
    z = 5 / math.sqrt(50)
    assert out[3] == pytest.approx(1 - math.exp(0.05 * z)) and out[4] == pytest.approx(1 - math.exp(-0.05 * z))
    assert out[3] < 0 < out[4]
    assert out[5:] == [2.0, 1.0]  # one correct answer in a group: no z-score, no change


def test_length_shaping_is_off_with_zero_coefficients_and_equal_lengths():
    rewards, correct = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, True, False])
    groups = torch.zeros(3, dtype=torch.long)
    assert length_shaping(rewards, correct, torch.tensor([3, 9, 4]), groups, 0.0, 0.0).tolist() == [1.0, 1.0, 0.0]
    assert length_shaping(rewards, correct, torch.tensor([5, 5, 4]), groups, 0.05, 0.05).tolist() == [1.0, 1.0, 0.0]


def test_mode_metrics_per_level_and_mode():
    m = mode_metrics([True, False, False, True], [True, True, False, False], [40, 8, 9, 50], [2, 1, 1, 2])
    assert m == {
        "think_rate": 0.5,
        "accuracy": 0.5,
        "tokens": 26.75,
        "think_rate/level_1": 0.0,
        "accuracy/level_1": 0.5,
        "tokens/level_1": 8.5,
        "think_rate/level_2": 1.0,
        "accuracy/level_2": 0.5,
        "tokens/level_2": 45.0,
        "accuracy/think": 0.5,
        "tokens/think": 45.0,
        "accuracy/no_think": 0.5,
        "tokens/no_think": 8.5,
    }
    assert "accuracy/no_think" not in mode_metrics([True], [True], [4], [1])


# ---- configuration and the stage schedule -------------------------------------------------------------------------


def test_stage_schedule_and_per_stage_max_lengths():
    config = load_config(
        None, ["algo=autothink", "algo.stage=all", "algo.stage_steps=3,2", "rollout.max_completion_length=32"]
    )
    algo = AutoThink(config)
    assert [algo.stage_at(s) for s in range(1, 8)] == [1, 1, 1, 2, 2, 3, 3]
    assert algo.max_lengths == [32, 64, 96]  # the paper's 8k : 16k : 24k
    assert [f.name for f in config.rewards.funcs] == ["autothink"]  # R0 replaces the default accuracy reward
    assert AutoThink(load_config(None, ["algo=autothink", "algo.stage=3"])).stage_at(1) == 3
    with pytest.raises(ValueError, match=re.escape("algo.stage")):
        load_config(None, ["algo=autothink", "algo.stage=4"])
    with pytest.raises(ValueError, match="autothink"):
        AutoThink(load_config(None, ["algo=autothink", "rewards.funcs=[format]"]))


# ---- the base model's SFT and the training loop -------------------------------------------------------------------


def test_autothink_sft_trains_both_modes_after_the_prompt_prefix(quick_config):
    example = ArithWorld(levels=[2]).example(0)
    assert continuation(example, think=True) == example.solution.removeprefix("<think>\n")
    assert continuation(example, think=False) == "</think>\n" + example.direct
    config = quick_config(
        "algo=autothink_sft",
        "algo.nothink_fraction=0.5",
        "algo.think_prompt_fraction=0.25",
        "train.prompts_per_step=64",
    )
    trainer = Trainer(config)
    batch = AutoThinkSFT(config).gather(trainer.ctx)
    tok = trainer.tokenizer
    assert prompt_mode(tok) == "ellipsis"  # what the exported folder will prompt with
    closing = tok.convert_tokens_to_ids("</think>")
    texts = [
        tok.decode(row[mask.bool()]) for row, mask in zip(batch.tensors["input_ids"], batch.tensors["attention_mask"])
    ]
    ellipsis = [t for t in texts if "assistant\n<think>\n...\n" in t]
    direct = [t for t in ellipsis if "...\n</think>" in t]
    assert 0 < len(ellipsis) < 64 and 0 < len(direct) < len(ellipsis)  # all three formats occur
    first = batch.tensors["input_ids"][:, -batch.tensors["completion_mask"].shape[1]]
    assert int((first == closing).sum()) == len(direct)  # a direct completion's first token is </think>


@pytest.fixture(scope="session")
def nano_ellipsis(nano_dir, tmp_path_factory):
    return save_prompt_mode(str(nano_dir), tmp_path_factory.mktemp("nano_ellipsis") / "m", "ellipsis")


def test_autothink_needs_the_ellipsis_prompt(quick_config):
    with pytest.raises(ValueError, match="ellipsis prompt"):
        Trainer(quick_config("algo=autothink")).train()


def test_autothink_runs_all_stages_and_logs_mode_metrics(quick_config, nano_ellipsis, tmp_path):
    config = quick_config(
        "algo=autothink",
        f"model.path={nano_ellipsis}",
        "algo.stage=all",
        "algo.stage_steps=1,1",
        "train.steps=3",
        "rollout.max_completion_length=6",
    )
    Trainer(config, run_dir=tmp_path / "run").train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "autothink/stage" in r]
    assert [r["autothink/stage"] for r in steps] == [1.0, 2.0, 3.0]
    # A random model rarely stops early, so its longest completion shows each stage's limit (6, 12, 18 tokens).
    assert [r["completions/max_length"] for r in steps] == [6.0, 12.0, 18.0]
    assert {"autothink/think_rate", "autothink/think_rate/level_1", "autothink/shaped_reward"} <= set(steps[0])


def test_autothink_step_pays_correct_direct_answers_the_configured_reward(quick_config, nano_ellipsis, monkeypatch):
    """The algorithm, not just the helper, applies algo.nothink_correct_reward before the stage shaping."""
    texts = [NO_THINK, "</think>\n\\boxed{3}", THINK, "5+7=12\n</think>\n\\boxed{3}"]  # direct right/wrong, think
    r0 = [2.0, -1.0, 1.0, 0.0]

    def crafted(self, ctx) -> tuple[Rollouts, dict]:
        rollouts = Rollouts(
            [[1]] * 4,
            [[5]] * 4,
            [[0.0]] * 4,
            [True] * 4,
            [0] * 4,
            rewards=list(r0),
            reward_components={"autothink": list(r0)},
            meta=[{"level": 1}] * 4,
            texts=texts,
        )
        return rollouts, {}

    monkeypatch.setattr(GRPO, "_sample", crafted)
    shaped = {}
    for value in (2.0, 1.5):
        config = quick_config(
            "algo=autothink", f"model.path={nano_ellipsis}", "algo.stage=2", f"algo.nothink_correct_reward={value}"
        )
        trainer = Trainer(config)
        rollouts, _ = trainer.algo._sample(trainer.ctx)
        shaped[value] = list(rollouts.rewards)
    assert shaped[2.0] == r0 and shaped[1.5] == [1.5, -1.0, 1.0, 0.0]


# ---- learning, step-counted ---------------------------------------------------------------------------------------


def test_stage1_update_thinks_less_than_plain_rewards_on_a_think_heavy_batch(tmp_path):
    """From autothink_base (think rate 0.62 at T=1), one update of stage 1 and one of stage 2 on the same rollouts.

    Measured (seed 0, lr 3e-4, levels 1-5): P(think) 0.615 -> 0.807 (stage 1) vs 0.817 (stage 2); about 10 s.
    Direct answers are wrong on levels 2-5, so both stages raise P(think); the balance (lambda_T = 0.34 for this
    batch's 67% think share) only slows the climb. docs/autothink.md explains why it cannot reverse it here."""
    probe = ArithWorld(levels=[1, 2, 3, 4, 5]).eval_set([1, 2, 3, 4, 5], 20)
    after, rows = {}, {}
    for stage in (1, 2):
        config = load_config(
            None,
            [
                "model.path=autothink_base",
                "algo=autothink",
                f"algo.stage={stage}",
                "optim.lr=3e-4",
                "optim.warmup_steps=0",
                "train.steps=1",
                "data.levels=[1,2,3,4,5]",
                "data.eval_n=1",
                "train.seed=0",
                "rollout.max_completion_length=64",
                "train.prompts_per_step=8",
                "train.progress=false",
            ],
        )
        trainer = Trainer(config, run_dir=tmp_path / f"stage{stage}")
        before = think_probability(trainer.model, trainer.tokenizer, [ex.prompt for ex in probe])
        trainer.train()
        after[stage] = think_probability(trainer.model, trainer.tokenizer, [ex.prompt for ex in probe])
        rows[stage] = next(
            json.loads(line)
            for line in (tmp_path / f"stage{stage}" / "metrics.jsonl").open()
            if '"autothink/stage"' in line
        )
    assert 0.55 < before < 0.7  # the base picks either mode under the ellipsis prompt
    assert rows[1]["autothink/think_rate"] == rows[2]["autothink/think_rate"] > 0.5  # the same rollouts, think-heavy
    assert rows[1]["autothink/balance_lambda_think"] > 0.2 and rows[2]["autothink/balance_lambda_think"] == 0
    assert rows[1]["autothink/shaped_reward"] < rows[2]["autothink/shaped_reward"]
    assert after[1] < after[2] - 0.005, after  # measured 0.807 vs 0.817
