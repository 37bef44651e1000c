"""Reward functions: plain callables `fn(prompts, completions, **fields) -> list[float]`, a registry, and a
manager that weights them and runs math verification in worker processes with real timeouts."""

from reasonrl.rewards.format import boxed_reward, format_reward, is_well_formatted, soft_overlong_punishment
from reasonrl.rewards.manager import RewardError, RewardManager, RewardResult
from reasonrl.rewards.math import accuracy, extract_boxed, math_verifier, normalize_gold, numeric_match
from reasonrl.rewards.pool import Outcome, VerifierPool
from reasonrl.rewards.registry import REWARD_FUNCS, Scores, get_reward, register_reward

__all__ = [
    "REWARD_FUNCS",
    "Outcome",
    "RewardError",
    "RewardManager",
    "RewardResult",
    "Scores",
    "VerifierPool",
    "accuracy",
    "boxed_reward",
    "extract_boxed",
    "format_reward",
    "get_reward",
    "is_well_formatted",
    "math_verifier",
    "normalize_gold",
    "numeric_match",
    "register_reward",
    "soft_overlong_punishment",
]
