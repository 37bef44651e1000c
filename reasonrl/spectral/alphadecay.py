"""AlphaDecay: module-wise weight decay from the heavy-tail exponent α of each weight matrix.

He, Jaiswal, Tu, Shen, Yuan, Liu, Yin, "AlphaDecay" (arXiv 2506.14562); official code `hed-ucas/AlphaDecay`,
`LLaMa-pretraining/WeightDecayUnbalance.py` (class `modulewise_AlphaDecay`). Per tuned module i:

    wd_i = wd0 · [ s1 + (s2 - s1) · (α_i - α_min) / (α_max - α_min) ]        (tb_linear_map)

so heavy-tailed, "well-trained" modules (small α) are decayed less and light-tailed ones more. Tuned modules are the
Linear/Conv layers in module order minus the first and the last (for a Llama: layers.0.self_attn.q_proj and lm_head)
and minus those with fewer than 50 eigenvalues; everything else keeps wd0. α is re-measured every `every` updates.

Coupled vs decoupled decay is the optimizer's business: with `torch.optim.Adam`, `weight_decay` adds wd_i·θ to the
gradient (L2, the paper's "Adam" runs); with `AdamW` (or Muon) it shrinks θ by lr·wd_i·θ, so the effective decay also
follows the lr schedule. The scheduler writes `weight_decay` into the param groups either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reasonrl.spectral.esd import LINEAR_KINDS
from reasonrl.spectral.schedule import SpectralScheduler


class AlphaDecay(SpectralScheduler):
    """Steers `weight_decay` of the module param groups (see `build_param_groups`) from α.

    Call `step()` once per optimizer update, after `optimizer.step()`. The base wd0 of each group is the value it has
    when this object is built; the first assignment is made at once, from the current (e.g. random-init) weights.
    Defaults: s1 = 0.6666, s2 = 3 (the released scripts' Adam setting; they use s2 = 5 for AdamW), every 500 updates.
    """

    def __init__(
        self,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        model: nn.Module,
        *,
        every: int = 500,
        min_ratio: float = 0.6666,
        max_ratio: float = 3.0,
        mapping: str = "linear",
        exclude_first: bool = True,
        exclude_last: bool = True,
        min_eigs: int = 50,
        xmin_pos: float = 2,
    ):
        super().__init__(
            optimizers,
            model,
            kinds=LINEAR_KINDS,
            every=every,
            mapping=mapping,
            min_ratio=min_ratio,
            max_ratio=max_ratio,
            exclude_first=exclude_first,
            exclude_last=exclude_last,
            min_eigs=min_eigs,
            xmin_pos=xmin_pos,
        )
        missing = [i for i, g in enumerate(self.groups) if "weight_decay" not in g]
        if missing:
            raise ValueError(f"param groups {missing} have no weight_decay: this optimizer does not decay weights")
        self.base = [float(g["weight_decay"]) for g in self.groups]
        self._apply(self.compute_ratios())

    def _apply(self, ratios: dict[str, float]) -> None:
        self.ratios = ratios
        for group, base, factor in zip(self.groups, self.base, self.group_factors(ratios)):
            group["weight_decay"] = base * factor

    def step(self, step: int | None = None) -> None:
        """Count one update (or set the count to `step`); re-measure α when the next update is due."""
        self.step_count = self.step_count + 1 if step is None else step
        if self.due():
            self._apply(self.compute_ratios())

    def metrics(self, prefix: str = "alphadecay") -> dict[str, float]:
        return super().metrics(prefix)

    def state_dict(self) -> dict:
        return self._state() | {"base": list(self.base)}

    def load_state_dict(self, state: dict) -> None:
        self._load_state(state)
        self.base = list(state["base"])
        self._apply(self.ratios)
