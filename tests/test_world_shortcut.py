"""The shortcut world: deterministic, disjoint splits, correct demonstrations, and levels that mean what they say."""

import re

import pytest

from reasonrl.config import DataConfig
from reasonrl.data import load_source
from reasonrl.worlds import get_world
from reasonrl.worlds.arith import in_eval_split
from reasonrl.worlds.shortcut import LEVELS, ShortcutWorld, has_borrow, has_carry

ALL = list(LEVELS)


def operands(ex) -> tuple[int, str, int]:
    a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)", ex.meta["expression"]).groups()
    return int(a), op, int(b)


def test_examples_are_a_pure_function_of_seed_and_index():
    a, b, c = ShortcutWorld(levels=ALL, seed=3), ShortcutWorld(levels=ALL, seed=3), ShortcutWorld(levels=ALL, seed=4)
    assert [a.example(i) for i in range(30)] == [b.example(i) for i in range(30)]
    assert [a.example(i).prompt for i in range(30)] != [c.example(i).prompt for i in range(30)]
    assert a.eval_set(n_per_level=10) == b.eval_set(n_per_level=10)


def test_train_and_eval_splits_never_share_a_problem():
    world = ShortcutWorld(levels=ALL)
    train = {world.example(i).meta["expression"] for i in range(3000)}
    held_out = {e.meta["expression"] for e in world.eval_set(n_per_level=50)}
    assert len(held_out) == 50 * len(ALL) and not train & held_out
    assert all(in_eval_split(x) for x in held_out) and not any(in_eval_split(x) for x in train)


def test_demonstrations_verify_against_the_gold_answer():
    world = ShortcutWorld(levels=ALL)
    for ex in world.eval_set(n_per_level=20) + [world.example(i) for i in range(300)]:
        assert int(ex.answer) == eval(ex.meta["expression"]) and ex.meta["world"] == "shortcut"
        assert ex.direct == f"\\boxed{{{ex.answer}}}"
        assert ex.solution.endswith(f"\n{ex.meta['expression']}={ex.answer}\n</think>\n\\boxed{{{ex.answer}}}")
        columns = ex.solution.removeprefix("<think>\n").split("\n")[:-3]
        for step in columns:  # every column's arithmetic is right ...
            for lhs, rhs in re.findall(r"([\d+*-]+)=(\d+)", step):
                assert eval(lhs) == int(rhs)
        written = [re.findall(r"write (\d)", s)[-1] for s in columns]  # ... and the written digits spell the answer
        assert int("".join(reversed(written))) == int(ex.answer)


@pytest.mark.parametrize("level", ALL)
def test_levels_hold_identities_or_carries(level):
    world = ShortcutWorld(levels=[level])
    for ex in world.eval_set([level], 30) + [world.example(i) for i in range(30)]:
        a, op, b = operands(ex)
        assert ex.level == level
        assert (10 <= a <= 99) if level == 3 else (100 <= a <= 999)
        if level == 1:
            assert (op, b) in (("-", a), ("*", 0)) and ex.answer == "0"
        elif level == 2:
            assert (op, b) in (("+", 0), ("*", 1)) and ex.answer == str(a)
        elif level == 3:
            assert op == "+" and a % 10 + b % 10 >= 10
        elif level == 4:
            assert op == "+" and b >= 100 and has_carry(a, b)
        else:
            assert op == "-" and b >= 100 and has_borrow(a, b)


def test_easy_traces_are_nearly_as_long_as_hard_ones_but_direct_answers_are_short():
    world = ShortcutWorld(levels=ALL)
    trace = {lv: sum(len(e.solution) for e in world.eval_set([lv], 30)) / 30 for lv in ALL}
    assert min(trace[1], trace[2]) > 0.8 * trace[3]
    assert all(len(e.direct) < 0.3 * len(e.solution) for e in world.eval_set([1, 2], 30))


def test_carry_and_borrow_detection():
    assert has_carry(57, 38) and has_carry(150, 950) and not has_carry(1234, 5)
    assert has_borrow(52, 38) and not has_borrow(987, 123)


def test_the_world_is_a_data_source_with_its_levels():
    cfg = DataConfig(train="world:shortcut", levels=[1, 2], eval_levels=[4], eval_n=5)
    train, held_out = load_source("world:shortcut", cfg, "train", 20), load_source("world:shortcut", cfg, "eval")
    assert {e.level for e in train} == {1, 2} and {e.level for e in held_out} == {4} and len(held_out) == 5
    with pytest.raises(ValueError, match="shortcut levels"):
        get_world("shortcut", levels=[6])
