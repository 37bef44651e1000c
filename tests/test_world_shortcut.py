"""The carry world: deterministic, disjoint splits, correct demonstrations, and levels that mean what they say."""

import re

import pytest

from reasonrl.config import DataConfig
from reasonrl.data import load_source
from reasonrl.worlds import get_world
from reasonrl.worlds.arith import in_eval_split
from reasonrl.worlds.carry import LEVELS, CarryWorld, has_carry

ALL = list(LEVELS)


def test_examples_are_a_pure_function_of_seed_and_index():
    a, b, c = CarryWorld(levels=ALL, seed=3), CarryWorld(levels=ALL, seed=3), CarryWorld(levels=ALL, seed=4)
    assert [a.example(i) for i in range(30)] == [b.example(i) for i in range(30)]
    assert [a.example(i).prompt for i in range(30)] != [c.example(i).prompt for i in range(30)]
    assert a.eval_set(n_per_level=10) == b.eval_set(n_per_level=10)


def test_train_and_eval_splits_never_share_a_problem():
    world = CarryWorld(levels=ALL)
    train = {world.example(i).meta["expression"] for i in range(3000)}
    held_out = {e.meta["expression"] for e in world.eval_set(n_per_level=50)}
    assert len(held_out) == 50 * len(ALL) and not train & held_out
    assert all(in_eval_split(x) for x in held_out) and not any(in_eval_split(x) for x in train)


def test_demonstrations_verify_against_the_gold_answer():
    world = CarryWorld(levels=ALL)
    for ex in world.eval_set(n_per_level=20) + [world.example(i) for i in range(300)]:
        a, b = map(int, ex.meta["expression"].split("+"))
        assert int(ex.answer) == a + b and ex.meta["world"] == "carry"
        assert ex.direct == f"\\boxed{{{ex.answer}}}"
        steps = ex.solution.removeprefix("<think>\n").split("\n</think>\n")[0].split("\n")
        for step in steps:  # every column's sum is right, and the written digits spell the answer
            lhs, rhs = re.match(r"([\d+]+)=(\d+)", step).groups() if "=" in step else (None, None)
            assert lhs is None or eval(lhs) == int(rhs)
        written = [re.findall(r"write (\d)", s)[0] for s in steps[:-1]]
        assert int("".join(reversed(written))) == a + b
        assert steps[-1] == f"{a}+{b}={a + b}" and ex.solution.endswith(f"</think>\n\\boxed{{{ex.answer}}}")


@pytest.mark.parametrize("level", ALL)
def test_levels_have_their_operand_lengths_and_carries(level):
    digits = {1: (4, 1), 2: (3, 3), 3: (2, 2), 4: (3, 3), 5: (4, 4)}[level]
    for ex in CarryWorld(levels=[level]).eval_set([level], 30) + [CarryWorld(levels=[level]).example(i) for i in range(30)]:
        a, b = map(int, ex.meta["expression"].split("+"))
        assert (len(str(a)), len(str(b))) == digits and ex.level == level
        assert has_carry(a, b) == (level >= 3)
        if level == 3:
            assert a % 10 + b % 10 >= 10


def test_easy_traces_are_as_long_as_hard_ones_but_direct_answers_are_short():
    world = CarryWorld(levels=ALL)
    trace = {lv: sum(len(e.solution) for e in world.eval_set([lv], 30)) / 30 for lv in ALL}
    assert trace[1] > trace[3] and trace[2] > 0.9 * trace[3]
    assert all(len(e.direct) < 0.3 * len(e.solution) for e in world.eval_set([1, 2], 30))


def test_has_carry():
    assert has_carry(57, 38) and has_carry(150, 950) and not has_carry(1234, 5) and not has_carry(321, 678)


def test_the_world_is_a_data_source_with_its_levels():
    cfg = DataConfig(train="world:carry", levels=[1, 2], eval_levels=[4], eval_n=5)
    train, held_out = load_source("world:carry", cfg, "train", 20), load_source("world:carry", cfg, "eval")
    assert {e.level for e in train} == {1, 2} and {e.level for e in held_out} == {4} and len(held_out) == 5
    with pytest.raises(ValueError, match="carry levels"):
        get_world("carry", levels=[6])
