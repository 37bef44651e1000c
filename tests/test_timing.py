"""Each step logs where its time went; the phases and the untimed rest add up to the step time."""

import json

import pytest

from reasonrl.timing import StepTimer
from reasonrl.trainer import Trainer


def test_step_timer_sums_sections_and_reports_the_rest():
    timer = StepTimer()
    timer.totals = {"generate": 0.5, "forward": 0.2}
    with timer.section("forward"):
        pass
    out = timer.pop(step_time=1.0)
    assert out["time/generate"] == 0.5 and 0.2 <= out["time/forward"] < 0.21
    assert out["time/other"] == pytest.approx(1.0 - out["time/generate"] - out["time/forward"])
    assert timer.pop() == {}  # popped: the next step starts from zero


def test_grpo_steps_log_each_phase(quick_config, tmp_path):
    cfg = quick_config("rewards.funcs=format:1.0", "train.micro_batch_size=8")
    Trainer(cfg, run_dir=tmp_path / "t").train()
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time" in r]
    assert len(steps) == 2
    for r in steps:
        phases = {k: v for k, v in r.items() if k.startswith("time/")}
        assert {"time/generate", "time/reward", "time/forward", "time/backward", "time/optimizer", "time/other"} <= set(
            phases
        )
        assert all(v >= 0 for v in phases.values())
        assert sum(phases.values()) == pytest.approx(r["step_time"], rel=1e-3, abs=1e-4)
