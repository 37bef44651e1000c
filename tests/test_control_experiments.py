"""The arithmetic behind experiments/pebble.py's and experiments/dtr.py's pages: seed-by-seed combinations of arms,
verdicts from t-intervals, labeller-call counts, and the choice of DTR's medium behaviour checkpoint."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import each other flat

import dtr
from control_report import combine, verdict
from pebble_report import asks


def test_combine_weights_arms_seed_by_seed_and_skips_missing_or_nan_seeds():
    per_arm = {
        "oracle": {0: 0.8, 1: 0.6, 2: 0.9},
        "noisy": {0: 0.2, 1: 0.4, 2: 0.3},
        "rl_sallm_f": {0: 0.7, 1: float("nan"), 2: 0.5, 3: 1.0},
    }
    # the gap claim: (rl_sallm_f - noisy) - 0.5 (oracle - noisy); seed 1 is nan, seed 3 lacks the other arms
    got = combine(per_arm, {"rl_sallm_f": 1, "noisy": -0.5, "oracle": -0.5})
    assert got == pytest.approx([(0.7 - 0.2) - 0.5 * (0.8 - 0.2), (0.5 - 0.3) - 0.5 * (0.9 - 0.3)])
    assert combine(per_arm, {"oracle": 1, "noisy": -1}) == pytest.approx([0.6, 0.2, 0.6])


def test_verdict_reads_the_95_percent_t_interval():
    # mean 1, stdev 1, 3 seeds: half-width 4.303 / sqrt(3) = 2.484 -> [-1.48, 3.48] straddles 0
    assert verdict([0.0, 1.0, 2.0], ">") == "inconclusive"
    # mean 2, stdev 0.1: [1.75, 2.25]
    assert verdict([1.9, 2.0, 2.1], ">") == "holds"
    assert verdict([1.9, 2.0, 2.1], "<") == "does not hold"
    assert verdict([-2.1, -2.0, -1.9], ">") == "does not hold"
    assert verdict([-2.1, -2.0, -1.9], "<") == "holds"
    assert verdict([5.0], ">").startswith("inconclusive")


def test_labeller_calls_add_swapped_asks_and_imaginations():
    result = {"pref/feedback": 500, "pref/ambiguous_rate": 0.2, "pref/imagined": 150, "pref/imagine_failed": 3}
    # 400 strict first answers are asked again swapped; 153 imaginations
    assert asks(result, ("feedback.double_check=true",)) == pytest.approx(500 + 400 + 153)
    assert asks(result, ()) == pytest.approx(500 + 153)
    assert math.isnan(asks(result | {"pref/feedback": float("nan")}, ()))


def test_medium_checkpoint_is_the_saved_one_closest_to_a_third_of_the_expert(tmp_path):
    # 15k (1,080) would be closest, but its checkpoint is gone; of the saved ones 10k (1,200) is closest to 1,078
    records = [{"step": 0, "eval/return": 10.0}, {"step": 5000, "eval/return": 300.0}]
    records += [{"step": 10000, "eval/return": 1200.0}, {"step": 15000, "eval/return": 1080.0}]
    records += [{"step": 17000, "reward": 5.0}, {"step": 20000, "eval/return": 2500.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for step in (5000, 10000, 20000):
        (tmp_path / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
    assert abs(dtr.MEDIUM_RETURN - 1078.1) < 0.01
    assert dtr.medium_checkpoint(tmp_path) == (10000, 1200.0)
