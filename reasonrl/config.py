"""Typed configuration: dataclasses, YAML files and dotted overrides (`algo.beta=0.0`).

Unknown keys are errors that name the key and suggest close matches. The `algo` section's dataclass is
chosen by `algo.name` from the algorithm registry, so each algorithm owns its own options.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    path: str = "student"  # a shipped checkpoint name (student, teacher) or a local HF model directory
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    ref_path: str | None = None  # reference model for KL; defaults to `path`


@dataclass
class DataConfig:
    train: str = "world:arith"  # world:NAME | FILE.jsonl | FILE.parquet | reasoning_gym:NAME
    eval: str | None = None  # defaults to the train source's held-out split
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # world levels used for training
    eval_levels: list[int] | None = None  # defaults to `levels`
    eval_n: int = 50  # eval examples per level (or in total for files)
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    solution_field: str = "solution"
    system_prompt: str | None = None
    seed: int = 0


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | replay
    replay_dir: str | None = None
    num_generations: int = 8
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eval_max_completion_length: int | None = None  # defaults to max_completion_length
    save_rollouts: bool = False  # write each step's rollouts under RUN_DIR/rollouts for --replay


@dataclass
class RewardSpec:
    name: str = "accuracy"
    weight: float = 1.0


@dataclass
class RewardConfig:
    funcs: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("accuracy", 1.0)])
    timeout: float = 5.0  # seconds per verification, enforced in a worker process
    num_workers: int = 1


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 40
    prompts_per_step: int = 8
    micro_batch_size: int = 32  # sequences per forward/backward; the loss is normalised globally
    eval_every: int = 0  # 0: only before and after training
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    output_dir: str = "runs/{algo}-{time}"
    max_nan_steps: int = 3  # consecutive non-finite steps before the run stops
    progress: bool = True
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb | trackio


@dataclass
class AlgoConfig:
    """Base of every algorithm's options; `name` picks the algorithm."""

    name: str = "grpo"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
