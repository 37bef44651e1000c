"""The `guess` world: a multi-turn toy. Guess a secret number; the environment answers higher, lower or correct.

The prompt never shows the secret, so only the feedback can find it: a policy must act, read and act again, and
binary search is the demonstrated strategy. Every example is a pure function of (seed, split, index). The policy's
turn ends with the tokenizer's EOS (`<|im_end|>`, a single special token in the shipped models' tokenizer, which
has no other turn tags), and the ChatRenderer renders each answer as a user message.
"""

from __future__ import annotations

import random
import re

from reasonrl.data import Example
from reasonrl.envs.base import StepResult

LEVELS = {1: 4, 2: 8, 3: 16, 4: 32}  # level -> the secret is in 1..LEVELS[level]
GUESS = re.compile(r"guess\s*(-?\d+)")


class GuessEnv:
    """One game. Deterministic: the secret comes from the example; actions are parsed, never sampled."""

    def __init__(self, secret: int, high: int):
        self.secret, self.high = secret, high
        self.guesses, self.won = 0, False

    def reset(self, example: Example) -> str:
        self.guesses, self.won = 0, False
        return str(example.prompt)

    def step(self, action: str) -> StepResult:
        found = GUESS.findall(action)
        if not found:
            return StepResult("Reply with: guess N", 0.0, False, {"no_action": True})
        guess = int(found[-1])  # the last guess of the turn counts (a think block may mention others)
        self.guesses += 1
        if guess == self.secret:
            self.won = True
            return StepResult("correct", 0.0, True, {"guess": guess})
        return StepResult("higher" if guess < self.secret else "lower", 0.0, False, {"guess": guess})

    def score(self) -> dict[str, float]:
        return {"reward": float(self.won), "success": float(self.won), "guesses": float(self.guesses)}


def binary_search(secret: int, high: int) -> list[str]:
    """The demonstration: the policy turns of a binary search for `secret` in 1..high."""
    low, turns = 1, []
    while True:
        mid = (low + high) // 2
        turns.append(f"guess {mid}")
        if mid == secret:
            return turns
        low, high = (mid + 1, high) if mid < secret else (low, mid - 1)


class GuessWorld:
    """Guess-the-number games by level (range size); `make_env` marks it multi-turn."""

    name = "guess"
    levels = tuple(LEVELS)

    def __init__(self, levels: list[int] | tuple[int, ...] = (1, 2, 3), seed: int = 0):
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or not levels:
            raise ValueError(f"guess levels must be a non-empty subset of {list(LEVELS)}, got {list(levels)}")
        self.train_levels, self.seed = tuple(levels), seed

    @staticmethod
    def prompt(high: int) -> str:
        return f"I picked a number from 1 to {high}. Find it: reply guess N, and I answer higher, lower or correct."

    def to_example(self, level: int, secret: int) -> Example:
        high = LEVELS[level]
        return Example(
            prompt=self.prompt(high),
            answer=str(secret),
            level=level,
            meta={"world": self.name, "secret": secret, "high": high},
        )

    def example(self, index: int, split: str = "train") -> Example:
        rng = random.Random(f"{self.name}/{self.seed}/{split}/{index}")
        level = rng.choice(self.train_levels)
        return self.to_example(level, rng.randint(1, LEVELS[level]))

    def eval_set(self, levels: list[int] | tuple[int, ...] | None = None, n_per_level: int = 50) -> list[Example]:
        """Per level, every secret once in a seeded order, at most `n_per_level` (the prompt never shows it, so
        there is nothing to hold out)."""
        out = []
        for level in levels or self.train_levels:
            if level not in LEVELS:
                raise ValueError(f"guess has levels {list(LEVELS)}, got {level}")
            secrets = list(range(1, LEVELS[level] + 1))
            random.Random(f"{self.name}/{self.seed}/eval/{level}").shuffle(secrets)
            out += [self.to_example(level, s) for s in secrets[:n_per_level]]
        return out

    def make_env(self, example: Example) -> GuessEnv:
        return GuessEnv(int(example.meta["secret"]), int(example.meta["high"]))

    def demonstration(self, example: Example) -> list[str]:
        return binary_search(int(example.meta["secret"]), int(example.meta["high"]))
