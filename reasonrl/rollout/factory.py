"""Which rollout engine a run samples with: rollout.engine (auto, hf, replay, vllm, vllm-server), wrapped for
recording when rollout.save_rollouts is set."""

from __future__ import annotations

from pathlib import Path

import torch

from reasonrl import parallel
from reasonrl.config import Config
from reasonrl.models import resolve_model_path
from reasonrl.rollout.base import RolloutEngine


def make_engine(
    cfg: Config, model: torch.nn.Module, tokenizer, run_dir: Path, strategy: parallel.Single | None = None
) -> RolloutEngine:
    """The configured engine (replay and vllm-server need to know the ranks of `strategy`, default one process);
    with rollout.save_rollouts every sampling call is recorded under RUN_DIR/rollouts."""
    strategy = strategy or parallel.Single()
    from reasonrl.rollout.fast import FastEngine
    from reasonrl.rollout.hf import HFEngine
    from reasonrl.rollout.replay import RecordingEngine, ReplayEngine

    if cfg.rollout.engine not in ("auto", "hf", "replay", "vllm", "vllm-server"):
        raise ValueError(f"unknown rollout.engine {cfg.rollout.engine!r}; choose auto, hf, replay, vllm or vllm-server")
    if cfg.rollout.engine == "vllm":
        from reasonrl.rollout.vllm import VLLMEngine

        return VLLMEngine(
            model,
            tokenizer,
            str(resolve_model_path(cfg.model.path)),
            cfg.rollout.vllm.gpu_memory_utilization,
            cfg.rollout.vllm.sleep,
            cfg.train.seed,
        )
    if cfg.rollout.engine == "vllm-server":
        engine = vllm_server_engine(cfg, tokenizer, strategy.world)
    else:
        engine = HFEngine(model, tokenizer) if cfg.rollout.engine == "hf" else FastEngine(model, tokenizer)
    if cfg.rollout.engine == "replay":
        if not cfg.rollout.replay_dir:
            raise ValueError("rollout.engine=replay needs rollout.replay_dir (the rollouts/ folder of a recorded run)")
        engine = ReplayEngine(cfg.rollout.replay_dir, live=engine, rank=strategy.rank, world=strategy.world)
    if cfg.rollout.save_rollouts:
        engine = RecordingEngine(engine, run_dir / "rollouts")
    return engine


def vllm_server_engine(cfg: Config, tokenizer, world: int = 1) -> RolloutEngine:
    """rollout.engine=vllm-server (its URL and timeout are checked with the config); it contacts the server at once."""
    from reasonrl.rollout.vllm_server import VLLMServerEngine

    if world > 1:  # each rank would claim rank 0 of the NCCL group that pushes the weights
        raise ValueError("rollout.engine=vllm-server pushes weights from one trainer process; launch without torchrun")
    return VLLMServerEngine(cfg.rollout.vllm.server_url, tokenizer, cfg.rollout.vllm.server_timeout)
