"""Generation engines and the Rollouts record they produce."""

from reasonrl.rollout.base import RolloutEngine, Rollouts, SamplingParams

__all__ = ["RolloutEngine", "Rollouts", "SamplingParams"]
