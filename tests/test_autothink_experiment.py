"""experiments/autothink.py's validation split and experiments/autothink_report.py's verdicts and paired differences."""

import json
import sys
from pathlib import Path

import pytest

from reasonrl.worlds.shortcut import ShortcutWorld

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import each other flat

from autothink_report import EQUAL_MARGIN, paired, verdict, verdicts
from harness import validation_file


def test_shortcut_validation_split_avoids_every_test_level(tmp_path):
    """The test set is 50 problems per level of levels 1-5; levels 1-2 hold under 200 held-out problems each, so the
    split must exclude the test set actually used (not 200 per level of levels 1-3)."""
    world = ShortcutWorld((1, 2, 3, 4, 5), seed=0)
    path = validation_file(tmp_path / "v.jsonl", world, (1, 2, 3, 4, 5), test_n=50, n_per_level=40)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    test = {ex.prompt for ex in world.eval_set((1, 2, 3, 4, 5), 50)}
    assert [sum(r["level"] == lv for r in rows) for lv in range(1, 6)] == [40] * 5
    assert not {r["prompt"] for r in rows} & test
    assert len({r["prompt"] for r in rows}) == 200


def test_verdict_needs_the_whole_interval_inside_the_margin():
    # mean 0, stdev 1, 3 seeds: half-width 4.303 / sqrt(3) = 2.484
    assert verdict([-1.0, 0.0, 1.0], -EQUAL_MARGIN, EQUAL_MARGIN)[0] == "inconclusive"
    status, lo, hi = verdict([-0.1, 0.0, 0.1], -EQUAL_MARGIN, EQUAL_MARGIN)
    assert status == "holds" and lo == pytest.approx(-0.2484, abs=1e-4) and hi == pytest.approx(0.2484, abs=1e-4)
    assert verdict([-9.0, -8.0, -7.0], -EQUAL_MARGIN, EQUAL_MARGIN)[0] == "does not hold"
    assert verdict([-30.0, -32.0, -34.0], float("-inf"), 0.0)[0] == "holds"


def _modes(accuracy: float, tokens: float, think: list[float]) -> dict:
    """Greedy mode metrics with the same accuracy and tokens on every level."""
    m = {"accuracy": accuracy, "tokens": tokens, "think_rate": sum(think) / 5}
    for lv, rate in enumerate(think, 1):
        m |= {f"accuracy/level_{lv}": accuracy, f"tokens/level_{lv}": tokens, f"think_rate/level_{lv}": rate}
    return {"greedy": m}


class _Exp:
    """The fields of autothink_report.Experiment that `paired` and `verdicts` read."""

    world, levels = "shortcut", (1, 2, 3, 4, 5)

    def __init__(self, at: list[dict], grpo: list[dict]):
        self.runs = {"autothink": at, "grpo": grpo}

    def arm(self, name: str) -> list[dict]:
        return self.runs[name]


def test_paired_differences_and_claims_by_hand():
    at = [_modes(0.90, 36.0, [0, 0, 1, 1, 1]), _modes(0.92, 40.0, [0, 0, 1, 1, 1]), _modes(0.91, 38.0, [0, 0, 1, 1, 1])]
    grpo = [_modes(0.95, 50.0, [1] * 5)] * 3
    exp = _Exp(at, grpo)
    diffs = paired(exp)
    assert diffs["accuracy, all levels (points)"] == pytest.approx([-5.0, -3.0, -4.0])
    assert diffs["tokens, all levels (%)"] == pytest.approx([-28.0, -20.0, -24.0])
    assert diffs["AutoThink think rate, L3-5 minus L1-2 (points)"] == pytest.approx([100.0] * 3)
    lines = verdicts(exp, diffs)
    # tokens: mean -24, half-width 4.303 * 4 / sqrt(3) = 9.94: the interval is below 0
    assert "Fewer tokens than always thinking: holds" in lines[0]
    # accuracy: mean -4, half-width 4.303 * 1 / sqrt(3) = 2.48: -6.5 to -1.5 crosses -2
    assert "inconclusive" in lines[1] and "-6.5 to -1.5" in lines[1]
    assert "holds" in lines[2]
