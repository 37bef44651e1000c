"""Example records: the one shape every data source is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One task. `prompt` is a string or a list of chat messages; `answer` the gold answer ('' if unknown);
    `solution` a step-by-step demonstration completion and `direct` a direct-answer completion, when known."""

    prompt: str | list[dict[str, str]]
    answer: str
    solution: str | None = None
    direct: str | None = None
    level: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
