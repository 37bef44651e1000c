"""Learning on the multi-turn guess world, step-counted (never timed): SFT on demonstrations played through the env,
then GRPO on episodes raises the sampled success."""

import json

import pytest

from reasonrl.config import load_config
from reasonrl.trainer import Trainer

WORLD = ["data.train=world:guess", "data.levels=[1,2,3]", "data.eval_n=16", "rollout.turns.max_turns=5"]
COMMON = WORLD + ["train.progress=false", "train.seed=0", "train.micro_batch_size=64", "optim.warmup_steps=0"]


@pytest.mark.slow
def test_grpo_raises_success_on_the_guess_world_after_a_short_sft(tmp_path):
    # 40 SFT steps from the shipped student: measured 46% greedy success on the 28 eval games (levels 1-3).
    sft = load_config(None, COMMON + ["algo.name=sft", "train.steps=40", "train.prompts_per_step=16", "optim.lr=3e-3"])
    Trainer(sft, run_dir=tmp_path / "sft").train()
    grpo = load_config(
        None,
        COMMON
        + [
            f"model.path={tmp_path / 'sft' / 'final'}",
            "algo.name=grpo",
            "rollout.engine=hf",
            "rollout.num_generations=8",
            "rollout.turns.max_turn_tokens=16",
            "train.steps=30",
            "train.prompts_per_step=8",
            "train.eval_every=0",
            "optim.lr=2e-4",
        ],
    )
    Trainer(grpo, run_dir=tmp_path / "grpo").train()
    lines = (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()
    rewards = [r["reward"] for r in map(json.loads, lines) if "reward" in r]
    # measured (seed 0, 2 shared CPU cores): sampled success 0.45 over steps 1-10 -> 0.56 over steps 21-30
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.06, rewards
