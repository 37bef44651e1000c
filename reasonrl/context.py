"""What an algorithm sees of the run (`Context`): the model, tokenizer, data stream, engine, rewards and its own state.

Apart from trainer.py so that the algorithm interface (algos/base.py) names it without depending on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reasonrl.config import Config
from reasonrl.data import Example, PromptStream
from reasonrl.evaluation import check_room
from reasonrl.models import encode_prompt, model_context
from reasonrl.rewards import RewardManager
from reasonrl.rollout.base import RolloutEngine
from reasonrl.timing import StepTimer


@dataclass
class Context:
    """What an algorithm sees of the run."""

    config: Config
    model: torch.nn.Module
    tokenizer: Any
    stream: PromptStream
    engine: RolloutEngine | None = None
    rewards: RewardManager | None = None
    ref_model: torch.nn.Module | None = None
    run_dir: Path | None = None
    step: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # algorithm state that must survive a resume
    timer: StepTimer = field(default_factory=StepTimer)  # algorithms time their own phases (generate, reward)

    def encode_prompts(self, examples: list[Example]) -> list[list[int]]:
        """Prompt token ids; a prompt that leaves no room for the completion in the model's context is an error."""
        ids = [encode_prompt(self.tokenizer, ex.prompt, self.config.data.system_prompt) for ex in examples]
        check_room(
            ids,
            examples,
            self.config.rollout.max_completion_length,
            model_context(self.model),
            "rollout.max_completion_length",
        )
        return ids
