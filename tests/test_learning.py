"""Learning, step-counted (never timed): RL from the shipped student must raise held-out accuracy."""

import json

import pytest

from reasonrl.config import load_config
from reasonrl.trainer import Trainer

STEPS = 30


@pytest.mark.slow
def test_grpo_raises_student_accuracy_on_levels_1_to_3(tmp_path):
    config = load_config(None, [
        "model.path=student", "data.levels=[1,2,3]", "data.eval_n=40", "rollout.num_generations=8",
        "rollout.max_completion_length=64", "train.prompts_per_step=8", "train.micro_batch_size=64",
        f"train.steps={STEPS}", "optim.lr=2e-4", "optim.warmup_steps=5", "train.progress=false", "train.seed=0",
    ])
    trainer = Trainer(config, run_dir=tmp_path / "grpo")
    final = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    before = rows[0]["eval/accuracy"]
    assert final["eval/accuracy"] >= before + MARGIN, (before, final["eval/accuracy"])
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5  # training reward rises too
