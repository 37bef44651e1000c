"""The arith world: deterministic, graded, with demonstrations whose every step is correct arithmetic."""

import re

import pytest

from reasonrl.worlds import get_world
from reasonrl.worlds.arith import LEVELS, ArithWorld, add_steps, in_eval_split, mul_steps, sub_steps


def test_examples_are_a_pure_function_of_seed_and_index():
    a, b, c = (
        ArithWorld(levels=[1, 2, 3, 4, 5, 6], seed=3),
        ArithWorld(levels=[1, 2, 3, 4, 5, 6], seed=3),
        ArithWorld(seed=4),
    )
    assert [a.example(i) for i in range(20)] == [b.example(i) for i in range(20)]
    assert [a.example(i).prompt for i in range(20)] != [c.example(i).prompt for i in range(20)]


def test_every_level_draws_only_its_own_level_and_has_a_correct_gold_answer():
    world = ArithWorld(levels=list(LEVELS))
    for example in world.eval_set(n_per_level=20) + [world.example(i) for i in range(200)]:
        expression = example.meta["expression"]
        assert int(example.answer) == eval(expression)
        assert example.level in LEVELS
        assert example.solution.startswith("<think>\n") and example.solution.endswith(
            f"</think>\n\\boxed{{{example.answer}}}"
        )
        assert example.direct == f"\\boxed{{{example.answer}}}"


def test_difficulty_grows_with_level():
    world = ArithWorld(levels=list(LEVELS))
    mean_len = {lv: sum(len(e.solution) for e in world.eval_set([lv], 30)) / 30 for lv in (2, 4, 6)}
    assert mean_len[2] < mean_len[4] < mean_len[6]


@pytest.mark.parametrize("a,b", [(47, 35), (99, 1), (5, 7), (908, 97), (0, 0)])
def test_column_addition_steps_compute_the_sum(a, b):
    written = []
    for step in add_steps(a, b):
        lhs_rhs = re.match(r"([\d+]+)=(\d+)", step)
        if lhs_rhs:
            assert eval(lhs_rhs.group(1)) == int(lhs_rhs.group(2))
        written.append(re.findall(r"write (\d)", step)[0])
    assert int("".join(reversed(written))) == a + b


@pytest.mark.parametrize("a,b", [(82, 47), (50, 49), (700, 1), (45, 45)])
def test_column_subtraction_steps_compute_the_difference(a, b):
    written = [re.findall(r"write (\d)", step)[-1] for step in sub_steps(a, b)]
    assert int("".join(reversed(written))) == a - b


@pytest.mark.parametrize("a,d", [(47, 6), (99, 9), (10, 2)])
def test_column_multiplication_steps_compute_the_product(a, d):
    written = [re.findall(r"write (\d)", step)[0] for step in mul_steps(a, d)]
    assert int("".join(reversed(written))) == a * d


def test_train_and_eval_splits_never_share_a_problem():
    world = ArithWorld(levels=[1, 2, 3, 4, 5, 6])
    train = {world.example(i).meta["expression"] for i in range(3000)}
    held_out = {e.meta["expression"] for e in world.eval_set(n_per_level=50)}
    assert held_out and not train & held_out
    assert all(in_eval_split(x) for x in held_out) and not any(in_eval_split(x) for x in train)


def test_unknown_level_and_world_are_clear_errors():
    with pytest.raises(ValueError, match="levels"):
        ArithWorld(levels=[0, 9])
    with pytest.raises(ValueError, match="unknown world"):
        get_world("chess")
