"""LLR: layer-wise learning rates from the heavy-tail exponent α of each weight matrix, on top of any lr schedule.

He et al., "Heavy-tail-guided layerwise learning rates" (arXiv 2605.22297, ICML 2026); official code
`hed-ucas/Layer-wise-Learning-Rate`, `olmo/LRUnbalance.py` (class `layerTempbalance`) and the LLR block of
`olmo/train.py`. Per module i (Linear and Embedding layers with >= 50 eigenvalues):

    η_i(t) = η0 · s(t) · r_i,    r_i = r_min + (r_max - r_min) · (α_i - α_min) / (α_max - α_min)      (tb_linear_map)

so light-tailed, under-trained modules (large α) learn faster. The embedding and the output head are not measured:
they get the largest α of the others, hence r_max. Norms and other untagged parameters keep η0 · s(t).
r_i is re-measured every `every` updates during the first `until` fraction of training, then frozen; each new r_i
is eased in linearly over `ramp` updates.

One deliberate difference from the release: the ramp is on the multiplier r_i, not on the absolute lr. Both start
at the lr in use and end at η0 · s(t0 + L) · r_new; in between ours follows the base schedule's shape, which is
what lets it sit on top of any schedule (warm-up, cosine, the trainer's LambdaLR) instead of rebuilding it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from reasonrl.spectral.esd import ALL_KINDS
from reasonrl.spectral.schedule import SpectralScheduler


class LLR(SpectralScheduler):
    """Steers `lr` of the module param groups (see `build_param_groups`) from α, as a multiplier of the base schedule.

    `base_scheduler`: the schedule(s) LLR sits on (any torch LRScheduler, one per optimizer); LLR steps them itself,
    so call only `llr.step()`, once per optimizer update, after `optimizer.step()`. Defaults follow the release's
    yaml config: r_min = 1, r_max = 3, every 40 updates, ramp 20, frozen after 20% of `total_steps`.
    """

    def __init__(
        self,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        model: nn.Module,
        *,
        total_steps: int,
        base_scheduler: LRScheduler | Sequence[LRScheduler] | None = None,
        every: int = 40,
        ramp: int = 20,
        until: float = 0.2,
        min_ratio: float = 1.0,
        max_ratio: float = 3.0,
        mapping: str = "linear",
        pinned: Sequence[str] = ("embed", "head"),
        exclude_first: bool = False,
        exclude_last: bool = False,
        min_eigs: int = 50,
        xmin_pos: float = 2,
    ):
        super().__init__(
            optimizers,
            model,
            kinds=ALL_KINDS,
            every=every,
            mapping=mapping,
            min_ratio=min_ratio,
            max_ratio=max_ratio,
            exclude_first=exclude_first,
            exclude_last=exclude_last,
            pinned=pinned,
            min_eigs=min_eigs,
            xmin_pos=xmin_pos,
        )
        if base_scheduler is None:
            self.base_schedulers: list[LRScheduler] = []
        elif isinstance(base_scheduler, LRScheduler):
            self.base_schedulers = [base_scheduler]
        else:
            self.base_schedulers = list(base_scheduler)
        self.total_steps, self.ramp, self.until = total_steps, ramp, until
        self.base_lrs = [float(g["lr"]) for g in self.groups]  # what the base schedule set, before the multipliers
        # The first multipliers come from the weights as they are now and apply at once (nothing to ease in from).
        self.start = self.target = self.ratios = self.compute_ratios()
        self.ramp_start = 0
        self._write()

    def _current(self) -> dict[str, float]:
        """Multipliers for the next update: `ramp` updates after a recompute they reach the target."""
        done = 1.0 if self.ramp <= 1 else min(1.0, max(0.0, (self.step_count - self.ramp_start + 1) / self.ramp))
        return {n: self.start[n] + (self.target[n] - self.start[n]) * done for n in self.target}

    def _write(self) -> None:
        for group, base, factor in zip(self.groups, self.base_lrs, self.group_factors(self.ratios)):
            group["lr"] = base * factor

    def step(self, step: int | None = None) -> None:
        """Count one update (or set the count to `step`): advance the base schedule, re-measure α when due."""
        # Hand the base schedulers back the lr they set themselves: chainable ones (LinearLR, ExponentialLR)
        # compute the next lr from the current one and would otherwise compound the multipliers.
        for group, base in zip(self.groups, self.base_lrs):
            group["lr"] = base
        for scheduler in self.base_schedulers:
            scheduler.step()
        self.base_lrs = [float(g["lr"]) for g in self.groups]
        self.step_count = self.step_count + 1 if step is None else step
        if self.due() and self.step_count + 1 <= self.until * self.total_steps:
            self.start, self.target, self.ramp_start = self._current(), self.compute_ratios(), self.step_count
        self.ratios = self._current()
        self._write()

    def get_last_lr(self) -> list[float]:
        """The lr of every param group (all optimizers, in order), multipliers included, as LRScheduler's."""
        return [float(g["lr"]) for g in self.groups]

    def metrics(self, prefix: str = "llr") -> dict[str, float]:
        return super().metrics(prefix)

    def state_dict(self) -> dict:
        return self._state() | {
            "base_lrs": list(self.base_lrs),
            "start": dict(self.start),
            "target": dict(self.target),
            "ramp_start": self.ramp_start,
            "base_schedulers": [s.state_dict() for s in self.base_schedulers],
        }

    def load_state_dict(self, state: dict) -> None:
        self._load_state(state)
        self.base_lrs = list(state["base_lrs"])
        self.start, self.target, self.ramp_start = dict(state["start"]), dict(state["target"]), state["ramp_start"]
        for scheduler, saved in zip(self.base_schedulers, state["base_schedulers"]):
            scheduler.load_state_dict(saved)
        self._write()
