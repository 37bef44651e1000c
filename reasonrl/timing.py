"""Where a step's time goes: named sections summed per step and logged as `time/<name>` seconds.

Only leaf sections are timed (generate, reward, forward, backward, optimizer, ...), so they add up; whatever a
step spends outside them is logged as `time/other`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StepTimer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - started

    def pop(self, step_time: float | None = None) -> dict[str, float]:
        """This step's sections as metrics (and the untimed rest of `step_time`), then start afresh."""
        out = {f"time/{k}": v for k, v in self.totals.items()}
        if step_time is not None:
            out["time/other"] = max(0.0, step_time - sum(self.totals.values()))
        self.totals = {}
        return out
