"""The training loop, blind to the algorithm: gather -> loss over micro-batches -> optimizer step; eval, checkpoints.

Everything an algorithm may need (model, tokenizer, data stream, rollout engine, rewards, reference model) is
in the `Context` it receives; the loop itself only accumulates gradients, steps the optimizer and keeps records.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from reasonrl import parallel
from reasonrl.algos.base import Algorithm, Context, TrainBatch, make_algorithm
from reasonrl.checkpoint import (
    latest_checkpoint,
    load_algo_tensors,
    load_checkpoint,
    save_checkpoint,
    save_pretrained_atomic,
)
from reasonrl.config import Config, config_to_dict, save_config
from reasonrl.data import Example, PromptStream, load_source, multi_turn_world, world_eval_metrics
from reasonrl.distributed import combine_means, combine_sums, combine_totals
from reasonrl.evaluation import evaluate, evaluate_episodes
from reasonrl.lora import apply_lora
from reasonrl.models import check_room, load_model, model_context
from reasonrl.multimodal import encode_examples, model_processor
from reasonrl.optim import build_optimizer, initial_schedule_metrics, step_schedules
from reasonrl.rewards import RewardError, RewardManager
from reasonrl.rollout.factory import make_engine
from reasonrl.spectral.monitor import alpha_metrics
from reasonrl.tracking import Tracker

logger = logging.getLogger("reasonrl")


class TrainingError(RuntimeError):
    """A run cannot go on (e.g. too many non-finite steps in a row); a checkpoint of the last good state is saved."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Runs one algorithm on one model. Build with a Config; `train()` returns the final eval metrics.

    Algorithms may supply three optional hooks, each replacing one default: `build_model(config) -> (model,
    tokenizer)` (default: load model.path), `make_stream(config)` (default: the prompts of data.train; anything
    with next(n) and state_dict/load_state_dict) and `evaluate(ctx) -> metrics` (default: greedy accuracy on the
    eval prompts). Pretraining (algos/pretrain.py) uses all three. An algorithm with tensors of its own that a resume
    must restore exactly (π-Play's EMA teacher) offers `state_tensors() -> dict` (saved as algo.safetensors in every
    checkpoint) and `load_state_tensors(tensors)` (called on resume).
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None, resume: bool = False):
        self.config = cfg = config
        self.parallel = parallel.from_config(cfg)  # under torchrun: joins the process group (docs/scaling.md)
        self.rank, self.world, self.is_main = self.parallel.rank, self.parallel.world, self.parallel.is_main
        seed_everything(cfg.train.seed + self.rank)  # ranks sample independently; rank 0 is the one-process run
        self.algo: Algorithm = make_algorithm(cfg)
        if self.world > 1:
            if not getattr(self.algo, "data_parallel", True):
                raise ValueError(f"algo={cfg.algo.name} runs in one process only; launch it without torchrun")
            if cfg.train.prompts_per_step < self.world:
                raise ValueError(
                    f"train.prompts_per_step={cfg.train.prompts_per_step} is fewer than the {self.world} "
                    f"ranks: every rank needs at least one prompt per step"
                )
            if cfg.rollout.save_rollouts:
                raise ValueError(
                    "rollout.save_rollouts records one process's calls; record a one-process run and "
                    "replay it on several ranks instead (docs/scaling.md)"
                )
        # Everything that can fail on bad input happens before the run directory exists.
        build_model = getattr(self.algo, "build_model", None)
        if build_model is not None:
            self.model, self.tokenizer = build_model(cfg)
        else:
            self.model, self.tokenizer = load_model(
                cfg.model.path, cfg.model.dtype, cfg.model.device, cfg.model.lora.quantize
            )
        self.processor = model_processor(self.model, cfg.model, self.tokenizer)  # image-text models only
        if cfg.model.lora.r:  # only the adapters train (reasonrl/lora.py)
            self.model = apply_lora(self.model, cfg.model.lora)
        self.parallel.prepare(self.model)  # replicas: rank 0's weights everywhere; FSDP: sharded, before the optimizer
        self.model.train()
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        make_stream = getattr(self.algo, "make_stream", None)
        stream = make_stream(cfg) if make_stream is not None else PromptStream(cfg.data.train, cfg.data)
        self.stream = self.parallel.shard_stream(stream)
        self.own_eval = getattr(self.algo, "evaluate", None)  # the algorithm's own evaluation, if it has one
        self.eval_world = multi_turn_world(cfg.data.eval or cfg.data.train, cfg.data)  # multi-turn: episodes
        self.world_eval_metrics = world_eval_metrics(cfg.data.eval or cfg.data.train, cfg.data)
        self.eval_examples = [] if self.own_eval else self._eval_examples()
        # Rank 0 names the run directory: the timestamp may differ by a second between ranks.
        self.run_dir = Path(run_dir) if run_dir else Path(self.parallel.broadcast(str(default_run_dir(cfg))))
        engine = None
        if self.algo.needs_rollouts or not self.own_eval:
            engine = make_engine(cfg, self.model, self.tokenizer, self.run_dir, self.parallel)
        rewards = RewardManager.from_config(cfg.rewards) if self.algo.needs_rollouts else None
        # One verifier for every evaluation, so a math-verify worker pool is started at most once per run.
        self.eval_verifier = RewardManager([("accuracy", 1.0)], timeout=cfg.rewards.timeout)
        ref_model = None
        if self.algo.needs_reference:
            ref_model, _ = load_model(cfg.model.ref_path or cfg.model.path, cfg.model.dtype, cfg.model.device)
            ref_model.eval().requires_grad_(False)
        self.optimizer, self.scheduler, self.alphadecay = build_optimizer(self.model, cfg.optim, cfg.train.steps)
        self.schedule_metrics = initial_schedule_metrics(self.scheduler, self.alphadecay)  # logged with the next record
        self.ctx = Context(cfg, self.model, self.tokenizer, self.stream, engine, rewards, ref_model, self.run_dir)
        self.ctx.processor = self.processor
        self.start_step, self.nonfinite_in_row = 0, 0
        self.stop_requested = False
        self.stopped_at: int | None = None  # the step after which a SIGTERM/SIGINT stopped the run
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        if self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")

    def _eval_examples(self) -> list[Example]:
        """The eval prompts, checked against the model's context before the run directory exists, not at the first
        evaluation."""
        cfg = self.config
        examples = load_source(cfg.data.eval or cfg.data.train, cfg.data, "eval", cfg.data.eval_n)
        room = cfg.rollout.eval_max_completion_length or cfg.rollout.max_completion_length
        check_room(
            encode_examples(self.tokenizer, self.processor, examples, cfg.data.system_prompt)[0],
            examples,
            room,
            model_context(self.model),
            "rollout.eval_max_completion_length"
            if cfg.rollout.eval_max_completion_length
            else "rollout.max_completion_length",
        )
        return examples

    def _resume(self) -> None:
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume: no valid checkpoint under {self.run_dir / 'checkpoints'}")
        state = load_checkpoint(
            checkpoint, self.model, self.optimizer, self.scheduler, self.parallel.restorer(self.model, self.optimizer)
        )
        self.start_step = int(state["step"])
        self.stream.load_state_dict(state["stream"])
        self.ctx.state = state.get("algo", {})
        load_tensors = getattr(self.algo, "load_state_tensors", None)  # an algorithm's own tensors (π-Play's teacher)
        if load_tensors is not None:
            load_tensors(load_algo_tensors(checkpoint))
        if self.alphadecay is not None:  # after the optimizer: AlphaDecay writes into its restored param groups
            if "alphadecay" not in state:
                raise ValueError(
                    f"{checkpoint} was saved without optim.weight_decay_schedule=alphadecay; "
                    f"resume with the run's own config"
                )
            self.alphadecay.load_state_dict(state["alphadecay"])
        self.schedule_metrics = {}  # the restored α were logged by the run that measured them
        if self.world > 1:  # the checkpoint holds rank 0's RNG; the other ranks must not sample the same numbers
            seed_everything(self.config.train.seed + self.rank + self.world * self.start_step)

    def _state(self, step: int) -> dict[str, Any]:
        state = {"step": step, "stream": self.stream.state_dict(), "algo": self.ctx.state}
        return state | ({"alphadecay": self.alphadecay.state_dict()} if self.alphadecay is not None else {})

    def _step_schedules(self) -> None:
        self.schedule_metrics |= step_schedules(self.scheduler, self.alphadecay)

    def _spectral_metrics(self, step: int) -> dict[str, float]:
        """HT-SR records for `step`: α of every matrix every train.spectral_every steps, and new schedule values."""
        every = self.config.train.spectral_every
        metrics = alpha_metrics(self.model) if every and step % every == 0 and self.is_main else {}
        metrics |= self.schedule_metrics
        self.schedule_metrics = {}
        return metrics

    def _eval(self) -> dict[str, float]:
        """`eval/`-prefixed metrics on rank 0: the algorithm's own evaluation, or greedy accuracy on the eval prompts
        (greedy episodes on a multi-turn world)."""
        if not self.parallel.joins_eval or not (self.own_eval or self.eval_examples):
            return {}
        rcfg = self.config.rollout
        with self.parallel.gathered(self.model):
            if self.own_eval:
                metrics = self.own_eval(self.ctx)
            elif self.eval_world is not None:
                metrics = evaluate_episodes(
                    self.ctx.engine,
                    self.tokenizer,
                    self.eval_examples,
                    self.eval_world.make_env,
                    rcfg.turns,
                    self.config.data.system_prompt,
                    model_context(self.model),
                    getattr(self.eval_world, "episode_metrics", None),
                )
            else:
                metrics = evaluate(
                    self.ctx.engine,
                    self.tokenizer,
                    self.eval_examples,
                    rcfg.eval_max_completion_length or rcfg.max_completion_length,
                    self.config.data.system_prompt,
                    self.eval_verifier,
                    processor=self.processor,
                    world_metrics=self.world_eval_metrics,
                )
        return {f"eval/{k}": v for k, v in metrics.items()} if self.is_main else {}

    def _update(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step per algorithm update; non-finite losses or gradients skip the step. With several
        ranks, gradients and loss metrics are summed over them before clipping (parallel.py)."""
        sums: dict[str, float] = {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        for update in range(self.algo.num_updates(batch)):
            with self.parallel.gathered(self.model):
                if len(batch):  # a rank may have no rows this step; it still joins the gradient sum
                    self.algo.prepare_update(self.ctx, batch, update)
            self.optimizer.zero_grad(set_to_none=True)
            update_sums, timer = {"loss": 0.0}, self.ctx.timer
            micros = list(batch.micro_batches(self.config.train.micro_batch_size))
            passes = self.parallel.backward_passes(len(micros))
            for micro in micros:
                with timer.section("forward"):
                    loss, metrics = self.algo.loss(self.ctx, micro)
                with timer.section("backward"):
                    loss.backward()
                update_sums["loss"] += float(loss.detach())
                for k, v in metrics.items():
                    update_sums[k] = update_sums.get(k, 0.0) + float(v)
            with timer.section("optimizer"):
                self.parallel.reduce_gradients(self.model, params, len(micros), passes)
                grad_norm = self.parallel.clip_grad_norm(params, self.config.optim.max_grad_norm)
            update_sums = self.parallel.sum_across_ranks(update_sums)  # each rank's share of the global values
            loss_total = update_sums.pop("loss")
            for k, v in update_sums.items():
                sums[k] = sums.get(k, 0.0) + v
            if not (math.isfinite(loss_total) and math.isfinite(grad_norm)):
                self.optimizer.zero_grad(set_to_none=True)
                self.nonfinite_in_row += 1
                sums["train/nonfinite_steps"] = sums.get("train/nonfinite_steps", 0.0) + 1
                if self.nonfinite_in_row >= self.config.train.max_nan_steps:
                    path = self._save(self.ctx.step)
                    raise TrainingError(
                        f"loss or gradients were NaN/inf in {self.nonfinite_in_row} updates in a row "
                        f"(train.max_nan_steps={self.config.train.max_nan_steps}); last good state saved in {path}"
                    )
                continue
            self.nonfinite_in_row = 0
            with timer.section("optimizer"):
                self.optimizer.step()
            sums["loss"] = sums.get("loss", 0.0) + loss_total
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
        self._step_schedules()
        updates = max(1, self.algo.num_updates(batch))
        return {k: (v if k == "train/nonfinite_steps" else v / updates) for k, v in sums.items()}

    def _save(self, step: int) -> Path | None:
        """Rank 0 writes the checkpoint of `step`; every rank first checks the replicas still hold the same weights."""
        full = self.parallel.full_state(self.model, self.optimizer)  # sharded: the files a one-process run writes
        if not self.parallel.replicas_agree(self.model):
            raise TrainingError(f"step {step}: the data-parallel replicas hold different weights (a rank diverged)")
        if not self.is_main:
            return None
        return save_checkpoint(
            self.run_dir,
            step,
            self.model,
            self.optimizer,
            self.scheduler,
            self._state(step),
            self.config.train.keep_checkpoints,
            **full,
            algo_tensors=self.algo.state_tensors() if hasattr(self.algo, "state_tensors") else None,
        )

    def _export(self) -> None:
        """RUN_DIR/final, an HF model folder (gathered on rank 0 when the model is sharded)."""
        model = self.parallel.exported(self.model)
        if self.is_main:
            save_pretrained_atomic(  # an image-text model's processor saves its tokenizer and image processor
                model,
                self.processor or self.tokenizer,
                self.run_dir / "final",
                self.config.model.path,
                self.config.model.dtype,
            )

    def _count_failed_rewards(self, error: RewardError | None) -> None:
        """A step where every reward is NaN (on every rank) is skipped like a non-finite update; max_nan_steps such
        steps in a row stop the run."""
        self.nonfinite_in_row += 1
        limit = self.config.train.max_nan_steps
        if self.nonfinite_in_row >= limit:
            if error is None:  # the failures were on other ranks
                raise TrainingError(
                    f"every reward was NaN in {self.nonfinite_in_row} steps in a row "
                    f"(train.max_nan_steps={limit}) on another rank"
                )
            raise RewardError(
                f"every reward was NaN in {self.nonfinite_in_row} steps in a row "
                f"(train.max_nan_steps={limit}); last: {error}",
                error.result,
            ) from error
        logger.warning("step %d skipped: %s", self.ctx.step, error or "every reward failed on another rank")

    def _gather(self) -> tuple[TrainBatch, dict[str, float], bool]:
        """This rank's batch with the step's global totals, the step's metrics, and whether any rank has data."""
        failure = None
        try:
            batch = self.algo.gather(self.ctx)
        except RewardError as e:
            failure, batch = (
                e,
                TrainBatch(
                    {},
                    metrics={
                        "rewards/failed": float(e.result.failed),
                        "rewards/timeout": float(e.result.timeout),
                        "train/skipped_reward_failure": 1.0,
                    },
                ),
            )
        # One collective for everything the step needs to agree on (totals, metrics, who has data or failed).
        parts = self.parallel.all_gather(
            {
                "totals": batch.totals,
                "metrics": batch.metrics,
                "has_data": len(batch) > 0,
                "failed": failure is not None,
            }
        )
        batch.totals = combine_totals([p["totals"] for p in parts])
        metrics = combine_means([{k: v for k, v in p["metrics"].items() if k not in COUNTS} for p in parts])
        metrics |= combine_sums([{k: v for k, v in p["metrics"].items() if k in COUNTS} for p in parts])
        has_data = any(p["has_data"] for p in parts)
        if not has_data and any(p["failed"] for p in parts):
            self._count_failed_rewards(failure)
        return batch, metrics, has_data

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _train_step(self, step: int) -> dict[str, float]:
        """One step: gather, update, and the step's own metrics."""
        self.ctx.step = step
        started = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]  # the rate this step's update uses (the schedule steps after it)
        with self.parallel.gathered(self.model):  # generation and scoring: no collectives inside
            batch, metrics, has_data = self._gather()
        if has_data:
            metrics.update(self._update(batch))
            if self.ctx.engine is not None:  # an engine with its own copy of the weights (vLLM) takes them
                self.ctx.engine.sync_weights(self.model)
        else:
            self._step_schedules()
            metrics["train/skipped_empty_batch"] = 1.0
        metrics["learning_rate"] = lr
        metrics["step_time"] = time.perf_counter() - started
        metrics.update(self.ctx.timer.pop(metrics["step_time"]))
        return metrics

    def train(self) -> dict[str, float]:
        """Run the remaining steps. A record is logged every train.log_every steps with each step metric's mean over
        the steps since the last record that reported it; steps with an evaluation, HT-SR values or a checkpoint,
        and the last step, always end a record (so a resume never loses a partial one)."""
        cfg = self.config.train
        tracker = (
            Tracker(
                self.run_dir,
                cfg.report_to,
                config_to_dict(self.config),
                cfg.steps,
                cfg.progress,
                resume_step=self.start_step,
            )
            if self.is_main
            else NullTracker()
        )
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.start_step == 0:
                tracker.log(0, self._eval() | self._spectral_metrics(0))
            step = saved = self.start_step
            window = MetricWindow()
            for step in range(self.start_step + 1, cfg.steps + 1):
                window.add(self._train_step(step))
                events = self._spectral_metrics(step)  # after step_time: monitoring is not training time
                if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                    events |= self._eval()
                self.stop_requested = self.parallel.any_rank(self.stop_requested)  # torchrun signals every rank
                save = bool(cfg.save_every and step % cfg.save_every == 0) or self.stop_requested
                if events or save or step % cfg.log_every == 0 or step == cfg.steps:
                    tracker.log(step, window.pop() | events)
                if save:
                    self._save(step)
                    saved = step
                if self.stop_requested:
                    self.stopped_at = step
                    return {}
            final = self._eval()
            if final:
                tracker.log(step, final)
            if saved != step or not step:  # never rewrite a saved checkpoint: a crash mid-rewrite could lose it
                self._save(step)
            self._export()
            return final
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            tracker.close()


class MetricWindow:
    """Step metrics since the last record: each key's mean over the steps that reported it (train.log_every)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


# Gather metrics that count things are summed over ranks; the others (means, rates) are averaged.
COUNTS = {"num_tokens", "rewards/failed", "rewards/timeout"}


class NullTracker:
    """What ranks other than 0 log to: nothing."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.train.output_dir.format(algo=cfg.algo.name, time=stamp))
