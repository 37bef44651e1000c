"""Learning on the multi-turn guess world, step-counted (never timed): SFT on demonstrations played through the env,
then GRPO on episodes (FastEngine's KV-cached session) raises the sampled success by a clear margin."""

import json

import pytest

from reasonrl.config import load_config
from reasonrl.trainer import Trainer

WORLD = ["data.train=world:guess", "data.levels=[1,2,3]", "data.eval_n=16", "rollout.turns.max_turns=5"]
COMMON = WORLD + ["train.progress=false", "train.seed=0", "train.micro_batch_size=64", "optim.warmup_steps=0"]


@pytest.mark.slow
def test_grpo_raises_success_on_the_guess_world_after_a_short_sft(tmp_path):
    # 40 SFT steps from the shipped student: 10 of the 28 games of levels 1-3 won greedily (0.357)
    sft = ["algo.name=sft", "train.steps=40", "train.prompts_per_step=16", "train.eval_every=0", "optim.lr=3e-3"]
    Trainer(load_config(None, COMMON + sft), run_dir=tmp_path / "sft").train()
    grpo = [f"model.path={tmp_path / 'sft' / 'final'}", "algo.name=grpo", "rollout.num_generations=8"]
    grpo += ["rollout.turns.max_turn_tokens=16", "train.steps=60", "train.prompts_per_step=8", "train.eval_every=0"]
    final = Trainer(load_config(None, COMMON + grpo + ["optim.lr=3e-4"]), run_dir=tmp_path / "grpo").train()
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in rows if "reward" in r]  # the reward is the episode's success (0 or 1)
    first, last = sum(rewards[:20]) / 20, sum(rewards[-20:]) / 20
    # measured (1 thread, 64 episodes a step): sampled success over steps 1-20 -> 41-60 rose by 0.134 / 0.162 /
    # 0.156 for seeds 0 / 1 / 2 (a 20-step mean's standard error is about 0.015); greedy success on the 28 games
    # rose by 1 / 3 / 3 games, so only "not lower" is asserted of it
    assert last > first + 0.07, rewards
    assert final["eval/accuracy"] >= rows[0]["eval/accuracy"], (rows[0], final)
