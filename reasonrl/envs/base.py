"""The environment interface of multi-turn worlds: text in, text out, deterministic given (example, actions).

An `Env` is one episode. It never sees token ids: the policy's turn arrives decoded (`step(action)`), and what it
answers is rendered into tokens once by a renderer (envs/render.py). Determinism is what lets record/replay and
resume re-create an episode exactly. A world marks itself multi-turn by offering `make_env(example) -> Env`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from reasonrl.data import Example


@dataclass
class StepResult:
    """The environment's answer to one policy turn."""

    observation: str | list[int] = ""  # text for the renderer, or exact token ids (e.g. a forced tag)
    reward: float = 0.0  # per-turn reward for the action just taken
    done: bool = False
    # Parsed action, validity ... (algorithms read it). `no_action: True` marks a turn without a parsable action:
    # the episode driver ends the episode there (stop reason no_action) and adds TurnLimits.no_action_penalty.
    info: dict[str, Any] = field(default_factory=dict)


class Env(Protocol):
    """One episode. Deterministic given (example, actions): replay and resume re-create it exactly. An env may name
    its task (`task: str`); window mode then shows it, instead of the first observation, from step 2 on."""

    def reset(self, example: Example) -> str:
        """The first observation; it becomes the episode's prompt."""
        ...

    def step(self, action: str) -> StepResult:
        """Answer the policy's decoded turn."""
        ...

    def score(self) -> dict[str, float]:
        """The episode's outcome, at least {"reward": ...}; "success" when the world has one."""
        ...
