"""Generation engines and the Rollouts record they produce."""

from reasonrl.rollout.base import Rollouts, RolloutEngine, SamplingParams

__all__ = ["Rollouts", "RolloutEngine", "SamplingParams"]
