"""The `carry` world: column addition graded by carries, where the easy problems have long but skippable traces.

Every problem is written out the same way as arith's (`add_steps`: one line per column, then `a+b=c`), so an
easy problem's trace is as long as a hard one's. What differs is whether the answer needs the trace: without a
carry every digit of the sum is a one-digit fact about one column, and a tiny model learns to write it at once;
with carries a digit depends on the columns to its right, which is what the trace works out. This is the setting
AutoThink needs (docs/autothink.md): direct answers that are right on easy problems whose thinking is long.

Levels 1-3 differ in their operands' lengths, so which kind a problem is can be read off its surface; level 4
looks like level 2 and differs only in its carries.
"""

from __future__ import annotations

import random

from reasonrl.worlds.arith import ArithWorld, Problem, add_steps

LEVELS = {
    1: "four-digit plus one-digit, no carry",
    2: "three-digit plus three-digit, no carry in any column",
    3: "two-digit plus two-digit, the units carry",
    4: "three-digit plus three-digit, at least one carry",
    5: "four-digit plus four-digit, at least one carry",
}


def has_carry(a: int, b: int) -> bool:
    """Whether column addition of a and b carries in any column."""
    return any("carry" in step for step in add_steps(a, b))


def _no_carry_pair(digits: int, rng: random.Random) -> tuple[int, int]:
    """Two `digits`-digit numbers whose column sums are all at most 9, drawn column by column."""
    a = b = 0
    for col in range(digits):
        lead = col == digits - 1  # the leading digits are >= 1 and so sum to at most 9 with both >= 1
        x = rng.randint(1, 8) if lead else rng.randint(0, 9)
        y = rng.randint(1, 9 - x) if lead else rng.randint(0, 9 - x)
        a, b = a + x * 10**col, b + y * 10**col
    return a, b


def _carry_pair(digits: int, rng: random.Random, units: bool = False) -> tuple[int, int]:
    """Two `digits`-digit numbers whose addition carries (in the units column when `units`)."""
    low, high = 10 ** (digits - 1), 10**digits - 1
    while True:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a % 10 + b % 10 >= 10) if units else has_carry(a, b):
            return a, b


def make_problem(level: int, rng: random.Random) -> Problem:
    if level == 1:
        units = rng.randint(0, 8)
        a, b = rng.randint(100, 999) * 10 + units, rng.randint(1, 9 - units)
    elif level == 2:
        a, b = _no_carry_pair(3, rng)
    elif level == 3:
        a, b = _carry_pair(2, rng, units=True)
    elif level == 4:
        a, b = _carry_pair(3, rng)
    elif level == 5:
        a, b = _carry_pair(4, rng)
    else:
        raise ValueError(f"carry has levels {sorted(LEVELS)}, got {level}")
    return Problem(f"{a}+{b}", a + b, tuple(add_steps(a, b)), level)


class CarryWorld(ArithWorld):
    """Column addition by carries; the prompt, demonstrations, splits and determinism are arith's."""

    name = "carry"
    levels = tuple(LEVELS)
    make_problem = staticmethod(make_problem)
