"""Run under torchrun by tests/test_distributed.py (not a test module itself).

torchrun --nproc_per_node 2 tests/dist_worker.py train RUN_DIR [resume] override ...
    trains through the real Trainer, then every rank writes its own weights to RUN_DIR/rank<R>.safetensors
torchrun --nproc_per_node 2 tests/dist_worker.py helpers OUT_DIR
    runs the distributed helpers on crafted inputs; every rank writes what it got to OUT_DIR/rank<R>.json
torchrun --nproc_per_node 2 tests/dist_worker.py bnpo OUT_DIR
    the bnpo loss of a fixed batch, each rank its half in micro-batches of 2 rows; rank 0 writes the batch and
    the summed loss and all-reduced gradient to OUT_DIR/bnpo.json
torchrun --nproc_per_node 2 tests/dist_worker.py step OUT_DIR override ...   (or plain `python`: one process)
    one trainer step of the configured algorithm on scripted rollouts and rewards that depend only on the prompt and
    the sample index, so any number of ranks sees the same global batch; rank 0 writes the step's loss and the
    all-reduced gradient to OUT_DIR/step.safetensors
"""

import json
import sys
from pathlib import Path

import safetensors.torch
import torch

from reasonrl import distributed, fsdp
from reasonrl.algos.advantages import ADVANTAGE_ESTIMATORS
from reasonrl.algos.batch import rollout_advantages
from reasonrl.algos.losses import policy_loss
from reasonrl.rollout.base import Rollouts


def train(run_dir: str, args: list[str]) -> None:
    from reasonrl.config import load_config
    from reasonrl.trainer import Trainer

    resume = bool(args) and args[0] == "resume"
    overrides = args[1:] if resume else args
    config = load_config(str(Path(run_dir) / "config.yaml") if resume else None, overrides)
    trainer = Trainer(config, run_dir=run_dir, resume=resume)
    trainer.train()
    state = trainer.model.state_dict()
    if fsdp.is_sharded(trainer.model):  # the full weights, gathered on rank 0
        state = fsdp.full_model_state(trainer.model)
        if trainer.rank:
            return
    state = {k: v.contiguous() for k, v in state.items() if "lm_head" not in k}  # tied to the embedding
    safetensors.torch.save_file(state, str(Path(run_dir) / f"rank{trainer.rank}.safetensors"))


# Completions the scripted engine picks from: thinking and direct answers of different lengths.
SCRIPTED = [
    "<think>\n1+1=2\n</think> \\boxed{2}",
    "</think> \\boxed{4}",
    "<think>\nlet me add the digits one by one\n</think> \\boxed{7}",
    "<think>\nhm\n</think> \\boxed{3}",
    "</think> \\boxed{5}",
    "<think>\n2*3=6 and 6+1=7\n</think> \\boxed{7}",
]


class ScriptedEngine:
    """Sample j of a prompt is a function of the prompt's ids and j alone."""

    def __init__(self, tokenizer):
        from reasonrl.models import encode_completion

        self.choices = [encode_completion(tokenizer, t) for t in SCRIPTED]

    def generate(self, prompt_ids, n, params):
        from reasonrl.rollout.base import Rollouts

        out = Rollouts([], [], [], [], [])
        for i, p in enumerate(prompt_ids):
            for j in range(n):
                ids = self.choices[(sum(p) * 7 + j * 5 + len(p)) % len(self.choices)]
                out.prompt_ids.append(list(p))
                out.completion_ids.append(ids[: params.max_new_tokens])
                out.logprobs.append([-0.5 - 0.01 * t for t in range(min(len(ids), params.max_new_tokens))])
                out.finished.append(len(ids) <= params.max_new_tokens)
                out.group.append(i)
        return out

    def sync_weights(self, model):
        pass


class ScriptedRewards:
    """R0-like rewards from the completion text and the prompt (AutoThink reads the `autothink` component)."""

    def score(self, prompts, completions, fields):
        from reasonrl.algos.autothink import R0, is_thinking
        from reasonrl.rewards import RewardResult

        values = [R0[(is_thinking(c), (len(c) + 3 * len(p)) % 3 != 0)] for p, c in zip(prompts, completions)]
        return RewardResult(values, {"autothink": values})


def step(out_dir: str, overrides: list[str]) -> None:
    import reasonrl.algos  # noqa: F401  (registers the algorithms' config sections)
    from reasonrl.config import load_config
    from reasonrl.trainer import Trainer

    trainer = Trainer(load_config(None, overrides), run_dir=Path(out_dir) / "run")
    trainer.ctx.engine, trainer.ctx.rewards = ScriptedEngine(trainer.tokenizer), ScriptedRewards()
    metrics = trainer._train_step(1)
    if trainer.rank == 0:
        out = {f"grad/{k}": p.grad for k, p in trainer.model.named_parameters() if p.grad is not None}
        out["loss"] = torch.tensor([metrics["loss"]], dtype=torch.float64)
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in out.items()}, str(Path(out_dir) / "step.safetensors")
        )
    distributed.shutdown()


def helpers(out_dir: str) -> None:
    distributed.init_from_env()
    r, world = distributed.rank(), distributed.world_size()

    class Stream:  # a global stream of integers
        def __init__(self):
            self.position = 0

        def next(self, n):
            self.position += n
            return list(range(self.position - n, self.position))

    stream = distributed.ShardedStream(Stream(), r, world)
    draws = [stream.next(4), stream.next(6)]
    totals = distributed.combine_totals(
        distributed.all_gather_json({"num_tokens": 10.0 * (r + 1), "max_completion_length": 16.0 + r})
    )
    # Rank r holds groups of different sizes and rewards; REINFORCE++ normalises over the whole batch.
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0][: 2 + 2 * r]) + r
    groups = torch.tensor([0, 0, 1, 1][: 2 + 2 * r])
    advantages = distributed.across_ranks(
        lambda g, rw: ADVANTAGE_ESTIMATORS["reinforce_pp"](rw, g, "group"), groups, rewards
    )
    # Per-turn credit: batch-scaled turn rewards are normalised over every rank's rows too.
    turns = Rollouts([[1]] * len(groups), [[3] * (k + 2) for k in range(len(groups))], [], [True] * len(groups), [])
    turns.group, turns.rewards = groups.tolist(), rewards.tolist()
    turns.token_rewards = [[0.0] * (k + 1) + [float(k + 2 * r)] for k in range(len(groups))]
    process = rollout_advantages(turns, "process", "batch")
    summed = distributed.sum_across_ranks({"x": float(r + 1)})
    mean = distributed.combine_means(distributed.all_gather_json({"y": float(r + 1), f"only{r}": 1.0}))
    grads = torch.nn.Linear(2, 1, bias=False)
    grads.weight.grad = torch.full_like(grads.weight, float(r + 1))
    distributed.all_reduce_gradients([grads.weight])
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.bias, 0.0)
    torch.nn.init.constant_(model.weight, 1.0 + (0.5 if r == 1 and "diverge" in out_dir else 0.0))
    result = {
        "draws": draws,
        "totals": totals,
        "rewards": rewards.tolist(),
        "groups": groups.tolist(),
        "advantages": advantages.tolist(),
        "token_rewards": turns.token_rewards,
        "process": process.tolist(),
        "summed": summed,
        "mean": mean,
        "grad": grads.weight.grad.tolist(),
        "agree": distributed.replicas_agree(model),
    }
    Path(out_dir, f"rank{r}.json").write_text(json.dumps(result))
    distributed.shutdown()


def bnpo(out_dir: str) -> None:
    """Rank r takes rows 4r..4r+3 of an 8-row batch (equal token counts per pair of rows, ragged rows), in
    micro-batches of 2, with the step's totals combined over ranks as the trainer combines them."""
    distributed.init_from_env()
    r = distributed.rank()
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(5) < torch.tensor([5, 1, 3, 3, 2, 4, 4, 2]).unsqueeze(-1)).float()
    old = -torch.rand(8, 5, generator=g) * 3
    batch = {
        "logp": old + 0.3 * torch.randn(8, 5, generator=g),
        "old": old,
        "ref": old + 0.3 * torch.randn(8, 5, generator=g),
        "adv": torch.randn(8, generator=g),
        "mask": mask,
    }
    mine = slice(4 * r, 4 * r + 4)
    local = {"num_seqs": 4.0, "num_tokens": float(mask[mine].sum()), "max_completion_length": 5.0}
    totals = distributed.combine_totals(distributed.all_gather_json(local))
    logp = torch.nn.Parameter(batch["logp"].clone())
    loss_sum = 0.0
    for start in range(4 * r, 4 * r + 4, 2):
        rows = slice(start, start + 2)
        loss, _ = policy_loss(
            logp[rows],
            batch["old"][rows],
            batch["adv"][rows],
            mask[rows],
            loss_type="bnpo",
            totals=totals,
            beta=0.05,
            ref_logp=batch["ref"][rows],
        )
        loss.backward()
        loss_sum += float(loss.detach())
    distributed.all_reduce_gradients([logp])
    summed = distributed.sum_across_ranks({"loss": loss_sum})
    if r == 0:
        result = {
            "batch": {k: v.tolist() for k, v in batch.items()},
            "totals": totals,
            "loss": summed["loss"],
            "grad": logp.grad.tolist(),
        }
        Path(out_dir, "bnpo.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    mode, path, *rest = sys.argv[1:]
    {
        "train": lambda: train(path, rest),
        "helpers": lambda: helpers(path),
        "bnpo": lambda: bnpo(path),
        "step": lambda: step(path, rest),
    }[mode]()
