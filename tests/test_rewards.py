"""Rewards: answer extraction, math verification with real timeouts, format/length shaping, and the manager."""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest

import reasonrl.sources.reasoning_gym
from reasonrl.config import RewardSpec
from reasonrl.rewards import (
    RewardError,
    RewardManager,
    VerifierPool,
    accuracy,
    boxed_reward,
    extract_boxed,
    format_reward,
    get_reward,
    math_verifier,
    normalize_gold,
    numeric_match,
    soft_overlong_punishment,
)
from reasonrl.rewards.math import verify_answer

HANG = "HANG"  # gold answer that makes `hanging_verify` never return


def hanging_verify(gold: str, pred: str) -> bool:
    """Worker-side test hook (pickled by reference into the spawned worker): math-verify, or hang forever."""
    if gold == HANG:
        time.sleep(3600)
    return verify_answer(gold, pred)


@pytest.fixture(scope="module")
def math_pool():
    pool = math_verifier(timeout=10.0)
    yield pool
    pool.close()


def box(s: str) -> str:
    return f"<think>work</think> The answer is \\boxed{{{s}}}"


def test_extract_boxed_takes_the_last_box_with_nested_braces():
    assert extract_boxed(r"\boxed{1} then \boxed{\frac{1}{\sqrt{2}}}") == r"\frac{1}{\sqrt{2}}"
    assert extract_boxed(r"set \boxed{\{1, 2\}} done") == r"\{1, 2\}"
    assert extract_boxed(r"\boxed{\left\{ x > 0 \right.}") == r"\left\{ x > 0 \right."  # escaped brace
    assert extract_boxed(r"\boxed {  42 }") == "42"


def test_extract_boxed_is_none_without_a_closed_box():
    assert extract_boxed("the answer is 42") is None
    assert extract_boxed(r"\boxed{4} but really \boxed{\frac{1}{2}") is None


def test_normalize_gold_reads_gsm8k_and_boxed_solutions():
    assert normalize_gold("She pays 2 * 617 = 1,234 dollars.\n#### 1,234") == "1234"
    assert normalize_gold(r"So the answer is $\boxed{\frac{3}{4}}$.") == r"\frac{3}{4}"
    assert normalize_gold(" 17 ") == "17"


def test_numeric_match_compares_plain_numbers_exactly():
    assert numeric_match("1,000", "1000") is True
    assert numeric_match("-0.50", "-.5") is True
    assert numeric_match("42", "43") is False
    assert numeric_match(r"\frac{1}{2}", "0.5") is None


class NoPool:
    def run(self, items):
        raise AssertionError(f"plain numbers must not reach the verifier pool: {items}")


def test_accuracy_scores_plain_numbers_without_the_verifier_pool():
    completions = [box("1,234"), box("41"), "no box: 1234", box("")]
    scores = accuracy([""] * 4, completions, answer=["#### 1,234", "42", "1234", "7"], verifier=NoPool())
    assert scores == [1.0, 0.0, 0.0, 0.0]


def test_accuracy_verifies_symbolic_answers_with_math_verify(math_pool):
    completions = [box(r"\frac{1}{2}"), box("x^2+2x+1"), box(r"\frac{1}{3}"), box(r"\sqrt{2}/2")]
    answers = ["0.5", "(x+1)^2", "0.5", r"\frac{\sqrt{2}}{2}"]
    scores = accuracy([""] * 4, completions, answer=answers, verifier=math_pool)
    assert scores == [1.0, 1.0, 0.0, 1.0]
    assert scores.status == ["ok"] * 4


def test_accuracy_marks_an_unparseable_gold_as_failed_not_wrong(math_pool):
    scores = accuracy([""], [box("x+1")], answer=[""], verifier=math_pool)
    assert math.isnan(scores[0]) and scores.status == ["failed"]
    assert "does not parse" in scores.errors[0]


def test_accuracy_scores_reasoning_gym_rows_with_their_scorer(monkeypatch):
    calls = []

    def fake_score(answer_text, meta):
        calls.append((answer_text, meta["task"]))
        return 0.5

    monkeypatch.setattr(reasonrl.sources.reasoning_gym, "reasoning_gym_score", fake_score)
    meta = [{"source": "reasoning_gym", "task": "countdown"}, {"source": "reasoning_gym", "task": "x"}, {}]
    scores = accuracy([""] * 3, [box("3+4"), "no box", box("5")], answer=["7", "1", "5"], meta=meta, verifier=NoPool())
    assert scores == [0.5, 0.0, 1.0]
    assert calls == [("3+4", "countdown")]


@pytest.mark.parametrize(
    "completion",
    [
        r"<think>2+2 is 4</think>The answer is \boxed{4}",
        "\n<think>\nhm\n</think>\n\n\\boxed{\\frac{1}{2}}  \n<|im_end|>",
        r"<think>a</think> so $\boxed{4}$",
    ],
)
def test_format_accepts_one_think_block_then_a_final_box(completion):
    assert format_reward(["q"], [completion]) == [1.0]


@pytest.mark.parametrize(
    "completion",
    [
        r"The answer is \boxed{4}",  # no think block
        r"<think>a</think><think>b</think> \boxed{4}",  # two think blocks
        r"<think>a \boxed{4}</think> the end",  # box only inside the thought
        r"<think>a</think> \boxed{4} because 2+2",  # text after the box
        r"<think>a</think> \boxed{4",  # unclosed box
        r"<think>a \boxed{4}",  # unclosed think
    ],
)
def test_format_rejects_malformed_completions(completion):
    assert format_reward(["q"], [completion]) == [0.0]


def test_format_counts_a_think_tag_opened_by_the_chat_template():
    assert format_reward(["<|im_start|>assistant\n<think>\n"], [r"step</think> \boxed{3}"]) == [1.0]


def test_boxed_reward_needs_a_closed_box():
    assert boxed_reward([""] * 3, [r"x \boxed{1} y", "1", r"\boxed{1"]) == [1.0, 0.0, 0.0]


def test_soft_overlong_punishment_matches_hand_computed_values():
    # L_max = 10, buffer 4: free up to 6 tokens, then linear down to -1 at 10, then -1.
    fn = soft_overlong_punishment(10, 4)
    lengths = [5, 6, 7, 9, 10, 12]
    out = fn([""] * 6, [""] * 6, completion_ids=[[0] * n for n in lengths])
    assert out == [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    assert soft_overlong_punishment(10, 4, penalty=2.0)([""], [""], completion_ids=[[0] * 8]) == [-1.0]
    with pytest.raises(ValueError):
        soft_overlong_punishment(10, 0)


def test_registered_overlong_reads_its_settings_from_scalar_fields():
    fields = {"completion_ids": [[0] * 7, [0] * 3], "max_completion_length": 10, "overlong_buffer": 4}
    result = RewardManager([("overlong", 1.0)]).score(["", ""], ["", ""], fields)
    assert result.total == [-0.25, 0.0]


def test_get_reward_resolves_names_modules_and_files(tmp_path):
    assert get_reward("accuracy") is accuracy
    assert get_reward("reasonrl.rewards.format:boxed_reward") is boxed_reward
    file = tmp_path / "my_reward.py"
    file.write_text("def short(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n")
    assert get_reward(f"{file}:short")([""], ["abc"]) == [-3]


def test_get_reward_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"'acuracy'.*Did you mean 'accuracy'.*Known rewards: \['accuracy'"):
        get_reward("acuracy")
    with pytest.raises(ValueError, match="has no function 'nope'"):
        get_reward("reasonrl.rewards.format:nope")


def const(value):
    def reward(prompts, completions, **fields):
        return [value] * len(completions)

    return reward


def test_manager_combines_weighted_components_and_passes_all_fields():
    seen = {}

    def lengths(prompts, completions, **fields):
        seen.update(fields)
        return [float(len(c)) for c in completions]

    manager = RewardManager([RewardSpec("boxed", 2.0), (lengths, 0.5)])
    result = manager.score(["p", "p"], [r"\boxed{1}", "abcd"], {"answer": ["1", "2"], "level": [1, 2]})
    assert result.components == {"boxed": [1.0, 0.0], "lengths": [9.0, 4.0]}
    assert result.total == [2.0 + 4.5, 2.0]
    assert seen == {"answer": ["1", "2"], "level": [1, 2]}
    assert (result.failed, result.timeout, result.errors) == (0, 0, [])


def test_manager_counts_bad_rows_as_failed_and_keeps_the_others():
    def flaky(prompts, completions, **fields):
        return [1.0, "high", float("inf")]

    result = RewardManager([(flaky, 1.0), ("boxed", 1.0)]).score([""] * 3, ["a"] * 3, {})
    assert result.total[0] == 1.0 and math.isnan(result.total[1]) and math.isnan(result.total[2])
    assert result.failed == 2
    assert result.errors[0].startswith("flaky: row 1")


def test_a_raising_reward_makes_its_rows_nan_and_all_nan_raises_reward_error():
    def broken(prompts, completions, **fields):
        raise KeyError("answer_field")

    with pytest.raises(RewardError, match=r"broken.*KeyError.*answer_field") as info:
        RewardManager([(broken, 1.0), ("boxed", 1.0)]).score(["", ""], ["a", "b"], {})
    assert info.value.result.failed == 2
    assert info.value.result.components["boxed"] == [0.0, 0.0]


def test_a_wrong_length_return_is_failed_with_the_function_named():
    def short_list(prompts, completions, **fields):
        return [1.0]

    with pytest.raises(RewardError, match=r"short_list: returned 1 values for 3 rows") as info:
        RewardManager([(short_list, 1.0)]).score([""] * 3, ["a"] * 3, {})
    assert info.value.result.failed == 3


def test_a_hanging_reward_times_out_after_about_the_timeout(caplog):
    def stuck(prompts, completions, **fields):
        time.sleep(30)

    manager = RewardManager([(stuck, 1.0)], timeout=0.5)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="reasonrl"), pytest.raises(RewardError) as info:
        manager.score(["", ""], ["a", "b"], {})
    assert time.monotonic() - start < 2.0
    assert info.value.result.timeout == 2 and info.value.result.failed == 0
    assert any("'stuck' did not return within 0.5s" in r.getMessage() for r in caplog.records)


def test_a_function_without_kwargs_is_rejected_at_construction():
    def strict(prompts, completions, answer):
        return [0.0]

    with pytest.raises(ValueError, match=r"'strict' must accept \*\*kwargs"):
        RewardManager([(strict, 1.0)])


def test_fields_with_the_wrong_number_of_rows_are_rejected():
    with pytest.raises(ValueError, match="field 'answer' has 1 rows for 2 completions"):
        RewardManager([("boxed", 1.0)]).score(["", ""], ["a", "b"], {"answer": ["1"]})


def test_verification_works_from_a_non_main_thread(math_pool):
    manager = RewardManager([("accuracy", 1.0)], verifier=math_pool)
    out = {}

    def score():
        out["result"] = manager.score(["", ""], [box(r"\frac{1}{2}"), box("x^2+2x+1")], {"answer": ["0.5", "(x+1)^2"]})

    thread = threading.Thread(target=score)
    thread.start()
    thread.join(60)
    assert out["result"].total == [1.0, 1.0]


def test_a_hanging_verification_is_a_timeout_and_the_pool_recovers():
    pool = VerifierPool(hanging_verify, timeout=1.0, warmup=("x+1", "1+x"))
    manager = RewardManager([("accuracy", 1.0)], verifier=pool)
    completions = [box("x"), box(r"\frac{1}{2}"), box("3")]
    try:
        assert pool.run([("0.5", r"\frac{1}{2}")])[0].value is True  # started, so the clock below times the hang
        start = time.monotonic()
        result = manager.score([""] * 3, completions, {"answer": [HANG, "0.5", "3"]})
        # One 1 s timeout plus restarting the killed worker (a couple of seconds on a loaded machine).
        assert 1.0 <= time.monotonic() - start < 20.0
        assert math.isnan(result.total[0]) and result.total[1:] == [1.0, 1.0]
        assert (result.timeout, result.failed) == (1, 0)
        assert "no answer within 1s" in result.errors[0]
        again = manager.score([""] * 2, completions[1:], {"answer": ["0.5", "4"]})
        assert again.total == [1.0, 0.0] and again.timeout == 0
    finally:
        pool.close()


def test_a_script_without_a_main_guard_is_not_rerun_by_verifier_workers(tmp_path):
    """Spawned workers must not re-import the user's script: that silently re-ran whole training scripts."""
    import subprocess
    import sys

    script = tmp_path / "train_script.py"
    script.write_text(
        "from reasonrl.rewards.math import math_verifier, verify_answer\n"
        "print('SCRIPT BODY RAN', flush=True)\n"
        "pool = math_verifier(timeout=30)\n"
        "print('VERIFIED', pool.run([('1/2', '0.5')])[0].status, flush=True)\n"
        "pool.close()\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("SCRIPT BODY RAN") == 1
    assert "VERIFIED ok" in out.stdout
