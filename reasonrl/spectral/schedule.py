"""What AlphaDecay and LLR share: α -> ratio maps, one param group per weight module, and the scheduler base.

The schedulers never build an optimizer. `build_param_groups(model)` gives every weight module its own param group,
tagged with the module's name (the extra key `"module"`, which torch optimizers keep and checkpoint), and one
untagged group for everything else (norms, biases of untracked modules). Any optimizer built on those groups (Adam,
AdamW, SGD, Muon, several at once) can then be steered: a scheduler finds a module's groups through its weight,
and writes `weight_decay` (AlphaDecay) or `lr` (LLR) into them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from reasonrl.config import MAPPINGS
from reasonrl.spectral.esd import ALL_KINDS, layer_and_type, spectra, weight_modules


def alpha_ratios(
    alphas: Sequence[float],
    mapping: str = "linear",
    min_ratio: float = 0.5,
    max_ratio: float = 1.5,
    layers: Sequence[int | None] | None = None,
    sigmoid_scale: float = 4.0,
) -> np.ndarray:
    """Multipliers of the base value (lr or weight decay) from each module's α; larger α -> larger ratio.

    linear (TempBalance `tb_linear_map`): min_ratio + (max_ratio - min_ratio) (α - α_min) / (α_max - α_min).
    sqrt / log2 (`tb_sqrt` / `tb_log2`): n f(α_i) / Σ_j f(α_j), mean 1.
    sigmoid: 2 / (1 + exp(-scale z)), z = (α - mean) / std, in (0, 2).
    layer_linear / layer_sigmoid: the same, with min/max or mean/std taken within each transformer block
    (`layers`, the block index of each module; modules outside blocks form one group).
    With no spread in α (one module, or all equal) the linear maps give 1: no signal, so no change from uniform.
    """
    a = np.asarray(alphas, dtype=np.float64)
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; choose one of {', '.join(MAPPINGS)}")
    if a.size == 0:
        return a
    if mapping.startswith("layer_"):
        blocks = np.asarray([-1 if x is None else x for x in (layers if layers is not None else [None] * a.size)])
        out = np.empty_like(a)
        for b in np.unique(blocks):
            mask = blocks == b
            out[mask] = alpha_ratios(
                a[mask], mapping.removeprefix("layer_"), min_ratio, max_ratio, sigmoid_scale=sigmoid_scale
            )
        return out
    if mapping == "linear":
        lo, hi = a.min(), a.max()
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            return np.ones_like(a)
        return np.interp(a, [lo, hi], [min_ratio, max_ratio])
    if mapping in ("sqrt", "log2"):
        f = np.sqrt(a) if mapping == "sqrt" else np.log2(a)
        return a.size * f / f.sum()
    z = (a - a.mean()) / (a.std() + 1e-8)
    return 2.0 / (1.0 + np.exp(-sigmoid_scale * z))


def build_param_groups(model: nn.Module, kinds: tuple[type, ...] = ALL_KINDS, **group_options) -> list[dict]:
    """Param groups for any torch optimizer: the rest first, then one group per weight module tagged `"module"`.

    The untagged group comes first so that `get_last_lr()[0]` keeps reporting the base learning rate. Frozen
    parameters (requires_grad=False) are left out. `group_options` (e.g. weight_decay=0.1) go into every group.
    """
    groups, taken = [], set()
    for name, module in weight_modules(model, kinds):
        params = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in taken]
        if params:
            taken.update(id(p) for p in params)
            groups.append({"params": params, "module": name, **group_options})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return ([{"params": rest, "module": None, **group_options}] if rest else []) + groups


def split_for_muon(groups: list[dict], adamw_names: Sequence[str] = ("embed", "head")) -> tuple[list[dict], list[dict]]:
    """Split `build_param_groups` output into (Muon groups, AdamW groups).

    Muon orthogonalises 2-D hidden-layer updates only; embeddings, the output head (names containing one of
    `adamw_names`), 1-D parameters and conv kernels go to AdamW, as in Keller Jordan's and the LLR setup. Both
    halves keep the `"module"` tag, so one scheduler steers a module's groups in both optimizers.
    """
    muon, adamw = [], []
    for group in groups:
        name = group.get("module")
        hidden = name is not None and not any(s in name for s in adamw_names)
        to_muon = [p for p in group["params"] if hidden and p.ndim == 2]
        to_adamw = [p for p in group["params"] if not (hidden and p.ndim == 2)]
        muon += [{**group, "params": to_muon}] if to_muon else []
        adamw += [{**group, "params": to_adamw}] if to_adamw else []
    return muon, adamw


class SpectralScheduler:
    """Base of AlphaDecay and LLR: which modules are tuned, where their param groups are, their current α.

    `kinds`: module classes whose α counts. `exclude_first` / `exclude_last` drop the first / last such module (as
    TempBalance and AlphaDecay do). `pinned`: name substrings of modules that are not measured but given the largest
    α of the others (LLR's embedding and head). Modules with too few eigenvalues keep the base value.
    """

    def __init__(
        self,
        optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        model: nn.Module,
        *,
        kinds: tuple[type, ...],
        every: int,
        mapping: str,
        min_ratio: float,
        max_ratio: float,
        exclude_first: bool,
        exclude_last: bool,
        pinned: Sequence[str] = (),
        min_eigs: int = 50,
        xmin_pos: float = 2,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown mapping {mapping!r}; choose one of {', '.join(MAPPINGS)}")
        self.optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        self.model, self.every, self.mapping = model, every, mapping
        self.min_ratio, self.max_ratio, self.pinned = min_ratio, max_ratio, tuple(pinned)
        self.min_eigs, self.xmin_pos = min_eigs, xmin_pos
        candidates = weight_modules(model, kinds)
        candidates = candidates[1 if exclude_first else 0 : len(candidates) - (1 if exclude_last else 0)]
        groups = self.groups
        # A module's groups are found through its weight: the group holding it names the tag to collect.
        group_of = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
        self.modules: list[tuple[str, nn.Module]] = []
        self.groups_of: dict[str, list[int]] = {}  # indices into self.groups
        for name, module in candidates:
            if id(module.weight) not in group_of:  # frozen, or not given to these optimizers
                continue
            tag = groups[group_of[id(module.weight)]].get("module")
            if tag is None:
                raise ValueError(
                    f"{name}.weight shares a param group with other parameters; build the optimizer "
                    f"on reasonrl.spectral.build_param_groups(model) so each module has its own group"
                )
            self.modules.append((name, module))
            self.groups_of[name] = [i for i, g in enumerate(groups) if g.get("module") == tag]
        self.step_count = 0
        self.alphas: dict[str, float] = {}
        self.ratios: dict[str, float] = {}

    @property
    def groups(self) -> list[dict]:
        """The param groups of all optimizers, looked up afresh: `optimizer.load_state_dict` replaces the dicts."""
        return [g for opt in self.optimizers for g in opt.param_groups]

    def compute_ratios(self) -> dict[str, float]:
        """Measure α of the tuned modules on the current weights and map it to ratios; 1 for those not fitted."""
        pinned = {n for n, _ in self.modules if any(s in n for s in self.pinned)}
        measured = spectra(
            [(n, m) for n, m in self.modules if n not in pinned], ("hill",), self.min_eigs, self.xmin_pos
        )
        alphas = {s.name: s.alpha for s in measured if s.status == "ok"}
        if alphas:
            alphas.update({n: max(alphas.values()) for n in pinned})
        names = list(alphas)
        ratios = alpha_ratios(
            [alphas[n] for n in names],
            self.mapping,
            self.min_ratio,
            self.max_ratio,
            [layer_and_type(n)[0] for n in names],
        )
        self.alphas = {n: alphas.get(n, math.nan) for n, _ in self.modules}
        return {n: 1.0 for n, _ in self.modules} | {n: float(r) for n, r in zip(names, ratios)}

    def group_factors(self, ratios: dict[str, float]) -> list[float]:
        """The ratio of each param group (aligned with `self.groups`): its module's, or 1 for untuned groups."""
        factor = [1.0] * len(self.groups)
        for name, ratio in ratios.items():
            for i in self.groups_of[name]:
                factor[i] = ratio
        return factor

    def due(self) -> bool:
        """Recompute before update `step_count + 1` when that index is a multiple of `every` (the papers' timing)."""
        return (self.step_count + 1) % self.every == 0

    def metrics(self, prefix: str) -> dict[str, float]:
        """Current α and ratio of every tuned module, for metrics.jsonl / TensorBoard."""
        out = {f"{prefix}/alpha/{n}": a for n, a in self.alphas.items() if not math.isnan(a)}
        return out | {f"{prefix}/ratio/{n}": r for n, r in self.ratios.items()}

    def _state(self) -> dict:
        return {"step_count": self.step_count, "alphas": dict(self.alphas), "ratios": dict(self.ratios)}

    def _load_state(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.alphas, self.ratios = dict(state["alphas"]), dict(state["ratios"])
