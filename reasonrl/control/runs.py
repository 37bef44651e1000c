"""What the online and offline control loops share: the outer training loop with its evaluations, checkpoints and
stop signals, and optimizer states stored as flat tensors plus JSON (checkpoints hold no pickles)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import torch

from reasonrl.checkpoint import save_checkpoint

logger = logging.getLogger("reasonrl")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingLoop:
    """`train()` for a run object that trains in units (an episode online, `train.log_every` steps offline).

    The run provides: cfg.train, run_dir, tracker, step, last_eval, last_save, stopped_at, and the methods
    first_record() (what step 0 logs), train_unit() (train one unit, advance `step`, return its metrics record),
    evaluate() and save() (which ends in write_checkpoint; `modules` holds what it saves)."""

    def train(self) -> dict[str, float]:
        """Run to train.steps; returns the last evaluation's metrics. SIGTERM or Ctrl-C ends the current unit, saves
        a checkpoint and returns early (`stopped_at` is then the step)."""
        t = self.cfg.train
        final: dict[str, float] = {}
        signals: list[int] = []
        main = threading.current_thread() is threading.main_thread()  # handlers can only be set there
        previous = {s: signal.signal(s, lambda signum, _: signals.append(signum)) for s in STOP_SIGNALS if main}
        try:
            if self.step == 0:
                first = self.first_record()
                final = {k: v for k, v in first.items() if k.startswith("eval/")}
                self.tracker.log(0, first)
            while self.step < t.steps:
                started, first_step = time.perf_counter(), self.step
                record = self.train_unit()
                record["time/steps_per_s"] = (self.step - first_step) / max(time.perf_counter() - started, 1e-9)
                done = self.step >= t.steps
                if done or (t.eval_every and self.step - self.last_eval >= t.eval_every):
                    final = self.evaluate()
                    record.update(final)
                    self.last_eval = self.step
                self.tracker.log(self.step, record)
                if done or signals or (t.save_every and self.step - self.last_save >= t.save_every):
                    self.save()
                if signals and not done:
                    self.stopped_at = self.step
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.tracker.close()
        if t.plots and self.stopped_at is None:
            plot(self.run_dir)
        return final

    def write_checkpoint(self, state: dict, tensors: dict[str, torch.Tensor]) -> Path:
        """save()'s common end: the run's modules, `state` (JSON) and `tensors` (optimizers, buffers) at this step."""
        self.last_save = self.step
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.modules,
            None,
            None,
            state,
            self.cfg.train.keep_checkpoints,
            algo_tensors=tensors,
        )


def plot(run_dir: Path) -> None:
    """RUN_DIR/plots/*.png; a run without plottable metrics gets a warning, not an error."""
    from reasonrl.plot import plot_run

    try:
        plot_run(run_dir)
    except ValueError as e:
        logger.warning("no plots: %s", e)


def optimizer_tensors(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors `optim.NAME.PARAM.SLOT`, param groups per name): everything load_optimizers needs."""
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for idx, slots in sd["state"].items():
            tensors |= {f"optim.{name}.{idx}.{k}": v for k, v in slots.items()}
    return tensors, groups


def load_optimizers(
    optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor], groups: dict
) -> None:
    """Restore what optimizer_tensors saved; other keys in `tensors` are ignored."""
    for name, opt in optimizers.items():
        slots: dict[int, dict] = {}
        for key, v in tensors.items():
            if key.startswith(f"optim.{name}."):
                idx, slot = key.removeprefix(f"optim.{name}.").split(".", 1)
                slots.setdefault(int(idx), {})[slot] = v
        opt.load_state_dict({"state": slots, "param_groups": groups[name]})
