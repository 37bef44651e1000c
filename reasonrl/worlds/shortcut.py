"""The `shortcut` world: column arithmetic where the easy problems have a shortcut and the hard ones carry.

Every problem is written out column by column the way arith writes it (`add_steps`, `sub_steps`, `mul_steps`,
then `expression=answer`), so an easy problem's trace is as long as a hard one's. The easy levels are identities:
x-x and x*0 are 0, x+0 and x*1 are x. Their answer needs no columns (a constant, or a copy of the operand), and a
tiny model learns to write it at once. The hard levels carry or borrow: a digit of the answer depends on the
columns to its right, which is what the trace works out. This is the setting AutoThink needs (docs/autothink.md):
direct answers that are right on easy problems whose thinking is long.

A first version graded plain additions by carries (no carry: easy). Its direct answers were right on 1-2% of the
no-carry problems after the same SFT (300 steps): a digit-wise sum is not a shortcut for a 0.8M-parameter model.
"""

from __future__ import annotations

import random

from reasonrl.worlds.arith import ArithWorld, Problem, add_steps, mul_steps, sub_steps

LEVELS = {
    1: "three-digit x-x or x*0 (the answer is 0)",
    2: "three-digit x+0 or x*1 (the answer is x)",
    3: "two-digit plus two-digit, the units carry",
    4: "three-digit plus three-digit, at least one carry",
    5: "three-digit minus three-digit, at least one borrow",
}


def has_carry(a: int, b: int) -> bool:
    """Whether column addition of a and b carries in any column."""
    return any("carry" in step for step in add_steps(a, b))


def has_borrow(a: int, b: int) -> bool:
    """Whether column subtraction a-b (a >= b) borrows in any column."""
    return any("borrow" in step for step in sub_steps(a, b))


def make_problem(level: int, rng: random.Random) -> Problem:
    if level in (1, 2):
        x, first = rng.randint(100, 999), rng.random() < 0.5
        op, y = {1: ("-", x) if first else ("*", 0), 2: ("+", 0) if first else ("*", 1)}[level]
        steps = {"-": sub_steps, "+": add_steps, "*": mul_steps}[op](x, y)
        return Problem(f"{x}{op}{y}", 0 if level == 1 else x, tuple(steps), level)
    if level == 3:
        while True:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if a % 10 + b % 10 >= 10:
                return Problem(f"{a}+{b}", a + b, tuple(add_steps(a, b)), level)
    if level == 4:
        while True:
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            if has_carry(a, b):
                return Problem(f"{a}+{b}", a + b, tuple(add_steps(a, b)), level)
    if level == 5:
        while True:
            a, b = sorted((rng.randint(100, 999), rng.randint(100, 999)), reverse=True)
            if has_borrow(a, b):
                return Problem(f"{a}-{b}", a - b, tuple(sub_steps(a, b)), level)
    raise ValueError(f"shortcut has levels {sorted(LEVELS)}, got {level}")


class ShortcutWorld(ArithWorld):
    """Identities (easy, long traces) and carries (hard); the prompt, demonstrations, splits and determinism are
    arith's."""

    name = "shortcut"
    levels = tuple(LEVELS)
    make_problem = staticmethod(make_problem)
