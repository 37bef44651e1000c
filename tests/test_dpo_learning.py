"""DPO-VP learns, step-counted (never timed): two rounds from the shipped student raise greedy accuracy."""

import json

from reasonrl.config import load_config
from reasonrl.trainer import Trainer


def test_two_dpo_vp_rounds_raise_student_accuracy_on_levels_1_to_3(tmp_path):
    """configs/dpo_vp.yaml for 2 rounds (2 x 128 prompts x 8 samples, 8 optimizer steps); about 30 s on one thread.

    Measured on 408 held-out problems with the current sampler, seeds 0/1/2/3: 50.7% -> 53.7 / 58.3 / 60.3 / 55.4%
    (sampled accuracy, round 2 vs round 1, seeds 1/2/3: +5.5 / +7.6 / +10.5 points). Seed 1 is asserted, a middle one;
    seed 0 is the weakest. Before the decoder's row compaction changed which row draws which random number, seeds
    0/2/3/4 gave 56.6 / 56.6 / 56.9 / 54.2%, and on 808 other problems the seed-0 model won 102 and lost 65 against
    the student (McNemar p = 0.005): a real gain, not eval noise.
    """
    config = load_config(
        "configs/dpo_vp.yaml",
        [
            "algo.rounds=2",
            "data.eval_n=200",
            "train.seed=1",
            "train.progress=false",
            f"train.output_dir={tmp_path / 'dpo_vp'}",
        ],
    )
    final = Trainer(config, run_dir=tmp_path / "dpo_vp").train()
    rows = [json.loads(line) for line in (tmp_path / "dpo_vp" / "metrics.jsonl").read_text().splitlines()]
    before = rows[0]["eval/accuracy"]
    assert final["eval/accuracy"] >= before + 0.03, (before, final["eval/accuracy"])  # measured: 50.7% -> 58.3%
    sampled = [r["reward"] for r in rows if "reward" in r]  # accuracy of each round's 1024 samples at T = 0.7
    assert len(sampled) == 2 and sampled[1] >= sampled[0] + 0.03, sampled  # measured: 55.4% -> 60.8%
